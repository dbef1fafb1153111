"""``RayPool``: a pool whose workers are Ray actors (``backend = "ray"``).

Same interface as the local ``Pool`` (``dspex.pool.backend.PoolBackend``): call /
acall / stream / astream, sessions with the affinity modes, host callbacks, progress
events, timeouts, overload and the same error types. Parts, one job each:

  config.py   options, joining or starting Ray, actor options (resources, placement)
  actor.py    the actor (runs the handlers through the shared handler registry)
  routing.py  which actor runs a call; sessions; in-flight bound; deaths (one lock)
  calls.py    one call: submit, wait, stream, callbacks, Ray failures -> dspex errors
  pool.py     this facade: start / close, the monitor thread, the public methods

Supervision is Ray's (``max_restarts``) with dspex's semantics on top. A monitor
thread keeps one never-returning ``watch`` call per actor; its failure means the
actor died (crash, node lost, OOM kill): strict sessions on it become lost
(``SessionLost``), hint sessions move on their next call, and a ``ready`` probe
waits for Ray's restart (an actor out of restarts is replaced by a new one). A call
that sees its actor fail marks it down at once (routing avoids it); the probe then
tells whether it came back as the same incarnation or a restarted one.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from typing import Any

from dspex.errors import DspexError, HandlerNotFound, PoolClosed, WorkerStartError
from dspex.pool import protocol as P
from dspex.pool._call import CallResult
from dspex.pool._ray.calls import Call, Caller
from dspex.pool._ray.config import RayPoolConfig, ensure_ray
from dspex.pool._ray.routing import DEAD, READY, Router, Slot
from dspex.pool.backend import PoolFacade
from dspex.pool.sessions import Session
from dspex.pool.stats import LatencyReservoir

__all__ = ["RayPool"]

_actor_class: Any = None
_ray_users = 0  # open RayPools that rely on a Ray connection one of them started
_owned_ray = False
_ray_lock = threading.Lock()


def _actor_cls() -> Any:
    global _actor_class
    if _actor_class is None:
        import ray

        from dspex.pool._ray.actor import WorkerActor

        # control methods (ready, watch, reply, drop) never wait behind running calls
        _actor_class = ray.remote(concurrency_groups={"control": 8})(WorkerActor)  # type: ignore[call-overload]
    return _actor_class


class RayPool(PoolFacade):
    """Workers as Ray actors. ``RayPool("dspy", size=4, handlers=[...], num_cpus=1)``;
    options: see ``dspex.pool._ray.config.RayPoolConfig`` and docs/ray.md."""

    def __init__(self, name: str = "pool", **options: Any) -> None:
        cfg = self.cfg = RayPoolConfig.build(name, options)
        self.name = name
        self.size = cfg.size
        self.affinity = cfg.affinity
        self.handlers = list(cfg.handlers)
        self.callbacks = dict(cfg.callbacks)
        self.call_timeout_s = cfg.call_timeout_s
        self.queue_limit = cfg.queue_limit
        self._router = Router(name, cfg.affinity, cfg.max_concurrency, cfg.queue_limit, cfg.max_sessions,
                              cfg.session_ttl_s)
        self._codec = P.Codec(cfg.allow_pickle, cfg.max_frame)
        self._caller = Caller(name, self._router, self._codec, self.callbacks, cfg.callback_threads,
                              lambda: self._closed)
        self._lock = threading.Lock()  # start / close
        self._state = "new"  # new -> running -> closed
        self._closed = False
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._pg: Any = None
        self._uses_ray = False
        self._handler_table: dict[str, list[Any]] = {}
        self._rids = itertools.count(1)
        self._latency = LatencyReservoir()
        self._address: str | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"RayPool(name={self.name!r}, size={self.size}, state={self._state!r})"

    def start(self) -> RayPool:
        """Join (or start) Ray, create the actors, wait until all ``size`` are ready.

        Raises WorkerStartError (with the actor's error) if one cannot start, or if the
        cluster cannot place them within ``start_timeout_s``."""
        with self._lock:
            if self._closed:
                raise PoolClosed(f"pool {self.name!r} is closed; create a new RayPool", pool=self.name)
            if self._state == "running":
                return self
            self._connect()
            import ray

            strategies = self._placement()
            cls = _actor_cls()
            actor_cfg = {"handlers": self.cfg.handlers, "preload": self.cfg.preload, "allow_pickle": self.cfg.allow_pickle,
                         "max_frame": self.cfg.max_frame, "max_concurrency": self.cfg.max_concurrency,
                         "cancel_grace_s": self.cfg.cancel_grace_s}
            self._actor_cfg = actor_cfg
            slots = [Slot(i, cls.options(**self.cfg.actor_options(strategies[i])).remote(actor_cfg))
                     for i in range(self.size)]
            self._router.slots = slots
            try:
                self._wait_ready(slots)
            except BaseException:
                for s in slots:
                    with contextlib.suppress(Exception):
                        ray.kill(s.actor, no_restart=True)
                self._router.slots = []
                raise
            self._handler_table = dict(slots[0].handlers)
            for s in slots:
                self._arm(s)
            self._state = "running"
            self._monitor = threading.Thread(target=self._monitor_loop, name=f"dspex-ray-{self.name}-mon", daemon=True)
            self._monitor.start()
            atexit.register(_close_at_exit, weakref.ref(self))
        return self

    def _connect(self) -> None:
        global _ray_users, _owned_ray
        import ray

        with _ray_lock:
            started = ensure_ray(self.cfg)
            if started:
                _owned_ray = True
            if _owned_ray:
                _ray_users += 1
                self._uses_ray = True
        with contextlib.suppress(Exception):
            self._address = ray.get_runtime_context().gcs_address

    def _placement(self) -> list[Any]:
        placement = self.cfg.placement
        if placement == "default":
            return [None] * self.size
        if placement == "spread":
            return ["SPREAD"] * self.size
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg = placement_group([self.cfg.bundle()] * self.size, strategy=placement.upper(), name=f"dspex-{self.name}-{uuid.uuid4().hex[:8]}")
        try:
            ray.get(pg.ready(), timeout=self.cfg.start_timeout_s)
        except Exception:
            with contextlib.suppress(Exception):
                ray.util.remove_placement_group(pg)
            raise WorkerStartError(
                f"pool {self.name!r}: the cluster cannot place {self.size} workers of {self.cfg.bundle()} with "
                f"placement={placement!r} within {self.cfg.start_timeout_s:g} s; add nodes/resources (see `ray status`) "
                "or relax placement", pool=self.name) from None
        self._pg = pg
        return [PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i) for i in range(self.size)]

    def _wait_ready(self, slots: list[Slot]) -> None:
        import ray

        probes = {s.actor.ready.remote(): s for s in slots}
        ready, pending = ray.wait(list(probes), num_returns=len(probes), timeout=self.cfg.start_timeout_s)
        for ref in ready:
            try:
                info = ray.get(ref)
            except Exception as exc:
                raise WorkerStartError(
                    f"pool {self.name!r}: a worker failed to start: {type(exc).__name__}; check the pool's handlers "
                    "and preload modules (and that dspex is installed on every node)",
                    pool=self.name, stderr_tail=str(exc)[-4000:]) from None
            probes[ref].up(info)
        if pending:
            raise WorkerStartError(
                f"pool {self.name!r}: only {len(ready)} of {len(slots)} workers ready after "
                f"{self.cfg.start_timeout_s:g} s; the cluster may lack {self.cfg.bundle()} per worker (see `ray status`), "
                "or raise start_timeout_s", pool=self.name, stderr_tail="")

    def close(self, grace_s: float | None = None) -> None:
        """Stop the pool: kill its actors (calls in flight get PoolClosed) and, if this
        process started Ray for its pools, shut Ray down after the last one closes."""
        global _ray_users, _owned_ray
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started = self._state == "running" or bool(self._router.slots)
            self._state = "closed"
        self._stop.set()
        with self._router.lock:
            self._router.closed = True
            self._router.changed.notify_all()  # callers waiting for a worker give up
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=2.0)
        if started:
            import ray

            for s in self._router.slots:
                with contextlib.suppress(Exception):
                    ray.kill(s.actor, no_restart=True)
            if self._pg is not None:
                with contextlib.suppress(Exception):
                    ray.util.remove_placement_group(self._pg)
        if self._caller.executor is not None:
            self._caller.executor.shutdown(wait=False, cancel_futures=True)
        with _ray_lock:
            if self._uses_ray:
                self._uses_ray = False
                _ray_users -= 1
                if _ray_users == 0 and _owned_ray:
                    import ray

                    _owned_ray = False
                    with contextlib.suppress(Exception):
                        ray.shutdown()

    def _monitor_loop(self) -> None:
        """Watch every actor; on a death mark sessions and wait for the restart."""
        import ray

        next_expire = time.monotonic() + 1.0
        while not self._stop.is_set():
            watched: dict[Any, Slot] = {}
            for s in self._router.slots:
                if s.state == DEAD and s.probe is None:  # a call saw it fail: is it back?
                    s.probe = s.actor.ready.remote()
                if s.watch is not None:
                    watched[s.watch] = s
                if s.probe is not None:
                    watched[s.probe] = s
            if not watched:
                self._stop.wait(0.2)
                continue
            try:
                ready, _ = ray.wait(list(watched), num_returns=1, timeout=0.2)
            except Exception:
                if self._stop.is_set():
                    return
                self._stop.wait(0.2)
                continue
            for ref in ready:
                self._on_monitor(watched[ref], ref)
            if time.monotonic() >= next_expire:
                next_expire = time.monotonic() + 1.0
                with self._router.lock:
                    expired = self._router.sessions.expire()
                self._drop_in_actors(expired)

    def _on_monitor(self, slot: Slot, ref: Any) -> None:
        import ray

        if self._stop.is_set():
            return
        if ref is slot.watch:  # it can only fail: that incarnation died
            slot.watch = None
            self._router.died(slot, slot.watch_inc)
            if slot.probe is None:
                slot.probe = slot.actor.ready.remote()
            return
        slot.probe = None
        try:
            info = ray.get(ref)
        except Exception:  # out of restarts (or unplaceable): a new actor takes the slot
            slot.actor = _actor_cls().options(**self.cfg.actor_options(self._strategy(slot))).remote(self._actor_cfg)
            slot.probe = slot.actor.ready.remote()
            return
        self._router.came_up(slot, info)
        if slot.watch is None or slot.watch_inc != slot.incarnation:
            self._arm(slot)

    def _arm(self, slot: Slot) -> None:
        slot.watch = slot.actor.watch.remote()
        slot.watch_inc = slot.incarnation

    def _strategy(self, slot: Slot) -> Any:
        if self._pg is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            return PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=slot.index)
        return "SPREAD" if self.cfg.placement == "spread" else None

    # -- calls ---------------------------------------------------------------------------
    def _begin(self, handler: str, session: Hashable | None, timeout: float | None,
               callbacks: dict[str, Callable[..., Any]] | None, on_event: Callable[[dict[str, Any]], Any] | None,
               stream: bool) -> tuple[Call, bool]:
        """Build the call and check its handler (the pool must be running)."""
        if self._closed:
            raise PoolClosed(f"pool {self.name!r} is closed", pool=self.name)
        kind = self._handler_table.get(handler)
        if kind is None:
            raise HandlerNotFound(
                f"pool {self.name!r} has no handler {handler!r}; it has: {', '.join(sorted(self._handler_table)) or 'none'}"
                " (check the pool's handlers= modules)", pool=self.name, handler=handler)
        t = timeout if timeout is not None else self.call_timeout_s
        flags = (P.F_EVENTS if on_event is not None else 0) | (P.F_STREAM if stream else 0)
        call = Call(handler, session, None if t is None else time.monotonic() + t, flags, callbacks, on_event)
        serial = not kind[1] and kind[0] in ("sync", "gen")
        return call, serial

    def _route(self, call: Call, serial: bool, wait: bool) -> bool:
        """Bind the call to a slot (and the incarnation a strict call expects). False: none
        is up and not ``wait``; with ``wait``, wait for one within the call's deadline."""
        evicted: list[Session] = []
        try:
            with self._router.lock:
                while True:
                    got = self._router.acquire(call.session, serial, evicted)
                    if got is not None:
                        call.slot, call.expect = got
                        return True
                    if not wait:
                        return False
                    left = call.left()
                    up = self._router.wait_ready(self.cfg.start_timeout_s if left is None else left)
                    if self._closed:
                        raise PoolClosed(f"pool {self.name!r} closed while the call waited for a worker",
                                         pool=self.name)
                    if not up:
                        raise self._router.no_workers()
        finally:
            self._drop_in_actors(evicted)

    def _finish(self, call: Call, serial: bool) -> float:
        assert call.slot is not None
        self._router.release(call.slot, serial)
        elapsed = time.perf_counter() - call.t0
        self._latency.add(elapsed)
        return elapsed

    def _channel(self, call: Call) -> bool:
        return bool(call.callbacks or self.callbacks or call.on_event is not None)

    def _sync(self, handler: str, args: tuple[Any, ...], kwargs: dict[str, Any], session: Hashable | None,
              timeout: float | None, callbacks: dict[str, Callable[..., Any]] | None,
              on_event: Callable[[dict[str, Any]], Any] | None, detailed: bool) -> Any:
        if self._state != "running":
            self.start()
        call, serial = self._begin(handler, session, timeout, callbacks, on_event, stream=False)
        self._route(call, serial, wait=True)
        try:
            channel = self._channel(call)
            self._caller.submit(call, next(self._rids), args, kwargs, stream=channel)
            if channel:
                it = self._caller.messages(call)
                try:
                    while True:
                        next(it)
                except StopIteration as stop:
                    value = stop.value
            else:
                value = self._caller.wait(call)
        except DspexError:
            raise  # the call's own outcome (or its timeout, which cancelled it)
        except BaseException:
            self._caller.cancel(call)  # interrupted here (Ctrl-C, an on_event that raised): stop it there
            raise
        finally:
            elapsed = self._finish(call, serial)
        assert call.slot is not None
        return CallResult(value, call.slot.pid, elapsed) if detailed else value

    async def _async(self, handler: str, args: tuple[Any, ...], kwargs: dict[str, Any], session: Hashable | None,
                     timeout: float | None, callbacks: dict[str, Callable[..., Any]] | None,
                     on_event: Callable[[dict[str, Any]], Any] | None, detailed: bool) -> Any:
        loop = asyncio.get_running_loop()
        if self._state != "running":
            await loop.run_in_executor(None, self.start)
        call, serial = self._begin(handler, session, timeout, callbacks, on_event, stream=False)
        call.loop = loop
        if not self._route(call, serial, wait=False):  # nothing up right now: wait off the event loop
            await loop.run_in_executor(None, self._route, call, serial, True)
        try:
            channel = self._channel(call)
            self._caller.submit(call, next(self._rids), args, kwargs, stream=channel)
            if channel:
                out: list[Any] = []
                async for _ in self._caller.amessages(call, out):
                    pass
                value = out[0]
            else:
                value = await self._caller.await_(call)
        finally:
            elapsed = self._finish(call, serial)
        assert call.slot is not None
        return CallResult(value, call.slot.pid, elapsed) if detailed else value

    def call(self, handler: str, /, *args: Any, session: Hashable | None = None, timeout: float | None = None,
             callbacks: dict[str, Callable[..., Any]] | None = None,
             on_event: Callable[[dict[str, Any]], Any] | None = None, **kwargs: Any) -> Any:
        """Run ``handler(*args, **kwargs)`` on an actor and return its result (a generator
        handler's chunks as a list)."""
        return self._sync(handler, args, kwargs, session, timeout, callbacks, on_event, False)

    def call_detailed(self, handler: str, /, *args: Any, session: Hashable | None = None, timeout: float | None = None,
                      callbacks: dict[str, Callable[..., Any]] | None = None,
                      on_event: Callable[[dict[str, Any]], Any] | None = None, **kwargs: Any) -> CallResult:
        return self._sync(handler, args, kwargs, session, timeout, callbacks, on_event, True)

    def call_with(self, handler: str, args: tuple[Any, ...] | list[Any] = (), kwargs: dict[str, Any] | None = None, *,
                  session: Hashable | None = None, timeout: float | None = None,
                  callbacks: dict[str, Callable[..., Any]] | None = None,
                  on_event: Callable[[dict[str, Any]], Any] | None = None, detailed: bool = False) -> Any:
        return self._sync(handler, tuple(args), dict(kwargs or {}), session, timeout, callbacks, on_event, detailed)

    async def acall(self, handler: str, /, *args: Any, session: Hashable | None = None, timeout: float | None = None,
                    callbacks: dict[str, Callable[..., Any]] | None = None,
                    on_event: Callable[[dict[str, Any]], Any] | None = None, **kwargs: Any) -> Any:
        return await self._async(handler, args, kwargs, session, timeout, callbacks, on_event, False)

    async def acall_detailed(self, handler: str, /, *args: Any, session: Hashable | None = None,
                             timeout: float | None = None, callbacks: dict[str, Callable[..., Any]] | None = None,
                             on_event: Callable[[dict[str, Any]], Any] | None = None, **kwargs: Any) -> CallResult:
        return await self._async(handler, args, kwargs, session, timeout, callbacks, on_event, True)

    def stream(self, handler: str, /, *args: Any, session: Hashable | None = None, timeout: float | None = None,
               callbacks: dict[str, Callable[..., Any]] | None = None,
               on_event: Callable[[dict[str, Any]], Any] | None = None, **kwargs: Any) -> Iterator[Any]:
        """Yield a generator handler's chunks as the actor produces them (a plain handler
        yields its one result). Closing the iterator early cancels the call."""
        if self._state != "running":
            self.start()
        call, serial = self._begin(handler, session, timeout, callbacks, on_event, stream=True)
        self._route(call, serial, wait=True)
        ok = False
        try:
            self._caller.submit(call, next(self._rids), args, kwargs, stream=True)
            value = yield from self._caller.messages(call)
            ok = True
            if not self._streams(handler):
                yield value
        finally:
            if not ok:
                self._caller.cancel(call)
            self._finish(call, serial)

    async def astream(self, handler: str, /, *args: Any, session: Hashable | None = None, timeout: float | None = None,
                      callbacks: dict[str, Callable[..., Any]] | None = None,
                      on_event: Callable[[dict[str, Any]], Any] | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        if self._state != "running":
            await loop.run_in_executor(None, self.start)
        call, serial = self._begin(handler, session, timeout, callbacks, on_event, stream=True)
        call.loop = loop
        if not self._route(call, serial, wait=False):
            await loop.run_in_executor(None, self._route, call, serial, True)
        ok = False
        try:
            self._caller.submit(call, next(self._rids), args, kwargs, stream=True)
            out: list[Any] = []
            async for chunk in self._caller.amessages(call, out):
                yield chunk
            ok = True
            if not self._streams(handler):
                yield out[0]
        finally:
            if not ok:
                self._caller.cancel(call)
            self._finish(call, serial)

    def _streams(self, handler: str) -> bool:
        return self._handler_table.get(handler, ["sync"])[0] in ("gen", "agen")

    # -- sessions and stats --------------------------------------------------------------
    def drop_session(self, session: Hashable) -> None:
        """Forget a session here and drop its state in every actor that may hold it."""
        with self._router.lock:
            s = self._router.sessions.pop(session)
        if s is not None:
            self._drop_in_actors([s])

    def _drop_in_actors(self, sessions: list[Session]) -> None:
        by_slot: dict[Slot, list[Any]] = {}
        for s in sessions:
            for slot in s.workers:
                by_slot.setdefault(slot, []).append(s.key)
        for slot, keys in by_slot.items():
            if slot.state == READY:
                with contextlib.suppress(Exception):
                    slot.actor.drop.remote(keys)

    def workers(self) -> list[int]:
        """Pids of the live actors (each on its own node's process table)."""
        with self._router.lock:
            return [s.pid for s in self._router.slots if s.state == READY]

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        r = self._router
        with r.lock:
            workers = [{"pid": s.pid, "node_id": s.node_id, "state": s.state, "requests": s.requests,
                        "in_flight": s.in_flight, "restarts": s.restarts, "age_s": round(now - s.started_at, 3)}
                       for s in r.slots]
            capacity = len(r.slots) * r.max_concurrency
            return {
                "name": self.name, "backend": "ray", "size": self.size, "state": self._state,
                "affinity": self.affinity, "queue_depth": max(0, r.in_flight - capacity), "queue_limit": self.queue_limit,
                "in_flight": r.in_flight, **r.counts, "sessions": len(r.sessions),
                "latency_s": self._latency.quantiles(), "workers": workers,
                "nodes": sorted({s.node_id for s in r.slots if s.state == READY}),
                "cluster": {"address": self._address, "placement": self.cfg.placement},
                "handlers": sorted(self._handler_table),
            }


def _close_at_exit(ref: weakref.ReferenceType[RayPool]) -> None:
    pool = ref()
    if pool is not None:
        with contextlib.suppress(Exception):
            pool.close(grace_s=0.5)
