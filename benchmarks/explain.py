"""How faithful each explanation method is, against random and most-recent baselines.

    python benchmarks/explain.py --model data/runs/RUN/bundle [--users 2000] [--seed 0]

For each user's top-1 recommendation (history items excluded), every method ranks the
events of the user's window; then, per ordering (the methods', a random one, most recent
first): comprehensiveness@k (score drop when the first k events are removed), sufficiency@k
(score drop when only they are kept: lower is better) and the deletion AUC (mean score
over removing 0%..100% of the events, minus the full score: lower is better); means with
95% bootstrap CIs over users. Also the seconds each method takes, and the ratio of its
comprehensiveness@3 to the random baseline's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="bundle folder, run id or models:/NAME/V")
    p.add_argument("--users", type=int, default=2000, help="users sampled (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    p.add_argument(
        "--cost",
        action="store_true",
        help="instead: the batch job over all users, plain and with --explain 3 (attention, "
        "occlusion), alternating (2 rounds); users/s and the ratio",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cost:
        return cost(args.model)
    from recsys.bundle import load_bundle, resolve_model
    from recsys.evaluation.metrics import bootstrap_ci
    from recsys.explain.attribution import METHODS
    from recsys.explain.faithfulness import measure

    bundle = load_bundle(resolve_model(args.model))
    n_users = bundle.user_vocab.height
    rng = np.random.default_rng(args.seed)
    users = np.arange(1, n_users + 1)
    if args.users and args.users < n_users:
        users = np.sort(rng.choice(users, args.users, replace=False))
    h, h_off = bundle.histories_of(users)
    results, seconds = measure(bundle, h, h_off, args.seed)
    lengths = np.minimum(np.diff(h_off), bundle.scorer.max_len)
    print(
        f"{bundle.dataset.get('dataset_name')} ({bundle.dataset.get('dataset_version')}): "
        f"{len(users)} users' top-1 item, windows of up to {lengths.max()} events "
        f"(mean {lengths.mean():.1f})"
    )
    metrics = [m for m in next(iter(results.values())) if m != "deletion_curve"]
    print(f"{'ordering':12s} " + " ".join(f"{m:>25s}" for m in metrics) + "  seconds")
    for name, res in results.items():
        cells = []
        for m in metrics:
            lo, hi = bootstrap_ci(res[m], 1000, seed=args.seed)
            cells.append(f"{res[m].mean():.4f} ({lo:.4f}-{hi:.4f})")
        secs = f"{seconds[name]:.1f}" if name in seconds else "-"
        print(f"{name:12s} " + " ".join(f"{c:>25s}" for c in cells) + f"  {secs}")
    base = results["random"]["comprehensiveness@3"].mean()
    for method in METHODS:
        ratio = results[method]["comprehensiveness@3"].mean() / base
        print(f"comprehensiveness@3, {method} / random: {ratio:.2f}x")
    return 0


def cost(model: str, k: int = 10, rounds: int = 2) -> int:
    """Throughput of ``recsys recommend`` over all users, plain and with ``--explain 3``."""
    import shutil
    import tempfile

    from pipelines.recommend import RecommendConfig, run

    variants = [("plain", 0, "attention")] + [(m, 3, m) for m in ("attention", "occlusion")]
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    users = 0
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for name, n, method in variants:
                out = Path(tmp) / name
                shutil.rmtree(out, ignore_errors=True)
                cfg = RecommendConfig(
                    model=model, output=str(out), k=k, explain=n, explain_method=method,
                    progress=False,
                )  # fmt: skip
                t0 = time.perf_counter()
                users = run(cfg)["num_users"]
                times[name].append(time.perf_counter() - t0)
    plain = min(times["plain"])
    print(f"recommend, all {users:,} users, k={k}; best of {rounds} alternating rounds")
    for name, secs in times.items():
        best = min(secs)
        label = name if name == "plain" else f"--explain 3, {name}"
        print(f"{label:26s} {users / best:9,.0f} users/s  {best:7.1f} s  x{plain / best:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
