"""A composite program (dspex.Module) of two predictors: draft an answer, then critique and
improve it. Run natively, saved and loaded as the JSON DSPy writes, optimized as a whole
(BootstrapFewShot in the optimizer pool, the program's own forward() running in DSPy),
and the optimized program served natively again."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import dspex
from _common import setup, show


class DraftAndRefine(dspex.Module):
    def __init__(self) -> None:
        super().__init__()
        self.draft = dspex.Predict("question -> draft")
        self.refine = dspex.ChainOfThought("question, draft -> critique, answer")

    def forward(self, question: str) -> dspex.Prediction:
        draft = self.draft(question=question).draft
        return self.refine(question=question, draft=draft)


TRAIN = [
    dspex.Example(question="Why is the sky blue?", answer="Rayleigh scattering of sunlight.").with_inputs("question"),
    dspex.Example(question="Why do we have tides?", answer="The Moon's gravity.").with_inputs("question"),
]


def has_answer(example: dspex.Example, prediction: dspex.Prediction) -> bool:
    return bool(prediction.answer)


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    program = DraftAndRefine()
    with dspex.context(lm=lm):
        pred = program(question="What causes the seasons on Earth?")
    show("critique", pred.critique)
    show("answer", pred.answer)
    show("predictors", ", ".join(name for name, _ in program.named_predictors()))
    show("tokens", pred.get_lm_usage())

    result = dspex.optimize(program, TRAIN, optimizer="bootstrap", metric=has_answer, lm=lm,
                            max_bootstrapped_demos=1, max_labeled_demos=1)
    show("optimized demos", {name: len(p.demos) for name, p in result.program.named_predictors()})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "draft_and_refine.json"
        result.program.save(path)  # DSPy's Module.load reads this file too
        served = DraftAndRefine().load(path)  # natively, no workers
    with dspex.context(lm=lm):
        again = served(question="What causes the seasons on Earth?")
    show("optimized answer", again.answer)
    return dict(again)


if __name__ == "__main__":
    main()
