"""Basic question answering: one signature, one call (native Predict)."""

from __future__ import annotations

from typing import Any

import dspex
from _common import setup, show


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    pred = dspex.predict("question -> answer", {"question": "What is the capital of France?"}, lm=lm)
    show("answer", pred.answer)
    return dict(pred)


if __name__ == "__main__":
    main()
