"""Programs the tests serve by import string ("serve.programs_for_tests:<name>")."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import dspex

qa = dspex.Predict("question -> answer")

cancelled = threading.Event()  # set when ``slow`` is cancelled (a client went away)
started = threading.Event()


async def slow(seconds: float) -> dict[str, Any]:
    started.set()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        cancelled.set()
        raise
    return {"slept": seconds}


def add(a: int, b: int = 1) -> int:
    return a + b


SECRET = "sk-test-DO-NOT-LEAK-1234"


def broken(x: str) -> str:
    raise RuntimeError(f"boom with {SECRET} inside")


class Composite:
    """A composite program: two predictors and a forward() calling both (like dspex.Module)."""

    def __init__(self) -> None:
        self.draft = dspex.Predict("question -> draft")
        self.polish = dspex.Predict("draft -> answer")

    async def acall(self, question: str) -> Any:
        d = await self.draft.acall(question=question)
        return await self.polish.acall(draft=d.draft)


def shout(question: str) -> str:
    return question.upper()


def count_words(loud: str) -> int:
    return len(loud.split())


class TwoStep(dspex.Module):
    """A dspex.Module (served as a class: one instance), sync forward."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = dspex.Predict("question -> draft")
        self.polish = dspex.ChainOfThought("draft -> answer")

    def forward(self, question: str) -> Any:
        return self.polish(draft=self.draft(question=question).draft)
