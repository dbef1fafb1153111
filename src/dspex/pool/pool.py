"""``Pool``: supervised Python worker processes with sessions (our Snakepit).

Host-side architecture (see docs/internals.md for the contract):

* A template process (zygote, ``worker.py``) imports ``preload`` + handler modules
  once and forks workers on request; each worker gets its own Unix socketpair (the
  host end is non-blocking) and its own stderr pipe, both passed over the
  template's control socket with SCM_RIGHTS.
* The calling thread routes a call (pool lock, a few attribute reads), registers it
  in the worker's in-flight table and writes the frame itself (worker send lock).
  It then waits on a pre-acquired ``_thread`` lock; asyncio callers wait on a
  future completed with ``call_soon_threadsafe``.
* One I/O thread per pool (epoll) reads every worker socket, stderr pipe and the
  template's control socket, completes calls, flushes partial writes, dispatches
  queued calls when a slot frees, and hands host callbacks to a thread pool.
* One supervisor thread keeps the pool at size: (re)starts the template and workers
  with exponential backoff, enforces start timeouts, recycles by requests / age /
  RSS (the replacement is ready before the old worker is drained), kills workers
  whose cancelled calls overstayed, expires sessions.

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
import inspect
import itertools
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from dspex.errors import (
    CallTimeout,
    ConfigError,
    HandlerNotFound,
    PoolClosed,
    PoolError,
    PoolOverloaded,
    ProtocolError,
    RemoteError,
    SessionLost,
    WorkerCrashed,
    WorkerStartError,
)
from dspex.pool import protocol as P
from dspex.pool import worker as _worker_mod
from dspex.pool.sessions import Session, SessionStore
from dspex.pool.stats import LatencyReservoir
from dspex.pool.worker import ALLOW_NESTED_ENV, BOOTSTRAP, WORKER_ENV

__all__ = ["CallResult", "Pool"]

_DSPEX_DIR = str(Path(__file__).resolve().parent.parent)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_EP_IN = select.EPOLLIN
_EP_OUT = select.EPOLLOUT
_EP_ONE = select.EPOLLONESHOT
_DONTWAIT = socket.MSG_DONTWAIT

# worker states
STARTING, READY, RETIRING, DRAINING, STOPPING, DEAD = range(6)
_STATE_NAMES = ("starting", "ready", "retiring", "draining", "stopping", "dead")
# call states
_QUEUED, _SENT, _DONE = 0, 1, 2
_STREAM_END = object()
_BACKGROUND: set[Any] = set()


class CallResult(NamedTuple):
    value: Any
    pid: int
    elapsed_s: float


def _signal_name(sig: int | None) -> str:
    if sig is None:
        return "?"
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class _Call:
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


class _Worker:
    __slots__ = (
        "armed",
        "eof",
        "err_fd",
        "err_tail",
        "exit",
        "fd",
        "inflight",
        "info",
        "kill_reason",
        "n_conc",
        "n_long",
        "n_serial",
        "outbuf",
        "pid",
        "poller",
        "proto_error",
        "reader",
        "ready_at",
        "requests",
        "rlock",
        "rss_kb",
        "send_lock",
        "sock",
        "spawned_at",
        "state",
        "stop_at",
        "strict_q",
        "token",
    )

    def __init__(self, token: int, sock: socket.socket, err_fd: int, reader: P.FrameReader) -> None:
        self.token = token
        self.sock = sock
        self.fd = sock.fileno()
        self.err_fd = err_fd
        self.err_tail = bytearray()
        self.reader = reader
        self.pid = 0
        self.state = STARTING
        self.inflight: dict[int, _Call] = {}
        self.n_serial = 0
        self.n_long = 0
        self.n_conc = 0
        self.requests = 0
        self.spawned_at = time.monotonic()
        self.ready_at = 0.0
        self.stop_at: float | None = None
        self.send_lock = threading.Lock()
        self.outbuf: deque[Any] = deque()
        self.exit: tuple[int | None, int | None] | None = None
        self.eof = False
        self.proto_error: str | None = None
        self.kill_reason: str | None = None
        self.rss_kb = 0
        self.info: dict[str, Any] = {}
        self.strict_q: deque[_Call] = deque()
        # Whoever holds rlock reads the socket: the I/O thread, or a waiting sync caller
        # that reads its own reply directly (no thread hop: the fast path).
        self.rlock = threading.Lock()
        self.armed = True  # registered with EPOLLIN | EPOLLONESHOT at spawn
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)


def _tail(buf: bytearray, n: int = 4000) -> str:
    return bytes(buf[-n:]).decode("utf-8", "replace")


def _resolve_python(python: str | os.PathLike[str] | None) -> str:
    """An interpreter path; a virtualenv directory means its bin/python."""
    if python is None:
        return sys.executable
    p = Path(python)
    if p.is_dir():
        return str(p / "bin" / "python")
    return str(p)


def _refuse_nested(name: str) -> None:
    """A Pool started in a template/worker (or a process one started) is almost always
    the host's program re-run there (a script without a main guard): a fork bomb."""
    where = os.environ.get(WORKER_ENV)
    if not (where or _worker_mod.IN_WORKER) or os.environ.get(ALLOW_NESTED_ENV) == "1":
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


def _stderr_default() -> bool:
    """``forward_stderr`` when not given: env DSPEX_POOL_STDERR=quiet|forward (default forward)."""
    v = os.environ.get("DSPEX_POOL_STDERR", "forward").strip().lower()
    if v in ("quiet", "off", "0", "false", "no"):
        return False
    if v in ("forward", "on", "1", "true", "yes", ""):
        return True
    raise ConfigError(f"DSPEX_POOL_STDERR must be 'quiet' or 'forward', not {v!r}")


def _main_file() -> str | None:
    """The host's main script (run as ``python file.py``), which workers must never run."""
    main = sys.modules.get("__main__")
    f = getattr(main, "__file__", None)
    if not f or getattr(main, "__spec__", None) is not None:
        return None
    return os.path.realpath(f)


def _read_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE // 1024
    except (OSError, ValueError, IndexError):
        return 0


