"""The data plane: how the result of a graph node travels from its producer to its consumers.

Redis holds the *state* of every node (queued, running, finished; who
needs it; who holds it). The *bytes* of a result take the cheapest way:

* **Small results** (under ``OFFLOAD_MIN``, 64 KiB pickled) are stored in
  Redis (field ``ys``) and travel inside the pop reply of the node that
  needs them: no extra round trip.
* **Large results** stay on their producer's host, in a file of the host's
  shared memory (:mod:`rush_dask.store`; on disk when the shared memory is
  nearly full). Redis records ``at`` (the producer's worker id), ``host``,
  ``path`` and ``nbytes``. A consumer on the same host maps the file (no
  copy: numpy and pandas data are built on the mapped pages); a consumer
  on another host fetches it from the producer's data server
  (:mod:`rush_dask.transfer`); the client reading an output does the same.
* **Placement**: a node whose inputs are large is queued on the local queue
  of the worker that holds most of their bytes; that worker pops it before
  anything else, and an idle worker takes it from there when it has nothing
  of its own (no worker waits while another has work).

A result file is deleted when the node is: the script that drops the node
(its last dependent finished, the client released it, the graph was
cancelled) puts the file's path on the host's garbage list, which the next
worker of that host to call Redis empties and deletes.

A lost result (its file is gone and its worker with it, on another host)
raises :class:`ResultLostError` in the node that needed it; the client
computes the graph again from its lineage (the graph it still holds), a few
times at most.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Iterable, Sequence

from .constants import INLINE_LIMIT, Keys
from .errors import ResultLostError
from .serialize import dumps, loads, sign
from .store import LocalStore, dumps_frames, frames_size, loads_frames, map_file
from .transfer import DataServer, Fetcher, TransferError

OFFLOAD_MIN = INLINE_LIMIT  # bytes: results at least this large stay on their host
HOST_ENV = "RUSH_HOST_ID"
ADDRESS_ENV = "RUSH_DATA_ADDRESS"
# Fields of a node's task hash that say where its result is (see read_fields).
RESULT_FIELDS = ("ys", "at", "host", "path")


def host_id() -> str:
    """Who shares this host's shared memory: ``$RUSH_HOST_ID``, else hostname and boot id."""
    if os.environ.get(HOST_ENV):
        return os.environ[HOST_ENV]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def _address_towards(client: Any) -> str:
    """The local IP address from which this host reaches Redis (127.0.0.1 for a unix socket)."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs or not kwargs.get("host"):
        return "127.0.0.1"
    try:
        infos = socket.getaddrinfo(kwargs["host"], kwargs.get("port", 6379), type=socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)  # UDP: no packet is sent, the kernel only picks a route
            return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def auth_key(secret: bytes | None, url: str) -> bytes | None:
    """What data-server requests are authenticated with: the secret, else the Redis password."""
    if secret is not None:
        return secret
    from .connections import _secrets

    passwords = sorted(_secrets(url))
    return "\0".join(passwords).encode() if passwords else None


class DataPlane:
    """Writes and reads graph results for one process (a worker or a client) of a network.

    >>> plane = DataPlane(client, Keys("net"), secret=None, url=url)        # doctest: +SKIP
    >>> plane.read("g.1", [b"...pickle...", None, None, None])            # doctest: +SKIP
    """

    def __init__(self, client: Any, keys: Keys, *, secret: bytes | None, url: str):
        self.client = client
        self.keys = keys
        self.secret = secret
        self.host = host_id()
        self.store = LocalStore(keys.network_id)
        self._auth_key = auth_key(secret, url)
        self.fetcher = Fetcher(keys.network_id, self._auth_key)
        self._addresses: dict[str, str] = {}
        self.server: DataServer | None = None
        self.bytes_held = 0  # bytes of results written to this host's store
        self.bytes_local = 0  # bytes of results mapped from this host's files
        self.bytes_fetched = 0  # bytes of results fetched from other hosts

    # ----------------------------------------------------------- producer side
    def serve(self) -> str:
        """Start this process's data server (workers do); returns its address."""
        bind = os.environ.get(ADDRESS_ENV) or _address_towards(self.client)
        host, _, port = bind.rpartition(":") if bind.count(":") == 1 else (bind, "", "0")
        self.server = DataServer(self.store, host or bind, int(port or 0), auth_key=self._auth_key).start()
        return self.server.address

    def encode(self, key: str, value: Any) -> tuple[str, bytes | str, int]:
        """Store a node's result: ``("finished", payload, size)`` for Redis, or
        ``("held", path, size)`` when it was written to this host's store."""
        header, buffers = dumps_frames(value)
        size = frames_size(header, buffers)
        if size < OFFLOAD_MIN or self.server is None:
            payload = header if not buffers else dumps(value)
            if self.secret is not None:
                payload = sign(payload, self.secret)
            return "finished", payload, len(payload)
        path, size = self.store.put_frames(key, header, buffers, secret=self.secret)
        self.bytes_held += size
        return "held", path, size

    def collect(self, paths: Iterable[bytes | str]) -> int:
        """Delete result files that the scripts put on this host's garbage list."""
        return self.store.delete(paths)

    # ----------------------------------------------------------- consumer side
    def read(self, key: str, fields: Sequence[bytes | None]) -> Any:
        """The value of node ``key`` from its :data:`RESULT_FIELDS` as read from Redis."""
        ys, at, host, path = fields
        if ys:
            return loads(ys, self.secret)
        if not path:
            raise ResultLostError(f"the result of {key} is no longer in Redis (released or reset?)")
        return self.read_held(key, at.decode() if at else "", host.decode() if host else "", path.decode())

    def read_held(self, key: str, worker_id: str, host: str, path: str) -> Any:
        """A result held by ``worker_id`` on ``host``: mapped from here, or fetched over TCP."""
        if host == self.host:
            try:
                data = map_file(path)
                value = loads_frames(data, network_id=self.keys.network_id, key=key, secret=self.secret)
                self.bytes_local += len(data)
                return value
            except FileNotFoundError:
                pass  # another machine with our host id, or the file was collected: ask its worker
        address = self._address_of(worker_id)
        if address is None:
            raise ResultLostError(
                f"the result of {key} was held by worker {worker_id}, which has no data server "
                "any more (it stopped or was lost); the graph is computed again")
        try:
            data = self.fetcher.fetch(address, key)
        except (TransferError, FileNotFoundError) as exc:
            raise ResultLostError(f"the result of {key} held by worker {worker_id} at {address} could "
                                  f"not be fetched: {exc}") from None
        self.bytes_fetched += len(data)
        return loads_frames(data, network_id=self.keys.network_id, key=key, secret=self.secret)

    def counters(self) -> dict[str, int]:
        """Bytes this process wrote to its host's store, mapped from it, and fetched from others."""
        return {"bytes_held": self.bytes_held, "bytes_mapped": self.bytes_local,
                "bytes_fetched": self.bytes_fetched}

    def _address_of(self, worker_id: str) -> str | None:
        address = self._addresses.get(worker_id)
        if address is None:
            raw = self.client.hget(self.keys.worker(worker_id), "data_address")
            if raw is None:
                return None
            address = self._addresses[worker_id] = raw.decode()
        return address

    def read_many(self, task_keys: Sequence[str]) -> list[Any]:
        """Values of several nodes, their Redis fields read in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for task_key in task_keys:
            pipe.hmget(self.keys.task(task_key), *RESULT_FIELDS)
        return [self.read(k, fields) for k, fields in zip(task_keys, pipe.execute())]

    def close(self) -> None:
        self.fetcher.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
