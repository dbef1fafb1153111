"""A call: the ``_Call`` record, how a caller makes one and waits for it
(``Caller``: sync lock, asyncio future, stream queue, deadlines), and how its
outcome is delivered to that waiter from any thread (``_finish``, ``_put``, ``_event``)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import queue
import threading
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, NamedTuple

from dspex.errors import CallTimeout, HandlerNotFound, PoolClosed, ProtocolError
from dspex.pool import protocol as P
from dspex.pool._state import PoolConfig, PoolShared
from dspex.pool.stats import LatencyReservoir

if TYPE_CHECKING:
    from dspex.pool._dispatch import Dispatcher
    from dspex.pool._worker_io import WorkerIO, _Worker

# call states
_QUEUED, _SENT, _DONE = 0, 1, 2
_STREAM_END = object()
_BACKGROUND: set[Any] = set()


class CallResult(NamedTuple):
    value: Any
    pid: int
    elapsed_s: float


class _Call:
    """One call from submission to outcome (queued -> sent -> done)."""

    __slots__ = (
        "abandoned",
        "args",
        "callbacks",
        "consumed",
        "deadline",
        "error",
        "flags",
        "frame",
        "fut",
        "kill_at",
        "kwargs",
        "lock",
        "loop",
        "name",
        "on_event",
        "pid",
        "q",
        "rid",
        "serial",
        "session",
        "short",
        "spill_at",
        "state",
        "stream",
        "strict",
        "t0",
        "value",
        "worker",
        "written",
    )

    rid: int
    name: str
    session: Hashable | None
    callbacks: dict[str, Callable[..., Any]] | None
    on_event: Callable[[dict[str, Any]], Any] | None
    stream: bool
    serial: bool
    short: bool
    flags: int
    t0: float
    deadline: float | None
    frame: bytes

    def __init__(self) -> None:
        self.consumed = 0
        self.abandoned = False
        self.error: BaseException | None = None
        self.value: Any = None
        self.pid = 0
        self.state = _QUEUED
        self.worker: _Worker | None = None
        self.kill_at: float | None = None
        self.fut: asyncio.Future[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.q: Any = None
        self.lock: Any = None
        self.strict = False
        self.spill_at: float | None = None  # hint affinity: waits for its worker until then
        self.written = False  # its whole frame reached the worker's socket (see _finalize)


class _Event:
    """An ``on_event`` event travelling in a stream's chunk queue."""

    __slots__ = ("event",)

    def __init__(self, event: Any) -> None:
        self.event = event


def _resolve_future(call: _Call) -> None:
    fut = call.fut
    if fut is None or fut.done():
        return
    if call.error is not None:
        fut.set_exception(call.error)
    else:
        fut.set_result(call.value)


def _finish(call: _Call, ok: bool, value: Any, pid: int) -> None:
    """Deliver the outcome to the waiting caller (any thread)."""
    if call.state == _DONE:
        return
    call.pid = pid
    if ok:
        call.value = value
    else:
        call.error = value
    call.state = _DONE
    # Deliver even if the caller gave up: a waiter may still be racing for it.
    if call.fut is not None:
        with contextlib.suppress(RuntimeError):
            call.loop.call_soon_threadsafe(_resolve_future, call)  # type: ignore[union-attr]
    elif call.q is not None:
        if call.loop is not None:
            with contextlib.suppress(RuntimeError):
                call.loop.call_soon_threadsafe(call.q.put_nowait, _STREAM_END)
        else:
            call.q.put(_STREAM_END)
    elif call.lock is not None:
        call.lock.release()


def _put(call: _Call, item: Any) -> None:
    if call.loop is not None:
        with contextlib.suppress(RuntimeError):
            call.loop.call_soon_threadsafe(call.q.put_nowait, item)
    else:
        call.q.put(item)


def _event(call: _Call, event: Any) -> None:
    if call.q is not None:
        _put(call, _Event(event))
    elif call.loop is not None:
        with contextlib.suppress(RuntimeError):
            call.loop.call_soon_threadsafe(_deliver_event, call, event)


def _deliver_event(call: _Call, event: Any) -> None:
    if call.on_event is None:
        return
    out = call.on_event(event)
    if inspect.isawaitable(out):
        task = asyncio.ensure_future(out)
        _BACKGROUND.add(task)  # keep a reference until it is done
        task.add_done_callback(_BACKGROUND.discard)


