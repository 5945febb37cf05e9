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

import logging
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from recsys import allocation
from recsys.allocation import RerankSpec
from recsys.bundle import Bundle, load_bundle, resolve_model, save_bundle
from recsys.data.dataset import SequenceData
from recsys.explain import (
    DEFAULT_METHOD,
    EXPLANATION_SCHEMA,
    explain_chunk,
    explanation_frame,
)
from recsys.explain.attribution import METHODS
from recsys.models.sasrec import SASRecConfig
from recsys.options import from_flat, to_flat
from recsys.scoring import RESULT_SCHEMA, results_frame, score_chunk, score_items
from recsys.training.config import TrainConfig
from recsys.training.fit import FitConfig, fit, make_trainer, with_data_defaults

log = logging.getLogger(__name__)

__all__ = ["NotFittedError", "Recommender"]


class Recommender(BaseEstimator):
    """A sequential recommender, scikit-learn style.

    The keyword arguments are the training options of ``recsys train`` (declared once in
    :class:`~recsys.training.fit.FitConfig`, :class:`~recsys.models.sasrec.SASRecConfig`
    and :class:`~recsys.training.config.TrainConfig`, whose defaults these are); they are
    used by :meth:`fit`. ``get_params``, ``set_params`` and ``sklearn.base.clone`` work
    as for any estimator. Learned state: ``bundle_`` (the model bundle) and ``history_``
    (per-epoch records).
    """

    def __init__(
        self,
        *,
        model: str = FitConfig.model,
        loss: str = TrainConfig.loss,
        label_smoothing: float = TrainConfig.label_smoothing,
        max_len: int = SASRecConfig.max_len,
        d_model: int = SASRecConfig.d_model,
        n_layers: int = SASRecConfig.n_layers,
        n_heads: int = SASRecConfig.n_heads,
        d_ff: int | None = SASRecConfig.d_ff,
        dropout: float = SASRecConfig.dropout,
        attn_dropout: float = SASRecConfig.attn_dropout,
        pre_ln: bool = SASRecConfig.pre_ln,
        gated: bool = SASRecConfig.gated,
        scale_embeddings: bool = SASRecConfig.scale_embeddings,
        tie_embeddings: bool = SASRecConfig.tie_embeddings,
        repeat_bias: bool = SASRecConfig.repeat_bias,
        epochs: int = TrainConfig.epochs,
        batch_size: int = TrainConfig.batch_size,
        lr: float = TrainConfig.lr,
        weight_decay: float = TrainConfig.weight_decay,
        grad_clip: float = TrainConfig.grad_clip,
        num_negatives: int = TrainConfig.num_negatives,
        negatives: str = TrainConfig.negatives,
        gbce_t: float = TrainConfig.gbce_t,
        patience: int = TrainConfig.patience,
        eval_every: int = TrainConfig.eval_every,
        lr_decay: float = TrainConfig.lr_decay,
        average: float = TrainConfig.average,
        logits_precision: str = TrainConfig.logits_precision,
        seed: int = TrainConfig.seed,
        threads: int = TrainConfig.threads,
        device: str = TrainConfig.device,
        window: str = TrainConfig.window,
        ties: str = TrainConfig.ties,
        history: str = FitConfig.history,
        progress: bool = FitConfig.progress,
    ):
        # scikit-learn's contract: store the arguments unchanged, validate in fit.
        self.model = model
        self.loss = loss
        self.label_smoothing = label_smoothing
        self.max_len = max_len
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.d_ff = d_ff
        self.dropout = dropout
        self.attn_dropout = attn_dropout
        self.pre_ln = pre_ln
        self.gated = gated
        self.scale_embeddings = scale_embeddings
        self.tie_embeddings = tie_embeddings
        self.repeat_bias = repeat_bias
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.num_negatives = num_negatives
        self.negatives = negatives
        self.gbce_t = gbce_t
        self.patience = patience
        self.eval_every = eval_every
        self.lr_decay = lr_decay
        self.average = average
        self.logits_precision = logits_precision
        self.seed = seed
        self.threads = threads
        self.device = device
        self.window = window
        self.ties = ties
        self.history = history
        self.progress = progress

    # -- fitting and loading -----------------------------------------------------------

    def fit(self, X: str | Path, y: None = None, output: str | Path | None = None) -> Recommender:
        """Train on a prepared-dataset folder ``X`` in this process (no MLflow run).

        ``y`` is unused (scikit-learn's signature). The bundle is written to ``output``
        (default: a temporary folder kept as long as this object). Returns ``self``.
        """
        cfg = from_flat(FitConfig, self.get_params(), source="Recommender")
        data = SequenceData.load(X)
        if output is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="recsys-bundle-")
            output = Path(self._tmp.name) / "bundle"
        cfg, notes = with_data_defaults(cfg, data)
        for note in notes:
            log.info("derived from the data: %s", note)
        # What the options left unset became (scikit-learn keeps the parameters as given).
        given, used = self.get_params(), to_flat(cfg)
        self.derived_ = {k: used[k] for k in given if given[k] is None and used[k] is not None}
        fitted = fit(cfg, data, make_trainer(cfg, data), extra_meta={"data": str(X)})
        self.history_ = fitted.history
        self.bundle_ = load_bundle(
            save_bundle(output, cfg.model, fitted.weights, data, fitted.meta)
        )
        return self

    @classmethod
    def load(cls, model: str | Path, tracking_uri: str | None = None) -> Recommender:
        """Load from an MLflow run id, ``models:/name/version`` or a bundle folder.

        The estimator's parameters are the options the model was trained with.
        """
        bundle = load_bundle(resolve_model(str(model), tracking_uri))
        trained = bundle.meta.get("train_config", {})
        names = cls._get_param_names()
        rec = cls(**{k: v for k, v in trained.items() if k in names})
        rec.bundle_ = bundle
        rec.history_ = []
        return rec

    @property
    def bundle(self) -> Bundle:
        """The fitted or loaded model bundle (``NotFittedError`` before ``fit``/``load``)."""
        check_is_fitted(
            self,
            "bundle_",
            msg="this Recommender is not fitted yet; call fit(...) or Recommender.load(...)",
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

    def _history_idx(
        self, item_ids: Sequence[Any], unknown: str, stacklevel: int = 3
    ) -> np.ndarray:
        """A raw history's known item indices; unknown IDs skipped (warned) or raised."""
        if unknown not in ("skip", "raise"):
            raise ValueError(f"unknown={unknown!r}: expected 'skip' or 'raise'")
        item_ids = [item_ids] if isinstance(item_ids, str) else list(item_ids)
        known, missing = self._item_idx(item_ids)
        if missing:
            msg = f"{len(missing)} of {len(item_ids)} history item ID(s) are unknown: {missing[:5]}"
            if unknown == "raise":
                raise ValueError(msg)
            warnings.warn(msg + "; skipped", stacklevel=stacklevel)
        if len(known) == 0:
            raise ValueError("the history has no known item; cannot recommend from it")
        return known

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
        history: str = "auto",
        exclude_items: Iterable[Any] | None = None,
        batch_size: int = 1024,
        as_pandas: bool = False,
        rerank: RerankSpec = None,
    ) -> Any:
        """Top-k items for known users: ``user_id, rank (1 = best), item_id, score``.

        ``history``: ``exclude`` leaves out the items of the user's whole known history,
        ``include`` ranks them too (with the model's repeat term), ``auto`` (default)
        does what the model was trained to decide from its data (``recsys train
        --history``); ``exclude_items`` (raw IDs) are left out for every user. ``rerank``: a
        re-ranking config (TOML path or dict, see :mod:`recsys.allocation.config`); None
        applies the one stored with the model, if any; False none. Exposure budgets span
        the users of one call; ``score`` stays the model's score of each item.
        """
        self._check_k(k)
        exclude_seen = self.bundle.exclude_seen(history)
        user_ids = [str(u) for u in user_ids]  # any iterable, once
        if exclude_items is not None:
            exclude_items = list(exclude_items)  # read again per chunk and pass
        users = self._user_idx(user_ids)
        plan = allocation.plan_for(self.bundle, rerank)
        if plan is not None:
            plan.check_k(k)

        def chunks() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]]:
            for lo in range(0, len(users), batch_size):
                u = users[lo : lo + batch_size]
                h, h_off = self.bundle.histories_of(u)
                yield (
                    h,
                    h_off,
                    self._exclusions(exclude_items, len(u)),
                    user_ids[lo : lo + batch_size],
                )

        if plan is None:
            lists = [
                score_chunk(self.bundle, h, h_off, k, exclude_seen, ex)
                for h, h_off, ex, _ in chunks()
            ]
        else:
            lists = allocation.rerank_users(self.bundle, plan, chunks, len(users), k, exclude_seen)
        parts = [
            results_frame(self.bundle, ids, items, scores)
            for (_, _, _, ids), (items, scores) in zip(chunks(), lists, strict=True)
        ] if lists else []  # fmt: skip
        out = pl.concat(parts) if parts else pl.DataFrame(schema=RESULT_SCHEMA)
        return out.to_pandas() if as_pandas else out

    def recommend_for_history(
        self,
        item_ids: Sequence[Any],
        k: int = 10,
        history: str = "auto",
        exclude_items: Iterable[Any] | None = None,
        unknown: str = "skip",
        as_pandas: bool = False,
        rerank: RerankSpec = None,
    ) -> Any:
        """Top-k items for a user never seen in training, from a raw history (oldest first).

        Unknown item IDs are skipped with a warning (``unknown="skip"``) or raise
        (``unknown="raise"``). ``history`` and ``rerank`` as in :meth:`recommend`.
        Returns ``rank, item_id, score``.
        """
        self._check_k(k)
        exclude_seen = self.bundle.exclude_seen(history)
        known = self._history_idx(item_ids, unknown, stacklevel=3)
        offsets = np.array([0, len(known)])
        ex = self._exclusions(exclude_items, 1)
        plan = allocation.plan_for(self.bundle, rerank)
        if plan is None:
            items, scores = score_chunk(self.bundle, known, offsets, k, exclude_seen, ex)
        else:
            plan.check_k(k)
            ((items, scores),) = allocation.rerank_users(
                self.bundle, plan, lambda: [(known, offsets, ex, ["(history)"])], 1, k, exclude_seen
            )
        out = results_frame(self.bundle, [""], items, scores).drop("user_id")
        return out.to_pandas() if as_pandas else out

    # -- explanations ------------------------------------------------------------------

    def _explain_args(
        self, items: Sequence[Any] | None, k: int, method: str | None, top: int | None
    ) -> tuple[np.ndarray | None, str]:
        method = DEFAULT_METHOD if method is None else method
        if method not in METHODS:
            raise ValueError(f"method={method!r}: expected one of {METHODS}")
        if top is not None and (not isinstance(top, int | np.integer) or top < 1):
            raise ValueError(f"top={top!r}: expected an integer of at least 1, or None (all)")
        if items is None:
            self._check_k(k)
            return None, method
        items = [items] if isinstance(items, str) else list(items)
        known, unknown = self._item_idx(items)
        if unknown or not items:
            raise ValueError(
                f"items to explain: unknown item ID(s) {unknown[:5]}"
                if unknown
                else "items to explain: none given (None explains the top-k)"
            )
        return known, method

    def explain(
        self,
        user_ids: Sequence[Any],
        items: Sequence[Any] | None = None,
        k: int = 10,
        method: str | None = None,
        top: int | None = None,
        batch_size: int = 256,
        as_pandas: bool = False,
    ) -> Any:
        """Why known users get items: each history event's contribution to the score.

        Explains ``items`` (raw IDs) for every user, or each user's own top-``k``
        recommendations when ``items`` is None. ``method`` is ``occlusion`` (default: the
        drop in the score when the event is removed), ``attention`` (rollout) or
        ``gradient`` (integrated gradients); see :mod:`recsys.explain.attribution`.

        Returns ``user_id, item_id, history_item_id, position (0 = most recent),
        contribution, method, source``: per user and item its window's events, largest
        contribution first (the ``top`` largest), then with the repeat term one row with
        ``source = "repeat"`` and no history item holding that term's part of the score.
        """
        known, method = self._explain_args(items, k, method, top)
        user_ids = [str(u) for u in user_ids]
        users = self._user_idx(user_ids)
        parts = []
        for lo in range(0, len(users), batch_size):
            u = users[lo : lo + batch_size]
            h, h_off = self.bundle.histories_of(u)
            cands = None if known is None else np.broadcast_to(known, (len(u), len(known)))
            ex = explain_chunk(self.bundle, h, h_off, cands, k, method)
            parts.append(explanation_frame(self.bundle, user_ids[lo : lo + batch_size], ex, top))
        out = pl.concat(parts) if parts else pl.DataFrame(schema=EXPLANATION_SCHEMA)
        return out.to_pandas() if as_pandas else out

    def explain_history(
        self,
        history: Sequence[Any],
        items: Sequence[Any] | None = None,
        k: int = 10,
        method: str | None = None,
        top: int | None = None,
        unknown: str = "skip",
        as_pandas: bool = False,
    ) -> Any:
        """:meth:`explain` for a raw history (oldest first) of a user never seen in
        training; ``user_id`` is null. Unknown history items are skipped with a warning
        (``unknown="skip"``) or raise (``"raise"``)."""
        known_items, method = self._explain_args(items, k, method, top)
        hist = self._history_idx(history, unknown)
        cands = None if known_items is None else known_items[None, :]
        ex = explain_chunk(self.bundle, hist, np.array([0, len(hist)]), cands, k, method)
        out = explanation_frame(self.bundle, np.array([None], dtype=object), ex, top)
        return out.to_pandas() if as_pandas else out

    def score(self, user_id: Any, item_ids: Sequence[Any], as_pandas: bool = False) -> Any:
        """Scores of the caller's candidate items for a known user: ``item_id, score``."""
        (u,) = self._user_idx([user_id])
        known, missing = self._item_idx(item_ids)
        if missing:
            raise ValueError(f"unknown item ID(s) to score, e.g. {missing[:5]}")
        h, h_off = self.bundle.histories_of(np.array([u]))
        scores = score_items(self.bundle, h, h_off, known[None, :])[0]
        out = pl.DataFrame(
            {"item_id": [str(i) for i in item_ids], "score": scores},
            schema={"item_id": pl.String, "score": pl.Float32},
        )
        return out.to_pandas() if as_pandas else out
