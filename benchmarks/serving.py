"""REST serving throughput: a real ``mlflow models serve`` against the Python API.

1. Single-user requests (``{"user_id": ..., "k": 10}``) in a closed loop: each of N client
   threads sends its next request as soon as the last one is answered, for ``--seconds``
   at each concurrency; requests/second and p50/p95/p99 latency in ms.
2. Batch requests of ``--batch-rows`` known users (k = 10): users/second and seconds per
   request, beside ``Recommender.load(...).recommend`` on the same users in this process,
   and the ratio REST/API.

By default a small model (2,000 users x 1,000 synthetic items, one epoch) is trained into
a temporary MLflow SQLite store and registered; ``--model models:/NAME/V`` (with
``--tracking-uri``) serves a registered model instead, and ``--bundle`` registers an
existing bundle folder. The server is always stopped at the end.

    python benchmarks/serving.py
    PYTHONPATH=/path/to/other/checkout python benchmarks/serving.py   # another recsys
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: bytes, timeout: float = 120) -> tuple[int, bytes]:
    req = urllib.request.Request(url, payload, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _strict_json(body: bytes) -> bool:
    """Whether ``body`` parses without NaN/Infinity (which JSON does not allow)."""

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        json.loads(body, parse_constant=refuse)
    except ValueError:
        return False
    return True


def train_model(root: Path, users: int, items: int, interactions: int) -> str:
    """Generate, prepare, train and register a small model; return ``models:/NAME/1``."""
    from recsys.cli import main

    log, prepared, name = root / "log.parquet", root / "prepared", "bench-serving"
    gen = ["--users", str(users), "--items", str(items), "--interactions", str(interactions)]
    prep = ["--input", str(log), "--format", "parquet", "--output", str(prepared)]
    train = ["--data", str(prepared), "--output", str(root / "run"), "--register-name", name]
    small = ["--epochs", "1", "--max-len", "50", "--d-model", "32", "--batch-size", "256"]
    quiet = ["--log-level", "WARNING"]
    # The commands' own reports are not this benchmark's; they go to a file beside the model.
    with open(root / "train.log", "w") as out, contextlib.redirect_stdout(out):
        assert main([*quiet, "generate", "--output", str(log), *gen, "--seed", "0"]) == 0
        assert main([*quiet, "prepare", *prep, "--name", name]) == 0
        assert main([*quiet, "train", *train, *small, "--no-progress", "--eval-ks", "10"]) == 0
    return f"models:/{name}/1"


def register_bundle(bundle: str, name: str = "bench-serving") -> str:
    """Log an existing bundle folder as the pyfunc model training logs; register it."""
    import mlflow

    # The same logging as `recsys train --register-name`, so the served model is identical.
    from pipelines.train import _log_model

    with mlflow.start_run(run_name="bench-serving"):
        return _log_model(Path(bundle), name)


def start_server(model: str, uri: str, port: int, cwd: Path, workers: int = 1) -> subprocess.Popen:
    """``mlflow models serve`` from this environment; returns once /ping answers."""
    # mlflow starts `uvicorn` from PATH; PYTHONPATH passes through so the server imports the
    # same recsys as this process. The server runs in a scratch folder because uvicorn puts
    # its working directory first on sys.path, which would shadow PYTHONPATH.
    bin_dir = os.path.dirname(sys.executable)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = {**clean, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers)] if workers > 1 else []
    with open(cwd / "server.log", "wb") as log:
        # A session of its own, so that stopping it stops uvicorn (its child) too.
        server = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server
        except (TimeoutError, urllib.error.URLError, ConnectionError):
            if server.poll() is not None or time.time() > deadline:
                stop_server(server)
                tail = (cwd / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the server did not start:\n{tail}") from None
            time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> None:
    """Stop the server's process group (mlflow and the uvicorn it started)."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    except ProcessLookupError:
        pass


