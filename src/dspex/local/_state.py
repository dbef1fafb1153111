"""Where a local server is recorded: state files, their locks and logs, one set per model file.

The state directory is ``$DSPEX_LOCAL_STATE_DIR``, else ``$XDG_RUNTIME_DIR/dspex``,
else ``~/.cache/dspex/local``. A state file is JSON (pid, base_url, model, owner...),
replaced atomically so a reader never sees half of one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import LocalModelError


def state_dir() -> Path:
    """Where server state files, locks and logs live (created on demand, mode 0700)."""
    explicit = os.environ.get("DSPEX_LOCAL_STATE_DIR")
    if explicit:
        d = Path(explicit).expanduser()
    elif os.environ.get("XDG_RUNTIME_DIR"):
        d = Path(os.environ["XDG_RUNTIME_DIR"]) / "dspex"
    else:
        d = Path("~/.cache/dspex/local").expanduser()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def key(model: Path) -> str:
    # One server per model file: a different GGUF gets its own state file and server.
    return hashlib.sha1(str(model).encode()).hexdigest()[:10]


def paths(model: Path) -> tuple[Path, Path, Path]:
    d = state_dir()
    k = key(model)
    return d / f"server-{k}.json", d / f"server-{k}.lock", d / f"server-{k}.log"


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)  # atomic: readers never see half a file


def remove_state(path: Path, pid: int) -> None:
    state = read_state(path)
    if state is not None and state.get("pid") == pid:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def locked(
    lock_path: Path, timeout: float, waiting_for: str = "start the local model server"
) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path``; LocalModelError after ``timeout`` seconds."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise LocalModelError(
                        f"timed out after {timeout:.0f}s waiting for another process to {waiting_for} "
                        f"(lock {lock_path}); retry, or check `dspex lm status`"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the flock
