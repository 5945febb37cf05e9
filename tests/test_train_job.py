"""End to end: generate → prepare → train → evaluate through the CLI, with a real MLflow
store (SQLite in a temp dir, and a real ``mlflow server``), read back with the client."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from recsys.cli import main


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    log = root / "log.parquet"
    assert (
        main(
            [
                "generate",
                "--output",
                str(log),
                "--users",
                "150",
                "--items",
                "80",
                "--interactions",
                "4000",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "prepare",
                "--input",
                str(log),
                "--format",
                "parquet",
                "--output",
                str(root / "prepared"),
                "--name",
                "tiny-synth",
            ]
        )
        == 0
    )
    return root / "prepared"


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _client(workdir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")


def test_train_logs_everything_and_evaluate_reads_it_back(prepared, workdir, capsys, line_of, tiny):
    assert main(["train", "--data", str(prepared), *tiny, "--output", "run"]) == 0
    out = capsys.readouterr().out
    run_id = line_of(out, "run_id")

    client = _client(workdir)
    run = client.get_run(run_id)
    # The protocol printed is the history setting the run chose from its data (auto).
    seen = {"exclude": "excluded", "include": "not excluded"}[run.data.params["history"]]
    assert f"full ranking over all items, history items {seen}" in out
    assert client.get_experiment(run.info.experiment_id).name == "tiny-synth"
    p = run.data.params
    assert p["loss"] == "ce" and p["max_len"] == "20"  # ce: derived for a small catalogue
    assert p["dataset_name"] == "tiny-synth"
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert p["dataset_num_items"] == str(manifest["num_items"])
    assert p["dataset_version"] == manifest["dataset"]["version"]
    assert run.data.tags["eval_protocol"] == f"full ranking over all items, history items {seen}"
    m = run.data.metrics
    for name in (
        "test_ndcg_at_10",
        "test_hr_at_10",
        "test_mrr_at_10",
        "test_recall_at_10",
        "test_coverage_at_10",
        "valid_ndcg_at_10",
        "best_epoch",
        "seconds_to_best",
    ):
        assert name in m, name
    assert m["test_ndcg_at_10_ci_low"] <= m["test_ndcg_at_10"] <= m["test_ndcg_at_10_ci_high"]
    losses = client.get_metric_history(run_id, "train_loss")
    assert [x.step for x in losses] == [1, 2]
    # The summary value of valid_ndcg_at_10 is the best epoch's.
    valid = client.get_metric_history(run_id, "valid_ndcg_at_10")
    assert m["valid_ndcg_at_10"] == max(x.value for x in valid)

    local = Path(
        mlflow.artifacts.download_artifacts(run_id=run_id, tracking_uri=client.tracking_uri)
    )
    for rel in (
        "bundle/bundle.json",
        "bundle/weights.pt",
        "bundle/vocab_items.parquet",
        "checkpoints/best.pt",
        "config.json",
        "per_user/per_user_test_metrics.parquet",
    ):
        assert (local / rel).is_file(), rel
    assert (local / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # evaluate by run id reproduces the logged test metrics exactly.
    assert main(["evaluate", "--model", run_id, "--data", str(prepared), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert float(line_of(out, "test_ndcg_at_10").split()[0]) == pytest.approx(
        m["test_ndcg_at_10"], abs=5e-5
    )
    eval_run = client.get_run(line_of(out, "run_id"))
    assert eval_run.data.tags["kind"] == "evaluation"
    assert eval_run.data.metrics["test_ndcg_at_10"] == m["test_ndcg_at_10"]
    # ... and so does the local bundle folder, without MLflow.
    assert (
        main(
            [
                "evaluate",
                "--model",
                "run/bundle",
                "--data",
                str(prepared),
                "--no-log",
                "--no-progress",
            ]
        )
        == 0
    )
    assert float(line_of(capsys.readouterr().out, "test_ndcg_at_10").split()[0]) == pytest.approx(
        m["test_ndcg_at_10"], abs=5e-5
    )


def test_most_popular_baseline_run(prepared, workdir, capsys, line_of):
    assert main(["train", "--data", str(prepared), "--model", "most-popular", "--no-progress"]) == 0
    run = _client(workdir).get_run(line_of(capsys.readouterr().out, "run_id"))
    assert run.data.tags["model"] == "most-popular"
    assert 0 < run.data.metrics["test_hr_at_10"] < 1


def test_evaluate_on_other_data_is_refused(prepared, workdir, tmp_path, capsys, make_prepared):

    assert (
        main(
            [
                "train",
                "--data",
                str(prepared),
                "--model",
                "most-popular",
                "--no-progress",
                "--output",
                "pop",
            ]
        )
        == 0
    )
    other = make_prepared(tmp_path / "other", [[1, 2, 3], [2, 3, 4]])
    assert main(["evaluate", "--model", "pop/bundle", "--data", str(other), "--no-log"]) == 2
    assert "trained on dataset 'tiny-synth'" in capsys.readouterr().err


def test_unknown_model_is_a_clear_error(prepared, workdir, capsys):
    assert main(["evaluate", "--model", "0123456789abcdef", "--data", str(prepared)]) == 2
    assert "'0123456789abcdef' is neither a folder nor a run id" in capsys.readouterr().err


def test_interrupted_training_resumes_in_the_same_run(
    prepared, workdir, capsys, monkeypatch, line_of, tiny
):
    from recsys.training import trainer

    real_epoch = trainer.Trainer._epoch

    def dying_epoch(self):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(self)

    monkeypatch.setattr(trainer.Trainer, "_epoch", dying_epoch)
    args = ["train", "--data", str(prepared), *tiny, "--epochs", "3", "--output", "run"]
    with pytest.raises(KeyboardInterrupt):
        main(args)
    monkeypatch.setattr(trainer.Trainer, "_epoch", real_epoch)
    assert main([*args, "--resume"]) == 0
    run_id = line_of(capsys.readouterr().out, "run_id")
    client = _client(workdir)
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    assert [x.step for x in client.get_metric_history(run_id, "train_loss")] == [1, 2, 3]
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow  # a real `mlflow server`
def test_train_against_a_real_mlflow_server(prepared, workdir, capsys, free_port, line_of, tiny):
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{workdir / 'server.db'}",
            "--artifacts-destination",
            str(workdir / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(server.stderr.read().decode()[-2000:]) from None
                time.sleep(0.5)
        assert (
            main(["train", "--data", str(prepared), *tiny, "--epochs", "1", "--tracking-uri", uri])
            == 0
        )
        run_id = line_of(capsys.readouterr().out, "run_id")
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and "test_ndcg_at_10" in run.data.metrics
        names = {a.path for a in client.list_artifacts(run_id)}
        assert {"bundle", "checkpoints", "per_user", "learning_curve.png"} <= names
        assert not (workdir / "mlruns").exists()  # nothing went to the default store
    finally:
        server.terminate()
        server.wait(timeout=30)
