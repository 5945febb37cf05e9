from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest

from pipelines.prepare import PrepareConfig, run
from recsys.data.prepare import SEQUENCES_PART, prepare_dataset
from recsys.data.readers import read_interactions
from recsys.options import from_flat

LOG = """\
user_id,item_id,timestamp,rating
alice,m1,10,5
bob,m2,11,4
alice,m2,10,3
alice,m3,12,5
bob,m1,13,1
bob,m3,14,5
carol,m1,15,4
alice,m3,16,4
bob,m3,17,4
"""


def prepared(tmp_path: Path, write, **kwargs) -> tuple[dict, Path]:
    src = write("log.csv", LOG)
    out = tmp_path / "out"
    cfg = PrepareConfig(input=str(src), output=str(out), format="csv", **kwargs)
    return run(cfg), out


def test_prepare_tiny_log_exact(tmp_path, write):
    manifest, out = prepared(tmp_path, write, repeats="drop-consecutive")
    # alice's and bob's second m3 repeat the item before them; carol has 1 event (< 3).
    assert [(s["step"], s["rows"], s["dropped_rows"]) for s in manifest["steps"]] == [
        ("read", 9, 0),
        ("min_rating", 9, 0),
        ("repeats", 7, 2),
        ("k_core", 7, 0),
        ("min_seq_len", 6, 1),
    ]
    assert (manifest["num_users"], manifest["num_items"], manifest["num_interactions"]) == (2, 3, 6)
    users = pl.read_parquet(out / "vocab_users.parquet")
    items = pl.read_parquet(out / "vocab_items.parquet")
    assert users.rows() == [(1, "alice"), (2, "bob")]
    assert items.rows() == [(1, "m1"), (2, "m2"), (3, "m3")]
    seqs = pl.read_parquet(out / SEQUENCES_PART)
    # alice: m1@10 (row 0) before m2@10 (row 2): ties keep row order.
    assert seqs.rows() == [
        (1, [1, 2, 3], [10, 10, 12], 1, 1, 1),
        (2, [2, 1, 3], [11, 13, 14], 1, 1, 1),
    ]
    assert manifest["split"] == {
        "kind": "leave-one-out",
        "num_train_interactions": 2,
        "num_valid_targets": 2,
        "num_test_targets": 2,
        "users_with_valid_targets": 2,
        "users_with_test_targets": 2,
    }
    assert manifest["files"][SEQUENCES_PART]["rows"] == 2
    assert manifest["config"]["repeats"] == "drop-consecutive"
    assert manifest["inputs"][0]["bytes"] == len(LOG)
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_prepare_rating_threshold_and_temporal(tmp_path, write):
    manifest, out = prepared(
        tmp_path, write, min_rating=4, split="temporal", valid_cutoff=12, test_cutoff=16
    )
    assert manifest["steps"][1]["dropped_rows"] == 2  # ratings 3 and 1
    seqs = pl.read_parquet(out / SEQUENCES_PART)
    by_user = dict(
        zip(seqs["user_idx"], seqs.select("n_train", "n_valid", "n_test").rows(), strict=True)
    )
    # alice 10 | 12 | 16; bob 11 | 14 | 17; carol | 15 |
    assert by_user == {1: (1, 1, 1), 2: (1, 1, 1), 3: (0, 1, 0)}
    assert manifest["split"]["valid_cutoff"] == 12
    assert manifest["split"]["users_with_test_targets"] == 2


def test_temporal_quantile_cutoffs(tmp_path, write):
    manifest, _ = prepared(tmp_path, write, split="temporal", valid_cutoff=0.5, test_cutoff=0.9)
    # 9 timestamps 10..17: lower 50% quantile is 13, lower 90% is 16.
    assert (manifest["split"]["valid_cutoff"], manifest["split"]["test_cutoff"]) == (13, 16)


def test_loo_needs_three_events(tmp_path, write):
    with pytest.raises(ValueError, match="min_seq_len=2 is too small for leave-one-out"):
        prepared(tmp_path, write, min_seq_len=2)


def test_everything_filtered_is_an_error(tmp_path, write):
    with pytest.raises(ValueError, match="no user is left after filtering"):
        prepared(tmp_path, write, k_core=10)


def test_unknown_config_key():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\] for PrepareConfig"):
        from_flat(PrepareConfig, {"input": "a", "output": "b", "colour": "red"})


def test_wrong_config_type():
    with pytest.raises(ValueError, match="k_core: expected int, got 'five'"):
        from_flat(PrepareConfig, {"input": "a", "output": "b", "k_core": "five"})


