"""Rendering values into prompt text exactly as DSPy 3.4.1 does, without pydantic.

DSPy's ``format_field_value``: a list given to a ``str`` field becomes a numbered
list of «blobs»; anything else goes through pydantic's JSON-mode serializer
(``serialize_for_json``) and is then ``json.dumps``-ed when it is a list or dict,
``str()``-ed otherwise. ``jsonable`` reproduces that serializer for plain values
(str, numbers, bool, None, list/tuple/set/dict, bytes) and falls back to pydantic,
lazily, for anything else (dataclasses, models, enums, dates...).
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["format_list_for_str", "format_value", "jsonable", "serialize_for_json"]

_dumps = json.dumps


class _Fallback(Exception):
    """This value needs pydantic's serializer."""


def _key(k: Any) -> str:
    t = type(k)
    if t is str:
        return k
    if t is bool:
        return "true" if k else "false"
    if t is int:
        return str(k)
    if t is float:
        if math.isfinite(k):
            return repr(k)
        raise _Fallback
    if k is None:
        return "None"
    if t is tuple:
        return ",".join(_key(x) for x in k)
    raise _Fallback


def _nested(v: Any) -> Any:
    t = type(v)
    if t is str or t is int or t is bool or v is None:
        return v
    if t is float:
        return v if math.isfinite(v) else None  # pydantic writes nan/inf as null inside containers
    if t is list or t is tuple or t is set or t is frozenset:
        return [_nested(x) for x in v]
    if t is dict:
        return {_key(k): _nested(x) for k, x in v.items()}
    if t is bytes:
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            raise _Fallback from None
    raise _Fallback


def jsonable(value: Any) -> Any:
    """pydantic ``TypeAdapter(type(v)).dump_python(v, mode="json", fallback=str)`` for plain values."""
    t = type(value)
    if t is str or t is int or t is bool or t is float or value is None:
        return value  # top-level floats keep nan/inf
    try:
        return _nested(value)
    except (_Fallback, RecursionError):
        return serialize_for_json(value)


def serialize_for_json(value: Any) -> Any:
    """DSPy's ``serialize_for_json`` via pydantic: only for values ``jsonable`` cannot handle."""
    try:
        from pydantic import TypeAdapter

        return TypeAdapter(type(value)).dump_python(value, mode="json", fallback=str)
    except Exception:
        return str(value)


def _blob(blob: Any) -> str:
    try:
        # for non-str items DSPy tests membership (a dict's keys, a list's items)
        plain = "\n" not in blob and "«" not in blob and "»" not in blob
    except TypeError:  # DSPy raises here (e.g. an int); we go on with its text
        blob = str(blob)
        plain = "\n" not in blob and "«" not in blob and "»" not in blob
    if plain:
        return f"«{blob}»"
    text = blob if isinstance(blob, str) else str(blob)
    return "«««\n    " + text.replace("\n", "\n    ") + "\n»»»"


def format_list_for_str(value: list[Any]) -> str:
    """A list given to a str field: ``N/A``, one «blob», or ``[1] «a»`` lines.

    Where DSPy raises for a non-string item (an int, a dict holding a newline key)
    we render the item's ``str()``.
    """
    if not value:
        return "N/A"
    if len(value) == 1:
        return _blob(value[0])
    return "\n".join(f"[{i}] {_blob(x)}" for i, x in enumerate(value, 1))


def format_value(value: Any, annotation: Any) -> str:
    """DSPy's ``format_field_value`` (text form)."""
    t = type(value)
    if t is str:
        return value
    if t is list and annotation is str:
        return format_list_for_str(value)
    if isinstance(value, list) and annotation is str:
        return format_list_for_str(list(value))
    j = jsonable(value)
    if isinstance(j, (dict, list)):
        return _dumps(j, ensure_ascii=False)
    return str(j)
