"""Timeouts, retries and a fallback: a hanging search is cut off and replaced."""

from __future__ import annotations

from typing import Any

import dspex
from _common import print_trace, setup, show
from dspex.pipeline import current_step


def slow_search(question: str) -> list[str]:
    current_step().wait_cancelled(10)  # stands in for a dependency that hangs; stops when cut off
    return []


def local_search(question: str) -> list[str]:
    return [hit["text"] for hit in dspex.retrieve(question, k=3)]


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    pipe = dspex.pipeline([
        dspex.native(slow_search, writes="context", timeout=0.3, retries=1, backoff=0.05,  # StepTimeout is retryable
                     fallback=dspex.native(local_search, writes="context")),
        dspex.native("context: list[str], question -> answer", name="answer", timeout=120),
    ], lm=lm)
    result = pipe.run(question="How many moons does Mars have?")
    step = result.trace.step("slow_search")
    show("slow_search", f"{step.status} after {step.attempts} attempts")
    show("answer", result["answer"])
    print_trace(result.trace)
    return dict(result)


if __name__ == "__main__":
    main()
