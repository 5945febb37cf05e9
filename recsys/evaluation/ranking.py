"""Full ranking in blocks of items: target ranks and top-K lists without the score matrix.

Scores are dot products of user vectors (B, d) with item vectors (I + 1, d); row 0 of the
item matrix is padding and never ranked. Items are visited in blocks, so memory is
``B x block`` whatever the catalogue size. Excluded items (a user's history) are never
ranked; a caller that keeps a target in the ranking leaves it out of ``exclude``
(:func:`drop_targets`), while ``recsys.evaluation.evaluate`` counts a target in an
excluded history as a miss instead.

Ties are broken by the lower item index, in ranks and in top-K lists alike, so results
are deterministic and a target's rank agrees with its position in the top-K list.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys.errors import TrainingError

NEG_INF = float("-inf")
BLOCK_ELEMENTS = 1 << 23  # scores held at once: 32 MB of float32


def _block_size(batch: int, num_items: int) -> int:
    return max(1, min(num_items, BLOCK_ELEMENTS // max(batch, 1)))


def _mask_excluded(scores: torch.Tensor, exclude: torch.Tensor | None, lo: int, hi: int) -> None:
    """Set scores (B, hi - lo) of excluded items (B, H) (0 = none) in [lo, hi) to -inf."""
    if lo == 0:
        scores[:, 0] = NEG_INF
    if exclude is None:
        return
    inside = (exclude >= lo) & (exclude < hi) & (exclude > 0)
    rows, cols = inside.nonzero(as_tuple=True)
    scores[rows, exclude[rows, cols] - lo] = NEG_INF


HistoryBias = tuple[torch.Tensor, torch.Tensor]  # items (B, H) and their score biases (B, H)


def bias_of(bias: HistoryBias, cands: torch.Tensor) -> torch.Tensor:
    """Score bias (B, M) of candidate items (B, M): the sum of their listed bias."""
    items, values = bias
    same = items[:, None, :] == cands[:, :, None]  # (B, M, H)
    return (same * values[:, None, :]).sum(-1)


def _add_bias(scores: torch.Tensor, bias: HistoryBias | None, lo: int, hi: int) -> None:
    """Add bias (see :data:`HistoryBias`) of items in [lo, hi) to block scores (B, hi - lo)."""
    if bias is None:
        return
    items, values = bias
    inside = (items >= lo) & (items < hi) & (values != 0)
    rows, cols = inside.nonzero(as_tuple=True)
    scores.index_put_((rows, items[rows, cols] - lo), values[rows, cols], accumulate=True)


def drop_targets(exclude: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``exclude`` (B, H) with each user's own targets (B, M) replaced by 0 (none)."""
    is_target = (exclude[:, :, None] == targets[:, None, :]).any(-1)  # (B, H)
    return exclude.masked_fill(is_target, 0)


