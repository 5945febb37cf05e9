"""Ranking metrics per user from target ranks, and bootstrap confidence intervals.

A user has one or more targets (leave-one-out: one); ``ranks`` (E, M) holds each target's
0-based rank, -1 for padding. For a cut-off K:

- HR@K: 1 if any target is in the top K.
- Recall@K: the share of the user's targets in the top K.
- NDCG@K: DCG of the targets in the top K over the ideal DCG of min(#targets, K) hits.
- MRR@K: 1 / (1 + rank of the best-ranked target) if it is in the top K, else 0.
"""

from __future__ import annotations

import numpy as np

METRICS = ("hr", "ndcg", "mrr", "recall")


def per_user_metrics(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``{"hr@10": (E,), "ndcg@10": (E,), ...}`` for every metric and K in ``ks``.

    Examples
    --------
    ``ranks=[[0], [3], [-1 ...]]`` with one target each and ``ks=(1,)`` →
    ``hr@1 = [1, 0]``, ``ndcg@1 = [1, 0]``.
    """
    real = ranks >= 0  # (E, M)
    n_targets = real.sum(1)  # (E,)
    if (n_targets == 0).any():
        raise ValueError("every evaluated user needs at least one target")
    out: dict[str, np.ndarray] = {}
    first = np.where(real, ranks, np.iinfo(np.int64).max).min(1)  # (E,)
    discount = 1.0 / np.log2(np.arange(max(ks)) + 2.0)  # (K,)
    ideal_cum = np.cumsum(discount)  # (K,)
    for k in ks:
        hit = real & (ranks < k)  # (E, M)
        gains = np.where(hit, discount[np.clip(ranks, 0, k - 1)], 0.0).sum(1)
        out[f"hr@{k}"] = hit.any(1).astype(np.float64)
        out[f"recall@{k}"] = hit.sum(1) / n_targets
        out[f"ndcg@{k}"] = gains / ideal_cum[np.minimum(n_targets, k) - 1]
        out[f"mrr@{k}"] = np.where(first < k, 1.0 / (first + 1.0), 0.0)
    return out


def bootstrap_ci(
    values: np.ndarray, reps: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (users resampled)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(reps)
    # Resamples in blocks, so that memory stays near 8 MB whatever the number of users.
    per_block = max(1, (1 << 20) // n)
    for lo in range(0, reps, per_block):
        hi = min(lo + per_block, reps)
        idx = rng.integers(0, n, size=(hi - lo, n))
        means[lo:hi] = values[idx].mean(1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)
