"""The command line: ``rush-dask worker | status | logs | stop | dashboard | server``.

Every command but ``server`` talks to the Redis at ``--url`` (default
``$RUSH_REDIS_URL``; prefer the variable, since a password in ``--url`` shows
in ``ps``). Run ``rush-dask COMMAND --help`` for the options, or read
``docs/cli.md``.

>>> # shell: rush-dask server --port 6380            (prints export RUSH_REDIS_URL=...)
>>> # shell: rush-dask worker --network test --n-workers 4
>>> # shell: rush-dask status --network test --watch 2

Errors that a person can fix (no Redis at the URL, an unknown network, bad
``--resources``) print one line that says what to do and exit non-zero:
2 for bad input, 1 otherwise.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import secrets
import shlex
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from ..core import constants as C
from ..core.connections import URL_ENV, redact

if TYPE_CHECKING:
    from ..core.control import Network
    from ..core.network import NetworkView
    from ..rush import Rush

PASSWORD_ENV = "RUSH_REDIS_PASSWORD"
_URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.\-]*://[^\s'\"<>]+", re.IGNORECASE)
_FOLLOW_PERIOD = 0.5  # seconds between polls of logs --follow
_LOG_SEARCH_CHUNK = 1_000  # log entries read per step when a trimmed log shifted


class BadInput(click.ClickException):
    """Bad command-line input: one line, exit code 2 (as click's usage errors)."""

    exit_code = 2


def redact_text(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``.

    >>> redact_text("cannot reach redis://:pw@host:6379/0 now")
    'cannot reach redis://:***@host:6379/0 now'
    """
    return _URL_IN_TEXT.sub(lambda match: redact(match.group(0)), text)


def parse_resources(text: str | None) -> dict[str, float] | None:
    """``"GPU=1,MEM=4"`` -> ``{"GPU": 1, "MEM": 4}``; raises :class:`BadInput` on anything else.

    >>> parse_resources("GPU=1,MEM=0.5")
    {'GPU': 1, 'MEM': 0.5}
    """
    if text is None:
        return None
    resources: dict[str, float] = {}
    for item in text.split(","):
        name, _, amount = item.strip().partition("=")
        name = name.strip()
        try:
            value = float(amount)
        except ValueError:
            value = float("nan")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", name) or not value >= 0 or value == float("inf"):
            raise BadInput(
                f"bad --resources {text!r}: give NAME=AMOUNT pairs separated by commas, e.g. --resources GPU=1,MEM=4"
            )
        if name in resources:
            raise BadInput(f"bad --resources {text!r}: {name} is given twice")
        resources[name] = int(value) if value.is_integer() else value
    return resources


def import_function(spec: str) -> Callable[..., Any]:
    """The function named by ``"module:function"`` (the current directory is importable).

    >>> import_function("os.path:join")("a", "b")
    'a/b'
    """
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise BadInput(f"bad --fun {spec!r}: give MODULE:FUNCTION, e.g. --fun mypackage.tasks:simulate")
    if os.getcwd() not in sys.path:  # as with `python -m`: a module next to you can be named
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInput(
            f"--fun {spec!r}: cannot import {module_name!r} ({exc}); run from the directory "
            "that holds it or add it to PYTHONPATH"
        ) from None
    fun: object = module
    for part in name.split("."):
        fun = getattr(fun, part, None)
    if not callable(fun):
        raise BadInput(f"--fun {spec!r}: module {module_name!r} has no function {name!r}")
    return fun


def _errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a person can fix into one line (no traceback) and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import redis

        from ..core.errors import RedisUnavailableError, WorkerStartError

        try:
            return command(*args, **kwargs)
        except RedisUnavailableError as exc:
            message = str(exc)
            if message.startswith("cannot reach Redis"):  # connect()'s advice is for Python callers
                message = (
                    f"cannot reach Redis at {redact(kwargs.get('url') or '')}: start a server "
                    f"there (rush-dask server) or pass the right --url / ${URL_ENV}"
                )
            raise click.ClickException(message) from None
        except redis.RedisError as exc:
            raise click.ClickException(
                f"Redis error: {redact_text(str(exc))}; check that the server is up and try again"
            ) from None
        except WorkerStartError as exc:
            raise click.ClickException(redact_text(str(exc))) from None

    return wrapper


def _url_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--url",
        envvar=URL_ENV,
        default=None,
        metavar="URL",
        show_envvar=True,
        help="Redis URL, e.g. redis://:PASSWORD@host:6379/0 (prefer the environment variable: "
        "a password on the command line shows in ps)",
    )(command)


def _network_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--network", required=True, help="Network id.")(command)


def _check_target(network: str, url: str | None) -> str:
    """Refuse a missing URL or a bad network id, in one line that says what to do; returns the URL."""
    if not url:
        raise BadInput(f"no Redis URL: pass --url redis://HOST:PORT/0 or set ${URL_ENV} (rush-dask server starts one)")
    try:
        C.check_network_id(network)
    except ValueError as exc:
        raise BadInput(f"bad --network: {exc}") from None
    return url


def _rush(network: str, url: str | None) -> Rush:
    """A controller attached to ``network`` at ``url``, with the errors a person can fix."""
    url = _check_target(network, url)
    from ..rush import Rush

    return Rush(network, url)


def _existing_network(network: str, url: str | None, worker_ids: Sequence[str] = ()) -> Network:
    """A light handle (no dask, no pandas) on ``network``, which must already hold workers or
    tasks (and ``worker_ids``); one line that says what to do otherwise."""
    url = _check_target(network, url)
    from ..core.control import Network

    net = Network(network, url)
    if net.exists():
        known = set(net.worker_ids)
        unknown = [wid for wid in worker_ids if wid not in known]
        if unknown:
            raise click.ClickException(
                f"unknown worker id(s) {', '.join(unknown)} in network {network!r}; rush-dask status --all lists them"
            )
        return net
    found = list_networks(net.client)
    listing = (
        f"networks there: {', '.join(found[:10])}{', ...' if len(found) > 10 else ''}"
        if found
        else "it holds no network yet"
    )
    net.close()
    raise click.ClickException(
        f"unknown network {network!r} at {redact(net.url)} ({listing}); check --network and --url"
    )


def list_networks(client: Any) -> list[str]:
    """Ids of the networks in the Redis database of ``client``, sorted (one SCAN over the keys).

    >>> list_networks(rush.client)   # doctest: +SKIP
    ['test']
    """
    return sorted(
        {
            match.group(1)
            for key in client.scan_iter(match="rush:{*}:*", count=1000)
            if (match := re.match(r"rush:\{([^}]*)\}:", key.decode(errors="replace")))
        }
    )


@contextmanager
def _caught_signals() -> Iterator[list[int]]:
    """Record SIGINT/SIGTERM in a list instead of acting on them (the caller polls it)."""
    received: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: received.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """rush_dask from the shell: start workers, watch a network, read logs, stop workers, run Redis."""


# -------------------------------------------------------------------------- worker
@main.command()
@_network_option
@_url_option
@click.option(
    "--n-workers",
    "-n",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes to start on this host (default: CPU count).",
)
@click.option(
    "--fun",
    "fun_spec",
    metavar="MODULE:FUNCTION",
    help="The function that runs tasks pushed without fun= (default: none; tasks carry it).",
)
@click.option(
    "--start-id", default=None, help="Start from a configuration a controller stored (Rush.worker_script prints it)."
)
@click.option(
    "--heartbeat-period",
    type=float,
    default=C.DEFAULT_HEARTBEAT_PERIOD,
    show_default=True,
    help="Seconds between heartbeats.",
)
@click.option(
    "--heartbeat-expire",
    type=float,
    default=None,
    help="Seconds without a heartbeat before a worker counts as lost (default: 6 periods).",
)
@click.option(
    "--resources",
    "resources_spec",
    metavar="NAME=AMOUNT,...",
    help="What each worker offers to tasks that need resources, e.g. GPU=1,MEM=4.",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep the workers' stdout/stderr files there (default: a temporary directory).",
)
@click.pass_context
@_errors
def worker(
    ctx: click.Context,
    network: str,
    url: str | None,
    n_workers: int | None,
    fun_spec: str | None,
    start_id: str | None,
    heartbeat_period: float,
    heartbeat_expire: float | None,
    resources_spec: str | None,
    log_dir: str | None,
) -> None:
    """Start workers for a network on this host and run until they stop.

    Without --fun or --start-id the workers are generic: they run Dask graph
    nodes and tasks pushed with push_tasks(..., fun=...). Ctrl-C or SIGTERM
    stops them gracefully (each finishes its running task); a second one kills them.
    """
    if start_id is not None:
        stored = {
            "fun_spec": "--fun",
            "heartbeat_period": "--heartbeat-period",
            "heartbeat_expire": "--heartbeat-expire",
            "resources_spec": "--resources",
        }
        given = [flag for name, flag in stored.items() if ctx.get_parameter_source(name) != ParameterSource.DEFAULT]
        if given:
            raise BadInput(f"--start-id uses the stored configuration; drop {', '.join(given)}")
    resources = parse_resources(resources_spec)
    fun = import_function(fun_spec) if fun_spec else None
    rush = _rush(network, url)
    with _caught_signals() as received:
        try:
            try:
                ids = rush.start_workers(
                    fun,
                    n_workers,
                    heartbeat_period=heartbeat_period,
                    heartbeat_expire=heartbeat_expire,
                    resources=resources,
                    log_dir=log_dir,
                    start_id=start_id,
                )
            except (TypeError, ValueError) as exc:
                raise BadInput(str(exc)) from None
            click.echo(f"starting {len(ids)} workers for network {network!r} at {redact(rush.url)}")
            for wid in ids:
                click.echo(f"worker {wid}")
            while not received:
                try:
                    rush.wait_for_workers(worker_ids=ids, timeout=0.5)
                    click.echo(f"{len(ids)} workers running; Ctrl-C stops them gracefully (twice: kills them)")
                    break
                except TimeoutError:
                    pass
            code = _supervise(rush, ids, received)
        finally:
            rush.close()
    ctx.exit(code)


def _supervise(rush: Rush, ids: list[str], received: list[int]) -> int:
    """Wait until every worker process exited, forwarding stop orders; the exit code."""
    import redis

    procs = [rush.local_workers[wid] for wid in ids]
    handled = 0
    exited: set[str] = set()
    failed = False
    while len(exited) < len(procs):
        if len(received) > handled:
            handled = len(received)
            alive = [proc.worker_id for proc in procs if proc.alive]
            kind = "terminate" if handled == 1 else "kill"
            click.echo(
                "stopping the workers: each finishes its running task (again: kill them)"
                if kind == "terminate"
                else "killing the workers"
            )
            try:  # through Redis: idle workers wake at once, the states say "killed"
                running = set(rush.running_worker_ids)
                rush.stop_workers(kind, [wid for wid in alive if wid in running])
            except redis.RedisError:  # Redis gone: the signals still stop them
                pass
            for proc in procs:
                proc.signal(signal.SIGTERM if kind == "terminate" else signal.SIGKILL)
        for proc in procs:
            if proc.worker_id in exited or proc.alive:
                continue
            exited.add(proc.worker_id)
            try:  # a crashed worker is still "running": mark it lost now, its tasks go back
                rush.detect_lost_workers()
                state = rush._worker_states().get(proc.worker_id, "unknown")
            except redis.RedisError:
                state = "unknown (Redis unreachable)"
            click.echo(f"worker {proc.worker_id} exited with code {proc.process.returncode} ({state})")
            if state not in (C.WorkerState.TERMINATED, C.WorkerState.KILLED):
                failed = True
                click.echo(f"last lines of {proc.stderr_path}:\n{redact_text(proc.stderr_tail())}", err=True)
        time.sleep(0.1)
    return 1 if failed else 0


# -------------------------------------------------------------------------- status
@main.command()
@_network_option
@_url_option
@click.option("--all", "show_all", is_flag=True, help="Also list stopped workers.")
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    default=None,
    metavar="SECONDS",
    help="Refresh every SECONDS until Ctrl-C.",
)
@_errors
def status(network: str, url: str | None, show_all: bool, watch: float | None) -> None:
    """Workers (id, state, host, pid, heartbeat age, resources) and task counts of a network."""
    net = _existing_network(network, url)
    try:
        while True:
            text = status_text(net, show_all)
            if watch and sys.stdout.isatty():
                click.clear()
            click.echo(text)
            if not watch:
                return
            time.sleep(watch)
            if not sys.stdout.isatty():
                click.echo()
    except KeyboardInterrupt:
        pass


def status_text(view: NetworkView, show_all: bool = False) -> str:
    """The text that ``rush-dask status`` prints for one network (``view``: a Rush or a Network).

    >>> print(status_text(Rush("test")))    # doctest: +SKIP
    """
    rows = view._worker_rows()
    counts = view._counts()
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"network {view.network_id!r} at {redact(view.url)} ({now})"]
    by_state: dict[str, int] = {}
    for row in rows:
        by_state[row["state"]] = by_state.get(row["state"], 0) + 1
    by_state = dict(sorted(by_state.items(), key=lambda item: -item[1]))  # most common first
    lines.append("workers: " + (", ".join(f"{n} {state}" for state, n in by_state.items()) or "none"))
    shown = rows if show_all else [row for row in rows if row["state"] == C.WorkerState.RUNNING]
    if shown:
        table = [("WORKER", "STATE", "HOST", "PID", "HEARTBEAT", "RESOURCES")]
        for row in shown:
            if row["state"] != C.WorkerState.RUNNING:
                beat = "-"
            elif row["heartbeat_age"] is None:
                beat = "expired"
            else:
                beat = f"{row['heartbeat_age']:.1f}s ago"
            resources = ",".join(f"{k}={v:g}" for k, v in sorted(row["resources"].items())) or "-"
            pid = "-" if row["pid"] is None else str(row["pid"])
            table.append((row["worker_id"], row["state"], row["hostname"] or "-", pid, beat, resources))
        widths = [max(len(cells[i]) for cells in table) for i in range(len(table[0]))]
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(cells, widths)).rstrip() for cells in table]
    hidden = len(rows) - len(shown)
    if hidden:
        lines.append(f"  ({hidden} stopped workers not shown: --all lists them)")
    lines.append(
        f"tasks: {counts['queued']} queued, {counts['priority']} queued priority, "
        f"{counts['running']} running, {counts['finished']} finished, {counts['failed']} failed"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- logs
@main.command()
@_network_option
@_url_option
@click.option(
    "--worker", "worker_ids", multiple=True, metavar="ID", help="Only this worker's lines (repeat for several)."
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("--tail", type=click.IntRange(min=0), default=None, metavar="N", help="Start with the last N lines only.")
@_errors
def logs(network: str, url: str | None, worker_ids: tuple[str, ...], follow: bool, tail: int | None) -> None:
    """Print the log lines that workers (and code in tasks) wrote, oldest first."""
    net = _existing_network(network, url, worker_ids)
    reader = LogReader(net, list(worker_ids) or None)
    try:
        records = reader.read()
        if tail is not None:
            records = records[len(records) - tail :] if tail else []
        while True:
            for record in records:
                click.echo(format_log_record(record))
            if not follow:
                return
            time.sleep(_FOLLOW_PERIOD)
            records = reader.read()
    except KeyboardInterrupt:
        pass


def format_log_record(record: dict[str, Any]) -> str:
    """One log record as a line: time (UTC), worker, level, logger, message (URLs redacted).

    >>> format_log_record({"time": 0, "worker_id": "w1", "level": "INFO", "logger": "x", "message": "hi"})
    '1970-01-01 00:00:00.000 w1 INFO    x: hi'
    """
    when = datetime.fromtimestamp(record["time"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return (
        f"{when} {record['worker_id']} {record['level']:<7} {record['logger']}: {redact_text(str(record['message']))}"
    )


class LogReader:
    """Reads the log records that are new since the previous :meth:`read` (all at first).

    Each worker's log is a Redis list trimmed to its newest entries; the
    reader remembers how far it read and the last entry it saw, so it keeps
    up when trimming shifts the list.

    >>> reader = LogReader(rush)        # doctest: +SKIP
    >>> reader.read()[-1]["message"]    # doctest: +SKIP
    """

    def __init__(self, rush: NetworkView, worker_ids: list[str] | None = None):
        self.rush = rush
        self.worker_ids = worker_ids
        self._seen: dict[str, tuple[int, bytes]] = {}  # worker -> (entries read, the last one)

    def read(self) -> list[dict[str, Any]]:
        """New records of every (chosen) worker, merged in time order."""
        ids = self.worker_ids or self.rush.worker_ids
        client, keys = self.rush.client, self.rush.keys
        pipe = client.pipeline(transaction=False)
        for wid in ids:
            count, _ = self._seen.get(wid, (0, b""))
            pipe.lindex(keys.log(wid), count - 1)
        at_last = pipe.execute() if ids else []
        starts = {}
        for wid, entry in zip(ids, at_last):
            count, last = self._seen.get(wid, (0, b""))
            starts[wid] = count if not count or entry == last else self._after(keys.log(wid), last)
        pipe = client.pipeline(transaction=False)
        for wid in ids:
            pipe.lrange(keys.log(wid), starts[wid], -1)
        records = []
        for wid, entries in zip(ids, pipe.execute() if ids else []):
            if entries:
                self._seen[wid] = (starts[wid] + len(entries), entries[-1])
            for entry in entries:
                record = json.loads(entry)
                record["worker_id"] = wid
                records.append(record)
        return sorted(records, key=lambda record: record["time"])

    def _after(self, key: str, last: bytes) -> int:
        """Index just after ``last`` in a log that was trimmed since (0 if it is gone)."""
        length: int = self.rush.client.llen(key)
        stop = length
        while stop > 0:
            start = max(0, stop - _LOG_SEARCH_CHUNK)
            chunk = self.rush.client.lrange(key, start, stop - 1)
            for i in range(len(chunk) - 1, -1, -1):
                if chunk[i] == last:
                    return start + i + 1
            stop = start
        return 0


# ---------------------------------------------------------------------------- stop
@main.command()
@_network_option
@_url_option
@click.option(
    "--worker",
    "worker_ids",
    multiple=True,
    metavar="ID",
    help="Stop only this worker (repeat for several; default: every running worker).",
)
@click.option(
    "--kill", is_flag=True, help="Kill now: their running tasks fail (default: terminate, each finishes its task)."
)
@_errors
def stop(network: str, url: str | None, worker_ids: tuple[str, ...], kill: bool) -> None:
    """Stop the workers of a network, on any host.

    Idle workers stop at once; workers on other hosts that are busy see the
    order when their task ends (terminate) or at their next heartbeat (kill).
    """
    net = _existing_network(network, url, worker_ids)
    running = set(net.running_worker_ids)
    for wid in worker_ids:
        if wid not in running:
            click.echo(f"worker {wid} is not running")
    targets = [wid for wid in (worker_ids or sorted(running)) if wid in running]
    if not targets:
        click.echo(f"no running worker to stop in network {network!r}")
        return
    net.stop_workers("kill" if kill else "terminate", targets)
    if kill:
        click.echo(f"killed {len(targets)} workers (their running tasks failed): {' '.join(targets)}")
    else:
        click.echo(f"asked {len(targets)} workers to terminate after their running task: {' '.join(targets)}")


# ----------------------------------------------------------------------- dashboard
@main.command()
@_network_option
@_url_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to serve the page on (0.0.0.0: every interface; anyone who reaches it sees the network).",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8787, show_default=True, help="TCP port (0: any free port)."
)
@click.option("--allow-control", is_flag=True, help="Add buttons that stop or kill workers (default: read-only).")
@click.option(
    "--period",
    type=click.FloatRange(min=0.1),
    default=0.5,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between reads of Redis while a page is open.",
)
@_errors
def dashboard(network: str, url: str | None, host: str, port: int, allow_control: bool, period: float) -> None:
    """Serve a live web page of a network (workers, tasks, computes, failures, log, Redis)
    and Prometheus metrics at /metrics, until Ctrl-C.

    Other networks of the same Redis can be chosen on the page. Needs the
    dashboard extra: pip install 'rush-dask[dashboard]'.
    """
    try:
        from ..dashboard.app import DashboardThread
    except ImportError:
        from ..dashboard import MISSING_HINT

        raise click.ClickException(MISSING_HINT) from None
    net = _existing_network(network, url)
    net.close()
    with _caught_signals() as received:
        try:
            server = DashboardThread(net.url, network, host, port, allow_control=allow_control, period=period).start()
        except OSError as exc:
            raise click.ClickException(
                f"cannot serve on {host}:{port} ({exc.strerror or exc}): choose another --port or --host"
            ) from None
        click.echo(
            f"dashboard of network {network!r} at {redact(net.url)}: {server.url}"
            f"{' (control on)' if allow_control else ''}; metrics at "
            f"{server.url.split('?')[0]}metrics; Ctrl-C stops it"
        )
        try:
            while not received:
                time.sleep(0.2)
        finally:
            server.stop()


# -------------------------------------------------------------------------- server
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=6379, show_default=True, help="TCP port (0: any free port)."
)
@click.option(
    "--password",
    envvar=PASSWORD_ENV,
    show_envvar=True,
    default=None,
    help="Password clients must give (default: a random one, printed once).",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep the data there in an append-only file; a restart with the same --dir brings it back.",
)
@_errors
def server(host: str, port: int, password: str | None, directory: str | None) -> None:
    """Run a Redis server for a cluster of workers until Ctrl-C or SIGTERM.

    It prints the line to run where workers and controllers run:
    export RUSH_REDIS_URL=redis://:PASSWORD@HOST:PORT/0 (the only place the
    password is shown).
    """
    from urllib.parse import quote

    import redis

    from ..core.server import RedisServer

    if password is not None and not password:
        raise BadInput("--password is empty: give one, or leave it out to get a random one")
    password = password or secrets.token_urlsafe(24)
    if directory is not None:
        directory = os.path.abspath(directory)  # the server chdirs there: relative paths would break
        os.makedirs(directory, exist_ok=True)
    if port:  # else start() would take a server already there for the one it started
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Redis does
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise click.ClickException(
                    f"cannot listen on {host}:{port} ({exc.strerror}): choose another --port or --host"
                ) from None
    with _caught_signals() as received:
        redis_server = RedisServer(
            directory=directory, tcp=True, port=port, bind=host, password=password, appendonly=directory is not None
        )
        try:
            redis_server.start()
        except (RuntimeError, redis.RedisError):
            last = redis_server.read_log().strip().splitlines()[-1:] or ["no log"]
            redis_server.stop()
            raise click.ClickException(
                f"the Redis server did not start on {host}:{redis_server.port}: "
                f"{re.sub(r'^[0-9]+:[A-Z] .*? [#*.-] ', '', last[0])}; choose another --port or --host"
            ) from None
        try:
            public = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
            public = f"[{public}]" if ":" in public else public
            url = f"redis://:{quote(password, safe='')}@{public}:{redis_server.port}/0"
            where = f"append-only file in {directory}" if directory else "no persistence (--dir keeps the data)"
            click.echo(
                f"Redis server listening on {host}:{redis_server.port}, password required, "
                f"{where}. Run this where workers and controllers run "
                "(the password is not shown again):",
                err=True,
            )
            click.echo(f"export {URL_ENV}={shlex.quote(url)}")
            click.echo("Ctrl-C or SIGTERM stops the server.", err=True)
            while not received and redis_server.running:
                time.sleep(0.1)
            if not received:
                code = redis_server.process.returncode if redis_server.process else None
                last = redis_server.read_log().strip().splitlines()[-1:] or ["no log"]
                raise click.ClickException(f"the Redis server exited with code {code}: {last[0]}")
        finally:
            redis_server.stop()
    click.echo("Redis server stopped" + (f"; data kept in {directory}" if directory else ""), err=True)


if __name__ == "__main__":
    main(prog_name="rush-dask")
