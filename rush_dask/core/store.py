"""Where a worker keeps the large results of graph nodes: files on its own host.

A result too large to travel inside a pop reply does not go to Redis. Its
producer writes it once to a file in the host's shared memory (``/dev/shm``,
a tmpfs) and Redis records only where it is (see :mod:`rush_dask.core.dataplane`).
A consumer on the same host maps that file into its memory: numpy arrays,
pandas blocks and other objects that pickle their data as out-of-band
buffers (pickle protocol 5) are then built on the mapped pages without a copy.
A consumer on another host gets the same bytes from the producer's data
server (:mod:`rush_dask.core.transfer`) and unpickles them the same way.

The file outlives its producer: a worker that is SIGKILLed after finishing a
node leaves its results readable by the other workers of the host until the
last dependent has read them. When the shared memory is nearly full, results
go to a directory on disk instead (the spill directory).

File layout (integers little-endian)::

    0   b"RUSHDP1\\n"
    8   HMAC-SHA256 (32 bytes; zeros when the network has no secret)
    40  length of the pickle header (u64), number of buffers n (u64)
    56  n buffer lengths (u64 each)
    ... the pickle header, then each buffer, each starting at a multiple of 64

With a secret, the HMAC covers the network id, the task key and every byte
from offset 40 on: a file copied to another task, or to another network, or
changed by one bit, is refused with :class:`PayloadSignatureError` before
anything is unpickled.
"""

from __future__ import annotations

import hmac
import mmap
import os
import pickle
import shutil
import struct
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cloudpickle

from .errors import PayloadSignatureError
from .serialize import _describe, _keyed

MAGIC = b"RUSHDP1\n"
_MAC_AT, _MAC_LEN = 8, 32
_FIXED = struct.Struct("<QQ")
_ALIGN = 64
_ZEROS = bytes(_ALIGN)
SHM_ROOT = Path("/dev/shm")
# Keep this much of the shared memory free; past it, results spill to disk.
SHM_RESERVE = 0.10


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def dumps_frames(obj: Any) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj`` with protocol 5: (header, out-of-band buffers), no copy of large arrays.

    >>> import numpy as np
    >>> header, buffers = dumps_frames(np.arange(1000))
    >>> [len(b) for b in buffers]
    [8000]
    """
    buffers: list[pickle.PickleBuffer] = []
    try:
        header = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        if b"__main__" in header:  # see serialize.dumps: ship __main__ by value
            raise pickle.PicklingError("refers to __main__")
    except Exception:
        buffers = []
        try:
            header = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        except Exception as exc:
            raise TypeError(f"cannot serialize the result {_describe(obj)}: {type(exc).__name__}: {exc}") from exc
    return header, [b.raw() for b in buffers]


def frames_size(header: bytes, buffers: list[memoryview]) -> int:
    """Bytes of the file that :func:`write_frames` makes of these frames."""
    size = _aligned(_MAC_AT + _MAC_LEN + _FIXED.size + 8 * len(buffers)) + _aligned(len(header))
    for buf in buffers:
        size += _aligned(buf.nbytes)
    return size


def _binding(network_id: str, key: str) -> bytes:
    return f"{network_id}\0{key}\0".encode()


def write_frames(
    path: Path, header: bytes, buffers: list[memoryview], *, network_id: str, key: str, secret: bytes | None
) -> int:
    """Write one result file atomically (a reader never sees half of it); returns its size."""
    lengths = struct.pack(f"<{len(buffers)}Q", *(b.nbytes for b in buffers))
    head = _FIXED.pack(len(header), len(buffers)) + lengths
    start = _MAC_AT + _MAC_LEN
    pieces: list[bytes | memoryview] = [
        head,
        _ZEROS[: _aligned(start + len(head)) - start - len(head)],
        header,
        _ZEROS[: _aligned(len(header)) - len(header)],
    ]
    for buf in buffers:
        pieces += [buf, _ZEROS[: _aligned(buf.nbytes) - buf.nbytes]]
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    state = _keyed(secret).copy() if secret is not None else None
    if state is not None:
        state.update(_binding(network_id, key))
    with open(tmp, "wb") as f:
        f.write(MAGIC + bytes(_MAC_LEN))
        for piece in pieces:
            if len(piece):
                f.write(piece)
                if state is not None:
                    state.update(piece)
        if state is not None:
            f.seek(_MAC_AT)
            f.write(state.digest())
    os.rename(tmp, path)
    return frames_size(header, buffers)


def loads_frames(data: memoryview, *, network_id: str, key: str, secret: bytes | None) -> Any:
    """Unpickle a result file's bytes (a mapped file or a received buffer), checking its HMAC first.

    The buffers of the result are views into ``data``: no copy is made.
    """
    if bytes(data[: len(MAGIC)]) != MAGIC:
        raise ValueError(f"the stored result of {key} is not a rush_dask result file")
    start = _MAC_AT + _MAC_LEN
    header_len, n = _FIXED.unpack_from(data, start)
    lengths = struct.unpack_from(f"<{n}Q", data, start + _FIXED.size)
    stored_mac = bytes(data[_MAC_AT:start])
    if secret is not None:
        state = _keyed(secret).copy()
        state.update(_binding(network_id, key))
        state.update(data[start:])
        if not hmac.compare_digest(state.digest(), stored_mac):
            raise PayloadSignatureError(
                f"the stored result of {key} has an invalid signature (written without the "
                "network's secret, changed, or moved from another task); refused, not unpickled"
            )
    elif stored_mac != bytes(_MAC_LEN):
        raise PayloadSignatureError(
            "stored result is signed but this process has no secret: set the RUSH_SECRET "
            "environment variable (or pass secret=) to the network's secret"
        )
    offset = _aligned(start + _FIXED.size + 8 * n)
    header = data[offset : offset + header_len]
    offset += _aligned(header_len)
    buffers = []
    for length in lengths:
        buffers.append(data[offset : offset + length])
        offset += _aligned(length)
    return pickle.loads(header, buffers=buffers)


def map_file(path: str | os.PathLike[str]) -> memoryview:
    """The file's bytes, mapped copy-on-write: readable and writable, the file never changes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return memoryview(b"")
        mapped = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    return memoryview(mapped)


