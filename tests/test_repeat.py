from __future__ import annotations

import torch

from recsys.models.repeat import NUM_BUCKETS, RATE, RepeatBias, distance_bucket


def brute(weight: torch.Tensor, inputs: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    B, T = inputs.shape
    out = torch.zeros(cands.shape)
    for b in range(B):
        for t in range(T):
            for j, c in enumerate(cands[b, t].tolist()):
                seen = [s for s in range(t + 1) if c != 0 and inputs[b, s] == c]
                if seen:
                    out[b, t, j] = weight[distance_bucket(torch.tensor(t - seen[-1]))]
    return out


def test_distance_buckets_are_log_spaced_and_capped():
    d = torch.tensor([0, 1, 2, 3, 4, 7, 8, 127, 128, 10_000])
    assert distance_bucket(d).tolist() == [0, 1, 2, 2, 3, 3, 4, 7, 8, 8]
    assert distance_bucket(torch.tensor([5]), num_buckets=3).tolist() == [2]


def test_biases_use_the_last_occurrence_at_or_before_each_position():
    rb = RepeatBias(max_len=1000)
    with torch.no_grad():
        rb.raw.copy_(torch.arange(1.0, NUM_BUCKETS + 1) / RATE)  # bucket j -> j + 1
    inputs = torch.tensor([[0, 5, 3, 5, 9]])
    cands = torch.tensor([[[5, 3, 7]]]).expand(1, 5, 3)
    got = rb(inputs, cands)
    # t=0 padding: nothing seen; t=1: 5 at distance 0 (w=1); t=2: 5 at 1 (w=2), 3 at 0;
    # t=3: 5 again at 0, 3 at 1; t=4: 5 at 1, 3 at 2 (bucket 2, w=3); 7 never.
    assert got[0].tolist() == [[0, 0, 0], [1, 0, 0], [2, 1, 0], [1, 2, 0], [2, 3, 0]]
    assert torch.equal(got, brute(rb.weight.detach(), inputs, cands))
    # Per-sequence candidates (B, 1, C) broadcast over positions.
    assert torch.equal(rb(inputs, cands[:, :1]), got)


def test_dense_and_last_position_agree_with_candidate_biases():
    g = torch.Generator().manual_seed(0)
    rb = RepeatBias(max_len=1000)
    with torch.no_grad():
        rb.raw.copy_(torch.randn(NUM_BUCKETS, generator=g))
    inputs = torch.randint(0, 6, (4, 12), generator=g)  # many repeats and padding
    inputs[1, :5] = 0
    every = torch.arange(0, 8).expand(4, 12, 8)
    cand = rb(inputs, every)
    assert torch.allclose(cand, brute(rb.weight.detach(), inputs, every))
    assert torch.allclose(rb.add_dense(torch.zeros(4, 12, 8), inputs), cand)
    # At the last position, each item's bias sits once, at its last occurrence.
    last = rb.last_position(inputs)
    per_item = torch.zeros(4, 8).scatter_add(1, inputs, last)
    assert torch.allclose(per_item[:, 1:], cand[:, -1, 1:])
    assert (last[inputs == 0] == 0).all()


def test_gradients_reach_the_weights():
    rb = RepeatBias(max_len=1000)
    inputs = torch.tensor([[1, 2, 1]])
    rb.add_dense(torch.zeros(1, 3, 4), inputs).sum().backward()
    assert rb.raw.grad is not None and rb.raw.grad.abs().sum() > 0


def test_every_path_gives_the_same_biases_and_gradients():
    g = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, 9, (3, 10), generator=g)
    real = torch.rand(3, 10, generator=g) > 0.3
    every = torch.arange(0, 10).expand(3, 10, 10)
    grads, outs = [], []
    for path in ("candidates", "per-sequence", "dense", "dense-real"):
        rb = RepeatBias(max_len=1000)
        with torch.no_grad():
            rb.raw.copy_(torch.randn(NUM_BUCKETS, generator=torch.Generator().manual_seed(3)))
        if path == "candidates":
            out = rb(inputs, every)
        elif path == "per-sequence":
            out = rb(inputs, every[:, :1])
        elif path == "dense":
            out = rb.add_dense(torch.zeros(3, 10, 10), inputs)
        else:
            logits = torch.ones(int(real.sum()), 10)
            flat = rb.add_dense(logits, inputs, real) - 1.0  # (N, 10), real positions
            out = torch.zeros(3, 10, 10).index_put(real.nonzero(as_tuple=True), flat)
        out = out * real[:, :, None]
        (out * torch.arange(1.0, 11.0)).sum().backward()  # item-weighted, to tell items apart
        outs.append(out.detach())
        grads.append(rb.raw.grad.clone())
    for out, grad in zip(outs[1:], grads[1:], strict=True):
        assert torch.allclose(out, outs[0], atol=1e-5)
        assert torch.allclose(grad, grads[0], atol=1e-4)


def test_history_longer_than_the_window_gets_the_farthest_trained_weight():
    rb = RepeatBias(max_len=4)  # training sees distances 0-3: buckets 0, 1, 2
    with torch.no_grad():
        rb.raw.copy_(-torch.arange(1.0, NUM_BUCKETS + 1) / RATE)  # bucket j -> -(j + 1)
    history = torch.tensor([[0, 7, 8, 7, 9, 8, 6, 6, 5, 4]])  # 9 real items, 7 and 8 twice
    got = rb.last_position(history)
    # Last occurrences: 7 at 3 (distance 6 → bucket 3, capped to 2), 9 at 4 (distance 5,
    # capped), 8 at 5 (4, capped), 6 at 7 (2 → bucket 2), 5 at 8 (1), 4 at 9 (0).
    assert got.tolist() == [[0, 0, 0, -3, -3, -3, 0, -3, -2, -1]]
