"""One contract for every scorer (SASRec with and without the repeat term, most-popular,
and the ones to come): the same known-answer data, the same guarantees.

A new scorer gets these tests by adding a subclass that names its ``kind`` (a key of
``conftest.SUCCESSOR_FITS``) and says what it must know about successor data.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from recsys import Recommender
from recsys.data.dataset import pad_left


class ScorerContract:
    kind: str

    @pytest.fixture
    def rec(self, successor_model) -> Recommender:
        return successor_model(self.kind)  # fitted once per session

    def histories(self, rec: Recommender, users: list[int]) -> list[np.ndarray]:
        flat, offsets = rec.bundle.histories()
        return [flat[offsets[u - 1] : offsets[u]] for u in users]

    def test_vectors_have_the_promised_shapes(self, rec):
        scorer = rec.bundle.scorer
        items = scorer.item_vectors()
        assert items.shape[0] == rec.bundle.num_items + 1 and items.dtype == torch.float32
        hist = self.histories(rec, [1, 2, 3])
        inputs = np.stack([pad_left(h, np.array([0]), np.array([len(h)]), scorer.max_len)[0]
                           for h in hist])  # fmt: skip
        users = scorer.user_vectors(torch.from_numpy(inputs))
        assert users.shape == (3, items.shape[1]) and torch.isfinite(users).all()

    def test_lists_are_ranked_and_exclude_the_history(self, rec):
        users = [str(u) for u in range(1, 301)]
        out = rec.recommend(users, k=5)
        assert out.height == 300 * 5 and out.columns == ["user_id", "rank", "item_id", "score"]
        for _, rows in out.group_by("user_id"):
            assert rows["rank"].to_list() == [1, 2, 3, 4, 5]
            assert (np.diff(rows["score"].to_numpy()) <= 0).all()
        vocab = rec.bundle.item_vocab["item_id"].to_numpy()
        for u, h in zip([1, 150, 300], self.histories(rec, [1, 150, 300]), strict=True):
            got = set(out.filter(pl.col("user_id") == str(u))["item_id"])
            assert not got & set(vocab[h - 1])

    def test_one_user_alone_equals_the_batch_and_a_raw_history(self, rec):
        batch = rec.recommend([str(u) for u in range(1, 101)], k=7, batch_size=32)
        vocab = rec.bundle.item_vocab["item_id"].to_numpy()
        for u, h in zip([1, 50, 100], self.histories(rec, [1, 50, 100]), strict=True):
            one = rec.recommend([str(u)], k=7)
            assert one.equals(batch.filter(pl.col("user_id") == str(u)))
            assert rec.recommend_for_history(list(vocab[h - 1]), k=7).equals(one.drop("user_id"))

    def test_exclusions_are_respected(self, rec):
        top = rec.recommend(["3"], k=3)["item_id"].to_list()
        again = rec.recommend(["3"], k=3, exclude_items=top[:2])
        assert again["item_id"][0] == top[2] and not set(again["item_id"]) & set(top[:2])

    def test_loading_the_bundle_gives_the_same_lists(self, rec):
        again = Recommender.load(rec.bundle.path)
        users = [str(u) for u in (4, 40, 240)]
        assert again.recommend(users, k=5).equals(rec.recommend(users, k=5))

    def test_known_answer(self, rec):
        raise NotImplementedError  # each scorer says what it must learn from the data


class TestSASRec(ScorerContract):
    kind = "sasrec"

    def test_known_answer(self, rec):
        # Successor data: the item after the last one comes first, for nearly every user.
        vocab = rec.bundle.item_vocab["item_id"].to_list()
        hits = 0
        for u, h in zip(range(1, 101), self.histories(rec, list(range(1, 101))), strict=True):
            nxt = str(int(vocab[h[-1] - 1]) % 40 + 1)
            hits += rec.recommend([str(u)], k=1)["item_id"][0] == nxt
        assert hits >= 95


class TestSASRecWithoutRepeatTerm(TestSASRec):
    kind = "sasrec-plain"


class TestMostPopular(ScorerContract):
    kind = "most-popular"

    def test_known_answer(self, rec):
        # The most frequent training items, in order, whatever the history (seen excluded).
        counts = rec.bundle.scorer.item_vectors()[:, 0].numpy()
        order = sorted(range(1, len(counts)), key=lambda i: (-counts[i], i))
        vocab = rec.bundle.item_vocab["item_id"].to_numpy()
        h = set(self.histories(rec, [7])[0].tolist())
        expected = [vocab[i - 1] for i in order if i not in h][:5]
        assert rec.recommend(["7"], k=5)["item_id"].to_list() == expected
