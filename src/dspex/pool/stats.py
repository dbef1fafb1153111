"""Pool metrics: a bounded latency reservoir with quantiles."""

from __future__ import annotations

from array import array

__all__ = ["LatencyReservoir"]


class LatencyReservoir:
    """The last ``size`` latencies (a ring buffer), so memory stays bounded.

    ``add`` is a store and an increment: cheap enough for every call. Quantiles are
    computed on demand by sorting the window.
    """

    __slots__ = ("_buf", "_n", "_size", "count")

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._buf = array("d", bytes(8 * size))
        self._n = 0
        self.count = 0

    def add(self, seconds: float) -> None:
        n = self._n
        self._buf[n % self._size] = seconds
        self._n = n + 1

    def quantiles(self) -> dict[str, float | int | None]:
        filled = min(self._n, self._size)
        if not filled:
            return {"count": self._n, "p50": None, "p90": None, "p99": None, "max": None}
        window = sorted(self._buf[:filled])

        def q(p: float) -> float:
            return window[min(filled - 1, int(p * filled))]

        return {"count": self._n, "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": window[-1]}
