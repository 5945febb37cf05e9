"""``recsys train``, ``recsys evaluate`` and ``recsys recommend``: the model jobs."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from recsys.cli.common import add_job, build_config


def add_train(sub: argparse._SubParsersAction) -> None:
    from pipelines.train import TrainJobConfig

    add_job(
        sub,
        "train",
        TrainJobConfig,
        _run_train,
        help="train SASRec (or the most-popular baseline), evaluate it, log it to MLflow",
        description="Train on a prepared dataset with early stopping on validation "
        "NDCG@10 (full ranking), then evaluate the best epoch on validation and test "
        "(HR, NDCG, MRR, Recall, coverage @ K with 95% bootstrap CIs, and the lists' "
        "diversity, novelty, calibration and exposure Gini). Everything goes "
        "to one MLflow run in an experiment named after the dataset: params, per-epoch "
        "metrics, test metrics, the model bundle, the best checkpoint, per-user metrics "
        "and a learning-curve plot. With no options it trains the recommended default.",
        epilog="Example: recsys train --data data/prepared/ml-100k. Tracking defaults to "
        "the SQLite store mlruns/mlflow.db (see `mlflow ui --backend-store-uri "
        "sqlite:///mlruns/mlflow.db`); MLFLOW_TRACKING_URI or --tracking-uri override it. "
        "An interrupted run continues with the same --output and --resume.",
    )


def _run_train(args: argparse.Namespace) -> int:
    from pipelines.train import TrainJobConfig, run
    from recsys.training import distributed

    cfg = build_config(TrainJobConfig, args)
    if cfg.data_parallel and not distributed.launched():
        return _launch_train(cfg, args.log_level)
    world = distributed.env_world()
    if not world.main:
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
    out = run(cfg)
    if not world.main:
        # Rank 0 prints the summary; the others say that they stopped with it.
        if "epochs_run" in out:
            print(
                f"rank {world.rank} of {world.size}: stopped after epoch {out['epochs_run']} "
                f"(best epoch {out['best_epoch']})"
            )
        return 0
    if out.get("already_finished"):
        print(f"{cfg.output}: this run already finished; nothing to resume (its summary:)")
    _print_summary(
        out,
        ["run_id", "experiment", "registered_model", "bundle", "best_epoch", "seconds_to_best"],
    )
    return 0


def _launch_train(cfg: Any, log_level: str) -> int:
    """``recsys train --nproc N``: the same job in N processes under torchrun.

    Every process reads the whole config from one file, with the output folder fixed
    here, so that a failed job can be continued with ``--resume --output``.
    """
    import dataclasses
    import json
    import tempfile
    from pathlib import Path

    from pipelines.train import default_output
    from recsys.errors import TrainingError
    from recsys.options import to_flat
    from recsys.training import distributed
    from recsys.training.trainer import LAST

    if not cfg.output:
        cfg = dataclasses.replace(cfg, output=str(default_output(cfg)))
    with tempfile.TemporaryDirectory(prefix="recsys-train-") as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps(to_flat(cfg)))
        argv = ["--log-level", log_level, "train", "--config", str(config)]
        try:
            distributed.launch(cfg.nproc, argv, torchrun=cfg.torchrun)
        except TrainingError as e:
            # Said only where there is something to resume (on rank 0's machine).
            if (Path(cfg.output) / "checkpoints" / LAST).is_file():
                more = "" if cfg.resume else f" and --resume --output {cfg.output}"
                raise TrainingError(f"{e}; continue it with the same command{more}") from None
            raise
    return 0


def _print_summary(out: dict[str, Any], keys: Sequence[str]) -> None:
    """Key facts, then the @10 metrics with their 95% CIs and protocol, one per line."""
    for key in keys:
        if key in out:
            value = out[key]
            print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")
    metrics = out.get("metrics", out)
    print(f"protocol: {out.get('protocol', '')}")
    for name, value in metrics.items():
        if name.endswith("_at_10") and not name.startswith("test_coverage"):
            low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
            ci = f"  (95% CI {low:.4f}-{high:.4f})" if low is not None else ""
            print(f"{name}: {value:.4f}{ci}")


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    from pipelines.evaluate import EvaluateJobConfig

    add_job(
        sub,
        "evaluate",
        EvaluateJobConfig,
        _run_evaluate,
        help="evaluate a trained model on a prepared dataset",
        description="Rank each user's test (or validation) targets against the whole "
        "catalogue and report HR, NDCG, MRR, Recall and coverage @ K with 95% bootstrap "
        "CIs, and the lists' diversity, novelty, calibration and exposure Gini "
        "(--rerank: of the re-ranked lists); logged as an evaluation run in MLflow.",
        epilog="MODEL is an MLflow run id, models:/NAME/VERSION or a bundle folder. "
        "Example: recsys evaluate --model 1a2b3c... --data data/prepared/ml-100k.",
    )


def _run_evaluate(args: argparse.Namespace) -> int:
    from pipelines.evaluate import EvaluateJobConfig, run

    out = run(build_config(EvaluateJobConfig, args))
    _print_summary(out, ["model", "run_id", "dataset_name", "dataset_version", "split", "users"])
    if "explain" in out:
        m = out["explain"]
        print("explanations, top-1 item's score drop when 3 events are removed (95% CI):")
        for name in ("occlusion", "gradient", "attention", "most_recent", "random"):
            key = f"explain_{name}_comprehensiveness_at_3"
            low, high = m[f"{key}_ci_low"], m[f"{key}_ci_high"]
            print(f"  {name:12s} {m[key]:.4f} ({low:.4f}-{high:.4f})")
    return 0


def add_recommend(sub: argparse._SubParsersAction) -> None:
    from pipelines.recommend import RecommendConfig

    add_job(
        sub,
        "recommend",
        RecommendConfig,
        _run_recommend,
        help="write top-K recommendations for all (or listed) users to Parquet",
        description="Score users in fixed-size chunks (flat memory whatever the number of "
        "users) and write OUTPUT/part-*.parquet with columns user_id, rank (1 = best), "
        "item_id, score, in raw IDs; the folder reads as one table. Items of a user's known "
        "history are never recommended unless --include-seen. Each part is written "
        "atomically; a killed job re-run with the same arguments continues from the "
        "finished parts.",
        epilog="MODEL is an MLflow run id, models:/NAME/VERSION or a bundle folder. "
        "Example: recsys recommend --model data/demo/run/bundle --users all --k 100 "
        "--output data/demo/recommendations.",
    )


def _run_recommend(args: argparse.Namespace) -> int:
    from pipelines.recommend import RecommendConfig, run

    cfg = build_config(RecommendConfig, args)
    m = run(cfg)
    print(
        f"{m['rows']:,} recommendations for {m['num_users']:,} users (k={m['k']}) in "
        f"{m['parts']} part(s) under {cfg.output}"
    )
    _preview(cfg.output, cfg.model, cfg.tracking_uri)
    return 0


def _preview(output: str, model: str, tracking_uri: str | None, users: int = 3, k: int = 5):
    """Print the first users' top items, with titles when the model's vocabulary has them."""
    from pathlib import Path

    import polars as pl

    from recsys.bundle import resolve_model

    first = pl.read_parquet(Path(output) / "part-00000.parquet")
    shown = first["user_id"].unique(maintain_order=True).head(users)
    top = first.filter(pl.col("user_id").is_in(shown.implode()) & (pl.col("rank") <= k))
    # Only the titles are needed, not the weights and index a full bundle load reads.
    vocab = pl.read_parquet(resolve_model(model, tracking_uri) / "vocab_items.parquet")
    if "title" in vocab.columns:
        top = top.join(vocab.select("item_id", "title"), on="item_id", how="left")
    for user, rows in top.group_by("user_id", maintain_order=True):
        print(f"user {user[0]}:")
        for row in rows.iter_rows(named=True):
            title = f"  {row['title']}" if row.get("title") else ""
            print(f"  {row['rank']:>3}. item {row['item_id']}{title}  (score {row['score']:.3f})")


def add_explain(sub: argparse._SubParsersAction) -> None:
    from pipelines.explain import ExplainConfig

    add_job(
        sub,
        "explain",
        ExplainConfig,
        _run_explain,
        help="why a user gets their recommendations: each history event's contribution",
        description="Explain one user's top-k recommendations (or --items): per item, the "
        "history events that made its score, largest contribution first, with titles where "
        "the item vocabulary has them. Methods: occlusion (the score drop when the event is "
        "removed; the default), attention (rollout), gradient (integrated gradients). "
        "--plot draws a heat map of history events by items.",
        epilog="Example: recsys explain --model data/demo/run/bundle --user 17 --k 3 "
        "--plot why.png",
    )


def _run_explain(args: argparse.Namespace) -> int:
    from pipelines.explain import ExplainConfig, run

    cfg = build_config(ExplainConfig, args)
    out = run(cfg)
    print(out["text"])
    if cfg.plot:
        print(f"heat map: {cfg.plot}")
    return 0
