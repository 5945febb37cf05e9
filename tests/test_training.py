import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import recsys.training.losses as losses_module
import recsys.training.trainer as trainer_module
from recsys.data.dataset import SequenceData
from recsys.evaluation.evaluate import EvalConfig, evaluate
from recsys.models.repeat import BatchBias, RepeatBias
from recsys.models.sasrec import SASRecConfig
from recsys.models.scorers import MostPopular, SASRecScorer
from recsys.training.batches import training_batch
from recsys.training.config import TrainConfig
from recsys.training.losses import LOSSES, popularity_log_q, sequence_loss
from recsys.training.trainer import BEST, LAST, Trainer, TrainingError


def test_training_batch_exact():
    items = np.array([1, 2, 3, 4, 5])
    inputs, targets = training_batch(items, np.array([0, 3]), np.array([3, 5]), 3)
    assert inputs.tolist() == [[0, 1, 2], [0, 0, 4]]
    assert targets.tolist() == [[0, 2, 3], [0, 0, 5]]
    inputs, targets = training_batch(items, np.array([0]), np.array([5]), 2)  # truncated
    assert inputs.tolist() == [[3, 4]] and targets.tolist() == [[4, 5]]


def test_losses_known_values():
    gen = torch.Generator().manual_seed(0)
    items = torch.randn(6, 4, generator=gen)
    h = torch.randn(2, 3, 4, generator=gen)  # (B, T, d)
    targets = torch.tensor([[0, 1, 5], [2, 3, 4]])  # 0: a padding position, ignored
    real = targets != 0
    logits = h[real] @ items[1:].T
    ce = sequence_loss("ce", h, targets, items, gen)
    assert ce.item() == pytest.approx(F.cross_entropy(logits, targets[real] - 1).item(), rel=1e-5)
    # gBCE with t = 0 is gSASRec's plain BCE (beta = 1) over the same negatives, averaged
    # over the 1 + k logits of each real position. Small catalogue: the pool is all items.
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    gbce = sequence_loss("gbce", h, targets, items, g1, num_negatives=3, gbce_t=0.0)
    neg = torch.arange(1, 6)[torch.randint(0, 5, (5, 3), generator=g2)]  # per real position
    expected = []
    for n, (hn, tn) in enumerate(zip(h[real], targets[real], strict=True)):
        pos = -F.logsigmoid(hn @ items[tn])
        negs = sum(-F.logsigmoid(-(hn @ items[j])) for j in neg[n] if j != tn)
        expected.append((pos + negs) / 4)
    assert gbce.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ce_gradients_equal_autograds_with_the_repeat_term(dtype, smoothing):
    # ce's hand-written backward against autograd through F.cross_entropy (float32), on
    # inputs with repeated items so that bias entries add up; with bfloat16 products to
    # within their rounding (8 bits of mantissa: about 0.4% an element).
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 20, (6, 9), generator=gen)
    inputs[:, :2] = 0
    targets = torch.randint(1, 20, (6, 9), generator=gen)
    targets[:, :2] = 0
    h0, items0 = torch.randn(6, 9, 8, generator=gen), torch.randn(20, 8, generator=gen)
    grads = []
    for fused in (True, False):
        repeat = RepeatBias(9)
        with torch.no_grad():
            repeat.raw.copy_(torch.randn(repeat.raw.shape, generator=torch.Generator()))
        h, items = h0.clone().requires_grad_(), items0.clone().requires_grad_()
        bias = BatchBias(repeat, inputs)
        if fused:
            value = sequence_loss(
                "ce",
                h,
                targets,
                items,
                gen,
                repeat=repeat,
                inputs=inputs,
                logits_dtype=dtype,
                label_smoothing=smoothing,
            )
        else:
            real = targets != 0
            logits = bias.add_to(h[real] @ items.T, real)
            # Smoothing spreads over the items, not the padding column 0.
            value = F.cross_entropy(logits[:, 1:], targets[real] - 1, label_smoothing=smoothing)
        value.backward()
        grads.append((value.detach(), h.grad, items.grad, repeat.raw.grad))
    for a, b in zip(*grads, strict=True):
        if dtype == torch.float32:
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert a.dtype == torch.float32
            assert 1e-5 < (a - b).norm() / b.norm() < 2e-2  # rounded, but only that
    assert grads[0][3].abs().sum() > 0  # the bias was trained


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ce_reuses_its_logits_memory_safely(dtype):
    # The logits live in memory reused by the next ce forward: a graph whose logits were
    # overwritten refuses to run backward instead of returning wrong gradients.
    gen = torch.Generator().manual_seed(0)
    items = torch.randn(30, 8, requires_grad=True)
    h = torch.randn(2, 4, 8, requires_grad=True)
    targets = torch.randint(1, 30, (2, 4), generator=gen)
    first = sequence_loss("ce", h, targets, items, gen, logits_dtype=dtype)
    second = sequence_loss("ce", h, targets, items, gen, logits_dtype=dtype)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.backward()
    second.backward()
    assert torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_is_finite_and_has_gradients(loss):
    gen = torch.Generator().manual_seed(0)
    items = torch.randn(50, 8, requires_grad=True)
    h = torch.randn(4, 5, 8, requires_grad=True)
    targets = torch.randint(1, 50, (4, 5), generator=gen)
    targets[0, :2] = 0  # padding positions
    log_q = popularity_log_q(torch.arange(50))
    value = sequence_loss(loss, h, targets, items, gen, num_negatives=10, log_q=log_q)
    value.backward()
    assert torch.isfinite(value) and h.grad[1].abs().sum() > 0
    assert h.grad[0, :2].abs().sum() == 0  # ignored positions get no gradient
    assert items.grad[0].abs().sum() == 0  # padding is never a target or a negative


