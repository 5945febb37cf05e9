from __future__ import annotations

import gzip
import random
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from recsys.cli import main
from recsys.data import readers
from recsys.data.items import read_items
from recsys.data.readers import Columns, detect_movielens_layout, read_interactions

HEADER = "user_id,item_id,timestamp\n"
# 12 good rows, so a bad row appended after them is on line 14.
GOOD = "".join(f"u{u},i{i},{10 * u + i}\n" for u in range(3) for i in range(4))


def rows(lf: pl.LazyFrame) -> list[tuple]:
    df = lf.collect()
    return [tuple(r) for r in df.select("user_id", "item_id", "timestamp").iter_rows()]


def test_movielens_100k_layout(write):
    p = write("u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    assert detect_movielens_layout(p) == "100k"
    df = read_interactions(p, "movielens").collect()
    assert df.columns == ["row_nr", "user_id", "item_id", "timestamp", "rating"]
    assert df.rows() == [(0, "196", "242", 881250949, 3.0), (1, "186", "302", 891717742, 3.0)]


def test_movielens_dat_layout(write):
    p = write("ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    assert detect_movielens_layout(p) == "dat"
    assert rows(read_interactions(p, "movielens")) == [
        ("1", "1193", 978300760),
        ("1", "661", 978302109),
    ]


def test_movielens_csv_layout(write):
    p = write("ratings.csv", "userId,movieId,rating,timestamp\n1,296,5.0,1147880044\n")
    assert detect_movielens_layout(p) == "csv"
    df = read_interactions(p, "movielens").collect()
    assert df.rows() == [(0, "1", "296", 1147880044, 5.0)]


def test_unknown_movielens_layout_names_file_and_line(write):
    p = write("x.txt", "a,b\n")
    with pytest.raises(ValueError, match=r"x\.txt.*'a,b'.*matches no MovieLens"):
        read_interactions(p, "movielens")


def test_csv_with_column_mapping_keeps_text_ids(write):
    p = write("log.csv", "who,what,when,stars\n007,a1,2020-01-01T00:00:10,4\n7,a2,5,1\n")
    cols = Columns(user="who", item="what", time="when", rating="stars")
    df = read_interactions(p, "csv", cols).collect()
    # "007" and "7" are different users; ISO times become epoch seconds.
    assert df.rows() == [(0, "007", "a1", 1577836810, 4.0), (1, "7", "a2", 5, 1.0)]


def test_tsv_and_parquet(write, tmp_path):
    p = write("log.tsv", "user_id\titem_id\ttimestamp\nu\ti\t3\n")
    assert rows(read_interactions(p, "csv")) == [("u", "i", 3)]
    pq = tmp_path / "log.parquet"
    pl.DataFrame({"user_id": [5, 6], "item_id": [7, 8], "timestamp": [1, 2]}).write_parquet(pq)
    df = read_interactions(pq, "parquet").collect()
    # Integer ID columns stay integers inside (cheaper); vocabularies turn them into text.
    assert df.rows() == [(0, 5, 7, 1), (1, 6, 8, 2)]


def test_sasrec_format_line_order_is_time(write):
    p = write("data.txt", "1 10\n1 11\n2 10\n")
    assert rows(read_interactions(p, "sasrec")) == [("1", "10", 0), ("1", "11", 1), ("2", "10", 2)]


def test_sequences_format_one_user_per_line(write):
    # Any run of whitespace separates; a user on two lines keeps the file's order.
    p = write("seqs.txt", "1 10 11\n2\t10  12 \n1 13\n")
    assert rows(read_interactions(p, "sequences")) == [
        ("1", "10", 0),
        ("1", "11", 1),
        ("2", "10", 2),
        ("2", "12", 3),
        ("1", "13", 4),
    ]


def test_sequences_format_bad_input_is_one_line(write, capsys):
    empty = write("s.txt", "1 10 11\n\n2 10 12\n")
    assert cli_error(capsys, empty, "sequences") == (
        f"{str(empty)!r}, line 2 is empty; expected a user ID and its item IDs"
    )
    bad = write("b.txt", b"1 10 11\n2 \xff\xfe 12\n")
    line = cli_error(capsys, bad, "sequences")
    assert "line 2" in line and "UTF-8" in line


def test_beauty_counts(beauty, tmp_path):
    from pipelines.prepare import PrepareConfig, run

    manifest = run(PrepareConfig(input=str(beauty), output=str(tmp_path / "b"), format="sequences"))
    assert (manifest["num_users"], manifest["num_items"], manifest["num_interactions"]) == (
        22_363,
        12_101,
        198_502,
    )
    assert manifest["split"]["num_test_targets"] == manifest["split"]["num_valid_targets"] == 22_363


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.csv' does not exist"):
        read_interactions(tmp_path / "nope.csv", "csv")


def test_empty_file(write):
    with pytest.raises(ValueError, match=r"empty\.csv' is empty"):
        read_interactions(write("empty.csv", ""), "csv")


def test_header_only_has_no_rows(write):
    p = write("h.csv", "user_id,item_id,timestamp\n")
    with pytest.raises(ValueError, match=r"h\.csv' has no interaction rows"):
        read_interactions(p, "csv")


def test_missing_column_lists_available(write):
    p = write("m.csv", "user,item_id,timestamp\n1,2,3\n")
    with pytest.raises(ValueError, match=r"m\.csv.*missing column\(s\) \['user_id'\].*'user'"):
        read_interactions(p, "csv")


def test_unparsable_timestamp_names_line_column_value(write):
    p = write("t.csv", "user_id,item_id,timestamp\n1,2,3\n1,3,yesterday\n")
    with pytest.raises(ValueError, match=r"t\.csv', line 3, column 'timestamp'.*'yesterday'"):
        read_interactions(p, "csv")


def test_empty_id_names_line(write):
    p = write("u.data", "1\t2\t3\t4\n\t2\t3\t5\n")
    with pytest.raises(ValueError, match=r"line 2, column 'user_id'.*expected a non-empty ID"):
        read_interactions(p, "movielens")


def test_unparsable_rating(write):
    p = write("ratings.dat", "1::2::five::4\n")
    with pytest.raises(ValueError, match=r"line 1, column 'rating': cannot parse 'five'"):
        read_interactions(p, "movielens")


def test_folder_and_unknown_format(tmp_path, write):
    with pytest.raises(ValueError, match="is a folder"):
        read_interactions(tmp_path, "csv")
    with pytest.raises(ValueError, match=r"unknown format 'xml'"):
        read_interactions(write("a.csv", "x\n"), "xml")


def test_items_tsv(write):
    p = write(
        "items.tsv",
        "item_id\ttitle\trelease_year\tgenres\n1\tToy Story\t1995\tAnimation Children's Comedy\n"
        "2\tOld\t\tDrama\n3\tLost\tunknown\t\n",
    )
    assert read_items(p).rows() == [
        ("1", "Toy Story", ["Animation", "Children's", "Comedy"], date(1995, 1, 1)),
        ("2", "Old", ["Drama"], None),
        ("3", "Lost", [""], None),  # no digit: a placeholder, read as unknown
    ]
    assert read_items(p).schema["released"] == pl.Date


def test_items_tsv_released_iso_wins_over_year(write):
    p = write(
        "items.tsv",
        "item_id\ttitle\trelease_year\treleased\tgenres\n"
        "1\tA\t1995\t1995-11-22\tComedy\n2\tB\t1996\t\tDrama\n",
    )
    assert read_items(p).select("item_id", "released").rows() == [
        ("1", date(1995, 11, 22)),
        ("2", None),
    ]


def test_items_tsv_without_dates_has_no_released_column(write):
    p = write("items.tsv", "item_id\ttitle\tgenres\n1\tToy Story\tComedy\n")
    assert read_items(p).columns == ["item_id", "title", "genres"]


@pytest.mark.parametrize(
    ("header", "value", "expected"),
    [
        ("release_year", "19955", "a four-digit year"),
        ("release_year", "1995.0", "a four-digit year"),
        ("released", "1995-02-30", "an ISO date YYYY-MM-DD"),
        ("released", "22/11/1995", "an ISO date YYYY-MM-DD"),
    ],
)
def test_items_tsv_bad_date_names_file_line_value(write, header, value, expected):
    good = "1995" if header == "release_year" else "1995-01-01"
    p = write("items.tsv", f"item_id\ttitle\t{header}\tgenres\n1\tA\t{good}\tX\n2\tB\t{value}\tY\n")
    with pytest.raises(ValueError) as err:
        read_items(p)
    assert str(err.value) == (
        f"{str(p)!r}, line 3: release date {value!r} in column {header!r} is not {expected} "
        "(or empty)"
    )


def test_u_item_latin1(write):
    flags = ["0"] * 19
    flags[5] = "1"  # Comedy
    line = "|".join(["2", "Café (1995)", "01-Jan-1995", "", "http://x", *flags]) + "\n"
    unknown = "|".join(["267", "unknown", "", "", "", "1", *flags[1:]]) + "\n"
    p = write("u.item", (line + unknown).encode("latin-1"))
    assert read_items(p).rows() == [
        ("2", "Café (1995)", ["Comedy"], date(1995, 1, 1)),
        ("267", "unknown", ["unknown", "Comedy"], None),
    ]


def test_u_item_bad_release_date(write):
    flags = "|".join(["0"] * 19)
    p = write("u.item", f"1|A (1995)|01-Jan-1995||u|{flags}\n2|B (1995)|1995-01-01||u|{flags}\n")
    with pytest.raises(ValueError) as err:
        read_items(p)
    assert str(err.value) == (
        f"{str(p)!r}, line 2: release date '1995-01-01' in column 'release' is not a date like "
        "01-Jan-1995 (or empty)"
    )


def test_movies_dat_and_csv(write):
    dat = write("movies.dat", "1::Toy Story (1995)::Animation|Comedy\n2::No Year::Drama\n")
    assert read_items(dat).rows() == [
        ("1", "Toy Story (1995)", ["Animation", "Comedy"], date(1995, 1, 1)),
        ("2", "No Year", ["Drama"], None),
    ]
    csv = write(
        "movies.csv",
        'movieId,title,genres\n3,"Heat, The (1995)",Action\n4,"Fawlty (1975-1979)",Comedy\n'
        '5,"Trailing (2003) ",Drama\n',
    )
    assert read_items(csv).rows() == [
        ("3", "Heat, The (1995)", ["Action"], date(1995, 1, 1)),
        ("4", "Fawlty (1975-1979)", ["Comedy"], None),  # a range is no release year
        ("5", "Trailing (2003) ", ["Drama"], date(2003, 1, 1)),
    ]


def test_items_unknown_layout(write):
    with pytest.raises(ValueError, match=r"z\.txt.*no item metadata layout"):
        read_items(write("z.txt", "hello\n"))


@pytest.mark.parametrize("statistics", [True, False])
def test_parquet_null_id_names_row_with_or_without_statistics(tmp_path, statistics):
    # With statistics the clean-file shortcut sees the null count and falls back to the
    # scan that names the row; without them it must scan anyway.
    p = tmp_path / "log.parquet"
    df = pl.DataFrame({"u": [1, 2, 3], "i": [7, None, 9], "t": [1, 2, 3]})
    df.write_parquet(p, statistics=statistics)
    cols = Columns(user="u", item="i", time="t")
    with pytest.raises(ValueError, match=r"log\.parquet', line 2, column 'item_id'.*None"):
        read_interactions(p, "parquet", cols)
    clean = tmp_path / "clean.parquet"
    df.with_columns(pl.col("i").fill_null(8)).write_parquet(clean, statistics=statistics)
    assert read_interactions(clean, "parquet", cols).collect()["item_id"].to_list() == [7, 8, 9]


def test_parquet_float_id_is_checked_by_scan(tmp_path):
    p = tmp_path / "log.parquet"
    pl.DataFrame({"user_id": [1, 2], "item_id": [7.0, 7.5], "timestamp": [1, 2]}).write_parquet(p)
    with pytest.raises(ValueError, match=r"line 2, column 'item_id': cannot parse '7.5'"):
        read_interactions(p, "parquet")


def cli_error(capsys, path: Path, fmt: str, *flags: str) -> str:
    """Run ``recsys prepare`` on ``path``; check it fails with one line, and return it."""
    argv = ["prepare", "--input", str(path), "--format", fmt, "--output", str(path) + ".out"]
    assert main(["--log-level", "ERROR", *argv, *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("recsys prepare: error: "), err
    for advice in ("Traceback", "truncate_ragged_lines", "infer_schema", "ignore_errors"):
        assert advice not in err
    assert len(err) < 300, err
    assert not Path(str(path) + ".out").exists()
    return err.removeprefix("recsys prepare: error: ").rstrip("\n")


def test_cli_huge_timestamp_names_line_and_value(write, capsys):
    p = write("f.csv", HEADER + GOOD + "1,5,99999999999999999999999999999\n")
    assert cli_error(capsys, p, "csv") == (
        f"{str(p)!r}, line 14, column 'timestamp': cannot parse "
        "'99999999999999999999999999999'; expected an integer time or a date-time"
    )


def test_huge_ids_are_text(write):
    big = "99999999999999999999999999999"
    p = write("f.csv", HEADER + f"{big},{big}0,3\n")
    assert rows(read_interactions(p, "csv")) == [(big, big + "0", 3)]


def test_long_value_is_cut_in_message(write):
    p = write("f.csv", HEADER + "1,2," + "x" * 5000 + "\n")
    with pytest.raises(
        ValueError, match=r"'timestamp': cannot parse 'x{60}'\.\.\. \(5000 characters\)"
    ):
        read_interactions(p, "csv")


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        ([[1], [2]], "List(Int64)"),
        ([{"a": 1}, {"a": 2}], "Struct({'a': Int64})"),
        ([True, False], "Boolean"),
    ],
)
def test_cli_parquet_column_of_wrong_type_names_type(tmp_path, capsys, values, shown):
    p = tmp_path / "f.parquet"
    pl.DataFrame({"u": values, "item_id": [1, 2], "timestamp": [1, 2]}).write_parquet(p)
    assert cli_error(capsys, p, "parquet", "--user-col", "u") == (
        f"{str(p)!r}: column 'u' has type {shown}; expected integers or text"
    )


def test_cli_parquet_list_time_and_text_rating(tmp_path, capsys):
    p = tmp_path / "f.parquet"
    df = pl.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [[1]], "rating": [1.0]})
    df.write_parquet(p)
    assert cli_error(capsys, p, "parquet").endswith(
        "column 'timestamp' has type List(Int64); expected integer times, date-times or text"
    )
    df.with_columns(timestamp=pl.lit(1), rating=pl.lit([1.0])).write_parquet(p)
    assert cli_error(capsys, p, "parquet").endswith(
        "column 'rating' has type List(Float64); expected numbers"
    )