def target_ranks(
    users: torch.Tensor,
    item_vecs: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """0-based rank (B, M) of each target (B, M) (0 = padding → rank -1) among all items.

    A target's rank counts the items, not excluded, that score higher, or equal with a
    lower index. ``exclude`` must not contain the targets (see :func:`drop_targets`).
    """
    return rank_and_top_k(users, item_vecs, targets, 0, exclude)[0]


def top_k(
    users: torch.Tensor,
    item_vecs: torch.Tensor,
    k: int,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best items (B, k) and their scores (B, k), best first, ties by lower index.

    Where fewer than k items may be ranked, the list ends with item 0 and score -inf.
    """
    _, items, scores = rank_and_top_k(users, item_vecs, None, k, exclude)
    return items, scores


def rank_and_top_k(
    users: torch.Tensor,
    item_vecs: torch.Tensor,
    targets: torch.Tensor | None,
    k: int,
    exclude: torch.Tensor | None = None,
    bias: HistoryBias | None = None,
    _numpy_counts: bool | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Target ranks (as :func:`target_ranks`) and top-k lists (as :func:`top_k`) in one
    pass over the item blocks, so each score is computed once.

    ``bias`` (items, values) are added to those items' dot-product scores (a model's
    repeat term) before exclusion. Inputs may be on any one device; the results are on
    the CPU. ``_numpy_counts`` forces the CPU (True) or the device (False) way of counting,
    for tests."""
    B = users.shape[0]
    num = item_vecs.shape[0]
    M = targets.shape[1] if targets is not None else 0
    dev = users.device
    # On the CPU counting is done in numpy (counting a boolean tensor is ~5x slower in
    # torch); elsewhere (a GPU) in torch, where the scores are.
    on_cpu = dev.type == "cpu" if _numpy_counts is None else _numpy_counts
    best_s = torch.full((B, 0), NEG_INF, device=dev)
    best_i = torch.zeros((B, 0), dtype=torch.long, device=dev)
    if M:
        t_scores = (users[:, None, :] * item_vecs[targets]).sum(-1)  # (B, M)
        if bias is not None:
            t_scores = t_scores + bias_of(bias, targets)
        if on_cpu:
            t = t_scores.numpy()[:, :, None]  # (B, M, 1)
            j = targets.numpy()[:, :, None]  # (B, M, 1)
            rows = np.arange(B)[:, None]  # (B, 1)
            ranks = np.zeros((B, M), dtype=np.int64)
        else:
            ranks_t = torch.zeros((B, M), dtype=torch.long, device=dev)
    step = _block_size(B * max(M, 1), num)
    for lo in range(0, num, step):
        hi = min(lo + step, num)
        scores = users @ item_vecs[lo:hi].T  # (B, n)
        _add_bias(scores, bias, lo, hi)
        if torch.isnan(scores).any():  # nothing can be ranked; a diverged model
            raise TrainingError(
                "the model's scores are NaN (its weights overflowed): it diverged in "
                "training; train again with a lower learning rate"
            )
        _mask_excluded(scores, exclude, lo, hi)
        if M and not on_cpu:
            ranks_t += _count_ahead(scores, t_scores, targets, lo, hi)
        elif M:
            s = scores.numpy()[:, None, :]  # (B, 1, n)
            ranks += np.count_nonzero(s > t, axis=-1)
            # The block's matmul may round a target's own score differently from
            # t_scores; an item never ranks ahead of itself.
            inside = (j[..., 0] >= lo) & (j[..., 0] < hi)  # (B, M)
            own = s[rows, 0, np.clip(j[..., 0] - lo, 0, hi - lo - 1)]  # (B, M)
            ranks -= inside & (own > t[..., 0])
            tied = s == t  # (B, M, n)
            if tied.any():  # rare with real-valued scores: ties go to the lower index
                i = np.arange(lo, hi)[None, None, :]
                ranks += np.count_nonzero(tied & (i < j), axis=-1)
        if k:
            bs, bi = _block_top_k(scores, min(k, hi - lo), on_cpu)
            best_s, best_i = _merge(best_s, best_i, bs, bi + lo, k)
    out_ranks = None
    if M:
        counted = torch.from_numpy(ranks) if on_cpu else ranks_t.cpu()
        out_ranks = counted.masked_fill(targets.cpu() == 0, -1)
    best_s = best_s.cpu()
    return out_ranks, best_i.cpu().masked_fill(best_s == NEG_INF, 0), best_s


def _count_ahead(
    scores: torch.Tensor, t_scores: torch.Tensor, targets: torch.Tensor, lo: int, hi: int
) -> torch.Tensor:
    """(B, M) items of a block's scores (B, hi - lo) ranked ahead of each target (B, M):
    the numpy counting of :func:`rank_and_top_k`, in torch."""
    s, t = scores[:, None, :], t_scores[:, :, None]  # (B, 1, n), (B, M, 1)
    ahead = (s > t).sum(-1)  # (B, M)
    inside = (targets >= lo) & (targets < hi)
    own = scores.gather(1, (targets - lo).clamp(0, hi - lo - 1))  # (B, M)
    ahead -= (inside & (own > t_scores)).long()  # an item never ranks ahead of itself
    i = torch.arange(lo, hi, device=scores.device)[None, None, :]
    return ahead + ((s == t) & (i < targets[:, :, None])).sum(-1)


def _block_top_k(
    scores: torch.Tensor, k: int, on_cpu: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of one block with ties at the k-th score resolved to the lowest indices."""
    vals, cols = scores.topk(k, dim=1)  # (B, k), best first
    kth = vals[:, -1:]  # (B, 1)
    if on_cpu:
        clean = bool((np.count_nonzero(scores.numpy() >= kth.numpy(), axis=1) == k).all())
    else:
        clean = bool(((scores >= kth).sum(1) == k).all())
    if clean:
        # No tie crosses the k-th place: topk chose the right items; order equal scores
        # among them by index.
        cols, order = cols.sort(dim=1)
        vals = vals.gather(1, order)
        order = vals.argsort(dim=1, descending=True, stable=True)
        return vals.gather(1, order), cols.gather(1, order)
    above = scores > kth
    tied = scores == kth
    # Of the items tied with the k-th score, keep the lowest-indexed ones that fit.
    room = k - above.sum(1, keepdim=True)
    take = above | (tied & (tied.cumsum(1) <= room))  # exactly k per row
    cols = take.nonzero(as_tuple=True)[1].view(-1, k)  # (B, k), ascending index
    vals = scores.gather(1, cols)
    order = vals.argsort(dim=1, descending=True, stable=True)
    return vals.gather(1, order), cols.gather(1, order)


def _merge(
    s1: torch.Tensor, i1: torch.Tensor, s2: torch.Tensor, i2: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    # Blocks come in index order, so a stable sort keeps lower indices first among ties.
    s = torch.cat([s1, s2], dim=1)
    i = torch.cat([i1, i2], dim=1)
    order = s.argsort(dim=1, descending=True, stable=True)[:, :k]
    return s.gather(1, order), i.gather(1, order)
