"""Training and evaluation throughput of SASRec on synthetic data.

1. Training: sequences/second (and next-item targets/second) for each loss and max length,
   with length-bucketed batches (the trainer's) against plain random batches run beside
   them, and their ratio.
2. Evaluation: users/second of full ranking (history excluded, top-K and target ranks in
   item blocks) at 1 thousand, 100 thousand and 1 million items, and peak memory (each
   size in its own subprocess), against a dense baseline that materialises the whole
   user-by-item score matrix per user chunk, where that fits.

    python benchmarks/train.py                  # everything (a few minutes on 2 cores)
    python benchmarks/train.py --part eval --items 1000 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_training(users: int, items: int, steps: int) -> None:
    import torch

    from recsys.data.dataset import SequenceData
    from recsys.data.prepare import prepare_dataset
    from recsys.data.readers import read_interactions
    from recsys.data.synthetic import SyntheticSpec, generate
    from recsys.models.sasrec import SASRecConfig
    from recsys.training.config import TrainConfig
    from recsys.training.losses import LOSSES
    from recsys.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.parquet"
        generate(SyntheticSpec(users=users, items=items, interactions=users * 120, seed=0), log)
        prepare_dataset(read_interactions(log, "parquet"), Path(tmp) / "p", name="bench")
        data = SequenceData.load(Path(tmp) / "p")
    lengths = np.minimum(data.n_train, 201)
    print(
        f"training: {data.num_users:,} users, {data.num_items:,} items, training length "
        f"median {int(np.median(lengths))} (cut at max_len + 1), batch 128, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"{'loss':16s} {'max_len':>7s} {'seq/s':>8s} {'targets/s':>10s} {'random batches':>15s} "
        f"{'+ repeat term':>15s}"
    )
    view = _Subset(data, data.train_ranges()[0][: 128 * steps])
    # (bucketed batches, repeat term): the trainer's batching against random batches, and
    # the paper's model against the repeat term (recsys train's default), each beside it.
    variants = {"bucketed": (True, False), "random": (False, False), "repeat": (True, True)}
    for max_len in (50, 200):
        for loss in LOSSES:
            rates = {}
            for name, (bucketed, repeat) in variants.items():
                cfg = TrainConfig(loss=loss, lr=1e-3, epochs=1, batch_size=128, seed=0)
                mcfg = SASRecConfig(
                    num_items=data.num_items, max_len=max_len, dropout=0.2, repeat_bias=repeat
                )
                t = Trainer(mcfg, cfg, data, progress=False)
                t.data = view
                if not bucketed:
                    t._batches = _random_batches.__get__(t)  # type: ignore[method-assign]
                t._epoch()  # warm-up
                begin = time.perf_counter()
                _, seqs = t._epoch()
                rates[name] = seqs / (time.perf_counter() - begin)
            base = rates["bucketed"]
            tps = base * float(np.minimum(view.n_train_sel - 1, max_len).mean())
            print(
                f"{loss:16s} {max_len:7d} {base:8.0f} {tps:10.0f} "
                f"{rates['random']:8.0f} ({base / rates['random']:.2f}x) "
                f"{rates['repeat']:8.0f} ({rates['repeat'] / base:.2f}x)"
            )


def _random_batches(self, lengths: np.ndarray) -> list[np.ndarray]:
    """The baseline: plain random batches, whatever the lengths."""
    order = self.rng.permutation(len(lengths))
    return [order[lo : lo + 128] for lo in range(0, len(order), 128)]


class _Subset:
    """The first users of a dataset, for a fixed amount of training work per measurement."""

    def __init__(self, data, users: np.ndarray):
        self._data, self._users = data, users
        self.n_train_sel = data.n_train[users - 1]

    def train_ranges(self):
        start = self._data.offsets[self._users - 1]
        return self._users, start, start + self.n_train_sel

    def __getattr__(self, name):
        return getattr(self._data, name)


def eval_worker(num_items: int, users: int, dense: bool) -> dict:
    import torch

    from recsys.evaluation.ranking import drop_targets, rank_and_top_k
    from recsys.models.sasrec import SASRec, SASRecConfig
    from recsys.models.scorers import SASRecScorer

    base = _peak_mb()  # after imports: the peak below counts the model and the ranking
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=num_items, max_len=50, dropout=0.2))
    scorer = SASRecScorer(model)
    gen = torch.Generator().manual_seed(0)
    hist = torch.randint(1, num_items + 1, (users, 50), generator=gen)
    targets = torch.randint(1, num_items + 1, (users, 1), generator=gen)
    begin = time.perf_counter()
    item_vecs = scorer.item_vectors()
    for lo in range(0, users, 512):
        h = hist[lo : lo + 512]
        u = scorer.user_vectors(h)
        exclude = drop_targets(h, targets[lo : lo + 512])
        if dense:
            scores = u @ item_vecs.T  # (B, I + 1): the whole matrix
            scores[:, 0] = float("-inf")
            scores.scatter_(1, exclude, float("-inf"))
            t = scores.gather(1, targets[lo : lo + 512])
            scores[:, 0] = float("-inf")
            (scores > t).sum(1)
            scores.topk(20, dim=1)
        else:
            rank_and_top_k(u, item_vecs, targets[lo : lo + 512], 20, exclude)
    seconds = time.perf_counter() - begin
    return {"users_per_s": users / seconds, "peak_mb": _peak_mb() - base}


def bench_eval(sizes: list[int], users: int) -> None:
    print(f"\nevaluation: full ranking of {users:,} users (history of 50 excluded), top-20")
    print(f"{'items':>10s} {'users/s':>9s} {'peak MB':>8s} {'dense users/s':>14s} {'dense MB':>9s}")
    for n in sizes:
        res = {}
        for dense in (False, True):
            if dense and n * 512 * 4 > 1 << 30:  # the dense matrix would pass 1 GB
                continue
            cmd = [sys.executable, __file__, "--worker", str(n), "--users", str(users)]
            proc = subprocess.run(
                [*cmd, *(["--dense"] if dense else [])], capture_output=True, text=True, check=True
            )
            res[dense] = json.loads(proc.stdout.strip().splitlines()[-1])
        line = f"{n:10,d} {res[False]['users_per_s']:9.0f} {res[False]['peak_mb']:8.0f}"
        if True in res:
            ratio = res[False]["users_per_s"] / res[True]["users_per_s"]
            line += f" {res[True]['users_per_s']:14.0f} {res[True]['peak_mb']:9.0f}"
            line += f"  (blocked/dense speed {ratio:.2f}x)"
        else:
            line += "   dense skipped (the score matrix alone would exceed 1 GB per chunk)"
        print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["all", "train", "eval"], default="all")
    p.add_argument("--items", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    p.add_argument("--users", type=int, default=4096, help="users evaluated per size")
    p.add_argument("--steps", type=int, default=8, help="training batches per measurement")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dense", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(eval_worker(args.worker, args.users, args.dense)))
        return
    if args.part in ("all", "train"):
        bench_training(users=2_000, items=2_000, steps=args.steps)
    if args.part in ("all", "eval"):
        bench_eval(args.items, args.users)


if __name__ == "__main__":
    main()
