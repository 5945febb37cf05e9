from __future__ import annotations

import polars as pl
import pytest

from recsys.data.readers import Columns, detect_movielens_layout, read_interactions, read_items


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
        "item_id\ttitle\trelease_year\tgenres\n1\tToy Story\t1995\tAnimation Children's Comedy\n",
    )
    assert read_items(p).rows() == [("1", "Toy Story", ["Animation", "Children's", "Comedy"])]


def test_u_item_latin1(write):
    flags = ["0"] * 19
    flags[5] = "1"  # Comedy
    line = "|".join(["2", "Café (1995)", "01-Jan-1995", "", "http://x", *flags]) + "\n"
    p = write("u.item", line.encode("latin-1"))
    assert read_items(p).rows() == [("2", "Café (1995)", ["Comedy"])]


def test_movies_dat_and_csv(write):
    dat = write("movies.dat", "1::Toy Story (1995)::Animation|Comedy\n")
    assert read_items(dat).rows() == [("1", "Toy Story (1995)", ["Animation", "Comedy"])]
    csv = write("movies.csv", 'movieId,title,genres\n3,"Heat, The (1995)",Action\n')
    assert read_items(csv).rows() == [("3", "Heat, The (1995)", ["Action"])]


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
