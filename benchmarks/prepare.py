"""Benchmark the polars prepare pipeline against a straightforward pandas implementation.

Both implementations read the same synthetic Parquet log and run the same steps
(validate, rating filter, time order with row-order ties, drop consecutive repeats,
iterative k-core, minimum length, first-appearance vocabularies, list sequences,
leave-one-out counts). Each runs in its own subprocess so its peak memory (max RSS above
the RSS after imports) is measured alone. Prints both times, their ratio and the peaks
against the in-memory size of the input table.

    python benchmarks/prepare.py --interactions 10000000
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = {"min_rating": 2.0, "repeats": "drop-consecutive", "k_core": 5, "min_seq_len": 3}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_polars(path: str, out: str) -> dict:
    from recsys.data.prepare import prepare_dataset
    from recsys.data.readers import read_interactions

    base = _current_rss_mb()
    t = time.perf_counter()
    events = read_interactions(path, "parquet")
    m = prepare_dataset(events, out, name="bench", **STEPS)
    return {
        "seconds": time.perf_counter() - t,
        "peak_mb": _rss_mb() - base,
        "users": m["num_users"],
        "items": m["num_items"],
        "interactions": m["num_interactions"],
    }


def run_pandas(path: str, out: str) -> dict:
    import numpy as np
    import pandas as pd

    base = _current_rss_mb()
    t = time.perf_counter()
    df = pd.read_parquet(path)
    df["timestamp"] = pd.to_numeric(df["timestamp"], errors="coerce")
    df["rating"] = pd.to_numeric(df["rating"], errors="coerce")
    bad = df[["user_id", "item_id", "timestamp", "rating"]].isna().any(axis=1)
    if bad.any():
        raise ValueError(f"bad row {int(np.flatnonzero(bad)[0])}")
    df["row_nr"] = np.arange(len(df))
    df = df[df["rating"] >= STEPS["min_rating"]]
    df = df.sort_values(["user_id", "timestamp", "row_nr"], kind="stable")
    same = (df["user_id"] == df["user_id"].shift()) & (df["item_id"] == df["item_id"].shift())
    df = df[~same]
    k = STEPS["k_core"]
    while True:
        keep = (df.groupby("user_id")["item_id"].transform("size") >= k) & (
            df.groupby("item_id")["user_id"].transform("size") >= k
        )
        if keep.all():
            break
        df = df[keep]
    df = df[df.groupby("user_id")["item_id"].transform("size") >= STEPS["min_seq_len"]]
    users = df.groupby("user_id")["row_nr"].min().sort_values()
    items = df.groupby("item_id")["row_nr"].min().sort_values()
    user_idx = pd.Series(np.arange(1, len(users) + 1), index=users.index)
    item_idx = pd.Series(np.arange(1, len(items) + 1), index=items.index)
    df["user_idx"] = df["user_id"].map(user_idx)
    df["item_idx"] = df["item_id"].map(item_idx)
    seqs = df.groupby("user_idx", sort=True).agg(
        item_idx=("item_idx", list), timestamp=("timestamp", list)
    )
    seqs["n_train"] = seqs["item_idx"].str.len() - 2
    Path(out).mkdir(parents=True, exist_ok=True)
    seqs.reset_index().to_parquet(Path(out) / "sequences.parquet")
    return {
        "seconds": time.perf_counter() - t,
        "peak_mb": _rss_mb() - base,
        "users": len(users),
        "items": len(items),
        "interactions": len(df),
    }


def input_size_mb(path: str) -> float:
    """In-memory size of the canonical input table (polars estimate)."""
    from recsys.data.readers import read_interactions

    return read_interactions(path, "parquet").collect().estimated_size("mb")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--interactions", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=None, help="default: interactions / 100")
    p.add_argument("--items", type=int, default=None, help="default: interactions / 200")
    p.add_argument("--repeat", type=int, default=3, help="runs of each (default 3)")
    p.add_argument("--worker", choices=["polars", "pandas"], help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        with tempfile.TemporaryDirectory() as tmp:
            fn = run_polars if args.worker == "polars" else run_pandas
            print(json.dumps(fn(args.path, str(Path(tmp) / "out"))))
        return

    from recsys.data.synthetic import SyntheticSpec, generate

    n = args.interactions
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "log.parquet")
        spec = SyntheticSpec(
            users=args.users or max(n // 100, 1),
            items=args.items or max(n // 200, 2),
            interactions=n,
            seed=0,
        )
        generate(spec, path)
        size = input_size_mb(path)
        runs: dict[str, list[dict]] = {"polars": [], "pandas": []}
        # Alternate the two, so that machine noise hits both alike; report medians.
        for _ in range(args.repeat):
            for worker in runs:
                cmd = [sys.executable, __file__, "--worker", worker, "--path", path]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[worker].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    res = {}
    for worker, rs in runs.items():
        res[worker] = {
            **rs[0],
            "seconds": statistics.median(r["seconds"] for r in rs),
            "peak_mb": max(r["peak_mb"] for r in rs),
            "all": [round(r["seconds"], 2) for r in rs],
        }
    pol, pan = res["polars"], res["pandas"]
    same = all(pol[k] == pan[k] for k in ("users", "items", "interactions"))
    print(f"input: {n:,} interactions ({size:,.0f} MB in memory as the canonical table)")
    print(
        f"steps: {STEPS}; outputs agree: {same} "
        f"({pol['users']:,} users, {pol['items']:,} items, {pol['interactions']:,} events)"
    )
    for name, r in res.items():
        print(
            f"{name:7s} median {r['seconds']:6.2f} s {r['all']}  max peak "
            f"{r['peak_mb']:6,.0f} MB ({r['peak_mb'] / size:.2f}x input)"
        )
    print(
        f"speed-up polars vs pandas (ratio of medians over {args.repeat} runs): "
        f"{pan['seconds'] / pol['seconds']:.1f}x"
    )


if __name__ == "__main__":
    main()
