"""The Python API: train or load a model, recommend for known and new users, score items.

    from recsys import Recommender
    rec = Recommender.load("runs:/...")          # or a run id, models:/name/1, a folder
    rec.recommend(["196", "186"], k=10)           # polars DataFrame: user_id, rank, item_id, score
    rec.recommend_for_history(["50", "172"], k=5)  # a user never seen in training
    rec.score("196", ["50", "100"])               # re-rank the caller's own candidates

Raw IDs are strings at this boundary (integers are accepted and converted). Everything is
answered through :func:`recsys.scoring.score_chunk`, batched internally, so one user
alone gets exactly the list it gets in a batch.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.bundle import Bundle, load_bundle, resolve_model, save_bundle
from recsys.data.dataset import SequenceData, gather_ragged
from recsys.scoring import RESULT_SCHEMA, results_frame, score_chunk, score_items


class NotFittedError(ValueError, AttributeError):
    """The recommender was used before ``fit`` or ``load``."""


class Recommender:
    """A sequential recommender, scikit-learn style.

    Parameters
    ----------
    **params
        Training options of ``recsys train`` (``loss``, ``max_len``, ``epochs``, ``seed``,
        ...; see :class:`pipelines.train.TrainJobConfig`), used by :meth:`fit`.
    """

    def __init__(self, **params: Any):
        self.params = params

    # -- fitting and loading -----------------------------------------------------------

    def fit(self, data: str | Path, output: str | Path | None = None) -> Recommender:
        """Train on a prepared-dataset folder in this process (no MLflow run).

        The bundle is written to ``output`` (default: a temporary folder kept as long as
        this object). Returns ``self``.
        """
        from pipelines.train import TrainJobConfig, fit, make_trainer
        from recsys.config import from_dict
        from recsys.evaluation.evaluate import EvalConfig

        cfg = from_dict(TrainJobConfig, {"data": str(data), **self.params}, source="Recommender")
        ds = SequenceData.load(data)
        if output is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="recsys-bundle-")
            output = Path(self._tmp.name) / "bundle"
        eval_cfg = EvalConfig(exclude_seen=not cfg.include_seen_in_eval)
        fitted = fit(cfg, ds, make_trainer(cfg, ds, eval_cfg))
        self.history_ = fitted.history
        self.bundle_ = load_bundle(save_bundle(output, cfg.model, fitted.weights, ds, fitted.meta))
        return self

    @classmethod
    def load(cls, model: str | Path, tracking_uri: str | None = None) -> Recommender:
        """Load from an MLflow run id, ``models:/name/version`` or a bundle folder."""
        rec = cls()
        rec.bundle_ = load_bundle(resolve_model(str(model), tracking_uri))
        rec.history_ = []
        return rec

    @property
    def bundle(self) -> Bundle:
        if not hasattr(self, "bundle_"):
            raise NotFittedError(
                "this Recommender is not fitted yet; call fit(...) or Recommender.load(...)"
            )
        return self.bundle_

    # -- ID mapping --------------------------------------------------------------------

    def _user_idx(self, user_ids: Sequence[Any]) -> np.ndarray:
        idx, missing = self.bundle.user_indices(user_ids)
        if missing:
            raise ValueError(
                f"{len(missing)} unknown user ID(s), e.g. {missing[:5]}; "
                "use recommend_for_history for users not seen in training"
            )
        return idx

    def _item_idx(self, item_ids: Iterable[Any]) -> tuple[np.ndarray, list[str]]:
        """Indices of the known IDs (in order) and the unknown IDs."""
        idx, unknown = self.bundle.item_indices(item_ids)
        return idx[idx > 0], unknown

    def _check_k(self, k: int) -> None:
        n = self.bundle.num_items
        if not isinstance(k, int | np.integer) or k <= 0 or k > n:
            raise ValueError(f"k={k!r}: expected an integer from 1 to the catalogue size {n}")

    def _exclusions(self, exclude_items: Iterable[Any] | None, rows: int) -> np.ndarray | None:
        if exclude_items is None:
            return None
        known, unknown = self._item_idx(exclude_items)
        if unknown:
            raise ValueError(f"exclude_items has unknown item ID(s), e.g. {unknown[:5]}")
        return np.broadcast_to(known, (rows, len(known)))

    # -- answers -----------------------------------------------------------------------

    def recommend(
        self,
        user_ids: Sequence[Any],
        k: int = 10,
        exclude_seen: bool = True,
        exclude_items: Iterable[Any] | None = None,
        batch_size: int = 1024,
        as_pandas: bool = False,
    ) -> Any:
        """Top-k items for known users: ``user_id, rank (1 = best), item_id, score``.

        Items of the user's whole known history are left out unless ``exclude_seen`` is
        False; ``exclude_items`` (raw IDs) are left out for every user.
        """
        self._check_k(k)
        users = self._user_idx(list(user_ids))
        flat, offsets = self.bundle.histories()
        parts = []
        for lo in range(0, len(users), batch_size):
            u = users[lo : lo + batch_size]
            h, h_off = gather_ragged(flat, offsets[u - 1], offsets[u])
            ex = self._exclusions(exclude_items, len(u))
            items, scores = score_chunk(self.bundle, h, h_off, k, exclude_seen, ex)
            parts.append(
                results_frame(
                    self.bundle, [str(x) for x in user_ids[lo : lo + batch_size]], items, scores
                )
            )
        out = pl.concat(parts) if parts else pl.DataFrame(schema=RESULT_SCHEMA)
        return out.to_pandas() if as_pandas else out

    def recommend_for_history(
        self,
        item_ids: Sequence[Any],
        k: int = 10,
        exclude_seen: bool = True,
        exclude_items: Iterable[Any] | None = None,
        unknown: str = "skip",
        as_pandas: bool = False,
    ) -> Any:
        """Top-k items for a user never seen in training, from a raw history (oldest first).

        Unknown item IDs are skipped with a warning (``unknown="skip"``) or raise
        (``unknown="raise"``). Returns ``rank, item_id, score``.
        """
        if unknown not in ("skip", "raise"):
            raise ValueError(f"unknown={unknown!r}: expected 'skip' or 'raise'")
        self._check_k(k)
        known, missing = self._item_idx(item_ids)
        if missing:
            msg = f"{len(missing)} of {len(item_ids)} history item ID(s) are unknown: {missing[:5]}"
            if unknown == "raise":
                raise ValueError(msg)
            warnings.warn(msg + "; skipped", stacklevel=2)
        if len(known) == 0:
            raise ValueError("the history has no known item; cannot recommend from it")
        offsets = np.array([0, len(known)])
        items, scores = score_chunk(
            self.bundle, known, offsets, k, exclude_seen, self._exclusions(exclude_items, 1)
        )
        out = results_frame(self.bundle, [""], items, scores).drop("user_id")
        return out.to_pandas() if as_pandas else out

    def score(self, user_id: Any, item_ids: Sequence[Any], as_pandas: bool = False) -> Any:
        """Scores of the caller's candidate items for a known user: ``item_id, score``."""
        (u,) = self._user_idx([user_id])
        known, missing = self._item_idx(item_ids)
        if missing:
            raise ValueError(f"unknown item ID(s) to score, e.g. {missing[:5]}")
        flat, offsets = self.bundle.histories()
        h, h_off = gather_ragged(flat, offsets[u - 1 : u], offsets[u : u + 1])
        scores = score_items(self.bundle, h, h_off, known[None, :])[0]
        out = pl.DataFrame(
            {"item_id": [str(i) for i in item_ids], "score": scores},
            schema={"item_id": pl.String, "score": pl.Float32},
        )
        return out.to_pandas() if as_pandas else out
