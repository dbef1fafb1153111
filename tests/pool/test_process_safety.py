"""No orphans, no recursion: real host programs, real kill -9 in every order.

Each test runs a host program in a subprocess whose environment carries a unique tag;
every process it starts (template, workers, anything they start) inherits the tag, so
survivors are found by scanning /proc and killed by pid afterwards.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspex.errors import PoolError
from dspex.pool import Pool
from dspex.pool.worker import ALLOW_NESTED_ENV, WORKER_ENV

from .util import H, alive, wait_for

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.timeout(90)


def _tagged(tag: str) -> list[int]:
    """Live (non-zombie) processes whose environment has DSPEX_TEST_TAG=tag."""
    want = f"DSPEX_TEST_TAG={tag}".encode()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if want not in f.read().split(b"\0"):
                    continue
        except OSError:
            continue
        if alive(int(d)):
            found.append(int(d))
    return found


def _reap(tag: str) -> None:
    """Kill every process of a tag, by pid. Freeze first (SIGSTOP), so that a runaway
    chain (the bug these tests guard against) cannot start new ones meanwhile."""
    for _ in range(100):
        pids = _tagged(tag)
        if not pids:
            return
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        wait_for(lambda p=pids: not any(alive(x) for x in p), timeout=5.0, what="killed processes gone")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


class Host:
    def __init__(self, tag: str, proc: subprocess.Popen[str]) -> None:
        self.tag = tag
        self.proc = proc

    def line(self, timeout: float = 60.0) -> dict:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the host program printed nothing"
        text = self.proc.stdout.readline()
        assert text, f"host exited: {self.proc.wait()} {self.proc.stderr.read() if self.proc.stderr else ''}"
        return json.loads(text)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def survivors_gone(self) -> None:
        """Every process of this host's tree exits (bounded wait), none left behind."""
        wait_for(lambda: not _tagged(self.tag), timeout=15.0, what=f"no survivors (left: {_tagged(self.tag)})")


@pytest.fixture
def spawn_host(tmp_path: Path) -> Iterator:
    hosts: list[Host] = []

    def start(args: list[str], cwd: Path | None = None, extra_env: dict[str, str] | None = None) -> Host:
        tag = uuid.uuid4().hex
        env = {**os.environ, "DSPEX_TEST_TAG": tag, **(extra_env or {})}
        env.pop(WORKER_ENV, None)
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=str(cwd or tmp_path),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        h = Host(tag, proc)
        hosts.append(h)
        return h

    yield start
    for h in hosts:  # whatever a failed test left: kill by pid, ours only
        _reap(h.tag)
        h.proc.wait(10)


def _host(spawn_host, tmp_path: Path, **cfg) -> tuple[Host, dict, Path]:
    marker = tmp_path / "busy"
    h = spawn_host([str(HERE / "_host_script.py"), json.dumps({"marker": str(marker), **cfg})])
    return h, h.line(), marker


def test_host_killed_while_a_sync_handler_runs(spawn_host, tmp_path: Path) -> None:
    h, _, marker = _host(spawn_host, tmp_path, size=2)
    wait_for(marker.exists, timeout=30, what="the handler running")
    assert len(_tagged(h.tag)) == 4  # host, template, two workers
    h.kill()
    h.survivors_gone()


def test_zygote_killed_then_host(spawn_host, tmp_path: Path) -> None:
    h, info, marker = _host(spawn_host, tmp_path, size=2)
    wait_for(marker.exists, timeout=30, what="the handler running")
    old = set(info["workers"])
    os.kill(info["zygote"], signal.SIGKILL)
    # its workers go with it (a busy one too), and the host builds a new template
    wait_for(lambda: not any(alive(p) for p in old), timeout=15, what="the old workers gone")
    wait_for(lambda: len(_tagged(h.tag)) >= 2 and info["zygote"] not in _tagged(h.tag), what="a new template")
    h.kill()
    h.survivors_gone()


def test_worker_notices_host_death_without_its_template(spawn_host, tmp_path: Path) -> None:
    """The template is frozen (SIGSTOP) and cannot act: the busy worker still exits on
    the host's death by itself (watchdog: host pidfd + connection hang-up)."""
    h, info, marker = _host(spawn_host, tmp_path, size=1)
    wait_for(marker.exists, timeout=30, what="the handler running")
    worker = int(marker.read_text())
    os.kill(info["zygote"], signal.SIGSTOP)
    try:
        h.kill()
        wait_for(lambda: not alive(worker), timeout=15, what="the worker exiting on its own")
    finally:
        if alive(info["zygote"]):
            os.kill(info["zygote"], signal.SIGCONT)
    h.survivors_gone()


