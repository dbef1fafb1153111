"""The service: a Starlette app with one JSON and one SSE route per endpoint.

    GET  /                       the try-it page (static/index.html)
    GET  /healthz  /readyz       liveness; readiness (every endpoint's pools started)
    GET  /metrics                Prometheus text
    GET  /openapi.json           generated from the endpoints' signatures
    GET  /v1/endpoints           the endpoints and their fields (the page reads it)
    POST /v1/programs/<name>[/stream]   POST /v1/pipelines/<name>[/stream]

A call: auth (middleware) -> in-flight bound (429) -> body size (413) -> JSON (400) ->
fields (422) -> run, cancelled if the client disconnects. ``X-Dspex-Session`` is passed to
the pool (worker affinity) and to pipelines (their worker-side session).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .._cli.common import to_jsonable
from ..pipeline.trace import StepProgress
from .auth import APIKeyAuth
from .config import ServeConfig
from .http_errors import HTTPProblem, problem_for
from .limits import InFlight, read_json_body
from .metrics import CONTENT_TYPE, ServeMetrics
from .schema import openapi
from .sse import EventStreamResponse, event_json, format_event, watch_disconnect
from .targets import NO_EVENTS, Chunk, Progress, Target, build_target
from .validation import check_inputs

__all__ = ["SESSION_HEADER", "Service"]

log = logging.getLogger("dspex.serve")
SESSION_HEADER = "x-dspex-session"
_SESSION = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_MAX_QUEUED_EVENTS = 1000  # per streamed call; progress events past it are dropped, others kept
_CHUNK_WINDOW = 64  # chunks queued for the client before the handler's stream is paused


class _ClientGone(Exception):
    pass


_RID_PREFIX = uuid.uuid4().hex[:8]  # unique per process; a counter after it (no urandom per request)
_rid_counter = itertools.count(1)


_PLAIN = (str, int, float, bool, type(None))


def _jsonable(outputs: dict[str, Any]) -> Any:
    """Outputs as JSON types; the common all-scalar case is returned as is."""
    if all(isinstance(v, _PLAIN) for v in outputs.values()):
        return outputs
    return to_jsonable(outputs)


def _request_id() -> str:
    return f"{_RID_PREFIX}{next(_rid_counter):08x}"


class _Dispatch:
    """Endpoint POSTs go straight to their handler (which answers every error itself);
    everything else (GETs, 404/405, lifespan) to the Starlette app. Saves the router scan
    and two middleware layers on the path that carries the traffic."""

    def __init__(self, app: ASGIApp, table: dict[str, Any]):
        self.app = app
        self.table = table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.table.get(scope["path"])
            if handler is not None:
                response = await handler(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Service:
    """Endpoints built from a ``ServeConfig``; ``.app`` is the ASGI application.

    ``lm`` / ``manager`` default to ``[serve.lm]`` (else the layers' own default) and a
    PoolManager over the project's pools plus ``[serve.pools]``, owned and closed here."""

    def __init__(self, cfg: ServeConfig, *, lm: Any = None, manager: Any = None):
        from ..pool import PoolManager
        from ..settings import load_config

        self.cfg = cfg
        if lm is None and cfg.lm:
            from .. import LM

            lm = LM.from_spec(dict(cfg.lm))
        self.lm = lm
        self._own_manager = manager is None
        if manager is None:
            pools = dict(load_config().get("pools") or {})
            for name, table in cfg.pools.items():  # [serve.pools.x] overrides keys of [pools.x]
                pools[name] = {**pools.get(name, {}), **table}
            manager = PoolManager(pools, forward_stderr=False)
        self.manager = manager
        try:
            self.targets: dict[str, Target] = {ep.name: build_target(ep, lm=lm, manager=manager)
                                               for ep in cfg.endpoints}
        except BaseException:
            self.close()
            raise
        self.metrics = ServeMetrics(self.targets, manager)
        self.in_flight = InFlight(cfg.max_in_flight, cfg.retry_after_s)
        self.ready = False
        self.problem: str | None = None
        self._openapi = openapi(list(self.targets.values()), auth=cfg.api_key() is not None)
        self.app = self._build()

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        if self._own_manager and self.manager is not None:
            self.manager.close_all()

    async def prepare(self) -> None:
        """Start every endpoint's pools; ready only when all did."""
        try:
            for t in self.targets.values():
                await t.prepare()
        except Exception as exc:
            # /readyz is public: the type only; the details (stderr tails, paths) go to the log
            self.problem = f"{type(exc).__name__} while starting the worker pools (see the server log)"
            log.error("dspex serve: not ready: %s: %s", type(exc).__name__, exc)
            return
        self.ready = True
        self.metrics.ready = True

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        task = asyncio.ensure_future(self.prepare())
        try:
            yield
        finally:
            self.ready = False
            self.metrics.ready = False
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await asyncio.to_thread(self.close)

    def _build(self) -> ASGIApp:
        routes = []
        fast: dict[str, Any] = {}
        for t in self.targets.values():
            for path, stream in ((t.path, False), (t.path + "/stream", True)):
                fast[path] = handler = self._endpoint(t, stream=stream)
                routes.append(Route(path, handler, methods=["POST"]))  # Starlette answers 405 for other methods
        routes += [
            Route("/", self.page, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/openapi.json", self.openapi_doc, methods=["GET"]),
            Route("/v1/endpoints", self.endpoints, methods=["GET"]),
        ]
        app = Starlette(routes=routes, lifespan=self._lifespan,
                        exception_handlers={HTTPException: self._http_exception, Exception: self._crash})
        return APIKeyAuth(_Dispatch(app, fast), key=self.cfg.api_key(),
                          on_reject=lambda: self.metrics.reject("auth"))

    # ------------------------------------------------------------------ small routes
    async def page(self, request: Request) -> Response:
        if not self.cfg.page:
            raise HTTPException(404)
        html = resources.files("dspex.serve").joinpath("static/index.html").read_bytes()
        return Response(html, media_type="text/html; charset=utf-8",
                        headers={"content-security-policy": "default-src 'self'; style-src 'self' 'unsafe-inline';"
                                 " script-src 'self' 'unsafe-inline'", "x-content-type-options": "nosniff"})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.ready:
            return JSONResponse({"status": "ready", "endpoints": sorted(self.targets)})
        body = {"status": "not ready", "problem": self.problem or "starting the worker pools"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(max(1, round(self.cfg.retry_after_s)))})

    async def prometheus(self, request: Request) -> Response:
        data = await asyncio.to_thread(self.metrics.render)  # pool stats take locks
        return Response(data, media_type=CONTENT_TYPE)

    async def openapi_doc(self, request: Request) -> Response:
        return JSONResponse(self._openapi)

    async def endpoints(self, request: Request) -> Response:
        return JSONResponse({"endpoints": [t.describe() for t in self.targets.values()],
                             "session_header": "X-Dspex-Session"})

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        text = {404: "no such path", 405: "method not allowed on this path"}.get(status, "bad request")
        return JSONResponse({"error": {"type": "HTTPError", "message": text,
                                       "fix": "GET /openapi.json lists the paths", "retryable": False}},
                            status_code=status)

    async def _crash(self, request: Request, exc: Exception) -> Response:
        rid = _request_id()
        log.exception("dspex serve: unexpected error (request %s)", rid)
        return JSONResponse(problem_for(exc).body(rid), status_code=500)

    # ------------------------------------------------------------------ calls
    def _endpoint(self, target: Target, *, stream: bool) -> Any:
        async def handle(request: Request) -> Any:
            return await self._handle(target, request, stream)

        handle.__name__ = f"{'stream' if stream else 'call'}_{target.name}"
        return handle

    def _answer(self, target: Target, problem: HTTPProblem, rid: str, t0: float | None) -> Response:
        self.metrics.observe(target.name, problem.status, None if t0 is None else time.perf_counter() - t0)
        if problem.status == 500:
            log.error("dspex serve: %s failed (request %s)", target.name, rid)
        return JSONResponse(problem.body(rid), status_code=problem.status,
                            headers={**problem.all_headers(), "x-request-id": rid})

    async def _handle(self, target: Target, request: Request, stream: bool) -> Any:
        rid = _request_id()
        try:
            self.in_flight.enter()
        except HTTPProblem as p:
            self.metrics.reject("in_flight")
            return self._answer(target, p, rid, None)
        entered = True
        try:
            if not self.ready:
                raise HTTPProblem(503, "NotReady", self.problem or "the service is still starting its worker pools",
                                  "retry after Retry-After", retry_after=self.cfg.retry_after_s)
            session = request.headers.get(SESSION_HEADER)
            if session is not None and not _SESSION.match(session):
                raise HTTPProblem(400, "BadSession", "X-Dspex-Session must be 1-128 letters, digits, '-' or '_'",
                                  "send a session id like 'user-42', or none")
            try:
                body = await read_json_body(request, self.cfg.max_body_bytes)
            except HTTPProblem as p:
                self.metrics.reject({413: "body_too_large"}.get(p.status, "bad_body"))
                raise
            inputs = check_inputs(target, body)
            self.metrics.in_flight += 1
            if stream:
                entered = False  # the stream leaves the bound when it ends
                return self._stream(target, request, inputs, session, rid)
            t0 = time.perf_counter()
            try:
                outputs, trace = await self._run_watched(target, request, inputs, session)
            except _ClientGone:
                self.metrics.cancel(target.name)
                return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
            except Exception as exc:
                return self._answer(target, problem_for(exc, retry_after_s=self.cfg.retry_after_s), rid, t0)
            finally:
                self.metrics.in_flight -= 1
            self.metrics.observe(target.name, 200, time.perf_counter() - t0)
            return JSONResponse({"outputs": _jsonable(outputs), "trace": trace, "session": session,
                                 "request_id": rid}, headers={"x-request-id": rid})
        except Exception as exc:
            return self._answer(target, problem_for(exc, retry_after_s=self.cfg.retry_after_s), rid, None)
        finally:
            if entered:
                self.in_flight.leave()

    async def _run_watched(self, target: Target, request: Request, inputs: dict[str, Any],
                           session: str | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Run the call in this task; a watcher task cancels it (-> ``_ClientGone``) if the client
        disconnects first. One extra task per call, no asyncio.wait."""
        me = asyncio.current_task()
        assert me is not None
        gone = finished = False

        def on_disconnect(t: asyncio.Task[None]) -> None:
            nonlocal gone
            # ``finished``: the callback may have been scheduled just before the call returned
            if not finished and not t.cancelled() and t.exception() is None:
                gone = True
                me.cancel()

        watcher = asyncio.ensure_future(watch_disconnect(request.receive))
        watcher.add_done_callback(on_disconnect)
        try:
            outputs, trace = await self._timed(target.call(inputs, session, NO_EVENTS), target)
            target.check_outputs(outputs)
            return outputs, trace
        except asyncio.CancelledError:
            if gone:
                me.uncancel()
                raise _ClientGone() from None
            raise
        finally:
            finished = True
            watcher.remove_done_callback(on_disconnect)
            watcher.cancel()

    async def _timed(self, call: Any, target: Target) -> Any:
        """The call under the endpoint's ``timeout_s``, else the service's ``request_timeout_s``."""
        limit = target.timeout_s or self.cfg.request_timeout_s
        if not limit:
            return await call
        async with asyncio.timeout(limit):
            return await call

    def _stream(self, target: Target, request: Request, inputs: dict[str, Any], session: str | None,
                rid: str) -> EventStreamResponse:
        t0 = time.perf_counter()

        def release() -> None:
            self.metrics.in_flight -= 1
            self.in_flight.leave()

        def gone() -> None:
            self.metrics.cancel(target.name)

        async def events() -> AsyncIterator[bytes]:
            queue: asyncio.Queue[Any] = asyncio.Queue()
            dropped = 0
            chunk_slots = asyncio.Semaphore(_CHUNK_WINDOW)  # a slow client pauses a streaming handler

            async def put_chunk(ev: Chunk) -> None:
                await chunk_slots.acquire()
                queue.put_nowait(ev)

            def emit(ev: Any) -> Any:
                nonlocal dropped
                if isinstance(ev, Chunk):
                    return put_chunk(ev)  # awaited by the producer
                if queue.qsize() >= _MAX_QUEUED_EVENTS and isinstance(ev, Progress | StepProgress):
                    dropped += 1  # progress is droppable; steps and chunks are not
                    return None
                queue.put_nowait(ev)
                return None

            work = asyncio.ensure_future(self._timed(target.call(inputs, session, emit), target))
            work.add_done_callback(lambda _t: queue.put_nowait(None))
            try:
                yield format_event("start", {"request_id": rid, "endpoint": target.name, "session": session})
                while (ev := await queue.get()) is not None:
                    if isinstance(ev, Chunk):
                        chunk_slots.release()
                        yield format_event("chunk", {"index": ev.index, "value": ev.value})
                    elif isinstance(ev, Progress):
                        yield format_event("progress", ev.data)
                    elif type(ev).__name__ not in ("RunStarted", "RunFinished"):
                        yield format_event("step", event_json(ev))
                try:
                    outputs, trace = work.result()
                    target.check_outputs(outputs)
                except Exception as exc:
                    problem = problem_for(exc, retry_after_s=self.cfg.retry_after_s)
                    self.metrics.observe(target.name, problem.status, time.perf_counter() - t0)
                    yield format_event("error", {"status": problem.status, **problem.body(rid)})
                    return
                for name, value in outputs.items():
                    yield format_event("output", {"field": name, "value": value})
                self.metrics.observe(target.name, 200, time.perf_counter() - t0)
                yield format_event("done", {"outputs": outputs, "trace": trace, "session": session,
                                            "dropped_events": dropped, "request_id": rid})
            finally:
                if not work.done():
                    work.cancel()
                    with contextlib.suppress(BaseException):
                        await work

        return EventStreamResponse(events(), headers={"x-request-id": rid}, on_disconnect=gone, on_close=release)
