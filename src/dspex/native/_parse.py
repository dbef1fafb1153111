"""Turning LM text into typed values, as DSPy 3.4.1 does, without pydantic.

DSPy's ``parse_value(value, annotation)``:

1. ``str`` fields take the text as is; ``Literal`` fields accept the text, stripped,
   with ``Literal[...]`` / quotes removed;
2. other text goes through ``json_repair.loads``; when that finds nothing,
   ``ast.literal_eval``; when that fails too, the text itself;
3. the candidate is validated by pydantic (lax mode): ``"7.0"`` -> 7 for int,
   ``"yes"`` -> True for bool, ``["1"]`` -> [1] for list[int], unions in
   pydantic's "smart" order (exact matches first, then the first lax match).

``loads_lenient`` (in ``_lenient.py``) reproduces json_repair for the cases LMs
produce. The validators here reproduce pydantic's lax rules for the supported types.
"""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from ._lenient import balanced_object, literal_eval, loads_lenient

__all__ = ["Invalid", "balanced_object", "literal_eval", "loads_lenient", "parse_value", "validator"]

NoneType = type(None)


class Invalid(ValueError):
    """A value does not fit the declared type."""


# --------------------------------------------------------------------------- validators

Validator = Callable[[Any, bool], Any]  # (value, strict) -> value, raises Invalid

_INT_TEXT = re.compile(r"[+-]?\d+(?:_\d+)*(?:\.0*)?")
_FLOAT_TEXT = re.compile(
    r"[+-]?(?:(?:\d+(?:_\d+)*)?\.?\d+(?:_\d+)*(?:[eE][+-]?\d+)?|\d+\.|inf|infinity|nan)", re.IGNORECASE
)
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _fail(value: Any, what: str) -> Invalid:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return Invalid(f"{text} is not a valid {what}")


def _utf8(value: bytes | bytearray, what: str) -> str:
    """Lax mode reads bytes as UTF-8 text; undecodable bytes are not a valid ``what``."""
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(value, what) from None


def _v_any(value: Any, strict: bool) -> Any:
    return value


def _v_str(value: Any, strict: bool) -> Any:
    if isinstance(value, str):
        return value if type(value) is str else str(value)
    if not strict and isinstance(value, (bytes, bytearray)):
        return _utf8(value, "string")
    raise _fail(value, "string")


def _v_int(value: Any, strict: bool) -> Any:
    t = type(value)
    if t is int:
        return value
    if strict:
        raise _fail(value, "integer")
    if t is bool:
        return int(value)
    if t is float:
        if value.is_integer() and -(2**63) <= value < 2**63:  # pydantic converts within i64 only
            return int(value)
        raise _fail(value, "integer (it has a fractional part)")
    if isinstance(value, (bytes, bytearray)):
        value = _utf8(value, "integer")
    if isinstance(value, str):
        s = value.strip()
        if s.isascii() and _INT_TEXT.fullmatch(s):
            try:
                return int(s.split(".", 1)[0].replace("_", ""))
            except ValueError:  # over Python's 4,300-digit limit for int(str)
                raise _fail(value, "integer (too many digits)") from None
    raise _fail(value, "integer")


def _v_float(value: Any, strict: bool) -> Any:
    t = type(value)
    if t is float:
        return value
    if t is int:
        return float(value)  # pydantic's strict float accepts ints too
    if strict:
        raise _fail(value, "number")
    if t is bool:
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        value = _utf8(value, "number")
    if isinstance(value, str):
        s = value.strip()
        if s.isascii() and _FLOAT_TEXT.fullmatch(s):
            try:
                return float(s)
            except ValueError:
                pass
    raise _fail(value, "number")


def _v_bool(value: Any, strict: bool) -> Any:
    t = type(value)
    if t is bool:
        return value
    if strict:
        raise _fail(value, "boolean")
    if t is int or t is float:
        if value == 0:
            return False
        if value == 1:
            return True
    elif isinstance(value, str):
        low = value.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise _fail(value, "boolean")


def _v_none(value: Any, strict: bool) -> Any:
    if value is None:
        return None
    raise _fail(value, "null/None")


_SEQUENCES = (list, tuple, set, frozenset)


def _make_list(item: Validator | None, out_type: type) -> Validator:
    def v(value: Any, strict: bool) -> Any:
        if strict:
            ok = type(value) is out_type or (out_type is set and type(value) is set)
        else:
            ok = isinstance(value, _SEQUENCES)
        if not ok:
            raise _fail(value, "list" if out_type is list else out_type.__name__)
        if item is None:
            return out_type(value)
        return out_type(item(x, strict) for x in value)

    return v


def _make_tuple(items: list[Validator]) -> Validator:
    def v(value: Any, strict: bool) -> Any:
        if not (type(value) is tuple if strict else isinstance(value, _SEQUENCES)):
            raise _fail(value, "tuple")
        seq = list(value)
        if len(seq) != len(items):
            raise Invalid(f"expected {len(items)} items, got {len(seq)}")
        return tuple(f(x, strict) for f, x in zip(items, seq, strict=True))

    return v


def _make_dict(key: Validator | None, val: Validator | None) -> Validator:
    def v(value: Any, strict: bool) -> Any:
        if not (type(value) is dict if strict else isinstance(value, Mapping)):
            raise _fail(value, "dictionary")
        if key is None and val is None:
            return dict(value)
        kf = key or _v_any
        vf = val or _v_any
        return {kf(k, strict): vf(x, strict) for k, x in value.items()}

    return v


