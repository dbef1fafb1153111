"""A bounded, thread-safe memo of values that are costly to build (signature wire forms,
GBNF grammars, BM25 indexes)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class Memo(Generic[V]):
    """At most ``size`` values, least recently used dropped first. ``get(key, build)``
    builds outside the lock, so a slow build never blocks other keys (two threads may
    build the same value once each; either result is kept)."""

    __slots__ = ("_data", "_lock", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], V]) -> V:
        with self._lock:
            hit = self._data.get(key)
            if hit is not None:
                self._data.move_to_end(key)
                return hit
        value = build()
        self.put(key, value)
        return value

    # The plain LRU operations (pipeline step caches, the bridge's module stores).
    def peek(self, key: Hashable) -> V | None:
        """The value for ``key`` (marked recently used), or None."""
        with self._lock:
            hit = self._data.get(key)
            if hit is not None:
                self._data.move_to_end(key)
            return hit

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def pop(self, key: Hashable) -> V | None:
        with self._lock:
            return self._data.pop(key, None)

    def list_keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
