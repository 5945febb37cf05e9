"""Property tests of score_chunk against a brute-force full ranking: random histories
with repeats, single-item histories, one-user chunks, history items allowed or not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys import Recommender
from recsys.scoring import score_chunk, user_vectors, whole_histories

N_ITEMS = 15


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, make_prepared, successor_sequences):
    root = tmp_path_factory.mktemp("props")
    data = make_prepared(root / "d", successor_sequences(60, N_ITEMS))
    rec = Recommender(epochs=2, max_len=8, d_model=16, progress=False)
    b = rec.fit(data, output=root / "bundle").bundle_
    # Large, mixed repeat weights so that history items land among the others' scores.
    repeat = b.scorer.model.repeat
    with torch.no_grad():
        repeat.raw.copy_(torch.linspace(-3, 3, repeat.raw.numel()) / repeat.raw.numel())
    return b


def brute_force(bundle, flat, offsets, k, exclude_seen, exclude):
    """Top-k (items, scores) per history over the whole catalogue, ties to the lower index."""
    users = user_vectors(bundle, flat, offsets).numpy()
    scores = users @ bundle.scorer.item_vectors().numpy()[1:].T  # (B, I)
    history = whole_histories(flat, offsets)
    values = bundle.scorer.history_bias(history)
    out = []
    for b in range(len(users)):
        s = scores[b].astype(np.float64)
        hist = flat[offsets[b] : offsets[b + 1]]
        if not exclude_seen:
            for item, value in zip(history[b].tolist(), values[b].tolist(), strict=True):
                s[item - 1] += value if item else 0.0
        banned = set(exclude[b].tolist()) - {0} if exclude is not None else set()
        if exclude_seen:
            banned |= set(hist.tolist())
        order = sorted(
            (i for i in range(1, N_ITEMS + 1) if i not in banned), key=lambda i: (-s[i - 1], i)
        )
        out.append([(i, s[i - 1]) for i in order[:k]])
    return out


histories = st.lists(
    st.lists(st.integers(1, N_ITEMS), min_size=1, max_size=30)
    | st.lists(st.integers(1, 3), min_size=1, max_size=12)  # heavy repeats
    | st.integers(1, N_ITEMS).map(lambda i: [i] * 1),  # one item
    min_size=1,
    max_size=4,
)


@settings(max_examples=80, deadline=None)
@given(
    hists=histories,
    k=st.integers(1, N_ITEMS),
    exclude_seen=st.booleans(),
    extra=st.lists(st.integers(0, N_ITEMS), max_size=3),
)
def test_score_chunk_equals_brute_force(bundle, hists, k, exclude_seen, extra):
    flat = np.array([i for h in hists for i in h], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(h) for h in hists])]).astype(np.int64)
    exclude = np.tile(np.array(extra or [0], dtype=np.int64), (len(hists), 1))
    items, scores = score_chunk(bundle, flat, offsets, k, exclude_seen, exclude)
    assert items.shape == scores.shape == (len(hists), k)
    for b, expected in enumerate(brute_force(bundle, flat, offsets, k, exclude_seen, exclude)):
        got = [(int(i), float(s)) for i, s in zip(items[b], scores[b], strict=True) if i]
        assert len(got) == len(expected)
        # Same scores rank by rank; items may swap only within float-noise ties.
        assert np.allclose([s for _, s in got], [s for _, s in expected], atol=1e-4)
        exact = {i: s for i, s in expected}
        assert all(i in exact or abs(s - expected[-1][1]) < 1e-4 for i, s in got)
        assert not (items[b, len(got) :] != 0).any()
        assert np.isneginf(scores[b, len(got) :]).all()
    # One user at a time gives the same lists as the chunk.
    for b in range(len(hists)):
        one = slice(offsets[b], offsets[b + 1])
        i1, s1 = score_chunk(
            bundle, flat[one], np.array([0, len(hists[b])]), k, exclude_seen, exclude[b : b + 1]
        )
        assert (i1[0] == items[b]).all() and np.allclose(s1[0], scores[b])


def test_single_item_history_with_history_allowed(bundle):
    # The smallest case that used to crash: one distinct item, history not excluded.
    for hist in ([4], [4, 4, 4]):
        items, _ = score_chunk(bundle, np.array(hist), np.array([0, len(hist)]), 3, False)
        expected = brute_force(bundle, np.array(hist), np.array([0, len(hist)]), 3, False, None)
        assert items[0].tolist() == [i for i, _ in expected[0]]
