"""Time and memory of the default training on Amazon Beauty, beside the old default.

    python benchmarks/beauty_time.py                 # both, seed 0, all cores
    python benchmarks/beauty_time.py --seed 1 --threads 2

Each configuration trains in a fresh process (so its peak resident memory is its own),
one after the other so that they do not share the cores, through the library with early
stopping on validation NDCG@10 (no MLflow, no test evaluation). Printed per configuration:
the best epoch, seconds to it, total seconds (including the patience epochs after the
best and every validation), peak resident memory, and the best validation NDCG@10; then
the new default's ratios against the old one. The old default is the one before the
settings were derived from the data: sampled softmax (256 popularity negatives), max_len
50, dropout 0.2, lr 2e-3.

Needs data/prepared/beauty (``recsys prepare --input ../shared/datasets/beauty/Beauty.txt
--format sequences --output data/prepared/beauty``); says so and exits when absent.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

OLD_DEFAULT = {"loss": "sampled-softmax", "max_len": 50, "dropout": 0.2, "lr": 2e-3}
CONFIGS = {"old default": OLD_DEFAULT, "default": {}}


def _train(data: str, options: dict, seed: int, threads: int) -> dict:
    from grid import train_quietly  # benchmarks/grid.py, beside this script

    fitted, _, _, seconds = train_quietly(data, options, seed, threads, "beauty_time")
    history = fitted.history
    best = max(history, key=lambda r: r.get("valid_ndcg_at_10", -1.0))
    return {
        "best_epoch": int(best["epoch"]),
        "seconds_to_best": float(best["elapsed_seconds"]),
        "seconds": seconds,
        "epochs": len(history),
        "valid_ndcg_at_10": float(best["valid_ndcg_at_10"]),
        # ru_maxrss is in KiB on Linux
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT / "data" / "prepared" / "beauty"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = all cores")
    p.add_argument("--only", choices=sorted(CONFIGS), help="run one configuration (default: both)")
    args = p.parse_args()
    if not (Path(args.data) / "manifest.json").is_file():
        print(
            f"{args.data} is not a prepared dataset: prepare Beauty first (see this script's "
            "docstring); nothing was run",
            file=sys.stderr,
        )
        return 2
    ctx = multiprocessing.get_context("spawn")
    results = {}
    for name, options in CONFIGS.items():
        if args.only and name != args.only:
            continue
        print(f"training the {name} (seed {args.seed}) ...", flush=True)
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            job = pool.submit(_train, args.data, options, args.seed, args.threads)
            results[name] = job.result()
    print(f"\n{Path(args.data).name}, seed {args.seed}, threads {args.threads or 'all'}")
    print(
        f"{'':14s} {'best epoch':>10s} {'s to best':>9s} {'total s':>8s} {'epochs':>6s} "
        f"{'peak GiB':>8s} {'valid NDCG@10':>13s}"
    )
    for name, r in results.items():
        print(
            f"{name:14s} {r['best_epoch']:10d} {r['seconds_to_best']:9.0f} {r['seconds']:8.0f} "
            f"{r['epochs']:6d} {r['peak_gib']:8.2f} {r['valid_ndcg_at_10']:13.4f}"
        )
    if len(results) == 2:
        new, old = results["default"], results["old default"]
        to_best = new["seconds_to_best"] / old["seconds_to_best"]
        print(
            f"default / old default: time to best {to_best:.2f}x, "
            f"total {new['seconds'] / old['seconds']:.2f}x, peak memory "
            f"{new['peak_gib'] / old['peak_gib']:.2f}x; target: total under 600 s "
            f"({'met' if new['seconds'] < 600 else 'not met'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
