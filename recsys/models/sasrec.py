"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Reads top to bottom: the config, the blocks, the model. Sequences are left-padded with
item 0, so the most recent item is always at position T-1; the user's representation is
the last position's hidden state, and an item's score is its dot product with it (item
embeddings are shared between input and output), plus, with ``repeat_bias``, a learned
bias for items already in the history (:mod:`recsys.models.repeat`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recsys.models.repeat import RepeatBias
from recsys.options import not_an_option, option


@dataclass
class SASRecConfig:
    """Every hyper-parameter of the model; each field is an option (``--max-len`` ...)."""

    # None: derived from the training data by recsys.training.derive before a model is
    # built (a bundle always records the value used).
    max_len: int | None = option(
        None, "most recent events the model reads", default_text="from the data"
    )
    d_model: int = option(64, "hidden size")
    n_layers: int = option(2, "attention blocks")
    n_heads: int = option(2, "attention heads")
    d_ff: int | None = option(
        None, "point-wise feed-forward width", default_text="d_model (the paper's)"
    )
    dropout: float | None = option(
        None,
        "dropout on embeddings, residual branches, feed-forward",
        default_text="from the data",
    )
    # Off by default: on a CPU it makes attention about 4x slower (a (B, H, T, T) random
    # mask per layer) for no measured gain in accuracy.
    attn_dropout: float = option(0.0, "dropout on attention weights")
    pre_ln: bool = option(True, "pre-LN blocks; --no-pre-ln: the paper's post-LN")
    # LiGR (LinkedIn, 2025; eSASRec's blocks): each residual branch is multiplied by a
    # sigmoid gate computed from the block's normalised input, so a layer can pass its
    # input through unchanged where its update does not help.
    gated: bool = option(False, "gate each residual branch (LiGR-style blocks; needs pre-LN)")
    scale_embeddings: bool = option(True, "multiply item embeddings by sqrt(d_model)")
    # Score with the input item embeddings (the paper's), or with separate output ones
    # (gSASRec's choice, needed for its many-negatives gbce loss to train).
    tie_embeddings: bool = option(
        True,
        "score with the input item embeddings; --no-tie-embeddings: separate output "
        "ones (gSASRec's; use with gbce)",
    )
    # Lets the model learn from the data whether people repeat, which a dot product
    # cannot express (recsys.models.repeat).
    repeat_bias: bool = option(
        True,
        "learn a score bias for items already in the history, by how long ago they were consumed",
    )
    num_items: int = not_an_option(0)  # catalogue size, from the data; 0 = padding

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value}: expected 0 <= {name} < 1")
        if self.gated and not self.pre_ln:
            raise ValueError("gated=True needs pre_ln=True (gates act on the normalised input)")
        for name in ("max_len", "d_model", "n_layers", "n_heads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected at least 1")


def attention_mask(items: torch.Tensor) -> torch.Tensor:
    """Boolean mask (B, 1, T, T): True where query t may attend key s.

    Causal (s <= t) and never to padding, except that every position attends to itself,
    so a padding query has one key and no row is empty (which would give NaN).
    """
    T = items.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=items.device).tril()  # (T, T)
    real_key = (items != 0)[:, None, None, :]  # (B, 1, 1, T)
    diag = torch.eye(T, dtype=torch.bool, device=items.device)
    return (causal & real_key) | diag  # (B, 1, T, T)


