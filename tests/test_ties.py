"""Events with the same timestamp: which events tie, and shuffling them within ties.

The trainer's use of it is tested in tests/test_training.py.
"""

import numpy as np

from recsys.data.dataset import SequenceData
from recsys.training.batches import shuffle_ties, tie_groups


def test_tie_starts_mark_the_groups_of_training_events(tied_data):
    d = SequenceData.load(tied_data)
    assert d.n_train.tolist() == [4, 3]  # leave-one-out: the last two are held out
    starts = d.tie_starts
    # Held-out events start groups of their own: they keep their places.
    user1 = [True, False, False, True, True, True]
    user2 = [True, True, False, True, True]
    assert starts.tolist() == user1 + user2
    positions, groups = tie_groups(starts)
    assert positions.tolist() == [0, 1, 2, 7, 8]
    assert groups.tolist() == [0, 0, 0, 1, 1]


def test_no_ties_no_groups(tmp_path, make_prepared):
    d = SequenceData.load(make_prepared(tmp_path / "d", [[1, 2, 3], [4, 5, 6]]))  # 0, 1, 2
    assert d.tie_starts is None


def test_shuffle_moves_events_only_within_their_group():
    items = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9])
    starts = np.array([1, 0, 0, 1, 1, 0, 1, 1, 1], dtype=bool)  # groups [1 2 3], [5 6]
    positions, groups = tie_groups(starts)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        out = shuffle_ties(items, positions, groups, rng)
        assert sorted(out[:3]) == [1, 2, 3] and sorted(out[4:6]) == [5, 6]
        assert out[[3, 6, 7, 8]].tolist() == [4, 7, 8, 9]
        seen.add(tuple(out[:6]))
    assert len(seen) == 6 * 2  # every order of both groups turns up
    assert items.tolist() == list(range(1, 10))  # the input is not changed
    once, twice = (shuffle_ties(items, positions, groups, np.random.default_rng(1)) for _ in "ab")
    assert once.tolist() == twice.tolist()  # the generator decides


def test_manifest_records_how_often_events_tie(tied_data, tmp_path, make_prepared):
    ties = SequenceData.load(tied_data).manifest["ties"]
    # Tied with the user's previous event: user 1's 2nd, 3rd and 6th (the test target),
    # user 2's 3rd and 4th (the validation target); 5 of 11.
    assert ties == {
        "share_of_events": round(5 / 11, 6),
        "valid_targets_tied": 0.5,
        "test_targets_tied": 0.5,
    }
    untied = make_prepared(tmp_path / "d", [[1, 2, 3], [4, 5, 6]])
    assert SequenceData.load(untied).manifest["ties"] == dict.fromkeys(ties, 0.0)
