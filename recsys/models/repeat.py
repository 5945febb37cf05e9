"""Repeat bias: a learned score bias for items the user already consumed.

A sequence model scores items by a dot product, which has no direct way to say "this item
is in the history": on data where people never repeat (MovieLens ratings) it keeps
recommending what was just consumed, and on data where they often do (music, groceries)
it under-uses the history. This term learns the answer from the data: an item's score is
raised or lowered by a weight chosen by how long ago, in positions, the user last consumed
it (log-spaced buckets: 0, 1, 2-3, 4-7, ..., ``2**(n-2)`` or more positions back). Items
not in the history get no bias, so retrieval over dot products stays exact for them.

Scores are biases for candidates ``c`` at query positions ``t`` of a left-padded input
``(B, T)`` (0 = padding): the weight of ``t - s``, where ``s <= t`` is the last position
holding ``c``, or 0 if there is none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

NUM_BUCKETS = 9  # distances 0, 1, 2-3, 4-7, ..., 64-127, 128+
# Adam moves a parameter by about the learning rate per step, so a plain weight would need
# thousands of steps to reach the biases of several logits that the data asks for (a few
# hundred steps train ml-100k). Storing weight / RATE makes the same steps RATE times larger.
RATE = 25.0


def distance_bucket(distance: torch.Tensor, num_buckets: int = NUM_BUCKETS) -> torch.Tensor:
    """Bucket of non-negative position distances: 0 for 0, else ``floor(log2(d)) + 1``, capped."""
    d = distance.clamp(min=1).to(torch.float32)
    b = torch.log2(d).floor().long() + 1
    return torch.where(distance <= 0, 0, b).clamp(max=num_buckets - 1)


def last_occurrence(history: torch.Tensor) -> torch.Tensor:
    """(B, H) True at each real item's last position in its row of ``history`` (B, H)."""
    H = history.shape[1]
    pos = torch.arange(H, device=history.device)
    # Sorted by (item, position) within a row, an item's last occurrence ends its run:
    # O(H log H) per row rather than an (H, H) comparison.
    order = torch.argsort(history * H + pos, dim=1)  # (B, H)
    ranked = history.gather(1, order)
    run_end = torch.ones_like(ranked, dtype=torch.bool)
    run_end[:, :-1] = ranked[:, :-1] != ranked[:, 1:]
    return torch.zeros_like(run_end).scatter(1, order, run_end) & (history != 0)


