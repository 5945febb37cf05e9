"""The batch recommendation job: complete, resumable, bounded, raw IDs."""

from __future__ import annotations

import polars as pl
import pytest

import pipelines.recommend as job
from recsys import Recommender
from recsys.cli import main


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, make_prepared, successor_sequences):
    root = tmp_path_factory.mktemp("job")
    # Raw IDs that are not their indices: offset by 1000.
    seqs = [[i + 1000 for i in s] for s in successor_sequences(230, 30, seed=2)]
    data = make_prepared(root / "d", seqs)
    rec = Recommender(epochs=3, max_len=16, d_model=16, progress=False)
    rec.fit(data, output=root / "bundle")
    return root / "bundle"


def _read(folder) -> pl.DataFrame:
    return pl.read_parquet(sorted(folder.glob("part-*.parquet"))).sort("user_id", "rank")


def test_all_users_in_parts_with_raw_ids(bundle, tmp_path):
    out = tmp_path / "recs"
    assert (
        main(
            [
                "recommend",
                "--model",
                str(bundle),
                "--users",
                "all",
                "--k",
                "5",
                "--output",
                str(out),
                "--chunk-users",
                "100",
                "--no-progress",
            ]
        )
        == 0
    )
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    df = _read(out)
    assert df.columns == ["user_id", "rank", "item_id", "score"]
    assert df.height == 230 * 5 and df["user_id"].n_unique() == 230
    assert df["item_id"].cast(pl.Int64).min() > 1000
    # The same lists as the Python API.
    rec = Recommender.load(bundle)
    assert (
        rec.recommend(["7", "150"], k=5)
        .sort("user_id", "rank")
        .equals(df.filter(pl.col("user_id").is_in(["7", "150"])).sort("user_id", "rank"))
    )


def test_killed_job_resumes_to_the_same_output(bundle, tmp_path, monkeypatch):
    full = tmp_path / "full"
    job.run(
        job.RecommendConfig(
            model=str(bundle), output=str(full), k=4, chunk_users=50, progress=False
        )
    )
    real = job.score_chunk
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(job, "score_chunk", dying)
    out = tmp_path / "resumed"
    cfg = job.RecommendConfig(
        model=str(bundle), output=str(out), k=4, chunk_users=50, progress=False
    )
    with pytest.raises(KeyboardInterrupt):
        job.run(cfg)
    assert len(list(out.glob("part-*.parquet"))) == 2 and not (out / job.MANIFEST).exists()
    monkeypatch.setattr(job, "score_chunk", real)
    manifest = job.run(cfg)
    assert manifest["parts_written_by_this_run"] == 3 and manifest["rows"] == 230 * 4
    assert _read(out).equals(_read(full))
    assert not list(out.glob("*.tmp-*"))


def test_resume_with_other_arguments_is_refused(bundle, tmp_path):
    out = tmp_path / "recs"
    job.run(job.RecommendConfig(model=str(bundle), output=str(out), k=3, progress=False))
    with pytest.raises(ValueError, match="another job"):
        job.run(job.RecommendConfig(model=str(bundle), output=str(out), k=4, progress=False))


def test_users_file_and_bad_users(bundle, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("5\n9\n")
    out = tmp_path / "recs"
    job.run(
        job.RecommendConfig(
            model=str(bundle), output=str(out), users=str(users), k=2, progress=False
        )
    )
    assert _read(out)["user_id"].unique().sort().to_list() == ["5", "9"]
    users.write_text("5\nghost\n")
    with pytest.raises(
        ValueError, match=r"1 user ID\(s\) the model does not know, e.g. \['ghost'\]"
    ):
        job.run(
            job.RecommendConfig(
                model=str(bundle),
                output=str(tmp_path / "o2"),
                users=str(users),
                k=2,
                progress=False,
            )
        )
    with pytest.raises(ValueError, match="k=99999 exceeds the catalogue size"):
        job.run(job.RecommendConfig(model=str(bundle), output=str(tmp_path / "o3"), k=99999))


def test_explain_adds_the_reasons(bundle, tmp_path):
    args = ["recommend", "--model", str(bundle), "--k", "4", "--no-progress"]
    assert main([*args, "--output", str(tmp_path / "plain")]) == 0
    assert main([*args, "--output", str(tmp_path / "why"), "--explain", "2"]) == 0
    plain, why = _read(tmp_path / "plain"), _read(tmp_path / "why")
    assert why.drop("because", "because_weight").equals(plain)
    assert why.schema["because"] == pl.List(pl.String)
    assert why["because"].list.len().max() == 2
    # The same reasons, in the same order, as the Python API's top 2 per item.
    rec = Recommender.load(bundle)
    some = why["user_id"].unique().sort().head(3).to_list()
    api = rec.explain(some, k=4, top=2).filter(pl.col("source") == "history")
    expected = api.group_by("user_id", "item_id", maintain_order=True).agg(
        pl.col("history_item_id").alias("because"), pl.col("contribution").alias("w")
    )
    got = why.filter(pl.col("user_id").is_in(some)).join(expected, on=["user_id", "item_id"])
    assert got.height == why.filter(pl.col("user_id").is_in(some)).height
    assert got["because"].to_list() == got["because_right"].to_list()
    for a, b in zip(got["because_weight"].to_list(), got["w"].to_list(), strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    assert job.read_manifest(tmp_path / "why")["columns"][-2:] == ["because", "because_weight"]
    assert main([*args, "--output", str(tmp_path / "bad"), "--explain", "-1"]) == 2
