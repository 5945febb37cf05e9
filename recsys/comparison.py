"""Compare training runs of an MLflow experiment: metrics with CIs, and against a baseline
a paired significance test over the per-user metric values.

The test is a paired bootstrap: the per-user differences to the baseline (users matched
by index) are resampled ``reps`` times after centring them on zero, and the two-sided
p-value is the share of resampled mean differences at least as far from zero as the one
observed. With several runs against one baseline the p-values are Holm-corrected.

Runs evaluated on different data (dataset version, split, protocol) are refused unless
``allow_mixed`` is given: their numbers do not measure the same thing.

With ``pool_seeds``, runs that differ only in their seed are one row: the metric is their
mean, and each is paired with the baseline's run of the same seed, so the test resamples
(seed, user) differences: a change is judged over every seed at once, not seed by seed.

With a second metric ``x`` (e.g. ``test_ild_at_10``) the report also plots the trade-off:
the compared metric against ``x`` per run, with the Pareto-optimal runs joined. The report
(Markdown, CSV, charts) is :mod:`recsys.comparison_report`.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

IDENTITY = ("dataset_name", "dataset_version", "split")  # params that must agree
# Runs of these kinds are not compared: an evaluation of another run's model, a sweep's
# parent, a comparison report. Anything else carrying the metric is (training runs, and
# sweep children of kind "reranked": a run's model evaluated with a re-ranking config).
NOT_COMPARED = ("evaluation", "sweep", "comparison")
# Whether more of a second metric (by its name without stage and cut-off) is better, for
# the Pareto front; a metric not listed here counts as higher-is-better.
HIGHER_IS_BETTER = {
    "ild": True,
    "novelty": True,
    "coverage": True,
    "exposure_gini": False,
    "calibration_kl": False,
}
PROTOCOL_TAG = "eval_protocol"
SKIP_PARAMS = {
    "output",
    "run_name",
    "experiment",
    "tracking_uri",
    "progress",
    "resume",
    "parent_run_id",
    "sweep_key",
    "train_key",
    "rerank",  # the whole re-ranking config as JSON; its rerank.* values are compared
}


@dataclass
class RunInfo:
    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


def _per_user_column(metric: str) -> tuple[str, str]:
    """``test_ndcg_at_10`` → (artifact stage name ``test``, column ``ndcg_at_10``)."""
    stage, _, rest = metric.partition("_")
    if stage not in ("valid", "test") or not rest:
        raise ValueError(f"metric {metric!r}: expected e.g. 'test_ndcg_at_10' or 'valid_hr_at_10'")
    if rest.startswith("sampled_"):
        return f"{stage}_sampled", rest.removeprefix("sampled_")
    return stage, rest


def x_metric_name(x: str, metric: str) -> str:
    """The full name of a second metric: ``ild_at_10`` → ``test_ild_at_10`` for a test metric.

    Parameters
    ----------
    x : str
        The metric, with or without a ``valid_``/``test_`` prefix.
    metric : str
        The compared metric, whose stage an unprefixed ``x`` takes.

    Returns
    -------
    str
        ``x`` as logged in MLflow.
    """
    _per_user_column(metric)  # a metric with no stage has none to lend
    if x.startswith(("valid_", "test_")):
        return x
    return f"{metric.partition('_')[0]}_{x}"


def higher_is_better(x: str) -> bool:
    """Whether more of ``x`` is better (:data:`HIGHER_IS_BETTER`, default True)."""
    base = re.sub(r"_at_\d+$", "", x)
    base = re.sub(r"^(valid|test)_(sampled_)?", "", base)
    return HIGHER_IS_BETTER.get(base, True)


def pareto_front(x: Sequence[float], y: Sequence[float], x_higher: bool = True) -> list[int]:
    """Indices of the points no other point dominates, in order of increasing ``x``.

    Higher ``y`` is better; higher ``x`` too unless ``x_higher`` is False. A point is
    dominated by one at least as good on both and better on one; equal points are all kept.

    Examples
    --------
    ``pareto_front([1, 2, 3], [3, 2, 1])`` → ``[0, 1, 2]``;
    ``pareto_front([1, 2, 3], [3, 2, 1], x_higher=False)`` → ``[0]``.
    """
    sign = 1.0 if x_higher else -1.0
    pts = [(sign * float(a), float(b)) for a, b in zip(x, y, strict=True)]
    front = [
        i
        for i, (a, b) in enumerate(pts)
        if not any(c >= a and d >= b and (c > a or d > b) for c, d in pts)
    ]
    return sorted(front, key=lambda i: (float(x[i]), float(y[i])))


def load_runs(
    experiment: str, run_ids: list[str] | None = None, tracking_uri: str | None = None
) -> list[RunInfo]:
    """Finished runs of ``experiment`` to compare (or the given run ids, by prefix).

    Training runs and any other kind but those in :data:`NOT_COMPARED` (e.g. ``reranked``
    sweep children) are compared.
    """
    import mlflow

    from recsys.tracking import check_reachable, resolve_uri

    uri = resolve_uri(tracking_uri)
    check_reachable(uri)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"experiment {experiment!r} does not exist at {client.tracking_uri!r}")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    runs = [
        r
        for r in runs
        if r.info.status == "FINISHED" and r.data.tags.get("kind") not in NOT_COMPARED
    ]
    if run_ids:
        chosen = []
        for rid in run_ids:
            match = [r for r in runs if r.info.run_id.startswith(rid)]
            if len(match) != 1:
                raise ValueError(
                    f"run {rid!r} matches {len(match)} finished training runs of {experiment!r}"
                )
            chosen.append(match[0])
        runs = chosen
    return [
        RunInfo(r.info.run_id, r.info.run_name or "", r.data.params, r.data.metrics, r.data.tags)
        for r in runs
    ]


def check_comparable(runs: list[RunInfo]) -> None:
    """Raise ``ValueError`` when runs were evaluated on different data or protocols."""
    for key in (*IDENTITY, PROTOCOL_TAG):
        values = {
            r.run_id[:8]: (r.tags.get(key) if key == PROTOCOL_TAG else r.params.get(key))
            for r in runs
        }
        if len(set(values.values())) > 1:
            raise ValueError(
                f"runs differ in {key}: {values}; their metrics are not comparable "
                "(pass allow_mixed=True / --allow-mixed to compare anyway)"
            )


def paired_bootstrap_p(diff: np.ndarray, reps: int = 2000, seed: int = 0) -> float:
    """Two-sided p-value that the mean of paired differences ``diff`` is zero."""
    n = len(diff)
    observed = abs(diff.mean())
    centred = diff - diff.mean()
    rng = np.random.default_rng(seed)
    hits = 0
    per_block = max(1, (1 << 20) // max(n, 1))
    for lo in range(0, reps, per_block):
        idx = rng.integers(0, n, size=(min(per_block, reps - lo), n))
        hits += int((np.abs(centred[idx].mean(1)) >= observed - 1e-15).sum())
    return (hits + 1) / (reps + 1)


def holm(p: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    m = len(p)
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def _per_user(run: RunInfo, stage: str, column: str, tracking_uri: str | None) -> pl.DataFrame:
    import mlflow

    from recsys.tracking import resolve_uri

    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=run.run_id,
            artifact_path=f"per_user/per_user_{stage}_metrics.parquet",
            dst_path=tmp,
            tracking_uri=resolve_uri(tracking_uri),
        )
        return pl.read_parquet(Path(path)).select("user_idx", column)


def compare(
    experiment: str,
    runs: list[str] | None = None,
    baseline: str | None = None,
    metric: str = "test_ndcg_at_10",
    allow_mixed: bool = False,
    tracking_uri: str | None = None,
    reps: int = 2000,
    seed: int = 0,
    x: str | None = None,
    pool_seeds: bool = False,
) -> pl.DataFrame:
    """One row per run: differing params, the metric with its 95% CI, training time and,
    against ``baseline`` (default: the first run), the difference, its paired-bootstrap
    p-value, the Holm-adjusted p-value and whether it is significant at 0.05.

    With a second metric ``x`` (stage prefix optional, see :func:`x_metric_name`) the
    table also has columns ``x``, ``x_ci_low`` and ``x_ci_high`` (null without a CI).

    With ``pool_seeds``, runs whose params differ only in ``seed`` are one row (``runs``
    of them, the metric and times their means, no CI), paired seed by seed with the
    baseline's group.

    Raises
    ------
    ValueError
        Unknown experiment or run, a metric (or ``x``) the runs lack, or runs evaluated on
        different data or protocols (unless ``allow_mixed``).
    """
    infos = load_runs(experiment, runs, tracking_uri)
    if len(infos) < 2:
        raise ValueError(f"experiment {experiment!r}: need at least 2 finished runs to compare")
    if not allow_mixed:
        check_comparable(infos)
    x = x_metric_name(x, metric) if x else None
    for name in (metric, x) if x else (metric,):
        missing = [r.run_id[:8] for r in infos if name not in r.metrics]
        if missing:
            raise ValueError(f"runs {missing} have no metric {name!r}")
    base = infos[0]
    if baseline:
        base = next((r for r in infos if r.run_id.startswith(baseline)), None)
        if base is None:
            raise ValueError(f"baseline {baseline!r} is not among the compared runs")
    stage, column = _per_user_column(metric)
    base_values = _per_user(base, stage, column, tracking_uri)
    keys = sorted({k for r in infos for k in r.params} - SKIP_PARAMS - set(IDENTITY))
    differing = [k for k in keys if len({r.params.get(k) for r in infos}) > 1]
    if pool_seeds:
        if x:
            raise ValueError(f"x={x!r} with pool_seeds: the frontier plots single runs")
        return _pooled(infos, base, [k for k in differing if k != "seed"], metric, tracking_uri)
    rows: list[dict[str, Any]] = []
    for r in infos:
        row: dict[str, Any] = {
            "run": r.run_id[:8],
            "run_id": r.run_id,
            "name": r.name,
            "params": ", ".join(f"{k}={r.params.get(k)}" for k in differing),
            metric: r.metrics[metric],
            "ci_low": r.metrics.get(f"{metric}_ci_low"),
            "ci_high": r.metrics.get(f"{metric}_ci_high"),
            "train_seconds": r.metrics.get("train_seconds"),
            "baseline": r is base,
        }
        if x:
            row.update(
                x=r.metrics[x],
                x_ci_low=r.metrics.get(f"{x}_ci_low"),
                x_ci_high=r.metrics.get(f"{x}_ci_high"),
            )
        if r is base:
            row.update(diff=0.0, p_value=None)
        else:
            diff = _paired_diff(base, base_values, r, stage, column, tracking_uri)
            row.update(diff=float(diff.mean()), p_value=paired_bootstrap_p(diff, reps, seed))
        rows.append(row)
    _adjust(rows)
    # Float columns even where every run lacks a value (e.g. x_ci_low of exposure_gini).
    schema = {
        c: pl.Float64 for c in ("ci_low", "ci_high", "train_seconds", "x_ci_low", "x_ci_high")
    }
    return pl.DataFrame(rows, schema_overrides={c: t for c, t in schema.items() if c in rows[0]})


def _paired_diff(
    base: RunInfo,
    base_values: pl.DataFrame,
    run: RunInfo,
    stage: str,
    column: str,
    tracking_uri: str | None,
) -> np.ndarray:
    """Per-user differences ``run - base`` of ``column``, users matched by index."""
    joined = base_values.join(
        _per_user(run, stage, column, tracking_uri), on="user_idx", suffix="_run"
    )
    if joined.height != base_values.height:
        raise ValueError(
            f"run {run.run_id[:8]} was evaluated on other users than the baseline {base.run_id[:8]}"
        )
    return (joined[f"{column}_run"] - joined[column]).to_numpy()


def _adjust(rows: list[dict[str, Any]]) -> None:
    """Add the Holm-adjusted p-value and significance at 0.05 to every tested row."""
    tested = [i for i, row in enumerate(rows) if row["p_value"] is not None]
    adjusted = holm([rows[i]["p_value"] for i in tested])
    for i, row in enumerate(rows):
        row["p_holm"] = adjusted[tested.index(i)] if i in tested else None
        row["significant"] = row["p_holm"] is not None and row["p_holm"] < 0.05


def _pooled(
    infos: list[RunInfo],
    base: RunInfo,
    differing: list[str],
    metric: str,
    tracking_uri: str | None,
    reps: int = 2000,
    seed: int = 0,
) -> pl.DataFrame:
    """:func:`compare`'s table with the runs that differ only in their seed pooled."""
    stage, column = _per_user_column(metric)
    groups: dict[tuple, list[RunInfo]] = {}
    for r in infos:
        groups.setdefault(tuple(r.params.get(k) for k in differing), []).append(r)
    base_key = tuple(base.params.get(k) for k in differing)
    by_seed = {r.params.get("seed"): r for r in groups[base_key]}
    if len(by_seed) != len(groups[base_key]):
        raise ValueError(f"the baseline's group has two runs with one seed: {sorted(by_seed)}")
    rows: list[dict[str, Any]] = []
    for key, members in groups.items():
        seconds = [r.metrics.get("train_seconds") for r in members]
        row: dict[str, Any] = {
            # The first run stands for the group in charts (its learning curve).
            "run": members[0].run_id[:8] + (f"+{len(members) - 1}" if len(members) > 1 else ""),
            "run_id": members[0].run_id,
            "name": members[0].name,
            "params": ", ".join(f"{k}={v}" for k, v in zip(differing, key, strict=True)),
            "seeds": ",".join(str(r.params.get("seed")) for r in members),
            "runs": len(members),
            metric: float(np.mean([r.metrics[metric] for r in members])),
            "ci_low": None,
            "ci_high": None,
            "train_seconds": None if None in seconds else float(np.mean(seconds)),
            "baseline": key == base_key,
        }
        if key == base_key:
            row.update(diff=0.0, p_value=None)
        else:
            diffs = []
            for r in members:
                twin = by_seed.get(r.params.get("seed"))
                if twin is None:
                    raise ValueError(
                        f"run {r.run_id[:8]} has seed {r.params.get('seed')}, which no run "
                        f"of the baseline's group ({', '.join(sorted(map(str, by_seed)))}) has"
                    )
                twin_values = _per_user(twin, stage, column, tracking_uri)
                diffs.append(_paired_diff(twin, twin_values, r, stage, column, tracking_uri))
            diff = np.concatenate(diffs)
            row.update(diff=float(diff.mean()), p_value=paired_bootstrap_p(diff, reps, seed))
        rows.append(row)
    _adjust(rows)
    schema = {c: pl.Float64 for c in ("ci_low", "ci_high", "train_seconds", "p_value")}
    return pl.DataFrame(rows, schema_overrides=schema)
