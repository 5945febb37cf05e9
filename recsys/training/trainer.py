"""Train SASRec with early stopping on validation NDCG@10 (full ranking), resumably.

One epoch shows each user's training window once, users in a seeded random order. After
every ``eval_every`` epochs the model is evaluated on the validation targets; the best
weights are kept, and training stops after ``patience`` evaluations without improvement.
A checkpoint with everything needed to continue (weights, optimiser, epoch, RNG states,
history) is written atomically after every epoch, and all checkpoints load with
``torch.load(..., weights_only=True)``.

Given a :class:`~recsys.training.distributed.World` of several processes (torchrun), the
trainer trains data-parallel: every rank builds the same global batches, trains on its
share of each (:func:`~recsys.training.distributed.shard`) and DistributedDataParallel
averages the gradients, each rank's loss weighted so that the average is exactly the
gradient of the whole batch's loss. Rank 0 alone validates and writes checkpoints, and
broadcasts the best-epoch bookkeeping, so every rank stops after the same epoch.
"""

from __future__ import annotations

import copy
import logging
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from recsys.data.dataset import SequenceData
from recsys.errors import TrainingError
from recsys.evaluation.evaluate import EvalConfig, evaluate
from recsys.io import atomic_file
from recsys.models.sasrec import SASRec, SASRecConfig
from recsys.models.scorers import SASRecScorer
from recsys.training import distributed
from recsys.training.batches import shuffle_ties, target_counts, tie_groups, training_batch
from recsys.training.config import TrainConfig
from recsys.training.distributed import SINGLE, World
from recsys.training.hardware import available_cores, resolve_device, resolve_logits_precision
from recsys.training.losses import popularity_log_q, release_workspaces, sequence_loss

log = logging.getLogger(__name__)

LAST = "last.pt"
BUCKET_BATCHES = 16  # batches per pool sorted by length (see Trainer._batches)
BEST = "best.pt"


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        # Checkpoints written on a GPU load anywhere; load_state_dict moves them back.
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        # torch's own message advises weights_only=False, which would run arbitrary code.
        raise ValueError(
            f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}): it is damaged; "
            "train again without --resume"
        ) from None
    if not isinstance(ck, dict) or "model" not in ck:
        raise ValueError(f"checkpoint {str(path)!r} is not a recsys training checkpoint")
    return ck


