"""GBNF grammars that make a llama.cpp model's reply parse for a signature.

``gbnf_for(signature, adapter)`` builds a grammar (llama.cpp's GBNF dialect) that
admits only replies the adapter's ``parse`` accepts:

* ChatAdapter: the output-field markers in signature order, each followed by a
  value of the field's type, then ``[[ ## completed ## ]]``::

      [[ ## reasoning ## ]]\\n<text>\\n\\n[[ ## answer ## ]]\\n<int>\\n\\n[[ ## completed ## ]]

  (the completed marker is optional, so the model can end the reply after the last
  value instead of being pushed on to the length cap);
  ``str`` is free text that cannot contain ``[[`` (so it can never open another
  field) and starts with a visible character, capped at ``max_chars``; unless the
  field's name says code (``code``, ``sql``, ``json``...), it cannot contain ``{name``
  (a placeholder echo like ``{answer}``) or two backticks (a code fence) either; ``int`` an
  integer; ``float`` a number; ``bool`` ``True|False``; ``Literal``/``Enum`` the
  exact values; ``Optional[X]`` X or ``None``; lists, dicts, tuples, sets and
  pydantic models compact JSON of that type; anything else any JSON value.
* JSONAdapter: one JSON object with the output fields as keys, in order.

Caps on text length and list length are what keep a small model from rambling
past ``max_tokens`` and losing the later fields. Pure string building: no
llama_cpp import. Results are cached per (output fields, adapter, caps).
"""

from __future__ import annotations

import enum
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin

from ._memo import Memo

__all__ = ["DEFAULT_MAX_CHARS", "DEFAULT_MAX_ITEMS", "gbnf_for", "gbnf_literal"]

DEFAULT_MAX_CHARS = 600  # per free-text field; two of them fit in 512 tokens
DEFAULT_MAX_ITEMS = 16  # per JSON array / object
_JSON_STR_CHARS = 200  # per string inside JSON values