def test_interrupted_write_keeps_old_output(tmp_path, write, monkeypatch):
    _, out = prepared(tmp_path, write)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = {"n": 0}
    real = pl.DataFrame.write_parquet

    def crash_on_second(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash_on_second)
    with pytest.raises(OSError, match="simulated"):
        prepared(tmp_path, write, repeats="drop-all")
    after = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "out"]  # no temp left


def test_item_release_dates_reach_the_vocabulary(tmp_path, write):
    items = write(
        "items.tsv",
        "item_id\ttitle\trelease_year\tgenres\nm1\tOne\t1995\tComedy\nm2\tTwo\t\tDrama\n",
    )
    manifest, out = prepared(tmp_path, write, items=str(items))
    vocab = pl.read_parquet(out / "vocab_items.parquet")
    assert vocab.schema["released"] == pl.Date
    # m3 has no metadata: every metadata column is null for it.
    assert vocab.select("item_idx", "item_id", "title", "released").rows() == [
        (1, "m1", "One", dt.date(1995, 1, 1)),
        (2, "m2", "Two", None),
        (3, "m3", None, None),
    ]
    assert manifest["items_without_metadata"] == 1


def test_interrupted_first_write_leaves_nothing(tmp_path, write, monkeypatch):
    def crash(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash)
    with pytest.raises(KeyboardInterrupt):
        prepared(tmp_path, write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


def test_ml100k_exact_figures(ml100k, tmp_path):
    manifest = run(
        PrepareConfig(
            input=str(ml100k / "u.data"),
            output=str(tmp_path / "p"),
            items=str(ml100k / "items.tsv"),
        )
    )
    assert (manifest["num_users"], manifest["num_items"], manifest["num_interactions"]) == (
        943,
        1682,
        100_000,
    )
    assert manifest["dataset"]["name"] == "ml-100k"
    assert manifest["split"]["num_test_targets"] == 943
    assert manifest["split"]["num_valid_targets"] == 943
    assert manifest["items_without_metadata"] == 0
    assert all(s["dropped_rows"] == 0 for s in manifest["steps"])
    # Each user's test item is their last by (timestamp, row order) in the raw file.
    raw = read_interactions(ml100k / "u.data", "movielens").collect()
    last = (
        raw.sort("user_id", "timestamp", "row_nr")
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("item_id").last(), pl.col("item_id").get(-2).alias("valid"))
    )
    seqs = pl.read_parquet(tmp_path / "p" / SEQUENCES_PART)
    users = pl.read_parquet(tmp_path / "p" / "vocab_users.parquet")
    items = pl.read_parquet(tmp_path / "p" / "vocab_items.parquet")
    got = (
        seqs.select(
            "user_idx",
            pl.col("item_idx").list.last().alias("test_idx"),
            pl.col("item_idx").list.get(-2).alias("valid_idx"),
        )
        .join(users, on="user_idx")
        .join(items.select(pl.col("item_idx").alias("test_idx"), pl.col("item_id")), on="test_idx")
        .join(
            items.select(pl.col("item_idx").alias("valid_idx"), pl.col("item_id").alias("valid")),
            on="valid_idx",
        )
    )
    merged = last.join(got, on="user_id", suffix="_got")
    assert merged.height == 943
    assert (merged["item_id"] == merged["item_id_got"]).all()
    assert (merged["valid"] == merged["valid_got"]).all()
    # MovieLens IDs map to themselves when nothing is filtered.
    assert (users["user_idx"].cast(pl.String) == users["user_id"]).all()
    assert items.filter(pl.col("item_id") == "1")["title"].item() == "Toy Story"
    # Items 267 ('unkonwn') and 1412 ('V') have no release year in the shared items.tsv.
    assert items.filter(pl.col("released").is_null())["item_id"].sort().to_list() == ["1412", "267"]


def test_prepare_dataset_accepts_any_lazyframe(tmp_path):
    events = pl.LazyFrame(
        {
            "row_nr": [0, 1, 2],
            "user_id": ["u", "u", "u"],
            "item_id": ["a", "b", "c"],
            "timestamp": [3, 2, 1],
        },
        schema_overrides={"row_nr": pl.UInt32},
    )
    m = prepare_dataset(events, tmp_path / "o", name="t")
    seqs = pl.read_parquet(tmp_path / "o" / SEQUENCES_PART)
    assert seqs["item_idx"].to_list() == [[3, 2, 1]]
    assert m["inputs"] == [] and m["dataset"] == {"name": "t"}
