"""Worker-to-worker transfer of result files, for consumers on another host.

Each worker runs a small TCP server (a thread of :class:`socketserver.ThreadingTCPServer`)
that sends the result files of its network on its host. A consumer on
another host asks for a task key and receives the file's bytes in one
stream (``os.sendfile`` on the sender: the bytes go from the page cache to
the socket without passing through Python), then unpickles them in place
as :func:`rush_dask.core.store.loads_frames` does for a mapped file: signature
first, then the out-of-band buffers as views of the received bytes.

Protocol, one request per line on a kept-alive connection::

    GET <task key> <token>\\n      ->  u64 size, then size bytes   (size 2**64-1: no such result)

The token is an HMAC of the network id and the task key under the network's
secret (or, without one, the Redis password), so a process that cannot talk
to Redis cannot read results either. Payloads are signed as everywhere else:
a forged file never unpickles, whoever sends it.

When the network reaches Redis over TLS (a ``rediss://`` URL), the data
server speaks TLS too, with a certificate it makes for itself at start-up
(:class:`TlsIdentity`). Its SHA-256 fingerprint is published in the
worker's hash in Redis, which the consumer reaches over TLS already; the
consumer accepts no other certificate (pinning: no CA to set up, and no one
between two workers can read or replace what they exchange).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket
import socketserver
import ssl
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any

from .serialize import mac

logger = logging.getLogger("rush_dask.worker")

_SIZE = struct.Struct("<Q")
MISSING = 2**64 - 1
TIMEOUT = 30.0  # seconds without progress before a transfer is given up


class TransferError(ConnectionError):
    """A result could not be fetched from the worker that holds it."""


def token(auth_key: bytes | None, network_id: str, key: str) -> str:
    """The request token for ``key`` (``-`` when the network has no key to sign with)."""
    if not auth_key:
        return "-"
    return mac(auth_key, f"rush-fetch\0{network_id}\0{key}".encode()).hex()


class TlsIdentity:
    """A throwaway key and self-signed certificate of one data server, and its fingerprint.

    >>> identity = TlsIdentity()
    >>> len(identity.fingerprint)
    64
    """

    def __init__(self) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rush_dask data server")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256())
        )
        der = cert.public_bytes(serialization.Encoding.DER)
        self.fingerprint = hashlib.sha256(der).hexdigest()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(prefix="rush-tls-") as directory:  # load_cert_chain wants files
            cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            key_path.touch(mode=0o600)
            key_path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            self.context.load_cert_chain(cert_path, key_path)


def _client_context() -> ssl.SSLContext:
    # The peer is checked by its certificate's fingerprint (published in Redis), not by a CA.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _Handler(socketserver.StreamRequestHandler):
    server: DataServer

    def setup(self) -> None:
        if self.server.tls is not None:
            self.request.settimeout(TIMEOUT)
            self.request = self.server.tls.context.wrap_socket(self.request, server_side=True)
            self.connection = self.request
        super().setup()

    def handle(self) -> None:
        self.connection.settimeout(TIMEOUT)
        while True:
            try:
                line = self.rfile.readline(4096)
            except OSError:
                return
            if not line:
                return
            parts = line.decode(errors="replace").split()
            if len(parts) != 3 or parts[0] != "GET":
                return
            _, key, given = parts
            expected = token(self.server.auth_key, self.server.network_id, key)
            if not hmac.compare_digest(given, expected) or "/" in key or key.startswith("."):
                logger.warning("data server: refused a request for %s (bad token)", key)
                return
            path = self.server.find(key)
            try:
                f = open(path, "rb") if path else None  # noqa: SIM115 (closed by the with below)
            except FileNotFoundError:
                f = None
            if f is None:
                self.wfile.write(_SIZE.pack(MISSING))
                self.wfile.flush()
                continue
            with f:
                size = os.fstat(f.fileno()).st_size
                self.wfile.write(_SIZE.pack(size))
                self.wfile.flush()
                self.connection.sendfile(f)


class DataServer(socketserver.ThreadingTCPServer):
    """Serves the result files of one network from this host's store; runs in a daemon thread.

    >>> server = DataServer(store, "127.0.0.1", auth_key=None).start()   # doctest: +SKIP
    >>> server.address                                                  # doctest: +SKIP
    '127.0.0.1:40123'
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, store: Any, host: str, port: int = 0, *, auth_key: bytes | None, tls: TlsIdentity | None = None):
        self.store = store
        self.network_id = store.network_id
        self.auth_key = auth_key
        self.tls = tls
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.address_family = family
        super().__init__((host, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def find(self, key: str) -> Path | None:
        for directory in (self.store.shm_dir, self.store.spill_dir):
            path: Path | None = None if directory is None else directory / key
            if path is not None and path.exists():
                return path
        return None

    def start(self) -> DataServer:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.5}, name="rush-data-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Fetcher:
    """Fetches result files from other workers' data servers, one kept-alive connection per peer."""

    def __init__(self, network_id: str, auth_key: bytes | None, timeout: float = TIMEOUT):
        self.network_id = network_id
        self.auth_key = auth_key
        self.timeout = timeout
        self._connections: dict[str, tuple[socket.socket, Any]] = {}
        self._lock = threading.Lock()

    def fetch(self, address: str, key: str, fingerprint: str | None = None) -> memoryview:
        """The bytes of result ``key`` held by the worker at ``address`` (over TLS to the
        certificate ``fingerprint`` when given); raises TransferError."""
        with self._lock:
            for attempt in (1, 2):  # a kept-alive connection may have been closed by the peer
                try:
                    return self._fetch_once(address, key, fingerprint)
                except (FileNotFoundError, TransferError):
                    raise
                except (OSError, EOFError) as exc:
                    self._drop(address)
                    if attempt == 2:
                        raise TransferError(f"could not fetch {key} from {address}: {exc}") from exc
        raise AssertionError("unreachable")

    def _fetch_once(self, address: str, key: str, fingerprint: str | None) -> memoryview:
        conn = self._connections.get(address)
        if conn is None:
            sock = socket.create_connection(_split_address(address), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if fingerprint:
                sock = _client_context().wrap_socket(sock)
                seen = hashlib.sha256(sock.getpeercert(binary_form=True) or b"").hexdigest()
                if not hmac.compare_digest(seen, fingerprint):
                    sock.close()
                    raise TransferError(
                        f"the data server at {address} showed a certificate that is "
                        "not the one its worker published in Redis; refused"
                    )
            conn = self._connections[address] = (sock, sock.makefile("rb"))
        sock, reader = conn
        sock.sendall(f"GET {key} {token(self.auth_key, self.network_id, key)}\n".encode())
        head = reader.read(_SIZE.size)
        if len(head) < _SIZE.size:
            raise EOFError("the data server closed the connection")
        (size,) = _SIZE.unpack(head)
        if size == MISSING:
            raise FileNotFoundError(f"result {key} is no longer held at {address}")
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = reader.readinto(view[got:])
            if not n:
                raise EOFError(f"the data server closed the connection after {got} of {size} bytes")
            got += n
        return view

    def _drop(self, address: str) -> None:
        conn = self._connections.pop(address, None)
        if conn is not None:
            try:
                conn[1].close()
                conn[0].close()
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            for address in list(self._connections):
                self._drop(address)
