"""Evaluate job: a trained model (run id, ``models:/name/version`` or bundle folder) on a
prepared dataset, logged as an evaluation run in MLflow.

Run it as ``recsys evaluate --model MODEL --data DIR``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys import allocation
from recsys.bundle import load_bundle, resolve_model
from recsys.data.dataset import SequenceData, gather_ragged
from recsys.evaluation.evaluate import PROTOCOLS, EvalConfig, evaluate
from recsys.evaluation.metrics import bootstrap_ci
from recsys.explain.faithfulness import measure
from recsys.options import option, to_flat
from recsys.tracking import URI_HELP, log_eval_result, log_params, protocol_label, setup
from recsys.training.derive import HISTORY


@dataclass
class EvaluateJobConfig:
    """Everything the evaluate job needs; logged as params of the evaluation run."""

    model: str = option(help="MLflow run id, models:/NAME/VERSION, or a bundle folder")
    data: str = option(help="prepared-dataset folder the model was trained on")
    stage: str = option("test", "which targets", choices=("valid", "test"))
    history: str = option(
        "auto",
        "items of the user's history: exclude them (a target already in the history is "
        "then a miss: no door would show it), include them, or auto: the model's choice",
        choices=HISTORY,
    )
    protocol: str = option(
        "full", "full ranking, or the paper's 100 sampled negatives", choices=PROTOCOLS
    )
    eval_ks: list[int] = option(default_factory=lambda: [1, 5, 10, 20], help="cut-offs K")
    experiment: str | None = option(None, "MLflow experiment", default_text="the dataset name")
    tracking_uri: str | None = option(None, "MLflow tracking URI", default_text=URI_HELP)
    explain: bool = option(
        False,
        "also measure how faithful each explanation method is on the stage's users' top-1 "
        "item (comprehensiveness, sufficiency, deletion curve; against random and "
        "most-recent baselines)",
    )
    explain_users: int = option(2000, "users sampled for --explain (0: all)")
    rerank: str | None = option(
        None,
        "measure re-ranked lists: a re-ranking config (TOML, README: Re-ranking); 'none': "
        "the model's own ranking",
        default_text="the config stored with the model, if any",
    )
    log: bool = option(True, "log an evaluation run to MLflow")
    progress: bool = option(True, "progress bars")


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
        ks=tuple(cfg.eval_ks), exclude_seen=bundle.exclude_seen(cfg.history), protocol=cfg.protocol
    )
    eval_cfg = eval_cfg.within(data.num_items)
    if cfg.log:  # before evaluating: a tracking server that is down fails at once
        setup(cfg.experiment or info["dataset_name"], cfg.tracking_uri)
    plan = allocation.plan_for(bundle, cfg.rerank)
    if plan is not None:
        plan.check_k(max(eval_cfg.ks))
    res = evaluate(
        bundle.scorer, data, cfg.stage, eval_cfg, progress=cfg.progress,
        features=bundle.features, rerank=plan,
    )  # fmt: skip
    out: dict[str, Any] = {
        "model": cfg.model,
        **res.describe(),
        **info,
        "protocol": protocol_label(res.exclude_seen, res.protocol),
        "metrics": res.flat(),
        "rerank": None if plan is None else plan.cfg.to_dict(),
    }
    faithfulness = None
    if cfg.explain:
        faithfulness = _faithfulness(bundle, data, cfg)
        out["explain"] = faithfulness["metrics"]
    if cfg.log:
        with mlflow.start_run(run_name=f"evaluate {bundle.meta['kind']}") as active:
            log_params({**to_flat(cfg), **info, **({} if plan is None else plan.cfg.flat())})
            mlflow.set_tags({"kind": "evaluation", "evaluated_model": cfg.model})
            log_eval_result(res)
            if faithfulness is not None:
                mlflow.log_metrics(faithfulness["metrics"])
                mlflow.log_figure(faithfulness["figure"], "explain_deletion_curve.png")
        out["run_id"] = active.info.run_id
    return out


def _faithfulness(bundle: Any, data: SequenceData, cfg: EvaluateJobConfig) -> dict[str, Any]:
    """Each method's faithfulness on the stage users' histories: metrics named
    ``explain_<ordering>_<measure>`` with 95% CIs, and the deletion-curve figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = data.stage(cfg.stage)
    rows = np.arange(len(st.users))
    if cfg.explain_users and cfg.explain_users < len(rows):
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(rows, cfg.explain_users, replace=False))
    flat, offsets = gather_ragged(data.items, st.hist_start[rows], st.hist_stop[rows])
    results, seconds = measure(bundle, flat, offsets)
    metrics: dict[str, float] = {}
    fig, ax = plt.subplots(figsize=(7, 4))
    for ordering, values in results.items():
        name = ordering.replace(" ", "_")
        for measure_name, per_user in values.items():
            if measure_name == "deletion_curve":
                continue
            key = f"explain_{name}_{measure_name.replace('@', '_at_')}"
            metrics[key] = float(per_user.mean())
            metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"] = bootstrap_ci(per_user, 1000)
        curve = values["deletion_curve"].mean(0)
        ax.plot(np.linspace(0, 100, len(curve)), curve, marker="o", label=ordering)
    for method, secs in seconds.items():
        metrics[f"explain_{method}_seconds"] = secs
    ax.set_xlabel("history events removed, most important first (%)")
    ax.set_ylabel("change in the top-1 item's score")
    ax.set_title(f"deletion curves, {len(rows)} {cfg.stage} users (lower is more faithful)")
    ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return {"metrics": metrics, "figure": fig}
