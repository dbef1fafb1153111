"""What travels to a DSPy worker: op -> module names, signatures, LM specs, adapters.

The signature wire form is read back by bridge/_convert.py; see docs/internals.md.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

from ..errors import ImplementationUnavailable
from ..native._memo import Memo
from ..settings import current

_OP_MODULE = {
    "predict": "Predict",
    "chain_of_thought": "ChainOfThought",
    "react": "ReAct",
    "program_of_thought": "ProgramOfThought",
    "multi_chain_comparison": "MultiChainComparison",
    "best_of_n": "BestOfN",
    "refine": "Refine",
    "code_act": "CodeAct",
}
_MODULE_OP = {v: k for k, v in _OP_MODULE.items()}


def _op_of(kind: str) -> str:
    key = kind.removeprefix("dspy.")
    if key in _MODULE_OP:
        return _MODULE_OP[key]
    key = key.lower()
    aliases = {"cot": "chain_of_thought", "chainofthought": "chain_of_thought", "pot": "program_of_thought"}
    key = aliases.get(key, key)
    if key not in _OP_MODULE:
        raise ValueError(f"unknown predictor type {kind!r}; one of {', '.join(_OP_MODULE)}")
    return key


def _sig(spec: Any) -> Any:
    from ..native.signature import ensure_signature

    return ensure_signature(spec)


# Annotations -> strings DSPy's signature parser reads back (custom classes travel by import path).
def _ann_str(ann: Any, custom: dict[str, str]) -> str:
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
            return f"Optional[{_ann_str(parts[0], custom)}]"
        return f"Union[{', '.join(_ann_str(a, custom) for a in args)}]"
    if origin is not None:
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{', '.join('...' if a is ... else _ann_str(a, custom) for a in args)}]" if args else base
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
            name if f.annotation is str else f"{name}: {_ann_str(f.annotation, custom)}" for name, f in fields.items()
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


def _lm_spec(lm: Any) -> Any:
    """What travels to a worker for ``lm`` (resolved like the native side when None)."""
    if lm is None:
        lm = current().lm
    if lm is None:
        from ..native.predict import _fallback_lm

        lm = _fallback_lm()
    if isinstance(lm, (dict, str)):
        return lm
    to_spec = getattr(lm, "to_spec", None)
    if callable(to_spec):
        return to_spec()
    raise ImplementationUnavailable(
        f"{type(lm).__name__} cannot travel to a DSPy worker (it has no to_spec()); "
        "use a dspex.LM, an LM spec dict, or impl='native'"
    )


def _adapter_wire(adapter: Any) -> str | None:
    if adapter is None:
        adapter = current().adapter
    if adapter is None:
        return None
    if isinstance(adapter, str):
        return adapter
    name = type(adapter).__name__.lower().removesuffix("adapter")
    if name not in ("chat", "json", "xml"):
        raise ImplementationUnavailable(f"adapter {type(adapter).__name__} has no DSPy counterpart in the bridge")
    return name
