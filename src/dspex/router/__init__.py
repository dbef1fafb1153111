"""The execution router: every operation passes through it.

    table.py     the operation table: per op, the native target and capability check,
                 the DSPy module, the bridge handlers and the pool
    policy.py    decide() / explain(): which implementation, and why (from the table)
    dispatch.py  the dispatcher: runs a Decision natively or in a pool, sync and async
    payload.py   what travels to a worker (signature, LM spec, adapter, module payload)
    results.py   what comes back (Prediction), from_remote(): worker errors -> dspex errors
    retrieval.py retrieval sources, native retrieval, the worker request
    tools.py     host functions as worker tools; pools.py: which pool runs a call
    stats.py     calls and latency per (op, impl), candidates for a native implementation

The API (``dspex.api``) and the pipelines (``dspex.pipeline``) are thin layers over
``decide`` + the dispatcher, so a pipeline step and the same op called through the API
send identical payloads, and ``explain()`` names what actually runs.
"""

from __future__ import annotations

from .policy import FORMS, IMPLS, INSTALL_HINT, Decision, decide, dspy_available, explain, requested_impl
from .stats import RouterStats, record, reset_stats, stats, track
from .table import NATIVE_OPTIONS, OPS, NativeImpl, Op, WorkerImpl

__all__ = [
    "FORMS",
    "IMPLS",
    "INSTALL_HINT",
    "NATIVE_OPTIONS",
    "OPS",
    "Decision",
    "NativeImpl",
    "Op",
    "RouterStats",
    "WorkerImpl",
    "decide",
    "dspy_available",
    "explain",
    "native_registry",
    "record",
    "requested_impl",
    "reset_stats",
    "stats",
    "track",
    "worker_registry",
]


def native_registry() -> dict[str, NativeImpl]:
    """op -> its native side, for the ops that have one."""
    return {name: o.native for name, o in OPS.items() if o.native is not None}


def worker_registry() -> dict[str, WorkerImpl]:
    """op -> its DSPy side, for the ops that have one."""
    return {name: o.worker for name, o in OPS.items() if o.worker is not None}
