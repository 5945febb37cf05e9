"""``recsys compare`` and ``recsys sweep``: experiments across runs."""

from __future__ import annotations

import argparse


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare training runs: metrics with CIs and paired significance tests",
        description="Print one row per finished training run of an experiment: the params "
        "that differ, the metric with its 95%% CI, training time and, against the "
        "baseline (default: the first run), the difference with a paired bootstrap "
        "p-value over per-user values, Holm-corrected across runs. Runs evaluated on "
        "different data (dataset version, split, protocol) are refused unless "
        "--allow-mixed. With --output, also writes comparison.csv, comparison.md and "
        "charts (comparison.png: metric with CI bars per run; learning_curves.png; "
        "metric_vs_time.png) and logs them as artifacts of a comparison run.",
        epilog="Example: recsys compare --experiment ml-100k --metric test_ndcg_at_10",
    )
    a = p.add_argument
    a("--experiment", required=True, help="MLflow experiment")
    a("--runs", nargs="+", help="run ids (or prefixes) to compare (default: all finished)")
    a("--baseline", help="run id (or prefix) to test against (default: the first run)")
    a("--metric", default="test_ndcg_at_10", help="metric (default test_ndcg_at_10)")
    a("--output", help="folder for comparison.csv, .md and .png")
    a("--allow-mixed", dest="allow_mixed", action="store_true", help="compare anyway")
    a("--no-log", dest="no_log", action="store_true", help="do not log the report to MLflow")
    a("--tracking-uri", dest="tracking_uri", help="MLflow tracking URI")
    p.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from recsys.comparison import compare, log_report, to_markdown, write_report

    table = compare(
        args.experiment,
        runs=args.runs,
        baseline=args.baseline,
        metric=args.metric,
        allow_mixed=args.allow_mixed,
        tracking_uri=args.tracking_uri,
    )
    print(to_markdown(table, args.metric))
    if args.output:
        files = write_report(table, args.metric, args.output, args.tracking_uri)
        print(f"wrote {', '.join(f.name for f in files)} to {args.output}")
        if not args.no_log:
            run_id = log_report(args.experiment, files, args.metric, args.tracking_uri)
            print(f"logged them as artifacts of comparison run {run_id}")
    return 0


def add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="train a grid of configs as child runs of one MLflow run",
        description="Run every combination of the --grid values (times --seeds), or "
        "--random N of them, one after another, each a full training run logged as a "
        "child of one parent run. A failed child is recorded as failed and the sweep goes "
        "on; running the same sweep again skips the children already finished.",
        epilog="Example: recsys sweep --data data/prepared/ml-100k --experiment ml-100k "
        "--grid loss=ce,bce max_len=50,200 --seeds 1,2. Then: recsys compare "
        "--experiment ml-100k",
    )
    a = p.add_argument
    a("--data", required=True, help="prepared-dataset folder")
    a("--experiment", required=True, help="MLflow experiment")
    a("--grid", nargs="+", required=True, help="NAME=V1,V2 per swept training option")
    a("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[], help="e.g. 1,2")
    a("--random", type=int, default=0, help="run N random combinations (default: all)")
    a("--set", nargs="*", default=[], help="NAME=VALUE training options for every child")
    a("--tracking-uri", dest="tracking_uri", help="MLflow tracking URI")
    p.set_defaults(handler=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    from pipelines.sweep import SweepConfig, run

    out = run(
        SweepConfig(
            data=args.data,
            experiment=args.experiment,
            grid=args.grid,
            seeds=args.seeds,
            random=args.random,
            set=args.set,
            tracking_uri=args.tracking_uri,
        )
    )
    print(f"parent run: {out['parent_run_id']}")
    for child in out["children"]:
        print("  " + ", ".join(f"{k}={v}" for k, v in child.items()))
    return 0 if out["failed"] < len(out["children"]) else 1
