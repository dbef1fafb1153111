"""Worker lifecycle and supervision (``Supervisor``): spawn workers, the ready
handshake, hang-ups and bad frames, retiring / draining / killing, the end of a
worker (fail its running call, re-queue the rest), start failures with exponential
backoff, and the supervisor thread that keeps the pool at size (start timeouts,
recycling by age / RSS, overstayed cancellations, session expiry)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import threading
import time
import traceback
from typing import Any

from dspex.errors import PoolClosed, ProtocolError, SessionLost, WorkerCrashed, WorkerStartError
from dspex.pool import protocol as P
from dspex.pool._call import _QUEUED, _Call, _finish
from dspex.pool._dispatch import Dispatcher
from dspex.pool._state import PoolConfig, PoolShared
from dspex.pool._template import Template
from dspex.pool._worker_io import (
    DEAD,
    DRAINING,
    READY,
    RETIRING,
    STARTING,
    STOPPING,
    WorkerIO,
    _tail,
    _Worker,
)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _signal_name(sig: int | None) -> str:
    if sig is None:
        return "?"
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _reset_pending(w: _Worker) -> bool:
    """ECONNRESET waiting on ``w``'s socket: the worker closed with bytes of ours unread."""
    try:
        return w.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET
    except OSError:
        return False


def _read_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE // 1024
    except (OSError, ValueError, IndexError):
        return 0


