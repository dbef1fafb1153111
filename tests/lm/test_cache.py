"""The request cache: hits, copies, LRU bound, SQLite across processes, laziness, switches, rollout ids."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dspex
from dspex.native import cache as cache_mod
from dspex.settings import reset_config
from dspex.testing import FakeLMServer

pytestmark = pytest.mark.timeout(60)
MSGS = [{"role": "user", "content": "hello"}]


@pytest.fixture
def fresh_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A process cache re-read from the environment for this test, restored afterwards."""
    monkeypatch.chdir(tmp_path)
    for var in ("DSPEX_CACHE", "DSPEX_CACHE_DIR", "DSPEX_CONFIG"):
        monkeypatch.delenv(var, raising=False)

    def reload() -> cache_mod.Cache | None:
        reset_config()
        cache_mod.reset_default_cache()
        return cache_mod.default_cache()

    yield reload
    monkeypatch.undo()
    reset_config()
    cache_mod.reset_default_cache()


def test_hit_returns_a_copy(fake_lm: FakeLMServer, fresh_cache) -> None:
    fresh_cache()
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url)
    first = lm.complete(MSGS)
    first.raw["choices"][0]["message"]["content"] = "mutated"
    first.usage["prompt_tokens"] = -1
    second = lm.complete(MSGS)
    assert len(fake_lm.requests) == 1
    assert second.cached and not first.cached
    assert second.text == first.text and second.usage["prompt_tokens"] > 0
    assert second.raw["choices"][0]["message"]["content"] == first.text
    second.texts.append("x")
    assert lm.complete(MSGS).texts == [first.text]


def test_different_params_miss(fake_lm: FakeLMServer, fresh_cache) -> None:
    fresh_cache()
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url)
    lm.complete(MSGS)
    lm.complete(MSGS, temperature=0.5)
    lm.complete([{"role": "user", "content": "other"}])
    dspex.LM("openai/other", api_base=fake_lm.base_url).complete(MSGS)
    assert len(fake_lm.requests) == 4


def test_errors_are_never_cached(fake_lm: FakeLMServer, fresh_cache) -> None:
    from dspex.testing import Fault

    fresh_cache()
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url, num_retries=0)
    fake_lm.script([Fault.server_error(), "good"])
    with pytest.raises(dspex.LMBadResponse):
        lm.complete(MSGS)
    assert lm.complete(MSGS).text == "good"
    assert lm.complete(MSGS).cached


def test_switches(fake_lm: FakeLMServer, fresh_cache, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh_cache()
    on = dspex.LM("openai/fake", api_base=fake_lm.base_url)
    off = dspex.LM("openai/fake", api_base=fake_lm.base_url, cache=False)
    on.complete(MSGS)
    off.complete(MSGS)  # LM switch
    with dspex.context(cache=False):
        on.complete(MSGS)  # context switch
    on.complete(MSGS, cache=False)  # call switch
    assert len(fake_lm.requests) == 4
    assert on.complete(MSGS).cached
    with dspex.context(cache=True):
        assert off.complete(MSGS).cached  # the context turns it on for an LM that said no
    monkeypatch.setenv("DSPEX_CACHE", "0")
    assert fresh_cache() is None  # environment kill switch
    fake_lm.clear_requests()
    on.complete(MSGS)
    on.complete(MSGS)
    assert len(fake_lm.requests) == 2


def test_rollout_id_semantics(fake_lm: FakeLMServer, fresh_cache) -> None:
    """As DSPy 3.4.1: the rollout id is part of the key (never sent): new id -> miss, same id -> hit."""
    fresh_cache()
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url)
    lm.complete(MSGS)
    with dspex.context(rollout_id=1):
        assert not lm.complete(MSGS).cached
        assert lm.complete(MSGS).cached
    assert not lm.complete(MSGS, rollout_id=2).cached
    assert lm.complete(MSGS, rollout_id=2).cached
    assert lm.complete(MSGS).cached  # the plain entry is still there
    assert len(fake_lm.requests) == 3
    assert all("rollout_id" not in r["json"] for r in fake_lm.requests)


