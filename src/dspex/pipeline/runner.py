"""Running a pipeline: the async core every entry point (run, batch, stream) uses.

One ``RunState`` per run holds the run's session id, LM, resolved pools, event sink
and trace. ``run_step`` wraps every step the same way: cache lookup, timeout per
attempt, retries (retryable errors only) with exponential backoff, fallback, the
trace entry, events and an OpenTelemetry span.

Structured concurrency: groups start their children as tasks and never return or
raise before every child has finished; a cancelled worker call is cancelled in the
pool (the pool cancels a call whose awaiting task is cancelled), a cancelled native
step in a thread gets ``current_step().cancelled`` and is waited for (up to
``cancel_grace_s``) before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .. import settings
from ..errors import RemoteError, StepFailed, StepTimeout
from ..router.results import from_remote
from . import otel
from .steps import Step, StepContext, WorkerStep, _current_step
from .trace import (
    Event,
    StepFailedEvent,
    StepFinished,
    StepProgress,
    StepRetrying,
    StepStarted,
    StepTrace,
    Trace,
)

if TYPE_CHECKING:
    from .core import Pipeline

__all__ = ["RunState", "new_session_id", "run_sync"]

T = TypeVar("T")

_local = threading.local()
_executor_lock = threading.Lock()
_executor: concurrent.futures.ThreadPoolExecutor | None = None


def _threads() -> concurrent.futures.ThreadPoolExecutor:
    """The shared, bounded thread pool for sync native steps."""
    global _executor
    with _executor_lock:
        if _executor is None:
            size = int(os.environ.get("DSPEX_PIPELINE_THREADS", "0")) or min(64, (os.cpu_count() or 2) * 8)
            _executor = concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix="dspex-step")
        return _executor


def new_session_id() -> str:
    return f"run-{uuid.uuid4().hex}"


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end from sync code: on a private event loop, or, when this
    thread already runs a loop (a notebook, async code calling ``run()``), on a helper
    thread so that loop is not blocked re-entrantly."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        # one event loop per thread, reused across runs (creating one costs ~0.1-0.5 ms)
        runner = getattr(_local, "runner", None)
        if runner is None:
            runner = _local.runner = asyncio.Runner()
        return runner.run(coro, context=contextvars.copy_context())  # the caller's dspex.context()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, name="dspex-pipeline-run")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def _retryable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", False))


def _usage_dict(usage: settings.Usage) -> dict[str, Any]:
    d = usage.as_dict()
    return {k: d[k] for k in ("prompt_tokens", "completion_tokens", "calls", "cost", "by_model") if d.get(k)}


async def _cancel_all(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one is done, even if we get cancelled meanwhile."""
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    while pending:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError:
            pass
        pending = [t for t in pending if not t.done()]


