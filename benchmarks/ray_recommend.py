"""The batch job's throughput on its two engines, run beside each other.

Users per second of ``recsys recommend`` over all the model's users (or ``--users``),
end to end (the job's own wall time, from reading the model to the manifest), with
``--engine local`` (one process; torch's own threads) and ``--engine ray`` with
``--actors`` actors (one CPU, so one torch thread, each; the time includes starting the
actors and loading the model in each, which a job pays every time), and the ratio
ray / local. Rounds alternate the two engines; the best round of each is kept.

Ray is started once before the rounds (or joined at ``--ray-address``), so its start-up,
printed apart, is not in the job times.

    python benchmarks/ray_recommend.py --model data/runs/<run>/bundle
    python benchmarks/ray_recommend.py --model ... --actors 8 --ray-address HEAD:6379
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from pipelines.recommend import RecommendConfig, run
from pipelines.recommend_ray import import_ray


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="bundle folder, run id or models:/NAME/V")
    p.add_argument("--users", default="all", help="'all' or a users file (as the job)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--chunk-users", type=int, default=2_000, help="users per part")
    p.add_argument("--explain", type=int, default=0, help="--explain N of the job")
    p.add_argument("--actors", type=int, default=2, help="Ray actors")
    p.add_argument("--ray-address", default=None, help="join this cluster (default: local)")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    ray = import_ray()
    begin = time.perf_counter()
    if args.ray_address:
        ray.init(address=args.ray_address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=max(os.cpu_count() or 1, args.actors),
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    print(f"Ray ready in {time.perf_counter() - begin:.1f} s: {ray.cluster_resources()}")

    times: dict[str, list[float]] = {"local": [], "ray": []}
    users = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.rounds):
                for engine in times:
                    out = Path(tmp) / engine
                    shutil.rmtree(out, ignore_errors=True)
                    cfg = RecommendConfig(
                        model=args.model, output=str(out), users=args.users, k=args.k,
                        chunk_users=args.chunk_users, explain=args.explain, engine=engine,
                        ray_actors=args.actors, progress=False,
                    )  # fmt: skip
                    t0 = time.perf_counter()
                    users = run(cfg)["num_users"]
                    times[engine].append(time.perf_counter() - t0)
    finally:
        ray.shutdown()

    print(
        f"recommend, {users:,} users, k={args.k}, chunks of {args.chunk_users:,}, "
        f"explain={args.explain}; best of {args.rounds} alternating rounds"
    )
    best = {engine: min(secs) for engine, secs in times.items()}
    for engine, secs in best.items():
        label = "local" if engine == "local" else f"ray, {args.actors} actors"
        print(f"{label:18s} {users / secs:10,.0f} users/s  {secs:7.1f} s")
    print(f"ratio ray / local  x{best['local'] / best['ray']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
