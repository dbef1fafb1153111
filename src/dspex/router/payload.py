"""What travels to a DSPy worker, built once for the API and the pipelines alike.

``module_payload(op, sig, lm, adapter, opts)`` is the whole request of a predictor op
(``dspy.run``'s keyword arguments without the inputs; ``dspy.create`` + ``dspy.call``
take the same pieces); ``signature_wire`` the signature with its instructions and field
descriptions; ``lm_spec`` the LM through ``LM.to_spec()`` (never a raw config table, so
no secret travels); ``adapter_wire`` the one adapter spelling (``dspex.wire``).
``native_module`` builds the same request as a native Predict / ChainOfThought.
The signature wire form is read back by bridge/_convert.py; see docs/internals.md.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

from ..errors import ImplementationUnavailable
from ..native._memo import Memo
from ..settings import current
from ..wire import BRIDGE_ADAPTERS, NATIVE_ADAPTERS, OP_MODULE, adapter_name, check_lm_spec

__all__ = ["adapter_wire", "ann_str", "as_signature", "lm_spec", "module_payload", "native_adapter",
           "native_module", "signature_wire"]


def as_signature(spec: Any) -> Any:
    from ..native.signature import ensure_signature

    return ensure_signature(spec)


# Annotations -> strings DSPy's signature parser reads back (custom classes travel by import path).
def ann_str(ann: Any, custom: dict[str, str]) -> str:
    if ann is str or ann is None:
        return "str" if ann is str else "None"
    if ann is type(None):
        return "None"
    if ann is Any:
        return "Any"
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin is typing.Union or (origin is not None and type(ann).__name__ == "UnionType"):
        parts = [a for a in args if a is not type(None)]
        if len(parts) == 1 and len(args) == 2:
            return f"Optional[{ann_str(parts[0], custom)}]"
        return f"Union[{', '.join(ann_str(a, custom) for a in args)}]"
    if origin is not None:
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{', '.join('...' if a is ... else ann_str(a, custom) for a in args)}]" if args else base
    if isinstance(ann, type):
        if ann.__module__ == "builtins":
            return ann.__name__
        if "<locals>" in ann.__qualname__:
            raise ImplementationUnavailable(
                f"type {ann.__qualname__} is defined inside a function, so a DSPy worker cannot import it; "
                "define it at module level"
            )
        custom[ann.__name__] = f"{ann.__module__}:{ann.__qualname__}"
        return ann.__name__
    return "Any"


_wires: Memo[dict[str, Any]] = Memo(256)


def signature_wire(sig: Any) -> dict[str, Any]:
    """A native Signature as the bridge's signature wire form (see bridge/_convert.py).

    Cached per signature (signatures are immutable values); treat the result as read-only.
    """
    return _wires.get(sig, lambda: _signature_wire(sig))


def _signature_wire(sig: Any) -> dict[str, Any]:
    from ..native.signature import default_instructions, infer_prefix

    custom: dict[str, str] = {}

    def side(fields: Mapping[str, Any]) -> str:
        return ", ".join(
            name if f.annotation is str else f"{name}: {ann_str(f.annotation, custom)}" for name, f in fields.items()
        )

    wire: dict[str, Any] = {"spec": f"{side(sig.input_fields)} -> {side(sig.output_fields)}"}
    if sig.instructions and sig.instructions != default_instructions(sig.input_fields, sig.output_fields):
        wire["instructions"] = sig.instructions
    fields: dict[str, dict[str, str]] = {}
    for name, f in sig.fields.items():
        extra = {}
        if not f.has_default_desc:
            extra["desc"] = f.desc
        if f.prefix != infer_prefix(name) + ":":
            extra["prefix"] = f.prefix
        if extra:
            fields[name] = extra
    if fields:
        wire["fields"] = fields
    if custom:
        wire["custom_types"] = custom
    return wire


def lm_spec(lm: Any) -> Any:
    """What travels to a worker for ``lm``, resolved like the native side when None: the
    context's LM, the config ``[lm]`` LM, else the embedded model (always ``to_spec()``)."""
    if lm is None:
        lm = current().lm
    if lm is None:
        from ..native.predict import _fallback_lm

        lm = _fallback_lm()
    if isinstance(lm, str):
        return lm
    if isinstance(lm, Mapping):
        check_lm_spec(lm)
        return dict(lm)
    to_spec = getattr(lm, "to_spec", None)
    if callable(to_spec):
        spec = to_spec()
        check_lm_spec(spec)
        return spec
    raise ImplementationUnavailable(
        f"{type(lm).__name__} cannot travel to a DSPy worker (it has no to_spec()); "
        "use a dspex.LM, an LM spec dict, or impl='native'"
    )


def adapter_wire(adapter: Any) -> str | None:
    """The adapter's name as the bridge reads it (the context's adapter when None)."""
    if adapter is None:
        adapter = current().adapter
    name = adapter_name(adapter)
    if name is not None and name not in BRIDGE_ADAPTERS and not isinstance(adapter, str):
        raise ImplementationUnavailable(f"adapter {type(adapter).__name__} has no DSPy counterpart in the bridge")
    return name


def native_adapter(adapter: Any) -> Any:
    """An adapter object for the native predictor (names become ChatAdapter / JSONAdapter)."""
    if adapter is None or not isinstance(adapter, str):
        return adapter
    from ..native.adapters import ChatAdapter, JSONAdapter

    name = adapter_name(adapter)
    if name not in NATIVE_ADAPTERS:
        raise ImplementationUnavailable(f"adapter {adapter!r} has no native implementation")
    return ChatAdapter() if name == "chat" else JSONAdapter()


def native_module(op: str, sig: Any, lm: Any, adapter: Any, opts: dict[str, Any]) -> Any:
    """The native Predict / ChainOfThought for a predictor op's request."""
    from ..native.predict import ChainOfThought, Predict

    kw = dict(opts)
    state = kw.pop("state", None)
    cls = ChainOfThought if op == "chain_of_thought" else Predict
    mod = cls(sig, lm=lm, adapter=native_adapter(adapter), **kw)
    if state:
        mod.load_state(state)
    return mod


def module_payload(op: str, sig: Any, lm: Any, adapter: Any, opts: dict[str, Any],
                   tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Keyword arguments of ``dspy.run`` (minus ``inputs``) for a predictor op's request."""
    options = dict(opts)
    state = options.pop("state", None)
    demos = options.pop("demos", None)
    instructions = options.pop("instructions", None)
    if instructions:
        sig = sig.with_instructions(instructions)
    if demos and state is None:
        # Demos travel as program state, in the DSPy JSON shape both sides read.
        state = native_module(op if op in ("predict", "chain_of_thought") else "predict", sig, None, None,
                              {"demos": demos}).dump_state()
    config = options.pop("config", None) or {}
    options.update(config)
    payload: dict[str, Any] = {
        "module": OP_MODULE[op],
        "signature": signature_wire(sig),
        "options": options or None,
        "adapter": adapter_wire(adapter),
        "state": state,
        "lm": lm_spec(lm),
        "tools": tools or None,
        # Token usage only when someone collects it (a dspex.context() is open).
        "usage": bool(current().usage_sinks),
    }
    return payload
