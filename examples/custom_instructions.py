"""Custom instructions: the same signature, told how to behave."""

from __future__ import annotations

from typing import Any

import dspex
from _common import setup, show


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    pirate = dspex.Predict("question -> answer",
                           instructions="Answer like a pirate, in one short sentence.")
    pred = pirate(question="Why is the sky blue?", lm=lm)
    show("answer", pred.answer)
    return dict(pred)


if __name__ == "__main__":
    main()