def _make_literal(allowed: tuple[Any, ...]) -> Validator:
    def v(value: Any, strict: bool) -> Any:
        for a in allowed:
            # pydantic looks values up by equality/hash: 1 matches True, "1" matches nothing but "1".
            if type(a) is str:
                if type(value) is str and value == a:
                    return a
            elif a is None:
                if value is None:
                    return None
            elif not isinstance(value, str) and value == a and not (strict and type(value) is not type(a)):
                return a
        raise Invalid(f"{value!r} is not one of {', '.join(repr(a) for a in allowed)}")

    return v


_EXACT_SCALARS = (str, int, float, bool, NoneType)


def _make_union(args: tuple[Any, ...]) -> Validator:
    """pydantic's "smart" union: an exact type match wins, then the first strict
    match (``Any`` last), then the first lax match, each in declaration order."""
    exact = frozenset(a for a in args if a in _EXACT_SCALARS)
    has_any = any(a is Any for a in args)
    members = [validator(a) for a in args if a is not Any]

    def v(value: Any, strict: bool) -> Any:
        if type(value) in exact:
            return value
        for f in members:
            try:
                return f(value, True)
            except Invalid:
                pass
        if has_any:
            return value
        if not strict:
            for f in members:
                try:
                    return f(value, False)
                except Invalid:
                    pass
        raise _fail(value, "value for any member of the union")

    return v


def _make_enum(cls: type[enum.Enum]) -> Validator:
    def v(value: Any, strict: bool) -> Any:
        if isinstance(value, cls):
            return value
        for member in cls:
            if member.value == value:
                return member
        raise _fail(value, cls.__name__)

    return v


def _make_pydantic(annotation: Any) -> Validator:
    adapter: list[Any] = []

    def v(value: Any, strict: bool) -> Any:
        import pydantic  # exotic types only (class-based signatures with models etc.)

        if not adapter:
            adapter.append(pydantic.TypeAdapter(annotation))
        try:
            return adapter[0].validate_python(value, strict=strict or None)
        except pydantic.ValidationError as e:
            raise Invalid(str(e)) from None

    return v


_SIMPLE: dict[Any, Validator] = {
    str: _v_str,
    int: _v_int,
    float: _v_float,
    bool: _v_bool,
    NoneType: _v_none,
    Any: _v_any,
}
_validators: dict[Any, Validator] = {}


def validator(annotation: Any) -> Validator:
    """The (cached) validator for ``annotation``."""
    # typing's Union/Literal compare equal in any order, but pydantic's smart union
    # follows the declared order: key by the repr as well.
    try:
        key = (annotation, repr(annotation))
        return _validators[key]
    except KeyError:
        pass
    except TypeError:  # unhashable annotation
        return _build(annotation)
    v = _build(annotation)
    if len(_validators) < 4096:
        _validators[key] = v
    return v


def _build(t: Any) -> Validator:
    simple = _SIMPLE.get(t)
    if simple is not None:
        return simple
    if t in (list, tuple, set, frozenset):
        return _make_list(None, t)
    if t is dict:
        return _make_dict(None, None)
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return _make_enum(t)
    origin = typing.get_origin(t)
    args = typing.get_args(t)
    if origin in (list, set, frozenset):
        return _make_list(validator(args[0]) if args else None, origin)
    if origin is tuple:
        if not args:
            return _make_list(None, tuple)
        if len(args) == 2 and args[1] is ...:
            return _make_list(validator(args[0]), tuple)
        if args == ((),):
            return _make_tuple([])
        return _make_tuple([validator(a) for a in args])
    if origin is dict:
        if not args:
            return _make_dict(None, None)
        return _make_dict(validator(args[0]), validator(args[1]))
    if origin is typing.Literal:
        return _make_literal(args)
    if origin in (typing.Union, types.UnionType):
        return _make_union(args)
    return _make_pydantic(t)


# --------------------------------------------------------------------------- parse_value


def _find_enum_member(cls: type[enum.Enum], identifier: Any) -> Any:
    for member in cls:
        if member.value == identifier:
            return member
    if identifier in cls.__members__:
        return cls[identifier]
    raise Invalid(f"{identifier} is not a valid name or value for the enum {cls.__name__}")


def _allows_str_and_none(annotation: Any) -> bool:
    args = typing.get_args(annotation)
    return NoneType in args and str in args


def parse_value(value: Any, annotation: Any) -> Any:
    """DSPy's ``parse_value``: coerce ``value`` (LM text or parsed JSON) to ``annotation``."""
    if annotation is str:
        return value if type(value) is str else str(value)
    if isinstance(annotation, enum.EnumMeta):
        return _find_enum_member(annotation, value)  # type: ignore[arg-type]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        try:
            if value in allowed:
                return value  # as DSPy: the value itself (True for Literal[1])
        except Exception:  # an exotic value whose == raises
            pass
        if isinstance(value, str):
            v = value.strip()
            if v.startswith(("Literal[", "str[")) and v.endswith("]"):
                v = v[v.find("[") + 1 : -1]
            if len(v) > 1 and v[0] == v[-1] and v[0] in "\"'":
                v = v[1:-1]
            if v in allowed:
                return v
            value = v
    if not isinstance(value, str):
        return validator(annotation)(value, False)
    if origin in (typing.Union, types.UnionType) and _allows_str_and_none(annotation):
        return validator(annotation)(value, False)
    candidate = loads_lenient(value)
    if type(candidate) is str and candidate == "" and value != "":
        candidate = literal_eval(value)
    return validator(annotation)(candidate, False)
