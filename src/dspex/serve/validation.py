"""Checking a request body against an endpoint's input fields: every problem, by field.

``check_inputs(target, body)`` returns the inputs to call with, or raises
``InvalidInputs`` whose ``fields`` name each field and what is wrong with it (the 422
body). Values stay JSON values; only pydantic-typed fields are turned into their model.
"""

from __future__ import annotations

import math
import types
import typing
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .targets import Target

__all__ = ["InvalidInputs", "check_inputs", "check_value"]

_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
               type(None): "null", list: "an array", dict: "an object"}


class InvalidInputs(ValueError):
    """The body does not fit the signature; ``fields`` is ``[{"field", "problem"}]``."""

    def __init__(self, fields: list[dict[str, str]]):
        self.fields = fields
        super().__init__("; ".join(f"{f['field']}: {f['problem']}" for f in fields))


def _kind(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def check_value(tp: Any, value: Any, where: str) -> tuple[str | None, Any]:
    """(problem or None, value to use) for one value of annotation ``tp``."""
    if tp is None or tp is typing.Any or tp is object:
        return None, value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            problem, out = check_value(arm, value, where)
            if problem is None:
                return None, out
        names = " or ".join(_JSON_NAMES.get(a, str(a).replace("typing.", "")) for a in args)
        return f"expected {names}, got {_kind(value)}", value
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return None, value
        return f"expected one of {list(args)}, got {value!r}"[:300], value
    if tp is bool:
        return (None, value) if isinstance(value, bool) else (f"expected a boolean, got {_kind(value)}", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return None, value
        return f"expected an integer, got {_kind(value)}", value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return None, value
        return f"expected a number, got {_kind(value)}", value
    if tp is str:
        return (None, value) if isinstance(value, str) else (f"expected a string, got {_kind(value)}", value)
    if origin in (list, set, frozenset, tuple) or tp in (list, set, frozenset, tuple):
        if not isinstance(value, list):
            return f"expected an array, got {_kind(value)}", value
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return f"expected an array of {len(args)} items, got {len(value)}", value
            item_types = list(args)
        else:
            item_types = [args[0] if args else None] * len(value)
        out = []
        for i, (item_tp, item) in enumerate(zip(item_types, value, strict=True)):
            problem, v = check_value(item_tp, item, f"{where}[{i}]")
            if problem is not None:
                return f"item {i}: {problem}", value
            out.append(v)
        return None, out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            return f"expected an object, got {_kind(value)}", value
        if len(args) == 2:
            for k, v in value.items():
                problem, _ = check_value(args[1], v, f"{where}.{k}")
                if problem is not None:
                    return f"key {k!r}: {problem}", value
        return None, value
    validate = getattr(tp, "model_validate", None)  # pydantic
    if callable(validate):
        try:
            return None, validate(value)
        except Exception as exc:
            first = str(exc).splitlines()
            return f"does not fit {getattr(tp, '__name__', tp)}: {' '.join(first[:3])}"[:300], value
    if isinstance(tp, type) and not isinstance(value, tp) and tp in _JSON_NAMES:
        return f"expected {_JSON_NAMES[tp]}, got {_kind(value)}", value
    return None, value  # a custom type we cannot check from JSON: the program decides


def check_inputs(target: Target, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInputs([{"field": "(body)", "problem": f"expected a JSON object of input fields, got {_kind(body)}"}])
    problems: list[dict[str, str]] = []
    out: dict[str, Any] = {}
    for name in body:
        if name not in target.inputs:
            known = ", ".join(target.inputs) or "no inputs"
            problems.append({"field": str(name), "problem": f"unknown field; this endpoint takes: {known}"})
    for name, f in target.inputs.items():
        if name not in body:
            if name in target.required:
                problems.append({"field": name, "problem": "missing (required input field)"})
            continue
        problem, value = check_value(f.annotation, body[name], name)
        if problem is not None:
            problems.append({"field": name, "problem": problem})
        else:
            out[name] = value
    if problems:
        raise InvalidInputs(problems)
    return out
