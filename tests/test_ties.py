"""Events with the same timestamp: their order is unknown, so training shuffles it."""

import logging

import numpy as np
import pytest
import torch

from recsys.data.dataset import SequenceData
from recsys.models.sasrec import SASRecConfig
from recsys.training.batches import shuffle_ties, tie_groups
from recsys.training.trainer import LAST, TrainConfig, Trainer

# User 1: items 1 2 3 at one time, 4 alone, and the held-out 5 and 6 tied with each other;
# user 2: 7, then 8 9 tied with the held-out validation target 1, then the test target 2.
SEQS = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 1, 2]]
TIMES = [[0, 0, 0, 1, 2, 2], [5, 6, 6, 6, 8]]


@pytest.fixture(scope="module")
def tied(tmp_path_factory, make_prepared):
    return make_prepared(tmp_path_factory.mktemp("ties") / "d", SEQS, times=TIMES)


def test_tie_starts_mark_the_groups_of_training_events(tied):
    d = SequenceData.load(tied)
    assert d.n_train.tolist() == [4, 3]  # leave-one-out: the last two are held out
    starts = d.tie_starts()
    # Held-out events start groups of their own: they keep their places.
    user1 = [True, False, False, True, True, True]
    user2 = [True, True, False, True, True]
    assert starts.tolist() == user1 + user2
    positions, groups = tie_groups(starts)
    assert positions.tolist() == [0, 1, 2, 7, 8]
    assert groups.tolist() == [0, 0, 0, 5, 5]


def test_no_ties_no_groups(tmp_path, make_prepared):
    d = SequenceData.load(make_prepared(tmp_path / "d", SEQS))  # times 0, 1, 2, ...
    assert d.tie_starts() is None


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


def _trainer(path, checkpoint_dir=None, **kw) -> Trainer:
    d = SequenceData.load(path)
    base = {"loss": "ce", "epochs": 3, "batch_size": 2, "lr": 5e-3, "patience": 50}
    cfg = TrainConfig(**{**base, **kw})
    mcfg = SASRecConfig(num_items=d.num_items, max_len=8, d_model=16, dropout=0.1)
    return Trainer(mcfg, cfg, d, checkpoint_dir=checkpoint_dir, progress=False)


def _same_weights(a, b) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_training_reads_the_shuffled_order_and_keeps_held_out_events(tied, caplog):
    with caplog.at_level(logging.INFO, logger="recsys.training.trainer"):
        t = _trainer(tied)
    assert "ties=shuffle: 5 of 7 training events share their timestamp" in caplog.text
    orders = set()
    for _ in range(20):
        t._epoch()
        orders.add(tuple(t._items.tolist()))
        assert t._items[[3, 4, 5, 6, 9, 10]].tolist() == [4, 5, 6, 7, 1, 2]
    assert len(orders) > 1
    assert t.data.items.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2]  # data untouched
    keep = _trainer(tied, ties="keep")
    assert keep.ties is None
    keep._epoch()
    assert keep._items is keep.data.items


def test_without_ties_shuffle_trains_exactly_as_keep(tmp_path, make_prepared):
    path = make_prepared(tmp_path / "d", SEQS * 4)
    a, b = _trainer(path).fit(), _trainer(path, ties="keep").fit()
    assert _same_weights(a.model, b.model)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]


def test_shuffled_training_resumes_exactly(tied, tmp_path):
    full = _trainer(tied, epochs=4).fit()
    _trainer(tied, tmp_path, epochs=2).fit()
    ck = torch.load(tmp_path / LAST, weights_only=True)
    ck["train_cfg"]["epochs"] = 4
    torch.save(ck, tmp_path / LAST)
    resumed = _trainer(tied, tmp_path, epochs=4).fit(resume=True)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert _same_weights(full.model, resumed.model)
    # Shuffling changes what is trained on: the same seed without it ends elsewhere.
    assert not _same_weights(full.model, _trainer(tied, epochs=4, ties="keep").fit().model)
