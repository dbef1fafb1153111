"""The worker runtime: serves one host connection until EOF or STOP (stdlib + msgpack).

Threads and who reads the socket (``rlock``: whoever holds it reads frames):
* the main thread reads frames and runs non-concurrent sync and generator handlers
  inline, one at a time in arrival order (a lone call runs straight from the read:
  no thread hop on the hot path). It holds ``rlock`` except while a handler runs;
* the relief reader (``_relief``) takes ``rlock`` when one serial handler has been
  running for a whole tick (``RELIEF_TICK_S``) and reads until the main thread asks
  for it back, so async calls, cancellations, credit and callback replies are not
  stuck behind a blocking sync handler (head-of-line blocking);
* async handlers run as tasks on an event loop thread started on first use;
  ``concurrent=True`` sync handlers run on a thread pool.

Every handler outcome is answered, ``BaseException`` included (``SystemExit`` or
``KeyboardInterrupt`` in a handler is the caller's ``RemoteError``, not a silent
thread or loop death). If the event loop stops anyway (a handler's own callback
raised ``SystemExit``), its calls are answered and the worker exits, so the host
replaces it instead of routing to a worker that cannot run async calls.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import select
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from dspex.pool import protocol as P
from dspex.pool._answers import _AsyncSlot, _Slot, _type_name, wire_detail
from dspex.pool._answers import _remote_error as _remote_error  # the Ray actor imports it from here
from dspex.pool._procsafe import kill_descendants, watch_host
from dspex.pool.handler import Context, HandlerSpec

if TYPE_CHECKING:  # imported lazily at run time: most workers never need them
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

__all__ = ["RELIEF_TICK_S", "WorkerRuntime", "run_worker", "wire_detail"]

# How long one serial handler may hold the socket before the relief reader takes over.
RELIEF_TICK_S = 0.02


class _Cancelled(Exception):
    """A generator handler stopped because the host cancelled the call."""


class WorkerRuntime:
    """Serves one host connection until EOF or STOP."""

    def __init__(
        self, sock: socket.socket, codec: P.Codec, handlers: dict[str, HandlerSpec], max_rss_mb: float | None = None
    ) -> None:
        self.sock = sock
        self.codec = codec
        self.reader = P.FrameReader(codec)
        self.handlers = handlers
        self.send_lock = threading.Lock()
        self.pending: deque[list[Any]] = deque()
        self.active: set[int] = set()  # rids received and not yet answered
        self.cancelled: set[int] = set()
        self.sessions: dict[Any, dict[str, Any]] = {}
        self.main_ident = threading.get_ident()
        self.current: int | None = None  # rid running inline on the main thread
        self.serial_seq = 0  # bumped when a serial handler starts (the relief reader's clock)
        self.rlock = threading.Lock()  # held by the thread reading the socket
        self.rlock.acquire()  # the main thread reads from the start
        self.want_back = False  # the main thread waits for rlock
        self.wake_r, self.wake_w = os.pipe()  # tells the relief reader to give rlock back
        self.cb_seq = itertools.count(1)
        self.cb_waiters: dict[int, Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: dict[int, asyncio.Task[Any]] = {}
        self.serial_alock: asyncio.Lock | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.stopping = False
        self.dying = False  # the event loop died: the loop thread ends the process
        self.stop_watch: Callable[[], None] | None = None  # the host watcher (see run_worker)
        self.credit: dict[int, int] = {}  # streaming rid -> chunks it may still send
        self.credit_cond = threading.Condition()
        self.credit_events: dict[int, Any] = {}  # rid -> asyncio.Event (async streams)
        self._last_poll = 0.0
        # max_rss_mb: after each call, compare the peak RSS (one getrusage) and ask once
        # to be recycled; the host stops routing here at once (LIMIT frame)
        self.rss_limit_kb = 0 if not max_rss_mb else int(max_rss_mb * 1024)
        self.limit_sent = False

    # -- sending -------------------------------------------------------------------
    def send(self, msg: list[Any]) -> None:
        data = self.codec.frame(msg)
        with self.send_lock:
            self.sock.sendall(data)

    def send_result(self, rid: int, value: Any) -> None:
        try:
            data = self.codec.frame([P.RESULT, rid, value])
        except (TypeError, ValueError, OverflowError, P.FrameError) as exc:
            name = "dspex.errors.ProtocolError" if isinstance(exc, P.FrameError) else _type_name(exc)
            data = self.codec.frame([P.ERROR, rid, P.E_ENCODE, name, f"result not sendable: {exc}", ""])
        with self.send_lock:
            self.sock.sendall(data)
        if self.rss_limit_kb:
            self._check_rss()

    def send_error(self, rid: int, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.send([P.ERROR, rid, P.E_REMOTE, _type_name(exc), str(exc), tb, wire_detail(exc)])
        if self.rss_limit_kb:
            self._check_rss()

    def send_cancelled(self, rid: int) -> None:
        self.send([P.ERROR, rid, P.E_CANCELLED, "Cancelled", "cancelled by the host", ""])

    def _check_rss(self) -> None:
        if self.limit_sent:
            return
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if peak_kb >= self.rss_limit_kb:
            self.limit_sent = True
            self.send([P.LIMIT, "max_rss_mb", peak_kb / 1024])

    def _take_credit(self, rid: int) -> None:
        """Wait until the host lets this stream send one more chunk (sync code)."""
        if self.credit.get(rid, 1) <= 0:
            while self.credit.get(rid, 1) <= 0 and rid not in self.cancelled:
                if threading.get_ident() == self.main_ident and self.rlock.acquire(False):
                    try:  # we are the reader: read until the credit comes
                        self._read_one_batch()
                    finally:
                        self.rlock.release()
                else:
                    with self.credit_cond:
                        self.credit_cond.wait_for(
                            lambda: self.credit.get(rid, 1) > 0 or rid in self.cancelled, RELIEF_TICK_S
                        )
            if rid in self.cancelled:
                raise _Cancelled()
        with self.credit_cond:
            if rid in self.credit:
                self.credit[rid] -= 1

    async def _atake_credit(self, rid: int) -> None:
        import asyncio

        while self.credit.get(rid, 1) <= 0:
            ev = self.credit_events.setdefault(rid, asyncio.Event())
            ev.clear()
            if self.credit.get(rid, 1) <= 0:
                await ev.wait()
        with self.credit_cond:
            if rid in self.credit:
                self.credit[rid] -= 1

    def _send_chunk(self, rid: int, chunk: Any) -> None:
        try:
            data = self.codec.frame([P.CHUNK, rid, chunk])
        except (TypeError, ValueError, OverflowError, P.FrameError) as exc:
            raise TypeError(f"stream chunk not sendable: {exc}") from None
        with self.send_lock:
            self.sock.sendall(data)

    # -- reading (the rlock holder only) -------------------------------------------
    def read_blocking(self) -> list[list[Any]] | None:
        while True:
            msgs = self.reader.recv(self.sock)
            if msgs is None or msgs:
                return msgs

    def _read_one_batch(self) -> None:
        msgs = self.read_blocking()
        if msgs is None:
            self.eof()
        for m in msgs:
            self.handle(m)

    def eof(self) -> NoReturn:
        """The connection ended: the host is gone, or we shut it (dying)."""
        if self.dying:
            time.sleep(10)  # the dying thread is answering its calls; it ends the process
        _exit(0)

    def poll(self) -> None:
        """Read whatever has arrived without blocking."""
        while True:
            try:
                msgs = self.reader.recv(self.sock, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            if msgs is None:
                self.eof()
            for m in msgs:
                self.handle(m)

    def _give_back(self) -> None:
        """The main thread takes ``rlock`` back after a serial handler."""
        if not self.rlock.acquire(False):
            self.want_back = True
            os.write(self.wake_w, b"x")
            self.rlock.acquire()
            self.want_back = False

    def _relief(self) -> None:
        """Read for the main thread while one serial handler runs longer than a tick."""
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        seen = -1
        while True:
            time.sleep(RELIEF_TICK_S)
            seq = self.serial_seq
            if self.current is None or seq != seen:
                seen = seq
                continue
            if not self.rlock.acquire(False):
                continue  # the main thread reads (a callback, a stream's credit)
            try:
                while not self.want_back:
                    for fd, _ in poller.poll():
                        if fd == self.wake_r:
                            os.read(self.wake_r, 64)
                        else:
                            self.poll()
            finally:
                self.rlock.release()

    def serve(self, info: dict[str, Any]) -> None:
        self.send([P.READY, os.getpid(), info])
        threading.Thread(target=self._relief, name="dspex-worker-relief", daemon=True).start()
        reader, sock, handlers, pending = self.reader, self.sock, self.handlers, self.pending
        while not self.stopping or pending:
            if pending:
                self.run_serial(pending.popleft())
                continue
            msgs = reader.recv(sock)
            if msgs is None:
                return
            if len(msgs) == 1:
                # fast path: a lone call of a plain sync handler runs straight away
                m = msgs[0]
                if m[0] == P.CALL:
                    spec = handlers.get(m[2])
                    if spec is not None and spec.kind == "sync" and not spec.concurrent:
                        self.active.add(m[1])
                        self.run_serial(m)
                        continue
            for m in msgs:
                self.handle(m)

    def handle(self, m: list[Any]) -> None:
        """Act on one frame. Never runs a serial handler (the main loop does)."""
        kind = m[0]
        if kind == P.CALL:
            rid = m[1]
            spec = self.handlers.get(m[2])
            if spec is None:
                self.send([P.ERROR, rid, P.E_NOT_FOUND, "HandlerNotFound", str(m[2]), ""])
                return
            self.active.add(rid)
            if spec.kind in ("async", "agen"):
                self._start_async(m, spec)
            elif spec.concurrent:
                if self.executor is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self.executor = ThreadPoolExecutor(64, thread_name_prefix="dspex-handler")
                self.executor.submit(self._run_threaded, m, spec)
            else:
                self.pending.append(m)
        elif kind == P.CANCEL:
            rid = m[1]
            if rid in self.active:
                self.cancelled.add(rid)
                if rid in self.credit:
                    with self.credit_cond:
                        self.credit_cond.notify_all()
                task = self.tasks.get(rid)
                if task is not None and self.loop is not None:
                    self.loop.call_soon_threadsafe(task.cancel)
        elif kind == P.CB_REPLY:
            waiter = self.cb_waiters.pop(m[1], None)
            if waiter is not None:
                waiter.deliver(bool(m[2]), m[3])
        elif kind == P.DROP:
            self.sessions.pop(m[1], None)
        elif kind == P.STOP:
            self.stopping = True
        elif kind == P.CREDIT:
            rid = m[1]
            with self.credit_cond:
                if rid in self.credit:
                    self.credit[rid] += int(m[2])
                    self.credit_cond.notify_all()
                ev = self.credit_events.get(rid)
                if ev is not None and self.loop is not None:
                    self.loop.call_soon_threadsafe(ev.set)

    # -- Context channel -----------------------------------------------------------
    def is_cancelled(self, rid: int) -> bool:
        if rid in self.cancelled:
            return True
        if rid == self.current and threading.get_ident() == self.main_ident:
            now = time.monotonic()
            if now - self._last_poll > 0.005 and self.rlock.acquire(False):  # a syscall at most every 5 ms
                try:
                    self._last_poll = now
                    self.poll()
                finally:
                    self.rlock.release()
            return rid in self.cancelled
        return False

    def progress(self, rid: int, flags: int, event: dict[str, Any]) -> None:
        if flags & P.F_EVENTS:
            self.send([P.EVENT, rid, event])

    def callback(self, rid: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        cbid = next(self.cb_seq)
        slot = _Slot()
        self.cb_waiters[cbid] = slot
        self.send([P.CALLBACK, rid, cbid, name, list(args), kwargs])
        if threading.get_ident() == self.main_ident and self.rlock.acquire(False):
            # We are the reader: keep reading (and queueing other work) until the reply.
            try:
                while not slot.done:
                    self._read_one_batch()
            finally:
                self.rlock.release()
        else:
            slot.lock.acquire()
        return slot.result()

    async def acallback(self, rid: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        cbid = next(self.cb_seq)
        fut: asyncio.Future[Any] = loop.create_future()
        self.cb_waiters[cbid] = _AsyncSlot(loop, fut)
        self.send([P.CALLBACK, rid, cbid, name, list(args), kwargs])
        return await fut

    # -- running handlers ----------------------------------------------------------
    def _state(self, session: Any) -> dict[str, Any]:
        if session is None:
            return {}
        state = self.sessions.get(session)
        if state is None:
            state = self.sessions[session] = {}
        return state

    def _finish(self, rid: int) -> None:
        self.active.discard(rid)
        self.cancelled.discard(rid)
        if self.credit:
            self.credit.pop(rid, None)
            self.credit_events.pop(rid, None)

    def run_serial(self, m: list[Any]) -> None:
        _, rid, name, args, kwargs, session, flags = m
        if rid in self.cancelled:
            self._finish(rid)
            self.send_cancelled(rid)
            return
        spec = self.handlers[name]
        ctx = Context(self, rid, session, {} if session is None else self._state(session), flags)
        self.current = rid
        self.serial_seq += 1
        self.rlock.release()  # the relief reader may read while this handler runs
        try:
            if spec.kind == "gen":
                out = self._drain_gen(ctx, spec, rid, args, kwargs, flags)
            else:
                out = spec.fn(ctx, *args, **kwargs)
        except BaseException as exc:  # SystemExit / KeyboardInterrupt are answered too
            self._give_back()
            self.current = None
            self._finish(rid)
            if isinstance(exc, _Cancelled):
                self.send_cancelled(rid)
            else:
                self.send_error(rid, exc)
            return
        self._give_back()
        self.current = None
        self.active.discard(rid)
        if self.cancelled:
            self.cancelled.discard(rid)
        self.send_result(rid, out)

    def _drain_gen(
        self, ctx: Context, spec: HandlerSpec, rid: int, args: list[Any], kwargs: dict[str, Any], flags: int
    ) -> Any:
        collected: list[Any] | None = None if flags & P.F_STREAM else []
        if collected is None:
            self.credit[rid] = P.STREAM_WINDOW
        gen = spec.fn(ctx, *args, **kwargs)
        try:
            for chunk in gen:
                if self.is_cancelled(rid):
                    raise _Cancelled()
                if collected is None:
                    self._take_credit(rid)
                    self._send_chunk(rid, chunk)
                else:
                    collected.append(chunk)
        finally:
            gen.close()
        return collected

    def _run_threaded(self, m: list[Any], spec: HandlerSpec) -> None:
        _, rid, _name, args, kwargs, session, flags = m
        try:
            if rid in self.cancelled:
                raise _Cancelled()
            ctx = Context(self, rid, session, self._state(session), flags)
            if spec.kind == "gen":
                out = self._drain_gen(ctx, spec, rid, args, kwargs, flags)
            else:
                out = spec.fn(ctx, *args, **kwargs)
        except _Cancelled:
            self._finish(rid)
            self.send_cancelled(rid)
            return
        except BaseException as exc:  # a SystemExit in a thread would vanish in the executor
            self._finish(rid)
            self.send_error(rid, exc)
            return
        self._finish(rid)
        self.send_result(rid, out)

    def _start_async(self, m: list[Any], spec: HandlerSpec) -> None:
        import asyncio

        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            ready = threading.Event()
            threading.Thread(target=self._run_loop, args=(ready,), name="dspex-worker-loop", daemon=True).start()
            ready.wait()
        self.loop.call_soon_threadsafe(self._spawn_task, m, spec)

    def _run_loop(self, ready: threading.Event) -> None:
        import asyncio

        assert self.loop is not None
        asyncio.set_event_loop(self.loop)
        self.serial_alock = asyncio.Lock()
        ready.set()
        try:
            self.loop.run_forever()
        except BaseException as exc:
            # Only a handler's own loop callback gets here (tasks answer their errors).
            # A worker without a loop must not look ready: refuse new frames first (the
            # host's next writes fail with EPIPE, so those calls provably never started
            # and are re-dispatched), answer the calls it had, then exit.
            self.dying = True
            if self.stop_watch is not None:
                self.stop_watch()  # it would take our own shutdown for the host's hang-up
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RD)
            for rid in list(self.tasks):
                self.send_error(rid, exc)
            sys.stderr.write(f"dspex worker {os.getpid()}: event loop stopped by {_type_name(exc)}; exiting\n")
            _exit(70)

    def _spawn_task(self, m: list[Any], spec: HandlerSpec) -> None:
        rid = m[1]
        if rid in self.cancelled:
            self._finish(rid)
            self.send_cancelled(rid)
            return
        assert self.loop is not None
        self.tasks[rid] = self.loop.create_task(self._run_async(m, spec))

    async def _run_async(self, m: list[Any], spec: HandlerSpec) -> None:
        import asyncio

        _, rid, _name, args, kwargs, session, flags = m
        ctx = Context(self, rid, session, self._state(session), flags)
        try:
            if spec.concurrent:
                out = await self._invoke_async(ctx, spec, rid, args, kwargs, flags)
            else:
                assert self.serial_alock is not None
                async with self.serial_alock:
                    out = await self._invoke_async(ctx, spec, rid, args, kwargs, flags)
        except asyncio.CancelledError:
            self._finish(rid)
            self.tasks.pop(rid, None)
            self.send_cancelled(rid)
            return
        except BaseException as exc:  # SystemExit here would stop the whole loop
            self._finish(rid)
            self.tasks.pop(rid, None)
            self.send_error(rid, exc)
            return
        self._finish(rid)
        self.tasks.pop(rid, None)
        self.send_result(rid, out)

    async def _invoke_async(
        self, ctx: Context, spec: HandlerSpec, rid: int, args: list[Any], kwargs: dict[str, Any], flags: int
    ) -> Any:
        if spec.kind == "agen":
            collected: list[Any] | None = None if flags & P.F_STREAM else []
            if collected is None:
                self.credit[rid] = P.STREAM_WINDOW
            agen = spec.fn(ctx, *args, **kwargs)
            try:
                async for chunk in agen:
                    if collected is None:
                        await self._atake_credit(rid)
                        self._send_chunk(rid, chunk)
                    else:
                        collected.append(chunk)
            finally:
                await agen.aclose()
            return collected
        return await spec.fn(ctx, *args, **kwargs)


def _exit(code: int) -> NoReturn:
    """Leave now, ending whatever the handlers started (tools, servers, shells)."""
    try:
        kill_descendants()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _apply_mem_cap(max_mem_mb: Any) -> None:
    """``max_mem_mb``: a hard cap on the data segment (RLIMIT_DATA); see Pool's docs."""
    if not max_mem_mb:
        return
    limit = int(float(max_mem_mb) * 1024 * 1024)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    except (ValueError, OSError) as exc:  # pragma: no cover - a hard limit lower than asked
        sys.stderr.write(f"dspex worker {os.getpid()}: max_mem_mb not applied: {exc}\n")


def run_worker(
    sock_fd: int,
    cfg: dict[str, Any],
    handlers: dict[str, HandlerSpec],
    info: dict[str, Any],
    stop_watch: Callable[[], None] | None = None,
) -> None:
    """Serve the host on ``sock_fd`` (``stop_watch``: the host watcher already running)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the host's business
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if stop_watch is None:
        stop_watch = watch_host(int(cfg["host_pid"]), sock_fd, kill_descendants)
    os.set_inheritable(sock_fd, False)  # a handler's forked children must not keep it open
    sock = socket.socket(fileno=sock_fd)
    sock.setblocking(True)
    _apply_mem_cap(cfg.get("max_mem_mb"))
    codec = P.Codec(bool(cfg.get("allow_pickle")), int(cfg.get("max_frame", P.DEFAULT_MAX_FRAME)))
    runtime = WorkerRuntime(sock, codec, handlers, cfg.get("max_rss_mb"))
    runtime.stop_watch = stop_watch
    try:
        runtime.serve({**info, "pid": os.getpid()})
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        if runtime.dying:
            runtime.eof()
        _exit(0)
