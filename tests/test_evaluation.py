import numpy as np
import pytest
import torch

import recsys.evaluation.ranking as ranking
from recsys.data.dataset import SequenceData
from recsys.evaluation.evaluate import MISS, EvalConfig, _sample_unseen, evaluate
from recsys.evaluation.metrics import bootstrap_ci, per_user_metrics
from recsys.evaluation.ranking import drop_targets, target_ranks, top_k
from recsys.models.scorers import MostPopular


def brute_force(scores: np.ndarray, excluded: list[set[int]]) -> list[list[int]]:
    """Each row's items (1..n) best first, ties by lower index, excluded ones left out."""
    out = []
    for row, ex in zip(scores, excluded, strict=True):
        items = [i for i in range(1, len(row)) if i not in ex]
        out.append(sorted(items, key=lambda i: (-row[i], i)))
    return out


@pytest.mark.parametrize("block", [1 << 22, 7])
def test_ranks_and_top_k_match_brute_force_with_ties(monkeypatch, block):
    monkeypatch.setattr(ranking, "BLOCK_ELEMENTS", block)  # 7: many small item blocks
    gen = torch.Generator().manual_seed(0)
    # Integer-valued vectors make many exact ties.
    users = torch.randint(0, 3, (6, 2), generator=gen).float()
    items = torch.randint(0, 3, (21, 2), generator=gen).float()
    targets = torch.randint(1, 21, (6, 2), generator=gen)
    hist = torch.randint(0, 21, (6, 5), generator=gen)  # 0 = no item
    exclude = drop_targets(hist, targets)
    ranks = target_ranks(users, items, targets, exclude)
    top, top_s = top_k(users, items, 8, exclude)
    scores = (users @ items.T).numpy()
    excluded = [set(r.tolist()) - {0} for r in exclude]
    expected = brute_force(scores, excluded)
    for b in range(6):
        for j in range(2):
            assert ranks[b, j] == expected[b].index(int(targets[b, j]))
        assert top[b].tolist() == expected[b][:8]
        assert top_s[b].tolist() == [scores[b, i] for i in expected[b][:8]]
    # The way a GPU counts (in torch) gives the same answers, ties included.
    t_ranks, t_top, t_top_s = ranking.rank_and_top_k(
        users, items, targets, 8, exclude, _numpy_counts=False
    )
    assert torch.equal(t_ranks, ranks) and torch.equal(t_top, top)
    assert torch.equal(t_top_s, top_s)


@pytest.mark.parametrize("numpy_counts", [True, False])
@pytest.mark.parametrize("block", [1 << 22, 7])
def test_biases_move_listed_items_exactly(monkeypatch, block, numpy_counts):
    # A model's repeat term: biases (integer-valued, so ties stay exact) added to listed
    # items, summed where an item is listed twice, before exclusion.
    monkeypatch.setattr(ranking, "BLOCK_ELEMENTS", block)
    gen = torch.Generator().manual_seed(2)
    users = torch.randint(0, 3, (5, 2), generator=gen).float()
    items = torch.randint(0, 3, (17, 2), generator=gen).float()
    targets = torch.randint(1, 17, (5, 2), generator=gen)
    listed = torch.randint(0, 17, (5, 6), generator=gen)
    values = torch.randint(-3, 4, (5, 6), generator=gen).float() * (listed > 0)
    exclude = torch.tensor([[3, 0]] * 5)
    ranks, top, top_s = ranking.rank_and_top_k(
        users,
        items,
        targets,
        8,
        drop_targets(exclude, targets),
        (listed, values),
        _numpy_counts=numpy_counts,
    )
    scores = (users @ items.T).numpy()
    for b in range(5):
        for j, v in zip(listed[b].tolist(), values[b].tolist(), strict=True):
            scores[b, j] += v
    excluded = [{3} - set(t.tolist()) for t in targets]
    expected = brute_force(scores, excluded)
    for b in range(5):
        assert [int(r) for r in ranks[b]] == [expected[b].index(int(t)) for t in targets[b]]
        assert top[b].tolist() == expected[b][:8]
        assert top_s[b].tolist() == [scores[b, i] for i in expected[b][:8]]


def test_rank_agrees_with_top_k_on_float_scores(monkeypatch):
    # Real-valued scores: a target's rank must be its position in the top-K list, however
    # differently the block matmul and the target dot product round.
    monkeypatch.setattr(ranking, "BLOCK_ELEMENTS", 64 * 50)
    gen = torch.Generator().manual_seed(1)
    users, items = torch.randn(64, 16, generator=gen), torch.randn(301, 16, generator=gen)
    top, _ = top_k(users, items, 20)
    ranks = target_ranks(users, items, top[:, :20])
    assert ranks.tolist() == [list(range(20))] * 64


def test_targets_are_never_excluded():
    exclude = drop_targets(torch.tensor([[3, 4, 5]]), torch.tensor([[4, 0]]))
    assert exclude.tolist() == [[3, 0, 5]]


def test_top_k_shorter_than_k_pads_with_item_zero():
    users = torch.ones(1, 1)
    items = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    top, s = top_k(users, items, 3, exclude=torch.tensor([[3, 1]]))
    assert top.tolist() == [[2, 0, 0]]
    assert s[0, 0] == 2 and torch.isinf(s[0, 1:]).all()