class Dropout(nn.Module):
    """``nn.Dropout``, its mask drawn by comparing uniform numbers with ``p``: on a CPU
    that is 2-3x faster than the ``bernoulli_`` draw ``nn.Dropout`` makes, which took 9%
    of a training step on Beauty (dropout 0.5 on every block)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * ((torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.attn_dropout

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)  # 3 x (B, T, d)
        q, k, v = (t.view(B, T, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        if not need_weights:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            weights = None
        else:
            # The inspectable path: same arithmetic, weights kept (explanations).
            att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, T)
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            weights = att
            y = F.dropout(att, p, self.training) @ v  # (B, H, T, d/H)
        y = y.transpose(1, 2).reshape(B, T, d)  # (B, T, d)
        return self.proj(y), weights


class FeedForward(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        d_ff = cfg.d_ff or cfg.d_model
        self.net = nn.Sequential(
            nn.Linear(cfg.d_model, d_ff),
            nn.GELU(),
            Dropout(cfg.dropout),
            nn.Linear(d_ff, cfg.d_model),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.pre_ln = cfg.pre_ln
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ff = FeedForward(cfg)
        self.drop = Dropout(cfg.dropout)
        self.gates = (
            nn.ModuleList(nn.Linear(cfg.d_model, cfg.d_model) for _ in range(2))
            if cfg.gated
            else None
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pre_ln:
            h = self.ln1(x)
            a, w = self.attn(h, mask, need_weights)
            x = x + self.drop(self._gated(0, h, a))
            h = self.ln2(x)
            x = x + self.drop(self._gated(1, h, self.ff(h)))
        else:
            a, w = self.attn(x, mask, need_weights)
            x = self.ln1(x + self.drop(a))
            x = self.ln2(x + self.drop(self.ff(x)))
        return x, w  # (B, T, d), (B, H, T, T) or None

    def _gated(self, i: int, h: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """Residual branch ``i`` (B, T, d), times its gate from the normalised input ``h``
        when the block is gated."""
        return branch if self.gates is None else torch.sigmoid(self.gates[i](h)) * branch


class SASRec(nn.Module):
    """The model: item + position embeddings, causal blocks, shared-embedding scores."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        if cfg.num_items < 1:
            raise ValueError(f"num_items={cfg.num_items}: expected at least 1 (the catalogue)")
        if cfg.max_len is None or cfg.dropout is None:
            raise ValueError(
                "max_len and dropout must be set; recsys.training.derive.resolve derives "
                "them from the data"
            )
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.emb_drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model) if cfg.pre_ln else nn.Identity()
        self.out_emb = (
            None
            if cfg.tie_embeddings
            else nn.Embedding(cfg.num_items + 1, cfg.d_model, padding_idx=0)
        )
        self.repeat = RepeatBias(cfg.max_len) if cfg.repeat_bias else None
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def embed(self, items: torch.Tensor) -> torch.Tensor:
        """The item part (B, T, d) of the input embeddings of item sequences (B, T)."""
        scale = math.sqrt(self.cfg.d_model) if self.cfg.scale_embeddings else 1.0
        return self.item_emb(items) * scale

    def forward(
        self,
        items: torch.Tensor,
        need_weights: bool = False,
        embedded: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Hidden states (B, T, d) of left-padded item sequences (B, T).

        With ``need_weights`` also each layer's attention weights (B, H, T, T).
        ``embedded`` (B, T, d) replaces :meth:`embed` of the items (integrated gradients
        scale it); ``items`` still give the padding.
        """
        T = items.shape[1]
        if T > self.cfg.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len={self.cfg.max_len}")
        pos = torch.arange(self.cfg.max_len - T, self.cfg.max_len, device=items.device)  # (T,)
        x = (self.embed(items) if embedded is None else embedded) + self.pos_emb(pos)  # (B, T, d)
        x = self.emb_drop(x) * (items != 0).unsqueeze(-1)  # padding stays zero
        mask = attention_mask(items)  # (B, 1, T, T)
        weights = []
        for block in self.blocks:
            x, w = block(x, mask, need_weights)
            if w is not None:
                weights.append(w)
        return self.ln_f(x), weights  # (B, T, d)

    def user_repr(self, items: torch.Tensor) -> torch.Tensor:
        """User representation (B, d): the hidden state at the last position."""
        return self(items)[0][:, -1, :]

    def output_items(self) -> torch.Tensor:
        """Item vectors (num_items + 1, d) that scores are dot products with."""
        return (self.item_emb if self.out_emb is None else self.out_emb).weight

    def score_all(self, h: torch.Tensor) -> torch.Tensor:
        """Scores (B, num_items + 1) of every item for representations h (B, d).

        Column 0 (padding) is meaningless; callers mask it.
        """
        return h @ self.output_items().T

    def history_bias(self, items: torch.Tensor) -> torch.Tensor | None:
        """Score biases (B, H) of history items (B, H; left-padded, any length) when
        ranking after the last one (each item's bias sits at its last occurrence), or
        None without a repeat term."""
        return None if self.repeat is None else self.repeat.last_position(items)

    def last_attention(self, items: torch.Tensor) -> torch.Tensor:
        """Attention (L, B, H, T) the last position paid to each history position."""
        _, weights = self(items, need_weights=True)
        return torch.stack([w[:, :, -1, :] for w in weights])
