"""Train job: prepared dataset → trained model, evaluated and tracked in one MLflow run.

Run it as ``recsys train --data DIR ...``. The run (in an experiment named after the
dataset) gets every config value as a param, the dataset's identity, per-epoch loss,
validation NDCG@10 and throughput, the final validation and test metrics with 95% CIs,
and as artifacts the config, the model bundle (vocabularies and best weights included),
the best checkpoint, per-user metrics and a learning-curve plot.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from recsys.allocation import ItemFeatures, RerankConfig, compile_plan
from recsys.allocation.features import read_item_vocab
from recsys.bundle import ARTIFACT_PATH, save_bundle
from recsys.data.dataset import SequenceData
from recsys.evaluation.evaluate import evaluate
from recsys.io import check_output_folder, json_has_keys, read_json, safe_name, write_json
from recsys.options import option, to_flat
from recsys.tracking import (
    URI_HELP,
    git_commit,
    log_eval_result,
    log_learning_curve,
    log_params,
    project_run_id,
    protocol_label,
    setup,
)
from recsys.training.fit import FitConfig, eval_config, fit, make_trainer, with_data_defaults
from recsys.training.trainer import BEST, LAST

log = logging.getLogger(__name__)

RUN_MARKER = "run.json"  # marks a run folder as ours; records the run id and its status
RUN_FILES = (RUN_MARKER, "checkpoints/best.pt", "checkpoints/last.pt", "bundle/*")


@dataclass
class TrainJobConfig:
    """Everything the train job needs; the whole of it is logged as MLflow params."""

    data: str = option(help="prepared-dataset folder (from recsys prepare)")
    fit: FitConfig = dataclasses.field(default_factory=FitConfig)
    eval_ks: list[int] = option(
        default_factory=lambda: [1, 5, 10, 20], help="cut-offs K of the final evaluation"
    )
    sampled_eval: bool = option(
        False, "also report the paper's sampled protocol (100 negatives), named 'sampled'"
    )
    experiment: str | None = option(None, "MLflow experiment", default_text="the dataset name")
    tracking_uri: str | None = option(None, "MLflow tracking URI", default_text=URI_HELP)
    run_name: str | None = option(None, "MLflow run name", default_text="MODEL-LOSS-LMAX_LEN")
    output: str | None = option(
        None, "folder for checkpoints and the bundle", default_text="data/runs/NAME-TIME"
    )
    resume: bool = option(False, "continue the interrupted run in --output")
    register_name: str | None = option(
        None,
        "model registry name; each run adds a version",
        default_text="recsys-EXPERIMENT",
    )
    rerank: str | None = option(
        None,
        "re-ranking config (TOML, README: Re-ranking) stored with the model: recommend, "
        "the Python API and REST apply it unless told otherwise; the test metrics measure "
        "the re-ranked lists",
        default_text="none",
    )
    parent_run_id: str | None = option(None, "the sweep's parent run", cli=False)
    train_key: str | None = option(None, "a sweep child's training options", cli=False)
    sweep_key: str | None = option(None, "identifies a sweep child's config", cli=False)

    def __post_init__(self) -> None:
        if self.resume and not self.output:
            raise ValueError("resume needs the output folder of the interrupted run (--output)")


def _log_model(bundle: Path, name: str) -> str:
    """Log the bundle as one pyfunc model, register it; return ``models:/name/version``."""
    import mlflow

    import recsys

    # The model is logged from code, so loading it unpickles nothing (DESIGN: artefacts).
    entry = Path(recsys.__file__).parent / "pyfunc_entry.py"
    from recsys.serving import MODEL_NAME

    info = mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        python_model=str(entry),
        artifacts={ARTIFACT_PATH: str(bundle)},
        registered_model_name=name,
        # Served with --env-manager local from this environment; listed for reference.
        pip_requirements=["torch", "faiss-cpu", "polars", "pandas", "numpy", "mlflow"],
    )
    return f"models:/{name}/{info.registered_model_version}"


def check_run_folder(out: Path, resume: bool) -> dict[str, Any] | None:
    """Refuse a run folder that is not ours; return its ``run.json`` (None when new).

    With ``resume`` the folder must hold an interrupted run (``checkpoints/last.pt``) or a
    finished one (the caller then has nothing to do).
    """
    if resume:
        marker = out / RUN_MARKER
        state = read_json(marker, "a training run's record") if marker.is_file() else None
        if state is not None and state.get("status") == "finished":
            return state
        if not (out / "checkpoints" / LAST).is_file():
            raise ValueError(
                f"nothing to resume in {str(out)!r}: it holds no interrupted training run "
                f"(no checkpoints/{LAST}); train without --resume"
            )
        return state or {}
    check_output_folder(
        out,
        kind="a training run folder",
        owned=RUN_FILES,
        # Run folders of releases before run.json are known by their bundle.
        is_ours=lambda p: (
            json_has_keys(p / RUN_MARKER, ("written_by", "status"))
            or json_has_keys(p / "bundle" / "bundle.json", ("format", "version", "kind"))
        ),
    )
    return None


def run(cfg: TrainJobConfig) -> dict[str, Any]:
    """Train, evaluate and log one model; return a summary (run id, metrics, bundle).

    Resuming (``cfg.resume``) a run that already finished trains nothing and returns
    the finished run's summary, with ``already_finished`` set.
    """
    import mlflow

    if cfg.output:
        previous = check_run_folder(Path(cfg.output), cfg.resume)
        if previous and previous.get("status") == "finished":
            log.warning(
                "%s holds a finished run (%s); nothing to resume",
                cfg.output,
                previous.get("run_id"),
            )
            return {**previous["summary"], "already_finished": True}
    data = SequenceData.load(cfg.data)
    info = data.dataset_info()
    # Options left unset take values derived from the data; the run records the values
    # used, so its config.json repeats this run exactly.
    fit_cfg, derived = with_data_defaults(cfg.fit, data)
    cfg = dataclasses.replace(cfg, fit=fit_cfg)
    for note in derived:
        log.info("derived from the data: %s", note)
    experiment = safe_name(cfg.experiment or info["dataset_name"], "experiment name")
    register_name = safe_name(cfg.register_name or f"recsys-{experiment}", "register name")
    eval_cfg = eval_config(cfg.fit, ks=tuple(cfg.eval_ks)).within(data.num_items)
    # Read and checked before training: a bad config fails now, not after an hour.
    rerank_params: dict[str, Any] = {}
    given = cfg.rerank if cfg.rerank and cfg.rerank.lower() != "none" else None
    rerank = RerankConfig.load(given) if given else None
    if rerank is not None:
        rerank_params = rerank.flat()
        if rerank.is_noop:  # the model's own lists: nothing to store or apply
            rerank = None
    if rerank is not None:
        features = ItemFeatures.build(
            read_item_vocab(data.path), torch.zeros(data.num_items + 1, 1)
        )
        compile_plan(rerank, features).check_k(max(eval_cfg.ks))
    setup(experiment, cfg.tracking_uri)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    # Runs started in the same second (a sweep's quick children) each get their own folder.
    out = Path(cfg.output or Path("data") / "runs" / f"{experiment}-{stamp}-{uuid.uuid4().hex[:6]}")
    out.mkdir(parents=True, exist_ok=bool(cfg.output))
    marker = {"written_by": "recsys train", "status": "running"}
    write_json(out / RUN_MARKER, marker)

    trainer = make_trainer(cfg.fit, data, out / "checkpoints")
    run_id = None
    if trainer is not None and cfg.resume and trainer.resume():
        run_id = trainer.extra.get("run_id")
    kind, options = cfg.fit.model, to_flat(cfg)
    run_name = cfg.run_name or (
        f"{kind}-{cfg.fit.train.loss}-L{cfg.fit.sasrec.max_len}" if trainer else kind
    )
    run_id = run_id or project_run_id()
    tags = {}
    if cfg.parent_run_id:
        tags = {"mlflow.parentRunId": cfg.parent_run_id, "sweep_key": cfg.sweep_key or ""}
        if cfg.train_key:
            tags["train_key"] = cfg.train_key
    with mlflow.start_run(
        run_id=run_id, run_name=None if run_id else run_name, tags=tags or None
    ) as active:
        log_params({**options, **info, **rerank_params})
        mlflow.set_tags(
            {
                "model": kind,
                "dataset": info["dataset_name"],
                "dataset_version": info["dataset_version"],
                "split": info["split"],
                "eval_protocol": protocol_label(eval_cfg.exclude_seen),
                "git_commit": git_commit() or "unknown",
            }
        )
        mlflow.log_dict(options, "config.json")  # usable as --config
        if derived:
            mlflow.set_tag("derived_from_data", "; ".join(derived))
        marker["run_id"] = active.info.run_id
        write_json(out / RUN_MARKER, marker)
        if trainer is not None:
            trainer.extra["run_id"] = active.info.run_id

            def on_epoch(rec: dict[str, float]) -> None:
                mlflow.log_metrics(
                    {k: v for k, v in rec.items() if k != "epoch"}, step=int(rec["epoch"])
                )

            trainer.on_epoch = on_epoch
        fitted = fit(cfg.fit, data, trainer, extra_meta=options)
        scorer, weights, meta, summary = fitted.scorer, fitted.weights, fitted.meta, fitted.summary
        mlflow.log_metrics({k: float(v) for k, v in summary.items()})

        # Final metrics go at the last epoch's step, so that MLflow's summary value of
        # valid_ndcg_at_10 is the best model's (equal to the best epoch's) not the last's.
        last_step = int(summary.get("epochs_run", 0))
        metrics: dict[str, float] = {}
        protocols = [eval_cfg]
        if cfg.sampled_eval:
            protocols.append(dataclasses.replace(eval_cfg, protocol="sampled"))
        plan = None
        if rerank is not None:
            with torch.no_grad():
                features = ItemFeatures.build(read_item_vocab(data.path), scorer.item_vectors())
            plan = compile_plan(rerank, features)
            meta = {**meta, "rerank": rerank.to_dict()}
        for stage in ("valid", "test"):
            for pcfg in protocols:
                # The test lists are the ones served: re-ranked, when the model has a config.
                use = plan if stage == "test" and pcfg.protocol == "full" else None
                res = evaluate(scorer, data, stage, pcfg, progress=cfg.fit.progress, rerank=use)
                log_eval_result(res, step=last_step)
                metrics.update(res.flat())
        bundle = save_bundle(out / "bundle", kind, weights, data, meta)
        log_params(json.loads((bundle / "index.json").read_text()))
        mlflow.log_artifacts(str(bundle), ARTIFACT_PATH)
        registered = _log_model(bundle, register_name)
        if trainer is not None:
            mlflow.log_artifact(str(out / "checkpoints" / BEST), "checkpoints")
            log_learning_curve(fitted.history)
            # The run finished: a later --resume into this folder must not reopen it.
            (out / "checkpoints" / LAST).unlink(missing_ok=True)
    log.info(
        "run %s (%s): test NDCG@10 %.4f, HR@10 %.4f (%s)",
        active.info.run_id,
        experiment,
        metrics.get("test_ndcg_at_10", float("nan")),
        metrics.get("test_hr_at_10", float("nan")),
        protocol_label(eval_cfg.exclude_seen),
    )
    result = {
        "run_id": active.info.run_id,
        "registered_model": registered,
        "experiment": experiment,
        "protocol": protocol_label(eval_cfg.exclude_seen),
        "bundle": str(bundle),
        **summary,
        **metrics,
    }
    # Written last: a later --resume of this folder returns this instead of training.
    write_json(out / RUN_MARKER, {**marker, "status": "finished", "summary": result})
    return {**result, "history": fitted.history}
