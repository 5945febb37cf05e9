"""SASRec (each loss, max length 200 and 50) and most-popular on ml-100k, through the
real train job, every run logged to MLflow; prints test HR@10 and NDCG@10 with 95% CIs,
the protocol, and the training time to the best validation epoch.

    python benchmarks/ml100k.py                       # the whole table (~30 min, 2 cores)
    python benchmarks/ml100k.py --losses ce --max-lens 50 --include-seen --target-valid 0.0751
    python benchmarks/ml100k.py --losses ce --max-lens 200 --set seed=1 repeat_bias=false

Needs ../shared/datasets/ml-100k (it says so and exits when absent). The dataset is
prepared with no filtering and the leave-one-out split into data/prepared/ml-100k.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "ml-100k"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--losses", nargs="+", default=["ce", "bce", "sampled-softmax", "gbce"])
    p.add_argument("--max-lens", nargs="+", type=int, default=[200, 50])
    p.add_argument(
        "--include-seen",
        action="store_true",
        help="rank history items too (RecBole's protocol) instead of excluding them",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip most-popular")
    p.add_argument("--experiment", default="ml-100k-benchmark")
    p.add_argument("--set", nargs="*", default=[], help="extra train options, KEY=VALUE")
    p.add_argument(
        "--target-valid",
        type=float,
        default=None,
        help="also print the seconds of training until validation NDCG@10 first reached this "
        "(e.g. 0.0751, RecBole's best with --include-seen)",
    )
    args = p.parse_args()
    if not (SHARED / "u.data").is_file():
        print(f"skipped: ml-100k not found at {SHARED}")
        return
    logging.basicConfig(level=logging.WARNING)
    from pipelines.prepare import PrepareConfig
    from pipelines.prepare import run as prepare
    from pipelines.train import TrainJobConfig
    from pipelines.train import run as train
    from recsys.options import from_flat, parse_value

    data = ROOT / "data" / "prepared" / "ml-100k"
    manifest = prepare(PrepareConfig(input=str(SHARED / "u.data"), output=str(data)))
    extra = dict(kv.split("=", 1) for kv in args.set)
    runs = [] if args.no_baseline else [{"model": "most-popular"}]
    runs += [{"loss": loss, "max_len": n} for n in args.max_lens for loss in args.losses]
    rows = []
    for spec in runs:
        values = {
            "data": str(data),
            "experiment": args.experiment,
            "history": "include" if args.include_seen else "exclude",
            "progress": False,
            **spec,
        }
        for key, value in extra.items():
            values[key] = parse_value(TrainJobConfig, key, value)
        cfg = from_flat(TrainJobConfig, values, source="benchmark")
        out = train(cfg)
        rows.append((spec, out))
        print(_row(spec, out, args.target_valid), flush=True)
    print(
        f"\nml-100k (version {manifest['dataset']['version']}), leave-one-out, test split, "
        f"{rows[0][1]['protocol']}, {manifest['num_items']:,} items; 95% bootstrap CIs"
    )
    print(
        f"{'model':28s} {'HR@10':>24s} {'NDCG@10':>24s} {'best ep':>7s} {'s to best':>9s} "
        f"{'valid NDCG@10':>13s} {'valid/s':>8s}"
        + (f" {'s to ' + str(args.target_valid):>11s}" if args.target_valid else "")
    )
    for spec, out in rows:
        print(_row(spec, out, args.target_valid))


def seconds_to_reach(history: list[dict], target: float) -> float | None:
    """Wall seconds from the start of training (validations included) until validation
    NDCG@10 first reached ``target``, or None if it never did."""
    for rec in history:
        if rec.get("valid_ndcg_at_10", -1.0) >= target:
            return rec["elapsed_seconds"]
    return None


def _row(spec: dict, out: dict, target: float | None = None) -> str:
    name = spec.get("model") or f"sasrec {spec['loss']} L{spec['max_len']}"

    def ci(metric: str) -> str:
        return f"{out[metric]:.4f} ({out[metric + '_ci_low']:.4f}-{out[metric + '_ci_high']:.4f})"

    best = f"{out.get('best_epoch', '-'):>7}"
    seconds = out.get("seconds_to_best", 0.0)
    valid = out["valid_ndcg_at_10"]
    # Validation NDCG@10 per second of training: how the default loss was chosen.
    per_s = f"{valid / seconds:8.5f}" if seconds else f"{'-':>8s}"
    reach = ""
    if target is not None:
        at = seconds_to_reach(out.get("history", []), target)
        reach = f" {'never' if at is None else f'{at:.1f}':>11s}"
    return (
        f"{name:28s} {ci('test_hr_at_10'):>24s} {ci('test_ndcg_at_10'):>24s} {best} "
        f"{seconds:9.1f} {valid:13.4f} {per_s}{reach}"
    )


if __name__ == "__main__":
    sys.exit(main())
