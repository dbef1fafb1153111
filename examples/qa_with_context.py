"""Question answering with context: BM25 passages from the shipped corpus, then answer."""

from __future__ import annotations

from typing import Any

import dspex
from _common import setup, show


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    question = "How long is a day on Mercury?"
    passages = [hit["text"] for hit in dspex.retrieve(question, k=3)]  # native BM25, solar_system corpus
    pred = dspex.predict("context: list[str], question -> answer", {"context": passages, "question": question},
                         lm=lm)
    show("context", passages)
    show("answer", pred.answer)
    return {"context": passages, **pred}


if __name__ == "__main__":
    main()
