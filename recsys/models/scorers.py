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
        """(B, d) of left-padded histories (B, T)."""
        return self.model.user_repr(inputs.to(self._device()))

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
