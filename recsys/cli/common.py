"""Helpers shared by the subcommand modules: a job's parser from its config, and the
config from the flags given and a ``--config`` file."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from recsys.options import add_arguments, flag_name, from_flat, load_config_file, required

EPILOG = "Bad input exits with status 2 and a one-line message naming the file, line or value."
# Namespace entries that are the parser's own, not options.
_OWN = ("config", "command", "handler", "log_level")


def add_job(
    sub: argparse._SubParsersAction,
    name: str,
    cls: type,
    handler: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str,
    epilog: str = "",
) -> argparse.ArgumentParser:
    """A subcommand whose flags are the options of config ``cls`` (plus ``--config``)."""
    p = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=f"{epilog} {EPILOG}".strip(),
    )
    p.add_argument("--config", help="JSON/TOML file of the same options (flags override it)")
    add_arguments(p, cls)
    p.set_defaults(handler=handler)
    return p


def build_config(cls: type, args: argparse.Namespace) -> Any:
    """Merge ``--config FILE`` values, then the flags given, into config ``cls``.

    Raises
    ------
    ValueError
        On an unknown option, a bad value, or a required option given nowhere.
    """
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    values.update({k: v for k, v in vars(args).items() if k not in _OWN})
    missing = [n for n in required(cls) if n not in values]
    if missing:
        raise ValueError(f"{flag_name(missing[0])} is required (or give it in --config)")
    return from_flat(cls, values, source=getattr(args, "config", None) or "command line")
