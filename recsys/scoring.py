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
from recsys.evaluation.ranking import bias_of
from recsys.models.repeat import last_occurrence

RESULT_SCHEMA = {"user_id": pl.String, "rank": pl.Int32, "item_id": pl.String, "score": pl.Float32}


def user_vectors(bundle: Bundle, flat: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
    """(B, d) user vectors of B histories ``flat[offsets[b]:offsets[b + 1]]``."""
    inputs = pad_left(flat, offsets[:-1], offsets[1:], bundle.scorer.max_len)
    with torch.no_grad():
        return bundle.scorer.user_vectors(torch.from_numpy(inputs))


def whole_histories(flat: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
    """(B, H) the B histories in full, left-padded with 0 to the longest (most recent last):
    what exclusion and the repeat term read, beyond the model's window."""
    start, stop = offsets[:-1], offsets[1:]
    return torch.from_numpy(pad_left(flat, start, stop, int((stop - start).max(initial=1))))


def score_items(
    bundle: Bundle,
    flat: np.ndarray,
    offsets: np.ndarray,
    items: np.ndarray,
    users: torch.Tensor | None = None,
) -> np.ndarray:
    """Scores (B, C) of given items (B, C) for B histories, as the ranking sees them (the
    dot product plus the model's repeat term, if any); ``users``: their user vectors, if
    the caller has them."""
    if users is None:
        users = user_vectors(bundle, flat, offsets)
    cands = torch.from_numpy(items)
    scores = (users[:, None, :] * bundle.scorer.item_vectors()[cands]).sum(-1)  # (B, C)
    history = whole_histories(flat, offsets)
    values = bundle.scorer.history_bias(history)
    if values is not None:
        scores = scores + bias_of((history, values), cands)
    return scores.numpy()


def score_chunk(
    bundle: Bundle,
    flat: np.ndarray,
    offsets: np.ndarray,
    k: int,
    exclude_seen: bool = True,
    exclude: np.ndarray | None = None,
    users: torch.Tensor | None = None,
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
    users : Tensor (B, d), optional
        The histories' user vectors, when the caller has them already (the REST model
        keeps known users'); computed from the histories otherwise.
    """
    if users is None:
        users = user_vectors(bundle, flat, offsets)
    history = whole_histories(flat, offsets)
    hist = history.numpy()
    extra = [] if exclude is None else [exclude]
    # History items are excluded or scored as dot products, unless a repeat term moves them.
    values = None if exclude_seen else bundle.scorer.history_bias(history)
    if values is None:
        parts = [hist, *extra] if exclude_seen else extra
        ex = np.concatenate(parts, axis=1) if parts else None
        return bundle.index.search(users.numpy(), k, ex)
    # Search the index without the history, score each history item exactly (once, at its
    # last occurrence, with its bias), and merge the two lists.
    items, scores = bundle.index.search(users.numpy(), k, np.concatenate([hist, *extra], axis=1))
    rows, cols = last_occurrence(history).nonzero(as_tuple=True)
    own = np.full(hist.shape, -np.inf, dtype=np.float32)
    vecs = bundle.scorer.item_vectors()[history[rows, cols]]  # (n, d)
    # numpy indices, not tensors: numpy reads a one-element tensor index as a scalar.
    own[rows.numpy(), cols.numpy()] = ((users[rows] * vecs).sum(-1) + values[rows, cols]).numpy()
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
    keep = (items > 0).ravel()
    return pl.DataFrame(
        {
            "user_id": np.repeat(np.asarray(user_ids, dtype=object), k)[keep],
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), B)[keep],
            "item_id": bundle.item_ids[items.ravel()][keep],
            "score": scores.ravel()[keep],
        },
        schema=RESULT_SCHEMA,
    )
