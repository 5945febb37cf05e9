"""The MLflow project's entry points run through `mlflow run` in this environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

PROJECT = Path(__file__).resolve().parents[1] / "mlflow"


def _mlflow_run(entry: str, params: dict[str, str], cwd: Path) -> None:
    bin_dir = os.path.dirname(sys.executable)
    # Earlier tests in this process may have set MLFLOW_* variables (mlflow does).
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = {
        **clean,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
    }
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(PROJECT),
        "-e",
        entry,
        "--env-manager",
        "local",
    ]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # `mlflow run` subprocesses
def test_generate_and_prepare_entry_points(tmp_path):
    _mlflow_run(
        "generate",
        {
            "output": str(tmp_path / "log.parquet"),
            "users": "60",
            "items": "30",
            "interactions": "1200",
        },
        tmp_path,
    )
    assert pl.read_parquet(tmp_path / "log.parquet").height == 1200
    # A relative input path resolves against the caller's directory.
    _mlflow_run(
        "prepare",
        {"input": "log.parquet", "output": str(tmp_path / "prep"), "format": "parquet"},
        tmp_path,
    )
    assert (tmp_path / "prep" / "manifest.json").is_file()
