"""Config dataclasses: parsed once at the entry point, unknown keys rejected."""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def from_dict(cls: type[T], values: dict[str, Any], *, source: str = "config") -> T:
    """Build dataclass ``cls`` from ``values``, raising on unknown keys.

    Parameters
    ----------
    cls : type
        A dataclass type.
    values : dict
        Field values; missing fields take their defaults.
    source : str
        Where the values came from, quoted in errors.

    Returns
    -------
    cls
        The instance.

    Raises
    ------
    ValueError
        If ``values`` holds a key that is not a field of ``cls``.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {unknown} for {cls.__name__}; "
            f"expected some of {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = _coerce(hints[key], value, f"{source}: {key}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else hint
        origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value, source=where)
    if origin in (list, tuple) and isinstance(value, list | tuple):
        (inner, *_) = typing.get_args(hint) or (Any,)
        return origin(_coerce(inner, v, where) for v in value)
    if hint in (int, float) and isinstance(value, bool):
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    if hint is float and isinstance(value, int):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file into a dict.

    Parameters
    ----------
    path : str or Path
        ``.json`` or ``.toml`` file.

    Returns
    -------
    dict
        The parsed mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {str(p)!r} does not exist")
    if p.suffix not in (".toml", ".json"):
        raise ValueError(f"config file {str(p)!r}: expected a .json or .toml file")
    try:
        text = p.read_text(encoding="utf-8")
        values = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except UnicodeDecodeError:
        raise ValueError(f"config file {str(p)!r} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        # The message already says where: "Expected '=' after a key (at line 3, column 5)".
        raise ValueError(f"config file {str(p)!r} is not valid TOML: {e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(
            f"config file {str(p)!r} is not valid JSON: {e.msg} at line {e.lineno}, "
            f"column {e.colno}"
        ) from None
    if not isinstance(values, dict):
        kind = type(values).__name__
        raise ValueError(f"config file {str(p)!r}: expected a table of options, got a {kind}")
    return values


def to_dict(config: Any) -> dict[str, Any]:
    """Return a dataclass config as a plain (JSON-ready) dict.

    Parameters
    ----------
    config : dataclass instance
        The config.

    Returns
    -------
    dict
        Field values, nested dataclasses as dicts.
    """
    return dataclasses.asdict(config)
