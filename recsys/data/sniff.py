"""Sniffing input files: what kind of file it is, and where a text file goes wrong.

The readers call these before handing a file to polars, so that a file of the wrong kind
(binary, compressed, UTF-16, Parquet given as text or text as Parquet) gets one clear line
instead of whatever the parser makes of it; and after polars fails on a text file, to find
the first malformed line by walking the raw bytes the way polars splits them. Only bytes
are inspected here: values are parsed (and their errors reported) by the readers.
"""

from __future__ import annotations

import codecs
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

# Enough of a file to tell text from binary; a multi-byte character may be cut at its end.
_HEAD_BYTES = 1 << 16
# The scan that locates a malformed line reads this much at a time.
_SCAN_BYTES = 1 << 24
# Magic numbers of compressed files and archives someone may pass instead of the text.
_PACKED = {
    b"\x1f\x8b": "gzip-compressed",
    b"\x28\xb5\x2f\xfd": "zstd-compressed",
    b"BZh": "bzip2-compressed",
    b"\xfd7zXZ\x00": "xz-compressed",
    b"PK\x03\x04": "a zip archive",
}
# Control characters no text file of ours holds (tab, line feed and carriage return do).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class TextLayout:
    """How polars splits a text file into fields: what :func:`find_bad_line` mirrors.

    ``per_field`` is the number of separator bytes between two fields as the user sees
    them: 2 for ``ratings.dat``, read as ``:``-separated with empty fields in between.
    ``skip_blank`` says that empty lines are allowed (and dropped by the reader).
    """

    separator: str
    n_fields: int
    quote: str | None = None
    shown: str | None = None
    per_field: int = 1
    skip_blank: bool = False

    def fields(self, separators: int) -> int:
        """Fields as the user counts them, given the separator bytes on a line."""
        return separators // self.per_field + 1


