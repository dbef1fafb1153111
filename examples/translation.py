"""Translation into several languages at once: fan_out over a list field."""

from __future__ import annotations

from typing import Any

import dspex
from _common import setup, show


def main(argv: list[str] | None = None, *, lm: Any = None) -> dict[str, Any]:
    _, lm = setup(__doc__, argv, lm)
    translate = dspex.native("text, language -> translation")
    pipe = dspex.pipeline([dspex.fan_out(translate, over="languages", item="language", into="translations",
                                         concurrency=3)], lm=lm)
    result = pipe.run(text="The stars are beautiful tonight.", languages=["French", "German", "Spanish"])
    for language, text in zip(result["languages"], result["translations"], strict=True):
        show(language, text)
    return dict(result)


if __name__ == "__main__":
    main()
