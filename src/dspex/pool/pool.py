"""``Pool``: supervised Python worker processes with sessions (our Snakepit).

This module is the public facade: construction (``_state.py``), start / close,
call / acall / stream / astream, sessions, stats. The parts it is made of:

* A template process (zygote, ``worker.py``; host side ``_template.py``) imports
  ``preload`` + handler modules once and forks workers on request; each worker gets
  its own Unix socketpair (the host end is non-blocking) and its own stderr pipe,
  both passed over the template's control socket with SCM_RIGHTS.
* The calling thread (``_call.py``) routes a call (``_dispatch.py``: pool lock, a few
  attribute reads), registers it in the worker's in-flight table and writes the frame
  itself (``_worker_io.py``: worker send lock). It then waits on a pre-acquired ``_thread``
  lock; asyncio callers wait on a future completed with ``call_soon_threadsafe``.
* One I/O thread per pool (epoll, ``_worker_io.py``) reads every worker socket, stderr pipe
  and the template's control socket, completes calls, flushes partial writes,
  dispatches queued calls when a slot frees, and hands host callbacks to a thread pool.
* One supervisor thread (``_supervisor.py``) keeps the pool at size: (re)starts the
  template and workers with exponential backoff, enforces start timeouts, recycles by
  requests / age / RSS (the replacement is ready before the old worker is drained),
  kills workers whose cancelled calls overstayed, expires sessions.

Routing: a worker runs its non-concurrent (sync/generator) calls one at a time in
arrival order. Short calls (a handler whose recent latency is under
``pipeline_latency_s``) may be pipelined ``pipeline_depth`` deep on one worker,
which is what makes small calls fast; long ones go one per worker. Because order
is known, when a worker dies only its running call fails: calls pipelined behind it
had not started and are re-queued. Async / ``concurrent=True`` handlers take up to
``max_concurrency`` calls per worker.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import queue
import select
import signal
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from typing import Any

from dspex.errors import PoolClosed, PoolError, WorkerStartError
from dspex.pool import _procsafe
from dspex.pool._call import _DONE, _STREAM_END, CallResult, _CallerSide, _deliver_event, _Event, _finish
from dspex.pool._dispatch import _Dispatch
from dspex.pool._procsafe import ALLOW_NESTED_ENV, WORKER_ENV
from dspex.pool._supervisor import _read_rss_kb, _Supervisor, _tail
from dspex.pool._template import _Template
from dspex.pool._worker_io import _EP_IN, _STATE_NAMES, DEAD, DRAINING, READY, RETIRING, _WorkerIO
from dspex.pool.backend import PoolFacade

__all__ = ["CallResult", "Pool"]


def _refuse_nested(name: str) -> None:
    """A Pool started in a template/worker (or a process one started) is almost always
    the host's program re-run there (a script without a main guard): a fork bomb."""
    where = os.environ.get(WORKER_ENV)
    if not (where or _procsafe.IN_WORKER) or os.environ.get(ALLOW_NESTED_ENV) == "1":
        return
    pool, _, pid = (where or "?:?").partition(":")
    raise PoolError(
        f"pools cannot be started inside a dspex worker; Pool {name!r} was started in worker process "
        f"{os.getpid()} (descendant of pool {pool!r}, process {pid}). This usually means the host's script "
        "ran again inside a worker: put the pool code under `if __name__ == \"__main__\":` and make sure no "
        "handler or preload module imports the script. Set DSPEX_ALLOW_NESTED_POOLS=1 to start pools in "
        "workers on purpose.",
        pool=name,
    )


