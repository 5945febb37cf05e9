"""Fuzz ``recsys prepare`` with mutated CSV and Parquet inputs and item metadata files.

Whatever the bytes, the command either succeeds (exit 0, a manifest written) or fails with
exit 2 and one ``recsys prepare: error: ...`` line, touching nothing but its output
folder. Any other exception, a traceback, or a second line of output fails the test.
More (and new, random) examples: ``RECSYS_FUZZ_EXAMPLES=2000 pytest tests/test_prepare_fuzz.py``.

What Python writes is checked (capsys), not the process's raw stderr: on some corrupt
Parquet files polars 2.1 panics, and Rust prints the panic there before polars raises the
exception that becomes our one line; on a few it even aborts the process (a garbled page
header asks for a huge allocation). Neither can be caught by a reader.
"""

from __future__ import annotations

import io
import itertools
import os
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from recsys.cli import main
from recsys.data import sniff

EXAMPLES = int(os.environ.get("RECSYS_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the checkout
    derandomize=EXAMPLES <= 100,  # the same examples on every plain run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# 8 users x 5 events, enough to pass the default leave-one-out filters.
CSV = "user_id,item_id,timestamp,rating\n" + "".join(
    f"u{u},i{(u * 3 + k) % 7},{1000 + 10 * u + k},{1 + (u + k) % 5}\n"
    for u in range(8)
    for k in range(5)
)
INSERTS = [b'"', b",", b"\n", b"\r\n", b"\x00", b"\xff", b"\xc3", b" ", b"::", b"-1", b"1e400"]
INSERTS += [b"9" * 30, b"2020-01-01T00:00:00", b"x" * 3000, b'"a\n,b"']

_examples = itertools.count()


def _parquet_bytes(compression: str) -> bytes:
    buf = io.BytesIO()
    pl.read_csv(CSV.encode()).write_parquet(buf, compression=compression)
    return buf.getvalue()


PARQUET = {c: _parquet_bytes(c) for c in ("zstd", "snappy", "uncompressed")}

# Metadata for the log's items i0..i6 in each --items layout, with its field separator.
_FLAGS = "|0" * 8 + "|1" + "|0" * 10  # Drama
ITEMS = {
    "items.tsv": (
        "item_id\ttitle\tgenres\n" + "".join(f"i{k}\tTitle {k}\tDrama Comedy\n" for k in range(7)),
        b"\t",
    ),
    "movies.csv": (
        "movieId,title,genres\n"
        + "".join(f'i{k},"Title, {k} (1995)",Drama|Comedy\n' for k in range(7)),
        b",",
    ),
    "movies.dat": ("".join(f"i{k}::Title: {k} (1995)::Drama|Comedy\n" for k in range(7)), b"::"),
    "u.item": ("".join(f"i{k}|Café {k}|01-Jan-1995||x{_FLAGS}\n" for k in range(7)), b"|"),
}
# All ASCII but u.item, which is Latin-1 as in the MovieLens 100K download.
ITEMS = {k: (text.encode("latin-1"), sep) for k, (text, sep) in ITEMS.items()}


def _snapshot(folder: Path, out: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of everything under ``folder`` except the output folder."""
    seen = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if Path(root, d) != out]
        for name in dirs + files:
            st_ = Path(root, name).stat()
            seen[str(Path(root, name).relative_to(folder))] = (st_.st_size, st_.st_mtime_ns)
    return seen


def _prepare(
    tmp_path: Path,
    data: bytes,
    fmt: str,
    capsys,
    name: str,
    items: tuple[str, bytes] | None = None,
) -> int:
    """Run the CLI on ``data`` (and an ``--items`` file ``(name, bytes)``), check the
    outcome is a success or one clean error, and return the exit status."""
    case = tmp_path / f"case{next(_examples)}"
    case.mkdir()
    src = case / name
    src.write_bytes(data)
    argv = ["--log-level", "ERROR", "prepare", "--input", str(src), "--format", fmt]
    if items is not None:
        (case / items[0]).write_bytes(items[1])
        argv += ["--items", str(case / items[0])]
    out = case / "out"
    before = _snapshot(case, out)
    capsys.readouterr()
    code = main([*argv, "--output", str(out)])
    captured = capsys.readouterr()
    if currently_in_test_context():
        what = f"{fmt} --items {items[0]}" if items else fmt
        event(f"{what}: exit {code}")  # see --hypothesis-show-statistics
    assert _snapshot(case, out) == before, f"files beside the output changed for {data!r}"
    assert src.read_bytes() == data
    if code == 0:
        assert (out / "manifest.json").is_file()
        assert captured.err == ""
        return code
    assert code == 2, (code, data)
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("recsys prepare: error: ") and len(lines[0]) > 30, lines
    assert len(lines[0]) < 600, lines[0]
    assert not out.exists()
    return code


def _apply(data: bytes, edits: list[tuple[str, float, int]], sep: bytes = b",") -> bytes:
    """Apply byte- and line-level edits; positions are fractions of the current length,
    fields are separated by ``sep``."""
    for kind, where, n in edits:
        at = int(where * len(data))
        if kind == "flip" and data:
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([data[at] ^ (n % 255 + 1)]) + data[at + 1 :]
        elif kind == "insert":
            data = data[:at] + INSERTS[n % len(INSERTS)] + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + 1 + n % 40 :]
        elif kind == "truncate":
            data = data[:at]
        elif kind == "crlf":
            data = data.replace(b"\n", b"\r\n")
        else:
            lines = data.split(b"\n")
            i = min(int(where * len(lines)), len(lines) - 1)
            fields = lines[i].split(sep)
            j = n % len(fields)
            if kind == "drop_field":
                del fields[j]
            elif kind == "dup_field":
                fields.insert(j, fields[j])
            elif kind == "swap_columns":
                # Swapped in every line, header included: still valid, names now lie.
                k = (j + 1) % len(fields)
                for m, line in enumerate(lines):
                    f = line.split(sep)
                    if len(f) > max(j, k):
                        f[j], f[k] = f[k], f[j]
                        lines[m] = sep.join(f)
                fields = lines[i].split(sep)
            elif kind == "empty_line":
                lines.insert(i, b"")
            lines[i] = sep.join(fields)
            data = b"\n".join(lines)
    return data


TEXT_EDITS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                *("flip", "insert", "delete", "truncate", "crlf"),
                *("drop_field", "dup_field", "swap_columns", "empty_line"),
            ]
        ),
        st.floats(0, 1),
        st.integers(0, 1000),
    ),
    min_size=1,
    max_size=4,
)


@FUZZ
@given(edits=TEXT_EDITS)
def test_mutated_csv_prepares_or_fails_cleanly(tmp_path, capsys, edits):
    _prepare(tmp_path, _apply(CSV.encode(), edits), "csv", capsys, "log.csv")


@FUZZ
@given(name=st.sampled_from(sorted(ITEMS)), edits=TEXT_EDITS)
def test_mutated_items_file_prepares_or_fails_cleanly(tmp_path, capsys, name, edits):
    data, sep = ITEMS[name]
    items = (name, _apply(data, edits, sep))
    _prepare(tmp_path, CSV.encode(), "csv", capsys, "log.csv", items=items)


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(["flip", "insert", "delete"]), st.floats(0, 1), st.integers()),
        min_size=1,
        max_size=3,
    ),
    fmt=st.sampled_from(["movielens", "sasrec", "sequences"]),
)
def test_mutated_headerless_text_prepares_or_fails_cleanly(tmp_path, capsys, edits, fmt):
    lines = CSV.split("\n")[1:]
    if fmt == "movielens":  # the 100K u.data layout: user, item, rating, time
        text = "".join(
            "\t".join((u, i, r, t)) + "\n"
            for u, i, t, r in (line.split(",") for line in lines if line)
        )
    elif fmt == "sequences":  # one user per line, items oldest first
        users: dict[str, list[str]] = {}
        for line in lines:
            if line:
                user, item = line.split(",")[:2]
                users.setdefault(user, []).append(item)
        text = "".join(f"{u} {' '.join(items)}\n" for u, items in users.items())
    else:
        text = "".join(" ".join(line.split(",")[:2]) + "\n" for line in lines if line)
    _prepare(tmp_path, _apply(text.encode(), edits), fmt, capsys, "u.data")


@FUZZ
@given(
    compression=st.sampled_from(sorted(PARQUET)),
    cut=st.one_of(st.none(), st.floats(0, 1)),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4),
)
def test_mutated_parquet_prepares_or_fails_cleanly(tmp_path, capsys, compression, cut, flips):
    data = bytearray(PARQUET[compression])
    for where, x in flips:
        data[min(int(where * len(data)), len(data) - 1)] ^= x
    if cut is not None:
        data = data[: int(cut * len(data))]
    if data:
        _prepare(tmp_path, bytes(data), "parquet", capsys, "log.parquet")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_unmutated_inputs_prepare(tmp_path, capsys, fmt):
    data = CSV.encode() if fmt == "csv" else PARQUET["zstd"]
    assert _prepare(tmp_path, data, fmt, capsys, f"log.{fmt}") == 0


@pytest.mark.parametrize("name", sorted(ITEMS))
def test_unmutated_items_files_prepare(tmp_path, capsys, name):
    items = (name, ITEMS[name][0])
    assert _prepare(tmp_path, CSV.encode(), "csv", capsys, "log.csv", items=items) == 0
    titles = pl.read_parquet(next(tmp_path.glob("case*/out/vocab_items.parquet")))["title"]
    assert titles.null_count() == 0


@settings(max_examples=4 * EXAMPLES, deadline=None, database=None, derandomize=True)
@given(
    data=st.lists(st.sampled_from([b"a", b"1", b",", b"\n", b'"', b"\r", b"\xc3\xa9", b"\xff"])),
    record=st.one_of(st.none(), st.integers(0, 6)),
    block=st.integers(1, 9),
)
def test_bad_line_scan_does_not_depend_on_block_size(tmp_path_factory, data, record, block):
    # The scan reads 16 MB blocks; state carried across block ends must give the same
    # answer as reading the whole file at once.
    path = tmp_path_factory.mktemp("scan") / "f.csv"
    path.write_bytes(b"".join(data))
    layout = sniff.TextLayout(",", 3, quote='"')
    whole = sniff.find_bad_line(path, layout, record)
    saved = sniff._SCAN_BYTES
    try:
        sniff._SCAN_BYTES = block
        assert sniff.find_bad_line(path, layout, record) == whole
    finally:
        sniff._SCAN_BYTES = saved
