"""The ``recsys`` command line: one subcommand per job, each with ``--help``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from recsys.config import from_dict, load_config_file

log = logging.getLogger("recsys")

EPILOG = "Bad input exits with status 2 and a message naming the file, column and row."


def _config(cls: type, args: argparse.Namespace, skip: Sequence[str] = ()) -> Any:
    """Merge ``--config FILE`` values with the flags given (flags win) into ``cls``."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    for key, value in vars(args).items():
        if key in ("config", "command", "handler", "log_level", *skip):
            continue
        values[key] = value
    return from_dict(cls, values, source=getattr(args, "config", None) or "command line")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="write a deterministic synthetic interaction log (Parquet)",
        description="Write a synthetic log with power-law item popularity, user taste "
        "clusters and sequential (Markov) structure, streamed to Parquet in chunks. "
        "The same arguments always give the same file.",
        epilog="Example: recsys generate --output data/synthetic.parquet --users 2000 "
        "--items 1000 --interactions 100000 --seed 0",
    )
    p.add_argument("--output", required=True, help="Parquet file to write")
    p.add_argument("--users", type=int, default=2_000, help="number of users (default 2000)")
    p.add_argument("--items", type=int, default=1_000, help="catalogue size (default 1000)")
    p.add_argument(
        "--interactions",
        type=int,
        default=100_000,
        help="total events, at least 3 per user (default 100000)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--clusters", type=int, default=20, help="user taste clusters (default 20)")
    p.set_defaults(handler=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from pipelines.generate import GenerateConfig, run

    out = run(_config(GenerateConfig, args))
    print(f"wrote {out['rows']:,} interactions of {out['users']:,} users to {args.output}")
    return 0


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="turn a raw interaction log into user sequences, vocabularies and splits",
        description="Read a raw log, filter it (rating threshold, repeats, k-core, minimum "
        "length), order each user's events by time (ties by row order), build ID "
        "vocabularies (index 0 = padding) and split it. Writes OUTPUT/manifest.json, "
        "vocab_*.parquet and sequences/*.parquet atomically.",
        epilog="Example: recsys prepare --input ../shared/datasets/ml-100k/u.data "
        "--format movielens --output data/prepared/ml-100k. " + EPILOG,
    )
    p.add_argument("--config", help="JSON/TOML file of the same options (flags override)")
    p.add_argument("--input", help="raw interaction file")
    p.add_argument(
        "--format",
        choices=["movielens", "csv", "parquet", "sasrec"],
        help="input format; movielens recognises 100K/1M/10M/20M+ by layout (default movielens)",
    )
    p.add_argument("--output", help="prepared-dataset folder to (re)write")
    p.add_argument(
        "--name",
        help="dataset name for the manifest and MLflow (default: "
        "the MovieLens folder name or the file stem)",
    )
    p.add_argument(
        "--items",
        help="item metadata file (u.item, movies.dat, movies.csv, "
        "items.tsv) to attach titles and genres",
    )
    p.add_argument("--user-col", dest="user_col", help="user column (csv/parquet)")
    p.add_argument("--item-col", dest="item_col", help="item column (csv/parquet)")
    p.add_argument("--time-col", dest="time_col", help="timestamp column (csv/parquet)")
    p.add_argument("--rating-col", dest="rating_col", help="rating column (csv/parquet)")
    p.add_argument("--separator", help="CSV separator (default ','; .tsv files use tabs)")
    p.add_argument(
        "--min-rating",
        dest="min_rating",
        type=float,
        help="keep events rated at least R (default: keep all)",
    )
    p.add_argument(
        "--k-core",
        dest="k_core",
        type=int,
        help="iterative k-core on users and items (default 0: off)",
    )
    p.add_argument(
        "--repeats",
        choices=["keep", "drop-consecutive", "drop-all"],
        help="repeated items in a user's sequence (default keep)",
    )
    p.add_argument(
        "--min-seq-len",
        dest="min_seq_len",
        type=int,
        help="minimum events per user (default 3 for leave-one-out, 1 temporal)",
    )
    p.add_argument(
        "--split",
        choices=["leave-one-out", "temporal"],
        help="leave-one-out (default): last item test, one before validation; "
        "temporal: global cut-off times",
    )
    p.add_argument(
        "--valid-cutoff",
        dest="valid_cutoff",
        type=float,
        help="temporal: validation cut-off, a quantile in (0,1) or a timestamp (default 0.8)",
    )
    p.add_argument(
        "--test-cutoff",
        dest="test_cutoff",
        type=float,
        help="temporal: test cut-off, a quantile in (0,1) or a timestamp "
        "(default 0.9); events at exactly the cut-off are test targets",
    )
    p.set_defaults(handler=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from pipelines.prepare import PrepareConfig, run

    manifest = run(_config(PrepareConfig, _given(args, ["input", "output"])))
    split = manifest["split"]
    print(
        json.dumps(
            {
                "output": args.output or manifest["config"]["output"],
                "dataset": manifest["dataset"],
                "num_users": manifest["num_users"],
                "num_items": manifest["num_items"],
                "num_interactions": manifest["num_interactions"],
                "dropped": {s["step"]: s["dropped_rows"] for s in manifest["steps"][1:]},
                "split": split,
            },
            indent=2,
        )
    )
    return 0


def _given(args: argparse.Namespace, required: Sequence[str]) -> argparse.Namespace:
    """Only the flags actually given (so config-file values and defaults apply)."""
    given = argparse.Namespace(**{k: v for k, v in vars(args).items() if v is not None})
    if not getattr(given, "config", None):
        given.config = None
    for name in required:
        if getattr(given, name, None) is None and not given.config:
            raise ValueError(f"--{name.replace('_', '-')} is required (or give it in --config)")
    return given


def _add_train(sub: argparse._SubParsersAction) -> None:
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
    a("--patience", type=int, help="validations without improvement to stop (default 10)")
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

    out = run(_config(TrainJobConfig, _given(args, ["data"])))
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


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
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

    out = run(_config(EvaluateJobConfig, _given(args, ["model", "data"])))
    _print_summary(out, ["model", "run_id", "dataset_name", "dataset_version", "split", "users"])
    return 0


def _add_recommend(sub: argparse._SubParsersAction) -> None:
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

    cfg = _config(RecommendConfig, _given(args, ["model", "output"]))
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

    from recsys.bundle import load_bundle, resolve_model

    first = pl.read_parquet(Path(output) / "part-00000.parquet")
    shown = first["user_id"].unique(maintain_order=True).head(users)
    top = first.filter(pl.col("user_id").is_in(shown.implode()) & (pl.col("rank") <= k))
    vocab = load_bundle(resolve_model(model, tracking_uri)).item_vocab
    if "title" in vocab.columns:
        top = top.join(vocab.select("item_id", "title"), on="item_id", how="left")
    for user, rows in top.group_by("user_id", maintain_order=True):
        print(f"user {user[0]}:")
        for row in rows.iter_rows(named=True):
            title = f"  {row['title']}" if row.get("title") else ""
            print(f"  {row['rank']:>3}. item {row['item_id']}{title}  (score {row['score']:.3f})")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare training runs: metrics with CIs and paired significance tests",
        description="Print one row per finished training run of an experiment: the params "
        "that differ, the metric with its 95%% CI, training time and, against the "
        "baseline (default: the first run), the difference with a paired bootstrap "
        "p-value over per-user values, Holm-corrected across runs. Runs evaluated on "
        "different data (dataset version, split, protocol) are refused unless "
        "--allow-mixed. With --output, also writes comparison.csv, comparison.md and "
        "charts (comparison.png: metric with CI bars per run; learning_curves.png; "
        "metric_vs_time.png) and logs them as artifacts of a comparison run.",
        epilog="Example: recsys compare --experiment ml-100k --metric test_ndcg_at_10",
    )
    a = p.add_argument
    a("--experiment", required=True, help="MLflow experiment")
    a("--runs", nargs="+", help="run ids (or prefixes) to compare (default: all finished)")
    a("--baseline", help="run id (or prefix) to test against (default: the first run)")
    a("--metric", default="test_ndcg_at_10", help="metric (default test_ndcg_at_10)")
    a("--output", help="folder for comparison.csv, .md and .png")
    a("--allow-mixed", dest="allow_mixed", action="store_true", help="compare anyway")
    a("--no-log", dest="no_log", action="store_true", help="do not log the report to MLflow")
    a("--tracking-uri", dest="tracking_uri", help="MLflow tracking URI")
    p.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from recsys.comparison import compare, log_report, to_markdown, write_report

    table = compare(
        args.experiment,
        runs=args.runs,
        baseline=args.baseline,
        metric=args.metric,
        allow_mixed=args.allow_mixed,
        tracking_uri=args.tracking_uri,
    )
    print(to_markdown(table, args.metric))
    if args.output:
        files = write_report(table, args.metric, args.output, args.tracking_uri)
        print(f"wrote {', '.join(f.name for f in files)} to {args.output}")
        if not args.no_log:
            run_id = log_report(args.experiment, files, args.metric, args.tracking_uri)
            print(f"logged them as artifacts of comparison run {run_id}")
    return 0


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="train a grid of configs as child runs of one MLflow run",
        description="Run every combination of the --grid values (times --seeds), or "
        "--random N of them, one after another, each a full training run logged as a "
        "child of one parent run. A failed child is recorded as failed and the sweep goes "
        "on; running the same sweep again skips the children already finished.",
        epilog="Example: recsys sweep --data data/prepared/ml-100k --experiment ml-100k "
        "--grid loss=ce,bce max_len=50,200 --seeds 1,2. Then: recsys compare "
        "--experiment ml-100k",
    )
    a = p.add_argument
    a("--data", required=True, help="prepared-dataset folder")
    a("--experiment", required=True, help="MLflow experiment")
    a("--grid", nargs="+", required=True, help="NAME=V1,V2 per swept training option")
    a("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[], help="e.g. 1,2")
    a("--random", type=int, default=0, help="run N random combinations (default: all)")
    a("--set", nargs="*", default=[], help="NAME=VALUE training options for every child")
    a("--tracking-uri", dest="tracking_uri", help="MLflow tracking URI")
    p.set_defaults(handler=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    from pipelines.sweep import SweepConfig, run

    out = run(
        SweepConfig(
            data=args.data,
            experiment=args.experiment,
            grid=args.grid,
            seeds=args.seeds,
            random=args.random,
            set=args.set,
            tracking_uri=args.tracking_uri,
        )
    )
    print(f"parent run: {out['parent_run_id']}")
    for child in out["children"]:
        print("  " + ", ".join(f"{k}={v}" for k, v in child.items()))
    return 0 if out["failed"] < len(out["children"]) else 1


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_generate,
    _add_prepare,
    _add_train,
    _add_evaluate,
    _add_recommend,
    _add_compare,
    _add_sweep,
]


def build_parser() -> argparse.ArgumentParser:
    """Return the ``recsys`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="recsys",
        description="recsys: attention-based sequential recommendation, from raw logs to "
        "served recommendations. Run 'recsys COMMAND --help' for each command.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default INFO)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recsys`` console script.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 2 on bad input.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        return args.handler(args)
    except ValueError as e:
        print(f"recsys {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
