"""Exposure budgets: how many lists of one job each item may still enter.

A budget is a tensor (I + 1,) of remaining lists, shared by every chunk of a job and
decreased in place as lists are filled (:func:`recsys.allocation.greedy.allocate`), so a
cap holds exactly over all the job's users however they are chunked. Chunks are filled in
order: where an item runs out, users of earlier chunks had it first; within a chunk it
goes to the users for whom it gains most.

- ``max_share``: every item may enter ceil(share x users) lists.
- ``proportional``: an item's lists follow its share of the total merit,
  ceil(merit_i / sum(merit) x users x slots), where merit_i is the item's probability
  summed over the job's users (each user's softmax over its candidates' scores). That
  needs every user's candidates before the first list is filled: a first pass over the
  job, :func:`merit`.

Pinned items are exempt: a business rule outranks a budget.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from recsys.allocation.config import ExposureConfig

TOLERANCE = 1e-9  # 0.05 x 943 users is 47.15 lists, not 47.150000000000006


def merit(
    cand: torch.Tensor,
    scores: torch.Tensor,
    num_items: int,
    skip: torch.Tensor | None = None,
) -> torch.Tensor:
    """(I + 1,) float64: each item's softmax probability summed over the B rows of
    candidates ``cand`` (B, M) with scores (B, M) (-inf or item 0 = none). An item listed
    twice in a row counts once; items in ``skip`` (pinned: exempt from budgets) not at all."""
    from recsys.allocation.greedy import first_occurrence

    drop = (cand <= 0) | ~first_occurrence(cand)
    if skip is not None and len(skip):
        drop |= torch.isin(cand, skip)
    s = scores.double().masked_fill(drop, float("-inf"))
    prob = torch.softmax(s, dim=1).nan_to_num(0.0)  # a row with no candidate: all NaN
    out = torch.zeros(num_items + 1, dtype=torch.float64)
    out.index_add_(0, cand.reshape(-1).clamp_min(0), prob.reshape(-1))
    out[0] = 0.0
    return out


def caps(
    cfg: ExposureConfig,
    num_users: int,
    slots: int,
    num_items: int,
    merit_total: torch.Tensor | None = None,
) -> torch.Tensor:
    """(I + 1,) int64: the lists each item may enter over a job of ``num_users`` users
    with ``slots`` free (unpinned) slots each."""
    out = torch.zeros(num_items + 1, dtype=torch.long)
    if cfg.mode == "max_share":
        assert cfg.max_share is not None
        out[1:] = math.ceil(cfg.max_share * num_users - TOLERANCE)
        return out
    assert cfg.mode == "proportional" and merit_total is not None, cfg
    total = float(merit_total[1:].sum())
    if total <= 0:
        return out
    target = merit_total.numpy() / total * num_users * slots
    out[:] = torch.from_numpy(np.ceil(target - TOLERANCE).astype(np.int64))
    out[0] = 0
    return out


def spend(budget: torch.Tensor, items: np.ndarray, pinned: list[int]) -> None:
    """Take the lists of items already written (a resumed job's finished parts) out of
    ``budget``; pinned items are exempt."""
    counts = torch.from_numpy(np.bincount(items.ravel(), minlength=len(budget)))
    counts[0] = 0
    for item in pinned:
        counts[item] = 0
    budget -= counts[: len(budget)]