def _trainer(path, tmp_path=None, **kw) -> Trainer:
    d = SequenceData.load(path)
    base = {"loss": "sampled-softmax", "epochs": 4, "batch_size": 32, "lr": 5e-3, "patience": 50}
    cfg = TrainConfig(**{**base, **kw})
    mcfg = SASRecConfig(num_items=d.num_items, max_len=16, d_model=32, dropout=0.1)
    return Trainer(mcfg, cfg, d, checkpoint_dir=tmp_path, progress=False)


@pytest.fixture(scope="module")
def successor_data(tmp_path_factory, make_prepared, successor_sequences):
    return make_prepared(tmp_path_factory.mktemp("succ") / "d", successor_sequences(400, 30))


def test_known_sequential_rule_is_learned(successor_data):
    # Item i is always followed by item i + 1: SASRec must find it, popularity cannot.
    res = _trainer(successor_data, epochs=60, patience=10, lr=1e-2).fit()
    d = SequenceData.load(successor_data)
    cfg = EvalConfig(ks=(1,), bootstrap=0)
    sasrec = evaluate(SASRecScorer(res.model), d, "test", cfg).means["hr@1"]
    pop = evaluate(MostPopular(d.item_counts()), d, "test", cfg).means["hr@1"]
    assert sasrec >= 0.95
    assert pop < 0.2


def test_deterministic_for_a_seed(successor_data):
    a = _trainer(successor_data, epochs=2).fit()
    b = _trainer(successor_data, epochs=2).fit()
    c = _trainer(successor_data, epochs=2, seed=1).fit()
    for (k, va), vb in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), k
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert a.history[0]["train_loss"] != c.history[0]["train_loss"]


@pytest.mark.parametrize("loss", ["ce", "sampled-softmax"])
def test_resume_equals_uninterrupted(successor_data, tmp_path, loss):
    full = _trainer(successor_data, loss=loss).fit()
    assert not losses_module._WORKSPACES  # ce's logits memory is given back after training
    first = _trainer(successor_data, tmp_path / "ck", loss=loss, epochs=2).fit()
    assert first.epochs_run == 2
    # A new process would build the trainer again with the same config and resume.
    resumed_trainer = _trainer(successor_data, tmp_path / "ck", loss=loss)
    # epochs differ between the two configs, so resume the 2-epoch checkpoint's state
    # under the 4-epoch config by rewriting its recorded epochs (as a longer run would).
    ck = torch.load(tmp_path / "ck" / LAST, weights_only=True)
    ck["train_cfg"]["epochs"] = 4
    torch.save(ck, tmp_path / "ck" / LAST)
    resumed = resumed_trainer.fit(resume=True)
    assert resumed.epochs_run == 4
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    for va, vb in zip(
        full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb)


def test_checkpoints_load_weights_only(successor_data, tmp_path):
    _trainer(successor_data, tmp_path, epochs=1).fit()
    for name in (LAST, BEST):
        state = torch.load(tmp_path / name, weights_only=True)
        assert "model" in state


def test_resume_with_another_config_is_refused(successor_data, tmp_path):
    _trainer(successor_data, tmp_path, epochs=1).fit()
    with pytest.raises(ValueError, match="another config"):
        _trainer(successor_data, tmp_path, epochs=1, lr=0.1).fit(resume=True)


def test_nan_loss_names_epoch_and_step(successor_data):
    t = _trainer(successor_data)
    with torch.no_grad():
        t.model.pos_emb.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="epoch 1, step 1"):
        t.fit()


