"""Evaluate job: a trained model (run id, ``models:/name/version`` or bundle folder) on a
prepared dataset, logged as an evaluation run in MLflow.

Run it as ``recsys evaluate --model MODEL --data DIR``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from recsys.bundle import load_bundle, resolve_model
from recsys.config import to_dict
from recsys.data.dataset import SequenceData
from recsys.evaluation.evaluate import EvalConfig, evaluate
from recsys.tracking import log_eval_result, log_params, protocol_label, setup


@dataclass
class EvaluateJobConfig:
    """Everything the evaluate job needs; logged as params of the evaluation run."""

    model: str
    data: str
    stage: str = "test"
    include_seen_in_eval: bool = False
    protocol: str = "full"
    eval_ks: list[int] = dataclasses.field(default_factory=lambda: [1, 5, 10, 20])
    experiment: str | None = None
    tracking_uri: str | None = None
    log_run: bool = True
    progress: bool = True


def run(cfg: EvaluateJobConfig) -> dict[str, Any]:
    """Evaluate, log and return the metrics with their protocol."""
    import mlflow

    bundle = load_bundle(resolve_model(cfg.model, cfg.tracking_uri))
    data = SequenceData.load(cfg.data)
    info = data.dataset_info()
    trained_on = bundle.dataset
    if trained_on["vocab_items_sha256"] != info["vocab_items_sha256"]:
        raise ValueError(
            f"model {cfg.model!r} was trained on dataset {trained_on['dataset_name']!r} "
            f"(version {trained_on['dataset_version']}) whose item vocabulary differs from "
            f"{cfg.data!r} ({info['dataset_name']!r}, version {info['dataset_version']}); "
            "evaluate on the prepared dataset it was trained on"
        )
    eval_cfg = EvalConfig(
        ks=tuple(cfg.eval_ks), exclude_seen=not cfg.include_seen_in_eval, protocol=cfg.protocol
    )
    res = evaluate(bundle.scorer, data, cfg.stage, eval_cfg, progress=cfg.progress)
    out: dict[str, Any] = {
        "model": cfg.model,
        **res.describe(),
        **info,
        "protocol": protocol_label(res.exclude_seen, res.protocol),
        "metrics": res.flat(),
    }
    if cfg.log_run:
        setup(cfg.experiment or info["dataset_name"], cfg.tracking_uri)
        with mlflow.start_run(run_name=f"evaluate {bundle.meta['kind']}") as active:
            log_params({**to_dict(cfg), **info})
            mlflow.set_tags({"kind": "evaluation", "evaluated_model": cfg.model})
            log_eval_result(res)
        out["run_id"] = active.info.run_id
    return out
