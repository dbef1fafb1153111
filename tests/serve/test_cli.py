"""``dspex serve`` as a process: config file and flags, the URL on stderr, clean SIGTERM,
and the refusal to bind beyond loopback without an API key."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import dspex

_TESTS = str(Path(__file__).resolve().parents[1])


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([_TESTS, os.environ.get("PYTHONPATH", "")]),
           "LITELLM_LOCAL_MODEL_COST_MAP": "True", **extra}
    return env


class Proc:
    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]):
        self.p = subprocess.Popen([sys.executable, "-m", "dspex.cli", "serve", *args], cwd=cwd, env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        self.url = ""

    def wait_url(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        assert self.p.stderr is not None
        while time.monotonic() < deadline:
            line = self.p.stderr.readline()
            if not line:
                break
            m = re.search(r"listening on (http://\S+) ", line)
            if m:
                self.url = m.group(1)
                return self.url
        self.p.kill()
        raise AssertionError(f"no URL; rc={self.p.poll()} stderr={self.p.stderr.read()[-2000:]}")

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                return self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
                return -9
        return int(self.p.returncode)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.get(url + "/readyz", timeout=5).status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("not ready")


def test_config_file_and_flags(tmp_path: Path, fake_lm: Any, procs: list[Proc]) -> None:
    dspex.Predict("question -> answer: int", instructions="Numbers only.").save(tmp_path / "qa.json")
    (tmp_path / "serve.toml").write_text(f"""
[serve]
port = 0
max_in_flight = 8
[serve.lm]
model = "openai/fake"
api_base = "{fake_lm.base_url}"
num_retries = 0
[[serve.programs]]
name = "qa"
signature = "question -> answer: int"
state = "qa.json"
""")
    p = Proc(["serve.toml", "--program", "add=serve.programs_for_tests:add", "--program",
              "echo=text -> echoed"], tmp_path, _env())
    procs.append(p)
    url = p.wait_url()
    assert url.startswith("http://127.0.0.1:")
    _wait_ready(url)
    fake_lm.script(["[[ ## answer ## ]]\n12\n\n[[ ## completed ## ]]"])
    r = httpx.post(url + "/v1/programs/qa", json={"question": "3*4?"}, timeout=30)
    assert r.status_code == 200 and r.json()["outputs"] == {"answer": 12}
    assert "Numbers only." in fake_lm.requests[-1]["json"]["messages"][0]["content"]
    assert httpx.post(url + "/v1/programs/add", json={"a": 1}, timeout=30).json()["outputs"] == {"output": 2}
    assert httpx.post(url + "/v1/programs/echo", json={"text": "t"}, timeout=30).status_code == 200
    assert p.stop() == 0  # SIGTERM: a clean shutdown


def test_refuses_public_bind_without_key(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "dspex.cli", "serve", "--host", "0.0.0.0", "--port", "0",
                        "--program", "qa=question -> answer"], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert "refusing to serve on '0.0.0.0'" in r.stderr and "--key-env" in r.stderr
    env = _env()
    env.pop("DSPEX_TEST_KEY", None)
    r = subprocess.run([sys.executable, "-m", "dspex.cli", "serve", "--host", "0.0.0.0", "--port", "0",
                        "--key-env", "DSPEX_TEST_KEY", "--program", "qa=question -> answer"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "DSPEX_TEST_KEY is empty or unset" in r.stderr


def test_public_bind_with_key_requires_it(tmp_path: Path, fake_lm: Any, procs: list[Proc]) -> None:
    p = Proc(["--host", "0.0.0.0", "--port", "0", "--key-env", "DSPEX_TEST_KEY", "--program",
              "qa=question -> answer", "--lm", "openai/fake", "--api-base", fake_lm.base_url],
             tmp_path, _env(DSPEX_TEST_KEY="s3cret"))
    procs.append(p)
    url = p.wait_url().replace("0.0.0.0", "127.0.0.1")
    _wait_ready(url)
    assert httpx.post(url + "/v1/programs/qa", json={"question": "q"}, timeout=30).status_code == 401
    ok = httpx.post(url + "/v1/programs/qa", json={"question": "q"}, headers={"authorization": "Bearer s3cret"},
                    timeout=30)
    assert ok.status_code == 200


def test_usage_errors(tmp_path: Path) -> None:
    for args, text in ((["--program", "qa=nonsense"], "not a module:attr"),
                       (["--program", "qa=qa.json"], "needs the program's signature"),
                       ([], "nothing to serve"),
                       (["missing.toml"], "cannot read serve config")):
        r = subprocess.run([sys.executable, "-m", "dspex.cli", "serve", "--port", "0", *args], cwd=tmp_path,
                           env=_env(), capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        assert text in r.stderr and "Traceback" not in r.stderr
