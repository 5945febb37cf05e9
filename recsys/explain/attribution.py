"""How much each history event contributed to an item's score, three ways.

A SASRec score is ``h · e_j`` (plus the repeat term, accounted for separately): ``h`` is
the last hidden state over the user's window of recent events, ``e_j`` the item's
vector. Each method gives one number per (user, item, window position), vectorised over a
chunk of users; position ``t`` of the window is the ``T - 1 - t``-th most recent event.

- ``attention``: attention rollout (Abnar & Zuidema, 2020): each layer's head-averaged
  attention mixed half-and-half with the identity (the residual path), multiplied
  through the layers; the last position's row. The cheapest (one forward pass), the same
  for every item, and known to be a weak explanation on its own (Jain & Wallace, 2019).
- ``occlusion``: the exact drop in the item's score when one event is removed from the
  window (the events before it move up one place). All ``T`` variants of a chunk's
  windows run as one batch.
- ``gradient``: integrated gradients (Sundararajan et al., 2017) on the item part of the
  input embeddings, from a baseline of no item information (positions kept) in
  ``IG_STEPS`` steps, most of them near the baseline, where the path is steepest; per
  position the sum over the embedding dimensions. They add up to the score minus the
  baseline's.

Padding positions get 0.
"""

from __future__ import annotations

import torch

from recsys.models.sasrec import SASRec

METHODS = ("attention", "occlusion", "gradient")
IG_STEPS = 16  # Riemann steps of integrated gradients
TOKENS = 1 << 17  # window positions run through the model at once (bounds attention memory)


def trim(window: torch.Tensor) -> torch.Tensor:
    """``window`` (B, T) without the leading columns that are padding in every row: the
    model reads positions from the end, so the hidden states do not change."""
    real = (window != 0).any(0).nonzero()
    return window[:, int(real[0]) :] if len(real) else window[:, -1:]


def pack(window: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The kept events (B, T) of windows (B, T), in order and left-padded again: removed
    events leave no gap, as if the user had never had them."""
    T = window.shape[1]
    keep = keep & (window != 0)
    later = keep.flip(1).cumsum(1).flip(1)  # kept events at or after each position
    dest = torch.where(keep, T - later, T)  # a dropped event goes to a spill column
    out = torch.zeros(window.shape[0], T + 1, dtype=window.dtype)
    out.scatter_(1, dest, torch.where(keep, window, 0))
    return out[:, :T]


def user_states(model: SASRec, windows: torch.Tensor) -> torch.Tensor:
    """User states (N, d) of many windows (N, T), run :data:`TOKENS` positions at a time."""
    rows = max(1, TOKENS // windows.shape[1])
    return torch.cat([model.user_repr(windows[i : i + rows]) for i in range(0, len(windows), rows)])


def attribute(
    model: SASRec, window: torch.Tensor, items: torch.Tensor, method: str
) -> torch.Tensor:
    """Contributions (B, M, T) of each window position (B, T) to the scores of items (B, M).

    Parameters
    ----------
    model : SASRec
        The trained model (put in eval mode here).
    window : Tensor (B, T)
        Left-padded item indices, most recent last (at most ``max_len``).
    items : Tensor (B, M)
        Item indices whose scores are explained.
    method : {"attention", "occlusion", "gradient"}
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    model.eval()
    if method == "attention":
        return _attention(model, window, items)
    if method == "occlusion":
        return _occlusion(model, window, items)
    return _integrated_gradients(model, window, items)


def item_scores(model: SASRec, h: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Scores (B, M) of items (B, M) for user states h (B, d): the dot products."""
    return (h[:, None, :] * model.output_items().detach()[items]).sum(-1)


@torch.no_grad()
def _attention(model: SASRec, window: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    _, weights = model(window, need_weights=True)  # L x (B, H, T, T)
    T = window.shape[1]
    eye = torch.eye(T)
    rollout = eye.expand(window.shape[0], T, T)  # (B, T, T)
    for w in weights:
        mixed = 0.5 * w.mean(1) + 0.5 * eye  # (B, T, T); rows still sum to 1
        rollout = mixed @ rollout
    last = rollout[:, -1, :] * (window != 0)  # (B, T)
    last = last / last.sum(1, keepdim=True).clamp_min(1e-12)
    return last[:, None, :].expand(-1, items.shape[1], -1).clone()  # (B, M, T)


@torch.no_grad()
def _occlusion(model: SASRec, window: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    B, T = window.shape
    full = item_scores(model, model.user_repr(window), items)  # (B, M)
    # Variant t of a window drops its position t: row b * T + t.
    keep = ~torch.eye(T, dtype=torch.bool).repeat(B, 1)  # (B * T, T)
    h = user_states(model, pack(window.repeat_interleave(T, dim=0), keep))
    dropped = item_scores(model, h, items.repeat_interleave(T, dim=0))  # (B * T, M): row b * T + t
    drop = full[:, None, :] - dropped.view(B, T, -1)  # (B, T, M)
    return (drop * (window != 0)[:, :, None]).transpose(1, 2).contiguous()  # (B, M, T)


def _integrated_gradients(model: SASRec, window: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    B, T = window.shape
    M = items.shape[1]
    rows = window.repeat_interleave(M, dim=0)  # (B * M, T): row b * M + j
    targets = items.reshape(-1)  # (B * M,)
    out = torch.zeros(B * M, T)
    step_rows = max(1, TOKENS // (4 * T))  # the backward pass holds about 4x the forward's
    for lo in range(0, B * M, step_rows):
        w, j = rows[lo : lo + step_rows], targets[lo : lo + step_rows]
        with torch.no_grad():
            x = model.embed(w)  # (R, T, d)
            target = model.output_items()[j]  # (R, d), a constant here
        grads = torch.zeros_like(x)
        for step in range(IG_STEPS):
            # The path is steepest near the baseline, where the layer norms rescale the
            # first bit of item information: alpha = u^3 at the midpoints u puts most
            # steps there (d alpha = 3 u^2 du).
            u = (step + 0.5) / IG_STEPS
            scaled = (x * u**3).requires_grad_(True)
            h, _ = model(w, embedded=scaled)
            score = (h[:, -1, :] * target).sum()
            (g,) = torch.autograd.grad(score, scaled)
            grads += g * (3 * u**2 / IG_STEPS)
        out[lo : lo + len(w)] = (x * grads).sum(-1)  # (R, T)
    return (out * (rows != 0)).view(B, M, T)
