"""Entity extraction: lists of people, organizations and places from a text."""

from __future__ import annotations

from typing import Any

import dspex
from _common import setup, show

TEXT = "Ada Lovelace worked with Charles Babbage in London; today the Science Museum shows his engines."


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    extract = dspex.Predict("text -> people: list[str], organizations: list[str], places: list[str]")
    pred = extract(text=TEXT, lm=lm)
    for field in ("people", "organizations", "places"):
        show(field, pred[field])
    return dict(pred)


if __name__ == "__main__":
    main()
