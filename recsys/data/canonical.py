"""The canonical interaction table that every reader produces, and its validation.

Canonical columns: ``user_id`` and ``item_id`` (str; i64 where the source column is an
integer type that fits in i64 — text IDs are never parsed as numbers, so "007" stays
"007"), ``timestamp`` (i64, seconds or line order), optional ``rating`` (f64), and
``row_nr`` (u32, 0-based data row in the source file, used to break timestamp ties stably).

:func:`canonical` casts a reader's raw output to these columns; :func:`validate` reads
every value once and turns the first that cannot be cast into one ``ValueError`` line
naming the file, line, column and value (:class:`Source` says where rows came from).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recsys.data.sniff import TextLayout, find_bad_line, first_non_utf8
from recsys.io import quote


@dataclass(frozen=True)
class Source:
    """A raw file as read: its path, how many lines precede the first data row, and, for
    text, its layout (so a failure can be traced to the line that caused it)."""

    path: Path
    header_lines: int
    text: TextLayout | None = None
    inferred: bool = False  # column types were inferred from the first rows (CSV)

    def line_of(self, row_nr: int) -> int:
        """1-based line number in the file of 0-based data row ``row_nr``.

        Exact for Parquet and for text without quoted line breaks; :func:`validate` finds
        the exact line of a bad text row with :func:`~recsys.data.sniff.find_bad_line`.
        """
        return row_nr + self.header_lines + 1


def canonical(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Cast raw reader output to the canonical schema; unparsable values become null.

    Use :func:`validate` to turn those nulls into errors that name the offending row.

    Examples
    --------
    ``user_id="7", item_id=" 3", timestamp="881250949", rating="4"`` →
    ``user_id="7", item_id="3", timestamp=881250949, rating=4.0``.
    """
    schema = lf.collect_schema()
    exprs = [
        pl.col("row_nr").cast(pl.UInt32),
        _id_expr("user_id", schema["user_id"]),
        _id_expr("item_id", schema["item_id"]),
        _time_expr(schema["timestamp"]),
    ]
    if "rating" in schema:
        rating = pl.col("rating")
        if schema["rating"] == pl.String:
            rating = rating.str.strip_chars()
        exprs.append(rating.cast(pl.Float64, strict=False))
    return lf.select(exprs)


def _fits_i64(dtype: pl.DataType) -> bool:
    return dtype.is_integer() and dtype not in (pl.UInt64, pl.Int128, pl.UInt128)


def _id_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if _fits_i64(dtype):
        # Integer IDs (Parquet) stay integers until the vocabulary: hashing and joining
        # them is several times cheaper than strings. Text IDs stay text ("007" != "7").
        return col.cast(pl.Int64).alias(name)
    if dtype.is_float():
        # An ID read as float (e.g. "3.0") is only an ID if it is whole.
        return pl.when(col == col.round()).then(col.cast(pl.Int64, strict=False)).alias(name)
    # Wider integers (u64, i128, whole decimals) may not fit i64, so they become text, as
    # do bytes (checked to be UTF-8 by validate) and categories.
    s = col.cast(pl.String, strict=False).str.strip_chars()
    return pl.when(s.str.len_bytes() > 0).then(s).alias(name)


def _time_expr(dtype: pl.DataType) -> pl.Expr:
    col = pl.col("timestamp")
    if _fits_i64(dtype):
        out = col.cast(pl.Int64)
    elif dtype.is_float():
        out = pl.when(col == col.round()).then(col.cast(pl.Int64, strict=False))
    elif isinstance(dtype, pl.Datetime | pl.Date):
        out = col.cast(pl.Datetime("us")).dt.epoch("s")
    elif dtype.is_integer() or isinstance(dtype, pl.Decimal | pl.Null):
        out = col.cast(pl.Int64, strict=False)  # out of range → null → named by validate
    else:
        # Text: integers, or date-times in any one format polars infers (from the first
        # value that is not an integer, so "20200101" stays the integer 20200101).
        s = col.cast(pl.String, strict=False).str.strip_chars()
        as_int = s.cast(pl.Int64, strict=False)
        as_date = pl.when(as_int.is_null()).then(s).str.to_datetime(strict=False, time_unit="us")
        out = pl.coalesce(as_int, as_date.dt.epoch("s"))
    return out.alias("timestamp")


def validate(raw: pl.LazyFrame, source: Source) -> pl.DataFrame:
    """Check the canonical cast of ``raw`` and summarise it; raise on any bad row.

    Parameters
    ----------
    raw : LazyFrame
        Reader output (before :func:`canonical`).
    source : Source
        The file it came from, for error messages.

    Returns
    -------
    DataFrame
        One row: ``n_rows`` and, per column, the first row whose value failed to parse.

    Raises
    ------
    ValueError
        If the input has no rows, or an ID/timestamp/rating is missing or unparsable; the
        message names the file, column, line and raw value.
    """
    schema = raw.collect_schema()
    cols = [c for c in ("user_id", "item_id", "timestamp", "rating") if c in schema]
    for c in cols:
        if schema[c] == pl.Binary:
            _check_utf8(raw, c, source)
    # Every value is read and cast here, so a file polars cannot read fails now, inside
    # read_interactions, and not in a later step that could not say which file is bad.
    casted = canonical(raw).rename({c: f"_{c}" for c in cols})
    joined = pl.concat([raw.select(cols), casted], how="horizontal")
    bad = [
        pl.col("row_nr").filter(pl.col(f"_{c}").is_null()).first().alias(f"bad_{c}") for c in cols
    ] + [
        pl.col(c).filter(pl.col(f"_{c}").is_null()).first().cast(pl.String).alias(f"val_{c}")
        for c in cols
    ]
    summary = joined.select(pl.len().alias("n_rows"), *bad).collect()
    if summary["n_rows"][0] == 0:
        raise ValueError(f"input file {str(source.path)!r} has no interaction rows")
    found = [(summary[f"bad_{c}"][0], c) for c in cols if summary[f"bad_{c}"][0] is not None]
    if found:
        row, c = min(found, key=lambda rc: (rc[0], cols.index(rc[1])))  # first in the file
        line = source.line_of(row)
        if source.text is not None:
            # A missing value often comes from a malformed line (too few fields, a stray
            # quote) at or before it: that is the error to report. The scan also gives the
            # exact line where quoted fields span several lines.
            record = row + source.header_lines
            located, problem = find_bad_line(source.path, source.text, record)
            if problem is not None:
                raise ValueError(f"{str(source.path)!r}, {problem}")
            line = located or line
        value = summary[f"val_{c}"][0]
        shown = quote(value, 60)
        kind = {"timestamp": "an integer time or a date-time", "rating": "a number"}
        expected = kind.get(c, "a non-empty ID")
        raise ValueError(
            f"{str(source.path)!r}, line {line}, column {c!r}: "
            f"cannot parse {shown}; expected {expected}"
        )
    return summary


def _check_utf8(raw: pl.LazyFrame, c: str, source: Source) -> None:
    # Parquet text written without its UTF-8 annotation (e.g. by Spark) arrives as bytes;
    # it is accepted as text if it decodes.
    values = raw.select(c).collect().to_series()
    bad = first_non_utf8(values)
    if bad is None:
        return
    value = values[bad]
    # Shown as bytes: as text they would not say which bytes are wrong.
    shown = repr(value) if len(value) <= 60 else f"{value[:60]!r}... ({len(value)} bytes)"
    raise ValueError(
        f"{str(source.path)!r}, line {source.line_of(bad)}, column {c!r}: cannot parse "
        f"{shown}; expected integers or UTF-8 text"
    )
