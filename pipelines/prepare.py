"""Prepare job: raw interaction log → prepared-dataset folder.

Run it as ``recsys prepare ...`` or ``python -m pipelines.prepare ...`` (same flags).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.config import to_dict
from recsys.data.prepare import check_prepared_output, prepare_dataset
from recsys.data.readers import Columns, read_interactions, read_items
from recsys.io import name_from_text, safe_name


@dataclass
class PrepareConfig:
    """Everything the prepare job needs; the whole of it is stored in the manifest."""

    input: str
    output: str
    format: str = "movielens"
    name: str | None = None
    items: str | None = None
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    rating_col: str | None = "rating"
    separator: str = ","
    min_rating: float | None = None
    repeats: str = "keep"
    k_core: int = 0
    min_seq_len: int | None = None
    split: str = "leave-one-out"
    valid_cutoff: float = 0.8
    test_cutoff: float = 0.9


def dataset_name(path: str | Path) -> str:
    """Name a dataset after its file: MovieLens files by their folder (``ml-100k``).

    Characters that are not safe in a path or an MLflow name become ``-``.

    Parameters
    ----------
    path : str or Path
        The input file.

    Returns
    -------
    str
        The name.
    """
    p = Path(path)
    if p.name in ("u.data", "ratings.dat", "ratings.csv") and p.parent.name:
        return name_from_text(p.parent.name)
    return name_from_text(p.stem)


def run(config: PrepareConfig) -> dict[str, Any]:
    """Read, validate, prepare and write one dataset.

    Parameters
    ----------
    config : PrepareConfig
        The job's config.

    Returns
    -------
    dict
        The written manifest.
    """
    # Checked before the (possibly long) read; prepare_dataset checks again.
    name = safe_name(config.name, "--name") if config.name else dataset_name(config.input)
    inputs = [p for p in (config.input, config.items) if p]
    check_prepared_output(config.output, inputs)
    columns = Columns(config.user_col, config.item_col, config.time_col, config.rating_col)
    events = read_interactions(config.input, config.format, columns, config.separator)
    items = read_items(config.items) if config.items else None
    return prepare_dataset(
        events,
        config.output,
        name=name,
        min_rating=config.min_rating,
        repeats=config.repeats,
        k_core=config.k_core,
        min_seq_len=config.min_seq_len,
        split=config.split,
        valid_cutoff=config.valid_cutoff,
        test_cutoff=config.test_cutoff,
        items=items,
        inputs=inputs,
        config=to_dict(config),
    )


if __name__ == "__main__":
    from recsys.cli import main

    sys.exit(main(["prepare", *sys.argv[1:]]))
