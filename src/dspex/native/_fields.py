"""Signature fields: ``Field`` (an immutable tuple), ``InputField()`` / ``OutputField()``
(unbound fields for class bodies), ``FieldExtra`` (defaults and pydantic constraints), and
the name helpers DSPy 3.4.1 uses (``infer_prefix``, ``default_instructions``, ``cleandoc``).
Re-exported by ``dspex.native.signature``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any

from . import _types

__all__ = [
    "CONSTRAINT_TEXT",
    "Field",
    "FieldExtra",
    "InputField",
    "OutputField",
    "cleandoc",
    "default_instructions",
    "infer_prefix",
]


# --------------------------------------------------------------------------- helpers


def cleandoc(doc: str) -> str:
    """``inspect.cleandoc`` (Python 3.11) without importing ``inspect`` (slow to import)."""
    lines = doc.expandtabs().split("\n")
    margin = sys.maxsize
    for line in lines[1:]:
        content = len(line.lstrip())
        if content:
            margin = min(margin, len(line) - content)
    if lines:
        lines[0] = lines[0].lstrip()
    if margin < sys.maxsize:
        for i in range(1, len(lines)):
            lines[i] = lines[i][margin:]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines)


_SIMPLE_NAME = re.compile(r"[a-z_]+")
_CAMEL1 = re.compile("(.)([A-Z][a-z]+)")
_CAMEL2 = re.compile("([a-z0-9])([A-Z])")
_LETTER_DIGIT = re.compile(r"([a-zA-Z])(\d)")
_DIGIT_LETTER = re.compile(r"(\d)([a-zA-Z])")


def infer_prefix(name: str) -> str:
    """DSPy's ``infer_prefix``: ``"question"`` -> ``"Question"``, ``"HTMLParser"`` -> ``"HTML Parser"``."""
    if _SIMPLE_NAME.fullmatch(name):  # fast path: lowercase snake_case
        return " ".join(w.capitalize() for w in name.split("_"))
    s = _CAMEL1.sub(r"\1_\2", name)
    s = _CAMEL2.sub(r"\1_\2", s)
    s = _LETTER_DIGIT.sub(r"\1_\2", s)
    s = _DIGIT_LETTER.sub(r"\1_\2", s)
    return " ".join(w if w.isupper() else w.capitalize() for w in s.split("_"))


def default_instructions(inputs: Iterable[str], outputs: Iterable[str]) -> str:
    ins = ", ".join(["`" + n + "`" for n in inputs])
    outs = ", ".join(["`" + n + "`" for n in outputs])
    return f"Given the fields {ins}, produce the fields {outs}."


# --------------------------------------------------------------------------- fields

_NAME_DEFAULTS: dict[str, tuple[str, str]] = {}  # name -> (default desc, default prefix)
_MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()
# pydantic constraints DSPy shows in prompts, with its wording (dspy/signatures/field.py).
CONSTRAINT_TEXT = {
    "gt": "greater than: ",
    "ge": "greater than or equal to: ",
    "lt": "less than: ",
    "le": "less than or equal to: ",
    "min_length": "minimum length: ",
    "max_length": "maximum length: ",
    "multiple_of": "a multiple of the given number: ",
    "allow_inf_nan": "allow 'inf', '-inf', 'nan' values: ",
}


class FieldExtra(tuple):  # type: ignore[type-arg,unused-ignore]
    """A field's ``default`` / ``default_factory`` / constraints as ordered (key, value) pairs.

    Hashable even when a default is not (``default=[]``), so signatures stay values."""

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(tuple((k, repr(v)) for k, v in self))

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self:
            if k == key:
                return v
        return default

    @property
    def constraints(self) -> str:
        return ", ".join(f"{CONSTRAINT_TEXT[k]}{v}" for k, v in self if k in CONSTRAINT_TEXT)


