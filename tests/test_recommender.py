import numpy as np
import polars as pl
import pytest

from recsys import Recommender
from recsys.recommender import NotFittedError
from recsys.retrieval.index import IndexConfig, ItemIndex


@pytest.fixture(scope="module")
def fitted(successor_model):
    # The paper's model (no repeat term); fitted_repeat below covers the default.
    return successor_model("sasrec-plain")


def test_fit_returns_self_and_sets_learned_state(fitted):
    from sklearn.base import clone
    from sklearn.utils.validation import check_is_fitted

    assert isinstance(fitted, Recommender) and hasattr(fitted, "bundle_")
    assert len(fitted.history_) > 0
    check_is_fitted(fitted)
    fresh = clone(fitted)  # unfitted, same parameters
    assert fresh.get_params() == fitted.get_params() and not hasattr(fresh, "bundle_")
    with pytest.raises(NotFittedError):
        check_is_fitted(fresh)


def test_unfitted_is_a_clear_error():
    with pytest.raises(NotFittedError, match="not fitted"):
        Recommender().recommend(["1"])


def test_batch_equals_single_user(fitted):
    users = [str(u) for u in range(1, 301)]
    batch = fitted.recommend(users, k=5, batch_size=64)
    assert batch.columns == ["user_id", "rank", "item_id", "score"]
    assert batch.height == 300 * 5
    for u in ("1", "77", "300"):
        single = fitted.recommend([u], k=5)
        assert single.equals(batch.filter(pl.col("user_id") == u))


def test_known_rule_and_seen_items_excluded(fitted):
    # User 1's history is consecutive items; the next one must come first and no history
    # item may appear.
    hist = fitted.bundle.histories()
    flat, offsets = hist
    items = flat[offsets[0] : offsets[1]]
    vocab = fitted.bundle.item_vocab["item_id"].to_list()
    top = fitted.recommend(["1"], k=10)
    last_id = int(vocab[items[-1] - 1])
    assert top["item_id"][0] == str(last_id % 40 + 1)
    assert not set(top["item_id"]) & {vocab[i - 1] for i in items}
    assert set(fitted.recommend(["1"], k=10, history="include")["item_id"]) & {
        vocab[i - 1] for i in items
    }


def test_history_of_known_user_equals_recommend(fitted):
    flat, offsets = fitted.bundle.histories()
    vocab = fitted.bundle.item_vocab["item_id"].to_numpy()
    raw = vocab[flat[offsets[4] : offsets[5]] - 1].tolist()  # user 5
    by_history = fitted.recommend_for_history(raw, k=7)
    by_user = fitted.recommend(["5"], k=7).drop("user_id")
    assert by_history.equals(by_user)


def test_unknown_history_items_are_skipped_or_raise(fitted):
    history = ["3", "nope", "4", "5", "6", "7", "8", "9"]
    with pytest.warns(UserWarning, match=r"1 of 8 history item ID\(s\) are unknown"):
        out = fitted.recommend_for_history(history, k=3)
    assert out["item_id"][0] == "10"
    with pytest.raises(ValueError, match="unknown"):
        fitted.recommend_for_history(["3", "nope"], unknown="raise")
    with pytest.raises(ValueError, match="no known item"), pytest.warns(UserWarning):
        fitted.recommend_for_history(["nope"])


def test_bad_requests(fitted):
    with pytest.raises(ValueError, match=r"unknown user ID\(s\), e.g. \['ghost'\]"):
        fitted.recommend(["ghost"])
    for k in (0, -1, 41):
        with pytest.raises(ValueError, match=f"k={k}"):
            fitted.recommend(["1"], k=k)
    with pytest.raises(ValueError, match="unknown item"):
        fitted.score("1", ["zzz"])


def test_exclude_items_and_score(fitted):
    top = fitted.recommend(["1"], k=3)
    without = fitted.recommend(["1"], k=3, exclude_items=[top["item_id"][0]])
    assert without["item_id"].to_list()[:2] == top["item_id"].to_list()[1:]
    scored = fitted.score("1", top["item_id"].to_list())
    assert np.allclose(scored["score"].to_numpy(), top["score"].to_numpy(), atol=1e-4)
    assert fitted.recommend(["1"], k=3, as_pandas=True).shape == (3, 4)


def test_load_from_bundle_folder(fitted):
    again = Recommender.load(fitted.bundle.path)
    assert again.recommend(["9"], k=4).equals(fitted.recommend(["9"], k=4))


