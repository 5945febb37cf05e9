"""The registered pyfunc model behind a real `mlflow models serve` answers like the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pandas as pd
import pytest
from test_train_job import TINY, _free_port, _line

from recsys import Recommender
from recsys.cli import main


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from conftest import make_prepared, successor_sequences

    return make_prepared(tmp_path_factory.mktemp("serve") / "d", successor_sequences(120, 25))


def _post(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_registered_model_served_over_rest(prepared, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["train", "--data", str(prepared), *TINY, "--register-name", "tiny-rec"]) == 0
    out = capsys.readouterr().out
    assert _line(out, "registered_model") == "models:/tiny-rec/1"
    api = Recommender.load("models:/tiny-rec/1")
    by_run = Recommender.load(_line(out, "run_id"))
    assert by_run.recommend(["3"], k=4).equals(api.recommend(["3"], k=4))

    port = _free_port()
    # mlflow starts `uvicorn` from PATH: the environment's bin folder must be on it.
    bin_dir = os.path.dirname(sys.executable)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = {**clean, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            "models:/tiny-rec/1",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except (TimeoutError, urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(server.stderr.read().decode()[-3000:]) from None
                time.sleep(1)
        url = f"http://127.0.0.1:{port}/invocations"
        history = ["5", "6", "7", "8", "9", "10"]
        status, body = _post(
            url,
            {
                "dataframe_records": [
                    {"user_id": "3", "k": 4},
                    {"history": history, "k": 3},
                ]
            },
        )
        assert status == 200, body
        got = pd.DataFrame(body["predictions"])
        known = got[got["request"] == 0]
        expected = api.recommend(["3"], k=4)
        assert known["item_id"].tolist() == expected["item_id"].to_list()
        assert known["score"].tolist() == pytest.approx(expected["score"].to_list(), abs=1e-5)
        new = got[got["request"] == 1]
        assert (
            new["item_id"].tolist() == api.recommend_for_history(history, k=3)["item_id"].to_list()
        )

        status, body = _post(url, {"dataframe_records": [{"user_id": "ghost"}]})
        assert status == 400 and "unknown user ID" in body["message"]
        status, body = _post(url, {"dataframe_records": [{"user_id": "3", "k": 0}]})
        assert status == 400 and "k=0" in body["message"]
        status, body = _post(url, {"dataframe_records": [{"item": "3"}]})
        assert status == 400 and "'user_id' or a 'history'" in body["message"]
    finally:
        server.terminate()
        server.wait(timeout=30)