_grammars: Memo[str] = Memo(512)


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal (quotes, backslashes, control chars escaped)."""
    out = ['"']
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _adapter_kind(adapter: Any) -> str:
    if adapter is None:
        return "chat"
    if isinstance(adapter, str):
        kind = adapter.lower().replace("adapter", "").strip()
        if kind not in ("chat", "json"):
            raise ValueError(f"adapter must be 'chat', 'json' or an adapter object, not {adapter!r}")
        return kind
    # JSONAdapter subclasses ChatAdapter in DSPy, so look at the name, most specific first.
    for cls in type(adapter).__mro__:
        if "JSON" in cls.__name__:
            return "json"
        if "Chat" in cls.__name__:
            return "chat"
    raise ValueError(f"no grammar for adapter {type(adapter).__name__}; use ChatAdapter or JSONAdapter")


def _output_fields(signature: Any) -> list[tuple[str, Any]]:
    if isinstance(signature, str):
        from .signature import signature as parse_signature

        signature = parse_signature(signature)
    fields = getattr(signature, "output_fields", None)
    if fields is None:
        raise TypeError(f"gbnf_for needs a signature with .output_fields, not {type(signature).__name__}")
    return [(name, getattr(f, "annotation", str)) for name, f in fields.items()]


def gbnf_for(
    signature: Any,
    adapter: Any = "chat",
    *,
    max_chars: int | None = None,
    max_tokens: int | None = None,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> str:
    """A GBNF grammar whose every sentence parses with ``adapter`` for ``signature``.

    ``signature``: a dspex Signature (or a signature string, or anything with
    ``.output_fields`` of objects with ``.annotation``, e.g. a DSPy signature).
    ``adapter``: ``"chat"``, ``"json"`` or an adapter instance. ``max_chars`` caps
    each free-text value (default ``DEFAULT_MAX_CHARS``); when it is None and
    ``max_tokens`` is given, the caps shrink so the whole reply fits in that many
    tokens (counting a token per character, the worst case for ASCII) and the last
    field is always reached. ``max_items`` caps JSON arrays and objects.
    """
    kind = _adapter_kind(adapter)
    fields = _output_fields(signature)
    if not fields:
        raise ValueError("the signature has no output fields: nothing to constrain")
    if max_chars is None:
        if max_tokens:
            # Every field must fit in max_tokens, or a reply cut short loses the last
            # fields. A token is at least one ASCII character (digits are one token
            # each in SmolLM2's vocabulary), so count a token per character after the
            # markers (~10 tokens each) and the scalar values (~20 each), and share
            # what is left among the open-ended fields (text, lists, objects).
            reserve = 10 + sum(10 + (20 if _is_scalar(ann) else 0) for _, ann in fields)
            n_open = sum(1 for _, ann in fields if not _is_scalar(ann)) or 1
            max_chars = max(16, min(DEFAULT_MAX_CHARS, (int(max_tokens) - reserve) // n_open))
            # a list or object of short strings stays within the same share
            max_items = min(max_items, max(1, max_chars // (_item_chars(max_chars) + 4)))
        else:
            max_chars = DEFAULT_MAX_CHARS
    max_chars = max(1, int(max_chars))
    max_items = max(1, int(max_items))
    try:
        key: Any = (kind, max_chars, max_items, tuple(fields))
        hash(key)
    except TypeError:  # an unhashable annotation: key on its repr
        key = (kind, max_chars, max_items, tuple((n, repr(a)) for n, a in fields))
    return _grammars.get(key, lambda: _Builder(max_chars, max_items).build(fields, kind))


def _item_chars(max_chars: int) -> int:
    """Cap on each string inside a JSON list/object: a twelfth of the text cap."""
    return min(_JSON_STR_CHARS, max(16, max_chars // 12))


def _is_scalar(annotation: Any) -> bool:
    """int, float, bool, Literal, Enum (and Optional of those): short by construction."""
    annotation = _strip_annotated(annotation)
    if annotation in (int, float, bool, type(None)) or get_origin(annotation) is Literal:
        return True
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        return all(_is_scalar(a) for a in get_args(annotation))
    return False


def _strip_annotated(annotation: Any) -> Any:
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_optional_str(annotation: Any) -> bool:
    annotation = _strip_annotated(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        args = get_args(annotation)
        return str in args and type(None) in args
    return False


_NAME_RE = re.compile(r"[^a-zA-Z0-9]+")
# Output fields whose text may be code or markup keep braces and backticks.
_CODE_FIELD = re.compile(r"code|program|script|snippet|json|html|markdown|template|regex|sql|latex", re.I)


class _Builder:
    """Accumulates named rules; one rule per distinct (type, mode)."""

    def __init__(self, max_chars: int, max_items: int) -> None:
        self.max_chars = max_chars
        self.max_items = max_items
        self.item_chars = _item_chars(max_chars)
        self.rules: dict[str, str] = {}
        self.by_key: dict[Any, str] = {}
        self.counter = 0

    # -- plumbing -----------------------------------------------------------------

    def rule(self, base: str, body: str | Callable[[str], str], key: Any = None) -> str:
        """Add a rule (once per ``key``); ``body`` may be a function of the rule's own name."""
        if key is not None and key in self.by_key:
            return self.by_key[key]
        name = _NAME_RE.sub("-", base).strip("-").lower() or "r"
        if name in self.rules:
            self.counter += 1
            name = f"{name}-{self.counter}"
        self.rules[name] = ""  # reserve before building the body (recursive types)
        if key is not None:
            self.by_key[key] = name
        self.rules[name] = body(name) if callable(body) else body
        return name

    def render(self, root: str) -> str:
        lines = [f"root ::= {root}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items()]
        return "\n".join(lines) + "\n"

    # -- top level ----------------------------------------------------------------

    def build(self, fields: list[tuple[str, Any]], kind: str) -> str:
        parts: list[str] = []
        if kind == "chat":
            for i, (name, ann) in enumerate(fields):
                sep = "" if i == 0 else "\\n\\n"
                parts.append(f'"{sep}[[ ## {name} ## ]]\\n"')
                parts.append(self.chat_value(ann, name))
            # The completed marker is optional: the model may end the reply (EOS) right after
            # the last value, as it does unconstrained. A required marker masks EOS, so a
            # model that wants to stop after "Neptune" must ramble on up to the length cap
            # before the grammar lets it out. DSPy's parse does not need the marker.
            parts.append('("\\n\\n[[ ## completed ## ]]" "\\n"?)?')  # demos end in a newline
        else:
            parts.append('"{\\n"')
            for i, (name, ann) in enumerate(fields):
                key_text = f"  {json.dumps(name, ensure_ascii=False)}: "
                parts.append(gbnf_literal(key_text))
                parts.append(self.json_value(ann, name))
                parts.append(gbnf_literal(",\n" if i < len(fields) - 1 else "\n"))
            parts.append('"}"')
        return self.render(" ".join(parts))

    # -- ChatAdapter values (the text between markers) ----------------------------

    def chat_value(self, ann: Any, field: str) -> str:
        ann = _strip_annotated(ann)
        if ann is str or ann is Any or _is_optional_str(ann) or _is_reasoning(ann):
            return self.text(plain=not _CODE_FIELD.search(field))
        if ann is bool:
            return self.rule("bool", '"True" | "False"', key="py-bool")
        if ann is int:
            return self.integer()
        if ann is float:
            return self.number()
        origin = get_origin(ann)
        if origin is Literal:
            return self.rule(
                f"{field}-literal", " | ".join(_chat_literal(v) for v in get_args(ann)), key=("chat", ann)
            )
        if isinstance(ann, type) and issubclass(ann, enum.Enum):
            alts = [gbnf_literal(m.value if isinstance(m.value, str) else m.name) for m in ann]
            return self.rule(f"{field}-enum", " | ".join(alts), key=("chat", ann))
        if ann is type(None):
            return '"None"'
        if origin in (Union, types.UnionType):
            args = get_args(ann)
            alts = [self.chat_value(a, field) for a in args if a is not type(None)]
            if type(None) in args:
                alts.append('"None"')
            return self.rule(f"{field}-union", " | ".join(alts), key=("chat", ann))
        # Containers, models and unknown types: the JSON that DSPy's parse_value reads.
        return self.json_value(ann, field)

    def text(self, plain: bool = True) -> str:
        # A visible first character (parse strips values; an empty value reads as missing
        # to a human), then anything without "[[": a line can never start a field marker.
        # ``plain`` (every field not named like code): no "{name" either, so a small model
        # cannot echo the prompt's "{answer}" placeholders, and no "``" (no code fences).
        # Each two-character unit ends in a character that cannot start a banned pair.
        n = self.max_chars
        if plain:
            char = self.rule(
                "plain-char", '[^[{`] | "[" [^[{`] | "{" [^[{`a-zA-Z_] | "`" [^[{`]', key="plain-char"
            )
            first = "[^ \\t\\n\\r[{`]"
        else:
            char = self.rule("text-char", '[^[] | "[" [^[]', key="text-char")
            first = "[^ \\t\\n\\r[]"
        kind = "plain" if plain else "text"
        if n == 1:
            return self.rule(f"{kind}-1", first, key=(kind, 1))
        return self.rule(f"{kind}-{n}", f"{first} {char}{{0,{n - 1}}}", key=(kind, n))

    def integer(self) -> str:
        return self.rule("int", '"-"? ([0-9] | [1-9] [0-9]{1,14})', key="int")

    def number(self) -> str:
        return self.rule(
            "number",
            '"-"? ([0-9] | [1-9] [0-9]{1,15}) ("." [0-9]{1,12})? ([eE] [-+]? [0-9]{1,3})?',
            key="number",
        )

    # -- JSON values ---------------------------------------------------------------

    def json_value(self, ann: Any, field: str) -> str:
        ann = _strip_annotated(ann)
        origin = get_origin(ann)
        args = get_args(ann)
        if ann is str or _is_reasoning(ann):
            # A top-level JSONAdapter field gets the text cap; strings inside lists and
            # objects a twelfth of it, so a whole list stays near the budget too.
            return self.json_string(self.max_chars if field else self.item_chars)
        if ann is bool:
            return self.rule("json-bool", '"true" | "false"', key="json-bool")
        if ann is int:
            return self.integer()
        if ann is float:
            return self.number()
        if ann is type(None):
            return '"null"'
        if ann is Any or ann is object:
            return self.any_json()
        if origin is Literal:
            alts = [gbnf_literal(json.dumps(_jsonable(v), ensure_ascii=False)) for v in args]
            return self.rule(f"{field or 'json'}-literal", " | ".join(alts), key=("json", ann))
        if isinstance(ann, type) and issubclass(ann, enum.Enum):
            alts = [gbnf_literal(json.dumps(_jsonable(m.value), ensure_ascii=False)) for m in ann]
            return self.rule(f"{field or 'json'}-enum", " | ".join(alts), key=("json", ann))
        if origin in (Union, types.UnionType):
            alts = [self.json_value(a, "") for a in args]
            return self.rule(f"{field or 'json'}-union", " | ".join(alts), key=("json", ann))
        if origin in (list, set, frozenset) or ann in (list, set, frozenset):
            item = self.json_value(args[0], "") if args else self.any_json()
            return self.array(item, key=("array", ann))
        if origin is tuple or ann is tuple:
            if not args or (len(args) == 2 and args[1] is Ellipsis):
                item = self.json_value(args[0], "") if args else self.any_json()
                return self.array(item, key=("array", ann))
            if args == ((),):  # tuple[()]
                return '"[]"'
            items = ' ", " '.join(self.json_value(a, "") for a in args)
            return self.rule("tuple", f'"[" {items} "]"', key=("tuple", ann))
        if origin is dict or ann is dict:
            value = self.json_value(args[1], "") if len(args) == 2 else self.any_json()
            key_type = args[0] if args else str
            if key_type is int:  # JSON keys are strings: int keys appear quoted
                key_rule = self.rule("json-int-key", f'"\\"" {self.integer()} "\\""', key="json-int-key")
            elif get_origin(key_type) is Literal or (
                isinstance(key_type, type) and issubclass(key_type, enum.Enum)
            ):
                key_rule = self.json_value(key_type, "")
            else:
                key_rule = self.json_string()
            pair = self.rule("pair", f'{key_rule} ": " {value}', key=("pair", ann))
            return self.seq("object", "{", "}", pair, key=("object", ann))
        model_fields = getattr(ann, "model_fields", None)
        if isinstance(ann, type) and isinstance(model_fields, dict):
            return self.model(ann, model_fields)
        return self.any_json()

    def model(self, ann: type, model_fields: dict[str, Any]) -> str:
        # A pydantic model: an object with every field, in declaration order.
        def body(name: str) -> str:
            parts = ['"{"']
            for i, (fname, info) in enumerate(model_fields.items()):
                alias = getattr(info, "alias", None) or fname
                sep = "" if i == 0 else ", "
                parts.append(gbnf_literal(f"{sep}{json.dumps(alias, ensure_ascii=False)}: "))
                parts.append(self.json_value(getattr(info, "annotation", Any), ""))
            parts.append('"}"')
            return " ".join(parts)

        return self.rule(f"model-{ann.__name__}", body, key=("model", ann))

    def json_string(self, n: int | None = None) -> str:
        n = self.item_chars if n is None else n
        char = self.rule(
            "json-char",
            '[^"\\\\\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})',
            key="json-char",
        )
        return self.rule(f"json-string-{n}", f'"\\"" {char}{{0,{n}}} "\\""', key=("json-string", n))

    def array(self, item: str, key: Any) -> str:
        return self.seq("array", "[", "]", item, key=key)

    def seq(self, base: str, open_: str, close: str, item: str, key: Any) -> str:
        more = self.max_items - 1
        tail = f' ("," " "? {item}){{0,{more}}}' if more > 0 else ""
        return self.rule(base, f'"{open_}" ({item}{tail})? "{close}"', key=key)

    def any_json(self) -> str:
        if "json-any" in self.by_key:
            return self.by_key["json-any"]

        def body(name: str) -> str:
            s = self.json_string()
            num = self.number()
            arr = self.seq("json-any-array", "[", "]", name, key="json-any-array")
            pair = self.rule("json-any-pair", f'{s} ": " {name}', key="json-any-pair")
            obj = self.seq("json-any-object", "{", "}", pair, key="json-any-object")
            return f'{obj} | {arr} | {s} | {num} | "true" | "false" | "null"'

        return self.rule("json-any", body, key="json-any")


def _is_reasoning(ann: Any) -> bool:
    # dspy.Reasoning (ChainOfThought's field type in DSPy) is text for the adapters.
    return isinstance(ann, type) and ann.__name__ == "Reasoning" and "dspy" in (ann.__module__ or "")


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _chat_literal(value: Any) -> str:
    """One Literal member as the ChatAdapter text DSPy's parse_value maps back to it."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str):
        # parse_value strips the text, then one pair of surrounding quotes: values that
        # stripping would change go out quoted, so they survive.
        if (
            value != value.strip()
            or not value
            or (len(value) > 1 and value[0] == value[-1] and value[0] in "\"'")
        ):
            return gbnf_literal(f'"{value}"')
        return gbnf_literal(value)
    return gbnf_literal(str(value))  # True/False/None/ints: Python spellings parse back
