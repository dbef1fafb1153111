"""Worker connections and the I/O thread (``WorkerIO``).

``_Worker`` is the host's record of one worker: its socket, frame reader, in-flight
table and counters. ``WorkerIO`` writes frames (send lock, non-blocking, partial
writes flushed by the I/O thread), arms the one-shot epoll registrations, runs the
I/O thread (worker sockets, stderr pipes, the template's control socket), turns
worker messages into completed calls, runs host callbacks, and holds the fast path
where a sync caller finding nobody reading its worker reads its own reply (``lead``)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import select
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from dspex.errors import CallTimeout, HandlerNotFound, ProtocolError, RemoteError
from dspex.pool import protocol as P
from dspex.pool._call import _DONE, _Call, _event, _finish, _put
from dspex.pool._state import PoolConfig, PoolShared

_EP_IN = select.EPOLLIN
_EP_OUT = select.EPOLLOUT
_EP_ONE = select.EPOLLONESHOT
_DONTWAIT = socket.MSG_DONTWAIT

# worker states
STARTING, READY, RETIRING, DRAINING, STOPPING, DEAD = range(6)
_STATE_NAMES = ("starting", "ready", "retiring", "draining", "stopping", "dead")


class _Worker:
    """The host's record of one worker process and its connection."""

    __slots__ = (
        "armed",
        "eof",
        "err_fd",
        "err_tail",
        "exit",
        "fd",
        "full",
        "inflight",
        "info",
        "kill_reason",
        "last",
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
        "reset",
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
        self.full = False  # reached max_requests / max_rss_mb: no new calls
        # Re-dispatch proof (see Supervisor.finalize): the call whose frame was the last
        # thing written, and whether the worker closed with bytes of ours unread (ECONNRESET)
        self.last: Any = None
        self.reset = False
        self.rss_kb = 0
        self.info: dict[str, Any] = {}
        self.strict_q: deque[_Call] = deque()
        # Whoever holds rlock reads the socket: the I/O thread, or a waiting sync caller
        # that reads its own reply directly (no thread hop: the fast path).
        self.rlock = threading.Lock()
        self.armed = True  # registered with EPOLLIN | EPOLLONESHOT at spawn
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)


async def _await(aw: Any) -> Any:
    return await aw


def _tail(buf: bytearray, n: int = 4000) -> str:
    return bytes(buf[-n:]).decode("utf-8", "replace")


class StderrOwner(Protocol):
    """Whose stderr pipe it is (a ``_Worker`` or the ``Template``): its bounded tail."""

    err_tail: bytearray
    err_fd: int


class Slots(Protocol):
    """What the I/O thread tells the dispatcher when calls finish (``Dispatcher``)."""

    def release(self, w: _Worker, call: _Call) -> None: ...  # pool lock held
    def pump(self, out: list[tuple[_Worker, _Call]]) -> None: ...  # pool lock held
    def send_pumped(self, out: list[tuple[_Worker, _Call]]) -> None: ...  # no lock held


class WorkerEvents(Protocol):
    """What the I/O thread reports about a worker's life (``Supervisor``); no lock held."""

    def on_ready(self, w: _Worker, m: list[Any]) -> None: ...
    def on_eof(self, w: _Worker) -> None: ...
    def on_limit(self, w: _Worker, what: str) -> None: ...
    def protocol_error(self, w: _Worker, message: str) -> None: ...


