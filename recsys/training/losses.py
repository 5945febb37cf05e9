"""Next-item losses over the positions of a batch, selectable by name.

``h`` holds the hidden states of the real (non-padding) positions, ``targets`` their next
items and ``items`` the item embedding table, whose row 0 is padding:

- ``ce``: full softmax cross-entropy over the whole catalogue.
- ``bce``: the SASRec paper's binary cross-entropy, one uniform negative per position.
- ``sampled-softmax``: softmax over the target and ``k`` negatives drawn by popularity,
  shared by the batch, with log-Q correction (each logit minus the log of its sampling
  probability) so that the estimate is not biased towards rare items.
- ``gbce``: gSASRec's generalised BCE (Petrov & Macdonald, 2023): ``k`` uniform negatives
  shared by the batch, and the positive probability raised to ``beta``, calibrated by
  ``t`` against the sampling rate, which undoes BCE's over-confidence under sampling.

Negatives that happen to equal the target are masked out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "bce", "sampled-softmax", "gbce")


def ce_loss(h: torch.Tensor, targets: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    logits = h @ items.T  # (N, I + 1)
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits, targets)


def bce_loss(
    h: torch.Tensor, targets: torch.Tensor, items: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    neg = torch.randint(1, items.shape[0], targets.shape, generator=gen)  # (N,)
    pos_logit = (h * items[targets]).sum(-1)  # (N,)
    neg_logit = (h * items[neg]).sum(-1)  # (N,)
    real = (neg != targets).float()
    return (-F.logsigmoid(pos_logit) - F.logsigmoid(-neg_logit) * real).mean()


def sampled_softmax_loss(
    h: torch.Tensor,
    targets: torch.Tensor,
    items: torch.Tensor,
    log_q: torch.Tensor,
    k: int,
    gen: torch.Generator,
) -> torch.Tensor:
    neg = torch.multinomial(log_q.exp(), k, replacement=True, generator=gen)  # (k,)
    pos_logit = (h * items[targets]).sum(-1, keepdim=True) - log_q[targets, None]  # (N, 1)
    neg_logit = h @ items[neg].T - log_q[neg]  # (N, k)
    neg_logit = neg_logit.masked_fill(neg[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1)  # (N, 1 + k)
    return F.cross_entropy(logits, torch.zeros_like(targets))


def gbce_loss(
    h: torch.Tensor,
    targets: torch.Tensor,
    items: torch.Tensor,
    k: int,
    t: float,
    gen: torch.Generator,
) -> torch.Tensor:
    num_items = items.shape[0] - 1
    neg = torch.randint(1, num_items + 1, (k,), generator=gen)  # (k,)
    alpha = k / max(num_items - 1, 1)
    beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
    pos_logit = (h * items[targets]).sum(-1)  # (N,)
    neg_logit = h @ items[neg].T  # (N, k)
    real = (neg[None, :] != targets[:, None]).float()
    pos = -beta * F.logsigmoid(pos_logit)
    negs = -(F.logsigmoid(-neg_logit) * real).sum(-1)
    return (pos + negs).mean()


def sequence_loss(
    kind: str,
    h: torch.Tensor,
    targets: torch.Tensor,
    items: torch.Tensor,
    gen: torch.Generator,
    num_negatives: int = 256,
    gbce_t: float = 0.75,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``kind`` loss of hidden states h (N, d) for next items ``targets`` (N,).

    ``log_q`` (I + 1,) is the log sampling distribution of ``sampled-softmax`` (item
    popularity, 0 at padding).
    """
    if kind == "ce":
        return ce_loss(h, targets, items)
    if kind == "bce":
        return bce_loss(h, targets, items, gen)
    if kind == "sampled-softmax":
        assert log_q is not None, "sampled-softmax needs the sampling distribution"
        return sampled_softmax_loss(h, targets, items, log_q, num_negatives, gen)
    if kind == "gbce":
        return gbce_loss(h, targets, items, num_negatives, gbce_t, gen)
    raise ValueError(f"loss {kind!r} is unknown; expected one of {LOSSES}")


def popularity_log_q(counts: torch.Tensor) -> torch.Tensor:
    """Log sampling probabilities (I + 1,) proportional to ``counts + 1``; padding never drawn."""
    q = counts.double() + 1.0
    q[0] = 0.0
    return (q / q.sum()).log().float()
