"""A parameter grid of training options over prepared datasets, in parallel processes.

    python benchmarks/grid.py --data data/prepared/beauty data/prepared/ml-100k \
        --grid dropout=0.2,0.5 lr=0.001,0.002 --seeds 0 --jobs 2 --out grid.jsonl

Each cell (dataset x options x seed) trains through the library (no MLflow), is chosen by
its validation NDCG@10 (early stopping) and is evaluated once on the test split; one JSON
line per cell goes to ``--out`` as it finishes, and a table sorted by validation NDCG@10
is printed per dataset at the end. Test numbers are printed for the record only: pick
settings by the ``valid`` column. Cells already in ``--out`` are not run again, so a
killed grid continues where it stopped.

Protocol: full ranking, the user's history excluded (the default), HR@10 and NDCG@10.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_quietly(data: str, options: dict, seed: int, threads: int, source: str):
    """Train one cell through the library (no MLflow, no progress bars, warnings off).

    Returns the :class:`~recsys.training.fit.Fitted` model, its resolved config, the
    dataset and the training seconds (benchmarks/beauty_time.py uses it too).
    """
    import logging

    logging.disable(logging.WARNING)
    from recsys.data.dataset import SequenceData
    from recsys.options import from_flat
    from recsys.training.fit import FitConfig, fit, make_trainer, with_data_defaults

    values = {"progress": False, "threads": threads, **options, "seed": seed}
    cfg = from_flat(FitConfig, values, source=source)
    ds = SequenceData.load(data)
    t0 = time.perf_counter()
    fitted = fit(cfg, ds, make_trainer(cfg, ds))
    seconds = time.perf_counter() - t0
    resolved, _ = with_data_defaults(cfg, ds)  # the history setting, as training chose it
    return fitted, resolved, ds, seconds


def _cell(data: str, options: dict, seed: int, threads: int) -> dict:
    from recsys.evaluation.evaluate import evaluate
    from recsys.training.fit import eval_config

    t0 = time.perf_counter()
    fitted, resolved, ds, _ = train_quietly(data, options, seed, threads, "grid")
    test = evaluate(fitted.scorer, ds, "test", eval_config(resolved, ks=(10,)))
    valid = max((r.get("valid_ndcg_at_10", -1.0) for r in fitted.history), default=float("nan"))
    return {
        "data": Path(data).name,
        "options": options,
        "seed": seed,
        "valid_ndcg_at_10": valid,
        "test_ndcg_at_10": test.means["ndcg@10"],
        "test_hr_at_10": test.means["hr@10"],
        "best_epoch": fitted.summary.get("best_epoch"),
        "seconds": time.perf_counter() - t0,
        # validation NDCG@10 per epoch, to see when a setting levels off
        "curve": [round(r.get("valid_ndcg_at_10", float("nan")), 5) for r in fitted.history],
    }


def _grid(specs: list[str], grid_file: str | None) -> list[dict]:
    from sklearn.model_selection import ParameterGrid

    from recsys.options import parse_value
    from recsys.training.fit import FitConfig

    grids: list[dict[str, list]] = [{}]
    if grid_file:  # scikit-learn's list of grids: [{"lr": [0.001], ...}, ...]
        grids = json.loads(Path(grid_file).read_text())
    for spec in specs:
        key, _, values = spec.partition("=")
        for g in grids:
            g[key] = [parse_value(FitConfig, key, v) for v in values.split(",")]
    for g in grids:
        for key, values in g.items():
            g[key] = [parse_value(FitConfig, key, str(v)) for v in values]
    return list(ParameterGrid(grids))


def _key(data: str, options: dict, seed: int) -> str:
    return json.dumps([Path(data).name, options, seed], sort_keys=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", required=True, help="prepared dataset folders")
    p.add_argument("--grid", nargs="*", default=[], help="KEY=V1,V2,... (training options)")
    p.add_argument("--grid-file", help="JSON list of grids (scikit-learn's ParameterGrid)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--jobs", type=int, default=1, help="cells trained at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    p.add_argument("--out", default="grid.jsonl", help="JSON lines, one per finished cell")
    args = p.parse_args()
    out = Path(args.out)
    done = {}
    if out.is_file():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            done[_key(row["data"], row["options"], row["seed"])] = row
    cells = [
        (d, o, s)
        for d in args.data
        for o in _grid(args.grid, args.grid_file)
        for s in args.seeds
        if _key(d, o, s) not in done
    ]
    print(f"{len(cells)} cells to run ({len(done)} already in {out})", flush=True)
    rows = list(done.values())
    ctx = multiprocessing.get_context("spawn")  # no CUDA state forked into cells
    with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool, out.open("a") as f:
        futures = {pool.submit(_cell, d, o, s, args.threads): (d, o, s) for d, o, s in cells}
        for fut in as_completed(futures):
            d, o, s = futures[fut]
            try:
                row = fut.result()
            except Exception as e:  # one failed cell must not stop the grid
                print(f"FAILED {Path(d).name} {o} seed {s}: {type(e).__name__}: {e}", flush=True)
                continue
            rows.append(row)
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
            print(_line(row), flush=True)
    for name in sorted({r["data"] for r in rows}):
        print(f"\n{name}: full ranking, history excluded; sorted by validation NDCG@10")
        print(f"{'valid':>7s} {'test':>7s} {'test HR':>7s} {'epoch':>5s} {'s':>6s}  options")
        for r in sorted(
            (r for r in rows if r["data"] == name), key=lambda r: -r["valid_ndcg_at_10"]
        ):
            print(_line(r, with_data=False))
    return 0


def _line(r: dict, with_data: bool = True) -> str:
    opts = " ".join(f"{k}={v}" for k, v in sorted(r["options"].items())) or "(defaults)"
    head = f"{r['data']:>10s} " if with_data else ""
    return (
        f"{head}{r['valid_ndcg_at_10']:7.4f} {r['test_ndcg_at_10']:7.4f} "
        f"{r['test_hr_at_10']:7.4f} {r['best_epoch']!s:>5s} {r['seconds']:6.0f}  "
        f"{opts} seed={r['seed']}"
    )


if __name__ == "__main__":
    sys.exit(main())
