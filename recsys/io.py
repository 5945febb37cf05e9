"""Safe outputs: atomic writes, checksums, and the checks that keep a user's files safe.

Rules every job follows (see the README's "Nothing lost"):

* an output folder is replaced only when it holds nothing but our own previous output
  (:func:`check_output_folder`); anything else is refused with one clear line;
* everything is written to a temporary sibling ``.NAME.tmp-PID-XXXXXXXX`` and renamed into
  place (:func:`atomic_dir`, :func:`atomic_file`); a killed job's leftovers are recognised
  by that pattern and removed by the next run on the same output;
* text from users that becomes a path, an experiment or a registry name is checked by
  :func:`safe_name` first.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
# What a temporary sibling of ours looks like: ".NAME.tmp-PID-HEX". Only this exact shape
# is ever removed, and only for a NAME the job writes and a process that is gone.
_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


def sha256_file(path: str | os.PathLike) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks.

    Parameters
    ----------
    path : path-like
        File to hash.

    Returns
    -------
    str
        Hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def quote(value: Any, limit: int = 80) -> str:
    """``repr`` of ``value``, cut to ``limit`` characters so a huge value stays one short line.

    Examples
    --------
    ``quote("x" * 1000, limit=10)`` → ``'xxxxxxxxxx'... (1000 characters)``; ``quote(5)``
    → ``5``; ``quote(None)`` → ``None`` (not text that reads as if it were in the file).
    """
    # A string is cut, then quoted; anything else is shown as its repr, cut.
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(value)
    head = repr(text[:limit]) if isinstance(value, str) else text[:limit]
    return f"{head}... ({len(text)} characters)"


def safe_name(value: str, what: str) -> str:
    """Check a name that becomes part of a path, an MLflow experiment or a registry name.

    Parameters
    ----------
    value : str
        The name.
    what : str
        What it names (quoted in the error), e.g. ``"dataset name"``.

    Returns
    -------
    str
        ``value`` unchanged.

    Raises
    ------
    ValueError
        Unless ``value`` is 1-100 letters, digits, ``.``, ``_``, ``+`` or ``-``, starting
        with a letter or digit.
    """
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{what} {quote(value)} is not allowed: use 1-100 letters, digits, '.', '_', '+' "
            "or '-', starting with a letter or digit"
        )
    return value


def name_from_text(text: str) -> str:
    """A :func:`safe_name` made from arbitrary text (a file stem): other characters → ``-``.

    Examples
    --------
    ``name_from_text("my events (2024)")`` → ``"my-events-2024"``.
    """
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-._+")[:100]
    return name or "dataset"


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove temporaries a killed run left in ``folder`` of the outputs named ``name``
    (an ``fnmatch`` pattern such as ``part-*.parquet``).

    A temporary is stale when the process that made it is gone; ours and other live
    processes' are kept. Only names of our own exact pattern are touched.

    Returns
    -------
    list of Path
        What was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        m = _TMP.match(entry.name)
        if m is None or not fnmatch.fnmatchcase(m["name"], name):
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_folder(
    path: str | os.PathLike,
    *,
    kind: str,
    owned: Sequence[str],
    is_ours: Callable[[Path], bool],
    inputs: Sequence[str | os.PathLike] = (),
) -> Path:
    """Refuse an output folder whose replacement could lose anything we did not write.

    Allowed: a path that does not exist yet, an empty folder, or a folder that
    ``is_ours`` recognises and whose every file matches one of the ``owned`` patterns.
    Stale temporaries of the output are removed.

    Parameters
    ----------
    path : path-like
        The output folder.
    kind : str
        What the folder holds, for messages (``"a prepared dataset"``).
    owned : sequence of str
        ``fnmatch`` patterns of the relative paths (``/``-separated) the job writes.
    is_ours : callable
        Given the folder, whether its marker file shows our own earlier output.
    inputs : sequence of path-like
        The job's input files: the output may not contain any of them.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        With one line naming the path and why it is refused.
    """
    p = _output_path(path, "folder")
    full = p.resolve()
    cwd = Path.cwd().resolve()
    if _inside(cwd, full) or full == Path.home().resolve():
        raise ValueError(
            f"output {str(path)!r} is the current folder, your home or one of their parents; "
            "name a new folder for the output, e.g. 'data/out'"
        )
    for inp in inputs:
        if _inside(Path(inp).resolve(), full):
            raise ValueError(
                f"output folder {str(path)!r} contains the input {str(inp)!r}; write the "
                "output to another folder"
            )
    if p.exists() and not p.is_dir():
        raise ValueError(f"output {str(path)!r} is a file; expected a folder for {kind}")
    _check_writable_parent(p)
    if p.is_dir():
        foreign = foreign_files(p, owned)
        if foreign or (any(p.iterdir()) and not is_ours(p)):
            shown = ", ".join(repr(f) for f in (foreign or sorted(os.listdir(p)))[:3])
            raise ValueError(
                f"output folder {str(path)!r} already holds files that are not {kind} written "
                f"by recsys ({shown}); choose a new folder, or empty this one yourself"
            )
    # Only once the output is known to be ours (or new) are its leftovers removed.
    remove_stale_temporaries(p.parent, glob.escape(p.name))
    return p


def foreign_files(folder: Path, owned: Sequence[str]) -> list[str]:
    """Entries of ``folder`` (relative, ``/``-separated) that are not ours to replace: any
    symbolic link (what it points to is not ours), and any file or temporary whose name
    matches none of the ``owned`` patterns."""
    foreign = []
    for e in sorted(folder.rglob("*")):
        rel = e.relative_to(folder).as_posix()
        if e.is_symlink():
            foreign.append(rel)
        elif e.is_dir():
            continue
        elif m := _TMP.match(e.name):  # ours only beside a file the job writes
            sibling = (e.parent / m["name"]).relative_to(folder).as_posix()
            if not any(fnmatch.fnmatchcase(sibling, pat) for pat in owned):
                foreign.append(rel)
        elif not any(fnmatch.fnmatchcase(rel, pat) for pat in owned):
            foreign.append(rel)
    return foreign


def check_output_file(
    path: str | os.PathLike, *, kind: str, is_ours: Callable[[Path], bool]
) -> Path:
    """Refuse an output file that exists and was not written by recsys (``is_ours``).

    Stale temporaries of the file are removed.

    Raises
    ------
    ValueError
        With one line naming the path and why it is refused.
    """
    p = _output_path(path, "file")
    if p.is_dir():
        raise ValueError(f"output {str(path)!r} is a folder; expected a file name for {kind}")
    _check_writable_parent(p)
    if p.exists() and not is_ours(p):
        raise ValueError(
            f"output {str(path)!r} exists and is not {kind} written by recsys; choose a new "
            "file name, or remove it yourself"
        )
    remove_stale_temporaries(p.parent, glob.escape(p.name))
    return p


def _output_path(path: str | os.PathLike, what: str) -> Path:
    # A link's target is not ours to replace, and renaming onto the link would leave it.
    if not str(path).strip():
        raise ValueError(f"the output path is empty; name a new {what}")
    p = Path(path)
    if p.is_symlink():
        raise ValueError(
            f"output {str(path)!r} is a symbolic link; give the {what} it points to, or a new one"
        )
    return p


def _check_writable_parent(p: Path) -> None:
    # The nearest existing ancestor must be a writable folder, or nothing can be created.
    ancestor = p.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"cannot create {str(p)!r}: {str(ancestor)!r} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"cannot create {str(p)!r}: the folder {str(ancestor)!r} is not writable")


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Parse a JSON file we wrote, turning corruption into one line naming the file.

    Parameters
    ----------
    path : path-like
        The file.
    what : str
        What it is and what to do about corruption, e.g. ``"a dataset manifest;
        prepare the dataset again"``.
    """
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{str(p)!r} is corrupt: not valid JSON ({e.msg} at line {e.lineno}, column "
            f"{e.colno}); it should be {what}"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{str(p)!r} is corrupt: not UTF-8 text; it should be {what}") from None


def json_has_keys(path: Path, keys: Sequence[str]) -> bool:
    """Whether ``path`` is a JSON object with all of ``keys`` (a cheap ownership marker)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and all(k in doc for k in keys)


def verify_files(folder: Path, files: dict[str, Any], redo: str) -> None:
    """Check each ``folder/name`` against the SHA-256 recorded for it (``files[name]["sha256"]``).

    Raises
    ------
    ValueError
        Naming the first file that is missing or differs, and ``redo``: how to recover.
    """
    for rel, info in files.items():
        f = folder / rel
        if not f.is_file():
            raise ValueError(f"{str(f)!r} is missing; {redo}")
        if sha256_file(f) != info["sha256"]:
            raise ValueError(
                f"{str(f)!r} does not match the checksum recorded when it was written (it was "
                f"changed or truncated); {redo}"
            )


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, owned: Sequence[str] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``path`` only if the block succeeds.

    A crash or exception inside the block removes the temporary folder and leaves
    whatever was at ``path`` before untouched. Callers check first (with
    :func:`check_output_folder`) that ``path`` may be replaced.

    Parameters
    ----------
    path : path-like
        Final folder.
    owned : sequence of str, optional
        The job's file patterns: checked again just before the old folder is replaced, so
        that a file put there while the job ran is not deleted with it.

    Yields
    ------
    Path
        The temporary folder to write into.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if owned is not None and final.is_dir() and (foreign := foreign_files(final, owned)):
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(
            f"output folder {str(final)!r} got files that recsys did not write while the job "
            f"ran ({', '.join(map(repr, foreign[:3]))}); it was left as it was"
        )
    if final.exists():
        # Two renames: the old output stays whole until the new one is in place.
        old = _tmp_sibling(final)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path that is renamed to ``path`` if the block succeeds.

    Parameters
    ----------
    path : path-like
        Final file.

    Yields
    ------
    Path
        The temporary path to write to.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically.

    Parameters
    ----------
    path : path-like
        Destination file.
    obj : Any
        JSON-serialisable object.
    """
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
