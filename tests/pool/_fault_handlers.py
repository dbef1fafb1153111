"""Hostile handlers for the pool fault tests (loaded by path in the workers)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

from dspex.pool.handler import Context, handler


class Fatal(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt."""


def _exc(kind: str) -> BaseException:
    return {"SystemExit": SystemExit(3), "KeyboardInterrupt": KeyboardInterrupt(), "Fatal": Fatal("fatal")}[kind]


@handler("raise_serial")
def raise_serial(ctx: Context, kind: str) -> None:
    raise _exc(kind)


@handler("raise_threaded", concurrent=True)
def raise_threaded(ctx: Context, kind: str) -> None:
    raise _exc(kind)


@handler("araise")
async def araise(ctx: Context, kind: str) -> None:
    await asyncio.sleep(0)
    raise _exc(kind)


@handler("araise_conc", concurrent=True)
async def araise_conc(ctx: Context, kind: str) -> None:
    raise _exc(kind)


def _stop_loop() -> None:
    raise SystemExit(4)


@handler("kill_loop", concurrent=True)
async def kill_loop(ctx: Context) -> None:
    """Stop the worker's event loop from a plain loop callback (not our task)."""
    asyncio.get_running_loop().call_soon(_stop_loop)
    await asyncio.sleep(3600)


@handler("apid", concurrent=True)
async def apid(ctx: Context) -> int:
    await asyncio.sleep(0)
    return os.getpid()


@handler("wait_file")
def wait_file(ctx: Context, running: str, path: str, timeout: float = 20.0) -> bool:
    """Blocking sync handler: say we run, then wait (bounded) for ``path`` to appear."""
    with open(running, "w") as f:
        f.write(str(os.getpid()))
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path):
            return True
        time.sleep(0.01)
    return False


@handler("amake_file", concurrent=True)
async def amake_file(ctx: Context, path: str) -> int:
    await asyncio.sleep(0.1)
    with open(path, "w") as f:
        f.write("x")
    return os.getpid()


@handler("slow_callback")
def slow_callback(ctx: Context, name: str, value: Any) -> Any:
    """A host callback made after the relief reader took over the socket."""
    time.sleep(0.2)
    return ctx.callback(name, value)


@handler("slow_count")
def slow_count(ctx: Context, n: int, delay: float) -> Any:
    for i in range(n):
        time.sleep(delay)
        yield i


@handler("spawn")
def spawn(ctx: Context, detach: bool = False) -> dict[str, int]:
    """Start ``sleep 1000`` as a child, or detached (own session, parent gone)."""
    if not detach:
        p = subprocess.Popen(["sleep", "1000"])
        return {"pid": p.pid, "worker": os.getpid()}
    code = (
        "import subprocess as s; "
        "print(s.Popen(['sleep', '1000'], start_new_session=True, stdout=s.DEVNULL, stderr=s.DEVNULL).pid)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return {"pid": int(out.stdout), "worker": os.getpid()}


@handler("vm_data_mb")
def vm_data_mb(ctx: Context) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmData in /proc/self/status")


@handler("alloc")
def alloc(ctx: Context, mb: float) -> int:
    """Allocate (and drop) ``mb`` MiB: a MemoryError under a tight max_mem_mb."""
    block = bytearray(int(mb * 1048576))
    return len(block)


@handler("ping")
def ping(ctx: Context) -> int:
    return os.getpid()