def test_parquet_float_ids_whole_accepted_fraction_named(tmp_path, capsys):
    p = tmp_path / "f.parquet"
    df = pl.DataFrame({"user_id": [1.0, 2.0], "item_id": [7.0, 8.0], "timestamp": [1, 2]})
    df.write_parquet(p)
    assert rows(read_interactions(p, "parquet")) == [(1, 7, 1), (2, 8, 2)]
    df.with_columns(pl.Series("item_id", [7.0, 8.25])).write_parquet(p)
    assert cli_error(capsys, p, "parquet") == (
        f"{str(p)!r}, line 2, column 'item_id': cannot parse '8.25'; expected a non-empty ID"
    )


def test_parquet_binary_ids_are_text_if_utf8(tmp_path, capsys):
    # Text written without its UTF-8 annotation (as Spark may) arrives as bytes.
    p = tmp_path / "f.parquet"
    df = pl.DataFrame({"user_id": [b"al", b"bo"], "item_id": [b"x", b"y"], "timestamp": [1, 2]})
    df.write_parquet(p)
    assert rows(read_interactions(p, "parquet")) == [("al", "x", 1), ("bo", "y", 2)]
    df.with_columns(pl.Series("item_id", [b"x", b"\xff\xfe"])).write_parquet(p)
    assert cli_error(capsys, p, "parquet") == (
        f"{str(p)!r}, line 2, column 'item_id': cannot parse "
        "b'\\xff\\xfe'; expected integers or UTF-8 text"
    )


