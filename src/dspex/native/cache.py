"""The LM request cache: a bounded in-memory LRU plus an optional SQLite store.

Keys are the sha256 of the canonical JSON of the request (provider, api_base,
model, messages, non-secret parameters, rollout id): never an API key. Values
are stored as JSON text and decoded on every hit, so callers always get fresh
objects they may mutate. Errors are never stored (callers only ``put`` replies).

The SQLite file is opened on the first write (or the first read once it
exists), never at import and never when the disk store is off. WAL mode plus
``busy_timeout`` lets many processes read and write the same file; the first
open (create, switch to WAL, create the table) runs under an exclusive
``flock`` on ``lm_cache.sqlite.lock``, because several processes switching a
new file to WAL at once get "database is locked" whatever the busy timeout.
Prompts and replies belong to the user: the directory is created 0700 and the
files 0600 (SQLite gives its -wal/-shm files the database file's mode). A disk
error never fails an LM call: it is a miss (get) or a skipped write (put),
with one warning. The file is bounded too: every ``_TRIM_EVERY`` writes, the
oldest rows past ``disk_max_entries`` are deleted.

Switches, strongest first: ``DSPEX_CACHE=0`` / config ``[cache] enabled =
false`` turn it off everywhere; then a call's ``cache=``, ``dspex.context(cache=...)``,
the LM's ``cache=``. ``DSPEX_CACHE_DIR`` (or ``[cache] disk = true`` with
``dir``) adds the disk store. See ``default_cache()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["Cache", "default_cache", "request_key", "reset_default_cache"]


def request_key(request: dict[str, Any]) -> str:
    """sha256 hex digest of the canonical JSON of ``request`` (sorted keys, no spaces)."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_TRIM_EVERY = 256  # disk writes between two bound checks (COUNT(*) is a table scan)


class Cache:
    """Thread-safe LRU of JSON values, optionally backed by a SQLite file shared by processes."""

    def __init__(
        self,
        memory_size: int = 10_000,
        disk_dir: str | os.PathLike[str] | None = None,
        disk_max_entries: int = 200_000,
    ):
        self.memory_size = max(0, int(memory_size))
        self.disk_max_entries = max(1, int(disk_max_entries))
        self._writes = 0
        self._mem: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.disk_path: Path | None = Path(disk_dir).expanduser() / "lm_cache.sqlite" if disk_dir else None
        self._db: sqlite3.Connection | None = None
        self._db_pid = 0
        self._db_lock = threading.Lock()
        self._warned = False
        self.hits = 0
        self.misses = 0

    # disk -------------------------------------------------------------------
    def _conn(self, create: bool) -> sqlite3.Connection | None:
        if self.disk_path is None:
            return None
        if self._db is not None and self._db_pid == os.getpid():
            return self._db
        if not create and not self.disk_path.exists():
            return None
        _private_dir(self.disk_path.parent)
        with _file_lock(self.disk_path.with_name(self.disk_path.name + ".lock")):
            _private_file(self.disk_path)
            db = sqlite3.connect(str(self.disk_path), timeout=30, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA busy_timeout=30000")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("CREATE TABLE IF NOT EXISTS lm_cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)")
                db.execute("CREATE INDEX IF NOT EXISTS lm_cache_created ON lm_cache (created)")
            except BaseException:
                db.close()
                raise
        self._db, self._db_pid = db, os.getpid()  # a forked child opens its own
        return db

    def _disk_failed(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"dspex LM cache: the disk store {self.disk_path} failed ({type(exc).__name__}: {exc}); "
                "LM calls go on without it. Check the directory's permissions and free space, or unset DSPEX_CACHE_DIR.",
                RuntimeWarning,
                stacklevel=3,
            )

    # API ----------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        """A fresh copy of the value stored under ``key``, or None."""
        with self._lock:
            text = self._mem.get(key)
            if text is not None:
                self._mem.move_to_end(key)
        if text is None and self.disk_path is not None:
            try:
                with self._db_lock:
                    db = self._conn(create=False)
                    row = db.execute("SELECT value FROM lm_cache WHERE key = ?", (key,)).fetchone() if db else None
            except (sqlite3.Error, OSError) as exc:
                self._disk_failed(exc)
                row = None
            if row is not None:
                text = row[0]
                self._remember(key, text)
        if text is None:
            self.misses += 1
            return None
        self.hits += 1
        value: dict[str, Any] = json.loads(text)
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        self._remember(key, text)
        if self.disk_path is not None:
            try:
                with self._db_lock:
                    db = self._conn(create=True)
                    assert db is not None
                    db.execute("INSERT OR REPLACE INTO lm_cache (key, value, created) VALUES (?, ?, ?)", (key, text, time.time()))
                    self._writes += 1
                    if self._writes % _TRIM_EVERY == 1:
                        self._trim(db)
            except (sqlite3.Error, OSError) as exc:
                self._disk_failed(exc)

    def _trim(self, db: sqlite3.Connection) -> None:
        """Delete the oldest rows past ``disk_max_entries`` (other processes' rows too)."""
        (count,) = db.execute("SELECT COUNT(*) FROM lm_cache").fetchone()
        excess = count - self.disk_max_entries
        if excess > 0:
            db.execute(
                "DELETE FROM lm_cache WHERE key IN (SELECT key FROM lm_cache ORDER BY created ASC LIMIT ?)",
                (excess,),
            )

    def _remember(self, key: str, text: str) -> None:
        if self.memory_size == 0:
            return
        with self._lock:
            self._mem[key] = text
            self._mem.move_to_end(key)
            while len(self._mem) > self.memory_size:
                self._mem.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._mem)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._mem

    def clear(self, disk: bool = False) -> None:
        with self._lock:
            self._mem.clear()
        if disk and self.disk_path is not None:
            with self._db_lock:
                db = self._conn(create=False)
                if db is not None:
                    db.execute("DELETE FROM lm_cache")

    def close(self) -> None:
        with self._db_lock:
            if self._db is not None and self._db_pid == os.getpid():
                self._db.close()
            self._db = None

    def __repr__(self) -> str:
        return f"Cache(memory={len(self)}/{self.memory_size}, disk={str(self.disk_path) if self.disk_path else None})"


def _private_dir(path: Path) -> None:
    """Create ``path`` readable by this user only (an existing directory is left as it is)."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)  # whatever the umask


def _private_file(path: Path) -> None:
    """Create ``path`` 0600 before SQLite opens it (SQLite would use the umask: often 0644)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077 and os.fstat(fd).st_uid == os.getuid():
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock shared by every process that opens the same cache file."""
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on SQLite's busy timeout alone
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


_default: Cache | None = None
_default_loaded = False
_default_lock = threading.Lock()


def default_cache() -> Cache | None:
    """The process-wide cache from ``load_config()["cache"]``; None when caching is off."""
    global _default, _default_loaded
    if _default_loaded:
        return _default
    with _default_lock:
        if not _default_loaded:
            from ..settings import load_config

            conf = load_config().get("cache", {})
            if conf.get("enabled", True):
                disk_dir = conf.get("dir") if conf.get("disk") else None
                _default = Cache(
                    int(conf.get("memory_size", 10_000)),
                    disk_dir,
                    int(conf.get("disk_max_entries", 200_000)),
                )
            else:
                _default = None
            _default_loaded = True
    return _default


def reset_default_cache() -> None:
    """Forget the process-wide cache (re-read config on next use; tests, or after changing env)."""
    global _default, _default_loaded
    with _default_lock:
        if _default is not None:
            _default.close()
        _default, _default_loaded = None, False
