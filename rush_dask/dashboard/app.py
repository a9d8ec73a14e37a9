"""The dashboard's web application (aiohttp): the page, live updates, metrics, control.

Routes:

* ``GET /`` the page (``static/index.html``), ``GET /static/...`` its files;
* ``GET /api/config`` the default network, the networks found, whether
  control is allowed, and the token that control requests must carry;
* ``GET /events?network=N`` server-sent events: one JSON snapshot (see
  :mod:`.snapshot`) per poll period;
* ``GET /api/snapshot?network=N`` one snapshot;
* ``GET /metrics`` Prometheus text format (see :mod:`.metrics`);
* ``POST /api/stop`` ``{"network", "worker_id", "type": "terminate"|"kill"}``,
  only with ``allow_control``: the same :func:`rush_dask.core.control.stop_workers`
  as ``rush-dask stop``.

The page gets the Redis URL only redacted; the password never leaves the server.

>>> app = make_app("redis://127.0.0.1:6379/0", "test")   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from ..core import constants as C
from ..core.connections import connect, redact
from ..deploy.cli import list_networks, redact_text
from .metrics import Metrics
from .snapshot import Monitor

STATIC = Path(__file__).parent / "static"
_STATE: web.AppKey[Dashboard] = web.AppKey("state")


class Dashboard:
    """What the routes share: the Redis client, one :class:`Monitor` per network watched."""

    def __init__(self, url: str, network_id: str, *, allow_control: bool = False, period: float = 0.5):
        self.url = url
        self.network_id = C.check_network_id(network_id)
        self.allow_control = allow_control
        self.period = period
        self.token = secrets.token_urlsafe(24)
        self.client = connect(url)  # raises RedisUnavailableError (redacted) at once
        self.monitors: dict[str, Monitor] = {}
        self.lock = threading.Lock()
        self.metrics = Metrics(lambda: list(self.monitors.values()), max_age=0.0)  # a scrape reads now

    def networks(self) -> list[str]:
        """The networks of the database, from a SCAN at most every 30 s (shared with the monitors)."""
        fresh = [m for m in self.monitors.values() if m.networks]
        return fresh[0].networks if fresh else list_networks(self.client)

    def monitor(self, network_id: str | None) -> Monitor:
        """The monitor of ``network_id`` (default: the dashboard's); KeyError if it holds nothing."""
        network_id = network_id or self.network_id
        with self.lock:
            if network_id in self.monitors:
                return self.monitors[network_id]
        try:
            keys = C.Keys(network_id)
        except ValueError as exc:
            raise KeyError(str(exc)) from None
        if network_id != self.network_id and not self.client.exists(
            keys.worker_states, keys.all_tasks, keys.queue, keys.seq
        ):
            raise KeyError(f"unknown network {network_id!r} at {redact(self.url)}")
        with self.lock:
            return self.monitors.setdefault(network_id, Monitor(self.client, self.url, network_id))

    async def snapshot(self, monitor: Monitor) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        snap = await loop.run_in_executor(None, monitor.poll, self.period * 0.9)
        self.metrics.observe(monitor)
        return snap


def _monitor_or_404(request: web.Request) -> Monitor:
    try:
        monitor: Monitor = request.app[_STATE].monitor(request.query.get("network"))
        return monitor
    except KeyError as exc:
        raise web.HTTPNotFound(text=json.dumps({"error": exc.args[0]}), content_type="application/json") from None


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def config(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    loop = asyncio.get_running_loop()
    networks = await loop.run_in_executor(None, state.networks)
    if state.network_id not in networks:
        networks = sorted([*networks, state.network_id])
    return web.json_response(
        {
            "network": state.network_id,
            "networks": networks,
            "url": redact(state.url),
            "allow_control": state.allow_control,
            "period": state.period,
            "token": state.token if state.allow_control else None,
        }
    )


async def snapshot(request: web.Request) -> web.Response:
    return web.json_response(await request.app[_STATE].snapshot(_monitor_or_404(request)))


async def events(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    monitor = _monitor_or_404(request)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    since = None  # the chart's history goes once in full, then only its new points
    try:
        while True:
            try:
                snap = await state.snapshot(monitor)
            except Exception as exc:  # Redis away: say so and keep trying (the page shows it)
                message = json.dumps({"error": redact_text(f"{type(exc).__name__}: {exc}")})
                await response.write(f"event: failure\ndata: {message}\n\n".encode())
            else:
                if since is not None:
                    snap = {**snap, "history": [p for p in snap["history"] if p["t"] > since], "history_delta": True}
                if snap["history"]:
                    since = snap["history"][-1]["t"]
                await response.write(f"data: {json.dumps(snap)}\n\n".encode())
            await asyncio.sleep(state.period)
    except (asyncio.CancelledError, ConnectionError, RuntimeError):  # the page went away
        pass
    return response


async def metrics(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    if not state.monitors:
        state.monitor(None)
    body = await asyncio.get_running_loop().run_in_executor(None, state.metrics.text)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def stop(request: web.Request) -> web.Response:
    from ..core.control import stop_workers

    state = request.app[_STATE]
    if not state.allow_control:
        raise web.HTTPForbidden(text="control is off: start the dashboard with --allow-control")
    if not secrets.compare_digest(request.headers.get("X-Rush-Token", ""), state.token):
        raise web.HTTPForbidden(text="missing or wrong X-Rush-Token (reload the page)")
    try:
        body = await request.json()
        kind, wid = body["type"], body["worker_id"]
        monitor = state.monitor(body.get("network"))
        ids = await asyncio.get_running_loop().run_in_executor(None, stop_workers, monitor.net, kind, [wid])
    except (ValueError, KeyError, TypeError) as exc:
        raise web.HTTPBadRequest(text=json.dumps({"error": str(exc)}), content_type="application/json") from None
    return web.json_response({"stopped": ids, "type": kind})


def make_app(url: str, network_id: str, *, allow_control: bool = False, period: float = 0.5) -> web.Application:
    """The aiohttp application of a dashboard of ``network_id`` at ``url``.

    >>> web.run_app(make_app(url, "test"), host="127.0.0.1", port=8787)   # doctest: +SKIP
    """
    app = web.Application()
    app[_STATE] = Dashboard(url, network_id, allow_control=allow_control, period=period)
    app.router.add_get("/", index)
    app.router.add_get("/api/config", config)
    app.router.add_get("/api/snapshot", snapshot)
    app.router.add_get("/events", events)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/api/stop", stop)
    app.router.add_static("/static/", STATIC)
    return app


class DashboardThread:
    """A dashboard served from a background thread with its own event loop.

    >>> server = DashboardThread(rush.url, rush.network_id, port=0).start()
    >>> server.url  # doctest: +ELLIPSIS
    'http://127.0.0.1:...'
    >>> server.stop()
    """

    def __init__(
        self,
        url: str,
        network_id: str,
        host: str = "127.0.0.1",
        port: int = 8787,
        *,
        allow_control: bool = False,
        period: float = 0.5,
    ):
        self.host, self.port = host, port
        self.app = make_app(url, network_id, allow_control=allow_control, period=period)
        self.network_id = network_id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The page of the dashboard's network."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/?network={self.network_id}"

    def start(self) -> DashboardThread:
        """Start serving; returns once the port listens, or raises OSError (e.g. the port is taken)."""
        self._thread = threading.Thread(target=self._serve, name="rush-dashboard", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=1)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port, reuse_address=False)
            loop.run_until_complete(site.start())
            assert isinstance(site._server, asyncio.Server)
            self.port = site._server.sockets[0].getsockname()[1]  # the real port when port=0
        except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        pending = asyncio.all_tasks(loop)  # event streams still open: end them quietly
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    async def _shutdown(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
        asyncio.get_running_loop().stop()

    def stop(self) -> None:
        """Stop serving (open event streams are closed) and wait for the thread."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            self._thread.join(10)
