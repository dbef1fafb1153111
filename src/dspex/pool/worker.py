"""The child side of a pool: the template process (zygote) and the worker runtime.

Standard library + msgpack only, so a pool can run under another interpreter or
virtualenv that has nothing else installed. Started by the host as

    python -c BOOTSTRAP <dspex package dir> --zygote '<json config>'

(``python -m dspex.pool.worker --zygote ...`` works too when dspex is importable).

Template (zygote): imports ``preload`` and the handler modules once, then forks a
worker per request from the host. It stays single-threaded (forking after threads
exist is unsafe); if importing created threads it falls back to ``posix_spawn`` of
fresh interpreters. It reaps its children and reports their exit status to the
host, kills them all when the host goes away (control-socket EOF or the host's
pidfd), and is their parent, so their PR_SET_PDEATHSIG fires if it dies.

Worker: one blocking loop on the main thread reads frames. Non-concurrent sync and
generator handlers run inline on that thread, one at a time in arrival order
(while one waits for a host callback, the same thread keeps reading frames).
Async handlers run as tasks on an event loop thread started on first use;
``concurrent=True`` sync handlers run on a thread pool. A watchdog thread exits the
worker as soon as the host process dies (its pidfd) or hangs up (socket RDHUP), even
while a handler is running, whichever of zygote and host dies first.

Never a copy of the host program: the runtime's ``__main__`` is the bootstrap (no
``__file__``/``__spec__``, so multiprocessing children do not re-import the host's
script), importing the host's main script by module name is steered to the real
module of that name (a script ``gepa.py`` beside ``import dspy`` used to run itself
inside the template), and ``DSPEX_POOL_WORKER`` marks this process and its
descendants so that a Pool started there refuses (``Pool.start`` →
``PoolError``) unless ``DSPEX_ALLOW_NESTED_POOLS=1``.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import itertools
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from typing import TYPE_CHECKING, Any

import msgpack

from dspex.pool import protocol as P
from dspex.pool.handler import Context, HandlerSpec, registry

if TYPE_CHECKING:  # imported lazily at run time: most workers never need them
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

__all__ = ["ALLOW_NESTED_ENV", "BOOTSTRAP", "IN_WORKER", "WORKER_ENV", "main"]

# Set in a template/worker process (and inherited by everything it starts).
WORKER_ENV = "DSPEX_POOL_WORKER"
ALLOW_NESTED_ENV = "DSPEX_ALLOW_NESTED_POOLS"
IN_WORKER = False  # True in a template or worker process of this interpreter

# Loads the dspex package from a directory (without needing it installed in the
# target interpreter) and runs main(). argv: [-c, <dspex dir>, <mode>, <json>].
BOOTSTRAP = (
    "import sys\n"
    "if 'dspex' not in sys.modules:\n"
    "    import importlib.util as u\n"
    "    p = sys.argv[1]\n"
    "    s = u.spec_from_file_location('dspex', p + '/__init__.py', submodule_search_locations=[p])\n"
    "    m = u.module_from_spec(s); sys.modules['dspex'] = m; s.loader.exec_module(m)\n"
    "from dspex.pool.worker import main\n"
    "main(sys.argv[2:])\n"
)

_PR_SET_PDEATHSIG = 1


def _set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to kill us when our parent (the template) dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except Exception:  # pragma: no cover - non-Linux; EOF and the watchdog remain
        pass


def _watch_host(host_pid: int, sock_fd: int = -1) -> Any:
    """Exit at once when the host dies or hangs up ``sock_fd``, even while busy.

    Watches the host's pidfd (independent of who our parent is: a forked worker
    whose template died first still notices) and the peer shutdown of the host
    connection (POLLRDHUP: no data is consumed). Returns a ``stop()`` function.
    """
    poller = select.poll()
    try:
        fd = os.pidfd_open(host_pid)
    except ProcessLookupError:
        os._exit(70)
    except (OSError, AttributeError):  # pragma: no cover - old kernel: RDHUP + pdeathsig remain
        fd = -1
    if fd >= 0:
        poller.register(fd, select.POLLIN)
    if sock_fd >= 0:
        poller.register(sock_fd, select.POLLRDHUP)
    stop_r, stop_w = os.pipe()
    poller.register(stop_r, select.POLLIN)

    def run() -> None:
        while True:
            for ready_fd, _ in poller.poll():
                if ready_fd == stop_r:
                    return
                os._exit(70)  # the host is gone (or hung up on us): nobody wants our work

    t = threading.Thread(target=run, name="dspex-host-watch", daemon=True)
    t.start()

    def stop() -> None:
        os.write(stop_w, b"x")
        t.join()
        for f in (stop_r, stop_w, fd):
            if f >= 0:
                os.close(f)

    return stop


class _MainScriptGuard:
    """Import the host's main script by module name? Take the real module instead.

    ``python /tmp/gepa.py`` puts ``/tmp`` first on the host's path; a worker started
    in ``/tmp`` has ``''`` (the cwd) first, so ``import dspy`` → ``import gepa`` there
    found the user's script and ran it (and its module-level ``Pool``) inside the
    template. Here that name is looked up on ``sys.path`` without the script's
    directory; if nothing else has the name, the normal search runs (and a Pool the
    script starts is refused by the nested-pool guard).
    """

    def __init__(self, main_file: str) -> None:
        self.file = os.path.realpath(main_file)
        self.dir = os.path.dirname(self.file)
        self.name = os.path.splitext(os.path.basename(self.file))[0]

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self.name or path is not None:
            return None
        from importlib.machinery import PathFinder

        dirs = [d for d in sys.path if os.path.realpath(d or os.getcwd()) != self.dir]
        return PathFinder.find_spec(name, dirs)


def _become_worker(cfg: dict[str, Any]) -> None:
    """Mark this process as a pool process and keep the host's program out of it."""
    global IN_WORKER
    IN_WORKER = True
    os.environ[WORKER_ENV] = f"{cfg.get('pool', '?')}:{os.getpid()}"
    main_mod = sys.modules.get("__main__")
    if main_mod is not None:
        # multiprocessing's spawn/forkserver re-import __main__ from __file__ / __spec__
        if hasattr(main_mod, "__file__"):
            del main_mod.__file__
        main_mod.__spec__ = None
    main_file = cfg.get("main_file")
    if main_file:
        sys.meta_path.insert(0, _MainScriptGuard(str(main_file)))


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


