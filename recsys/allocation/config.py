"""The re-ranking configuration: one TOML file (or dict), validated field by field.

::

    candidates = 100              # re-rank the top-100 retrieved
    [diversity]
    method = "mmr"                # or "calibration"
    lambda = 0.7                  # weight of relevance; 1 = no re-ranking
    similarity = "genres"         # or "embeddings" (default: genres where known)
    [exposure]
    max_share = 0.05              # or mode = "proportional"
    [rules]
    block = ["50", "181"]
    pin = { "1" = 1 }             # item "1" at rank 1 in every list
    [[rules.quota]]
    field = "genres"
    value = "Horror"
    at_most = 2
    [rules.boost]
    newer_than = 1998-01-01
    by = 0.2

Each table is a dataclass whose fields are declared once with their default and help
(:func:`recsys.options.option`); unknown keys and impossible values raise ``ValueError``
naming the key (``diversity.lambda``) and what was expected. Dotted overrides
(``diversity.lambda=0.5``, what a sweep's ``rerank.diversity.lambda`` sets) go through
the same checks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from recsys.io import quote
from recsys.options import option

DIVERSITY_METHODS = ("mmr", "calibration")
SIMILARITIES = ("genres", "embeddings")
EXPOSURE_MODES = ("max_share", "proportional")
# TOML spells the MMR weight ``lambda``, a Python keyword.
RENAMED = {"lambda": "lambda_"}


@dataclass
class DiversityConfig:
    method: str = option("mmr", "how to diversify", choices=DIVERSITY_METHODS)
    lambda_: float = option(
        1.0,
        "weight of relevance against diversity (mmr: similarity to items already chosen; "
        "calibration: KL divergence from the user's genre mix); 1 = relevance only",
    )
    penalty: str = option(
        "max",
        "mmr's redundancy of a candidate: its largest similarity to the items already in "
        "the list (Carbonell & Goldstein's), or the mean (what intra-list diversity averages)",
        choices=("max", "mean"),
    )
    similarity: str | None = option(
        None,
        "item similarity for mmr",
        choices=SIMILARITIES,
        default_text="genres where the items have them, else embeddings",
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.lambda_ <= 1.0:
            raise ValueError(f"diversity.lambda = {self.lambda_}: expected 0 <= lambda <= 1")


@dataclass
class ExposureConfig:
    mode: str | None = option(
        None,
        "max_share: cap each item's lists; proportional: each item's lists follow its "
        "share of the total merit (its summed probability over the job's users)",
        choices=EXPOSURE_MODES,
        default_text="max_share when given",
    )
    max_share: float | None = option(
        None, "at most ceil(max_share x users) lists of one job hold any one item"
    )

    def __post_init__(self) -> None:
        if self.max_share is not None and not 0.0 < self.max_share <= 1.0:
            raise ValueError(f"exposure.max_share = {self.max_share}: expected 0 < share <= 1")
        if self.mode is None and self.max_share is None:
            raise ValueError("exposure: give max_share (e.g. 0.05) or mode = 'proportional'")
        if self.mode is None:
            self.mode = "max_share"
        if self.mode == "max_share" and self.max_share is None:
            raise ValueError("exposure.mode = 'max_share' needs exposure.max_share (e.g. 0.05)")
        if self.mode == "proportional" and self.max_share is not None:
            raise ValueError("exposure: give mode = 'proportional' or max_share, not both")


@dataclass
class QuotaRule:
    field: str = option(help="item metadata field (genres)")
    value: str = option(help="the field's value the quota counts (e.g. 'Horror')")
    at_most: int | None = option(None, "at most this many such items in a list")
    at_least: int | None = option(None, "at least this many such items in a list")

    def __post_init__(self) -> None:
        where = f"rules.quota {self.field}={quote(self.value)}"
        if self.field != "genres":
            raise ValueError(f"{where}: field {self.field!r} is unknown; expected 'genres'")
        if self.at_most is None and self.at_least is None:
            raise ValueError(f"{where}: give at_most, at_least or both")
        for name in ("at_most", "at_least"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{where}: {name} = {value}: expected 0 or more")
        if self.at_most is not None and self.at_least is not None and self.at_least > self.at_most:
            raise ValueError(f"{where}: at_least {self.at_least} > at_most {self.at_most}")

    def describe(self) -> str:
        bounds = [f"at least {self.at_least}" if self.at_least else "",
                  f"at most {self.at_most}" if self.at_most is not None else ""]  # fmt: skip
        return (
            f"quota {' and '.join(b for b in bounds if b)} items with {self.field} {self.value!r}"
        )


@dataclass
class BoostRule:
    newer_than: date = option(help="items released after this date (item metadata 'released')")
    by: float = option(0.1, "added to the relevance, which runs from 0 to 1 within a list")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.by) and self.by >= 0.0):
            raise ValueError(f"rules.boost.by = {self.by}: expected a finite number, 0 or more")


@dataclass
class RulesConfig:
    block: list[str] = option(default_factory=list, help="item IDs never shown")
    pin: dict[str, int] = option(
        default_factory=dict, help="item ID -> rank (1 = first) it takes in every list"
    )
    quota: list[QuotaRule] = option(default_factory=list, help="per-field quotas")
    boost: BoostRule | None = option(None, "boost for items newer than a date")

    def __post_init__(self) -> None:
        ranks = list(self.pin.values())
        bad = [(i, r) for i, r in self.pin.items() if r < 1]
        if bad:
            raise ValueError(f"rules.pin {bad[0][0]!r} = {bad[0][1]}: a rank starts at 1")
        if len(set(ranks)) < len(ranks):
            twice = sorted({r for r in ranks if ranks.count(r) > 1})
            raise ValueError(f"rules.pin: rank {twice[0]} is given to more than one item")
        both = sorted(set(self.block) & set(self.pin))
        if both:
            raise ValueError(f"rules: item {both[0]!r} is both blocked and pinned")


@dataclass
class RerankConfig:
    """A whole re-ranking configuration (see the module docstring for the file)."""

    candidates: int = option(100, "re-rank this many retrieved items per user")
    diversity: DiversityConfig | None = option(None, "diversity or calibration")
    exposure: ExposureConfig | None = option(None, "exposure across the whole job")
    rules: RulesConfig = option(default_factory=RulesConfig, help="business rules")

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise ValueError(f"candidates = {self.candidates}: expected at least 1")

    # -- reading -----------------------------------------------------------------------

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "rerank config") -> RerankConfig:
        """Build and check a config from nested values (a parsed TOML file).

        Raises
        ------
        ValueError
            Unknown keys, wrong types or impossible values: one line naming ``source``,
            the key and what was expected.
        """
        try:
            return _build(cls, doc, "")
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def load(cls, spec: str | Path | dict[str, Any] | RerankConfig) -> RerankConfig:
        """A config from a TOML file path, inline JSON text (``'{"diversity": ...}'``), a
        dict, or a config (returned as is)."""
        if isinstance(spec, RerankConfig):
            return spec
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        if isinstance(spec, str) and spec.lstrip().startswith("{"):
            try:
                doc = json.loads(spec)
            except json.JSONDecodeError as e:
                raise ValueError(f"rerank config {quote(spec)} is not valid JSON: {e}") from None
            return cls.from_dict(doc, "rerank config")
        path = Path(spec)
        if path.is_dir() or not path.is_file():
            what = "a folder" if path.is_dir() else "missing"
            raise ValueError(f"rerank config {str(path)!r} is {what}; expected a TOML file")
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"rerank config {str(path)!r} is not UTF-8 text") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"rerank config {str(path)!r} is not valid TOML: {e}") from None
        return cls.from_dict(doc, f"rerank config {str(path)!r}")

    def with_overrides(self, values: dict[str, Any]) -> RerankConfig:
        """This config with dotted keys set (``{"diversity.lambda": 0.5}``), checked anew.

        String values are parsed as TOML values (``"0.5"`` → 0.5, ``"mmr"`` stays text).
        """
        doc = self.to_dict()
        for key, value in values.items():
            if isinstance(value, str):
                value = _toml_value(value)
            *parents, last = key.split(".")
            node = doc
            for p in parents:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise ValueError(f"rerank override {key!r}: {p!r} is not a table")
            node[last] = value
        return RerankConfig.from_dict(doc, "rerank overrides")

    # -- writing -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Nested plain values (TOML's key names), without unset optional tables."""
        return _plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    def flat(self) -> dict[str, Any]:
        """``{"rerank.diversity.lambda": 0.7, ...}``: MLflow params."""
        out: dict[str, Any] = {}

        def walk(node: Any, prefix: str) -> None:
            if isinstance(node, dict):
                for k, v in node.items():  # an empty table (no rules) gives nothing
                    walk(v, f"{prefix}.{k}")
            else:
                out[prefix] = (
                    json.dumps(node, default=str) if isinstance(node, list | dict) else node
                )

        walk(self.to_dict(), "rerank")
        return out

    @property
    def is_noop(self) -> bool:
        """Whether it leaves every list as the model ranks it."""
        d = self.diversity
        return (
            (d is None or d.lambda_ == 1.0)
            and self.exposure is None
            and self.rules == RulesConfig()
        )


