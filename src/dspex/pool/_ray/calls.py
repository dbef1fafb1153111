"""One call on a Ray pool, from the host: submit it to its actor, wait (sync or asyncio)
within its deadline, consume its stream (chunks, progress events, host-callback
requests), and turn the outcome or a Ray failure into the dspex error types.

Two shapes of call. A call without callbacks and without ``on_event`` (the common,
fast case) is one plain actor call, ``run``. Any other is ``run_stream``, a Ray
streaming generator that also carries events and callback requests; the host runs a
requested callback on its callback threads and answers with the actor's ``reply``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
from collections.abc import AsyncIterator, Callable, Generator, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray
import ray.exceptions as rx

from dspex.errors import CallTimeout, HandlerNotFound, PoolClosed, ProtocolError, RemoteError, WorkerCrashed
from dspex.pool import protocol as P
from dspex.pool._ray.actor import E_LOST
from dspex.pool._ray.routing import Router, Slot

__all__ = ["Call", "Caller"]

_BACKGROUND: set[Any] = set()
_NOTHING = object()  # a stream message that carried no chunk


class Call:
    """What the host keeps of one call while it runs."""

    __slots__ = ("callbacks", "deadline", "expect", "flags", "loop", "name", "on_event", "ref", "session", "slot", "t0")

    def __init__(self, name: str, session: Hashable | None, deadline: float | None, flags: int,
                 callbacks: dict[str, Callable[..., Any]] | None, on_event: Callable[[dict[str, Any]], Any] | None) -> None:
        self.name = name
        self.session = session
        self.deadline = deadline
        self.flags = flags
        self.callbacks = callbacks
        self.on_event = on_event
        self.slot: Slot | None = None
        self.expect: str | None = None  # strict session: the actor incarnation holding its state
        self.ref: Any = None  # the ObjectRef (plain) or ObjectRefGenerator (stream)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.t0 = time.perf_counter()

    def left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


class Caller:
    """Submits calls and waits for them; shared by a RayPool's sync and async paths."""

    def __init__(self, name: str, router: Router, codec: P.Codec, host_callbacks: dict[str, Callable[..., Any]],
                 callback_threads: int, closed: Callable[[], bool]) -> None:
        self.name = name
        self.router = router
        self.codec = codec
        self.host_callbacks = host_callbacks
        self.callback_threads = callback_threads
        self.closed = closed
        self.executor: ThreadPoolExecutor | None = None

    # -- submit ------------------------------------------------------------------------
    def submit(self, call: Call, rid: int, args: tuple[Any, ...], kwargs: dict[str, Any], stream: bool) -> None:
        try:
            frame = self.codec.pack([rid, call.name, list(args), kwargs, call.session, call.flags, call.expect])
        except P.FrameError as exc:
            raise ProtocolError(f"pool {self.name!r}: request not sendable: {exc}", pool=self.name) from None
        if len(frame) > self.codec.max_frame:
            raise ProtocolError(f"pool {self.name!r}: request of {len(frame)} bytes exceeds max_frame="
                                f"{self.codec.max_frame}", pool=self.name)
        assert call.slot is not None
        method = call.slot.actor.run_stream if stream else call.slot.actor.run
        call.ref = method.remote(frame)

    # -- wait: plain calls -----------------------------------------------------------
    def wait(self, call: Call) -> Any:
        try:
            data = ray.get(call.ref, timeout=call.left())
        except rx.GetTimeoutError:
            raise self.timed_out(call) from None
        except Exception as exc:
            raise self.failure(call, exc) from None
        return self.outcome(call, self.codec.unpack(data))

    async def await_(self, call: Call) -> Any:
        fut = asyncio.wrap_future(call.ref.future())
        try:
            done, _ = await asyncio.wait((fut,), timeout=call.left())
        except asyncio.CancelledError:
            self.cancel(call)
            raise
        if not done:
            raise self.timed_out(call)
        try:
            data = fut.result()
        except Exception as exc:
            raise self.failure(call, exc) from None
        return self.outcome(call, self.codec.unpack(data))

    # -- wait: streams (chunks, events, callbacks) -----------------------------------
    def messages(self, call: Call) -> Generator[Any, None, Any]:
        """Yield the call's chunks; events and callbacks are served on the way. Returns
        (StopIteration.value) the call's result."""
        gen = call.ref
        while True:
            ready, _ = ray.wait([gen], timeout=call.left())
            if not ready:
                raise self.timed_out(call)
            try:
                data = ray.get(next(gen))
            except StopIteration:
                raise self.failure(call, RuntimeError("the worker's stream ended without a result")) from None
            except Exception as exc:
                raise self.failure(call, exc) from None
            final, value = self.handle(call, data)
            if final:
                return value
            if value is not _NOTHING:
                yield value

    async def amessages(self, call: Call, out: list[Any]) -> AsyncIterator[Any]:
        """Async ``messages``; the result is appended to ``out`` at the end."""
        gen = call.ref
        try:
            while True:
                try:
                    ref = await asyncio.wait_for(gen.__anext__(), call.left())
                    data = await ref
                except TimeoutError:
                    raise self.timed_out(call) from None
                except StopAsyncIteration:
                    raise self.failure(call, RuntimeError("the worker's stream ended without a result")) from None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise self.failure(call, exc) from None
                final, value = self.handle(call, data)
                if final:
                    out.append(value)
                    return
                if value is not _NOTHING:
                    yield value
        except asyncio.CancelledError:
            self.cancel(call)
            raise

    def handle(self, call: Call, data: bytes) -> tuple[bool, Any]:
        """One stream message: (False, chunk), (False, _NOTHING) for an event or callback
        request it served, or (True, result); raises the call's error."""
        msg = self.codec.unpack(data)
        kind = msg[0]
        if kind == P.CHUNK:
            return False, msg[1]
        if kind == P.EVENT:
            self.event(call, msg[1])
            return False, _NOTHING
        if kind == P.CALLBACK:
            self.run_callback(call, msg)
            return False, _NOTHING
        return True, self.outcome(call, msg)

    def event(self, call: Call, event: Any) -> None:
        if call.on_event is None:
            return
        out = call.on_event(event)
        if inspect.isawaitable(out):
            task = asyncio.ensure_future(out)
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    # -- host callbacks ------------------------------------------------------------------
    def run_callback(self, call: Call, msg: list[Any]) -> None:
        _, cbid, name, args, kwargs = msg
        fn = (call.callbacks or {}).get(name) or self.host_callbacks.get(name)
        if self.executor is None:
            self.executor = ThreadPoolExecutor(self.callback_threads, thread_name_prefix=f"dspex-ray-{self.name}-cb")
        assert call.slot is not None
        self.executor.submit(self._callback, call, call.slot.actor, cbid, name, fn, args, kwargs)

    def _callback(self, call: Call, actor: Any, cbid: int, name: str, fn: Callable[..., Any] | None,
                  args: list[Any], kwargs: dict[str, Any]) -> None:
        try:
            if fn is None:
                known = sorted({*self.host_callbacks, *(call.callbacks or {})})
                raise LookupError(f"no host callback named {name!r}; registered: {known}")
            out = fn(*args, **kwargs)
            if inspect.isawaitable(out):
                loop = call.loop
                if loop is not None and loop.is_running():
                    out = asyncio.run_coroutine_threadsafe(_await(out), loop).result()
                else:
                    out = asyncio.run(_await(out))
            try:
                data = self.codec.pack([True, out])
            except (TypeError, ValueError, OverflowError) as exc:
                raise TypeError(f"callback {name!r} returned a value that cannot be sent: {exc}") from None
        except Exception as exc:
            t = type(exc)
            tname = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
            tb = "".join(traceback.format_exception(t, exc, exc.__traceback__))
            data = self.codec.pack([False, [tname, str(exc), tb]])
        actor.reply.remote(cbid, data)

    # -- outcomes ----------------------------------------------------------------------
    def cancel(self, call: Call) -> None:
        if call.ref is not None:
            try:
                ray.cancel(call.ref)
            except Exception:  # already finished, or the actor is gone
                pass
        with self.router.lock:
            self.router.counts["cancelled"] += 1

    def timed_out(self, call: Call) -> CallTimeout:
        self.cancel(call)
        with self.router.lock:
            self.router.counts["timeouts"] += 1
            self.router.counts["errors"] += 1
        pid = call.slot.pid if call.slot is not None else None
        return CallTimeout(
            f"pool {self.name!r}: call {call.name!r} passed its deadline in worker {pid}; it was cancelled "
            "(a sync handler that ignores ctx.cancelled past cancel_grace_s gets its worker restarted). "
            "Raise timeout= / call_timeout_s or make the handler faster.",
            pool=self.name, handler=call.name, pid=pid)

    def failure(self, call: Call, exc: BaseException) -> BaseException:
        """A Ray-level failure of the call as a dspex error."""
        slot = call.slot
        pid = slot.pid if slot is not None else None
        with self.router.lock:
            self.router.counts["errors"] += 1
        if self.closed():
            return PoolClosed(f"pool {self.name!r} closed while the call was running", pool=self.name)
        if isinstance(exc, rx.TaskCancelledError):
            return CallTimeout(f"pool {self.name!r}: call {call.name!r} was cancelled in worker {pid}",
                               pool=self.name, pid=pid)
        if isinstance(exc, rx.RayActorError | rx.ObjectLostError):
            with self.router.lock:
                self.router.counts["crashes"] += 1
            if slot is not None:
                # Dead or unreachable (ActorUnavailableError: often a process just killed): route
                # around it now; the monitor's ready probe brings it back. A strict session on it
                # is lost, even if the actor turns out to have survived (safe, never silent).
                self.router.died(slot, slot.incarnation)
            where = f" on node {slot.node_id[:12]}" if slot is not None else ""
            return WorkerCrashed(
                f"pool {self.name!r}: worker {pid}{where} died during call {call.name!r} ({type(exc).__name__}); "
                "Ray restarts it. Retry the call (WorkerCrashed is retryable).",
                pool=self.name, pid=pid, exitcode=None, handler=call.name)
        if isinstance(exc, rx.RayTaskError):
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            return RemoteError(type(cause).__qualname__, str(cause), str(exc))
        return RemoteError(type(exc).__qualname__, str(exc), "".join(traceback.format_exception(exc)))

    def outcome(self, call: Call, msg: list[Any]) -> Any:
        """The value of a ``[RESULT, value]`` message; raises for ``[ERROR, ...]``."""
        if msg[0] == P.RESULT:
            return msg[1]
        _, code, rtype, message, tb, detail = (msg + [None] * 6)[:6]
        with self.router.lock:
            self.router.counts["errors"] += 1
        pid = call.slot.pid if call.slot is not None else None
        if code == P.E_REMOTE:
            raise RemoteError(str(rtype), str(message), str(tb), detail=detail if isinstance(detail, dict) else None)
        if code == E_LOST:  # Ray restarted the actor before the monitor saw it die
            if call.slot is not None:
                self.router.died(call.slot, call.expect)  # every strict session on it is lost
            with self.router.lock:
                s = self.router.sessions.get(call.session) if call.session is not None else None
                if s is not None:
                    s.lost = True
                raise self.router.lost(call.session)
        if code == P.E_NOT_FOUND:
            raise HandlerNotFound(f"pool {self.name!r}: worker {pid} has no handler {call.name!r}",
                                  pool=self.name, handler=call.name)
        if code == P.E_CANCELLED:
            raise CallTimeout(f"pool {self.name!r}: call {call.name!r} was cancelled in worker {pid}",
                              pool=self.name, pid=pid)
        if rtype == "dspex.errors.ProtocolError":
            raise ProtocolError(f"pool {self.name!r}: {message}", pool=self.name, pid=pid)
        raise RemoteError(str(rtype), str(message), str(tb))


async def _await(aw: Any) -> Any:
    return await aw
