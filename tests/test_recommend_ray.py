"""`recsys recommend --engine ray`: the local engine's parts, written by a pool of Ray
actors on a real local Ray; resumable after a killed driver, also across engines; the
refusals (exposure budgets, no Ray, an address where no Ray answers)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import polars as pl
import pytest

import pipelines.recommend as job
from pipelines import recommend_ray
from recsys import Recommender
from recsys.cli import main

ROOT = Path(__file__).resolve().parents[1]
USERS = 230


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, make_prepared, successor_sequences):
    root = tmp_path_factory.mktemp("ray")
    seqs = [[i + 1000 for i in s] for s in successor_sequences(USERS, 30, seed=2)]
    data = make_prepared(root / "d", seqs)
    rec = Recommender(epochs=3, max_len=16, d_model=16, progress=False)
    rec.fit(data, output=root / "bundle")
    return root / "bundle"


@pytest.fixture(scope="module")
def cluster():
    """A local Ray for the module (its GCS address): started once, small and quiet."""
    ray = pytest.importorskip("ray")
    auth_mode = os.environ.get("RAY_AUTH_MODE")  # Ray sets it (and the drivers inherit it)
    ray.init(
        num_cpus=2,
        object_store_memory=200 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    if auth_mode is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = auth_mode


def _read(folder: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted(folder.glob("part-*.parquet"))).sort("user_id", "rank")


def _same(ray_out: Path, local_out: Path) -> None:
    a, b = _read(ray_out), _read(local_out)
    assert a.columns == b.columns and a.height == b.height > 0
    # Exact: user_id, rank, item_id (+ because); within 1e-5: the floats, which the
    # actors' one torch thread may sum in another order.
    floats = [c for c in ("score", "because_weight") if c in a.columns]
    assert a.drop(floats).equals(b.drop(floats))
    assert (a["score"] - b["score"]).abs().max() <= 1e-5
    if "because_weight" in floats:
        wa, wb = (x["because_weight"].explode() for x in (a, b))
        assert wa.len() == wb.len() and (wa - wb).abs().max() <= 1e-5
    names = sorted(p.name for p in ray_out.iterdir())
    assert names == sorted(p.name for p in local_out.iterdir())  # same parts, no leftovers
    ray_m, local_m = job.read_manifest(ray_out), job.read_manifest(local_out)
    assert (ray_m["engine"], local_m["engine"]) == ("ray", "local")
    drop = ("engine", "created_at")
    assert {k: v for k, v in ray_m.items() if k not in drop} == {
        k: v for k, v in local_m.items() if k not in drop
    }


def _cfg(bundle: Path, out: Path, **kw) -> job.RecommendConfig:
    kw = {"k": 4, "chunk_users": 50, "progress": False, **kw}
    return job.RecommendConfig(model=str(bundle), output=str(out), **kw)


# -- refusals: no Ray needs to run ---------------------------------------------------


def test_without_ray_one_line_says_how_to_install_it(bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ValueError) as e:
        job.run(_cfg(bundle, tmp_path / "o", engine="ray"))
    assert str(e.value) == "--engine ray needs Ray: pip install 'recsys[ray]'"
    args = ["recommend", "--model", str(bundle), "--output", str(tmp_path / "o")]
    assert main([*args, "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "needs Ray: pip install 'recsys[ray]'" in err
    assert not (tmp_path / "o").exists()


def test_exposure_budgets_are_refused_on_ray(bundle, tmp_path):
    pytest.importorskip("ray")
    path = tmp_path / "rerank.toml"
    path.write_text("candidates = 10\n[exposure]\nmax_share = 0.3\n")
    with pytest.raises(ValueError, match=r"--engine ray cannot re-rank with exposure.*local"):
        job.run(_cfg(bundle, tmp_path / "o", engine="ray", rerank=str(path)))
    assert not (tmp_path / "o").exists()


def test_an_address_where_no_ray_answers_is_named_at_once(bundle, tmp_path, free_port, monkeypatch):
    ray = pytest.importorskip("ray")
    # Whether or not this process already joined the module's Ray, take the joining path.
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    address = f"127.0.0.1:{free_port()}"  # nothing listens
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=rf"--ray-address '{address}': no Ray cluster answers"):
        job.run(_cfg(bundle, tmp_path / "o", engine="ray", ray_address=address))
    # Something listens, but it is no Ray head (an HTTP/1 server's answer).
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(64)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    with server, pytest.raises(ValueError, match="something answers there, but not a Ray"):
        job.run(_cfg(bundle, tmp_path / "o", engine="ray", ray_address=f"127.0.0.1:{port}"))
    assert time.monotonic() - t0 < 30  # Ray alone retries for minutes
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        recommend_ray.check_address("headnode")


def test_an_actor_that_does_not_see_the_output_writes_nothing(bundle, tmp_path):
    # An actor on a node without the driver's --output folder (no shared file system)
    # would write its parts where no one reads them: it stops instead.
    sha = job.sha256_file(bundle / "weights.pt")
    with pytest.raises(ValueError, match=r"is not on Ray node .*every node sees"):
        job.PartWriter(_cfg(bundle, tmp_path / "elsewhere"), False, sha)
    assert not (tmp_path / "elsewhere").exists()
    (tmp_path / "o").mkdir()
    job._write_meta(tmp_path / "o" / job.JOB, {})
    with pytest.raises(ValueError, match="another model on this Ray node"):
        job.PartWriter(_cfg(bundle, tmp_path / "o"), False, "0" * 64)


# -- a real Ray ------------------------------------------------------------------------


@pytest.mark.slow  # starts Ray twice, and actors that load the model
def test_ray_gives_the_local_engines_parts_and_stops_the_ray_it_started(bundle, tmp_path):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # run alone or first, this test starts its own Ray
        pytest.skip("this process is already connected to Ray")
    job.run(_cfg(bundle, tmp_path / "local"))
    manifest = job.run(_cfg(bundle, tmp_path / "ray", engine="ray"))
    assert not ray.is_initialized()  # the Ray the job started is gone
    assert manifest["parts_written_by_this_run"] == manifest["parts"] == 5
    _same(tmp_path / "ray", tmp_path / "local")


@pytest.mark.slow
def test_ray_explains_and_reranks_like_the_local_engine(bundle, cluster, tmp_path):
    path = tmp_path / "rerank.toml"
    path.write_text(
        'candidates = 12\n[diversity]\nmethod = "mmr"\nlambda = 0.5\n[rules]\nblock = ["1005"]\n'
    )
    kw = dict(explain=2, rerank=str(path), chunk_users=60)
    job.run(_cfg(bundle, tmp_path / "local", **kw))
    job.run(_cfg(bundle, tmp_path / "ray", engine="ray", ray_address=cluster, **kw))
    _same(tmp_path / "ray", tmp_path / "local")
    got = _read(tmp_path / "ray")
    assert "1005" not in got["item_id"].to_list() and got["because"].list.len().max() == 2
    assert pl.read_parquet(tmp_path / "ray").sort("user_id", "rank").equals(got)  # one table
    # More actors than the cluster has CPUs: refused, not left waiting.
    with pytest.raises(ValueError, match=r"--ray-actors 5: the Ray cluster has 2 CPU"):
        job.run(_cfg(bundle, tmp_path / "more", engine="ray", ray_actors=5, **kw))


DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import pipelines.recommend_ray as engine

    real = engine.map_parts

    def killed_after_3(*args, **kwargs):  # the driver dies as a machine would
        for n, row in enumerate(real(*args, **kwargs), 1):
            yield row
            if n == 3:
                os.kill(os.getpid(), signal.SIGKILL)

    if os.environ.get("KILL_DRIVER"):
        engine.map_parts = killed_after_3
    from recsys.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _settled(folder: Path, quiet_s: float = 1.5, limit_s: float = 60) -> None:
    """Wait until nothing under ``folder`` changes for ``quiet_s`` (a killed driver's
    actors are ended by Ray shortly after it)."""
    end, last, since = time.monotonic() + limit_s, None, time.monotonic()
    while time.monotonic() < end:
        now = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.2)


@pytest.mark.slow  # two drivers in subprocesses, each with its actors
def test_a_killed_driver_resumes_on_ray_or_locally_to_the_same_parts(bundle, cluster, tmp_path):
    ray = pytest.importorskip("ray")
    full, out = tmp_path / "full", tmp_path / "out"
    job.run(_cfg(bundle, full, chunk_users=5))
    parts = USERS // 5
    args = [
        "recommend", "--model", str(bundle), "--output", str(out), "--k", "4",
        "--chunk-users", "5", "--no-progress", "--engine", "ray", "--ray-address", cluster,
    ]  # fmt: skip
    driver = [sys.executable, "-c", DRIVER, *args]
    env = {**os.environ, "KILL_DRIVER": "1"}
    killed = subprocess.run(driver, cwd=ROOT, env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    _settled(out)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 3 <= len(before) < parts and not (out / job.MANIFEST).exists(), len(before)

    # The same arguments again, joining the same cluster from a new driver.
    resumed = subprocess.run(driver, cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    manifest = job.read_manifest(out)
    assert manifest["parts_written_by_this_run"] == parts - len(before)
    assert manifest["engine"] == "ray" and manifest["rows"] == USERS * 4
    assert {n: t for n, t in before.items() if (out / n).stat().st_mtime_ns == t} == before
    assert _read(out).equals(_read(full))
    assert not list(out.glob(".*tmp-*"))
    assert ray.cluster_resources().get("CPU") == 2  # the joined cluster runs on

    # A job begun on Ray is finished by the local engine, and the other way round.
    for gone in ("part-00003.parquet", "part-00040.parquet", job.MANIFEST):
        (out / gone).unlink()
    assert job.run(_cfg(bundle, out, chunk_users=5))["parts_written_by_this_run"] == 2
    (out / "part-00007.parquet").unlink()
    m = job.run(_cfg(bundle, out, chunk_users=5, engine="ray", ray_address=cluster))
    assert m["parts_written_by_this_run"] == 1 and m["engine"] == "ray"
    assert _read(out).equals(_read(full))
