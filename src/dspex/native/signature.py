"""Signatures: named, typed input and output fields plus instructions.

Same string syntax and meaning as DSPy 3.4.1::

    signature("context: list[str], question -> answer: int", "Answer briefly.")

and the class form::

    class QA(Signature):
        \"\"\"Answer the question.\"\"\"          # the docstring is the instructions
        question: str = InputField(desc="a question")
        answer: int = OutputField()

A ``Signature`` is an immutable value: hashable, equal by content (fields and
instructions; the name is not part of the value). Helpers return new signatures.
``signature(spec, instructions)`` compiles a string once and caches the result.

Parsing is a hand-written scanner (no ``ast``/``eval`` of user text); type
expressions are handled in ``_types``. Errors are ``SignatureError`` with the
0-based position in the spec.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from keyword import iskeyword
from types import MappingProxyType
from typing import Any

from ..errors import SignatureError
from . import _types
from ._fields import (
    CONSTRAINT_TEXT,
    Field,
    FieldExtra,
    InputField,
    OutputField,
    cleandoc,
    default_instructions,
    infer_prefix,
)

__all__ = [
    "Field",
    "FieldExtra",
    "InputField",
    "OutputField",
    "Signature",
    "cleandoc",
    "default_instructions",
    "ensure_signature",
    "infer_prefix",
    "signature",
]


# --------------------------------------------------------------------------- signature


class _SignatureMeta(type):
    """Makes ``class QA(Signature): ...`` produce a Signature *value*, and
    ``Signature("a -> b")`` compile a spec (as ``dspy.Signature`` does)."""

    def __new__(mcs, cls_name: str, bases: tuple[type, ...], ns: dict[str, Any], **kw: Any) -> Any:
        if ns.get("_dspex_root"):
            return super().__new__(mcs, cls_name, bases, ns, **kw)
        return _from_class_body(cls_name, ns)

    def __call__(cls, spec: Any, instructions: str | None = None, *, custom_types: Any = None) -> Any:
        return signature(spec, instructions, custom_types=custom_types)


class Signature(metaclass=_SignatureMeta):
    """An immutable signature value. Build one with ``signature(...)``,
    ``Signature("a -> b")`` or a class body (see the module docstring)."""

    _dspex_root = True
    __slots__ = ("_cache", "_fields", "_hash", "_key", "input_fields", "instructions", "name", "output_fields")

    input_fields: Mapping[str, Field]
    output_fields: Mapping[str, Field]
    instructions: str
    name: str
    _fields: Mapping[str, Field]
    _key: tuple[Any, ...]
    _hash: int
    _cache: dict[Any, Any]

    @classmethod
    def _build(
        cls,
        fields: list[Field] | tuple[Field, ...],
        instructions: str | None,
        name: str = "StringSignature",
        from_class: bool = False,
    ) -> Signature:
        # DSPy: instructions=""/None given to Signature(...)/make_signature mean the default
        # text; a class docstring is used as written (cleaned), even when empty.
        if not instructions and not from_class:
            instructions = None
        inputs: dict[str, Field] = {}
        outputs: dict[str, Field] = {}
        for f in fields:
            (inputs if f[1] == "input" else outputs)[f[0]] = f
        if instructions is None:
            instructions = default_instructions(inputs, outputs)
        else:
            instructions = cleandoc(instructions)
        self = object.__new__(cls)
        setattr_ = object.__setattr__
        setattr_(self, "input_fields", MappingProxyType(inputs))
        setattr_(self, "output_fields", MappingProxyType(outputs))
        setattr_(self, "instructions", instructions)
        setattr_(self, "name", name)
        key = (instructions, *inputs.values(), *outputs.values())
        setattr_(self, "_key", key)
        setattr_(self, "_hash", hash(key))
        setattr_(self, "_fields", None)
        setattr_(self, "_cache", {})
        return self

    # -- value semantics
    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Signature is immutable; use with_instructions/prepend/append/delete")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Signature is immutable")

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Signature):
            return NotImplemented
        return self._hash == other._hash and self._key == other._key

    def __reduce__(self) -> tuple[Any, ...]:
        return (Signature._build, (tuple(self.fields.values()), self.instructions, self.name))

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        # `class QA2(QA): ...` where QA is a class-based signature value.
        return (Signature,)

    def __repr__(self) -> str:
        lines = [f"{self.name}({self.signature}", f"    instructions={self.instructions!r}"]
        lines += [f"    {f!r}" for f in self.fields.values()]
        return "\n".join(lines) + "\n)"

    # -- views
    @property
    def fields(self) -> Mapping[str, Field]:
        """Input fields then output fields, by name."""
        f = self._fields
        if f is None:
            f = MappingProxyType({**self.input_fields, **self.output_fields})
            object.__setattr__(self, "_fields", f)
        return f

    @property
    def signature(self) -> str:
        """``"a, b -> c"`` (names only, as DSPy's ``Signature.signature``)."""
        return f"{', '.join(self.input_fields)} -> {', '.join(self.output_fields)}"

    signature_string = signature

    def to_string(self, types: bool = False) -> str:
        """``"a, b -> c"``; with ``types=True`` ``"a: list[str], b -> c: int"`` (parses back)."""
        if not types:
            return self.signature

        def part(fs: Mapping[str, Field]) -> str:
            return ", ".join(n if f.annotation is str else f"{n}: {f.type_name}" for n, f in fs.items())

        return f"{part(self.input_fields)} -> {part(self.output_fields)}"

    # -- derived signatures
    def with_instructions(self, instructions: str) -> Signature:
        return Signature._build(tuple(self.fields.values()), instructions, self.name)

    def append_instructions(self, instructions: str) -> Signature:
        return self.with_instructions(f"{self.instructions}\n\n{instructions}")

    def insert(self, index: int, name: str, field: Field, type_: Any = None) -> Signature:
        """Insert ``field`` as ``name`` at ``index`` among the inputs or outputs (by its kind)."""
        _check_name(name)
        if name in self.fields:
            raise SignatureError(f"field {name!r} already exists in the signature", self.signature)
        if type_ is not None:
            _check_annotation(name, type_)
        bound = field.bind(name, type_)
        group = list(self.input_fields.values() if bound.kind == "input" else self.output_fields.values())
        if index < 0:
            index += len(group) + 1
        if index < 0 or index > len(group):
            raise IndexError(f"invalid index {index} to insert among {len(group)} {bound.kind} fields")
        group.insert(index, bound)
        if bound.kind == "input":
            fields = [*group, *self.output_fields.values()]
        else:
            fields = [*self.input_fields.values(), *group]
        return Signature._build(fields, self.instructions, self.name)

    def prepend(self, name: str, field: Field, type_: Any = None) -> Signature:
        return self.insert(0, name, field, type_)

    def append(self, name: str, field: Field, type_: Any = None) -> Signature:
        return self.insert(-1, name, field, type_)

    def delete(self, name: str) -> Signature:
        """Without field ``name`` (unchanged if absent, like DSPy)."""
        if name not in self.fields:
            return self
        return Signature._build([f for f in self.fields.values() if f.name != name], self.instructions, self.name)

    def with_updated_fields(self, name: str, type_: Any = None, **changes: Any) -> Signature:
        """Change ``desc``/``prefix`` (and the type, with ``type_``) of field ``name``."""
        if name not in self.fields:
            raise KeyError(f"no field {name!r} in signature {self.signature!r}")
        bad = set(changes) - {"desc", "prefix"}
        if bad:
            raise TypeError(f"only desc and prefix can be updated, not {', '.join(sorted(bad))}")
        if type_ is not None:
            _check_annotation(name, type_)
            changes["annotation"] = type_
        fields = [f.replace(**changes) if f.name == name else f for f in self.fields.values()]
        return Signature._build(fields, self.instructions, self.name)

    def with_reasoning(self, name: str = "reasoning") -> Signature:
        """What DSPy 3.4.1's ``ChainOfThought`` predicts with: a ``reasoning: str``
        output field (desc ``${reasoning}``, prefix ``Reasoning:``) before the
        outputs, instructions unchanged."""
        cached = self._cache.get(("reasoning", name))
        if cached is None:
            cached = self.prepend(name, OutputField(desc=f"${{{name}}}"), str)
            self._cache[("reasoning", name)] = cached
        return cached

    # -- program state (DSPy's Signature.dump_state / load_state shape)
    def dump_state(self) -> dict[str, Any]:
        return {
            "instructions": self.instructions,
            "fields": [{"prefix": f.prefix, "description": f.desc} for f in self.fields.values()],
        }

    def load_state(self, state: Mapping[str, Any]) -> Signature:
        fields = list(self.fields.values())
        for i, saved in enumerate(state.get("fields", [])[: len(fields)]):
            fields[i] = fields[i].replace(prefix=saved["prefix"], desc=saved["description"])
        return Signature._build(fields, state.get("instructions", self.instructions), self.name)

    def equals(self, other: Any) -> bool:
        return self == ensure_signature(other)


# --------------------------------------------------------------------------- compiling


def _check_name(name: str, spec: str | None = None, pos: int | None = None) -> None:
    if not name:
        raise SignatureError("empty field name", spec, pos)
    if not name.isidentifier() or iskeyword(name):
        raise SignatureError(f"invalid field name {name!r} (must be a Python identifier)", spec, pos)


def _check_annotation(name: str, annotation: Any) -> None:
    if not _types.is_well_formed(annotation):
        raise SignatureError(
            f"unsupported type {annotation!r} for field {name!r} (or nested deeper than {_types.MAX_DEPTH} levels)"
        )


def _split_fields(spec: str, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of each comma-separated field in ``spec[start:end]``, brackets and quotes aware."""
    text = spec[start:end]
    if "[" not in text and "]" not in text and "'" not in text and '"' not in text:
        parts = []
        pos = start
        for piece in text.split(","):
            parts.append((pos, pos + len(piece)))
            pos += len(piece) + 1
        return parts
    parts = []
    depth = 0
    piece_start = start
    i = start
    opens: list[int] = []
    while i < end:
        ch = spec[i]
        if ch in "'\"":
            j = i + 1
            while j < end and spec[j] != ch and spec[j] != "\n":
                j += 2 if spec[j] == "\\" else 1
            if j >= end or spec[j] != ch:
                raise SignatureError("unterminated string", spec, i)
            i = j
        elif ch == "[":
            depth += 1
            opens.append(i)
        elif ch == "]":
            if depth == 0:
                raise SignatureError("unbalanced brackets: ']' without '['", spec, i)
            depth -= 1
            opens.pop()
        elif ch == "," and depth == 0:
            parts.append((piece_start, i))
            piece_start = i + 1
        i += 1
    if depth:
        raise SignatureError("unbalanced brackets: '[' is never closed", spec, opens[0])
    parts.append((piece_start, end))
    return parts


def _find_arrows(spec: str) -> list[int]:
    if "'" not in spec and '"' not in spec:
        arrows = []
        i = spec.find("->")
        while i >= 0:
            arrows.append(i)
            i = spec.find("->", i + 2)
        return arrows
    arrows = []
    i, n = 0, len(spec)
    while i < n:
        ch = spec[i]
        if ch in "'\"":
            j = i + 1
            while j < n and spec[j] != ch and spec[j] != "\n":
                j += 2 if spec[j] == "\\" else 1
            # an unterminated quote is left for the type parser to report
            i = j + 1 if j < n and spec[j] == ch else i + 1
            continue
        if ch == "-" and spec.startswith("->", i):
            arrows.append(i)
            i += 2
            continue
        i += 1
    return arrows


_WS = " \t\n\r\f\v"


def _parse_side(
    spec: str, start: int, end: int, kind: str, out: list[Field], seen: dict[str, int],
    resolve: _types.Resolver | None = None,
) -> None:
    if not spec[start:end].strip(_WS):
        return  # an empty side is allowed, as in DSPy ("-> answer")
    parts = _split_fields(spec, start, end)
    last = len(parts) - 1
    for idx, (a, b) in enumerate(parts):
        piece = spec[a:b]
        stripped = piece.strip(_WS)
        if not stripped:
            if idx == last and idx > 0:
                continue  # one trailing comma is fine ("a, b, -> c"), as in Python/DSPy
            raise SignatureError("empty field name before this comma", spec, b)
        name_pos = a + len(piece) - len(piece.lstrip(_WS))
        colon = piece.find(":")
        if colon < 0:
            name = stripped
            annotation: Any = str
        else:
            name = piece[:colon].strip(_WS)
            annotation = _types.parse_type(spec, a + colon + 1, b, resolve)
        if not name:
            raise SignatureError("empty field name", spec, name_pos)
        if not name.isidentifier() or iskeyword(name):
            raise SignatureError(f"invalid field name {name!r} (must be a Python identifier)", spec, name_pos)
        if name in seen:
            raise SignatureError(f"duplicate field name {name!r}", spec, name_pos)
        seen[name] = name_pos
        out.append(Field(name, kind, annotation))


_SIMPLE_SPEC_CHARS = frozenset(":[]|'\"")


def _compile_simple(spec: str, instructions: str | None) -> Signature | None:
    """Fast path for untyped specs like ``"question, context -> answer"``; None if not one."""
    if not _SIMPLE_SPEC_CHARS.isdisjoint(spec):
        return None
    parts = spec.split("->")
    if len(parts) != 2:
        return None
    fields: list[Field] = []
    seen: set[str] = set()
    if not parts[1].strip():
        return None  # no outputs: the full scanner reports it
    for kind, side in (("input", parts[0]), ("output", parts[1])):
        if not side.strip():
            continue
        for piece in side.split(","):
            name = piece.strip()
            if not name or not name.isidentifier() or iskeyword(name) or name in seen:
                return None  # let the full scanner report it with its position
            seen.add(name)
            fields.append(Field(name, kind))
    return Signature._build(fields, instructions)


def _compile(spec: str, instructions: str | None, resolve: _types.Resolver | None = None) -> Signature:
    if resolve is None and (instructions is None or isinstance(instructions, str)):
        fast = _compile_simple(spec, instructions)
        if fast is not None:
            return fast
    arrows = _find_arrows(spec)
    if not arrows:
        raise SignatureError("missing '->' between input and output fields", spec, len(spec))
    if len(arrows) > 1:
        raise SignatureError("more than one '->'", spec, arrows[1])
    arrow = arrows[0]
    fields: list[Field] = []
    seen: dict[str, int] = {}
    _parse_side(spec, 0, arrow, "input", fields, seen, resolve)
    _parse_side(spec, arrow + 2, len(spec), "output", fields, seen, resolve)
    if not any(f[1] == "output" for f in fields):
        raise SignatureError(_NO_OUTPUTS, spec, len(spec))
    if instructions is not None and not isinstance(instructions, str):
        raise TypeError(f"instructions must be a string, not {type(instructions).__name__}")
    return Signature._build(fields, instructions)


_compile_cached = functools.lru_cache(maxsize=2048)(_compile)
_NO_OUTPUTS = "no output fields: a signature needs at least one output after '->' (e.g. 'question -> answer')"


def _resolver(custom_types: Mapping[str, Any] | None, depth: int = 2) -> _types.Resolver:
    """Look names up in ``custom_types``, then the caller's scope (as DSPy's
    ``_detect_custom_types_from_caller``); dotted names walk attributes (``Container.Query``)."""
    frame: Any = sys._getframe(depth - 1)
    scopes: list[Mapping[str, Any]] = [custom_types] if custom_types else []
    for _ in range(100):  # DSPy looks up to 100 frames up
        if frame is None:
            break
        if not str(frame.f_globals.get("__name__", "")).startswith("dspex."):
            scopes += [frame.f_locals, frame.f_globals]
        frame = frame.f_back

    def resolve(name: str) -> Any:
        head, *rest = name.split(".")
        for scope in scopes:
            if head in scope:
                obj = scope[head]
                for part in rest:
                    obj = getattr(obj, part, None)
                if isinstance(obj, type) or _types.is_supported(obj):
                    return obj
                return None
        return None

    return resolve


def signature(
    spec: Any, instructions: str | None = None, *, custom_types: Mapping[str, Any] | None = None
) -> Signature:
    """Compile ``spec`` (a string, a ``Signature``, or a dict of fields) into a Signature.

    Strings are compiled once per ``(spec, instructions)`` and cached; passing
    ``instructions`` with a Signature returns a copy with those instructions.
    Type names outside the built-in vocabulary come from ``custom_types={"Name": cls}``,
    else from the calling scope (as in DSPy); those signatures are not cached.
    """
    if spec.__class__ is str:
        if custom_types:
            return _compile(spec, instructions, _resolver(custom_types))
        try:
            return _compile_cached(spec, instructions)
        except SignatureError as exc:
            if "unknown type" not in str(exc):
                raise
            return _compile(spec, instructions, _resolver(None))
    if isinstance(spec, Signature):
        return spec if instructions is None else spec.with_instructions(instructions)
    if isinstance(spec, Mapping):
        fields: list[Field] = []
        for name, value in spec.items():
            _check_name(name)
            if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], Field):
                ann, fld = value
                if ann is not None:
                    _check_annotation(name, ann)
                fields.append(fld.bind(name, ann))
            elif isinstance(value, Field):
                fields.append(value.bind(name) if value.name != name else value)
            else:
                raise SignatureError(f"field {name!r} must be a Field or a (type, Field) pair, not {value!r}")
        if not any(f.kind == "output" for f in fields):
            raise SignatureError(_NO_OUTPUTS)
        return Signature._build(fields, instructions)
    if isinstance(spec, str):  # str subclass
        return signature(str(spec), instructions, custom_types=custom_types)
    raise TypeError(f"cannot make a signature from {type(spec).__name__}; pass a string like 'question -> answer'")


def ensure_signature(
    spec: Any, instructions: str | None = None, *, custom_types: Mapping[str, Any] | None = None
) -> Signature:
    """``signature`` that also accepts DSPy signature classes (read through their fields)."""
    if isinstance(spec, (str, Signature, Mapping)):
        return signature(spec, instructions, custom_types=custom_types)
    fields_attr = getattr(spec, "input_fields", None)
    if fields_attr is not None and hasattr(spec, "output_fields"):  # a dspy.Signature class
        return _from_dspy(spec) if instructions is None else _from_dspy(spec).with_instructions(instructions)
    return signature(spec, instructions)


def _from_dspy(cls: Any) -> Signature:
    fields = []
    for kind, group in (("input", cls.input_fields), ("output", cls.output_fields)):
        for name, info in group.items():
            extra = info.json_schema_extra or {}
            fields.append(Field(name, kind, info.annotation, extra.get("desc"), extra.get("prefix"),
                                extra=_dspy_extra(info)))
    return Signature._build(fields, cls.instructions, getattr(cls, "__name__", "StringSignature"))


def _dspy_extra(info: Any) -> FieldExtra | None:
    """Defaults and constraints of a pydantic FieldInfo (a dspy.Signature field)."""
    pairs: list[tuple[str, Any]] = []
    if info.default_factory is not None:
        pairs.append(("default_factory", info.default_factory))
    elif not info.is_required():
        pairs.append(("default", info.default))
    for meta in info.metadata:
        for key in CONSTRAINT_TEXT:
            if getattr(meta, key, None) is not None:
                pairs.append((key, getattr(meta, key)))
    return FieldExtra(pairs) if pairs else None


def _from_class_body(cls_name: str, ns: dict[str, Any]) -> Signature:
    inherited: list[Field] = []
    instructions: str | None = None
    for base in ns.get("__orig_bases__", ()):
        if isinstance(base, Signature):
            inherited.extend(base.fields.values())
            instructions = base.instructions
    annotations: dict[str, Any] = dict(ns.get("__annotations__", {}))
    fields: dict[str, Field] = {f.name: f for f in inherited}
    for attr, value in ns.items():
        if not isinstance(value, Field):
            continue
        ann = annotations.get(attr, value.annotation if value.annotation is not None else str)
        if isinstance(ann, str):
            if len(ann) > 1 and ann[0] == ann[-1] and ann[0] in "'\"":
                ann = ann[1:-1]  # `x: "list[int]"` under `from __future__ import annotations`
            ann = _types.parse_type(ann, 0, len(ann), _resolver(ns))
        else:
            _check_annotation(attr, ann)
        _check_name(attr)
        fields[attr] = value.bind(attr, ann)
    for attr in annotations:
        if attr not in fields and not attr.startswith("_"):
            raise SignatureError(
                f"field {attr!r} of {cls_name} must be declared with InputField() or OutputField()"
            )
    doc = ns.get("__doc__")
    if doc is not None:
        instructions = doc
    ordered = [f for f in fields.values() if f.kind == "input"] + [f for f in fields.values() if f.kind == "output"]
    if not any(f.kind == "output" for f in ordered):
        raise SignatureError(f"{cls_name} has no output fields: declare at least one with OutputField()")
    return Signature._build(ordered, instructions, cls_name, from_class=doc is not None)
