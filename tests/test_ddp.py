"""Data-parallel training with real processes (gloo on the CPU): the gradient of N ranks
is the gradient of the whole batch, a 2-process `recsys train --nproc 2` tracks, registers
and stops like one process, and a rank that dies ends the job in one line, resumably."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recsys.data.dataset import SequenceData
from recsys.models.sasrec import SASRecConfig
from recsys.training.batches import target_counts, training_batch
from recsys.training.config import TrainConfig
from recsys.training.distributed import (
    LOST,
    SINGLE,
    TEST_DIE_AT,
    World,
    describe_failure,
    shard,
)
from recsys.training.losses import LOSSES
from recsys.training.trainer import Trainer

MAX_LEN = 10


def _step_trainer(path: Path, world: World) -> Trainer:
    data = SequenceData.load(path)
    # No dropout and a loss without sampling: the only randomness is the initial weights,
    # the same on every rank for the seed. float32 logits: bfloat16 would round each
    # rank's share apart from the whole batch.
    cfg = TrainConfig(
        loss="ce", batch_size=8, lr=1e-2, grad_clip=0.0, threads=1, logits_precision="fp32"
    )
    mcfg = SASRecConfig(num_items=data.num_items, max_len=MAX_LEN, d_model=16, dropout=0.0)
    return Trainer(mcfg, cfg, data, progress=False, world=world)


def _steps(trainer: Trainer, batches: list[list[int]]) -> list[dict[str, torch.Tensor]]:
    """Train one step per batch; after each, the gradients and the weights.

    Plain SGD replaces AdamW here: Adam divides each gradient by its own magnitude, so a
    weight whose true gradient is 0 (the attention's key bias: softmax ignores it) moves
    by the whole learning rate on float rounding alone, in one process as in two. The
    gradients, which DistributedDataParallel averages, are what is compared.
    """
    trainer.opt = torch.optim.SGD(trainer.model.parameters(), lr=0.5)
    _, start, stop = trainer.data.train_ranges()
    out = []
    for batch in batches:
        trainer.train_step(np.array(batch), start, stop)
        out.append({k: p.grad.clone() for k, p in trainer.model.named_parameters()})
        out.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    return out


def _gradient(trainer: Trainer, users: np.ndarray, start, stop) -> torch.Tensor:
    """The gradient (flat) of the mean loss of ``users`` at the trainer's weights."""
    inputs, targets = training_batch(trainer.data.items, start[users], stop[users], MAX_LEN)
    trainer.model.zero_grad()
    trainer.objective(inputs, targets).backward()
    return torch.cat([p.grad.flatten() for p in trainer.model.parameters()])


def _rank_steps(rank: int, port: int, path: Path, batches: list[list[int]], out: Path) -> None:
    """One of 2 gloo processes (torch.multiprocessing.spawn's target)."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        trainer = _step_trainer(path, World(rank=rank, size=2, local_rank=rank, local_size=2))
        torch.save(_steps(trainer, batches), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_take_exactly_the_step_of_the_whole_batch(
    tmp_path, make_prepared, successor_sequences, free_port
):
    import torch.multiprocessing as mp

    path = make_prepared(tmp_path / "d", successor_sequences(40, 30))
    _, start, stop = SequenceData.load(path).train_ranges()
    by_length = np.argsort(stop - start, kind="stable")
    short, long = by_length[:6].tolist(), by_length[-6:].tolist()
    # Rank 0 takes every other user from the first, rank 1 from the second: the halves
    # of the first two batches hold different numbers of target positions (short users
    # against long ones, 2 users against 1); the last leaves rank 1 with no user at all.
    batches = [
        [short[0], long[0], short[1], long[1]],
        [long[2], short[2], long[3]],
        [short[3]],
    ]
    for batch in batches[:2]:
        halves = [shard(np.array(batch), World(rank=r, size=2)) for r in (0, 1)]
        counts = [int(target_counts(start[h], stop[h], MAX_LEN).sum()) for h in halves]
        assert counts[0] != counts[1], counts
    assert len(shard(np.array(batches[2]), World(rank=1, size=2))) == 0
    assert shard(np.array(batches[0]), World(rank=0, size=2)).tolist() == batches[0][::2]

    # The test can fail: a plain average of the halves' mean losses (what
    # DistributedDataParallel computes of unweighted losses) is another gradient.
    trainer = _step_trainer(path, SINGLE)
    for batch in batches[:2]:
        halves = [shard(np.array(batch), World(rank=r, size=2)) for r in (0, 1)]
        naive = sum(_gradient(trainer, h, start, stop) for h in halves) / 2
        whole = _gradient(trainer, np.array(batch), start, stop)
        assert (naive - whole).abs().max() > 1e-2 * whole.abs().max()

    mp.start_processes(
        _rank_steps,
        args=(free_port(), path, batches, tmp_path),
        nprocs=2,
        start_method="spawn",
    )
    alone = _steps(_step_trainer(path, SINGLE), batches)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for got in ranks:
        for i, (expected, actual) in enumerate(zip(alone, got, strict=True)):
            for name, value in expected.items():
                # Gradients and weights agree to float32 rounding (the order of sums):
                # within 2e-6 of the tensor's largest magnitude.
                scale = value.abs().max().clamp(min=1e-12)
                torch.testing.assert_close(
                    actual[name] / scale, value / scale, rtol=0, atol=2e-6,
                    msg=lambda m, i=i, n=name: f"step {i // 2}, {n}: {m}",
                )  # fmt: skip
    # Every rank holds the same weights, bit for bit (the same averaged gradient).
    for name, value in ranks[0][-1].items():
        assert torch.equal(value, ranks[1][-1][name]), name


def _rank_every_loss(rank: int, port: int, path: Path, out: Path) -> None:
    """Two steps of every loss, tied and untied embeddings, in one of 2 gloo processes."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        data = SequenceData.load(path)
        _, start, stop = data.train_ranges()
        world = World(rank=rank, size=2, local_rank=rank, local_size=2)
        weights = {}
        for loss in LOSSES:
            for tie in (True, False):
                cfg = TrainConfig(loss=loss, lr=1e-3, batch_size=8, num_negatives=5, threads=1)
                mcfg = SASRecConfig(
                    num_items=data.num_items, max_len=MAX_LEN, d_model=8, dropout=0.2,
                    tie_embeddings=tie,
                )  # fmt: skip
                trainer = Trainer(mcfg, cfg, data, progress=False, world=world)
                trainer._reseed()
                for batch in (np.arange(5), np.arange(5, 8)):
                    assert np.isfinite(trainer.train_step(batch, start, stop))
                weights[f"{loss}-{tie}"] = trainer.model.state_dict()
        torch.save(weights, out / f"losses{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_every_loss_trains_data_parallel(tmp_path, make_prepared, successor_sequences, free_port):
    # Every parameter a loss reads is inside DistributedDataParallel's forward (else it
    # would stop at the second step), and the ranks stay identical while each draws its
    # own dropout and negatives.
    import torch.multiprocessing as mp

    path = make_prepared(tmp_path / "d", successor_sequences(20, 30))
    mp.start_processes(
        _rank_every_loss, args=(free_port(), path, tmp_path), nprocs=2, start_method="spawn"
    )
    ranks = [torch.load(tmp_path / f"losses{r}.pt", weights_only=True) for r in (0, 1)]
    assert len(ranks[0]) == 2 * len(LOSSES)
    for key, state in ranks[0].items():
        for name, value in state.items():
            assert torch.equal(value, ranks[1][key][name]), (key, name)


def test_target_counts_are_the_batch_positions(make_prepared, successor_sequences, tmp_path):
    data = SequenceData.load(make_prepared(tmp_path / "d", successor_sequences(30, 20)))
    _, start, stop = data.train_ranges()
    for max_len in (3, 10, 50):
        _, targets = training_batch(data.items, start, stop, max_len)
        counts = target_counts(start, stop, max_len)
        assert (targets != 0).sum(1).tolist() == counts.tolist()


def test_the_failure_line_names_the_rank_that_failed_first():
    def failure(exitcode, message="<NONE>", timestamp=0, pid=7):
        def name():
            import signal

            return signal.Signals(-exitcode).name

        return SimpleNamespace(
            exitcode=exitcode,
            pid=pid,
            timestamp=timestamp,
            signal_name=name,
            error_file_data={"message": message},
        )

    # Rank 0 noticed first that rank 1 was gone; the cause is rank 1's death.
    lost = failure(2, f"rank 0: {LOST} (gloo: Connection closed by peer); the job stops", 1)
    line = describe_failure({0: lost, 1: failure(-9, timestamp=2)})
    assert line == "training process rank 1 died (SIGKILL, pid 7); the job stopped"
    # torchrun's SIGTERM to the survivors is not a cause either.
    line = describe_failure({0: failure(-15), 1: failure(2, "the ce loss became nan", 5)})
    assert line == "training process rank 1 failed: the ce loss became nan; the job stopped"
    assert "status 1 (its error is printed above)" in describe_failure({0: failure(1)})


def test_several_processes_only_from_the_launcher(tmp_path, make_prepared, successor_sequences):
    from pipelines.train import TrainJobConfig, run

    path = make_prepared(tmp_path / "d", successor_sequences(20, 10))
    with pytest.raises(ValueError, match="nproc=2: several training processes are started"):
        run(TrainJobConfig(data=str(path), nproc=2))
    with pytest.raises(ValueError, match="nproc=0: expected at least 1"):
        TrainJobConfig(data=str(path), nproc=0)


# -- the train job in 2 processes (torchrun) -----------------------------------------------

FLAGS = [
    "--max-len", "16", "--d-model", "16", "--batch-size", "32", "--loss", "ce",
    "--dropout", "0.1", "--lr", "0.01", "--epochs", "12", "--patience", "2",
    "--no-progress", "--eval-ks", "5", "10",
]  # fmt: skip


def _recsys(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300):
    environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-m", "recsys.cli", *args],
        cwd=cwd,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def half_learnable(tmp_path_factory, make_prepared, successor_sequences) -> Path:
    """150 users of successor data and 150 of random items: validation NDCG@10 levels off
    near 0.58 within a few epochs (early stopping), well below 1, where a worse model
    would show."""
    rng = np.random.default_rng(1)
    noise = [rng.integers(1, 31, rng.integers(8, 16)).tolist() for _ in range(150)]
    return make_prepared(tmp_path_factory.mktemp("ddp") / "d", successor_sequences(150, 30) + noise)


def _client(cwd: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}")


@pytest.mark.slow  # a torchrun job of 2 processes and a 1-process job
def test_two_processes_train_track_and_stop_like_one(half_learnable, tmp_path, line_of):
    from recsys import Recommender

    (tmp_path / "one").mkdir()
    alone = _recsys(["train", "--data", str(half_learnable), *FLAGS], tmp_path / "one")
    assert alone.returncode == 0, alone.stderr[-3000:]
    p = _recsys(["train", "--data", str(half_learnable), *FLAGS, "--nproc", "2"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]

    client = _client(tmp_path)
    run_id = line_of(p.stdout, "run_id")
    run = client.get_run(run_id)
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
    assert run.data.params["nproc"] == "2"
    name = line_of(p.stdout, "registered_model").split("/")[1]  # models:/NAME/VERSION
    assert len(client.search_model_versions(f"name='{name}'")) == 1
    rec = Recommender.load(tmp_path / line_of(p.stdout, "bundle"))
    assert len(rec.recommend(["1"], k=5)) == 5
    # Rank 1 stopped after the same epoch as rank 0 (early stopping, before --epochs).
    epochs = int(run.data.metrics["epochs_run"])
    assert epochs < 12
    assert f"rank 1 of 2: stopped after epoch {epochs} " in p.stdout
    # As good as one process (the same global batch; the dropout draws differ): about 0.58 each.
    two_ndcg = float(line_of(p.stdout, "valid_ndcg_at_10").split()[0])
    one_ndcg = float(line_of(alone.stdout, "valid_ndcg_at_10").split()[0])
    assert one_ndcg > 0.4 and abs(two_ndcg - one_ndcg) < 0.05, (one_ndcg, two_ndcg)


@pytest.mark.slow  # two torchrun jobs
def test_a_rank_that_dies_stops_the_job_in_one_line_and_resume_finishes(
    half_learnable, tmp_path, line_of
):
    args = ["train", "--data", str(half_learnable), *FLAGS, "--nproc", "2", "--output", "run"]
    args[args.index("--patience") + 1] = "50"  # runs all 12 epochs unless stopped
    t = time.perf_counter()
    p = _recsys(args, tmp_path, env={TEST_DIE_AT: "1:3"}, timeout=240)  # at epoch 3
    assert p.returncode == 2 and time.perf_counter() - t < 180
    # One line says what happened, and nothing else complains (no traceback, no report).
    errors = [line for line in p.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert errors[0].startswith("recsys train: error: training process rank 1 died (SIGKILL, ")
    assert errors[0].endswith(
        "the job stopped; continue it with the same command and --resume --output run"
    )
    assert p.stderr.strip().splitlines()[-1] == errors[0]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "running"

    p = _recsys([*args, "--resume"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    client = _client(tmp_path)
    run_id = line_of(p.stdout, "run_id")
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert steps == list(range(1, 13))
    assert "rank 1 of 2: stopped after epoch 12 " in p.stdout
