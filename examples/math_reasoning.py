"""Math word problems: chain of thought with a typed (float) answer."""

from __future__ import annotations

from typing import Any

import dspex
from _common import setup, show


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    solve = dspex.ChainOfThought("problem -> answer: float")
    pred = solve(problem="A train covers 180 km in 2.5 hours. What is its average speed in km/h?", lm=lm)
    show("reasoning", pred.reasoning)
    show("answer", pred.answer)
    assert isinstance(pred.answer, float)  # typed: parsed into a float, not text
    return dict(pred)


if __name__ == "__main__":
    main()
