"""Readers: raw interaction logs → one canonical, validated LazyFrame.

Canonical columns: ``user_id`` and ``item_id`` (str; i64 where the source column is an
integer type — text IDs are never parsed as numbers, so "007" stays "007"), ``timestamp``
(i64, seconds or line order), optional ``rating`` (f64), and ``row_nr`` (u32, 0-based data
row in the source file, used to break timestamp ties stably).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

FORMATS = ("movielens", "csv", "parquet", "sasrec")

# Genre flag columns of MovieLens 100K `u.item`, in file order (from `u.genre`).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


@dataclass(frozen=True)
class Columns:
    """Names of the source columns that map onto the canonical ones."""

    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"
    rating: str | None = "rating"


@dataclass(frozen=True)
class Source:
    """A raw file as read: its path, and how many lines precede the first data row.

    ``parquet_columns`` maps canonical names to the Parquet columns they were read from,
    so validation can trust the file's null counts instead of scanning it.
    """

    path: Path
    header_lines: int
    parquet_columns: tuple[tuple[str, str], ...] = ()

    def line_of(self, row_nr: int) -> int:
        """1-based line number in the file of 0-based data row ``row_nr``."""
        return row_nr + self.header_lines + 1


def _check_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"input file {str(p)!r} does not exist")
    if p.is_dir():
        raise ValueError(f"input {str(p)!r} is a folder; expected a file")
    if p.stat().st_size == 0:
        raise ValueError(f"input file {str(p)!r} is empty; expected interaction rows")
    return p


def _first_line(path: Path) -> str:
    with open(path, "rb") as f:
        return f.readline().decode("utf-8", errors="replace").rstrip("\r\n")


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
    p = _check_file(path)
    line = _first_line(p)
    if "::" in line:
        return "dat"
    if line.startswith("userId,"):
        return "csv"
    if len(line.split("\t")) == 4:
        return "100k"
    raise ValueError(
        f"{str(p)!r}: first line {line[:80]!r} matches no MovieLens ratings layout; expected "
        "'user\\titem\\trating\\ttime' (100K u.data), 'user::item::rating::time' (1M/10M "
        "ratings.dat) or a 'userId,movieId,rating,timestamp' header (20M+ ratings.csv)"
    )


def _scan_text(path: Path, separator: str, names: list[str], has_header: bool) -> pl.LazyFrame:
    return pl.scan_csv(
        path,
        separator=separator,
        has_header=has_header,
        new_columns=None if has_header else names,
        schema_overrides=None if has_header else dict.fromkeys(names, pl.String),
        infer_schema=has_header,
        quote_char=None if not has_header else '"',
        row_index_name="row_nr",
    )


def read_movielens(path: str | Path) -> tuple[pl.LazyFrame, Source]:
    """Read a MovieLens ratings file of any release, recognised by its layout.

    Parameters
    ----------
    path : str or Path
        ``u.data``, ``ratings.dat`` or ``ratings.csv``.

    Returns
    -------
    (LazyFrame, Source)
        Raw columns ``user_id, item_id, rating, timestamp, row_nr`` (not yet validated;
        pass to :func:`canonical`), and the source description.
    """
    p = _check_file(path)
    layout = detect_movielens_layout(p)
    if layout == "100k":
        names = ["user_id", "item_id", "rating", "timestamp"]
        return _scan_text(p, "\t", names, has_header=False), Source(p, 0)
    if layout == "dat":
        # "1::1193::5::978300760" split on ':' gives empty fields between the values.
        names = ["user_id", "_a", "item_id", "_b", "rating", "_c", "timestamp"]
        lf = _scan_text(p, ":", names, has_header=False).drop("_a", "_b", "_c")
        return lf, Source(p, 0)
    cols = Columns(user="userId", item="movieId", time="timestamp", rating="rating")
    return read_table(p, "csv", cols)


def read_table(
    path: str | Path, fmt: str, columns: Columns = Columns(), separator: str = ","
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

    Returns
    -------
    (LazyFrame, Source)
        Raw columns renamed to ``user_id, item_id, timestamp[, rating]`` plus ``row_nr``.
    """
    p = _check_file(path)
    if fmt == "parquet":
        lf = pl.scan_parquet(p).with_row_index("row_nr")
        header_lines = 0
    elif fmt == "csv":
        sep = "\t" if p.suffix == ".tsv" else separator
        id_cols = {columns.user: pl.String, columns.item: pl.String}
        lf = pl.scan_csv(p, separator=sep, schema_overrides=id_cols, row_index_name="row_nr")
        header_lines = 1
    else:
        raise ValueError(f"format {fmt!r} is not a table format; expected 'csv' or 'parquet'")
    available = lf.collect_schema().names()
    wanted = {columns.user: "user_id", columns.item: "item_id", columns.time: "timestamp"}
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ValueError(
            f"{str(p)!r}: missing column(s) {missing}; the file has columns "
            f"{[c for c in available if c != 'row_nr']} (map them with --user-col/--item-col/"
            "--time-col)"
        )
    if columns.rating is not None and columns.rating in available:
        wanted[columns.rating] = "rating"
    lf = lf.select("row_nr", *wanted).rename(wanted)
    parquet_columns = tuple((canon, src) for src, canon in wanted.items())
    return lf, Source(p, header_lines, parquet_columns if fmt == "parquet" else ())


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
    p = _check_file(path)
    lf = _scan_text(p, " ", ["user_id", "item_id"], has_header=False)
    lf = lf.with_columns(pl.col("row_nr").cast(pl.Int64).alias("timestamp"))
    return lf, Source(p, 0)


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
        exprs.append(pl.col("rating").cast(pl.Float64, strict=False))
    return lf.select(exprs)


