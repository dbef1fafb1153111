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

# The table's columns after the name; JSON rows carry them plus handlers, affinity and raw stats.
COLUMNS = ["size", "state", "workers", "queue", "in_flight", "calls", "errors", "restarts", "recycles",
           "p50_ms", "p99_ms"]  # fmt: skip


def _ms(latency: Any, key: str) -> float | None:
    if isinstance(latency, Mapping) and isinstance(latency.get(key), (int, float)):
        return round(float(latency[key]) * 1000, 3)
    return None


def row(name: str, config: Mapping[str, Any], stats: Mapping[str, Any] | None) -> dict[str, Any]:
    """One pool as a flat dict: name, the COLUMNS, started, handlers, and the raw stats."""
    stats = dict(stats or {})
    workers = stats.get("workers")
    ready = (
        sum(1 for w in workers if isinstance(w, Mapping) and w.get("state") == "ready")
        if isinstance(workers, list)
        else None
    )
    state = stats.get("state") or "not started"
    return {
        "name": name,
        "size": stats.get("size", config.get("size")),
        "state": state,
        "started": state == "running",
        "workers": ready,
        "queue": stats.get("queue_depth"),
        "in_flight": stats.get("in_flight"),
        "calls": stats.get("calls"),
        "errors": stats.get("errors"),
        "restarts": stats.get("restarts"),
        "recycles": stats.get("recycles"),
        "p50_ms": _ms(stats.get("latency_s"), "p50"),
        "p99_ms": _ms(stats.get("latency_s"), "p99"),
        "handlers": list(stats.get("handlers") or config.get("handlers") or []),
        "affinity": stats.get("affinity", config.get("affinity")),
        "stats": to_jsonable(stats),
    }


def _manager_stats(names: list[str]) -> dict[str, Any]:
    """Stats of pools already running in this process (none unless something started them)."""
    module = sys.modules.get("dspex.pool._manager")
    if module is None:  # nothing imported the pool layer: nothing is running; stay light
        return {}
    try:
        stats = module.manager().stats()
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
    headers = ["name", *COLUMNS]
    table = [headers] + [[_cell(r.get(h)) for h in headers] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    for line in table:
        sys.stdout.write(
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
        )
