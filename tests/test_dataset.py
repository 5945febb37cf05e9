import json

import numpy as np
import pytest

from recsys.data.dataset import SequenceData, gather_ragged, pad_left, ragged_to_padded


def test_pad_left_exact():
    values = np.array([5, 6, 7, 8])
    out = pad_left(values, np.array([0, 3]), np.array([3, 4]), 2)
    assert out.tolist() == [[6, 7], [0, 8]]
    assert pad_left(values, np.array([0]), np.array([2]), 4).tolist() == [[0, 0, 5, 6]]


def test_gather_and_pad_ragged_exact():
    flat, offsets = gather_ragged(np.array([5, 6, 7, 8]), np.array([1, 3, 2]), np.array([3, 4, 2]))
    assert flat.tolist() == [6, 7, 8] and offsets.tolist() == [0, 2, 3, 3]
    assert ragged_to_padded(flat, offsets).tolist() == [[6, 7], [8, 0], [0, 0]]


def test_load_stages_and_counts(tmp_path, make_prepared):
    # users: 1 → [10, 11, 12, 13], 2 → [11, 12, 10]; item_idx of ID 10 is 1, 11 → 2, ...
    path = make_prepared(tmp_path / "d", [[10, 11, 12, 13], [11, 12, 10]])
    d = SequenceData.load(path)
    assert d.num_users == 2 and d.num_items == 4
    assert d.items.tolist() == [1, 2, 3, 4, 2, 3, 1]
    assert d.n_train.tolist() == [2, 1] and d.n_valid.tolist() == [1, 1]
    users, start, stop = d.train_ranges()  # user 2 has one training event: not trainable
    assert users.tolist() == [1] and start.tolist() == [0] and stop.tolist() == [2]
    valid = d.stage("valid")
    assert valid.users.tolist() == [1, 2]
    assert d.items[valid.hist_stop].tolist() == [3, 3]  # the validation targets
    test = d.stage("test")
    assert d.items[test.hist_stop].tolist() == [4, 1]
    assert (test.target_stop - test.hist_stop).tolist() == [1, 1]
    assert d.item_counts().tolist() == [0, 1, 2, 0, 0]  # training events only


def test_temporal_users_without_history_are_counted(tmp_path, make_prepared):
    # User 2's only events come after the cut-off: a target, but nothing to predict from.
    path = make_prepared(
        tmp_path / "d",
        [[1, 2, 3, 4], [5]],
        start=[0, 5],
        split="temporal",
        valid_cutoff=3,
        test_cutoff=3,
    )
    d = SequenceData.load(path)
    st = d.stage("test")
    assert st.users.tolist() == [1] and st.skipped_no_history == 1


def test_not_a_prepared_folder(tmp_path):
    with pytest.raises(ValueError, match=r"no manifest\.json"):
        SequenceData.load(tmp_path)


def test_schema_version_mismatch(tmp_path, make_prepared):
    path = make_prepared(tmp_path / "d", [[1, 2, 3]])
    m = json.loads((path / "manifest.json").read_text())
    m["schema_version"] = 999
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="schema_version 999"):
        SequenceData.load(path)


def test_unknown_stage(tmp_path, make_prepared):
    d = SequenceData.load(make_prepared(tmp_path / "d", [[1, 2, 3]]))
    with pytest.raises(ValueError, match="'train'"):
        d.stage("train")
