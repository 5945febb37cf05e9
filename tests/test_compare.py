"""Comparisons of real training runs: noise is not flagged, a crippled model is."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import pipelines.sweep as sweep_job
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
        out = ["--output", str(root / f"pop-{d.name}")]  # not data/runs of the checkout
        assert main([*args, "--experiment", "cmp-mixed", "--tracking-uri", uri, *out]) == 0
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
def test_pooled_seeds_one_row_per_setting_paired_seed_by_seed(experiment, capsys):
    single = {
        r["name"]: r for r in recsys.compare("cmp", tracking_uri=experiment).iter_rows(named=True)
    }
    table = recsys.compare("cmp", tracking_uri=experiment, pool_seeds=True)
    assert table.height == 2
    base, crippled = table.row(0, named=True), table.row(1, named=True)
    assert base["baseline"] and base["runs"] == 2 and base["seeds"] == "1,2"
    mean = (single["seed1"]["test_ndcg_at_10"] + single["seed2"]["test_ndcg_at_10"]) / 2
    assert base["test_ndcg_at_10"] == pytest.approx(mean, abs=1e-12)
    assert "seed" not in base["params"] and "epochs=15" in base["params"]
    # The crippled run has seed 1: paired with the baseline's seed-1 run, as unpooled.
    assert crippled["runs"] == 1
    assert crippled["diff"] == pytest.approx(single["crippled"]["diff"], abs=1e-12)
    assert crippled["p_value"] == single["crippled"]["p_value"]
    # Against the crippled setting (seed 1 only), seed 2 has no run to pair with.
    with pytest.raises(ValueError, match="seed 2, which no run of the baseline's group"):
        recsys.compare("cmp", tracking_uri=experiment, pool_seeds=True, baseline=table["run_id"][1])
    args = ["compare", "--experiment", "cmp", "--tracking-uri", experiment, "--pool-seeds"]
    assert main([*args, "--no-log"]) == 0
    assert "(baseline)" in capsys.readouterr().out


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
    tmp_path, capsys, monkeypatch, line_of, make_prepared, successor_sequences
):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # sweep children write to data/runs of the working directory

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
    # --rerun trains the finished children again, under the same parent run.
    assert main([*args, "--rerun"]) == 0
    out = capsys.readouterr().out
    assert line_of(out, "parent run") == parent
    assert "skipped" not in out and out.count("status=finished") == 2
    children = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(c.info.status for c in children).count("FINISHED") == 4
    # Other code: nothing it did not produce is reused; the children train again.
    monkeypatch.setattr(sweep_job, "code_version", lambda: "0123456789ab")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert line_of(out, "parent run") == parent
    assert "skipped" not in out and out.count("status=finished") == 2


def test_code_version_changes_with_the_code_only(tmp_path, monkeypatch):
    package = tmp_path / "recsys"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("x = 1\n")
    (package / "notes.md").write_text("words")
    monkeypatch.setattr(recsys, "__file__", str(package / "__init__.py"))
    first = sweep_job.code_version()
    assert len(first) == 12 and first == sweep_job.code_version()
    (package / "notes.md").write_text("other words")
    assert sweep_job.code_version() == first  # not code
    (package / "sub" / "a.py").write_text("x = 2\n")
    assert sweep_job.code_version() != first


def line_of(out: str, key: str) -> str:
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith(key + ":"))


def log_run(uri, experiment, tmp, name, metrics, params, per_user, tags=None, curve=()):
    """A finished run as train (or a reranked sweep child) logs it, with per-user values."""
    import mlflow
    import polars as pl

    from recsys.tracking import setup

    setup(experiment, uri)
    with mlflow.start_run(run_name=name, tags=tags or {"eval_protocol": "full"}) as run:
        ident = {"dataset_name": "d", "dataset_version": "v1", "split": "leave-one-out"}
        mlflow.log_params({**ident, **params})
        mlflow.log_metrics(metrics)
        for step, value in curve:
            mlflow.log_metric("valid_ndcg_at_10", value, step=step)
        folder = tmp / run.info.run_id
        folder.mkdir()
        path = folder / "per_user_test_metrics.parquet"
        pl.DataFrame({"user_idx": [1, 2, 3, 4], "ndcg_at_10": per_user}).write_parquet(path)
        mlflow.log_artifact(str(path), "per_user")
    return run.info.run_id


def with_ci(name, value, half=None):
    out = {name: value}
    if half is not None:
        out.update({f"{name}_ci_low": value - half, f"{name}_ci_high": value + half})
    return out


@pytest.fixture(scope="module")
def frontier_runs(tmp_path_factory):
    """A trained run and two reranked children of a sweep; an evaluation run is skipped."""
    root = tmp_path_factory.mktemp("front")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = {}
    for name, ndcg, ild, gini, lam, kind in [
        ("trained", 0.30, 0.40, 0.80, "0", None),
        ("mmr-0.5", 0.28, 0.55, 0.60, "0.5", "reranked"),
        ("mmr-0.9", 0.25, 0.50, 0.70, "0.9", "reranked"),
    ]:
        metrics = {
            **with_ci("test_ndcg_at_10", ndcg, 0.02),
            **with_ci("test_ild_at_10", ild, 0.02),
            **with_ci("test_exposure_gini_at_10", gini),
        }
        tags = {"eval_protocol": "full", **({"kind": kind} if kind else {})}
        if kind is None:
            metrics["train_seconds"] = 12.0
        runs[name] = log_run(
            uri,
            "front",
            root,
            name,
            metrics,
            {"lambda": lam},
            [ndcg] * 4,
            tags,
            # The reranked child logs a validation value too: still no learning curve.
            curve=[(1, 0.1), (2, 0.2)] if kind is None else [(1, 0.27)],
        )
    ev = {"eval_protocol": "full", "kind": "evaluation"}
    log_run(uri, "front", root, "eval", {"test_ndcg_at_10": 0.3}, {}, [0.3] * 4, ev)
    return uri, runs


def test_compare_with_x_adds_its_columns(frontier_runs):
    uri, ids = frontier_runs
    table = recsys.compare("front", tracking_uri=uri, x="ild_at_10")
    assert table.columns[:12] == [
        "run",
        "run_id",
        "name",
        "params",
        "test_ndcg_at_10",
        "ci_low",
        "ci_high",
        "train_seconds",
        "baseline",
        "x",
        "x_ci_low",
        "x_ci_high",
    ]
    # The evaluation run is not compared; the reranked ones are.
    assert table["run_id"].to_list() == [ids["trained"], ids["mmr-0.5"], ids["mmr-0.9"]]
    assert table["x"].to_list() == pytest.approx([0.40, 0.55, 0.50])
    assert table["x_ci_low"].to_list() == pytest.approx([0.38, 0.53, 0.48])
    assert table["x_ci_high"].to_list() == pytest.approx([0.42, 0.57, 0.52])
    assert table["train_seconds"].to_list() == [12.0, None, None]
    assert table["params"].to_list() == ["lambda=0", "lambda=0.5", "lambda=0.9"]
    # With the stage given, the same; a metric without CIs has null (float) CI columns.
    same = recsys.compare("front", tracking_uri=uri, x="test_ild_at_10")
    assert same.select("x", "x_ci_low").equals(table.select("x", "x_ci_low"))
    gini = recsys.compare("front", tracking_uri=uri, x="exposure_gini_at_10")
    assert gini["x"].to_list() == pytest.approx([0.80, 0.60, 0.70])
    assert gini.schema["x_ci_low"] == gini.schema["x_ci_high"] == pl.Float64
    assert gini["x_ci_low"].null_count() == gini["x_ci_high"].null_count() == 3


def test_x_missing_from_a_run_names_runs_and_metric(frontier_runs, tmp_path):
    uri, _ = frontier_runs
    metrics = {"test_ndcg_at_10": 0.3, "test_ild_at_10": 0.4}
    log_run(uri, "front-missing", tmp_path, "a", metrics, {}, [0.3] * 4)
    lacking = log_run(uri, "front-missing", tmp_path, "b", {"test_ndcg_at_10": 0.3}, {}, [0.3] * 4)
    with pytest.raises(ValueError) as err:
        recsys.compare("front-missing", tracking_uri=uri, x="ild_at_10")
    assert str(err.value) == f"runs [{lacking[:8]!r}] have no metric 'test_ild_at_10'"


def test_frontier_report_logged_and_rewritten(frontier_runs, tmp_path, capsys):
    from mlflow import MlflowClient

    from recsys.comparison_report import frontier_figure, learning_curve

    uri, ids = frontier_runs
    out = tmp_path / "report"
    args = ["compare", "--experiment", "front", "--tracking-uri", uri, "--output", str(out)]
    assert main([*args, "--x", "exposure_gini_at_10"]) == 0
    printed = capsys.readouterr().out
    assert "| test_exposure_gini_at_10 (95% CI) |" in printed
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = (out / "comparison.csv").read_text().splitlines()[0].split(",")
    assert header[9:12] == ["x", "x_ci_low", "x_ci_high"]
    client = MlflowClient(uri)
    logged = printed.rsplit("logged them as artifacts of comparison run ", 1)[1].strip()
    names = {a.path for a in client.list_artifacts(logged, "comparison")}
    assert "comparison/frontier.png" in names and len(names) == 6
    assert (
        client.get_run(logged).info.run_name
        == "compare test_ndcg_at_10 vs test_exposure_gini_at_10"
    )
    # Our own report, frontier included, is rewritten; without --x its frontier goes.
    assert main([*args, "--x", "ild_at_10", "--no-log"]) == 0
    assert main([*args, "--no-log"]) == 0
    assert not (out / "frontier.png").exists()
    # The Pareto line: lower gini is better, so the trained run (best NDCG) and mmr-0.5
    # (lowest gini) are on it, mmr-0.9 (worse than mmr-0.5 on both) is not.
    table = recsys.compare("front", tracking_uri=uri, x="exposure_gini_at_10")
    fig = frontier_figure(table, "test_ndcg_at_10", "test_exposure_gini_at_10")
    (line,) = [ln for ln in fig.axes[0].lines if ln.get_label() == "Pareto front"]
    assert list(line.get_xdata()) == pytest.approx([0.60, 0.80])
    assert list(line.get_ydata()) == pytest.approx([0.28, 0.30])
    # The reranked run has no learning curve, though it logged a validation value.
    assert learning_curve(client, ids["trained"]) == [(1, 0.1), (2, 0.2)]
    assert learning_curve(client, ids["mmr-0.5"]) == []


def test_pareto_front_known_answers():
    from recsys.comparison import pareto_front

    x = [0.1, 0.2, 0.3, 0.25, 0.2, 0.05]
    y = [0.9, 0.8, 0.5, 0.4, 0.8, 0.9]
    # Higher x better: (0.05, 0.9) loses to (0.1, 0.9); (0.25, 0.4) to (0.3, 0.5); the two
    # equal points (0.2, 0.8) are both kept. Sorted by x.
    assert pareto_front(x, y) == [0, 1, 4, 2]
    # Lower x better: (0.05, 0.9) dominates every other point.
    assert pareto_front(x, y, x_higher=False) == [5]
    assert pareto_front([0.5], [0.1]) == [0]


def test_x_metric_name_and_direction():
    from recsys.comparison import higher_is_better, x_metric_name

    assert x_metric_name("ild_at_10", "test_ndcg_at_10") == "test_ild_at_10"
    assert x_metric_name("ild_at_10", "valid_hr_at_10") == "valid_ild_at_10"
    assert x_metric_name("test_ild_at_10", "test_ndcg_at_10") == "test_ild_at_10"
    assert x_metric_name("novelty_at_10", "test_sampled_ndcg_at_10") == "test_novelty_at_10"
    assert [
        higher_is_better(m)
        for m in ("test_ild_at_10", "test_exposure_gini_at_10", "valid_calibration_kl_at_5")
    ] == [True, False, False]
    assert higher_is_better("test_something_new_at_10")  # the default
