"""Prepare job: raw interaction log → prepared-dataset folder.

Run it as ``recsys prepare ...`` (``python -m recsys.cli prepare ...``), or call :func:`run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.data.items import read_items
from recsys.data.pipeline import REPEATS
from recsys.data.prepare import SPLITS, check_prepared_output, prepare_dataset
from recsys.data.readers import FORMATS, Columns, read_interactions
from recsys.io import name_from_text, safe_name
from recsys.options import option, to_flat


@dataclass
class PrepareConfig:
    """Everything the prepare job needs; the whole of it is stored in the manifest."""

    input: str = option(help="raw interaction file")
    output: str = option(help="prepared-dataset folder to write (or rewrite)")
    format: str = option(
        "movielens",
        "input format; movielens recognises 100K/1M/10M/20M+ by layout",
        choices=FORMATS,
    )
    name: str | None = option(
        None,
        "dataset name for the manifest and MLflow",
        default_text="the MovieLens folder name or the file stem",
    )
    items: str | None = option(
        None,
        "item metadata file (u.item, movies.dat, movies.csv, items.tsv): titles, genres, "
        "release dates",
    )
    user_col: str = option("user_id", "user column (csv/parquet)")
    item_col: str = option("item_id", "item column (csv/parquet)")
    time_col: str = option("timestamp", "timestamp column (csv/parquet)")
    rating_col: str | None = option("rating", "rating column (csv/parquet), if any")
    separator: str = option(",", "CSV separator (.tsv files use tabs)")
    min_rating: float | None = option(
        None, "keep events rated at least R", default_text="keep all", metavar="R"
    )
    repeats: str = option(
        "keep",
        "repeated items in a user's sequence: drop-consecutive drops an item equal to the "
        "previous; drop-all keeps each user's first event per item",
        choices=REPEATS,
    )
    k_core: int = option(0, "drop users and items with fewer events, until stable; 0 = off")
    min_seq_len: int | None = option(
        None, "minimum events per user", default_text="3 for leave-one-out, 1 temporal"
    )
    split: str = option(
        "leave-one-out",
        "leave-one-out: last item test, the one before validation; temporal: global cut-off times",
        choices=SPLITS,
    )
    valid_cutoff: float = option(
        0.8, "temporal: validation cut-off, a quantile in (0,1) or a timestamp"
    )
    test_cutoff: float = option(
        0.9,
        "temporal: test cut-off, a quantile in (0,1) or a timestamp; an event at exactly a "
        "cut-off belongs to the later part",
    )


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
    items = read_items(config.items) if config.items else None  # small: fail early
    columns = Columns(config.user_col, config.item_col, config.time_col, config.rating_col)
    events = read_interactions(config.input, config.format, columns, config.separator)
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
        config=to_flat(config),
    )
