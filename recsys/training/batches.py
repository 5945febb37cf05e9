"""Training batches, built for many users at once with numpy index arithmetic.

Every position of a user's training window predicts the next item: the window is the
last ``max_len + 1`` training events, the inputs are all but its last and the targets
all but its first. Sequences are left-padded with 0, so the most recent event is always
at the last position, as at inference time.

Events with the same timestamp have no known order; :func:`shuffle_ties` gives them a
new random one every epoch, so that the model does not learn the order the log happened
to list them in as if it were the order people acted in.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys.data.dataset import pad_left


def training_batch(
    items: np.ndarray, start: np.ndarray, stop: np.ndarray, max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-item targets (both (B, max_len), int64) for training ranges.

    Positions whose input is padding have target 0 and are ignored by the losses.

    Examples
    --------
    events ``[a, b, c]`` and ``max_len=3`` → inputs ``[0, a, b]``, targets ``[0, b, c]``.
    """
    window = pad_left(items, start, stop, max_len + 1)  # (B, T + 1)
    inputs = window[:, :-1]
    targets = np.where(inputs != 0, window[:, 1:], 0)
    return torch.from_numpy(np.ascontiguousarray(inputs)), torch.from_numpy(
        np.ascontiguousarray(targets)
    )


def target_counts(start: np.ndarray, stop: np.ndarray, max_len: int) -> np.ndarray:
    """Next-item targets (real positions) per row of :func:`training_batch` for the same
    ranges: one fewer than the window's events, ``min(stop - start, max_len + 1) - 1``.

    The losses average over these positions; data-parallel training weights each rank's
    loss by its share of the batch's total.
    """
    return np.maximum(np.minimum(stop - start, max_len + 1) - 1, 0)


def tie_groups(starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The events in tie groups of two or more, and their groups.

    ``starts`` is :func:`recsys.data.dataset.tie_starts`. Returns the
    positions ``(M,)`` of those events, in order, and the group of each ``(M,)``,
    numbered 0, 1, ... in order.

    Examples
    --------
    starts ``[T, T, F, F, T, F]`` → positions ``[1, 2, 3, 4, 5]``, groups
    ``[0, 0, 0, 1, 1]``.
    """
    # An event is in a group of two or more if it continues one or the next event does.
    in_group = ~starts
    in_group[:-1] |= ~starts[1:]
    tied = np.flatnonzero(in_group)  # (M,)
    return tied, np.cumsum(starts[tied]) - 1


def shuffle_ties(
    items: np.ndarray, tied: np.ndarray, group: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A copy of ``items`` with the events of each tie group (:func:`tie_groups`) in a
    random order; every other event keeps its place.

    Examples
    --------
    items ``[a, b, c, d, e]``, positions ``[1, 2, 3]`` in one group → ``[a, X, Y, Z, e]``
    with ``X, Y, Z`` one of the 6 orders of ``b, c, d``.
    """
    out = items.copy()
    # Sorting group + a random fraction keeps groups in place and orders within them.
    order = np.argsort(group + rng.random(len(group)), kind="stable")
    out[tied] = items[tied[order]]
    return out