def test_per_user_metrics_exact():
    ranks = np.array([[0, -1], [3, -1], [12, -1], [1, 4]])
    m = per_user_metrics(ranks, (1, 5))
    assert m["hr@1"].tolist() == [1, 0, 0, 0]
    assert m["hr@5"].tolist() == [1, 1, 0, 1]
    assert m["mrr@5"].tolist() == [1, 0.25, 0, 0.5]
    assert m["recall@5"].tolist() == [1, 1, 0, 1]
    ndcg = m["ndcg@5"]
    assert ndcg[1] == pytest.approx(1 / np.log2(5))
    # Two targets at ranks 1 and 4: DCG 1/log2(3) + 1/log2(6) over IDCG 1 + 1/log2(3).
    assert ndcg[3] == pytest.approx((1 / np.log2(3) + 1 / np.log2(6)) / (1 + 1 / np.log2(3)))


def test_bootstrap_ci_brackets_mean_and_is_seeded():
    values = np.random.default_rng(0).random(500)
    low, high = bootstrap_ci(values)
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(500), rel=0.15)
    assert (low, high) == bootstrap_ci(values)
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)


def test_sampled_negatives_are_unseen_and_in_range():
    rng = np.random.default_rng(0)
    seen = np.array([[1, 2, 3, 0], [4, 5, 6, 7]])
    neg = _sample_unseen(rng, seen, 8, 50)
    assert neg.shape == (2, 50)
    assert set(neg[0].tolist()) <= {4, 5, 6, 7, 8}
    assert set(neg[1].tolist()) <= {1, 2, 3, 8}


def test_most_popular_exact_metrics(tmp_path, make_prepared):
    # IDs equal indices here. Test targets: user 1 → 4, user 2 → 1, user 3 → 3.
    seqs = [[1, 2, 3, 1, 4], [2, 1, 5, 2, 1], [1, 5, 5, 4, 3]]
    d = SequenceData.load(make_prepared(tmp_path / "d", seqs))
    res = evaluate(MostPopular(d.item_counts()), d, "test", EvalConfig(ks=(1, 2), bootstrap=0))
    # Counts over training prefixes [1,2,3], [2,1,5], [1,5,5]: 1→3, 2→2, 5→3, 3→1, 4→0.
    # Ranking by count, ties by index: 1, 5, 2, 3, 4.
    # User 1 (history 1,2,3,1 excluded): ranks 5, 4 → target 4 at 1. User 2 (history 2,1,5,2):
    # its target 1 is a history item, which no door shows: a miss. User 3 (history 1,5,5,4):
    # 2, 3 → target 3 at 1.
    assert res.per_user["best_rank"].to_list() == [1, MISS, 1]
    assert res.means["hr@1"] == 0.0
    assert res.means["hr@2"] == pytest.approx(2 / 3)
    # Top-1 lists: user 1 → 5, user 2 → 3, user 3 → 2: 3 of 5 items.
    assert res.means["coverage@1"] == pytest.approx(3 / 5)
    incl = evaluate(
        MostPopular(d.item_counts()),
        d,
        "test",
        EvalConfig(ks=(1,), bootstrap=0, exclude_seen=False),
    )
    assert incl.per_user["best_rank"].to_list() == [4, 0, 3]


class PenalisedPopular(MostPopular):
    """Most-popular with a repeat term: -10 on every history item, however old."""

    def history_bias(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.where(inputs != 0, -10.0, 0.0)


def test_history_bias_reaches_the_whole_history(tmp_path, make_prepared):
    # Same data as above. The scorer's window is 1 item, but its biases cover the whole
    # history: each history item sinks by 10 (counts are at most 3), so ranking with the
    # history included gives the excluded ranks [1, 0, 1], except that user 2's own
    # target 1 is in its history and sinks too.
    seqs = [[1, 2, 3, 1, 4], [2, 1, 5, 2, 1], [1, 5, 5, 4, 3]]
    d = SequenceData.load(make_prepared(tmp_path / "d", seqs))
    cfg = EvalConfig(ks=(1,), bootstrap=0, exclude_seen=False)
    res = evaluate(PenalisedPopular(d.item_counts()), d, "test", cfg)
    # User 2: unseen items 3, 4 come first (counts 1, 0); then 1 (3 - 10) after them.
    assert res.per_user["best_rank"].to_list() == [1, 2, 1]


def test_metric_names_label_the_protocol(tmp_path, make_prepared):
    d = SequenceData.load(make_prepared(tmp_path / "d", [[1, 2, 3, 4]] * 3 + [[5, 6, 7, 8]]))
    full = evaluate(MostPopular(d.item_counts()), d, "test", EvalConfig(ks=(10,)))
    assert "test_ndcg_at_10" in full.flat() and "test_ndcg_at_10_ci_low" in full.flat()
    sampled = evaluate(
        MostPopular(d.item_counts()),
        d,
        "valid",
        EvalConfig(ks=(10,), protocol="sampled", num_sampled=3),
    )
    assert all("_sampled_" in k for k in sampled.flat())
    assert "valid_sampled_hr_at_10" in sampled.flat()


def test_bad_eval_config():
    with pytest.raises(ValueError, match="protocol 'paper'"):
        EvalConfig(protocol="paper")
    with pytest.raises(ValueError, match="ks="):
        EvalConfig(ks=(0,))
