"""Data-parallel training over processes started by torchrun: who this process is, the
process group, and the few collectives the trainer needs.

Every rank draws the same seeded user order and builds the same global batches; each
rank trains on its share of every batch (:func:`shard`), and
``torch.nn.parallel.DistributedDataParallel`` averages the gradients, so that N
processes with B/N users each take one step of batch B. Only rank 0 validates, writes
checkpoints and tracks; its decisions reach the others by :func:`broadcast`.

torchrun describes the process in environment variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); without them
the process is alone (:data:`SINGLE`) and nothing here communicates.
"""

from __future__ import annotations

import gc
import logging
import os
import shlex
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from recsys.errors import TrainingError

# Set for the processes that launch() starts: their one-line errors go to the launcher,
# which prints the one that explains the failure, rather than to stderr each.
REPORTED_BY_LAUNCHER = "RECSYS_LAUNCHER_REPORTS"
# The marker of a rank's own error line when it lost the others (the launcher looks
# past these for the rank that failed first).
LOST = "lost contact with the other ranks"


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that validates, checkpoints, tracks and registers."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU (by local rank) when training on CUDA."""
        if device.type == "cuda" and self.distributed:
            if self.local_size > torch.cuda.device_count():
                raise ValueError(
                    f"{self.local_size} training processes on this machine need as many "
                    f"GPUs, and torch sees {torch.cuda.device_count()}; give --nproc at "
                    "most that, or --device cpu"
                )
            return torch.device("cuda", self.local_rank)
        return device


SINGLE = World()


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets
    ``RANK`` and ``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_world() -> World:
    """This process's :class:`World` from torchrun's environment (:data:`SINGLE` without)."""
    if not launched():
        return SINGLE
    env = os.environ
    size = int(env["WORLD_SIZE"])
    return World(
        rank=int(env["RANK"]),
        size=size,
        local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
        local_size=int(env.get("LOCAL_WORLD_SIZE", size)),
    )


