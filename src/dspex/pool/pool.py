"""``Pool``: supervised Python worker processes with sessions (our Snakepit).

This module is the public facade: construction (``PoolConfig`` in ``_state.py``), start /
close, call / acall / stream / astream, sessions, stats. ``Pool`` owns one object per part,
each given only the parts it talks to (docs/internals.md, "Inside ``Pool``"):

* A template process (zygote, ``worker.py``; host side ``_template.py``) imports
  ``preload`` + handler modules once and forks workers on request; each worker gets
  its own Unix socketpair (the host end is non-blocking) and its own stderr pipe,
  both passed over the template's control socket with SCM_RIGHTS.
* The calling thread (``Caller``, ``_call.py``) routes a call (``Dispatcher``,
  ``_dispatch.py``: pool lock, a few attribute reads), registers it in the worker's
  in-flight table and writes the frame itself (``WorkerIO``, ``_worker_io.py``: worker send lock). It then waits on a pre-acquired ``_thread``
  lock; asyncio callers wait on a future completed with ``call_soon_threadsafe``.
* One I/O thread per pool (epoll, ``WorkerIO``) reads every worker socket, stderr pipe
  and the template's control socket, completes calls, flushes partial writes,
  dispatches queued calls when a slot frees, and hands host callbacks to a thread pool.
* One supervisor thread (``Supervisor``, ``_supervisor.py``) keeps the pool at size: (re)starts the
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
import signal
import time
import weakref
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from typing import Any

from dspex.errors import PoolClosed, PoolError, WorkerStartError
from dspex.pool import _procsafe
from dspex.pool import protocol as P
from dspex.pool._call import _DONE, _STREAM_END, Caller, CallResult, _deliver_event, _Event, _finish
from dspex.pool._dispatch import Dispatcher
from dspex.pool._procsafe import ALLOW_NESTED_ENV, WORKER_ENV
from dspex.pool._state import PoolConfig, PoolShared
from dspex.pool._supervisor import Supervisor, _read_rss_kb
from dspex.pool._template import Template
from dspex.pool._worker_io import _STATE_NAMES, DEAD, DRAINING, READY, RETIRING, WorkerIO, _tail
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


class Pool(PoolFacade, PoolConfig):
    """A named set of supervised worker processes. See the module docstring.
    (Its options and their checks: ``PoolConfig``; context-manager use and ``session()``
    come from ``PoolFacade``, shared with RayPool.)"""

    def _post_init(self, codec: P.Codec, max_sessions: int, session_ttl_s: float | None) -> None:
        # The parts, each wired to what it needs; the cycles (the I/O thread reports to the
        # dispatcher and the supervisor, which write through it) are closed by connect().
        self._s = shared = PoolShared(max_sessions, session_ttl_s)
        self._io = io = WorkerIO(self, shared, codec)
        self._dispatch = dispatch = Dispatcher(self, shared, io)
        self._template = template = Template(self, shared, io)
        self._sup = sup = Supervisor(self, shared, codec, io, dispatch, template)
        self._calls = Caller(self, shared, codec, dispatch, io, self.start)
        io.connect(dispatch, sup)
        dispatch.connect(sup)
        template.connect(sup)

    @property
    def _state(self) -> str:  # "new" | "running" | "closed" (dspex.pipeline.validation reads it)
        return self._s.state

    @property
    def _zproc(self) -> Any:  # the template process (tests find its pid here)
        return self._template.proc

    def __repr__(self) -> str:
        return f"Pool(name={self.name!r}, size={self.size}, state={self._s.state!r})"

    def start(self) -> Pool:
        """Start the template and the workers; wait until ``size`` workers are ready.

        Raises WorkerStartError (with the stderr tail) if they cannot start; the pool
        keeps retrying in the background with exponential backoff until ``close()``.
        """
        with self._s.lock:
            if self._s.closed:
                raise PoolClosed(f"pool {self.name!r} is closed; create a new Pool", pool=self.name)
            if self._s.state == "new":
                _refuse_nested(self.name)
                self._s.state = "running"
                self._io.start()
                self._sup.start()
                ref = weakref.ref(self)
                atexit.register(_close_at_exit, ref)
        self._s.wake_sup.set()
        deadline = time.monotonic() + self.start_timeout_s + 5.0
        with self._s.lock:
            while True:
                n_ready = sum(1 for w in self._s.workers if w.state in (READY, RETIRING))
                if n_ready >= self.size:
                    return self
                if self._s.start_error is not None:
                    raise self._s.start_error
                if self._s.closed:
                    raise PoolClosed(f"pool {self.name!r} was closed while starting", pool=self.name)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerStartError(
                        f"pool {self.name!r}: only {n_ready} of {self.size} workers ready after "
                        f"{self.start_timeout_s:.0f} s; raise start_timeout_s or check the handler modules",
                        pool=self.name,
                        stderr_tail=_tail(self._template.err_tail),
                    )
                self._s.ready_cond.wait(min(left, 0.5))

    def close(self, grace_s: float | None = None) -> None:
        """Stop the pool: fail queued calls (PoolClosed), SIGTERM the workers, then
        SIGKILL whatever is left after the grace period, and stop the template."""
        grace = self.shutdown_grace_s if grace_s is None else grace_s
        with self._s.lock:
            if self._s.closed:
                return
            self._s.closed = True
            started = self._s.state == "running"
            self._s.state = "closed"
            queued = list(self._s.queue)
            self._s.queue.clear()
            for w in self._s.workers:
                queued.extend(w.strict_q)
                w.strict_q.clear()
            self._s.n_queued = 0
            self._s.q_bytes = 0
            workers = list(self._s.workers)
            self._s.ready_cond.notify_all()
        for call in queued:
            _finish(call, False, PoolClosed(f"pool {self.name!r} closed before the call ran", pool=self.name), 0)
        if not started:
            return
        for w in workers:
            if w.pid:
                self._template.kill(w.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._s.lock:
                if not any(w.state != DEAD for w in self._s.workers if w.pid):
                    break
            time.sleep(0.01)
        with self._s.lock:
            left = [w for w in self._s.workers if w.pid and w.state != DEAD]
        for w in left:
            self._template.kill(w.pid, signal.SIGKILL)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            with self._s.lock:
                if not any(w.state != DEAD for w in self._s.workers if w.pid):
                    break
            time.sleep(0.01)
        # Whatever is still registered fails now; the template takes the rest down.
        with self._s.lock:
            rest = list(self._s.workers)
        for w in rest:
            self._sup.finalize(w, "closed")
        self._template.stop()
        self._s.wake_sup.set()
        self._io.wake()
        self._io.join()
        self._sup.join()
        self._io.close()

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
        return self._calls.sync(handler, args, kwargs, session, timeout, callbacks, on_event, False)

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
        return self._calls.sync(handler, args, kwargs, session, timeout, callbacks, on_event, True)

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
        return self._calls.sync(handler, tuple(args), dict(kwargs or {}), session, timeout, callbacks, on_event, detailed)

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
        return await self._calls.acall(handler, args, kwargs, session, timeout, callbacks, on_event, False)

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
        return await self._calls.acall(handler, args, kwargs, session, timeout, callbacks, on_event, True)

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
        self._calls.ensure_started()
        call = self._calls.new_call(handler, args, kwargs, session, timeout, callbacks, on_event, stream=True)
        call.q = queue.SimpleQueue()
        self._dispatch.submit(call)
        if call.worker is not None:
            self._io.arm(call.worker)  # the I/O thread reads for this caller
        ok = False
        try:
            while True:
                item = self._calls.q_get(call)
                if item is _STREAM_END:
                    ok = True
                    value = self._calls.after(call)
                    if not self._calls.streams(handler):
                        yield value
                    return
                self._calls.consumed(call)
                yield item
        finally:
            if not ok and call.state != _DONE:
                self._dispatch.abandon(call, timed_out=False)

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
        if self._s.state != "running" or not self._s.handler_table:
            await asyncio.get_running_loop().run_in_executor(None, self._calls.ensure_started)
        loop = asyncio.get_running_loop()
        call = self._calls.new_call(handler, args, kwargs, session, timeout, callbacks, on_event, stream=True)
        call.loop = loop
        aq: asyncio.Queue[Any] = asyncio.Queue()
        call.q = aq
        self._dispatch.submit(call)
        if call.worker is not None:
            self._io.arm(call.worker)  # the I/O thread reads for this caller
        ok = False
        try:
            while True:
                left = None if call.deadline is None else max(0.0, call.deadline - time.monotonic())
                try:
                    async with asyncio.timeout(left):
                        item = await aq.get()
                except TimeoutError:
                    self._dispatch.abandon(call, timed_out=True)
                    ok = True
                    raise self._calls.timeout_error(call) from None
                if isinstance(item, _Event):
                    _deliver_event(call, item.event)
                    continue
                if item is _STREAM_END:
                    ok = True
                    value = self._calls.after(call)
                    if not self._calls.streams(handler):
                        yield value
                    return
                self._calls.consumed(call)
                yield item
        finally:
            if not ok and call.state != _DONE:
                self._dispatch.abandon(call, timed_out=False)

    def drop_session(self, session: Hashable) -> None:
        """Forget a session here and drop its state in every worker that may hold it."""
        with self._s.lock:
            s = self._s.sessions.pop(session)
        if s is not None:
            self._dispatch.drop_in_workers([s])

    def workers(self) -> list[int]:
        """Pids of the live workers (starting ones excluded)."""
        with self._s.lock:
            return [w.pid for w in self._s.workers if w.pid and w.state in (READY, RETIRING, DRAINING)]

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._s.lock:
            workers = [
                {
                    "pid": w.pid,
                    "state": _STATE_NAMES[w.state],
                    "requests": w.requests,
                    "in_flight": len(w.inflight),
                    "rss_mb": round((w.rss_kb or _read_rss_kb(w.pid)) / 1024, 1) if w.pid else 0.0,
                    "age_s": round(now - w.spawned_at, 3),
                }
                for w in self._s.workers
            ]
            out: dict[str, Any] = {
                "name": self.name,
                "size": self.size,
                "state": self._s.state,
                "affinity": self.affinity,
                "queue_depth": self._s.n_queued,
                "queue_limit": self.queue_limit,
                "queue_bytes": self._s.q_bytes,
                "queue_max_bytes": self.queue_max_bytes,
                "in_flight": sum(len(w.inflight) for w in self._s.workers),
                **self._s.counts,
                "sessions": len(self._s.sessions),
                "latency_s": self._calls.latency.quantiles(),
                "workers": workers,
                "template": {
                    "pid": self._template.proc.pid if self._template.proc is not None else None,
                    "mode": self._template.info.get("mode"),
                    "import_s": self._template.info.get("import_s"),
                    "python": self._template.info.get("python"),
                },
                "handlers": sorted(self._s.handler_table),
                "last_start_error": str(self._s.start_error) if self._s.start_error else None,
            }
        return out


def _close_at_exit(ref: weakref.ReferenceType[Pool]) -> None:
    pool = ref()
    if pool is not None:
        with contextlib.suppress(Exception):
            pool.close(grace_s=0.5)
