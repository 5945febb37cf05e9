"""Item metadata (titles, genres, release dates) from MovieLens or a tab-separated table.

Read whole (metadata files are small), checked like the interaction logs: anything that
is not one of the known layouts, not text, ragged, with an empty or repeated item ID, or
with a release date that is not a date raises ``ValueError`` with one line naming the
file and line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from recsys.data.readers import LIBRARY_ERRORS, library_message
from recsys.data.sniff import TextLayout, check_file, find_bad_line, read_text
from recsys.io import quote

log = logging.getLogger(__name__)

# Genre flag columns of MovieLens 100K `u.item`, in file order (from `u.genre`).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

# How each layout's release date is written: (strptime format or None, what is expected).
# None: a year alone, read as January 1 of that year.
DATE_FORMATS = {
    "u.item": ("%d-%b-%Y", "a date like 01-Jan-1995"),
    "released": ("%Y-%m-%d", "an ISO date YYYY-MM-DD"),
    "release_year": (None, "a four-digit year"),
}
# The year MovieLens appends to a title: "Toy Story (1995)".
TITLE_YEAR = r"\((\d{4})\)\s*$"


def read_items(path: str | Path) -> pl.DataFrame:
    """Read item metadata (titles, genres, release dates) from MovieLens or ``items.tsv``.

    Parameters
    ----------
    path : str or Path
        ``u.item`` (100K), ``movies.dat`` (1M/10M), ``movies.csv`` (20M+) or ``items.tsv``
        (header ``item_id title ... genres``, optionally ``release_year`` or ``released``);
        UTF-8 or Latin-1. Blank lines are skipped.

    Returns
    -------
    DataFrame
        Columns ``item_id`` (str), ``title`` (str, unchanged), ``genres`` (list[str]) and,
        where the layout carries a date, ``released`` (date, null where unknown): the
        ``release`` field of ``u.item`` (``01-Jan-1995``); the ``released`` column
        (``YYYY-MM-DD``) of ``items.tsv``, else its ``release_year`` (January 1); the
        ``(1995)`` ending a ``movies.dat``/``movies.csv`` title (January 1). An
        ``items.tsv`` with neither column gives no ``released`` column. An empty date, or
        one without any digit (``unknown``: the shared ``items.tsv`` has such), is null.

    Raises
    ------
    ValueError
        If the file is not one of these layouts, is not text, has a line with the wrong
        number of fields, lacks a column, has an empty or repeated item ID, or a release
        date that is not one: one line naming the file and, where known, the line.
    """
    p = check_file(path, "item metadata")
    # Read whole: metadata files are small, and the older MovieLens ones are Latin-1.
    text = read_text(p).removeprefix("\ufeff")
    first = text.split("\n", 1)[0].rstrip("\r")
    # The column holding the release date, and which DATE_FORMATS entry (or "title") reads it.
    date: tuple[str, str] | None
    if first.startswith("item_id\t"):
        header = first.split("\t")
        # A full date says more than a year: ``released`` wins where both are given.
        name = next((c for c in ("released", "release_year") if c in header), None)
        date = (name, name) if name else None
        layout = TextLayout("\t", len(header), skip_blank=True)
        df = _read_item_table(p, text, layout, extra=[name] if name else [])
        genres = pl.col("genres").fill_null("").str.split(" ")
    elif first.startswith("movieId,"):
        layout = TextLayout(",", first.count(",") + 1, '"', skip_blank=True)
        df = _read_item_table(p, text, layout).rename({"movieId": "item_id"})
        genres = pl.col("genres").str.split("|")
        date = ("title", "title")
    elif "::" in first:
        df = _read_movies_dat(p, text)
        genres = pl.col("genres").str.split("|")
        date = ("title", "title")
    elif first.count("|") == 23:
        names = ["item_id", "title", "release", "video", "url", *ML100K_GENRES]
        df = _read_item_table(p, text, TextLayout("|", 24, skip_blank=True), names)
        flags = pl.concat_list([pl.when(pl.col(g) == "1").then(pl.lit(g)) for g in ML100K_GENRES])
        genres = flags.list.drop_nulls()
        date = ("release", "u.item")
    else:
        raise ValueError(
            f"{str(p)!r}: first line {quote(first)} matches no item metadata layout; expected "
            "u.item, movies.dat, movies.csv or a tab-separated 'item_id title ...' header"
        )
    # polars keeps a row of nulls for each blank line.
    df = df.filter(~pl.all_horizontal(pl.exclude("line").is_null()))
    if df.height == 0:
        raise ValueError(f"input file {str(p)!r} has no item rows")
    dates = [pl.col(date[0]).alias("date_text")] if date else []
    df = df.select(
        "line", pl.col("item_id").str.strip_chars(), "title", genres.alias("genres"), *dates
    )
    empty = df.filter(pl.col("item_id").fill_null("") == "")
    if empty.height:
        raise ValueError(f"{str(p)!r}, line {empty['line'][0]}: the item ID is empty")
    # A repeated ID would repeat its item in the vocabulary it is joined onto.
    again = df.filter(~pl.col("item_id").is_first_distinct())
    if again.height:
        item, line = again["item_id"][0], again["line"][0]
        before = df.filter(pl.col("item_id") == item)["line"][0]
        raise ValueError(
            f"{str(p)!r}, line {line}: item ID {quote(item, 60)} is already on line {before}"
        )
    if date:
        df = df.with_columns(_release_dates(p, df, *date)).drop("date_text")
    return df.drop("line")


def _release_dates(p: Path, df: pl.DataFrame, column: str, kind: str) -> pl.Series:
    """The ``released`` column parsed from ``df["date_text"]`` (see :func:`read_items`)."""
    if kind == "title":
        # A title without a year is an unknown date, not an error: the title is the data.
        year = df["date_text"].str.extract(TITLE_YEAR).cast(pl.Int32)
        return pl.select(pl.date(year, 1, 1).alias("released")).to_series()
    fmt, expected = DATE_FORMATS[kind]
    text = df["date_text"].str.strip_chars()
    # No digit at all ("unknown", "n/a", "V"): a placeholder for an unknown date. A value
    # with digits that does not parse is a date gone wrong, which is reported.
    placeholder = text.str.contains(r"^\D+$").fill_null(False)
    known = text.is_not_null() & (text != "") & ~placeholder
    if fmt is None:
        year = text.str.extract(r"^([1-9]\d{3})$").cast(pl.Int32)
        parsed = pl.select(pl.date(year, 1, 1)).to_series()
    else:
        parsed = text.str.strptime(pl.Date, fmt, strict=False)
    bad = df.filter(known & parsed.is_null())
    if bad.height:
        line, value = bad["line"][0], bad["date_text"][0]
        raise ValueError(
            f"{str(p)!r}, line {line}: release date {quote(value, 60)} in column {column!r} "
            f"is not {expected} (or empty)"
        )
    if placeholder.any():
        first = df.filter(placeholder)
        log.warning(
            "%s: %d release dates without any digit are read as unknown (first: line %d, %s)",
            p,
            first.height,
            first["line"][0],
            quote(first["date_text"][0], 60),
        )
    return pl.select(pl.when(known).then(parsed).alias("released")).to_series()


def _read_item_table(
    p: Path,
    text: str,
    layout: TextLayout,
    names: list[str] | None = None,
    extra: Sequence[str] = (),
) -> pl.DataFrame:
    """A metadata table with a ``line`` column: exact unless quoted text spans lines.

    ``extra`` names header columns kept beside the ID, title and genres.
    """
    data = text.encode()  # UTF-8 whatever the file was, with the same line breaks
    # Checked first: polars takes a short line for missing values, and names no line.
    _, problem = find_bad_line(data, layout)
    if problem is not None:
        raise ValueError(f"{str(p)!r}, {problem}")
    try:
        df = pl.read_csv(
            data,
            separator=layout.separator,
            has_header=names is None,
            new_columns=names,
            quote_char=layout.quote,
            infer_schema=False,
        )
    except LIBRARY_ERRORS as e:
        raise ValueError(f"{str(p)!r} cannot be read as item metadata: {library_message(e)}") from e
    missing = [c for c in ("title", "genres") if c not in df.columns]
    if names is None and missing:
        raise ValueError(f"{str(p)!r}: the header has no {' or '.join(map(repr, missing))} column")
    start = 1 if names else 2
    # Other columns may have any name.
    columns = names or [df.columns[0], "title", "genres", *extra]
    return df.select(pl.int_range(start, pl.len() + start).alias("line"), *columns)


def _read_movies_dat(p: Path, text: str) -> pl.DataFrame:
    # Split in Python: titles hold single colons, so polars cannot split on "::".
    rows = []
    for line, record in enumerate(text.split("\n"), 1):
        fields = record.rstrip("\r").split("::")
        if len(fields) == 3:
            rows.append((line, *fields))
        elif fields != [""]:
            raise ValueError(
                f"{str(p)!r}, line {line}: expected 3 fields separated by '::', found {len(fields)}"
            )
    schema = {"line": pl.Int64, "item_id": pl.String, "title": pl.String, "genres": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row")
