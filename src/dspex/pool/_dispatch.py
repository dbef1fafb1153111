"""Dispatch (``Dispatcher``): routing calls to workers (load, pipelining of short
calls, session affinity with the hint wait bound), the general and per-worker
queues with their limit (backpressure), re-dispatch when a slot frees, and
cancellation of calls whose caller gave up."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from typing import Any, Protocol

from dspex.errors import PoolClosed, PoolOverloaded, SessionLost
from dspex.pool import protocol as P
from dspex.pool._call import _DONE, _QUEUED, _SENT, _Call
from dspex.pool._state import PoolConfig, PoolShared
from dspex.pool._worker_io import DEAD, READY, RETIRING, STARTING, _Worker
from dspex.pool.sessions import Session


class Wire(Protocol):
    """What the dispatcher needs to put calls on a worker's socket (``WorkerIO``)."""

    def send_call(self, w: _Worker, call: _Call) -> bool: ...
    def send_msg(self, w: _Worker, msg: list[Any]) -> None: ...
    def arm(self, w: _Worker) -> None: ...


class Retirer(Protocol):
    """What the dispatcher asks of worker lifecycle (``Supervisor``)."""

    def retire(self, w: _Worker, reason: str) -> None: ...  # pool lock held
    def kill(self, w: _Worker, reason: str) -> None: ...  # no lock held


