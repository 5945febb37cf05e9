"""Sweep job: a grid (or a random sample of it) of training configs, run one after another
as child runs of one parent MLflow run.

Run it as ``recsys sweep --data DIR --experiment NAME --grid loss=ce,bce max_len=50,200
[--seeds 1,2]``. Each child is a normal training run (everything logged). A child that
fails is recorded as failed and the sweep goes on. Re-running the same sweep reuses its
parent run and skips the children already finished with the same config by the same
code (:func:`code_version`; ``--rerun`` trains them again anyway).

Re-ranking values sweep too: ``--grid rerank.diversity.lambda=1,0.9,0.7`` (on top of
``--set rerank=FILE``, or of no re-ranking). Children that differ only in ``rerank.*``
share one trained model: the first trains it, the others are runs tagged
``kind=reranked`` that evaluate that model's test lists with their re-ranking (same
params, metrics and per-user artifacts, so ``recsys compare`` sets them side by side).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sklearn.model_selection import ParameterGrid, ParameterSampler

import recsys
from pipelines.train import TrainJobConfig
from pipelines.train import run as train
from recsys.allocation.config import RerankConfig
from recsys.data.dataset import SequenceData
from recsys.options import from_flat, option, parse_value
from recsys.tracking import URI_HELP

log = logging.getLogger(__name__)

# Options a child cannot sweep or set: the sweep fixes them for all its children.
FIXED = {
    "data", "experiment", "tracking_uri", "parent_run_id", "sweep_key", "train_key", "output",
    "resume",
}  # fmt: skip


@dataclass
class SweepConfig:
    """A sweep: the grid, the seeds and options shared by every child."""

    data: str = option(help="prepared-dataset folder")
    experiment: str = option(help="MLflow experiment of the sweep and its children")
    grid: list[str] = option(help="NAME=V1,V2 per swept training option", metavar="NAME=V1,V2")
    seeds: list[int] = option(
        default_factory=list, help="run each combination once per seed (e.g. 1,2)"
    )
    random: int = option(0, "run N combinations drawn at random; 0 = the whole grid")
    random_seed: int = option(0, "seed of the random draw")
    set: list[str] = option(
        default_factory=list, help="NAME=VALUE training options for every child", metavar="NAME=V"
    )
    tracking_uri: str | None = option(None, "MLflow tracking URI", default_text=URI_HELP)
    progress: bool = option(False, "progress bars")
    rerun: bool = option(
        False,
        "train every child again, also those finished before (after the code changed); "
        "the new runs join the same parent run",
    )


RERANK = "rerank."  # prefix of re-ranking values (``rerank.diversity.lambda``)


def parse_pairs(items: list[str], many: bool) -> dict[str, list[Any]]:
    """``["loss=ce,bce"]`` → ``{"loss": ["ce", "bce"]}``, each value typed as its option;
    ``rerank.*`` values are checked against the re-ranking config."""
    out: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"{item!r}: expected name=value{',value...' if many else ''}")
        name = name.strip()
        raw = [v.strip() for v in values.split(",")] if many else [values.strip()]
        if name.startswith(RERANK):  # checked per combination, on its base config (run)
            out[name] = raw
            continue
        name = name.replace("-", "_")
        if name in FIXED:
            raise ValueError(f"cannot sweep or set {name!r}: the sweep sets it for every child")
        out[name] = [parse_value(TrainJobConfig, name, v) for v in raw]
    return out


def _split(values: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Training options, and the re-ranking config (JSON) that ``rerank``/``rerank.*``
    values give (None without any)."""
    train = {k: v for k, v in values.items() if not k.startswith(RERANK)}
    dotted = {k.removeprefix(RERANK): v for k, v in values.items() if k.startswith(RERANK)}
    if not dotted:
        return train, train.pop("rerank", None)
    base = train.pop("rerank", None)
    cfg = RerankConfig.load(base) if base else RerankConfig()
    return train, cfg.with_overrides(dotted).to_json()


