"""Routing policy: which implementation runs a call, and why (``decide`` / ``explain``).

The requested implementation comes from, first that is set: the call's ``impl=``,
``dspex.context(impl=...)``, the config ``[router.ops] <op> = ...``, the config
``[router] impl``, else ``"auto"``. ``"native"`` / ``"dspy"`` are obeyed or fail with
:class:`ImplementationUnavailable` saying why and what to install. ``"auto"`` goes
native when the native side supports the request, else to DSPy when it is installed,
else fails naming both reasons.

DSPy availability is checked with ``importlib.util.find_spec`` (cheap; the host never
imports DSPy). A pool configured with its own ``python`` is assumed to have it.

Everything a :class:`Decision` says comes from the op's row in ``table.OPS``: the
native target, or the DSPy module, the pool and the exact bridge handlers the
dispatcher will send (``form="call"``: one call; ``form="handle"``: a reusable handle
made once and called many times, what ``predictor()`` / ``chain_of_thought()`` return).
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, ImplementationUnavailable
from ..settings import current, shared_config
from .table import OPS, op

__all__ = [
    "FORMS",
    "IMPLS",
    "INSTALL_HINT",
    "Decision",
    "decide",
    "dspy_available",
    "explain",
    "requested_impl",
]

IMPLS = ("auto", "native", "dspy")
FORMS = ("call", "handle")
INSTALL_HINT = "pip install 'dspex[dspy]'"


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


def requested_impl(op_name: str, impl: str | None = None) -> tuple[str, str]:
    """(requested impl, where it came from)."""
    if impl is not None:
        source = "the call's impl="
    elif (ctx_impl := current().impl) is not None:
        impl, source = ctx_impl, "dspex.context(impl=...)"
    else:
        router_conf = _config().get("router", {}) or {}
        ops = router_conf.get("ops", {}) or {}
        if op_name in ops:
            impl, source = ops[op_name], f"config [router.ops] {op_name}"
        else:
            impl, source = router_conf.get("impl", "auto"), "config [router] impl"
    if impl not in IMPLS:
        raise ConfigError(f"impl must be one of {', '.join(IMPLS)}, not {impl!r} (from {source})")
    return str(impl), source


@dataclass(frozen=True)
class Decision:
    """Where a call goes and why. ``impl`` is "native", "dspy", or "unavailable" (explain only).

    For ``impl="dspy"``: ``handlers`` are the bridge handlers the call sends, in order, to
    the pool ``pool``; ``module`` the DSPy module they build.
    """

    op: str
    impl: str
    reason: str
    requested: str = "auto"
    source: str = ""
    alternatives: dict[str, str] = field(default_factory=dict)
    target: str = ""
    handlers: tuple[str, ...] = ()
    pool: str = ""
    module: str | None = None
    form: str = "call"

    def __str__(self) -> str:
        alts = "; ".join(f"{k}: {v}" for k, v in self.alternatives.items())
        text = f"{self.op} -> {self.impl} ({self.target})" if self.target else f"{self.op} -> {self.impl}"
        text += f"\n  why: {self.reason}\n  requested: {self.requested} (from {self.source})"
        if alts:
            text += f"\n  alternatives: {alts}"
        return text


def _native_status(op_name: str, sig: Any, opts: dict[str, Any]) -> tuple[bool, str]:
    entry = op(op_name).native
    if entry is None:
        return False, f"no native implementation of {op_name}"
    why = entry.check(sig, opts)
    if why is not None:
        return False, why
    return True, f"native {entry.target} supports this request"


def _dspy_status(op_name: str) -> tuple[bool, str]:
    entry = op(op_name).worker
    if entry is None:
        return False, f"no DSPy implementation of {op_name}"
    if not dspy_available(entry.pool):
        return False, f"DSPy is not installed ({INSTALL_HINT})"
    return True, f"DSPy {entry.module or entry.handlers[0]} in the {entry.pool!r} pool"


def _form(op_name: str, form: str | None) -> str:
    if form is None:
        return "handle" if op(op_name).handle_default else "call"
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, not {form!r}")
    return form


_decisions: dict[Any, Decision] = {}
_decisions_src: list[Any] = [None]  # the config version the memo was built under
_DECISIONS_MAX = 1024


def decide(op_name: str, sig: Any = None, *, impl: str | None = None, form: str | None = None,
           **opts: Any) -> Decision:
    """The implementation a call of ``op`` will use; raises ImplementationUnavailable if none can.

    Decisions are memoised per (op, signature, impl, form, options, context impl, config):
    the same request routes the same way until the config is reloaded.
    """
    version = shared_config()[0]
    if version != _decisions_src[0]:
        _decisions.clear()  # config loaded, reloaded or reset: decide everything afresh
        _decisions_src[0] = version
    try:
        key: Any = (op_name, sig, impl, form, current().impl, tuple(sorted(opts.items())))
        hash(key)
    except TypeError:  # unhashable options (lists of demos, dicts): decide afresh
        key = None
    if key is not None:
        hit = _decisions.get(key)
        if hit is not None:
            return hit
    d = _decide(op_name, sig, impl, _form(op_name, form), opts)
    if key is not None:
        if len(_decisions) >= _DECISIONS_MAX:
            _decisions.clear()  # rare; a bounded cache without LRU bookkeeping on the hot path
        _decisions[key] = d
    return d


def _dspy_decision(op_name: str, reason: str, requested: str, source: str, alternatives: dict[str, str],
                   form: str, opts: dict[str, Any]) -> Decision:
    w = op(op_name).worker
    assert w is not None  # _dspy_status said it exists
    handlers = w.handlers_for(opts, handle=form == "handle")
    target = f"{' + '.join(handlers)} {w.module or ''} in pool {w.pool!r}".replace("  ", " ")
    return Decision(op_name, "dspy", reason, requested, source, alternatives, target, handlers, w.pool,
                    w.module, form)


def _decide(op_name: str, sig: Any, impl: str | None, form: str, opts: dict[str, Any]) -> Decision:
    requested, source = requested_impl(op_name, impl)
    native_ok, native_why = _native_status(op_name, sig, opts)
    dspy_ok, dspy_why = _dspy_status(op_name)
    entry = OPS.get(op_name)
    native_target = entry.native.target if entry is not None and entry.native is not None else ""
    if requested == "native":
        if not native_ok:
            raise ImplementationUnavailable(
                f"{op_name} cannot run natively: {native_why}. "
                + (f"Use impl='dspy' or 'auto' ({dspy_why})." if dspy_ok else f"DSPy: {dspy_why}.")
            )
        return Decision(op_name, "native", f"requested native; {native_why}", requested, source,
                        {"dspy": dspy_why}, native_target, form=form)
    if requested == "dspy":
        if not dspy_ok:
            raise ImplementationUnavailable(
                f"{op_name} cannot run in DSPy: {dspy_why}"
                + (f". It can run natively: use impl='native' or 'auto' ({native_why})." if native_ok else ".")
            )
        return _dspy_decision(op_name, f"requested dspy; {dspy_why}", requested, source, {"native": native_why},
                              form, opts)
    if native_ok:
        return Decision(op_name, "native", f"auto: {native_why}", requested, source, {"dspy": dspy_why},
                        native_target, form=form)
    if dspy_ok:
        return _dspy_decision(op_name, f"auto: native unsupported ({native_why}); {dspy_why}", requested, source,
                              {"native": native_why}, form, opts)
    raise ImplementationUnavailable(
        f"{op_name} cannot run here: native: {native_why}; DSPy: {dspy_why}"
        + ("" if "not installed" in dspy_why else f" ({INSTALL_HINT} for DSPy)")
    )


def explain(op_name: str, sig: Any = None, *, impl: str | None = None, form: str | None = None,
            **opts: Any) -> Decision:
    """Like :func:`decide` but never raises for routing: an impossible call is ``impl="unavailable"``."""
    try:
        return decide(op_name, sig, impl=impl, form=form, **opts)
    except ImplementationUnavailable as exc:
        requested, source = requested_impl(op_name, impl)
        return Decision(op_name, "unavailable", str(exc), requested, source,
                        {"native": _native_status(op_name, sig, opts)[1], "dspy": _dspy_status(op_name)[1]},
                        form=_form(op_name, form))
