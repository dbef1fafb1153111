"""The template process (zygote) and fresh-interpreter workers (stdlib + msgpack).

Template: imports ``preload`` and the handler modules once, then forks a worker per
request from the host. It stays single-threaded (forking after threads exist is
unsafe); if importing created threads it falls back to ``posix_spawn`` of fresh
interpreters. It reaps its children and reports their exit status to the host,
kills them all when the host goes away (control-socket EOF, the host's pidfd, or
SIGTERM from its parent-death signal), and is their parent, so their
PR_SET_PDEATHSIG fires if it dies.

Nothing outlives a worker: each worker starts its own session (its pid is its
process group), and the template is a child subreaper. When a worker ends, the
template kills that process group and every orphan re-parented to it (whatever a
handler started, even a double-forked daemon), reaping them; when the template
shuts down it repeats that until it has no children left.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

import msgpack

from dspex.pool import protocol as P
from dspex.pool._procsafe import children, kill_descendants, set_pdeathsig, set_subreaper, watch_host
from dspex.pool._runtime import run_worker
from dspex.pool.handler import HandlerSpec, registry
from dspex.pool.worker import BOOTSTRAP

__all__ = ["Zygote", "load_modules", "spawned_worker"]


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


def _kill_group(pid: int, sig: int) -> None:
    """Signal worker ``pid`` and its process group (pgid == pid: it leads a session).

    Only called while ``pid`` is our unreaped child (or its zombie), so neither the pid
    nor the group id can belong to anybody else."""
    for kill in (os.kill, os.killpg):
        try:
            kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class Zygote:
    """Imports once, forks workers on request, reaps and reports them."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.ctl = socket.socket(fileno=int(cfg["ctl_fd"]))
        self.ctl.setblocking(True)
        self.children: set[int] = set()  # workers (not yet reaped)
        self.own: set[int] = set()  # children the imports started (helpers): not orphans
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
        set_subreaper()  # a dead worker's orphans come to us, not to init
        t0 = time.perf_counter()
        # Imports can take seconds (or block): leave if the host goes meanwhile. The
        # watcher thread is stopped before forking (fork wants a single thread).
        stop_watch = watch_host(int(self.cfg["host_pid"]), self.ctl.fileno())
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
        self.own = set(children())
        gc.freeze()  # keep the preloaded heap shared (copy-on-write) across forks
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        # our parent-death signal (see main): clean up like on a hang-up
        signal.signal(signal.SIGTERM, lambda *_: self.shutdown())
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
                        _kill_group(pid, sig)
                else:
                    for fd in fds:
                        os.close(fd)
            self.reap()

    def reap(self) -> None:
        """Reap exited children; a worker's end takes its process group and orphans along."""
        swept = False
        while True:
            try:
                # peek first (WNOWAIT): while it is an unreaped zombie its pid and group id
                # cannot be reused, so killing the group cannot hit a stranger
                res = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if res is None or res.si_pid == 0:
                if swept:
                    return
                swept = True
                self._kill_orphans()  # may have inherited some: kill, then reap them
                continue
            pid = res.si_pid
            if pid in self.children:
                _kill_group(pid, signal.SIGKILL)
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                continue
            swept = False
            if pid in self.children:
                self.children.discard(pid)
                code = os.waitstatus_to_exitcode(status)
                self.send([P.Z_EXIT, pid, code if code >= 0 else None, -code if code < 0 else None])

    def _kill_orphans(self) -> None:
        """SIGKILL children that are not workers: orphans of dead workers' handlers."""
        for pid in children():
            if pid not in self.children and pid not in self.own:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

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
                    os.setsid()  # its own process group: killed with it, whatever it starts
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    ppid = int(self.cfg["zygote_pid"]) if "zygote_pid" in self.cfg else None
                    set_pdeathsig()
                    set_subreaper()
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
                    run_worker(sock_fd, self.cfg, self.handlers, self.info)
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
                    setsid=True,
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
        """Kill every worker, its group and every orphan; reap until none is left."""
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.own.clear()
        end = time.monotonic() + 1.5  # the host's close() waits 2 s for us
        while time.monotonic() < end:
            for pid in list(self.children):
                _kill_group(pid, signal.SIGKILL)
            self._kill_orphans()
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.children.discard(pid)
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)


def spawned_worker(cfg: dict[str, Any]) -> None:
    """A worker started as a fresh interpreter (spawn mode): import, then serve."""
    set_pdeathsig()
    set_subreaper()
    zpid = cfg.get("zygote_pid")
    if zpid is not None and os.getppid() != int(zpid):
        os._exit(1)
    sock_fd = int(cfg.get("sock_fd", 3))
    stop_watch = watch_host(int(cfg["host_pid"]), sock_fd, kill_descendants)  # before the (slow) imports
    load_modules(list(cfg.get("preload", [])))
    load_modules(list(cfg.get("handlers", [])))
    handlers = registry()
    info = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "handlers": _handler_table(handlers),
        "mode": "spawn",
    }
    run_worker(sock_fd, cfg, handlers, info, stop_watch)
