"""Server-sent events for programs and pipelines, and pipelines served from YAML."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from dspex.pipeline import Pipeline, native, worker

from . import programs_for_tests as progs


def _events(r: httpx.Response) -> list[tuple[str, Any]]:
    out = []
    for frame in r.text.split("\n\n"):
        name, data = None, None
        for line in frame.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        if name:
            out.append((name, data))
    return out


def _pipeline_file(tmp_path: Path) -> Path:
    pipe = Pipeline([
        native(progs.shout, writes="loud"),
        native(progs.count_words, writes="n"),
        worker(handler="pid", pool="w", writes="pid"),
        native("loud, n: int -> summary"),
    ], name="triage", inputs={"question": str})
    path = tmp_path / "triage.yaml"
    pipe.save(path)
    return path


_POOLS = {"w": {"size": 1, "handlers": ["dspex.testing.handlers"]}}


def test_pipeline_from_yaml_json_and_sse(serve: Any, lm: Any, tmp_path: Path) -> None:
    path = _pipeline_file(tmp_path)
    srv = serve(pipelines=[{"name": "triage", "path": str(path), "allow": ["serve.programs_for_tests:*"]}],
                pools=_POOLS, lm=lm)
    doc = srv.client.get("/openapi.json").json()
    body = doc["paths"]["/v1/pipelines/triage"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"] == {"question": {"type": "string"}} and body["required"] == ["question"]
    r = srv.client.post("/v1/pipelines/triage", json={"question": "how are you"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["outputs"]["loud"] == "HOW ARE YOU" and out["outputs"]["n"] == 3
    assert isinstance(out["outputs"]["pid"], int) and "summary" in out["outputs"]
    assert [row["step"] for row in out["trace"]] == ["shout", "count_words", "pid", "summary"]
    assert {row["where"] for row in out["trace"]} == {"native", "w"}

    s = srv.client.post("/v1/pipelines/triage/stream", json={"question": "a b"})
    assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
    events = _events(s)
    names = [n for n, _ in events]
    assert names[0] == "start" and names[-1] == "done"
    steps = [d for n, d in events if n == "step"]
    assert [d["type"] for d in steps].count("StepStarted") == 4
    assert [d["type"] for d in steps].count("StepFinished") == 4
    finished_pid = next(d for d in steps if d["type"] == "StepFinished" and d["where"] == "w")["pid"]
    outputs = {d["field"]: d["value"] for n, d in events if n == "output"}
    assert outputs["loud"] == "A B" and outputs["n"] == 2 and outputs["pid"] == finished_pid
    assert names.index("output") > max(i for i, n in enumerate(names) if n == "step")  # outputs after the steps
    done = events[-1][1]
    assert len(done["trace"]) == 4 and done["outputs"]["n"] == 2

    bad = srv.client.post("/v1/pipelines/triage", json={})
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == "question"


def test_program_stream_and_stream_errors(serve: Any, lm: Any, fake_lm: Any) -> None:
    from dspex.testing import Fault

    srv = serve(programs=[{"name": "cot", "signature": "question -> answer", "module": "ChainOfThought"}], lm=lm)
    events = _events(srv.client.post("/v1/programs/cot/stream", json={"question": "q"}))
    assert [n for n, _ in events] == ["start", "output", "output", "done"]
    assert [d["field"] for n, d in events if n == "output"] == ["reasoning", "answer"]
    fake_lm.script([Fault.server_error(500)])
    events = _events(srv.client.post("/v1/programs/cot/stream", json={"question": "q"}))
    assert [n for n, _ in events] == ["start", "error"]
    assert events[1][1]["status"] == 502 and "Traceback" not in json.dumps(events)
    r = srv.client.post("/v1/programs/cot/stream", json={"nope": 1})
    assert r.status_code == 422  # validation happens before the stream starts


def test_pipeline_step_failure_names_the_step(serve: Any, lm: Any, fake_lm: Any, tmp_path: Path) -> None:
    from dspex.testing import Fault

    path = _pipeline_file(tmp_path)
    srv = serve(pipelines=[{"name": "triage", "path": str(path), "allow": ["serve.programs_for_tests:*"]}],
                pools=_POOLS, lm=lm)
    fake_lm.script([Fault.auth()])
    r = srv.client.post("/v1/pipelines/triage", json={"question": "x y"})
    assert r.status_code == 502 and "step 'summary' failed" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "LMAuthError"


def test_streaming_handler_chunks_and_worker_progress(serve: Any) -> None:
    srv = serve(programs=[
        {"name": "count", "handler": "count", "pool": "w", "signature": "n: int, delay: float -> items: list[int]",
         "stream": True},
        {"name": "progress", "handler": "progress", "pool": "w", "signature": "n: int -> done: int"},
    ], pools=_POOLS)
    events = _events(srv.client.post("/v1/programs/count/stream", json={"n": 5, "delay": 0.01}))
    names = [n for n, _ in events]
    assert names == ["start"] + ["chunk"] * 5 + ["output", "done"]
    assert [d["value"] for n, d in events if n == "chunk"] == [0, 1, 2, 3, 4]
    assert events[-1][1]["outputs"] == {"items": [0, 1, 2, 3, 4]}
    r = srv.client.post("/v1/programs/count", json={"n": 3, "delay": 0})  # JSON: the chunks as one list
    assert r.json()["outputs"] == {"items": [0, 1, 2]}
    events = _events(srv.client.post("/v1/programs/progress/stream", json={"n": 3}))
    progress = [d for n, d in events if n == "progress"]
    assert [p["step"] for p in progress] == [0, 1, 2] and all(p["of"] == 3 for p in progress)
    assert events[-1][1]["outputs"] == {"done": 3}


def test_a_slow_stream_reader_pauses_the_handler(serve: Any) -> None:
    """200 chunks, the client reads a few and leaves: the handler was paused by the window,
    then cancelled; it never ran to the end."""
    srv = serve(programs=[{"name": "tick", "handler": "tick", "pool": "w", "signature": "n: int, key -> items",
                           "stream": True},
                          {"name": "produced", "handler": "produced", "pool": "w", "signature": "key -> count: int"}],
                pools=_POOLS)
    with httpx.stream("POST", srv.url + "/v1/programs/tick/stream", json={"n": 100_000, "key": "slow"},
                      timeout=30) as r:
        it = r.iter_lines()
        seen = 0
        for line in it:
            if line.startswith("event: chunk"):
                seen += 1
                if seen == 3:
                    break
    import time

    time.sleep(1.0)
    produced = srv.client.post("/v1/programs/produced", json={"key": "slow"}).json()["outputs"]["count"]
    assert 3 <= produced < 100_000, produced  # bounded by the SSE window + the pool's stream window
