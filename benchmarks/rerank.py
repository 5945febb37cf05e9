"""Re-ranking throughput against the batch job's scoring, run beside it.

For each re-ranking config, users per second of:

- ``score top-10``: :func:`recsys.scoring.score_chunk` with k = 10, what the batch job
  runs per chunk without re-ranking (the baseline);
- ``candidates``: retrieving the 100 candidates a re-ranking starts from;
- ``re-rank``: :func:`recsys.allocation.allocate` alone, 100 candidates to 10 slots;
- ``ratio``: re-ranking time over scoring time (at most 1: re-ranking costs no more
  than scoring).

Rounds alternate the baseline and the configs, and the best round of each is kept. Two
catalogues: a trained bundle (``--model``, e.g. ml-100k prepared with ``--items``), and a
synthetic one of ``--items`` items (default 100,000) with random genres, trained for one
epoch into ``--work`` on first use.

    python benchmarks/rerank.py --model data/runs/<run>/bundle
    python benchmarks/rerank.py --items 100000 --work data/bench/rerank
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recsys import allocation
from recsys.scoring import score_chunk, user_vectors

CONFIGS = {
    "mmr, genres": {"diversity": {"method": "mmr", "lambda": 0.7, "similarity": "genres"}},
    "mmr, embeddings": {"diversity": {"method": "mmr", "lambda": 0.7, "similarity": "embeddings"}},
    "calibration": {"diversity": {"method": "calibration", "lambda": 0.7}},
    "max_share 0.05": {"exposure": {"max_share": 0.05}},
    "mmr + max_share + block": {
        "diversity": {"method": "mmr", "lambda": 0.7},
        "exposure": {"max_share": 0.05},
        "rules": {"block": ["1", "2"]},
    },
}


def _best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return min(times)


def measure(bundle, users: np.ndarray, chunk: int, rounds: int) -> None:
    n = len(users)
    chunks = [bundle.histories_of(users[lo : lo + chunk]) for lo in range(0, n, chunk)]
    vecs = [user_vectors(bundle, h, off) for h, off in chunks]
    print(f"{n:,} users, {bundle.num_items:,} items, chunks of {chunk:,}, best of {rounds}")
    print(
        f"{'config':26s} {'score top-10':>13s} {'candidates':>11s} {'re-rank':>10s} {'ratio':>6s}"
    )

    def score() -> None:
        for (h, off), u in zip(chunks, vecs, strict=True):
            score_chunk(bundle, h, off, 10, users=u)

    for name, cfg in CONFIGS.items():
        try:
            plan = allocation.plan_for(bundle, cfg)
        except ValueError as e:
            print(f"{name:26s} skipped: {e}")
            continue
        cands = [
            allocation.candidates(bundle, plan, h, off, 10, users=u)
            for (h, off), u in zip(chunks, vecs, strict=True)
        ]

        def rerank(plan=plan, cands=cands) -> None:
            budget = allocation.start_budget(plan, n, 10)
            for c, s, hist in cands:
                allocation.allocate(plan, c, s, hist, 10, budget)

        def retrieve(plan=plan) -> None:
            for (h, off), u in zip(chunks, vecs, strict=True):
                allocation.candidates(bundle, plan, h, off, 10, users=u)

        t_score = _best(score, rounds)  # beside each config, on the same warm process
        t_cand = _best(retrieve, rounds)
        t_rerank = _best(rerank, rounds)
        print(
            f"{name:26s} {n / t_score:10,.0f} u/s {n / t_cand:8,.0f} u/s "
            f"{n / t_rerank:7,.0f} u/s {t_rerank / t_score:5.2f}x"
        )


def synthetic(items: int, work: Path, seed: int = 0):
    """A bundle over ``items`` synthetic items with random genres (built once in ``work``)."""
    from recsys import Recommender
    from recsys.bundle import load_bundle
    from recsys.data.items import ML100K_GENRES

    bundle = work / f"bundle-{items}"
    if (bundle / "bundle.json").is_file():
        return load_bundle(bundle)
    from pipelines.generate import GenerateConfig
    from pipelines.generate import run as generate
    from pipelines.prepare import PrepareConfig
    from pipelines.prepare import run as prepare

    work.mkdir(parents=True, exist_ok=True)
    log = work / f"synthetic-{items}.parquet"
    # Enough events that nearly every item is used (popularity is skewed).
    generate(GenerateConfig(output=str(log), users=50_000, items=items,
                            interactions=12 * items, seed=seed))  # fmt: skip
    rng = np.random.default_rng(seed)
    names = np.array(ML100K_GENRES[1:])
    genres = [" ".join(rng.choice(names, rng.integers(1, 4), replace=False)) for _ in range(items)]
    meta = work / f"items-{items}.tsv"
    ids = pl.read_parquet(log, columns=["item_id"])["item_id"].unique().cast(pl.String)
    pl.DataFrame({"item_id": ids, "title": ids, "genres": genres[: len(ids)]}).write_csv(
        meta, separator="\t"
    )
    prepared = work / f"prepared-{items}"
    prepare(PrepareConfig(input=str(log), format="parquet", output=str(prepared), items=str(meta)))
    Recommender(epochs=1, progress=False, threads=0).fit(prepared, output=bundle)
    return load_bundle(bundle)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="bundle folder, run id or models:/NAME/V")
    p.add_argument("--items", type=int, default=0, help="synthetic catalogue size")
    p.add_argument("--work", type=Path, default=Path("data/bench/rerank"))
    p.add_argument("--users", type=int, default=10_000, help="users measured (at most)")
    p.add_argument("--chunk", type=int, default=10_000, help="users per chunk (batch job's)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.model and not args.items:
        p.error("give --model, --items, or both")
    if args.model:
        from recsys.bundle import load_bundle, resolve_model

        bundle = load_bundle(resolve_model(args.model))
        print(f"\n{bundle.dataset.get('dataset_name')}:")
        users = bundle.user_vocab["user_idx"].to_numpy()[: args.users].astype(np.int64)
        measure(bundle, users, args.chunk, args.rounds)
    if args.items:
        bundle = synthetic(args.items, args.work)
        print(f"\nsynthetic, {args.items:,} items:")
        users = bundle.user_vocab["user_idx"].to_numpy()[: args.users].astype(np.int64)
        measure(bundle, users, args.chunk, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
