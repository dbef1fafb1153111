"""Configuration files, environment overrides and the per-thread/per-task context."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import dspex
from dspex import settings


@pytest.fixture
def in_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for var in ("DSPEX_CONFIG", "DSPEX_LM", "DSPEX_API_BASE", "DSPEX_IMPL", "DSPEX_CACHE", "DSPEX_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    settings.reset_config()
    yield tmp_path
    settings.reset_config()


def test_defaults_without_a_file(in_dir: Path) -> None:
    conf = settings.load_config()
    assert conf["router"]["impl"] == "auto"
    assert {"dspy", "optimizer"} <= set(conf["pools"])


def test_dspex_toml_found_from_a_subdirectory_and_merged(in_dir: Path) -> None:
    (in_dir / "dspex.toml").write_text('[lm]\nmodel = "openai/x"\n[pools.dspy]\nsize = 3\n')
    sub = in_dir / "a" / "b"
    sub.mkdir(parents=True)
    import os

    os.chdir(sub)
    conf = settings.load_config(reload=True)
    assert conf["lm"]["model"] == "openai/x"
    assert conf["pools"]["dspy"]["size"] == 3
    assert conf["pools"]["dspy"]["preload"] == ["dspy"]  # merged over the defaults, not replaced


def test_pyproject_tool_table(in_dir: Path) -> None:
    (in_dir / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.dspex.router]\nimpl = "native"\n')
    assert settings.load_config(reload=True)["router"]["impl"] == "native"


def test_environment_overrides_the_file(in_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (in_dir / "dspex.toml").write_text('[lm]\nmodel = "openai/x"\n')
    monkeypatch.setenv("DSPEX_LM", "anthropic/y")
    monkeypatch.setenv("DSPEX_CACHE", "off")
    conf = settings.load_config(reload=True)
    assert conf["lm"]["model"] == "anthropic/y"
    assert conf["cache"]["enabled"] is False


@pytest.mark.parametrize(
    ("text", "needle"),
    [("[router\nimpl=", "not valid TOML"), ('[router]\nimpl = "fast"\n', "router.impl")],
)
def test_bad_files_are_config_errors(in_dir: Path, text: str, needle: str) -> None:
    (in_dir / "dspex.toml").write_text(text)
    with pytest.raises(dspex.ConfigError, match=needle):
        settings.load_config(reload=True)


def test_missing_explicit_file(in_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPEX_CONFIG", str(in_dir / "nope.toml"))
    with pytest.raises(dspex.ConfigError, match="does not exist"):
        settings.load_config(reload=True)


def test_load_config_returns_copies_and_shared_config_versions(in_dir: Path) -> None:
    a = settings.load_config()
    a["router"]["impl"] = "dspy"
    assert settings.load_config()["router"]["impl"] == "auto"
    v1, conf = settings.shared_config()
    assert conf["router"]["impl"] == "auto"
    settings.reset_config()
    v2, _ = settings.shared_config()
    assert v2 != v1


def test_context_is_per_thread_and_per_task() -> None:
    seen: dict[str, object] = {}

    def in_thread(name: str) -> None:
        with dspex.context(lm=name):
            barrier.wait()
            seen[name] = dspex.current().lm

    barrier = threading.Barrier(4)
    threads = [threading.Thread(target=in_thread, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {f"t{i}": f"t{i}" for i in range(4)}

    async def task(name: str) -> object:
        with dspex.context(lm=name):
            await asyncio.sleep(0.01)
            return dspex.current().lm

    async def main() -> list[object]:
        return await asyncio.gather(*(task(f"a{i}") for i in range(4)))

    assert asyncio.run(main()) == [f"a{i}" for i in range(4)]
    assert dspex.current().lm is None  # nothing leaked into this thread


def test_nested_contexts_layer_and_sum_usage() -> None:
    with dspex.context(lm="outer", rollout_id=1) as outer:
        with dspex.context(adapter="json") as inner:
            s = dspex.current()
            assert (s.lm, s.adapter, s.rollout_id) == ("outer", "json", 1)
            s.record_usage("m", 10, 5)
        dspex.current().record_usage("m", 1, 1)
    assert inner.total_tokens == 15 and inner.calls == 1
    assert outer.total_tokens == 17 and outer.calls == 2
    assert outer.as_dict()["by_model"]["m"]["calls"] == 2
