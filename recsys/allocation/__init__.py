"""Allocation: re-ranking that spends a list's scarce slots on purpose.

A chunk of users' candidate lists (the top ``candidates`` items from
:func:`recsys.scoring.score_chunk`, plus pinned items and the best items of each
``at_least`` quota's group) becomes k slots per user by :func:`greedy.allocate`:
diversity (MMR), calibration to the user's genre mix, exposure budgets shared by the
whole job, and hard business rules. Every door (batch job, evaluation, Python API, REST)
calls :func:`rerank_chunk` per chunk, and :func:`rerank_users` where one call is the
whole job.

    from recsys.allocation import RerankConfig
    cfg = RerankConfig.load("rerank.toml")        # or a dict, see config.py
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.allocation import exposure
from recsys.allocation.config import RerankConfig
from recsys.allocation.features import ItemFeatures
from recsys.allocation.greedy import Plan, allocate, compile_plan

__all__ = [
    "ItemFeatures",
    "Plan",
    "RerankConfig",
    "RerankSpec",
    "allocate",
    "compile_plan",
    "extra_candidates",
    "plan_for",
    "rerank_chunk",
    "rerank_users",
    "start_budget",
]

NEG_INF = float("-inf")
BLOCK_ELEMENTS = 1 << 23  # group scores held at once


RerankSpec = str | Path | dict | RerankConfig | bool | None


def plan_for(bundle: Any, rerank: RerankSpec) -> Plan | None:
    """The re-ranking a door applies, checked against the bundle's items, or None.

    ``rerank``: a TOML path, a dict or a config; None: the config stored with the model
    (``recsys train --rerank``), if any; False or ``"none"``: none. A config that changes
    nothing (lambda 1, no exposure, no rules) gives None: the model's own top-k.
    """
    if rerank is None:
        rerank = bundle.meta.get("rerank") or False
    if rerank is False or (isinstance(rerank, str) and rerank.lower() == "none"):
        return None
    if rerank is True:
        raise ValueError("rerank=True: give a config (a TOML path or dict), None or False")
    cfg = RerankConfig.load(rerank)
    if cfg.is_noop:
        return None
    # Compiled once per config and bundle: a single-user call should not pay for it.
    key = cfg.to_json()
    plans = bundle._plans
    if key not in plans:
        if len(plans) >= 16:
            plans.clear()
        plans[key] = compile_plan(cfg, bundle.features)
    return plans[key]


def extra_candidates(
    plan: Plan,
    users: torch.Tensor,
    item_vectors: torch.Tensor,
    exclude: torch.Tensor | None,
) -> torch.Tensor:
    """(B, E) items every list must be able to take beyond the retrieved ones: the
    pinned items, and for each ``at_least`` quota the best ``candidates`` items of its
    group (by dot product; ``exclude`` (B, H) and blocked items left out, 0 = none), so
    that exposure caps on the group's favourites leave others to meet the quota.
    Duplicates of retrieved candidates are dropped later by :func:`allocate`."""
    B = users.shape[0]
    parts = [torch.tensor([i for i, _ in plan.pins], dtype=torch.long).expand(B, -1)]
    for rule, members in plan.at_least:
        idx = members.nonzero()[:, 0]  # (G,)
        pos = torch.full((len(members),), -1, dtype=torch.long)
        pos[idx] = torch.arange(len(idx))
        n = min(max(rule.at_least, plan.cfg.candidates), len(idx))
        best = torch.zeros(B, n, dtype=torch.long)
        step = max(1, BLOCK_ELEMENTS // max(len(idx), 1))
        for lo in range(0, B, step):
            u = users[lo : lo + step]
            s = u @ item_vectors[idx].T  # (b, G)
            for ex in (exclude[lo : lo + step] if exclude is not None else None, None):
                if ex is None:
                    continue
                p = pos[ex]
                r, c = (p >= 0).nonzero(as_tuple=True)
                s[r, p[r, c]] = NEG_INF
            s[:, pos[plan.block][pos[plan.block] >= 0]] = NEG_INF
            val, top = s.topk(n, dim=1)
            best[lo : lo + step] = torch.where(torch.isfinite(val), idx[top], 0)
        parts.append(best)
    return torch.cat(parts, dim=1)


def rerank_chunk(
    bundle: Any,
    plan: Plan,
    flat: np.ndarray,
    offsets: np.ndarray,
    k: int,
    exclude_seen: bool = True,
    exclude: np.ndarray | None = None,
    budget: torch.Tensor | None = None,
    user_ids: Sequence[Any] | None = None,
    users: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-ranked top-k items (B, k) and their model scores (B, k) for B histories.

    Arguments as :func:`recsys.scoring.score_chunk`; ``budget``: the job's exposure
    budget (:func:`start_budget`), spent in place; ``user_ids`` name users in errors.
    """
    cand, scores, history = candidates(bundle, plan, flat, offsets, k, exclude_seen, exclude, users)
    return allocate(plan, cand, scores, history, k, budget, user_ids)