class WorkerIO:
    """Frames to and from the workers. Runs on caller threads (send, ``lead``) and the
    I/O thread (everything read). Owns the epoll set, its fd map (``watch`` /
    ``unwatch``; dict updates are atomic, the I/O thread only reads it), the wake-up
    eventfd, the I/O thread and the host-callback thread pool. Per worker it uses
    ``send_lock`` (socket writes, in-flight table, send buffer, epoll arming) and
    ``rlock`` (who reads the socket), both after the pool lock when both are held."""

    _slots: Slots
    _life: WorkerEvents

    def __init__(self, cfg: PoolConfig, shared: PoolShared, codec: P.Codec) -> None:
        self._cfg = cfg
        self._s = shared
        self._codec = codec
        self._ep: Any = None
        self._wake_fd = -1
        self._fdmap: dict[int, tuple[str, Any]] = {}
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None

    def connect(self, slots: Slots, life: WorkerEvents) -> None:
        self._slots = slots
        self._life = life

    def start(self) -> None:
        """Create the epoll set and start the I/O thread (once, from Pool.start)."""
        self._ep = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._ep.register(self._wake_fd, _EP_IN)
        self._fdmap[self._wake_fd] = ("wake", None)
        self._thread = threading.Thread(target=self._io_loop, name=f"dspex-pool-{self._cfg.name}-io", daemon=True)
        self._thread.start()

    def watch_worker(self, w: _Worker) -> None:
        """Watch a new worker's socket (one-shot input, see ``_arm_locked``) and stderr pipe."""
        self._fdmap[w.fd] = ("w", w)
        self._fdmap[w.err_fd] = ("err", w)
        self._ep.register(w.fd, _EP_IN | _EP_ONE)
        self._ep.register(w.err_fd, _EP_IN)

    def watch(self, fd: int, on_input: Callable[[], None] | StderrOwner, stderr: bool = False) -> None:
        """Watch a control socket (``on_input`` runs on the I/O thread) or a stderr pipe."""
        self._fdmap[fd] = ("err", on_input) if stderr else ("fn", on_input)
        self._ep.register(fd, _EP_IN)

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd`` (its fd map entry stays until ``unwatch``)."""
        with contextlib.suppress(OSError, ValueError, KeyError):
            self._ep.unregister(fd)

    def unwatch(self, fd: int) -> None:
        self._fdmap.pop(fd, None)
        self.unregister(fd)

    def join(self) -> None:
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=2.0)

    def close(self) -> None:
        """After the I/O thread stopped: drop callback threads, close every fd still watched."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        for fd in list(self._fdmap):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fdmap.clear()
        with contextlib.suppress(Exception):
            self._ep.close()

    def send_call(self, w: _Worker, call: _Call) -> bool:
        with w.send_lock:
            if w.state == DEAD:
                return False
            w.inflight[call.rid] = call  # same lock as the write: table order == wire order
            self._write_locked(w, call.frame, call)
        return True

    def _write_locked(self, w: _Worker, data: bytes | memoryview, call: _Call | None = None) -> None:
        """Write (or buffer) one frame; ``call.written`` once all of a call's frame is out."""
        w.last = call
        if w.outbuf:
            w.outbuf.append((data, call))
            return
        try:
            n = w.sock.send(data, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            # dead (EPIPE: nothing of this frame was delivered); the I/O thread finalizes it
            if isinstance(exc, ConnectionResetError):
                w.reset = True
            return
        if n < len(data):
            w.outbuf.append((memoryview(data)[n:], call))
            self._arm_locked(w)
        elif call is not None:
            call.written = True

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

    def arm(self, w: _Worker) -> None:
        # Nothing to flush, and input already watched or no call to watch it for: skip the
        # send_lock (callers contend for it with the writers). Safe without the lock:
        # ``armed`` is only True while the one-shot input registration is live (the I/O
        # thread re-arms after every event), and whoever sends a call arms after it.
        if not w.outbuf and (w.armed or not w.inflight):
            return
        with w.send_lock:
            self._arm_locked(w)

    def send_msg(self, w: _Worker, msg: list[Any]) -> None:
        data = self._codec.frame(msg)
        with w.send_lock:
            if w.state != DEAD:
                self._write_locked(w, data)

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake_fd, 1)

    def _io_loop(self) -> None:
        ep = self._ep
        fdmap = self._fdmap
        while not self._s.closed or self._s.workers:
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
                                    self.on_readable(obj)
                                finally:
                                    obj.rlock.release()
                                self.arm(obj)
                            elif obj.outbuf:
                                # a caller is reading: it re-arms input when it lets go
                                with obj.send_lock:
                                    self._arm_locked(obj, want_in=False)
                        else:
                            self.arm(obj)
                    elif kind == "err":
                        self._on_stderr(fd, obj)
                    elif kind == "fn":
                        obj()
                    elif kind == "wake":
                        with contextlib.suppress(OSError):
                            os.eventfd_read(fd)
                except Exception:  # never let one bad event kill the I/O thread
                    traceback.print_exc()
            if self._s.closed and not self._s.workers:
                return

    def _flush(self, w: _Worker) -> None:
        with w.send_lock:
            while w.outbuf:
                data, call = w.outbuf[0]
                try:
                    n = w.sock.send(data, _DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if isinstance(exc, ConnectionResetError):
                        w.reset = True
                    w.outbuf.clear()
                    break
                if n < len(data):
                    w.outbuf[0] = (memoryview(data)[n:], call)
                    return
                w.outbuf.popleft()
                if call is not None:
                    call.written = True

    def lead(self, w: _Worker, call: _Call) -> None:
        """Read ``w``'s socket on this thread until our call is done (rlock held).

        Completes other callers' calls on the way. Stops at the deadline, or when the
        call moved (re-queued) or the worker is gone; the normal wait takes over.
        """
        poll = w.poller.poll
        deadline = call.deadline
        while call.state != _DONE and call.worker is w and w.state != DEAD and not w.eof and not w.proto_error:
            if deadline is None:
                self.on_readable(w, 0)  # block in recv itself
                continue
            timeout_ms = (deadline - time.monotonic()) * 1000.0
            if timeout_ms <= 0:
                return
            if poll(timeout_ms):
                self.on_readable(w)

    def on_readable(self, w: _Worker, flags: int = socket.MSG_DONTWAIT) -> None:
        if w.state == DEAD or w.proto_error:
            return
        try:
            msgs = w.reader.recv(w.sock, flags)
        except (BlockingIOError, InterruptedError):
            return
        except P.FrameError as exc:
            self._life.protocol_error(w, str(exc))
            return
        except OSError as exc:
            if isinstance(exc, ConnectionResetError):
                w.reset = True  # it closed with bytes of ours unread
            msgs = None
        if msgs is None:
            self._life.on_eof(w)
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
                        _put(call, m[2])
                elif kind == P.EVENT:
                    call = inflight.get(m[1])
                    if call is not None and not call.abandoned and call.on_event is not None:
                        _event(call, m[2])
                elif kind == P.CALLBACK:
                    self._on_callback(w, m)
                elif kind == P.READY:
                    self._life.on_ready(w, m)
                elif kind == P.LIMIT:
                    self._life.on_limit(w, str(m[1]))
                else:
                    raise P.FrameError(f"unexpected message kind {kind}")
            except (IndexError, TypeError, ValueError, P.FrameError) as exc:
                self._finish_batch(w, done)
                self._life.protocol_error(w, f"bad message from worker: {exc}")
                return
        if done:
            self._finish_batch(w, done)

    def _finish_batch(self, w: _Worker, done: list[tuple[_Call, bool, Any]]) -> None:
        out: list[tuple[_Worker, _Call]] = []
        with self._s.lock:
            for call, ok, _ in done:
                self._slots.release(w, call)
                if not ok:
                    self._s.counts["errors"] += 1
            if w.state == DRAINING and not (w.n_serial or w.n_conc):
                self._s.wake_sup.set()
            self._slots.pump(out)
        for call, ok, value in done:
            _finish(call, ok, value, w.pid)
        if out:
            self._slots.send_pumped(out)

    def _error_from(self, w: _Worker, call: _Call, m: list[Any]) -> BaseException:
        _, _rid, code, rtype, message, tb = m[:6]
        detail = m[6] if len(m) > 6 and isinstance(m[6], dict) else None
        if code == P.E_REMOTE:
            return RemoteError(str(rtype), str(message), str(tb), detail=detail)
        if code == P.E_NOT_FOUND:
            return HandlerNotFound(
                f"pool {self._cfg.name!r}: worker {w.pid} has no handler {call.name!r}", pool=self._cfg.name, handler=call.name
            )
        if code == P.E_CANCELLED:
            return CallTimeout(
                f"pool {self._cfg.name!r}: call {call.name!r} was cancelled in worker {w.pid}", pool=self._cfg.name, pid=w.pid
            )
        if rtype == "dspex.errors.ProtocolError":
            return ProtocolError(f"pool {self._cfg.name!r}: {message}", pool=self._cfg.name, pid=w.pid)
        return RemoteError(str(rtype), str(message), str(tb))

    def _on_callback(self, w: _Worker, m: list[Any]) -> None:
        _, rid, cbid, name, args, kwargs = m
        call = w.inflight.get(rid)
        fn = None
        if call is not None and call.callbacks:
            fn = call.callbacks.get(name)
        if fn is None:
            fn = self._cfg.callbacks.get(name)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._cfg.callback_threads, thread_name_prefix=f"dspex-pool-{self._cfg.name}-cb")
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
                known = sorted({*self._cfg.callbacks, *((call.callbacks or {}) if call else {})})
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

    def _on_stderr(self, fd: int, owner: StderrOwner) -> None:
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._on_stderr_eof(fd, owner)
        else:
            self._keep_stderr(owner, data)

    def drain_stderr(self, fd: int, owner: StderrOwner) -> None:
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
            self._keep_stderr(owner, data)

    def _keep_stderr(self, owner: StderrOwner, data: bytes) -> None:
        """Append to the bounded stderr tail (worker's, or the template's) and forward it."""
        tail = owner.err_tail
        tail += data
        if len(tail) > 16384:
            del tail[:-8192]
        if self._cfg.forward_stderr:
            with contextlib.suppress(OSError):
                os.write(2, data)

    def _on_stderr_eof(self, fd: int, owner: StderrOwner) -> None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            self._ep.unregister(fd)
        self._fdmap.pop(fd, None)
        with contextlib.suppress(OSError):
            os.close(fd)
        owner.err_fd = -1
