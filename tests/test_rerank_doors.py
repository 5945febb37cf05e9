"""Re-ranking behind every door: the batch job (exposure exact across parts, identical
after a kill), the Python API, the REST model and the stored config."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

import pipelines.recommend as job
from recsys import Recommender, allocation
from recsys.cli import main

GENRES = ("Drama", "Comedy", "Horror")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, make_prepared, successor_sequences):
    root = tmp_path_factory.mktemp("rerank")
    seqs = successor_sequences(230, 30, seed=3)
    items = pl.DataFrame(
        {
            "item_id": [str(i) for i in range(1, 31)],
            "title": [f"t{i}" for i in range(1, 31)],
            "genres": [[GENRES[i % 3]] + (["Comedy"] if i % 5 == 0 else []) for i in range(1, 31)],
        }
    )
    data = make_prepared(root / "d", seqs, items=items)
    rec = Recommender(epochs=3, max_len=16, d_model=16, progress=False)
    rec.fit(data, output=root / "bundle")
    return root / "bundle"


def _read(folder) -> pl.DataFrame:
    return pl.read_parquet(sorted(folder.glob("part-*.parquet"))).sort("user_id", "rank")


MMR = {"candidates": 20, "diversity": {"method": "mmr", "lambda": 0.5}}


@pytest.mark.parametrize(
    "exposure", [{"max_share": 0.2}, {"mode": "proportional"}], ids=["max_share", "proportional"]
)
def test_exposure_holds_and_a_killed_job_resumes_identically(
    bundle, tmp_path, monkeypatch, exposure
):
    path = tmp_path / "rerank.toml"
    path.write_text(
        "candidates = 20\n[exposure]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in exposure.items())
        + '[rules]\nblock = ["5"]\n'
    )
    args = dict(model=str(bundle), k=4, chunk_users=50, progress=False, rerank=str(path))
    full = tmp_path / "full"
    manifest = job.run(job.RecommendConfig(output=str(full), **args))
    df = _read(full)
    # Tight budgets over 30 items can leave a late user's 20 candidates all spent.
    assert df.height == manifest["rows"] > 0.98 * 230 * 4 and df["user_id"].n_unique() == 230
    assert "5" not in df["item_id"].to_list()
    lists = df.group_by("item_id").len()
    if "max_share" in exposure:
        assert lists["len"].max() <= 46  # ceil(0.2 x 230)
    else:
        budget = job._read_meta(full / job.EXPOSURE)["lists"]
        b = Recommender.load(bundle).bundle
        idx, _ = b.item_indices(lists["item_id"])
        assert (lists["len"].to_numpy() <= np.asarray(budget)[idx]).all()

    real = allocation.rerank_chunk
    calls = {"n": 0}

    def dying(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(allocation, "rerank_chunk", dying)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        job.run(job.RecommendConfig(output=str(out), **args))
    assert len(list(out.glob("part-*.parquet"))) == 2
    monkeypatch.setattr(allocation, "rerank_chunk", real)
    manifest = job.run(job.RecommendConfig(output=str(out), **args))
    assert manifest["parts_written_by_this_run"] == 3
    assert _read(out).equals(df)


def test_python_api_equals_the_batch_job_and_single_users(bundle, tmp_path):
    rec = Recommender.load(bundle)
    out = tmp_path / "mmr"
    cfg = {**MMR, "exposure": {"max_share": 0.3}}
    (tmp_path / "r.toml").write_text(
        'candidates = 20\n[diversity]\nmethod = "mmr"\nlambda = 0.5\n[exposure]\nmax_share = 0.3\n'
    )
    job.run(job.RecommendConfig(model=str(bundle), output=str(out), k=5, chunk_users=64,
                                progress=False, rerank=str(tmp_path / "r.toml")))  # fmt: skip
    users = rec.bundle.user_vocab["user_id"].to_list()
    api = rec.recommend(users, k=5, batch_size=64, rerank=cfg).sort("user_id", "rank")
    assert api.equals(_read(out))
    # Without exposure budgets each list is the user's own: one alone = in a batch.
    batch = rec.recommend(users[:40], k=5, rerank=MMR)
    for u in ("3", "17"):
        one = rec.recommend([u], k=5, rerank=MMR)
        assert one.equals(batch.filter(pl.col("user_id") == u))
    plain = rec.recommend(users[:40], k=5)
    assert not batch.equals(plain)  # lambda 0.5 changes lists
    assert rec.recommend(users[:40], k=5, rerank={"diversity": {"lambda": 1.0}}).equals(plain)
    hist = rec.recommend_for_history(["3", "4", "5"], k=5, rerank=MMR)
    assert hist.height == 5 and hist["item_id"].n_unique() == 5


def test_rules_at_the_doors(bundle):
    rec = Recommender.load(bundle)
    users = rec.bundle.user_vocab["user_id"].to_list()[:60]
    cfg = {
        "rules": {
            "pin": {"7": 2},
            "quota": [{"field": "genres", "value": "Horror", "at_least": 2, "at_most": 2}],
        }
    }
    df = rec.recommend(users, k=5, rerank=cfg)
    assert (df.filter(pl.col("rank") == 2)["item_id"] == "7").all()
    horror = {str(i) for i in range(1, 31) if i % 3 == 2}  # GENRES[i % 3]
    per_user = df.group_by("user_id").agg(pl.col("item_id").is_in(list(horror)).sum().alias("h"))
    assert (per_user["h"] == 2).all()
    with pytest.raises(ValueError, match="genre 'Western' is unknown"):
        rec.recommend(users, k=5, rerank={"rules": {"quota": [
            {"field": "genres", "value": "Western", "at_most": 1}]}})  # fmt: skip
    with pytest.raises(ValueError, match="puts item '7' at rank 2, but lists have 1 slots"):
        rec.recommend(users, k=1, rerank=cfg)


def test_cli_refuses_a_bad_config_in_one_line(bundle, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[diversity]\nlamda = 0.5\n")
    code = main(["recommend", "--model", str(bundle), "--output", str(tmp_path / "o"),
                 "--rerank", str(bad), "--k", "5", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].endswith("unknown key 'diversity.lamda' in diversity; expected one of: "
                            "method, lambda, penalty, similarity")  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_evaluation_of_reranked_lists(bundle):
    from recsys.data.dataset import SequenceData
    from recsys.evaluation.evaluate import EvalConfig, evaluate

    rec = Recommender.load(bundle)
    b = rec.bundle
    data = SequenceData.load(bundle.parent / "d")
    cfg = EvalConfig(ks=(5, 10), bootstrap=0)
    plain = evaluate(b.scorer, data, "test", cfg, features=b.features)
    # A cap every item can meet leaves each list as the model ranks it: same numbers.
    loose = allocation.plan_for(b, {"exposure": {"max_share": 1.0}})
    same = evaluate(b.scorer, data, "test", cfg, features=b.features, rerank=loose)
    assert same.means == pytest.approx(plain.means)
    assert same.per_user.drop("best_rank").equals(plain.per_user.drop("best_rank"))
    mmr = allocation.plan_for(b, {"diversity": {"method": "mmr", "lambda": 0.3}})
    diverse = evaluate(b.scorer, data, "test", cfg, features=b.features, rerank=mmr)
    # 3 genres: MMR spreads the first slots over them (beyond, any list repeats one).
    assert diverse.means["ild@5"] > plain.means["ild@5"] + 0.03
    capped = allocation.plan_for(b, {"exposure": {"max_share": 0.1}})
    fair = evaluate(b.scorer, data, "test", cfg, features=b.features, rerank=capped)
    assert fair.means["exposure_gini@10"] < plain.means["exposure_gini@10"]


def test_stored_config_serves_behind_every_door(tmp_path, make_prepared, successor_sequences):
    from types import SimpleNamespace

    import pandas as pd

    from pipelines.train import TrainJobConfig
    from pipelines.train import run as train
    from recsys.bundle import ARTIFACT_PATH
    from recsys.options import from_flat
    from recsys.serving import RecsysModel

    items = pl.DataFrame(
        {
            "item_id": [str(i) for i in range(1, 21)],
            "title": ["t"] * 20,
            "genres": [[GENRES[i % 3]] for i in range(1, 21)],
        }
    )
    data = make_prepared(tmp_path / "d", successor_sequences(60, 20, seed=1), items=items)
    (tmp_path / "r.toml").write_text('[rules]\nblock = ["4"]\npin = { "9" = 1 }\n')
    out = train(
        from_flat(
            TrainJobConfig,
            {"data": str(data), "epochs": 1, "max_len": 10, "d_model": 8, "progress": False,
             "rerank": str(tmp_path / "r.toml"), "output": str(tmp_path / "run"),
             "tracking_uri": f"sqlite:///{tmp_path}/m.db", "eval_ks": [5]},
        )
    )  # fmt: skip
    rec = Recommender.load(out["bundle"])
    assert rec.bundle.meta["rerank"] == {
        "candidates": 100,
        "rules": {"block": ["4"], "pin": {"9": 1}},
    }
    users = rec.bundle.user_vocab["user_id"].to_list()
    stored = rec.recommend(users, k=5)
    assert (stored.filter(pl.col("rank") == 1)["item_id"] == "9").all()
    assert "4" not in stored["item_id"].to_list()
    plain = rec.recommend(users, k=5, rerank=False)
    assert not (plain.filter(pl.col("rank") == 1)["item_id"] == "9").all()

    model = RecsysModel()
    model.load_context(SimpleNamespace(artifacts={ARTIFACT_PATH: out["bundle"]}))
    ask = pd.DataFrame({"user_id": users[:3], "k": [5] * 3})
    answer = model.predict(None, ask)
    assert answer["item_id"].tolist() == stored.head(15)["item_id"].to_list()
    # A request's own config replaces the stored one; {} asks for none.
    mine = pd.DataFrame(
        {"user_id": users[:3], "k": 5, "rerank": ['{"rules": {"block": ["9"]}}'] * 3}
    )
    got = model.predict(None, mine)
    assert "9" not in got["item_id"].tolist()
    assert (
        got["item_id"].tolist()
        == rec.recommend(users[:3], k=5, rerank={"rules": {"block": ["9"]}})["item_id"].to_list()
    )
    # Rows that give none take the one a row gives (pandas fills them with NaN).
    partial = pd.DataFrame([{"user_id": users[0], "k": 5, "rerank": {"rules": {"block": ["9"]}}},
                            {"user_id": users[1], "k": 5}])  # fmt: skip
    assert "9" not in model.predict(None, partial)["item_id"].tolist()
    none = model.predict(None, ask.assign(rerank=["{}"] * 3))
    assert none["item_id"].tolist() == plain.head(15)["item_id"].to_list()
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="rows give different rerank values"):
        model.predict(None, ask.assign(rerank=["{}", "{}", '{"candidates": 50}']))
    with pytest.raises(MlflowException, match="unknown key 'bogus'"):
        model.predict(None, ask.assign(rerank=['{"bogus": 1}'] * 3))


def test_sweep_over_rerank_values_trains_once(
    tmp_path, capsys, monkeypatch, make_prepared, successor_sequences
):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # sweep children write to data/runs of the working directory

    import recsys

    items = pl.DataFrame(
        {
            "item_id": [str(i) for i in range(1, 21)],
            "title": ["t"] * 20,
            "genres": [[GENRES[i % 3]] for i in range(1, 21)],
        }
    )
    data = make_prepared(tmp_path / "d", successor_sequences(80, 20, seed=4), items=items)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["sweep", "--data", str(data), "--experiment", "rr", "--tracking-uri", uri,
            "--grid", "rerank.diversity.lambda=1,0.5,0.2",
            "--set", "epochs=1", "max_len=12", "d_model=16",
            "rerank.diversity.method=mmr"]  # fmt: skip
    assert main(args) == 0
    assert capsys.readouterr().out.count("status=finished") == 3
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rr").experiment_id
    runs = [r for r in client.search_runs([exp]) if r.data.tags.get("kind") != "sweep"]
    kinds = sorted(r.data.tags.get("kind", "train") for r in runs)
    assert kinds == ["reranked", "reranked", "train"]  # one model, trained once
    trained = next(r for r in runs if "kind" not in r.data.tags)
    for r in runs:
        if r.data.tags.get("kind") == "reranked":
            assert r.data.tags["model_run_id"] == trained.info.run_id
            assert r.data.params["epochs"] == "1"
    lams = sorted(r.data.params["rerank.diversity.lambda"] for r in runs)
    assert lams == ["0.2", "0.5", "1.0"]
    table = recsys.compare("rr", tracking_uri=uri, x="ild_at_10")
    assert table.height == 3 and table["x"].null_count() == 0
    # Again: nothing left to run.
    assert main(args) == 0
    assert capsys.readouterr().out.count("skipped (finished before)") == 3
    # A value the config refuses stops the sweep before anything trains.
    bad = [*args[:7], "--grid", "rerank.diversity.lambda=1,2", *args[9:]]
    assert main(bad) == 2
    assert "diversity.lambda = 2" in capsys.readouterr().err
