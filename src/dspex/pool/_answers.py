"""How a worker phrases a handler's exception for the host (type name, structured code)
and waits for a host callback's reply (stdlib only; shared with the Ray actor)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

__all__ = ["wire_detail"]


def _type_name(exc: BaseException) -> str:
    t = type(exc)
    mod = t.__module__
    return t.__qualname__ if mod == "builtins" else f"{mod}.{t.__qualname__}"


def wire_detail(exc: BaseException) -> dict[str, Any] | None:
    """The structured part of an error frame: ``{"code": exc.wire_code, **exc.wire_detail}``.

    Handlers (the DSPy bridge) tag the exceptions they raise so that the host maps them
    to dspex error types by code; untagged exceptions send ``None``."""
    code = getattr(exc, "wire_code", None)
    if not isinstance(code, str):
        return None
    detail = getattr(exc, "wire_detail", None)
    out: dict[str, Any] = dict(detail) if isinstance(detail, dict) else {}
    out["code"] = code
    return out


def _remote_error(value: Any) -> BaseException:
    from dspex.errors import RemoteError

    rtype, message, tb = ([*list(value), "", "", ""])[:3]
    return RemoteError(str(rtype), str(message), str(tb))


class _Slot:
    """A pending host-callback reply for a thread other than the reader."""

    __slots__ = ("done", "lock", "ok", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.done = False
        self.ok = False
        self.value: Any = None

    def deliver(self, ok: bool, value: Any) -> None:
        self.ok, self.value, self.done = ok, value, True
        self.lock.release()

    def result(self) -> Any:
        if self.ok:
            return self.value
        raise _remote_error(self.value)


class _AsyncSlot:
    __slots__ = ("fut", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any]) -> None:
        self.loop = loop
        self.fut = fut

    def deliver(self, ok: bool, value: Any) -> None:
        def done() -> None:
            if self.fut.done():
                return
            if ok:
                self.fut.set_result(value)
            else:
                self.fut.set_exception(_remote_error(value))

        self.loop.call_soon_threadsafe(done)