def candidates(
    bundle: Any,
    plan: Plan,
    flat: np.ndarray,
    offsets: np.ndarray,
    k: int,
    exclude_seen: bool = True,
    exclude: np.ndarray | None = None,
    users: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates (B, M'), their scores and the whole histories (B, H) of a chunk."""
    from recsys.scoring import score_chunk, score_items, user_vectors, whole_histories

    if users is None:
        users = user_vectors(bundle, flat, offsets)
    B = len(offsets) - 1
    m = min(max(plan.cfg.candidates, k), bundle.num_items)
    parts = [] if exclude is None else [exclude]
    if len(plan.block):
        parts.append(np.broadcast_to(plan.block.numpy(), (B, len(plan.block))))
    ex = np.concatenate(parts, axis=1) if parts else None
    cand, scores = score_chunk(bundle, flat, offsets, m, exclude_seen, ex, users)
    history = whole_histories(flat, offsets)
    skip = [history] if exclude_seen else []
    if exclude is not None:
        skip.append(torch.from_numpy(np.asarray(exclude, dtype=np.int64)))
    skip_t = torch.cat(skip, dim=1) if skip else None
    with torch.no_grad():
        extra = extra_candidates(plan, users, bundle.scorer.item_vectors(), skip_t)
    cand_t, scores_t = torch.from_numpy(cand), torch.from_numpy(scores)
    if extra.shape[1]:
        es = torch.from_numpy(score_items(bundle, flat, offsets, extra.numpy(), users))
        es = es.masked_fill(extra == 0, NEG_INF)
        cand_t, scores_t = torch.cat([cand_t, extra], 1), torch.cat([scores_t, es], 1)
    return cand_t, scores_t, history


def start_budget(
    plan: Plan,
    num_users: int,
    k: int,
    merit_total: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The exposure budget of a job over ``num_users`` users, or None without one."""
    cfg = plan.cfg.exposure
    if cfg is None:
        return None
    slots = k - len(plan.pins)
    return exposure.caps(cfg, num_users, slots, plan.features.num_items, merit_total)


def needs_merit(plan: Plan) -> bool:
    """Whether the job needs a first pass over its users (proportional exposure)."""
    return plan.cfg.exposure is not None and plan.cfg.exposure.mode == "proportional"


def rerank_users(
    bundle: Any,
    plan: Plan,
    chunks: Callable[[], Any],
    num_users: int,
    k: int,
    exclude_seen: bool = True,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Re-rank a whole job held in memory: ``chunks()`` yields ``(flat, offsets, exclude,
    user_ids)`` per chunk (called twice for proportional exposure); one ``(items,
    scores)`` per chunk, in order."""
    merit_total = None
    if needs_merit(plan):
        merit_total = torch.zeros(bundle.num_items + 1, dtype=torch.float64)
        for flat, offsets, exclude, _ in chunks():
            cand, scores, _ = candidates(bundle, plan, flat, offsets, k, exclude_seen, exclude)
            merit_total += exposure.merit(cand, scores, bundle.num_items, plan.pinned)
    budget = start_budget(plan, num_users, k, merit_total)
    out = [
        rerank_chunk(bundle, plan, flat, offsets, k, exclude_seen, exclude, budget, ids)
        for flat, offsets, exclude, ids in chunks()
    ]
    short = sum(int((items == 0).any(1).sum()) for items, _ in out)
    if short:
        warnings.warn(
            f"{short} of {num_users} lists are shorter than k={k}: the re-ranking left no "
            "allowed candidate (exposure caps, rules); raise candidates in the config",
            stacklevel=3,
        )
    return out
