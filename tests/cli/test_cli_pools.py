"""`dspex pools`: configured pools from a dspex.toml in the working directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, dspex

pytestmark = pytest.mark.timeout(120)

CONFIG = """\
[pools.tiny]
size = 2
handlers = ["dspex.testing.handlers"]
preload = []
env = {}
affinity = "none"
"""


@pytest.fixture
def project(workdir: Path) -> Path:
    (workdir / "dspex.toml").write_text(CONFIG)
    return workdir


def test_pools_lists_configured_pools_unstarted(project: Path) -> None:
    proc = dspex("pools", cwd=project)
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.strip().splitlines()
    for column in ("name", "size", "state", "workers", "queue", "in_flight", "calls", "errors", "restarts", "recycles", "p50_ms", "p99_ms"):  # fmt: skip
        assert column in header
    names = [r.split()[0] for r in rows if r and not r.startswith("(")]
    assert {"tiny", "dspy", "optimizer"} <= set(names)  # the defaults plus ours
    tiny = next(r for r in rows if r.startswith("tiny "))
    assert tiny.split()[1] == "2" and "not started" in tiny

    doc = json.loads(dspex("pools", "tiny", "--json", cwd=project).stdout)
    assert doc["started_here"] is False
    (row,) = doc["pools"]
    assert row["name"] == "tiny" and row["size"] == 2 and row["started"] is False
    assert row["handlers"] == ["dspex.testing.handlers"]


def test_pools_start_reports_live_workers(project: Path) -> None:
    proc = dspex("pools", "tiny", "--start", "--json", cwd=project, timeout=100)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["pools"]
    assert row["started"] is True and row["state"] == "running"
    assert row["workers"] == 2
    assert len(row["stats"]["workers"]) == 2
    assert all(w["pid"] for w in row["stats"]["workers"])
    assert "echo" in row["handlers"]
    assert row["errors"] == 0 and row["queue"] == 0

    proc = dspex("pools", "tiny", "--start", cwd=project, timeout=100)
    assert proc.returncode == 0, proc.stderr
    tiny = next(line for line in proc.stdout.splitlines() if line.startswith("tiny "))
    assert tiny.split()[1:4] == ["2", "running", "2"]


def test_unknown_pool_name(project: Path) -> None:
    assert_one_line_error(dspex("pools", "nosuch", cwd=project), 2, "nosuch", "[pools.nosuch]")


def test_pool_that_cannot_start(project: Path) -> None:
    (project / "dspex.toml").write_text(
        CONFIG + '\n[pools.broken]\nsize = 1\nhandlers = ["no_such_module_xyz"]\n'
    )
    proc = dspex("pools", "broken", "--start", cwd=project, timeout=100)
    line = assert_one_line_error(proc, 3, "no_such_module_xyz")
    assert "broken" in line
