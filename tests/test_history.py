"""Logs where people repeat: the manifest's repeat shares, the --history setting behind
every door, and evaluation that measures the lists the doors serve."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from recsys import Recommender
from recsys.data.dataset import SequenceData
from recsys.data.prepare import prepare_dataset, repeat_shares
from recsys.data.readers import read_interactions
from recsys.data.synthetic import SyntheticSpec, generate
from recsys.evaluation.evaluate import EvalConfig, evaluate
from recsys.models.scorers import MostPopular, MostRecent
from recsys.training.derive import resolve_history


def test_repeat_shares_known_answer():
    # User 0: [1, 2, 1, 3, 2] (train 3, valid 1, test 1): repeats at positions 2 and 4;
    # user 1: [4, 5, 6] none. Valid targets 3 and 5: new; test targets 2 (again) and 6.
    shares = repeat_shares(
        np.array([1, 2, 1, 3, 2, 4, 5, 6]), np.array([0, 5, 8]), np.array([3, 1]),
        np.array([1, 1]),
    )  # fmt: skip
    assert shares == {
        "share_of_events": 0.25,
        "valid_targets_in_history": 0.0,
        "test_targets_in_history": 0.5,
    }


@pytest.fixture(scope="module")
def repeat_data(tmp_path_factory):
    """A synthetic log where 60% of events repeat one of the user's last 5 items."""
    root = tmp_path_factory.mktemp("repeat")
    spec = SyntheticSpec(users=400, items=300, interactions=12_000, p_repeat=0.6, seed=3)
    generate(spec, root / "log.parquet")
    prepare_dataset(read_interactions(root / "log.parquet", "parquet"), root / "d", name="rep")
    return root / "d"


def test_manifest_records_repeats_and_auto_includes_history(repeat_data, tmp_path):
    data = SequenceData.load(repeat_data)
    shares = data.manifest["repeats"]
    assert shares["share_of_events"] > 0.4 and shares["valid_targets_in_history"] > 0.4
    assert resolve_history("auto", data)[0] == "include"
    assert resolve_history("exclude", data) == ("exclude", [])
    with pytest.raises(ValueError, match="history='sometimes'"):
        resolve_history("sometimes", data)


@pytest.fixture(scope="module")
def repeat_model(repeat_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("repeat-model") / "bundle"
    rec = Recommender(epochs=8, max_len=20, d_model=32, progress=False)
    return rec.fit(repeat_data, output=out)


def api_metrics(rec: Recommender, data: SequenceData, history: str) -> pl.DataFrame:
    """Test NDCG@10 and HR@10 per user, from the lists the Python API returns for each
    test user's history (leave-one-out: one target each)."""
    st = data.stage("test")
    ids = rec.bundle.item_ids
    rows = []
    for u, start, stop in zip(st.users, st.hist_start, st.hist_stop, strict=True):
        hist = ids[data.items[start:stop]].tolist()
        target = ids[data.items[stop]]
        got = rec.recommend_for_history(hist, k=10, history=history)["item_id"].to_list()
        rank = got.index(target) if target in got else None
        ndcg = 0.0 if rank is None else 1.0 / math.log2(rank + 2)
        rows.append((int(u), ndcg, float(rank is not None)))
    return pl.DataFrame(rows, schema=["user_idx", "ndcg_at_10", "hr_at_10"], orient="row")


def check_evaluation_equals_the_api(rec: Recommender, data: SequenceData) -> None:
    for history in ("exclude", "include"):
        cfg = EvalConfig(ks=(10,), bootstrap=0, exclude_seen=history == "exclude")
        res = evaluate(rec.bundle.scorer, data, "test", cfg)
        mine = api_metrics(rec, data, history)
        theirs = res.per_user.select(pl.col("user_idx").cast(pl.Int64), "ndcg_at_10", "hr_at_10")
        joined = mine.join(theirs, on="user_idx", suffix="_eval")
        assert joined.height == mine.height == res.num_users
        assert np.allclose(joined["ndcg_at_10"], joined["ndcg_at_10_eval"], atol=1e-9)
        assert (joined["hr_at_10"] == joined["hr_at_10_eval"]).all()
        assert res.means["ndcg@10"] == pytest.approx(mine["ndcg_at_10"].mean())


def test_evaluation_measures_the_api_lists_on_repeat_data(repeat_model, repeat_data):
    check_evaluation_equals_the_api(repeat_model, SequenceData.load(repeat_data))


def test_ml100k_evaluation_measures_the_api_lists(ml100k, tmp_path):
    from recsys.data.readers import read_interactions as read

    prepare_dataset(read(ml100k / "u.data", "movielens"), tmp_path / "d", name="ml-100k")
    rec = Recommender(epochs=2, max_len=50, d_model=32, progress=False).fit(tmp_path / "d")
    check_evaluation_equals_the_api(rec, SequenceData.load(tmp_path / "d"))


def test_default_beats_recent_and_popular_where_people_repeat(repeat_model, repeat_data):
    data = SequenceData.load(repeat_data)
    assert repeat_model.bundle.history == "include"  # auto chose it from the data
    cfg = EvalConfig(ks=(10,), bootstrap=0, exclude_seen=False)
    model = evaluate(repeat_model.bundle.scorer, data, "test", cfg).means["ndcg@10"]
    counts = data.item_counts()
    recent = evaluate(MostRecent(counts), data, "test", cfg).means["ndcg@10"]
    popular = evaluate(MostPopular(counts), data, "test", cfg).means["ndcg@10"]
    assert model > recent > popular


def test_most_recent_ranks_the_last_distinct_items_first():
    import torch

    scorer = MostRecent(np.array([0, 5, 1, 1, 9]))
    history = torch.tensor([[0, 3, 1, 3, 2]])  # last occurrences: 1 at 2, 3 at 3, 2 at 4
    bias = scorer.history_bias(history)
    scores = torch.zeros(5)
    scores[1:] = scorer.item_vectors()[1:, 0]
    scores = scores.index_put((history[0],), bias[0], accumulate=True)
    assert torch.argsort(scores[1:], descending=True).add(1).tolist() == [2, 3, 1, 4]