def test_early_stopping_keeps_the_best_epoch(successor_data, monkeypatch):
    scripted = iter([0.1, 0.3, 0.2, 0.25, 0.3, 0.9])
    states = []

    def fake_evaluate(scorer, data, stage, cfg):
        states.append({k: v.clone() for k, v in scorer.model.state_dict().items()})
        return SimpleNamespace(means={"ndcg@10": next(scripted), "hr@10": 0.0})

    monkeypatch.setattr(trainer_module, "evaluate", fake_evaluate)
    res = _trainer(successor_data, epochs=200, patience=3).fit()
    # Epoch 2 is best; 3, 4 and 5 (a tie is no improvement) exhaust the patience.
    assert res.best_epoch == 2 and res.epochs_run == 5 and res.best_valid_ndcg == 0.3
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, states[1][k]), k


def test_bad_train_config():
    with pytest.raises(ValueError, match="loss='mse'; expected one of"):
        TrainConfig(loss="mse")
    with pytest.raises(ValueError, match="batch_size=0"):
        TrainConfig(batch_size=0)


def test_sampled_softmax_negatives_by_popularity_or_uniform(successor_data):
    popular = _trainer(successor_data, loss="sampled-softmax").log_q
    uniform = _trainer(successor_data, loss="sampled-softmax", negatives="uniform").log_q
    counts = SequenceData.load(successor_data).item_counts()
    assert torch.isinf(popular[0]) and torch.isinf(uniform[0])  # padding is never drawn
    expected = np.log((counts[1:] + 1) / (counts[1:] + 1).sum())
    assert np.allclose(popular[1:].numpy(), expected, atol=1e-6)
    assert np.allclose(uniform[1:].numpy(), -np.log(len(counts) - 1), atol=1e-6)
    with pytest.raises(ValueError, match="negatives='rare'; expected one of"):
        TrainConfig(negatives="rare")


def test_device_option(monkeypatch):
    from recsys.training.hardware import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="device='cuda': torch sees no CUDA GPU"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ValueError, match="device='tpu'; expected one of"):
        TrainConfig(device="tpu")


def test_weight_average_is_the_moving_average_of_the_steps(successor_data, monkeypatch):
    # average=1 with 13 steps an epoch (400 users / 32): each step moves the average
    # towards the new weights by 1 - 0.5 ** (1 / 13); validation judges the average.
    t = _trainer(successor_data, epochs=1, average=1.0)
    expected = {k: v.clone() for k, v in t.model.state_dict().items()}
    decay = 0.5 ** (1 / 13)
    step = t.train_step

    def tracked(*args, **kw):
        loss = step(*args, **kw)
        for k, v in t.model.state_dict().items():
            expected[k] = decay * expected[k] + (1 - decay) * v
        return loss

    monkeypatch.setattr(t, "train_step", tracked)
    judged = []

    def fake_evaluate(scorer, data, stage, cfg):
        judged.append(scorer.model)
        return SimpleNamespace(means={"ndcg@10": 0.5, "hr@10": 0.5})

    monkeypatch.setattr(trainer_module, "evaluate", fake_evaluate)
    res = t.fit()
    assert judged == [t.averaged] and t.averaged is not t.model
    for k, v in res.model.state_dict().items():
        assert torch.allclose(v, expected[k], atol=1e-6), k
    assert not torch.equal(res.model.pos_emb.weight, t.model.pos_emb.weight)


def test_weight_average_resumes_exactly(successor_data, tmp_path):
    full = _trainer(successor_data, average=0.5).fit()
    _trainer(successor_data, tmp_path / "ck", average=0.5, epochs=2).fit()
    ck = torch.load(tmp_path / "ck" / LAST, weights_only=True)
    ck["train_cfg"]["epochs"] = 4
    torch.save(ck, tmp_path / "ck" / LAST)
    resumed = _trainer(successor_data, tmp_path / "ck", average=0.5).fit(resume=True)
    for va, vb in zip(
        full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb)


def test_logits_precision_follows_the_hardware_unless_given(monkeypatch):
    import recsys.training.hardware as trainer

    cpu = torch.device("cpu")
    for fast, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(trainer, "bf16_is_fast", lambda device, fast=fast: fast)
        assert trainer.resolve_logits_precision("auto", cpu) == expected
        assert trainer.resolve_logits_precision("bf16", cpu) == torch.bfloat16
        assert trainer.resolve_logits_precision("fp32", cpu) == torch.float32
    with pytest.raises(ValueError, match="logits_precision"):
        TrainConfig(logits_precision="fp16")


def test_a_trainer_needs_the_derived_loss_and_lr(tmp_path, make_prepared):
    data = SequenceData.load(make_prepared(tmp_path / "d", [[1, 2, 3, 4], [2, 3, 4, 5]]))
    mcfg = SASRecConfig(num_items=data.num_items, max_len=4, d_model=8, dropout=0.0)
    with pytest.raises(ValueError, match=r"^lr must be set; .*with_data_defaults"):
        Trainer(mcfg, TrainConfig(loss="ce"), data, progress=False)
    with pytest.raises(ValueError, match=r"^loss and lr must be set"):
        Trainer(mcfg, TrainConfig(), data, progress=False)


