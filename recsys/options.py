"""One declaration per option: a dataclass field with its default, help text and choices.

Every option of every job is declared once, as ``name: type = option(default, "help")``
in a config dataclass (:class:`recsys.models.sasrec.SASRecConfig`,
:class:`recsys.training.config.TrainConfig`, the jobs' configs in ``pipelines/``). From
those fields derive:

* the command line: :func:`add_arguments` makes one flag per field (``--max-len``), its
  type, choices and ``--help`` text with the default read from the field;
* config files and sweeps: :func:`from_flat` builds a (nested) config from flat
  ``name -> value`` pairs, rejecting unknown names; :func:`parse_value` types a string;
* MLflow params: :func:`to_flat` gives the same flat names back.

A job config composes the model and trainer configs as fields, so their options are not
repeated; the flat names stay unique across the composition (checked).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    choices: tuple[Any, ...] | None = None,
    default_factory: Any = _MISSING,
    default_text: str | None = None,
    cli: bool = True,
    metavar: str | None = None,
) -> Any:
    """A dataclass field declaring one option.

    Parameters
    ----------
    default : Any
        The default (omit for a required option).
    help : str
        One line for ``--help``; the default is appended from the field.
    choices : tuple, optional
        The allowed values (checked by argparse and by :func:`check_choices`).
    default_factory : callable, optional
        For mutable defaults (lists).
    default_text : str, optional
        How ``--help`` states the default when the value alone says little
        (``"the dataset name"`` for a ``None`` default).
    cli : bool
        False for fields that are set by the program, not by users (no flag).
    metavar : str, optional
        The flag's value name in ``--help``.
    """
    metadata = {
        "help": help,
        "choices": choices,
        "default_text": default_text,
        "cli": cli,
        "metavar": metavar,
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def _base_type(hint: Any) -> Any:
    """``int | None`` → ``int``; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def is_config(hint: Any) -> bool:
    """Whether a field's type is itself a config dataclass (composed, flattened)."""
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def flat_fields(cls: type) -> dict[str, tuple[tuple[str, ...], dataclasses.Field, Any]]:
    """Every option of ``cls`` and its composed configs: flat name → (path, field, type).

    Raises
    ------
    AssertionError
        If two composed configs declare the same name (flat names must be unique).
    """
    out: dict[str, tuple[tuple[str, ...], dataclasses.Field, Any]] = {}
    for path, f, hint in _walk(cls, ()):
        assert f.name not in out, f"option {f.name!r} is declared twice under {cls.__name__}"
        out[f.name] = (path, f, hint)
    return out