class Dispatcher:
    """Which worker runs a call, and when. Runs on caller threads (submit, abandon),
    the I/O thread (a slot freed: pump) and the supervisor thread (spill, sessions).
    Owns the queues and the per-worker load counters (in ``PoolShared`` / ``_Worker``,
    under the pool lock) and ``next_spill`` (written under the lock, read by the
    supervisor without it to time its next wake-up)."""

    _life: Retirer

    def __init__(self, cfg: PoolConfig, shared: PoolShared, wire: Wire) -> None:
        self._cfg = cfg
        self._s = shared
        self._io = wire
        self.next_spill = float("inf")  # earliest spill_at of a hint call waiting for its worker

    def connect(self, life: Retirer) -> None:
        self._life = life

    def _eligible(self, w: _Worker, call: _Call) -> bool:
        if w.full:  # reached max_requests / max_rss_mb: it only finishes what it has
            return False
        if call.serial:
            if call.short:
                return w.n_long == 0 and w.n_serial < self._cfg.pipeline_depth
            return w.n_serial == 0
        return w.n_conc < self._cfg.max_concurrency

    def _pick(self, call: _Call) -> _Worker | None:
        best = None
        best_load = 1 << 30
        for w in self._s.workers:
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
        if session is not None and self._cfg.affinity != "none":
            s = self._s.sessions.touch(session, evicted)
            w = s.worker
            if self._cfg.affinity == "strict":
                call.strict = True
                if s.lost:
                    raise SessionLost(
                        f"pool {self._cfg.name!r}: the worker holding strict session {session!r} is gone and "
                        "its state with it; drop the session (pool.drop_session) or start a new one",
                        pool=self._cfg.name,
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
                if self._cfg.hint_wait_s > 0:
                    # busy: wait for it a bounded time, then spill (see _spill_overdue)
                    self._enqueue(call, w)
                    call.spill_at = spill_at = time.monotonic() + self._cfg.hint_wait_s
                    if spill_at < self.next_spill:
                        self.next_spill = spill_at
                        self._s.wake_sup.set()
                    return None
            # hint: spill to another worker (the session stays bound to its own)
        w = self._pick(call)
        if w is None:
            if not any(x.state in (READY, RETIRING, STARTING) for x in self._s.workers) and self._s.start_error:
                raise self._s.start_error
            self._enqueue(call, None)
        return w

    def _enqueue(self, call: _Call, w: _Worker | None) -> None:
        if self._s.n_queued >= self._cfg.queue_limit:
            self._s.counts["overloaded"] += 1
            raise PoolOverloaded(
                f"pool {self._cfg.name!r}: {self._s.n_queued} calls already queued (queue_limit={self._cfg.queue_limit}); "
                "retry later, add workers, or raise queue_limit",
                pool=self._cfg.name,
                queue_depth=self._s.n_queued,
            )
        if self._s.n_queued and self._s.q_bytes + len(call.frame) > self._cfg.queue_max_bytes:
            self._s.counts["overloaded"] += 1
            raise PoolOverloaded(
                f"pool {self._cfg.name!r}: {self._s.n_queued} queued calls already hold {self._s.q_bytes:,} bytes of "
                f"requests (queue_max_bytes={self._cfg.queue_max_bytes:,}); retry later, add workers, send smaller "
                "requests, or raise queue_max_bytes",
                pool=self._cfg.name,
                queue_depth=self._s.n_queued,
            )
        call.state = _QUEUED
        if w is not None:
            w.strict_q.append(call)
        else:
            self._s.queue.append(call)
        self._s.queued(call)

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
        self._s.counts["calls"] += 1
        if self._cfg.max_requests is not None and w.requests >= self._cfg.max_requests:
            w.full = True  # counting calls in flight: the limit holds at dispatch time
        if call.session is not None and self._cfg.affinity != "none":
            s = self._s.sessions.get(call.session)
            if s is not None:
                if s.worker is None or (s.worker.state not in (READY, RETIRING) and not call.strict):
                    s.worker = w
                s.workers.add(w)
        if self._cfg.max_requests is not None and w.requests >= self._cfg.max_requests and w.state == READY:
            self._life.retire(w, "max_requests")

    def release(self, w: _Worker, call: _Call) -> None:
        if call.serial:
            w.n_serial -= 1
            if not call.short:
                w.n_long -= 1
        else:
            w.n_conc -= 1

    def submit(self, call: _Call) -> None:
        evicted: list[Session] = []
        while True:
            with self._s.lock:
                if self._s.closed:
                    raise PoolClosed(f"pool {self._cfg.name!r} is closed", pool=self._cfg.name)
                w = self._route(call, evicted)
                if w is not None:
                    self._assign(w, call)
            if evicted:
                self.drop_in_workers(evicted)
                evicted = []
            if w is None:
                return
            if self._io.send_call(w, call):
                return

    def pump(self, out: list[tuple[_Worker, _Call]]) -> None:
        """Move queued calls onto free workers. Pool lock held; the caller sends ``out``."""
        if not self._s.n_queued:
            return
        for w in self._s.workers:
            if w.state not in (READY, RETIRING):
                continue
            while w.strict_q and self._eligible(w, w.strict_q[0]):
                call = w.strict_q.popleft()
                self._s.unqueued(call)
                self._assign(w, call)
                out.append((w, call))
        while self._s.queue:
            call = self._s.queue[0]
            if call.strict:
                s = self._s.sessions.get(call.session)
                if s is not None and s.worker is not None:
                    # bound meanwhile (an earlier call of its session): wait for that worker
                    self._s.queue.popleft()
                    s.worker.strict_q.append(call)
                    continue
            w2 = self._pick(call)
            if w2 is None:
                break
            self._s.queue.popleft()
            self._s.unqueued(call)
            if call.session is not None and self._cfg.affinity == "hint":
                self._s.sessions.touch(call.session, [])
            self._assign(w2, call)
            out.append((w2, call))

    def send_pumped(self, out: list[tuple[_Worker, _Call]]) -> None:
        for w, call in out:
            if not self._io.send_call(w, call):
                with self._s.lock:
                    call.state = _QUEUED
                    call.worker = None
                    self._s.queue.appendleft(call)
                    self._s.queued(call)
        for w in {w for w, _ in out}:
            self._io.arm(w)  # their callers wait on the I/O thread

    def abandon(self, call: _Call, timed_out: bool) -> bool:
        """The caller gave up (deadline or cancellation). True if the call is now
        abandoned (the caller raises); False if it completed meanwhile."""
        kill: _Worker | None = None
        cancel: _Worker | None = None
        with self._s.lock:
            if call.state == _DONE:
                return False
            if call.abandoned:
                return True
            if call.state == _QUEUED:
                with contextlib.suppress(ValueError):
                    self._s.queue.remove(call)
                    self._s.unqueued(call)
                for w in self._s.workers:
                    if call in w.strict_q:
                        w.strict_q.remove(call)
                        self._s.unqueued(call)
                call.abandoned = True
                if not timed_out:
                    self._s.counts["cancelled"] += 1
                return True
            w2 = call.worker
            call.abandoned = True
            if not timed_out:
                self._s.counts["cancelled"] += 1
            if w2 is None or w2.inflight.get(call.rid) is not call:
                # already answered (or failed by its dying worker): the outcome is on its way
                call.abandoned = False
                return False
            w = w2
            call.pid = w.pid
            running = self.is_running(w, call)
            hkind = self._s.handler_table.get(call.name, ["sync"])[0]
            if timed_out and running and hkind in ("sync", "gen"):
                # A sync handler cannot be interrupted: replace the worker now.
                del w.inflight[call.rid]
                self.release(w, call)
                kill = w
            else:
                cancel = w
                if running:
                    grace = self._cfg.cancel_grace_s
                    if not timed_out and call.deadline is not None:
                        grace = max(0.0, call.deadline - time.monotonic())
                    call.kill_at = time.monotonic() + grace
        if kill is not None:
            self._life.kill(kill, "timeout")
        if cancel is not None:
            self._io.send_msg(cancel, [P.CANCEL, call.rid])
        return True

    @staticmethod
    def is_running(w: _Worker, call: _Call) -> bool:
        if not call.serial:
            return True
        for c in list(w.inflight.values()):
            if c.serial:
                return c is call
        return False

    def unwait_hints(self, w: _Worker, now: float | None) -> None:
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
            self._s.queue.extendleft(reversed(moved))

    def spill_overdue(self, now: float) -> None:
        """Hint affinity's bound: calls that waited ``hint_wait_s`` for their busy
        session worker go to any worker."""
        out: list[tuple[_Worker, _Call]] = []
        with self._s.lock:
            nxt = float("inf")
            for w in self._s.workers:
                self.unwait_hints(w, now)
                for call in w.strict_q:
                    if call.spill_at is not None and call.spill_at < nxt:
                        nxt = call.spill_at
            self.next_spill = nxt
            self.pump(out)
        if out:
            self.send_pumped(out)

    def drop_in_workers(self, sessions: list[Session]) -> None:
        for s in sessions:
            for w in list(s.workers):
                if w.state != DEAD:
                    self._io.send_msg(w, [P.DROP, s.key])