def closed_loop(url: str, users: list[str], concurrency: int, seconds: float) -> dict[str, float]:
    """``concurrency`` threads sending single-user k=10 requests back to back."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    stop = time.perf_counter() + seconds

    def client(t: int) -> None:
        rng = np.random.default_rng(t)
        while time.perf_counter() < stop:
            user = users[rng.integers(len(users))]
            body = json.dumps({"dataframe_records": [{"user_id": user, "k": 10}]}).encode()
            begin = time.perf_counter()
            status, _ = _post(url, body)
            latencies[t].append(time.perf_counter() - begin)
            errors[t] += status != 200

    begin = time.perf_counter()
    threads = [threading.Thread(target=client, args=(t,)) for t in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - begin
    lat = np.concatenate([np.asarray(x) for x in latencies]) * 1000
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    rps = len(lat) / elapsed
    return {"n": len(lat), "rps": rps, "p50": p50, "p95": p95, "p99": p99, "errors": sum(errors)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_argument_group("the model (default: train a small one)")
    src.add_argument("--model", help="serve this registered model, models:/NAME/VERSION")
    src.add_argument(
        "--tracking-uri", help="the store holding --model (default $MLFLOW_TRACKING_URI)"
    )
    src.add_argument("--bundle", help="register this bundle folder in a temporary store")
    src.add_argument("--users", type=int, default=2000, help="synthetic users (default 2000)")
    src.add_argument("--items", type=int, default=1000, help="synthetic items (default 1000)")
    src.add_argument(
        "--interactions", type=int, default=40_000, help="synthetic events (default 40000)"
    )
    load = p.add_argument_group("the server and the load")
    load.add_argument(
        "--workers", type=int, default=1, help="uvicorn workers of the server (default 1)"
    )
    load.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8, 32],
        help="client threads of the single-user runs (default 1 8 32)",
    )  # fmt: skip
    load.add_argument(
        "--seconds", type=float, default=5, help="seconds per concurrency (default 5)"
    )
    load.add_argument(
        "--batch-rows", type=int, default=1000, help="users per batch request (default 1000)"
    )
    load.add_argument(
        "--batch-repeats", type=int, default=5,
        help="batch requests (and API calls) timed, after one warm-up each (default 5)",
    )  # fmt: skip
    args = p.parse_args(argv)

    # No artifact download bars between the tables.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import recsys

    print(f"recsys: {recsys.__file__}")
    print(
        f"server PYTHONPATH: {os.environ.get('PYTHONPATH') or '(unset)'}, workers: {args.workers}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        root = Path(tmp)
        if args.model:
            uri, model = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), args.model
            if not uri:
                p.error("--model needs --tracking-uri or $MLFLOW_TRACKING_URI")
        else:
            uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
            (root / "mlruns").mkdir()
            os.environ["MLFLOW_TRACKING_URI"] = uri
            begin = time.perf_counter()
            if args.bundle:
                import mlflow

                mlflow.set_tracking_uri(uri)
                model = register_bundle(args.bundle)
            else:
                model = train_model(root, args.users, args.items, args.interactions)
            print(f"model {model} ready in {time.perf_counter() - begin:.1f} s")

        from recsys import Recommender

        api = Recommender.load(model, tracking_uri=uri)
        all_users = api.bundle.user_vocab["user_id"].to_list()
        port = _free_port()
        begin = time.perf_counter()
        server = start_server(model, uri, port, root, args.workers)
        try:
            print(f"server up in {time.perf_counter() - begin:.1f} s on port {port}")
            url = f"http://127.0.0.1:{port}/invocations"
            items = api.bundle.item_vocab["item_id"].head(3).to_list()
            probe = [{"user_id": all_users[0], "k": 3}, {"history": items, "k": 3}]
            status, body = _post(url, json.dumps({"dataframe_records": probe}).encode())
            print(f"probe (user + history rows): HTTP {status}, strict JSON: {_strict_json(body)}")
            closed_loop(url, all_users, 1, 1.0)  # warm-up
            print("\nsingle-user requests, k=10, closed loop")
            head = ("concurrency", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors")
            print(" ".join(f"{h:>11}" for h in head))
            for c in args.concurrency:
                r = closed_loop(url, all_users, c, args.seconds)
                cells = [c, r["n"], *(f"{r[x]:.1f}" for x in ("rps", "p50", "p95", "p99"))]
                print(" ".join(f"{v:>11}" for v in [*cells, r["errors"]]))

            rows = min(args.batch_rows, len(all_users))
            users = all_users[:rows]
            payload = json.dumps(
                {"dataframe_records": [{"user_id": u, "k": 10} for u in users]}
            ).encode()
            rest = []
            for _ in range(args.batch_repeats + 1):
                begin = time.perf_counter()
                status, body = _post(url, payload)
                rest.append(time.perf_counter() - begin)
                if status != 200:
                    raise RuntimeError(f"batch request: HTTP {status}: {body[:500]!r}")
            python = []
            for _ in range(args.batch_repeats + 1):
                begin = time.perf_counter()
                api.recommend(users, k=10)
                python.append(time.perf_counter() - begin)
            # The first of each is a warm-up; the median of the rest is reported.
            rest_s, api_s = float(np.median(rest[1:])), float(np.median(python[1:]))
            print(f"\nbatch of {rows} known users, k=10 (median of {args.batch_repeats})")
            print(f"REST  {rows / rest_s:>10.0f} users/s  {rest_s:.3f} s/request")
            print(f"API   {rows / api_s:>10.0f} users/s  {api_s:.3f} s/call")
            print(f"REST/API throughput ratio: {api_s / rest_s:.2f}")
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