def _walk(cls: type, prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if is_config(hints[f.name]):
            yield from _walk(hints[f.name], (*prefix, f.name))
        elif f.metadata.get("option", True):
            yield (*prefix, f.name), f, hints[f.name]


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (``MISSING`` for a required one)."""
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


def from_flat(cls: type[T], values: dict[str, Any], *, source: str = "config") -> T:
    """Build config ``cls`` (with its composed configs) from flat ``name -> value`` pairs.

    Values are checked against the declared types (an ``int`` where a ``float`` is declared
    is accepted) and choices; missing options take their defaults.

    Raises
    ------
    ValueError
        On an unknown name, a value of the wrong type or a value outside the choices,
        quoting ``source``.
    """
    fields = flat_fields(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"{source}: unknown option(s) {unknown} for {cls.__name__}; "
            f"expected some of {sorted(fields)}"
        )
    nested: dict[str, Any] = {}
    for name, value in values.items():
        path, f, hint = fields[name]
        value = _coerce(hint, value, f"{source}: {name}")
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ValueError(f"{source}: {name}={value!r}; expected one of {list(choices)}")
        node = nested
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return _build(cls, nested)


def _build(cls: type[T], values: dict[str, Any]) -> T:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if is_config(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], values.get(f.name, {}))
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def to_flat(config: Any) -> dict[str, Any]:
    """The options of a config (composed configs included) as flat ``name -> value``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(to_flat(value))
        elif f.metadata.get("option", True):
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def check_choices(config: Any) -> None:
    """Raise ``ValueError`` if a field of ``config`` holds a value outside its choices
    (for configs built directly, not through :func:`from_flat`)."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices and value is not None and value not in choices:
            raise ValueError(f"{f.name}={value!r}; expected one of {list(choices)}")


def not_an_option(default: Any) -> Any:
    """A config field set by the program (e.g. the catalogue size), never by users."""
    return dataclasses.field(default=default, metadata={"option": False})


def _optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in (
        typing.get_args(hint)
    )


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if value is None:
        if not _optional(hint):
            raise ValueError(f"{where}: expected a value, got None (this option has no 'none')")
        return None
    hint = _base_type(hint)
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(hint) or (Any,)
        return [_coerce(inner, v, where) for v in value]
    if hint in (int, float) and isinstance(value, bool):
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    if hint is float and isinstance(value, int):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def parse_value(cls: type, name: str, raw: str) -> Any:
    """The text ``raw`` (a sweep's ``NAME=VALUE``) typed as option ``name`` of ``cls``.

    Examples
    --------
    ``parse_value(TrainJobConfig, "lr", "1e-3")`` → ``0.001``; ``"true"`` → ``True`` for
    a bool; ``"None"`` → ``None``.
    """
    fields = flat_fields(cls)
    if name not in fields:
        raise ValueError(f"unknown option {name!r}; expected one of {sorted(fields)}")
    field, hint = fields[name][1], _base_type(fields[name][2])
    if raw == "None" and _optional(fields[name][2]):
        return None
    if hint is bool:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{name}={raw!r}: expected true or false")
        return raw.lower() in ("true", "1")
    if typing.get_origin(hint) in (list, tuple):
        (inner, *_) = typing.get_args(hint)
        # As on the command line: numbers may be comma-separated, text is one value.
        parts = raw.split(",") if inner in (int, float) else [raw]
        return [_parse_scalar(inner, name, v.strip()) for v in parts if v.strip()]
    value = _parse_scalar(hint, name, raw)
    choices = field.metadata.get("choices")
    if choices and value not in choices:
        raise ValueError(f"{name}={raw!r}; expected one of {list(choices)}")
    return value


def _parse_scalar(kind: Any, name: str, raw: str) -> Any:
    try:
        return kind(raw) if kind in (int, float, str) else raw
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected {kind.__name__}") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML file of options (flat ``name = value`` pairs) into a dict.

    Raises
    ------
    ValueError
        If the file is missing, of another kind, or not valid JSON/TOML (naming the line).
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


def from_env(cls: type[T], prefix: str = "RECSYS_") -> T:
    """Config ``cls`` from environment variables ``PREFIX<NAME>`` (``RECSYS_TORCH_THREADS``),
    typed like :func:`parse_value`; options with no variable set keep their defaults.

    Raises
    ------
    ValueError
        Naming the variable whose value does not parse.
    """
    import os

    values = {}
    for name in flat_fields(cls):
        raw = os.environ.get(prefix + name.upper(), "").strip()
        if raw:
            try:
                values[name] = parse_value(cls, name, raw)
            except ValueError as e:
                raise ValueError(f"environment variable {prefix + name.upper()}: {e}") from None
    return from_flat(cls, values, source="environment")


# -- the command line ----------------------------------------------------------------------


def flag_name(name: str) -> str:
    """The command-line flag of option ``name``: ``max_len`` → ``--max-len``."""
    return "--" + name.replace("_", "-")


def help_text(f: dataclasses.Field) -> str:
    """The field's help with its default, as ``--help`` shows it."""
    text = f.metadata.get("help", "")
    default = default_of(f)
    shown = f.metadata.get("default_text")
    if shown is None and default is not _MISSING and default is not None:
        if isinstance(default, bool):
            shown = "on" if default else "off"
        elif isinstance(default, list | tuple):
            shown = " ".join(map(str, default)) or "none"
        else:
            shown = str(default)
    if default is _MISSING:
        return f"{text} (required)"
    return f"{text} (default: {shown})" if shown is not None else text


def _list_of(kind: Any) -> Any:
    # Numbers may also come comma-separated ("5,10"); text may hold commas ("loss=ce,bce").
    def parse(text: str) -> list[Any]:
        parts = text.split(",") if kind in (int, float) else [text]
        return [kind(v) for v in parts if v.strip()]

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()
) -> None:
    """Add one flag per option of ``cls`` (composed configs included) to ``parser``.

    Flags that are not given leave no attribute (``argparse.SUPPRESS``), so a config
    file's values and the declared defaults apply underneath the flags that are.
    Booleans get ``--name`` / ``--no-name``; lists take several values (or one
    comma-separated value).
    """
    for name, (_, f, hint) in flat_fields(cls).items():
        if name in skip or not f.metadata.get("cli", True):
            continue
        kind = _base_type(hint)
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": help_text(f).replace("%", "%%"),
        }
        if f.metadata.get("metavar"):
            kwargs["metavar"] = f.metadata["metavar"]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) in (list, tuple):
            (inner, *_) = typing.get_args(kind)
            kwargs.update(nargs="+", type=_list_of(inner), action=_Extend)
        elif _optional(hint) and (kind in (int, float) or f.metadata.get("choices")):
            kwargs["type"] = _or_none(kind)  # "None" asks for the default meaning
        else:
            kwargs["type"] = kind
        if f.metadata.get("choices"):
            extra = (None,) if _optional(hint) else ()
            kwargs["choices"] = (*f.metadata["choices"], *extra)
            kwargs["metavar"] = "{" + ",".join(map(str, f.metadata["choices"])) + "}"
        parser.add_argument(flag_name(name), **kwargs)


def _or_none(kind: type) -> Any:
    def parse(raw: str) -> Any:
        return None if raw == "None" else kind(raw)

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value"
    return parse


class _Extend(argparse.Action):
    """``--eval-ks 5 10`` and ``--eval-ks 5,10`` both give ``[5, 10]``."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, self.dest, None) or []  # a repeated flag adds to the list
        setattr(namespace, self.dest, [*given, *(v for chunk in values for v in chunk)])


def required(cls: type) -> list[str]:
    """Names of the options of ``cls`` that have no default."""
    return [
        name
        for name, (_, f, _) in flat_fields(cls).items()
        if default_of(f) is _MISSING and f.metadata.get("cli", True)
    ]
