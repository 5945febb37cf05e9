"""Beyond-accuracy metrics (recsys.evaluation.beyond) against answers worked out by hand."""

import math

import numpy as np
import polars as pl
import pytest
import torch

import recsys.evaluation.beyond as beyond
from recsys.allocation.features import ItemFeatures
from recsys.data.dataset import SequenceData
from recsys.evaluation.beyond import (
    BeyondAccuracy,
    calibration_kl,
    gini,
    history_genres,
    intra_list_diversity,
    novelty,
    pairwise_similarity,
    self_information,
)
from recsys.evaluation.evaluate import EvalConfig, evaluate
from recsys.models.scorers import MostPopular


def features(genres: list[list[str]] | None, vectors: list[list[float]] | None = None):
    """ItemFeatures of items 1..n with these genre lists (or none) and vectors."""
    n = len(genres) if genres is not None else len(vectors)
    cols = {"item_idx": list(range(1, n + 1)), "item_id": [str(i) for i in range(1, n + 1)]}
    if genres is not None:
        cols["genres"] = genres
    vecs = torch.tensor([[0.0] * 2] + (vectors or [[1.0, 0.0]] * n))
    return ItemFeatures.build(pl.DataFrame(cols), vecs)


def kl(p: list[float], q: list[float], a: float = 0.01) -> float:
    """Steck's C_KL by the formula, in plain Python (natural log)."""
    pairs = zip(p, q, strict=True)
    return sum(pi * math.log(pi / ((1 - a) * qi + a * pi)) for pi, qi in pairs if pi > 0)


# Items 1: {A}, 2: {A, B}, 3: {C}.
ABC = [["A"], ["A", "B"], ["C"]]


def test_ild_on_genres_is_one_minus_jaccard_over_pairs():
    f = features(ABC)
    top = torch.tensor([[1, 2, 3], [1, 3, 2], [1, 0, 0], [1, 2, 0]])
    ild = intra_list_diversity(top, f, (2, 3))
    # [1, 2]: 1 - 1/2; [1, 3]: 1 - 0; [1, 2, 3]: pairs 0.5, 1, 1 (2 and 3 share nothing).
    assert ild[2].tolist() == pytest.approx([0.5, 1.0, 0.0, 0.5])
    # One item: no pair, 0. [1, 2, empty]: its one pair only.
    assert ild[3].tolist() == pytest.approx([2.5 / 3, 2.5 / 3, 0.0, 0.5])


