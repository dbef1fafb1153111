"""Issue 13, finding 3: every call is answered, whatever the handler raises.

A ``concurrent=True`` sync handler or an async handler raising ``SystemExit``,
``KeyboardInterrupt`` or another ``BaseException`` used to leave its caller waiting
until ``pool.close()``; an async ``SystemExit`` stopped the worker's event loop while
the worker still reported ready, so later async calls timed out. Real worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dspex.errors import RemoteError
from dspex.pool import Pool

HANDLERS = str(Path(__file__).resolve().parent.parent / "pool" / "_fault_handlers.py")
KINDS = ["SystemExit", "KeyboardInterrupt", "Fatal"]
pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    with Pool("unanswered", 1, handlers=[HANDLERS], forward_stderr=False) as p:
        yield p


def _remote_type(kind: str) -> str:
    return "_dspex_handlers_" if kind == "Fatal" else kind


@pytest.mark.parametrize("handler", ["raise_threaded", "araise", "araise_conc", "raise_serial"])
@pytest.mark.parametrize("kind", KINDS)
def test_base_exceptions_are_answered_as_remote_errors(pool: Pool, handler: str, kind: str) -> None:
    pid = pool.workers()[0]
    with pytest.raises(RemoteError) as info:
        pool.call(handler, kind, timeout=20)  # before the fix: CallTimeout (never answered)
    assert info.value.remote_type.endswith(kind) and _remote_type(kind) in info.value.remote_type
    # the worker survived and still runs every kind of handler
    assert pool.call("apid", timeout=20) == pid
    assert pool.call("ping", timeout=20) == pid


async def test_async_callers_get_the_error_too(pool: Pool) -> None:
    with pytest.raises(RemoteError, match="SystemExit"):
        await pool.acall("araise_conc", "SystemExit", timeout=20)
    assert await pool.acall("apid", timeout=20) == pool.workers()[0]


def test_a_stopped_event_loop_replaces_the_worker() -> None:
    """SystemExit from a plain loop callback stops the loop: the call is answered and
    the worker exits (it would otherwise stay 'ready' with no loop), later calls work."""
    with Pool("deadloop", 1, handlers=[HANDLERS], forward_stderr=False) as p:
        old = p.workers()[0]
        with pytest.raises(RemoteError, match="SystemExit"):
            p.call("kill_loop", timeout=20)
        new = p.call("apid", timeout=30)  # before the fix: CallTimeout
        assert new != old
        assert p.call("apid", timeout=20) == new
        assert p.stats()["restarts"] >= 1
