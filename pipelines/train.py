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
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from recsys.bundle import ARTIFACT_PATH, save_bundle
from recsys.config import to_dict
from recsys.data.dataset import SequenceData
from recsys.evaluation.evaluate import EvalConfig, Scorer, evaluate
from recsys.io import check_output_folder, json_has_keys, read_json, safe_name, write_json
from recsys.models.sasrec import SASRecConfig
from recsys.models.scorers import MostPopular, SASRecScorer
from recsys.tracking import (
    git_commit,
    log_eval_result,
    log_learning_curve,
    log_params,
    project_run_id,
    protocol_label,
    setup,
)
from recsys.training.trainer import BEST, LAST, TrainConfig, Trainer

log = logging.getLogger(__name__)

# Best validation NDCG@10 per second of training on ml-100k (benchmarks/ml100k.py).
DEFAULT_LOSS = "sampled-softmax"
RUN_MARKER = "run.json"  # marks a run folder as ours; records the run id and its status
RUN_FILES = (RUN_MARKER, "checkpoints/best.pt", "checkpoints/last.pt", "bundle/*")


@dataclass
class TrainJobConfig:
    """Everything the train job needs; the whole of it is logged as MLflow params."""

    data: str
    model: str = "sasrec"  # or "most-popular" (the baseline, same evaluation)
    loss: str = DEFAULT_LOSS
    max_len: int = 50
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int | None = None
    dropout: float = 0.2
    attn_dropout: float = 0.0
    pre_ln: bool = True
    scale_embeddings: bool = True
    tie_embeddings: bool = True
    repeat_bias: bool = True  # the model config keeps False (the paper's model, old bundles)
    epochs: int = 200
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    num_negatives: int = 256
    gbce_t: float = 0.75
    patience: int = 10
    eval_every: int = 1
    seed: int = 0
    threads: int = 0
    window: str = "random"
    include_seen_in_eval: bool = False
    eval_ks: list[int] = dataclasses.field(default_factory=lambda: [1, 5, 10, 20])
    sampled_eval: bool = False
    experiment: str | None = None
    tracking_uri: str | None = None
    run_name: str | None = None
    output: str | None = None
    resume: bool = False
    register_name: str | None = None  # model registry name; default recsys-EXPERIMENT
    parent_run_id: str | None = None  # set by recsys sweep: the sweep's parent run
    sweep_key: str | None = None  # set by recsys sweep: identifies this child's config
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in ("sasrec", "most-popular"):
            raise ValueError(
                f"model {self.model!r} is unknown; expected 'sasrec' or 'most-popular'"
            )
        if self.resume and not self.output:
            raise ValueError("resume needs the output folder of the interrupted run (--output)")

    def model_config(self, num_items: int) -> SASRecConfig:
        names = {f.name for f in dataclasses.fields(SASRecConfig)} - {"num_items"}
        return SASRecConfig(num_items=num_items, **{n: getattr(self, n) for n in names})

    def train_config(self) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{n: getattr(self, n) for n in names})


@dataclass
class Fitted:
    """A trained model, ready to evaluate and to save as a bundle."""

    scorer: Scorer
    weights: dict[str, torch.Tensor]  # what save_bundle stores
    meta: dict[str, Any]  # train (and model) config for bundle.json
    summary: dict[str, float]  # best epoch, timings
    history: list[dict[str, float]]  # per-epoch records (empty for most-popular)


def make_trainer(
    cfg: TrainJobConfig,
    data: SequenceData,
    eval_cfg: EvalConfig,
    checkpoint_dir: Path | None = None,
) -> Trainer | None:
    """The SASRec trainer for ``cfg`` (None for most-popular, which has nothing to train)."""
    if cfg.model != "sasrec":
        return None
    return Trainer(
        cfg.model_config(data.num_items),
        cfg.train_config(),
        data,
        eval_cfg,
        checkpoint_dir=checkpoint_dir,
        progress=cfg.progress,
    )


