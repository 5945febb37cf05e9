"""Sweep job: a grid (or a random sample of it) of training configs, run one after another
as child runs of one parent MLflow run.

Run it as ``recsys sweep --data DIR --experiment NAME --grid loss=ce,bce max_len=50,200
[--seeds 1,2]``. Each child is a normal training run (everything logged). A child that
fails is recorded as failed and the sweep goes on. Re-running the same sweep reuses its
parent run and skips the children already finished with the same config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import types
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.train import TrainJobConfig
from pipelines.train import run as train
from recsys.config import from_dict

log = logging.getLogger(__name__)

FIXED = {"data", "experiment", "tracking_uri", "parent_run_id", "sweep_key", "output", "resume"}


@dataclass
class SweepConfig:
    """A sweep: the grid, the seeds and options shared by every child."""

    data: str
    experiment: str
    grid: list[str]  # "name=value1,value2" per swept option
    seeds: list[int] = dataclasses.field(default_factory=list)
    random: int = 0  # run this many combinations drawn at random (0: the whole grid)
    random_seed: int = 0
    set: list[str] = dataclasses.field(default_factory=list)  # "name=value" for every child
    tracking_uri: str | None = None
    progress: bool = False


def parse_value(name: str, raw: str) -> Any:
    """``raw`` converted to the type of TrainJobConfig's field ``name``."""
    hints = typing.get_type_hints(TrainJobConfig)
    if name not in hints or name in FIXED:
        allowed = sorted(set(hints) - FIXED)
        raise ValueError(f"cannot sweep or set {name!r}; expected one of {allowed}")
    hint = hints[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    kind = hint
    if raw == "None":
        return None
    if kind is bool:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{name}={raw!r}: expected true or false")
        return raw.lower() in ("true", "1")
    try:
        return kind(raw) if kind in (int, float, str) else raw
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected {kind.__name__}") from None


def parse_pairs(items: list[str], many: bool) -> dict[str, list[Any]]:
    """``["loss=ce,bce"]`` → ``{"loss": ["ce", "bce"]}`` with values typed."""
    out: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"{item!r}: expected name=value{',value...' if many else ''}")
        name = name.strip().replace("-", "_")
        raw = values.split(",") if many else [values]
        out[name] = [parse_value(name, v.strip()) for v in raw]
    return out


def combinations(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The children's overrides, in a fixed order (seeds innermost)."""
    grid = parse_pairs(cfg.grid, many=True)
    if cfg.seeds:
        grid["seed"] = list(cfg.seeds)
    names = list(grid)
    combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]
    if cfg.random and cfg.random < len(combos):
        pick = np.random.default_rng(cfg.random_seed).choice(len(combos), cfg.random, replace=False)
        combos = [combos[i] for i in sorted(pick)]
    return combos


def _key(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def run(cfg: SweepConfig) -> dict[str, Any]:
    """Run (or finish) the sweep; return the parent run id and each child's outcome."""
    import mlflow

    from recsys.tracking import setup

    shared = {k: v[0] for k, v in parse_pairs(cfg.set, many=False).items()}
    combos = combinations(cfg)
    exp_id = setup(cfg.experiment, cfg.tracking_uri)
    client = mlflow.MlflowClient()
    sweep_id = _key(
        {
            "data": cfg.data,
            "grid": cfg.grid,
            "seeds": cfg.seeds,
            "set": cfg.set,
            "random": cfg.random,
            "random_seed": cfg.random_seed,
        }
    )
    parents = client.search_runs([exp_id], filter_string=f"tags.sweep_id = '{sweep_id}'")
    if parents:
        parent = parents[0]
        client.update_run(parent.info.run_id, status="RUNNING")
    else:
        parent = client.create_run(
            exp_id,
            tags={"sweep_id": sweep_id, "kind": "sweep"},
            run_name=f"sweep {' '.join(cfg.grid)}",
        )
        client.log_param(parent.info.run_id, "grid", " ".join(cfg.grid))
        client.log_param(parent.info.run_id, "seeds", ",".join(map(str, cfg.seeds)))
        client.log_param(parent.info.run_id, "data", cfg.data)
    parent_id = parent.info.run_id
    children = client.search_runs(
        [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    done = {c.data.tags.get("sweep_key") for c in children if c.info.status == "FINISHED"}
    outcomes = []
    for overrides in combos:
        key = _key({**shared, **overrides})
        if key in done:
            outcomes.append({**overrides, "status": "skipped (finished before)"})
            continue
        values = {
            "data": cfg.data,
            "experiment": cfg.experiment,
            "progress": cfg.progress,
            "tracking_uri": cfg.tracking_uri,
            **shared,
            **overrides,
            "parent_run_id": parent_id,
            "sweep_key": key,
        }
        try:
            out = train(from_dict(TrainJobConfig, values, source="sweep"))
            outcomes.append(
                {
                    **overrides,
                    "status": "finished",
                    "run_id": out["run_id"],
                    "test_ndcg_at_10": out.get("test_ndcg_at_10"),
                }
            )
        # Any failure of one child (bad config, NaN loss, ...) is recorded; the sweep goes on.
        except Exception as e:
            log.warning("sweep child %s failed: %s", overrides, e)
            outcomes.append({**overrides, "status": f"failed: {e}"})
            _record_failure(client, exp_id, parent_id, key, overrides, e)
    failed = sum(o["status"].startswith("failed") for o in outcomes)
    client.set_terminated(parent_id, status="FAILED" if failed == len(outcomes) else "FINISHED")
    return {"parent_run_id": parent_id, "children": outcomes, "failed": failed}


def _record_failure(
    client: Any, exp_id: str, parent_id: str, key: str, overrides: dict, error: Exception
) -> None:
    """Make sure a failed child shows as a FAILED run (it may have failed before starting)."""
    started = client.search_runs(
        [exp_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.sweep_key = '{key}'",
    )
    if any(r.info.status == "RUNNING" for r in started):
        for r in started:
            client.set_terminated(r.info.run_id, status="FAILED")
    if started:
        return
    run = client.create_run(
        exp_id,
        tags={"mlflow.parentRunId": parent_id, "sweep_key": key, "error": str(error)[:5000]},
        run_name="failed " + " ".join(f"{k}={v}" for k, v in overrides.items()),
    )
    for name, value in overrides.items():
        client.log_param(run.info.run_id, name, str(value))
    client.set_terminated(run.info.run_id, status="FAILED")
