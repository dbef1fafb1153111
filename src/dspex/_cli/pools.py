"""``dspex pools [NAME...] [--start]``: the configured pools, their status and metrics.

Pools live inside the process that uses them (they are started lazily by the
default ``PoolManager``), so a fresh ``dspex pools`` process sees every pool
unstarted and shows its configuration. ``--start`` starts the named pools here,
waits until their workers are ready, reports the live metrics, and closes them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from .common import UsageError, emit_json, to_jsonable

# Table columns: (header, stats keys tried in order). The pool layer's names come first.
COLUMNS: list[tuple[str, tuple[str, ...]]] = [
    ("size", ("size",)),
    ("started", ("started",)),
    ("workers", ("workers", "alive", "live_workers")),
    ("queue", ("queue_depth", "queued", "queue")),
    ("in_flight", ("in_flight", "inflight", "busy")),
    ("calls", ("calls", "completed", "requests")),
    ("errors", ("errors", "failed", "failures")),
    ("restarts", ("restarts", "crashes")),
    ("recycles", ("recycles", "recycled")),
    ("p50_ms", ("p50_ms", "latency_p50_ms", "p50")),
    ("p99_ms", ("p99_ms", "latency_p99_ms", "p99")),
]


def _pick(stats: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in stats:
            value = stats[key]
            if isinstance(value, (list, tuple)) and key in ("workers", "alive"):
                return len(value)
            return value
    latency = stats.get("latency_ms") or stats.get("latency")
    if isinstance(latency, Mapping):
        for key in keys:
            short = key.replace("_ms", "").replace("latency_", "")
            if short in latency:
                return latency[short]
    return None


def row(name: str, config: Mapping[str, Any], stats: Mapping[str, Any] | None) -> dict[str, Any]:
    """One pool as a flat dict: name, the COLUMNS, handlers, and the raw stats."""
    stats = dict(stats or {})
    out: dict[str, Any] = {"name": name}
    for header, keys in COLUMNS:
        out[header] = _pick(stats, keys)
    if out["size"] is None:
        out["size"] = config.get("size")
    if out["started"] is None:
        out["started"] = bool(stats) and bool(out["workers"])
    out["handlers"] = list(config.get("handlers") or [])
    out["affinity"] = config.get("affinity")
    out["stats"] = to_jsonable(stats)
    return out


def _manager_stats(names: list[str]) -> dict[str, Any]:
    """Stats of pools already running in this process (normally none)."""
    try:
        from ..pool import manager
    except ImportError:
        return {}
    try:
        stats = manager().stats()
    except Exception:
        return {}
    if isinstance(stats, Mapping):
        pools = stats.get("pools", stats)
        if isinstance(pools, Mapping):
            return {n: s for n, s in pools.items() if n in names and isinstance(s, Mapping)}
    return {}


def _start_and_measure(names: list[str]) -> dict[str, Any]:
    from ..pool import manager

    mgr = manager()
    out: dict[str, Any] = {}
    try:
        for name in names:
            pool = mgr.get(name)
            start = getattr(pool, "start", None)
            if callable(start):
                start()
            out[name] = dict(pool.stats())
            out[name].setdefault("started", True)
    finally:
        mgr.close_all()
    return out


def run(args: argparse.Namespace) -> int:
    from ..settings import load_config

    pools_cfg: dict[str, Any] = dict(load_config().get("pools") or {})
    names = list(args.names) or sorted(pools_cfg)
    unknown = [n for n in names if n not in pools_cfg]
    if unknown:
        raise UsageError(
            f"no pool named {unknown[0]!r} (configured: {', '.join(sorted(pools_cfg)) or 'none'})",
            f"add [pools.{unknown[0]}] to dspex.toml",
        )
    stats = _start_and_measure(names) if args.start else _manager_stats(names)
    rows = [row(n, pools_cfg[n] if isinstance(pools_cfg[n], Mapping) else {}, stats.get(n)) for n in names]
    if args.json:
        emit_json({"pools": rows, "started_here": bool(args.start)})
        return 0
    _print_table(rows)
    if not args.start:
        sys.stdout.write(
            "\n(pools start lazily inside the process that uses them; --start starts them here to check)\n"
        )
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _print_table(rows: list[dict[str, Any]]) -> None:
    headers = ["name"] + [h for h, _ in COLUMNS]
    table = [headers] + [[_cell(r.get(h)) for h in headers] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    for line in table:
        sys.stdout.write(
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
        )
