"""Settings derived from the statistics of the prepared data, where the best value depends
on the data's shape.

Four options are unset by default (``None``) and ``history`` is ``auto``; all are filled
in here from the training sequences (each user's events before the validation target),
the catalogue size and how often users repeat.

- ``max_len``, the window of most recent events the model reads: the 90th percentile of
  the users' training lengths, rounded up to a multiple of 50, within 50..200. The window
  should hold nearly all of a typical user's history, but a few very long users must not
  set it: attention costs grow with its square. Short-sequence logs (a shop, ~9 events
  per user) get 50, the length the literature uses there; MovieLens (p90 242 on
  ml-100k) gets 200, the SASRec paper's choice for ML-1M, which validated better than
  50 on ml-100k in 9 of 12 settings tried.
- ``dropout`` follows how many events a user brings: 0.5 at 10 or fewer training events
  per user (mean), 0.2 at 100 or more, log-linear between, to the nearest 0.05. Short
  sequences give each item embedding few contexts and the model memorises them within a
  few epochs; long ones regularise themselves. This is the SASRec paper's own split
  (0.5 for the sparse Amazon and Steam logs, 0.2 for ML-1M), made continuous.
- ``loss``: the full softmax (``ce``) while a batch's logits stay small (catalogue x
  ``max_len`` <= 1,000,000: 512 MB of float32 for 128 windows), else
  ``sampled-softmax``, whose cost does not grow with the catalogue. Where both are
  affordable ce validated better on both reference logs.

- ``lr`` follows how many target positions a batch holds (``batch_size`` users times
  the mean number of next-item targets in a user's window): 1e-3 up to 1,000 positions,
  and above that 1e-3 times the square root of positions / 1,000, at most 5e-3 (two
  significant digits). A batch of many positions averages its gradient over more
  targets, so it is less noisy and takes a larger step safely; the square root is
  Adam's scaling rule (Malladi et al., NeurIPS 2022); 5e-3 is the largest rate trained
  stably here. A shop log (Beauty: ~730 positions a batch) keeps the 1e-3 it validated
  best at; MovieLens (ml-100k: ~11,300) gets 3.4e-3, which validated within noise of
  1e-3 (0.1146 against 0.1156, 3 seeds) and reaches its best epoch 2-3x sooner.

- ``history`` (``auto``): whether the doors show items of the user's history. Excluded,
  unless more than 20% of the validation targets are already in their user's history
  (music, news, groceries): there hiding them hides that share of the right answers.

Values set explicitly are kept. The validation numbers behind each rule are in the
README ("Why these defaults"); :func:`resolve` returns the filled-in config and one line
per derived value saying where it came from, which jobs log and record.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from recsys.data.dataset import SequenceData
from recsys.models.sasrec import SASRecConfig

MAX_LEN_STEP, MAX_LEN_MIN, MAX_LEN_MAX = 50, 50, 200
DROPOUT_SPARSE, DROPOUT_DENSE = 0.5, 0.2  # at <= SPARSE_LEN and >= DENSE_LEN events/user
SPARSE_LEN, DENSE_LEN = 10.0, 100.0
LR_BASE, LR_POSITIONS, LR_MAX = 1e-3, 1000.0, 5e-3  # lr for <= LR_POSITIONS targets a batch
# ce's logits for a batch of 128 windows: 128 x 1M x 4 bytes = 512 MB (and as much again
# for their gradient) at this bound.
CE_MAX_ITEMS_X_LEN = 1_000_000


@dataclass(frozen=True)
class SequenceStats:
    """Statistics of the training sequences that settings are derived from."""

    users: int
    items: int
    mean_length: float  # training events per user
    p90_length: float  # 90th percentile of training events per user


def sequence_stats(data: SequenceData) -> SequenceStats:
    """The :class:`SequenceStats` of a prepared dataset's training sequences."""
    users, start, stop = data.train_ranges()
    lengths = (stop - start).astype(np.float64)
    if len(lengths) == 0:
        return SequenceStats(0, data.num_items, 0.0, 0.0)
    return SequenceStats(
        users=len(users),
        items=data.num_items,
        mean_length=float(lengths.mean()),
        p90_length=float(np.percentile(lengths, 90)),
    )


def derive_max_len(stats: SequenceStats) -> int:
    """The window: p90 of the training lengths, up to a multiple of 50, within 50..200."""
    window = MAX_LEN_STEP * math.ceil(stats.p90_length / MAX_LEN_STEP)
    return int(min(max(window, MAX_LEN_MIN), MAX_LEN_MAX))


