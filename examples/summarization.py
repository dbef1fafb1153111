"""Summarization: a long passage to a short summary (and a title)."""

from __future__ import annotations

from typing import Any

import dspex
from _common import setup, show
from dspex.native.retrieve import load_corpus


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    document = " ".join(d["text"] for d in load_corpus("solar_system") if d.get("title") == "Jupiter")
    summarize = dspex.ChainOfThought(
        dspex.signature("document -> title, summary", "Summarize the document in two sentences."))
    pred = summarize(document=document, lm=lm)
    show("title", pred.title)
    show("summary", pred.summary)
    return dict(pred)


if __name__ == "__main__":
    main()
