"""Deterministic replies that fill the output fields a prompt asks for.

Shared by :class:`dspex.testing.FakeLMServer` and :class:`dspex.testing.DummyLM`.
It reads the request the way an LM would: the last user message ends with
DSPy's ChatAdapter wording (``Respond with the corresponding output fields,
starting with the field `[[ ## a ## ]]`, then ...``) or the JSONAdapter wording
(``Respond with a JSON object in the following order of fields: `a`, then ...``),
and the system message may carry a ``# note:`` per field (Literal options, enum
values, a JSON schema). Values depend only on the field's type, so the same
prompt always gets the same reply. Stdlib only (plus ``dspex._prompt_fields``, which
reads the requested fields for both this and the bridge).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from .._prompt_fields import requested_fields  # shared with the bridge's grammar LM

__all__ = ["autofill", "requested_fields", "value_for_type"]


def _split_args(text: str) -> list[str]:
    """Split ``a, b[c, d], e`` at top-level commas."""
    out: list[str] = []
    depth = 0
    quote = ""
    cur: list[str] = []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if cur:
        out.append("".join(cur).strip())
    return out


def _from_schema(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    if "$ref" in schema:
        ref = schema["$ref"].rsplit("/", 1)[-1]
        return _from_schema(defs.get(ref, {}), defs)
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return _from_schema(options[0], defs)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: _from_schema(sub, defs) for name, sub in props.items()}
    if kind == "array":
        items = schema.get("items")
        return [_from_schema(items, defs)] if isinstance(items, dict) else []
    return {"string": "fake", "integer": 1, "number": 0.5, "boolean": True, "null": None}.get(str(kind), "fake")



def value_for_type(type_name: str | None, note: str = "", field: str = "value") -> Any:
    """A deterministic value of the Python type named ``type_name`` (DSPy spelling).

    ``note`` is the field's ``# note:`` text from the system message, used for
    Literal options, enum values and JSON schemas.
    """
    if note:
        if m := re.search(r"must exactly match \(no extra characters\) one of: (.*)$", note):
            return m.group(1).split("; ")[0]
        if m := re.search(r"must be one of: (.*)$", note):
            return m.group(1).split("; ")[0]
        if m := re.search(r"must adhere to the JSON schema: (.*)$", note):
            try:
                schema = json.loads(m.group(1))
                return _from_schema(schema, schema.get("$defs", {}))
            except (ValueError, AttributeError):
                pass
    name = (type_name or "str").strip()
    head, _, rest = name.partition("[")
    args = _split_args(rest[:-1]) if rest.endswith("]") else []
    if head in ("str", "Reasoning", ""):
        return f"fake {field}"
    if head == "int":
        return 1
    if head == "float":
        return 0.5
    if head == "bool":
        return True
    if head in ("NoneType", "None"):
        return None
    if head == "Literal":
        first = args[0] if args else "fake"
        try:
            return json.loads(first) if not first.startswith("'") else first.strip("'")
        except ValueError:
            return first.strip("'\"")
    if head in ("Union", "Optional"):
        real = [a for a in args if a not in ("NoneType", "None")] or args
        return value_for_type(real[0], "", field) if real else None
    if head in ("list", "List", "set", "Set", "tuple", "Tuple", "Sequence"):
        inner = [a for a in args if a != "..."]
        if head in ("tuple", "Tuple") and len(inner) > 1:
            return [value_for_type(a, "", field) for a in inner]
        return [value_for_type(inner[0], "", field)] if inner else []
    if head in ("dict", "Dict", "Mapping"):
        if len(args) == 2 and args[0] == "str":
            return {"key": value_for_type(args[1], "", field)}
        return {}
    if head == "Any":
        return f"fake {field}"
    return {}


def _notes(system: str) -> dict[str, str]:
    """Map field name -> its ``# note:`` text in a ChatAdapter/JSONAdapter system message."""
    notes: dict[str, str] = {}
    for m in re.finditer(r"\{(\w+)\}\s+# note: the value you produce (.*?)(?:\"?\n|\"?$)", system):
        notes.setdefault(m.group(1), m.group(2).rstrip('"'))
    return notes


@lru_cache(maxsize=1024)
def _reply(kind: str, fields: tuple[tuple[str, str | None], ...], system: str) -> str:
    notes = _notes(system) if "# note:" in system else {}
    if kind == "json":
        obj = {name: value_for_type(t, notes.get(name, ""), name) for name, t in fields}
        return json.dumps(obj, ensure_ascii=False)
    parts = []
    for name, t in fields:
        value = value_for_type(t, notes.get(name, ""), name)
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        parts.append(f"[[ ## {name} ## ]]\n{text}")
    parts.append("[[ ## completed ## ]]")
    return "\n\n".join(parts)


def autofill(messages: list[dict[str, Any]], default: str = "fake reply") -> str:
    """A valid reply for the fields the last user message asks for (``default`` if none)."""
    found = requested_fields(messages)
    if not found:
        return default
    kind, fields = found
    system = ""
    if messages and messages[0].get("role") == "system":
        system = str(messages[0].get("content") or "")
    return _reply(kind, tuple(fields), system)