@pytest.fixture(scope="module")
def fitted_repeat(successor_model):
    return successor_model("sasrec")


def test_repeat_term_learns_that_nobody_repeats(fitted_repeat):
    # Successor sequences (8-15 items of 40) never repeat an item: every distance bucket
    # the data shows (0 to 14 positions back: buckets 0-4) must learn a penalty, and the
    # buckets it never shows stay at 0.
    weight = fitted_repeat.bundle.scorer.model.repeat.weight.detach()
    assert (weight[:5] < -0.2).all() and (weight[5:] == 0).all(), weight


def test_include_seen_merges_history_items_exactly(fitted_repeat):
    from recsys.data.dataset import gather_ragged
    from recsys.scoring import score_items

    rec = fitted_repeat
    flat, offsets = rec.bundle.histories()
    vocab = rec.bundle.item_vocab["item_id"].to_list()
    n = rec.bundle.num_items
    users = [3, 50, 299]
    h, h_off = gather_ragged(flat, offsets[np.array(users) - 1], offsets[np.array(users)])
    every = np.tile(np.arange(1, n + 1), (len(users), 1))
    scores = score_items(rec.bundle, h, h_off, every)  # (3, n): dot products + repeat term
    got = rec.recommend([str(u) for u in users], k=10, history="include")
    for row, u in enumerate(users):
        best = sorted(range(n), key=lambda j: (-scores[row, j], j))[:10]
        mine = got.filter(pl.col("user_id") == str(u))
        assert mine["item_id"].to_list() == [vocab[j] for j in best]
        assert np.allclose(mine["score"].to_numpy(), scores[row, best], atol=1e-4)
    # A history longer than the model's window (16): every item in it is scored with its
    # offset, the older ones with the farthest trained bucket's.
    long = np.array([(j * 7) % n + 1 for j in range(30)])
    all_items = np.arange(1, n + 1)[None, :]
    long_scores = score_items(rec.bundle, long, np.array([0, 30]), all_items)[0]
    best = sorted(range(n), key=lambda j: (-long_scores[j], j))[:10]
    raw = [vocab[i - 1] for i in long]
    mine = rec.recommend_for_history(raw, k=10, history="include")
    assert mine["item_id"].to_list() == [vocab[j] for j in best]
    assert np.allclose(mine["score"].to_numpy(), long_scores[best], atol=1e-4)
    # The merge is needed: some history items make these lists.
    hist = {vocab[i - 1] for i in flat[offsets[2] : offsets[3]]}
    assert set(got.filter(pl.col("user_id") == "3")["item_id"]) & hist


def brute_force_top(users, items, k, exclude):
    s = users @ items[1:].T
    out = []
    for b in range(len(users)):
        order = sorted(range(1, len(items)), key=lambda i: (-s[b, i - 1], i))
        out.append([i for i in order if i not in set(exclude[b])][:k])
    return out


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_index_recall_on_small_catalogue(kind):
    rng = np.random.default_rng(0)
    items = rng.standard_normal((2001, 16)).astype(np.float32)
    users = rng.standard_normal((50, 16)).astype(np.float32)
    exclude = rng.integers(0, 2001, (50, 30))
    expected = brute_force_top(users, items, 10, exclude)
    got, scores = ItemIndex(items, IndexConfig(kind=kind, ivf_nlist=20, ivf_nprobe=8)).search(
        users, 10, exclude
    )
    recall = np.mean(
        [len(set(g) & set(e)) / 10 for g, e in zip(got.tolist(), expected, strict=True)]
    )
    if kind == "exact":
        assert got.tolist() == expected
    else:
        assert recall >= 0.9
    assert not any(
        set(g) & set(x) - {0} for g, x in zip(got.tolist(), exclude.tolist(), strict=True)
    )
    assert (np.diff(scores, axis=1) <= 0).all()


def test_index_ties_go_to_lower_index_and_short_lists_pad():
    items = np.array([[0.0], [1.0], [1.0], [1.0], [0.5]], dtype=np.float32)
    idx = ItemIndex(items, IndexConfig(kind="exact"))
    got, _ = idx.search(np.ones((1, 1), dtype=np.float32), 2)
    assert got.tolist() == [[1, 2]]
    got, s = idx.search(np.ones((1, 1), dtype=np.float32), 3, np.array([[1, 2, 3]]))
    assert got.tolist() == [[4, 0, 0]] and np.isinf(s[0, 1:]).all()
