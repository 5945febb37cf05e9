"""``recsys compare`` and ``recsys sweep``: experiments across runs."""

from __future__ import annotations

import argparse

from recsys.cli.common import add_job, build_config


def add_compare(sub: argparse._SubParsersAction) -> None:
    from pipelines.compare import CompareConfig

    add_job(
        sub,
        "compare",
        CompareConfig,
        _run_compare,
        help="compare training runs: metrics with CIs and paired significance tests",
        description="Print one row per finished training run of an experiment: the params "
        "that differ, the metric with its 95% CI, training time and, against the "
        "baseline (default: the first run), the difference with a paired bootstrap "
        "p-value over per-user values, Holm-corrected across runs. Runs evaluated on "
        "different data (dataset version, split, protocol) are refused unless "
        "--allow-mixed. With --output, also writes comparison.csv, comparison.md and "
        "charts (comparison.png: metric with CI bars per run; learning_curves.png; "
        "metric_vs_time.png; with --x, frontier.png: the metric against a second one, "
        "e.g. ild_at_10, with the Pareto front) and logs them as artifacts of a "
        "comparison run.",
        epilog="Example: recsys compare --experiment ml-100k --metric test_ndcg_at_10; "
        "recsys compare --experiment ml-100k-rerank --x ild_at_10 --output data/compare.",
    )


def _run_compare(args: argparse.Namespace) -> int:
    from pipelines.compare import CompareConfig, run

    cfg = build_config(CompareConfig, args)
    out = run(cfg)
    print(out["markdown"])
    if out["files"]:
        print(f"wrote {', '.join(f.name for f in out['files'])} to {cfg.output}")
    if out.get("run_id"):
        print(f"logged them as artifacts of comparison run {out['run_id']}")
    return 0


def add_sweep(sub: argparse._SubParsersAction) -> None:
    from pipelines.sweep import SweepConfig

    add_job(
        sub,
        "sweep",
        SweepConfig,
        _run_sweep,
        help="train a grid of configs as child runs of one MLflow run",
        description="Run every combination of the --grid values (times --seeds), or "
        "--random N of them, one after another, each a full training run logged as a "
        "child of one parent run. A failed child is recorded as failed and the sweep goes "
        "on; running the same sweep again skips the children already finished.",
        epilog="Example: recsys sweep --data data/prepared/ml-100k --experiment ml-100k "
        "--grid loss=ce,bce max_len=50,200 --seeds 1,2. Then: recsys compare "
        "--experiment ml-100k.",
    )


def _run_sweep(args: argparse.Namespace) -> int:
    from pipelines.sweep import SweepConfig, run

    out = run(build_config(SweepConfig, args))
    print(f"parent run: {out['parent_run_id']}")
    for child in out["children"]:
        print("  " + ", ".join(f"{k}={v}" for k, v in child.items()))
    return 0 if out["failed"] < len(out["children"]) else 1
