"""Scorers: what evaluation and retrieval need of a model (user vectors, item vectors).

A score is the dot product of a user vector with an item vector, for SASRec and for the
most-popular baseline alike, so both go through the same ranking code.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from recsys.models.sasrec import SASRec

MODEL_KINDS = ("sasrec", "most-popular")
USER_GROUP = 128  # users per forward pass of SASRecScorer.user_vectors
WIDTH_STEP = 8  # user_vectors cuts windows to multiples of this many positions


class Scorer(Protocol):
    """What evaluation and retrieval need of a model."""

    max_len: int

    def user_vectors(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, d) vectors of left-padded histories (B, max_len)."""
        ...

    def item_vectors(self) -> torch.Tensor:
        """(num_items + 1, d) item vectors; row 0 is padding."""
        ...

    def history_bias(self, history: torch.Tensor) -> torch.Tensor | None:
        """Score biases (B, H) of whole left-padded histories (B, H), or None (scores are
        dot products)."""
        ...


class SASRecScorer:
    """A trained SASRec in inference mode; the user vector is the last hidden state."""

    def __init__(self, model: SASRec):
        self.model = model.eval()
        self.max_len = model.cfg.max_len

    # A model on a GPU takes its inputs there and answers there; ranking follows it.

    @torch.no_grad()
    def user_vectors(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, d) of left-padded histories (B, T).

        Each history is cut to its length rounded up to a multiple of 8 (of 8 x
        ceil(T / 64) for long windows), and users of one width run together: in a
        short-sequence log most of a padded window is padding, whose attention and
        feed-forward cost as much as real positions (Beauty's validation: 3.1 s -> 1.3 s).
        Positions count from the right end and padding is masked, so the cut changes
        nothing but the work; a user's width does not depend on the others in the batch,
        so one user alone gets the same vector to the bit.
        """
        inputs = inputs.to(self._device())
        B, T = inputs.shape
        # Multiples of 8 positions: on a CPU the matrix kernels then give a row the same
        # bits whatever the number of rows beside it (not so for 1-7 rows).
        step = WIDTH_STEP * -(-T // (WIDTH_STEP * 8))
        lengths = (inputs != 0).sum(1).clamp(min=1)  # (B,)
        widths = ((lengths + step - 1) // step * step).clamp(max=T)  # (B,)
        out = torch.empty(B, self.model.cfg.d_model, device=inputs.device)
        for width in widths.unique().tolist():
            same = (widths == width).nonzero()[:, 0]
            for lo in range(0, len(same), USER_GROUP):
                group = same[lo : lo + USER_GROUP]
                out[group] = self.model.user_repr(inputs[group, T - width :])
        return out

    def item_vectors(self) -> torch.Tensor:
        """(num_items + 1, d) the output item embeddings."""
        return self.model.output_items().detach()

    @torch.no_grad()
    def history_bias(self, history: torch.Tensor) -> torch.Tensor | None:
        """(B, H) score biases of whole left-padded histories (the repeat term), or None."""
        return self.model.history_bias(history.to(self._device()))

    def _device(self) -> torch.device:
        return self.model.output_items().device


class MostPopular:
    """Ranks items by their number of training events, whatever the history."""

    max_len = 1

    def __init__(self, counts: np.ndarray):
        self.counts = torch.as_tensor(counts, dtype=torch.float32)[:, None]  # (I + 1, 1)

    def user_vectors(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, 1) of ones: every user gets the same scores."""
        return torch.ones(inputs.shape[0], 1)

    def item_vectors(self) -> torch.Tensor:
        """(num_items + 1, 1) training counts."""
        return self.counts

    def history_bias(self, history: torch.Tensor) -> None:
        """None: the history does not change the scores."""
        return None


class MostRecent(MostPopular):
    """The user's own most recent items first (a baseline for logs where people repeat),
    then the rest by popularity.

    A history item's score is its training count plus a bonus above any count that grows
    with recency (its last occurrence), so, with the history included, the most recent
    distinct items come first. With the history excluded it is most-popular.
    """

    def history_bias(self, history: torch.Tensor) -> torch.Tensor:
        """(B, H) bonus at each item's last occurrence in the left-padded history."""
        from recsys.models.repeat import last_occurrence

        H = history.shape[1]
        above = float(self.counts.max()) + 1.0
        recency = torch.arange(1, H + 1, dtype=torch.float32)[None, :]  # later = larger
        last = last_occurrence(history) & (history > 0)
        return torch.where(last, above * recency, 0.0)
