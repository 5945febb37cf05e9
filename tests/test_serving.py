"""The registered pyfunc model behind a real `mlflow models serve` answers like the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch

import recsys.serving as serving
from recsys import Recommender
from recsys.bundle import ARTIFACT_PATH
from recsys.cli import main
from recsys.io import quote
from recsys.serving import QUOTE_CHARS, RecsysModel

ITEMS = 25  # the catalogue of the `prepared` fixture


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, make_prepared, successor_sequences):
    return make_prepared(tmp_path_factory.mktemp("serve") / "d", successor_sequences(120, 25))


def _strict_json(body: bytes | str) -> object:
    """``json.loads`` that refuses NaN and Infinity, which are not JSON."""

    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(body, parse_constant=refuse)


def _post(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, _strict_json(r.read())
    except urllib.error.HTTPError as e:
        return e.code, _strict_json(e.read())


@pytest.fixture(scope="module", autouse=True)
def _keep_torch_threads():
    # Loading the served model sets torch's threads for the process; later tests train.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def served(prepared, tmp_path_factory):
    """The pyfunc model loaded in this process, as the server loads it, and its Recommender."""
    rec = Recommender(epochs=2, max_len=20, d_model=16, batch_size=64, progress=False)
    rec.fit(prepared, output=tmp_path_factory.mktemp("served") / "bundle")
    model = RecsysModel()
    model.load_context(SimpleNamespace(artifacts={ARTIFACT_PATH: str(rec.bundle.path)}))
    return model, rec


def _expected(rec: Recommender, rows: list[dict]) -> pd.DataFrame:
    """The per-row answers of the Python API, as the served model lays them out."""
    parts = []
    for i, row in enumerate(rows):
        k = row.get("k", 10)
        if "user_id" in row:
            out = rec.recommend([str(row["user_id"])], k=k, as_pandas=True)
        else:
            history = row["history"]
            if isinstance(history, str):
                history = [h.strip() for h in history.split(",")]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # unknown items are skipped
                out = rec.recommend_for_history(history, k=k, as_pandas=True)
            out.insert(0, "user_id", None)
        out.insert(0, "request", i)
        parts.append(out)
    return pd.concat(parts, ignore_index=True)


def _assert_same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert got["request"].tolist() == expected["request"].tolist()
    # (pandas reads a JSON null in a string column as NaN)
    users = [[None if pd.isna(u) else u for u in df["user_id"]] for df in (got, expected)]
    assert users[0] == users[1]
    assert got["rank"].tolist() == expected["rank"].tolist()
    assert got["item_id"].tolist() == expected["item_id"].tolist()
    assert got["score"].tolist() == pytest.approx(expected["score"].tolist(), abs=1e-5)


MIXED = [
    {"user_id": "3", "k": 4},
    {"history": ["5", "6", "7", "8", "9", "10"], "k": 3},
    {"user_id": "17"},
    {"history": ["1", "no-such-item", "2"], "k": 1},  # unknown items are skipped
    {"user_id": "3", "k": ITEMS},  # fewer items than k are left: no empty slots
    {"history": "20, 21,22", "k": 7},  # one comma-separated string
    {"user_id": 42, "k": 2},  # a JSON number
    {"history": ["11"], "k": ITEMS},
]


def test_quote_cuts_long_values():
    assert quote("196", QUOTE_CHARS) == "'196'"
    assert quote(0, QUOTE_CHARS) == "0"
    long = quote("x" * 5_000_000, QUOTE_CHARS)
    assert long == repr("x" * 60) + "... (5000000 characters)"
    assert quote(["1"] * 100_000, QUOTE_CHARS).endswith("... (500000 characters)")


def test_mixed_batch_answers_like_single_rows(served):
    model, rec = served
    got = model.predict(None, pd.DataFrame(MIXED))
    _assert_same(got, _expected(rec, MIXED))
    # The answer is JSON as it is (a missing user is None, never NaN; no -inf slots).
    json.dumps(got.to_dict("records"), allow_nan=False)
    assert got.loc[got["request"] == 1, "user_id"].isna().all()
    assert 0 < (got["request"] == 4).sum() < ITEMS


def test_answer_records_are_pandas_own(served):
    # The answer builds its records (what the server sends) its own, faster way: the same
    # values and types as pandas', and a plain DataFrame otherwise.
    model, _ = served
    got = model.predict(None, pd.DataFrame(MIXED))
    plain = pd.DataFrame(got)
    assert got.to_dict(orient="records") == plain.to_dict(orient="records")
    assert [type(v) for v in got.to_dict(orient="records")[0].values()] == [
        type(v) for v in plain.to_dict(orient="records")[0].values()
    ]
    assert got.to_dict() == plain.to_dict() and got.to_dict("list") == plain.to_dict("list")
    assert [str(t) for t in got.dtypes] == ["int64", "object", "int32", "object", "float32"]
    assert type(got.head(2)) is pd.DataFrame and list(got.columns) == list(serving.ANSWER_COLUMNS)


def test_rows_may_ask_for_reasons(served):
    model, rec = served
    rows = [
        {"user_id": "3", "k": 3, "explain": 2},
        {"history": ["5", "6", "7"], "k": 2, "explain": 1},
        {"user_id": "17", "k": 2},  # asks for none: empty lists
    ]
    got = model.predict(None, pd.DataFrame(rows))
    plain = model.predict(None, pd.DataFrame([{k: v for k, v in r.items() if k != "explain"}
                                              for r in rows]))  # fmt: skip
    _assert_same(got.drop(columns=["because", "because_weight"]), plain)
    json.dumps(got.to_dict("records"), allow_nan=False)
    for request, api in (
        (0, rec.explain(["3"], k=3, top=2)),
        (1, rec.explain_history(["5", "6", "7"], k=2, top=1)),
    ):
        answer = got[got["request"] == request]
        for item, because, weight in zip(
            answer["item_id"], answer["because"], answer["because_weight"], strict=True
        ):
            mine = api.filter((pl.col("item_id") == item) & (pl.col("source") == "history"))
            assert because == mine["history_item_id"].to_list()
            assert weight == pytest.approx(mine["contribution"].to_list(), abs=1e-5)
    assert all(b == [] for b in got[got["request"] == 2]["because"])


def test_parallel_requests_answer_as_sequential_ones(served):
    model, _ = served
    requests = [pd.DataFrame(MIXED[i:] + MIXED[:i]) for i in range(len(MIXED))]
    expected = [model.predict(None, r) for r in requests]
    with ThreadPoolExecutor(8) as pool:  # as the server's threads call it
        got = list(pool.map(lambda r: model.predict(None, r), requests * 4))
    for g, e in zip(got, expected * 4, strict=True):
        pd.testing.assert_frame_equal(g, e)


def test_rows_are_scored_in_chunks(served, monkeypatch):
    model, rec = served
    calls = []
    real = serving.score_chunk

    def counting(bundle, flat, offsets, k, *args, **kwargs):
        calls.append((len(offsets) - 1, k))
        return real(bundle, flat, offsets, k, *args, **kwargs)

    monkeypatch.setattr(serving, "score_chunk", counting)
    monkeypatch.setattr(serving, "CHUNK_ROWS", 3)
    rows = MIXED * 2  # 16 rows: chunks of 3 with different largest k
    _assert_same(model.predict(None, pd.DataFrame(rows)), _expected(rec, rows))
    assert [b for b, _ in calls] == [3, 3, 3, 3, 3, 1]
    assert [k for _, k in calls] == [10, ITEMS, ITEMS, 10, ITEMS, ITEMS]

    calls.clear()
    monkeypatch.setattr(serving, "CHUNK_ROWS", 1024)
    users = pd.DataFrame({"user_id": [str(1 + i % 120) for i in range(1000)]})
    assert model.predict(None, users)["request"].nunique() == 1000
    assert calls == [(1000, 10)]  # one call for a 1,000-row request


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"user_id": "ghost"}, "unknown user ID 'ghost'"),
        ({"history": ["no", "such"]}, "the history ['no', 'such'] has no known item"),
        ({"user_id": "3", "history": ["5"]}, "give either user_id or history, not both"),
        ({"k": 3}, "give a user_id or a non-empty history"),
        ({"user_id": "3", "history": []}, None),  # an empty history is no history
        ({"user_id": "3", "k": 0}, "k=0: expected an integer from 1 to the catalogue size 25"),
        ({"user_id": "3", "k": ITEMS + 1}, "k=26: expected an integer"),
        ({"user_id": "3", "k": 2.5}, "k=2.5: expected an integer"),
        ({"user_id": "3", "k": "5"}, "k='5': expected an integer"),
        ({"user_id": "3", "k": True}, "k=True: expected an integer"),
        ({"user_id": "3", "explain": -1}, "explain=-1: expected an integer from 0 to 50"),
        ({"user_id": "3", "explain": "2"}, "explain='2': expected an integer"),
    ],
)
def test_a_bad_row_is_named_with_its_value(served, row, message):
    model, _ = served
    rows = [{"user_id": "3", "k": 2}, {"history": ["5"], "k": 2}, row, {"user_id": "4"}]
    if message is None:
        assert set(model.predict(None, pd.DataFrame(rows))["request"]) == {0, 1, 2, 3}
        return
    with pytest.raises(ValueError) as e:
        model._answer(pd.DataFrame(rows))
    assert str(e.value).startswith("request row 2: ")
    assert message in str(e.value)


def test_bad_rows_are_counted(served):
    model, _ = served
    rows = [{"user_id": "3", "k": 0}, {"user_id": "4"}, {"user_id": "5", "k": -1}]
    with pytest.raises(ValueError, match=r"^request row 0 \(and 1 more rows\): k=0"):
        model._answer(pd.DataFrame(rows))


def test_huge_values_are_quoted_cut(served):
    model, _ = served
    for row in ({"user_id": "u" * 5_000_000}, {"history": ["no-such-item"] * 500_000}):
        with pytest.raises(ValueError) as e:
            model._answer(pd.DataFrame([row]))
        assert len(str(e.value)) < 250 and "characters)" in str(e.value)


def test_request_rows_are_capped(served, monkeypatch):
    _, rec = served
    model = RecsysModel()
    context = SimpleNamespace(artifacts={ARTIFACT_PATH: str(rec.bundle.path)})
    monkeypatch.setenv("RECSYS_MAX_REQUEST_ROWS", "5")
    model.load_context(context)
    assert model.predict(None, pd.DataFrame({"user_id": ["3"] * 5}))["request"].nunique() == 5
    with pytest.raises(ValueError, match=r"at most 5 rows \(RECSYS_MAX_REQUEST_ROWS\); got 6"):
        model._answer(pd.DataFrame({"user_id": ["3"] * 6}))
    monkeypatch.setenv("RECSYS_MAX_REQUEST_ROWS", "lots")
    with pytest.raises(ValueError, match=r"RECSYS_MAX_REQUEST_ROWS: max_request_rows='lots'"):
        model.load_context(context)
    monkeypatch.delenv("RECSYS_MAX_REQUEST_ROWS")
    model.load_context(context)
    assert model.config.max_request_rows == serving.ServingConfig.max_request_rows == 10_000


def test_known_users_vectors_are_kept(served, monkeypatch):
    _, rec = served
    context = SimpleNamespace(artifacts={ARTIFACT_PATH: str(rec.bundle.path)})
    monkeypatch.setenv("RECSYS_USER_VECTORS", "0")
    plain = RecsysModel()
    plain.load_context(context)
    assert plain._known.store is None
    fresh = RecsysModel()
    monkeypatch.delenv("RECSYS_USER_VECTORS")
    fresh.load_context(context)
    first = fresh.predict(None, pd.DataFrame(MIXED))
    # Known users' vectors are kept (histories are not), equal to the computed ones, and
    # the answers are the same with them, without them, and a second time.
    kept = fresh._known.have.nonzero().flatten().tolist()
    assert kept == sorted(rec._user_idx(["3", "17", "42"]).tolist())
    flat, offsets = rec.bundle.histories()
    h, h_off = serving.gather_ragged(flat, offsets[np.array(kept) - 1], offsets[kept])
    assert torch.allclose(fresh._known.store[kept], serving.user_vectors(rec.bundle, h, h_off))
    _assert_same(fresh.predict(None, pd.DataFrame(MIXED)), first)
    _assert_same(plain.predict(None, pd.DataFrame(MIXED)), first)
    _assert_same(first, _expected(rec, MIXED))
    # A model with more users than the limit keeps none.
    monkeypatch.setenv("RECSYS_USER_VECTORS", str(rec.bundle.user_vocab.height - 1))
    few = RecsysModel()
    few.load_context(context)
    assert few._known.store is None


def test_loading_sets_torch_threads(served, monkeypatch):
    _, rec = served
    context = SimpleNamespace(artifacts={ARTIFACT_PATH: str(rec.bundle.path)})
    torch.set_num_threads(2)
    monkeypatch.setenv("RECSYS_TORCH_THREADS", "0")  # leave torch's setting alone
    RecsysModel().load_context(context)
    assert torch.get_num_threads() == 2
    monkeypatch.delenv("RECSYS_TORCH_THREADS")
    RecsysModel().load_context(context)
    assert torch.get_num_threads() == serving.ServingConfig.torch_threads == 1
    monkeypatch.setenv("RECSYS_TORCH_THREADS", "-1")
    with pytest.raises(ValueError, match="torch_threads=-1 and user_vectors=1000000 at least"):
        RecsysModel().load_context(context)


@pytest.mark.slow  # a real `mlflow models serve`
def test_registered_model_served_over_rest(
    prepared, tmp_path, monkeypatch, capsys, tiny, line_of, free_port
):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["train", "--data", str(prepared), *tiny, "--register-name", "tiny-rec"]) == 0
    out = capsys.readouterr().out
    assert line_of(out, "registered_model") == "models:/tiny-rec/1"
    api = Recommender.load("models:/tiny-rec/1")
    by_run = Recommender.load(line_of(out, "run_id"))
    assert by_run.recommend(["3"], k=4).equals(api.recommend(["3"], k=4))

    port = free_port()
    # mlflow starts `uvicorn` from PATH: the environment's bin folder must be on it.
    bin_dir = os.path.dirname(sys.executable)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = {**clean, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env["RECSYS_MAX_REQUEST_ROWS"] = "40"
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

        # A history answers with user_id null (JSON has no NaN; _post parses strictly).
        assert new["user_id"].isna().all() and "NaN" not in json.dumps(body)

        # Mixed rows and k in one request answer as the API does row by row.
        status, body = _post(url, {"dataframe_records": MIXED * 5})
        assert status == 200, body
        _assert_same(pd.DataFrame(body["predictions"]), _expected(api, MIXED * 5))

        # A request's re-ranking (a JSON object) applies to its rows, as in the Python API.
        top = expected["item_id"][0]
        rerank = {"rules": {"block": [top]}, "diversity": {"method": "mmr", "lambda": 0.5}}
        status, body = _post(
            url, {"dataframe_records": [{"user_id": "3", "k": 4, "rerank": rerank}]}
        )
        assert status == 200, body
        got = pd.DataFrame(body["predictions"])
        assert top not in got["item_id"].tolist()
        assert (
            got["item_id"].tolist() == api.recommend(["3"], k=4, rerank=rerank)["item_id"].to_list()
        )
        status, body = _post(
            url, {"dataframe_records": [{"user_id": "3", "rerank": {"diversity": {"lamda": 1}}}]}
        )
        assert status == 400 and "unknown key 'diversity.lamda'" in body["message"]

        status, body = _post(url, {"dataframe_records": [{"user_id": "ghost"}]})
        assert status == 400 and "request row 0: unknown user ID 'ghost'" in body["message"]
        status, body = _post(url, {"dataframe_records": [{"user_id": "3", "k": 0}]})
        assert status == 400 and "k=0" in body["message"]
        status, body = _post(url, {"dataframe_records": [{"item": "3"}]})
        assert status == 400 and "'user_id' or a 'history'" in body["message"]
        status, body = _post(
            url, {"dataframe_records": [{"user_id": "4"}, {"user_id": "3", "history": ["5"]}]}
        )
        assert (
            status == 400
            and "request row 1: give either user_id or history, not both" in (body["message"])
        )
        # The cap comes from the server's environment, read when the model loads.
        status, body = _post(url, {"dataframe_records": [{"user_id": "3"}] * 41})
        assert (
            status == 400
            and "at most 40 rows (RECSYS_MAX_REQUEST_ROWS); got 41" in (body["message"])
        )
        # A 5 MB value is not sent back (MLflow's own prefix shows the request truncated too).
        status, body = _post(url, {"dataframe_records": [{"user_id": "u" * 5_000_000}]})
        assert status == 400 and "... (5000000 characters)" in body["message"]
        assert len(body["message"]) < 2000
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_an_empty_request_gets_the_columns_only(served):
    model, _ = served
    out = model.predict(None, pd.DataFrame({"user_id": pd.Series([], dtype=object)}))
    assert list(out.columns) == ["request", "user_id", "rank", "item_id", "score"] and out.empty
