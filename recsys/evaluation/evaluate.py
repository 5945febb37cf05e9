"""Evaluate any scorer on a stage of a prepared dataset: full ranking by default.

The scorer turns input histories into user vectors and holds one vector per item; a
score is their dot product. SASRec and the most-popular baseline both fit this shape, so
they are measured by exactly the same code.

Protocols:

- ``full`` (default): each target is ranked against the whole catalogue. Items of the
  user's input history are excluded unless ``exclude_seen=False`` (RecBole's way for
  sequential models). Evaluation measures what the doors serve: with the history
  excluded no door shows a history item, so a target already in the history is a miss.
- ``sampled``: the SASRec paper's protocol, each target ranked against ``num_sampled``
  random items the user never interacted with. It overstates quality and is only for
  comparison with papers; its metric names always carry ``sampled``.

Full ranking also reports beyond-accuracy metrics of the top-K lists (intra-list
diversity, novelty, genre calibration, exposure Gini; see :mod:`recsys.evaluation.beyond`)
unless ``EvalConfig.beyond_accuracy`` is off. The sampled protocol has no real lists, so
it reports none.
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

from recsys import allocation
from recsys.allocation import exposure
from recsys.allocation.features import ItemFeatures, read_item_vocab
from recsys.data.dataset import SequenceData, Stage, gather_ragged, pad_left, ragged_to_padded
from recsys.evaluation.beyond import BeyondAccuracy
from recsys.evaluation.metrics import bootstrap_ci, per_user_metrics
from recsys.evaluation.ranking import HistoryBias, bias_of, rank_and_top_k
from recsys.models.scorers import Scorer

log = logging.getLogger(__name__)

PROTOCOLS = ("full", "sampled")
MISS = 2**62  # the rank of a target no list can hold (a history item, when excluded)


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
    # ild, novelty, calibration_kl and exposure_gini of the top-K lists (full ranking).
    beyond_accuracy: bool = True

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
    *,
    features: ItemFeatures | None = None,
    rerank: allocation.Plan | None = None,
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
    features : ItemFeatures, optional
        Genres and item vectors for the beyond-accuracy metrics (full protocol only).
        Default: built from the dataset's ``vocab_items.parquet`` and the scorer's item
        vectors.
    rerank : Plan, optional
        Measure re-ranked lists (:mod:`recsys.allocation`; full protocol): the top
        ``candidates`` items become ``max(ks)`` slots, exposure budgets span the stage's
        users, and a target outside its list counts as ranked ``max(ks)`` (a miss).

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
    beyond = None
    if cfg.protocol == "full" and cfg.beyond_accuracy:
        beyond = _beyond_accumulator(scorer, data, cfg.ks, features)
    if rerank is not None and cfg.protocol != "full":
        raise ValueError("re-ranking is measured with the full protocol only")

    def chunk(lo: int) -> tuple[Any, ...]:
        sl = slice(lo, lo + cfg.batch_users)
        start, stop, tstop = st.hist_start[sl], st.hist_stop[sl], st.target_stop[sl]
        inputs = pad_left(data.items, start, stop, scorer.max_len)  # (B, T)
        users = scorer.user_vectors(torch.from_numpy(inputs))
        dev = users.device  # ranking runs where the model does (a GPU, when trained there)
        # Exclusion and a repeat term read the whole history, beyond the model's window.
        history_cpu = torch.from_numpy(pad_left(data.items, start, stop, int((stop - start).max())))
        history = history_cpu.to(dev)
        values = scorer.history_bias(history)
        bias = None if values is None else (history, values)
        targets = torch.from_numpy(ragged_to_padded(*gather_ragged(data.items, stop, tstop)))
        targets = targets.to(dev)
        # No door shows a history item when they are excluded: nor does the evaluation.
        exclude = history if cfg.exclude_seen else None
        return start, users, history_cpu, bias, targets, exclude

    chunks = range(0, len(st.users), cfg.batch_users)
    budget = None
    if rerank is not None:
        merit_total = None
        if allocation.needs_merit(rerank):  # proportional exposure: a first pass
            merit_total = torch.zeros(data.num_items + 1, dtype=torch.float64)
            for lo in chunks:
                _, users, history_cpu, bias, targets, exclude = chunk(lo)
                cand, cs = _candidates(rerank, users, item_vecs, exclude, bias, max_k)
                merit_total += exposure.merit(cand, cs, data.num_items, rerank.pinned)
        budget = allocation.start_budget(rerank, len(st.users), max_k, merit_total)
    bar = tqdm(total=len(st.users), desc=f"evaluate {st.name}", unit="user", disable=not progress)
    for lo in chunks:
        start, users, history_cpu, bias, targets, exclude = chunk(lo)
        if cfg.protocol == "full":
            if rerank is None:
                ranks, top, _ = rank_and_top_k(users, item_vecs, targets, max_k, exclude, bias)
            else:
                cand, cs = _candidates(rerank, users, item_vecs, exclude, bias, max_k)
                top_np, _ = allocation.allocate(rerank, cand, cs, history_cpu, max_k, budget)
                top = torch.from_numpy(top_np)
                ranks = _list_ranks(top, targets.cpu())
            # Everything measured on the lists reads `top` (B, max_k, CPU) from here on.
            for k in cfg.ks:
                covered[k][top[:, :k].numpy().ravel()] = True
            if beyond is not None:
                beyond.add(top, history_cpu)
        else:
            tstop = st.target_stop[lo : lo + cfg.batch_users]
            seen = ragged_to_padded(*gather_ragged(data.items, start, tstop))
            negatives = _sample_unseen(rng, seen, data.num_items, cfg.num_sampled)
            negs = torch.from_numpy(negatives).to(users.device)
            ranks = _sampled_ranks(users, item_vecs, targets, negs, bias)
        if cfg.exclude_seen:  # a target in the history cannot be shown: a miss
            t = targets.cpu()
            seen = (t[:, :, None] == history_cpu[:, None, :]).any(-1) & (t > 0)
            ranks = ranks.masked_fill(seen.to(ranks.device), MISS)
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
    columns = {m.replace("@", "_at_"): v for m, v in values.items()}
    if beyond is not None:
        extra = beyond.result(cfg.bootstrap, seed=cfg.seed)
        means.update(extra.means)
        ci.update(extra.ci)
        columns.update(extra.per_user)
    real = ranks >= 0
    per_user = pl.DataFrame(
        {
            "user_idx": st.users.astype(np.int32),
            "n_targets": real.sum(1).astype(np.int32),
            "best_rank": np.where(real, ranks, np.iinfo(np.int64).max).min(1),
            **columns,
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


def _candidates(
    plan: allocation.Plan,
    users: torch.Tensor,
    item_vecs: torch.Tensor,
    exclude: torch.Tensor | None,
    bias: HistoryBias | None,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A re-ranking's candidates (B, M) and scores on the CPU: the top ``candidates`` of
    the full ranking (exclusions and blocked items left out) and the plan's extra items."""
    num_items = item_vecs.shape[0] - 1
    m = min(max(plan.cfg.candidates, k), num_items)
    if len(plan.block):
        block = plan.block.to(users.device)[None, :].expand(users.shape[0], -1)
        exclude = block if exclude is None else torch.cat([exclude, block], 1)
    _, cand, cs = rank_and_top_k(users, item_vecs, None, m, exclude, bias)
    users_c, vecs_c = users.cpu(), item_vecs.detach().cpu()
    extra = allocation.extra_candidates(
        plan, users_c, vecs_c, None if exclude is None else exclude.cpu()
    )
    if extra.shape[1]:
        es = (users_c[:, None, :] * vecs_c[extra]).sum(-1)
        if bias is not None:
            es = es + bias_of((bias[0].cpu(), bias[1].cpu()), extra)
        cand = torch.cat([cand, extra], 1)
        cs = torch.cat([cs, es.masked_fill(extra == 0, float("-inf"))], 1)
    return cand, cs


def _list_ranks(top: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, M) 0-based position of each target (B, M) in its list top (B, K); K when it is
    not in the list (a miss at every cut-off), -1 for padding."""
    K = top.shape[1]
    hit = (top[:, None, :] == targets[:, :, None]) & (targets[:, :, None] > 0)  # (B, M, K)
    pos = torch.where(hit.any(-1), hit.float().argmax(-1), K)
    return pos.masked_fill(targets == 0, -1)


def _beyond_accumulator(
    scorer: Scorer, data: SequenceData, ks: tuple[int, ...], features: ItemFeatures | None
) -> BeyondAccuracy:
    """The beyond-accuracy accumulator for ``data``, with ``features`` or those of the
    dataset's item vocabulary (genres, if prepared with ``--items``) and the scorer's item
    vectors."""
    if features is None:
        features = ItemFeatures.build(read_item_vocab(data.path), scorer.item_vectors())
    if features.num_items != data.num_items:
        raise ValueError(
            f"item features cover {features.num_items} items but the dataset has {data.num_items}"
        )
    # Popularity is measured on the training events, as the model saw them.
    return BeyondAccuracy(features, data.item_counts(), int((data.n_train > 0).sum()), ks)
