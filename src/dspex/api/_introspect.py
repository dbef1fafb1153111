"""Introspection: where a call would run and why (``explain``), and the router's stats."""

from __future__ import annotations

from typing import Any

from .. import router
from ._retrieve import _source
from ._wire import _MODULE_OP, _OP_MODULE, _op_of, _sig


def explain(op: str, sig: Any = None, /, *, impl: str | None = None, **opts: Any) -> router.Decision:
    """Which implementation a call of ``op`` would use, and why (never raises for routing)."""
    op = _op_of(op) if op in _OP_MODULE or op.removeprefix("dspy.") in _MODULE_OP else op
    s = _sig(sig) if sig is not None else None
    if op == "retrieve" and "source" in opts:
        opts["source_kind"] = _source(opts.pop("source"))[0]
    if "tools" in opts:
        opts["tools"] = list(opts["tools"])
    return router.explain(op, s, impl=impl, **opts)


def router_stats() -> router.RouterStats:
    """Calls and latency per (operation, implementation); ``candidates`` ranks DSPy time."""
    return router.stats()
