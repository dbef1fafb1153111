"""The operation table: for every op, what runs it natively and what runs it in a worker.

One row per op (:class:`Op`): the native side (what runs it, and a *capability check*
saying whether this request is within what it supports) and the worker side (the DSPy
module, the bridge handlers a call sends, the pool). The policy (``policy.py``) decides
from these rows, ``explain()`` reads them, and the dispatcher (``dispatch.py``) sends
exactly the handlers named here, so what explain() says is what runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..wire import NATIVE_ADAPTERS, OP_MODULE, H, adapter_name

__all__ = ["NATIVE_OPTIONS", "OPS", "Check", "NativeImpl", "Op", "WorkerImpl", "op"]

Check = Callable[[Any, dict[str, Any]], str | None]  # (signature, options) -> None if supported, else why not

# Options the native Predict / ChainOfThought understand (anything else goes to DSPy).
NATIVE_OPTIONS = frozenset(
    {
        "demos", "instructions", "state", "check", "max_tries", "cache", "config",
        "temperature", "max_tokens", "n", "top_p", "stop", "seed", "rollout_id",
        "check_inputs",  # native Predict's input checks ("error" | "warn" | "off")
    }
)
_ROUTING_KEYS = ("adapter", "lm", "pool", "inputs", "form")


@dataclass(frozen=True)
class NativeImpl:
    target: str  # what runs it, for explain(): "dspex.native.predict.Predict"
    check: Check


@dataclass(frozen=True)
class WorkerImpl:
    module: str | None  # the DSPy module / optimizer / retriever it uses
    handlers: tuple[str, ...]  # what one call sends, in order
    handle: tuple[str, ...] = ()  # what a reusable handle (predictor()) sends: made once, then called
    pool: str = "dspy"
    select: Callable[[dict[str, Any]], tuple[str, ...]] | None = None  # handlers chosen by the options

    def handlers_for(self, opts: dict[str, Any], handle: bool = False) -> tuple[str, ...]:
        if handle and self.handle:
            return self.handle
        return self.select(opts) if self.select is not None else self.handlers


@dataclass(frozen=True)
class Op:
    name: str
    native: NativeImpl | None = None
    worker: WorkerImpl | None = None
    handle_default: bool = False  # the API function of this op returns a handle (chain_of_thought, react)


# --------------------------------------------------------------------------- capability checks

def _check_signature_types(sig: Any) -> str | None:
    if sig is None:
        return None
    from ..native._types import is_supported

    for name, f in getattr(sig, "fields", {}).items():
        if not is_supported(f.annotation):
            return f"field {name!r} has type {f.type_name}, which the native adapters do not support"
    return None


def _check_predictor(sig: Any, opts: dict[str, Any]) -> str | None:
    if (why := _check_signature_types(sig)) is not None:
        return why
    adapter = adapter_name(opts.get("adapter"))
    if adapter is not None and adapter not in NATIVE_ADAPTERS:
        return f"adapter {adapter!r} has no native implementation (native: {', '.join(sorted(NATIVE_ADAPTERS))})"
    unknown = sorted(k for k in opts if k not in NATIVE_OPTIONS and k not in _ROUTING_KEYS)
    if unknown:
        return f"option(s) {', '.join(unknown)} are not supported by the native predictor"
    return None


def _check_retrieve(sig: Any, opts: dict[str, Any]) -> str | None:
    kind = opts.get("source_kind")
    if kind in (None, "bm25", "colbert", "object", "corpus"):
        return None
    return f"{kind} retrieval needs embeddings in a DSPy worker (dspy.retrievers.Embeddings)"


def _check_module(sig: Any, opts: dict[str, Any]) -> str | None:
    """A composite program runs natively when every predictor in it can (dspex.native.module)."""
    program = opts.get("program")
    if program is None:
        return None
    try:
        from ..native.module import native_reason  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return "composite programs (dspex.Module) are not available in this install"
    reason: str | None = native_reason(program)
    return reason


def _retrieve_handlers(opts: dict[str, Any]) -> tuple[str, ...]:
    return (H.COLBERT_SEARCH,) if opts.get("source_kind") == "colbert" else (H.EMBED_SEARCH,)


def _always(sig: Any, opts: dict[str, Any]) -> str | None:
    return None


# --------------------------------------------------------------------------- the table

_SIG = NativeImpl("dspex.native.signature.signature", _always)
_RUN = (H.RUN,)
_HANDLE = (H.CREATE, H.CALL)


def _module_op(name: str, native: NativeImpl | None = None, handle_default: bool = True) -> Op:
    return Op(name, native, WorkerImpl(OP_MODULE[name], _RUN, _HANDLE), handle_default)


OPS: dict[str, Op] = {
    "signature": Op("signature", _SIG),
    "compile_signature": Op("compile_signature", _SIG),
    "predict": _module_op("predict", NativeImpl("dspex.native.predict.Predict", _check_predictor), False),
    "chain_of_thought": _module_op("chain_of_thought",
                                   NativeImpl("dspex.native.predict.ChainOfThought", _check_predictor)),
    "react": _module_op("react"),
    "program_of_thought": _module_op("program_of_thought"),
    "multi_chain_comparison": _module_op("multi_chain_comparison"),
    "best_of_n": _module_op("best_of_n"),
    "refine": _module_op("refine"),
    "code_act": _module_op("code_act"),
    "optimize": Op("optimize", None, WorkerImpl(None, (H.OPTIMIZE,), pool="optimizer")),
    "retrieve": Op(
        "retrieve",
        NativeImpl("dspex.native.retrieve.BM25 / ColBERTv2 HTTP client", _check_retrieve),
        WorkerImpl("dspy.retrievers.Embeddings / dspy.ColBERTv2", (H.EMBED_SEARCH,), select=_retrieve_handlers),
    ),
    "module": Op("module", NativeImpl("dspex.native.module.Module", _check_module),
                 WorkerImpl("the program's forward() with DSPy predictors", (H.PROGRAM,))),
}


def op(name: str) -> Op:
    """The table row of ``name`` (an empty row for an op nothing implements)."""
    return OPS.get(name) or Op(name)