def load_modules(names: list[str]) -> None:
    """Import modules by name, or by file path (``/x/handlers.py``)."""
    for name in names:
        if name.endswith(".py") or "/" in name:
            path = os.path.abspath(name)
            stem = os.path.splitext(os.path.basename(path))[0]
            modname = f"_dspex_handlers_{stem}_{abs(hash(path)) % 10**8}"
            spec = importlib.util.spec_from_file_location(modname, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load handler module from {path}")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[modname] = mod
            spec.loader.exec_module(mod)
        else:
            importlib.import_module(name)


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover
        return threading.active_count()


def _handler_table(handlers: dict[str, HandlerSpec]) -> dict[str, list[Any]]:
    return {name: [spec.kind, spec.concurrent] for name, spec in handlers.items()}


# ---------------------------------------------------------------------------------
# worker runtime


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
        from dspex.errors import RemoteError

        rtype, message, tb = ([*list(self.value), "", "", ""])[:3]
        raise RemoteError(str(rtype), str(message), str(tb))


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
                from dspex.errors import RemoteError

                rtype, message, tb = ([*list(value), "", "", ""])[:3]
                self.fut.set_exception(RemoteError(str(rtype), str(message), str(tb)))

        self.loop.call_soon_threadsafe(done)


class WorkerRuntime:
    """Serves one host connection until EOF or STOP."""

    def __init__(self, sock: socket.socket, codec: P.Codec, handlers: dict[str, HandlerSpec]) -> None:
        self.sock = sock
        self.codec = codec
        self.reader = P.FrameReader(codec)
        self.handlers = handlers
        self.send_lock = threading.Lock()
        self.pending: deque[list[Any]] = deque()
        self.active: set[int] = set()  # rids received and not yet answered
        self.cancelled: set[int] = set()
        self.sessions: dict[Any, dict[str, Any]] = {}
        self.main_ident = threading.get_ident()
        self.current: int | None = None  # rid running inline on the main thread
        self.cb_seq = itertools.count(1)
        self.cb_waiters: dict[int, Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: dict[int, asyncio.Task[Any]] = {}
        self.serial_alock: asyncio.Lock | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.stopping = False
        self.credit: dict[int, int] = {}  # streaming rid -> chunks it may still send
        self.credit_cond = threading.Condition()
        self.credit_events: dict[int, Any] = {}  # rid -> asyncio.Event (async streams)
        self._last_poll = 0.0

    # -- sending -------------------------------------------------------------------
    def send(self, msg: list[Any]) -> None:
        data = self.codec.frame(msg)
        with self.send_lock:
            self.sock.sendall(data)

    def send_result(self, rid: int, value: Any) -> None:
        try:
            data = self.codec.frame([P.RESULT, rid, value])
        except (TypeError, ValueError, OverflowError, P.FrameError) as exc:
            name = "dspex.errors.ProtocolError" if isinstance(exc, P.FrameError) else _type_name(exc)
            data = self.codec.frame([P.ERROR, rid, P.E_ENCODE, name, f"result not sendable: {exc}", ""])
        with self.send_lock:
            self.sock.sendall(data)

    def send_error(self, rid: int, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.send([P.ERROR, rid, P.E_REMOTE, _type_name(exc), str(exc), tb, wire_detail(exc)])

    def send_cancelled(self, rid: int) -> None:
        self.send([P.ERROR, rid, P.E_CANCELLED, "Cancelled", "cancelled by the host", ""])

    def _take_credit(self, rid: int) -> None:
        """Wait until the host lets this stream send one more chunk (sync code)."""
        if self.credit.get(rid, 1) <= 0:
            if threading.get_ident() == self.main_ident:
                while self.credit.get(rid, 1) <= 0 and rid not in self.cancelled:
                    msgs = self.read_blocking()
                    if msgs is None:
                        os._exit(0)
                    for m in msgs:
                        self.handle(m)
            else:
                with self.credit_cond:
                    self.credit_cond.wait_for(lambda: self.credit.get(rid, 1) > 0 or rid in self.cancelled)
            if rid in self.cancelled:
                raise _Cancelled()
        with self.credit_cond:
            if rid in self.credit:
                self.credit[rid] -= 1

    async def _atake_credit(self, rid: int) -> None:
        import asyncio

        while self.credit.get(rid, 1) <= 0:
            ev = self.credit_events.setdefault(rid, asyncio.Event())
            ev.clear()
            if self.credit.get(rid, 1) <= 0:
                await ev.wait()
        with self.credit_cond:
            if rid in self.credit:
                self.credit[rid] -= 1

    def _send_chunk(self, rid: int, chunk: Any) -> None:
        try:
            data = self.codec.frame([P.CHUNK, rid, chunk])
        except (TypeError, ValueError, OverflowError, P.FrameError) as exc:
            raise TypeError(f"stream chunk not sendable: {exc}") from None
        with self.send_lock:
            self.sock.sendall(data)

    # -- reading -------------------------------------------------------------------
    def read_blocking(self) -> list[list[Any]] | None:
        while True:
            msgs = self.reader.recv(self.sock)
            if msgs is None or msgs:
                return msgs

    def poll(self) -> None:
        """Read whatever has arrived without blocking (main thread only)."""
        while True:
            try:
                msgs = self.reader.recv(self.sock, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            if msgs is None:
                os._exit(0)  # host gone
            for m in msgs:
                self.handle(m)

    def serve(self, info: dict[str, Any]) -> None:
        self.send([P.READY, os.getpid(), info])
        reader, sock, handlers, pending = self.reader, self.sock, self.handlers, self.pending
        while not self.stopping or pending:
            if pending:
                self.run_serial(pending.popleft())
                continue
            msgs = reader.recv(sock)
            if msgs is None:
                return
            if len(msgs) == 1:
                # fast path: a lone call of a plain sync handler runs straight away
                m = msgs[0]
                if m[0] == P.CALL:
                    spec = handlers.get(m[2])
                    if spec is not None and spec.kind == "sync" and not spec.concurrent:
                        self.active.add(m[1])
                        self.run_serial(m)
                        continue
            for m in msgs:
                self.handle(m)

    def handle(self, m: list[Any]) -> None:
        """Act on one frame. Never runs a serial handler (the main loop does)."""
        kind = m[0]
        if kind == P.CALL:
            rid = m[1]
            spec = self.handlers.get(m[2])
            if spec is None:
                self.send([P.ERROR, rid, P.E_NOT_FOUND, "HandlerNotFound", str(m[2]), ""])
                return
            self.active.add(rid)
            if spec.kind in ("async", "agen"):
                self._start_async(m, spec)
            elif spec.concurrent:
                if self.executor is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self.executor = ThreadPoolExecutor(64, thread_name_prefix="dspex-handler")
                self.executor.submit(self._run_threaded, m, spec)
            else:
                self.pending.append(m)
        elif kind == P.CANCEL:
            rid = m[1]
            if rid in self.active:
                self.cancelled.add(rid)
                if rid in self.credit:
                    with self.credit_cond:
                        self.credit_cond.notify_all()
                task = self.tasks.get(rid)
                if task is not None and self.loop is not None:
                    self.loop.call_soon_threadsafe(task.cancel)
        elif kind == P.CB_REPLY:
            waiter = self.cb_waiters.pop(m[1], None)
            if waiter is not None:
                waiter.deliver(bool(m[2]), m[3])
        elif kind == P.DROP:
            self.sessions.pop(m[1], None)
        elif kind == P.STOP:
            self.stopping = True
        elif kind == P.CREDIT:
            rid = m[1]
            with self.credit_cond:
                if rid in self.credit:
                    self.credit[rid] += int(m[2])
                    self.credit_cond.notify_all()
                ev = self.credit_events.get(rid)
                if ev is not None and self.loop is not None:
                    self.loop.call_soon_threadsafe(ev.set)

    # -- Context channel -----------------------------------------------------------
    def is_cancelled(self, rid: int) -> bool:
        if rid in self.cancelled:
            return True
        if rid == self.current and threading.get_ident() == self.main_ident:
            now = time.monotonic()
            if now - self._last_poll > 0.005:  # a syscall at most every 5 ms
                self._last_poll = now
                self.poll()
            return rid in self.cancelled
        return False

    def progress(self, rid: int, flags: int, event: dict[str, Any]) -> None:
        if flags & P.F_EVENTS:
            self.send([P.EVENT, rid, event])

    def callback(self, rid: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        cbid = next(self.cb_seq)
        slot = _Slot()
        self.cb_waiters[cbid] = slot
        self.send([P.CALLBACK, rid, cbid, name, list(args), kwargs])
        if threading.get_ident() == self.main_ident:
            # We are the reader: keep reading (and queueing other work) until the reply.
            while not slot.done:
                msgs = self.read_blocking()
                if msgs is None:
                    os._exit(0)
                for m in msgs:
                    self.handle(m)
        else:
            slot.lock.acquire()
        return slot.result()

    async def acallback(self, rid: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        if threading.get_ident() == self.main_ident:  # pragma: no cover - async runs on the loop thread
            return self.callback(rid, name, args, kwargs)
        cbid = next(self.cb_seq)
        fut: asyncio.Future[Any] = loop.create_future()
        self.cb_waiters[cbid] = _AsyncSlot(loop, fut)
        self.send([P.CALLBACK, rid, cbid, name, list(args), kwargs])
        return await fut

    # -- running handlers ----------------------------------------------------------
    def _state(self, session: Any) -> dict[str, Any]:
        if session is None:
            return {}
        state = self.sessions.get(session)
        if state is None:
            state = self.sessions[session] = {}
        return state

    def _finish(self, rid: int) -> None:
        self.active.discard(rid)
        self.cancelled.discard(rid)
        if self.credit:
            self.credit.pop(rid, None)
            self.credit_events.pop(rid, None)

    def run_serial(self, m: list[Any]) -> None:
        _, rid, name, args, kwargs, session, flags = m
        if rid in self.cancelled:
            self._finish(rid)
            self.send_cancelled(rid)
            return
        spec = self.handlers[name]
        ctx = Context(self, rid, session, {} if session is None else self._state(session), flags)
        self.current = rid
        try:
            if spec.kind == "gen":
                out = self._drain_gen(ctx, spec, rid, args, kwargs, flags)
            else:
                out = spec.fn(ctx, *args, **kwargs)
        except Exception as exc:
            self.current = None
            self._finish(rid)
            if isinstance(exc, _Cancelled):
                self.send_cancelled(rid)
            else:
                self.send_error(rid, exc)
            return
        self.current = None
        self.active.discard(rid)
        if self.cancelled:
            self.cancelled.discard(rid)
        self.send_result(rid, out)

    def _drain_gen(
        self, ctx: Context, spec: HandlerSpec, rid: int, args: list[Any], kwargs: dict[str, Any], flags: int
    ) -> Any:
        collected: list[Any] | None = None if flags & P.F_STREAM else []
        if collected is None:
            self.credit[rid] = P.STREAM_WINDOW
        gen = spec.fn(ctx, *args, **kwargs)
        try:
            for chunk in gen:
                if self.is_cancelled(rid):
                    raise _Cancelled()
                if collected is None:
                    self._take_credit(rid)
                    self._send_chunk(rid, chunk)
                else:
                    collected.append(chunk)
        finally:
            gen.close()
        return collected

    def _run_threaded(self, m: list[Any], spec: HandlerSpec) -> None:
        _, rid, _name, args, kwargs, session, flags = m
        try:
            if rid in self.cancelled:
                raise _Cancelled()
            ctx = Context(self, rid, session, self._state(session), flags)
            if spec.kind == "gen":
                out = self._drain_gen(ctx, spec, rid, args, kwargs, flags)
            else:
                out = spec.fn(ctx, *args, **kwargs)
        except _Cancelled:
            self._finish(rid)
            self.send_cancelled(rid)
            return
        except Exception as exc:
            self._finish(rid)
            self.send_error(rid, exc)
            return
        self._finish(rid)
        self.send_result(rid, out)

    def _start_async(self, m: list[Any], spec: HandlerSpec) -> None:
        import asyncio

        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run_loop() -> None:
                assert self.loop is not None
                asyncio.set_event_loop(self.loop)
                self.serial_alock = asyncio.Lock()
                ready.set()
                self.loop.run_forever()

            threading.Thread(target=run_loop, name="dspex-worker-loop", daemon=True).start()
            ready.wait()
        self.loop.call_soon_threadsafe(self._spawn_task, m, spec)

    def _spawn_task(self, m: list[Any], spec: HandlerSpec) -> None:
        rid = m[1]
        if rid in self.cancelled:
            self._finish(rid)
            self.send_cancelled(rid)
            return
        assert self.loop is not None
        self.tasks[rid] = self.loop.create_task(self._run_async(m, spec))

    async def _run_async(self, m: list[Any], spec: HandlerSpec) -> None:
        import asyncio

        _, rid, _name, args, kwargs, session, flags = m
        ctx = Context(self, rid, session, self._state(session), flags)
        try:
            if spec.concurrent:
                out = await self._invoke_async(ctx, spec, rid, args, kwargs, flags)
            else:
                assert self.serial_alock is not None
                async with self.serial_alock:
                    out = await self._invoke_async(ctx, spec, rid, args, kwargs, flags)
        except asyncio.CancelledError:
            self._finish(rid)
            self.tasks.pop(rid, None)
            self.send_cancelled(rid)
            return
        except Exception as exc:
            self._finish(rid)
            self.tasks.pop(rid, None)
            self.send_error(rid, exc)
            return
        self._finish(rid)
        self.tasks.pop(rid, None)
        self.send_result(rid, out)

    async def _invoke_async(
        self, ctx: Context, spec: HandlerSpec, rid: int, args: list[Any], kwargs: dict[str, Any], flags: int
    ) -> Any:
        if spec.kind == "agen":
            collected: list[Any] | None = None if flags & P.F_STREAM else []
            if collected is None:
                self.credit[rid] = P.STREAM_WINDOW
            agen = spec.fn(ctx, *args, **kwargs)
            try:
                async for chunk in agen:
                    if collected is None:
                        await self._atake_credit(rid)
                        self._send_chunk(rid, chunk)
                    else:
                        collected.append(chunk)
            finally:
                await agen.aclose()
            return collected
        return await spec.fn(ctx, *args, **kwargs)


class _Cancelled(Exception):
    """A generator handler stopped because the host cancelled the call."""


def _run_worker(
    sock_fd: int, cfg: dict[str, Any], handlers: dict[str, HandlerSpec], info: dict[str, Any], watched: bool = False
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the host's business
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not watched:
        _watch_host(int(cfg["host_pid"]), sock_fd)
    sock = socket.socket(fileno=sock_fd)
    sock.setblocking(True)
    codec = P.Codec(bool(cfg.get("allow_pickle")), int(cfg.get("max_frame", P.DEFAULT_MAX_FRAME)))
    runtime = WorkerRuntime(sock, codec, handlers)
    try:
        runtime.serve({**info, "pid": os.getpid()})
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(0)


# ---------------------------------------------------------------------------------
# template (zygote)


class Zygote:
    """Imports once, forks workers on request, reaps and reports them."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.ctl = socket.socket(fileno=int(cfg["ctl_fd"]))
        self.ctl.setblocking(True)
        self.children: set[int] = set()
        self.mode = str(cfg.get("start_method", "fork"))
        self.handlers: dict[str, HandlerSpec] = {}
        self.info: dict[str, Any] = {}

    def send(self, msg: list[Any]) -> None:
        self.ctl.send(msgpack.packb(msg, use_bin_type=True))

    def run(self) -> None:
        try:
            self._run()
        except BaseException:
            traceback.print_exc()  # the host shows this tail in WorkerStartError
            self.shutdown(1)  # an error here must not leave workers behind

    def _run(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        t0 = time.perf_counter()
        # Imports can take seconds (or block): leave if the host goes meanwhile. The
        # watcher thread is stopped before forking (fork wants a single thread).
        stop_watch = _watch_host(int(self.cfg["host_pid"]), self.ctl.fileno())
        try:
            if self.mode == "fork":
                import ctypes  # noqa: F401  (imported once here, not in every forked worker)
            load_modules(list(self.cfg.get("preload", [])))
            load_modules(list(self.cfg.get("handlers", [])))
        finally:
            stop_watch()
        import_s = time.perf_counter() - t0
        self.handlers = registry()
        threads = _thread_count()
        if self.mode == "fork" and threads > 1:
            self.mode = "spawn"  # fork after threads exist is unsafe: exec fresh workers
        self.info = {
            "python": sys.version.split()[0],
            "executable": sys.executable,
            "handlers": _handler_table(self.handlers),
            "mode": self.mode,
            "threads_after_import": threads,
            "import_s": import_s,
        }
        gc.freeze()  # keep the preloaded heap shared (copy-on-write) across forks
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        watch: list[int] = [self.ctl.fileno(), wake_r]
        try:
            host_fd = os.pidfd_open(int(self.cfg["host_pid"]))
            watch.append(host_fd)
        except ProcessLookupError:
            self.shutdown()
        except (OSError, AttributeError):  # pragma: no cover
            host_fd = -1
        self.send([P.Z_READY, os.getpid(), self.info])
        while True:
            ready, _, _ = select.select(watch, [], [])
            if host_fd in ready:
                self.shutdown()
            if wake_r in ready:
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                self.reap()
            if self.ctl.fileno() in ready:
                try:
                    data, fds, _, _ = socket.recv_fds(self.ctl, 65536, 4)
                except (ConnectionResetError, OSError):
                    data, fds = b"", []
                if not data:
                    self.shutdown()
                msg = msgpack.unpackb(data, raw=False, strict_map_key=False)
                if msg[0] == P.Z_FORK:
                    self.fork(msg[1], fds, wake_r, wake_w, host_fd)
                elif msg[0] == P.Z_KILL:
                    pid, sig = int(msg[1]), int(msg[2])
                    if pid in self.children:  # never signal a pid we already reaped
                        try:
                            os.kill(pid, sig)
                        except ProcessLookupError:
                            pass
                else:
                    for fd in fds:
                        os.close(fd)
            self.reap()

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            self.send([P.Z_EXIT, pid, code if code >= 0 else None, -code if code < 0 else None])

    def fork(self, token: int, fds: list[int], wake_r: int, wake_w: int, host_fd: int) -> None:
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            self.send([P.Z_FAIL, token, f"fork request carried {len(fds)} fds, expected 2"])
            return
        sock_fd, err_fd = fds
        sys.stdout.flush()
        sys.stderr.flush()
        if self.mode == "fork":
            pid = os.fork()
            if pid == 0:  # the worker
                try:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    ppid = int(self.cfg["zygote_pid"]) if "zygote_pid" in self.cfg else None
                    _set_pdeathsig()
                    if os.getppid() != (ppid or os.getppid()):
                        os._exit(1)
                    for fd in (self.ctl.fileno(), wake_r, wake_w, host_fd):
                        if fd >= 0:
                            try:
                                os.close(fd)
                            except OSError:
                                pass
                    os.dup2(err_fd, 2)
                    os.dup2(err_fd, 1)
                    os.close(err_fd)
                    _run_worker(sock_fd, self.cfg, self.handlers, self.info)
                finally:
                    os._exit(1)
        else:
            cfg = dict(self.cfg, sock_fd=3, zygote_pid=os.getpid())
            argv = [sys.executable, "-c", BOOTSTRAP, self.cfg["dspex_dir"], "--worker", json.dumps(cfg)]
            try:
                pid = os.posix_spawn(
                    sys.executable,
                    argv,
                    os.environ,
                    file_actions=[
                        (os.POSIX_SPAWN_DUP2, sock_fd, 3),
                        (os.POSIX_SPAWN_DUP2, err_fd, 2),
                        (os.POSIX_SPAWN_DUP2, err_fd, 1),
                    ],
                )
            except OSError as exc:
                os.close(sock_fd)
                os.close(err_fd)
                self.send([P.Z_FAIL, token, f"posix_spawn failed: {exc}"])
                return
        self.children.add(pid)
        os.close(sock_fd)
        os.close(err_fd)
        self.send([P.Z_FORKED, token, pid])

    def shutdown(self, code: int = 0) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)


def _spawned_worker(cfg: dict[str, Any]) -> None:
    """A worker started as a fresh interpreter (spawn mode): import, then serve."""
    _set_pdeathsig()
    zpid = cfg.get("zygote_pid")
    if zpid is not None and os.getppid() != int(zpid):
        os._exit(1)
    sock_fd = int(cfg.get("sock_fd", 3))
    _watch_host(int(cfg["host_pid"]), sock_fd)  # before the (slow) imports
    load_modules(list(cfg.get("preload", [])))
    load_modules(list(cfg.get("handlers", [])))
    handlers = registry()
    info = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "handlers": _handler_table(handlers),
        "mode": "spawn",
    }
    _run_worker(sock_fd, cfg, handlers, info, watched=True)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] not in ("--zygote", "--worker"):
        sys.stderr.write(
            "usage: python -m dspex.pool.worker --zygote|--worker '<json config>'\n"
            "(started by dspex.pool.Pool; not meant to be run by hand)\n"
        )
        raise SystemExit(2)
    cfg = json.loads(args[1])
    _become_worker(cfg)
    for path in cfg.get("sys_path", []):
        if path not in sys.path:
            sys.path.insert(0, path)
    os.environ.update({k: str(v) for k, v in cfg.get("env", {}).items()})
    if args[0] == "--zygote":
        cfg["zygote_pid"] = os.getpid()
        # Our parent is the host's supervisor thread, which lives as long as the pool.
        # (A launcher in between, or a host already gone: the pidfd watch covers it.)
        if os.getppid() == int(cfg["host_pid"]):
            _set_pdeathsig()
        Zygote(cfg).run()
    else:
        _spawned_worker(cfg)


if __name__ == "__main__":
    main()
