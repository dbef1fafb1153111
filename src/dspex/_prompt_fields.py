"""Read the output fields a DSPy-formatted prompt asks for (stdlib only, no dspex imports).

DSPy 3.4.1's adapters end the last user message with a reminder of the reply's shape:

* ChatAdapter: ``Respond with the corresponding output fields, starting with the field
  `[[ ## a ## ]]`, then `[[ ## b ## ]]` (must be formatted as a valid Python int), and
  then ending with the marker for `[[ ## completed ## ]]`.``
* JSONAdapter: ``Respond with a JSON object in the following order of fields: `a`, then
  `b` (must be formatted as a valid Python int).``

and the system message lists every output field with its type name
(``Your output fields are:\\n1. `answer` (int): ...``). Shared by the fake LM
server's autofill (``dspex.testing._autofill``) and the bridge's grammar-constrained
``dspy.LM`` (``dspex.bridge._lm``), so both read prompts the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = ["CHAT_MARK", "JSON_MARK", "message_text", "output_field_types", "requested_fields"]

CHAT_MARK = "Respond with the corresponding output fields"
JSON_MARK = "Respond with a JSON object in the following order of fields:"
# `[[ ## name ## ]]` optionally followed by " (must be formatted as a valid Python T)"
_CHAT_FIELD = re.compile(
    r"`\[\[ ## (\w+) ## \]\]`(?: \(must be formatted as a valid Python (.+?)\))?(?=, then |, and then |\.|$)"
)
_JSON_FIELD = re.compile(r"`(\w+)`(?: \(must be formatted as a valid Python (.+?)\))?(?=, then |\.$|$)")
# "Your output fields are:" then numbered lines "1. `name` (type): desc"
_OUTPUT_BLOCK = re.compile(r"Your output fields are:\n(.*?)(?:\nAll interactions will be structured|\Z)", re.S)
_OUTPUT_LINE = re.compile(r"^\d+\. `(\w+)` \((.+?)\):", re.M)


def message_text(message: Any) -> str:
    """The text of an OpenAI-style message (string content or a list of text parts)."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def requested_fields(messages: Sequence[dict[str, Any]]) -> tuple[str, list[tuple[str, str | None]]] | None:
    """``("chat"|"json", [(field, type_name or None), ...])`` from the last user message, else None.

    ``type_name`` is DSPy's spelling (``int``, ``list[str]``, ``Literal['a', 'b']``); None
    means the prompt gave no type, which for DSPy means ``str``.
    """
    user = ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            user = message_text(message)
            break
    idx = user.rfind(CHAT_MARK)
    if idx >= 0:
        tail = user[idx:]
        return "chat", [(m.group(1), m.group(2)) for m in _CHAT_FIELD.finditer(tail) if m.group(1) != "completed"]
    idx = user.rfind(JSON_MARK)
    if idx >= 0:
        tail = user[idx + len(JSON_MARK):].strip()
        return "json", [(m.group(1), m.group(2)) for m in _JSON_FIELD.finditer(tail)]
    return None


def output_field_types(system: str) -> dict[str, str]:
    """Map field name -> type name from the system message's ``Your output fields are:`` block."""
    block = _OUTPUT_BLOCK.search(system or "")
    if block is None:
        return {}
    return {m.group(1): m.group(2) for m in _OUTPUT_LINE.finditer(block.group(1))}
