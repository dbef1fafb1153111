"""Pool handlers for tests and benchmarks: ``Pool(handlers=["dspex.testing.handlers"])``.

Standard library only (they run in workers, possibly under another interpreter).

* ``echo(x) -> x``. With several arguments or keyword arguments it returns
  ``{"args": [...], "kwargs": {...}}`` (``echo()`` returns ``{"args": [], "kwargs": {}}``).
* ``sleep(seconds) -> seconds`` sleeps cooperatively (returns early, raising
  ``Cancelled``-style ``RuntimeError``, once the host cancels); ``hang()`` sleeps and
  ignores cancellation; ``asleep(seconds)`` is the async form (concurrent).
* ``crash(code=1, signal=None)`` ends the worker: ``os._exit(code)`` or kill itself.
* ``leak(mb) -> rss_mb`` keeps ``mb`` MiB more alive in the worker (recycling tests).
* ``fail(message, type="RuntimeError")`` raises that builtin exception type.
* ``pid()``, ``count(n, delay=0)`` (generator), ``acount(n)`` (async generator),
  ``call_host(name, *args, **kw)`` (a host callback), ``call_host_safe`` (returns
  ``["error", remote_type, message]`` instead of raising), ``progress(n)`` (n events),
  ``state_set(key, value)`` / ``state_get(key)`` (session state), ``environ(name)``,
  ``info()`` (executable, sys.path, pid), ``blob(n) -> bytes``,
  ``bad_frame(kind)`` (writes garbage or an oversized frame header on the socket).
"""

from __future__ import annotations

import asyncio
import builtins
import os
import signal as _signal
import struct
import sys
import time
from typing import Any

from dspex.pool.handler import Context, handler

_LEAKED: list[bytearray] = []


@handler
def echo(ctx: Context, *args: Any, **kwargs: Any) -> Any:
    if len(args) == 1 and not kwargs:
        return args[0]
    return {"args": list(args), "kwargs": kwargs}


@handler
def sleep(ctx: Context, seconds: float, marker: str | None = None) -> float:
    """Sleep cooperatively; ``marker``: a file written once the call runs (tests wait for it)."""
    if marker:
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return seconds
        if ctx.cancelled:
            raise RuntimeError("cancelled")
        time.sleep(min(left, 0.01))


@handler
def hang(ctx: Context, seconds: float = 3600.0) -> float:
    time.sleep(seconds)
    return seconds


@handler("asleep", concurrent=True)
async def asleep(ctx: Context, seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@handler
def crash(ctx: Context, code: int = 1, signal: int | None = None) -> None:
    sys.stderr.flush()
    if signal is not None:
        os.kill(os.getpid(), signal)
        time.sleep(10)
    os._exit(code)


def _rss_mb() -> float:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1048576


@handler
def leak(ctx: Context, mb: float) -> float:
    block = bytearray(int(mb * 1048576))
    for i in range(0, len(block), 4096):  # touch every page so it counts in RSS
        block[i] = 1
    _LEAKED.append(block)
    return _rss_mb()


@handler
def rss(ctx: Context) -> float:
    return _rss_mb()


@handler
def fail(ctx: Context, message: str = "boom", type: str = "RuntimeError") -> None:
    exc_type = getattr(builtins, type, None)
    if not (isinstance(exc_type, builtins.type) and issubclass(exc_type, BaseException)):
        exc_type = RuntimeError
    raise exc_type(message)


@handler
def pid(ctx: Context) -> int:
    return os.getpid()


@handler
def count(ctx: Context, n: int, delay: float = 0.0) -> Any:
    for i in range(n):
        if delay:
            time.sleep(delay)
        yield i


@handler("acount", concurrent=True)
async def acount(ctx: Context, n: int, delay: float = 0.0) -> Any:
    for i in range(n):
        if delay:
            await asyncio.sleep(delay)
        yield i


@handler
def call_host(ctx: Context, name: str, *args: Any, **kwargs: Any) -> Any:
    return ctx.callback(name, *args, **kwargs)


@handler
def call_host_safe(ctx: Context, name: str, *args: Any, **kwargs: Any) -> Any:
    from dspex.errors import RemoteError

    try:
        return ctx.callback(name, *args, **kwargs)
    except RemoteError as exc:
        return ["error", exc.remote_type, exc.remote_message, exc.remote_traceback]


@handler("acall_host", concurrent=True)
async def acall_host(ctx: Context, name: str, *args: Any, **kwargs: Any) -> Any:
    return await ctx.acallback(name, *args, **kwargs)


@handler
def progress(ctx: Context, n: int) -> int:
    for i in range(n):
        ctx.progress(step=i, of=n)
    return n


@handler
def state_set(ctx: Context, key: str, value: Any) -> Any:
    ctx.state[key] = value
    return value


@handler
def state_get(ctx: Context, key: str, default: Any = None) -> Any:
    return ctx.state.get(key, default)


@handler
def environ(ctx: Context, name: str) -> str | None:
    return os.environ.get(name)


@handler
def info(ctx: Context) -> dict[str, Any]:
    return {"pid": os.getpid(), "executable": sys.executable, "path": list(sys.path), "ppid": os.getppid()}


@handler
def blob(ctx: Context, n: int) -> bytes:
    return b"x" * n


@handler
def bad_frame(ctx: Context, kind: str = "garbage") -> None:
    """Write a bad frame straight onto the worker's socket, then wait to be killed."""
    sock = ctx._chan.sock  # the worker runtime's socket
    if kind == "oversized":
        data = struct.pack(">I", 0xFFFFFFF0) + b"\x00" * 16
    elif kind == "notalist":
        data = struct.pack(">I", 1) + b"\x01"
    else:
        data = struct.pack(">I", 3) + b"\xc1\xc1\xc1"  # 0xc1 is never valid msgpack
    with ctx._chan.send_lock:
        sock.sendall(data)
    time.sleep(60)


@handler
def selfkill(ctx: Context, sig: int = int(_signal.SIGKILL)) -> None:
    os.kill(os.getpid(), sig)


_ARRIVED: dict[str, int] = {}
_GATES: dict[str, asyncio.Event] = {}


@handler("rendezvous", concurrent=True)
async def rendezvous(ctx: Context, key: str, n: int, timeout: float = 10.0) -> int:
    """Return once ``n`` calls with this key are inside the worker at the same time
    (proof that async handlers run concurrently); raises TimeoutError otherwise."""
    gate = _GATES.setdefault(key, asyncio.Event())
    _ARRIVED[key] = _ARRIVED.get(key, 0) + 1
    if _ARRIVED[key] >= n:
        gate.set()
    await asyncio.wait_for(gate.wait(), timeout)
    return os.getpid()


_PRODUCED: dict[str, int] = {}


@handler
def tick(ctx: Context, n: int, key: str) -> Any:
    """Generator that counts what it produced (see ``produced``)."""
    for i in range(n):
        _PRODUCED[key] = _PRODUCED.get(key, 0) + 1
        yield i


@handler("produced", concurrent=True)
def produced(ctx: Context, key: str) -> int:
    return _PRODUCED.get(key, 0)


@handler("tcount", concurrent=True)
def tcount(ctx: Context, n: int) -> Any:
    """A generator run on the worker's thread pool (concurrent sync handler)."""
    yield from range(n)
