"""BootstrapFewShot: DSPy's optimizer runs in a worker; the optimized program runs natively."""

from __future__ import annotations

from typing import Any

import dspex
from _common import setup, show

TRAIN = [
    {"question": "Which planet is closest to the Sun?", "answer": "Mercury"},
    {"question": "Which planet has the Great Red Spot?", "answer": "Jupiter"},
    {"question": "Which planet is called the Red Planet?", "answer": "Mars"},
    {"question": "What is the largest moon of Saturn?", "answer": "Titan"},
]


def exact(example: Any, prediction: Any) -> bool:
    return str(example["answer"]).strip().lower() == str(prediction["answer"]).strip().lower()


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    result = dspex.optimize(dspex.Predict("question -> answer"), TRAIN, optimizer="bootstrap", metric=exact,
                            lm=lm, max_bootstrapped_demos=2, max_labeled_demos=2)
    program = result.program  # a native Predict with the demos DSPy picked
    show("demos", len(program.demos))
    pred = program(question="Which planet rotates on its side?", lm=lm)
    show("answer", pred.answer)
    return {"demos": len(program.demos), **pred}


if __name__ == "__main__":
    main()
