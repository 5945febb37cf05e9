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
