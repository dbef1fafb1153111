"""Worker connections and the I/O thread (``_WorkerIO``).

``_Worker`` is the host's record of one worker: its socket, frame reader, in-flight
table and counters. ``_WorkerIO`` writes frames (send lock, non-blocking, partial
writes flushed by the I/O thread), arms the one-shot epoll registrations, runs the
I/O thread (worker sockets, stderr pipes, the template's control socket), turns
worker messages into completed calls, runs host callbacks, and holds the fast path
where a sync caller alone on a worker reads its own reply (``_lead``)."""

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
from typing import Any

from dspex.errors import CallTimeout, HandlerNotFound, ProtocolError, RemoteError
from dspex.pool import protocol as P
from dspex.pool._call import _DONE, _Call, _event, _finish, _put
from dspex.pool._state import _PoolState

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
        # Re-dispatch proof (see _Supervisor._finalize): the call whose frame was the last
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


class _WorkerIO(_PoolState):
    """Frames to and from the workers. Runs on caller threads and the I/O thread."""

    def _send_call(self, w: _Worker, call: _Call) -> bool:
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

    def _arm(self, w: _Worker) -> None:
        with w.send_lock:
            self._arm_locked(w)

    def _send_msg(self, w: _Worker, msg: list[Any]) -> None:
        data = self._codec.frame(msg)
        with w.send_lock:
            if w.state != DEAD:
                self._write_locked(w, data)

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
        except OSError as exc:
            if isinstance(exc, ConnectionResetError):
                w.reset = True  # it closed with bytes of ours unread
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
                        _put(call, m[2])
                elif kind == P.EVENT:
                    call = inflight.get(m[1])
                    if call is not None and not call.abandoned and call.on_event is not None:
                        _event(call, m[2])
                elif kind == P.CALLBACK:
                    self._on_callback(w, m)
                elif kind == P.READY:
                    self._on_ready(w, m)
                elif kind == P.LIMIT:
                    self._on_limit(w, str(m[1]))
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
            _finish(call, ok, value, w.pid)
        if out:
            self._send_pumped(out)

    def _error_from(self, w: _Worker, call: _Call, m: list[Any]) -> BaseException:
        _, _rid, code, rtype, message, tb = m[:6]
        detail = m[6] if len(m) > 6 and isinstance(m[6], dict) else None
        if code == P.E_REMOTE:
            return RemoteError(str(rtype), str(message), str(tb), detail=detail)
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

    def _on_stderr(self, fd: int, owner: Any) -> None:
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
            self._keep_stderr(owner, data)

    def _keep_stderr(self, owner: Any, data: bytes) -> None:
        """Append to the bounded stderr tail (worker's, or the template's) and forward it."""
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
