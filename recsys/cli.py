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

    given = argparse.Namespace(**{k: v for k, v in vars(args).items() if v is not None})
    if not getattr(given, "config", None):
        given.config = None
    for required in ("input", "output"):
        if getattr(given, required, None) is None and not given.config:
            raise ValueError(f"--{required} is required (or give it in --config)")
    manifest = run(_config(PrepareConfig, given))
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


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_generate, _add_prepare]


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
