"""How faithful an explanation is: what happens to the score when the events it names are
removed, or kept alone (DeYoung et al., 2020, "ERASER"; deletion curves after Petsiuk et
al., 2018).

For a window (B, T) and an item per user, an *order* ranks the window's events (most
important first). From it:

- comprehensiveness@k: the score drop when the first k events are removed, and
  rank_drop@k: how many places the item falls then;
- sufficiency@k: the score drop when only the first k events are kept (lower is better);
- deletion AUC: the mean score over removing 0%, 10%, ..., 100% of the events in order,
  minus the full score (lower, i.e. a faster fall, is better).

The same quantities for a random order and for most-recent-first are the baselines an
explanation has to beat. Removed events leave no gap: the remaining ones move up, as
when the user had never had them.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from recsys.bundle import Bundle
from recsys.data.dataset import pad_left
from recsys.explain.attribution import METHODS, attribute, item_scores, pack, trim, user_states
from recsys.models.sasrec import SASRec
from recsys.scoring import score_chunk


def orders_by(contributions: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Window positions (B, T) by contribution (B, T), largest first, padding last."""
    key = contributions.masked_fill(window == 0, float("-inf"))
    return key.argsort(dim=1, descending=True, stable=True)


def recent_first(window: torch.Tensor) -> torch.Tensor:
    """Positions (B, T) from the most recent event back, padding last."""
    T = window.shape[1]
    return orders_by(torch.arange(T, dtype=torch.float32).expand_as(window), window)


def random_order(window: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Positions (B, T) in a seeded random order, padding last."""
    gen = torch.Generator().manual_seed(seed)
    return orders_by(torch.rand(window.shape, generator=gen), window)


DELETION_POINTS = 11  # the deletion curve at 0%, 10%, ..., 100% of a user's events removed


@torch.no_grad()
def scores_after(
    model: SASRec,
    window: torch.Tensor,
    items: torch.Tensor,
    order: torch.Tensor,
    counts: torch.Tensor,
    keep_first: bool,
    rank_first: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (B, K) of items (B,) after removing (``keep_first=False``) or keeping only
    (True) the first ``counts`` (B, K) events of ``order`` (B, T), and for the first
    ``rank_first`` columns each item's 0-based rank (B, rank_first) then, among all items
    not in the user's window."""
    B, T = window.shape
    K = counts.shape[1]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(T).expand(B, T))  # each position's place in order
    first = rank[:, None, :] < counts[:, :, None]  # (B, K, T): within the first count
    keep = first if keep_first else ~first
    variants = pack(window[:, None, :].expand(B, K, T).reshape(-1, T), keep.reshape(-1, T))
    h = user_states(model, variants).view(B, K, -1)  # (B, K, d)
    scores = item_scores(model, h.reshape(B * K, -1), items.repeat_interleave(K)[:, None])
    scores = scores.view(B, K)
    R = rank_first
    h, target = h[:, :R].reshape(B * R, h.shape[-1]), scores[:, :R].reshape(-1)  # (B * R, .)
    vecs = model.output_items().detach()
    seen = window.repeat_interleave(R, dim=0)  # (B * R, T): items never ranked
    ahead = torch.zeros(B * R, dtype=torch.long)
    step = max(1, (1 << 22) // vecs.shape[0])  # rows of full scores held at once
    for lo in range(0, B * R, step):
        full = h[lo : lo + step] @ vecs.T  # (rows, I + 1)
        full[:, 0] = float("-inf")
        full.scatter_(1, seen[lo : lo + step], float("-inf"))
        ahead[lo : lo + step] = (full > target[lo : lo + step, None]).sum(1)
    return scores, ahead.view(B, R)


def summary(
    model: SASRec,
    window: torch.Tensor,
    items: torch.Tensor,
    order: torch.Tensor,
    ks: tuple[int, ...] = (1, 3, 5),
) -> dict[str, np.ndarray]:
    """Per-user faithfulness of ``order`` (B, T) for items (B,): ``comprehensiveness@k``,
    ``rank_drop@k``, ``sufficiency@k`` (a k beyond a user's events counts all of them) and
    ``deletion_auc`` (over 0%, 10%, ..., 100% of the events removed), each (B,)."""
    model.eval()
    n = (window != 0).sum(1, keepdim=True)  # (B, 1)
    at_k = torch.minimum(n, torch.tensor([[0, *ks]]))  # (B, 1 + len(ks))
    fractions = torch.linspace(0, 1, DELETION_POINTS)[None, :]
    curve = torch.round(fractions * n).long()  # (B, points)
    counts = torch.cat([at_k, curve], 1)
    removed, rank = scores_after(model, window, items, order, counts, False, at_k.shape[1])
    kept, _ = scores_after(model, window, items, order, at_k[:, 1:], True)
    full = removed[:, 0]
    out = {}
    for i, k in enumerate(ks):
        out[f"comprehensiveness@{k}"] = (full - removed[:, 1 + i]).numpy()
        # How many places the item falls (its rank with the whole window is that of the
        # model's own ranking, 0 for its top-1 item).
        out[f"rank_drop@{k}"] = (rank[:, 1 + i] - rank[:, 0]).float().numpy()
        out[f"sufficiency@{k}"] = (full - kept[:, i]).numpy()
    curve = removed[:, 1 + len(ks) :] - full[:, None]  # (B, points)
    out["deletion_auc"] = curve.mean(1).numpy()
    out["deletion_curve"] = curve.numpy()  # the score change at 0%, 10%, ..., 100% removed
    return out


def measure(
    bundle: Bundle, flat: np.ndarray, offsets: np.ndarray, seed: int = 0
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """Faithfulness of every method, and of the random and most-recent baselines, for the
    top-1 item of each history ``flat[offsets[b]:offsets[b + 1]]``.

    Returns
    -------
    results : dict
        Ordering name → :func:`summary`'s per-user arrays.
    seconds : dict
        Method → seconds its contributions took.
    """
    model = bundle.scorer.model.eval()
    top, _ = score_chunk(bundle, flat, offsets, 1)
    items = torch.from_numpy(top[:, 0])
    window = trim(torch.from_numpy(pad_left(flat, offsets[:-1], offsets[1:], model.cfg.max_len)))
    orders, seconds = {}, {}
    for method in METHODS:
        t0 = time.perf_counter()
        contributions = attribute(model, window, items[:, None], method)[:, 0]
        seconds[method] = time.perf_counter() - t0
        orders[method] = orders_by(contributions, window)
    orders["random"] = random_order(window, seed)
    orders["most recent"] = recent_first(window)
    return {name: summary(model, window, items, o) for name, o in orders.items()}, seconds
