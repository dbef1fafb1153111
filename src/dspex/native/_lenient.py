"""A forgiving JSON reader in the spirit of json_repair, for LM replies.

``loads_lenient`` reproduces json_repair for the cases LMs produce (strict JSON,
code fences, text around one JSON value, single quotes, Python ``True``/``None``,
unquoted words, trailing or missing commas, missing closing brackets). Whatever the
text, it returns a value (``""`` when there is no JSON): never raises.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["balanced_object", "literal_eval", "loads_lenient"]


class _TooDeep(Exception):
    """Nesting past what any LM reply needs (and what the recursion limit allows)."""


_NOTHING = ""  # what json_repair returns when it finds no JSON
_json_loads = json.loads
_raw_decode = json.JSONDecoder().raw_decode
_WS = " \t\n\r"


class _Repair:
    """A forgiving JSON reader in the spirit of json_repair (the common cases)."""

    __slots__ = ("n", "pos", "text")

    def __init__(self, text: str, pos: int) -> None:
        self.text = text
        self.pos = pos
        self.n = len(text)

    def ws(self) -> None:
        text, n, pos = self.text, self.n, self.pos
        while pos < n:
            ch = text[pos]
            if ch in _WS:
                pos += 1
            elif (ch == "/" and text.startswith("//", pos)) or ch == "#":
                nl = text.find("\n", pos)
                pos = n if nl < 0 else nl + 1
            else:
                break
        self.pos = pos

    def strict_or_repaired(self) -> Any:
        """A well-formed JSON value here is read strictly (as json_repair does), else repaired."""
        if self.text[self.pos] in "{[":
            try:
                value, end = _raw_decode(self.text, self.pos)
                self.pos = end
                return value
            except ValueError:
                pass
        return self.value()

    def value(self, depth: int = 0) -> Any:
        if depth > 200:
            raise _TooDeep("too deeply nested")
        self.ws()
        if self.pos >= self.n:
            return _NOTHING
        ch = self.text[self.pos]
        if ch == "{":
            return self.obj(depth)
        if ch == "[":
            return self.arr(depth)
        if ch in "\"'":
            return self.string()
        if ch == "(":
            return self.tup(depth)
        return self.bare(stop=",]})\n")

    def obj(self, depth: int) -> Any:
        self.pos += 1
        body = self.pos
        out: dict[str, Any] = {}
        text = self.text
        while True:
            self.ws()
            if self.pos >= self.n:
                return out
            ch = text[self.pos]
            if ch == "}":
                self.pos += 1
                return out
            if ch == ",":
                self.pos += 1
                continue
            if ch in "\"'":
                key = self.string()
            else:
                key = self.bare(stop=":,}\n")
                if key is _NOTHING or not isinstance(key, str):
                    key = str(key)
            self.ws()
            if self.pos < self.n and text[self.pos] == ":":
                self.pos += 1
                val = self.value(depth + 1)
            elif not out and self.pos < self.n and text[self.pos] in ",}":
                # {1, 2} / {'a'}: a Python set literal, read as an array (as json_repair does)
                self.pos = body
                return self.arr(depth, closer="}")
            else:
                val = _NOTHING
            out[str(key)] = val
            if self.pos < self.n and text[self.pos] == "]":
                self.pos += 1  # a stray closer: skip it

    def arr(self, depth: int, closer: str = "]") -> list[Any]:
        if closer == "]":
            self.pos += 1
        out: list[Any] = []
        text = self.text
        while True:
            self.ws()
            if self.pos >= self.n:
                return out
            ch = text[self.pos]
            if ch == closer:
                self.pos += 1
                return out
            if ch in ",}]":
                self.pos += 1
                continue
            start = self.pos
            if ch in "-+.0123456789":
                value = self.number()
                if value is not _NOTHING:
                    out.append(value)
                continue
            value = self.value(depth + 1)
            if value == {} and self.pos >= self.n and text[start] == "{":
                continue  # an unclosed empty object at the very end is dropped
            out.append(value)
            if self.pos == start:  # no progress: skip the character
                self.pos += 1

    def number(self) -> Any:
        """A number inside an array: json_repair reads ``00``, ``.5``, ``+1`` and stops at a space."""
        m = _LOOSE_NUMBER.match(self.text, self.pos)
        if m is None or not any(c.isdigit() for c in m.group()):
            self.pos += 1  # a lone sign or dot
            return _NOTHING
        self.pos = m.end()
        word = m.group().lstrip("+")
        try:
            if any(c in word for c in ".eE"):
                return float(word)
            return int(word)
        except ValueError:
            return word

    def tup(self, depth: int) -> Any:
        """A Python tuple literal ``(1, 2)``, ``(x,)``, ``()`` as a list; ``(x)`` is just ``x``."""
        self.pos += 1
        out: list[Any] = []
        text = self.text
        comma = False
        while True:
            self.ws()
            if self.pos >= self.n:
                break
            ch = text[self.pos]
            if ch == ")":
                self.pos += 1
                break
            if ch == ",":
                comma = True
                self.pos += 1
                continue
            start = self.pos
            out.append(self.value(depth + 1))
            if self.pos == start:
                self.pos += 1
        if len(out) == 1 and not comma:
            return out[0]
        return out  # json_repair reads tuples as JSON arrays

    def string(self) -> str:
        text, n = self.text, self.n
        quote = text[self.pos]
        start = self.pos + 1
        if quote == '"':
            # fast path: a well-formed JSON string
            end = text.find('"', start)
            if end >= 0 and "\\" not in text[start:end]:
                self.pos = end + 1
                return text[start:end].rstrip("\n")
        out: list[str] = []
        pos = start
        while pos < n:
            ch = text[pos]
            if ch == quote:
                self.pos = pos + 1
                return "".join(out).rstrip("\n")  # json_repair drops trailing newlines here
            if ch == "\\" and pos + 1 < n:
                nxt = text[pos + 1]
                esc = _ESCAPES.get(nxt)
                if esc is not None:
                    out.append(esc)
                    pos += 2
                    continue
                if nxt in "ux":
                    width = 4 if nxt == "u" else 2
                    digits = text[pos + 2 : pos + 2 + width]
                    if len(digits) == width and all(c in _HEX for c in digits):
                        # json_repair leaves UTF-16 surrogate pairs as two code points
                        out.append(chr(int(digits, 16)))
                        pos += 2 + width
                        continue
            out.append(ch)
            pos += 1
        self.pos = n
        return "".join(out)

    def bare(self, stop: str) -> Any:
        text, n = self.text, self.n
        start = self.pos
        pos = start
        while pos < n and text[pos] not in stop:
            pos += 1
        self.pos = pos
        word = text[start:pos].strip()
        return _bare_word(word)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "\\": "\\", '"': '"', "'": "'"}
_HEX = frozenset("0123456789abcdefABCDEF")
_LOOSE_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-.]")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_LOWER_WORDS = {"true": True, "false": False, "null": None, "none": None}
_WORDS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


def _bare_word(word: str) -> Any:
    if word in _WORDS:
        return _WORDS[word]
    low = word.lower()
    if low in _LOWER_WORDS:
        return _LOWER_WORDS[low]
    if _NUMBER.fullmatch(word):
        try:
            return _json_loads(word)
        except ValueError:  # an integer over Python's 4,300-digit limit stays text
            return word
    return word


def loads_lenient(text: str) -> Any:
    """Parse ``text`` like ``json_repair.loads``; ``""`` when it holds no JSON value."""
    try:
        return _json_loads(text)
    except ValueError:
        pass
    except RecursionError:
        return _NOTHING
    stripped = text.strip()
    if not stripped:
        return _NOTHING
    brace = stripped.find("{")
    bracket = stripped.find("[")
    if brace < 0 and bracket < 0 and stripped[0] != "(":
        return _NOTHING  # a bare word or sentence: json_repair finds nothing
    # a leading "(" is a Python tuple literal (json_repair reads those at the start of a line)
    first_container = brace if bracket < 0 or (0 <= brace < bracket) else bracket
    start = 0 if stripped[0] == "(" else first_container
    try:
        reader = _Repair(stripped, start)
        first = reader.strict_or_repaired()
        # Several top-level JSON values in one reply: json_repair returns them all, as a list.
        values = [first]
        while True:
            rest = _next_container(stripped, reader.pos)
            if rest < 0:
                break
            reader.pos = rest
            values.append(reader.strict_or_repaired())
        return first if len(values) == 1 else values
    except (_TooDeep, RecursionError, ValueError):
        return _NOTHING


def balanced_object(text: str) -> str | None:
    """The first balanced ``{...}`` in ``text`` (braces counted everywhere, quotes too),
    like DSPy's recursive regex ``\\{(?:[^{}]|(?R))*\\}``; None when there is none."""
    # Pair braces with a stack; the regex's leftmost match is the pair with the smallest '{'.
    stack: list[int] = []
    best: tuple[int, int] | None = None
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            start = stack.pop()
            if best is None or start < best[0]:
                best = (start, i)
    return None if best is None else text[best[0] : best[1] + 1]


def _next_container(text: str, pos: int) -> int:
    brace = text.find("{", pos)
    bracket = text.find("[", pos)
    if brace < 0:
        return bracket
    if bracket < 0:
        return brace
    return min(brace, bracket)


def literal_eval(text: str) -> Any:
    """``ast.literal_eval`` (a literal parser, never evaluation), any failure -> the text."""
    if len(text) > 100_000:
        return text
    import ast  # only for replies that are not JSON

    try:
        return ast.literal_eval(text)
    except Exception:  # ValueError, SyntaxError, MemoryError, RecursionError, ...
        return text
