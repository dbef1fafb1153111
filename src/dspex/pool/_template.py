"""The worker template (zygote) from the host's side (``_Template``): start it, read
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
from typing import Any

import msgpack

from dspex.errors import WorkerStartError
from dspex.pool import protocol as P
from dspex.pool._state import _PoolState
from dspex.pool._supervisor import _tail
from dspex.pool._worker_io import _EP_IN, DEAD, STOPPING
from dspex.pool.worker import BOOTSTRAP

_DSPEX_DIR = str(Path(__file__).resolve().parent.parent)


def _main_file() -> str | None:
    """The host's main script (run as ``python file.py``), which workers must never run."""
    main = sys.modules.get("__main__")
    f = getattr(main, "__file__", None)
    if not f or getattr(main, "__spec__", None) is not None:
        return None
    return os.path.realpath(f)


class _Template(_PoolState):
    """The one template process that imports the handler modules once and forks workers."""

    def _start_zygote(self) -> None:
        """Start the template and wait for its ready message (supervisor thread)."""
        self._counts["start_attempts"] += 1
        ctl_host, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        err_r, err_w = os.pipe()
        os.set_blocking(err_r, False)
        cfg = {
            "pool": self.name,
            "handlers": self.handlers,
            "preload": self.preload,
            "host_pid": os.getpid(),
            "ctl_fd": ctl_child.fileno(),
            "allow_pickle": self.allow_pickle,
            "max_frame": self.max_frame,
            "max_rss_mb": self.max_rss_mb,
            "max_mem_mb": self.max_mem_mb,
            "start_method": self.start_method,
            "dspex_dir": _DSPEX_DIR,
            "main_file": _main_file(),
        }
        env = {**os.environ, **self.env}
        argv = [self.python, "-c", BOOTSTRAP, _DSPEX_DIR, "--zygote", json.dumps(cfg)]
        self._zerr_tail = bytearray()
        self._zready = False
        self._zinfo = {}
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
            self._start_failed(
                WorkerStartError(
                    f"pool {self.name!r}: cannot run {self.python!r}: {exc}; check python=",
                    pool=self.name,
                    stderr_tail="",
                )
            )
            return
        ctl_child.close()
        os.close(err_w)
        ctl_host.setblocking(False)
        with self._lock:
            self._zproc = proc
            self._zctl = ctl_host
            self._zerr_fd = err_r
            self._zstarted_at = time.monotonic()
            self._fdmap[ctl_host.fileno()] = ("z", None)
            self._fdmap[err_r] = ("err", None)
        self._ep.register(ctl_host.fileno(), _EP_IN)
        self._ep.register(err_r, _EP_IN)

    def _on_zygote(self) -> None:
        ctl = self._zctl
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
                with self._lock:
                    self._zinfo = msg[2]
                    self._handler_table = dict(self._zinfo.get("handlers", {}))
                    self._zready = True
                self._wake_sup.set()
            elif kind == P.Z_FORKED:
                with self._lock:
                    w = self._by_token.pop(int(msg[1]), None)
                    if w is not None:
                        w.pid = int(msg[2])
                        self._by_pid[w.pid] = w
                        if w.state in (STOPPING, DEAD):
                            self._zkill(w.pid, signal.SIGKILL)
            elif kind == P.Z_EXIT:
                pid, code, sig = int(msg[1]), msg[2], msg[3]
                w = self._by_pid.get(pid)
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
                                self._on_readable(w)
                                if w.eof or w.state == DEAD:
                                    break
                                try:
                                    if not select.select([w.sock], [], [], 0)[0]:
                                        break
                                except (OSError, ValueError):
                                    break
                        finally:
                            w.rlock.release()
                    self._finalize(w, "exit")
            elif kind == P.Z_FAIL:
                with self._lock:
                    w = self._by_token.pop(int(msg[1]), None)
                if w is not None:
                    self._finalize(w, "fork failed: " + str(msg[2]))

    def _zygote_gone(self) -> None:
        """The template exited (or hung up): its workers die with it (pdeathsig)."""
        with self._lock:
            ctl = self._zctl
            self._zctl = None
            self._zready = False
            proc = self._zproc
            # hold the supervisor off until this one's stderr and workers are dealt with
            self._next_start_at = float("inf")
        if ctl is not None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                self._ep.unregister(ctl.fileno())
            self._fdmap.pop(ctl.fileno(), None)
            ctl.close()
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2.0)
        self._drain_stderr(self._zerr_fd, None)
        with self._lock:
            started_ok = bool(self._zinfo)
            workers = list(self._workers)
        for w in workers:
            if w.exit is None:
                w.exit = (None, signal.SIGKILL)
            self._finalize(w, "template exited")
        if started_ok or self._closed:
            with self._lock:
                self._next_start_at = time.monotonic()
        else:
            code = proc.returncode if proc is not None else None
            self._start_failed(
                WorkerStartError(
                    f"pool {self.name!r}: the worker template exited with code {code} before it was ready "
                    f"(handlers={self.handlers}, preload={self.preload}). Its stderr ends with:\n"
                    f"{_tail(self._zerr_tail)}",
                    pool=self.name,
                    stderr_tail=_tail(self._zerr_tail),
                    exitcode=code,
                )
            )
        self._wake_sup.set()

    def _stop_zygote(self) -> None:
        with self._lock:
            ctl = self._zctl
            self._zctl = None
            proc = self._zproc
        if ctl is not None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                self._ep.unregister(ctl.fileno())
            self._fdmap.pop(ctl.fileno(), None)
            ctl.close()  # EOF: the template kills its children and exits
        if proc is not None:
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2.0)

    def _zsend(self, msg: list[Any], fds: list[int] | None = None) -> bool:
        ctl = self._zctl
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

    def _zkill(self, pid: int, sig: int) -> None:
        # The template is the parent: it signals only children it has not reaped yet,
        # so a recycled pid can never be hit.
        self._zsend([P.Z_KILL, pid, int(sig)])
