"""``recsys generate`` and ``recsys prepare``: the data jobs."""

from __future__ import annotations

import argparse
import json

from recsys.cli.common import EPILOG, build_config, given_flags


def add_generate(sub: argparse._SubParsersAction) -> None:
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

    out = run(build_config(GenerateConfig, args))
    print(f"wrote {out['rows']:,} interactions of {out['users']:,} users to {args.output}")
    return 0


def add_prepare(sub: argparse._SubParsersAction) -> None:
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

    manifest = run(build_config(PrepareConfig, given_flags(args, ["input", "output"])))
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
