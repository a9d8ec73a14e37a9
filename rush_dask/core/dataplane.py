"""The data plane: how the result of a graph node travels from its producer to its consumers.

Redis holds the *state* of every node (queued, running, finished; who
needs it; who holds it). The *bytes* of a result take the cheapest way:

* **Small results** (under ``OFFLOAD_MIN``, 64 KiB pickled) are stored in
  Redis (field ``ys``) and travel inside the pop reply of the node that
  needs them: no extra round trip.
* **Large results** stay on their producer's host, in a file of the host's
  shared memory (:mod:`rush_dask.core.store`; on disk when the shared memory is
  nearly full). Redis records ``at`` (the producer's worker id), ``host``,
  ``path`` and ``nbytes``. A consumer on the same host maps the file (no
  copy: numpy and pandas data are built on the mapped pages); a consumer
  on another host fetches it from the producer's data server
  (:mod:`rush_dask.core.transfer`); the client reading an output does the same.
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

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .constants import INLINE_LIMIT, Keys, WorkerState
from .errors import ResultLostError
from .serialize import dumps, loads, place
from .store import LocalStore, dumps_frames, frames_size, loads_frames, map_file
from .transfer import TIMEOUT as TRANSFER_TIMEOUT
from .transfer import DataServer, Fetcher, TlsIdentity, TransferError

logger = logging.getLogger("rush_dask.worker")

OFFLOAD_MIN = INLINE_LIMIT  # bytes: results at least this large stay on their host
HOST_ENV = "RUSH_HOST_ID"
ADDRESS_ENV = "RUSH_DATA_ADDRESS"
TLS_ENV = "RUSH_DATA_TLS"
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
    from .connections import is_cluster_client

    if is_cluster_client(client):  # a Redis Cluster: the route to one of its nodes
        node = client.get_default_node()
        kwargs = {"host": node.host, "port": node.port}
    else:
        kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs or not kwargs.get("host"):
        return "127.0.0.1"
    try:
        infos = socket.getaddrinfo(kwargs["host"], kwargs.get("port", 6379), type=socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)  # UDP: no packet is sent, the kernel only picks a route
            local: str = probe.getsockname()[0]
            return local
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

    def __init__(
        self, client: Any, keys: Keys, *, secret: bytes | None, url: str, transfer_timeout: float = TRANSFER_TIMEOUT
    ):
        self.client = client
        self.keys = keys
        self.secret = secret
        self.host = host_id()
        self.store = LocalStore(keys.network_id)
        self._auth_key = auth_key(secret, url)
        # A fetch that makes no progress for this long is given up (a cut link stalls silently).
        self.fetcher = Fetcher(keys.network_id, self._auth_key, timeout=transfer_timeout)
        self._addresses: dict[str, tuple[str, str | None]] = {}
        # Workers' data servers speak TLS when the network reaches Redis over TLS.
        self.tls = url.startswith("rediss://") or os.environ.get(TLS_ENV, "") == "1"
        self.server: DataServer | None = None
        self.holder_id: str | None = None  # a client's id when it holds data of its graphs
        self._local_workers, self._local_workers_checked = False, -1e9
        self.bytes_held = 0  # bytes of results written to this host's store
        self.bytes_local = 0  # bytes of results mapped from this host's files
        self.bytes_fetched = 0  # bytes of results fetched from other hosts
        self._reclaimer: ThreadPoolExecutor | None = None  # deletes garbage files (see collect)

    # ----------------------------------------------------------- producer side
    def serve(self) -> dict[str, str]:
        """Start this process's data server (workers do); returns the fields that tell other
        hosts how to reach it: ``data_address`` and, over TLS, ``data_tls`` (its fingerprint)."""
        bind = os.environ.get(ADDRESS_ENV) or _address_towards(self.client)
        host, _, port = bind.rpartition(":") if bind.count(":") == 1 else (bind, "", "0")
        tls = TlsIdentity() if self.tls else None
        self.server = DataServer(self.store, host or bind, int(port or 0), auth_key=self._auth_key, tls=tls).start()
        fields = {"data_address": self.server.address}
        if tls is not None:
            fields["data_tls"] = tls.fingerprint
        return fields

    def encode(self, key: str, value: Any) -> tuple[str, bytes | str, int]:
        """Store a node's result: ``("finished", payload, size)`` for Redis, or
        ``("held", path, size)`` when it was written to this host's store."""
        from dask.sizeof import sizeof  # here: the CLI imports this module and not dask

        if self.server is None or sizeof(value) < OFFLOAD_MIN // 2:
            # Most results are small: one plain pickle, as before (sizeof is a cheap estimate;
            # a result it underestimates is pickled again below).
            payload = dumps(value, self.secret, self._where(key))
            if len(payload) < OFFLOAD_MIN or self.server is None:
                return "finished", payload, len(payload)
        header, buffers = dumps_frames(value)
        size = frames_size(header, buffers)
        if size < OFFLOAD_MIN:
            payload = dumps(value, self.secret, self._where(key))
            return "finished", payload, len(payload)
        try:
            path, size = self.store.put_frames(key, header, buffers, secret=self.secret)
        except OSError as exc:  # shared memory and the spill directory both full or unwritable
            logger.warning(
                "result %s (%s bytes) cannot be written to this host's store (%s); it goes to Redis instead",
                key,
                f"{size:,}",
                exc,
            )
            payload = dumps(value, self.secret, self._where(key))
            return "finished", payload, len(payload)
        self.bytes_held += size
        return "held", path, size

    def _where(self, key: str) -> bytes:
        """The place a node's result in Redis is signed for: this network, the node, ``ys``."""
        return place(self.keys.prefix, key, "ys") if self.secret is not None else b""

    def hold(self, key: str, value: Any) -> str | None:
        """Write data that a client embedded in a graph (a large ``DataNode``) to this host's
        store, so that workers map it instead of reading it from Redis.

        Returns the node's ``held`` field for the graph push (``holder, host, path, nbytes``
        tab-separated), or None when the value is small or no running worker shares this
        host (a remote client keeps sending its data through Redis: the workers might not
        reach it).
        """
        header, buffers = dumps_frames(value)
        size = frames_size(header, buffers)
        if size < OFFLOAD_MIN or not self._workers_share_host():
            return None
        holder = self._serve_as_holder()
        path, size = self.store.put_frames(key, header, buffers, secret=self.secret)
        self.bytes_held += size
        return f"{holder}\t{self.host}\t{path}\t{size}"

    def _workers_share_host(self) -> bool:
        """Whether a running worker is on this host (asked at most every few seconds)."""
        now = time.monotonic()
        if now - self._local_workers_checked > 5.0:
            states = self.client.hgetall(self.keys.worker_states)
            running = [w for w, state in states.items() if state.decode() == WorkerState.RUNNING]
            pipe = self.client.pipeline(transaction=False)
            for wid in running:
                pipe.hget(self.keys.worker(wid.decode()), "host")
            self._local_workers = self.host.encode() in pipe.execute()
            self._local_workers_checked = now
        return self._local_workers

    def _serve_as_holder(self) -> str:
        """This client's id as a holder of data, its data server started and published once."""
        if self.holder_id is None:
            self.holder_id = f"client-{uuid.uuid4().hex[:12]}"
            fields = self.serve()
            self.client.hset(self.keys.worker(self.holder_id), mapping={"host": self.host, **fields})
        return self.holder_id

    def collect(self, paths: Iterable[bytes | str]) -> None:
        """Delete result files that the scripts put on this host's garbage list, in the
        background: freeing a large file's pages takes milliseconds that a worker's next
        task should not wait for (measured: 70 ms on the critical path of an 8000² rechunk)."""
        paths = list(paths)
        if paths:
            if self._reclaimer is None:
                self._reclaimer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rush-reclaim")
            self._reclaimer.submit(self.store.delete, paths)

    # ----------------------------------------------------------- consumer side
    def read(self, key: str, fields: Sequence[bytes | None]) -> Any:
        """The value of node ``key`` from its :data:`RESULT_FIELDS` as read from Redis."""
        ys, at, host, path = fields
        if ys:
            return loads(ys, self.secret, self._where(key))
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
        where = self._address_of(worker_id)
        if where is None:
            raise ResultLostError(
                f"the result of {key} was held by worker {worker_id}, which has no data server "
                "any more (it stopped or was lost); the graph is computed again"
            )
        address, fingerprint = where
        if self.tls and not fingerprint:
            raise ResultLostError(
                f"the result of {key} is held by worker {worker_id}, whose data server "
                "does not speak TLS; refused on a TLS network"
            )
        try:
            data = self.fetcher.fetch(address, key, fingerprint)
        except (TransferError, FileNotFoundError) as exc:
            raise ResultLostError(
                f"the result of {key} held by worker {worker_id} at {address} could not be fetched: {exc}"
            ) from None
        self.bytes_fetched += len(data)
        return loads_frames(data, network_id=self.keys.network_id, key=key, secret=self.secret)

    def sweep(self, stale_after: float = 60.0) -> int:
        """Delete result files of this host whose node is gone from Redis; returns how many.

        The garbage lists normally take care of every file. This catches what
        they missed: an entry lost when Redis crashed before persisting it, or a
        file whose writer died mid-write (temporary files older than ``stale_after`` s).
        Idle workers run it now and then.
        """
        candidates: list[tuple[str, Path]] = []
        now = time.time()
        for directory in (self.store.shm_dir, self.store.spill_dir):
            if directory is None or not directory.is_dir():
                continue
            for path in directory.iterdir():
                if path.name.startswith("."):
                    try:
                        if now - path.stat().st_mtime > stale_after:
                            path.unlink()
                    except FileNotFoundError:
                        pass
                else:
                    candidates.append((path.name, path))
        if not candidates:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for key, _ in candidates:
            pipe.exists(self.keys.task(key))
        gone = [path for (_, path), exists in zip(candidates, pipe.execute()) if not exists]
        return self.store.delete(str(p) for p in gone)

    def counters(self) -> dict[str, int]:
        """Bytes this process wrote to its host's store, mapped from it, and fetched from others."""
        return {"bytes_held": self.bytes_held, "bytes_mapped": self.bytes_local, "bytes_fetched": self.bytes_fetched}

    def _address_of(self, worker_id: str) -> tuple[str, str | None] | None:
        """(address, TLS fingerprint or None) of a worker's data server, read once from Redis."""
        where = self._addresses.get(worker_id)
        if where is None:
            address, fingerprint = self.client.hmget(self.keys.worker(worker_id), "data_address", "data_tls")
            if address is None:
                return None
            where = (address.decode(), fingerprint.decode() if fingerprint else None)
            self._addresses[worker_id] = where
        return where

    def read_many(self, task_keys: Sequence[str]) -> list[Any]:
        """Values of several nodes, their Redis fields read in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for task_key in task_keys:
            pipe.hmget(self.keys.task(task_key), *RESULT_FIELDS)
        return [self.read(k, fields) for k, fields in zip(task_keys, pipe.execute())]

    def close(self) -> None:
        if self._reclaimer is not None:
            self._reclaimer.shutdown(wait=True)  # no garbage file left behind by a graceful stop
            self._reclaimer = None
        self.fetcher.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.holder_id is not None:
            try:
                self.client.delete(self.keys.worker(self.holder_id))
            except Exception:  # Redis gone at exit: nothing to unpublish
                pass
            self.holder_id = None
