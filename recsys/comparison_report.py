"""The report of a comparison (:func:`recsys.comparison.compare`'s table): Markdown, CSV and
PNG charts in a folder, and a comparison run in MLflow that keeps them as artifacts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.comparison import higher_is_better, pareto_front

REPORT_FILES = (
    "comparison.csv",
    "comparison.md",
    "comparison.png",
    "learning_curves.png",
    "metric_vs_time.png",
    "frontier.png",  # only with a second metric x
)


def to_markdown(table: pl.DataFrame, metric: str, x: str | None = None) -> str:
    """A Markdown table of :func:`compare`'s result (with ``x``: its column too)."""

    def f(v: Any, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    def with_ci(value: float, low: float | None, high: float | None) -> str:
        if low is None and high is None:
            return f"{value:.4f}"
        return f"{value:.4f} ({f(low, '.4f')}-{f(high, '.4f')})"

    def params(r: dict[str, Any]) -> str:
        # Pooled rows (compare(..., pool_seeds=True)) say which seeds they average.
        return f"{r['params']} (seeds {r['seeds']})" if r.get("seeds") else r["params"]

    x_head, x_rule = (f" {x} (95% CI) |", " --- |") if x else ("", "")
    lines = [
        f"| run | name | params | {metric} (95% CI) |{x_head} train s | diff vs baseline | p "
        "| p (Holm) |",
        f"| --- | --- | --- | --- |{x_rule} --- | --- | --- | --- |",
    ]
    for r in table.iter_rows(named=True):
        mark = " (baseline)" if r["baseline"] else (" *" if r["significant"] else "")
        # Pooled rows (several seeds) have no CI: the value alone.
        ci = (
            f" ({f(r['ci_low'], '.4f')}-{f(r['ci_high'], '.4f')})"
            if r["ci_low"] is not None or r["ci_high"] is not None
            else ""
        )
        x_cell = f" {with_ci(r['x'], r['x_ci_low'], r['x_ci_high'])} |" if x else ""
        lines.append(
            f"| {r['run']}{mark} | {r['name']} | {params(r)} | {r[metric]:.4f}{ci} |"
            f"{x_cell} {f(r['train_seconds'], '.1f')} | {r['diff']:+.4f} | "
            f"{f(r['p_value'], '.4f')} | {f(r['p_holm'], '.4f')} |"
        )
    lines.append("")
    lines.append("* significant at 0.05 after Holm correction (paired bootstrap over users)")
    return "\n".join(lines)


def write_report(
    table: pl.DataFrame,
    metric: str,
    folder: str | Path,
    tracking_uri: str | None = None,
    x: str | None = None,
) -> list[Path]:
    """Write the comparison as CSV, Markdown and PNG charts into ``folder``.

    Charts: ``comparison.png`` (the metric with CI bars per run), ``learning_curves.png``
    (validation NDCG@10 per epoch, runs overlaid; none for runs without a learning curve,
    such as ``reranked`` ones), ``metric_vs_time.png`` and, with a second metric ``x``
    (its full name, as in :func:`x_metric_name`; the table from ``compare(..., x=x)``),
    ``frontier.png``: the metric against ``x`` with the Pareto-optimal runs joined.

    Returns
    -------
    list of Path
        The files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    from recsys.io import atomic_file, check_output_folder
    from recsys.tracking import resolve_uri

    if x and "x" not in table.columns:
        raise ValueError(f"x={x!r} but the table has no 'x' column; expected compare(..., x={x!r})")
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
        tmp.write_text(to_markdown(table, metric, x) + "\n")

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
        points = learning_curve(client, row["run_id"])
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", label=f"{row['run']} {row['name']}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NDCG@10")
    ax.set_title("learning curves")
    if ax.lines:
        ax.legend(fontsize=7)
    save(fig, "learning_curves.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    # Runs that did not train (reranked ones) have no training time: left out, not put at 0.
    timed = table.filter(pl.col("train_seconds").is_not_null())
    seconds = timed["train_seconds"].to_numpy()
    ax.scatter(seconds, timed[metric].to_numpy())
    for t, y, name in zip(seconds, timed[metric].to_list(), timed["run"].to_list(), strict=True):
        ax.annotate(name, (t, y), fontsize=7)
    ax.set_xlabel("training seconds")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs training time")
    save(fig, "metric_vs_time.png")

    written = [n for n in REPORT_FILES if n != "frontier.png"]
    if x:
        save(frontier_figure(table, metric, x), "frontier.png")
        written.append("frontier.png")
    else:
        # A frontier from an earlier report (the folder is checked to be ours) would no
        # longer match the table beside it.
        (folder / "frontier.png").unlink(missing_ok=True)
    return [folder / n for n in written]


def learning_curve(client: Any, run_id: str) -> list[tuple[int, float]]:
    """A run's validation NDCG@10 per epoch, as ``(epoch, value)``; empty for a run that
    did not train (kind ``reranked``) or logged none.

    Parameters
    ----------
    client : mlflow.MlflowClient
        The tracking client.
    run_id : str
        The run.
    """
    # A reranked run evaluates another run's model: it has no epochs of its own, even if
    # it logged a validation metric.
    if client.get_run(run_id).data.tags.get("kind") == "reranked":
        return []
    history = client.get_metric_history(run_id, "valid_ndcg_at_10")
    # The best model's final validation is logged again at the last step: keep each step's
    # first value, the epoch's own.
    first: dict[int, float] = {}
    for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
        if m.step > 0:
            first.setdefault(m.step, m.value)
    return sorted(first.items())


def _short(text: str, limit: int = 40) -> str:
    # Dotted names keep their last part (rerank.diversity.lambda=0.7 → lambda=0.7), so
    # the values that differ fit beside the point.
    text = re.sub(r"\b[\w]+\.(?=[\w.]*=)", "", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def frontier_figure(table: pl.DataFrame, metric: str, x: str) -> Any:
    """The trade-off chart: ``metric`` (y) against ``x`` per run, CIs as error bars, each
    point named by its differing params (else its run), the Pareto-optimal runs joined by a line."""
    import matplotlib.pyplot as plt

    xs, ys = table["x"].to_numpy(), table[metric].to_numpy()
    x_higher = higher_is_better(x)
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(xs, ys, color="tab:blue", zorder=3)
    for r in table.iter_rows(named=True):
        # Error bars only where a CI was logged: exposure_gini, for one, has none.
        errs = {}
        for axis, value, low, high in (
            ("xerr", r["x"], r["x_ci_low"], r["x_ci_high"]),
            ("yerr", r[metric], r["ci_low"], r["ci_high"]),
        ):
            if low is not None and high is not None:
                errs[axis] = [[max(value - low, 0.0)], [max(high - value, 0.0)]]
        if errs:
            ax.errorbar([r["x"]], [r[metric]], **errs, fmt="none", ecolor="gray", capsize=3)
        label = _short(r["params"]) if r["params"] else r["run"]
        ax.annotate(
            label, (r["x"], r[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    front = pareto_front(xs, ys, x_higher)
    ax.plot(xs[front], ys[front], color="tab:red", label="Pareto front")
    ax.set_xlabel(f"{x} ({'higher' if x_higher else 'lower'} is better)")
    ax.set_ylabel(f"{metric} (higher is better)")
    ax.set_title(f"{metric} vs {x}")
    ax.margins(x=0.25, y=0.1)  # room for the labels right of the rightmost points
    ax.legend(fontsize=7)
    return fig


def log_report(
    experiment: str,
    files: list[Path],
    metric: str,
    tracking_uri: str | None,
    x: str | None = None,
) -> str:
    """Log the report files as artifacts of a new comparison run; return its id."""
    import mlflow

    from recsys.tracking import setup

    setup(experiment, tracking_uri)
    name = f"compare {metric}" + (f" vs {x}" if x else "")
    with mlflow.start_run(run_name=name, tags={"kind": "comparison"}) as run:
        for f in files:
            mlflow.log_artifact(str(f), "comparison")
    return run.info.run_id
