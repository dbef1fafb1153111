"""The signature operations (always native)."""

from __future__ import annotations

from typing import Any

from .. import router


def signature(spec: Any, instructions: str | None = None) -> Any:
    """A native :class:`dspex.Signature` from a string, a class, or a Signature."""
    from ..native.signature import signature as make

    with router.track("signature", "native"):
        return make(spec, instructions)


def compile_signature(spec: Any, instructions: str | None = None) -> Any:
    """Parse and validate ``spec`` once (errors carry the position); same as :func:`signature`."""
    from ..native.signature import signature as make

    with router.track("compile_signature", "native"):
        return make(spec, instructions)
