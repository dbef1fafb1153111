"""Decode an LM server's reply body into texts, usage and model name.

A pure function of the bytes, so it can be fuzzed: whatever the server sends,
the result is a :class:`Decoded` or an :class:`~dspex.errors.LMBadResponse`
that says what was wrong (never a raw ``ValueError``, ``RecursionError``...).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, NamedTuple

from ..errors import LMBadResponse

__all__ = ["Decoded", "decode_reply", "usage_count"]

_MAX_USAGE = 10**15  # no reply uses a quadrillion tokens; larger is a broken server


class Decoded(NamedTuple):
    texts: list[str]
    prompt_tokens: int
    completion_tokens: int
    model: str | None
    data: dict[str, Any]


def usage_count(value: Any, name: str) -> int:
    """A token count from a usage block: a non-negative integer (``12``, ``12.0``, ``"12"``); None -> 0."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ValueError(f"usage.{name} is a boolean ({value!r}), not a token count")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"usage.{name} is {value!r}, not a whole token count")
        n = int(value)
    elif isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 16:
        n = int(value.strip())
    else:
        raise ValueError(f"usage.{name} is {str(value)[:40]!r}, not a token count")
    if not 0 <= n <= _MAX_USAGE:
        raise ValueError(f"usage.{name} is {str(n)[:40]}, outside 0..{_MAX_USAGE}")
    return n


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    raise TypeError(f"message content is a {type(content).__name__}")


def _same(text: str) -> str:
    return text


def decode_reply(
    body: bytes, provider: str, *, where: str, model: str, status: int = 200, scrub: Callable[[str], str] = _same
) -> Decoded:
    """``body`` of a 2xx reply from ``where`` (a URL) -> Decoded, else LMBadResponse (text passed through ``scrub``)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise LMBadResponse(
            f"{model}: {where} answered HTTP {status} with a body that is not JSON ({type(exc).__name__}: "
            f"{str(exc)[:80]}; body starts {scrub(body[:200].decode('utf-8', 'replace'))!r}). Is api_base an LM server?",
            status=status,
            model=model,
        ) from None
    kind = "Messages" if provider == "anthropic" else "chat completion"
    try:
        if not isinstance(data, dict):
            raise TypeError(f"the reply is a JSON {type(data).__name__}, not an object")
        if provider == "anthropic":
            blocks = data["content"]
            if not isinstance(blocks, list):
                raise TypeError("content is not a list")
            texts = ["".join(str(b.get("text") or "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")]
            u = data.get("usage") or {}
            if not isinstance(u, dict):
                raise TypeError("usage is not an object")
            prompt, completion = usage_count(u.get("input_tokens"), "input_tokens"), usage_count(u.get("output_tokens"), "output_tokens")
        else:
            choices = data["choices"]
            if not isinstance(choices, list) or not choices:
                raise KeyError("choices is empty" if isinstance(choices, list) else "choices is not a list")
            texts = []
            for choice in choices:
                if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
                    raise KeyError("choices[].message")
                texts.append(_text_of(choice["message"].get("content")))
            u = data.get("usage") or {}
            if not isinstance(u, dict):
                raise TypeError("usage is not an object")
            prompt = usage_count(u.get("prompt_tokens"), "prompt_tokens")
            completion = usage_count(u.get("completion_tokens"), "completion_tokens")
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise LMBadResponse(
            f"{model}: {where} answered JSON that is not a {kind} reply ({what}); "
            "check api_base and the provider prefix of the model name",
            status=status,
            model=model,
            body=scrub(body[:500].decode("utf-8", "replace")),
        ) from None
    name = data.get("model")
    return Decoded(texts, prompt, completion, name if isinstance(name, str) and name else None, data)
