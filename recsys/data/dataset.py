"""A prepared-dataset folder loaded as flat numpy arrays, ready for batching and evaluation.

Sequences are ragged, so they are held the way CSR matrices are: one flat array of item
indices and per-user offsets. Every slice a model needs (a user's training prefix, the
history before the test targets, the targets themselves) is a per-user ``[start, stop)``
range into the flat array, cut out for many users at once by :func:`gather_ragged` and
:func:`pad_left` without a Python loop over users.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.data.prepare import (  # list_column_to_ragged: imported from here too
    SCHEMA_VERSION,
    SEQUENCES_PART,
    list_column_to_ragged,
    repeat_shares,
    same_time_as_previous,
)
from recsys.io import read_json, safe_name, verify_files

REDO = "prepare the dataset again with `recsys prepare`"


def pad_left(values: np.ndarray, start: np.ndarray, stop: np.ndarray, length: int) -> np.ndarray:
    """The last ``length`` values of each range ``values[start:stop]``, left-padded with 0.

    Examples
    --------
    ``values=[5, 6, 7, 8]``, ranges ``[0, 3)`` and ``[3, 4)``, ``length=2`` →
    ``[[6, 7], [0, 8]]``.
    """
    pos = stop[:, None] - length + np.arange(length)  # (B, length)
    real = pos >= start[:, None]
    return np.where(real, values[np.where(real, pos, 0)], 0)


def gather_ragged(
    values: np.ndarray, start: np.ndarray, stop: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the ranges ``values[start:stop]``; return ``(flat, offsets)``.

    Examples
    --------
    ``values=[5, 6, 7, 8]``, ranges ``[1, 3)`` and ``[3, 4)`` → ``([6, 7, 8], [0, 2, 3])``.
    """
    idx, offsets = ragged_positions(start, stop)
    return values[idx], offsets


