"""Field types: parsing type expressions, DSPy display names, JSON schemas.

Everything here works on real ``typing`` objects (``list[str]``,
``typing.Optional[int]``, ``typing.Literal['a']``) and reproduces what DSPy 3.4.1
derives from them through pydantic, without importing pydantic: the display name
(``get_annotation_name``) and the JSON schema shown in output notes
(``TypeAdapter(t).json_schema()`` with ``"type"`` moved first and keys sorted).

The type-expression parser is a hand-written scanner over a fixed vocabulary of
names; it never evaluates user text.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable
from typing import Any

from ..errors import SignatureError

__all__ = [
    "MAX_DEPTH",
    "SUPPORTED_NAMES",
    "is_supported",
    "is_well_formed",
    "json_schema",
    "json_schema_text",
    "native_capable",
    "parse_type",
    "type_name",
]

NoneType = type(None)

# The names a type expression may use. DSPy resolves names against typing.__dict__
# and builtins; we accept the subset that has a well-defined prompt/JSON meaning.
SUPPORTED_NAMES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "Any": Any,
    "List": typing.List,  # noqa: UP006 - the typing alias is what DSPy produces for "List"
    "Dict": typing.Dict,  # noqa: UP006
    "Tuple": typing.Tuple,  # noqa: UP006
    "Set": typing.Set,  # noqa: UP006
    "FrozenSet": typing.FrozenSet,  # noqa: UP006
    "Optional": typing.Optional,
    "Union": typing.Union,
    "Literal": typing.Literal,
    "NoneType": NoneType,
    "None": NoneType,
}

_ONE_ARG = {list, set, frozenset, typing.List, typing.Set, typing.FrozenSet, typing.Optional}  # noqa: UP006
_TWO_ARGS = {dict, typing.Dict}  # noqa: UP006
_TUPLES = {tuple, typing.Tuple}  # noqa: UP006
_SUBSCRIPTABLE = _ONE_ARG | _TWO_ARGS | _TUPLES | {typing.Union, typing.Literal}
_ONLY_SUBSCRIPTED = {typing.Optional, typing.Union, typing.Literal}

Resolver = Callable[[str], Any]
MAX_DEPTH = 32  # nesting levels of a type expression (list[list[...]]); deeper is a SignatureError

_IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_IDENT_CHARS = _IDENT_START | frozenset("0123456789")
_WS = " \t\n\r\f\v"


# --------------------------------------------------------------------------- parsing


class _TypeParser:
    """Recursive-descent parser for one type expression ``spec[pos:end]``."""

    __slots__ = ("depth", "end", "pos", "resolve", "spec")

    def __init__(self, spec: str, pos: int, end: int, resolve: Resolver | None = None) -> None:
        self.spec = spec
        self.pos = pos
        self.end = end
        self.resolve = resolve
        self.depth = 0

    def error(self, message: str, position: int | None = None) -> SignatureError:
        return SignatureError(message, self.spec, self.pos if position is None else position)

    def skip_ws(self) -> None:
        spec, pos, end = self.spec, self.pos, self.end
        while pos < end and spec[pos] in _WS:
            pos += 1
        self.pos = pos

    def parse(self) -> Any:
        self.skip_ws()
        if self.pos >= self.end:
            raise self.error("missing type after ':'")
        result = self.union()
        self.skip_ws()
        if self.pos < self.end:
            raise self.error(f"unexpected {self.spec[self.pos]!r} in type")
        return result

    def union(self, allow_none: bool = False) -> Any:
        start = self.pos
        self.depth += 1
        if self.depth > MAX_DEPTH:  # hostile input must not reach Python's recursion limit
            raise self.error(f"type nested deeper than {MAX_DEPTH} levels", start)
        members = [self.primary()]
        self.skip_ws()
        while self.pos < self.end and self.spec[self.pos] == "|":
            self.pos += 1
            self.skip_ws()
            members.append(self.primary())
            self.skip_ws()
        self.depth -= 1
        if len(members) == 1:
            if members[0] is None and not allow_none:
                raise self.error("None is not a field type on its own", start)
            return members[0]
        # DSPy folds `a | b | c` left to right into typing.Optional / typing.Union
        # (never types.UnionType): `None | int` is Optional[int].
        result = members[0]
        for right in members[1:]:
            if right is None or right is NoneType:
                result = typing.Optional[NoneType if result is None else result]  # noqa: UP045
            elif result is None or result is NoneType:
                result = typing.Optional[right]  # noqa: UP045
            else:
                result = typing.Union[result, right]  # noqa: UP007
        return result

    def name(self) -> str:
        spec, pos, end = self.spec, self.pos, self.end
        if pos >= end:
            raise self.error("missing type name")
        ch = spec[pos]
        if ch not in _IDENT_START and not (ch.isidentifier()):
            raise self.error(f"unexpected {ch!r} in type, expected a type name")
        start = pos
        pos += 1
        while pos < end and (spec[pos] in _IDENT_CHARS or (spec[pos] > "\x7f" and ("a" + spec[pos]).isidentifier())):
            pos += 1
        self.pos = pos
        return spec[start:pos]

    def group(self) -> Any:
        """``( union )``: a parenthesised part of a union, as Python reads ``str | (int | float)``."""
        open_pos = self.pos
        self.pos += 1
        self.skip_ws()
        inner = self.union(allow_none=True)
        self.skip_ws()
        if self.pos >= self.end or self.spec[self.pos] != ")":
            raise self.error("unbalanced parentheses: '(' is never closed", open_pos)
        self.pos += 1
        return inner

    def dotted(self, name: str) -> str:
        while self.pos < self.end and self.spec[self.pos] == ".":
            self.pos += 1
            name += "." + self.name()
        return name

    def primary(self) -> Any:
        if self.pos < self.end and self.spec[self.pos] == "(":
            return self.group()
        start = self.pos
        name = self.name()
        # typing.X and builtins.X are spelled out in some signatures.
        if name in ("typing", "builtins") and self.pos < self.end and self.spec[self.pos] == ".":
            self.pos += 1
            start = self.pos
            name = self.name()
        name = self.dotted(name)
        if name not in SUPPORTED_NAMES:
            custom = self.resolve(name) if self.resolve is not None else None
            if custom is None:
                raise self.error(
                    f"unknown type {name!r}: pass custom_types={{{name.split('.')[0]!r}: ...}} or define it in the "
                    "calling scope (built in: str, int, float, bool, list[T], dict[K, V], tuple[...], "
                    "set[T], Optional[T], Union[...], Literal[...], Any; use X | Y for unions)",
                    start,
                )
            self.skip_ws()
            if self.pos < self.end and self.spec[self.pos] == "[":
                raise self.error(f"custom type {name!r} does not take type arguments here", self.pos)
            return custom
        base = SUPPORTED_NAMES[name]
        if name == "None":
            base = None  # marks a bare None; unions turn it into NoneType
        self.skip_ws()
        if self.pos < self.end and self.spec[self.pos] == "[":
            if base not in _SUBSCRIPTABLE:
                raise self.error(f"type {name!r} does not take type arguments", self.pos)
            open_pos = self.pos
            self.pos += 1
            if base is typing.Literal:
                args = self.bracket_list(open_pos, self.constant, "Literal needs at least one value")
            else:
                item = self.tuple_arg if base in _TUPLES else self.type_arg
                args = self.bracket_list(open_pos, item, "empty type arguments '[]'")
            return self.subscript(name, base, args, start)
        if base in _ONLY_SUBSCRIPTED:
            raise self.error(f"{name} needs type arguments, e.g. {name}[...]", start)
        return base

    def close(self, open_pos: int) -> None:
        self.skip_ws()
        if self.pos >= self.end:
            raise self.error("unbalanced brackets: '[' is never closed", open_pos)
        if self.spec[self.pos] != "]":
            raise self.error(f"unexpected {self.spec[self.pos]!r} in type arguments, expected ',' or ']'")
        self.pos += 1

    def bracket_list(self, open_pos: int, item: Callable[[], Any], empty: str) -> list[Any]:
        """Comma-separated ``item()``s up to the ']' closing the '[' at ``open_pos``."""
        args: list[Any] = []
        while True:
            self.skip_ws()
            if self.pos >= self.end:
                raise self.error("unbalanced brackets: '[' is never closed", open_pos)
            if self.spec[self.pos] == "]":
                if not args:
                    raise self.error(empty, open_pos)
                self.pos += 1
                return args
            args.append(item())
            self.skip_ws()
            if self.pos < self.end and self.spec[self.pos] == ",":
                self.pos += 1
                continue
            self.close(open_pos)
            return args

    def type_arg(self) -> Any:
        arg = self.union(allow_none=True)
        return NoneType if arg is None else arg

    def tuple_arg(self) -> Any:
        if self.spec.startswith("...", self.pos):
            self.pos += 3
            return ...
        return self.type_arg()

    def constant(self) -> Any:
        spec, pos, end = self.spec, self.pos, self.end
        ch = spec[pos]
        if ch in "'\"":
            return self.string()
        if ch in "-0123456789":
            start = pos
            pos += 1
            while pos < end and spec[pos] in "0123456789._eE+-" and not (
                spec[pos] in "+-" and spec[pos - 1] not in "eE"
            ):
                pos += 1
            text = spec[start:pos]
            self.pos = pos
            try:
                if text.lstrip("-").isdigit() and not (len(text.lstrip("-")) > 1 and text.lstrip("-")[0] == "0"):
                    return int(text)
                if any(c in text for c in ".eE") and "_" not in text:
                    return float(text)
            except ValueError:
                pass
            raise self.error(f"invalid number {text!r} in Literal", start)
        start = pos
        word = self.name()
        if word == "True":
            return True
        if word == "False":
            return False
        if word == "None":
            return None
        raise self.error(f"Literal values must be quoted strings, numbers, True, False or None, not {word!r}", start)

    def string(self) -> str:
        spec, end = self.spec, self.end
        start = self.pos
        quote = spec[start]
        pos = start + 1
        out: list[str] = []
        while pos < end:
            ch = spec[pos]
            if ch == quote:
                self.pos = pos + 1
                return "".join(out)
            if ch == "\n":
                break
            if ch == "\\" and pos + 1 < end:
                nxt = spec[pos + 1]
                simple = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0"}
                if nxt in simple:
                    out.append(simple[nxt])
                    pos += 2
                    continue
                raise self.error(f"unsupported escape '\\{nxt}' in Literal string", pos)
            out.append(ch)
            pos += 1
        raise self.error("unterminated string in Literal", start)

    def subscript(self, name: str, base: Any, args: list[Any], start: int) -> Any:
        n = len(args)
        if base in _ONE_ARG and n != 1:
            raise self.error(f"{name}[...] takes exactly one type argument, got {n}", start)
        if base in _TWO_ARGS and n != 2:
            raise self.error(f"{name}[...] takes exactly two type arguments (key, value), got {n}", start)
        if base in _TUPLES:
            if any(a is ... for a in args) and (n != 2 or args[0] is ... or args[1] is not ...):
                raise self.error("'...' is only allowed as tuple[T, ...]", start)
        elif any(a is ... for a in args):
            raise self.error("'...' is only allowed as tuple[T, ...]", start)
        if base is typing.Union:
            return typing.Union[tuple(args)]  # noqa: UP007
        if base is typing.Optional:
            return typing.Optional[args[0]]  # noqa: UP045
        if base is typing.Literal:
            return typing.Literal[tuple(args)]
        return base[tuple(args)] if n > 1 else base[args[0]]


def parse_type(spec: str, start: int, end: int, resolve: Resolver | None = None) -> Any:
    """Parse the type expression ``spec[start:end]`` (positions index ``spec``).

    ``resolve(name)`` looks up names outside the built-in vocabulary (custom types,
    dotted like ``Container.Query``); it returns the class or None for unknown."""
    # Fast path for the common single-name types.
    text = spec[start:end].strip()
    simple = SUPPORTED_NAMES.get(text)
    if simple is not None and simple not in _ONLY_SUBSCRIPTED and text != "None":
        return simple
    if resolve is not None:  # names may mean different classes per caller: never cached
        return _TypeParser(spec, start, end, resolve).parse()
    cached = _PARSED.get(text)
    if cached is not None:
        return cached
    result = _TypeParser(spec, start, end).parse()  # errors are not cached: they carry positions
    if len(_PARSED) < 4096:
        _PARSED[text] = result
    return result


# type text -> annotation (bounded). Keyed by text, never by annotation: typing's Union
# and Literal compare equal regardless of order, but DSPy's names and parsing follow it.
_PARSED: dict[str, Any] = {}


# --------------------------------------------------------------------------- checking

_ATOMS = (str, int, float, bool, NoneType)
_BARE_CONTAINERS = (list, dict, tuple, set, frozenset)


def is_supported(annotation: Any) -> bool:
    """True when this module can name, describe and validate ``annotation`` natively."""
    if annotation is Any or annotation in _ATOMS or annotation in _BARE_CONTAINERS:
        return True
    origin = typing.get_origin(annotation)
    if origin is None:
        return False
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return all(a is None or type(a) in (str, int, float, bool) for a in args)
    if origin in (typing.Union, types.UnionType):
        return all(is_supported(a) for a in args)
    if origin in (list, set, frozenset):
        return len(args) <= 1 and all(is_supported(a) for a in args)
    if origin is dict:
        return len(args) in (0, 2) and all(is_supported(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is ...:
            return is_supported(args[0])
        return all(is_supported(a) for a in args)
    return False


def is_well_formed(annotation: Any, depth: int = 0) -> bool:
    """True for annotations a signature may hold: the natively supported ones, classes
    (pydantic models, enums, ...) and containers / unions / Literals of those."""
    if depth > MAX_DEPTH:
        return False
    if is_supported(annotation) or isinstance(annotation, type):
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return True
    if origin in (list, set, frozenset, dict, tuple, typing.Union, types.UnionType):
        return all(a is ... or is_well_formed(a, depth + 1) for a in args)
    return False


def native_capable(annotation: Any, depth: int = 0) -> bool:
    """True when the native adapters give DSPy's prompts and values for ``annotation``:
    the supported types plus pydantic models and enums inside them (through pydantic)."""
    if depth > MAX_DEPTH:
        return False
    if is_supported(annotation):
        return True
    if isinstance(annotation, type):
        if annotation.__module__.split(".")[0] == "dspy":  # dspy.Image, History, Tool...: DSPy formats them
            return False
        return hasattr(annotation, "model_json_schema") or _is_enum(annotation)
    origin = typing.get_origin(annotation)
    if origin in (list, set, frozenset, dict, tuple, typing.Union, types.UnionType, typing.Literal):
        return all(a is ... or native_capable(a, depth + 1) for a in typing.get_args(annotation)
                   if origin is not typing.Literal)
    return False


def _is_enum(t: type) -> bool:
    import enum

    return issubclass(t, enum.Enum)


# --------------------------------------------------------------------------- display names


def _quoted_literal(s: str) -> str:
    has_single = "'" in s
    has_double = '"' in s
    if has_single and not has_double:
        return f'"{s}"'
    if has_double and not has_single:
        return f"'{s}'"
    if has_single and has_double:
        escaped = s.replace("'", "\\'")
        return f"'{escaped}'"
    return f"'{s}'"


def type_name(annotation: Any) -> str:
    """The name DSPy 3.4.1 shows for a type (``get_annotation_name``)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is types.UnionType:
        origin = typing.Union
    if origin is None:
        name = getattr(annotation, "__name__", None)
        return name if name is not None else str(annotation)
    if origin is typing.Literal:
        inner = ", ".join(_quoted_literal(a) if isinstance(a, str) else type_name(a) for a in args)
    else:
        inner = ", ".join(type_name(a) for a in args)
    return f"{type_name(origin)}[{inner}]"