def fit(cfg: TrainJobConfig, data: SequenceData, trainer: Trainer | None) -> Fitted:
    """Train with ``trainer`` (from :func:`make_trainer`), or count popularity without one."""
    t0 = time.perf_counter()
    meta: dict[str, Any] = {"train_config": to_dict(cfg)}
    if trainer is None:
        counts = data.item_counts()
        summary = {"train_seconds": time.perf_counter() - t0}
        weights = {"counts": torch.from_numpy(counts)}
        return Fitted(MostPopular(counts), weights, meta, summary, [])
    result = trainer.fit()
    meta["model_config"] = dataclasses.asdict(result.model.cfg)
    summary = {
        "best_epoch": result.best_epoch,
        "seconds_to_best": result.seconds_to_best,
        "train_seconds": result.seconds,
        "epochs_run": result.epochs_run,
    }
    return Fitted(
        SASRecScorer(result.model), result.model.state_dict(), meta, summary, result.history
    )


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
    experiment = safe_name(cfg.experiment or info["dataset_name"], "experiment name")
    register_name = safe_name(cfg.register_name or f"recsys-{experiment}", "register name")
    eval_cfg = EvalConfig(ks=tuple(cfg.eval_ks), exclude_seen=not cfg.include_seen_in_eval)
    eval_cfg.check(data.num_items)
    setup(experiment, cfg.tracking_uri)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(cfg.output or Path("data") / "runs" / f"{experiment}-{stamp}")
    if not cfg.output:
        check_run_folder(out, resume=False)
    out.mkdir(parents=True, exist_ok=True)
    marker = {"written_by": "recsys train", "status": "running"}
    write_json(out / RUN_MARKER, marker)

    trainer = make_trainer(cfg, data, eval_cfg, out / "checkpoints")
    run_id = None
    if trainer is not None and cfg.resume and trainer.resume():
        run_id = trainer.extra.get("run_id")
    run_name = cfg.run_name or (f"{cfg.model}-{cfg.loss}-L{cfg.max_len}" if trainer else cfg.model)
    run_id = run_id or project_run_id()
    tags = {}
    if cfg.parent_run_id:
        tags = {"mlflow.parentRunId": cfg.parent_run_id, "sweep_key": cfg.sweep_key or ""}
    with mlflow.start_run(
        run_id=run_id, run_name=None if run_id else run_name, tags=tags or None
    ) as active:
        log_params({**to_dict(cfg), **info})
        mlflow.set_tags(
            {
                "model": cfg.model,
                "dataset": info["dataset_name"],
                "dataset_version": info["dataset_version"],
                "split": info["split"],
                "eval_protocol": protocol_label(eval_cfg.exclude_seen),
                "git_commit": git_commit() or "unknown",
            }
        )
        mlflow.log_dict(to_dict(cfg), "config.json")
        marker["run_id"] = active.info.run_id
        write_json(out / RUN_MARKER, marker)
        if trainer is not None:
            trainer.extra["run_id"] = active.info.run_id

            def on_epoch(rec: dict[str, float]) -> None:
                mlflow.log_metrics(
                    {k: v for k, v in rec.items() if k != "epoch"}, step=int(rec["epoch"])
                )

            trainer.on_epoch = on_epoch
        fitted = fit(cfg, data, trainer)
        scorer, weights, meta, summary = fitted.scorer, fitted.weights, fitted.meta, fitted.summary
        mlflow.log_metrics({k: float(v) for k, v in summary.items()})

        # Final metrics go at the last epoch's step, so that MLflow's summary value of
        # valid_ndcg_at_10 is the best model's (equal to the best epoch's) not the last's.
        last_step = int(summary.get("epochs_run", 0))
        metrics: dict[str, float] = {}
        protocols = [eval_cfg]
        if cfg.sampled_eval:
            protocols.append(dataclasses.replace(eval_cfg, protocol="sampled"))
        for stage in ("valid", "test"):
            for pcfg in protocols:
                res = evaluate(scorer, data, stage, pcfg, progress=cfg.progress)
                log_eval_result(res, step=last_step)
                metrics.update(res.flat())
        bundle = save_bundle(out / "bundle", cfg.model, weights, data, meta)
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
