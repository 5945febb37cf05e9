"""Next-item losses over the positions of a batch, selectable by name.

``h`` (B, T, d) holds the hidden states, ``targets`` (B, T) the next items (0 where the
position is padding and ignored) and ``items`` (I + 1, d) the item embedding table, whose
row 0 is padding:

- ``ce``: full softmax cross-entropy over the whole catalogue.
- ``bce``: the SASRec paper's binary cross-entropy, one uniform negative per position.
- ``sampled-softmax``: softmax over the target and ``k`` negatives per sequence drawn by
  popularity, with log-Q correction (each logit minus the log of its sampling
  probability) so that the estimate is not biased towards rare items.
- ``gbce``: gSASRec's generalised BCE (Petrov & Macdonald, 2023): ``k`` uniform negatives
  per position, and the positive probability raised to ``beta``, calibrated by ``t``
  against the sampling rate, which undoes BCE's over-confidence under sampling.

With a repeat term (:mod:`recsys.models.repeat`), ``bias`` adds each candidate's
learned bias to its logit: ``bias.of(cands)`` for sampled candidates, and
``bias.add_to(logits, real)`` where the logits cover the whole catalogue.

Embeddings are looked up with ``F.embedding``, whose backward pass is deterministic on a
CPU (advanced indexing's is not). sampled-softmax draws its negatives per sequence (one
(B, k) draw instead of (B, T, k) embedding gathers); a negative that happens to equal the
target is masked out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recsys.models.repeat import BatchBias, RepeatBias

LOSSES = ("ce", "bce", "sampled-softmax", "gbce")
GBCE_POOL = 8192  # gbce draws each position's negatives from this many items per batch


_WORKSPACES: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _workspace(
    rows: int, cols: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A (rows, cols) tensor over memory kept from call to call (grown as needed).

    On a CPU, allocating a tensor of the logits' size (tens of MB) costs as much as the
    matrix product that fills it: the memory comes fresh from the system every time.
    Reusing it is safe here: each forward writes into it, which bumps the version of the
    view an earlier graph saved, so running that graph backward afterwards raises
    instead of reading overwritten values.
    """
    buf = _WORKSPACES.get((device, dtype))
    if buf is None or buf.numel() < rows * cols:
        buf = _WORKSPACES[device, dtype] = torch.empty(rows * cols, device=device, dtype=dtype)
    return buf[: rows * cols].view(rows, cols)


def release_workspaces() -> None:
    """Give back the memory :func:`_workspace` kept (the trainer calls this when done)."""
    _WORKSPACES.clear()


class _FullSoftmaxCE(torch.autograd.Function):
    """Mean cross-entropy of hidden states (N, d) against every item (I + 1, d), with
    optional bias entries added to the logits, in one function: the (N, I + 1) logits,
    the largest tensor of training, are allocated once and turned into the softmax and
    then into their own gradient in place (autograd's version allocates it three times,
    and on a CPU a fresh tensor of that size costs as much as a pass over it). Equal to
    ``F.cross_entropy``'s loss and gradients to float rounding (tested).

    With ``dtype`` bfloat16 the three products with the catalogue (the logits, and the
    two gradients through them) take bfloat16 inputs and the logits are kept in
    bfloat16, as mixed-precision training on GPUs does; the sums stay float32. Where the
    hardware has bfloat16 arithmetic those products run about 4x faster.
    """

    @staticmethod
    def forward(ctx, h, items, target, rows, cols, values, dtype, smoothing):  # type: ignore[override]
        h_, items_ = h.to(dtype), items.to(dtype)  # no copies in float32
        logits = _workspace(h.shape[0], items.shape[0], h.device, dtype)  # (N, I + 1)
        torch.mm(h_, items_.T, out=logits)
        if values is not None:
            logits.index_put_((rows, cols), values.to(dtype), accumulate=True)
        logits[:, 0] = float("-inf")  # padding is never an answer
        at = torch.arange(len(target), device=h.device)
        picked = logits[at, target].float()  # (N,)
        if smoothing:
            # Label smoothing: the target distribution puts smoothing / I on every item.
            picked = (1 - smoothing) * picked + smoothing * logits[:, 1:].mean(
                1, dtype=torch.float32
            )
        top = logits.amax(1, keepdim=True)  # (N, 1)
        e = logits.sub_(top).exp_()  # (N, I + 1) unnormalised softmax, in place
        total = e.sum(1, dtype=torch.float32)  # (N,)
        loss = (top[:, 0].float() + total.log() - picked).mean()
        ctx.save_for_backward(h_, items_, target, rows, cols, e, total)
        ctx.has_bias = values is not None
        ctx.smoothing = smoothing
        return loss

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        h_, items_, target, rows, cols, e, total = ctx.saved_tensors
        # (softmax - one-hot) * grad / N, written over the saved exponentials (this graph
        # is not run backward twice).
        scale = grad / len(target)
        p = e.mul_((scale / total).to(e.dtype)[:, None])  # (N, I + 1)
        eps = ctx.smoothing
        if eps:
            p[:, 1:] -= (scale * eps / (p.shape[1] - 1)).to(e.dtype)
        p[torch.arange(len(target), device=p.device), target] -= (scale * (1 - eps)).to(e.dtype)
        d_values = p[rows, cols].float() if ctx.has_bias else None
        d_h, d_items = (p @ items_).float(), (p.T @ h_).float()  # (N, d), (I + 1, d)
        return d_h, d_items, None, None, None, d_values, None, None


