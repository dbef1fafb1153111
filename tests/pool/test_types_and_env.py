"""Values keep their types across the wire; pools under another interpreter; PoolManager."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspex.errors import ConfigError
from dspex.pool import Pool, PoolManager
from dspex.pool.protocol import Codec, FrameError, FrameReader
from dspex.settings import load_config, reset_config

pytestmark = pytest.mark.timeout(120)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
hashables = st.recursive(
    scalars, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3), max_leaves=6
)
values = st.recursive(
    scalars | hashables,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(hashables, inner, max_size=4)
        | st.sets(hashables, max_size=4)
    ),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type, all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(
            same(k, next(k2 for k2 in b if k2 == k)) and same(v, b[k]) for k, v in a.items()
        )
    return bool(a == b)


@given(values)
@settings(max_examples=300, deadline=None)
def test_codec_round_trip(value: Any) -> None:
    codec = Codec()
    reader = FrameReader(codec)
    frame = codec.frame([11, 1, value])
    # fed in two pieces to exercise partial frames
    msgs = reader.feed(frame[:3]) + reader.feed(frame[3:])
    assert len(msgs) == 1 and same(msgs[0][2], value)


@pytest.fixture(scope="module")
def echo_pool() -> Any:
    with Pool("types", 1, handlers=["dspex.testing.handlers"], forward_stderr=False) as p:
        yield p


@given(values)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_types_survive_the_worker(echo_pool: Pool, value: Any) -> None:
    assert same(echo_pool.call("echo", value), value)


def test_int_keys_and_specific_types(echo_pool: Pool) -> None:
    v = {1: "a", (1, 2): {3}, "b": b"\x00", 2**70: frozenset({1})}
    assert same(echo_pool.call("echo", v), v)


def test_frame_reader_rejects_bad_frames() -> None:
    codec = Codec(max_frame=100)
    reader = FrameReader(codec)
    with pytest.raises(FrameError, match="exceeds"):
        reader.feed(b"\x00\x00\x10\x00")
    with pytest.raises(FrameError, match="malformed"):
        FrameReader(codec).feed(b"\x00\x00\x00\x01\xc1")
    with pytest.raises(FrameError, match="malformed"):
        FrameReader(codec).feed(b"\x00\x00\x00\x01\x01")
    with pytest.raises(FrameError, match="allow_pickle"):
        body = msgpack.packb(msgpack.ExtType(5, b"junk"))
        FrameReader(codec).feed(len(body).to_bytes(4, "big") + body)


_VENV_HANDLERS = textwrap.dedent(
    """
    import sys
    from dspex.pool.handler import handler

    @handler
    def where(ctx):
        try:
            import hypothesis  # installed for the host, not in the venv
            has = True
        except ImportError:
            has = False
        return {"exe": sys.executable, "prefix": sys.prefix, "has_hypothesis": has,
                "heavy": sorted(m for m in ("httpx", "dspy", "yaml") if m in sys.modules)}
    """
)


def test_pool_under_a_venv_with_only_msgpack(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = next((venv / "lib").glob("python3*/site-packages"))
    shutil.copytree(Path(msgpack.__file__).parent, site / "msgpack")  # offline: copy the package
    handlers = tmp_path / "venv_handlers.py"
    handlers.write_text(_VENV_HANDLERS)
    with Pool("venv", 1, handlers=[str(handlers)], python=venv, forward_stderr=False) as p:
        out = p.call("where")
        assert out["prefix"] == str(venv)
        assert out["has_hypothesis"] is False
        assert out["heavy"] == []
        assert p.call("where") == out


def test_pool_manager_from_dspex_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dspex.toml").write_text(
        textwrap.dedent(
            """
            [pools.echo]
            size = 1
            handlers = ["dspex.testing.handlers"]
            max_requests = 1000
            forward_stderr = false
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSPEX_CONFIG", raising=False)
    reset_config()
    try:
        cfg = load_config()
        mgr = PoolManager(cfg)
        assert "echo" in mgr.names() and "dspy" in mgr.names()  # defaults merged in
        assert mgr.started() == []  # lazily
        pool = mgr.get("echo")
        assert mgr.get("echo") is pool
        assert pool.call("echo", 5) == 5
        assert pool.max_requests == 1000
        assert mgr.stats()["echo"]["calls"] == 1
        with pytest.raises(ConfigError, match="no pool named"):
            mgr.get("missing")
        mgr.close_all()
        assert pool.stats()["state"] == "closed"
    finally:
        reset_config()
    with pytest.raises(ConfigError, match="unknown option"):
        PoolManager({"pools": {"x": {"size": 1, "sizee": 2}}})


def test_default_manager_is_shared() -> None:
    import dspex.pool

    assert dspex.pool.manager() is dspex.pool.manager()


def test_worker_module_is_runnable_and_light() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys, dspex.pool.worker; print(sorted(m for m in sys.modules if m in "
         "('dspy', 'httpx', 'yaml', 'numpy', 'pydantic', 'asyncio')))"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == "[]", out
    usage = subprocess.run([sys.executable, "-m", "dspex.pool.worker"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_session_ttl_drops_idle_sessions() -> None:
    import time

    with Pool("ttl", 1, handlers=["dspex.testing.handlers"], session_ttl_s=0.2, forward_stderr=False) as p:
        p.call("state_set", "k", 1, session="old")
        assert p.call("state_get", "k", session="old") == 1
        deadline = time.monotonic() + 10
        while p.stats()["sessions"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.stats()["sessions"] == 0
        assert p.call("state_get", "k", session="old") is None  # the worker dropped it too