def test_ild_falls_back_to_the_cosine_of_embeddings():
    # Vectors need not be unit-length: (3, 3) is at 45 degrees to both axes.
    f = features(None, [[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    assert not f.has_genres
    ild = intra_list_diversity(torch.tensor([[1, 2, 3], [1, 3, 2]]), f, (2, 3))
    c = 1 - 1 / math.sqrt(2)
    assert ild[2].tolist() == pytest.approx([1.0, c])
    assert ild[3].tolist() == pytest.approx([(1 + 2 * c) / 3] * 2)


def test_pairwise_similarity_agrees_with_item_features():
    gen = torch.Generator().manual_seed(0)
    f = features([["A"], ["A", "B"], ["C"], [], ["B", "C"]])
    top = torch.randint(0, 6, (4, 5), generator=gen)
    sim = pairwise_similarity(top, f)
    for j in range(5):
        assert torch.allclose(sim[:, :, j], f.similarity(top, top[:, j], "genres"))
    # Item 4 has no genre: similar to nothing, itself included (Jaccard 0 by convention).
    assert pairwise_similarity(torch.tensor([[4, 4]]), f)[0, 0, 1] == 0


def test_novelty_is_mean_self_information_of_listed_items():
    # 4 training users; item 1 consumed 8 times (clipped to p = 1), 2 once, 3 never (as once).
    info = self_information(np.array([0, 8, 1, 0]), num_users=4)
    assert info.tolist() == pytest.approx([0.0, 0.0, 2.0, 2.0])
    top = torch.tensor([[1, 2, 3], [2, 0, 0], [0, 0, 0]])
    nov = novelty(top, info, (1, 2, 3))
    assert nov[1].tolist() == pytest.approx([0.0, 2.0, 0.0])
    assert nov[2].tolist() == pytest.approx([1.0, 2.0, 0.0])
    assert nov[3].tolist() == pytest.approx([4 / 3, 2.0, 0.0])


def test_calibration_kl_by_hand_two_genres():
    # Items 1: {A}, 2: {B}, 3: {A, B}, 4: no genre.
    f = features([["A"], ["B"], ["A", "B"], []])
    history = torch.tensor([[1, 1, 2, 0], [4, 4, 0, 0], [0, 3, 1, 4]])
    p = history_genres(history, f)
    # User 1: A 2/3, B 1/3. User 2: no genre. User 3: item 3 splits its weight: A 3/4.
    assert p.numpy() == pytest.approx(np.array([[2 / 3, 1 / 3], [0.0, 0.0], [0.75, 0.25]]))
    top = torch.tensor([[2, 3], [1, 2], [1, 2]])
    c = calibration_kl(top, p, f, (1, 2))
    # Top-1 of user 1 is [2]: q = (0, 1); then [2, 3]: q = (1/4, 3/4).
    assert c[1][0] == pytest.approx(
        2 / 3 * math.log((2 / 3) / (0.01 * 2 / 3)) + 1 / 3 * math.log((1 / 3) / (0.99 + 0.01 / 3))
    )
    assert c[2].tolist() == pytest.approx(
        [kl([2 / 3, 1 / 3], [0.25, 0.75]), 0.0, kl([0.75, 0.25], [0.5, 0.5])]
    )
    assert c[1][1] == 0.0  # no genre in the history


def test_history_genres_in_blocks_equals_the_whole(monkeypatch):
    f = features([["A"], ["B"], ["A", "B"], [], ["C", "A", "B"]])
    history = torch.randint(0, 6, (7, 23), generator=torch.Generator().manual_seed(1))
    whole = f.genre_distribution(history).double()
    monkeypatch.setattr(beyond, "HISTORY_BLOCK", 4)  # 6 blocks, the last one short
    assert torch.allclose(history_genres(history, f), whole)


def test_lists_shorter_than_k_count_as_padded_with_empty_slots():
    # A catalogue smaller than K gives lists shorter than K.
    f = features([["A"], ["B"], ["A", "B"]])
    acc = BeyondAccuracy(f, np.array([0, 1, 2, 3]), 3, (1, 5))
    acc.add(torch.tensor([[1, 2], [3, 0]]), torch.tensor([[1], [2]]))
    pu = acc.result(bootstrap=0).per_user
    assert pu["ild_at_5"].tolist() == [1.0, 0.0]
    info = math.log2(3)  # item 1: p = 1/3
    assert pu["novelty_at_5"].tolist() == pytest.approx([(info + math.log2(1.5)) / 2, 0.0])
    assert pu["calibration_kl_at_5"].tolist() == pytest.approx(
        [kl([1, 0], [0.5, 0.5]), kl([0, 1], [0.5, 0.5])]
    )


@pytest.mark.parametrize(
    ("counts", "expected"),
    [([0, 0, 5], 2 / 3), ([1, 1, 1], 0.0), ([0, 0, 0], 0.0), ([4, 1, 3, 2], 0.25), ([7], 0.0)],
)
def test_gini(counts, expected):
    assert gini(np.array(counts)) == pytest.approx(expected)


def test_accumulator_over_chunks_equals_one_pass():
    f = features([["A"], ["A", "B"], ["C"], []])
    counts = np.array([0, 5, 2, 1, 0])
    gen = torch.Generator().manual_seed(3)
    top = torch.randint(0, 5, (9, 3), generator=gen)
    history = torch.randint(0, 5, (9, 6), generator=gen)
    one, chunked = (BeyondAccuracy(f, counts, 5, (1, 3)) for _ in range(2))
    one.add(top, history)
    for lo in range(0, 9, 4):
        # Chunks pad their histories to their own longest: extra padding changes nothing.
        h = history[lo : lo + 4]
        chunked.add(top[lo : lo + 4], torch.cat([torch.zeros(len(h), 2, dtype=torch.long), h], 1))
    a, b = one.result(bootstrap=50), chunked.result(bootstrap=50)
    assert a.means == pytest.approx(b.means)
    assert a.ci.keys() == b.ci.keys()
    assert all(a.ci[m] == pytest.approx(b.ci[m]) for m in a.ci)
    assert sorted(a.per_user) == [
        "calibration_kl_at_1",
        "calibration_kl_at_3",
        "ild_at_3",
        "novelty_at_1",
        "novelty_at_3",
    ]
    assert "ild@1" not in a.means and "exposure_gini@3" not in a.ci
    shown = np.bincount(top.ravel().numpy(), minlength=5)[1:]
    assert a.means["exposure_gini@3"] == pytest.approx(gini(shown))


# test_evaluation's known-answer data. Training prefixes [1, 2, 3], [2, 1, 5], [1, 5, 5]
# (counts 1: 3, 2: 2, 3: 1, 4: 0, 5: 3; 3 users); most-popular test top-2 lists, history
# excluded: user 1 [5, 4], user 2 [3, 4] (its history 2, 1, 5 excluded), user 3 [2, 3].
SEQS = [[1, 2, 3, 1, 4], [2, 1, 5, 2, 1], [1, 5, 5, 4, 3]]
GENRES = [["A"], ["A", "B"], ["B"], ["C"], ["A", "C"]]


def prepared(tmp_path, make_prepared, genres: bool) -> SequenceData:
    items = None
    if genres:
        items = pl.DataFrame(
            {"item_id": [str(i) for i in range(1, 6)], "title": list("abcde"), "genres": GENRES}
        )
    return SequenceData.load(make_prepared(tmp_path / "d", SEQS, items=items))


def test_evaluate_reports_them_with_genres(tmp_path, make_prepared):
    d = prepared(tmp_path, make_prepared, genres=True)
    res = evaluate(MostPopular(d.item_counts()), d, "test", EvalConfig(ks=(1, 2)))
    flat = res.flat()
    for name in ("ild_at_2", "novelty_at_1", "novelty_at_2", "calibration_kl_at_2"):
        assert f"test_{name}" in flat and f"test_{name}_ci_low" in flat
        assert name in res.per_user.columns
    assert "test_ild_at_1" not in flat and "ild_at_1" not in res.per_user.columns
    assert "test_exposure_gini_at_2" in flat and "test_exposure_gini_at_2_ci_low" not in flat
    pu = res.per_user
    # Jaccard: {A, C}-{C} 1/2, {B}-{C} 0, {A, B}-{B} 1/2.
    assert pu["ild_at_2"].to_list() == pytest.approx([0.5, 1.0, 0.5])
    # p = max(count, 1) / 3 users, at most 1: self-information 1: 0, 2: log2 1.5,
    # 3: log2 3, 4: log2 3 (never trained on: as once), 5: 0.
    l3, l15 = math.log2(3), math.log2(1.5)
    assert pu["novelty_at_1"].to_list() == pytest.approx([0.0, l3, l15])
    assert pu["novelty_at_2"].to_list() == pytest.approx([l3 / 2, l3, (l15 + l3) / 2])
    # Whole test histories [1, 2, 3, 1], [2, 1, 5, 2], [1, 5, 5, 4] over genres (A, B, C).
    p = [[2.5 / 4, 1.5 / 4, 0], [2.5 / 4, 1 / 4, 0.5 / 4], [2 / 4, 0, 2 / 4]]
    q1 = [[0.5, 0, 0.5], [0, 1, 0], [0.5, 0.5, 0]]  # [5], [3], [2]
    q2 = [[0.25, 0, 0.75], [0, 0.5, 0.5], [0.25, 0.75, 0]]  # [5, 4], [3, 4], [2, 3]
    assert pu["calibration_kl_at_1"].to_list() == pytest.approx(
        [kl(a, b) for a, b in zip(p, q1, strict=True)]
    )
    assert pu["calibration_kl_at_2"].to_list() == pytest.approx(
        [kl(a, b) for a, b in zip(p, q2, strict=True)]
    )
    assert res.means["calibration_kl@2"] == pytest.approx(pu["calibration_kl_at_2"].mean())
    # Shown at 1: items 5, 3, 2 → [0, 1, 1, 0, 1]; at 2: [0, 1, 2, 2, 1].
    assert res.means["exposure_gini@1"] == pytest.approx(0.4)
    assert res.means["exposure_gini@2"] == pytest.approx(1 / 3)
    assert flat["test_exposure_gini_at_2"] == res.means["exposure_gini@2"]


def test_evaluate_without_genres_uses_embeddings_and_no_calibration(tmp_path, make_prepared):
    d = prepared(tmp_path, make_prepared, genres=False)
    scorer = MostPopular(d.item_counts())
    res = evaluate(scorer, d, "test", EvalConfig(ks=(1, 2), bootstrap=0))
    assert not any("calibration" in k for k in res.flat())
    assert not any("calibration" in c for c in res.per_user.columns)
    # Most-popular's item vectors are its counts (1-d): cosine 1 between trained items, 0
    # with item 4 (count 0, a zero vector). Lists [5, 4], [3, 4], [2, 3].
    assert res.per_user["ild_at_2"].to_list() == pytest.approx([1.0, 1.0, 0.0])
    # Item features given explicitly replace the vocabulary's: genres, so calibration.
    given = features(GENRES, [[1.0, 0.0]] * 5)
    with_genres = evaluate(scorer, d, "test", EvalConfig(ks=(1, 2), bootstrap=0), features=given)
    assert with_genres.per_user["ild_at_2"].to_list() == pytest.approx([0.5, 1.0, 0.5])
    assert "test_calibration_kl_at_2" in with_genres.flat()
    with pytest.raises(ValueError, match="item features cover 3 items"):
        evaluate(scorer, d, "test", EvalConfig(ks=(1,)), features=features(ABC))


def test_sampled_protocol_and_the_switch_report_none(tmp_path, make_prepared):
    d = prepared(tmp_path, make_prepared, genres=True)
    scorer = MostPopular(d.item_counts())
    names = ("ild", "novelty", "calibration", "gini")
    cfg = EvalConfig(ks=(2,), protocol="sampled", num_sampled=1, bootstrap=0)
    sampled = evaluate(scorer, d, "test", cfg)
    off = evaluate(scorer, d, "test", EvalConfig(ks=(2,), bootstrap=0, beyond_accuracy=False))
    for res in (sampled, off):
        assert not any(n in k for k in res.flat() for n in names)
        assert not any(n in c for c in res.per_user.columns for n in names)
    assert "test_ndcg_at_2" in off.flat()
