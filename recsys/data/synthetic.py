"""Deterministic synthetic interaction logs with the structure real ones have.

* power-law item popularity (Zipf, exponent ``alpha``);
* user taste clusters: each user draws mostly from the items of one cluster;
* sequential dependence: each item has a fixed successor in its cluster, which follows
  it with probability ``p_next`` (a first-order Markov chain a sequential model can learn
  and a popularity model cannot);
* per-user start times and exponential gaps, so a global temporal split is meaningful;
* optionally repeats: with probability ``p_repeat`` an event re-consumes one of the
  user's last ``repeat_window`` items (uniformly), as in music, news or grocery logs.

Rows are written to Parquet in chunks of users (bounded memory at any size) and shuffled
within a chunk, so the log is not pre-sorted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from recsys.io import atomic_file, check_output_file

log = logging.getLogger(__name__)

MIN_EVENTS_PER_USER = 3
START_TIME = 1_600_000_000  # 2020-09-13, an arbitrary fixed epoch for reproducibility


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of a synthetic log."""

    users: int = 2_000
    items: int = 1_000
    interactions: int = 100_000
    seed: int = 0
    clusters: int = 20
    alpha: float = 1.0
    p_next: float = 0.5
    p_cluster: float = 0.35
    p_repeat: float = 0.0
    repeat_window: int = 5
    rows_per_chunk: int = 2_000_000

    def check(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent value."""
        if self.users < 1 or self.items < 2:
            raise ValueError(f"users={self.users}, items={self.items}: need >= 1 and >= 2")
        if self.interactions < MIN_EVENTS_PER_USER * self.users:
            raise ValueError(
                f"interactions={self.interactions} is below {MIN_EVENTS_PER_USER} per user "
                f"for users={self.users}; expected >= {MIN_EVENTS_PER_USER * self.users}"
            )
        if not 1 <= self.clusters <= self.items:
            raise ValueError(f"clusters={self.clusters}: expected 1..items ({self.items})")
        if not 0.0 <= self.p_repeat <= 1.0 or self.repeat_window < 1:
            raise ValueError(
                f"p_repeat={self.p_repeat}, repeat_window={self.repeat_window}: expected a "
                "probability and a window of at least 1"
            )
        if not (self.p_next >= 0 and self.p_cluster >= 0 and self.p_next + self.p_cluster <= 1):
            raise ValueError(
                f"p_next={self.p_next}, p_cluster={self.p_cluster}: expected non-negative "
                "probabilities summing to at most 1"
            )


class _World:
    """Item popularity, clusters and successors: fixed for a given spec."""

    def __init__(self, spec: SyntheticSpec, rng: np.random.Generator):
        m, c = spec.items, spec.clusters
        # Item j (0-based) has popularity rank perm[j]; ranks spread over clusters.
        rank = rng.permutation(m)
        weight = 1.0 / (rank + 1.0) ** spec.alpha
        cluster = rng.integers(0, c, size=m)
        cluster[rng.permutation(m)[:c]] = np.arange(c)  # every cluster owns an item
        order = np.lexsort((-weight, cluster))  # items grouped by cluster
        self.items_by_cluster = order
        w = weight[order]
        cl = cluster[order]
        starts = np.searchsorted(cl, np.arange(c))
        cum = np.cumsum(w)
        before = np.concatenate([[0.0], cum])[starts]
        totals = np.add.reduceat(w, starts)
        # Cluster k's CDF lives in [k, k+1): one searchsorted samples for all clusters.
        self.cluster_cdf = cl + (cum - before[cl]) / totals[cl]
        self.global_cdf = np.cumsum(weight) / weight.sum()
        self.n_clusters = c
        # A successor in the same cluster, by a random cycle through the cluster's items.
        succ = np.empty(m, dtype=np.int64)
        for k in range(c):
            members = order[starts[k] : starts[k + 1] if k + 1 < c else m]
            cycle = rng.permutation(members)
            succ[cycle] = np.roll(cycle, -1)
        self.successor = succ

    def sample_cluster(self, rng: np.random.Generator, clusters: np.ndarray) -> np.ndarray:
        u = clusters + rng.random(clusters.size)
        idx = np.searchsorted(self.cluster_cdf, u, side="right")
        return self.items_by_cluster[np.minimum(idx, self.cluster_cdf.size - 1)]

    def sample_global(self, rng: np.random.Generator, n: int) -> np.ndarray:
        idx = np.searchsorted(self.global_cdf, rng.random(n), side="right")
        return np.minimum(idx, self.global_cdf.size - 1)


def _lengths(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    extra = spec.interactions - MIN_EVENTS_PER_USER * spec.users
    activity = rng.lognormal(0.0, 1.0, size=spec.users)
    return MIN_EVENTS_PER_USER + rng.multinomial(extra, activity / activity.sum())


def _chunk(
    spec: SyntheticSpec,
    world: _World,
    rng: np.random.Generator,
    first_user: int,
    lengths: np.ndarray,
) -> pa.Table:
    n = lengths.size
    clusters = rng.integers(0, world.n_clusters, size=n)
    total = int(lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    items = np.empty(total, dtype=np.int64)
    prev = world.sample_cluster(rng, clusters)
    items[offsets] = prev
    # Loop over positions, vectorised over the users still active at that position.
    active = np.arange(n)
    for t in range(1, int(lengths.max())):
        active = active[lengths[active] > t]
        if active.size == 0:
            break
        r = rng.random(active.size)
        nxt = world.successor[prev[active]]
        from_cluster = r >= spec.p_next
        nxt[from_cluster] = world.sample_cluster(rng, clusters[active[from_cluster]])
        from_global = r >= spec.p_next + spec.p_cluster
        nxt[from_global] = world.sample_global(rng, int(from_global.sum()))
        if spec.p_repeat > 0:  # drawn only then: logs without repeats stay as they were
            again = rng.random(active.size) < spec.p_repeat
            back = rng.integers(1, min(t, spec.repeat_window) + 1, size=int(again.sum()))
            nxt[again] = items[offsets[active[again]] + t - back]
        prev[active] = nxt
        items[offsets[active] + t] = nxt
    user = np.repeat(np.arange(first_user, first_user + n, dtype=np.int64) + 1, lengths)
    start = START_TIME + rng.integers(0, 365 * 86_400, size=n)
    gaps = rng.exponential(3_600.0, size=total).astype(np.int64)
    gaps[offsets] = 0
    ts = np.repeat(start, lengths) + _segment_cumsum(gaps, offsets)
    rating = np.clip(np.rint(rng.normal(3.6, 1.0, size=total)), 1, 5).astype(np.int8)
    shuffle = rng.permutation(total)
    return pa.table(
        {
            "user_id": user[shuffle],
            "item_id": items[shuffle] + 1,
            "timestamp": ts[shuffle],
            "rating": rating[shuffle],
        }
    )


def _segment_cumsum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    cum = np.cumsum(values)
    base = np.repeat(cum[offsets] - values[offsets], np.diff(np.append(offsets, values.size)))
    return cum - base


MARKER = b"recsys.synthetic"  # Parquet metadata key: the spec a file was generated from


def _is_synthetic(path: Path) -> bool:
    try:
        return MARKER in (pq.read_schema(path).metadata or {})
    except (OSError, ValueError):  # not Parquet (pyarrow's ArrowInvalid is a ValueError)
        return False


def generate(spec: SyntheticSpec, output: str | Path) -> dict[str, int]:
    """Write a synthetic log to one Parquet file, chunk by chunk, atomically.

    Parameters
    ----------
    spec : SyntheticSpec
        Sizes, seed and structure.
    output : str or Path
        Parquet file; columns ``user_id`` (i64), ``item_id`` (i64), ``timestamp`` (i64,
        seconds), ``rating`` (i8, 1-5).

    Returns
    -------
    dict
        ``rows``, ``users``, ``chunks`` written.
    """
    spec.check()
    check_output_file(output, kind="a synthetic log", is_ours=_is_synthetic)
    rng = np.random.default_rng(spec.seed)
    world = _World(spec, rng)
    lengths = _lengths(spec, rng)
    bounds = np.searchsorted(
        np.cumsum(lengths), np.arange(0, spec.interactions, spec.rows_per_chunk), "right"
    )
    bounds = np.unique(np.append(bounds, spec.users))
    bounds = bounds[bounds > 0]
    chunks = 0
    with (
        atomic_file(output) as tmp,
        tqdm(total=spec.interactions, unit="rows", desc="generate", disable=None) as bar,
    ):
        writer = None
        lo = 0
        for chunk_no, hi in enumerate(bounds):
            chunk_rng = np.random.default_rng([spec.seed, chunk_no])
            table = _chunk(spec, world, chunk_rng, lo, lengths[lo:hi])
            if writer is None:
                schema = table.schema.with_metadata({MARKER: json.dumps(asdict(spec))})
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(table)
            bar.update(table.num_rows)
            chunks += 1
            lo = hi
        assert writer is not None
        writer.close()
    log.info("wrote %d rows for %d users to %s", spec.interactions, spec.users, output)
    return {"rows": spec.interactions, "users": spec.users, "chunks": chunks}
