"""Calling the LM directly: chat messages in, text and token usage out."""

from __future__ import annotations

from typing import Any

from _common import setup, show


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    completion = lm.complete([
        {"role": "system", "content": "You are concise."},
        {"role": "user", "content": "Name three moons of Jupiter."},
    ], max_tokens=64)
    show("text", completion.text)
    show("usage", completion.usage)
    return {"text": completion.text, "usage": completion.usage}


if __name__ == "__main__":
    main()
