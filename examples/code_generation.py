"""Code generation, checked natively: the generated code must at least compile."""

from __future__ import annotations

from typing import Any

import dspex
from _common import setup, show


def compiles(code: str) -> bool:
    try:
        compile(code, "<generated>", "exec")
    except SyntaxError:
        return False
    return True


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    pipe = dspex.pipeline([
        dspex.native(dspex.ChainOfThought(dspex.signature(
            "task -> code", "Write one Python function. Reply with code only, no markdown fences."))),
        dspex.native(compiles, writes="compiles", inline=True),
    ], lm=lm)
    result = pipe.run(task="Return the n-th Fibonacci number.")
    show("code", "\n" + result["code"])
    show("compiles", result["compiles"])
    return dict(result)


if __name__ == "__main__":
    main()