class Field(tuple):  # type: ignore[type-arg,unused-ignore]
    """One field: ``(name, kind, annotation, desc, prefix, type_name, extra)``, immutable.

    ``desc`` is ``"${name}"`` when no description was given (DSPy's convention;
    prompts then show an empty description). ``InputField()`` / ``OutputField()``
    make an unbound field (empty name) for class bodies and ``prepend``/``append``.
    """

    __slots__ = ()

    def __new__(
        cls,
        name: str,
        kind: str,
        annotation: Any = str,
        desc: str | None = None,
        prefix: str | None = None,
        type_name: str | None = None,
        extra: FieldExtra | None = None,
    ) -> Field:
        if kind not in ("input", "output"):
            raise ValueError(f"field kind must be 'input' or 'output', not {kind!r}")
        if name and (desc is None or prefix is None):
            defaults = _NAME_DEFAULTS.get(name)
            if defaults is None:
                defaults = (f"${{{name}}}", infer_prefix(name) + ":")
                if len(_NAME_DEFAULTS) < 8192:
                    _NAME_DEFAULTS[name] = defaults
            if desc is None:
                desc = defaults[0]
            if prefix is None:
                prefix = defaults[1]
        if type_name is None and annotation is not None:
            type_name = "str" if annotation is str else _types.type_name(annotation)
        return tuple.__new__(cls, (name, kind, annotation, desc, prefix, type_name, extra or None))

    @property
    def name(self) -> str:
        return self[0]

    @property
    def kind(self) -> str:
        return self[1]

    @property
    def annotation(self) -> Any:
        return self[2]

    @property
    def desc(self) -> str:
        return self[3]

    @property
    def prefix(self) -> str:
        return self[4]

    @property
    def type_name(self) -> str:
        return self[5]

    @property
    def extra(self) -> FieldExtra | None:
        return self[6]

    @property
    def has_default(self) -> bool:
        e = self[6]
        return e is not None and (e.get("default", _MISSING) is not _MISSING or e.get("default_factory") is not None)

    def default_value(self) -> Any:
        """The field's default (a fresh one from ``default_factory``); only when ``has_default``."""
        e = self[6]
        factory = e.get("default_factory") if e is not None else None
        return factory() if factory is not None else e.get("default", None) if e is not None else None

    @property
    def constraints(self) -> str:
        """DSPy's prompt text for the pydantic constraints (``"minimum length: 2"``), or ""."""
        return self[6].constraints if self[6] is not None else ""

    @property
    def is_input(self) -> bool:
        return self[1] == "input"

    @property
    def has_default_desc(self) -> bool:
        return self[3] == f"${{{self[0]}}}"

    def bind(self, name: str, annotation: Any = None) -> Field:
        """This field under ``name`` (defaults filled in), typed ``annotation`` if given."""
        ann = annotation if annotation is not None else (self[2] if self[2] is not None else str)
        desc = self[3] if self[3] is not None and (self[0] == "" or self[3] != f"${{{self[0]}}}") else None
        prefix = self[4] if self[0] == "" or self[4] != infer_prefix(self[0]) + ":" else None
        return Field(name, self[1], ann, desc, prefix, extra=self[6])

    def replace(self, **changes: Any) -> Field:
        d = {"name": self[0], "kind": self[1], "annotation": self[2], "desc": self[3], "prefix": self[4],
             "extra": self[6]}
        d.update(changes)
        return Field(**d)

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        return (
            f"Field(name={self[0]!r}, kind={self[1]!r}, annotation={self[5]}, desc={self[3]!r}, prefix={self[4]!r})"
        )


_FIELD_ARGS = {"desc", "prefix", "description", "format", "parser"}
_KEPT_ARGS = {"default", "default_factory", *CONSTRAINT_TEXT}


def _make_unbound(kind: str, annotation: Any, desc: str | None, prefix: str | None, extra: dict[str, Any]) -> Field:
    unknown = set(extra) - _FIELD_ARGS - _KEPT_ARGS
    if unknown:
        raise TypeError(
            f"unsupported argument(s) for {kind.capitalize()}Field: {', '.join(sorted(unknown))} "
            f"(supported: desc, prefix, annotation, {', '.join(sorted(_KEPT_ARGS))})"
        )
    if "default" in extra and "default_factory" in extra:
        raise TypeError(f"{kind.capitalize()}Field takes default= or default_factory=, not both")
    if extra.get("default_factory") is not None and not callable(extra["default_factory"]):
        raise TypeError(f"default_factory must be callable, not {type(extra['default_factory']).__name__}")
    if desc is None and "description" in extra:
        desc = extra["description"]
    kept = FieldExtra((k, v) for k, v in extra.items() if k in _KEPT_ARGS)
    return Field("", kind, annotation, desc, prefix, extra=kept or None)


def InputField(
    *, desc: str | None = None, prefix: str | None = None, annotation: Any = None, **extra: Any
) -> Field:
    """An unbound input field, for class bodies and ``Signature.prepend``/``append``."""
    return _make_unbound("input", annotation, desc, prefix, extra)


def OutputField(
    *, desc: str | None = None, prefix: str | None = None, annotation: Any = None, **extra: Any
) -> Field:
    """An unbound output field, for class bodies and ``Signature.prepend``/``append``."""
    return _make_unbound("output", annotation, desc, prefix, extra)