def ce_loss(
    h: torch.Tensor,
    targets: torch.Tensor,
    items: torch.Tensor,
    bias: BatchBias | None = None,
    dtype: torch.dtype = torch.float32,
    smoothing: float = 0.0,
) -> torch.Tensor:
    real = targets != 0
    rows = cols = values = None
    if bias is not None:
        (rows, cols), values = bias.entries(real)
    return _FullSoftmaxCE.apply(h[real], items, targets[real], rows, cols, values, dtype, smoothing)


def bce_loss(
    h: torch.Tensor,
    targets: torch.Tensor,
    items: torch.Tensor,
    gen: torch.Generator,
    bias: BatchBias | None = None,
) -> torch.Tensor:
    real = targets != 0
    h, flat = h[real], targets[real]  # (N, d), (N,)
    # Drawn on the generator's device (the CPU), then moved to the model's.
    neg = torch.randint(1, items.shape[0], flat.shape, generator=gen).to(h.device)  # (N,)
    pos_logit = (h * F.embedding(flat, items)).sum(-1)  # (N,)
    neg_logit = (h * F.embedding(neg, items)).sum(-1)  # (N,)
    if bias is not None:
        off = bias.of_real(torch.stack([flat, neg], -1), real)  # (N, 2)
        pos_logit, neg_logit = pos_logit + off[:, 0], neg_logit + off[:, 1]
    hit = (neg != flat).float()
    return (-F.logsigmoid(pos_logit) - F.logsigmoid(-neg_logit) * hit).mean()


