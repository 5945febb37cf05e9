"""MLflow tracking: where runs go, and logging helpers shared by the jobs.

The default store is embedded: a SQLite file ``mlruns/mlflow.db`` and artifacts under
``mlruns/artifacts``, both relative to the working directory, no server. The
``MLFLOW_TRACKING_URI`` environment variable, or an explicit URI (``--tracking-uri``),
points elsewhere, e.g. ``http://127.0.0.1:5000`` for an ``mlflow server``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_STORE = Path("mlruns")
URI_HELP = "$MLFLOW_TRACKING_URI, else the SQLite store mlruns/mlflow.db"  # for --help


def resolve_uri(explicit: str | None = None) -> str:
    """The tracking URI: ``explicit``, else ``$MLFLOW_TRACKING_URI``, else the local SQLite."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    DEFAULT_STORE.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_STORE / 'mlflow.db').resolve()}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise ``ValueError`` at once if ``uri`` is an HTTP tracking server that cannot be
    reached (MLflow itself retries for minutes before it gives up)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered: reachable, whatever it thinks of /health
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ValueError(
            f"cannot reach the MLflow tracking server at {uri!r} ({reason}); start it, or "
            "give another --tracking-uri"
        ) from None


def _artifact_root(uri: str) -> str | None:
    # A SQLite store keeps its artifacts beside the database file; a server decides itself.
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None


def setup(experiment: str, uri: str | None = None) -> str:
    """Point MLflow at ``uri`` (see :func:`resolve_uri`) and create/select ``experiment``.

    Returns the experiment id.
    """
    import mlflow

    from recsys.io import safe_name

    # The name becomes part of the experiment's artifact path.
    safe_name(experiment, "experiment name")
    uri = resolve_uri(uri)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    if project_run_id():
        # Under `mlflow run`, the project's run (and its experiment) is already chosen.
        return mlflow.get_run(project_run_id()).info.experiment_id
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        from mlflow.exceptions import MlflowException

        root = _artifact_root(uri)
        try:
            exp_id = mlflow.create_experiment(
                experiment, artifact_location=f"{root}/{experiment}" if root else None
            )
        except MlflowException:
            # Another run created it since we looked (two jobs started together).
            exp = mlflow.get_experiment_by_name(experiment)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def protocol_label(exclude_seen: bool, protocol: str = "full") -> str:
    """How a metric was measured, in words (printed and logged beside every number)."""
    if protocol == "sampled":
        return "sampled: each target against 100 random unseen items (not full ranking)"
    seen = "history items excluded" if exclude_seen else "history items not excluded"
    return f"full ranking over all items, {seen}"


def project_run_id() -> str | None:
    """The run ``mlflow run`` opened for this process, if any."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def git_commit() -> str | None:
    """The commit of the ``recsys`` checkout, if it is one and git is available."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def log_params(params: Mapping[str, Any]) -> None:
    """Log params to the active run, values as strings (``None`` as ``"None"``).

    Keys the run already has are skipped (a resumed run, or one opened by ``mlflow run``
    with its own parameters), since MLflow refuses to log a param twice.
    """
    import mlflow

    run = mlflow.active_run()
    logged = mlflow.get_run(run.info.run_id).data.params if run else {}
    items = [(k, "None" if v is None else str(v)) for k, v in params.items() if k not in logged]
    for lo in range(0, len(items), 100):
        mlflow.log_params(dict(items[lo : lo + 100]))


def log_eval_result(result: Any, step: int = 0) -> None:
    """Log an :class:`~recsys.evaluation.evaluate.EvalResult`: its metrics (with CIs) at
    ``step`` and its per-user values as ``per_user/per_user_<stage>[_sampled]_metrics.parquet``.
    """
    import mlflow

    mlflow.log_metrics(result.flat(), step=step)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"per_user_{result.metric_name('metrics')}.parquet"
        result.per_user.write_parquet(path)
        mlflow.log_artifact(str(path), "per_user")


def log_learning_curve(history: list[dict[str, float]], name: str = "learning_curve.png") -> None:
    """Plot training loss and validation NDCG@10 per epoch and log it as a PNG artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [r["train_loss"] for r in history], color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss", color="tab:blue")
    valid = [(r["epoch"], r["valid_ndcg_at_10"]) for r in history if "valid_ndcg_at_10" in r]
    if valid:
        ax2 = ax.twinx()
        ax2.plot(*zip(*valid, strict=True), color="tab:orange", marker=".", label="valid NDCG@10")
        ax2.set_ylabel("validation NDCG@10 (full ranking)", color="tab:orange")
    ax.set_title("learning curve")
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        fig.savefig(path, dpi=100)
        mlflow.log_artifact(str(path))
    plt.close(fig)