def test_parquet_wide_integers(tmp_path, capsys):
    # u64 IDs past i64 are kept exactly, as text; a u64 time past i64 is out of range.
    p = tmp_path / "f.parquet"
    big = 2**64 - 1
    df = pl.DataFrame(
        {"user_id": [big, 1], "item_id": [1, 2], "timestamp": [1, 2]},
        schema={"user_id": pl.UInt64, "item_id": pl.Int64, "timestamp": pl.UInt64},
    )
    df.write_parquet(p)
    assert rows(read_interactions(p, "parquet")) == [(str(big), 1, 1), ("1", 2, 2)]
    df.with_columns(pl.Series("timestamp", [1, big], dtype=pl.UInt64)).write_parquet(p)
    assert cli_error(capsys, p, "parquet") == (
        f"{str(p)!r}, line 2, column 'timestamp': cannot parse '{big}'; "
        "expected an integer time or a date-time"
    )


def test_cli_file_of_another_format(tmp_path, write, capsys):
    csv = write("x.csv", HEADER + GOOD)
    assert cli_error(capsys, csv, "parquet") == (
        f"{str(csv)!r} is not a Parquet file but text; read it with --format csv"
    )
    pq = tmp_path / "x.parquet"
    pl.read_csv(csv).write_parquet(pq)
    assert cli_error(capsys, pq, "csv") == (
        f"{str(pq)!r} is a Parquet file, not text; read it with --format parquet"
    )
    junk = write("junk.parquet", random.Random(0).randbytes(2048))
    assert cli_error(capsys, junk, "parquet") == f"{str(junk)!r} is not a Parquet file"
    cut = write("cut.parquet", pq.read_bytes()[:-9])
    assert cli_error(capsys, cut, "parquet") == (
        f"{str(cut)!r} is not a whole Parquet file (it is cut short)"
    )


