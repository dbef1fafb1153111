"""Introspection: where a call would run and why (``explain``), and the router's stats."""

from __future__ import annotations

from typing import Any

from .. import router
from ..router.payload import as_signature
from ..router.retrieval import source_of
from ..wire import MODULE_OP, OP_MODULE, op_of


def explain(op: str, sig: Any = None, /, *, impl: str | None = None, form: str | None = None,
            **opts: Any) -> router.Decision:
    """Which implementation a call of ``op`` would use, and why (never raises for routing).

    ``form="call"`` explains one call (``predict()``, a pipeline step), ``"handle"`` a
    reusable handle (what ``predictor()`` / ``chain_of_thought()`` / ``react()`` return);
    the default is what the API function named ``op`` does.
    """
    op = op_of(op) if op in OP_MODULE or op.removeprefix("dspy.") in MODULE_OP else op
    s = as_signature(sig) if sig is not None else None
    if op == "retrieve" and "source" in opts:
        opts["source_kind"] = source_of(opts.pop("source"))[0]
    if "tools" in opts:
        opts["tools"] = list(opts["tools"])
    return router.explain(op, s, impl=impl, form=form, **opts)


def router_stats() -> router.RouterStats:
    """Calls and latency per (operation, implementation); ``candidates`` ranks DSPy time."""
    return router.stats()
