"""Helpers shared by the subcommand modules: config merging and required flags."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from recsys.config import from_dict, load_config_file

EPILOG = "Bad input exits with status 2 and a message naming the file, column and row."


def build_config(cls: type, args: argparse.Namespace, skip: Sequence[str] = ()) -> Any:
    """Merge ``--config FILE`` values with the flags given (flags win) into ``cls``."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    for key, value in vars(args).items():
        if key in ("config", "command", "handler", "log_level", *skip):
            continue
        values[key] = value
    return from_dict(cls, values, source=getattr(args, "config", None) or "command line")


def given_flags(args: argparse.Namespace, required: Sequence[str]) -> argparse.Namespace:
    """Only the flags actually given (so config-file values and defaults apply)."""
    given = argparse.Namespace(**{k: v for k, v in vars(args).items() if v is not None})
    if not getattr(given, "config", None):
        given.config = None
    for name in required:
        if getattr(given, name, None) is None and not given.config:
            raise ValueError(f"--{name.replace('_', '-')} is required (or give it in --config)")
    return given
