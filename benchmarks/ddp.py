"""Data-parallel training throughput: 2 processes of 1 thread against 1 process of 2.

    python benchmarks/ddp.py --data data/prepared/ml-100k            # 4 epochs each
    python benchmarks/ddp.py --data DIR --epochs 6 --bandwidth-gbit 25 -- --max-len 50

Runs ``recsys train`` twice on the same prepared dataset with the same options (every
epoch runs: no early stopping), once as 1 process with ``--threads 2`` and once as
``--nproc 2 --threads 1`` (gloo), into a throw-away MLflow store, and prints the
training sequences/second of each (the median over the epochs after the first; the
validation after each epoch is not counted), and their ratio. Options after ``--`` go to
both trainings.

What a 2-core machine can show, honestly: both runs share the same two cores, so there is
nothing to gain but what one process with 2 threads leaves idle (PyTorch's intra-op
threads scale poorly on small tensors), and the data-parallel run pays for exchanging the
whole gradient every step (over loopback) and for half-size batches per process. A ratio
near or below 1 is the expected answer here; it measures the overhead, not the scaling.

What it predicts for N machines is a model, printed below the measurement: one step of
the global batch B costs the 1-process compute time t (measured here) split N ways, plus
a ring all-reduce of the gradient, 2 (N - 1) / N x its bytes over the network
(``--bandwidth-gbit``, 10 by default); sequences/s ~ B / (t / N + all-reduce). It assumes
each machine computes as fast as this one with its cores, and ignores latency and the
lower efficiency of B / N-user batches; for many machines, raise ``--batch-size``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _train(data: str, root: Path, name: str, flags: list[str]) -> list[float]:
    """Sequences/s of each epoch of one ``recsys train`` run (read back from MLflow)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    cmd = [
        sys.executable, "-m", "recsys.cli", "--log-level", "WARNING", "train",
        "--data", data, "--output", str(root / name), "--tracking-uri", uri,
        "--experiment", "ddp-bench", "--register-name", "ddp-bench", "--run-name", name,
        "--no-progress", "--eval-ks", "10", *flags,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    run_id = json.loads((root / name / "run.json").read_text())["run_id"]
    history = MlflowClient(uri).get_metric_history(run_id, "sequences_per_second")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def _gradient_bytes(data: str, flags: list[str]) -> tuple[int, int]:
    """Bytes of one gradient (float32) and the global batch size, for these options."""
    import dataclasses

    from pipelines.train import TrainJobConfig
    from recsys.cli.common import build_config
    from recsys.cli.model import add_train
    from recsys.data.dataset import SequenceData
    from recsys.models.sasrec import SASRec
    from recsys.training.fit import with_data_defaults

    parser = argparse.ArgumentParser()
    add_train(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--data", data, *flags])
    cfg = build_config(TrainJobConfig, args)
    d = SequenceData.load(data)
    fit_cfg, _ = with_data_defaults(cfg.fit, d)
    model = SASRec(dataclasses.replace(fit_cfg.sasrec, num_items=d.num_items))
    return 4 * sum(p.numel() for p in model.parameters()), fit_cfg.train.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="prepared-dataset folder")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (default 4)")
    parser.add_argument(
        "--bandwidth-gbit", type=float, default=10.0, help="network for the N-machine model"
    )
    parser.add_argument("train_flags", nargs="*", help="more recsys train options (after --)")
    a = parser.parse_args()
    common = ["--epochs", str(a.epochs), "--patience", str(a.epochs), *a.train_flags]
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        root = Path(tmp)
        one = _train(a.data, root, "1proc-2threads", [*common, "--threads", "2"])
        two = _train(a.data, root, "2proc-1thread", [*common, "--threads", "1", "--nproc", "2"])
    # The first epoch warms up (allocations, the process group's first exchanges).
    rate1 = statistics.median(one[1:] or one)
    rate2 = statistics.median(two[1:] or two)
    print(f"data: {a.data}, {a.epochs} epochs, options: {' '.join(a.train_flags) or 'defaults'}")
    print(f"{'setup':28s} {'sequences/s':>12s}   per epoch")
    print(f"{'1 process x 2 threads':28s} {rate1:12.0f}   {' '.join(f'{r:.0f}' for r in one)}")
    print(
        f"{'2 processes x 1 thread (DDP)':28s} {rate2:12.0f}   {' '.join(f'{r:.0f}' for r in two)}"
    )
    print(f"ratio DDP / 1 process: {rate2 / rate1:.2f} (same 2 cores: overhead, not scaling)")

    grad, batch = _gradient_bytes(a.data, a.train_flags)
    step = batch / rate1  # seconds per global batch in one process
    bandwidth = a.bandwidth_gbit * 1e9 / 8
    print(
        f"\nmodel for N machines like this one: gradient {grad / 1e6:.2f} MB, batch {batch}, "
        f"{step * 1000:.1f} ms per step here, {a.bandwidth_gbit:g} Gbit/s network"
    )
    head = ("N", "compute ms", "all-reduce ms", "sequences/s", "speed-up")
    print(" ".join(f"{h:>{w}s}" for h, w in zip(head, (3, 11, 14, 12, 9), strict=True)))
    for n in (1, 2, 4, 8, 16):
        comm = 2 * (n - 1) / n * grad / bandwidth
        rate = batch / (step / n + comm)
        print(
            f"{n:3d} {step / n * 1000:11.1f} {comm * 1000:14.1f} {rate:12.0f} {rate / rate1:9.2f}"
        )


if __name__ == "__main__":
    main()
