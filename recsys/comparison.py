"""Compare training runs of an MLflow experiment: metrics with CIs, and against a baseline
a paired significance test over the per-user metric values.

The test is a paired bootstrap: the per-user differences to the baseline (users matched
by index) are resampled ``reps`` times after centring them on zero, and the two-sided
p-value is the share of resampled mean differences at least as far from zero as the one
observed. With several runs against one baseline the p-values are Holm-corrected.

Runs evaluated on different data (dataset version, split, protocol) are refused unless
``allow_mixed`` is given: their numbers do not measure the same thing.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

IDENTITY = ("dataset_name", "dataset_version", "split")  # params that must agree
REPORT_FILES = (
    "comparison.csv",
    "comparison.md",
    "comparison.png",
    "learning_curves.png",
    "metric_vs_time.png",
)
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


def load_runs(
    experiment: str, run_ids: list[str] | None = None, tracking_uri: str | None = None
) -> list[RunInfo]:
    """Finished training runs of ``experiment`` (or the given run ids, by prefix)."""
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
        if r.info.status == "FINISHED"
        and r.data.tags.get("kind") not in ("evaluation", "sweep", "comparison")
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
) -> pl.DataFrame:
    """One row per run: differing params, the metric with its 95% CI, training time and,
    against ``baseline`` (default: the first run), the difference, its paired-bootstrap
    p-value, the Holm-adjusted p-value and whether it is significant at 0.05.

    Raises
    ------
    ValueError
        Unknown experiment or run, a metric the runs lack, or runs evaluated on different
        data or protocols (unless ``allow_mixed``).
    """
    infos = load_runs(experiment, runs, tracking_uri)
    if len(infos) < 2:
        raise ValueError(f"experiment {experiment!r}: need at least 2 finished runs to compare")
    if not allow_mixed:
        check_comparable(infos)
    missing = [r.run_id[:8] for r in infos if metric not in r.metrics]
    if missing:
        raise ValueError(f"runs {missing} have no metric {metric!r}")
    base = infos[0]
    if baseline:
        base = next((r for r in infos if r.run_id.startswith(baseline)), None)
        if base is None:
            raise ValueError(f"baseline {baseline!r} is not among the compared runs")
    stage, column = _per_user_column(metric)
    base_values = _per_user(base, stage, column, tracking_uri)
    keys = sorted({k for r in infos for k in r.params} - SKIP_PARAMS - set(IDENTITY))
    differing = [k for k in keys if len({r.params.get(k) for r in infos}) > 1]
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
        if r is base:
            row.update(diff=0.0, p_value=None)
        else:
            joined = base_values.join(
                _per_user(r, stage, column, tracking_uri), on="user_idx", suffix="_run"
            )
            if joined.height != base_values.height:
                raise ValueError(
                    f"run {r.run_id[:8]} was evaluated on other users than the baseline "
                    f"{base.run_id[:8]}"
                )
            diff = (joined[f"{column}_run"] - joined[column]).to_numpy()
            row.update(diff=float(diff.mean()), p_value=paired_bootstrap_p(diff, reps, seed))
        rows.append(row)
    tested = [i for i, row in enumerate(rows) if row["p_value"] is not None]
    adjusted = holm([rows[i]["p_value"] for i in tested])
    for i, row in enumerate(rows):
        row["p_holm"] = adjusted[tested.index(i)] if i in tested else None
        row["significant"] = row["p_holm"] is not None and row["p_holm"] < 0.05
    return pl.DataFrame(rows)


def to_markdown(table: pl.DataFrame, metric: str) -> str:
    """A Markdown table of :func:`compare`'s result."""

    def f(v: Any, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    lines = [
        f"| run | name | params | {metric} (95% CI) | train s | diff vs baseline | p | p (Holm) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table.iter_rows(named=True):
        mark = " (baseline)" if r["baseline"] else (" *" if r["significant"] else "")
        ci = f"{f(r['ci_low'], '.4f')}-{f(r['ci_high'], '.4f')}"
        lines.append(
            f"| {r['run']}{mark} | {r['name']} | {r['params']} | {r[metric]:.4f} ({ci}) | "
            f"{f(r['train_seconds'], '.1f')} | {r['diff']:+.4f} | {f(r['p_value'], '.4f')} | "
            f"{f(r['p_holm'], '.4f')} |"
        )
    lines.append("")
    lines.append("* significant at 0.05 after Holm correction (paired bootstrap over users)")
    return "\n".join(lines)


def write_report(
    table: pl.DataFrame, metric: str, folder: str | Path, tracking_uri: str | None = None
) -> list[Path]:
    """Write the comparison as CSV, Markdown and PNG charts into ``folder``.

    Charts: ``comparison.png`` (the metric with CI bars per run), ``learning_curves.png``
    (validation NDCG@10 per epoch, runs overlaid) and ``metric_vs_time.png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    from recsys.io import atomic_file, check_output_folder
    from recsys.tracking import resolve_uri

    folder = check_output_folder(
        folder,
        kind="a comparison report",
        owned=REPORT_FILES,
        is_ours=lambda p: (p / "comparison.csv").is_file() and (p / "comparison.md").is_file(),
    )
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / "comparison.csv") as tmp:
        table.write_csv(tmp)
    with atomic_file(folder / "comparison.md") as tmp:
        tmp.write_text(to_markdown(table, metric) + "\n")

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        with atomic_file(folder / name) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)

    values = table[metric].to_numpy()
    low = values - table["ci_low"].fill_null(np.nan).to_numpy()
    high = table["ci_high"].fill_null(np.nan).to_numpy() - values
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * table.height), 4))
    ax.bar(table["run"].to_list(), values, yerr=[low, high], capsize=4, color="tab:blue")
    ax.set_ylabel(f"{metric} (95% CI)")
    ax.set_title("runs compared")
    save(fig, "comparison.png")

    client = mlflow.MlflowClient(resolve_uri(tracking_uri))
    fig, ax = plt.subplots(figsize=(7, 4))
    for row in table.iter_rows(named=True):
        history = client.get_metric_history(row["run_id"], "valid_ndcg_at_10")
        # The best model's final validation is logged again at the last step: keep each
        # step's first value, the epoch's own.
        first: dict[int, float] = {}
        for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
            if m.step > 0:
                first.setdefault(m.step, m.value)
        points = sorted(first.items())
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", label=f"{row['run']} {row['name']}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NDCG@10")
    ax.set_title("learning curves")
    if ax.lines:
        ax.legend(fontsize=7)
    save(fig, "learning_curves.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    seconds = table["train_seconds"].fill_null(0.0).to_numpy()
    ax.scatter(seconds, values)
    for x, y, name in zip(seconds, values, table["run"].to_list(), strict=True):
        ax.annotate(name, (x, y), fontsize=7)
    ax.set_xlabel("training seconds")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs training time")
    save(fig, "metric_vs_time.png")
    return [folder / n for n in REPORT_FILES]


def log_report(experiment: str, files: list[Path], metric: str, tracking_uri: str | None) -> str:
    """Log the report files as artifacts of a new comparison run; return its id."""
    import mlflow

    from recsys.tracking import setup

    setup(experiment, tracking_uri)
    with mlflow.start_run(run_name=f"compare {metric}", tags={"kind": "comparison"}) as run:
        for f in files:
            mlflow.log_artifact(str(f), "comparison")
    return run.info.run_id
