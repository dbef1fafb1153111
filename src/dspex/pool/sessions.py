"""The host's session store: which worker a session is bound to, bounded by TTL and a cap."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

__all__ = ["Session", "SessionStore"]


class Session:
    """One session's routing record. ``worker`` is the bound worker (or None)."""

    __slots__ = ("key", "last_used", "lost", "worker", "workers")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.worker: Any = None  # the worker handle it is bound to
        self.workers: set[Any] = set()  # every worker that may hold state for it
        self.lost = False  # strict affinity: its worker died, its state is gone
        self.last_used = time.monotonic()


class SessionStore:
    """LRU-ordered sessions with a cap and an idle TTL. Not thread-safe: the pool's
    lock guards it. Evicted sessions are returned so the pool can tell workers to
    drop their state."""

    def __init__(self, max_sessions: int = 10_000, ttl_s: float | None = 3600.0) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self._d: OrderedDict[Hashable, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: Hashable) -> Session | None:
        return self._d.get(key)

    def touch(self, key: Hashable, evicted: list[Session]) -> Session:
        """The session for ``key`` (created if new), marked most recently used."""
        s = self._d.get(key)
        if s is None:
            s = self._d[key] = Session(key)
            while len(self._d) > self.max_sessions:
                evicted.append(self._d.popitem(last=False)[1])
        else:
            self._d.move_to_end(key)
        s.last_used = time.monotonic()
        return s

    def pop(self, key: Hashable) -> Session | None:
        return self._d.pop(key, None)

    def expire(self, now: float | None = None) -> list[Session]:
        """Remove and return the sessions idle for longer than the TTL."""
        if self.ttl_s is None:
            return []
        limit = (time.monotonic() if now is None else now) - self.ttl_s
        out: list[Session] = []
        while self._d:
            key, s = next(iter(self._d.items()))
            if s.last_used > limit:
                break
            del self._d[key]
            out.append(s)
        return out

    def bound_to(self, worker: Any) -> list[Session]:
        return [s for s in self._d.values() if s.worker is worker]
