"""Handlers for the process-safety tests (loaded by path in the workers)."""

from __future__ import annotations

import multiprocessing
import os
import time

from dspex.pool.handler import Context, handler


@handler
def block(ctx: Context, marker: str) -> None:
    """Say we are running (a file), then stay busy in sync code."""
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


@handler
def mp_child(ctx: Context, method: str) -> int:
    """Start a multiprocessing child with ``method``; its exit code."""
    p = multiprocessing.get_context(method).Process(target=os.getpid)
    p.start()
    p.join(60)
    return -999 if p.exitcode is None else p.exitcode


@handler
def environ(ctx: Context, name: str) -> str | None:
    return os.environ.get(name)


@handler
def say(ctx: Context, text: str) -> str:
    """Write ``text`` to the worker's stderr."""
    import sys

    sys.stderr.write(text + "\n")
    sys.stderr.flush()
    return text