def _toml_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # bare text: an ID or a method name


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None or value == [] or value == {}:
                continue
            out[f.name.rstrip("_")] = _plain(value)
        return out
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _check(hint: Any, value: Any, key: str) -> Any:
    """``value`` as type ``hint`` (a field's annotation, as a string), or ValueError."""
    h = hint.replace(" | None", "")
    if hint.endswith("| None") and value is None:
        return None
    if h == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{key} = {value!r}: expected a number")
    if h == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{key} = {value!r}: expected a whole number")
    if h == "str":
        if isinstance(value, str):
            return value
        raise ValueError(f"{key} = {value!r}: expected text")
    if h == "date":
        if isinstance(value, datetime):
            return value.date()
        if isinstance(value, date):
            return value
        if isinstance(value, str):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        raise ValueError(f"{key} = {value!r}: expected a date like 1998-01-01")
    if h == "list[str]":
        if isinstance(value, list) and all(isinstance(v, str | int) for v in value):
            return [str(v) for v in value]
        raise ValueError(f'{key} = {value!r}: expected a list of item IDs, e.g. ["50", "181"]')
    if h == "dict[str, int]":
        if isinstance(value, dict) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value.values()
        ):
            return {str(k): v for k, v in value.items()}
        raise ValueError(f'{key} = {value!r}: expected item ID = rank pairs, e.g. {{ "50" = 1 }}')
    if h == "list[QuotaRule]":
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected [[{key}]] tables")
        return [_build(QuotaRule, v, f"{key}[{i}]") for i, v in enumerate(value)]
    sub = {c.__name__: c for c in (DiversityConfig, ExposureConfig, RulesConfig, BoostRule)}
    if h in sub:
        return _build(sub[h], value, key)
    raise AssertionError(f"unhandled option type {hint!r}")


def _build(cls: type, doc: Any, prefix: str) -> Any:
    where = prefix or "the top level"
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a table, found {doc!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in doc.items():
        name = RENAMED.get(key, key)
        path = f"{prefix}.{key}" if prefix else key
        if name not in fields or (name.endswith("_") and key not in RENAMED):
            known = ", ".join(n.rstrip("_") for n in fields)
            raise ValueError(f"unknown key {path!r} in {where}; expected one of: {known}")
        values[name] = _check(fields[name].type, value, path)
        choices = fields[name].metadata.get("choices")
        if choices and values[name] is not None and values[name] not in choices:
            raise ValueError(f"{path} = {value!r}: expected one of {choices}")
    missing = [
        n for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        and n not in values
    ]  # fmt: skip
    if missing:
        raise ValueError(f"{where}: {', '.join(missing)} missing")
    try:
        return cls(**values)
    except ValueError as e:
        raise ValueError(str(e)) from None