@pytest.mark.parametrize(("row", "found"), [("1,2,3,4", 4), ("1,2", 2), ("1,2,3,", 4)])
def test_cli_ragged_row_names_line_and_field_counts(write, capsys, row, found):
    p = write("f.csv", HEADER + GOOD + row + "\n" + GOOD)
    assert cli_error(capsys, p, "csv") == (
        f"{str(p)!r}, line 14: expected 3 fields separated by ',', found {found}"
    )


def test_cli_ragged_rows_in_other_text_formats(write, capsys):
    dat = write("ratings.dat", "1::2::3::4\n1::2::3\n")
    assert cli_error(capsys, dat, "movielens") == (
        f"{str(dat)!r}, line 2: expected 4 fields separated by '::', found 3"
    )
    sas = write("s.txt", "1 2\n1 2\n1  2\n")
    assert cli_error(capsys, sas, "sasrec") == (
        f"{str(sas)!r}, line 3: expected 2 fields separated by ' ', found 3"
    )
    empty = write("e.csv", HEADER + GOOD + "\n" + GOOD)
    assert cli_error(capsys, empty, "csv") == (
        f"{str(empty)!r}, line 14 is empty; expected 3 fields separated by ','"
    )


def test_csv_mixes_integer_and_iso_times_past_any_inference_window(write, capsys):
    # Times are read as text and parsed per value, so a late ISO time among integers is
    # accepted (as the cast reads both) instead of failing polars' type inference.
    p = write("f.csv", HEADER + GOOD * 50 + "a,b,2020-01-01T00:00:00\n")
    df = read_interactions(p, "csv").collect()
    assert df["timestamp"].to_list()[-2:] == [23, 1577836800]
    bad = write("g.csv", HEADER + GOOD * 50 + "a,b,2020-01-01T00:00:00\na,c,2020-13-45\n")
    assert cli_error(capsys, bad, "csv") == (
        f"{str(bad)!r}, line 603, column 'timestamp': cannot parse '2020-13-45'; "
        "expected an integer time or a date-time"
    )


