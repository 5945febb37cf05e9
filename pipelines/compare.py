"""Compare job: the finished training runs of an experiment, with CIs and paired tests.

Run it as ``recsys compare --experiment NAME [--x ild_at_10] [--output DIR]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.comparison import HIGHER_IS_BETTER, compare, x_metric_name
from recsys.comparison_report import log_report, to_markdown, write_report
from recsys.options import option
from recsys.tracking import URI_HELP


@dataclass
class CompareConfig:
    """Which runs to compare, on what, and where the report goes."""

    experiment: str = option(help="MLflow experiment")
    runs: list[str] | None = option(
        None, "run ids (or prefixes) to compare", default_text="all finished runs"
    )
    baseline: str | None = option(
        None, "run id (or prefix) to test against", default_text="the first run"
    )
    metric: str = option("test_ndcg_at_10", "metric to compare")
    x: str | None = option(
        None,
        "second metric to plot --metric against in frontier.png, e.g. ild_at_10, "
        "exposure_gini_at_10, calibration_kl_at_10 (stage taken from --metric); for its "
        "Pareto front higher is better, but lower for "
        + ", ".join(k for k, higher in HIGHER_IS_BETTER.items() if not higher),
        metavar="METRIC",
    )
    output: str | None = option(None, "folder for comparison.csv, .md and .png charts")
    allow_mixed: bool = option(False, "compare runs on different data or protocols anyway")
    pool_seeds: bool = option(
        False,
        "one row per setting: runs that differ only in their seed are averaged and tested "
        "together, each paired with the baseline setting's run of the same seed",
    )
    log: bool = option(True, "log the report as artifacts of a comparison run (with --output)")
    tracking_uri: str | None = option(None, "MLflow tracking URI", default_text=URI_HELP)


def run(cfg: CompareConfig) -> dict[str, Any]:
    """Compare, write and log the report; return the table, its Markdown and the files."""
    x = x_metric_name(cfg.x, cfg.metric) if cfg.x else None
    table = compare(
        cfg.experiment,
        runs=cfg.runs,
        baseline=cfg.baseline,
        metric=cfg.metric,
        allow_mixed=cfg.allow_mixed,
        tracking_uri=cfg.tracking_uri,
        x=x,
        pool_seeds=cfg.pool_seeds,
    )
    out: dict[str, Any] = {"table": table, "markdown": to_markdown(table, cfg.metric, x)}
    files: list[Path] = []
    if cfg.output:
        files = write_report(table, cfg.metric, cfg.output, cfg.tracking_uri, x)
        if cfg.log:
            out["run_id"] = log_report(cfg.experiment, files, cfg.metric, cfg.tracking_uri, x)
    out["files"] = files
    return out
