"""Dispatch (``_Dispatch``): routing calls to workers (load, pipelining of short
calls, session affinity with the hint wait bound), the general and per-worker
queues with their limit (backpressure), re-dispatch when a slot frees, and
cancellation of calls whose caller gave up."""

from __future__ import annotations

import contextlib
import time
from collections import deque

from dspex.errors import PoolClosed, PoolOverloaded, SessionLost
from dspex.pool import protocol as P
from dspex.pool._call import _DONE, _QUEUED, _SENT, _Call
from dspex.pool._state import _PoolState
from dspex.pool._worker_io import DEAD, READY, RETIRING, STARTING, _Worker
from dspex.pool.sessions import Session


class _Dispatch(_PoolState):
    """Which worker runs a call, and when. Runs on caller threads and the I/O thread."""

    def _eligible(self, w: _Worker, call: _Call) -> bool:
        if w.full:  # reached max_requests / max_rss_mb: it only finishes what it has
            return False
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
        if self._n_queued and self._q_bytes + len(call.frame) > self.queue_max_bytes:
            self._counts["overloaded"] += 1
            raise PoolOverloaded(
                f"pool {self.name!r}: {self._n_queued} queued calls already hold {self._q_bytes:,} bytes of "
                f"requests (queue_max_bytes={self.queue_max_bytes:,}); retry later, add workers, send smaller "
                "requests, or raise queue_max_bytes",
                pool=self.name,
                queue_depth=self._n_queued,
            )
        call.state = _QUEUED
        if w is not None:
            w.strict_q.append(call)
        else:
            self._queue.append(call)
        self._queued(call)

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
        if self.max_requests is not None and w.requests >= self.max_requests:
            w.full = True  # counting calls in flight: the limit holds at dispatch time
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

    def _pump(self, out: list[tuple[_Worker, _Call]]) -> None:
        """Move queued calls onto free workers. Pool lock held; the caller sends ``out``."""
        if not self._n_queued:
            return
        for w in self._workers:
            if w.state not in (READY, RETIRING):
                continue
            while w.strict_q and self._eligible(w, w.strict_q[0]):
                call = w.strict_q.popleft()
                self._unqueued(call)
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
            self._unqueued(call)
            if call.session is not None and self.affinity == "hint":
                self._sessions.touch(call.session, [])
            self._assign(w2, call)
            out.append((w2, call))

    def _send_pumped(self, out: list[tuple[_Worker, _Call]]) -> None:
        for w, call in out:
            if not self._send_call(w, call):
                with self._lock:
                    call.state = _QUEUED
                    call.worker = None
                    self._queue.appendleft(call)
                    self._queued(call)
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
                    self._unqueued(call)
                for w in self._workers:
                    if call in w.strict_q:
                        w.strict_q.remove(call)
                        self._unqueued(call)
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

    def _drop_in_workers(self, sessions: list[Session]) -> None:
        for s in sessions:
            for w in list(s.workers):
                if w.state != DEAD:
                    self._send_msg(w, [P.DROP, s.key])