async def gather_fail_fast(aws: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``aws`` concurrently; the first failure (in input order) cancels the rest, waits for
    them and is raised as itself (a TaskGroup, minus the ExceptionGroup wrapping)."""
    tasks: list[asyncio.Task[T]] = []
    try:
        async with asyncio.TaskGroup() as tg:
            tasks.extend(tg.create_task(a) for a in aws)
    except BaseExceptionGroup as group:
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception() from None  # type: ignore[misc]
        raise group.exceptions[0] from None
    return [t.result() for t in tasks]


class RunState:
    """Everything one run shares between its steps."""

    def __init__(
        self,
        pipeline: Pipeline,
        trace: Trace,
        *,
        lm: Any,
        emit: Callable[[Event], None] | None,
    ):
        self.pipeline = pipeline
        self.trace = trace
        self.run_id = trace.run_id
        self.session = trace.session
        self.lm = lm
        self._emit = emit
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._pools: dict[str, Any] = {}
        self.pools_used: list[Any] = []
        self.spans = otel.enabled()  # decided once per run

    # --- events --------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        if self._emit is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._emit(event)
        else:  # from a step thread or a pool reader thread
            self.loop.call_soon_threadsafe(self._emit, event)

    def _progress_sink(self, st: StepTrace) -> Callable[[dict[str, Any]], None]:
        def sink(data: dict[str, Any]) -> None:
            self.emit(StepProgress(self.run_id, st.name, st.path, time.time(), data=data))

        return sink

    # --- the generic step wrapper ----------------------------------------------------------
    async def run_sequence(self, steps: Sequence[Step], data: Mapping[str, Any], path: str) -> dict[str, Any]:
        """Run ``steps`` one after the other; returns the fields they wrote."""
        local = dict(data)
        new: dict[str, Any] = {}
        for step in steps:
            out = await self.run_step(step, local, path)
            local.update(out)
            new.update(out)
        return new

    async def run_step(
        self, step: Step, data: Mapping[str, Any], parent: str, *, name: str | None = None,
        fallback_of: str | None = None,
    ) -> dict[str, Any]:
        name = name or step.name
        path = f"{parent}/{name}" if parent else name
        st = StepTrace(name=name, path=path, kind=step.kind, where=step.where(), started=time.time())
        st.fallback_of = fallback_of
        self.trace.steps.append(st)
        self.emit(StepStarted(self.run_id, name, path, st.started, kind=step.kind, where=st.where))
        t0 = time.perf_counter()
        with otel.span(f"dspex.step {path}", {"dspex.step": path, "dspex.kind": step.kind}, on=self.spans) as sp:
            try:
                outputs = await self._attempts(step, data, st, sp)
            except asyncio.CancelledError:
                st.status = "cancelled"
                self._close_trace(st, t0)
                self.emit(StepFailedEvent(self.run_id, name, path, st.ended, cancelled=True))
                raise
            except StepFailed as exc:
                if step.fallback is not None:
                    st.status = "fallback"
                    st.error = str(exc)
                    self._close_trace(st, t0)
                    self.emit(StepFailedEvent(self.run_id, name, path, st.ended, error=exc))
                    return await self.run_step(step.fallback, data, parent, fallback_of=name)
                st.status = "failed"
                st.error = str(exc.cause)
                self._close_trace(st, t0)
                otel.set_attributes(sp, {"dspex.error": st.error})
                self.emit(StepFailedEvent(self.run_id, name, path, st.ended, error=exc))
                raise
            st.status = "ok"
            self._close_trace(st, t0)
            otel.set_attributes(
                sp,
                {
                    "dspex.where": st.where,
                    "dspex.pid": st.pid or 0,
                    "dspex.retries": st.retries,
                    "dspex.cached": st.cached,
                    "dspex.prompt_tokens": st.usage.get("prompt_tokens", 0),
                    "dspex.completion_tokens": st.usage.get("completion_tokens", 0),
                },
            )
        self.emit(
            StepFinished(
                self.run_id, name, path, st.ended, outputs=dict(outputs), where=st.where,
                pid=st.pid, duration_s=st.duration_s, cached=st.cached,
            )
        )
        return outputs

    @staticmethod
    def _close_trace(st: StepTrace, t0: float) -> None:
        st.duration_s = time.perf_counter() - t0
        st.ended = st.started + st.duration_s

    async def _attempts(self, step: Step, data: Mapping[str, Any], st: StepTrace, sp: Any) -> dict[str, Any]:
        key = None
        if step.cache_size:
            key = step.cache_key(step.inputs_of(data))
            if key is not None:
                hit = step.cache_get(key)
                if hit is not None:
                    st.cached, st.where, st.attempts = True, "cache", 0
                    return hit
        attempt = 0
        while True:
            attempt += 1
            st.attempts = attempt
            try:
                if step.timeout is None:
                    outputs = await step._execute(data, self, st)
                else:
                    try:
                        async with asyncio.timeout(step.timeout) as cm:
                            outputs = await step._execute(data, self, st)
                    except TimeoutError as exc:
                        if cm.expired():
                            raise StepTimeout(st.name, step.timeout) from exc
                        raise
            except asyncio.CancelledError:
                raise
            except StepFailed as exc:
                error: BaseException = exc
            except Exception as exc:
                error = exc
            else:
                if key is not None:
                    step.cache_put(key, outputs)
                return outputs
            if attempt <= step.retries and _retryable(error):
                delay = step.backoff * (2 ** (attempt - 1))
                self.emit(StepRetrying(self.run_id, st.name, st.path, time.time(), attempt=attempt,
                                       delay_s=delay, error=f"{type(error).__name__}: {error}"))
                if delay > 0:
                    await asyncio.sleep(delay)
                continue
            if isinstance(error, StepFailed) and step.kind not in ("native", "worker", "op"):
                raise error  # a child's failure: keep the innermost step's name
            raise StepFailed(st.name, error) from error

    # --- groups ---------------------------------------------------------------------------------
    async def gather(
        self,
        jobs: Sequence[tuple[Step, Mapping[str, Any]] | tuple[Step, Mapping[str, Any], str]],
        path: str,
        limit: int | None,
        *,
        fail_fast: bool,
    ) -> list[dict[str, Any]]:
        """Run ``jobs`` concurrently (at most ``limit`` at once); results in job order.

        fail_fast: the first failure cancels the rest, which are waited for, then it is
        raised. Otherwise all run to their end and the failures are raised together.
        """
        sem = asyncio.Semaphore(limit) if limit else None

        async def one(job: tuple[Any, ...]) -> dict[str, Any]:
            step, data = job[0], job[1]
            label = job[2] if len(job) > 2 else None
            if sem is None:
                return await self.run_step(step, data, path, name=label)
            async with sem:
                return await self.run_step(step, data, path, name=label)

        if fail_fast:
            return await gather_fail_fast([one(job) for job in jobs])
        tasks = [asyncio.ensure_future(one(job)) for job in jobs]
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            await _cancel_all(tasks)
            raise
        errors: list[Exception] = []
        for t in tasks:
            exc = None if t.cancelled() else t.exception()
            if isinstance(exc, Exception):
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            group = path.rsplit("/", 1)[-1]
            raise StepFailed(group, ExceptionGroup(f"{len(errors)} steps of {group!r} failed", errors))
        return [t.result() for t in tasks]

    # --- native calls -------------------------------------------------------------------------------
    def _step_context(self, st: StepTrace) -> StepContext:
        return StepContext(st.name, st.path, self.session, self._progress_sink(st))

    async def in_context(self, awaitable: Awaitable[T], lm: Any, st: StepTrace) -> T:
        """Await a native coroutine with the step's LM and usage accounting."""
        sc = self._step_context(st)
        token = _current_step.set(sc)
        try:
            with settings.context(lm=lm) as usage:
                try:
                    return await awaitable
                except asyncio.CancelledError:
                    sc._cancel()
                    raise
                finally:
                    st.usage = _usage_dict(usage)
        finally:
            _current_step.reset(token)

    def call_inline(self, fn: Callable[..., T], inputs: dict[str, Any], lm: Any, st: StepTrace) -> T:
        """A cheap sync callable, on the event loop: no thread hop and no per-step LM
        context (its LM calls, if any, count in the caller's context, not the step's)."""
        token = _current_step.set(self._step_context(st))
        try:
            return fn(**inputs)
        finally:
            _current_step.reset(token)

    async def call_in_thread(self, fn: Callable[..., T], inputs: dict[str, Any], lm: Any, st: StepTrace) -> T:
        """Run a sync callable in the shared thread pool; on cancellation, tell it
        (``current_step().cancelled``) and wait for it to return."""
        sc = self._step_context(st)

        def work() -> T:
            _current_step.set(sc)
            with settings.context(lm=lm) as usage:
                try:
                    return fn(**inputs)
                finally:
                    st.usage = _usage_dict(usage)

        ctx = contextvars.copy_context()
        fut = self.loop.run_in_executor(_threads(), ctx.run, work)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            sc._cancel()
            grace = self.pipeline.cancel_grace_s
            deadline = time.monotonic() + grace
            while not fut.done() and time.monotonic() < deadline:
                try:
                    await asyncio.wait([fut], timeout=max(0.0, deadline - time.monotonic()))
                except asyncio.CancelledError:
                    pass
            if not fut.done():
                st.error = f"thread still running {grace:g}s after cancellation; abandoned"
            else:
                fut.exception() if not fut.cancelled() else None  # mark retrieved
            raise

    # --- worker calls ---------------------------------------------------------------------------------
    async def pool_for(self, ref: Any) -> Any:
        if not isinstance(ref, str):
            return ref
        pool = self._pools.get(ref)
        if pool is None:
            pool = self.pipeline.pools.get(ref)
            if pool is None:
                manager = self.pipeline.manager
                if manager is None:
                    from ..pool import manager as default_manager

                    manager = default_manager()
                # may start the pool's processes (get() returns only a started pool,
                # waiting for another thread's start): keep the loop free meanwhile
                pool = await asyncio.to_thread(manager.get, ref)
            self._pools[ref] = pool
        return pool

    async def use_pool(self, ref: Any, st: StepTrace) -> Any:
        """The pool ``ref`` names (or is), noted as used by this run (its session is dropped at
        the end)."""
        pool = await self.pool_for(ref)
        if all(p is not pool for p in self.pools_used):
            self.pools_used.append(pool)
        st.where = str(getattr(pool, "name", ref if isinstance(ref, str) else "pool"))
        return pool

    def event_sink(self, st: StepTrace) -> Callable[[Any], None]:
        """A worker call's ``on_event``: its progress events as this step's StepProgress."""
        sink = self._progress_sink(st)

        def on_event(event: Any) -> None:
            sink(dict(event) if isinstance(event, Mapping) else {"event": event})

        return on_event

    async def call_worker(self, step: WorkerStep, kwargs: dict[str, Any], st: StepTrace) -> Any:
        """A ``worker(handler=...)`` step's call, with the run's session; errors mapped as the API's."""
        pool = await self.use_pool(step.pool, st)
        try:
            result = await pool.acall_detailed(step.handler, session=self.session, on_event=self.event_sink(st),
                                               **kwargs)
        except RemoteError as exc:
            err = from_remote(exc)
            raise err from err.__cause__  # the scrubbed RemoteError (never the raw one), or nothing
        st.pid = getattr(result, "pid", None)
        return getattr(result, "value", result)

    async def close(self) -> None:
        """Drop the run's session in every pool it used (worker-side state is freed)."""
        for pool in self.pools_used:
            drop = None
            for attr in ("drop_session", "end_session", "close_session"):
                drop = getattr(pool, attr, None)
                if drop is not None:
                    break
            if drop is None:
                continue
            try:
                res = drop(self.session)
                if asyncio.iscoroutine(res):
                    await res
            except Exception:
                pass  # the session dies with its worker anyway; never mask the run's outcome