def combinations(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The children's overrides: the whole grid, or ``cfg.random`` draws from it."""
    grid = parse_pairs(cfg.grid, many=True)
    if cfg.seeds:
        grid["seed"] = list(cfg.seeds)
    if cfg.random and cfg.random < len(ParameterGrid(grid)):
        return list(ParameterSampler(grid, n_iter=cfg.random, random_state=cfg.random_seed))
    return list(ParameterGrid(grid))


def code_version() -> str:
    """A fingerprint of the code that trains and evaluates: SHA-256 (12 hex digits) of
    every ``.py`` file of the ``recsys`` and ``pipelines`` packages, with its path.

    A sweep reuses only what this code produced: results of older code, under the same
    options, would otherwise pass for new ones. Unlike the git commit it changes only
    when the code does (not for a README edit), and it sees uncommitted changes.
    """
    digest = hashlib.sha256()
    for package in (Path(recsys.__file__).parent, Path(__file__).parent):
        for path in sorted(package.rglob("*.py")):
            name = f"{package.name}/{path.relative_to(package).as_posix()}"
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _key(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def run(cfg: SweepConfig) -> dict[str, Any]:
    """Run (or finish) the sweep; return the parent run id and each child's outcome."""
    import mlflow

    from recsys.tracking import setup

    shared = {k: v[0] for k, v in parse_pairs(cfg.set, many=False).items()}
    combos = combinations(cfg)
    for overrides in combos:  # a bad re-ranking value fails now, not after hours of training
        _split({**shared, **overrides})
    # A model is reused only for the same options on the same data, by the same code.
    info = SequenceData.load(cfg.data).dataset_info()  # also: a bad folder fails now
    code = code_version()
    data_id = {
        "data": str(Path(cfg.data).resolve()),
        "dataset_version": info["dataset_version"],
        "code": code,
    }
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
    # Finished children and trained models are reused unless --rerun asks for new runs.
    done: set[str | None] = set()
    models: dict[str, str] = {}
    if not cfg.rerun:
        children = client.search_runs(
            [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"
        )
        done = {c.data.tags.get("sweep_key") for c in children if c.info.status == "FINISHED"}
        # Trained models by their training options, data and code, from any sweep of
        # the experiment: re-ranking values reuse them.
        trained = client.search_runs(
            [exp_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"],
        )
        models = {
            c.data.tags["train_key"]: c.info.run_id
            for c in trained
            if "train_key" in c.data.tags and c.data.tags.get("kind") != "reranked"
        }
    outcomes = []
    for overrides in combos:
        key = _key({**shared, **overrides, "code": code})
        if key in done:
            outcomes.append({**overrides, "status": "skipped (finished before)"})
            continue
        options, rerank = _split({**shared, **overrides})
        train_key = _key({**options, **data_id})
        values = {
            "data": cfg.data,
            "experiment": cfg.experiment,
            "progress": cfg.progress,
            "tracking_uri": cfg.tracking_uri,
            **options,
            "rerank": rerank,
            "parent_run_id": parent_id,
            "sweep_key": key,
            "train_key": train_key,
        }
        try:
            job = from_flat(TrainJobConfig, values, source="sweep")
            if train_key in models:
                out = _reranked_child(job, models[train_key])
            else:
                out = train(job)
                models[train_key] = out["run_id"]
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


def _reranked_child(job: TrainJobConfig, model_run_id: str) -> dict[str, Any]:
    """A child run evaluating the model trained by ``model_run_id`` with ``job.rerank``:
    the trained run's params and tags with this child's re-ranking, its test metrics."""
    import mlflow

    from recsys import allocation
    from recsys.bundle import load_bundle, resolve_model
    from recsys.data.dataset import SequenceData
    from recsys.evaluation.evaluate import EvalConfig, evaluate
    from recsys.tracking import log_eval_result, log_params

    client = mlflow.MlflowClient()
    trained = client.get_run(model_run_id)
    bundle = load_bundle(resolve_model(model_run_id, job.tracking_uri))
    data = SequenceData.load(job.data)
    plan = allocation.plan_for(bundle, job.rerank or False)
    # The trained model's own history setting (its run chose it from the data).
    eval_cfg = EvalConfig(ks=tuple(job.eval_ks), exclude_seen=bundle.exclude_seen())
    eval_cfg = eval_cfg.within(data.num_items)
    res = evaluate(bundle.scorer, data, "test", eval_cfg, progress=job.fit.progress, rerank=plan)
    keep = {"model", "dataset", "dataset_version", "split", "eval_protocol", "git_commit"}
    tags = {k: v for k, v in trained.data.tags.items() if k in keep}
    tags.update(
        {
            "mlflow.parentRunId": job.parent_run_id or "",
            "sweep_key": job.sweep_key or "",
            "train_key": job.train_key or "",
            "kind": "reranked",
            "model_run_id": model_run_id,
        }
    )
    rerank_params = {"rerank": job.rerank or "none"}
    if job.rerank:
        rerank_params.update(RerankConfig.load(job.rerank).flat())
    name = " ".join(
        f"{k.removeprefix('rerank.')}={v}" for k, v in rerank_params.items() if k != "rerank"
    )
    with mlflow.start_run(run_name=f"reranked {name}"[:250], tags=tags) as active:
        # The trained run's own rerank.* values (if any) give way to this child's.
        params = {k: v for k, v in trained.data.params.items() if not k.startswith(RERANK)}
        log_params({**params, **rerank_params})
        log_eval_result(res)
    return {"run_id": active.info.run_id, **res.flat(with_ci=False)}


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
