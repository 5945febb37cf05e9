"""Scoring as a pure function of a chunk of users: histories in, top-K items out.

Every door (batch job, Python API, MLflow model) answers through :func:`score_chunk`, so
memory is flat in the number of users and a chunk can be scored anywhere the bundle is
loaded (a later Ray Data ``map_batches`` step, a ``torchrun`` worker).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from recsys.bundle import Bundle
from recsys.data.dataset import pad_left
from recsys.evaluation.ranking import offsets_of
from recsys.models.repeat import last_occurrence

RESULT_SCHEMA = {"user_id": pl.String, "rank": pl.Int32, "item_id": pl.String, "score": pl.Float32}


def user_vectors(bundle: Bundle, flat: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
    """(B, d) user vectors of B histories ``flat[offsets[b]:offsets[b + 1]]``."""
    return _vectors_and_offsets(bundle, flat, offsets)[0]


def score_items(
    bundle: Bundle, flat: np.ndarray, offsets: np.ndarray, items: np.ndarray
) -> np.ndarray:
    """Scores (B, C) of given items (B, C) for B histories, as the ranking sees them (the
    dot product plus the model's repeat term, if any)."""
    users, history, values = _vectors_and_offsets(bundle, flat, offsets)
    cands = torch.from_numpy(items)
    scores = (users[:, None, :] * bundle.scorer.item_vectors()[cands]).sum(-1)  # (B, C)
    if values is not None:
        scores = scores + offsets_of((history, values), cands)
    return scores.numpy()


def _vectors_and_offsets(
    bundle: Bundle, flat: np.ndarray, offsets: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """User vectors (B, d), the whole histories left-padded (B, H), and the repeat term's
    offsets of those history positions (B, H) or None."""
    start, stop = offsets[:-1], offsets[1:]
    inputs = pad_left(flat, start, stop, bundle.scorer.max_len)
    history = torch.from_numpy(pad_left(flat, start, stop, int((stop - start).max(initial=1))))
    with torch.no_grad():
        users = bundle.scorer.user_vectors(torch.from_numpy(inputs))
        values = bundle.scorer.history_offsets(history)
    return users, history, values


def score_chunk(
    bundle: Bundle,
    flat: np.ndarray,
    offsets: np.ndarray,
    k: int,
    exclude_seen: bool = True,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item indices (B, k) and scores (B, k) for B histories.

    Parameters
    ----------
    bundle : Bundle
        The loaded model bundle.
    flat, offsets : ndarray
        The histories as item indices: history ``b`` is ``flat[offsets[b]:offsets[b + 1]]``
        (time order, at least one item each).
    k : int
        List length; rows end with item 0 (score -inf) where fewer items may be returned.
    exclude_seen : bool
        Never return an item of the history.
    exclude : ndarray (B, H), optional
        More item indices per row never to return (0 = none).
    """
    users, history, values = _vectors_and_offsets(bundle, flat, offsets)
    hist = history.numpy()
    parts = [hist] if exclude_seen else []
    if exclude is not None:
        parts.append(exclude)
    if exclude_seen or values is None:
        ex = np.concatenate(parts, axis=1) if parts else None
        return bundle.index.search(users.numpy(), k, ex)
    # The repeat term moves history items off the dot-product order: search the index
    # without them, score each one exactly (once, at its last occurrence), and merge.
    items, scores = bundle.index.search(users.numpy(), k, np.concatenate([hist, *parts], axis=1))
    rows, cols = last_occurrence(history).nonzero(as_tuple=True)
    own = np.full(hist.shape, -np.inf, dtype=np.float32)
    vecs = bundle.scorer.item_vectors()[history[rows, cols]]  # (n, d)
    own[rows, cols] = ((users[rows] * vecs).sum(-1) + values[rows, cols]).numpy()
    if exclude is not None:
        own[(hist[:, :, None] == exclude[:, None, :]).any(-1)] = -np.inf
    cand_items = np.concatenate([items, hist], axis=1)
    cand_scores = np.concatenate([scores, own], axis=1)
    stride = bundle.num_items + 1
    # Best first, ties by the lower index, empty slots (item 0, -inf) last.
    order = np.lexsort(
        (np.where(cand_items > 0, cand_items, stride), -cand_scores.astype(np.float64))
    )[:, :k]
    top_items = np.take_along_axis(cand_items, order, axis=1)
    top_scores = np.take_along_axis(cand_scores, order, axis=1)
    return np.where(np.isneginf(top_scores), 0, top_items), top_scores


def results_frame(
    bundle: Bundle, user_ids: np.ndarray, items: np.ndarray, scores: np.ndarray
) -> pl.DataFrame:
    """Long table ``user_id, rank (1 = best), item_id, score`` with raw IDs; empty slots
    (item 0) are left out."""
    B, k = items.shape
    vocab_ids = np.concatenate([[""], bundle.item_vocab["item_id"].to_numpy()])
    keep = (items > 0).ravel()
    return pl.DataFrame(
        {
            "user_id": np.repeat(np.asarray(user_ids, dtype=object), k)[keep],
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), B)[keep],
            "item_id": vocab_ids[items.ravel()][keep],
            "score": scores.ravel()[keep],
        },
        schema=RESULT_SCHEMA,
    )