def ragged_positions(start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions in the ranges ``[start, stop)``, concatenated, and each range's
    offset among them: ``(positions, offsets)``.

    Examples
    --------
    ranges ``[1, 3)`` and ``[3, 4)`` → ``([1, 2, 3], [0, 2, 3])``.
    """
    lengths = stop - start
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.repeat(start - offsets[:-1], lengths) + np.arange(offsets[-1]), offsets


def ragged_to_padded(flat: np.ndarray, offsets: np.ndarray, fill: int = 0) -> np.ndarray:
    """Right-padded matrix (rows, max length) of a ragged array.

    Examples
    --------
    ``([6, 7, 8], [0, 2, 3])`` → ``[[6, 7], [8, 0]]``.
    """
    lengths = np.diff(offsets)
    width = int(lengths.max()) if len(lengths) else 0
    out = np.full((len(lengths), max(width, 1)), fill, dtype=flat.dtype)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(len(flat)) - np.repeat(offsets[:-1], lengths)
    out[rows, cols] = flat
    return out


def tie_starts(stamps: np.ndarray, offsets: np.ndarray, n_train: np.ndarray) -> np.ndarray | None:
    """Where each tie group of training events starts, or None where no two tie.

    A tie group is a run of one user's training events with the same timestamp: the
    log does not say in which order they happened (in ml-100k half of all events share
    their second with the previous one). The result is a boolean (N,) array, True at an
    event that starts a group: a user's first event, an event whose timestamp differs
    from the previous one's, and every held-out (validation, test) event.

    Examples
    --------
    one user, timestamps ``[5, 5, 7, 7]``, 3 training events → ``[T, F, T, T]``.
    """
    starts = ~same_time_as_previous(stamps, offsets)
    # The held-out events, after each user's training prefix (a few per user).
    starts[ragged_positions(offsets[:-1] + n_train, offsets[1:])[0]] = True
    return None if starts.all() else starts


@dataclass(frozen=True)
class Stage:
    """What a model sees and must predict for one evaluation stage.

    For user ``u = users[i]``: the input history is ``items[hist_start[i]:hist_stop[i]]``
    and the targets are ``items[hist_stop[i]:target_stop[i]]`` (both in time order).
    """

    name: str  # "valid" or "test"
    users: np.ndarray  # (E,) user_idx
    hist_start: np.ndarray  # (E,)
    hist_stop: np.ndarray  # (E,)
    target_stop: np.ndarray  # (E,)
    skipped_no_history: int  # users with targets but nothing before them to predict from


@dataclass(frozen=True)
class SequenceData:
    """The sequences, split and vocabulary sizes of a prepared-dataset folder."""

    path: Path
    manifest: dict[str, Any]
    items: np.ndarray  # (N,) int64 item_idx of all users' events, user by user
    offsets: np.ndarray  # (U + 1,) user u's events are items[offsets[u-1]:offsets[u]]
    n_train: np.ndarray  # (U,)
    n_valid: np.ndarray  # (U,)
    n_test: np.ndarray  # (U,)
    # (N,) True where a tie group of training events starts (:func:`tie_starts`); None
    # where no two of a user's training events share a timestamp.
    tie_starts: np.ndarray | None = None

    @property
    def num_users(self) -> int:
        return len(self.n_train)

    @property
    def num_items(self) -> int:
        return int(self.manifest["num_items"])

    @classmethod
    def load(cls, path: str | Path) -> SequenceData:
        """Load ``path`` (written by ``recsys prepare``), checking its schema version and
        every file against the SHA-256 its manifest recorded.

        Raises
        ------
        ValueError
            If the folder or its manifest is missing or corrupt, a file differs from its
            checksum, or the schema version differs; one line naming the file.
        """
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise ValueError(
                f"{str(path)!r} is not a prepared dataset: no manifest.json; "
                "create it with `recsys prepare`"
            )
        manifest = read_json(manifest_path, f"a dataset manifest; {REDO}")
        if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
            found = manifest.get("schema_version") if isinstance(manifest, dict) else None
            raise ValueError(
                f"{str(manifest_path)!r} has schema_version {found!r}; "
                f"expected {SCHEMA_VERSION}: prepare the dataset again"
            )
        missing = [k for k in ("dataset", "num_items", "files", "split") if k not in manifest]
        files = manifest.get("files")
        if missing or not isinstance(files, dict) or SEQUENCES_PART not in files:
            raise ValueError(
                f"{str(manifest_path)!r} is corrupt: it lacks {missing or ['files']}; {REDO}"
            )
        # The name becomes an MLflow experiment and part of run folders' paths.
        safe_name(manifest["dataset"].get("name"), f"dataset name in {str(manifest_path)!r}")
        verify_files(path, files, REDO)
        df = pl.read_parquet(path / SEQUENCES_PART)
        users = df["user_idx"].to_numpy()
        # prepare writes users sorted 1..U; everything below indexes by user_idx - 1.
        assert np.array_equal(users, np.arange(1, len(users) + 1)), "user_idx not 1..U"
        items, offsets = list_column_to_ragged(df["item_idx"])
        n_train = df["n_train"].to_numpy().astype(np.int64)
        stamps, _ = list_column_to_ragged(df["timestamp"])
        ties = tie_starts(stamps, offsets, n_train)
        del stamps
        return cls(
            path=path,
            manifest=manifest,
            items=items,
            offsets=offsets,
            n_train=n_train,
            n_valid=df["n_valid"].to_numpy().astype(np.int64),
            n_test=df["n_test"].to_numpy().astype(np.int64),
            tie_starts=ties,
        )

    def train_ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Users with at least 2 training events, and their training ranges ``[start, stop)``."""
        users = np.flatnonzero(self.n_train >= 2) + 1
        start = self.offsets[users - 1]
        return users, start, start + self.n_train[users - 1]

    def stage(self, name: str) -> Stage:
        """The ``"valid"`` or ``"test"`` stage: each user's history and targets.

        The validation history is the training prefix; the test history adds the
        validation events. Users with no targets in the stage are left out.
        """
        start = self.offsets[:-1]
        if name == "valid":
            hist_stop = start + self.n_train
            target_stop = hist_stop + self.n_valid
        elif name == "test":
            hist_stop = start + self.n_train + self.n_valid
            target_stop = hist_stop + self.n_test
        else:
            raise ValueError(f"stage {name!r} is unknown; expected 'valid' or 'test'")
        has_targets = target_stop > hist_stop
        keep = has_targets & (hist_stop > start)
        return Stage(
            name=name,
            users=np.flatnonzero(keep) + 1,
            hist_start=start[keep],
            hist_stop=hist_stop[keep],
            target_stop=target_stop[keep],
            skipped_no_history=int((has_targets & ~keep).sum()),
        )

    def item_counts(self, stop: np.ndarray | None = None) -> np.ndarray:
        """Events per item index (length ``num_items + 1``, index 0 = padding = 0).

        Counts the training events only unless per-user ``stop`` offsets are given.
        """
        start = self.offsets[:-1]
        stop = start + self.n_train if stop is None else stop
        flat, _ = gather_ragged(self.items, start, stop)
        return np.bincount(flat, minlength=self.num_items + 1)

    def repeat_shares(self) -> dict[str, float]:
        """The manifest's ``repeats`` (datasets prepared before it was recorded: computed)."""
        kept = self.manifest.get("repeats")
        if isinstance(kept, dict) and "valid_targets_in_history" in kept:
            return kept
        return repeat_shares(self.items, self.offsets, self.n_train, self.n_valid)

    def dataset_info(self) -> dict[str, Any]:
        """Name, version, counts and split of the dataset (logged with every run)."""
        m = self.manifest
        return {
            "dataset_name": m["dataset"]["name"],
            "dataset_version": m["dataset"].get("version", ""),
            "dataset_num_users": m["num_users"],
            "dataset_num_items": m["num_items"],
            "dataset_num_interactions": m["num_interactions"],
            "split": m["split"]["kind"],
            "vocab_items_sha256": m["files"]["vocab_items.parquet"]["sha256"],
        }
