"""faiss candidate retrieval over the item vectors, with exclusions and deterministic ties.

The index holds items 1..I (row 0 of the item matrix is padding) and is searched by inner
product with user vectors. ``exact`` is ``IndexFlatIP``; ``hnsw`` and ``ivf``/``ivfpq``
are approximate, for large catalogues; ``auto`` picks exact up to ``exact_max_items``
items and HNSW beyond.

Search over-fetches so that K results remain after removing each user's excluded items
(history, caller exclusions), fetching again with a larger K for the users still short;
results are ordered by score, ties by the lower item index.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)

KINDS = ("auto", "exact", "hnsw", "ivf", "ivfpq")


@dataclass
class IndexConfig:
    """Which faiss index to build and how to search it."""

    kind: str = "auto"
    exact_max_items: int = 200_000  # auto: exact up to this many items, HNSW beyond
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    ivf_nlist: int = 0  # 0: 4 * sqrt(items)
    ivf_nprobe: int = 32
    pq_m: int = 0  # ivfpq sub-quantizers; 0: d / 4 (must divide d)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"index kind {self.kind!r} is unknown; expected one of {KINDS}")


class ItemIndex:
    """A faiss inner-product index over item vectors 1..I.

    Parameters
    ----------
    item_vecs : ndarray (I + 1, d)
        Item vectors; row 0 (padding) is left out of the index.
    cfg : IndexConfig
        Kind and parameters.
    """

    def __init__(self, item_vecs: np.ndarray, cfg: IndexConfig | None = None):
        cfg = cfg or IndexConfig()
        vecs = np.ascontiguousarray(item_vecs[1:], dtype=np.float32)
        n, d = vecs.shape
        kind = cfg.kind
        if kind == "auto":
            kind = "exact" if n <= cfg.exact_max_items else "hnsw"
        self.num_items, self.dim, self.kind = n, d, kind
        self.params: dict[str, Any] = {"index_kind": kind, "index_items": n, "index_dim": d}
        if kind == "exact":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.hnsw_ef_construction
            index.hnsw.efSearch = cfg.hnsw_ef_search
            self.params.update(
                index_hnsw_m=cfg.hnsw_m,
                index_hnsw_ef_construction=cfg.hnsw_ef_construction,
                index_hnsw_ef_search=cfg.hnsw_ef_search,
            )
        else:
            nlist = cfg.ivf_nlist or max(1, int(4 * math.sqrt(n)))
            nlist = min(nlist, n)
            quantizer = faiss.IndexFlatIP(d)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                m = cfg.pq_m or max(1, d // 4)
                if d % m:
                    raise ValueError(f"pq_m={m} must divide the vector size {d}")
                index = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
                self.params["index_pq_m"] = m
            index.train(vecs)
            index.nprobe = min(cfg.ivf_nprobe, nlist)
            self._quantizer = quantizer  # the IVF index refers to it; keep it alive
            self.params.update(index_ivf_nlist=nlist, index_ivf_nprobe=index.nprobe)
        index.add(vecs)
        self.index = index

    def search(
        self, users: np.ndarray, k: int, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices (B, k) and scores (B, k) per user vector (B, d).

        ``exclude`` (B, H) holds item indices never to return (0 = none). Where fewer than
        k items can be returned, the row ends with item 0 and score -inf.
        """
        users = np.ascontiguousarray(users, dtype=np.float32)
        B = users.shape[0]
        if exclude is None:
            exclude = np.zeros((B, 1), dtype=np.int64)
        stride = self.num_items + 1
        # Membership of (row, item) pairs for all rows at once, as sorted integer keys.
        ex_keys = np.unique((np.arange(B)[:, None] * stride + exclude)[exclude > 0])
        out_items = np.zeros((B, k), dtype=np.int64)
        out_scores = np.full((B, k), -np.inf, dtype=np.float32)
        todo = np.arange(B)
        fetch = min(self.num_items, k + int((exclude > 0).sum(1).max(initial=0)))
        while len(todo):
            scores, ids = self.index.search(users[todo], fetch)  # ids 0-based, -1 = none
            items = ids + 1  # item indices; 0 = none
            keys = todo[:, None] * stride + items
            valid = (ids >= 0) & ~np.isin(keys, ex_keys)
            # Ties by the lower item index: sort each row by (-score, item), invalid last.
            order = np.lexsort((np.where(valid, items, stride), np.where(valid, -scores, np.inf)))
            items = np.take_along_axis(items, order, 1)
            scores = np.take_along_axis(scores, order, 1)
            valid = np.take_along_axis(valid, order, 1)
            n_valid = valid.sum(1)
            done = (n_valid >= k) | (fetch >= self.num_items)
            take = min(k, fetch)
            rows = todo[done]
            out_items[rows, :take] = np.where(valid[done, :take], items[done, :take], 0)
            out_scores[rows, :take] = np.where(valid[done, :take], scores[done, :take], -np.inf)
            todo = todo[~done]
            fetch = min(self.num_items, fetch * 2)
        return out_items, out_scores

    def save(self, folder: str | Path) -> None:
        """Write ``items.faiss`` and ``index.json`` into ``folder``."""
        folder = Path(folder)
        faiss.write_index(self.index, str(folder / "items.faiss"))
        (folder / "index.json").write_text(json.dumps(self.params, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> ItemIndex:
        """Read an index written by :meth:`save`."""
        folder = Path(folder)
        obj = cls.__new__(cls)
        obj.index = faiss.read_index(str(folder / "items.faiss"))
        obj.params = json.loads((folder / "index.json").read_text())
        obj.num_items, obj.dim = obj.index.ntotal, obj.index.d
        obj.kind = obj.params["index_kind"]
        return obj


def config_dict(cfg: IndexConfig) -> dict[str, Any]:
    """The config as a dict (logged with the run)."""
    return asdict(cfg)