def _id_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if dtype.is_integer():
        # Integer IDs (Parquet) stay integers until the vocabulary: hashing and joining
        # them is several times cheaper than strings. Text IDs stay text ("007" != "7").
        return col.cast(pl.Int64).alias(name)
    if dtype.is_float():
        # An ID read as float (e.g. "3.0") is only an ID if it is whole.
        return pl.when(col == col.round()).then(col.cast(pl.Int64, strict=False)).alias(name)
    s = col.cast(pl.String, strict=False).str.strip_chars()
    return pl.when(s.str.len_bytes() > 0).then(s).alias(name)


def _time_expr(dtype: pl.DataType) -> pl.Expr:
    col = pl.col("timestamp")
    if dtype.is_integer():
        out = col.cast(pl.Int64)
    elif dtype.is_float():
        out = pl.when(col == col.round()).then(col.cast(pl.Int64, strict=False))
    elif dtype == pl.String:
        s = col.str.strip_chars()
        out = pl.coalesce(
            s.cast(pl.Int64, strict=False),
            s.str.to_datetime(strict=False, time_unit="us").dt.epoch("s"),
        )
    elif isinstance(dtype, pl.Datetime | pl.Date):
        out = col.cast(pl.Datetime("us")).dt.epoch("s")
    else:
        out = col.cast(pl.Int64, strict=False)
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
    n_rows = _rows_if_parquet_clean(source, schema)
    if n_rows:
        return pl.DataFrame({"n_rows": [n_rows]})
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
    for c in cols:
        row = summary[f"bad_{c}"][0]
        if row is not None:
            value = summary[f"val_{c}"][0]
            kind = {"timestamp": "an integer time or a date-time", "rating": "a number"}
            expected = kind.get(c, "a non-empty ID")
            raise ValueError(
                f"{str(source.path)!r}, line {source.line_of(row)}, column {c!r}: "
                f"cannot parse {value!r}; expected {expected}"
            )
    return summary