class Caller:
    """The caller's side of a call: build it, submit it (``Dispatcher``), wait for it
    (reading its own reply through ``WorkerIO.lead`` when nobody reads its worker), raise or
    return. Runs on the calling threads; owns the request ids, the per-handler latency
    EWMA (what makes a call "short") and the latency reservoir, all used without a lock
    (``itertools.count`` and dict updates are atomic under the GIL; the EWMA is a hint)."""

    def __init__(
        self,
        cfg: PoolConfig,
        shared: PoolShared,
        codec: P.Codec,
        dispatch: Dispatcher,
        io: WorkerIO,
        start: Callable[[], object],
    ) -> None:
        self._cfg = cfg
        self._s = shared
        self._codec = codec
        self._dispatch = dispatch
        self._io = io
        self._start = start  # Pool.start
        self._rids = itertools.count(1)
        self._ewma: dict[str, float] = {}
        self.latency = LatencyReservoir()

    def ensure_started(self) -> None:
        """Start the pool, or wait for a start in progress (another thread's): a call
        made meanwhile must not see an empty handler table (HandlerNotFound)."""
        if self._s.state != "running" or not self._s.handler_table:
            if self._s.closed:
                raise PoolClosed(f"pool {self._cfg.name!r} is closed", pool=self._cfg.name)
            self._start()

    def new_call(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        session: Hashable | None,
        timeout: float | None,
        callbacks: dict[str, Callable[..., Any]] | None,
        on_event: Callable[[dict[str, Any]], Any] | None,
        stream: bool,
    ) -> _Call:
        kind = self._s.handler_table.get(name)
        if kind is None:
            if not self._s.handler_table and self._s.start_error is not None:
                raise self._s.start_error
            raise HandlerNotFound(
                f"pool {self._cfg.name!r} has no handler {name!r}; it has: {', '.join(sorted(self._s.handler_table)) or 'none'}"
                " (check the pool's handlers= modules)",
                pool=self._cfg.name,
                handler=name,
            )
        call = _Call()
        rid = next(self._rids)  # itertools.count: atomic under the GIL
        call.rid = rid
        call.name = name
        call.session = session
        call.callbacks = callbacks
        call.on_event = on_event
        call.stream = stream
        hkind, concurrent = kind[0], kind[1]
        call.serial = not concurrent and hkind in ("sync", "gen")
        ew = self._ewma.get(name)
        call.short = ew is not None and ew < self._cfg.pipeline_latency_s
        flags = (P.F_EVENTS if on_event is not None else 0) | (P.F_STREAM if stream else 0)
        call.flags = flags
        t = timeout if timeout is not None else self._cfg.call_timeout_s
        call.t0 = time.perf_counter()
        call.deadline = None if t is None else time.monotonic() + t
        try:
            call.frame = self._codec.frame([P.CALL, rid, name, list(args), kwargs, session, flags])
        except P.FrameError as exc:
            raise ProtocolError(f"pool {self._cfg.name!r}: request too large: {exc}", pool=self._cfg.name) from None
        if call.q is None and not stream and on_event is None:
            lock = threading.Lock()
            lock.acquire()
            call.lock = lock
        return call

    def sync(
        self,
        handler: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        session: Hashable | None,
        timeout: float | None,
        callbacks: dict[str, Callable[..., Any]] | None,
        on_event: Callable[[dict[str, Any]], Any] | None,
        detailed: bool,
    ) -> Any:
        if self._s.state != "running" or not self._s.handler_table:
            self.ensure_started()
        call = self.new_call(handler, args, kwargs, session, timeout, callbacks, on_event, stream=False)
        if call.lock is None:
            call.q = queue.SimpleQueue()
        self._dispatch.submit(call)
        if call.lock is None and call.worker is not None:
            self._io.arm(call.worker)  # callers that do not read for themselves
        if call.lock is not None:
            w = call.worker
            try:
                # Nobody reads this worker: read our own reply on this thread (no thread
                # hop), completing the calls ahead of ours on the way. Measured (2 workers,
                # 8 callers): cheaper than leaving a worker with company to the I/O thread,
                # which has to wake each caller. Whoever reads, the others wait their turn.
                if w is not None:
                    if w.rlock.acquire(False):
                        try:
                            self._io.lead(w, call)
                        finally:
                            w.rlock.release()
                            self._io.arm(w)
                    elif call.state != _DONE:
                        self._io.arm(w)
                if call.deadline is None:
                    call.lock.acquire()
                elif not call.lock.acquire(True, max(0.0, call.deadline - time.monotonic())):
                    if self._dispatch.abandon(call, timed_out=True):
                        raise self.timeout_error(call)
                    call.lock.acquire()  # completed while we gave up: it is on its way
            except BaseException:
                if call.state != _DONE:
                    self._dispatch.abandon(call, timed_out=False)
                raise
        else:
            try:
                while True:
                    item = self.q_get(call)
                    if item is _STREAM_END:
                        break
            except BaseException:
                if call.state != _DONE:
                    self._dispatch.abandon(call, timed_out=False)
                raise
        return self.after(call, detailed)

    def q_get(self, call: _Call) -> Any:
        """Next chunk / the end marker from a queued (stream or on_event) call."""
        while True:
            if call.deadline is None:
                item = call.q.get()
            else:
                try:
                    item = call.q.get(True, max(0.0, call.deadline - time.monotonic()))
                except queue.Empty:
                    if self._dispatch.abandon(call, timed_out=True):
                        raise self.timeout_error(call) from None
                    item = call.q.get()  # it completed as we gave up: take it
            if isinstance(item, _Event):
                _deliver_event(call, item.event)
                continue
            return item

    def consumed(self, call: _Call) -> None:
        """Flow control: give the worker credit back for chunks the consumer took."""
        call.consumed += 1
        if call.consumed >= P.STREAM_WINDOW // 2:
            w = call.worker
            if w is not None and call.state == _SENT:
                self._io.send_msg(w, [P.CREDIT, call.rid, call.consumed])
            call.consumed = 0

    def streams(self, handler: str) -> bool:
        return self._s.handler_table.get(handler, ["sync"])[0] in ("gen", "agen")

    def after(self, call: _Call, detailed: bool = False) -> Any:
        elapsed = time.perf_counter() - call.t0
        self.latency.add(elapsed)
        ew = self._ewma.get(call.name)
        self._ewma[call.name] = elapsed if ew is None else ew * 0.8 + elapsed * 0.2
        if call.error is not None:
            raise call.error
        if detailed:
            return CallResult(call.value, call.pid, elapsed)
        return call.value

    async def acall(
        self,
        handler: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        session: Hashable | None,
        timeout: float | None,
        callbacks: dict[str, Callable[..., Any]] | None,
        on_event: Callable[[dict[str, Any]], Any] | None,
        detailed: bool,
    ) -> Any:
        if self._s.state != "running" or not self._s.handler_table:
            await asyncio.get_running_loop().run_in_executor(None, self.ensure_started)
        loop = asyncio.get_running_loop()
        call = self.new_call(handler, args, kwargs, session, timeout, callbacks, on_event, stream=False)
        call.lock = None
        call.loop = loop
        call.fut = loop.create_future()
        self._dispatch.submit(call)
        if call.worker is not None:
            self._io.arm(call.worker)  # the I/O thread reads for this caller
        fut = call.fut
        try:
            if call.deadline is None:
                await fut
            else:
                # asyncio.wait does not cancel ``fut`` on timeout, so a result that
                # lands while we give up is still delivered.
                done, _ = await asyncio.wait((fut,), timeout=max(0.0, call.deadline - time.monotonic()))
                if not done:
                    if self._dispatch.abandon(call, timed_out=True):
                        fut.cancel()
                        raise self.timeout_error(call)
                    await fut
                elif call.error is not None:
                    fut.exception()  # retrieved (no "never retrieved" log); _after raises it
        except asyncio.CancelledError:
            if call.state != _DONE:
                self._dispatch.abandon(call, timed_out=False)
            raise
        except Exception:
            if call.state != _DONE:
                raise  # ours (CallTimeout); otherwise the call's own error, raised by _after
        return self.after(call, detailed)

    def timeout_error(self, call: _Call) -> CallTimeout:
        with self._s.lock:
            self._s.counts["timeouts"] += 1
            self._s.counts["errors"] += 1
        where = f"in worker {call.pid}" if call.pid else "while queued"
        return CallTimeout(
            f"pool {self._cfg.name!r}: call {call.name!r} passed its deadline {where}"
            + ("; the worker was replaced" if call.pid else "")
            + ". Raise timeout= / call_timeout_s or make the handler faster.",
            pool=self._cfg.name,
            handler=call.name,
            pid=call.pid or None,
        )
