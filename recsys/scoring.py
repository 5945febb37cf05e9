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
from recsys.data.dataset import pad_left, ragged_to_padded

RESULT_SCHEMA = {"user_id": pl.String, "rank": pl.Int32, "item_id": pl.String, "score": pl.Float32}


def user_vectors(bundle: Bundle, flat: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
    """(B, d) user vectors of B histories ``flat[offsets[b]:offsets[b + 1]]``."""
    inputs = pad_left(flat, offsets[:-1], offsets[1:], bundle.scorer.max_len)
    with torch.no_grad():
        return bundle.scorer.user_vectors(torch.from_numpy(inputs))


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
    users = user_vectors(bundle, flat, offsets).numpy()  # (B, d)
    parts = [ragged_to_padded(flat, offsets)] if exclude_seen else []
    if exclude is not None:
        parts.append(exclude)
    ex = np.concatenate(parts, axis=1) if parts else None
    return bundle.index.search(users, k, ex)


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