def _negative_logits(
    h: torch.Tensor, targets: torch.Tensor, items: torch.Tensor, neg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive logits (B, T) and negative logits (B, T, k) for per-sequence negatives (B, k)."""
    pos = (h * F.embedding(targets, items)).sum(-1)  # (B, T)
    negs = torch.bmm(h, F.embedding(neg, items).transpose(1, 2))  # (B, T, k)
    return pos, negs


def sampled_softmax_loss(
    h: torch.Tensor,
    targets: torch.Tensor,
    items: torch.Tensor,
    log_q: torch.Tensor,
    k: int,
    gen: torch.Generator,
    bias: BatchBias | None = None,
) -> torch.Tensor:
    B = h.shape[0]
    q = log_q.exp().cpu()  # drawn on the generator's device, then moved to the model's
    neg = torch.multinomial(q, B * k, replacement=True, generator=gen).view(B, k).to(h.device)
    pos, negs = _negative_logits(h, targets, items, neg)
    if bias is not None:
        pos = pos + bias.of(targets[:, :, None])[..., 0]  # (B, T)
        negs = negs + bias.of(neg[:, None, :])  # (B, T, k)
    correction = log_q.masked_fill(log_q == float("-inf"), 0.0).to(h.device)  # padding: 0
    pos = pos - correction[targets]  # (B, T)
    negs = negs - correction[neg][:, None, :]  # (B, T, k)
    negs = negs.masked_fill(neg[:, None, :] == targets[:, :, None], float("-inf"))
    logits = torch.cat([pos[..., None], negs], dim=-1)[targets != 0]  # (N, 1 + k)
    return F.cross_entropy(
        logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    )


def gbce_loss(
    h: torch.Tensor,
    targets: torch.Tensor,
    items: torch.Tensor,
    k: int,
    t: float,
    gen: torch.Generator,
    bias: BatchBias | None = None,
) -> torch.Tensor:
    num_items = items.shape[0] - 1
    real = targets != 0
    h, flat = h[real], targets[real]  # (N, d), (N,)
    # Per-position negatives: with one negative, sharing it across a sequence (as
    # sampled-softmax does) cut ml-100k validation NDCG@10 from 0.104 to 0.060. Scores
    # are computed once against a pool (the whole catalogue when small) and gathered.
    if num_items <= GBCE_POOL:
        pool = torch.arange(1, num_items + 1)
    else:
        pool = torch.randint(1, num_items + 1, (GBCE_POOL,), generator=gen)
    pick = torch.randint(0, len(pool), (len(flat), k), generator=gen)  # (N, k)
    pool, pick = pool.to(h.device), pick.to(h.device)
    neg = pool[pick]  # (N, k)
    if bias is not None and num_items <= GBCE_POOL:
        # The pool is the catalogue: add the bias to its score matrix, then gather.
        scores = bias.add_to(h @ items.T, real)  # (N, I + 1)
        pos, negs = scores.gather(1, flat[:, None])[:, 0], scores.gather(1, neg)
    else:
        negs = (h @ F.embedding(pool, items).T).gather(1, pick)  # (N, k)
        pos = (h * F.embedding(flat, items)).sum(-1)  # (N,)
        if bias is not None:
            off = bias.of_real(torch.cat([flat[:, None], neg], -1), real)
            pos, negs = pos + off[:, 0], negs + off[:, 1:]  # (N,), (N, k)
    alpha = k / max(num_items - 1, 1)
    beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
    hit = (neg != flat[:, None]).float()
    per_position = -beta * F.logsigmoid(pos) - (F.logsigmoid(-negs) * hit).sum(-1)  # (N,)
    # gSASRec averages BCE over the 1 + k logits of a position.
    return per_position.mean() / (1 + k)


def sequence_loss(
    kind: str,
    h: torch.Tensor,
    targets: torch.Tensor,
    items: torch.Tensor,
    gen: torch.Generator,
    num_negatives: int = 256,
    gbce_t: float = 0.75,
    log_q: torch.Tensor | None = None,
    repeat: RepeatBias | None = None,
    inputs: torch.Tensor | None = None,
    logits_dtype: torch.dtype = torch.float32,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The ``kind`` loss of hidden states h (B, T, d) for next items ``targets`` (B, T).

    Positions whose target is 0 are ignored. ``log_q`` (I + 1,) is the log sampling
    distribution of ``sampled-softmax`` (item popularity, -inf at padding). With a
    ``repeat`` term, ``inputs`` (B, T) are the input items its bias are taken from.
    ``logits_dtype`` is the number format of ``ce``'s products with the catalogue;
    ``label_smoothing`` (``ce`` only) the share of the target distribution spread evenly
    over the catalogue.
    """
    bias = None
    if repeat is not None:
        assert inputs is not None, "the repeat term needs the input items"
        bias = BatchBias(repeat, inputs)
    if kind == "ce":
        return ce_loss(h, targets, items, bias, logits_dtype, label_smoothing)
    if kind == "bce":
        return bce_loss(h, targets, items, gen, bias)
    if kind == "sampled-softmax":
        assert log_q is not None, "sampled-softmax needs the sampling distribution"
        return sampled_softmax_loss(h, targets, items, log_q, num_negatives, gen, bias)
    if kind == "gbce":
        return gbce_loss(h, targets, items, num_negatives, gbce_t, gen, bias)
    raise ValueError(f"loss {kind!r} is unknown; expected one of {LOSSES}")


def popularity_log_q(counts: torch.Tensor) -> torch.Tensor:
    """Log sampling probabilities (I + 1,) proportional to ``counts + 1``; padding never drawn."""
    q = counts.double() + 1.0
    q[0] = 0.0
    return (q / q.sum()).log().float()
