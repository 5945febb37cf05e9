"""Comparisons of real training runs: noise is not flagged, a crippled model is."""

from __future__ import annotations

import numpy as np
import pytest

import recsys
from recsys.cli import main
from recsys.comparison import holm, paired_bootstrap_p

COMMON = [
    "--max-len",
    "12",
    "--d-model",
    "16",
    "--batch-size",
    "64",
    "--no-progress",
    "--loss",
    "ce",
    "--lr",
    "0.01",
]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, make_prepared, successor_sequences):
    root = tmp_path_factory.mktemp("cmp")
    data = make_prepared(root / "d", successor_sequences(400, 30, seed=5))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for name, extra in {
        "seed1": ["--seed", "1", "--epochs", "15"],
        "seed2": ["--seed", "2", "--epochs", "15"],
        "crippled": ["--seed", "1", "--epochs", "1", "--lr", "0.00001"],
    }.items():
        assert (
            main(
                [
                    "train",
                    "--data",
                    str(data),
                    *COMMON,
                    *extra,
                    "--experiment",
                    "cmp",
                    "--tracking-uri",
                    uri,
                    "--run-name",
                    name,
                    "--output",
                    str(root / name),
                ]
            )
            == 0
        )
    other = make_prepared(root / "other", successor_sequences(100, 20, seed=6), name="other")
    for d in (other, data):  # most-popular on two datasets: a mixed experiment
        args = ["train", "--data", str(d), "--model", "most-popular", "--no-progress"]
        assert main([*args, "--experiment", "cmp-mixed", "--tracking-uri", uri]) == 0
    return uri


@pytest.mark.slow  # trains the runs it compares
def test_seeds_do_not_differ_and_crippled_is_worse(experiment, tmp_path, capsys):
    table = recsys.compare("cmp", tracking_uri=experiment)
    rows = {r["name"]: r for r in table.iter_rows(named=True)}
    assert rows["seed1"]["baseline"] and rows["seed1"]["p_value"] is None
    assert not rows["seed2"]["significant"]
    assert rows["crippled"]["significant"] and rows["crippled"]["diff"] < 0
    assert "seed=1" in rows["seed1"]["params"] and "epochs=15" in rows["seed1"]["params"]

    out = tmp_path / "report"
    assert (
        main(["compare", "--experiment", "cmp", "--tracking-uri", experiment, "--output", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert table["run"][2] in printed and "(baseline)" in printed
    for chart in ("comparison.png", "learning_curves.png", "metric_vs_time.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "comparison run" in printed
    # The comparison run is not itself a run to compare.
    assert recsys.compare("cmp", tracking_uri=experiment).height == 3
    assert (out / "comparison.csv").read_text().startswith("run,run_id")
    # Our own report is rewritten; a folder holding anything else is refused.
    args = ["compare", "--experiment", "cmp", "--tracking-uri", experiment, "--no-log"]
    assert main([*args, "--output", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main([*args, "--output", str(out)]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.slow  # trains the runs it compares
def test_runs_on_different_datasets_are_refused(experiment, capsys):
    with pytest.raises(ValueError, match="runs differ in dataset_name"):
        recsys.compare("cmp-mixed", tracking_uri=experiment)
    assert main(["compare", "--experiment", "cmp-mixed", "--tracking-uri", experiment]) == 2
    assert "not comparable" in capsys.readouterr().err


def test_paired_bootstrap_and_holm_known_answers():
    rng = np.random.default_rng(0)
    assert paired_bootstrap_p(rng.normal(0, 1, 400)) > 0.05
    assert paired_bootstrap_p(rng.normal(0.5, 1, 400)) < 0.001
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_sweep_children_failures_and_rerun(
    tmp_path, capsys, line_of, make_prepared, successor_sequences
):
    from mlflow import MlflowClient

    data = make_prepared(tmp_path / "d", successor_sequences(80, 20, seed=7))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "sweep",
        "--data",
        str(data),
        "--experiment",
        "sw",
        "--tracking-uri",
        uri,
        "--grid",
        "lr=0.01,-1",
        "--seeds",
        "1,2",
        "--set",
        "epochs=1",
        "max_len=12",
        "d_model=16",
        "loss=ce",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("status=finished") == 2 and out.count("status=failed") == 2
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sw").experiment_id
    parent = line_of(out, "parent run")
    children = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(c.info.status for c in children) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    assert all(c.data.params.get("parent_run_id") in (None, parent) for c in children)
    # Again: the finished children are skipped, the failed ones tried again.
    assert main(args) == 0
    out = capsys.readouterr().out
    assert line_of(out, "parent run") == parent
    assert out.count("skipped (finished before)") == 2 and out.count("status=failed") == 2
    assert client.get_run(parent).info.status == "FINISHED"
    table = recsys.compare("sw", tracking_uri=uri)
    assert table.height == 2 and "seed=1" in table["params"][0]


def line_of(out: str, key: str) -> str:
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith(key + ":"))
