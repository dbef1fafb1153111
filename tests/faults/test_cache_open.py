"""Issue 13, finding 10: the disk cache's first open across processes, and its file modes.

Several processes opening a new cache file at once used to fail with "database is
locked" (switching a fresh file to WAL needs an exclusive lock that busy_timeout does
not wait for). Prompts and replies belong to the user: 0700 directory, 0600 files.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
from pathlib import Path

import pytest

from dspex.native.cache import Cache

pytestmark = pytest.mark.timeout(120)

PROCS = 8
ROUNDS = 4


def _child(disk_dir: str, index: int, start: object, out: object) -> None:
    import warnings

    warnings.simplefilter("error")  # a swallowed disk failure must fail this test too
    try:
        cache = Cache(disk_dir=disk_dir)
        start.wait(30)  # type: ignore[attr-defined]
        cache.put(f"k{index}", {"text": f"v{index}"})
        seen = Cache(memory_size=0, disk_dir=disk_dir).get(f"k{index}")
        out.put((index, "ok" if seen == {"text": f"v{index}"} else f"read back {seen!r}"))  # type: ignore[attr-defined]
    except BaseException as exc:
        out.put((index, f"{type(exc).__name__}: {exc}"))  # type: ignore[attr-defined]


def test_many_processes_open_a_new_cache_at_once(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    failures: list[str] = []
    for r in range(ROUNDS):
        disk_dir = str(tmp_path / f"round{r}" / "cache")
        start, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_child, args=(disk_dir, i, start, out)) for i in range(PROCS)]
        for p in procs:
            p.start()
        start.set()
        results = dict(out.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(30)
        failures += [f"round {r} proc {i}: {msg}" for i, msg in results.items() if msg != "ok"]
        every = Cache(memory_size=0, disk_dir=disk_dir)
        assert all(every.get(f"k{i}") == {"text": f"v{i}"} for i in range(PROCS))
        every.close()
    assert not failures, failures


def test_cache_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        cache = Cache(disk_dir=tmp_path / "a" / "dspex-cache")
        cache.put("k", {"text": "secret prompt reply"})
    finally:
        os.umask(old)
    d = tmp_path / "a" / "dspex-cache"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    files = sorted(p.name for p in d.iterdir())
    assert "lm_cache.sqlite" in files and "lm_cache.sqlite-wal" in files
    for p in d.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
    cache.close()


def test_existing_world_readable_cache_file_is_tightened(tmp_path: Path) -> None:
    d = tmp_path / "c"
    Cache(disk_dir=d).put("k", {"text": "x"})
    (d / "lm_cache.sqlite").chmod(0o644)
    again = Cache(disk_dir=d)
    assert again.get("k") == {"text": "x"}
    assert stat.S_IMODE((d / "lm_cache.sqlite").stat().st_mode) == 0o600


def test_a_broken_disk_store_does_not_fail_the_call(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    (d / "lm_cache.sqlite").write_bytes(b"this is not a sqlite database" * 100)
    cache = Cache(disk_dir=d)
    with pytest.warns(RuntimeWarning, match="disk store"):
        cache.put("k", {"text": "x"})
    assert cache.get("k") == {"text": "x"}  # the memory layer still serves it
