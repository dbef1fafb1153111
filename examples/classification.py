"""Classification into fixed labels, over a batch of inputs."""

from __future__ import annotations

from typing import Any

import dspex
from _common import setup

TICKETS = [
    "I was charged twice this month.",
    "The app crashes when I open settings.",
    "How do I change my e-mail address?",
]


def main(argv: list[str] | None = None, *, lm: Any = None) -> list[str]:
    _, lm = setup(__doc__, argv, lm)
    classify = dspex.Predict("ticket -> category: Literal['billing', 'bug', 'account']", lm=lm)
    preds = classify.batch([{"ticket": t} for t in TICKETS], concurrency=3)
    for ticket, pred in zip(TICKETS, preds, strict=True):
        print(f"{pred.category:>8}  {ticket}")
    return [p.category for p in preds]


if __name__ == "__main__":
    main()