@dataclass
class TrainResult:
    """The best model and how training went."""

    model: SASRec
    best_epoch: int
    best_valid_ndcg: float
    seconds_to_best: float
    seconds: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def _trim(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Columns that are padding in every row change nothing but cost time.
    real = (inputs != 0).any(0).nonzero()
    first = int(real[0]) if len(real) else inputs.shape[1] - 1
    return inputs[:, first:], targets[:, first:]


class Objective(torch.nn.Module):
    """The model and its training loss in one forward, so that DistributedDataParallel
    sees every parameter the loss reads (the output item table, the repeat term) used
    inside the forward it wraps."""

    def __init__(
        self,
        model: SASRec,
        cfg: TrainConfig,
        gen: torch.Generator,
        log_q: torch.Tensor | None,
        logits_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.model, self.cfg, self.gen, self.log_q = model, cfg, gen, log_q
        self.logits_dtype = logits_dtype

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean loss over the real positions of left-padded ``inputs`` (B, T)."""
        h, _ = self.model(inputs)  # (B, T, d)
        cfg = self.cfg
        assert cfg.loss is not None
        return sequence_loss(
            cfg.loss,
            h,
            targets,
            self.model.output_items(),
            self.gen,
            num_negatives=cfg.num_negatives,
            gbce_t=cfg.gbce_t,
            log_q=self.log_q,
            repeat=self.model.repeat,
            inputs=inputs,
            logits_dtype=self.logits_dtype,
            label_smoothing=cfg.label_smoothing,
        )


class Trainer:
    """Trains one SASRec on one prepared dataset.

    Parameters
    ----------
    model_cfg, train_cfg : SASRecConfig, TrainConfig
        The model and optimisation settings.
    data : SequenceData
        The prepared dataset (its ``valid`` stage drives early stopping).
    eval_cfg : EvalConfig
        How validation ranks (history exclusion); only NDCG@10 is computed.
    checkpoint_dir : Path, optional
        Where ``last.pt`` and ``best.pt`` are written; none written if omitted.
    on_epoch : callable, optional
        Called with each epoch's record (``epoch``, ``train_loss``, ``valid_ndcg_at_10``...)
        (on rank 0 only).
    world : World, optional
        This process's place among data-parallel processes, whose process group is
        joined (:func:`recsys.training.distributed.process_group`); alone by default.
        Every rank gets the same arguments; only rank 0's ``checkpoint_dir`` is used.
    """

    def __init__(
        self,
        model_cfg: SASRecConfig,
        train_cfg: TrainConfig,
        data: SequenceData,
        eval_cfg: EvalConfig | None = None,
        checkpoint_dir: str | Path | None = None,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
        progress: bool = True,
        world: World | None = None,
    ):
        if model_cfg.num_items != data.num_items:
            raise ValueError(
                f"model num_items={model_cfg.num_items} but the dataset has {data.num_items}"
            )
        unset = [name for name in ("loss", "lr") if getattr(train_cfg, name) is None]
        if unset:
            raise ValueError(
                f"{' and '.join(unset)} must be set; recsys.training.fit.with_data_defaults "
                "derives them from the data"
            )
        self.model_cfg, self.cfg, self.data = model_cfg, train_cfg, data
        base = eval_cfg or EvalConfig()
        # Early stopping reads NDCG@10 and HR@10 only: no CIs, no beyond-accuracy metrics.
        self.eval_cfg = EvalConfig(
            ks=(10,),
            exclude_seen=base.exclude_seen,
            batch_users=base.batch_users,
            bootstrap=0,
            beyond_accuracy=False,
        )
        self.world = world or SINGLE
        main = self.world.main
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir and main else None
        self.on_epoch = on_epoch
        self.progress = progress and main

        # The processes of one machine share its cores.
        threads = train_cfg.threads or max(1, available_cores() // self.world.local_size)
        torch.set_num_threads(threads)
        torch.manual_seed(train_cfg.seed)
        self.rng = np.random.default_rng(train_cfg.seed)  # the same on every rank
        self.gen = torch.Generator().manual_seed(train_cfg.seed + 1)
        self.device = self.world.device(resolve_device(train_cfg.device))
        self.model = SASRec(model_cfg).to(self.device)
        self.opt = torch.optim.AdamW(
            self.model.parameters(),
            lr=train_cfg.lr,
            weight_decay=train_cfg.weight_decay,
            betas=(0.9, 0.98),
        )
        counts = torch.from_numpy(data.item_counts())
        if train_cfg.negatives == "uniform":
            counts = torch.zeros_like(counts)  # every item alike
        self.log_q = popularity_log_q(counts) if train_cfg.loss == "sampled-softmax" else None
        self.logits_dtype = resolve_logits_precision(train_cfg.logits_precision, self.device)
        if train_cfg.loss == "ce":
            log.info(
                "ce's products with the catalogue in %s (logits_precision=%s)",
                str(self.logits_dtype).removeprefix("torch."),
                train_cfg.logits_precision,
            )
        self.ties: tuple[np.ndarray, np.ndarray] | None = None  # (positions, groups)
        starts = data.tie_starts if train_cfg.ties == "shuffle" else None
        if starts is not None:
            self.ties = tie_groups(starts)
            log.info(
                "ties=shuffle: %s of %s training events share their timestamp with another "
                "of their user's; their order is shuffled every epoch",
                f"{len(self.ties[0]):,}",
                f"{int(data.n_train.sum()):,}",
            )
        self._items = data.items  # this epoch's order of the events (see ``ties``)
        self.objective = Objective(self.model, train_cfg, self.gen, self.log_q, self.logits_dtype)
        # The moving average of the weights (``average``), validated and kept instead of
        # the model itself; updated after every step with ``self._decay``. Only rank 0
        # validates and keeps weights, so only rank 0 averages.
        averages = train_cfg.average > 0 and self.world.main
        self.averaged = copy.deepcopy(self.model).eval() if averages else None
        self._decay = 0.0
        self._ddp: torch.nn.Module | None = None  # the objective, data-parallel (lazily)
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.best = {"ndcg": -1.0, "epoch": 0, "elapsed": 0.0}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_evals = 0
        self.elapsed = 0.0  # training seconds before this process (resumed runs)
        self.extra: dict[str, Any] = {}  # caller state saved with checkpoints (e.g. run id)

    # -- checkpoints -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to continue training exactly where it stopped."""
        return {
            "model": self.model.state_dict(),
            "averaged": None if self.averaged is None else self.averaged.state_dict(),
            "optimizer": self.opt.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "best": self.best,
            "bad_evals": self.bad_evals,
            "elapsed": self.elapsed,
            "torch_rng": torch.get_rng_state(),
            "gen_rng": self.gen.get_state(),
            "np_rng": self.rng.bit_generator.state,
            "model_cfg": asdict(self.model_cfg),
            "train_cfg": asdict(self.cfg),
            "extra": self.extra,
        }

    def save(self) -> None:
        """Write ``last.pt`` (and ``best.pt`` when the best changed) atomically."""
        if self.checkpoint_dir is None:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.checkpoint_dir / LAST) as tmp:
            torch.save(self.state(), tmp)
        if self.best_state is not None and self.best["epoch"] == self.epoch:
            with atomic_file(self.checkpoint_dir / BEST) as tmp:
                torch.save({"model": self.best_state, "best": self.best}, tmp)

    def _read_last(self) -> dict[str, Any] | None:
        """``last.pt``, checked against this trainer's config (None when there is none)."""
        if self.checkpoint_dir is None or not (self.checkpoint_dir / LAST).is_file():
            return None
        ck = _load_checkpoint(self.checkpoint_dir / LAST)
        if ck["model_cfg"] != asdict(self.model_cfg) or ck["train_cfg"] != asdict(self.cfg):
            raise ValueError(
                f"checkpoint {str(self.checkpoint_dir / LAST)!r} was written with another "
                f"config ({ck['model_cfg']}, {ck['train_cfg']}); resume with the same one "
                "or train into an empty folder"
            )
        return ck

    def resume(self) -> bool:
        """Load ``last.pt`` (and ``best.pt``) if present; return whether it was.

        Data-parallel, rank 0 reads the checkpoint and sends it to the others, so every
        rank continues from the same state (and only rank 0 needs the folder); every rank
        must call this.
        """
        ck = distributed.broadcast(self._read_last() if self.world.main else None, self.world)
        if ck is None:
            return False
        self.model.load_state_dict(ck["model"])
        if self.averaged is not None:
            self.averaged.load_state_dict(ck["averaged"])
        self.opt.load_state_dict(ck["optimizer"])
        self.epoch, self.history, self.best = ck["epoch"], ck["history"], ck["best"]
        self.bad_evals, self.elapsed, self.extra = ck["bad_evals"], ck["elapsed"], ck["extra"]
        torch.set_rng_state(ck["torch_rng"])
        self.gen.set_state(ck["gen_rng"])
        self.rng.bit_generator.state = ck["np_rng"]
        if self.checkpoint_dir is not None and (self.checkpoint_dir / BEST).is_file():
            self.best_state = _load_checkpoint(self.checkpoint_dir / BEST)["model"]
        where = self.checkpoint_dir / LAST if self.checkpoint_dir else "rank 0's checkpoint"
        log.info("resumed from %s after epoch %d", where, self.epoch)
        return True

    # -- training ----------------------------------------------------------------------

    def _epoch(self) -> tuple[float, int]:
        """One pass over the users; returns the mean loss and the sequences seen."""
        cfg, data = self.cfg, self.data
        users, start, stop = data.train_ranges()
        if len(users) == 0:
            raise ValueError(f"{str(data.path)!r}: no user has 2 or more training events")
        if self.ties is not None:
            self._items = shuffle_ties(data.items, *self.ties, self.rng)
        span = self.model_cfg.max_len + 1
        if cfg.window == "random":
            # A full window ending anywhere it fits, so that events older than the last
            # max_len are trained on too; shorter sequences are taken whole.
            length = stop - start
            full = np.minimum(length, span)
            stop = (
                start + full + (self.rng.random(len(length)) * (length - full + 1)).astype(np.int64)
            )
        batches = self._batches(np.minimum(stop - start, span))
        if self.averaged is not None:
            # Per step, so that the weights of ``average`` epochs ago count half.
            self._decay = 0.5 ** (1.0 / (cfg.average * len(batches)))
        if self.world.distributed:
            self._reseed()
        self.model.train()
        total, steps = 0.0, 0
        for step, idx in enumerate(batches):
            total += self.train_step(idx, start, stop, step)
            steps += 1
        (total,) = distributed.all_sum([total], self.world)
        return total / steps, len(users)

    def train_step(
        self, batch: np.ndarray, start: np.ndarray, stop: np.ndarray, step: int = 0
    ) -> float:
        """One optimisation step on the users ``batch`` (indices into the training ranges
        ``start``, ``stop``); returns this rank's part of the batch's mean loss.

        Data-parallel, every rank passes the same global batch and trains on its share.
        The losses are means over real positions, and ranks' shares hold different
        numbers of them, so a plain average of the ranks' gradients would weight a
        position of a short share more. Each rank's loss is scaled by its share of the
        batch's positions times the number of ranks: DistributedDataParallel's average
        is then exactly the gradient of the whole batch's mean loss (up to rounding).
        """
        cfg, world, max_len = self.cfg, self.world, self.model_cfg.max_len
        assert max_len is not None
        mine, weight = batch, 1.0
        if world.distributed:
            mine = distributed.shard(batch, world)
            total = int(target_counts(start[batch], stop[batch], max_len).sum())
            weight = int(target_counts(start[mine], stop[mine], max_len).sum()) / total
            if len(mine) == 0:
                # More ranks than users in this batch: a step on one user with weight 0
                # keeps this rank in DistributedDataParallel's gradient exchange.
                mine = batch[:1]
        inputs, targets = _trim(*training_batch(self._items, start[mine], stop[mine], max_len))
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        loss = self._training_objective()(inputs, targets)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the {cfg.loss} loss became {loss.item()} at epoch {self.epoch + 1}, "
                f"step {step + 1}; lower the learning rate (lr={cfg.lr}) or check the data"
            )
        self.opt.zero_grad(set_to_none=True)
        (loss * (weight * world.size) if world.distributed else loss).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        if self.averaged is not None:
            with torch.no_grad():
                for avg, now in zip(
                    self.averaged.parameters(), self.model.parameters(), strict=True
                ):
                    avg.lerp_(now, 1 - self._decay)
        return loss.item() * weight

    def _training_objective(self) -> torch.nn.Module:
        """The objective, wrapped in DistributedDataParallel when there are several ranks
        (built at the first step, after any resume: its construction is collective)."""
        if not self.world.distributed:
            return self.objective
        if self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.objective, device_ids=ids)
        return self._ddp

    def _reseed(self) -> None:
        """Data-parallel: each rank's dropout and negative-sampling streams, from the seed,
        the epoch and the rank (different on every rank, and the same again on resume)."""
        seed = np.random.SeedSequence([self.cfg.seed, self.epoch, self.world.rank])
        a, b = (int(x) for x in seed.generate_state(2))
        torch.manual_seed(a)
        self.gen.manual_seed(b)

    def _batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Random batches of users of similar length, so little of a batch is padding.

        Users are shuffled, cut into pools of ``BUCKET_BATCHES`` batches, sorted by length
        within a pool and batched; then the batch order is shuffled.
        """
        bs = self.cfg.batch_size
        order = self.rng.permutation(len(lengths))
        pool = np.arange(len(order)) // (bs * BUCKET_BATCHES)
        order = order[np.lexsort((lengths[order], pool))]
        batches = [order[lo : lo + bs] for lo in range(0, len(order), bs)]
        return [batches[i] for i in self.rng.permutation(len(batches))]

    def fit(self, resume: bool = False) -> TrainResult:
        """Train to early stopping (or ``epochs``); the result holds the best model.

        With ``resume``, continue from ``checkpoint_dir/last.pt`` when it exists.
        Data-parallel, every rank calls this; rank 0's result holds the best model, the
        other ranks' the last epoch's (only rank 0 keeps the best weights).
        """
        try:
            return self._fit(resume)
        finally:
            release_workspaces()  # ce's logits memory, kept between steps only
            # DistributedDataParallel holds the process group and gloo's pending work;
            # it must go before the group does (recsys.training.distributed).
            self._ddp = None

    def _fit(self, resume: bool) -> TrainResult:
        if resume:
            self.resume()
        cfg = self.cfg
        t0 = time.perf_counter() - self.elapsed
        bar = tqdm(
            total=cfg.epochs,
            initial=self.epoch,
            desc="train",
            unit="epoch",
            disable=not self.progress,
        )
        main = self.world.main
        while self.epoch < cfg.epochs and self.bad_evals < cfg.patience:
            distributed.die_if_asked(self.world, self.epoch + 1)  # test-only
            t = time.perf_counter()
            loss, seqs = self._epoch()
            self.epoch += 1
            train_s = time.perf_counter() - t
            rec: dict[str, float] = {
                "epoch": self.epoch,
                "train_loss": loss,
                "epoch_seconds": train_s,
                "sequences_per_second": seqs / train_s,
                "learning_rate": self.opt.param_groups[0]["lr"],  # the epoch's
            }
            if main and (self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs):
                try:
                    scorer = SASRecScorer(self._validated())
                    ndcg = evaluate(scorer, self.data, "valid", self.eval_cfg)
                except TrainingError as e:
                    raise TrainingError(
                        f"validation after epoch {self.epoch} failed: {e} (lr={cfg.lr})"
                    ) from e
                rec["valid_ndcg_at_10"] = ndcg.means["ndcg@10"]
                rec["valid_hr_at_10"] = ndcg.means["hr@10"]
                self._track_best(rec["valid_ndcg_at_10"], time.perf_counter() - t0)
                self._decay_lr()
            self.elapsed = time.perf_counter() - t0
            rec["elapsed_seconds"] = self.elapsed
            if main:
                self.history.append(rec)
                self.save()
                if self.on_epoch:
                    self.on_epoch(rec)
            if self.world.distributed:
                # Rank 0's record and stopping state: every rank stops after the same epoch.
                shared = (rec, self.best, self.bad_evals)
                rec, self.best, self.bad_evals = distributed.broadcast(shared, self.world)
                if not main:
                    self.history.append(rec)
                    if "valid_ndcg_at_10" in rec:
                        self._decay_lr()
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss:.4f}",
                seq_s=f"{rec['sequences_per_second']:.0f}",
                ndcg=f"{self.best['ndcg']:.4f}",
            )
        bar.close()
        if self.best_state is None and (main or self.best["epoch"] < 1):
            raise TrainingError("no validation was run; set eval_every <= epochs")
        if not main:
            # Only rank 0 keeps the best weights; the others end with the last ones.
            return self._result(self.model)
        best = SASRec(self.model_cfg)
        best.load_state_dict(self.best_state)
        best.eval()
        return self._result(best)

    def _decay_lr(self) -> None:
        """After a validation: ``lr_decay`` at every third of ``patience`` validations in a
        row without improvement (every rank, from the same ``bad_evals``)."""
        cfg = self.cfg
        every = max(1, cfg.patience // 3)
        if cfg.lr_decay == 1.0 or self.bad_evals == 0 or self.bad_evals % every:
            return
        if self.bad_evals >= cfg.patience:
            return  # training stops here
        for group in self.opt.param_groups:
            group["lr"] *= cfg.lr_decay
        log.info(
            "lr %.3g after %d validations without improvement (epoch %d)",
            self.opt.param_groups[0]["lr"],
            self.bad_evals,
            self.epoch,
        )

    def _validated(self) -> SASRec:
        """The weights validation judges and the best state keeps: the average, if any."""
        return self.model if self.averaged is None else self.averaged

    def _result(self, model: SASRec) -> TrainResult:
        return TrainResult(
            model=model,
            best_epoch=int(self.best["epoch"]),
            best_valid_ndcg=float(self.best["ndcg"]),
            seconds_to_best=float(self.best["elapsed"]),
            seconds=self.elapsed,
            epochs_run=self.epoch,
            history=self.history,
        )

    def _track_best(self, ndcg: float, elapsed: float) -> None:
        if math.isnan(ndcg):
            raise TrainingError(f"validation NDCG@10 is NaN at epoch {self.epoch}")
        if ndcg > self.best["ndcg"]:
            self.best = {"ndcg": ndcg, "epoch": self.epoch, "elapsed": elapsed}
            self.best_state = copy.deepcopy(self._validated().state_dict())
            self.bad_evals = 0
        else:
            self.bad_evals += 1
