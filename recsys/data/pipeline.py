"""Sequence pipeline steps: each a ``pl.LazyFrame -> pl.LazyFrame`` function for ``.pipe``.

Input to the event steps is the canonical table of :mod:`recsys.data.readers`
(``row_nr, user_id, item_id, timestamp[, rating]``). The steps are chained by
:func:`recsys.data.prepare.prepare_dataset`, which collects once at the edge.
"""

from __future__ import annotations

import numpy as np
import polars as pl

REPEATS = ("keep", "drop-consecutive", "drop-all")


def filter_min_rating(lf: pl.LazyFrame, min_rating: float | None) -> pl.LazyFrame:
    """Keep events with ``rating >= min_rating`` (explicit → implicit feedback).

    ``None`` keeps every event.

    Examples
    --------
    ratings ``[5, 2, 4]`` with ``min_rating=4`` → ``[5, 4]``.
    """
    if min_rating is None:
        return lf
    if "rating" not in lf.collect_schema():
        raise ValueError(
            f"min_rating={min_rating} needs a 'rating' column, but the input has only "
            f"{lf.collect_schema().names()}"
        )
    return lf.filter(pl.col("rating") >= min_rating)


def order_events(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Group events by user, each user's in time order; equal timestamps keep row order.

    Users come out contiguous but in no particular order (later steps only need each
    user's events together and in time order). Sorting within users — a hash group-by,
    then small stable sorts — is about 2x faster than one global sort by (user, time, row).

    Examples
    --------
    ``(u1, t=5, row 0), (u2, t=1, row 1), (u1, t=3, row 2), (u1, t=3, row 3)`` →
    ``u1: (t=3, row 2), (t=3, row 3), (t=5, row 0)`` and ``u2: (t=1, row 1)``, in either
    user order.
    """
    others = [c for c in lf.collect_schema().names() if c != "user_id"]
    # Within a group, rows keep source order, so a stable sort on time breaks ties by row.
    return (
        lf.group_by("user_id")
        .agg(pl.col(others).sort_by("timestamp", maintain_order=True))
        .explode(others)
    )


def drop_repeats(lf: pl.LazyFrame, policy: str) -> pl.LazyFrame:
    """Apply a repeats policy to time-ordered events (run after :func:`order_events`).

    Parameters
    ----------
    lf : LazyFrame
        Events grouped by user, in time order within a user.
    policy : {"keep", "drop-consecutive", "drop-all"}
        ``keep`` every event; ``drop-consecutive`` drops an event whose item equals the
        user's previous one; ``drop-all`` keeps only each user's first event per item.

    Examples
    --------
    user items ``[a, a, b, a]``: keep → ``[a, a, b, a]``; drop-consecutive → ``[a, b, a]``;
    drop-all → ``[a, b]``.
    """
    if policy == "keep":
        return lf
    if policy == "drop-consecutive":
        same_user = pl.col("user_id") == pl.col("user_id").shift(1)
        same_item = pl.col("item_id") == pl.col("item_id").shift(1)
        return lf.filter(~(same_user & same_item).fill_null(False))
    if policy == "drop-all":
        return lf.filter(pl.struct("user_id", "item_id").is_first_distinct())
    raise ValueError(f"repeats policy {policy!r} is unknown; expected one of {list(REPEATS)}")


def k_core(lf: pl.LazyFrame, k: int) -> pl.LazyFrame:
    """Iteratively drop users and items with fewer than ``k`` events until none is left.

    Removing a user can push an item under ``k`` and vice versa, so the filter repeats
    until a pass removes nothing. ``k <= 1`` is a no-op. Convergence needs the counts of
    each pass, so this step materialises its input inside the lazy plan.

    Examples
    --------
    ``k=2`` on ``(u1,a) (u1,b) (u2,a) (u2,c) (u3,a)``: pass 1 drops u3 (1 event) and items
    b, c (1 event each); pass 2 drops u1 and u2 (1 event left each), then item a → empty.
    """
    if k <= 1:
        return lf

    def fixed_point(df: pl.DataFrame) -> pl.DataFrame:
        users, items = _codes(df["user_id"]), _codes(df["item_id"])
        if _dense(users) and _dense(items):
            return df.filter(_k_core_mask(users.to_numpy(), items.to_numpy(), k))
        while True:
            keep = (pl.len().over("user_id") >= k) & (pl.len().over("item_id") >= k)
            out = df.filter(keep)
            if out.height == df.height:
                return out
            df = out

    return lf.map_batches(fixed_point, schema=lf.collect_schema())


def _codes(s: pl.Series) -> pl.Series:
    return s.to_physical() if s.dtype == pl.Categorical else s


def _dense(s: pl.Series) -> bool:
    return s.dtype.is_integer() and s.len() > 0 and s.min() >= 0 and s.max() <= 4 * s.len()


def _k_core_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    # Small non-negative integer codes: counting is a bincount, far cheaper than hashing.
    # Each pass decrements the counts by the rows it drops instead of recounting, and tests
    # rows by a lookup in a small per-ID table: 6x faster than recounting on 10M events.
    user_counts, item_counts = np.bincount(users), np.bincount(items)
    keep = np.ones(users.size, dtype=bool)
    while True:
        ok = (user_counts >= k)[users] & (item_counts >= k)[items] & keep
        dropped = np.flatnonzero(keep & ~ok)
        if dropped.size == 0:
            return keep
        user_counts -= np.bincount(users[dropped], minlength=user_counts.size)
        item_counts -= np.bincount(items[dropped], minlength=item_counts.size)
        keep = ok


def filter_short_sequences(lf: pl.LazyFrame, min_length: int) -> pl.LazyFrame:
    """Drop users with fewer than ``min_length`` events.

    Examples
    --------
    ``min_length=3``, users with 5, 2 and 3 events → the users with 5 and 3 are kept.
    """
    if min_length <= 1:
        return lf
    return lf.filter(pl.len().over("user_id") >= min_length)


def build_vocab(lf: pl.LazyFrame, column: str, index_name: str) -> pl.LazyFrame:
    """Map each distinct ID left in ``column`` to an index from 1 (0 = padding).

    Indices follow the raw IDs' natural order: IDs that read as integers first, by value
    (ties such as "07" and "7" by text), then the rest by text. So they are deterministic
    and, for MovieLens, index == raw ID when nothing was filtered.

    Examples
    --------
    item_id ``["b", "a", "b", "c"]`` → ``a→1, b→2, c→3``; ``["30", "4", "x"]`` →
    ``4→1, 30→2, x→3``.
    """
    col = pl.col(column)
    text = col.cast(pl.String)
    return (
        lf.select(col.unique())
        .sort(text.cast(pl.Int64, strict=False), text, nulls_last=True)
        .with_row_index(index_name, offset=1)
        .with_columns(pl.col(index_name).cast(pl.Int32))
    )


def to_sequences(
    lf: pl.LazyFrame, user_vocab: pl.LazyFrame, item_vocab: pl.LazyFrame
) -> pl.LazyFrame:
    """Encode IDs and collect each user's time-ordered items into one list row.

    Parameters
    ----------
    lf : LazyFrame
        Events grouped by user, in time order within a user.
    user_vocab, item_vocab : LazyFrame
        Outputs of :func:`build_vocab` (``user_idx, user_id`` and ``item_idx, item_id``).

    Examples
    --------
    events ``(u, b, t=1), (u, a, t=2)`` with ``u→1, a→1, b→2`` →
    ``user_idx=1, item_idx=[2, 1], timestamp=[1, 2]``.
    """
    # Users are joined after grouping (one row each); rows within a group keep their
    # order whatever the group order.
    return (
        lf.join(item_vocab, on="item_id", how="left", maintain_order="left")
        .group_by("user_id")
        .agg(pl.col("item_idx"), pl.col("timestamp"))
        .join(user_vocab, on="user_id", how="left")
        .select("user_idx", "item_idx", "timestamp")
        .sort("user_idx")
    )


def split_leave_one_out(seqs: pl.LazyFrame) -> pl.LazyFrame:
    """Mark the last item of each sequence as test target and the one before as validation.

    Adds ``n_train``, ``n_valid``, ``n_test`` (u32): positions ``[0, n_train)`` train,
    the next ``n_valid`` are validation targets, the last ``n_test`` test targets. Every
    sequence must have at least 3 items.

    Examples
    --------
    ``item_idx=[4, 2, 7, 9]`` → ``n_train=2, n_valid=1, n_test=1`` (valid 7, test 9).
    """
    n = pl.col("item_idx").list.len().cast(pl.UInt32)
    return seqs.with_columns(
        (n - 2).alias("n_train"),
        pl.lit(1, pl.UInt32).alias("n_valid"),
        pl.lit(1, pl.UInt32).alias("n_test"),
    )


def split_temporal(seqs: pl.LazyFrame, valid_cutoff: int, test_cutoff: int) -> pl.LazyFrame:
    """Split each sequence at global cut-off times.

    Events with ``timestamp < valid_cutoff`` train, ``valid_cutoff <= timestamp <
    test_cutoff`` are validation targets and ``timestamp >= test_cutoff`` test targets, each
    with the whole history before it as input. Adds ``n_train``, ``n_valid``, ``n_test``.

    Examples
    --------
    ``timestamp=[1, 5, 8, 10]``, cut-offs 5 and 10 → ``n_train=1, n_valid=2, n_test=1``.
    """
    if valid_cutoff > test_cutoff:
        raise ValueError(
            f"valid_cutoff={valid_cutoff} is after test_cutoff={test_cutoff}; expected "
            "valid_cutoff <= test_cutoff"
        )
    ts = pl.col("timestamp")
    n_before_valid = ts.list.eval((pl.element() < valid_cutoff).sum()).list.first()
    n_before_test = ts.list.eval((pl.element() < test_cutoff).sum()).list.first()
    return seqs.with_columns(
        n_before_valid.cast(pl.UInt32).alias("n_train"),
        (n_before_test - n_before_valid).cast(pl.UInt32).alias("n_valid"),
        (ts.list.len() - n_before_test).cast(pl.UInt32).alias("n_test"),
    )
