"""The servable MLflow model: the bundle behind ``mlflow models serve``.

A request is a table with one row per question: ``user_id`` (a known user) or
``history`` (a list of raw item IDs, oldest first, or one comma-separated string, for a
user the model has never seen; unknown items are skipped), and optionally ``k`` (default
10), ``explain`` (0 to 50; default 0), ``history_policy`` (``auto``, the model's
choice, ``exclude`` or ``include`` the user's history items; one for the request) and
``rerank`` (a re-ranking config as a JSON object,
the same for every row that gives one, ``{}`` for none; default: the config stored with
the model, if any; see :mod:`recsys.allocation`). The answer has one row per recommended item:
``request`` (the row number of the question), ``user_id`` (null for a history), ``rank``
(1 = best), ``item_id``, ``score`` — the same lists the Python API returns — and, when the
request has an ``explain`` column, ``because`` and ``because_weight``: the ``explain``
history items that raised the item's score most and by how much (empty lists for rows
that asked for none), as ``Recommender.explain`` gives them.

    curl http://127.0.0.1:5000/invocations -H 'Content-Type: application/json' -d '
      {"dataframe_records": [{"user_id": "196", "k": 5}, {"history": ["50", "172"]}]}'

All rows of a request are scored together, in chunks of :data:`CHUNK_ROWS`, one request at
a time. The options of :class:`ServingConfig` are read from ``RECSYS_<NAME>`` environment
variables when the model loads: a request has at most ``RECSYS_MAX_REQUEST_ROWS`` rows
(10,000), torch runs ``RECSYS_TORCH_THREADS`` threads in the whole process (1; 0
leaves torch's setting), and the vectors of known users are kept once computed when the
model has at most ``RECSYS_USER_VECTORS`` users (1,000,000; 0: never). A bad row (an unknown
user, a history without a known item, both or neither of ``user_id`` and ``history``, a
``k`` that is not an integer from 1 to the catalogue size) fails the whole request with
HTTP 400, naming the row and the value.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import polars as pl
import torch

from recsys import allocation
from recsys.bundle import ARTIFACT_PATH, Bundle
from recsys.data.dataset import gather_ragged
from recsys.explain import explain_chunk, reasons
from recsys.io import quote
from recsys.options import from_env, option
from recsys.scoring import score_chunk, user_vectors

MODEL_NAME = "model"  # the name of the logged model inside a training run
DEFAULT_K = 10
CHUNK_ROWS = 1024  # rows scored together: bounds the (rows, k) and padded-history arrays
QUOTE_CHARS = 60  # request values are quoted at most this long in errors
MAX_EXPLAIN = 50  # history items a request row may ask for as reasons
ANSWER_COLUMNS = pd.Index(["request", "user_id", "rank", "item_id", "score"])


def _policy(column: pd.Series | None) -> str:
    """The request's history setting: its ``history_policy`` (one for all rows that give
    one), else ``auto`` (the model's)."""
    given = {v for v in ([] if column is None else column.tolist()) if not _missing(v)}
    if len(given) > 1:
        raise ValueError(f"rows give different history_policy values {sorted(map(str, given))}")
    value = given.pop() if given else "auto"
    if value not in ("auto", "exclude", "include"):
        raise ValueError(f"history_policy {_q(value)}: expected 'auto', 'exclude' or 'include'")
    return value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _q(value: Any) -> str:  # request data in an error message, cut short
    return quote(value, QUOTE_CHARS)


@dataclass
class ServingConfig:
    """Options of the served model, read from ``RECSYS_<NAME>`` variables when it loads."""

    max_request_rows: int = option(10_000, "rows a request may have (a 400 above it)")
    # The server answers requests in parallel threads; torch's spare intra-op threads
    # busy-wait between operations, which doubled the CPU time of a single-user request
    # and took the core that other requests need (a process-wide setting).
    torch_threads: int = option(1, "torch threads of the serving process; 0: torch's own")
    # A known user's history is fixed in the model, so its vector is too: computed once,
    # it is looked up, which halves the model's part of a single-user request.
    user_vectors: int = option(
        1_000_000,
        "keep known users' vectors once computed, when the model has at most this many "
        "users (4 bytes x hidden size each); 0: never",
    )

    def __post_init__(self) -> None:
        if self.max_request_rows < 1 or self.torch_threads < 0 or self.user_vectors < 0:
            raise ValueError(
                f"max_request_rows={self.max_request_rows} must be at least 1, "
                f"torch_threads={self.torch_threads} and user_vectors={self.user_vectors} "
                "at least 0"
            )


def _row_error(rows: np.ndarray, what: str) -> ValueError:
    """An error about the first of ``rows`` (row numbers of the request), counting the rest."""
    more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
    return ValueError(f"request row {int(rows[0])}{more}: {what}")


def _present(df: pd.DataFrame, column: str) -> pd.Series | None:
    return df[column] if column in df.columns else None


def _user_ids(users: pd.Series) -> np.ndarray:
    """Raw user IDs as strings; JSON numbers too (a column with gaps arrives as floats)."""
    if pd.api.types.is_float_dtype(users) and (users == np.floor(users)).all():
        users = users.astype(np.int64)
    return users.astype(str).to_numpy(dtype=object)


def _history_entries(history: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Row number and raw item ID (stripped, non-empty) of every history entry, in order.

    A history is a list of IDs or one comma-separated string.
    """
    if pd.api.types.is_object_dtype(history) or pd.api.types.is_string_dtype(history):
        split = history.str.split(",")  # lists for the strings, missing for the rest
        history = split.where(split.notna(), history)
    entries = history.explode()
    entries = entries[entries.notna()]
    text = entries.astype(str).str.strip()
    keep = (text != "").to_numpy()
    return entries.index.to_numpy()[keep], text.to_numpy(dtype=object)[keep]


def _counts(
    values: pd.Series | None, rows: int, name: str, low: int, high: int, default: int, what: str
) -> np.ndarray:
    """Each row's integer ``name`` (``default`` where missing), checked to lie in
    ``low..high`` (``what`` says the range in the error)."""
    if values is None:
        return np.full(rows, default, dtype=np.int64)
    missing = values.isna().to_numpy()
    if pd.api.types.is_bool_dtype(values):
        numbers, numeric = np.zeros(rows), np.zeros(rows, dtype=bool)
    elif pd.api.types.is_numeric_dtype(values):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        numeric = np.ones(rows, bool)
    else:
        # A mixed column: only real numbers count ("5" and true are not a count).
        is_number = (int, float, np.number)
        numeric = values.map(lambda v: isinstance(v, is_number) and not isinstance(v, bool))
        numeric = numeric.to_numpy(dtype=bool)
        numbers = pd.to_numeric(values.where(numeric), errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = numeric & (numbers == np.floor(numbers)) & (numbers >= low) & (numbers <= high)
    bad = np.flatnonzero(~missing & ~ok)
    if len(bad):
        value = values.iloc[bad[0]]
        value = value.item() if isinstance(value, np.generic) else value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        raise _row_error(bad, f"{name}={_q(value)}: expected an integer {what}")
    return np.where(missing, default, np.nan_to_num(numbers)).astype(np.int64)


def _ks(k: pd.Series | None, rows: int, num_items: int) -> np.ndarray:
    """Each row's k (default :data:`DEFAULT_K`), checked to be an integer in 1..num_items."""
    what = f"from 1 to the catalogue size {num_items}"
    return _counts(k, rows, "k", 1, num_items, DEFAULT_K, what)


class RecsysModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around :class:`recsys.Recommender` loaded from the bundled folder."""

    config: ServingConfig = ServingConfig()

    def load_context(self, context: Any) -> None:
        from recsys.recommender import Recommender

        self.config = from_env(ServingConfig)
        if self.config.torch_threads:
            import torch

            torch.set_num_threads(self.config.torch_threads)
        self.rec = Recommender.load(Path(context.artifacts[ARTIFACT_PATH]))
        self._known = UserVectors(self.rec.bundle, self.config.user_vectors)
        # The server runs requests in parallel threads, but they hold the GIL for most of
        # their work: interleaved, every torch call became a GIL hand-over and a single-user
        # request cost twice the CPU at 8 clients. One answer at a time leaves the other core
        # to MLflow's parsing and serialisation, which run outside predict.
        self._lock = threading.Lock()

    def _plan(self, column: pd.Series | None) -> allocation.Plan | None:
        """The request's re-ranking: its ``rerank`` value (one for all rows that give
        one: a JSON object, or its text; ``{}`` for none), else the model's stored one."""
        # Rows without one hold None, or NaN where pandas filled the column in.
        given = [] if column is None else [v for v in column.tolist() if not _missing(v)]
        docs = []
        for v in given:
            if isinstance(v, str):
                try:
                    v = json.loads(v)
                except json.JSONDecodeError:
                    raise ValueError(f"rerank {_q(v)} is not a JSON object") from None
            if not isinstance(v, dict):
                raise ValueError(f"rerank {_q(v)}: expected a JSON object (a re-ranking config)")
            docs.append(json.dumps(v, sort_keys=True))
        if len(set(docs)) > 1:
            raise ValueError("rows give different rerank values; a request has at most one")
        # plan_for keeps compiled plans on the bundle: a repeated config costs a parse.
        return allocation.plan_for(self.rec.bundle, json.loads(docs[0]) if docs else None)

    # Only the request is annotated: MLflow derives the input schema from these hints and
    # warns about Any.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Answer a request table (see the module docstring) as a pandas DataFrame."""
        from mlflow.exceptions import MlflowException

        try:
            with self._lock:
                return self._answer(pd.DataFrame(model_input))
        except ValueError as e:
            raise MlflowException.invalid_parameter_value(str(e)) from e

    def _answer(self, df: pd.DataFrame) -> pd.DataFrame:
        """The answer table; raises ValueError naming the first bad row."""
        n = len(df)
        cap = self.config.max_request_rows
        if n > cap:
            raise ValueError(
                f"a request has at most {cap} rows (RECSYS_MAX_REQUEST_ROWS); got {n} rows"
            )
        if not {"user_id", "history"} & set(df.columns):
            raise ValueError(
                f"a request needs a 'user_id' or a 'history' column; got {_q(list(df.columns))}"
            )
        if not df.index.equals(pd.RangeIndex(n)):
            df = df.reset_index(drop=True)  # row numbers are positions
        bundle = self.rec.bundle
        users, history = _present(df, "user_id"), _present(df, "history")
        has_user = np.zeros(n, dtype=bool) if users is None else users.notna().to_numpy()
        entry_rows, entries = (
            (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object))
            if history is None
            else _history_entries(history)
        )
        has_history = np.bincount(entry_rows, minlength=n) > 0
        if (both := np.flatnonzero(has_user & has_history)).size:
            raise _row_error(both, "give either user_id or history, not both")
        if (neither := np.flatnonzero(~has_user & ~has_history)).size:
            raise _row_error(neither, "give a user_id or a non-empty history")
        ks = _ks(_present(df, "k"), n, bundle.num_items)
        why = _present(df, "explain")
        reasons_per_row = _counts(why, n, "explain", 0, MAX_EXPLAIN, 0, f"from 0 to {MAX_EXPLAIN}")

        user_rows = np.flatnonzero(has_user)
        user_ids = _user_ids(users[has_user]) if len(user_rows) else np.zeros(0, dtype=object)
        user_idx, _ = bundle.user_indices(user_ids)
        if (unknown := np.flatnonzero(user_idx == 0)).size:
            raise _row_error(
                user_rows[unknown],
                f"unknown user ID {_q(user_ids[unknown[0]])}; "
                "send its history instead for a user not seen in training",
            )
        item_idx, _ = bundle.item_indices(entries)
        known = item_idx > 0  # unknown history items are skipped, as the Python API does
        known_per_row = np.bincount(entry_rows[known], minlength=n)
        if (empty := np.flatnonzero(has_history & (known_per_row == 0))).size:
            raise _row_error(
                empty, f"the history {_q(history.iloc[empty[0]])} has no known item ID"
            )

        # Every row's history (a known user's stored one, or the request's known items) as a
        # range of one array, in request order.
        stored, stored_off = bundle.histories_of(user_idx)
        values = np.concatenate([stored, item_idx[known]])
        own_off = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(known_per_row, out=own_off[1:])
        start, stop = own_off[:-1] + len(stored), own_off[1:] + len(stored)
        start[user_rows], stop[user_rows] = stored_off[:-1], stored_off[1:]

        row_user = np.full(n, None, dtype=object)
        row_user[user_rows] = user_ids
        row_idx = np.zeros(n, dtype=np.int64)  # each row's known user (0: a history)
        row_idx[user_rows] = user_idx
        plan = self._plan(_present(df, "rerank"))
        exclude_seen = bundle.exclude_seen(_policy(_present(df, "history_policy")))
        if plan is not None:
            reranked = _rerank(bundle, plan, values, start, stop, ks, row_user, exclude_seen)
        parts = []
        for lo in range(0, n, CHUNK_ROWS):
            hi = min(lo + CHUNK_ROWS, n)
            h, h_off = gather_ragged(values, start[lo:hi], stop[lo:hi])
            if plan is None:
                # Lists are ordered by score then index, so the first k of the chunk's
                # longest list are that row's own top k.
                users = self._known.vectors(row_idx[lo:hi], h, h_off)
                items, scores = score_chunk(
                    bundle, h, h_off, int(ks[lo:hi].max()), exclude_seen, users=users
                )
            else:
                items, scores = reranked[0][lo:hi], reranked[1][lo:hi]
            frame = _frame(bundle, lo, items, scores, ks[lo:hi], row_user[lo:hi])
            if why is not None:
                frame = _with_reasons(frame, bundle, h, h_off, items, reasons_per_row[lo:hi], lo)
            parts.append(frame)
        if not parts:  # no rows: the columns alone
            none = np.zeros((0, 1), dtype=np.int64)
            no_user = np.zeros(0, dtype=object)
            parts.append(_frame(bundle, 0, none, none.astype(np.float32), none[:, 0], no_user))
        return parts[0] if len(parts) == 1 else Answer(pd.concat(parts, ignore_index=True))