def test_cli_unbalanced_quote_names_line(write, capsys):
    p = write("f.csv", HEADER + GOOD + 'a,"b,3\n' + GOOD * 20)
    assert cli_error(capsys, p, "csv") == (
        f"{str(p)!r}, line 14: a quote ('\"') opens a field that never closes"
    )


def test_quoted_line_breaks_keep_line_numbers_exact(write):
    p = write("f.csv", HEADER + 'a,"b\nc",1\na,d,soon\n')
    with pytest.raises(ValueError, match=r"line 4, column 'timestamp': cannot parse 'soon'"):
        read_interactions(p, "csv")


@pytest.mark.parametrize("fmt", ["csv", "movielens", "sasrec"])
def test_cli_binary_input_is_not_text(write, capsys, fmt):
    p = write("x.txt", random.Random(0).randbytes(2048).replace(b"\x00", b"") + b"\x00")
    assert cli_error(capsys, p, fmt) == f"{str(p)!r} is not a text file (it holds NUL bytes)"
    gz = write("x.csv", gzip.compress((HEADER + GOOD).encode()))
    assert cli_error(capsys, gz, fmt) == (
        f"{str(gz)!r} is gzip-compressed; expected plain text (unpack it first)"
    )


def test_cli_bytes_that_are_not_utf8_name_line(write, capsys):
    p = write("x.csv", (HEADER + "Café,1,2\n").encode("latin-1"))
    assert cli_error(capsys, p, "csv") == (
        f"{str(p)!r} is not a text file: line 2 holds bytes that are not UTF-8 text"
    )
    # Past the first 64 KB only polars' own read meets the byte; the scan finds its line.
    late = write("late.csv", (HEADER + GOOD * 6000).encode() + b"\xe9,1,2\n")
    assert cli_error(capsys, late, "csv") == (
        f"{str(late)!r}, line 72002 holds bytes that are not UTF-8 text"
    )


