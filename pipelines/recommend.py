"""Batch recommendation job: top-K items for every user (or a list of users) → Parquet parts.

Run it as ``recsys recommend --model MODEL --users all --k 100 --output DIR``. Users are
scored in fixed-size chunks through :func:`recsys.scoring.score_chunk`, one Parquet part
per chunk (``part-00000.parquet``, ...), each written atomically, so memory stays flat
whatever the number of users. A killed job re-run with the same arguments skips the parts
already written and ends with exactly one list per user.

The output folder holds Parquet files only, so that pandas, polars and pyarrow read the
folder itself as one table: the parts, ``_job.parquet`` (written first: the job's
arguments, to refuse a resume with other ones) and ``_manifest.parquet`` (written last:
model, K, counts). Both are empty tables of the parts' schema whose JSON sits in the
Parquet key-value metadata; :func:`read_manifest` reads it.

Two engines write the parts with the same function, :func:`write_part`: ``local`` (the
default) one chunk after another in this process, and ``ray``
(:mod:`pipelines.recommend_ray`) on a pool of Ray actors, on this machine or a cluster.
The engine is not one of the job's arguments: a job begun on one may be finished on the
other.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from recsys import allocation
from recsys.allocation import exposure
from recsys.bundle import Bundle, load_bundle, resolve_model
from recsys.data.readers import LIBRARY_ERRORS, library_message
from recsys.explain import DEFAULT_METHOD, explain_chunk, reasons
from recsys.explain.attribution import METHODS
from recsys.io import atomic_file, check_output_folder, remove_stale_temporaries, sha256_file
from recsys.options import check_choices, option
from recsys.scoring import RESULT_SCHEMA, results_frame, score_chunk
from recsys.tracking import URI_HELP, resolve_uri
from recsys.training.derive import HISTORY

log = logging.getLogger(__name__)

JOB, MANIFEST = "_job.parquet", "_manifest.parquet"
EXPOSURE = "_exposure.parquet"  # proportional exposure: every item's lists, from a first pass
OWNED = ("part-*.parquet", JOB, MANIFEST, EXPOSURE)  # every file the job writes
META_KEY = b"recsys"  # the Parquet key-value metadata entry holding the JSON
ENGINES = ("local", "ray")
EXPLAIN_SCHEMA = {"because": pl.List(pl.String), "because_weight": pl.List(pl.Float32)}


@dataclass
class RecommendConfig:
    """Everything the batch job needs."""

    model: str = option(help="MLflow run id, models:/NAME/VERSION, or a bundle folder")
    output: str = option(help="folder for the Parquet parts")
    users: str = option(
        "all", "'all', or a file of user IDs (.txt, or .csv/.parquet with a user_id column)"
    )
    k: int = option(100, "recommendations per user")
    history: str = option(
        "auto",
        "items of the user's history: exclude them, include them (ranked with the model's "
        "repeat term), or auto: what the model decided from its training data",
        choices=HISTORY,
    )
    chunk_users: int = option(10_000, "users per part")
    explain: int = option(
        0,
        "add the N history items that most raised each recommendation's score ('because') "
        "and by how much ('because_weight'); 0: none",
    )
    explain_method: str = option(
        DEFAULT_METHOD, "how --explain computes contributions", choices=METHODS
    )
    rerank: str | None = option(
        None,
        "re-ranking config (TOML): diversity, calibration, exposure budgets across the "
        "job, business rules (README: Re-ranking); 'none': the model's own ranking",
        default_text="the config stored with the model, if any",
    )
    tracking_uri: str | None = option(
        None,
        "MLflow tracking URI (for run ids)",
        default_text=URI_HELP,
    )
    engine: str = option(
        "local",
        "where the parts are written: 'local', one chunk after another in this process; "
        "'ray', on a pool of Ray actors (pip install 'recsys[ray]'), on this machine or "
        "a cluster (--ray-address); re-ranking with exposure budgets runs locally only",
        choices=ENGINES,
    )
    ray_address: str | None = option(
        None,
        "with --engine ray: the head of a running Ray cluster (HOST:PORT, as given to "
        "`ray start --address`; 'auto': the one started on this machine)",
        default_text="start a Ray on this machine for the job and stop it after",
    )
    ray_actors: int = option(2, "with --engine ray: actors in the pool, each loads the model")
    progress: bool = option(True, "progress bars")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.k < 1:
            raise ValueError(f"k={self.k}: expected at least 1")
        if self.explain < 0:
            raise ValueError(f"explain={self.explain}: expected 0 (none) or more")
        if self.chunk_users < 1:
            raise ValueError(f"chunk_users={self.chunk_users}: expected at least 1")
        if self.ray_actors < 1:
            raise ValueError(f"ray_actors={self.ray_actors}: expected at least 1")


def read_user_ids(path: str | Path) -> list[str]:
    """User IDs from a ``.parquet``/``.csv`` file (column ``user_id``) or text, one per line."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"users file {str(p)!r} is a folder; expected a file of user IDs")
    if not p.is_file():
        raise ValueError(f"users file {str(p)!r} does not exist")
    if p.suffix in (".parquet", ".csv"):
        try:
            df = (
                pl.read_parquet(p) if p.suffix == ".parquet" else pl.read_csv(p, infer_schema=False)
            )
            if "user_id" in df.columns:
                ids = df["user_id"].cast(pl.String)
        except LIBRARY_ERRORS as e:
            raise ValueError(
                f"users file {str(p)!r} cannot be read as {p.suffix[1:]}: {library_message(e)}"
            ) from None
        if "user_id" not in df.columns:
            raise ValueError(f"{str(p)!r} has no column 'user_id'; columns: {df.columns}")
        if ids.null_count():
            row = int(ids.is_null().arg_true()[0])
            raise ValueError(f"{str(p)!r}, row {row + 1}: empty user_id")
        return ids.to_list()
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"users file {str(p)!r} is not UTF-8 text; expected a user ID per line"
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _write_meta(path: Path, doc: dict[str, Any]) -> None:
    """An empty table of the parts' schema (with the reasons' columns when ``doc`` is an
    ``--explain`` job's, so that polars reads the folder as one table) carrying ``doc`` as
    JSON metadata, atomically."""
    schema = {**RESULT_SCHEMA, **(EXPLAIN_SCHEMA if doc.get("explain") else {})}
    table = pl.DataFrame(schema=schema).to_arrow()
    table = table.replace_schema_metadata({META_KEY: json.dumps(doc)})
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def _read_meta(path: Path) -> dict[str, Any] | None:
    """The JSON written by :func:`_write_meta`, or None if ``path`` holds none of ours."""
    try:
        meta = pq.read_schema(path).metadata or {}
        doc = json.loads(meta[META_KEY])
    except (OSError, KeyError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        return None
    return doc if isinstance(doc, dict) else None


def read_manifest(output: str | Path) -> dict[str, Any]:
    """The manifest of a finished batch job's output folder.

    Raises
    ------
    ValueError
        If the folder holds no finished job's output.
    """
    doc = _read_meta(Path(output) / MANIFEST)
    if doc is None:
        raise ValueError(f"{str(output)!r} holds no finished recommend job's output")
    return doc


def _users(bundle: Bundle, spec: str) -> tuple[np.ndarray, np.ndarray]:
    """(user_idx, raw user IDs) to score, in output order."""
    vocab = bundle.user_vocab
    if spec == "all":
        return vocab["user_idx"].to_numpy().astype(np.int64), vocab["user_id"].to_numpy()
    ids = pl.Series("user_id", read_user_ids(spec), dtype=pl.String)
    if ids.is_empty():
        raise ValueError(f"users file {spec!r} lists no user ID; expected one or more")
    dup = ids.filter(ids.is_duplicated()).unique().to_list()
    if dup:
        raise ValueError(f"users file {spec!r} lists user(s) twice, e.g. {dup[:5]}")
    idx, missing = bundle.user_indices(ids.to_list())
    if missing:
        raise ValueError(
            f"users file {spec!r} has {len(missing)} user ID(s) the model does not know, "
            f"e.g. {missing[:5]}"
        )
    return idx, ids.to_numpy()


def _budget(
    bundle: Bundle,
    plan: allocation.Plan,
    cfg: RecommendConfig,
    out: Path,
    users: np.ndarray,
    chunks: range,
) -> Any:
    """The job's exposure budget before its first part (None without exposure rules).

    Proportional exposure needs every user's candidates first: that pass's result (each
    item's lists) is kept in ``_exposure.parquet``, so a resumed job spends the same
    budget without scoring everyone again.
    """
    if not allocation.needs_merit(plan):
        return allocation.start_budget(plan, len(users), cfg.k)
    kept = _read_meta(out / EXPOSURE)
    if kept is not None and len(kept.get("lists", [])) == bundle.num_items + 1:
        return torch.tensor(kept["lists"], dtype=torch.long)
    merit = torch.zeros(bundle.num_items + 1, dtype=torch.float64)
    bar = tqdm(total=len(users), desc="merit", unit="user", disable=not cfg.progress)
    for lo in chunks:
        u = users[lo : lo + cfg.chunk_users]
        h, h_off = bundle.histories_of(u)
        exclude = bundle.exclude_seen(cfg.history)
        cand, scores, _ = allocation.candidates(bundle, plan, h, h_off, cfg.k, exclude)
        merit += exposure.merit(cand, scores, bundle.num_items, plan.pinned)
        bar.update(len(u))
    bar.close()
    budget = allocation.start_budget(plan, len(users), cfg.k, merit)
    _write_meta(out / EXPOSURE, {"lists": budget.tolist()})
    return budget


def write_part(
    bundle: Bundle,
    plan: allocation.Plan | None,
    cfg: RecommendConfig,
    path: Path,
    users: np.ndarray,
    raw_ids: np.ndarray,
    budget: torch.Tensor | None = None,
) -> tuple[int, int]:
    """Score one chunk of users (re-rank, explain) and write its part atomically; return
    (rows written, users whose list the re-ranking left short).

    Both engines call it, so a part is the same whichever wrote it. ``budget``: the job's
    exposure budget, spent in place (the local engine only).
    """
    h, h_off = bundle.histories_of(users)
    short = 0
    exclude = bundle.exclude_seen(cfg.history)
    if plan is None:
        items, scores = score_chunk(bundle, h, h_off, cfg.k, exclude_seen=exclude)
    else:
        items, scores = allocation.rerank_chunk(
            bundle, plan, h, h_off, cfg.k, exclude, None, budget, raw_ids
        )
        short = int((items == 0).any(1).sum())
    df = results_frame(bundle, raw_ids, items, scores)
    if cfg.explain:
        ex = explain_chunk(bundle, h, h_off, items, method=cfg.explain_method)
        because, weight = reasons(bundle, ex, cfg.explain)
        keep = pl.Series((items > 0).ravel())  # the rows results_frame kept
        df = df.with_columns(because.filter(keep), weight.filter(keep))
    with atomic_file(path) as tmp:
        df.write_parquet(tmp)
    return df.height, short


def part_path(out: Path, part: int) -> Path:
    return out / f"part-{part:05d}.parquet"


class PartWriter:
    """The Ray engine's callable class: one per actor, it loads the model once and then
    writes whole parts with :func:`write_part`, given batches of rows ``part``,
    ``user_idx`` (list), ``user_id`` (list); it returns per part ``part``, ``users``,
    ``rows``, ``short``.

    ``rerank``: the job's re-ranking config (False: none), compiled here against this
    actor's bundle; ``weights_sha256``: the job's model, which every actor must load.
    """

    def __init__(self, cfg: RecommendConfig, rerank: Any, weights_sha256: str) -> None:
        self.cfg = cfg
        if not (Path(cfg.output) / JOB).is_file():  # the driver wrote it before any part
            raise ValueError(
                f"--output {cfg.output!r} is not on Ray node {socket.gethostname()!r}: on a "
                "cluster it must be a folder every node sees (a shared file system)"
            )
        self.bundle = load_bundle(resolve_model(cfg.model, cfg.tracking_uri))
        got = sha256_file(self.bundle.path / "weights.pt")
        if got != weights_sha256:
            raise ValueError(
                f"model {cfg.model!r} is another model on this Ray node (weights "
                f"{got[:12]}, the job's {weights_sha256[:12]}): every node must see the same"
            )
        self.plan = allocation.plan_for(self.bundle, rerank)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        out = Path(self.cfg.output)
        done: dict[str, list[int]] = {"part": [], "users": [], "rows": [], "short": []}
        for i, part in enumerate(batch.column("part").to_pylist()):
            users = batch.column("user_idx")[i].values.to_numpy(zero_copy_only=False)
            ids = np.asarray(batch.column("user_id")[i].values.to_pylist(), dtype=object)
            rows, short = write_part(
                self.bundle, self.plan, self.cfg, part_path(out, part), users, ids
            )
            for key, value in zip(done, (part, len(users), rows, short), strict=True):
                done[key].append(value)
        return {key: np.asarray(values, dtype=np.int64) for key, values in done.items()}


def run(cfg: RecommendConfig) -> dict[str, Any]:
    """Write (or finish writing) the recommendations; return the manifest."""
    if cfg.engine == "ray":
        from pipelines import recommend_ray

        recommend_ray.import_ray()  # before anything is read or written
    out = Path(cfg.output)
    check_output_folder(
        out,
        kind="the output of a recommend job",
        owned=OWNED,
        is_ours=lambda p: _read_meta(p / JOB) is not None,
    )
    bundle = load_bundle(resolve_model(cfg.model, cfg.tracking_uri))
    if cfg.k > bundle.num_items:
        raise ValueError(f"k={cfg.k} exceeds the catalogue size {bundle.num_items}")
    users, raw_ids = _users(bundle, cfg.users)
    plan = allocation.plan_for(bundle, cfg.rerank)
    if plan is not None:
        plan.check_k(cfg.k)
        if cfg.engine == "ray" and plan.cfg.exposure is not None:
            raise ValueError(
                "--engine ray cannot re-rank with exposure budgets ([exposure]): each chunk "
                "spends what the chunks before it left, so the chunks run one after "
                "another; use --engine local (diversity, calibration and rules run on Ray)"
            )
    job = {
        "model": cfg.model,
        "weights_sha256": sha256_file(bundle.path / "weights.pt"),
        "users": cfg.users if cfg.users == "all" else sha256_file(cfg.users),
        "num_users": len(users),
        "k": cfg.k,
        # What the doors do, whether asked for or the model's choice (auto).
        "history": "exclude" if bundle.exclude_seen(cfg.history) else "include",
        "chunk_users": cfg.chunk_users,
        "explain": cfg.explain,
        "explain_method": cfg.explain_method,
        "rerank": None if plan is None else plan.cfg.to_dict(),
    }
    # The JSON round trip makes dates text, as they are in a stored _job.parquet.
    job = json.loads(json.dumps(job, default=str))
    if (out / JOB).is_file():
        previous = _read_meta(out / JOB)
        if previous != job:
            raise ValueError(
                f"{str(out)!r} holds the output of another job ({previous}); resume only "
                "with the same arguments, or write to another --output"
            )
    with contextlib.ExitStack() as stack:
        if cfg.engine == "ray":  # joined or started before the output is touched
            stack.enter_context(recommend_ray.session(cfg.ray_address))
        out.mkdir(parents=True, exist_ok=True)
        for pattern in OWNED:  # what a killed run was writing
            remove_stale_temporaries(out, pattern)
        (out / MANIFEST).unlink(missing_ok=True)  # the job is not finished until rewritten
        _write_meta(out / JOB, job)
        chunks = range(0, len(users), cfg.chunk_users)
        bar = tqdm(total=len(users), desc="recommend", unit="user", disable=not cfg.progress)
        if cfg.engine == "ray":
            rows, written, short = _run_ray(cfg, plan, job, out, users, raw_ids, chunks, bar)
        else:
            rows, written, short = _run_local(bundle, plan, cfg, out, users, raw_ids, chunks, bar)
        bar.close()
    if short:
        log.warning(
            "%d users got fewer than %d items: the re-ranking left no allowed candidate "
            "(exposure caps, rules); raise candidates in the config to fill them",
            short,
            cfg.k,
        )
    manifest = {
        **job,
        "parts": len(chunks),
        "parts_written_by_this_run": written,
        "rows": rows,
        "columns": list(RESULT_SCHEMA) + (["because", "because_weight"] if cfg.explain else []),
        "dataset": bundle.dataset,
        "engine": cfg.engine,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_meta(out / MANIFEST, manifest)
    log.info("%d recommendations for %d users in %s", rows, len(users), out)
    return manifest


def _run_local(
    bundle: Bundle,
    plan: allocation.Plan | None,
    cfg: RecommendConfig,
    out: Path,
    users: np.ndarray,
    raw_ids: np.ndarray,
    chunks: range,
    bar: Any,
) -> tuple[int, int, int]:
    """The parts one after another, here; (rows, parts written, short lists)."""
    budget = None if plan is None else _budget(bundle, plan, cfg, out, users, chunks)
    rows = written = short = 0
    for part, lo in enumerate(chunks):
        path = part_path(out, part)
        u = users[lo : lo + cfg.chunk_users]
        if path.is_file():  # finished by an earlier, interrupted run
            done = pl.read_parquet(path, columns=["item_id"])["item_id"]
            if budget is not None:  # what those lists took, as the first run spent it
                exposure.spend(budget, bundle.item_indices(done)[0], [i for i, _ in plan.pins])
            rows += done.len()
            bar.update(len(u))
            continue
        n, s = write_part(bundle, plan, cfg, path, u, raw_ids[lo : lo + cfg.chunk_users], budget)
        rows += n
        short += s
        written += 1
        bar.update(len(u))
    return rows, written, short


def _run_ray(
    cfg: RecommendConfig,
    plan: allocation.Plan | None,
    job: dict[str, Any],
    out: Path,
    users: np.ndarray,
    raw_ids: np.ndarray,
    chunks: range,
    bar: Any,
) -> tuple[int, int, int]:
    """The missing parts on Ray's actors (:mod:`pipelines.recommend_ray`); (rows, parts
    written, short lists)."""
    from pipelines import recommend_ray

    rows = written = short = 0
    missing = []
    for part, lo in enumerate(chunks):
        path = part_path(out, part)
        n = min(cfg.chunk_users, len(users) - lo)
        if path.is_file():  # finished by an earlier, interrupted run
            rows += pq.read_metadata(path).num_rows
            bar.update(n)
            continue
        ids = [str(i) for i in raw_ids[lo : lo + n]]
        missing.append(
            pa.table(
                {
                    "part": pa.array([part], pa.int64()),
                    "user_idx": pa.array([users[lo : lo + n]], pa.list_(pa.int64())),
                    "user_id": pa.array([ids], pa.list_(pa.string())),
                }
            )
        )
    # The actors' working folder and environment are not the driver's: absolute paths, and
    # the tracking URI that the driver resolved (for a run id or models:/ URI).
    if Path(cfg.model).is_dir():
        sent = replace(cfg, model=str(Path(cfg.model).resolve()))
    else:
        sent = replace(cfg, tracking_uri=resolve_uri(cfg.tracking_uri))
    sent = replace(sent, output=str(out.resolve()))
    rerank = False if plan is None else plan.cfg
    args = (sent, rerank, job["weights_sha256"])
    for done in recommend_ray.map_parts(missing, PartWriter, args, cfg.ray_actors):
        rows += done["rows"]
        short += done["short"]
        written += 1
        bar.update(done["users"])
    lost = [p.name for p in (part_path(out, i) for i in range(len(chunks))) if not p.is_file()]
    if lost:
        raise ValueError(
            f"Ray's actors wrote {lost[0]} (and {len(lost) - 1} more) where this driver does "
            f"not see it: --output {cfg.output!r} must be a folder every node sees"
        )
    return rows, written, short
