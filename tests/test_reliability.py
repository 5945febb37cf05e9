"""Nothing lost, nothing escapes: output folders, names, damaged files and one-line errors.

Each test reproduces a defect found by drills (issue: data-loss, path and serving defects)
and failed before its fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow.dataset as pads
import pytest
from mlflow import MlflowClient

from recsys.cli import main

EVENTS = "user_id,item_id,timestamp\n" + "".join(
    f"{u},{i},{t}\n" for u in range(1, 6) for t, i in enumerate(range(u, u + 4))
)


def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``root`` (outside ``skip``), hidden ones included."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and (skip is None or skip not in p.parents)
    }


def prepare(src: Path, out: Path | str, *extra: str) -> int:
    return main(["prepare", "--input", str(src), "--format", "csv", "--output", str(out), *extra])


def one_error_line(capsys) -> str:
    """The one error line (other stderr lines may be MLflow's own log), with no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("recsys ")]
    assert len(lines) == 1 and ": error: " in lines[0], err
    return lines[0]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


# -- prepare --output ------------------------------------------------------------------


def test_prepare_refuses_a_folder_holding_its_input_and_other_files(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "events.csv").write_text(EVENTS)
    (d / "notes.txt").write_text("x")
    before = snapshot(tmp_path)
    assert prepare(d / "events.csv", d) == 2
    assert "contains the input" in one_error_line(capsys)
    (tmp_path / "e.csv").write_text(EVENTS)
    before = snapshot(tmp_path)
    assert prepare(tmp_path / "e.csv", d) == 2
    line = one_error_line(capsys)
    assert "already holds files that are not a prepared dataset" in line and "notes.txt" in line
    assert snapshot(tmp_path) == before


def test_prepare_refuses_an_output_that_is_a_file(tmp_path, capsys):
    src = tmp_path / "e.csv"
    src.write_text(EVENTS)
    target = tmp_path / "report.txt"
    target.write_text("mine")
    assert prepare(src, target) == 2
    assert "is a file; expected a folder" in one_error_line(capsys)
    assert target.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.csv", "report.txt"]


def test_prepare_replaces_only_its_own_previous_output(tmp_path, capsys):
    src = tmp_path / "e.csv"
    src.write_text(EVENTS)
    out = tmp_path / "prepared"
    assert prepare(src, out) == 0
    assert prepare(src, out, "--min-seq-len", "4") == 0  # our own: replaced
    assert json.loads((out / "manifest.json").read_text())["config"]["min_seq_len"] == 4
    (out / "sequences" / "mine.txt").write_text("x")  # something we did not write
    assert prepare(src, out) == 2
    assert "sequences/mine.txt" in one_error_line(capsys)
    assert (out / "sequences" / "mine.txt").read_text() == "x"


def test_prepare_refuses_the_current_folder(workdir, capsys):
    (workdir / "e.csv").write_text(EVENTS)
    assert prepare(workdir / "e.csv", ".") == 2
    assert "current folder" in one_error_line(capsys)
    assert prepare(workdir / "e.csv", "..") == 2
    assert "current folder" in one_error_line(capsys)


def test_output_under_a_file_is_one_line(tmp_path, capsys):
    src = tmp_path / "e.csv"
    src.write_text(EVENTS)
    assert prepare(src, tmp_path / "e.csv" / "out") == 2
    assert "is a file, not a folder" in one_error_line(capsys)


def test_output_in_a_read_only_folder_is_one_line(tmp_path, capsys, monkeypatch):
    src = tmp_path / "e.csv"
    src.write_text(EVENTS)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root may write anywhere: make the check see what a user would
        import recsys.io

        real = os.access
        monkeypatch.setattr(
            recsys.io.os, "access", lambda p, mode: Path(p) != locked and real(p, mode)
        )
    assert prepare(src, locked / "out") == 2
    assert f"the folder {str(locked)!r} is not writable" in one_error_line(capsys)


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    src = tmp_path / "e.csv"
    src.write_text(EVENTS)
    # A temporary of a process that is gone is removed; one of a live process, one of
    # another output, and a user's file that merely looks alike are kept.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stale = tmp_path / f".out.tmp-{dead}-0123abcd"
    (stale / "sequences").mkdir(parents=True)
    kept = [
        tmp_path / f".out.tmp-{os.getppid()}-fedcba98",
        tmp_path / ".other.tmp-1-00000000",
        tmp_path / ".out.tmp-20240101",  # no process id: not ours
    ]
    for k in kept:
        k.mkdir()
    assert prepare(src, tmp_path / "out") == 0
    assert not stale.exists() and all(k.is_dir() for k in kept)


def test_look_alike_and_linked_files_are_not_ours(tmp_path, capsys):
    src = tmp_path / "e.csv"
    src.write_text(EVENTS)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".notes.tmp-20240101").write_text("mine")  # looks like a temporary of ours
    assert prepare(src, out) == 2
    assert ".notes.tmp-20240101" in one_error_line(capsys)
    assert (out / ".notes.tmp-20240101").read_text() == "mine"
    # A refused job touches nothing beside its output either.
    dead_like = tmp_path / ".out.tmp-999999999-0123abcd"
    dead_like.mkdir()
    assert prepare(src, out) == 2 and dead_like.is_dir()
    capsys.readouterr()
    # A prepared dataset whose sequences folder is a link to elsewhere is not replaced.
    ours = tmp_path / "ours"
    assert prepare(src, ours) == 0
    elsewhere = tmp_path / "elsewhere"
    (ours / "sequences").rename(elsewhere)
    (ours / "sequences").symlink_to(elsewhere)
    assert prepare(src, ours) == 2
    assert "'sequences'" in one_error_line(capsys)
    assert (elsewhere / "part-00000.parquet").is_file()
    # An output that is itself a link is refused.
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    assert prepare(src, link) == 2
    assert "is a symbolic link" in one_error_line(capsys)