def _rerank(
    bundle: Bundle,
    plan: allocation.Plan,
    values: np.ndarray,
    start: np.ndarray,
    stop: np.ndarray,
    ks: np.ndarray,
    row_user: np.ndarray,
    exclude_seen: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-ranked lists (n, max k) of every request row: the request is the job over which
    exposure budgets are spent, rows of each k together (one k with exposure rules)."""
    n, width = len(ks), int(ks.max(initial=1))
    items = np.zeros((n, width), dtype=np.int64)
    scores = np.full((n, width), -np.inf, dtype=np.float32)
    distinct = np.unique(ks)
    if plan.cfg.exposure is not None and len(distinct) > 1:
        raise ValueError(
            f"rows ask for different k ({distinct[:5].tolist()}); with exposure rules all "
            "rows of a request share one k"
        )
    for k in distinct:
        rows = np.flatnonzero(ks == k)
        plan.check_k(int(k))

        def chunks(rows: np.ndarray = rows) -> Any:
            for lo in range(0, len(rows), CHUNK_ROWS):
                r = rows[lo : lo + CHUNK_ROWS]
                h, h_off = gather_ragged(values, start[r], stop[r])
                yield h, h_off, None, _RowNames(row_user, r)

        lists = allocation.rerank_users(bundle, plan, chunks, len(rows), int(k), exclude_seen)
        for lo, (it, sc) in zip(range(0, len(rows), CHUNK_ROWS), lists, strict=True):
            r = rows[lo : lo + CHUNK_ROWS]
            items[r, :k], scores[r, :k] = it, sc
    return items, scores


class _RowNames:
    """How an error names chunk row ``i``: its user ID, or its request row for a history
    (made only when an error needs it)."""

    def __init__(self, row_user: np.ndarray, rows: np.ndarray):
        self.row_user, self.rows = row_user, rows

    def __getitem__(self, i: int) -> str:
        user = self.row_user[self.rows[i]]
        return f"(history of request row {self.rows[i]})" if _missing(user) else user


def _with_reasons(
    frame: pd.DataFrame,
    bundle: Bundle,
    flat: np.ndarray,
    offsets: np.ndarray,
    items: np.ndarray,
    counts: np.ndarray,
    lo: int,
) -> pd.DataFrame:
    """``frame`` with ``because`` and ``because_weight``: each answer row's ``explain``
    strongest history items (empty lists where its request row asked for none)."""
    request = frame["request"].to_numpy() - lo  # the chunk row of each answer row
    n = pl.Series(counts[request])
    asked = np.flatnonzero(counts > 0)
    if len(asked):
        h, h_off = gather_ragged(flat, offsets[asked], offsets[asked + 1])
        ex = explain_chunk(bundle, h, h_off, items[asked])
        ids, values = reasons(bundle, ex, int(counts.max()))
        place = np.zeros(len(counts), dtype=np.int64)  # chunk row -> row among the asking
        place[asked] = np.arange(len(asked))
        # Answer rows of rows that did not ask take any list and keep none of it.
        at = pl.Series(place[request] * items.shape[1] + frame["rank"].to_numpy() - 1)
        lists = pl.DataFrame({"b": ids.gather(at), "w": values.gather(at), "n": n})
    else:
        empty = pl.Series([[]] * len(frame), dtype=pl.List(pl.String))
        lists = pl.DataFrame({"b": empty, "w": empty.cast(pl.List(pl.Float32)), "n": n})
    lists = lists.select(pl.col("b").list.head(pl.col("n")), pl.col("w").list.head(pl.col("n")))
    frame["because"] = pd.Series(lists["b"].to_list(), dtype=object, index=frame.index)
    frame["because_weight"] = pd.Series(lists["w"].to_list(), dtype=object, index=frame.index)
    return frame


class UserVectors:
    """Known users' vectors, computed on first use and kept (their histories are fixed in
    the bundle); with more users than ``limit``, none are kept."""

    def __init__(self, bundle: Bundle, limit: int):
        self.bundle = bundle
        n = bundle.user_vocab.height
        self.store: torch.Tensor | None = None
        if 0 < n <= limit:
            d = bundle.scorer.item_vectors().shape[1]
            self.store = torch.zeros(n + 1, d)  # row = user index; 0 unused
            self.have = torch.zeros(n + 1, dtype=torch.bool)

    def vectors(self, users: np.ndarray, flat: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
        """(B, d) vectors of B rows: known users' (``users`` > 0) kept or computed once;
        the histories ``flat[offsets[b]:offsets[b + 1]]`` of the others computed."""
        if self.store is None:
            return user_vectors(self.bundle, flat, offsets)
        idx = torch.from_numpy(users)
        missing = np.flatnonzero(~self.have[idx].numpy())
        out = self.store[idx]  # (B, d), a copy; the rows to compute are filled below
        if len(missing):
            h, h_off = gather_ragged(flat, offsets[missing], offsets[missing + 1])
            fresh = user_vectors(self.bundle, h, h_off)
            rows = torch.from_numpy(missing)
            out[rows] = fresh
            known = idx[rows] > 0
            self.store[idx[rows][known]] = fresh[known]
            self.have[idx[rows][known]] = True
        return out


def _frame(
    bundle: Bundle,
    lo: int,
    items: np.ndarray,
    scores: np.ndarray,
    ks: np.ndarray,
    row_user: np.ndarray,
) -> pd.DataFrame:
    """The answer rows of the chunk of request rows from ``lo``: items and scores (B, K),
    each row cut to its own k."""
    ranks = np.arange(items.shape[1])
    # An empty slot (item 0, score -inf) is no recommendation, and JSON has no -inf.
    keep = (items > 0) & (ranks[None, :] < ks[:, None]) & np.isfinite(scores)
    r, c = np.nonzero(keep)
    columns = [
        (lo + r).astype(np.int64),
        row_user[r].astype(object),  # object: a history's missing user is None (null)
        (c + 1).astype(np.int32),
        bundle.item_ids[items[r, c]].astype(object),
        scores[r, c].astype(np.float32),
    ]
    # From the arrays as they are: the DataFrame constructor would turn the object columns
    # into strings (None into NaN), and building them as Series instead cost more than the
    # ranking of a single-user request. Tested against the declared column types.
    return Answer._from_arrays(
        columns, columns=ANSWER_COLUMNS, index=pd.RangeIndex(len(r)), verify_integrity=False
    )


class Answer(pd.DataFrame):
    """The answer table: a DataFrame whose records (what the REST server sends) are built
    from the columns' Python lists at once; pandas' own way took a third of a single-user
    request's time."""

    @property
    def _constructor(self) -> type[pd.DataFrame]:
        return pd.DataFrame  # anything derived from it is a plain DataFrame

    def to_dict(self, orient: str = "dict", *args: Any, **kwargs: Any) -> Any:
        """As :meth:`pandas.DataFrame.to_dict`; ``records`` the same values, faster."""
        if orient != "records" or args or kwargs or not self.columns.is_unique:
            return super().to_dict(orient, *args, **kwargs)
        names = [str(c) for c in self.columns]
        # Column by column, not self[name]: building each column's Series cost more than
        # the records themselves.
        columns = [values.tolist() for values in self._iter_column_arrays()]
        return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
