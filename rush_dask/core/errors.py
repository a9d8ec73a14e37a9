"""Exceptions raised by rush_dask."""


class RushError(Exception):
    """Base class of rush_dask's own errors."""


class RedisUnavailableError(RushError, ConnectionError):
    """Redis cannot be reached or refused the credentials."""


class WorkerStartError(RushError):
    """A worker process exited before it registered with the network."""


class TaskTimeoutError(RushError, TimeoutError):
    """A task ran longer than the ``timeout`` it was pushed with."""


class WorkerLostError(RushError):
    """The worker was declared lost or killed; its late result was dropped."""


class KilledWorker(RushError):
    """A graph node was lost with its worker too many times (like distributed's KilledWorker)."""


class TaskFailedError(RushError):
    """A task failed for a reason that is not an exception of its own (killed, cancelled)."""


class ComputeCancelledError(RushError):
    """A compute was cancelled while its client waited (its lease expired, or the network was reset)."""


class PayloadSignatureError(RushError):
    """A payload read from Redis has no valid signature of the network's secret; it was not unpickled."""


class PayloadTooLargeError(RushError, ValueError):
    """A serialized task or result is larger than ``max_payload_bytes``."""


class ResultLostError(RushError):
    """A graph result held outside Redis is gone with its worker (another host); it is recomputed."""