def check_file(path: str | Path, expected: str = "interaction rows") -> Path:
    """Check that ``path`` is an existing, non-empty file.

    Parameters
    ----------
    path : str or Path
        The file.
    expected : str
        What the file should hold, named in the message for an empty file.

    Returns
    -------
    Path
        ``path`` as a ``Path``.

    Raises
    ------
    ValueError
        If it does not exist, is a folder, or is empty.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"input file {str(p)!r} does not exist")
    if p.is_dir():
        raise ValueError(f"input {str(p)!r} is a folder; expected a file")
    if p.stat().st_size == 0:
        raise ValueError(f"input file {str(p)!r} is empty; expected {expected}")
    return p


def _check_head(p: Path, head: bytes, parquet_advice: str) -> None:
    for magic, kind in _PACKED.items():
        if head.startswith(magic):
            raise ValueError(f"{str(p)!r} is {kind}; expected plain text (unpack it first)")
    if head.startswith(b"PAR1"):
        raise ValueError(f"{str(p)!r} is a Parquet file, not text{parquet_advice}")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError(f"{str(p)!r} is UTF-16 text; expected UTF-8 text")
    if b"\x00" in head:
        raise ValueError(f"{str(p)!r} is not a text file (it holds NUL bytes)")


def check_text(path: Path) -> None:
    """Check that a file polars is to read as text starts like UTF-8 text.

    polars would read binary data as one huge "column name" or fail on a byte it meets
    late; the first 64 KB tell a text file from anything else at no cost. A bad byte
    further on is found by :func:`find_bad_line` once polars has failed on it.

    Parameters
    ----------
    path : Path
        The file.

    Raises
    ------
    ValueError
        If it is compressed, Parquet, UTF-16 or binary, or its first 64 KB are not UTF-8.
    """
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    _check_head(path, head, "; read it with --format parquet")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < _HEAD_BYTES)
    except UnicodeDecodeError as e:
        line = head.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{str(path)!r} is not a text file: line {line} holds bytes that are not UTF-8 text"
        ) from None


def read_text(path: Path) -> str:
    """Read a whole (small) text file that is UTF-8 or, failing that, Latin-1.

    The older MovieLens metadata files are Latin-1, which decodes any bytes at all, so
    binary data is told from text by its control characters instead.

    Parameters
    ----------
    path : Path
        The file.

    Returns
    -------
    str
        Its text, line breaks unchanged.

    Raises
    ------
    ValueError
        If it is compressed, Parquet, UTF-16, or holds control characters; the message
        names the first line that does.
    """
    raw = path.read_bytes()
    _check_head(path, raw[:_HEAD_BYTES], "")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    bad = _CONTROL.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        raise ValueError(
            f"{str(path)!r} is not a text file: line {line} holds a control character "
            f"({bad.group()!r})"
        )
    return text


def check_parquet(path: Path) -> None:
    """Check that a file starts and ends like a whole Parquet file.

    Without these marks polars' message is about the file's end, which confuses more than
    it helps.

    Parameters
    ----------
    path : Path
        The file.

    Raises
    ------
    ValueError
        If it is cut short, is text, or is something else.
    """
    # A Parquet file starts with "PAR1" and ends with "PAR1" (or "PARE" when encrypted).
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(min(size, _HEAD_BYTES))
        f.seek(max(size - 4, 0))
        tail = f.read(4)
    if size >= 12 and head.startswith(b"PAR1") and tail in (b"PAR1", b"PARE"):
        return
    if head.startswith(b"PAR1"):
        raise ValueError(f"{str(path)!r} is not a whole Parquet file (it is cut short)")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        # A cut multi-byte character at the end of the head is still text.
        if size <= _HEAD_BYTES or e.start < len(head) - 3:
            raise ValueError(f"{str(path)!r} is not a Parquet file") from None
    if b"\x00" in head:
        raise ValueError(f"{str(path)!r} is not a Parquet file")
    raise ValueError(f"{str(path)!r} is not a Parquet file but text; read it with --format csv")


def first_line(path: Path) -> str:
    """The first line of a file, to recognise its layout by.

    Parameters
    ----------
    path : Path
        The file.

    Returns
    -------
    str
        At most its first 4 KB, without the line break or a UTF-8 BOM; bytes that are not
        UTF-8 become U+FFFD (the line is looked at, never parsed).
    """
    with open(path, "rb") as f:
        line = f.readline(4096).decode("utf-8", errors="replace").rstrip("\r\n")
    return line.removeprefix("\ufeff")


def first_non_utf8(values: pl.Series) -> int | None:
    """Index of the first value of a ``Binary`` series that is not UTF-8, if any.

    Parquet text written without its UTF-8 annotation (e.g. by Spark) arrives as bytes.
    polars' cast fails without saying where, so the value is found by bisection: a few
    dozen casts, no loop over rows.

    Parameters
    ----------
    values : Series
        ``Binary`` values.

    Returns
    -------
    int or None
        0-based index, or ``None`` when every value is UTF-8.
    """
    try:
        values.cast(pl.String)
        return None
    except pl.exceptions.ComputeError:
        pass
    lo, hi = 0, len(values)  # the first bad value is in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            values.slice(lo, mid - lo).cast(pl.String)
            lo = mid
        except pl.exceptions.ComputeError:
            hi = mid
    return lo


def find_bad_line(
    data: Path | bytes, layout: TextLayout, record: int | None = None
) -> tuple[int | None, str | None]:
    """Walk a text file's records the way polars splits them and find the first problem.

    Mirrors polars' parser: a quote at the start of a field opens a quoted field, in which
    separators and line breaks are text, ``""`` is a quote, and the closing quote must end
    the field; a quote inside a field is text, but polars' splitter still pairs it with the
    next quote. Vectorised over 16 MB blocks, about 1 s per GB: the readers run it after
    polars fails on a file, or before they read a small one.

    Parameters
    ----------
    data : Path or bytes
        The file, or its contents.
    layout : TextLayout
        How polars splits it.
    record : int, optional
        0-based record (header included) to stop at; ``None`` scans the whole file.

    Returns
    -------
    (int or None, str or None)
        ``(line, problem)`` for the first record up to ``record`` that is empty, has the
        wrong number of fields, misplaces a quote, or holds bytes that are not UTF-8; else
        ``(line of record, None)``, or ``(None, None)`` when the file ends first.
    """
    sep = ord(layout.separator)
    quote = ord(layout.quote) if layout.quote else -1
    n_seps = layout.n_fields - 1
    expected = layout.fields(n_seps)
    shown = layout.shown or layout.separator
    q = f"a quote ({layout.quote!r})"
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1  # line number at the start of the block
    rec = 0  # index of the record that is open at the start of the block
    rec_line, rec_seps, rec_len = 1, 0, 0
    last_byte = 10  # as if a line ended just before the file
    inside, open_line, open_at_start = 0, 0, True  # the quote left open by earlier blocks

    def record_problem(start: int, end: int, seps: int, length: int, last: int) -> str | None:
        if length == 0 or (length == 1 and last == 13):
            if layout.skip_blank:
                return None
            if n_seps == 0 and layout.shown:  # whole lines: the layout says what one holds
                return f"line {start} is empty; expected {layout.shown}"
            return f"line {start} is empty; expected {expected} fields separated by {shown!r}"
        if seps == n_seps:
            return None
        note = f" (quoted text runs on to line {end})" if end > start else ""
        found = layout.fields(seps)
        return (
            f"line {start}: expected {expected} fields separated by {shown!r}, found {found}{note}"
        )

    with open(data, "rb") if isinstance(data, Path) else io.BytesIO(data) as f:
        block = f.read(_SCAN_BYTES)
        while block:
            ahead = f.read(_SCAN_BYTES)
            bad_utf8 = None
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                # e.start counts from the bytes the decoder held back from the last block.
                bad_utf8 = max(e.start - (len(e.object) - len(block)), 0)
            a = np.frombuffer(block, np.uint8)[:bad_utf8]
            nl_all = np.flatnonzero(a == 10)
            qpos = np.flatnonzero(a == quote)
            sp = np.flatnonzero(a == sep)
            # Separators and line breaks between a quote and its pair are text.
            nl = nl_all[(inside + np.searchsorted(qpos, nl_all)) % 2 == 0]
            sp = sp[(inside + np.searchsorted(qpos, sp)) % 2 == 0]

            # Misplaced quotes: (record in this block, line, problem) of the first one.
            first_quote = None
            if len(qpos):
                qline = line + np.searchsorted(nl_all, qpos)
                closes = (inside + np.arange(len(qpos))) % 2 == 1
                prev = np.where(qpos > 0, a[qpos - 1].astype(np.int16), last_byte)
                ext = np.frombuffer(block + ahead[:1], np.uint8)
                nxt = np.full(len(qpos), -1, np.int16)  # -1: the end of the file
                has_next = qpos + 1 < len(ext)
                nxt[has_next] = ext[qpos[has_next] + 1]
                at_start = ~closes & np.isin(prev, (sep, 10, quote))
                # A closing quote pairs with the quote before it, or one left open earlier.
                opener_at_start = np.concatenate(([open_at_start], at_start[:-1]))
                opener_line = np.concatenate(([open_line], qline[:-1]))
                bad_end = closes & opener_at_start & ~np.isin(nxt, (sep, 10, 13, quote, -1))
                run_on = closes & ~opener_at_start & (qline > opener_line)
                hits = np.flatnonzero(bad_end | run_on)
                if len(hits):
                    j = int(hits[0])
                    if bad_end[j]:
                        msg = f"{q} ends a quoted field but more text follows it"
                        first_quote = (int(qline[j]), f"line {qline[j]}: {msg}")
                    else:
                        msg = f"{q} inside a field runs on to line {qline[j]}; expected quotes "
                        msg += "only around whole fields"
                        first_quote = (int(opener_line[j]), f"line {opener_line[j]}: {msg}")
                    first_quote = (int(np.searchsorted(nl, qpos[j])), *first_quote)

            seps = np.diff(np.searchsorted(sp, nl), prepend=0)
            first_record = None
            if len(nl):
                seps[0] += rec_seps
                starts = np.concatenate(([0], nl[:-1] + 1))
                lengths = nl - starts
                lengths[0] += rec_len
                start_lines = line + np.searchsorted(nl_all, starts - 1, side="right")
                start_lines[0] = rec_line
                end_lines = line + np.searchsorted(nl_all, nl)
                lasts = np.where(nl > 0, a[np.maximum(nl - 1, 0)], last_byte)
                empty = (lengths == 0) | ((lengths == 1) & (lasts == 13))
                bad = seps != n_seps
                bad = bad & ~empty if layout.skip_blank else bad | empty
                hits = np.flatnonzero(bad)
                if len(hits):
                    k = int(hits[0])
                    args = (int(start_lines[k]), int(end_lines[k]), int(seps[k]))
                    msg = record_problem(*args, int(lengths[k]), int(lasts[k]))
                    first_record = (k, args[0], msg)
            found = min(
                (p for p in (first_quote, first_record) if p is not None),
                key=lambda p: (p[0], p is first_record),  # a quote explains a bad count
                default=None,
            )
            if found is not None and (record is None or rec + found[0] <= record):
                return found[1], found[2]
            if record is not None and record - rec < len(nl):
                return int(start_lines[record - rec]), None
            if len(nl):
                rec += len(nl)
                rec_line = line + int(np.searchsorted(nl_all, nl[-1], side="right"))
                rec_seps = len(sp) - int(np.searchsorted(sp, nl[-1]))
                rec_len = len(a) - int(nl[-1]) - 1
            else:
                rec_seps += len(sp)
                rec_len += len(a)
            inside = (inside + len(qpos)) % 2
            if inside and len(qpos):
                open_line, open_at_start = int(qline[-1]), bool(at_start[-1])
            if len(a):
                last_byte = int(a[-1])
            if bad_utf8 is not None:
                bad_line = line + len(nl_all)
                return bad_line, f"line {bad_line} holds bytes that are not UTF-8 text"
            line += len(nl_all)
            block = ahead
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return line, f"line {line} holds bytes that are not UTF-8 text"  # a cut character
    if inside:
        return open_line, f"line {open_line}: {q} opens a field that never closes"
    if rec_len > 0 and (record is None or record >= rec):
        msg = record_problem(rec_line, line, rec_seps, rec_len, last_byte)
        if msg is not None or record == rec:
            return rec_line, msg
    return None, None
