"""Multi-hop: search, write a follow-up query from what was found, search again, answer."""

from __future__ import annotations

from typing import Any

import dspex
from _common import print_trace, setup, show


def search(query: str) -> list[str]:
    return [hit["text"] for hit in dspex.retrieve(query, k=2)]


def search_more(follow_up: str, hop1: list[str]) -> list[str]:
    return list(dict.fromkeys(hop1 + search(follow_up)))


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    hops = dspex.pipeline([
        dspex.native("question -> query", name="first_query"),
        dspex.native(search, writes="hop1"),
        dspex.native("question, hop1: list[str] -> follow_up", name="follow_up_query"),
        dspex.native(search_more, writes="context"),
        dspex.native(dspex.ChainOfThought("question, context: list[str] -> answer"), name="answer"),
    ], lm=lm)
    result = hops.run(question="What is the largest moon of the planet with the Great Red Spot?")
    show("answer", result["answer"])
    print_trace(result.trace)
    return dict(result)


if __name__ == "__main__":
    main()
