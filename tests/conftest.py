from __future__ import annotations

import socket
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture
def ml100k() -> Path:
    """The shared MovieLens 100K folder, or a skip saying where it was looked for."""
    folder = SHARED / "ml-100k"
    if not (folder / "u.data").is_file():
        pytest.skip(f"reference dataset not found at {folder} (../shared/datasets/ml-100k)")
    return folder


@pytest.fixture
def beauty() -> Path:
    """The shared Amazon Beauty file, or a skip saying where it was looked for."""
    path = SHARED / "beauty" / "Beauty.txt"
    if not path.is_file():
        pytest.skip(f"reference dataset not found at {path} (../shared/datasets/beauty)")
    return path


@pytest.fixture
def write(tmp_path: Path):
    """Write text (or bytes) to a file under tmp_path and return its path."""

    def _write(name: str, content: str | bytes) -> Path:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
        return p

    return _write


def _make_prepared(
    path: Path,
    sequences: list[list[int]],
    name: str = "tiny",
    start: list[int] | None = None,
    times: list[list[int]] | None = None,
    **kwargs,
) -> Path:
    """A prepared-dataset folder whose user ``u`` (1-based) has events ``sequences[u-1]``.

    Items are integer IDs; user u's timestamps are ``times[u-1]`` if given, else
    ``start[u-1], start[u-1] + 1, ...``.
    """
    start = start or [0] * len(sequences)
    import polars as pl

    from recsys.data.prepare import prepare_dataset

    rows = [
        (u, item, times[u - 1][t] if times else start[u - 1] + t)
        for u, seq in enumerate(sequences, start=1)
        for t, item in enumerate(seq)
    ]
    events = pl.LazyFrame(
        {
            "row_nr": list(range(len(rows))),
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [r[2] for r in rows],
        },
        schema={
            "row_nr": pl.UInt32,
            "user_id": pl.Int64,
            "item_id": pl.Int64,
            "timestamp": pl.Int64,
        },
    )
    prepare_dataset(events, path, name=name, **kwargs)
    return path


def _successor_sequences(users: int, items: int, seed: int = 0) -> list[list[int]]:
    """Known-answer data: item i is always followed by item i + 1 (wrapping at ``items``)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(users):
        start, length = rng.integers(1, items + 1), rng.integers(8, 16)
        out.append([int((start - 1 + j) % items + 1) for j in range(length)])
    return out


@pytest.fixture(scope="session")
def make_prepared():
    """``make_prepared(path, sequences, name="tiny", start=None, **prepare_options)``: a
    prepared-dataset folder whose user ``u`` (1-based) has events ``sequences[u-1]``."""
    return _make_prepared


# Events that share a timestamp. User 1: items 1 2 3 at one time, 4 alone, and the
# held-out 5 and 6 tied with each other; user 2: 7, then 8 9 tied with the held-out
# validation target 1, then the test target 2.
TIED_SEQUENCES = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 1, 2]]
TIED_TIMES = [[0, 0, 0, 1, 2, 2], [5, 6, 6, 6, 8]]


@pytest.fixture(scope="session")
def tied_data(tmp_path_factory) -> Path:
    """A prepared dataset of two users whose events tie in time (``TIED_SEQUENCES`` at
    ``TIED_TIMES``, in tests/conftest.py)."""
    return _make_prepared(tmp_path_factory.mktemp("ties") / "d", TIED_SEQUENCES, times=TIED_TIMES)


@pytest.fixture(scope="session")
def successor_sequences():
    """``successor_sequences(users, items, seed=0)``: known-answer data where item i is
    always followed by item i + 1."""
    return _successor_sequences


# Small, fast training settings for end-to-end tests of the train job.
TINY = [
    "--epochs",
    "2",
    "--max-len",
    "20",
    "--d-model",
    "16",
    "--batch-size",
    "64",
    "--no-progress",
    "--eval-ks",
    "5",
    "10",
]


@pytest.fixture(scope="session")
def tiny() -> list[str]:
    """Flags for a small, fast ``recsys train`` (2 epochs, d 16, cut-offs 5 and 10)."""
    return list(TINY)


@pytest.fixture(scope="session")
def line_of():
    """``line_of(out, key)``: the value printed as ``key: value`` in a job's output."""

    def _line(out: str, key: str) -> str:
        return next(
            line.split(": ", 1)[1] for line in out.splitlines() if line.startswith(key + ":")
        )

    return _line


@pytest.fixture(scope="session")
def free_port():
    """``free_port()``: a free TCP port on 127.0.0.1."""

    def _free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return _free_port


# Successor data and the settings that learn it, shared by the Recommender and scorer tests.
SUCCESSOR_FITS = {
    "sasrec": {"repeat_bias": True},  # the default model
    "sasrec-plain": {"repeat_bias": False},  # the paper's model
    "most-popular": {"model": "most-popular"},
}


@pytest.fixture(scope="session")
def successor_model(tmp_path_factory):
    """``successor_model(kind)``: a Recommender fitted (once per session) on 300 users of
    successor data over 40 items; kinds are the keys of ``SUCCESSOR_FITS``."""
    from recsys import Recommender

    fitted = {}

    def get(kind: str) -> Recommender:
        if kind not in fitted:
            root = tmp_path_factory.mktemp(kind)
            data = _make_prepared(root / "d", _successor_sequences(300, 40))
            rec = Recommender(
                epochs=25, max_len=16, d_model=32, progress=False, loss="ce", lr=1e-2,
                **SUCCESSOR_FITS[kind],
            )  # fmt: skip
            fitted[kind] = rec.fit(data, output=root / "bundle")
        return fitted[kind]

    return get