def _rows_if_parquet_clean(source: Source, schema: pl.Schema) -> int | None:
    # Integer IDs and times (and numeric ratings) cast to the canonical types without
    # failing, so only a null in the file can make a bad row. When the Parquet statistics
    # count no nulls, that proves the file clean without reading it (0.1-0.3 s on 10M rows).
    if not source.parquet_columns:
        return None
    for canon, _ in source.parquet_columns:
        dtype = schema[canon]
        if not (dtype.is_integer() or (canon == "rating" and dtype.is_float())):
            return None
    meta = pq.read_metadata(source.path)
    names = [meta.schema.column(j).path for j in range(meta.num_columns)]
    for _, src in source.parquet_columns:
        j = names.index(src)
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(j).statistics
            if stats is None or not stats.has_null_count or stats.null_count > 0:
                return None
    return meta.num_rows


def read_interactions(
    path: str | Path, fmt: str, columns: Columns = Columns(), separator: str = ","
) -> pl.LazyFrame:
    """Read and validate an interaction log of any supported format.

    Parameters
    ----------
    path : str or Path
        Input file.
    fmt : {"movielens", "csv", "parquet", "sasrec"}
        Input format.
    columns : Columns
        Column mapping (csv/parquet only).
    separator : str
        CSV separator.

    Returns
    -------
    LazyFrame
        Canonical columns ``row_nr, user_id, item_id, timestamp[, rating]``.
    """
    if fmt == "movielens":
        raw, source = read_movielens(path)
    elif fmt == "sasrec":
        raw, source = read_sasrec(path)
    elif fmt in ("csv", "parquet"):
        raw, source = read_table(path, fmt, columns, separator)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")
    try:
        summary = validate(raw, source)
    except pl.exceptions.ComputeError as e:
        raise ValueError(f"{str(source.path)!r}: cannot be read as {fmt}: {e}") from e
    log.info("read %s rows from %s", summary["n_rows"][0], source.path)
    return canonical(raw)


def read_items(path: str | Path) -> pl.DataFrame:
    """Read item metadata (titles, genres) from MovieLens or the shared ``items.tsv``.

    Parameters
    ----------
    path : str or Path
        ``u.item`` (100K), ``movies.dat`` (1M/10M), ``movies.csv`` (20M+) or ``items.tsv``
        (header ``item_id title ...``).

    Returns
    -------
    DataFrame
        Columns ``item_id`` (str), ``title`` (str), ``genres`` (list[str]).
    """
    p = _check_file(path)
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # the older MovieLens releases are Latin-1
    first = text.split("\n", 1)[0]
    buf = io.BytesIO(text.encode("utf-8"))
    if first.startswith("item_id\t"):
        df = pl.read_csv(buf, separator="\t", infer_schema=False, quote_char=None)
        genres = pl.col("genres").fill_null("").str.split(" ")
    elif first.startswith("movieId,"):
        df = pl.read_csv(buf, infer_schema=False).rename({"movieId": "item_id"})
        genres = pl.col("genres").str.split("|")
    elif "::" in first:
        rows = [line.split("::") for line in text.splitlines() if line]
        df = pl.DataFrame(rows, schema=["item_id", "title", "genres"], orient="row")
        genres = pl.col("genres").str.split("|")
    elif first.count("|") == 23:
        names = ["item_id", "title", "release", "video", "url", *ML100K_GENRES]
        df = pl.read_csv(
            buf,
            separator="|",
            has_header=False,
            new_columns=names,
            quote_char=None,
            infer_schema=False,
        )
        flags = pl.concat_list([pl.when(pl.col(g) == "1").then(pl.lit(g)) for g in ML100K_GENRES])
        genres = flags.list.drop_nulls()
    else:
        raise ValueError(
            f"{str(p)!r}: first line {first[:80]!r} matches no item metadata layout; expected "
            "u.item, movies.dat, movies.csv or a tab-separated 'item_id title ...' header"
        )
    return df.select(pl.col("item_id").str.strip_chars(), pl.col("title"), genres.alias("genres"))
