"""Host-side routing for a Ray pool: which actor runs a call, session affinity, the
in-flight bound (``PoolOverloaded``), and what an actor's death does to sessions.

No Ray here: ``Slot.actor`` is an opaque handle. One lock (``Router.lock``) guards
every field below; the pool's monitor thread and caller threads take it briefly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from typing import Any

from dspex.errors import PoolOverloaded, SessionLost, WorkerCrashed
from dspex.pool.sessions import Session, SessionStore

__all__ = ["DEAD", "READY", "STARTING", "Router", "Slot"]

STARTING, READY, DEAD = "starting", "ready", "dead"


class Slot:
    """One worker of the pool: an actor handle and what the host knows of it."""

    __slots__ = (
        "actor",
        "handlers",
        "in_flight",
        "incarnation",
        "index",
        "n_serial",
        "node_id",
        "pid",
        "probe",
        "requests",
        "restarts",
        "started_at",
        "state",
        "watch",
        "watch_inc",
    )

    def __init__(self, index: int, actor: Any) -> None:
        self.index = index
        self.actor = actor
        self.state = STARTING
        self.incarnation: str | None = None
        self.pid = 0
        self.node_id = ""
        self.handlers: dict[str, list[Any]] = {}
        self.in_flight = 0
        self.n_serial = 0
        self.requests = 0
        self.restarts = 0
        self.started_at = time.monotonic()
        self.watch: Any = None  # the never-returning call whose failure reports a death
        self.watch_inc: str | None = None  # ... of this incarnation
        self.probe: Any = None  # a pending ready() call: (re)start in progress

    def up(self, info: dict[str, Any]) -> None:
        self.state = READY
        self.incarnation = str(info["incarnation"])
        self.pid = int(info["pid"])
        self.node_id = str(info["node_id"])
        self.handlers = dict(info["handlers"])
        self.started_at = time.monotonic()


class Router:
    """Routes calls to slots. ``capacity`` = size x max_concurrency calls run at once;
    up to ``queue_limit`` more wait in the actors' queues; beyond that: PoolOverloaded."""

    def __init__(self, name: str, affinity: str, max_concurrency: int, queue_limit: int,
                 max_sessions: int, session_ttl_s: float | None) -> None:
        self.name = name
        self.affinity = affinity
        self.max_concurrency = max_concurrency
        self.queue_limit = queue_limit
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # a slot came up or went down
        self.slots: list[Slot] = []
        self.sessions = SessionStore(max_sessions, session_ttl_s)
        self.in_flight = 0
        self.closed = False
        self.counts = {"calls": 0, "errors": 0, "timeouts": 0, "crashes": 0, "restarts": 0, "overloaded": 0,
                       "cancelled": 0, "sessions_lost": 0}
        self._rr = 0

    # -- routing (lock held by the caller of acquire) --------------------------------
    def acquire(self, session: Hashable | None, serial: bool, evicted: list[Session]) -> tuple[Slot, str | None] | None:
        """The slot for a call and the incarnation it must run in (strict sessions), or
        None when no actor is up. Raises PoolOverloaded / SessionLost. Accounts the call.

        A strict call carries the incarnation its session's state lives in: an actor that
        Ray restarted before the monitor noticed refuses it (the actor checks)."""
        limit = len(self.slots) * self.max_concurrency + self.queue_limit
        if self.in_flight >= limit:
            self.counts["overloaded"] += 1
            raise PoolOverloaded(
                f"pool {self.name!r}: {self.in_flight} calls in flight (limit {limit} = size x max_concurrency + "
                "queue_limit); retry later, add workers, or raise queue_limit", pool=self.name,
                queue_depth=self.in_flight)
        expect: str | None = None
        if session is not None and self.affinity != "none":
            s = self.sessions.touch(session, evicted)
            if self.affinity == "strict":
                slot = self._strict(s)
                if slot is None:
                    return None
                expect = slot.incarnation
            else:
                slot = self._hint(s, serial)
                if slot is None:
                    return None
            s.workers.add(slot)
        else:
            slot = self._pick(serial)
            if slot is None:
                return None
        slot.in_flight += 1
        slot.n_serial += serial
        slot.requests += 1
        self.in_flight += 1
        self.counts["calls"] += 1
        return slot, expect

    def _strict(self, s: Session) -> Slot | None:
        if s.lost:
            raise self.lost(s.key)
        slot: Slot | None = s.worker
        if slot is not None:
            if slot.state != READY:
                s.lost = True
                raise self.lost(s.key)
            return slot  # busy or not: it waits for its worker
        slot = s.worker = self._pick(False)
        return slot

    def _hint(self, s: Session, serial: bool) -> Slot | None:
        slot: Slot | None = s.worker
        if slot is not None and slot.state == READY:
            # busy: spill to another worker; the session stays bound to its own
            return self._pick(serial) if self._busy(slot, serial) else slot
        slot = s.worker = self._pick(serial)  # (re)bind: its worker is gone, or it had none
        return slot

    def _busy(self, slot: Slot, serial: bool) -> bool:
        return slot.n_serial > 0 if serial else slot.in_flight >= self.max_concurrency

    def _pick(self, serial: bool) -> Slot | None:
        """The least-loaded live slot; ties go round-robin so idle callers spread."""
        n = len(self.slots)
        best: Slot | None = None
        for k in range(n):
            slot = self.slots[(self._rr + k) % n]
            if slot.state == READY and (best is None or slot.in_flight < best.in_flight):
                best = slot
                if slot.in_flight == 0:
                    break
        if best is not None:
            self._rr = (best.index + 1) % n
        return best

    def release(self, slot: Slot, serial: bool) -> None:
        with self.lock:
            slot.in_flight -= 1
            slot.n_serial -= serial
            self.in_flight -= 1

    def lost(self, key: Hashable) -> SessionLost:
        self.counts["sessions_lost"] += 1
        return SessionLost(
            f"pool {self.name!r}: the worker holding strict session {key!r} died (or was restarted) and its "
            "state with it; drop the session (pool.drop_session) or start a new one", pool=self.name, session=key)

    def no_workers(self) -> WorkerCrashed:
        down = sum(1 for s in self.slots if s.state != READY)
        return WorkerCrashed(
            f"pool {self.name!r}: no live worker ({down} of {len(self.slots)} restarting); the cluster may lack "
            "the resources a worker needs (see `ray status`), or raise the call's timeout", pool=self.name)

    # -- lifecycle (the monitor thread) ------------------------------------------------
    def died(self, slot: Slot, incarnation: str | None) -> bool:
        """The actor of ``slot`` (that incarnation) is gone: strict sessions on it are lost,
        hint sessions move on their next call. False if that was already known."""
        with self.lock:
            if slot.state == DEAD or (incarnation is not None and slot.incarnation != incarnation):
                return False
            slot.state = DEAD
            slot.restarts += 1
            self.counts["restarts"] += 1
            for s in self.sessions.bound_to(slot):
                if self.affinity == "strict":
                    s.lost = True
                else:
                    s.worker = None
                s.workers.discard(slot)
            self.changed.notify_all()
            return True

    def came_up(self, slot: Slot, info: dict[str, Any]) -> None:
        with self.lock:
            slot.up(info)
            self.changed.notify_all()

    def wait_ready(self, timeout: float) -> bool:
        """Wait (lock held) until some slot is up (or the pool closes); False after ``timeout``."""
        end = time.monotonic() + timeout
        while not self.closed and not any(s.state == READY for s in self.slots):
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.changed.wait(min(left, 0.5))
        return True