def test_lru_bound() -> None:
    c = cache_mod.Cache(memory_size=3)
    for i in range(5):
        c.put(f"k{i}", {"i": i})
    assert len(c) == 3 and c.get("k0") is None and c.get("k4") == {"i": 4}
    c.get("k2")  # refresh k2
    c.put("k5", {"i": 5})
    assert c.get("k2") == {"i": 2} and c.get("k3") is None


def test_key_is_canonical_sha256() -> None:
    a = cache_mod.request_key({"b": 1, "a": [1, 2]})
    assert a == cache_mod.request_key({"a": [1, 2], "b": 1}) and len(a) == 64


def test_disk_cache_lazy_and_disabled_paths(fake_lm: FakeLMServer, fresh_cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "cachedir"
    monkeypatch.setenv("DSPEX_CACHE_DIR", str(disk))
    store = fresh_cache()
    assert store is not None and store.disk_path is not None
    assert not disk.exists()  # nothing created by configuring it
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url, cache=False)
    lm.complete(MSGS)
    with dspex.context(cache=False):
        dspex.LM("openai/fake", api_base=fake_lm.base_url).complete(MSGS)
    assert not disk.exists()  # nor by uncached calls
    dspex.LM("openai/fake", api_base=fake_lm.base_url).complete(MSGS)
    assert (disk / "lm_cache.sqlite").exists()
    # a fresh process-level cache (memory empty) reads it back from disk
    fresh_cache()
    fake_lm.clear_requests()
    assert dspex.LM("openai/fake", api_base=fake_lm.base_url).complete(MSGS).cached
    assert fake_lm.requests == []
    # with DSPEX_CACHE=0 nothing is created even with a cache dir
    other = tmp_path / "never"
    monkeypatch.setenv("DSPEX_CACHE_DIR", str(other))
    monkeypatch.setenv("DSPEX_CACHE", "0")
    fresh_cache()
    dspex.LM("openai/fake", api_base=fake_lm.base_url).complete(MSGS)
    assert not other.exists()


WRITER = textwrap.dedent(
    """
    import sys, json
    from dspex.native.cache import Cache
    c = Cache(memory_size=0, disk_dir=sys.argv[1])
    me = int(sys.argv[2])
    for i in range(200):
        c.put(f"{me}-{i}", {"writer": me, "i": i})
        other = c.get(f"{(me + 1) % 4}-{i}")
        assert other is None or other == {"writer": (me + 1) % 4, "i": i}, other
    print(json.dumps({"ok": True}))
    """
)


@pytest.mark.timeout(120)
def test_sqlite_shared_by_processes(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=100)
        assert p.returncode == 0, err
        assert json.loads(out)["ok"]
    c = cache_mod.Cache(memory_size=0, disk_dir=tmp_path)
    assert all(c.get(f"{w}-{i}") == {"writer": w, "i": i} for w in range(4) for i in range(200))
    mode = c._conn(create=False).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_no_secret_in_cache_key(fake_lm: FakeLMServer, fresh_cache, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh_cache()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-AAA")
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url)
    lm.complete(MSGS)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-BBB")
    assert lm.complete(MSGS).cached  # the key is not part of the cache key
    store = cache_mod.default_cache()
    assert store is not None
    for key, value in store._mem.items():
        assert "sk-secret" not in key and "sk-secret" not in value


def test_disk_store_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    monkeypatch.setattr(cache_mod, "_TRIM_EVERY", 10)
    cache = cache_mod.Cache(memory_size=0, disk_dir=tmp_path, disk_max_entries=25)
    for i in range(200):
        cache.put(f"k{i}", {"i": i})
    cache.close()
    db = sqlite3.connect(str(tmp_path / "lm_cache.sqlite"))
    (count,) = db.execute("SELECT COUNT(*) FROM lm_cache").fetchone()
    # trimmed at most _TRIM_EVERY writes ago: never more than the bound + one trim interval
    assert count <= 25 + 10
    # the newest entry survives, the oldest are gone
    reopened = cache_mod.Cache(memory_size=0, disk_dir=tmp_path, disk_max_entries=25)
    assert reopened.get("k199") == {"i": 199}
    assert reopened.get("k0") is None
