"""The execution router: which implementation runs an operation, and a record of what ran.

Two registries, one per implementation:

* the **native registry**: operations dspex runs in the caller's process, each
  with a *capability check* that says whether this particular request (its
  signature's types, adapter, options, module kind) is within what the native
  code supports;
* the **worker registry**: operations run by DSPy in a worker pool (the bridge
  handler, the DSPy module name and the pool name).

Policy. The requested implementation comes from, first that is set: the call's
``impl=``, ``dspex.context(impl=...)``, the config ``[router.ops] <op> = ...``,
the config ``[router] impl``, else ``"auto"``. ``"native"`` / ``"dspy"`` are
obeyed or fail with :class:`ImplementationUnavailable` saying why and what to
install. ``"auto"`` goes native when the native side supports the request, else
to DSPy when it is installed, else fails naming both reasons.

DSPy availability is checked with ``importlib.util.find_spec`` (cheap; the host
never imports DSPy). A pool configured with its own ``python`` is assumed to
have it.

``explain(op, sig, **opts)`` returns the :class:`Decision` without running
anything. Every routed call is recorded per (operation, implementation): calls,
errors, total time and a fixed log-scale latency histogram (bounded memory), and
``stats()`` ranks the operations that spend the most time in DSPy: the
candidates for a native implementation.
"""

from __future__ import annotations

import bisect
import importlib.util
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, ImplementationUnavailable
from .settings import current, shared_config

