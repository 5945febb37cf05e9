"""``recsys train``, ``recsys evaluate`` and ``recsys recommend``: the model jobs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from recsys.cli.common import build_config, given_flags


def add_train(sub: argparse._SubParsersAction) -> None:
    from pipelines.train import DEFAULT_LOSS

    p = sub.add_parser(
        "train",
        help="train SASRec (or the most-popular baseline), evaluate it, log it to MLflow",
        description="Train on a prepared dataset with early stopping on validation "
        "NDCG@10 (full ranking), then evaluate the best epoch on validation and test "
        "(HR, NDCG, MRR, Recall, coverage @ K with 95%% bootstrap CIs). Everything goes "
        "to one MLflow run in an experiment named after the dataset: params, per-epoch "
        "metrics, test metrics, the model bundle, the best checkpoint, per-user metrics "
        "and a learning-curve plot. With no options it trains the recommended default.",
        epilog="Example: recsys train --data data/prepared/ml-100k. Tracking defaults to "
        "the SQLite store mlruns/mlflow.db (see `mlflow ui --backend-store-uri "
        "sqlite:///mlruns/mlflow.db`); MLFLOW_TRACKING_URI or --tracking-uri override it. "
        "An interrupted run continues with the same --output and --resume.",
    )
    a = p.add_argument
    a("--config", help="JSON/TOML file of the same options (flags override)")
    a("--data", help="prepared-dataset folder (from recsys prepare)")
    a("--model", choices=["sasrec", "most-popular"], help="model kind (default sasrec)")
    a(
        "--loss",
        choices=["ce", "bce", "sampled-softmax", "gbce"],
        help=f"training loss (default {DEFAULT_LOSS}: best validation NDCG@10 per second "
        "on ml-100k)",
    )
    a("--max-len", dest="max_len", type=int, help="history length the model reads (default 50)")
    a("--d-model", dest="d_model", type=int, help="hidden size (default 64)")
    a("--n-layers", dest="n_layers", type=int, help="attention blocks (default 2)")
    a("--n-heads", dest="n_heads", type=int, help="attention heads (default 2)")
    a("--dropout", type=float, help="dropout (default 0.2)")
    a("--attn-dropout", dest="attn_dropout", type=float, help="attention dropout (default 0)")
    a(
        "--post-ln",
        dest="pre_ln",
        action="store_false",
        default=None,
        help="the paper's post-LN blocks (default pre-LN)",
    )
    a(
        "--window",
        choices=["random", "last"],
        help="which max-len events of a longer user an epoch trains on: a random full "
        "window (default) or the last (the paper's)",
    )
    a(
        "--untied-embeddings",
        dest="tie_embeddings",
        action="store_false",
        default=None,
        help="score with separate output item embeddings (gSASRec's; use with gbce)",
    )
    a(
        "--repeat-bias",
        dest="repeat_bias",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="learn a score offset for items already in the history, by how long ago they "
        "were consumed (default on): learns from the data whether people repeat",
    )
    a("--epochs", type=int, help="most epochs (default 200; early stopping ends sooner)")
    a("--batch-size", dest="batch_size", type=int, help="users per batch (default 128)")
    a("--lr", type=float, help="AdamW learning rate (default 2e-3)")
    a("--weight-decay", dest="weight_decay", type=float, help="AdamW weight decay (default 0)")
    a("--grad-clip", dest="grad_clip", type=float, help="max gradient norm, 0 off (default 1)")
    a(
        "--num-negatives",
        dest="num_negatives",
        type=int,
        help="negatives for sampled-softmax/gbce (default 256)",
    )
    a(
        "--patience",
        type=int,
        help="validations without improvement to stop (default 10; gbce sits at the "
        "popularity level for dozens of epochs on small data: give it ~60)",
    )
    a("--eval-every", dest="eval_every", type=int, help="epochs between validations (default 1)")
    a("--seed", type=int, help="random seed (default 0)")
    a("--threads", type=int, help="torch threads (default: all available cores)")
    a(
        "--include-seen-in-eval",
        dest="include_seen_in_eval",
        action="store_true",
        default=None,
        help="rank the user's history items too (RecBole's way); default: excluded",
    )
    a("--eval-ks", dest="eval_ks", type=int, nargs="+", help="cut-offs K (default 1 5 10 20)")
    a(
        "--sampled-eval",
        dest="sampled_eval",
        action="store_true",
        default=None,
        help="also report the paper's sampled protocol (100 negatives), named 'sampled'",
    )
    a("--experiment", help="MLflow experiment (default: the dataset name)")
    a("--tracking-uri", dest="tracking_uri", help="MLflow tracking URI (default: see below)")
    a("--run-name", dest="run_name", help="MLflow run name")
    a(
        "--register-name",
        dest="register_name",
        help="model registry name (default recsys-EXPERIMENT); each run adds a version",
    )
    a("--output", help="folder for checkpoints and the bundle (default data/runs/NAME-TIME)")
    a("--resume", action="store_true", default=None, help="continue an interrupted run")
    a("--no-progress", dest="progress", action="store_false", default=None, help="no bars")
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from pipelines.train import TrainJobConfig, run

    out = run(build_config(TrainJobConfig, given_flags(args, ["data"])))
    if out.get("already_finished"):
        print(f"{args.output}: this run already finished; nothing to resume (its summary:)")
    _print_summary(
        out,
        ["run_id", "experiment", "registered_model", "bundle", "best_epoch", "seconds_to_best"],
    )
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
    p = sub.add_parser(
        "evaluate",
        help="evaluate a trained model on a prepared dataset",
        description="Rank each user's test (or validation) targets against the whole "
        "catalogue and report HR, NDCG, MRR, Recall and coverage @ K with 95%% bootstrap "
        "CIs; logged as an evaluation run in MLflow.",
        epilog="MODEL is an MLflow run id, models:/NAME/VERSION or a bundle folder. "
        "Example: recsys evaluate --model 1a2b3c... --data data/prepared/ml-100k",
    )
    a = p.add_argument
    a("--config", help="JSON/TOML file of the same options (flags override)")
    a("--model", help="MLflow run id, models:/NAME/VERSION, or a bundle folder")
    a("--data", help="prepared-dataset folder the model was trained on")
    a("--stage", choices=["valid", "test"], help="which targets (default test)")
    a(
        "--include-seen-in-eval",
        dest="include_seen_in_eval",
        action="store_true",
        default=None,
        help="rank the user's history items too; default: excluded",
    )
    a(
        "--protocol",
        choices=["full", "sampled"],
        help="full ranking (default) or the paper's 100 sampled negatives",
    )
    a("--eval-ks", dest="eval_ks", type=int, nargs="+", help="cut-offs K (default 1 5 10 20)")
    a("--experiment", help="MLflow experiment (default: the dataset name)")
    a("--tracking-uri", dest="tracking_uri", help="MLflow tracking URI")
    a("--no-log", dest="log_run", action="store_false", default=None, help="no MLflow run")
    a("--no-progress", dest="progress", action="store_false", default=None, help="no bars")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pipelines.evaluate import EvaluateJobConfig, run

    out = run(build_config(EvaluateJobConfig, given_flags(args, ["model", "data"])))
    _print_summary(out, ["model", "run_id", "dataset_name", "dataset_version", "split", "users"])
    return 0


def add_recommend(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recommend",
        help="write top-K recommendations for all (or listed) users to Parquet",
        description="Score users in fixed-size chunks (flat memory whatever the number of "
        "users) and write OUTPUT/part-*.parquet with columns user_id, rank (1 = best), "
        "item_id, score, in raw IDs, then OUTPUT/manifest.json. Items of a user's known "
        "history are never recommended unless --include-seen. Each part is written "
        "atomically; a killed job re-run with the same arguments continues from the "
        "finished parts.",
        epilog="MODEL is an MLflow run id, models:/NAME/VERSION or a bundle folder. "
        "Example: recsys recommend --model data/demo/run/bundle --users all --k 100 "
        "--output data/demo/recommendations",
    )
    a = p.add_argument
    a("--config", help="JSON/TOML file of the same options (flags override)")
    a("--model", help="MLflow run id, models:/NAME/VERSION, or a bundle folder")
    a("--users", help="'all' (default) or a file of user IDs (.txt, or .csv/.parquet with user_id)")
    a("--k", type=int, help="recommendations per user (default 100)")
    a("--output", help="folder for the Parquet parts and manifest")
    a(
        "--include-seen",
        dest="include_seen",
        action="store_true",
        default=None,
        help="allow items of the user's history",
    )
    a("--chunk-users", dest="chunk_users", type=int, help="users per part (default 10000)")
    a("--tracking-uri", dest="tracking_uri", help="MLflow tracking URI (for run ids)")
    a("--no-progress", dest="progress", action="store_false", default=None, help="no bars")
    p.set_defaults(handler=_run_recommend)


def _run_recommend(args: argparse.Namespace) -> int:
    from pipelines.recommend import RecommendConfig, run

    cfg = build_config(RecommendConfig, given_flags(args, ["model", "output"]))
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