class Supervisor:
    """Keeps ``size`` workers ready. Runs on the supervisor thread (its loop, spawning)
    and the I/O thread (events from workers and the template). Owns the worker records'
    lifecycle (``_Worker.state``, adding/removing them in ``PoolShared``, all under the
    pool lock), the start backoff (``_fail_streak``, ``_next_start_at``: under the pool
    lock, read without it by its own thread) and the supervisor thread."""

    def __init__(
        self,
        cfg: PoolConfig,
        shared: PoolShared,
        codec: P.Codec,
        io: WorkerIO,
        dispatch: Dispatcher,
        template: Template,
    ) -> None:
        self._cfg = cfg
        self._s = shared
        self._codec = codec
        self._io = io
        self._dispatch = dispatch
        self._template = template
        self._tokens = 0  # spawn tokens (supervisor thread only)
        self._fail_streak = 0
        self._next_start_at = 0.0
        self._last_slow_tick = 0.0  # supervisor thread only
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._sup_loop, name=f"dspex-pool-{self._cfg.name}-sup", daemon=True)
        self._thread.start()

    def join(self) -> None:
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=2.0)

    def set_next_start(self, at: float) -> None:
        """When the template may be (re)started next (inf: not until told again)."""
        with self._s.lock:
            self._next_start_at = at

    def spawn_worker(self) -> None:
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
        with self._s.lock:
            self._s.workers.append(w)
            self._s.by_token[token] = w
        self._io.watch_worker(w)
        ok = self._template.send([P.Z_FORK, token], [child.fileno(), err_w])
        child.close()
        os.close(err_w)
        if not ok:
            self.finalize(w, "template unavailable")

    def on_ready(self, w: _Worker, m: list[Any]) -> None:
        out: list[tuple[_Worker, _Call]] = []
        with self._s.lock:
            if w.state != STARTING:
                return
            w.pid = int(m[1])
            w.info = m[2] if isinstance(m[2], dict) else {}
            self._s.by_pid[w.pid] = w
            w.state = READY
            w.ready_at = time.monotonic()
            self._fail_streak = 0
            self._s.start_error = None
            # a replacement is up: drain one retiring worker
            for old in self._s.workers:
                if old.state == RETIRING:
                    self._drain(old)
                    break
            self._dispatch.pump(out)
            self._s.ready_cond.notify_all()
        if out:
            self._dispatch.send_pumped(out)

    def on_eof(self, w: _Worker) -> None:
        w.eof = True
        self._io.unregister(w.fd)
        if w.exit is not None:
            self.finalize(w, "exit")
        else:
            if w.stop_at is None:
                w.stop_at = time.monotonic()
            if w.pid:
                self._template.kill(w.pid, signal.SIGKILL)  # a worker that hung up is finished
            self._s.wake_sup.set()

    def on_limit(self, w: _Worker, what: str) -> None:
        """The worker passed ``what`` (max_rss_mb): no new calls; replace it (I/O thread)."""
        with self._s.lock:
            w.full = True
            self.retire(w, what)

    def protocol_error(self, w: _Worker, message: str) -> None:
        with self._s.lock:
            if w.proto_error:
                return
            w.proto_error = message
            self._s.counts["protocol_errors"] += 1
            if w.state != DEAD:
                w.state = STOPPING
        self._io.unregister(w.fd)
        if w.pid:
            self._template.kill(w.pid, signal.SIGKILL)
        else:
            self.finalize(w, "protocol")

    def retire(self, w: _Worker, reason: str) -> None:
        """Plan ``w``'s replacement; it keeps serving until the new one is ready. Lock held."""
        if w.state != READY:
            return
        w.state = RETIRING
        w.kill_reason = reason
        self._s.counts["recycles"] += 1
        self._s.wake_sup.set()

    def _drain(self, w: _Worker) -> None:
        """Stop routing to ``w``; the supervisor stops it once idle. Lock held."""
        w.state = DRAINING
        self._dispatch.unwait_hints(w, None)
        for s in self._s.sessions.bound_to(w):
            if self._cfg.affinity == "strict":
                s.lost = True
            s.worker = None
        self._s.wake_sup.set()

    def kill(self, w: _Worker, reason: str) -> None:
        with self._s.lock:
            if w.state == DEAD:
                return
            w.kill_reason = reason
            w.state = STOPPING
            if w.stop_at is None:
                w.stop_at = time.monotonic()
        if w.pid:
            self._template.kill(w.pid, signal.SIGKILL)
        self._s.wake_sup.set()

    def finalize(self, w: _Worker, why: str) -> None:
        """``w`` is gone: fail the calls it may have started, re-dispatch the others.

        A call provably never started (re-queued; handlers need not be idempotent, so
        nothing else is retried) when, in the worker's wire order:
        * its frame was not completely written to the socket (EPIPE: the worker was
          already gone; or still, partly, in our send buffer), or
        * its frame was the last thing written and the worker closed its end with bytes
          of ours unread (the kernel reports ECONNRESET): so that frame was not read
          whole and cannot have been parsed, or
        * it is a serial call behind another serial call that had not finished (a
          worker runs those one at a time in arrival order).
        Everything else may have started and fails with WorkerCrashed.
        """
        fail: list[tuple[_Call, BaseException]] = []
        out: list[tuple[_Worker, _Call]] = []
        with self._s.lock:
            if w.state == DEAD:
                return
            was_ready = w.state in (READY, RETIRING, DRAINING, STOPPING) and w.ready_at > 0
            planned = w.kill_reason in ("max_requests", "max_age_s", "max_rss_mb") or self._s.closed
            w.state = DEAD
            with w.send_lock:
                calls = list(w.inflight.values())
                w.inflight.clear()
                w.outbuf.clear()
            with contextlib.suppress(ValueError):
                self._s.workers.remove(w)
            self._s.by_pid.pop(w.pid, None)
            self._s.by_token.pop(w.token, None)
            self._io.unwatch(w.fd)
            code, sig = w.exit if w.exit is not None else (None, None)
            how = f"killed by {_signal_name(sig)}" if sig else f"exit code {code}"
            if not was_ready and not self._s.closed:
                # died before its ready handshake: a start failure (back off)
                self._io.drain_stderr(w.err_fd, w)
                tail = _tail(w.err_tail) or _tail(self._template.err_tail)
                err = WorkerStartError(
                    f"pool {self._cfg.name!r}: worker {w.pid or '?'} failed to start ({why}, {how}). "
                    f"Its stderr ends with:\n{tail}",
                    pool=self._cfg.name,
                    stderr_tail=tail,
                    pid=w.pid or None,
                    exitcode=code,
                )
                self.start_failed_locked(err)
            elif was_ready and not planned and not self._s.closed:
                self._s.counts["restarts"] += 1
                if w.kill_reason not in ("timeout",):
                    self._s.counts["crashes"] += 1
            for s in self._s.sessions.bound_to(w):
                if self._cfg.affinity == "strict":
                    s.lost = True
                s.worker = None
            self._dispatch.unwait_hints(w, None)  # hint calls waiting for it go elsewhere
            lost = list(w.strict_q)
            w.strict_q.clear()
            for call in lost:
                self._s.unqueued(call)
            for call in lost:
                fail.append(
                    (
                        call,
                        SessionLost(
                            f"pool {self._cfg.name!r}: worker {w.pid} holding strict session {call.session!r} died "
                            f"({how}); its state is gone. Drop the session and start a new one.",
                            pool=self._cfg.name,
                            session=call.session,
                            pid=w.pid,
                        ),
                    )
                )
            head_seen = False
            requeue: list[_Call] = []
            unread = w.last if (w.reset or _reset_pending(w)) else None
            for call in calls:
                if call.abandoned:
                    continue
                started = call.written and call is not unread and (not call.serial or not head_seen)
                if call.serial:
                    head_seen = True
                if not started and not self._s.closed:
                    if call.strict:
                        s2 = self._s.sessions.get(call.session) if call.session is not None else None
                        if s2 is not None and s2.lost:
                            fail.append(
                                (
                                    call,
                                    SessionLost(
                                        f"pool {self._cfg.name!r}: worker {w.pid} holding strict session "
                                        f"{call.session!r} died; its state is gone",
                                        pool=self._cfg.name,
                                        session=call.session,
                                        pid=w.pid,
                                    ),
                                )
                            )
                            continue
                    requeue.append(call)
                    continue
                if self._s.closed:
                    exc: BaseException = PoolClosed(
                        f"pool {self._cfg.name!r} closed while the call was running", pool=self._cfg.name
                    )
                elif w.proto_error:
                    exc = ProtocolError(
                        f"pool {self._cfg.name!r}: worker {w.pid} sent a bad frame ({w.proto_error}); "
                        "it was replaced",
                        pool=self._cfg.name,
                        pid=w.pid,
                    )
                else:
                    exc = WorkerCrashed(
                        f"pool {self._cfg.name!r}: worker {w.pid} died during the call ({how}); it is being "
                        "replaced. Retry if the call is safe to repeat.",
                        pool=self._cfg.name,
                        pid=w.pid,
                        exitcode=code,
                        signal=sig,
                    )
                fail.append((call, exc))
            for call in reversed(requeue):
                call.state = _QUEUED
                call.worker = None
                call.written = False
                self._s.queue.appendleft(call)
                self._s.queued(call)
                self._s.counts["requeued"] += 1
            self._s.counts["errors"] += len(fail)
            self._dispatch.pump(out)
            self._s.ready_cond.notify_all()
        for call, exc in fail:
            _finish(call, False, exc, w.pid)
        if out:
            self._dispatch.send_pumped(out)
        with contextlib.suppress(OSError):
            w.sock.close()
        self._s.wake_sup.set()

    def start_failed(self, err: WorkerStartError) -> None:
        with self._s.lock:
            self.start_failed_locked(err)

    def start_failed_locked(self, err: WorkerStartError) -> None:
        self._s.counts["start_failures"] += 1
        self._fail_streak += 1
        delay = min(self._cfg.backoff_max_s, self._cfg.backoff_base_s * (2 ** (self._fail_streak - 1)))
        self._next_start_at = time.monotonic() + delay
        self._s.start_error = err
        self._s.ready_cond.notify_all()
        # With no worker able to run them, queued calls fail now instead of waiting.
        if not any(w.state in (READY, RETIRING) for w in self._s.workers):
            queued = list(self._s.queue)
            self._s.queue.clear()
            for call in queued:
                self._s.unqueued(call)
            for call in queued:
                _finish(call, False, err, 0)  # takes no lock: safe here

    def _sup_loop(self) -> None:
        while not self._s.closed:
            self._s.wake_sup.wait(min(0.05, max(0.0, self._dispatch.next_spill - time.monotonic())))
            self._s.wake_sup.clear()
            if self._s.closed:
                return
            try:
                self._supervise()
            except Exception:  # keep supervising whatever happens
                traceback.print_exc()

    def _supervise(self) -> None:
        now = time.monotonic()
        if now >= self._dispatch.next_spill:
            self._dispatch.spill_overdue(now)
        # 1. the template
        if self._template.ctl is None:
            if now >= self._next_start_at:
                self._template.start()
            return
        if not self._template.ready:
            if now - self._template.started_at > self._cfg.start_timeout_s:
                self.start_failed(
                    WorkerStartError(
                        f"pool {self._cfg.name!r}: the worker template was not ready after {self._cfg.start_timeout_s} s "
                        f"(start_timeout_s). Its stderr ends with:\n{_tail(self._template.err_tail)}",
                        pool=self._cfg.name,
                        stderr_tail=_tail(self._template.err_tail),
                    )
                )
                if self._template.proc is not None:
                    self._template.proc.kill()
            return
        kills: list[tuple[_Worker, str]] = []
        stops: list[_Worker] = []
        finals: list[_Worker] = []
        spawn = 0
        slow = now - self._last_slow_tick >= 0.5
        if slow:
            self._last_slow_tick = now
        with self._s.lock:
            active = 0
            for w in self._s.workers:
                if w.state in (READY, RETIRING) and self._cfg.max_rss_mb is not None and w.pid and not w.full:
                    # every pass (<= 50 ms), besides the worker's own check after each call
                    w.rss_kb = _read_rss_kb(w.pid)
                    if w.rss_kb / 1024 >= self._cfg.max_rss_mb:
                        w.full = True
                        self.retire(w, "max_rss_mb")
                if w.state in (STARTING, READY):
                    active += 1
                if w.state == STARTING and now - w.spawned_at > self._cfg.start_timeout_s:
                    kills.append((w, "start timeout"))
                elif w.state == READY and slow:
                    if self._cfg.max_age_s is not None and now - w.ready_at >= self._cfg.max_age_s:
                        self.retire(w, "max_age_s")
                        active -= 1
                elif w.state == DRAINING and not w.inflight and not (w.n_serial or w.n_conc):
                    # (the counters also cover a call routed here but not yet written)
                    w.state = STOPPING
                    w.stop_at = now
                    stops.append(w)
                elif w.state == STOPPING and w.stop_at is not None and now - w.stop_at > self._cfg.shutdown_grace_s:
                    if w.eof and w.exit is None and now - w.stop_at > self._cfg.shutdown_grace_s + 1.0:
                        finals.append(w)
                    else:
                        kills.append((w, w.kill_reason or "stop timeout"))
                elif (w.eof or w.exit is not None) and w.stop_at is not None and now - w.stop_at > 0.5:
                    finals.append(w)
                # cancelled calls that overstayed their grace
                if w.state in (READY, RETIRING, DRAINING):
                    for c in list(w.inflight.values()):
                        if c.abandoned and c.kill_at is not None and now >= c.kill_at and self._dispatch.is_running(w, c):
                            kills.append((w, "cancel ignored"))
                            break
            if active < self._cfg.size and now >= self._next_start_at:
                spawn = self._cfg.size - active
            expired = self._s.sessions.expire(now) if slow else []
        for w in stops:
            self._io.send_msg(w, [P.STOP])  # it exits once idle; SIGKILL after the grace period
        for w, why in kills:
            if why == "start timeout":
                self._io.drain_stderr(w.err_fd, w)
                self.start_failed(
                    WorkerStartError(
                        f"pool {self._cfg.name!r}: worker {w.pid or '?'} not ready after {self._cfg.start_timeout_s} s. "
                        f"Its stderr ends with:\n{_tail(w.err_tail)}",
                        pool=self._cfg.name,
                        stderr_tail=_tail(w.err_tail),
                    )
                )
            self.kill(w, why)
        for w in finals:
            self.finalize(w, "hung up")
        for _ in range(spawn):
            self.spawn_worker()
        if expired:
            self._dispatch.drop_in_workers(expired)
