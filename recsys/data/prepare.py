"""Run the sequence pipeline on a canonical event table and write a prepared-dataset folder.

Folder layout (written to a temporary sibling, then renamed into place)::

    manifest.json                 counts, per-step drops, split, config, checksums
    vocab_users.parquet           user_idx (i32, from 1), user_id (str)
    vocab_items.parquet           item_idx (i32, from 1), item_id (str)[, title, genres, released]
    sequences/part-00000.parquet  user_idx, item_idx list, timestamp list, n_train/n_valid/n_test
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.data import pipeline as dp
from recsys.io import (
    atomic_dir,
    check_output_folder,
    json_has_keys,
    safe_name,
    sha256_file,
    write_json,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SEQUENCES_PART = "sequences/part-00000.parquet"
SPLITS = ("leave-one-out", "temporal")
# Every file prepare writes: an output folder holding anything else is not replaced.
OWNED = ("manifest.json", "vocab_users.parquet", "vocab_items.parquet", "sequences/part-*.parquet")
# The in-memory engine ran the 10M-event benchmark faster than the streaming one (3.07 s
# against 3.33 s, benchmarks/prepare.py) at a similar peak, and the whole table is needed
# in memory anyway to build list sequences.
ENGINE = "in-memory"


class _StepCounter:
    """Records each step's row count as the single query runs, with no recomputation."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def tap(self, lf: pl.LazyFrame, step: str, distinct: bool = False) -> pl.LazyFrame:
        def record(df: pl.DataFrame) -> pl.DataFrame:
            row: dict[str, Any] = {"step": step, "rows": df.height}
            if distinct:
                row["users"] = df["user_id"].n_unique()
                row["items"] = df["item_id"].n_unique()
            row["dropped_rows"] = self.rows[-1]["rows"] - df.height if self.rows else 0
            self.rows.append(row)
            return df

        return lf.map_batches(record, schema=lf.collect_schema())


def resolve_cutoff(value: float, timestamps: pl.Series, name: str) -> int:
    """Turn a cut-off given as a fraction in (0, 1) into the timestamp at that quantile.

    Parameters
    ----------
    value : float
        A fraction (quantile of all event times) or an absolute timestamp (>= 1).
    timestamps : Series
        All event timestamps.
    name : str
        Parameter name, for errors.

    Returns
    -------
    int
        The absolute cut-off timestamp.
    """
    if 0 < value < 1:
        return int(timestamps.quantile(value, interpolation="lower"))
    if value >= 1 and float(value).is_integer():
        return int(value)
    raise ValueError(
        f"{name}={value!r}: expected a fraction in (0, 1) (a quantile of event times) or "
        "an integer timestamp"
    )


def check_prepared_output(output: str | Path, inputs: Sequence[str | Path] = ()) -> Path:
    """Refuse ``output`` unless it is new, empty, or a prepared dataset we wrote earlier.

    Raises
    ------
    ValueError
        If replacing it could lose anything else (see :func:`recsys.io.check_output_folder`).
    """
    return check_output_folder(
        output,
        kind="a prepared dataset",
        owned=OWNED,
        is_ours=lambda p: json_has_keys(p / "manifest.json", ("schema_version", "files")),
        inputs=inputs,
    )


def list_column_to_ragged(column: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """A list column as ``(flat int64 values, offsets)``.

    Examples
    --------
    ``[[6, 7], [8]]`` → ``([6, 7, 8], [0, 2, 3])``.
    """
    lengths = column.list.len().to_numpy().astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return column.explode().to_numpy().astype(np.int64), offsets


def repeat_shares(
    items: np.ndarray, offsets: np.ndarray, n_train: np.ndarray, n_valid: np.ndarray
) -> dict[str, float]:
    """How much users repeat: the share of events whose item the user had before, and the
    shares of validation and test targets already in their user's history (what
    ``--history auto`` decides on, :func:`recsys.training.derive.resolve_history`).

    User ``u`` (0-based) has events ``items[offsets[u]:offsets[u + 1]]`` in time order:
    ``n_train[u]`` training events, then ``n_valid[u]`` validation targets, then tests.
    """
    lengths = np.diff(offsets)
    user = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(items)) - np.repeat(offsets[:-1], lengths)
    # An event repeats when an earlier event of its user has its item: sorted by (user,
    # item, position), every event but the first of its run.
    order = np.lexsort((pos, items, user))
    same = np.zeros(len(items), dtype=bool)
    same[1:] = (user[order][1:] == user[order][:-1]) & (items[order][1:] == items[order][:-1])
    again = np.empty(len(items), dtype=bool)
    again[order] = same
    train, valid = np.repeat(n_train, lengths), np.repeat(n_valid, lengths)
    is_valid = (pos >= train) & (pos < train + valid)
    is_test = pos >= train + valid

    def share(mask: np.ndarray) -> float:
        return round(float(again[mask].mean()), 6) if mask.any() else 0.0

    return {
        "share_of_events": share(np.ones(len(items), dtype=bool)),
        "valid_targets_in_history": share(is_valid),
        "test_targets_in_history": share(is_test),
    }


