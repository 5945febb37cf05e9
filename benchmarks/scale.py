"""Scale on one machine: preparing 10M-100M events, and training over a 1M-item catalogue.

1. ``--part prepare``: for each size, ``recsys generate`` then ``recsys prepare`` (the
   jobs' own functions), each in its own subprocess so that its peak memory (max RSS) is
   its alone; prints seconds, peak GiB and the bytes per event of the peak above the
   memory after imports. The synthetic log is deleted after each size.
2. ``--part catalogue``: sampled-softmax training steps over synthetic catalogues of
   ``--items`` items (default 100,000 and 1,000,000), each in a subprocess: sequences per
   second and peak memory. Nothing in a step is of size batch x catalogue, so the peak
   grows with the catalogue only by the embedding table and its optimiser state
   (items x d x 4 bytes x 4); the table shows that difference beside the measured one.

    python benchmarks/scale.py --part prepare --interactions 10000000 30000000 100000000
    python benchmarks/scale.py --part catalogue --items 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _current_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def worker_generate(out: str, interactions: int) -> dict:
    from pipelines.generate import GenerateConfig
    from pipelines.generate import run as generate

    users = max(1_000, interactions // 50)  # 50 events per user, like a busy shop
    begin = time.perf_counter()
    generate(GenerateConfig(output=out, users=users, items=max(1_000, interactions // 1_000),
                            interactions=interactions, seed=0))  # fmt: skip
    return {"seconds": time.perf_counter() - begin, "peak_gib": _peak_gib(), "users": users}


def worker_prepare(log: str, out: str) -> dict:
    from pipelines.prepare import PrepareConfig
    from pipelines.prepare import run as prepare

    base = _current_gib()  # after the imports: what the data adds is measured
    begin = time.perf_counter()
    prepare(PrepareConfig(input=log, format="parquet", output=out))
    return {"seconds": time.perf_counter() - begin, "peak_gib": _peak_gib(), "base_gib": base}


def worker_catalogue(items: int, users: int, steps: int, batch: int) -> dict:
    import numpy as np
    import torch

    from recsys.models.sasrec import SASRec, SASRecConfig
    from recsys.training.losses import popularity_log_q, sequence_loss

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = SASRec(SASRecConfig(max_len=50, dropout=0.2, repeat_bias=False, num_items=items))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    # Zipf-like item draws: a catalogue's popular head and long tail.
    weights = 1.0 / np.arange(1, items + 1)
    seqs = rng.choice(np.arange(1, items + 1), size=(users, 51), p=weights / weights.sum())
    seqs = torch.from_numpy(seqs.astype(np.int64))
    log_q = popularity_log_q(torch.bincount(seqs.ravel(), minlength=items + 1))
    begin = 0.0
    for step in range(steps + 2):
        if step == 2:  # after two warm-up steps
            begin = time.perf_counter()
        idx = torch.from_numpy(rng.integers(0, users, batch))
        inputs, targets = seqs[idx, :-1], seqs[idx, 1:]
        h, _ = model(inputs)  # (B, T, d)
        loss = sequence_loss(
            "sampled-softmax", h, targets, model.output_items(), gen, 256, log_q=log_q
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - begin
    return {"sequences_per_second": steps * batch / seconds, "peak_gib": _peak_gib()}


def _sub(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["prepare", "catalogue"], default="prepare")
    p.add_argument("--interactions", type=int, nargs="+", default=[10_000_000, 30_000_000])
    p.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--work", type=Path, default=Path("data/bench/scale"))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "generate":
            print(json.dumps(worker_generate(rest[0], int(rest[1]))))
        elif kind == "prepare":
            print(json.dumps(worker_prepare(rest[0], rest[1])))
        else:
            print(json.dumps(worker_catalogue(*(int(v) for v in rest))))
        return 0
    if args.part == "prepare":
        print("| events | generate s | generate peak GiB | prepare s | prepare peak GiB | "
              "prepare bytes/event |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- |")
        args.work.mkdir(parents=True, exist_ok=True)
        for n in args.interactions:
            # A folder of its own under --work: only what this run wrote is deleted.
            folder = Path(tempfile.mkdtemp(prefix=f"scale-{n}-", dir=args.work))
            log = str(folder / "log.parquet")
            g = _sub("generate", log, str(n))
            pr = _sub("prepare", log, str(folder / "prepared"))
            per_event = (pr["peak_gib"] - pr["base_gib"]) * 2**30 / n
            print(f"| {n:,} | {g['seconds']:.0f} | {g['peak_gib']:.2f} | {pr['seconds']:.0f} | "
                  f"{pr['peak_gib']:.2f} | {per_event:.0f} |", flush=True)  # fmt: skip
            shutil.rmtree(folder, ignore_errors=True)
    else:
        print("| items | sequences/s | peak GiB | embedding + AdamW state GiB |")
        print("| --- | --- | --- | --- |")
        for n in args.items:
            r = _sub("catalogue", str(n), "20000", str(args.steps), str(args.batch))
            table = n * 64 * 4 * 4 / 2**30
            print(f"| {n:,} | {r['sequences_per_second']:.0f} | {r['peak_gib']:.2f} | "
                  f"{table:.2f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
