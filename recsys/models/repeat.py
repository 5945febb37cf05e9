"""Repeat bias: a learned score offset for items the user already consumed.

A sequence model scores items by a dot product, which has no direct way to say "this item
is in the history": on data where people never repeat (MovieLens ratings) it keeps
recommending what was just consumed, and on data where they often do (music, groceries)
it under-uses the history. This term learns the answer from the data: an item's score is
raised or lowered by a weight chosen by how long ago, in positions, the user last consumed
it (log-spaced buckets: 0, 1, 2-3, 4-7, ..., ``2**(n-2)`` or more positions back). Items
not in the history get no offset, so retrieval over dot products stays exact for them.

Scores are offsets for candidates ``c`` at query positions ``t`` of a left-padded input
``(B, T)`` (0 = padding): the weight of ``t - s``, where ``s <= t`` is the last position
holding ``c``, or 0 if there is none.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_BUCKETS = 9  # distances 0, 1, 2-3, 4-7, ..., 64-127, 128+
# Adam moves a parameter by about the learning rate per step, so a plain weight would need
# thousands of steps to reach the offsets of several logits that the data asks for (a few
# hundred steps train ml-100k). Storing weight / RATE makes the same steps RATE times larger.
RATE = 25.0


def distance_bucket(distance: torch.Tensor, num_buckets: int = NUM_BUCKETS) -> torch.Tensor:
    """Bucket of non-negative position distances: 0 for 0, else ``floor(log2(d)) + 1``, capped."""
    d = distance.clamp(min=1).to(torch.float32)
    b = torch.log2(d).floor().long() + 1
    return torch.where(distance <= 0, 0, b).clamp(max=num_buckets - 1)


class RepeatBias(nn.Module):
    """One learned weight per distance bucket (starts at 0: no effect until trained)."""

    def __init__(self, num_buckets: int = NUM_BUCKETS):
        super().__init__()
        self.num_buckets = num_buckets
        self.raw = nn.Parameter(torch.zeros(num_buckets))

    @property
    def weight(self) -> torch.Tensor:
        """(num_buckets,) the score offset of each distance bucket."""
        return self.raw * RATE

    def _kernel(self, T: int, device: torch.device) -> torch.Tensor:
        """(T, T) weight of query position t for an item last seen at s (0 where s > t)."""
        pos = torch.arange(T, device=device)
        dist = pos[:, None] - pos[None, :]  # (T, T)
        return self.weight[distance_bucket(dist, self.num_buckets)] * (dist >= 0)

    def forward(self, inputs: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
        """Offsets (B, T, C) of candidates ``cands`` (B, T, C) or (B, 1, C) at every position."""
        B, T = inputs.shape
        cands = cands.expand(B, T, cands.shape[-1])
        # Sorted keys (sequence, item, position) of the real inputs: the last position
        # s <= t of item c in sequence b is the predecessor of key (b, c, t).
        width = int(max(inputs.max().item(), cands.max().item())) + 1
        b = torch.arange(B, device=inputs.device)[:, None]  # (B, 1)
        s = torch.arange(T, device=inputs.device)[None, :]  # (1, T)
        keys = ((b * width + inputs) * T + s)[inputs != 0].sort().values  # (N,)
        if keys.numel() == 0:
            return torch.zeros(cands.shape, dtype=self.weight.dtype, device=inputs.device)
        t = torch.arange(T, device=inputs.device)[None, :, None]  # (1, T, 1)
        pair = b[:, :, None] * width + cands  # (B, T, C)
        query = pair * T + t  # (B, T, C)
        at = torch.searchsorted(keys, query, right=True) - 1
        found = keys[at.clamp(min=0)]
        hit = (at >= 0) & (found // T == pair) & (cands != 0)
        dist = t - found % T  # (B, T, C)
        return self.weight[distance_bucket(dist, self.num_buckets)] * hit

    def dense(self, inputs: torch.Tensor, num_items: int) -> torch.Tensor:
        """Offsets (B, T, num_items + 1) of every item at every position."""
        B, T = inputs.shape
        kernel = self._kernel(T, inputs.device)  # (T, T) [t, s]
        # Position s counts for query t only while it is the item's last occurrence: up to
        # (not including) the item's next position.
        same = inputs[:, :, None] == inputs[:, None, :]  # (B, s, s')
        later = torch.ones(T, T, dtype=torch.bool, device=inputs.device).triu(1)  # s' > s
        nxt = torch.where(same & later, torch.arange(T, device=inputs.device), T).amin(-1)
        t = torch.arange(T, device=inputs.device)[None, :, None]  # (1, t, 1)
        live = t < nxt[:, None, :]  # (B, t, s)
        vals = kernel[None] * live * (inputs != 0)[:, None, :]  # (B, t, s)
        out = torch.zeros(B, T, num_items + 1, dtype=vals.dtype, device=inputs.device)
        index = inputs[:, None, :].expand(B, T, T)
        return out.scatter_add(2, index, vals)

    def last_position(self, inputs: torch.Tensor) -> torch.Tensor:
        """Offsets (B, T) of each input item when ranking after the last position.

        The value sits at the item's last occurrence and is 0 at earlier ones and at
        padding, so adding values at ``inputs`` counts each item once.
        """
        T = inputs.shape[1]
        same = inputs[:, :, None] == inputs[:, None, :]  # (B, T, T)
        later = torch.ones(T, T, dtype=torch.bool, device=inputs.device).triu(1)
        last = ~(same & later).any(-1) & (inputs != 0)  # (B, T)
        dist = (T - 1) - torch.arange(T, device=inputs.device)  # (T,)
        return self.weight[distance_bucket(dist, self.num_buckets)][None, :] * last
