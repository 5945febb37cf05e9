"""``recsys generate`` and ``recsys prepare``: the data jobs."""

from __future__ import annotations

import argparse
import json

from recsys.cli.common import add_job, build_config


def add_generate(sub: argparse._SubParsersAction) -> None:
    from pipelines.generate import GenerateConfig

    add_job(
        sub,
        "generate",
        GenerateConfig,
        _run_generate,
        help="write a deterministic synthetic interaction log (Parquet)",
        description="Write a synthetic log with power-law item popularity, user taste "
        "clusters and sequential (Markov) structure, streamed to Parquet in chunks. "
        "The same arguments always give the same file.",
        epilog="Example: recsys generate --output data/synthetic.parquet --users 2000 "
        "--items 1000 --interactions 100000 --seed 0.",
    )


def _run_generate(args: argparse.Namespace) -> int:
    from pipelines.generate import GenerateConfig, run

    cfg = build_config(GenerateConfig, args)
    out = run(cfg)
    print(f"wrote {out['rows']:,} interactions of {out['users']:,} users to {cfg.output}")
    return 0


def add_prepare(sub: argparse._SubParsersAction) -> None:
    from pipelines.prepare import PrepareConfig

    add_job(
        sub,
        "prepare",
        PrepareConfig,
        _run_prepare,
        help="turn a raw interaction log into user sequences, vocabularies and splits",
        description="Read a raw log, filter it (rating threshold, repeats, k-core, minimum "
        "length), order each user's events by time (ties by row order), build ID "
        "vocabularies (index 0 = padding) and split it. Writes OUTPUT/manifest.json, "
        "vocab_*.parquet and sequences/*.parquet atomically; an OUTPUT that holds anything "
        "but an earlier prepared dataset is refused.",
        epilog="Example: recsys prepare --input ../shared/datasets/ml-100k/u.data "
        "--format movielens --output data/prepared/ml-100k.",
    )


def _run_prepare(args: argparse.Namespace) -> int:
    from pipelines.prepare import PrepareConfig, run

    cfg = build_config(PrepareConfig, args)
    manifest = run(cfg)
    print(
        json.dumps(
            {
                "output": cfg.output,
                "dataset": manifest["dataset"],
                "num_users": manifest["num_users"],
                "num_items": manifest["num_items"],
                "num_interactions": manifest["num_interactions"],
                "dropped": {s["step"]: s["dropped_rows"] for s in manifest["steps"][1:]},
                "split": manifest["split"],
                # What --history auto and --ties act on.
                "repeats": manifest["repeats"],
                "ties": manifest["ties"],
            },
            indent=2,
        )
    )
    return 0