def same_time_as_previous(stamps: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(N,) True where an event has the timestamp of its user's previous event.

    ``stamps`` and ``offsets`` are laid out as in :func:`repeat_shares`.

    Examples
    --------
    users ``[5, 5, 7]`` and ``[7, 7]`` → ``[F, T, F, F, T]``.
    """
    same = np.zeros(len(stamps), dtype=bool)
    np.equal(stamps[1:], stamps[:-1], out=same[1:])
    lengths = np.diff(offsets)
    same[offsets[:-1][lengths > 0]] = False  # a user's first event follows no event of theirs
    return same


def tie_shares(
    stamps: np.ndarray, offsets: np.ndarray, n_train: np.ndarray, n_valid: np.ndarray
) -> dict[str, float]:
    """How often a user's events share a timestamp, whose order the log then does not
    know (training shuffles it: ``--ties``): the share of events with the same timestamp
    as their user's previous event, and the same for each user's first validation and
    first test target.

    ``stamps`` and ``offsets`` are laid out as in :func:`repeat_shares`.
    """
    tied = same_time_as_previous(stamps, offsets)
    valid_at = offsets[:-1] + n_train  # each user's first validation target, if any
    test_at = valid_at + n_valid  # and first test target, if any

    def share(at: np.ndarray) -> float:
        return round(float(tied[at].mean()), 6) if len(at) else 0.0

    return {
        "share_of_events": round(float(tied.mean()), 6) if len(tied) else 0.0,
        "valid_targets_tied": share(valid_at[n_valid > 0]),
        "test_targets_tied": share(test_at[test_at < offsets[1:]]),
    }


def prepare_dataset(
    events: pl.LazyFrame,
    output: str | Path,
    *,
    name: str,
    min_rating: float | None = None,
    repeats: str = "keep",
    k_core: int = 0,
    min_seq_len: int | None = None,
    split: str = "leave-one-out",
    valid_cutoff: float = 0.8,
    test_cutoff: float = 0.9,
    items: pl.DataFrame | None = None,
    inputs: Sequence[str | Path] = (),
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Filter, order, encode and split events, and write the prepared-dataset folder.

    Parameters
    ----------
    events : LazyFrame
        Canonical events from :func:`recsys.data.readers.read_interactions`.
    output : str or Path
        Folder to (re)write atomically.
    name : str
        Dataset name recorded in the manifest (e.g. ``ml-100k``).
    min_rating : float, optional
        Keep events rated at least this.
    repeats : {"keep", "drop-consecutive", "drop-all"}
        Repeats policy.
    k_core : int
        Iterative k-core on users and items (0 or 1: off).
    min_seq_len : int, optional
        Minimum events per user; defaults to 3 for leave-one-out, 1 for temporal.
    split : {"leave-one-out", "temporal"}
        Split kind.
    valid_cutoff, test_cutoff : float
        Temporal cut-offs: quantiles in (0, 1) of event time, or absolute timestamps.
    items : DataFrame, optional
        Item metadata (``item_id, title, genres[, released]``, see
        :func:`recsys.data.items.read_items`) joined onto the item vocabulary; every column
        is kept, null for items the metadata lacks.
    inputs : sequence of paths
        Source files, checksummed into the manifest.
    config : dict, optional
        The run's whole config, stored in the manifest.

    Returns
    -------
    dict
        The manifest that was written.
    """
    safe_name(name, "dataset name")
    check_prepared_output(output, inputs)
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is unknown; expected 'leave-one-out' or 'temporal'")
    if min_seq_len is None:
        min_seq_len = 3 if split == "leave-one-out" else 1
    if split == "leave-one-out" and min_seq_len < 3:
        raise ValueError(
            f"min_seq_len={min_seq_len} is too small for leave-one-out; expected >= 3 "
            "(one train, one validation and one test item per user)"
        )
    # Text IDs are hashed once into categorical codes, so every later step groups, counts
    # and joins integers rather than strings.
    schema = events.collect_schema()
    events = events.with_columns(
        pl.col(c).cast(pl.Categorical) for c in ("user_id", "item_id") if schema[c] == pl.String
    )
    steps: list[tuple[str, Callable[[pl.LazyFrame], pl.LazyFrame]]] = [
        # Columns no later step reads are dropped as soon as possible to save memory.
        (
            "min_rating",
            lambda lf: dp.filter_min_rating(lf, min_rating).select(
                "user_id", "item_id", "timestamp"
            ),
        ),
        ("order", dp.order_events),
        ("repeats", lambda lf: dp.drop_repeats(lf, repeats)),
        ("k_core", lambda lf: dp.k_core(lf, k_core)),
        ("min_seq_len", lambda lf: dp.filter_short_sequences(lf, min_seq_len)),
    ]
    counter = _StepCounter()
    lf = events.pipe(counter.tap, "read", distinct=True)
    for step_name, step in steps:
        lf = lf.pipe(step)
        if step_name != "order":
            lf = lf.pipe(counter.tap, step_name)
    lf = lf.cache()  # read by the sequences and both vocabularies
    user_vocab = dp.build_vocab(lf, "user_id", "user_idx")
    item_vocab = dp.build_vocab(lf, "item_id", "item_idx")
    seqs_df, users_df, items_df = pl.collect_all(
        [
            dp.to_sequences(lf, user_vocab, item_vocab),
            user_vocab.with_columns(pl.col("user_id").cast(pl.String)),
            item_vocab.with_columns(pl.col("item_id").cast(pl.String)),
        ],
        engine=ENGINE,
    )
    step_counts = counter.rows
    # A tapped stage that ran twice would record twice and corrupt the drop counts.
    assert [r["step"] for r in step_counts] == [
        "read",
        *(name for name, _ in steps if name != "order"),
    ], step_counts
    step_counts[-1].update(users=users_df.height, items=items_df.height)
    for row in step_counts:
        if row["dropped_rows"]:
            log.info("%s dropped %d rows", row["step"], row["dropped_rows"])
    if seqs_df.height == 0:
        raise ValueError(
            f"no user is left after filtering (per step: {step_counts}); loosen min_rating, "
            "k_core or min_seq_len"
        )

    split_info: dict[str, Any] = {"kind": split}
    if split == "leave-one-out":
        seqs_df = seqs_df.lazy().pipe(dp.split_leave_one_out).collect()
    else:
        ts = seqs_df["timestamp"].explode()
        v = resolve_cutoff(valid_cutoff, ts, "valid_cutoff")
        t = resolve_cutoff(test_cutoff, ts, "test_cutoff")
        split_info.update(valid_cutoff=v, test_cutoff=t)
        seqs_df = seqs_df.lazy().pipe(dp.split_temporal, v, t).collect()
    sums = seqs_df.select(
        pl.col("n_train").sum(),
        pl.col("n_valid").sum(),
        pl.col("n_test").sum(),
        (pl.col("n_valid") > 0).sum().alias("users_valid"),
        (pl.col("n_test") > 0).sum().alias("users_test"),
    ).row(0, named=True)
    split_info.update(
        num_train_interactions=int(sums["n_train"]),
        num_valid_targets=int(sums["n_valid"]),
        num_test_targets=int(sums["n_test"]),
        users_with_valid_targets=int(sums["users_valid"]),
        users_with_test_targets=int(sums["users_test"]),
    )

    flat, offsets = list_column_to_ragged(seqs_df["item_idx"])
    n_train, n_valid = (seqs_df[c].to_numpy().astype(np.int64) for c in ("n_train", "n_valid"))
    repeat_info = repeat_shares(flat, offsets, n_train, n_valid)
    stamps, _ = list_column_to_ragged(seqs_df["timestamp"])
    tie_info = tie_shares(stamps, offsets, n_train, n_valid)
    del stamps  # not held while the files are written
    items_info: dict[str, Any] = {}
    if items is not None:
        items_df = items_df.join(items, on="item_id", how="left", maintain_order="left")
        missing = int(items_df["title"].null_count())
        items_info = {
            "items_with_metadata": items_df.height - missing,
            "items_without_metadata": missing,
        }
        if missing:
            log.warning("%d of %d items have no metadata", missing, items_df.height)

    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "dataset": {"name": name},
        "num_users": users_df.height,
        "num_items": items_df.height,
        "num_interactions": int(seqs_df["item_idx"].list.len().sum()),
        "steps": step_counts,
        "split": split_info,
        "repeats": repeat_info,
        "ties": tie_info,
        **items_info,
        "config": config or {},
        "inputs": [
            {"path": str(p), "sha256": sha256_file(p), "bytes": Path(p).stat().st_size}
            for p in inputs
        ],
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if manifest["inputs"]:
        manifest["dataset"]["version"] = manifest["inputs"][0]["sha256"][:12]
    with atomic_dir(output, owned=OWNED) as tmp:
        (tmp / "sequences").mkdir()
        tables = {
            "vocab_users.parquet": users_df,
            "vocab_items.parquet": items_df,
            SEQUENCES_PART: seqs_df,
        }
        files = {}
        for rel, df in tables.items():
            # zstd level 1: as small as the default level here, in two thirds of the time.
            df.write_parquet(tmp / rel, compression="zstd", compression_level=1)
            files[rel] = {"rows": df.height, "sha256": sha256_file(tmp / rel)}
        manifest["files"] = files
        write_json(tmp / "manifest.json", manifest)
    log.info(
        "prepared %s: %d users, %d items, %d interactions → %s",
        name,
        manifest["num_users"],
        manifest["num_items"],
        manifest["num_interactions"],
        output,
    )
    return manifest