def derive_dropout(stats: SequenceStats) -> float:
    """0.5 at <= 10 training events per user, 0.2 at >= 100, log-linear between."""
    lo, hi = math.log(SPARSE_LEN), math.log(DENSE_LEN)
    x = (math.log(max(stats.mean_length, 1.0)) - lo) / (hi - lo)
    value = DROPOUT_SPARSE + (DROPOUT_DENSE - DROPOUT_SPARSE) * min(max(x, 0.0), 1.0)
    return round(value * 20) / 20


def derive_loss(num_items: int, max_len: int) -> str:
    """ce while a batch's full-softmax logits (batch x window x catalogue) stay small,
    else sampled-softmax."""
    return "ce" if num_items * max_len <= CE_MAX_ITEMS_X_LEN else "sampled-softmax"


def resolve_loss(loss: str | None, num_items: int, max_len: int) -> tuple[str, list[str]]:
    """``loss``, or the derived one when unset, and a line saying why (none when given)."""
    if loss is not None:
        return loss, []
    loss = derive_loss(num_items, max_len)
    size = f"{num_items:,} items x max_len {max_len} = {num_items * max_len:,}"
    limit = f"{CE_MAX_ITEMS_X_LEN:,}"
    why = f"at most {limit}" if loss == "ce" else f"over {limit}: ce's logits would not fit"
    return loss, [f"loss={loss}: {size}, {why}"]


def batch_positions(data: SequenceData, max_len: int, batch_size: int) -> float:
    """Mean next-item targets in a batch of ``batch_size`` users' training windows (of
    all users, where there are fewer)."""
    _, start, stop = data.train_ranges()
    if len(start) == 0:
        return 0.0
    targets = np.minimum(stop - start, max_len + 1) - 1  # a window of L + 1 events: L targets
    return min(batch_size, len(start)) * float(targets.mean())


def derive_lr(positions: float) -> float:
    """1e-3 up to 1,000 target positions a batch; above, times sqrt(positions / 1,000),
    at most 5e-3; to two significant digits."""
    lr = LR_BASE * math.sqrt(max(positions / LR_POSITIONS, 1.0))
    return float(f"{min(lr, LR_MAX):.2g}")


def resolve_lr(
    lr: float | None, data: SequenceData, max_len: int, batch_size: int
) -> tuple[float, list[str]]:
    """``lr``, or the derived one when unset, and a line saying why (none when given)."""
    if lr is not None:
        return lr, []
    positions = batch_positions(data, max_len, batch_size)
    lr = derive_lr(positions)
    return lr, [
        f"lr={lr:g}: {positions:,.0f} target positions a batch of {batch_size} (1e-3 up to "
        f"{LR_POSITIONS:,.0f}, times the square root of the ratio above, at most {LR_MAX:g})"
    ]


def resolve(cfg: SASRecConfig, data: SequenceData) -> tuple[SASRecConfig, list[str]]:
    """``cfg`` with every unset data-derived option filled in from ``data``.

    Returns
    -------
    SASRecConfig, list of str
        The filled-in config, and one line per derived value saying why.
    """
    if cfg.max_len is not None and cfg.dropout is not None:
        return cfg, []
    stats = sequence_stats(data)
    notes, changes = [], {}
    if cfg.max_len is None:
        changes["max_len"] = derive_max_len(stats)
        notes.append(
            f"max_len={changes['max_len']}: 90% of users have at most "
            f"{stats.p90_length:.0f} training events (window: that, up to a multiple of "
            f"{MAX_LEN_STEP}, within {MAX_LEN_MIN}-{MAX_LEN_MAX})"
        )
    if cfg.dropout is None:
        changes["dropout"] = derive_dropout(stats)
        notes.append(
            f"dropout={changes['dropout']}: {stats.mean_length:.1f} training events per "
            f"user ({DROPOUT_SPARSE} at {SPARSE_LEN:.0f} or fewer, {DROPOUT_DENSE} at "
            f"{DENSE_LEN:.0f} or more)"
        )
    return dataclasses.replace(cfg, **changes), notes


HISTORY = ("auto", "exclude", "include")
# Above this share of validation targets already in their user's history, people repeat:
# hiding history items would hide that many right answers.
REPEAT_SHARE = 0.20


def resolve_history(history: str, data: SequenceData) -> tuple[str, list[str]]:
    """Whether the doors show items of a user's history: ``history`` when given, and for
    ``auto`` ``include`` if more than 20% of the validation targets are already in their
    user's history (a log where people repeat: music, news, groceries), else
    ``exclude``; and a line saying why (none when given)."""
    if history not in HISTORY:
        raise ValueError(f"history={history!r}: expected one of {HISTORY}")
    if history != "auto":
        return history, []
    share = data.repeat_shares()["valid_targets_in_history"]
    chosen = "include" if share > REPEAT_SHARE else "exclude"
    return chosen, [
        f"history={chosen}: {share:.1%} of validation targets are already in their user's "
        f"history (include above {REPEAT_SHARE:.0%})"
    ]
