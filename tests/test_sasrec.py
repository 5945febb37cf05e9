from __future__ import annotations

import pytest
import torch

from recsys.models.sasrec import SASRec, SASRecConfig, attention_mask
from recsys.options import from_flat


def model(**kw) -> SASRec:
    torch.manual_seed(0)
    return SASRec(
        SASRecConfig(
            **{
                "num_items": 20,
                "max_len": 6,
                "d_model": 16,
                "n_heads": 2,
                "n_layers": 2,
                "dropout": 0.2,
                **kw,
            }
        )
    ).eval()


def test_shapes():
    m = model()
    items = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    h, w = m(items)
    assert h.shape == (2, 6, 16) and w == []
    assert m.score_all(m.user_repr(items)).shape == (2, 21)
    assert m.last_attention(items).shape == (2, 2, 2, 6)


@pytest.mark.parametrize(("pre_ln", "gated"), [(True, False), (False, False), (True, True)])
def test_causal_future_items_do_not_leak(pre_ln, gated):
    m = model(pre_ln=pre_ln, gated=gated)
    a = torch.tensor([[0, 1, 2, 3, 4, 5]])
    b = torch.tensor([[0, 1, 2, 3, 9, 7]])
    with torch.no_grad():
        ha, hb = m(a)[0], m(b)[0]
    assert torch.allclose(ha[:, :4], hb[:, :4], atol=1e-6)
    assert not torch.allclose(ha[:, 4], hb[:, 4])


def test_padding_is_ignored_and_batch_equals_single():
    m = model()
    short = torch.tensor([[0, 0, 0, 7, 8, 9]])
    batch = torch.tensor([[0, 0, 0, 7, 8, 9], [1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        alone = m.user_repr(short)
        together = m.user_repr(batch)[:1]
    assert torch.allclose(alone, together, atol=1e-6)


def test_attention_weights_path_matches_fast_path():
    m = model()
    items = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        fast, _ = m(items)
        slow, weights = m(items, need_weights=True)
        last = m.last_attention(items)
    assert torch.allclose(fast, slow, atol=1e-5)
    # The last position spreads its attention over real, past items only.
    assert torch.allclose(last.sum(-1), torch.ones(2, 2, 2))
    assert (last[:, 0, :, :2] == 0).all()  # padding positions of the first user
    assert all(w[0, :, 1, 2:].abs().sum() == 0 for w in weights)  # no future keys


def test_mask_never_leaves_a_row_empty():
    mask = attention_mask(torch.tensor([[0, 0, 5]]))
    assert mask.any(-1).all()
    assert mask[0, 0].tolist() == [[True, False, False], [False, True, False], [False, False, True]]


def test_padding_embedding_gets_no_gradient():
    m = model().train()
    h = m.user_repr(torch.tensor([[0, 0, 1, 2, 3, 4]]))
    # Not h.sum(): the final LayerNorm makes a plain sum (nearly) constant, so its
    # gradient is rounding noise, and exactly zero for some dropout masks.
    (h * torch.linspace(-1, 1, h.shape[-1])).sum().backward()
    assert m.item_emb.weight.grad[0].abs().sum() == 0
    assert m.item_emb.weight.grad[1].abs().sum() > 0


def test_too_long_and_bad_config():
    with pytest.raises(ValueError, match="sequence length 7 exceeds max_len=6"):
        model()(torch.ones(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="d_model=10 is not divisible by n_heads=3"):
        SASRecConfig(num_items=5, d_model=10, n_heads=3)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['heads'\]"):
        from_flat(SASRecConfig, {"heads": 2})


def test_scorer_cuts_padding_without_changing_vectors():
    # Histories of 1..40 items in a 40-wide window: the scorer cuts each to a multiple
    # of 8 positions and runs users of one width together; the vectors equal the
    # model's on the whole padded window, and each user alone gets the same bits.
    from recsys.models.scorers import SASRecScorer

    m = SASRec(SASRecConfig(num_items=30, max_len=40, d_model=16, n_heads=2, dropout=0.2))
    m.eval()
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([1, 3, 8, 9, 17, 40, 25, 2])
    items = torch.randint(1, 31, (8, 40), generator=gen)
    items[torch.arange(40)[None, :] < (40 - lengths)[:, None]] = 0  # left padding
    scorer = SASRecScorer(m)
    got = scorer.user_vectors(items)
    with torch.no_grad():
        whole = m.user_repr(items)
    assert torch.allclose(got, whole, atol=1e-5)
    for i in range(8):
        assert torch.equal(scorer.user_vectors(items[i : i + 1]), got[i : i + 1])


def test_dropout_keeps_a_share_and_rescales_it():
    from recsys.models.sasrec import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.25)
    x = torch.ones(200, 500, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.75, abs=0.005)
    assert torch.equal(y[kept], torch.full_like(y[kept], 1 / 0.75))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient goes through the kept ones only
    drop.eval()
    assert drop(x) is x


def test_gated_blocks_scale_each_branch_by_its_gate():
    m = model(gated=True, n_layers=1)
    items = torch.tensor([[0, 0, 3, 4, 5, 6]])
    block = m.blocks[0]
    with torch.no_grad():
        gated = m(items)[0]
        # Gates shut (a very negative bias): each block passes its input through.
        for g in block.gates:
            g.weight.zero_()
            g.bias.fill_(-1e4)
        shut = m(items)[0]
        x = m.embed(items) + m.pos_emb(torch.arange(6))
        x = x * (items != 0).unsqueeze(-1)
    assert torch.allclose(shut, m.ln_f(x), atol=1e-5)
    assert not torch.allclose(gated, shut)
    with pytest.raises(ValueError, match="needs pre_ln"):
        SASRecConfig(gated=True, pre_ln=False)
