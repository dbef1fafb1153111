"""The pool backend interface: what every pool offers, wherever its workers run.

A pool config table chooses its backend with ``backend = "local"`` (the default:
supervised processes on this machine, ``dspex.pool.Pool``) or ``backend = "ray"``
(Ray actors on a cluster, ``dspex.pool.RayPool``). Code written against
``PoolBackend`` (the API, pipelines, the manager) runs unchanged on either: the same
calls, the same sessions and affinity modes, the same error types (``WorkerCrashed``,
``CallTimeout``, ``PoolOverloaded``, ``SessionLost``, ``HandlerNotFound``,
``RemoteError``, ``PoolClosed``).

Stdlib only; the backends load lazily (``import ray`` happens only for a Ray pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from dspex.errors import ConfigError

if TYPE_CHECKING:
    from dspex.pool._call import CallResult

__all__ = ["BACKENDS", "PoolBackend", "PoolFacade", "backend_keys", "create_pool"]

BACKENDS = ("local", "ray")

Callbacks = dict[str, Callable[..., Any]] | None
OnEvent = Callable[[dict[str, Any]], Any] | None


@runtime_checkable
class PoolBackend(Protocol):
    """A named set of workers running handlers (see ``dspex.pool.handler``).

    ``callbacks`` are host functions a handler may call (``ctx.callback``) during the
    call; ``on_event`` receives its ``ctx.progress`` events; ``timeout`` bounds the
    call (``CallTimeout``); ``session`` routes related calls to one worker according
    to the pool's ``affinity`` (``hint`` | ``strict`` | ``none``).
    """

    name: str
    size: int
    affinity: str

    def start(self) -> Any: ...
    def close(self, grace_s: float | None = None) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> None: ...

    def call(
        self, handler: str, /, *args: Any, session: Hashable | None = None, timeout: float | None = None,
        callbacks: Callbacks = None, on_event: OnEvent = None, **kwargs: Any,
    ) -> Any: ...
    def call_detailed(
        self, handler: str, /, *args: Any, session: Hashable | None = None, timeout: float | None = None,
        callbacks: Callbacks = None, on_event: OnEvent = None, **kwargs: Any,
    ) -> CallResult: ...
    def call_with(
        self, handler: str, args: tuple[Any, ...] | list[Any] = (), kwargs: dict[str, Any] | None = None, *,
        session: Hashable | None = None, timeout: float | None = None, callbacks: Callbacks = None,
        on_event: OnEvent = None, detailed: bool = False,
    ) -> Any: ...
    async def acall(
        self, handler: str, /, *args: Any, session: Hashable | None = None, timeout: float | None = None,
        callbacks: Callbacks = None, on_event: OnEvent = None, **kwargs: Any,
    ) -> Any: ...
    async def acall_detailed(
        self, handler: str, /, *args: Any, session: Hashable | None = None, timeout: float | None = None,
        callbacks: Callbacks = None, on_event: OnEvent = None, **kwargs: Any,
    ) -> CallResult: ...
    def stream(
        self, handler: str, /, *args: Any, session: Hashable | None = None, timeout: float | None = None,
        callbacks: Callbacks = None, on_event: OnEvent = None, **kwargs: Any,
    ) -> Iterator[Any]: ...
    def astream(
        self, handler: str, /, *args: Any, session: Hashable | None = None, timeout: float | None = None,
        callbacks: Callbacks = None, on_event: OnEvent = None, **kwargs: Any,
    ) -> AsyncIterator[Any]: ...

    def session(self, key: Hashable | None = None) -> contextlib.AbstractContextManager[Hashable]: ...
    def drop_session(self, session: Hashable) -> None: ...
    def workers(self) -> list[int]: ...
    def stats(self) -> dict[str, Any]: ...


class PoolFacade:
    """What every backend does the same way on top of its own start / close / drop_session:
    use as a (async) context manager, and ``session()``."""

    if TYPE_CHECKING:
        def start(self) -> Any: ...
        def close(self, grace_s: float | None = None) -> None: ...
        def drop_session(self, session: Hashable) -> None: ...

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        await asyncio.get_running_loop().run_in_executor(None, self.__enter__)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def session(self, key: Hashable | None = None) -> contextlib.AbstractContextManager[Hashable]:
        """``with pool.session() as s: pool.call(..., session=s)``; dropped at exit."""

        @contextlib.contextmanager
        def cm() -> Iterator[Hashable]:
            k = key if key is not None else uuid.uuid4().hex
            try:
                yield k
            finally:
                self.drop_session(k)

        return cm()


def _backend_of(name: str, table: dict[str, Any]) -> str:
    backend = table.get("backend", "local")
    if backend not in BACKENDS:
        raise ConfigError(f"pools.{name}: backend must be one of {list(BACKENDS)}, not {backend!r}")
    return str(backend)


def backend_keys(name: str, table: dict[str, Any], local_keys: set[str]) -> set[str]:
    """The option names a config table may use, given its backend (``local_keys``: the local Pool's)."""
    if _backend_of(name, table) == "ray":
        from dspex.pool._ray.config import RAY_KEYS, check_keys  # stdlib only: Ray is not imported

        check_keys(name, [k for k in table if k != "backend"])
        return {"backend", *RAY_KEYS}
    return {"backend", *local_keys}


def create_pool(name: str, table: dict[str, Any]) -> PoolBackend:
    """A pool (not started) for a config table: ``backend`` picks the implementation."""
    conf = dict(table)
    if _backend_of(name, conf) == "ray":
        conf.pop("backend")
        from dspex.pool._ray import RayPool

        return RayPool(name, **conf)
    conf.pop("backend", None)
    from dspex.pool.pool import Pool

    return Pool(name, **conf)


if TYPE_CHECKING:  # mypy proves both backends satisfy the interface
    from dspex.pool._ray import RayPool
    from dspex.pool.pool import Pool

    def _local_is_a_backend(p: Pool) -> PoolBackend:
        return p

    def _ray_is_a_backend(p: RayPool) -> PoolBackend:
        return p
