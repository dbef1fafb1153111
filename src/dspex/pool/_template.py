"""The worker template (zygote) from the host's side (``Template``): start it, read
its control socket (ready, forked, exit, fork failed), ask it to fork or signal
workers, notice it is gone, stop it. The template side is ``worker.py``."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from dspex.errors import WorkerStartError
from dspex.pool import protocol as P
from dspex.pool._state import PoolConfig, PoolShared
from dspex.pool._worker_io import DEAD, STOPPING, WorkerIO, _tail
from dspex.pool.worker import BOOTSTRAP

_DSPEX_DIR = str(Path(__file__).resolve().parent.parent)


def _main_file() -> str | None:
    """The host's main script (run as ``python file.py``), which workers must never run."""
    main = sys.modules.get("__main__")
    f = getattr(main, "__file__", None)
    if not f or getattr(main, "__spec__", None) is not None:
        return None
    return os.path.realpath(f)


if TYPE_CHECKING:
    from dspex.pool._worker_io import _Worker


class TemplateEvents(Protocol):
    """What the template reports to worker lifecycle (``Supervisor``); no lock held."""

    def finalize(self, w: _Worker, why: str) -> None: ...
    def start_failed(self, err: WorkerStartError) -> None: ...
    def set_next_start(self, at: float) -> None: ...  # hold off (inf) / allow template restarts


