"""What ran: calls, errors and latency per (operation, implementation), bounded memory.

Every routed call is recorded per (op, impl) with a fixed log-scale latency histogram;
``stats()`` ranks the operations that spend the most time in DSPy: the candidates for a
native implementation.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .table import OPS

__all__ = ["RouterStats", "record", "reset_stats", "stats", "track"]

# --------------------------------------------------------------------------- stats

# Log-spaced latency buckets: 1 µs .. ~1000 s, 8 per decade (bounded: 73 counters per row).
_BOUNDS = [10 ** (k / 8) * 1e-6 for k in range(0, 73)]


class _Row:
    __slots__ = ("calls", "errors", "hist", "max_s", "total_s")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.total_s = 0.0
        self.max_s = 0.0
        self.hist = [0] * (len(_BOUNDS) + 1)

    def add(self, seconds: float, ok: bool) -> None:
        self.calls += 1
        self.errors += 0 if ok else 1
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)
        self.hist[bisect.bisect_left(_BOUNDS, seconds)] += 1

    def quantile(self, q: float) -> float:
        if not self.calls:
            return 0.0
        target = max(1, math.ceil(q * self.calls))
        seen = 0
        for i, n in enumerate(self.hist):
            seen += n
            if seen >= target:
                # Geometric middle of the bucket (its upper bound for the first one).
                hi = _BOUNDS[i] if i < len(_BOUNDS) else self.max_s
                lo = _BOUNDS[i - 1] if i > 0 else hi
                return min(math.sqrt(lo * hi), self.max_s)
        return self.max_s


_stats_lock = threading.Lock()
_rows: dict[tuple[str, str], _Row] = {}


def record(op: str, impl: str, seconds: float, ok: bool = True) -> None:
    with _stats_lock:
        row = _rows.get((op, impl))
        if row is None:
            row = _rows[(op, impl)] = _Row()
        row.add(seconds, ok)


@contextmanager
def track(op: str, impl: str) -> Iterator[None]:
    """Time the block and record it under (op, impl); works inside async functions too."""
    start = time.perf_counter()
    ok = False
    try:
        yield
        ok = True
    finally:
        record(op, impl, time.perf_counter() - start, ok)


def reset_stats() -> None:
    with _stats_lock:
        _rows.clear()


@dataclass(frozen=True)
class RouterStats:
    """A snapshot: ``rows`` per (op, impl) and ``candidates`` for a native implementation."""

    rows: list[dict[str, Any]]
    candidates: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "candidates_for_native": self.candidates}

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __str__(self) -> str:
        lines = [f"{'op':<24}{'impl':<8}{'calls':>8}{'errors':>8}{'mean ms':>10}{'p50 ms':>10}{'p99 ms':>10}{'total s':>10}"]
        for r in self.rows:
            lines.append(
                f"{r['op']:<24}{r['impl']:<8}{r['calls']:>8}{r['errors']:>8}{r['mean_ms']:>10.3f}"
                f"{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}{r['total_s']:>10.3f}"
            )
        if self.candidates:
            lines.append("candidates for native (time spent in DSPy):")
            for c in self.candidates:
                status = "native exists" if c["native_exists"] else "no native yet"
                lines.append(f"  {c['op']:<22}{c['total_s']:>10.3f} s over {c['calls']} calls ({status})")
        return "\n".join(lines)


def _has_native(op: str) -> bool:
    row = OPS.get(op)
    return row is not None and row.native is not None


def stats() -> RouterStats:
    """Calls and latency per (operation, implementation), and the DSPy-time ranking."""
    with _stats_lock:
        rows = [
            {
                "op": op,
                "impl": impl,
                "calls": r.calls,
                "errors": r.errors,
                "total_s": r.total_s,
                "mean_ms": 1e3 * r.total_s / r.calls if r.calls else 0.0,
                "p50_ms": 1e3 * r.quantile(0.50),
                "p99_ms": 1e3 * r.quantile(0.99),
                "max_ms": 1e3 * r.max_s,
            }
            for (op, impl), r in sorted(_rows.items())
        ]
    candidates: list[dict[str, Any]] = [
        {"op": r["op"], "total_s": r["total_s"], "calls": r["calls"], "mean_ms": r["mean_ms"],
         "native_exists": _has_native(str(r["op"]))}
        for r in rows
        if r["impl"] == "dspy"
    ]
    candidates.sort(key=lambda c: -float(c["total_s"]))
    return RouterStats(rows, candidates)
