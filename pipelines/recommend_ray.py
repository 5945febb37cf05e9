"""The batch job's Ray engine (``recsys recommend --engine ray``): Ray Data's batch
inference pattern over the job's parts.

:func:`pipelines.recommend.run` lists the parts still missing; here they become a Ray
Dataset of one row per part (its number, user indices and raw IDs), and
``Dataset.map_batches`` hands each row to a fixed pool of actors
(``ActorPoolStrategy(size=N)``). Each actor is a callable class
(:class:`pipelines.recommend.PartWriter`) that loads the model once and writes whole
parts, atomically, with the local engine's own function; only a few numbers per part
come back to the driver, which then writes the manifest. So the parts are those of the
local engine, and a killed job re-run writes only the missing ones.

Re-ranking with exposure budgets is refused before this runs: each chunk spends what the
chunks before it left, so the chunks cannot run side by side.

``ray`` is imported inside functions only: without it everything else works, and
``--engine ray`` stops with one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from typing import Any

log = logging.getLogger(__name__)

RAY_MISSING = "--engine ray needs Ray: pip install 'recsys[ray]'"
CONNECT_TIMEOUT_S = 10.0
# A gRPC (HTTP/2) client's first bytes: the connection preface and an empty SETTINGS
# frame. A Ray head (its GCS, or the Ray Client server) answers with a SETTINGS frame.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 0x04


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or ``ValueError`` saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ValueError(RAY_MISSING) from None
    return ray


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ``ValueError`` naming ``address`` unless a Ray head answers there.

    Ray itself retries an address where nothing answers for minutes and then exits the
    process; this asks once, with ``timeout``: a TCP connection, then the HTTP/2 greeting
    that every gRPC server (a Ray head's GCS, a Ray Client server) answers.
    """
    if address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(
            f"--ray-address {address!r}: expected HOST:PORT (the head's `ray start --head "
            "--port PORT`), ray://HOST:PORT or 'auto'"
        )
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return  # a TLS cluster answers no plain-text greeting
            s.sendall(_H2_PREFACE)
            head = b""
            while len(head) < 9:
                got = s.recv(9 - len(head))
                if not got:
                    break
                head += got
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise ValueError(
            f"--ray-address {address!r}: no Ray cluster answers there ({reason}); start "
            "its head with `ray start --head --port 6379` and give HEAD:6379"
        ) from None
    if len(head) < 9 or head[3] != _H2_SETTINGS:
        raise ValueError(
            f"--ray-address {address!r}: something answers there, but not a Ray cluster's "
            "head (no gRPC server); give the port of `ray start --head --port PORT`"
        )


@contextlib.contextmanager
def session(address: str | None) -> Iterator[Any]:
    """Ray for one job: the cluster at ``address`` joined, or (None) a Ray started on this
    machine for the job and stopped after it. A process already connected to Ray (a
    notebook, a test) keeps its connection, and Ray keeps running after the job.
    """
    ray = import_ray()
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address not in (None, "auto", current):
            raise ValueError(
                f"--ray-address {address!r}: this process is already connected to the Ray "
                f"cluster at {current!r}"
            )
        yield ray
        return
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    auth_mode = os.environ.get("RAY_AUTH_MODE")  # a new local Ray sets it for this process
    if address is None:
        # Ray's default for a new cluster is token authentication, with a warning that
        # says so on every start: kept, and not said.
        auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = auth.level
        auth.setLevel(logging.ERROR)
        try:
            ray.init(address="local", include_dashboard=False, **quiet)
        finally:
            auth.setLevel(level)
        log.info("started a local Ray: %s CPUs", ray.cluster_resources().get("CPU"))
    else:
        check_address(address)
        try:
            ray.init(address=address, **quiet)
        except Exception as e:  # ConnectionError, a missing token (AuthenticationError), ...
            raise ValueError(
                f"--ray-address {address!r}: cannot join the Ray cluster there ({e})"
            ) from None
        log.info("joined the Ray cluster at %s", address)
    try:
        yield ray
    finally:
        # Stops the Ray we started; from a joined cluster it only disconnects this driver.
        ray.shutdown()
        if auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth_mode


def map_parts(
    parts: Sequence[Any], worker: type, worker_args: tuple[Any, ...], actors: int
) -> Iterator[dict[str, int]]:
    """Run ``worker`` over ``parts`` (one-row pyarrow tables, each its own block) on a
    pool of ``actors`` actors of one CPU each; yield each finished part's result row, in
    the order they finish. Needs :func:`session`.
    """
    if not parts:
        return
    ray = import_ray()
    pool = min(actors, len(parts))  # an actor without a part would load the model for nothing
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < pool:
        raise ValueError(
            f"--ray-actors {actors}: the Ray cluster has {cpus:g} CPU(s), and each actor "
            "takes one; lower --ray-actors or add nodes"
        )
    ds = ray.data.from_arrow(list(parts))  # one block per part: the unit actors take
    ctx = ds.context  # this dataset's own copy: the process's defaults stay as they were
    ctx.enable_progress_bars = False  # the job has its own bar
    ctx.print_on_execution_start = False
    ctx.raise_original_map_exception = True  # our ValueError, not a UserCodeException
    results = ds.map_batches(
        worker,
        fn_constructor_args=worker_args,
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pool),
        num_cpus=1,
    )
    with _console_quiet("ray.data"):
        try:
            for row in results.iter_rows():
                yield {k: int(v) for k, v in row.items()}
        except Exception as e:
            plain = _plain(e)
            if plain is e:
                raise
            raise plain from e


@contextlib.contextmanager
def _console_quiet(name: str) -> Iterator[None]:
    """Silence logger ``name``'s console handlers for a while; its log files keep all.

    Ray Data prints its notices there, and an actor's error with its traceback, which
    the job raises itself, in one line.
    """
    consoles = [
        h
        for h in logging.getLogger(name).handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    levels = [h.level for h in consoles]
    for h in consoles:
        h.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for h, level in zip(consoles, levels, strict=True):
            h.setLevel(level)


def _plain(e: BaseException) -> BaseException:
    """The ``ValueError`` or ``OSError`` an actor raised, as it raised it, out of Ray's
    wrapping (``RayTaskError``, ``UserCodeException``) and without the lines Ray adds to
    its message; any other error as it came."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        c = todo.pop(0)
        if c is None or id(c) in seen:
            continue
        seen.add(id(c))
        ours = not type(c).__module__.startswith("ray")
        if ours and isinstance(c, ValueError):
            text = str(c.args[0]) if c.args else str(c)
            return ValueError(text.splitlines()[0] if text else text)
        if ours and isinstance(c, OSError):
            return c
        todo += [getattr(c, "cause", None), c.__cause__]
    return e