def _default_spill_root() -> Path:
    return Path(tempfile.gettempdir())


class LocalStore:
    """The result files of one network on this host, in shared memory or, when full, on disk.

    Every process of the network on this host (workers and controllers) uses the
    same directories, so any of them can read or delete any result file here.

    >>> store = LocalStore("doc-net")
    >>> path = store.put("k1", [1, 2, 3], secret=None)
    >>> store.get(path, "k1", secret=None)
    [1, 2, 3]
    >>> store.delete([path])
    1
    >>> store.remove_all()
    """

    def __init__(self, network_id: str, shm_root: Path | None = None, spill_root: Path | None = None):
        self.network_id = network_id
        user = f"rush-dask-{os.getuid()}"
        shm = shm_root if shm_root is not None else SHM_ROOT
        self.shm_dir = (shm / user / network_id) if shm.is_dir() else None
        self.spill_dir = (spill_root or _default_spill_root()) / user / network_id

    def _directory(self, size: int) -> Path:
        """Shared memory while it has room for ``size`` bytes and the reserve, else the spill directory."""
        if self.shm_dir is not None:
            try:
                self.shm_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                fs = os.statvfs(self.shm_dir)
                if (fs.f_bavail * fs.f_frsize - size) > SHM_RESERVE * fs.f_blocks * fs.f_frsize:
                    return self.shm_dir
            except OSError:
                pass
        self.spill_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.spill_dir

    def put_frames(
        self, key: str, header: bytes, buffers: list[memoryview], *, secret: bytes | None
    ) -> tuple[str, int]:
        """Write a pickled result; returns (path, size in bytes)."""
        if "/" in key or key.startswith("."):
            raise ValueError(f"not a task key: {key!r}")
        path = self._directory(frames_size(header, buffers)) / key
        size = write_frames(path, header, buffers, network_id=self.network_id, key=key, secret=secret)
        return str(path), size

    def put(self, key: str, value: Any, *, secret: bytes | None) -> str:
        """Pickle and write ``value``; returns the file's path."""
        header, buffers = dumps_frames(value)
        return self.put_frames(key, header, buffers, secret=secret)[0]

    def get(self, path: str, key: str, *, secret: bytes | None) -> Any:
        """The value in the result file ``path`` (raises FileNotFoundError if it is gone)."""
        return loads_frames(map_file(path), network_id=self.network_id, key=key, secret=secret)

    def owns(self, path: str) -> bool:
        """Whether ``path`` is a result file of this network on this host (never delete others)."""
        parent = Path(path).parent
        return parent in {d for d in (self.shm_dir, self.spill_dir) if d is not None}

    def delete(self, paths: Iterable[str | bytes]) -> int:
        """Delete result files (those already gone are skipped); returns how many were deleted."""
        n = 0
        for raw in paths:
            path = os.fsdecode(raw)
            if not self.owns(path):
                continue
            try:
                os.unlink(path)
                n += 1
            except FileNotFoundError:
                pass
        return n

    def remove_all(self) -> None:
        """Delete every result file of this network on this host (``Rush.reset``)."""
        for directory in (self.shm_dir, self.spill_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
