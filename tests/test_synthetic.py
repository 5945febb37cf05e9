from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.data.synthetic import SyntheticSpec, generate


def make(tmp_path, name="s.parquet", **kw) -> pl.DataFrame:
    spec = SyntheticSpec(**{"users": 300, "items": 200, "interactions": 6_000, "seed": 3, **kw})
    out = generate(spec, tmp_path / name)
    assert out["rows"] == spec.interactions
    return pl.read_parquet(tmp_path / name)


def test_exact_sizes_and_schema(tmp_path):
    df = make(tmp_path)
    assert df.height == 6_000
    assert df["user_id"].n_unique() == 300
    assert df["item_id"].min() >= 1 and df["item_id"].max() <= 200
    assert df.group_by("user_id").len()["len"].min() >= 3
    assert df.schema == pl.Schema(
        {"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64, "rating": pl.Int8}
    )
    assert set(df["rating"].unique()) <= {1, 2, 3, 4, 5}


def test_deterministic_for_a_seed(tmp_path):
    a = make(tmp_path, "a.parquet")
    b = make(tmp_path, "b.parquet")
    c = make(tmp_path, "c.parquet", seed=4)
    assert a.equals(b)
    assert not a.equals(c)


def test_chunking_bounds_rows_per_chunk(tmp_path):
    spec = SyntheticSpec(users=300, items=200, interactions=6_000, seed=3, rows_per_chunk=1_000)
    out = generate(spec, tmp_path / "c.parquet")
    df = pl.read_parquet(tmp_path / "c.parquet")
    assert out["chunks"] >= 6 and df.height == 6_000 and df["user_id"].n_unique() == 300


def test_structure_popularity_and_markov(tmp_path):
    df = make(tmp_path, users=1_000, items=500, interactions=40_000, p_next=0.5)
    counts = np.sort(df.group_by("item_id").len()["len"].to_numpy())[::-1]
    # Power law: the top 10% of items take far more than 10% of events.
    assert counts[: len(counts) // 10].sum() / counts.sum() > 0.3
    seq = df.sort("user_id", "timestamp")
    same_user = seq["user_id"].to_numpy()[1:] == seq["user_id"].to_numpy()[:-1]
    items = seq["item_id"].to_numpy()
    prev, nxt = items[:-1][same_user], items[1:][same_user]
    # Each item's most frequent follower follows it about p_next of the time.
    pairs = pl.DataFrame({"prev": prev, "next": nxt})
    top = (
        pairs.group_by("prev", "next")
        .len()
        .sort("len", descending=True)
        .group_by("prev")
        .agg(pl.col("len").first())
    )
    share = top["len"].sum() / len(prev)
    assert 0.45 < share < 0.7


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"interactions": 10}, "below 3 per user"),
        ({"clusters": 0}, "clusters=0"),
        ({"p_next": 0.8, "p_cluster": 0.5}, "summing to at most 1"),
        ({"items": 1}, "items=1"),
    ],
)
def test_bad_spec(tmp_path, kw, message):
    spec = SyntheticSpec(**{"users": 10, "items": 20, "interactions": 100, **kw})
    with pytest.raises(ValueError, match=message):
        generate(spec, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()
