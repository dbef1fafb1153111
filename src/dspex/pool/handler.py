"""Handlers: the named functions a pool worker exposes, and the ``Context`` they get.

Standard library only: this module is imported by worker processes (which may run
under another interpreter that has nothing but msgpack) and by handler modules.

    from dspex.pool.handler import handler, Context

    @handler                                   # name = function name
    def echo(ctx: Context, x): return x

    @handler("dspy.predict", concurrent=True)  # async: several in flight per worker
    async def predict(ctx, **kw): ...

    @handler("count")
    def count(ctx, n):                         # generator: Pool.stream() yields its chunks
        for i in range(n):
            yield i

Kinds: ``sync`` (plain function), ``async`` (coroutine function), ``gen``
(generator function) and ``agen`` (async generator function). ``concurrent=True``
lets a worker run several calls of that handler at once: async handlers become
tasks on the worker's event loop, sync handlers run on a thread pool. Otherwise a
worker runs its calls one after another, in arrival order.

The decorator returns the function unchanged (plus ``__dspex_handler__``), so a
handler can still be called directly, e.g. in a unit test with ``Context.local()``.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, overload

__all__ = ["Context", "HandlerSpec", "handler", "registry"]

Kind = Literal["sync", "async", "gen", "agen"]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """One registered handler."""

    name: str
    fn: Callable[..., Any]
    kind: Kind
    concurrent: bool

    @property
    def streaming(self) -> bool:
        return self.kind in ("gen", "agen")


_REGISTRY: dict[str, HandlerSpec] = {}
_REGISTRY_LOCK = threading.Lock()


def _kind_of(fn: Callable[..., Any]) -> Kind:
    if inspect.isasyncgenfunction(fn):
        return "agen"
    if inspect.iscoroutinefunction(fn):
        return "async"
    if inspect.isgeneratorfunction(fn):
        return "gen"
    return "sync"


def _register(fn: F, name: str | None, concurrent: bool) -> F:
    if not callable(fn):
        raise TypeError(f"@handler needs a function, got {fn!r}")
    hname = name or getattr(fn, "__name__", None)
    if not hname or not isinstance(hname, str):
        raise ValueError(f"@handler could not name {fn!r}; pass a name: @handler('my.name')")
    spec = HandlerSpec(hname, fn, _kind_of(fn), bool(concurrent))
    with _REGISTRY_LOCK:
        old = _REGISTRY.get(hname)
        # The same function registered again (module re-imported) is fine; two different
        # functions claiming one name is a mistake the user must see.
        if old is not None and (
            getattr(old.fn, "__module__", None),
            getattr(old.fn, "__qualname__", None),
        ) != (getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)):
            raise ValueError(
                f"handler name {hname!r} is already registered by "
                f"{old.fn.__module__}.{old.fn.__qualname__}; give one of them another name"
            )
        _REGISTRY[hname] = spec
    try:
        fn.__dspex_handler__ = spec  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        pass
    return fn


@overload
def handler(fn: F, /) -> F: ...
@overload
def handler(name: str | None = None, /, *, concurrent: bool = False) -> Callable[[F], F]: ...
@overload
def handler(*, name: str | None = None, concurrent: bool = False) -> Callable[[F], F]: ...


def handler(
    fn_or_name: Any = None, /, *, name: str | None = None, concurrent: bool = False
) -> Any:
    """Register a function as a pool handler (see the module docstring)."""
    if callable(fn_or_name):
        return _register(fn_or_name, name, concurrent)
    hname = fn_or_name if fn_or_name is not None else name

    def deco(fn: F) -> F:
        return _register(fn, hname, concurrent)

    return deco


def registry() -> dict[str, HandlerSpec]:
    """A copy of every handler registered in this process."""
    with _REGISTRY_LOCK:
        return dict(_REGISTRY)


class Context:
    """What a handler gets as its first argument.

    * ``session``: the call's session id (or None).
    * ``state``: a dict scoped to the session inside this worker (kept between calls
      of the same session routed here; dropped when the host drops the session).
      Without a session it is a fresh dict per call.
    * ``request_id``, ``pid``.
    * ``progress(**event)``: send an event to the caller's ``on_event``.
    * ``callback(name, *args, **kwargs)``: run a function registered in the host
      (pool ``callbacks=`` or the call's ``callbacks=``) and return its result; a
      host exception arrives as ``dspex.errors.RemoteError``.
    * ``await acallback(...)``: the same from async code.
    * ``cancelled``: True once the caller gave up (timeout, cancellation). A sync
      handler should check it in long loops and return early; async handlers get
      their task cancelled instead.
    """

    __slots__ = ("_chan", "_flags", "request_id", "session", "state")

    def __init__(
        self,
        chan: Any,
        request_id: int,
        session: Any,
        state: dict[str, Any],
        flags: int = 0,
    ) -> None:
        self._chan = chan
        self.request_id = request_id
        self.session = session
        self.state = state
        self._flags = flags

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def cancelled(self) -> bool:
        return bool(self._chan.is_cancelled(self.request_id))

    def progress(self, **event: Any) -> None:
        self._chan.progress(self.request_id, self._flags, event)

    def callback(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        return self._chan.callback(self.request_id, name, args, kwargs)

    async def acallback(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        return await self._chan.acallback(self.request_id, name, args, kwargs)

    def __repr__(self) -> str:
        return f"Context(request_id={self.request_id}, session={self.session!r}, pid={self.pid})"

    @classmethod
    def local(
        cls,
        *,
        session: Any = None,
        state: dict[str, Any] | None = None,
        callbacks: dict[str, Callable[..., Any]] | None = None,
        on_event: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Context:
        """A Context for calling a handler directly in this process (unit tests).

        Callbacks run in-process; their exceptions propagate unchanged.
        """
        return cls(_LocalChannel(callbacks or {}, on_event), 0, session, {} if state is None else state, 1)


class _LocalChannel:
    """In-process stand-in for the worker's channel (used by ``Context.local``)."""

    def __init__(self, callbacks: dict[str, Callable[..., Any]], on_event: Any) -> None:
        self.callbacks = callbacks
        self.on_event = on_event
        self.cancelled = False

    def is_cancelled(self, rid: int) -> bool:
        return self.cancelled

    def progress(self, rid: int, flags: int, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def callback(self, rid: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        fn = self.callbacks.get(name)
        if fn is None:
            raise LookupError(f"no callback named {name!r}; registered: {sorted(self.callbacks)}")
        return fn(*args, **kwargs)

    async def acallback(self, rid: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        out = self.callback(rid, name, args, kwargs)
        if inspect.isawaitable(out):
            out = await out
        return out

