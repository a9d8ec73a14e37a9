"""What the Dask front end needs of the controller it is mixed into, declared.

:class:`~rush_dask.rush.Rush` is ``Rush(FuturesClient, DaskScheduler, NetworkView)``:
the two front-end mixins (:mod:`rush_dask.dask.scheduler`, :mod:`rush_dask.dask.client`) use
attributes that ``Rush.__init__`` sets and methods of the other bases, and hand
the controller to their collaborators (graph runs, futures, completions, the
executor, warnings, the shuffle check). :class:`Controller` lists exactly that
surface. The mixins' methods declare ``self: Controller`` and the collaborators
take a ``Controller``, so mypy checks every use against this list, and checks
``Rush`` against it wherever such a method is called on a ``Rush``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..core.constants import Keys
    from ..core.dataplane import DataPlane
    from ..core.scripts import Scripts
    from ..deploy.processes import LocalWorkers
    from .completions import Completions
    from .futures import RushFuture
    from .graph import GraphRun
    from .lease import ClientLease


class Controller(Protocol):
    """A network's controller as the Dask front end sees it (``rush_dask.Rush`` is one)."""

    # Set by Rush.__init__ (and DaskScheduler._init_scheduler).
    client: Any  # its Redis connection (a Redis or a RedisCluster, bytes replies)
    keys: Keys
    url: str
    secret: bytes | None
    scripts: Scripts
    max_payload_bytes: int
    local_workers: LocalWorkers
    plane: DataPlane
    _completions: Completions
    client_lease: ClientLease
    _futures_by_key: weakref.WeakValueDictionary[Hashable, RushFuture]

    # From NetworkView (the read side).
    @property
    def network_id(self) -> str: ...
    @property
    def n_running_workers(self) -> int: ...
    def _where(self, key: str | bytes, field: str) -> bytes: ...
    def _worker_states(self) -> dict[str, str]: ...

    # From Rush (workers).
    def start_workers(self) -> list[str]: ...  # called with no arguments: the plan's workers
    def detect_lost_workers(self) -> list[str]: ...
    def _health_check(self) -> None: ...

    # From DaskScheduler, used by the futures client and by graph runs.
    def _ensure_workers(self) -> None: ...
    def _graph_options(self, kwargs: dict[str, Any]) -> dict[str, Any]: ...
    def _submit_graph(self, dsk: Any, outputs: list[Hashable], **options: Any) -> dict[Hashable, RushFuture]: ...
    def get(self, dsk: Any, keys: Any, *, timeout: float | None = None, **kwargs: Any) -> Any: ...
    def _run_with_lineage(
        self,
        run: GraphRun,
        dsk: Any,
        outputs: list[Hashable],
        options: dict[str, Any],
        on_done: Callable[[Hashable], None],
        timeout: float | None,
    ) -> dict[Hashable, Any]: ...
    def _follow(
        self, run: GraphRun, on_done: Callable[[Hashable], None], timeout: float | None
    ) -> dict[Hashable, Any]: ...

    # From FuturesClient, used by futures, the executor and graph runs.
    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        key: str | Sequence[Hashable] | None = None,
        pure: bool = True,
        retries: int | None = None,
        priority: int = 0,
        resources: Mapping[str, float] | None = None,
        lease: float | None = None,
        **kwargs: Any,
    ) -> list[RushFuture]: ...
    def _submit_calls(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
        keys: Sequence[Hashable],
        **options: Any,
    ) -> list[RushFuture]: ...
    def _read_futures(self, futures: Sequence[RushFuture], raise_errors: bool = True) -> dict[str, Any]: ...
    def _reemit_warnings(self, graph_ids: list[str]) -> None: ...
    def gather(self, futures: Any, errors: str = "raise", timeout: float | None = None) -> Any: ...
    def scatter(self, data: Any, hash: bool = True) -> Any: ...


if TYPE_CHECKING:
    from ..rush import Rush

    def _rush_is_a_controller(rush: Rush) -> Controller:
        return rush  # mypy checks here that Rush provides all of Controller