# --------------------------------------------------------------------------- JSON schema

_ATOM_SCHEMA: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    NoneType: {"type": "null"},
}
_LITERAL_TYPE = {str: "string", int: "integer", float: "number", bool: "boolean", NoneType: "null"}


def _schema(t: Any) -> dict[str, Any] | bool:
    """pydantic's JSON schema for ``t`` (before DSPy reorders keys)."""
    if t is Any:
        return {}
    atom = _ATOM_SCHEMA.get(t)
    if atom is not None:
        return dict(atom)
    origin = typing.get_origin(t)
    args = typing.get_args(t)
    if t in (list, tuple) or (origin in (list, tuple) and not args):
        return {"type": "array", "items": {}}
    if t in (set, frozenset) or (origin in (set, frozenset) and not args):
        return {"type": "array", "items": {}, "uniqueItems": True}
    if t is dict or (origin is dict and not args):
        return {"type": "object", "additionalProperties": True}
    if origin is list:
        return {"type": "array", "items": _schema(args[0])}
    if origin in (set, frozenset):
        return {"type": "array", "items": _schema(args[0]), "uniqueItems": True}
    if origin is tuple:
        if len(args) == 2 and args[1] is ...:
            return {"type": "array", "items": _schema(args[0])}
        if args == ((),):  # tuple[()]
            return {"type": "array", "maxItems": 0, "minItems": 0}
        return {
            "type": "array",
            "prefixItems": [_schema(a) for a in args],
            "minItems": len(args),
            "maxItems": len(args),
        }
    if origin is dict:
        key, value = args
        out: dict[str, Any] = {"type": "object"}
        value_schema = _schema(value)
        out["additionalProperties"] = True if value_schema == {} else value_schema
        key_schema = _schema(key)
        # pydantic keeps only key constraints beyond a plain type (e.g. a Literal's enum).
        if isinstance(key_schema, dict):
            extra = {k: v for k, v in key_schema.items() if k != "type"}
            if extra:
                out["propertyNames"] = extra
        return out
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not NoneType]
        choices = [_schema(a) for a in members]
        if len(members) != len(args):
            choices.append({"type": "null"})  # pydantic lists null last
        unique: list[Any] = []
        for c in choices:  # pydantic drops repeated choices (list[str] | List[str])
            if c not in unique:
                unique.append(c)
        return unique[0] if len(unique) == 1 else {"anyOf": unique}
    if origin is typing.Literal:
        values = list(args)  # typing.Literal already removed duplicates
        kinds = {type(v) for v in values}
        out = {}
        if len(values) == 1:
            out["const"] = values[0]
        else:
            out["enum"] = values
        if len(kinds) == 1:
            out["type"] = _LITERAL_TYPE[kinds.pop()]
        return out
    raise TypeError(f"no native JSON schema for {t!r}")


def _type_first(d: Any) -> Any:
    # DSPy moves "type" to the front and sorts the other keys, recursively.
    if isinstance(d, dict):
        return {k: _type_first(v) for k, v in sorted(d.items(), key=lambda kv: (kv[0] != "type", kv[0]))}
    if isinstance(d, list):
        return [_type_first(x) for x in d]
    return d


def json_schema(annotation: Any) -> Any:
    """The JSON schema DSPy 3.4.1 puts in output notes, as a Python value."""
    if is_supported(annotation):
        return _type_first(_schema(annotation))
    # Exotic annotations (pydantic models, enums nested in containers, ...): ask
    # pydantic, exactly as DSPy does. Only reached for class-based signatures.
    import pydantic

    return _type_first(pydantic.TypeAdapter(annotation).json_schema())


def json_schema_text(annotation: Any) -> str:
    return json.dumps(json_schema(annotation), ensure_ascii=False)
