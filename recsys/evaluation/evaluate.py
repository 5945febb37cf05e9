"""Evaluate any scorer on a stage of a prepared dataset: full ranking by default.

The scorer turns input histories into user vectors and holds one vector per item; a
score is their dot product. SASRec and the most-popular baseline both fit this shape, so
they are measured by exactly the same code.

Protocols:

- ``full`` (default): each target is ranked against the whole catalogue. Items of the
  user's input history are excluded unless ``exclude_seen=False`` (RecBole's way for
  sequential models); a target is never excluded.
- ``sampled``: the SASRec paper's protocol, each target ranked against ``num_sampled``
  random items the user never interacted with. It overstates quality and is only for
  comparison with papers; its metric names always carry ``sampled``.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from recsys.data.dataset import SequenceData, Stage, gather_ragged, pad_left, ragged_to_padded
from recsys.evaluation.metrics import bootstrap_ci, per_user_metrics
from recsys.evaluation.ranking import HistoryBias, bias_of, drop_targets, rank_and_top_k
from recsys.models.scorers import Scorer

log = logging.getLogger(__name__)

PROTOCOLS = ("full", "sampled")


@dataclass
class EvalConfig:
    """How to evaluate."""

    ks: tuple[int, ...] = (1, 5, 10, 20)
    exclude_seen: bool = True
    protocol: str = "full"
    num_sampled: int = 100
    batch_users: int = 512
    bootstrap: int = 1000  # resamples for the 95% CIs; 0 = no CIs
    seed: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r} is unknown; expected one of {PROTOCOLS}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks={self.ks}: expected cut-offs >= 1")
        self.ks = tuple(sorted(set(self.ks)))

    def within(self, num_items: int) -> EvalConfig:
        """This config without the cut-offs a catalogue of ``num_items`` cannot measure.

        A K at or beyond the list length counts every target as a hit; such cut-offs are
        dropped with a warning.

        Raises
        ------
        ValueError
            If no cut-off is left.
        """
        limit = num_items if self.protocol == "full" else self.num_sampled + 1
        bad = [k for k in self.ks if k > limit]
        if not bad:
            return self
        what = "the catalogue size" if self.protocol == "full" else "the sampled list size"
        kept = tuple(k for k in self.ks if k <= limit)
        if not kept:
            raise ValueError(
                f"eval_ks {bad}: a cut-off K must be from 1 to {what} {limit}, or every "
                "target counts as a hit"
            )
        warnings.warn(
            f"eval_ks {bad} exceed {what} {limit}: not reported", UserWarning, stacklevel=2
        )
        return dataclasses.replace(self, ks=kept)


@dataclass
class EvalResult:
    """Mean metrics with 95% CIs, per-user values and how they were obtained."""

    stage: str
    protocol: str
    exclude_seen: bool
    num_users: int
    skipped_no_history: int
    means: dict[str, float]
    ci: dict[str, tuple[float, float]]
    per_user: pl.DataFrame = field(repr=False)

    def metric_name(self, metric: str) -> str:
        """MLflow name, e.g. ``ndcg@10`` → ``test_ndcg_at_10`` (``test_sampled_...``)."""
        sampled = "sampled_" if self.protocol == "sampled" else ""
        return f"{self.stage}_{sampled}{metric.replace('@', '_at_')}"

    def flat(self, with_ci: bool = True) -> dict[str, float]:
        """All means (and ``_ci_low``/``_ci_high``) under their MLflow names."""
        out = {}
        for m, v in self.means.items():
            name = self.metric_name(m)
            out[name] = v
            if with_ci and m in self.ci:
                out[f"{name}_ci_low"], out[f"{name}_ci_high"] = self.ci[m]
        return out

    def describe(self) -> dict[str, Any]:
        """The protocol, to print and log next to the numbers."""
        return {
            "stage": self.stage,
            "protocol": self.protocol,
            "history_excluded": self.exclude_seen,
            "users": self.num_users,
            "users_skipped_no_history": self.skipped_no_history,
        }


def _sample_unseen(
    rng: np.random.Generator,
    seen: np.ndarray,
    num_items: int,
    n: int,
) -> np.ndarray:
    """(B, n) item indices drawn uniformly from 1..num_items, none in a row of ``seen``."""
    B = seen.shape[0]
    out = np.zeros((B, n), dtype=np.int64)
    filled = np.zeros(B, dtype=np.int64)
    # Membership test for all rows at once: keys row * (num_items + 1) + item, sorted.
    base = np.arange(B, dtype=np.int64)[:, None] * (num_items + 1)
    keys = np.unique((base + seen)[seen > 0])
    todo = np.arange(B)
    while len(todo):
        cand = rng.integers(1, num_items + 1, size=(len(todo), 2 * n))
        k = base[todo] + cand
        pos = np.searchsorted(keys, k).clip(max=max(len(keys) - 1, 0))
        ok = keys[pos] != k if len(keys) else np.ones_like(k, dtype=bool)
        # Place the accepted candidates of each row after the ones it already has.
        slot = filled[todo, None] + np.cumsum(ok, axis=1) - 1
        place = ok & (slot < n)
        rows = np.broadcast_to(todo[:, None], cand.shape)[place]
        out[rows, slot[place]] = cand[place]
        filled[todo] = np.minimum(filled[todo] + ok.sum(1), n)
        todo = todo[filled[todo] < n]
        if len(todo) and (seen[todo] > 0).sum(1).min() >= num_items:
            raise ValueError("a user has seen every item; no negatives can be sampled")
    return out


def _sampled_ranks(
    users: torch.Tensor,
    item_vecs: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    bias: HistoryBias | None,
) -> torch.Tensor:
    t = (users[:, None, :] * item_vecs[targets]).sum(-1)  # (B, M)
    s = (users[:, None, :] * item_vecs[negatives]).sum(-1)  # (B, n)
    if bias is not None:  # the negatives are unseen items: no bias
        t = t + bias_of(bias, targets)
    ahead = (s[:, None, :] > t[:, :, None]) | (
        (s[:, None, :] == t[:, :, None]) & (negatives[:, None, :] < targets[:, :, None])
    )  # (B, M, n)
    return ahead.sum(-1).masked_fill(targets == 0, -1)


@torch.no_grad()
def evaluate(
    scorer: Scorer,
    data: SequenceData,
    stage: str | Stage,
    cfg: EvalConfig | None = None,
    progress: bool = False,
) -> EvalResult:
    """Rank each user's targets in ``stage`` and summarise the metrics.

    Parameters
    ----------
    scorer : Scorer
        The model (e.g. :class:`recsys.models.scorers.SASRecScorer`).
    data : SequenceData
        The prepared dataset.
    stage : {"valid", "test"} or Stage
        Which targets to rank.
    cfg : EvalConfig, optional
        Cut-offs, history exclusion, protocol, batch size, bootstrap (default: defaults).
    progress : bool
        Show a progress bar over users.

    Returns
    -------
    EvalResult
    """
    cfg = cfg or EvalConfig()
    st = data.stage(stage) if isinstance(stage, str) else stage
    if len(st.users) == 0:
        raise ValueError(f"stage {st.name!r} of {str(data.path)!r} has no users with targets")
    item_vecs = scorer.item_vectors()
    rng = np.random.default_rng(cfg.seed)
    max_k = max(cfg.ks)
    ranks_parts: list[np.ndarray] = []
    covered = {k: np.zeros(data.num_items + 1, dtype=bool) for k in cfg.ks}
    bar = tqdm(total=len(st.users), desc=f"evaluate {st.name}", unit="user", disable=not progress)
    for lo in range(0, len(st.users), cfg.batch_users):
        sl = slice(lo, lo + cfg.batch_users)
        start, stop, tstop = st.hist_start[sl], st.hist_stop[sl], st.target_stop[sl]
        inputs = pad_left(data.items, start, stop, scorer.max_len)  # (B, T)
        users = scorer.user_vectors(torch.from_numpy(inputs))
        dev = users.device  # ranking runs where the model does (a GPU, when trained there)
        # Exclusion and a repeat term read the whole history, beyond the model's window.
        history = torch.from_numpy(pad_left(data.items, start, stop, int((stop - start).max())))
        history = history.to(dev)
        values = scorer.history_bias(history)
        bias = None if values is None else (history, values)
        targets = torch.from_numpy(ragged_to_padded(*gather_ragged(data.items, stop, tstop)))
        targets = targets.to(dev)
        if cfg.protocol == "full":
            exclude = drop_targets(history, targets) if cfg.exclude_seen else None
            ranks, top, _ = rank_and_top_k(users, item_vecs, targets, max_k, exclude, bias)
            for k in cfg.ks:
                covered[k][top[:, :k].numpy().ravel()] = True
        else:
            seen = ragged_to_padded(*gather_ragged(data.items, start, tstop))
            negatives = _sample_unseen(rng, seen, data.num_items, cfg.num_sampled)
            negs = torch.from_numpy(negatives).to(dev)
            ranks = _sampled_ranks(users, item_vecs, targets, negs, bias)
        ranks_parts.append(ranks.cpu().numpy())
        bar.update(len(start))
    bar.close()
    width = max(p.shape[1] for p in ranks_parts)
    ranks = np.concatenate(
        [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=-1) for p in ranks_parts]
    )
    values = per_user_metrics(ranks, cfg.ks)
    means = {m: float(v.mean()) for m, v in values.items()}
    ci = {}
    if cfg.bootstrap > 0:
        ci = {m: bootstrap_ci(v, cfg.bootstrap, seed=cfg.seed) for m, v in values.items()}
    if cfg.protocol == "full":
        for k in cfg.ks:
            # Slot value 0 marks a list shorter than k, not an item.
            means[f"coverage@{k}"] = float(covered[k][1:].sum() / data.num_items)
    real = ranks >= 0
    per_user = pl.DataFrame(
        {
            "user_idx": st.users.astype(np.int32),
            "n_targets": real.sum(1).astype(np.int32),
            "best_rank": np.where(real, ranks, np.iinfo(np.int64).max).min(1),
            **{m.replace("@", "_at_"): v for m, v in values.items()},
        }
    )
    result = EvalResult(
        stage=st.name,
        protocol=cfg.protocol,
        exclude_seen=cfg.exclude_seen,
        num_users=len(st.users),
        skipped_no_history=st.skipped_no_history,
        means=means,
        ci=ci,
        per_user=per_user,
    )
    if st.skipped_no_history:
        log.warning(
            "%s: %d users with targets but no earlier history were not evaluated",
            st.name,
            st.skipped_no_history,
        )
    return result
