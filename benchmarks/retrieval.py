"""Approximate faiss indexes against exact search: recall@10 and queries per second.

Each approximate index (HNSW, IVF, IVF-PQ at a few search settings) is measured beside
exact inner-product search (``IndexFlatIP``) on the same queries in the same process, and
the throughput ratio is printed. Two catalogues:

- a trained model bundle (``--bundle``, e.g. the ml-100k run's ``bundle/``): its item
  embeddings, queried with the user vectors of its known users;
- a synthetic catalogue of ``--items`` vectors (default 1 million, d = 64) drawn from a
  mixture of 2,000 Gaussian clusters (embeddings of real catalogues are clustered, unlike
  i.i.d. noise), queried with vectors from the same mixture.

    python benchmarks/retrieval.py --bundle data/runs/<run>/bundle
    python benchmarks/retrieval.py --items 1000000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from recsys.retrieval.index import IndexConfig, ItemIndex

SETTINGS = [
    ("hnsw", {"hnsw_ef_search": 64}),
    ("hnsw", {"hnsw_ef_search": 128}),
    ("hnsw", {"hnsw_ef_search": 256}),
    ("ivf", {"ivf_nprobe": 16}),
    ("ivf", {"ivf_nprobe": 64}),
    ("ivfpq", {"ivf_nprobe": 64}),
]


def clustered(n: int, d: int, seed: int, clusters: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, 200_000):  # in blocks, to bound temporaries
        hi = min(lo + 200_000, n)
        which = rng.integers(0, clusters, hi - lo)
        out[lo:hi] = centres[which] + 0.5 * rng.standard_normal((hi - lo, d), dtype=np.float32)
    return out


def _timed_search(index: ItemIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    begin = time.perf_counter()
    items, _ = index.search(queries, k)
    return items, len(queries) / (time.perf_counter() - begin)


def compare(name: str, item_vecs: np.ndarray, queries: np.ndarray, k: int = 10) -> None:
    n = item_vecs.shape[0] - 1
    print(f"\n{name}: {n:,} items, d={item_vecs.shape[1]}, {len(queries):,} queries, top-{k}")
    exact = ItemIndex(item_vecs, IndexConfig(kind="exact"))
    truth, exact_qps = _timed_search(exact, queries, k)
    print(f"{'exact (IndexFlatIP)':34s} recall@{k} 1.000  {exact_qps:9.0f} q/s  (1.00x)")
    built: dict[str, ItemIndex] = {}
    for kind, params in SETTINGS:
        cfg = IndexConfig(kind=kind, **params)
        if kind not in built:
            begin = time.perf_counter()
            built[kind] = ItemIndex(item_vecs, cfg)
            build_s = time.perf_counter() - begin
            print(f"  (built {kind} in {build_s:.1f} s: {built[kind].params})")
        index = built[kind]
        if kind == "hnsw":
            index.index.hnsw.efSearch = params["hnsw_ef_search"]
        else:
            index.index.nprobe = min(params["ivf_nprobe"], index.index.nlist)
        got, qps = _timed_search(index, queries, k)
        recall = np.mean([len(set(g) & set(t)) / k for g, t in zip(got, truth, strict=True)])
        label = f"{kind} {params}"
        print(f"{label:34s} recall@{k} {recall:.3f}  {qps:9.0f} q/s  ({qps / exact_qps:.2f}x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", help="a trained model bundle folder")
    p.add_argument("--items", type=int, default=1_000_000, help="synthetic catalogue size")
    p.add_argument("--queries", type=int, default=2_000)
    p.add_argument("--skip-synthetic", action="store_true")
    args = p.parse_args()
    if args.bundle:
        from recsys.bundle import load_bundle
        from recsys.scoring import user_vectors

        b = load_bundle(args.bundle)
        users = user_vectors(b, *b.histories()).numpy()
        compare(f"bundle {args.bundle}", b.scorer.item_vectors().numpy(), users)
    if not args.skip_synthetic:
        vecs = clustered(args.items + 1 + args.queries, 64, seed=0)
        items, queries = vecs[: args.items + 1], vecs[args.items + 1 :]
        compare("synthetic clustered catalogue", items, queries)


if __name__ == "__main__":
    main()
