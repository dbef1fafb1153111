"""The Ray actor that is one worker of a Ray pool (runs in a Ray worker process).

It runs the SAME handlers as a local worker: it imports ``preload`` and the handler
modules with ``dspex.pool.worker.load_modules``, takes them from the one registry
(``dspex.pool.handler.registry()``) and calls them with the one ``Context``. Values
cross with the pool codec (``dspex.pool.protocol.Codec``), so they keep the types
they keep in a local pool, and non-msgpack objects need ``allow_pickle`` there too.

Execution follows the local worker: non-concurrent sync/generator handlers run one
at a time in arrival order (on a thread, so the actor's event loop stays free);
non-concurrent async handlers one at a time on the loop; ``concurrent=True``
handlers several at once (threads or tasks).

Talking back to the host. ``run`` is a plain actor call (result only). ``run_stream``
is a Ray streaming generator: it yields the call's chunks, progress events and
host-callback requests as they happen, then the outcome. The host answers a
callback with the control method ``reply``. So callbacks (ReAct tools, host
metrics) work from any node the driver can reach, with Ray's own transport.

Failure semantics on top of Ray: every incarnation of the actor has its own
``incarnation`` id; a call made for a strict session carries the incarnation its
state lives in and is refused (``E_LOST``) by a restarted actor. A cancelled sync
handler that has not returned after ``cancel_grace_s`` ends the process, and Ray
restarts the actor (the local pool kills such a worker the same way).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import sys
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from dspex.pool import protocol as P
from dspex.pool._runtime import _remote_error, _type_name, wire_detail
from dspex.pool._zygote import _handler_table, load_modules
from dspex.pool.handler import Context, HandlerSpec, registry

__all__ = ["E_LOST", "WorkerActor"]

E_LOST = 100  # ERROR code: the strict session's state is not in this incarnation
_BACKGROUND: set[Any] = set()  # strong references to fire-and-forget tasks


def _resolve(fut: asyncio.Future[Any], data: bytes) -> None:
    if not fut.done():
        fut.set_result(data)


class _Cancelled(Exception):
    """A generator handler stopped because the host cancelled the call."""


class _Job:
    """One call inside the actor. ``q`` carries stream messages (None: a plain call)."""

    __slots__ = ("cancelled", "flags", "loop", "q", "rid")

    def __init__(self, rid: int, flags: int, loop: asyncio.AbstractEventLoop, q: asyncio.Queue[Any] | None) -> None:
        self.rid = rid
        self.flags = flags
        self.loop = loop
        self.q = q
        self.cancelled = False


class WorkerActor:
    """One pool worker. ``cfg``: handlers, preload, allow_pickle, max_frame, max_concurrency, cancel_grace_s."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        load_modules(list(cfg.get("preload", [])))
        load_modules(list(cfg.get("handlers", [])))
        self.handlers: dict[str, HandlerSpec] = registry()
        self.codec = P.Codec(bool(cfg.get("allow_pickle")), int(cfg.get("max_frame", P.DEFAULT_MAX_FRAME)))
        self.grace = float(cfg.get("cancel_grace_s", 5.0))
        self.threads = ThreadPoolExecutor(int(cfg.get("max_concurrency", 64)), thread_name_prefix="dspex-ray-h")
        self.incarnation = uuid.uuid4().hex
        self.sessions: dict[Any, dict[str, Any]] = {}
        self.jobs: dict[int, _Job] = {}
        self.cb_ids = itertools.count(1)
        self.cb_waiters: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self.serial_sync: asyncio.Lock | None = None
        self.serial_async: asyncio.Lock | None = None
        self.info = {
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "incarnation": self.incarnation,
            "python": sys.version.split()[0],
            "handlers": _handler_table(self.handlers),
            "import_s": time.perf_counter() - t0,
        }

    # -- control (own concurrency group: never starved by running calls) -----------
    @ray.method(concurrency_group="control")
    async def ready(self) -> dict[str, Any]:
        return self.info

    @ray.method(concurrency_group="control")
    async def watch(self) -> None:
        """Never returns: the host learns of this actor's death when this call fails."""
        await asyncio.Event().wait()

    @ray.method(concurrency_group="control")
    async def drop(self, sessions: list[Any]) -> None:
        for s in sessions:
            self.sessions.pop(s, None)

    @ray.method(concurrency_group="control")
    async def reply(self, cbid: int, data: bytes) -> None:
        """The host's answer to a callback request: packed ``[ok, value | [type, message, tb]]``."""
        waiter = self.cb_waiters.pop(cbid, None)
        if waiter is not None:
            loop, fut = waiter
            loop.call_soon_threadsafe(_resolve, fut, data)

    # -- calls ---------------------------------------------------------------------
    async def run(self, frame: bytes) -> bytes:
        """``frame``: packed ``[rid, handler, args, kwargs, session, flags, expect]`` (one
        argument: Ray serializes each argument separately, which costs per argument)."""
        rid, name, args, kwargs, session, flags, expect = self.codec.unpack(frame)
        job = _Job(rid, flags, asyncio.get_running_loop(), None)
        return await self._execute(job, name, args, kwargs, session, expect)

    @ray.method(_generator_backpressure_num_objects=P.STREAM_WINDOW)
    async def run_stream(self, frame: bytes) -> Any:
        rid, name, args, kwargs, session, flags, expect = self.codec.unpack(frame)
        q: asyncio.Queue[tuple[bool, bytes]] = asyncio.Queue(maxsize=P.STREAM_WINDOW)
        job = _Job(rid, flags, asyncio.get_running_loop(), q)

        async def pump() -> None:
            final = await self._execute(job, name, args, kwargs, session, expect)
            await q.put((True, final))

        task = asyncio.ensure_future(pump())
        try:
            while True:
                last, data = await q.get()
                yield data
                if last:
                    return
        finally:
            if not task.done():  # the host gave up (cancel, timeout, closed stream)
                job.cancelled = True
                task.cancel()

    # -- the channel a Context talks to (handler.Context calls these) --------------
    def is_cancelled(self, rid: int) -> bool:
        job = self.jobs.get(rid)
        return job is None or job.cancelled

    def progress(self, rid: int, flags: int, event: dict[str, Any]) -> None:
        job = self.jobs.get(rid)
        if job is None or job.q is None or not flags & P.F_EVENTS:
            return
        data = self.codec.pack([P.EVENT, event])
        self._put_from_any_thread(job, data)

    def callback(self, rid: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        job = self.jobs.get(rid)
        if job is None:
            raise RuntimeError(f"callback {name!r} made after its call ended")
        return asyncio.run_coroutine_threadsafe(self.acallback(rid, name, args, kwargs), job.loop).result()

    async def acallback(self, rid: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        job = self.jobs.get(rid)
        if job is None or job.q is None:  # the host has no callbacks for this call
            raise LookupError(f"no host callback named {name!r}; registered: []")
        cbid = next(self.cb_ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self.cb_waiters[cbid] = (loop, fut)
        try:
            await job.q.put((False, self.codec.pack([P.CALLBACK, cbid, name, list(args), kwargs])))
            ok, value = self.codec.unpack(await fut)
        finally:
            self.cb_waiters.pop(cbid, None)
        if ok:
            return value
        raise _remote_error(value)

    def _put_from_any_thread(self, job: _Job, data: bytes) -> None:
        assert job.q is not None
        item = (False, data)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is job.loop:  # a sync ctx.progress from an async handler: it cannot wait
            if not job.q.full():
                job.q.put_nowait(item)
            else:
                task = asyncio.ensure_future(job.q.put(item))
                _BACKGROUND.add(task)
                task.add_done_callback(_BACKGROUND.discard)
        else:  # a handler thread: wait for room (flow control)
            asyncio.run_coroutine_threadsafe(job.q.put(item), job.loop).result()

    # -- running a handler -----------------------------------------------------------
    async def _execute(self, job: _Job, name: str, args: list[Any], kwargs: dict[str, Any], session: Any,
                       expect: str | None) -> bytes:
        """Run the call; the packed outcome ``[RESULT, value]`` or ``[ERROR, code, type, message, tb, detail]``."""
        if expect is not None and expect != self.incarnation:
            return self.codec.pack([P.ERROR, E_LOST, "SessionLost", "the session's worker was restarted", "", None])
        spec = self.handlers.get(name)
        if spec is None:
            return self.codec.pack([P.ERROR, P.E_NOT_FOUND, "HandlerNotFound", name, "", None])
        self.jobs[job.rid] = job
        try:
            state = {} if session is None else self.sessions.setdefault(session, {})
            ctx = Context(self, job.rid, session, state, job.flags)
            if spec.kind in ("async", "agen"):
                out = await self._run_async(ctx, spec, job, args, kwargs)
            else:
                out = await self._run_sync(ctx, spec, job, args, kwargs)
        except _Cancelled:
            return self.codec.pack([P.ERROR, P.E_CANCELLED, "Cancelled", "cancelled by the host", "", None])
        except Exception as exc:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            return self.codec.pack([P.ERROR, P.E_REMOTE, _type_name(exc), str(exc), tb, wire_detail(exc)])
        finally:
            self.jobs.pop(job.rid, None)
        try:
            data = self.codec.pack([P.RESULT, out])
        except (TypeError, ValueError, OverflowError, P.FrameError) as exc:
            return self.codec.pack([P.ERROR, P.E_ENCODE, _type_name(exc), f"result not sendable: {exc}", "", None])
        if len(data) > self.codec.max_frame:
            msg = f"result not sendable: {len(data)} bytes exceeds max_frame={self.codec.max_frame}"
            return self.codec.pack([P.ERROR, P.E_ENCODE, "dspex.errors.ProtocolError", msg, "", None])
        return data

    async def _run_async(self, ctx: Context, spec: HandlerSpec, job: _Job, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if spec.concurrent:
            return await self._invoke_async(ctx, spec, job, args, kwargs)
        if self.serial_async is None:
            self.serial_async = asyncio.Lock()
        async with self.serial_async:
            return await self._invoke_async(ctx, spec, job, args, kwargs)

    async def _invoke_async(self, ctx: Context, spec: HandlerSpec, job: _Job, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if spec.kind != "agen":
            return await spec.fn(ctx, *args, **kwargs)
        collected: list[Any] = []
        agen = spec.fn(ctx, *args, **kwargs)
        try:
            async for chunk in agen:
                if job.q is not None and job.flags & P.F_STREAM:
                    await job.q.put((False, self._chunk(chunk)))
                else:
                    collected.append(chunk)
        finally:
            await agen.aclose()
        return collected

    async def _run_sync(self, ctx: Context, spec: HandlerSpec, job: _Job, args: list[Any], kwargs: dict[str, Any]) -> Any:
        fn = functools.partial(self._invoke_sync, ctx, spec, job, args, kwargs)
        if spec.concurrent:
            return await self._in_thread(job, fn)
        if self.serial_sync is None:
            self.serial_sync = asyncio.Lock()
        async with self.serial_sync:
            return await self._in_thread(job, fn)

    async def _in_thread(self, job: _Job, fn: Any) -> Any:
        fut = asyncio.get_running_loop().run_in_executor(self.threads, fn)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            # Serial order must hold: wait for the handler to notice ctx.cancelled, and
            # replace this process if it does not (Ray restarts the actor).
            job.cancelled = True
            done, _ = await asyncio.wait((fut,), timeout=self.grace)
            if done:
                fut.exception()  # retrieved: the caller has gone, nobody else will
            else:
                sys.stderr.write(f"dspex: a cancelled call overstayed {self.grace:g} s; restarting this worker\n")
                sys.stderr.flush()
                os._exit(70)
            raise

    def _invoke_sync(self, ctx: Context, spec: HandlerSpec, job: _Job, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if job.cancelled:
            raise _Cancelled()
        if spec.kind != "gen":
            return spec.fn(ctx, *args, **kwargs)
        streaming = job.q is not None and bool(job.flags & P.F_STREAM)
        collected: list[Any] = []
        gen = spec.fn(ctx, *args, **kwargs)
        try:
            for chunk in gen:
                if job.cancelled:
                    raise _Cancelled()
                if streaming:
                    self._put_from_any_thread(job, self._chunk(chunk))
                else:
                    collected.append(chunk)
        finally:
            gen.close()
        return collected

    def _chunk(self, chunk: Any) -> bytes:
        try:
            return self.codec.pack([P.CHUNK, chunk])
        except (TypeError, ValueError, OverflowError, P.FrameError) as exc:
            raise TypeError(f"stream chunk not sendable: {exc}") from None
