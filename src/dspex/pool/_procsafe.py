"""Process safety for the template and the workers (stdlib only).

* Leave when the host goes: ``watch_host`` (host pidfd + hang-up of the host
  connection, watched on a thread, so it works while a handler blocks) and
  ``set_pdeathsig`` (the kernel signals us when our parent dies).
* Leave nothing behind: each worker leads its own session/process group and is a
  child subreaper (``set_subreaper``), so whatever its handlers start stays in its
  tree even when an intermediate process exits or double-forks; ``kill_descendants``
  ends that tree when the worker exits, and the template (a subreaper too) kills the
  group and any orphan it inherits when a worker dies (see ``_zygote.py``).
* Never run the host's program: ``become_worker`` marks the process
  (``DSPEX_POOL_WORKER``, inherited by what it starts) and steers imports of the
  host's main script name to the real module of that name (``_MainScriptGuard``).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = [
    "ALLOW_NESTED_ENV",
    "WORKER_ENV",
    "become_worker",
    "children",
    "kill_descendants",
    "set_pdeathsig",
    "set_subreaper",
    "watch_host",
]

# Set in a template/worker process (and inherited by everything it starts).
WORKER_ENV = "DSPEX_POOL_WORKER"
ALLOW_NESTED_ENV = "DSPEX_ALLOW_NESTED_POOLS"
IN_WORKER = False  # True in a template or worker process of this interpreter

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, arg: int) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, arg, 0, 0, 0)) == 0
    except Exception:  # pragma: no cover - non-Linux: EOF, the watchdog and the sweep remain
        return False


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` when our parent dies."""
    _prctl(_PR_SET_PDEATHSIG, int(sig))


def set_subreaper() -> None:
    """Orphaned descendants are re-parented to us instead of init, so we can end them."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def children(pid: int = 0) -> list[int]:
    """Direct children of ``pid`` (default: this process), zombies included."""
    base = f"/proc/{pid or os.getpid()}/task"
    out: list[int] = []
    try:
        tids = os.listdir(base)
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"{base}/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return out


def kill_descendants(rounds: int = 3) -> None:
    """SIGKILL every process below this one (handlers' children, grandchildren...).

    A few rounds: a process killed in one round may have had children that are
    re-parented to us (we are a subreaper) and show up in the next."""
    me = os.getpid()
    for _ in range(rounds):
        todo, seen = children(me), set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            todo.extend(children(pid))
        if not seen:
            return
        for pid in seen:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def watch_host(host_pid: int, sock_fd: int = -1, on_exit: Callable[[], None] | None = None) -> Callable[[], None]:
    """Exit at once when the host dies or hangs up ``sock_fd``, even while busy.

    Watches the host's pidfd (independent of who our parent is: a forked worker
    whose template died first still notices) and the peer shutdown of the host
    connection (POLLRDHUP: no data is consumed). ``on_exit`` runs first (workers end
    their descendants). Returns a ``stop()`` function.
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
                # the host is gone (or hung up on us): nobody wants our work
                if on_exit is not None:
                    try:
                        on_exit()
                    finally:
                        os._exit(70)
                os._exit(70)

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


def become_worker(cfg: dict[str, Any]) -> None:
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
