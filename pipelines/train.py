"""Train job: prepared dataset → trained model, evaluated and tracked in one MLflow run.

Run it as ``recsys train --data DIR ...``. The run (in an experiment named after the
dataset) gets every config value as a param, the dataset's identity, per-epoch loss,
validation NDCG@10 and throughput, the final validation and test metrics with 95% CIs,
and as artifacts the config, the model bundle (vocabularies and best weights included),
the best checkpoint, per-user metrics and a learning-curve plot.

Under torchrun (``recsys train --nproc N`` starts it), every process runs this job:
rank 0 does all of the above, the other ranks load the same data and train their share
of every batch (:mod:`recsys.training.distributed`), and return once training stops.
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
from recsys.errors import TrainingError
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
from recsys.training import distributed
from recsys.training.distributed import World
from recsys.training.fit import FitConfig, eval_config, fit, make_trainer, with_data_defaults
from recsys.training.hardware import resolve_device
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
    nproc: int = option(
        1,
        "training processes on this machine, data-parallel (recsys train starts them with "
        "torchrun); each trains its share of every batch of --batch-size users",
    )
    torchrun: str | None = option(
        None,
        "more torchrun flags for --nproc, to train on several machines: e.g. "
        "'--nnodes 2 --node-rank 0 --master-addr HOST --master-port 29500'",
        default_text="none: this machine only",
    )
    dist_timeout: float = option(
        30.0,
        "minutes a data-parallel process waits for the others (rank 0's validation "
        "included) before the job stops with an error",
    )
    parent_run_id: str | None = option(None, "the sweep's parent run", cli=False)
    train_key: str | None = option(None, "a sweep child's training options", cli=False)
    sweep_key: str | None = option(None, "identifies a sweep child's config", cli=False)

    def __post_init__(self) -> None:
        if self.resume and not self.output:
            raise ValueError("resume needs the output folder of the interrupted run (--output)")
        if self.nproc < 1:
            raise ValueError(f"nproc={self.nproc}: expected at least 1")
        if self.dist_timeout <= 0:
            raise ValueError(f"dist_timeout={self.dist_timeout}: expected > 0 minutes")

    @property
    def data_parallel(self) -> bool:
        """Whether this job asks for several processes (here or on several machines)."""
        return self.nproc > 1 or bool(self.torchrun)


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


def default_output(cfg: TrainJobConfig) -> Path:
    """A new run folder, ``data/runs/EXPERIMENT-TIME-XXXXXX`` (runs started in the same
    second, a sweep's quick children, never share one)."""
    name = cfg.experiment
    if not name:
        manifest = read_json(Path(cfg.data) / "manifest.json", "a prepared dataset's manifest")
        name = manifest["dataset"]["name"]
    experiment = safe_name(name, "experiment name")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path("data") / "runs" / f"{experiment}-{stamp}-{uuid.uuid4().hex[:6]}"


def run(cfg: TrainJobConfig) -> dict[str, Any]:
    """Train, evaluate and log one model; return a summary (run id, metrics, bundle).

    Resuming (``cfg.resume``) a run that already finished trains nothing and returns
    the finished run's summary, with ``already_finished`` set. Under torchrun, every
    process calls this: rank 0 returns the summary, the others ``rank``,
    ``epochs_run`` and ``best_epoch`` once training stops.

    Raises
    ------
    TrainingError
        Under torchrun, when another process was lost (it died, or did not answer within
        ``dist_timeout`` minutes).
    """
    if cfg.data_parallel and not distributed.launched():
        raise ValueError(
            f"nproc={cfg.nproc}: several training processes are started by the command "
            "line (recsys train --nproc N, which launches torchrun) or by torchrun itself"
        )
    device = resolve_device(cfg.fit.train.device)
    with distributed.process_group(device, cfg.dist_timeout) as world:
        try:
            return _run(cfg, world)
        except RuntimeError as e:
            if not world.distributed or isinstance(e, TrainingError):
                raise
            if not distributed.is_lost_peer(e):
                raise
            first = " ".join(str(e).split())[:200]
            raise TrainingError(
                f"rank {world.rank}: {distributed.LOST} ({first}); the job stops"
            ) from e


def _check_same(cfg: TrainJobConfig, info: dict[str, Any], world: World) -> None:
    """Refuse to train when the ranks (on several machines) differ in options or data."""
    own = {k: v for k, v in to_flat(cfg.fit).items() if k != "progress"}
    own["dataset_version"] = info["dataset_version"]
    everyone = distributed.gather(own, world)
    for rank, theirs in enumerate(everyone):
        differ = sorted(k for k in own if theirs.get(k) != everyone[0].get(k))
        if differ:
            values = ", ".join(f"{k}={theirs.get(k)!r}" for k in differ)
            zero = ", ".join(f"{k}={everyone[0].get(k)!r}" for k in differ)
            raise ValueError(
                f"the training processes differ: rank {rank} has {values} where rank 0 has "
                f"{zero}; every machine must run the same options on the same prepared data"
            )


def _train_other_rank(cfg: TrainJobConfig, data: SequenceData, world: World) -> dict[str, Any]:
    """A rank other than 0: train its share of every batch, in step with rank 0."""
    trainer = make_trainer(cfg.fit, data, None, world=world)
    if trainer is None:  # most-popular: rank 0 counts alone
        return {"rank": world.rank, "world_size": world.size}
    if cfg.resume:
        trainer.resume()
    result = trainer.fit()
    return {
        "rank": world.rank,
        "world_size": world.size,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
    }


def _run(cfg: TrainJobConfig, world: World) -> dict[str, Any]:
    import mlflow

    previous = None
    if cfg.output and world.main:
        previous = check_run_folder(Path(cfg.output), cfg.resume)
    # Every rank learns whether there is anything to do (only rank 0 reads the folder).
    finished = bool(previous and previous.get("status") == "finished")
    if distributed.broadcast(finished, world):
        if not world.main:
            return {"rank": world.rank, "world_size": world.size, "already_finished": True}
        assert previous is not None
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
    if world.distributed:
        _check_same(cfg, info, world)
        if not world.main:
            return _train_other_rank(cfg, data, world)
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
    out = Path(cfg.output or default_output(dataclasses.replace(cfg, experiment=experiment)))
    out.mkdir(parents=True, exist_ok=bool(cfg.output))
    marker = {"written_by": "recsys train", "status": "running"}
    write_json(out / RUN_MARKER, marker)

    trainer = make_trainer(cfg.fit, data, out / "checkpoints", world=world)
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
                "world_size": str(world.size),  # training processes (a tag: resumes may differ)
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