@contextmanager
def process_group(device: torch.device, timeout_minutes: float) -> Iterator[World]:
    """Join torchrun's process group for the block (gloo on a CPU, nccl on GPUs).

    ``timeout_minutes`` bounds how long a rank waits for the others in a collective, so
    that a lost machine stops the job instead of hanging it. Alone (not under torchrun,
    or a world of 1), nothing is joined and :data:`SINGLE` is yielded.
    """
    world = env_world()
    if not world.distributed:
        yield SINGLE
        return
    device = world.device(device)  # refuses more processes than GPUs
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    try:
        yield world
    finally:
        # Whatever still holds the group (DistributedDataParallel in a reference cycle,
        # a traceback's frames) is freed here, while the interpreter is whole. Freed at
        # its shutdown instead, gloo's worker threads can abort the process (SIGABRT,
        # "terminate called without an active exception"), at random.
        gc.collect()
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    """Where collectives' tensors live: the rank's GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object; tensors keep their device)."""
    if not world.distributed:
        return obj
    box = [obj if world.main else None]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def all_sum(values: list[float], world: World) -> list[float]:
    """Each value summed over the ranks (float64)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def gather(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def shard(batch: np.ndarray, world: World) -> np.ndarray:
    """This rank's share of a global batch: every ``size``-th user from its rank.

    Batches are sorted by length (:meth:`recsys.training.trainer.Trainer._batches`), so
    taking every N-th user gives each rank a similar mix of lengths, where contiguous
    slices would give the last rank the longest sequences.
    """
    return batch[world.rank :: world.size]


def is_lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed (a rank died or timed out)."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        mark in text for mark in ("gloo", "NCCL", "c10d", "Connection closed by peer")
    )


# -- launching ---------------------------------------------------------------------------


def launch(nproc: int, argv: list[str], torchrun: str | None = None) -> None:
    """Run ``python -m recsys.cli ARGV`` in ``nproc`` processes under torchrun, from this
    process (as the ``torchrun`` command would), and wait for them.

    ``torchrun`` holds more of torchrun's flags (the rendezvous of several machines).
    A process that fails stops the others (torchrun's doing), and the failure becomes
    one :class:`~recsys.errors.TrainingError` line naming the rank that failed first and
    why.

    Raises
    ------
    TrainingError
        If a process failed, or the machines could not gather.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import parse_args, run

    extra = shlex.split(torchrun or "")
    args = parse_args(["--nproc-per-node", str(nproc), *extra, "-m", "recsys.cli", *argv])
    quiet = _Quiet()
    loggers = [logging.getLogger()] + [
        logger
        for name, logger in logging.Logger.manager.loggerDict.items()
        if name.startswith("torch") and isinstance(logger, logging.Logger)
    ]
    handlers = {h for logger in loggers for h in logger.handlers}
    for h in handlers:
        h.addFilter(quiet)
    os.environ[REPORTED_BY_LAUNCHER] = "1"
    try:
        run(args)
    except ChildFailedError as e:
        raise TrainingError(describe_failure(e.failures)) from None
    except RendezvousError as e:
        line = " ".join(str(e).split())
        raise TrainingError(f"torchrun could not gather the processes: {line}") from None
    except SignalException as e:  # the launcher was stopped (Ctrl-C, kill); so were they
        raise TrainingError(f"stopped by {e.sigval.name}") from None
    finally:
        os.environ.pop(REPORTED_BY_LAUNCHER, None)
        for h in handlers:
            h.removeFilter(quiet)


class _Quiet(logging.Filter):
    """torchrun's own log lines (a multi-line failure report among them) are dropped
    unless the log level asks for DEBUG: the failure ends as one line of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("torch.distributed") or (
            logging.getLogger().level <= logging.DEBUG
        )


def describe_failure(failures: dict[int, Any]) -> str:
    """One line for torchrun's failed processes (rank -> ``ProcessFailure``): the rank
    that failed first for a reason of its own, and why.

    The survivors of a lost rank fail too, after it (SIGTERM from torchrun, or a
    collective that lost its peer); they are passed over for the rank that caused it.
    """

    def caused_by_another(f: Any) -> bool:
        if f.exitcode < 0:
            return f.exitcode == -signal.SIGTERM
        return LOST in _own_message(f)

    rank, f = min(failures.items(), key=lambda rf: (caused_by_another(rf[1]), rf[1].timestamp))
    if f.exitcode < 0:
        what = f"died ({f.signal_name()}, pid {f.pid})"
    elif _own_message(f):
        what = f"failed: {_own_message(f)}"
    else:
        what = f"exited with status {f.exitcode} (its error is printed above)"
    return f"training process rank {rank} {what}; the job stopped"


def _own_message(failure: Any) -> str:
    """The line a failed rank recorded (``record_error``), or ''."""
    message = failure.error_file_data.get("message")
    return " ".join(message.split()) if isinstance(message, str) and message != "<NONE>" else ""


def record_error(line: str) -> bool:
    """Give torchrun this rank's one-line error (its ``TORCHELASTIC_ERROR_FILE``), so
    that the launcher's message names it; return whether :func:`launch` will print it
    (False outside torchrun, or under a torchrun started otherwise)."""
    import json
    import time

    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return False
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"message": line, "timestamp": int(time.time())}, f)
    return os.environ.get(REPORTED_BY_LAUNCHER) == "1"


# -- test-only --------------------------------------------------------------------------

# Test-only: "RANK:EPOCH" makes that rank kill itself (SIGKILL) as that epoch starts, so
# that tests can lose a process mid-training. Read nowhere but die_if_asked.
TEST_DIE_AT = "RECSYS_TEST_DIE_AT"


def die_if_asked(world: World, epoch: int) -> None:
    """Test-only: the death :data:`TEST_DIE_AT` asks for, if it names this rank and epoch."""
    if os.environ.get(TEST_DIE_AT) == f"{world.rank}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)
