from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.data import pipeline as dp


def events(*rows: tuple, rating: bool = False) -> pl.LazyFrame:
    """(user, item, timestamp[, rating]) rows in source order → canonical LazyFrame."""
    cols = ["user_id", "item_id", "timestamp"] + (["rating"] if rating else [])
    df = pl.DataFrame(list(rows), schema=cols, orient="row").with_row_index("row_nr")
    return df.lazy()


def pairs(lf: pl.LazyFrame) -> list[tuple]:
    return lf.select("user_id", "item_id").collect().rows()


def test_filter_min_rating():
    lf = events(("u", "a", 1, 5.0), ("u", "b", 2, 2.0), ("u", "c", 3, 4.0), rating=True)
    assert pairs(dp.filter_min_rating(lf, 4.0)) == [("u", "a"), ("u", "c")]
    assert pairs(dp.filter_min_rating(lf, None)) == [("u", "a"), ("u", "b"), ("u", "c")]


def test_filter_min_rating_without_rating_column():
    with pytest.raises(ValueError, match="needs a 'rating' column"):
        dp.filter_min_rating(events(("u", "a", 1)), 3.0)


def test_order_ties_keep_row_order():
    lf = events((2, "x", 9), (1, "a", 5), (1, "b", 3), (1, "c", 3), (2, "y", 1), (1, "d", 3))
    out = dp.order_events(lf).collect()
    users = out["user_id"].to_list()
    assert sorted(set(users)) == [1, 2] and users in ([1] * 4 + [2] * 2, [2] * 2 + [1] * 4)
    by_user = out.group_by("user_id").agg("item_id", "row_nr").sort("user_id").rows()
    assert by_user == [(1, ["b", "c", "d", "a"], [2, 3, 5, 1]), (2, ["y", "x"], [4, 0])]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("keep", ["a", "a", "b", "a"]),
        ("drop-consecutive", ["a", "b", "a"]),
        ("drop-all", ["a", "b"]),
    ],
)
def test_repeats(policy, expected):
    lf = events(("u", "a", 1), ("u", "a", 2), ("u", "b", 3), ("u", "a", 4), ("v", "a", 5))
    out = pairs(dp.drop_repeats(dp.order_events(lf), policy))
    assert [i for u, i in out if u == "u"] == expected
    assert [i for u, i in out if u == "v"] == ["a"]  # another user's repeat is not a repeat


def test_repeats_unknown_policy():
    with pytest.raises(ValueError, match=r"'sometimes' is unknown"):
        dp.drop_repeats(events(("u", "a", 1)), "sometimes")


@pytest.mark.parametrize("as_int", [False, True])  # generic and bincount paths
def test_k_core_converges_through_cascade(as_int):
    # k=2: dropping u5 leaves c with one event, dropping c leaves u2 with one, then b,
    # then u1 go in turn; u3 and u4 with items a and e survive every pass.
    rows = [
        ("u1", "a"),
        ("u1", "b"),
        ("u2", "b"),
        ("u2", "c"),
        ("u3", "a"),
        ("u3", "e"),
        ("u4", "a"),
        ("u4", "e"),
        ("u5", "c"),
    ]
    expected = [("u3", "a"), ("u3", "e"), ("u4", "a"), ("u4", "e")]
    if as_int:
        rows = [(int(u[1:]), ord(i) - 96) for u, i in rows]
        expected = [(int(u[1:]), ord(i) - 96) for u, i in expected]
    lf = events(*[(u, i, t) for t, (u, i) in enumerate(rows)])
    assert pairs(dp.k_core(lf, 2)) == expected


def test_k_core_bincount_path_equals_generic_path_on_random_events():
    rng = np.random.default_rng(0)
    users = rng.zipf(1.5, 5000) % 300
    items = rng.zipf(1.3, 5000) % 400
    ints = pl.LazyFrame({"user_id": users, "item_id": items, "timestamp": np.arange(5000)})
    text = ints.with_columns(pl.col("user_id", "item_id").cast(pl.String))
    for k in (2, 3, 5, 8):
        dense = pairs(dp.k_core(ints, k))
        generic = [(int(u), int(i)) for u, i in pairs(dp.k_core(text, k))]
        assert dense == generic
        assert 0 < len(dense) < 5000


def test_k_core_can_empty_everything_and_is_noop_below_2():
    lf = events(("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 3), ("u2", "c", 4), ("u3", "a", 5))
    assert pairs(dp.k_core(lf, 2)) == []
    assert len(pairs(dp.k_core(lf, 1))) == 5


def test_filter_short_sequences():
    lf = events(("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("b", "x", 4), ("b", "y", 5))
    assert {u for u, _ in pairs(dp.filter_short_sequences(lf, 3))} == {"a"}


def test_vocab_sorted_by_raw_id_and_sequences():
    lf = events(("u2", "b", 1), ("u1", "c", 2), ("u2", "a", 3), ("u1", "b", 1))
    lf = dp.order_events(lf)
    uv, iv = dp.build_vocab(lf, "user_id", "user_idx"), dp.build_vocab(lf, "item_id", "item_idx")
    assert uv.collect().rows() == [(1, "u1"), (2, "u2")]
    assert iv.collect().rows() == [(1, "a"), (2, "b"), (3, "c")]
    seqs = dp.to_sequences(lf, uv, iv).collect()
    assert seqs.rows() == [(1, [2, 3], [1, 2]), (2, [2, 1], [1, 3])]
    # Round trip: indices decode to the raw IDs in time order.
    decoded = seqs.explode("item_idx").join(iv.collect(), on="item_idx", maintain_order="left")
    assert decoded.filter(pl.col("user_idx") == 2)["item_id"].to_list() == ["b", "a"]


def test_integer_vocab_is_numeric_order():
    lf = events((10, 30, 1), (9, 4, 2), (10, 4, 3))
    assert dp.build_vocab(lf, "item_id", "item_idx").collect().rows() == [(1, 4), (2, 30)]


def seqs_of(*timestamps: list[int]) -> pl.LazyFrame:
    return pl.LazyFrame(
        {
            "user_idx": list(range(1, len(timestamps) + 1)),
            "item_idx": [list(range(len(t))) for t in timestamps],
            "timestamp": list(timestamps),
        }
    )


def test_leave_one_out():
    out = dp.split_leave_one_out(seqs_of([1, 2, 3, 4], [5, 6, 7])).collect()
    assert out.select("n_train", "n_valid", "n_test").rows() == [(2, 1, 1), (1, 1, 1)]


def test_temporal_boundary_is_exact():
    out = dp.split_temporal(seqs_of([1, 5, 8, 10], [4, 9, 11], [10, 12]), 5, 10).collect()
    # An event exactly at a cut-off belongs to the later part.
    assert out.select("n_train", "n_valid", "n_test").rows() == [(1, 2, 1), (1, 1, 1), (0, 0, 2)]


def test_temporal_cutoffs_in_order():
    with pytest.raises(ValueError, match="valid_cutoff=9 is after test_cutoff=5"):
        dp.split_temporal(seqs_of([1]), 9, 5)
