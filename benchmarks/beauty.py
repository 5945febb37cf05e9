"""SASRec on Amazon Beauty through the real train job, against the published full-ranking
results on exactly that file; every run is logged to MLflow.

    python benchmarks/beauty.py                                  # the default, seeds 0 1 2
    python benchmarks/beauty.py --seeds 0 --set d_model=256 n_layers=1 threads=1

Needs ../shared/datasets/beauty (it says so and exits when absent). The file is prepared
with no filtering (it is already a 5-core) and the leave-one-out split into
data/prepared/beauty. Protocol: full ranking over all 12,101 items, the user's history
excluded, test split; HR@10 and NDCG@10 with 95% bootstrap CIs.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "beauty" / "Beauty.txt"

# From ../shared/datasets/README.md: published full-ranking results on this file.
PUBLISHED = [
    ("SASRec, BCE (S3Rec paper)", 0.0605, 0.0318),
    ("DuoRec", 0.0845, 0.0443),
    ("eSASRec", 0.0928, 0.0523),
    ("SASRec + sampled softmax (eSASRec authors)", 0.0921, 0.0531),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--set", nargs="*", default=[], help="train options, KEY=VALUE")
    p.add_argument("--experiment", default="beauty-benchmark")
    args = p.parse_args()
    if not SHARED.is_file():
        print(f"skipped: Beauty not found at {SHARED}")
        return 0
    logging.basicConfig(level=logging.WARNING)
    from pipelines.prepare import PrepareConfig
    from pipelines.prepare import run as prepare
    from pipelines.train import TrainJobConfig
    from pipelines.train import run as train
    from recsys.options import from_flat, parse_value

    data = ROOT / "data" / "prepared" / "beauty"
    if (data / "manifest.json").is_file():  # prepared by an earlier run (or one beside it)
        manifest = json.loads((data / "manifest.json").read_text())
    else:
        manifest = prepare(PrepareConfig(input=str(SHARED), output=str(data), format="sequences"))
    extra = {k: parse_value(TrainJobConfig, k, v) for k, v in (kv.split("=", 1) for kv in args.set)}
    rows = []
    for seed in args.seeds:
        values = {
            "data": str(data),
            "experiment": args.experiment,
            "progress": False,
            **extra,
            "seed": seed,
        }
        out = train(from_flat(TrainJobConfig, values, source="benchmark"))
        rows.append((seed, out))
        print(_row(seed, out), flush=True)
    print(
        f"\nBeauty (version {manifest['dataset']['version']}), leave-one-out, test split, "
        f"{rows[0][1]['protocol']}, {manifest['num_items']:,} items; options: "
        f"{' '.join(args.set) or 'the defaults'}"
    )
    print(f"{'seed':>4s} {'HR@10':>24s} {'NDCG@10':>24s} {'best ep':>7s} {'s to best':>9s}")
    for seed, out in rows:
        print(_row(seed, out))
    hr = statistics.mean(o["test_hr_at_10"] for _, o in rows)
    ndcg = statistics.mean(o["test_ndcg_at_10"] for _, o in rows)
    print(f"{'mean':>4s} {hr:24.4f} {ndcg:24.4f}")
    print("\npublished on the same file (HR@10, NDCG@10):")
    for name, p_hr, p_ndcg in PUBLISHED:
        print(f"  {name:44s} {p_hr:.4f} {p_ndcg:.4f}")
    return 0


def _row(seed: int, out: dict) -> str:
    def ci(metric: str) -> str:
        return f"{out[metric]:.4f} ({out[metric + '_ci_low']:.4f}-{out[metric + '_ci_high']:.4f})"

    return (
        f"{seed:>4d} {ci('test_hr_at_10'):>24s} {ci('test_ndcg_at_10'):>24s} "
        f"{out.get('best_epoch', '-'):>7} {out.get('seconds_to_best', 0.0):9.1f}"
    )


if __name__ == "__main__":
    sys.exit(main())
