"""Readers: raw interaction logs → one canonical, validated LazyFrame.

The canonical columns, and the validation that every reader's output passes, are in
:mod:`recsys.data.canonical`.

Bad input of any kind raises ``ValueError`` with one line naming the file and, where it can
be found, the line, column and value: the files are read and checked here (their raw bytes
by :mod:`recsys.data.sniff`), so the later steps never meet a malformed file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

from recsys.data.canonical import Source, canonical, validate
from recsys.data.sniff import (
    TextLayout,
    check_file,
    check_parquet,
    check_text,
    find_bad_line,
    first_line,
)
from recsys.io import quote

log = logging.getLogger(__name__)

FORMATS = ("movielens", "csv", "parquet", "sasrec", "sequences")

# What polars and pyarrow raise on a file they cannot read. PanicException is polars'
# report of an internal failure, which a corrupt file can trigger too.
LIBRARY_ERRORS = (
    pl.exceptions.PolarsError,
    pl.exceptions.PanicException,
    pa.ArrowException,
    OSError,
)


@dataclass(frozen=True)
class Columns:
    """Names of the source columns that map onto the canonical ones."""

    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"
    rating: str | None = "rating"


def library_message(e: BaseException) -> str:
    """The gist of a polars/pyarrow error: its first paragraph (polars puts advice about
    its own options after a blank line), on one line, at most 200 characters."""
    text = " ".join(str(e).split("\n\n")[0].split())
    return text if len(text) <= 200 else text[:200] + "..."


def detect_movielens_layout(path: str | Path) -> str:
    """Tell which MovieLens ratings layout a file has from its first line.

    Parameters
    ----------
    path : str or Path
        A MovieLens ratings file.

    Returns
    -------
    str
        ``"100k"`` (``u.data``, tab-separated), ``"dat"`` (1M/10M ``ratings.dat``, ``::``)
        or ``"csv"`` (20M/25M/32M/latest ``ratings.csv`` with header).
    """
    p = check_file(path)
    line = first_line(p)
    if "::" in line:
        return "dat"
    if line.startswith("userId,"):
        return "csv"
    if len(line.split("\t")) == 4:
        return "100k"
    raise ValueError(
        f"{str(p)!r}: first line {quote(line)} matches no MovieLens ratings layout; "
        "expected 'user\\titem\\trating\\ttime' (100K u.data), 'user::item::rating::time' "
        "(1M/10M ratings.dat) or a 'userId,movieId,rating,timestamp' header (20M+ ratings.csv)"
    )


def _scan_text(path: Path, separator: str, names: list[str]) -> pl.LazyFrame:
    # Headerless, unquoted, every field text: the canonical cast parses the values, so a
    # bad one is reported with its line instead of failing inside the CSV parser.
    return pl.scan_csv(
        path,
        separator=separator,
        has_header=False,
        new_columns=names,
        schema_overrides=dict.fromkeys(names, pl.String),
        infer_schema=False,
        quote_char=None,
        row_index_name="row_nr",
    )


def read_movielens(path: str | Path, as_text: bool = False) -> tuple[pl.LazyFrame, Source]:
    """Read a MovieLens ratings file of any release, recognised by its layout.

    Parameters
    ----------
    path : str or Path
        ``u.data``, ``ratings.dat`` or ``ratings.csv``.
    as_text : bool
        Read every column of ``ratings.csv`` as text (see :func:`read_table`).

    Returns
    -------
    (LazyFrame, Source)
        Raw columns ``user_id, item_id, rating, timestamp, row_nr`` (not yet validated;
        pass to :func:`canonical`), and the source description.
    """
    p = check_file(path)
    check_text(p)
    layout = detect_movielens_layout(p)
    if layout == "100k":
        names = ["user_id", "item_id", "rating", "timestamp"]
        return _scan_text(p, "\t", names), Source(p, 0, TextLayout("\t", 4))
    if layout == "dat":
        # "1::1193::5::978300760" split on ':' gives empty fields between the values.
        names = ["user_id", "_a", "item_id", "_b", "rating", "_c", "timestamp"]
        lf = _scan_text(p, ":", names).drop("_a", "_b", "_c")
        return lf, Source(p, 0, TextLayout(":", 7, shown="::", per_field=2))
    cols = Columns(user="userId", item="movieId", time="timestamp", rating="rating")
    return read_table(p, "csv", cols, as_text=as_text)


def read_table(
    path: str | Path,
    fmt: str,
    columns: Columns = Columns(),
    separator: str = ",",
    as_text: bool = False,
) -> tuple[pl.LazyFrame, Source]:
    """Read any CSV/TSV/Parquet interaction table through a column mapping.

    Parameters
    ----------
    path : str or Path
        The file.
    fmt : {"csv", "parquet"}
        File type; ``.tsv`` files are read tab-separated.
    columns : Columns
        Which source columns hold user, item, time and (optionally) rating.
    separator : str
        CSV field separator (ignored for Parquet and ``.tsv``).
    as_text : bool
        Read every CSV column as text rather than infer time and rating types from the
        first 100 rows: slower, but a late value of another kind does not stop the read.

    Returns
    -------
    (LazyFrame, Source)
        Raw columns renamed to ``user_id, item_id, timestamp[, rating]`` plus ``row_nr``.

    Raises
    ------
    ValueError
        If the file is not of type ``fmt``, lacks a mapped column, or a mapped Parquet
        column has a type no ID, time or rating can have (a list, a struct, ...).
    """
    p = check_file(path)
    if fmt == "parquet":
        check_parquet(p)
        lf = pl.scan_parquet(p).with_row_index("row_nr")
        header_lines = 0
    elif fmt == "csv":
        sep = "\t" if p.suffix == ".tsv" else separator
        if len(sep.encode()) != 1:
            raise ValueError(f"separator {sep!r} is not one character; expected e.g. ',' or ';'")
        check_text(p)
        # IDs stay text ("007" != "7"). Typed times and ratings read faster (0.20 s against
        # 0.34 s for 3M rows), so read_interactions reads everything as text only when a
        # late row does not fit the inferred types (or the file is malformed).
        ids = {columns.user: pl.String, columns.item: pl.String}
        lf = pl.scan_csv(
            p,
            separator=sep,
            schema_overrides=None if as_text else ids,
            infer_schema=not as_text,
            row_index_name="row_nr",
        )
        header_lines = 1
    else:
        raise ValueError(f"format {fmt!r} is not a table format; expected 'csv' or 'parquet'")
    schema = lf.collect_schema()
    available = [c for c in schema.names() if c != "row_nr"]
    wanted = {columns.user: "user_id", columns.item: "item_id", columns.time: "timestamp"}
    missing = [c for c in wanted if c not in available]
    if missing:
        names = [quote(c, 40) for c in available[:12]]
        more = f" and {len(available) - 12} more" if len(available) > 12 else ""
        raise ValueError(
            f"{str(p)!r}: missing column(s) {missing}; the file has columns "
            f"[{', '.join(names)}]{more} (map them with --user-col/--item-col/--time-col)"
        )
    if columns.rating is not None and columns.rating in available:
        wanted[columns.rating] = "rating"
    for src, canon in wanted.items():
        _check_dtype(p, src, canon, schema[src])
    lf = lf.select("row_nr", *wanted).rename(wanted)
    if fmt == "parquet":
        return lf, Source(p, header_lines)
    layout = TextLayout(sep, len(available), quote='"')
    return lf, Source(p, header_lines, layout, inferred=not as_text)


def _check_dtype(path: Path, src: str, canon: str, dtype: pl.DataType) -> None:
    # Parquet brings its own types (CSV only those polars infers for times and ratings). A
    # list or struct has no single value to read as an ID, and polars would fail on it deep
    # inside a later query.
    text = (pl.String, pl.Categorical, pl.Enum, pl.Binary, pl.Null)
    whole = (
        dtype.is_integer()
        or dtype.is_float()
        or isinstance(dtype, text)
        or (isinstance(dtype, pl.Decimal) and dtype.scale == 0)
    )
    if canon == "rating":
        ok, expected = dtype.is_numeric() or isinstance(dtype, pl.String | pl.Null), "numbers"
    elif canon == "timestamp":
        ok = whole or isinstance(dtype, pl.Datetime | pl.Date)
        expected = "integer times, date-times or text"
    else:
        ok, expected = whole, "integers or text"
    if not ok:
        raise ValueError(f"{str(path)!r}: column {src!r} has type {dtype}; expected {expected}")


def read_sasrec(path: str | Path) -> tuple[pl.LazyFrame, Source]:
    """Read the SASRec reference code's text format: one ``user item`` pair per line.

    Line order is time order, so ``timestamp`` is the 0-based line number.

    Parameters
    ----------
    path : str or Path
        The text file.

    Returns
    -------
    (LazyFrame, Source)
        Raw columns ``user_id, item_id, timestamp, row_nr``.
    """
    p = check_file(path)
    check_text(p)
    lf = _scan_text(p, " ", ["user_id", "item_id"])
    lf = lf.with_columns(pl.col("row_nr").cast(pl.Int64).alias("timestamp"))
    return lf, Source(p, 0, TextLayout(" ", 2))


def read_sequences(path: str | Path) -> tuple[pl.LazyFrame, Source]:
    """Read one user per line, ``user item item ...`` (whitespace-separated, oldest first):
    the layout of the S3Rec, ICLRec, DuoRec and CL4SRec repositories (Amazon Beauty...).

    ``timestamp`` is the event's position in the file, so each line's order is time order
    (and a user given on several lines keeps the file's order); ``row_nr`` is the line.

    Parameters
    ----------
    path : str or Path
        The text file.

    Returns
    -------
    (LazyFrame, Source)
        Raw columns ``row_nr, user_id, item_id, timestamp``, one row per event; a line
        with a user and no item gives one row without an item, which validation reports.
    """
    p = check_file(path)
    check_text(p)
    # Whole lines (no byte of ordinary text is the unit separator), split on any run of
    # whitespace, so tabs, double and trailing spaces are all one separator.
    lf = pl.scan_csv(
        p,
        separator="\x1f",
        has_header=False,
        new_columns=["line"],
        schema_overrides={"line": pl.String},
        infer_schema=False,
        quote_char=None,
        row_index_name="row_nr",
    )
    tokens = pl.col("line").str.extract_all(r"\S+")
    lf = (
        lf.select(
            "row_nr",
            tokens.list.first().alias("user_id"),
            tokens.list.slice(1).alias("item_id"),
        )
        .explode("item_id")
        .with_row_index("timestamp")
        .with_columns(pl.col("timestamp").cast(pl.Int64))
    )
    return lf, Source(p, 0, TextLayout("\x1f", 1, shown="a user ID and its item IDs"))


def read_interactions(
    path: str | Path, fmt: str, columns: Columns = Columns(), separator: str = ","
) -> pl.LazyFrame:
    """Read and validate an interaction log of any supported format.

    Parameters
    ----------
    path : str or Path
        Input file.
    fmt : {"movielens", "csv", "parquet", "sasrec", "sequences"}
        Input format.
    columns : Columns
        Column mapping (csv/parquet only).
    separator : str
        CSV separator.

    Returns
    -------
    LazyFrame
        Canonical columns ``row_nr, user_id, item_id, timestamp[, rating]``.

    Raises
    ------
    ValueError
        If the file cannot be read as ``fmt`` or holds a bad row: one line naming the
        file and, where known, the line, column and value.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")
    p = check_file(path)
    source = Source(p, 0)
    try:
        raw, source = _read(p, fmt, columns, separator, as_text=False)
        try:
            summary = validate(raw, source)
        except LIBRARY_ERRORS:
            if not source.inferred:
                raise
            # A row past the first 100 did not fit the types polars inferred from them (a
            # date-time among integer times, a fraction among integer ratings), or the file
            # is malformed. As text, the canonical cast reads every kind of time and names
            # the line of a value it cannot parse, so a time column may mix integer and ISO
            # times; a malformed file fails again and is diagnosed below.
            raw, source = _read(p, fmt, columns, separator, as_text=True)
            summary = validate(raw, source)
    except LIBRARY_ERRORS as e:
        raise ValueError(_read_error(source, fmt, e)) from e
    log.info("read %s rows from %s", summary["n_rows"][0], source.path)
    return canonical(raw)


def _read(
    p: Path, fmt: str, columns: Columns, separator: str, as_text: bool
) -> tuple[pl.LazyFrame, Source]:
    if fmt == "movielens":
        return read_movielens(p, as_text=as_text)
    if fmt == "sasrec":
        return read_sasrec(p)
    if fmt == "sequences":
        return read_sequences(p)
    return read_table(p, fmt, columns, separator, as_text=as_text)


def _read_error(source: Source, fmt: str, e: BaseException) -> str:
    """One line saying why polars or pyarrow could not read a file."""
    path = str(source.path)
    if isinstance(e, OSError) and not isinstance(e, pa.ArrowException) and e.strerror:
        return f"cannot read {path!r}: {e.strerror}"
    if source.text is not None:
        # polars names neither the line nor, for ragged rows, the problem in words.
        _, problem = find_bad_line(source.path, source.text)
        if problem is not None:
            return f"{path!r}, {problem}"
    kind = "Parquet" if fmt == "parquet" else fmt
    if isinstance(e, pl.exceptions.PanicException):
        # Its message is about polars' own code, of no use to the user.
        return f"{path!r} cannot be read as {kind}: polars failed on it (is the file corrupt?)"
    return f"{path!r} cannot be read as {kind}: {library_message(e)}"
