"""Checked prompt templates: ``Template("Answer {question} using {context}", sig)``.

Syntax: ``{name}`` is a placeholder (``name`` a Python identifier); ``{{`` and
``}}`` are literal braces. Compiling splits the text into literal and field parts
once and, when a signature is given, checks every placeholder against its fields
(``TemplateError`` names the placeholder and its 0-based position). Rendering is
one join; values are written as prompts write them (``str`` as is, lists/dicts
as JSON, a list given to a ``str`` field as a numbered list).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import TemplateError
from ._format import format_value
from .signature import Signature, ensure_signature

__all__ = ["Template"]


def _compile(text: str) -> tuple[list[str], list[tuple[str, int]]]:
    """Literal pieces and (name, position) placeholders: literals[i] precedes fields[i]."""
    literals: list[str] = []
    fields: list[tuple[str, int]] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "{":
            if text.startswith("{{", i):
                buf.append("{")
                i += 2
                continue
            close = text.find("}", i + 1)
            if close < 0:
                raise TemplateError(
                    f"unclosed '{{' at position {i} (write '{{{{' for a literal brace)", placeholder=None, position=i
                )
            name = text[i + 1 : close]
            stripped = name.strip()
            if not stripped:
                raise TemplateError(f"empty placeholder '{{}}' at position {i}", placeholder="", position=i)
            if not stripped.isidentifier():
                raise TemplateError(
                    f"invalid placeholder {{{name}}} at position {i}: use a field name like {{question}} "
                    "(write '{{' and '}}' for literal braces)",
                    placeholder=name,
                    position=i,
                )
            literals.append("".join(buf))
            buf = []
            fields.append((stripped, i))
            i = close + 1
            continue
        if ch == "}":
            if text.startswith("}}", i):
                buf.append("}")
                i += 2
                continue
            raise TemplateError(
                f"single '}}' at position {i} (write '}}}}' for a literal brace)", placeholder=None, position=i
            )
        j = i + 1
        while j < n and text[j] not in "{}":
            j += 1
        buf.append(text[i:j])
        i = j
    literals.append("".join(buf))
    return literals, fields


class Template:
    """A compiled template. ``render(**values)`` fills the placeholders."""

    __slots__ = ("_annotations", "_fields", "_literals", "fields", "positions", "signature", "text")

    def __init__(self, text: str, signature: Signature | str | None = None) -> None:
        if not isinstance(text, str):
            raise TypeError(f"template text must be a string, not {type(text).__name__}")
        self.text = text
        self._literals, self._fields = _compile(text)
        self.signature = ensure_signature(signature) if signature is not None else None
        annotations: dict[str, Any] = {}
        if self.signature is not None:
            known = self.signature.fields
            for name, pos in self._fields:
                if name not in known:
                    raise TemplateError(
                        f"unknown placeholder {{{name}}} at position {pos}: the signature "
                        f"{self.signature.signature!r} has fields {', '.join(known) or '(none)'}",
                        placeholder=name,
                        position=pos,
                    )
                annotations[name] = known[name].annotation
        self._annotations = annotations
        # names used, in first-use order
        self.fields: tuple[str, ...] = tuple(dict.fromkeys(name for name, _ in self._fields))
        self.positions: dict[str, int] = {}
        for name, pos in self._fields:
            self.positions.setdefault(name, pos)

    def render(self, values: Mapping[str, Any] | None = None, /, **kwargs: Any) -> str:
        """The text with every placeholder replaced; TemplateError if a value is missing."""
        if values is None:
            values = kwargs
        elif kwargs:
            values = {**values, **kwargs}
        literals = self._literals
        out = [literals[0]]
        annotations = self._annotations
        for i, (name, pos) in enumerate(self._fields):
            try:
                value = values[name]
            except KeyError:
                raise TemplateError(
                    f"no value for placeholder {{{name}}} (position {pos}); "
                    f"given: {', '.join(values) or '(nothing)'}",
                    placeholder=name,
                    position=pos,
                ) from None
            out.append(value if type(value) is str else format_value(value, annotations.get(name, str)))
            out.append(literals[i + 1])
        return "".join(out)

    __call__ = render

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and (self.text, self.signature) == (other.text, other.signature)

    def __hash__(self) -> int:
        return hash((self.text, self.signature))
