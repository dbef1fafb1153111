"""Signatures, examples and values across the process boundary (worker side).

Signature wire forms (what the host sends):

* ``"question -> answer: int"``: DSPy's string syntax;
* ``{"spec": "...", "instructions": str | None, "fields": {name: {"desc", "prefix"}},
  "custom_types": {"Name": "package.module:Qualname"}}``: the string plus what a
  string cannot say (field descriptions, importable custom types).

Values going back are made msgpack-friendly by :func:`to_plain`: plain scalars,
lists and dicts pass through with their types (an int stays an int), pydantic
models become ``model_dump()`` dicts, anything else becomes its ``str``.
"""

from __future__ import annotations

import enum
import importlib
import json
from typing import Any

from ..native._memo import Memo

__all__ = ["build_signature", "import_object", "prediction_to_dict", "to_plain"]

_SIG_CACHE_SIZE = 256
_sig_cache: Memo[Any] = Memo(_SIG_CACHE_SIZE)


def import_object(path: str) -> Any:
    """``"package.module:attr.sub"`` (or ``"package.module.attr"``) -> the object."""
    if ":" in path:
        mod_name, _, qual = path.partition(":")
    else:
        mod_name, _, qual = path.rpartition(".")
    if not mod_name or not qual:
        raise ValueError(f"{path!r} is not an import path like 'package.module:name'")
    obj: Any = importlib.import_module(mod_name)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def _make_signature(wire: Any) -> Any:
    import dspy

    if isinstance(wire, str):
        return dspy.Signature(wire)
    if not isinstance(wire, dict) or not isinstance(wire.get("spec"), str):
        raise TypeError(f"a signature is a string or a dict with 'spec', not {wire!r:.200}")
    custom = {name: import_object(path) for name, path in (wire.get("custom_types") or {}).items()}
    sig = dspy.Signature(wire["spec"], custom_types=custom or None)
    if wire.get("instructions"):
        sig = sig.with_instructions(wire["instructions"])
    for name, extra in (wire.get("fields") or {}).items():
        if name not in sig.fields:
            raise ValueError(f"signature {wire['spec']!r} has no field {name!r}")
        updates = {k: v for k, v in extra.items() if k in ("desc", "prefix") and v is not None}
        if updates:
            sig = sig.with_updated_fields(name, **updates)
    return sig


def build_signature(wire: Any) -> Any:
    """A DSPy signature class from a wire form (cached; signatures are immutable)."""
    key = wire if isinstance(wire, str) else json.dumps(wire, sort_keys=True, default=str)
    return _sig_cache.get(key, lambda: _make_signature(wire))


def to_plain(value: Any, _depth: int = 0) -> Any:
    """A msgpack-friendly copy of ``value`` that keeps scalar types."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if _depth > 50:
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_plain(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_plain(v, _depth + 1) for v in value]
    if isinstance(value, enum.Enum):
        return to_plain(value.value, _depth + 1)
    dump = getattr(value, "model_dump", None)
    if callable(dump):  # pydantic models, dspy types (History, Image, ...)
        try:
            return to_plain(dump(), _depth + 1)
        except Exception:
            return str(value)
    to_dict = getattr(value, "toDict", None)
    if callable(to_dict):  # dspy.Example / Prediction
        return to_plain(to_dict(), _depth + 1)
    return str(value)


def prediction_to_dict(pred: Any) -> dict[str, Any]:
    """The output fields of a ``dspy.Prediction`` as plain values."""
    if pred is None:
        return {}
    if isinstance(pred, dict):
        return to_plain(pred)
    items = getattr(pred, "items", None)
    if callable(items):
        return {str(k): to_plain(v) for k, v in items()}
    return {"output": to_plain(pred)}
