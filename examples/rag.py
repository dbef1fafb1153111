"""Retrieval-augmented generation: a two-step pipeline (native BM25 -> ChainOfThought)."""

from __future__ import annotations

from typing import Any

import dspex
from _common import print_trace, setup, show


def retrieve(question: str) -> list[str]:
    return [hit["text"] for hit in dspex.retrieve(question, k=4)]


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    rag = dspex.pipeline([
        dspex.native(retrieve, writes="context", cache=True),  # same question: no second search
        dspex.native(dspex.ChainOfThought("context: list[str], question -> answer"), name="generate"),
    ], lm=lm)
    result = rag.run(question="Which planet rotates on its side?")
    show("answer", result["answer"])
    print_trace(result.trace)
    return dict(result)


if __name__ == "__main__":
    main()