def test_host_killed_while_template_imports(spawn_host, tmp_path: Path) -> None:
    marker = tmp_path / "importing"
    h = spawn_host(
        [str(HERE / "_host_script.py"), json.dumps({"marker": "-", "early": True, "preload": [str(HERE / "_slow_import.py")]})],
        extra_env={"DSPEX_TEST_IMPORT_MARKER": str(marker)},
    )
    info = h.line()
    wait_for(marker.exists, timeout=30, what="the template importing")
    assert alive(info["zygote"])
    h.kill()
    h.survivors_gone()


def test_host_killed_while_template_forks(spawn_host, tmp_path: Path) -> None:
    h = spawn_host([str(HERE / "_host_script.py"), json.dumps({"marker": "-", "early": True, "size": 6})])
    info = h.line()
    # kill the host as soon as the template has its first child: it is forking the rest
    wait_for(lambda: bool(_children(info["zygote"])), timeout=30, what="the first worker forked")
    h.kill()
    h.survivors_gone()


# -- a host script without a main guard --------------------------------------------

_NO_GUARD = """\
import os
from dspex.pool import Pool

with open({log!r}, "a") as f:
    f.write(f"{{os.getpid()}}\\n")
pool = Pool("opt", 1, handlers=[{handlers}], preload=[{preload}], forward_stderr=False)
pool.start()
print("value", pool.call({call}), flush=True)
{tail}
"""


def _script(path: Path, log: Path, handlers: str, preload: str = "", call: str = "'echo', 7", tail: str = "") -> Path:
    path.write_text(textwrap.dedent(_NO_GUARD.format(log=str(log), handlers=handlers, preload=preload, call=call, tail=tail)))
    return path


def test_script_shadowing_a_module_the_worker_imports(spawn_host, tmp_path: Path) -> None:
    """The incident: ``/tmp/gepa.py`` (no main guard) + a worker importing ``gepa`` ran
    the script inside the template, which started a pool, whose template ran it again..."""
    log = tmp_path / "runs.log"
    # named like a stdlib module the template preloads; the cwd ('' on the worker's path) holds it
    script = _script(tmp_path / "colorsys.py", log, repr(H), preload="'colorsys'")
    h = spawn_host([str(script)])
    out, err = h.proc.communicate(timeout=60)
    assert h.proc.returncode == 0, err
    assert "value 7" in out
    assert log.read_text().split() == [str(h.proc.pid)]  # ran once: in the host only
    h.survivors_gone()


def test_nested_pool_is_refused_with_a_clear_error(spawn_host, tmp_path: Path) -> None:
    """Here the script is the template's handler module: it does run there, and its
    module-level Pool refuses instead of starting a chain of templates."""
    log = tmp_path / "runs.log"
    script = _script(tmp_path / "host.py", log, "__file__")
    h = spawn_host([str(script)])
    _, err = h.proc.communicate(timeout=60)
    assert h.proc.returncode != 0
    assert "pools cannot be started inside a dspex worker" in err
    assert "DSPEX_ALLOW_NESTED_POOLS" in err
    assert len(log.read_text().split()) == 2  # the host and its template, nothing deeper
    h.survivors_gone()


def test_kill_host_of_a_no_guard_script(spawn_host, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    script = _script(
        tmp_path / "colorsys.py", log, repr(str(HERE / "_proc_handlers.py")), preload="'colorsys'",
        call=f"'environ', {WORKER_ENV!r}", tail=f"pool.call('block', {str(tmp_path / 'busy')!r})",
    )
    h = spawn_host([str(script)])
    assert h.proc.stdout is not None
    line = h.proc.stdout.readline()
    assert line.startswith("value opt:")  # the worker carries the marker
    wait_for((tmp_path / "busy").exists, timeout=30, what="the handler running")
    h.kill()
    h.survivors_gone()
    assert log.read_text().split() == [str(h.proc.pid)]


def test_multiprocessing_children_of_a_worker_do_not_rerun_the_script(spawn_host, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    script = _script(
        tmp_path / "host.py", log, repr(str(HERE / "_proc_handlers.py")), call="'mp_child', 'spawn'",
        tail="print('forkserver', pool.call('mp_child', 'forkserver'), flush=True)\npool.close()",
    )
    h = spawn_host([str(script)])
    out, err = h.proc.communicate(timeout=80)
    assert h.proc.returncode == 0, err
    assert "value 0" in out and "forkserver 0" in out
    assert log.read_text().split() == [str(h.proc.pid)]
    h.survivors_gone()


# -- the guard itself, in-process ---------------------------------------------------


def test_pool_refuses_inside_a_worker_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKER_ENV, "outer:12345")
    p = Pool("nested", 1, handlers=[H], forward_stderr=False)
    with pytest.raises(PoolError, match="pools cannot be started inside a dspex worker") as ei:
        p.start()
    assert "outer" in str(ei.value) and "12345" in str(ei.value)
    p.close()
    monkeypatch.setenv(ALLOW_NESTED_ENV, "1")
    with Pool("nested", 1, handlers=[H], forward_stderr=False) as p2:
        assert p2.call("echo", 3) == 3