def test_lr_decays_at_each_third_of_patience_without_improvement(
    successor_data, tmp_path, monkeypatch
):
    # Validations: best at 1, then 6 without improvement (decays after the 2nd and 4th:
    # patience 6 // 3 = 2; none at the 6th, where training stops).
    scripted = [0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]

    def fake_evaluate(scorer, data, stage, cfg):
        return SimpleNamespace(means={"ndcg@10": scripted[len(calls)], "hr@10": 0.0})

    calls: list[int] = []
    real = trainer_module.Trainer._track_best

    def track(self, ndcg, elapsed):
        calls.append(1)
        real(self, ndcg, elapsed)

    monkeypatch.setattr(trainer_module, "evaluate", fake_evaluate)
    monkeypatch.setattr(trainer_module.Trainer, "_track_best", track)
    res = _trainer(successor_data, epochs=200, patience=6, lr=1e-2, lr_decay=0.5).fit()
    assert res.epochs_run == 7 and res.best_epoch == 1
    # Each epoch's record holds the rate it trained with.
    lrs = [r["learning_rate"] for r in res.history]
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3, 2.5e-3])

    # Interrupted after epoch 4 (one decay done), a resumed run continues at 5e-3.
    calls.clear()
    _trainer(successor_data, tmp_path, epochs=4, patience=6, lr=1e-2, lr_decay=0.5).fit()
    ck = torch.load(tmp_path / LAST, weights_only=True)
    ck["train_cfg"]["epochs"] = 200
    torch.save(ck, tmp_path / LAST)
    resumed = _trainer(successor_data, tmp_path, epochs=200, patience=6, lr=1e-2, lr_decay=0.5)
    assert [r["learning_rate"] for r in resumed.fit(resume=True).history] == lrs

    # Off (1, the default) keeps the rate; a factor outside (0, 1] is refused.
    calls.clear()
    assert {r["learning_rate"] for r in _trainer(successor_data, epochs=3).fit().history} == {5e-3}
    with pytest.raises(ValueError, match=r"lr_decay=1\.5"):
        TrainConfig(lr_decay=1.5)


def test_label_smoothing_is_for_ce_only():
    import dataclasses

    # Also where the loss comes from the data: with_data_defaults fills it in with
    # dataclasses.replace, which checks again.
    unset = TrainConfig(label_smoothing=0.1)
    with pytest.raises(ValueError, match="this run's loss is 'sampled-softmax'"):
        dataclasses.replace(unset, loss="sampled-softmax")
    assert TrainConfig(label_smoothing=0.1).label_smoothing == 0.1  # loss from the data
    with pytest.raises(ValueError, match="applies to loss 'ce' only"):
        TrainConfig(loss="bce", label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"label_smoothing=1\.0"):
        TrainConfig(label_smoothing=1.0)


# -- events that share a timestamp (--ties) ---------------------------------------------

TIES = {"loss": "ce", "batch_size": 2, "epochs": 3}


def test_training_reads_the_ties_shuffled_and_keeps_held_out_events(tied_data, caplog):
    with caplog.at_level(logging.INFO, logger="recsys.training.trainer"):
        t = _trainer(tied_data, **TIES)
    assert "ties=shuffle: 5 of 7 training events share their timestamp" in caplog.text
    orders = set()
    for _ in range(20):
        t._epoch()
        orders.add(tuple(t._items.tolist()))
        assert t._items[[3, 4, 5, 6, 9, 10]].tolist() == [4, 5, 6, 7, 1, 2]
    assert len(orders) > 1
    assert t.data.items.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2]  # data untouched
    keep = _trainer(tied_data, ties="keep", **TIES)
    assert keep.ties is None
    keep._epoch()
    assert keep._items is keep.data.items


def _same_weights(a, b) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_without_ties_shuffle_trains_exactly_as_keep(successor_data):
    a = _trainer(successor_data, epochs=2).fit()
    b = _trainer(successor_data, epochs=2, ties="keep").fit()
    assert _same_weights(a.model, b.model)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]


def test_shuffled_ties_resume_exactly(tied_data, tmp_path):
    options = {**TIES, "epochs": 4}
    full = _trainer(tied_data, **options).fit()
    _trainer(tied_data, tmp_path, **{**options, "epochs": 2}).fit()
    ck = torch.load(tmp_path / LAST, weights_only=True)
    ck["train_cfg"]["epochs"] = 4
    torch.save(ck, tmp_path / LAST)
    resumed = _trainer(tied_data, tmp_path, **options).fit(resume=True)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert _same_weights(full.model, resumed.model)
    # Shuffling changes what is trained on: the same seed without it ends elsewhere.
    assert not _same_weights(full.model, _trainer(tied_data, ties="keep", **options).fit().model)
