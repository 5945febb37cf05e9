"""Explanations of recommendations from the user's history: which events made an item's
score, as a pure function of a chunk of histories like :func:`recsys.scoring.score_chunk`.

:func:`explain_chunk` gives, per (user, item), one contribution per history event in the
model's window (:mod:`recsys.explain.attribution`) and, with the repeat term on, that
term's part of the score; :func:`explanation_frame` lays them out as the long table every
door returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from recsys.bundle import Bundle
from recsys.data.dataset import pad_left
from recsys.evaluation.ranking import bias_of
from recsys.explain.attribution import METHODS, attribute, trim
from recsys.models.scorers import SASRecScorer
from recsys.scoring import score_chunk, whole_histories

# The most faithful method that leaves a batch job a third of its speed or more: over all
# Amazon Beauty users, `recommend --explain 3` ran at 0.40x the plain job's users/s with
# occlusion and 0.87x with attention (benchmarks/explain.py --cost); occlusion removes
# more of the score with its top events on both reference logs (README).
DEFAULT_METHOD = "occlusion"
GROUP_USERS = 256  # users explained together, of similar history length

EXPLANATION_SCHEMA = {
    "user_id": pl.String,
    "item_id": pl.String,
    "history_item_id": pl.String,
    "position": pl.Int32,
    "contribution": pl.Float32,
    "method": pl.String,
    "source": pl.String,
}


@dataclass
class Explained:
    """Contributions for a chunk of B histories and M items each."""

    items: np.ndarray  # (B, M) explained item indices (0: an empty slot, left out)
    window: np.ndarray  # (B, T) the history events the model read, left-padded
    contributions: np.ndarray  # (B, M, T) per window position (0 at padding)
    repeat: np.ndarray | None  # (B, M) the repeat term's part of each score, or None
    method: str


def explain_chunk(
    bundle: Bundle,
    flat: np.ndarray,
    offsets: np.ndarray,
    items: np.ndarray | None = None,
    k: int = 10,
    method: str = DEFAULT_METHOD,
    exclude_seen: bool | None = None,
) -> Explained:
    """Explain items (B, M) for B histories, or each history's own top-k when ``items`` is
    None (as :func:`~recsys.scoring.score_chunk` ranks them).

    Histories are ``flat[offsets[b]:offsets[b + 1]]`` (item indices, time order, at least
    one each).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    if not isinstance(bundle.scorer, SASRecScorer):
        raise ValueError(
            f"a {bundle.meta.get('kind')!r} model ranks without the history; only SASRec "
            "models can be explained"
        )
    if items is None:  # the top-k as the doors rank them (the model's history setting)
        exclude = bundle.exclude_seen() if exclude_seen is None else exclude_seen
        items, _ = score_chunk(bundle, flat, offsets, k, exclude)
    model = bundle.scorer.model
    window = trim(torch.from_numpy(pad_left(flat, offsets[:-1], offsets[1:], model.cfg.max_len)))
    cands = torch.from_numpy(np.ascontiguousarray(items))
    B, T = window.shape
    contributions = torch.zeros(B, cands.shape[1], T)
    # Users of similar length together, each group cut to its longest window: occlusion
    # costs length squared per user, and most users are far shorter than the longest.
    by_length = torch.from_numpy(np.argsort((window != 0).sum(1).numpy(), kind="stable"))
    for group in by_length.split(GROUP_USERS):
        part = trim(window[group])
        contributions[group, :, T - part.shape[1] :] = attribute(model, part, cands[group], method)
    repeat = None
    history = whole_histories(flat, offsets)
    with torch.no_grad():
        values = bundle.scorer.history_bias(history)
    if values is not None:
        repeat = bias_of((history, values), cands).numpy()
    return Explained(items, window.numpy(), contributions.numpy(), repeat, method)


def explanation_frame(
    bundle: Bundle, user_ids: np.ndarray, ex: Explained, top: int | None = None
) -> pl.DataFrame:
    """The long table: per user and explained item (in the given order), its history
    events by contribution (largest first; the ``top`` largest when given), then the repeat
    term's row (``history_item_id`` null, ``source`` ``repeat``)."""
    _, M, T = ex.contributions.shape
    order, real = _strongest(ex, T if top is None else top)
    b, j, c = np.nonzero(real & (ex.items[:, :, None] > 0))
    t = order[b, j, c]
    item_ids = bundle.item_ids
    parts = {
        "user_id": np.asarray(user_ids, dtype=object)[b],
        "item_id": item_ids[ex.items[b, j]],
        "history_item_id": item_ids[ex.window[b, t]],
        "position": (T - 1 - t).astype(np.int32),
        "contribution": ex.contributions[b, j, t].astype(np.float32),
        "sort": (b * M + j) * (T + 1) + c,  # history rows first, by contribution
    }
    frame = pl.DataFrame(parts, schema={**_SCHEMA_BASE, "sort": pl.Int64}).with_columns(
        method=pl.lit(ex.method), source=pl.lit("history")
    )
    if ex.repeat is not None:
        rb, rj = np.nonzero(ex.items > 0)
        rows = pl.DataFrame(
            {
                "user_id": np.asarray(user_ids, dtype=object)[rb],
                "item_id": item_ids[ex.items[rb, rj]],
                "history_item_id": np.full(len(rb), None, dtype=object),
                "position": np.full(len(rb), None, dtype=object),
                "contribution": ex.repeat[rb, rj].astype(np.float32),
                "sort": (rb * M + rj) * (T + 1) + T,
            },
            schema={**_SCHEMA_BASE, "sort": pl.Int64},
        ).with_columns(method=pl.lit(ex.method), source=pl.lit("repeat"))
        frame = pl.concat([frame, rows])
    return frame.sort("sort").drop("sort").select(list(EXPLANATION_SCHEMA))


def reasons(bundle: Bundle, ex: Explained, n: int) -> tuple[pl.Series, pl.Series]:
    """Per explained (user, item), row-major over ``ex.items`` (B, M): the IDs of the ``n``
    history events with the largest contributions, largest first, and those
    contributions, as two list columns (``because``, ``because_weight``)."""
    B, M, T = ex.contributions.shape
    order, kept = _strongest(ex, n)
    events = np.take_along_axis(np.broadcast_to(ex.window[:, None, :], (B, M, T)), order, 2)
    ids = np.where(kept, bundle.item_ids[events], None).reshape(B * M, -1)
    weights = np.where(kept, np.take_along_axis(ex.contributions, order, 2), np.nan)
    width = ids.shape[1]
    because = (
        pl.Series("because", ids.ravel(), dtype=pl.String)
        .reshape((B * M, width))
        .arr.to_list()
        .list.drop_nulls()
    )
    weight = (
        pl.Series("because_weight", weights.reshape(-1).astype(np.float32), nan_to_null=True)
        .reshape((B * M, width))
        .arr.to_list()
        .list.drop_nulls()
    )
    return because, weight


def _strongest(ex: Explained, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Window positions (B, M, n) of each item's ``n`` largest contributions, largest
    first, and whether each is a real event (not padding)."""
    B, M, T = ex.contributions.shape
    real = np.broadcast_to(ex.window[:, None, :] != 0, (B, M, T))
    order = np.argsort(np.where(real, -ex.contributions, np.inf), axis=2, kind="stable")
    order = order[:, :, :n]
    return order, np.take_along_axis(real, order, 2)


_SCHEMA_BASE = {k: v for k, v in EXPLANATION_SCHEMA.items() if k not in ("method", "source")}
