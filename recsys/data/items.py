"""Item metadata (titles, genres) from the MovieLens releases or a tab-separated table.

Read whole (metadata files are small), checked like the interaction logs: anything that
is not one of the known layouts, not text, ragged, or with an empty or repeated item ID
raises ``ValueError`` with one line naming the file and line.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys.data.readers import LIBRARY_ERRORS, library_message
from recsys.data.sniff import TextLayout, check_file, find_bad_line, read_text
from recsys.io import quote

# Genre flag columns of MovieLens 100K `u.item`, in file order (from `u.genre`).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


def read_items(path: str | Path) -> pl.DataFrame:
    """Read item metadata (titles, genres) from MovieLens or the shared ``items.tsv``.

    Parameters
    ----------
    path : str or Path
        ``u.item`` (100K), ``movies.dat`` (1M/10M), ``movies.csv`` (20M+) or ``items.tsv``
        (header ``item_id title ... genres``); UTF-8 or Latin-1. Blank lines are skipped.

    Returns
    -------
    DataFrame
        Columns ``item_id`` (str), ``title`` (str), ``genres`` (list[str]).

    Raises
    ------
    ValueError
        If the file is not one of these layouts, is not text, has a line with the wrong
        number of fields, lacks a column, or has an empty or repeated item ID: one line
        naming the file and, where known, the line.
    """
    p = check_file(path, "item metadata")
    # Read whole: metadata files are small, and the older MovieLens ones are Latin-1.
    text = read_text(p).removeprefix("\ufeff")
    first = text.split("\n", 1)[0].rstrip("\r")
    if first.startswith("item_id\t"):
        df = _read_item_table(p, text, TextLayout("\t", first.count("\t") + 1, skip_blank=True))
        genres = pl.col("genres").fill_null("").str.split(" ")
    elif first.startswith("movieId,"):
        layout = TextLayout(",", first.count(",") + 1, '"', skip_blank=True)
        df = _read_item_table(p, text, layout).rename({"movieId": "item_id"})
        genres = pl.col("genres").str.split("|")
    elif "::" in first:
        df = _read_movies_dat(p, text)
        genres = pl.col("genres").str.split("|")
    elif first.count("|") == 23:
        names = ["item_id", "title", "release", "video", "url", *ML100K_GENRES]
        df = _read_item_table(p, text, TextLayout("|", 24, skip_blank=True), names)
        flags = pl.concat_list([pl.when(pl.col(g) == "1").then(pl.lit(g)) for g in ML100K_GENRES])
        genres = flags.list.drop_nulls()
    else:
        raise ValueError(
            f"{str(p)!r}: first line {quote(first)} matches no item metadata layout; expected "
            "u.item, movies.dat, movies.csv or a tab-separated 'item_id title ...' header"
        )
    # polars keeps a row of nulls for each blank line.
    df = df.filter(~pl.all_horizontal(pl.exclude("line").is_null()))
    if df.height == 0:
        raise ValueError(f"input file {str(p)!r} has no item rows")
    df = df.select("line", pl.col("item_id").str.strip_chars(), "title", genres.alias("genres"))
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
    return df.drop("line")


def _read_item_table(
    p: Path, text: str, layout: TextLayout, names: list[str] | None = None
) -> pl.DataFrame:
    """A metadata table with a ``line`` column: exact unless quoted text spans lines."""
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
    columns = names or [df.columns[0], "title", "genres"]  # other columns may have any name
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
