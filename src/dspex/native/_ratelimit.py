"""Rate limiting and retry timing for the LM clients: a token bucket shared by threads and
asyncio tasks, the server's Retry-After, and a cheap token estimate for ``tpm`` limits."""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
from typing import Any

from ..errors import ConfigError


class TokenBucket:
    """A token bucket usable from threads and asyncio tasks at once.

    ``reserve(n)`` takes ``n`` tokens now (the level may go negative) and returns
    how long the caller must wait before using them, so nothing sleeps while
    holding the lock and waiters are served in arrival order.
    """

    def __init__(self, rate: float, capacity: float | None = None):
        if rate <= 0:
            raise ConfigError(f"rate limit must be > 0, got {rate}")
        self.rate = float(rate)  # tokens per second
        self.capacity = float(capacity if capacity is not None else max(1.0, rate))
        self._level = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def reserve(self, n: float = 1.0) -> float:
        with self._lock:
            now = time.monotonic()
            self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
            self._stamp = now
            self._level -= n
            return 0.0 if self._level >= 0 else -self._level / self.rate

    def acquire(self, n: float = 1.0) -> None:
        wait = self.reserve(n)
        if wait > 0:
            time.sleep(wait)

    async def aacquire(self, n: float = 1.0) -> None:
        wait = self.reserve(n)
        if wait > 0:
            await asyncio.sleep(wait)


def parse_retry_after(headers: dict[str, str]) -> float | None:
    if ms := headers.get("retry-after-ms"):
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content") or "")) for m in messages) // 4 + 1
