"""Chain of thought: the model reasons step by step before it answers."""

from __future__ import annotations

from typing import Any

import dspex
from _common import setup, show


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    cot = dspex.chain_of_thought("question -> answer", lm=lm)
    pred = cot(question="A farmer has 17 sheep and all but 9 run away. How many are left?")
    show("reasoning", pred.reasoning)
    show("answer", pred.answer)
    return dict(pred)


if __name__ == "__main__":
    main()