class Template:
    """The one template process that imports the handler modules once and forks workers.

    ``start`` runs on the supervisor thread, ``on_control`` (its control socket) on the
    I/O thread, ``send`` / ``kill`` on any thread (one datagram each: no lock).
    Owns the process and its socket (``proc``/``ctl``, set under the pool lock, read
    without it), its stderr tail (``err_tail``/``err_fd``, I/O thread) and its ready
    state (``ready``/``info``/``started_at``, set under the pool lock; the supervisor
    reads them to time starts). Writes the shared ``handler_table`` and ``by_pid``."""

    _life: TemplateEvents

    def __init__(self, cfg: PoolConfig, shared: PoolShared, io: WorkerIO) -> None:
        self._cfg = cfg
        self._s = shared
        self._io = io
        self.proc: subprocess.Popen[bytes] | None = None
        self.ctl: socket.socket | None = None
        self.err_fd = -1
        self.err_tail = bytearray()
        self.ready = False
        self.info: dict[str, Any] = {}
        self.started_at = 0.0

    def connect(self, life: TemplateEvents) -> None:
        self._life = life

    def start(self) -> None:
        """Start the template and wait for its ready message (supervisor thread)."""
        self._s.counts["start_attempts"] += 1
        ctl_host, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        err_r, err_w = os.pipe()
        os.set_blocking(err_r, False)
        cfg = {
            "pool": self._cfg.name,
            "handlers": self._cfg.handlers,
            "preload": self._cfg.preload,
            "host_pid": os.getpid(),
            "ctl_fd": ctl_child.fileno(),
            "allow_pickle": self._cfg.allow_pickle,
            "max_frame": self._cfg.max_frame,
            "max_rss_mb": self._cfg.max_rss_mb,
            "max_mem_mb": self._cfg.max_mem_mb,
            "start_method": self._cfg.start_method,
            "dspex_dir": _DSPEX_DIR,
            "main_file": _main_file(),
        }
        env = {**os.environ, **self._cfg.env}
        argv = [self._cfg.python, "-c", BOOTSTRAP, _DSPEX_DIR, "--zygote", json.dumps(cfg)]
        self.err_tail = bytearray()
        self.ready = False
        self.info = {}
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=err_w,
                stderr=err_w,
                pass_fds=(ctl_child.fileno(),),
                env=env,
                process_group=0,  # the terminal's Ctrl-C is for the host, not its workers
                close_fds=True,
            )
        except OSError as exc:
            ctl_host.close()
            ctl_child.close()
            os.close(err_r)
            os.close(err_w)
            self._life.start_failed(
                WorkerStartError(
                    f"pool {self._cfg.name!r}: cannot run {self._cfg.python!r}: {exc}; check python=",
                    pool=self._cfg.name,
                    stderr_tail="",
                )
            )
            return
        ctl_child.close()
        os.close(err_w)
        ctl_host.setblocking(False)
        with self._s.lock:
            self.proc = proc
            self.ctl = ctl_host
            self.err_fd = err_r
            self.started_at = time.monotonic()
        self._io.watch(ctl_host.fileno(), self.on_control)
        self._io.watch(err_r, self, stderr=True)

    def on_control(self) -> None:
        ctl = self.ctl
        if ctl is None:
            return
        while True:
            try:
                data = ctl.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._zygote_gone()
                return
            try:
                msg = msgpack.unpackb(data, raw=False, strict_map_key=False)
                kind = msg[0]
            except Exception:
                self._zygote_gone()
                return
            if kind == P.Z_READY:
                with self._s.lock:
                    self.info = msg[2]
                    self._s.handler_table = dict(self.info.get("handlers", {}))
                    self.ready = True
                self._s.wake_sup.set()
            elif kind == P.Z_FORKED:
                with self._s.lock:
                    w = self._s.by_token.pop(int(msg[1]), None)
                    if w is not None:
                        w.pid = int(msg[2])
                        self._s.by_pid[w.pid] = w
                        if w.state in (STOPPING, DEAD):
                            self.kill(w.pid, signal.SIGKILL)
            elif kind == P.Z_EXIT:
                pid, code, sig = int(msg[1]), msg[2], msg[3]
                w = self._s.by_pid.get(pid)
                if w is not None:
                    w.exit = (code, sig)
                    if not w.eof and w.state != DEAD and not w.proto_error:
                        if not w.rlock.acquire(False):
                            # a caller is reading: it will see the EOF and finalize
                            w.stop_at = w.stop_at or time.monotonic()
                            continue
                        try:
                            # read what it wrote before dying, then give up on the socket
                            for _ in range(1024):
                                self._io.on_readable(w)
                                if w.eof or w.state == DEAD:
                                    break
                                try:
                                    if not select.select([w.sock], [], [], 0)[0]:
                                        break
                                except (OSError, ValueError):
                                    break
                        finally:
                            w.rlock.release()
                    self._life.finalize(w, "exit")
            elif kind == P.Z_FAIL:
                with self._s.lock:
                    w = self._s.by_token.pop(int(msg[1]), None)
                if w is not None:
                    self._life.finalize(w, "fork failed: " + str(msg[2]))

    def _zygote_gone(self) -> None:
        """The template exited (or hung up): its workers die with it (pdeathsig)."""
        # hold the supervisor off until this one's stderr and workers are dealt with
        # (before ctl is cleared: the supervisor starts a template when ctl is None)
        self._life.set_next_start(float("inf"))
        with self._s.lock:
            ctl = self.ctl
            self.ctl = None
            self.ready = False
            proc = self.proc
        if ctl is not None:
            self._io.unwatch(ctl.fileno())
            ctl.close()
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2.0)
        self._io.drain_stderr(self.err_fd, self)
        with self._s.lock:
            started_ok = bool(self.info)
            workers = list(self._s.workers)
        for w in workers:
            if w.exit is None:
                w.exit = (None, signal.SIGKILL)
            self._life.finalize(w, "template exited")
        if started_ok or self._s.closed:
            self._life.set_next_start(time.monotonic())
        else:
            code = proc.returncode if proc is not None else None
            self._life.start_failed(
                WorkerStartError(
                    f"pool {self._cfg.name!r}: the worker template exited with code {code} before it was ready "
                    f"(handlers={self._cfg.handlers}, preload={self._cfg.preload}). Its stderr ends with:\n"
                    f"{_tail(self.err_tail)}",
                    pool=self._cfg.name,
                    stderr_tail=_tail(self.err_tail),
                    exitcode=code,
                )
            )
        self._s.wake_sup.set()

    def stop(self) -> None:
        with self._s.lock:
            ctl = self.ctl
            self.ctl = None
            proc = self.proc
        if ctl is not None:
            self._io.unwatch(ctl.fileno())
            ctl.close()  # EOF: the template kills its children and exits
        if proc is not None:
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2.0)

    def send(self, msg: list[Any], fds: list[int] | None = None) -> bool:
        ctl = self.ctl
        if ctl is None:
            return False
        data = msgpack.packb(msg, use_bin_type=True)
        try:
            if fds:
                socket.send_fds(ctl, [data], fds)
            else:
                ctl.send(data)
        except (BlockingIOError, OSError):
            return False
        return True

    def kill(self, pid: int, sig: int) -> None:
        # The template is the parent: it signals only children it has not reaped yet,
        # so a recycled pid can never be hit.
        self.send([P.Z_KILL, pid, int(sig)])
