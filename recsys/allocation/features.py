"""What re-ranking and the beyond-accuracy metrics know about items: genres, embeddings,
release dates.

Built once per model (or dataset) from the item vocabulary, whose optional ``genres``
(list of strings) and ``released`` (date) columns come from ``recsys prepare --items``,
and from the model's item vectors. Row ``i`` of every array is item index ``i``; row 0
is padding (no genres, a zero vector).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import torch

# Steck (RecSys 2018) mixes a little of the user's own distribution into the list's, so
# that a genre the list lacks gives a large but finite divergence.
CALIBRATION_ALPHA = 0.01


@dataclass(frozen=True)
class ItemFeatures:
    """Per-item arrays, indexed by item index (row 0 = padding)."""

    item_ids: np.ndarray  # (I + 1,) raw IDs; "" at 0
    genre_names: tuple[str, ...]  # the G genres, sorted
    genres: torch.Tensor | None  # (I + 1, G) float 0/1 membership; None: no genres known
    vectors: torch.Tensor  # (I + 1, d) unit-length item embeddings (row 0 zero)
    released: np.ndarray | None  # (I + 1,) datetime64[D], NaT where unknown

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    @functools.cached_property
    def index_of(self) -> dict[str, int]:
        """Raw item ID → item index (built on first use)."""
        return {str(item): i for i, item in enumerate(self.item_ids) if i}

    @property
    def has_genres(self) -> bool:
        return self.genres is not None

    @classmethod
    def build(cls, item_vocab: pl.DataFrame, item_vectors: torch.Tensor) -> ItemFeatures:
        """Features of the items of ``item_vocab`` (``item_idx``, ``item_id``[, ``genres``,
        ``released``]) with the model's item vectors (I + 1, d)."""
        n = item_vocab.height + 1
        vocab = item_vocab.sort("item_idx")
        assert vocab["item_idx"].to_list() == list(range(1, n)), "item_idx not 1..I"
        ids = np.empty(n, dtype=object)
        ids[0] = ""
        ids[1:] = vocab["item_id"].to_numpy()
        vecs = item_vectors.detach().float().cpu()
        vecs = vecs / vecs.norm(dim=1, keepdim=True).clamp_min(1e-12)
        vecs[0] = 0.0
        genres, names = None, ()
        if "genres" in vocab.columns and vocab["genres"].list.len().fill_null(0).sum() > 0:
            long = (
                vocab.select("item_idx", "genres")
                .explode("genres")
                .drop_nulls("genres")
                .filter(pl.col("genres") != "")
                .unique()
            )
            names = tuple(sorted(long["genres"].unique().to_list()))
            col = {g: j for j, g in enumerate(names)}
            genres = torch.zeros(n, len(names))
            rows = torch.from_numpy(long["item_idx"].to_numpy().astype(np.int64))
            cols = torch.tensor([col[g] for g in long["genres"].to_list()], dtype=torch.long)
            genres[rows, cols] = 1.0
        released = None
        if "released" in vocab.columns and vocab["released"].null_count() < vocab.height:
            released = np.full(n, np.datetime64("NaT"), dtype="datetime64[D]")
            released[1:] = vocab["released"].cast(pl.Date).to_numpy().astype("datetime64[D]")
        return cls(ids, names, genres, vecs, released)

    def genre_distribution(self, items: torch.Tensor) -> torch.Tensor:
        """(B, G) genre distribution of B item lists (B, L) (0 = none): each item spreads
        weight 1 evenly over its genres (Steck's p(g|i)); rows sum to 1, or 0 if no item
        has a genre."""
        assert self.genres is not None, "no genres"
        per_item = self.genres / self.genres.sum(-1, keepdim=True).clamp_min(1.0)  # (I + 1, G)
        rows, cols = (items > 0).nonzero(as_tuple=True)
        # A sparse (B, I + 1) count matrix times (I + 1, G): no (B, L, G) intermediate.
        counts = torch.sparse_coo_tensor(
            torch.stack([rows, items[rows, cols]]),
            torch.ones(len(rows)),
            (items.shape[0], len(per_item)),
            check_invariants=False,  # indices are in range by construction
        )
        total = torch.sparse.mm(counts, per_item)  # (B, G)
        return total / total.sum(-1, keepdim=True).clamp_min(1e-12)

    def similarity(self, a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
        """Similarity (B, M) of items ``a`` (B, M) to items ``b`` (B,), one per row.

        ``kind="genres"``: Jaccard of the genre sets (0 when neither has a genre);
        ``"embeddings"``: cosine of the item vectors.
        """
        if kind == "genres":
            assert self.genres is not None, "no genres"
            ga, gb = self.genres[a], self.genres[b][:, None, :]  # (B, M, G), (B, 1, G)
            inter = (ga * gb).sum(-1)
            union = ga.sum(-1) + gb.sum(-1) - inter
            return torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros_like(inter))
        assert kind == "embeddings", kind
        return (self.vectors[a] * self.vectors[b][:, None, :]).sum(-1)

    def released_after(self, day: date) -> np.ndarray:
        """(I + 1,) bool: items released after ``day`` (False where unknown)."""
        assert self.released is not None, "no release dates"
        return self.released > np.datetime64(day, "D")


def read_item_vocab(dataset: str | Path) -> pl.DataFrame:
    """A prepared dataset's item vocabulary, with the metadata columns features read."""
    path = Path(dataset) / "vocab_items.parquet"
    names = pl.read_parquet_schema(path)
    wanted = ["item_idx", "item_id"] + [c for c in ("genres", "released") if c in names]
    return pl.read_parquet(path, columns=wanted)


def kl_to_list(p: torch.Tensor, q: torch.Tensor, alpha: float = CALIBRATION_ALPHA) -> torch.Tensor:
    """KL(p || (1 - alpha) q + alpha p) over the last axis: how far a list's genre
    distribution ``q`` is from the user's ``p`` (Steck's C_KL). Shapes broadcast."""
    q_mix = (1 - alpha) * q + alpha * p
    return (torch.xlogy(p, p) - torch.xlogy(p, q_mix)).sum(-1)
