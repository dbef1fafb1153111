"""A custom module of two predictors: draft an answer, then critique and improve it."""

from __future__ import annotations

from typing import Any

import dspex
from _common import setup, show


class DraftAndRefine:
    def __init__(self) -> None:
        self.draft = dspex.Predict("question -> draft")
        self.refine = dspex.ChainOfThought("question, draft -> critique, answer")

    def __call__(self, question: str, lm: Any = None) -> Any:
        draft = self.draft(question=question, lm=lm).draft
        return self.refine(question=question, draft=draft, lm=lm)


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    pred = DraftAndRefine()("What causes the seasons on Earth?", lm=lm)
    show("critique", pred.critique)
    show("answer", pred.answer)
    return dict(pred)


if __name__ == "__main__":
    main()
