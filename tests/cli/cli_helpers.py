"""Helpers for the CLI tests: every test runs the real `dspex` command in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The parent's environment without DSPEX_* settings, with an isolated local-model state dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    env["DSPEX_LOCAL_STATE_DIR"] = str(tmp_path / "local-state")
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def dspex(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m dspex.cli ARGS` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "dspex.cli", *args],
        cwd=str(cwd),
        env=env if env is not None else clean_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """A failed command: exit ``code``, exactly one stderr line `dspex: error: <what> — <fix>`, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("dspex: error: "), line
    assert " — " in line, line
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def closed_port() -> int:
    """A loopback port with nothing listening (connection refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