def test_cli_other_library_errors_become_one_short_line(tmp_path, monkeypatch, capsys):
    p = tmp_path / "f.parquet"
    pl.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [1]}).write_parquet(p)

    def broken(*args, **kwargs):
        raise pl.exceptions.ComputeError("bad page\nat 7\n\nConsider setting 'x=True'" + "y" * 999)

    monkeypatch.setattr(readers.pl, "scan_parquet", broken)
    assert cli_error(capsys, p, "parquet") == (
        f"{str(p)!r} cannot be read as Parquet: bad page at 7"
    )


def test_parquet_corrupt_data_fails_in_read_despite_clean_statistics(tmp_path):
    # Footer and statistics intact, a column's pages garbled: the statistics alone would
    # call the file clean, so the read must decode it to fail here and not in a later step.
    p = tmp_path / "f.parquet"
    n = 1000
    df = pl.DataFrame({"user_id": range(n), "item_id": [i % 97 for i in range(n)], "timestamp": 1})
    df.write_parquet(p, compression="zstd")
    chunk = pq.read_metadata(p).row_group(0).column(1)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    end = start + chunk.total_compressed_size
    data = bytearray(p.read_bytes())
    data[(start + end) // 2 : end] = b"\xff" * (end - (start + end) // 2)
    p.write_bytes(data)
    with pytest.raises(ValueError, match=r"f\.parquet' cannot be read as Parquet: parquet: "):
        read_interactions(p, "parquet")


def test_csv_late_fractional_rating_is_read(write):
    # Ratings inferred as integers from the first 100 rows; the late "4.5" makes the
    # reader fall back to text rather than fail.
    rated = "user_id,item_id,timestamp,rating\n" + "u,i,1,4\n" * 150 + "u,j,2,4.5\n"
    df = read_interactions(write("r.csv", rated), "csv").collect()
    assert df["rating"].to_list()[-2:] == [4.0, 4.5]


def test_cli_separator_must_be_one_character(write, capsys):
    p = write("f.csv", HEADER + GOOD)
    assert cli_error(capsys, p, "csv", "--separator", "::") == (
        "separator '::' is not one character; expected e.g. ',' or ';'"
    )


def prepare_with_items(capsys, write, items: Path) -> tuple[int, str, Path]:
    """Run ``recsys prepare`` on a valid log with ``items``; return (exit, stderr, output)."""
    log = write("log.csv", HEADER + GOOD)
    out = items.parent / "out"
    argv = ["prepare", "--input", str(log), "--format", "csv", "--items", str(items)]
    code = main(["--log-level", "ERROR", *argv, "--output", str(out)])
    return code, capsys.readouterr().err, out


ITEMS_TSV = "item_id\ttitle\tgenres\n"
BAD_ITEMS = {
    "ragged.tsv": (
        ITEMS_TSV + "i0\tA\tX\ni1\tB\tX\tY\n",
        "line 3: expected 3 fields separated by '\\t', found 4",
    ),
    "short.tsv": (ITEMS_TSV + "i0\tA\n", "line 2: expected 3 fields separated by '\\t', found 2"),
    "binary.tsv": (random.Random(0).randbytes(2048), " is not a text file (it holds NUL bytes)"),
    "mess.tsv": (
        (ITEMS_TSV + "i0\tCafé\tX\n").encode("latin-1") + b"i1\t\x8d\x01\x9b\tX\n",
        " is not a text file: line 3 holds a control character ('\\x01')",
    ),
    "empty.tsv": ("", " is empty; expected item metadata"),
    "header.tsv": (ITEMS_TSV + "\n", " has no item rows"),
    "nogenres.tsv": ("item_id\ttitle\ni0\tA\n", ": the header has no 'genres' column"),
    "repeat.tsv": (ITEMS_TSV + "i0\tA\tX\ni1\tB\tX\ni0 \tC\tX\n", "line 4: item ID 'i0' is "),
    "packed.tsv": (gzip.compress(ITEMS_TSV.encode()), " is gzip-compressed; expected plain "),
    "movies.dat": ("1::Heat (1995)::Action\n2::Up\n", "line 2: expected 3 fields separated by "),
    "movies.csv": ('movieId,title,genres\n1,"Heat"x,Action\n', "line 2: a quote ('\"') ends "),
    "other.txt": ("hello\n", ": first line 'hello' matches no item metadata layout"),
}


@pytest.mark.parametrize("name", sorted(BAD_ITEMS))
def test_cli_bad_items_file_is_one_line(write, capsys, name):
    data, message = BAD_ITEMS[name]
    items = write(name, data)
    code, err, out = prepare_with_items(capsys, write, items)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("recsys prepare: error: "), err
    assert "Traceback" not in err and len(err) < 300, err
    assert str(items) in err and message in err, err
    assert not out.exists()


def test_cli_parquet_items_file_is_one_line(tmp_path, write, capsys):
    items = tmp_path / "items.tsv"
    pl.DataFrame({"item_id": ["i0"], "title": ["A"], "genres": ["X"]}).write_parquet(items)
    code, err, _ = prepare_with_items(capsys, write, items)
    assert (
        code == 2 and err == f"recsys prepare: error: {str(items)!r} is a Parquet file, not text\n"
    )


def test_cli_items_tsv_attaches_titles(write, capsys):
    # Blank lines and a UTF-8 BOM are accepted; items missing from the file get no title.
    items = write(
        "items.tsv", "\ufeff" + ITEMS_TSV + "i0\tHeat\tAction Crime\n\ni1\tUp\tAnimation\n"
    )
    code, err, out = prepare_with_items(capsys, write, items)
    assert (code, err) == (0, "")
    vocab = pl.read_parquet(out / "vocab_items.parquet").sort("item_id")
    assert vocab.select("item_id", "title", "genres").rows() == [
        ("i0", "Heat", ["Action", "Crime"]),
        ("i1", "Up", ["Animation"]),
        ("i2", None, None),
        ("i3", None, None),
    ]
