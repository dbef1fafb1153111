"""Handlers that raise tagged exceptions (loaded by path in the workers)."""

from __future__ import annotations

from dspex.pool.handler import Context, handler


class TaggedError(Exception):
    wire_code = "parse"

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(message)
        self.wire_detail = {"raw": raw, "adapter": "chat"}


@handler
def tagged(ctx: Context, raw: str) -> None:
    raise TaggedError("could not parse", raw)


@handler
def untagged(ctx: Context) -> None:
    raise ValueError("plain")
