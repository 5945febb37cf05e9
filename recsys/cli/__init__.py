"""The ``recsys`` command line: one subcommand per job, each with ``--help``.

Subcommands live by kind: :mod:`recsys.cli.data` (generate, prepare),
:mod:`recsys.cli.model` (train, evaluate, recommend) and :mod:`recsys.cli.experiments`
(compare, sweep).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from recsys.cli import data, experiments, model
from recsys.errors import TrainingError

log = logging.getLogger("recsys")

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    data.add_generate,
    data.add_prepare,
    model.add_train,
    model.add_evaluate,
    model.add_recommend,
    model.add_explain,
    experiments.add_compare,
    experiments.add_sweep,
]


def build_parser() -> argparse.ArgumentParser:
    """Return the ``recsys`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="recsys",
        description="recsys: attention-based sequential recommendation, from raw logs to "
        "served recommendations. Run 'recsys COMMAND --help' for each command.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default INFO)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recsys`` console script.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 2 on bad input.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        return args.handler(args)
    except (ValueError, TrainingError) as e:
        return _fail(args.command, str(e))
    except OSError as e:
        # A file that cannot be read or written (permissions, a full disk, a file where a
        # folder is expected): the path and the system's reason say all the user can act on.
        where = f" {e.filename!r}" if e.filename else ""
        return _fail(args.command, f"cannot access{where}: {e.strerror or e}")
    except Exception as e:
        # MLflow's errors (an unreachable tracking server, a missing run or model) are the
        # user's to fix, not tracebacks; mlflow is imported only by the jobs that track.
        mlflow_errors = sys.modules.get("mlflow.exceptions")
        if mlflow_errors is None or not isinstance(e, mlflow_errors.MlflowException):
            raise
        return _fail(args.command, f"MLflow: {e.message}")


# MLflow's messages can hold whole server responses; one line stays readable.
MAX_MESSAGE = 400


def _fail(command: str, message: str) -> int:
    """Print one error line (messages never span lines) and return exit status 2."""
    line = " ".join(message.split())
    if len(line) > MAX_MESSAGE:
        line = line[: MAX_MESSAGE - 3] + "..."
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        # A training process under torchrun: `recsys train --nproc` prints one line for
        # the whole job, from the line each failed process recorded.
        from recsys.training.distributed import record_error

        if record_error(line):
            return 2
    print(f"recsys {command}: error: {line}", file=sys.stderr)
    return 2
