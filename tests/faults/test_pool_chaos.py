"""Issue 13, the chaos proof in small: random kill -9 of workers under 16 callers while
the pool recycles; only calls in flight on a killed worker may fail, none is lost.

The full run is ``python bench/bench_chaos.py`` (60 s); this is the same driver for a
few seconds, so CI keeps the guarantee. It guards "0 lost" (the old pool passed it too:
it failed calls it could have re-dispatched, which test_pool_redispatch.py pins down).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.timeout(180)


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "bench_chaos.py"
    spec = importlib.util.spec_from_file_location("bench_chaos", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kill_9_under_load_loses_no_call() -> None:
    result = _bench().run_dspex(6.0)
    counts = result["counts"]
    lost = {k: v for k, v in counts.items() if k.startswith("lost")}
    assert not lost, (lost, dict(counts))
    assert set(counts) <= {"ok", "failed in flight"}, dict(counts)
    assert counts["ok"] > 0 and result["kills"] > 0
