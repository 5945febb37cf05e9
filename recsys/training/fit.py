"""Training a model: the model kind, its config and the trainer's, composed once.

:class:`FitConfig` is what both doors that train share: the train job
(``pipelines/train.py`` composes it with tracking and output options) and the
scikit-learn estimator :class:`recsys.Recommender` (its keyword arguments are this
config's options).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from recsys.data.dataset import SequenceData
from recsys.evaluation.evaluate import EvalConfig
from recsys.models.sasrec import SASRecConfig
from recsys.models.scorers import MODEL_KINDS, MostPopular, SASRecScorer, Scorer
from recsys.options import check_choices, option, to_flat
from recsys.training import derive
from recsys.training.config import TrainConfig
from recsys.training.derive import HISTORY
from recsys.training.distributed import World
from recsys.training.trainer import Trainer


@dataclass
class FitConfig:
    """What training one model needs; every leaf field is an option."""

    model: str = option(
        "sasrec", "model kind: SASRec, or the most-popular baseline", choices=MODEL_KINDS
    )
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    history: str = option(
        "auto",
        "items of the user's history in validation, evaluation and every door: exclude "
        "them, include them (ranked with the repeat term), or auto: include when more "
        "than 20% of the validation targets are in their user's history",
        choices=HISTORY,
    )
    progress: bool = option(True, "progress bars")

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass
class Fitted:
    """A trained model, ready to evaluate and to save as a bundle."""

    scorer: Scorer
    weights: dict[str, torch.Tensor]  # what save_bundle stores
    meta: dict[str, Any]  # train (and model) config for bundle.json
    summary: dict[str, float]  # best epoch, timings
    history: list[dict[str, float]]  # per-epoch records (empty for most-popular)


def eval_config(cfg: FitConfig, ks: tuple[int, ...] = (1, 5, 10, 20)) -> EvalConfig:
    """How this model is validated and evaluated (history excluded unless asked)."""
    assert cfg.history != "auto", "resolve the history setting first (with_data_defaults)"
    return EvalConfig(ks=ks, exclude_seen=cfg.history == "exclude")


def with_data_defaults(cfg: FitConfig, data: SequenceData) -> tuple[FitConfig, list[str]]:
    """``cfg`` with the options left unset derived from ``data``
    (:mod:`recsys.training.derive`), and one line per derived value saying why."""
    history, notes = derive.resolve_history(cfg.history, data)
    cfg = dataclasses.replace(cfg, history=history)
    if cfg.model != "sasrec":
        return cfg, notes
    sasrec, derived = derive.resolve(cfg.sasrec, data)
    assert sasrec.max_len is not None
    loss, more = derive.resolve_loss(cfg.train.loss, data.num_items, sasrec.max_len)
    lr, why_lr = derive.resolve_lr(cfg.train.lr, data, sasrec.max_len, cfg.train.batch_size)
    train = dataclasses.replace(cfg.train, loss=loss, lr=lr)
    return dataclasses.replace(cfg, sasrec=sasrec, train=train), derived + more + why_lr + notes


def make_trainer(
    cfg: FitConfig,
    data: SequenceData,
    checkpoint_dir: Path | None = None,
    world: World | None = None,
) -> Trainer | None:
    """The SASRec trainer for ``cfg`` (None for most-popular, which has nothing to train).

    ``world``: this process's place in data-parallel training (the train job under
    torchrun); alone by default, as :class:`recsys.Recommender` always trains.
    """
    if cfg.model != "sasrec":
        return None
    cfg, _ = with_data_defaults(cfg, data)
    return Trainer(
        dataclasses.replace(cfg.sasrec, num_items=data.num_items),
        cfg.train,
        data,
        eval_config(cfg),
        checkpoint_dir=checkpoint_dir,
        progress=cfg.progress,
        world=world,
    )


def fit(
    cfg: FitConfig,
    data: SequenceData,
    trainer: Trainer | None,
    extra_meta: dict[str, Any] | None = None,
) -> Fitted:
    """Train with ``trainer`` (from :func:`make_trainer`), or count popularity without one.

    ``extra_meta`` joins the options in the bundle's ``train_config``.
    """
    t0 = time.perf_counter()
    cfg, _ = with_data_defaults(cfg, data)
    meta: dict[str, Any] = {"train_config": {**to_flat(cfg), **(extra_meta or {})}}
    if trainer is None:
        counts = data.item_counts()
        summary = {"train_seconds": time.perf_counter() - t0}
        weights = {"counts": torch.from_numpy(counts)}
        return Fitted(MostPopular(counts), weights, meta, summary, [])
    result = trainer.fit()
    meta["model_config"] = dataclasses.asdict(result.model.cfg)
    summary = {
        "best_epoch": result.best_epoch,
        "seconds_to_best": result.seconds_to_best,
        "train_seconds": result.seconds,
        "epochs_run": result.epochs_run,
    }
    return Fitted(
        SASRecScorer(result.model), result.model.state_dict(), meta, summary, result.history
    )