def test_files_added_while_the_job_runs_are_kept(tmp_path, monkeypatch):
    import recsys.data.prepare as prep

    src = tmp_path / "e.csv"
    src.write_text(EVENTS)
    out = tmp_path / "out"
    assert prepare(src, out) == 0
    real = prep.write_json

    def meanwhile(path, obj):  # the user drops a file into the old output mid-job
        (out / "notes.txt").write_text("mine")
        real(path, obj)

    monkeypatch.setattr(prep, "write_json", meanwhile)
    assert prepare(src, out) == 2
    assert (out / "notes.txt").read_text() == "mine" and (out / "manifest.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_dataset_name_cannot_escape(tmp_path, capsys):
    src = tmp_path / "e.csv"
    src.write_text(EVENTS)
    assert prepare(src, tmp_path / "out", "--name", "../../../../tmp/x/NAME") == 2
    assert "--name '../../../../tmp/x/NAME' is not allowed" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()
    # A default name from an odd file name is made safe instead.
    odd = tmp_path / "my events (2024).csv"
    odd.write_text(EVENTS)
    assert prepare(odd, tmp_path / "o2") == 0
    manifest = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert manifest["dataset"]["name"] == "my-events-2024"


# -- damaged prepared datasets and bundles --------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_prepared, successor_sequences, tiny):
    """A prepared dataset and a finished training run folder (own MLflow store)."""
    root = tmp_path_factory.mktemp("rel")
    data = make_prepared(root / "d", successor_sequences(60, 12), name="rel")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    out = root / "run"
    args = ["train", "--data", str(data), *tiny, "--output", str(out), "--tracking-uri", uri]
    assert main(args) == 0
    return {"data": data, "run": out, "uri": uri, "args": args}


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_damaged_dataset_is_refused_before_training(trained, tmp_path, capsys, tiny):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name in ("vocab_items.parquet", "sequences/part-00000.parquet"):
        data = _copy(trained["data"], tmp_path / name.replace("/", "_"))
        f = data / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        args = ["--data", str(data), *tiny, "--tracking-uri", uri]
        assert main(["train", *args, "--output", str(tmp_path / f"run-{f.stem}")]) == 2
        line = one_error_line(capsys)
        assert f"{str(f)!r} does not match the checksum" in line
        assert main(["evaluate", "--model", str(trained["run"] / "bundle"), *args[:2]]) == 2
        assert str(f) in one_error_line(capsys)
    assert MlflowClient(uri).search_registered_models() == []


def test_corrupt_manifest_is_one_line(trained, tmp_path, capsys, tiny):
    data = _copy(trained["data"], tmp_path / "d")
    (data / "manifest.json").write_text('{"schema_version": 1,\n')
    assert main(["train", "--data", str(data), *tiny, "--output", str(tmp_path / "r")]) == 2
    line = one_error_line(capsys)
    assert "manifest.json' is corrupt: not valid JSON" in line and "line 2" in line


def test_crafted_manifest_name_cannot_escape(trained, tmp_path, capsys, tiny):
    data = _copy(trained["data"], tmp_path / "d")
    m = json.loads((data / "manifest.json").read_text())
    m["dataset"]["name"] = "../../escape"
    (data / "manifest.json").write_text(json.dumps(m))
    assert main(["train", "--data", str(data), *tiny, "--output", str(tmp_path / "r")]) == 2
    assert "'../../escape' is not allowed" in one_error_line(capsys)
    args = ["train", "--data", str(trained["data"]), *tiny, "--output", str(tmp_path / "r2")]
    assert main([*args, "--experiment", "a/../../b"]) == 2
    assert "experiment name 'a/../../b' is not allowed" in one_error_line(capsys)
    assert main([*args, "--register-name", "x y"]) == 2
    assert "register name 'x y' is not allowed" in one_error_line(capsys)


@pytest.mark.parametrize("name", ["weights.pt", "items.faiss", "bundle.json", "index.json"])
def test_damaged_bundle_is_one_line(trained, tmp_path, capsys, name):
    bundle = _copy(trained["run"] / "bundle", tmp_path / "b")
    (bundle / name).write_bytes(b"\x80\x02garbage" * 3)
    out = tmp_path / "recs"
    assert main(["recommend", "--model", str(bundle), "--output", str(out), "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert str(bundle) in line and "weights_only" not in line
    assert not out.exists()


def test_bundle_without_checksums_still_fails_cleanly(trained, tmp_path, capsys):
    # Bundles of older releases have no checksums: a damaged file must still be one line,
    # without torch's advice to load with weights_only=False.
    bundle = _copy(trained["run"] / "bundle", tmp_path / "b")
    doc = json.loads((bundle / "bundle.json").read_text())
    del doc["files"]
    (bundle / "bundle.json").write_text(json.dumps(doc))
    (bundle / "weights.pt").write_bytes(b"\x80\x02garbage")
    with pytest.warns(UserWarning, match="has no checksums"):
        assert main(["recommend", "--model", str(bundle), "--output", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys)
    assert "weights.pt' cannot be read" in line and "weights_only" not in line
    (bundle / "weights.pt").write_bytes((trained["run"] / "bundle" / "weights.pt").read_bytes())
    (bundle / "items.faiss").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="has no checksums"):
        assert main(["recommend", "--model", str(bundle), "--output", str(tmp_path / "o")]) == 2
    assert "the item index (items.faiss, index.json) cannot be read" in one_error_line(capsys)


# -- train ------------------------------------------------------------------------------


def test_train_refuses_a_folder_that_is_not_a_run(trained, tmp_path, capsys, tiny):
    out = tmp_path / "mine"
    (out / "bundle").mkdir(parents=True)
    (out / "bundle" / "weights.pt").write_text("my own file")
    before = snapshot(tmp_path)
    assert main(["train", "--data", str(trained["data"]), *tiny, "--output", str(out)]) == 2
    assert "not a training run folder written by recsys" in one_error_line(capsys)
    assert snapshot(tmp_path) == before


def test_resume_of_a_finished_run_trains_nothing(trained, capsys, line_of):
    client = MlflowClient(trained["uri"])
    runs = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    summary = json.loads((trained["run"] / "run.json").read_text())["summary"]
    assert main([*trained["args"], "--resume"]) == 0
    out = capsys.readouterr().out
    assert line_of(out, "run_id") == summary["run_id"] and "already finished" in out
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == runs
    assert len(client.search_model_versions("name='recsys-rel'")) == 1


def test_resume_with_nothing_to_resume_is_refused(trained, tmp_path, capsys, tiny):
    args = ["train", "--data", str(trained["data"]), *tiny, "--resume"]
    assert main([*args, "--output", str(tmp_path / "new")]) == 2
    assert "nothing to resume" in one_error_line(capsys)


def test_diverging_training_is_one_line(trained, tmp_path, capsys, tiny):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train", "--data", str(trained["data"]), *tiny, "--tracking-uri", uri]
    assert main([*args, "--lr", "1e6", "--output", str(tmp_path / "r")]) == 2
    line = one_error_line(capsys)
    assert "lower" in line and "learning rate" in line and "lr=1000000.0" in line


def test_cut_off_beyond_the_catalogue_is_refused_or_dropped(trained, tmp_path, capsys):
    args = ["--model", str(trained["run"] / "bundle"), "--data", str(trained["data"])]
    assert main(["evaluate", *args, "--eval-ks", "5000", "--no-log"]) == 2
    line = one_error_line(capsys)
    assert "eval_ks [5000]: a cut-off K must be from 1 to the catalogue size 12" in line
    with pytest.warns(UserWarning, match=r"eval_ks \[5000\] exceed the catalogue size 12"):
        assert main(["evaluate", *args, "--eval-ks", "10", "5000", "--no-log"]) == 0
    out = capsys.readouterr().out
    assert "test_ndcg_at_10" in out and "5000" not in out
    train = ["train", "--data", str(trained["data"]), "--eval-ks", "13"]
    assert main([*train, "--output", str(tmp_path / "r")]) == 2
    assert "eval_ks [13]" in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


# -- recommend and --config -----------------------------------------------------------


def test_batch_output_folder_reads_as_one_table(trained, tmp_path):
    out = tmp_path / "recs"
    args = ["recommend", "--model", str(trained["run"] / "bundle"), "--k", "3"]
    assert main([*args, "--output", str(out), "--chunk-users", "25", "--no-progress"]) == 0
    import pipelines.recommend as job

    expected = job.read_manifest(out)["rows"]
    assert expected > 60  # seen items are excluded: some users have fewer than 3
    assert pl.read_parquet(out).height == expected
    assert pl.scan_parquet(out).collect().height == expected
    assert len(pd.read_parquet(out)) == expected
    assert pads.dataset(out).to_table().num_rows == expected
    assert sorted(p.name for p in out.iterdir()) == [
        "_job.parquet",
        "_manifest.parquet",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]


def test_empty_users_file_is_refused_and_writes_nothing(trained, tmp_path, capsys):
    users = tmp_path / "users.txt"
    users.write_text("\n\n")
    out = tmp_path / "recs"
    args = [
        "recommend",
        "--model",
        str(trained["run"] / "bundle"),
        "--users",
        str(users),
        "--k",
        "3",
    ]
    assert main([*args, "--output", str(out)]) == 2
    assert "lists no user ID" in one_error_line(capsys)
    assert not out.exists()


def test_bad_config_files_are_one_line(tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text('input = "a"\noutput = \n')
    assert main(["prepare", "--config", str(toml)]) == 2
    line = one_error_line(capsys)
    assert "c.toml' is not valid TOML" in line and "line 2" in line
    js = tmp_path / "c.json"
    js.write_text('{"input": "a",\n "output": }')
    assert main(["prepare", "--config", str(js)]) == 2
    assert "c.json' is not valid JSON: Expecting value at line 2, column 12" in one_error_line(
        capsys
    )


def test_generate_overwrites_only_its_own_file(tmp_path, capsys):
    out = tmp_path / "log.parquet"
    args = ["generate", "--users", "20", "--items", "30", "--interactions", "100"]
    assert main([*args, "--output", str(out)]) == 0
    assert main([*args, "--output", str(out), "--seed", "1"]) == 0  # our own: replaced
    mine = tmp_path / "mine.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(mine)
    before = mine.read_bytes()
    assert main([*args, "--output", str(mine)]) == 2
    assert "exists and is not a synthetic log written by recsys" in one_error_line(capsys)
    assert mine.read_bytes() == before
    assert main([*args, "--output", str(tmp_path)]) == 2
    assert "is a folder" in one_error_line(capsys)


def test_unreachable_tracking_server_is_one_line(trained, tmp_path, capsys, free_port):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    data, bundle, ks = str(trained["data"]), str(trained["run"] / "bundle"), ["--eval-ks", "10"]
    jobs = [
        ["train", "--data", data, *ks, "--output", str(tmp_path / "r")],
        ["compare", "--experiment", "rel"],
        ["recommend", "--model", "0123abcd", "--output", str(tmp_path / "o")],
        ["evaluate", "--model", bundle, "--data", data, *ks],
    ]
    for job in jobs:
        assert main([*job, "--tracking-uri", uri]) == 2
        assert f"cannot reach the MLflow tracking server at {uri!r}" in one_error_line(capsys)


def test_experiment_created_by_another_job_meanwhile(tmp_path, monkeypatch):
    # Two jobs started together both find no experiment and both create it: the second
    # must use the first's instead of failing with a traceback.
    import mlflow

    from recsys.tracking import setup

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = setup("together", uri)
    real = mlflow.get_experiment_by_name
    calls = {"n": 0}

    def not_yet(name):
        calls["n"] += 1
        return None if calls["n"] == 1 else real(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", not_yet)
    assert setup("together", uri) == first


def test_review_findings_are_one_line(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bundle, data = str(trained["run"] / "bundle"), str(trained["data"])
    # None for an option that has no 'none'.
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"d_model": None}))
    assert main(["train", "--data", data, "--config", str(cfg)]) == 2
    assert "d_model: expected a value, got None" in one_error_line(capsys)
    # Users files polars cannot read, or a folder.
    rec = ["recommend", "--model", bundle, "--k", "3", "--output", "out", "--users"]
    bad = tmp_path / "u.csv"
    bad.write_text('user_id\n"1\n2\n')
    assert main([*rec, str(bad)]) == 2
    assert "users file" in one_error_line(capsys)
    garbage = tmp_path / "u.parquet"
    garbage.write_bytes(b"PAR1 not really")
    assert main([*rec, str(garbage)]) == 2
    assert "cannot be read as parquet" in one_error_line(capsys)
    assert main([*rec, str(tmp_path)]) == 2
    assert "is a folder" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()
    # A mistyped model path: one line, and no MLflow store created on the way.
    assert main(["recommend", "--model", str(cfg), "--output", "o4"]) == 2
    assert "is a file; expected a bundle folder" in one_error_line(capsys)
    assert main(["recommend", "--model", "runs/nope/bundle", "--output", "o5"]) == 2
    assert "no such bundle folder" in one_error_line(capsys)
    assert not (tmp_path / "mlruns").exists()


def test_default_run_folders_never_collide(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train", "--data", str(trained["data"]), "--model", "most-popular"]
    for _ in range(3):  # well within one second: the same time stamp
        assert main([*args, "--tracking-uri", uri, "--eval-ks", "10"]) == 0
    assert len(list((tmp_path / "data" / "runs").iterdir())) == 3