__all__ = [
    "IMPLS",
    "NATIVE_OPTIONS",
    "Decision",
    "NativeEntry",
    "RouterStats",
    "WorkerEntry",
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

IMPLS = ("auto", "native", "dspy")
INSTALL_HINT = "pip install 'dspex[dspy]'"

# Options the native Predict / ChainOfThought understand (anything else goes to DSPy).
NATIVE_OPTIONS = frozenset(
    {
        "demos", "instructions", "state", "check", "max_tries", "cache", "config",
        "temperature", "max_tokens", "n", "top_p", "stop", "seed", "rollout_id",
    }
)
_NATIVE_ADAPTERS = {"chat", "json", "chatadapter", "jsonadapter"}


# --------------------------------------------------------------------------- registries

Check = Callable[[Any, dict[str, Any]], str | None]  # (signature, options) -> None if supported, else why not


@dataclass(frozen=True)
class NativeEntry:
    target: str  # what runs it, for explain(): "dspex.native.predict.Predict"
    check: Check


@dataclass(frozen=True)
class WorkerEntry:
    handler: str  # bridge handler name
    module: str | None  # DSPy module / optimizer / retriever used
    pool: str = "dspy"


def _adapter_name(adapter: Any) -> str | None:
    if adapter is None:
        return None
    if isinstance(adapter, str):
        return adapter.lower()
    return type(adapter).__name__.lower()


def _check_signature_types(sig: Any) -> str | None:
    if sig is None:
        return None
    try:
        from .native._types import is_supported
    except ImportError:  # pragma: no cover - native core is part of dspex
        return "the native type system is not available"
    for name, f in getattr(sig, "fields", {}).items():
        if not is_supported(f.annotation):
            return f"field {name!r} has type {f.type_name}, which the native adapters do not support"
    return None


def _check_predictor(sig: Any, opts: dict[str, Any]) -> str | None:
    if (why := _check_signature_types(sig)) is not None:
        return why
    adapter = _adapter_name(opts.get("adapter"))
    if adapter is not None and adapter not in _NATIVE_ADAPTERS:
        return f"adapter {adapter!r} has no native implementation (native: chat, json)"
    unknown = sorted(k for k in opts if k not in NATIVE_OPTIONS and k not in ("adapter", "lm", "pool", "inputs"))
    if unknown:
        return f"option(s) {', '.join(unknown)} are not supported by the native predictor"
    return None


def _check_retrieve(sig: Any, opts: dict[str, Any]) -> str | None:
    kind = opts.get("source_kind")
    if kind in (None, "bm25", "colbert", "object", "corpus"):
        return None
    return f"{kind} retrieval needs embeddings in a DSPy worker (dspy.retrievers.Embeddings)"


def _always(sig: Any, opts: dict[str, Any]) -> str | None:
    return None


_NATIVE: dict[str, NativeEntry] = {
    "signature": NativeEntry("dspex.native.signature.signature", _always),
    "compile_signature": NativeEntry("dspex.native.signature.signature", _always),
    "predict": NativeEntry("dspex.native.predict.Predict", _check_predictor),
    "chain_of_thought": NativeEntry("dspex.native.predict.ChainOfThought", _check_predictor),
    "retrieve": NativeEntry("dspex.native.retrieve.BM25 / ColBERTv2 HTTP client", _check_retrieve),
}

_WORKER: dict[str, WorkerEntry] = {
    "predict": WorkerEntry("dspy.run", "Predict"),
    "chain_of_thought": WorkerEntry("dspy.run", "ChainOfThought"),
    "react": WorkerEntry("dspy.call", "ReAct"),
    "program_of_thought": WorkerEntry("dspy.run", "ProgramOfThought"),
    "multi_chain_comparison": WorkerEntry("dspy.run", "MultiChainComparison"),
    "best_of_n": WorkerEntry("dspy.run", "BestOfN"),
    "refine": WorkerEntry("dspy.run", "Refine"),
    "code_act": WorkerEntry("dspy.call", "CodeAct"),
    "optimize": WorkerEntry("dspy.optimize", None, pool="optimizer"),
    "retrieve": WorkerEntry("dspy.embed_search", "dspy.retrievers.Embeddings / dspy.ColBERTv2"),
}


def native_registry() -> dict[str, NativeEntry]:
    return dict(_NATIVE)


def worker_registry() -> dict[str, WorkerEntry]:
    return dict(_WORKER)


# --------------------------------------------------------------------------- policy

def _config() -> dict[str, Any]:
    """The config without a deep copy on every routed call (read-only use here)."""
    return shared_config()[1]


_dspy_lock = threading.Lock()
_dspy_found: bool | None = None


def dspy_available(pool: str = "dspy") -> bool:
    """True when DSPy can run in the ``pool`` workers (find_spec in the host; no import)."""
    global _dspy_found
    try:
        conf = _config().get("pools", {}).get(pool, {})
    except ConfigError:
        conf = {}
    if conf.get("python"):
        return True  # another interpreter: its own business; the worker reports if it is missing
    with _dspy_lock:
        if _dspy_found is None:
            try:
                _dspy_found = importlib.util.find_spec("dspy") is not None
            except (ImportError, ValueError):
                _dspy_found = False
        return _dspy_found


def requested_impl(op: str, impl: str | None = None) -> tuple[str, str]:
    """(requested impl, where it came from)."""
    if impl is not None:
        source = "the call's impl="
    elif (ctx_impl := current().impl) is not None:
        impl, source = ctx_impl, "dspex.context(impl=...)"
    else:
        router_conf = _config().get("router", {}) or {}
        ops = router_conf.get("ops", {}) or {}
        if op in ops:
            impl, source = ops[op], f"config [router.ops] {op}"
        else:
            impl, source = router_conf.get("impl", "auto"), "config [router] impl"
    if impl not in IMPLS:
        raise ConfigError(f"impl must be one of {', '.join(IMPLS)}, not {impl!r} (from {source})")
    return str(impl), source


@dataclass(frozen=True)
class Decision:
    """Where a call goes and why. ``impl`` is "native", "dspy", or "unavailable" (explain only)."""

    op: str
    impl: str
    reason: str
    requested: str = "auto"
    source: str = ""
    alternatives: dict[str, str] = field(default_factory=dict)
    target: str = ""

    def __str__(self) -> str:
        alts = "; ".join(f"{k}: {v}" for k, v in self.alternatives.items())
        text = f"{self.op} -> {self.impl} ({self.target})" if self.target else f"{self.op} -> {self.impl}"
        text += f"\n  why: {self.reason}\n  requested: {self.requested} (from {self.source})"
        if alts:
            text += f"\n  alternatives: {alts}"
        return text


def _native_status(op: str, sig: Any, opts: dict[str, Any]) -> tuple[bool, str]:
    entry = _NATIVE.get(op)
    if entry is None:
        return False, f"no native implementation of {op}"
    why = entry.check(sig, opts)
    if why is not None:
        return False, why
    return True, f"native {entry.target} supports this request"


def _dspy_status(op: str) -> tuple[bool, str]:
    entry = _WORKER.get(op)
    if entry is None:
        return False, f"no DSPy implementation of {op}"
    if not dspy_available(entry.pool):
        return False, f"DSPy is not installed ({INSTALL_HINT})"
    return True, f"DSPy {entry.module or entry.handler} in the {entry.pool!r} pool"


_decisions: dict[Any, Decision] = {}
_decisions_src: list[Any] = [None]  # the config version the memo was built under
_DECISIONS_MAX = 1024


def decide(op: str, sig: Any = None, *, impl: str | None = None, **opts: Any) -> Decision:
    """The implementation a call of ``op`` will use; raises ImplementationUnavailable if none can.

    Decisions are memoised per (op, signature, impl, options, context impl, config):
    the same request routes the same way until the config is reloaded.
    """
    version = shared_config()[0]
    if version != _decisions_src[0]:
        _decisions.clear()  # config loaded, reloaded or reset: decide everything afresh
        _decisions_src[0] = version
    try:
        key: Any = (op, sig, impl, current().impl, tuple(sorted(opts.items())))
        hash(key)
    except TypeError:  # unhashable options (lists of demos, dicts): decide afresh
        key = None
    if key is not None:
        hit = _decisions.get(key)
        if hit is not None:
            return hit
    d = _decide(op, sig, impl, opts)
    if key is not None:
        if len(_decisions) >= _DECISIONS_MAX:
            _decisions.clear()  # rare; a bounded cache without LRU bookkeeping on the hot path
        _decisions[key] = d
    return d


def _decide(op: str, sig: Any, impl: str | None, opts: dict[str, Any]) -> Decision:
    requested, source = requested_impl(op, impl)
    native_ok, native_why = _native_status(op, sig, opts)
    dspy_ok, dspy_why = _dspy_status(op)
    native_target = _NATIVE[op].target if op in _NATIVE else ""
    worker = _WORKER.get(op)
    dspy_target = f"{worker.handler} {worker.module or ''}".strip() if worker else ""
    if requested == "native":
        if not native_ok:
            raise ImplementationUnavailable(
                f"{op} cannot run natively: {native_why}. "
                + (f"Use impl='dspy' or 'auto' ({dspy_why})." if dspy_ok else f"DSPy: {dspy_why}.")
            )
        return Decision(op, "native", f"requested native; {native_why}", requested, source,
                        {"dspy": dspy_why}, native_target)
    if requested == "dspy":
        if not dspy_ok:
            raise ImplementationUnavailable(
                f"{op} cannot run in DSPy: {dspy_why}"
                + (f". It can run natively: use impl='native' or 'auto' ({native_why})." if native_ok else ".")
            )
        return Decision(op, "dspy", f"requested dspy; {dspy_why}", requested, source,
                        {"native": native_why}, dspy_target)
    if native_ok:
        return Decision(op, "native", f"auto: {native_why}", requested, source, {"dspy": dspy_why}, native_target)
    if dspy_ok:
        return Decision(op, "dspy", f"auto: native unsupported ({native_why}); {dspy_why}", requested, source,
                        {"native": native_why}, dspy_target)
    raise ImplementationUnavailable(
        f"{op} cannot run here: native: {native_why}; DSPy: {dspy_why}"
        + ("" if "not installed" in dspy_why else f" ({INSTALL_HINT} for DSPy)")
    )


def explain(op: str, sig: Any = None, *, impl: str | None = None, **opts: Any) -> Decision:
    """Like :func:`decide` but never raises: an impossible call explains as ``impl="unavailable"``."""
    try:
        return decide(op, sig, impl=impl, **opts)
    except ImplementationUnavailable as exc:
        requested, source = requested_impl(op, impl)
        return Decision(op, "unavailable", str(exc), requested, source,
                        {"native": _native_status(op, sig, opts)[1], "dspy": _dspy_status(op)[1]})


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
         "native_exists": r["op"] in _NATIVE}
        for r in rows
        if r["impl"] == "dspy"
    ]
    candidates.sort(key=lambda c: -float(c["total_s"]))
    return RouterStats(rows, candidates)
