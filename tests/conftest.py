from __future__ import annotations

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


def make_prepared(
    path: Path,
    sequences: list[list[int]],
    name: str = "tiny",
    start: list[int] | None = None,
    **kwargs,
) -> Path:
    """A prepared-dataset folder whose user ``u`` (1-based) has events ``sequences[u-1]``.

    Items are integer IDs; user u's timestamps are ``start[u-1], start[u-1] + 1, ...``.
    """
    start = start or [0] * len(sequences)
    import polars as pl

    from recsys.data.prepare import prepare_dataset

    rows = [
        (u, item, start[u - 1] + t)
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


def successor_sequences(users: int, items: int, seed: int = 0) -> list[list[int]]:
    """Known-answer data: item i is always followed by item i + 1 (wrapping at ``items``)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(users):
        start, length = rng.integers(1, items + 1), rng.integers(8, 16)
        out.append([int((start - 1 + j) % items + 1) for j in range(length)])
    return out