class Pool:
    """A named set of supervised worker processes. See the module docstring."""

    def __init__(
        self,
        name: str = "pool",
        size: int = 2,
        handlers: list[str] | tuple[str, ...] = (),
        python: str | os.PathLike[str] | None = None,
        preload: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        max_requests: int | None = None,
        max_age_s: float | None = None,
        max_rss_mb: float | None = None,
        queue_limit: int = 1000,
        call_timeout_s: float | None = None,
        affinity: str = "hint",
        callbacks: dict[str, Callable[..., Any]] | None = None,
        allow_pickle: bool = False,
        start_timeout_s: float = 60.0,
        *,
        max_frame: int = P.DEFAULT_MAX_FRAME,
        pipeline_depth: int = 8,
        pipeline_latency_s: float = 0.002,
        max_concurrency: int = 64,
        cancel_grace_s: float = 5.0,
        shutdown_grace_s: float = 2.0,
        max_sessions: int = 10_000,
        session_ttl_s: float | None = 3600.0,
        start_method: str = "fork",
        callback_threads: int = 8,
        forward_stderr: bool | None = None,
        hint_wait_s: float = 0.05,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 10.0,
    ) -> None:
        if size < 1:
            raise ConfigError(f"pool {name!r}: size must be >= 1, got {size}")
        if affinity not in ("hint", "strict", "none"):
            raise ConfigError(f"pool {name!r}: affinity must be 'hint', 'strict' or 'none', not {affinity!r}")
        if start_method not in ("fork", "spawn"):
            raise ConfigError(f"pool {name!r}: start_method must be 'fork' or 'spawn', not {start_method!r}")
        self.name = name
        self.size = int(size)
        self.handlers = list(handlers)
        self.python = _resolve_python(python)
        self.preload = list(preload)
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.max_requests = max_requests
        self.max_age_s = max_age_s
        self.max_rss_mb = max_rss_mb
        self.queue_limit = int(queue_limit)
        self.call_timeout_s = call_timeout_s
        self.affinity = affinity
        self.callbacks = dict(callbacks or {})
        self.allow_pickle = allow_pickle
        self.start_timeout_s = start_timeout_s
        self.max_frame = max_frame
        self.pipeline_depth = max(1, pipeline_depth)
        self.pipeline_latency_s = pipeline_latency_s
        self.max_concurrency = max(1, max_concurrency)
        self.cancel_grace_s = cancel_grace_s
        self.shutdown_grace_s = shutdown_grace_s
        self.start_method = start_method
        self.callback_threads = callback_threads
        if forward_stderr is None:
            forward_stderr = _stderr_default()
        self.forward_stderr = forward_stderr
        self.hint_wait_s = max(0.0, float(hint_wait_s))
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s

        self._codec = P.Codec(allow_pickle, max_frame)
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._by_pid: dict[int, _Worker] = {}
        self._by_token: dict[int, _Worker] = {}
        self._queue: deque[_Call] = deque()
        self._n_queued = 0  # general + strict queues
        self._sessions = SessionStore(max_sessions, session_ttl_s)
        self._handler_table: dict[str, list[Any]] = {}
        self._ewma: dict[str, float] = {}
        self._rids = itertools.count(1)
        self._tokens = 0
        self._state = "new"  # new -> running -> closed
        self._closed = False
        self._start_error: WorkerStartError | None = None
        self._fail_streak = 0
        self._next_start_at = 0.0
        self._ready_cond = threading.Condition(self._lock)
        self._wake_sup = threading.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._latency = LatencyReservoir()
        self._counts = {
            "calls": 0,
            "errors": 0,
            "timeouts": 0,
            "crashes": 0,
            "restarts": 0,
            "recycles": 0,
            "start_attempts": 0,
            "start_failures": 0,
            "overloaded": 0,
            "cancelled": 0,
            "requeued": 0,
            "protocol_errors": 0,
        }
        # template (zygote)
        self._zproc: subprocess.Popen[bytes] | None = None
        self._zctl: socket.socket | None = None
        self._zerr_fd = -1
        self._zerr_tail = bytearray()
        self._zready = False
        self._zinfo: dict[str, Any] = {}
        self._zstarted_at = 0.0
        # threads
        self._ep: Any = None
        self._wake_fd = -1
        self._fdmap: dict[int, tuple[str, Any]] = {}
        self._io_thread: threading.Thread | None = None
        self._sup_thread: threading.Thread | None = None
        self._last_slow_tick = 0.0
        self._next_spill = float("inf")  # earliest spill_at of a hint call waiting for its worker

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Pool:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Pool:
        await asyncio.get_running_loop().run_in_executor(None, self.__enter__)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

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
            workers = list(self._workers)
            self._ready_cond.notify_all()
        for call in queued:
            self._finish(call, False, PoolClosed(f"pool {self.name!r} closed before the call ran", pool=self.name), 0)
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

    # ------------------------------------------------------------------ public calls
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
                    self._deliver_event(call, item.event)
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

    # ------------------------------------------------------------------ call plumbing
    def _ensure_started(self) -> None:
        """Start the pool, or wait for a start in progress (another thread's): a call
        made meanwhile must not see an empty handler table (HandlerNotFound)."""
        if self._state != "running" or not self._handler_table:
            if self._closed:
                raise PoolClosed(f"pool {self.name!r} is closed", pool=self.name)
            self.start()

    def _new_call(
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
        kind = self._handler_table.get(name)
        if kind is None:
            if not self._handler_table and self._start_error is not None:
                raise self._start_error
            raise HandlerNotFound(
                f"pool {self.name!r} has no handler {name!r}; it has: {', '.join(sorted(self._handler_table)) or 'none'}"
                " (check the pool's handlers= modules)",
                pool=self.name,
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
        call.short = ew is not None and ew < self.pipeline_latency_s
        flags = (P.F_EVENTS if on_event is not None else 0) | (P.F_STREAM if stream else 0)
        call.flags = flags
        t = timeout if timeout is not None else self.call_timeout_s
        call.t0 = time.perf_counter()
        call.deadline = None if t is None else time.monotonic() + t
        try:
            call.frame = self._codec.frame([P.CALL, rid, name, list(args), kwargs, session, flags])
        except P.FrameError as exc:
            raise ProtocolError(f"pool {self.name!r}: request too large: {exc}", pool=self.name) from None
        if call.q is None and not stream and on_event is None:
            lock = threading.Lock()
            lock.acquire()
            call.lock = lock
        return call

    def _sync(
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
        if self._state != "running" or not self._handler_table:
            self._ensure_started()
        call = self._new_call(handler, args, kwargs, session, timeout, callbacks, on_event, stream=False)
        if call.lock is None:
            call.q = queue.SimpleQueue()
        self._submit(call)
        if call.lock is None and call.worker is not None:
            self._arm(call.worker)  # callers that do not read for themselves
        if call.lock is not None:
            w = call.worker
            try:
                # Alone on this worker: read our own reply on this thread (no thread hop).
                # With company, the I/O thread reads for everyone: one wake-up serves a
                # batch of replies, which costs less than callers taking turns.
                if w is not None:
                    if len(w.inflight) <= 1 and w.rlock.acquire(False):
                        try:
                            self._lead(w, call)
                        finally:
                            w.rlock.release()
                            self._arm(w)
                    elif call.state != _DONE:
                        self._arm(w)
                if call.deadline is None:
                    call.lock.acquire()
                elif not call.lock.acquire(True, max(0.0, call.deadline - time.monotonic())):
                    if self._abandon(call, timed_out=True):
                        raise self._timeout_error(call)
                    call.lock.acquire()  # completed while we gave up: it is on its way
            except BaseException:
                if call.state != _DONE:
                    self._abandon(call, timed_out=False)
                raise
        else:
            try:
                while True:
                    item = self._q_get(call)
                    if item is _STREAM_END:
                        break
            except BaseException:
                if call.state != _DONE:
                    self._abandon(call, timed_out=False)
                raise
        return self._after(call, detailed)

    def _lead(self, w: _Worker, call: _Call) -> None:
        """Read ``w``'s socket on this thread until our call is done (rlock held).

        Completes other callers' calls on the way. Stops at the deadline, or when the
        call moved (re-queued) or the worker is gone; the normal wait takes over.
        """
        poll = w.poller.poll
        deadline = call.deadline
        while call.state != _DONE and call.worker is w and w.state != DEAD and not w.eof and not w.proto_error:
            if deadline is None:
                self._on_readable(w, 0)  # block in recv itself
                continue
            timeout_ms = (deadline - time.monotonic()) * 1000.0
            if timeout_ms <= 0:
                return
            if poll(timeout_ms):
                self._on_readable(w)

    def _q_get(self, call: _Call) -> Any:
        """Next chunk / the end marker from a queued (stream or on_event) call."""
        while True:
            if call.deadline is None:
                item = call.q.get()
            else:
                try:
                    item = call.q.get(True, max(0.0, call.deadline - time.monotonic()))
                except queue.Empty:
                    if self._abandon(call, timed_out=True):
                        raise self._timeout_error(call) from None
                    item = call.q.get()  # it completed as we gave up: take it
            if isinstance(item, _Event):
                self._deliver_event(call, item.event)
                continue
            return item

    def _consumed(self, call: _Call) -> None:
        """Flow control: give the worker credit back for chunks the consumer took."""
        call.consumed += 1
        if call.consumed >= P.STREAM_WINDOW // 2:
            w = call.worker
            if w is not None and call.state == _SENT:
                self._send_msg(w, [P.CREDIT, call.rid, call.consumed])
            call.consumed = 0

    def _streams(self, handler: str) -> bool:
        return self._handler_table.get(handler, ["sync"])[0] in ("gen", "agen")

    def _deliver_event(self, call: _Call, event: Any) -> None:
        if call.on_event is None:
            return
        out = call.on_event(event)
        if inspect.isawaitable(out):
            task = asyncio.ensure_future(out)
            _BACKGROUND.add(task)  # keep a reference until it is done
            task.add_done_callback(_BACKGROUND.discard)

    def _after(self, call: _Call, detailed: bool = False) -> Any:
        elapsed = time.perf_counter() - call.t0
        self._latency.add(elapsed)
        ew = self._ewma.get(call.name)
        self._ewma[call.name] = elapsed if ew is None else ew * 0.8 + elapsed * 0.2
        if call.error is not None:
            raise call.error
        if detailed:
            return CallResult(call.value, call.pid, elapsed)
        return call.value

    async def _async(
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
        if self._state != "running" or not self._handler_table:
            await asyncio.get_running_loop().run_in_executor(None, self._ensure_started)
        loop = asyncio.get_running_loop()
        call = self._new_call(handler, args, kwargs, session, timeout, callbacks, on_event, stream=False)
        call.lock = None
        call.loop = loop
        call.fut = loop.create_future()
        self._submit(call)
        if call.worker is not None:
            self._arm(call.worker)  # the I/O thread reads for this caller
        fut = call.fut
        try:
            if call.deadline is None:
                await fut
            else:
                # asyncio.wait does not cancel ``fut`` on timeout, so a result that
                # lands while we give up is still delivered.
                done, _ = await asyncio.wait((fut,), timeout=max(0.0, call.deadline - time.monotonic()))
                if not done:
                    if self._abandon(call, timed_out=True):
                        fut.cancel()
                        raise self._timeout_error(call)
                    await fut
        except asyncio.CancelledError:
            if call.state != _DONE:
                self._abandon(call, timed_out=False)
            raise
        except Exception:
            if call.state != _DONE:
                raise  # ours (CallTimeout); otherwise the call's own error, raised by _after
        return self._after(call, detailed)

    def _timeout_error(self, call: _Call) -> CallTimeout:
        with self._lock:
            self._counts["timeouts"] += 1
            self._counts["errors"] += 1
        where = f"in worker {call.pid}" if call.pid else "while queued"
        return CallTimeout(
            f"pool {self.name!r}: call {call.name!r} passed its deadline {where}"
            + ("; the worker was replaced" if call.pid else "")
            + ". Raise timeout= / call_timeout_s or make the handler faster.",
            pool=self.name,
            handler=call.name,
            pid=call.pid or None,
        )

    # -- routing (caller threads and the I/O thread) ----------------------------------
    def _eligible(self, w: _Worker, call: _Call) -> bool:
        if call.serial:
            if call.short:
                return w.n_long == 0 and w.n_serial < self.pipeline_depth
            return w.n_serial == 0
        return w.n_conc < self.max_concurrency

    def _pick(self, call: _Call) -> _Worker | None:
        best = None
        best_load = 1 << 30
        for w in self._workers:
            if (w.state == READY or w.state == RETIRING) and self._eligible(w, call):
                load = len(w.inflight)
                if load < best_load:
                    best, best_load = w, load
                    if load == 0:
                        break
        return best

    def _route(self, call: _Call, evicted: list[Session]) -> _Worker | None:
        """Choose a worker (None = queue it). Pool lock held. May raise."""
        session = call.session
        if session is not None and self.affinity != "none":
            s = self._sessions.touch(session, evicted)
            w = s.worker
            if self.affinity == "strict":
                call.strict = True
                if s.lost:
                    raise SessionLost(
                        f"pool {self.name!r}: the worker holding strict session {session!r} is gone and "
                        "its state with it; drop the session (pool.drop_session) or start a new one",
                        pool=self.name,
                        session=session,
                    )
                if w is not None:
                    if self._eligible(w, call) and w.state in (READY, RETIRING):
                        return w
                    self._enqueue(call, w)
                    return None
            elif w is not None and w.state in (READY, RETIRING):
                if self._eligible(w, call):
                    return w
                if self.hint_wait_s > 0:
                    # busy: wait for it a bounded time, then spill (see _spill_overdue)
                    self._enqueue(call, w)
                    call.spill_at = spill_at = time.monotonic() + self.hint_wait_s
                    if spill_at < self._next_spill:
                        self._next_spill = spill_at
                        self._wake_sup.set()
                    return None
            # hint: spill to another worker (the session stays bound to its own)
        w = self._pick(call)
        if w is None:
            if not any(x.state in (READY, RETIRING, STARTING) for x in self._workers) and self._start_error:
                raise self._start_error
            self._enqueue(call, None)
        return w

    def _enqueue(self, call: _Call, w: _Worker | None) -> None:
        if self._n_queued >= self.queue_limit:
            self._counts["overloaded"] += 1
            raise PoolOverloaded(
                f"pool {self.name!r}: {self._n_queued} calls already queued (queue_limit={self.queue_limit}); "
                "retry later, add workers, or raise queue_limit",
                pool=self.name,
                queue_depth=self._n_queued,
            )
        call.state = _QUEUED
        if w is not None:
            w.strict_q.append(call)
        else:
            self._queue.append(call)
        self._n_queued += 1

    def _assign(self, w: _Worker, call: _Call) -> None:
        """Account the call to ``w``. Pool lock held; the caller sends it."""
        call.state = _SENT
        call.worker = w
        if call.serial:
            w.n_serial += 1
            if not call.short:
                w.n_long += 1
        else:
            w.n_conc += 1
        w.requests += 1
        self._counts["calls"] += 1
        if call.session is not None and self.affinity != "none":
            s = self._sessions.get(call.session)
            if s is not None:
                if s.worker is None or (s.worker.state not in (READY, RETIRING) and not call.strict):
                    s.worker = w
                s.workers.add(w)
        if self.max_requests is not None and w.requests >= self.max_requests and w.state == READY:
            self._retire(w, "max_requests")

    def _release(self, w: _Worker, call: _Call) -> None:
        if call.serial:
            w.n_serial -= 1
            if not call.short:
                w.n_long -= 1
        else:
            w.n_conc -= 1

    def _submit(self, call: _Call) -> None:
        evicted: list[Session] = []
        while True:
            with self._lock:
                if self._closed:
                    raise PoolClosed(f"pool {self.name!r} is closed", pool=self.name)
                w = self._route(call, evicted)
                if w is not None:
                    self._assign(w, call)
            if evicted:
                self._drop_in_workers(evicted)
                evicted = []
            if w is None:
                return
            if self._send_call(w, call):
                return
            # the worker died between routing and sending: route again

    def _send_call(self, w: _Worker, call: _Call) -> bool:
        with w.send_lock:
            if w.state == DEAD:
                return False
            w.inflight[call.rid] = call  # same lock as the write: table order == wire order
            self._write_locked(w, call.frame)
        return True

    def _write_locked(self, w: _Worker, data: bytes | memoryview) -> None:
        if w.outbuf:
            w.outbuf.append(data)
            return
        try:
            n = w.sock.send(data, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            return  # dead; the I/O thread finalizes it
        if n < len(data):
            w.outbuf.append(memoryview(data)[n:])
            self._arm_locked(w)

    def _arm_locked(self, w: _Worker, want_in: bool = True) -> None:
        """(Re)arm the one-shot epoll registration. Worker send lock held.

        Input is watched only while calls are in flight and no caller is reading
        them itself: an idle worker's death is reported by the template instead.
        """
        flags = _EP_ONE | (_EP_IN if want_in and w.inflight else 0) | (_EP_OUT if w.outbuf else 0)
        if flags == _EP_ONE | _EP_IN and w.armed:
            return  # already watched: save the syscall
        if flags != _EP_ONE and not w.eof and w.state != DEAD:
            # set before arming: the I/O thread clears it when the one-shot fires
            w.armed = flags == _EP_ONE | _EP_IN
            try:
                self._ep.modify(w.fd, flags)
            except (OSError, ValueError):
                w.armed = False

    def _arm(self, w: _Worker) -> None:
        with w.send_lock:
            self._arm_locked(w)

    def _send_msg(self, w: _Worker, msg: list[Any]) -> None:
        data = self._codec.frame(msg)
        with w.send_lock:
            if w.state != DEAD:
                self._write_locked(w, data)

    def _pump(self, out: list[tuple[_Worker, _Call]]) -> None:
        """Move queued calls onto free workers. Pool lock held; the caller sends ``out``."""
        if not self._n_queued:
            return
        for w in self._workers:
            if w.state not in (READY, RETIRING):
                continue
            while w.strict_q and self._eligible(w, w.strict_q[0]):
                call = w.strict_q.popleft()
                self._n_queued -= 1
                self._assign(w, call)
                out.append((w, call))
        while self._queue:
            call = self._queue[0]
            if call.strict:
                s = self._sessions.get(call.session)
                if s is not None and s.worker is not None:
                    # bound meanwhile (an earlier call of its session): wait for that worker
                    self._queue.popleft()
                    s.worker.strict_q.append(call)
                    continue
            w2 = self._pick(call)
            if w2 is None:
                break
            self._queue.popleft()
            self._n_queued -= 1
            if call.session is not None and self.affinity == "hint":
                self._sessions.touch(call.session, [])
            self._assign(w2, call)
            out.append((w2, call))

    def _send_pumped(self, out: list[tuple[_Worker, _Call]]) -> None:
        for w, call in out:
            if not self._send_call(w, call):
                with self._lock:
                    call.state = _QUEUED
                    self._queue.appendleft(call)
                    self._n_queued += 1
        for w in {w for w, _ in out}:
            self._arm(w)  # their callers wait on the I/O thread

    def _abandon(self, call: _Call, timed_out: bool) -> bool:
        """The caller gave up (deadline or cancellation). True if the call is now
        abandoned (the caller raises); False if it completed meanwhile."""
        kill: _Worker | None = None
        cancel: _Worker | None = None
        with self._lock:
            if call.state == _DONE:
                return False
            if call.abandoned:
                return True
            if call.state == _QUEUED:
                with contextlib.suppress(ValueError):
                    self._queue.remove(call)
                    self._n_queued -= 1
                for w in self._workers:
                    if call in w.strict_q:
                        w.strict_q.remove(call)
                        self._n_queued -= 1
                call.abandoned = True
                if not timed_out:
                    self._counts["cancelled"] += 1
                return True
            w2 = call.worker
            call.abandoned = True
            if not timed_out:
                self._counts["cancelled"] += 1
            if w2 is None or w2.inflight.get(call.rid) is not call:
                # already answered (or failed by its dying worker): the outcome is on its way
                call.abandoned = False
                return False
            w = w2
            call.pid = w.pid
            running = self._is_running(w, call)
            hkind = self._handler_table.get(call.name, ["sync"])[0]
            if timed_out and running and hkind in ("sync", "gen"):
                # A sync handler cannot be interrupted: replace the worker now.
                del w.inflight[call.rid]
                self._release(w, call)
                kill = w
            else:
                cancel = w
                if running:
                    grace = self.cancel_grace_s
                    if not timed_out and call.deadline is not None:
                        grace = max(0.0, call.deadline - time.monotonic())
                    call.kill_at = time.monotonic() + grace
        if kill is not None:
            self._kill(kill, "timeout")
        if cancel is not None:
            self._send_msg(cancel, [P.CANCEL, call.rid])
        return True

    @staticmethod
    def _is_running(w: _Worker, call: _Call) -> bool:
        if not call.serial:
            return True
        for c in list(w.inflight.values()):
            if c.serial:
                return c is call
        return False

    # ------------------------------------------------------------------ completion
    def _finish(self, call: _Call, ok: bool, value: Any, pid: int) -> None:
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

    def _count_error(self) -> None:
        with self._lock:
            self._counts["errors"] += 1

    # ------------------------------------------------------------------ I/O thread
    def _wake_io(self) -> None:
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake_fd, 1)

    def _io_loop(self) -> None:
        ep = self._ep
        fdmap = self._fdmap
        while not self._closed or self._workers:
            try:
                events = ep.poll(0.5)
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return
            for fd, ev in events:
                entry = fdmap.get(fd)
                if entry is None:
                    continue
                kind, obj = entry
                try:
                    if kind == "w":
                        obj.armed = False  # one-shot: it fired, so it is disarmed now
                        if ev & _EP_OUT:
                            self._flush(obj)
                        if ev & (_EP_IN | select.EPOLLHUP | select.EPOLLERR):
                            if obj.rlock.acquire(False):
                                try:
                                    self._on_readable(obj)
                                finally:
                                    obj.rlock.release()
                                self._arm(obj)
                            elif obj.outbuf:
                                # a caller is reading: it re-arms input when it lets go
                                with obj.send_lock:
                                    self._arm_locked(obj, want_in=False)
                        else:
                            self._arm(obj)
                    elif kind == "err":
                        self._on_stderr(fd, obj)
                    elif kind == "z":
                        self._on_zygote()
                    elif kind == "wake":
                        with contextlib.suppress(OSError):
                            os.eventfd_read(fd)
                except Exception:  # never let one bad event kill the I/O thread
                    traceback.print_exc()
            if self._closed and not self._workers:
                return

    def _flush(self, w: _Worker) -> None:
        with w.send_lock:
            while w.outbuf:
                data = w.outbuf[0]
                try:
                    n = w.sock.send(data, _DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    w.outbuf.clear()
                    break
                if n < len(data):
                    w.outbuf[0] = memoryview(data)[n:]
                    return
                w.outbuf.popleft()

    def _on_readable(self, w: _Worker, flags: int = socket.MSG_DONTWAIT) -> None:
        if w.state == DEAD or w.proto_error:
            return
        try:
            msgs = w.reader.recv(w.sock, flags)
        except (BlockingIOError, InterruptedError):
            return
        except P.FrameError as exc:
            self._protocol_error(w, str(exc))
            return
        except OSError:
            msgs = None
        if msgs is None:
            self._on_eof(w)
            return
        if msgs:
            self._handle_msgs(w, msgs)

    def _handle_msgs(self, w: _Worker, msgs: list[list[Any]]) -> None:
        done: list[tuple[_Call, bool, Any]] = []
        inflight = w.inflight
        for m in msgs:
            kind = m[0]
            try:
                if kind == P.RESULT:
                    call = inflight.pop(m[1], None)
                    if call is not None:
                        done.append((call, True, m[2]))
                elif kind == P.ERROR:
                    call = inflight.pop(m[1], None)
                    if call is not None:
                        done.append((call, False, self._error_from(w, call, m)))
                elif kind == P.CHUNK:
                    call = inflight.get(m[1])
                    if call is not None and not call.abandoned and call.q is not None:
                        self._put(call, m[2])
                elif kind == P.EVENT:
                    call = inflight.get(m[1])
                    if call is not None and not call.abandoned and call.on_event is not None:
                        self._event(call, m[2])
                elif kind == P.CALLBACK:
                    self._on_callback(w, m)
                elif kind == P.READY:
                    self._on_ready(w, m)
                else:
                    raise P.FrameError(f"unexpected message kind {kind}")
            except (IndexError, TypeError, ValueError, P.FrameError) as exc:
                self._finish_batch(w, done)
                self._protocol_error(w, f"bad message from worker: {exc}")
                return
        if done:
            self._finish_batch(w, done)

    def _finish_batch(self, w: _Worker, done: list[tuple[_Call, bool, Any]]) -> None:
        out: list[tuple[_Worker, _Call]] = []
        with self._lock:
            for call, ok, _ in done:
                self._release(w, call)
                if not ok:
                    self._counts["errors"] += 1
            if w.state == DRAINING and not (w.n_serial or w.n_conc):
                self._wake_sup.set()
            self._pump(out)
        for call, ok, value in done:
            self._finish(call, ok, value, w.pid)
        if out:
            self._send_pumped(out)

    def _error_from(self, w: _Worker, call: _Call, m: list[Any]) -> BaseException:
        _, _rid, code, rtype, message, tb = m
        if code == P.E_REMOTE:
            return RemoteError(str(rtype), str(message), str(tb))
        if code == P.E_NOT_FOUND:
            return HandlerNotFound(
                f"pool {self.name!r}: worker {w.pid} has no handler {call.name!r}", pool=self.name, handler=call.name
            )
        if code == P.E_CANCELLED:
            return CallTimeout(
                f"pool {self.name!r}: call {call.name!r} was cancelled in worker {w.pid}", pool=self.name, pid=w.pid
            )
        if rtype == "dspex.errors.ProtocolError":
            return ProtocolError(f"pool {self.name!r}: {message}", pool=self.name, pid=w.pid)
        return RemoteError(str(rtype), str(message), str(tb))

    def _put(self, call: _Call, item: Any) -> None:
        if call.loop is not None:
            with contextlib.suppress(RuntimeError):
                call.loop.call_soon_threadsafe(call.q.put_nowait, item)
        else:
            call.q.put(item)

    def _event(self, call: _Call, event: Any) -> None:
        if call.q is not None:
            self._put(call, _Event(event))
        elif call.loop is not None:
            with contextlib.suppress(RuntimeError):
                call.loop.call_soon_threadsafe(self._deliver_event, call, event)

    def _on_callback(self, w: _Worker, m: list[Any]) -> None:
        _, rid, cbid, name, args, kwargs = m
        call = w.inflight.get(rid)
        fn = None
        if call is not None and call.callbacks:
            fn = call.callbacks.get(name)
        if fn is None:
            fn = self.callbacks.get(name)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.callback_threads, thread_name_prefix=f"dspex-pool-{self.name}-cb")
        self._executor.submit(self._run_callback, w, cbid, name, fn, args, kwargs, call)

    def _run_callback(
        self,
        w: _Worker,
        cbid: int,
        name: str,
        fn: Callable[..., Any] | None,
        args: list[Any],
        kwargs: dict[str, Any],
        call: _Call | None,
    ) -> None:
        try:
            if fn is None:
                known = sorted({*self.callbacks, *((call.callbacks or {}) if call else {})})
                raise LookupError(f"no host callback named {name!r}; registered: {known}")
            out = fn(*args, **kwargs)
            if inspect.isawaitable(out):
                loop = call.loop if call is not None else None
                if loop is not None and loop.is_running():
                    out = asyncio.run_coroutine_threadsafe(_await(out), loop).result()
                else:
                    out = asyncio.run(_await(out))
            try:
                data = self._codec.frame([P.CB_REPLY, cbid, True, out])
            except (TypeError, ValueError, OverflowError, P.FrameError) as exc:
                raise TypeError(f"callback {name!r} returned a value that cannot be sent: {exc}") from None
        except Exception as exc:
            t = type(exc)
            tname = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
            tb = "".join(traceback.format_exception(t, exc, exc.__traceback__))
            data = self._codec.frame([P.CB_REPLY, cbid, False, [tname, str(exc), tb]])
        with w.send_lock:
            if w.state != DEAD:
                self._write_locked(w, data)

    def _on_ready(self, w: _Worker, m: list[Any]) -> None:
        out: list[tuple[_Worker, _Call]] = []
        with self._lock:
            if w.state != STARTING:
                return
            w.pid = int(m[1])
            w.info = m[2] if isinstance(m[2], dict) else {}
            self._by_pid[w.pid] = w
            w.state = READY
            w.ready_at = time.monotonic()
            self._fail_streak = 0
            self._start_error = None
            # a replacement is up: drain one retiring worker
            for old in self._workers:
                if old.state == RETIRING:
                    self._drain(old)
                    break
            self._pump(out)
            self._ready_cond.notify_all()
        if out:
            self._send_pumped(out)

    def _on_eof(self, w: _Worker) -> None:
        w.eof = True
        with contextlib.suppress(OSError, ValueError, KeyError):
            self._ep.unregister(w.fd)
        if w.exit is not None:
            self._finalize(w, "exit")
        else:
            if w.stop_at is None:
                w.stop_at = time.monotonic()
            if w.pid:
                self._zkill(w.pid, signal.SIGKILL)  # a worker that hung up is finished
            self._wake_sup.set()

    def _protocol_error(self, w: _Worker, message: str) -> None:
        with self._lock:
            if w.proto_error:
                return
            w.proto_error = message
            self._counts["protocol_errors"] += 1
            if w.state != DEAD:
                w.state = STOPPING
        with contextlib.suppress(OSError, ValueError, KeyError):
            self._ep.unregister(w.fd)
        if w.pid:
            self._zkill(w.pid, signal.SIGKILL)
        else:
            self._finalize(w, "protocol")

    def _on_stderr(self, fd: int, owner: Any) -> None:
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        tail = owner.err_tail if owner is not None else self._zerr_tail
        if not data:
            with contextlib.suppress(OSError, ValueError, KeyError):
                self._ep.unregister(fd)
            self._fdmap.pop(fd, None)
            with contextlib.suppress(OSError):
                os.close(fd)
            if owner is not None:
                owner.err_fd = -1
            else:
                self._zerr_fd = -1
            return
        tail += data
        if len(tail) > 16384:
            del tail[:-8192]
        if self.forward_stderr:
            with contextlib.suppress(OSError):
                os.write(2, data)

    def _drain_stderr(self, fd: int, owner: Any) -> None:
        for _ in range(64):
            if fd < 0 or fd not in self._fdmap:
                return
            try:
                data = os.read(fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not data:
                self._on_stderr_eof(fd, owner)
                return
            tail = owner.err_tail if owner is not None else self._zerr_tail
            tail += data
            if len(tail) > 16384:
                del tail[:-8192]
            if self.forward_stderr:
                with contextlib.suppress(OSError):
                    os.write(2, data)

    def _on_stderr_eof(self, fd: int, owner: Any) -> None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            self._ep.unregister(fd)
        self._fdmap.pop(fd, None)
        with contextlib.suppress(OSError):
            os.close(fd)
        if owner is not None:
            owner.err_fd = -1
        else:
            self._zerr_fd = -1

    # ------------------------------------------------------------------ template
    def _start_zygote(self) -> None:
        """Start the template and wait for its ready message (supervisor thread)."""
        self._counts["start_attempts"] += 1
        ctl_host, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        err_r, err_w = os.pipe()
        os.set_blocking(err_r, False)
        cfg = {
            "pool": self.name,
            "handlers": self.handlers,
            "preload": self.preload,
            "host_pid": os.getpid(),
            "ctl_fd": ctl_child.fileno(),
            "allow_pickle": self.allow_pickle,
            "max_frame": self.max_frame,
            "start_method": self.start_method,
            "dspex_dir": _DSPEX_DIR,
            "main_file": _main_file(),
        }
        env = {**os.environ, **self.env}
        argv = [self.python, "-c", BOOTSTRAP, _DSPEX_DIR, "--zygote", json.dumps(cfg)]
        self._zerr_tail = bytearray()
        self._zready = False
        self._zinfo = {}
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=err_w,
                stderr=err_w,
                pass_fds=(ctl_child.fileno(),),
                env=env,
                process_group=0,  # the terminal's Ctrl-C is for the host, not its workers
                close_fds=True,
            )
        except OSError as exc:
            ctl_host.close()
            ctl_child.close()
            os.close(err_r)
            os.close(err_w)
            self._start_failed(
                WorkerStartError(
                    f"pool {self.name!r}: cannot run {self.python!r}: {exc}; check python=",
                    pool=self.name,
                    stderr_tail="",
                )
            )
            return
        ctl_child.close()
        os.close(err_w)
        ctl_host.setblocking(False)
        with self._lock:
            self._zproc = proc
            self._zctl = ctl_host
            self._zerr_fd = err_r
            self._zstarted_at = time.monotonic()
            self._fdmap[ctl_host.fileno()] = ("z", None)
            self._fdmap[err_r] = ("err", None)
        self._ep.register(ctl_host.fileno(), _EP_IN)
        self._ep.register(err_r, _EP_IN)

    def _on_zygote(self) -> None:
        ctl = self._zctl
        if ctl is None:
            return
        while True:
            try:
                data = ctl.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._zygote_gone()
                return
            try:
                msg = msgpack.unpackb(data, raw=False, strict_map_key=False)
                kind = msg[0]
            except Exception:
                self._zygote_gone()
                return
            if kind == P.Z_READY:
                with self._lock:
                    self._zinfo = msg[2]
                    self._handler_table = dict(self._zinfo.get("handlers", {}))
                    self._zready = True
                self._wake_sup.set()
            elif kind == P.Z_FORKED:
                with self._lock:
                    w = self._by_token.pop(int(msg[1]), None)
                    if w is not None:
                        w.pid = int(msg[2])
                        self._by_pid[w.pid] = w
                        if w.state in (STOPPING, DEAD):
                            self._zkill(w.pid, signal.SIGKILL)
            elif kind == P.Z_EXIT:
                pid, code, sig = int(msg[1]), msg[2], msg[3]
                w = self._by_pid.get(pid)
                if w is not None:
                    w.exit = (code, sig)
                    if not w.eof and w.state != DEAD and not w.proto_error:
                        if not w.rlock.acquire(False):
                            # a caller is reading: it will see the EOF and finalize
                            w.stop_at = w.stop_at or time.monotonic()
                            continue
                        try:
                            # read what it wrote before dying, then give up on the socket
                            for _ in range(1024):
                                self._on_readable(w)
                                if w.eof or w.state == DEAD:
                                    break
                                try:
                                    if not select.select([w.sock], [], [], 0)[0]:
                                        break
                                except (OSError, ValueError):
                                    break
                        finally:
                            w.rlock.release()
                    self._finalize(w, "exit")
            elif kind == P.Z_FAIL:
                with self._lock:
                    w = self._by_token.pop(int(msg[1]), None)
                if w is not None:
                    self._finalize(w, "fork failed: " + str(msg[2]))

    def _zygote_gone(self) -> None:
        """The template exited (or hung up): its workers die with it (pdeathsig)."""
        with self._lock:
            ctl = self._zctl
            self._zctl = None
            self._zready = False
            proc = self._zproc
            # hold the supervisor off until this one's stderr and workers are dealt with
            self._next_start_at = float("inf")
        if ctl is not None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                self._ep.unregister(ctl.fileno())
            self._fdmap.pop(ctl.fileno(), None)
            ctl.close()
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2.0)
        self._drain_stderr(self._zerr_fd, None)
        with self._lock:
            started_ok = bool(self._zinfo)
            workers = list(self._workers)
        for w in workers:
            if w.exit is None:
                w.exit = (None, signal.SIGKILL)
            self._finalize(w, "template exited")
        if started_ok or self._closed:
            with self._lock:
                self._next_start_at = time.monotonic()
        else:
            code = proc.returncode if proc is not None else None
            self._start_failed(
                WorkerStartError(
                    f"pool {self.name!r}: the worker template exited with code {code} before it was ready "
                    f"(handlers={self.handlers}, preload={self.preload}). Its stderr ends with:\n"
                    f"{_tail(self._zerr_tail)}",
                    pool=self.name,
                    stderr_tail=_tail(self._zerr_tail),
                    exitcode=code,
                )
            )
        self._wake_sup.set()

    def _stop_zygote(self) -> None:
        with self._lock:
            ctl = self._zctl
            self._zctl = None
            proc = self._zproc
        if ctl is not None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                self._ep.unregister(ctl.fileno())
            self._fdmap.pop(ctl.fileno(), None)
            ctl.close()  # EOF: the template kills its children and exits
        if proc is not None:
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2.0)

    def _zsend(self, msg: list[Any], fds: list[int] | None = None) -> bool:
        ctl = self._zctl
        if ctl is None:
            return False
        data = msgpack.packb(msg, use_bin_type=True)
        try:
            if fds:
                socket.send_fds(ctl, [data], fds)
            else:
                ctl.send(data)
        except (BlockingIOError, OSError):
            return False
        return True

    def _zkill(self, pid: int, sig: int) -> None:
        # The template is the parent: it signals only children it has not reaped yet,
        # so a recycled pid can never be hit.
        self._zsend([P.Z_KILL, pid, int(sig)])

    # ------------------------------------------------------------------ supervision
    def _spawn_worker(self) -> None:
        host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        err_r, err_w = os.pipe()
        os.set_blocking(err_r, False)
        # Blocking socket, but every send and the I/O thread's reads pass MSG_DONTWAIT:
        # only a caller reading its own reply (no deadline) blocks in recv, saving a poll.
        host.setblocking(True)
        with contextlib.suppress(OSError):
            host.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            host.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._tokens += 1
        token = self._tokens
        w = _Worker(token, host, err_r, P.FrameReader(self._codec))
        with self._lock:
            self._workers.append(w)
            self._by_token[token] = w
            self._fdmap[w.fd] = ("w", w)
            self._fdmap[err_r] = ("err", w)
        self._ep.register(w.fd, _EP_IN | _EP_ONE)
        self._ep.register(err_r, _EP_IN)
        ok = self._zsend([P.Z_FORK, token], [child.fileno(), err_w])
        child.close()
        os.close(err_w)
        if not ok:
            self._finalize(w, "template unavailable")

    def _retire(self, w: _Worker, reason: str) -> None:
        """Plan ``w``'s replacement; it keeps serving until the new one is ready. Lock held."""
        if w.state != READY:
            return
        w.state = RETIRING
        w.kill_reason = reason
        self._counts["recycles"] += 1
        self._wake_sup.set()

    def _drain(self, w: _Worker) -> None:
        """Stop routing to ``w``; the supervisor stops it once idle. Lock held."""
        w.state = DRAINING
        self._unwait_hints(w, None)
        for s in self._sessions.bound_to(w):
            if self.affinity == "strict":
                s.lost = True
            s.worker = None
        self._wake_sup.set()

    def _kill(self, w: _Worker, reason: str) -> None:
        with self._lock:
            if w.state == DEAD:
                return
            w.kill_reason = reason
            w.state = STOPPING
            if w.stop_at is None:
                w.stop_at = time.monotonic()
        if w.pid:
            self._zkill(w.pid, signal.SIGKILL)
        self._wake_sup.set()

    def _finalize(self, w: _Worker, why: str) -> None:
        """``w`` is gone: fail its running calls, re-queue the ones it had not started."""
        fail: list[tuple[_Call, BaseException]] = []
        out: list[tuple[_Worker, _Call]] = []
        with self._lock:
            if w.state == DEAD:
                return
            was_ready = w.state in (READY, RETIRING, DRAINING, STOPPING) and w.ready_at > 0
            planned = w.kill_reason in ("max_requests", "max_age_s", "max_rss_mb") or self._closed
            w.state = DEAD
            with w.send_lock:
                calls = list(w.inflight.values())
                w.inflight.clear()
                w.outbuf.clear()
            with contextlib.suppress(ValueError):
                self._workers.remove(w)
            self._by_pid.pop(w.pid, None)
            self._by_token.pop(w.token, None)
            self._fdmap.pop(w.fd, None)
            with contextlib.suppress(OSError, ValueError, KeyError):
                self._ep.unregister(w.fd)
            code, sig = w.exit if w.exit is not None else (None, None)
            how = f"killed by {_signal_name(sig)}" if sig else f"exit code {code}"
            if not was_ready and not self._closed:
                # died before its ready handshake: a start failure (back off)
                self._drain_stderr(w.err_fd, w)
                tail = _tail(w.err_tail) or _tail(self._zerr_tail)
                err = WorkerStartError(
                    f"pool {self.name!r}: worker {w.pid or '?'} failed to start ({why}, {how}). "
                    f"Its stderr ends with:\n{tail}",
                    pool=self.name,
                    stderr_tail=tail,
                    pid=w.pid or None,
                    exitcode=code,
                )
                self._start_failed_locked(err)
            elif was_ready and not planned and not self._closed:
                self._counts["restarts"] += 1
                if w.kill_reason not in ("timeout",):
                    self._counts["crashes"] += 1
            for s in self._sessions.bound_to(w):
                if self.affinity == "strict":
                    s.lost = True
                s.worker = None
            self._unwait_hints(w, None)  # hint calls waiting for it go elsewhere
            lost = list(w.strict_q)
            w.strict_q.clear()
            self._n_queued -= len(lost)
            for call in lost:
                fail.append(
                    (
                        call,
                        SessionLost(
                            f"pool {self.name!r}: worker {w.pid} holding strict session {call.session!r} died "
                            f"({how}); its state is gone. Drop the session and start a new one.",
                            pool=self.name,
                            session=call.session,
                            pid=w.pid,
                        ),
                    )
                )
            head_seen = False
            requeue: list[_Call] = []
            for call in calls:
                if call.abandoned:
                    continue
                started = not call.serial or not head_seen
                if call.serial:
                    head_seen = True
                if not started and not self._closed:
                    if call.strict:
                        s2 = self._sessions.get(call.session) if call.session is not None else None
                        if s2 is not None and s2.lost:
                            fail.append(
                                (
                                    call,
                                    SessionLost(
                                        f"pool {self.name!r}: worker {w.pid} holding strict session "
                                        f"{call.session!r} died; its state is gone",
                                        pool=self.name,
                                        session=call.session,
                                        pid=w.pid,
                                    ),
                                )
                            )
                            continue
                    requeue.append(call)
                    continue
                if self._closed:
                    exc: BaseException = PoolClosed(
                        f"pool {self.name!r} closed while the call was running", pool=self.name
                    )
                elif w.proto_error:
                    exc = ProtocolError(
                        f"pool {self.name!r}: worker {w.pid} sent a bad frame ({w.proto_error}); "
                        "it was replaced",
                        pool=self.name,
                        pid=w.pid,
                    )
                else:
                    exc = WorkerCrashed(
                        f"pool {self.name!r}: worker {w.pid} died during the call ({how}); it is being "
                        "replaced. Retry if the call is safe to repeat.",
                        pool=self.name,
                        pid=w.pid,
                        exitcode=code,
                        signal=sig,
                    )
                fail.append((call, exc))
            for call in reversed(requeue):
                call.state = _QUEUED
                call.worker = None
                self._queue.appendleft(call)
                self._n_queued += 1
                self._counts["requeued"] += 1
            self._counts["errors"] += len(fail)
            self._pump(out)
            self._ready_cond.notify_all()
        for call, exc in fail:
            self._finish(call, False, exc, w.pid)
        if out:
            self._send_pumped(out)
        with contextlib.suppress(OSError):
            w.sock.close()
        self._wake_sup.set()

    def _start_failed(self, err: WorkerStartError) -> None:
        with self._lock:
            self._start_failed_locked(err)

    def _start_failed_locked(self, err: WorkerStartError) -> None:
        self._counts["start_failures"] += 1
        self._fail_streak += 1
        delay = min(self.backoff_max_s, self.backoff_base_s * (2 ** (self._fail_streak - 1)))
        self._next_start_at = time.monotonic() + delay
        self._start_error = err
        self._ready_cond.notify_all()
        # With no worker able to run them, queued calls fail now instead of waiting.
        if not any(w.state in (READY, RETIRING) for w in self._workers):
            queued = list(self._queue)
            self._queue.clear()
            self._n_queued -= len(queued)
            for call in queued:
                self._finish(call, False, err, 0)  # takes no lock: safe here

    def _sup_loop(self) -> None:
        while not self._closed:
            self._wake_sup.wait(min(0.05, max(0.0, self._next_spill - time.monotonic())))
            self._wake_sup.clear()
            if self._closed:
                return
            try:
                self._supervise()
            except Exception:  # keep supervising whatever happens
                traceback.print_exc()

    def _unwait_hints(self, w: _Worker, now: float | None) -> None:
        """Move hint calls waiting in ``w``'s queue (those past their bound, or all when
        ``now`` is None) to the general queue, oldest first. Lock held."""
        if not w.strict_q:
            return
        keep: deque[_Call] = deque()
        moved: list[_Call] = []
        for call in w.strict_q:
            if call.spill_at is not None and (now is None or call.spill_at <= now):
                call.spill_at = None
                moved.append(call)
            else:
                keep.append(call)
        if moved:
            w.strict_q = keep
            self._queue.extendleft(reversed(moved))

    def _spill_overdue(self, now: float) -> None:
        """Hint affinity's bound: calls that waited ``hint_wait_s`` for their busy
        session worker go to any worker."""
        out: list[tuple[_Worker, _Call]] = []
        with self._lock:
            nxt = float("inf")
            for w in self._workers:
                self._unwait_hints(w, now)
                for call in w.strict_q:
                    if call.spill_at is not None and call.spill_at < nxt:
                        nxt = call.spill_at
            self._next_spill = nxt
            self._pump(out)
        if out:
            self._send_pumped(out)

    def _supervise(self) -> None:
        now = time.monotonic()
        if now >= self._next_spill:
            self._spill_overdue(now)
        # 1. the template
        if self._zctl is None:
            if now >= self._next_start_at:
                self._start_zygote()
            return
        if not self._zready:
            if now - self._zstarted_at > self.start_timeout_s:
                self._start_failed(
                    WorkerStartError(
                        f"pool {self.name!r}: the worker template was not ready after {self.start_timeout_s} s "
                        f"(start_timeout_s). Its stderr ends with:\n{_tail(self._zerr_tail)}",
                        pool=self.name,
                        stderr_tail=_tail(self._zerr_tail),
                    )
                )
                if self._zproc is not None:
                    self._zproc.kill()
            return
        kills: list[tuple[_Worker, str]] = []
        stops: list[_Worker] = []
        finals: list[_Worker] = []
        spawn = 0
        slow = now - self._last_slow_tick >= 0.5
        if slow:
            self._last_slow_tick = now
        with self._lock:
            active = 0
            for w in self._workers:
                if w.state in (STARTING, READY):
                    active += 1
                if w.state == STARTING and now - w.spawned_at > self.start_timeout_s:
                    kills.append((w, "start timeout"))
                elif w.state == READY and slow:
                    if self.max_age_s is not None and now - w.ready_at >= self.max_age_s:
                        self._retire(w, "max_age_s")
                        active -= 1
                    elif self.max_rss_mb is not None and w.pid:
                        w.rss_kb = _read_rss_kb(w.pid)
                        if w.rss_kb / 1024 >= self.max_rss_mb:
                            self._retire(w, "max_rss_mb")
                            active -= 1
                elif w.state == DRAINING and not w.inflight and not (w.n_serial or w.n_conc):
                    # (the counters also cover a call routed here but not yet written)
                    w.state = STOPPING
                    w.stop_at = now
                    stops.append(w)
                elif w.state == STOPPING and w.stop_at is not None and now - w.stop_at > self.shutdown_grace_s:
                    if w.eof and w.exit is None and now - w.stop_at > self.shutdown_grace_s + 1.0:
                        finals.append(w)
                    else:
                        kills.append((w, w.kill_reason or "stop timeout"))
                elif (w.eof or w.exit is not None) and w.stop_at is not None and now - w.stop_at > 0.5:
                    finals.append(w)
                # cancelled calls that overstayed their grace
                if w.state in (READY, RETIRING, DRAINING):
                    for c in list(w.inflight.values()):
                        if c.abandoned and c.kill_at is not None and now >= c.kill_at and self._is_running(w, c):
                            kills.append((w, "cancel ignored"))
                            break
            if active < self.size and now >= self._next_start_at:
                spawn = self.size - active
            expired = self._sessions.expire(now) if slow else []
        for w in stops:
            self._send_msg(w, [P.STOP])  # it exits once idle; SIGKILL after the grace period
        for w, why in kills:
            if why == "start timeout":
                self._drain_stderr(w.err_fd, w)
                self._start_failed(
                    WorkerStartError(
                        f"pool {self.name!r}: worker {w.pid or '?'} not ready after {self.start_timeout_s} s. "
                        f"Its stderr ends with:\n{_tail(w.err_tail)}",
                        pool=self.name,
                        stderr_tail=_tail(w.err_tail),
                    )
                )
            self._kill(w, why)
        for w in finals:
            self._finalize(w, "hung up")
        for _ in range(spawn):
            self._spawn_worker()
        if expired:
            self._drop_in_workers(expired)

    def _drop_in_workers(self, sessions: list[Session]) -> None:
        for s in sessions:
            for w in list(s.workers):
                if w.state != DEAD:
                    self._send_msg(w, [P.DROP, s.key])


class _Event:
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


async def _await(aw: Any) -> Any:
    return await aw


def _close_at_exit(ref: weakref.ReferenceType[Pool]) -> None:
    pool = ref()
    if pool is not None:
        with contextlib.suppress(Exception):
            pool.close(grace_s=0.5)

