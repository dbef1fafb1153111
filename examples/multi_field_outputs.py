"""Several typed outputs from one call: a label, a number and two lists."""

from __future__ import annotations

from typing import Any

import dspex
from _common import setup, show

REVIEW = "Battery lasts two days and the screen is gorgeous, but it is heavy and the charger is slow."


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    sig = "review -> sentiment: Literal['positive', 'negative', 'mixed'], rating: int, pros: list[str], cons: list[str]"
    pred = dspex.predict(sig, {"review": REVIEW}, lm=lm)
    for field in ("sentiment", "rating", "pros", "cons"):
        show(field, pred[field])
    return dict(pred)


if __name__ == "__main__":
    main()