class Pool(PoolFacade, _CallerSide, _Dispatch, _WorkerIO, _Supervisor, _Template):
    """A named set of supervised worker processes. See the module docstring.
    (Context-manager use and ``session()`` come from ``PoolFacade``, shared with RayPool.)"""

    def __repr__(self) -> str:
        return f"Pool(name={self.name!r}, size={self.size}, state={self._state!r})"

    def start(self) -> Pool:
        """Start the template and the workers; wait until ``size`` workers are ready.

        Raises WorkerStartError (with the stderr tail) if they cannot start; the pool
        keeps retrying in the background with exponential backoff until ``close()``.
        """
        with self._lock:
            if self._closed:
                raise PoolClosed(f"pool {self.name!r} is closed; create a new Pool", pool=self.name)
            if self._state == "new":
                _refuse_nested(self.name)
                self._state = "running"
                self._ep = select.epoll()
                self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self._ep.register(self._wake_fd, _EP_IN)
                self._fdmap[self._wake_fd] = ("wake", None)
                self._io_thread = threading.Thread(target=self._io_loop, name=f"dspex-pool-{self.name}-io", daemon=True)
                self._sup_thread = threading.Thread(
                    target=self._sup_loop, name=f"dspex-pool-{self.name}-sup", daemon=True
                )
                self._io_thread.start()
                self._sup_thread.start()
                ref = weakref.ref(self)
                atexit.register(_close_at_exit, ref)
        self._wake_sup.set()
        deadline = time.monotonic() + self.start_timeout_s + 5.0
        with self._lock:
            while True:
                n_ready = sum(1 for w in self._workers if w.state in (READY, RETIRING))
                if n_ready >= self.size:
                    return self
                if self._start_error is not None:
                    raise self._start_error
                if self._closed:
                    raise PoolClosed(f"pool {self.name!r} was closed while starting", pool=self.name)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerStartError(
                        f"pool {self.name!r}: only {n_ready} of {self.size} workers ready after "
                        f"{self.start_timeout_s:.0f} s; raise start_timeout_s or check the handler modules",
                        pool=self.name,
                        stderr_tail=_tail(self._zerr_tail),
                    )
                self._ready_cond.wait(min(left, 0.5))

    def close(self, grace_s: float | None = None) -> None:
        """Stop the pool: fail queued calls (PoolClosed), SIGTERM the workers, then
        SIGKILL whatever is left after the grace period, and stop the template."""
        grace = self.shutdown_grace_s if grace_s is None else grace_s
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started = self._state == "running"
            self._state = "closed"
            queued = list(self._queue)
            self._queue.clear()
            for w in self._workers:
                queued.extend(w.strict_q)
                w.strict_q.clear()
            self._n_queued = 0
            self._q_bytes = 0
            workers = list(self._workers)
            self._ready_cond.notify_all()
        for call in queued:
            _finish(call, False, PoolClosed(f"pool {self.name!r} closed before the call ran", pool=self.name), 0)
        if not started:
            return
        for w in workers:
            if w.pid:
                self._zkill(w.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._lock:
                if not any(w.state != DEAD for w in self._workers if w.pid):
                    break
            time.sleep(0.01)
        with self._lock:
            left = [w for w in self._workers if w.pid and w.state != DEAD]
        for w in left:
            self._zkill(w.pid, signal.SIGKILL)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            with self._lock:
                if not any(w.state != DEAD for w in self._workers if w.pid):
                    break
            time.sleep(0.01)
        # Whatever is still registered fails now; the template takes the rest down.
        with self._lock:
            rest = list(self._workers)
        for w in rest:
            self._finalize(w, "closed")
        self._stop_zygote()
        self._wake_sup.set()
        self._wake_io()
        for t in (self._io_thread, self._sup_thread):
            if t is not None and t is not threading.current_thread():
                t.join(timeout=2.0)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        for fd in list(self._fdmap):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fdmap.clear()
        with contextlib.suppress(Exception):
            self._ep.close()

    def call(
        self,
        handler: str,
        /,
        *args: Any,
        session: Hashable | None = None,
        timeout: float | None = None,
        callbacks: dict[str, Callable[..., Any]] | None = None,
        on_event: Callable[[dict[str, Any]], Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``handler(*args, **kwargs)`` in a worker and return its result.

        A generator handler's chunks come back as a list (use ``stream`` to get them
        as they are produced). Keyword arguments named like the options above can be
        passed with ``call_with``.
        """
        return self._sync(handler, args, kwargs, session, timeout, callbacks, on_event, False)

    def call_detailed(
        self,
        handler: str,
        /,
        *args: Any,
        session: Hashable | None = None,
        timeout: float | None = None,
        callbacks: dict[str, Callable[..., Any]] | None = None,
        on_event: Callable[[dict[str, Any]], Any] | None = None,
        **kwargs: Any,
    ) -> CallResult:
        return self._sync(handler, args, kwargs, session, timeout, callbacks, on_event, True)

    def call_with(
        self,
        handler: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        session: Hashable | None = None,
        timeout: float | None = None,
        callbacks: dict[str, Callable[..., Any]] | None = None,
        on_event: Callable[[dict[str, Any]], Any] | None = None,
        detailed: bool = False,
    ) -> Any:
        """``call`` with the handler's arguments given explicitly (no name clashes)."""
        return self._sync(handler, tuple(args), dict(kwargs or {}), session, timeout, callbacks, on_event, detailed)

    async def acall(
        self,
        handler: str,
        /,
        *args: Any,
        session: Hashable | None = None,
        timeout: float | None = None,
        callbacks: dict[str, Callable[..., Any]] | None = None,
        on_event: Callable[[dict[str, Any]], Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        return await self._async(handler, args, kwargs, session, timeout, callbacks, on_event, False)

    async def acall_detailed(
        self,
        handler: str,
        /,
        *args: Any,
        session: Hashable | None = None,
        timeout: float | None = None,
        callbacks: dict[str, Callable[..., Any]] | None = None,
        on_event: Callable[[dict[str, Any]], Any] | None = None,
        **kwargs: Any,
    ) -> CallResult:
        return await self._async(handler, args, kwargs, session, timeout, callbacks, on_event, True)

    def stream(
        self,
        handler: str,
        /,
        *args: Any,
        session: Hashable | None = None,
        timeout: float | None = None,
        callbacks: dict[str, Callable[..., Any]] | None = None,
        on_event: Callable[[dict[str, Any]], Any] | None = None,
        **kwargs: Any,
    ) -> Iterator[Any]:
        """Yield a generator handler's chunks as the worker produces them (a plain
        handler yields its one result). Closing the iterator early cancels the call.
        ``timeout`` bounds the whole stream."""
        self._ensure_started()
        call = self._new_call(handler, args, kwargs, session, timeout, callbacks, on_event, stream=True)
        call.q = queue.SimpleQueue()
        self._submit(call)
        if call.worker is not None:
            self._arm(call.worker)  # the I/O thread reads for this caller
        ok = False
        try:
            while True:
                item = self._q_get(call)
                if item is _STREAM_END:
                    ok = True
                    value = self._after(call)
                    if not self._streams(handler):
                        yield value
                    return
                self._consumed(call)
                yield item
        finally:
            if not ok and call.state != _DONE:
                self._abandon(call, timed_out=False)

    async def astream(
        self,
        handler: str,
        /,
        *args: Any,
        session: Hashable | None = None,
        timeout: float | None = None,
        callbacks: dict[str, Callable[..., Any]] | None = None,
        on_event: Callable[[dict[str, Any]], Any] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        if self._state != "running" or not self._handler_table:
            await asyncio.get_running_loop().run_in_executor(None, self._ensure_started)
        loop = asyncio.get_running_loop()
        call = self._new_call(handler, args, kwargs, session, timeout, callbacks, on_event, stream=True)
        call.loop = loop
        aq: asyncio.Queue[Any] = asyncio.Queue()
        call.q = aq
        self._submit(call)
        if call.worker is not None:
            self._arm(call.worker)  # the I/O thread reads for this caller
        ok = False
        try:
            while True:
                left = None if call.deadline is None else max(0.0, call.deadline - time.monotonic())
                try:
                    async with asyncio.timeout(left):
                        item = await aq.get()
                except TimeoutError:
                    self._abandon(call, timed_out=True)
                    ok = True
                    raise self._timeout_error(call) from None
                if isinstance(item, _Event):
                    _deliver_event(call, item.event)
                    continue
                if item is _STREAM_END:
                    ok = True
                    value = self._after(call)
                    if not self._streams(handler):
                        yield value
                    return
                self._consumed(call)
                yield item
        finally:
            if not ok and call.state != _DONE:
                self._abandon(call, timed_out=False)

    def drop_session(self, session: Hashable) -> None:
        """Forget a session here and drop its state in every worker that may hold it."""
        with self._lock:
            s = self._sessions.pop(session)
        if s is not None:
            self._drop_in_workers([s])

    def workers(self) -> list[int]:
        """Pids of the live workers (starting ones excluded)."""
        with self._lock:
            return [w.pid for w in self._workers if w.pid and w.state in (READY, RETIRING, DRAINING)]

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            workers = [
                {
                    "pid": w.pid,
                    "state": _STATE_NAMES[w.state],
                    "requests": w.requests,
                    "in_flight": len(w.inflight),
                    "rss_mb": round((w.rss_kb or _read_rss_kb(w.pid)) / 1024, 1) if w.pid else 0.0,
                    "age_s": round(now - w.spawned_at, 3),
                }
                for w in self._workers
            ]
            out: dict[str, Any] = {
                "name": self.name,
                "size": self.size,
                "state": self._state,
                "affinity": self.affinity,
                "queue_depth": self._n_queued,
                "queue_limit": self.queue_limit,
                "queue_bytes": self._q_bytes,
                "queue_max_bytes": self.queue_max_bytes,
                "in_flight": sum(len(w.inflight) for w in self._workers),
                **self._counts,
                "sessions": len(self._sessions),
                "latency_s": self._latency.quantiles(),
                "workers": workers,
                "template": {
                    "pid": self._zproc.pid if self._zproc is not None else None,
                    "mode": self._zinfo.get("mode"),
                    "import_s": self._zinfo.get("import_s"),
                    "python": self._zinfo.get("python"),
                },
                "handlers": sorted(self._handler_table),
                "last_start_error": str(self._start_error) if self._start_error else None,
            }
        return out


def _close_at_exit(ref: weakref.ReferenceType[Pool]) -> None:
    pool = ref()
    if pool is not None:
        with contextlib.suppress(Exception):
            pool.close(grace_s=0.5)