class RepeatBias(nn.Module):
    """One learned weight per distance bucket (starts at 0: no effect until trained).

    ``max_len`` is the model's window: training never shows a distance beyond
    ``max_len - 1``, so items consumed longer ago (in a full history at ranking time) get
    the weight of the farthest bucket training reaches.
    """

    def __init__(self, max_len: int, num_buckets: int = NUM_BUCKETS):
        super().__init__()
        self.num_buckets = num_buckets
        self.farthest = int(distance_bucket(torch.tensor(max_len - 1), num_buckets))
        self.raw = nn.Parameter(torch.zeros(num_buckets))

    def _bucket(self, distance: torch.Tensor) -> torch.Tensor:
        return distance_bucket(distance, self.num_buckets).clamp(max=self.farthest)

    @property
    def weight(self) -> torch.Tensor:
        """(num_buckets,) the score bias of each distance bucket."""
        return self.raw * RATE

    def live(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Biases (B, T, T) [b, t, s] that input s adds to its item at query t, and where
        they apply (bool, same shape).

        They apply where s <= t, input s is real, and s is its item's last occurrence up
        to t (before the item's next position).
        """
        T = inputs.shape[1]
        pos = torch.arange(T, device=inputs.device)
        dist = pos[:, None] - pos[None, :]  # (T, T) [t, s]
        kernel = self.weight[self._bucket(dist)]  # (T, T)
        with torch.no_grad():
            same = inputs[:, :, None] == inputs[:, None, :]  # (B, s, s')
            later = torch.ones(T, T, dtype=torch.bool, device=inputs.device).triu(1)
            nxt = torch.where(same & later, pos, T).amin(-1)  # (B, s): next occurrence
            alive = (
                (pos[None, :, None] < nxt[:, None, :])
                & (dist >= 0)[None]
                & (inputs != 0)[:, None, :]
            )  # (B, t, s)
        return kernel[None] * alive, alive

    def forward(self, inputs: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
        """Biases (B, T, C) of candidates ``cands`` (B, T, C) or (B, 1, C) at every position."""
        B, T = inputs.shape
        if cands.shape[1] == 1 and T > 1:
            return self._per_sequence(inputs, cands[:, 0, :])
        cands = cands.expand(B, T, cands.shape[-1])
        with torch.no_grad():
            # Sorted keys (sequence, item, position) of the real inputs: the last position
            # s <= t of item c in sequence b is the predecessor of key (b, c, t).
            width = int(max(inputs.max().item(), cands.max().item())) + 1
            b = torch.arange(B, device=inputs.device)[:, None]  # (B, 1)
            s = torch.arange(T, device=inputs.device)[None, :]  # (1, T)
            keys = ((b * width + inputs) * T + s)[inputs != 0].sort().values  # (N,)
            t = torch.arange(T, device=inputs.device)[None, :, None]  # (1, T, 1)
            query = (b[:, :, None] * width + cands) * T + t  # (B, T, C)
            at = torch.searchsorted(keys, query, right=True) - 1
            found = keys[at.clamp(min=0)] if keys.numel() else torch.zeros_like(query)
            # Same (sequence, item) and at or before t: the key is within t + 1 of the query.
            hit = (at >= 0) & (query - found <= t) & (cands != 0)
            where = hit.nonzero(as_tuple=True)
            dist = query[where] - found[where]  # t - s, since the (b, c) parts are equal
        out = torch.zeros(cands.shape, dtype=self.weight.dtype, device=inputs.device)
        return out.index_put(where, self.weight[self._bucket(dist)])

    def _per_sequence(self, inputs: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
        """Biases (B, T, C) of the same candidates (B, C) at every position."""
        B, T = inputs.shape
        with torch.no_grad():
            b, c, s = (cands[:, :, None] == inputs[:, None, :]).nonzero(as_tuple=True)
        out = torch.zeros(B, cands.shape[1], T, dtype=self.weight.dtype, device=inputs.device)
        values, _ = self.live(inputs)  # (B, t, s)
        out = out.index_put((b, c), values[b, :, s], accumulate=True)  # (B, C, T)
        return out.transpose(1, 2)

    def add_dense(
        self, logits: torch.Tensor, inputs: torch.Tensor, real: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Every item's bias added to logits over the whole catalogue.

        ``logits`` is (B, T, num_items + 1), or (N, num_items + 1) for the N positions
        where ``real`` (B, T) is True, in row-major order.
        """
        index, values = self.dense_entries(inputs, real)
        return logits.index_put(index, values, accumulate=True)

    def dense_entries(
        self, inputs: torch.Tensor, real: torch.Tensor | None = None
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Where the biases go in logits over the whole catalogue, and their values (K,):
        index ``(b, t, item)`` into (B, T, num_items + 1) logits, or ``(row, item)`` into
        the (N, num_items + 1) logits of the positions where ``real`` (B, T) is True.
        Entries repeat where an item occurs twice: they add up."""
        values, alive = self.live(inputs)  # (B, t, s)
        if real is not None:
            alive = alive & real[:, :, None]
        b, t, s = alive.nonzero(as_tuple=True)
        index: tuple[torch.Tensor, ...] = (b, t)
        if real is not None:
            row = (real.flatten().cumsum(0) - 1).view(real.shape)  # (B, T)
            index = (row[b, t],)
        return (*index, inputs[b, s]), values[b, t, s]

    def last_position(self, history: torch.Tensor) -> torch.Tensor:
        """Biases (B, H) of each history item (B, H) when ranking what comes after it all.

        ``history`` is left-padded with 0, most recent item last, and may be longer than
        the model's window. The value sits at each item's last occurrence and is 0 at
        earlier ones and at padding, so adding values at ``history`` counts each item once.
        """
        H = history.shape[1]
        dist = (H - 1) - torch.arange(H, device=history.device)  # (H,)
        return self.weight[self._bucket(dist)][None, :] * last_occurrence(history)


@dataclass
class BatchBias:
    """The repeat term bound to one batch's inputs (B, T), as the losses use it."""

    repeat: RepeatBias
    inputs: torch.Tensor

    def of(self, cands: torch.Tensor) -> torch.Tensor:
        """Biases (B, T, C) of candidates (B, T, C) or (B, 1, C)."""
        return self.repeat(self.inputs, cands)

    def of_real(self, cands: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Biases (N, C) of candidates (N, C) given for the N real positions (B, T) only."""
        full = torch.zeros(*real.shape, cands.shape[-1], dtype=cands.dtype, device=cands.device)
        full[real] = cands
        return self.of(full)[real]

    def entries(self, real: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Index ``(row, item)`` into the (N, num_items + 1) logits of the real positions
        (B, T) and the bias values (K,) that go there (they add up where repeated)."""
        return self.repeat.dense_entries(self.inputs, real)

    def add_to(self, logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """(N, num_items + 1) logits of the real positions (B, T), plus every bias."""
        return self.repeat.add_dense(logits, self.inputs, real)
