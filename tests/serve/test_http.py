"""Every endpoint over real HTTP: calls, OpenAPI, errors by field, bodies, auth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import dspex
from dspex.errors import ConfigError


def _qa_state(tmp_path: Path, lm: Any) -> Path:
    p = dspex.Predict("question -> answer: int", instructions="Answer with a number.")
    p.demos = [dspex.Example(question="1+1?", answer=2)]
    path = tmp_path / "qa.json"
    p.save(path)
    return path


def test_program_from_saved_state(serve: Any, lm: Any, fake_lm: Any, tmp_path: Path) -> None:
    path = _qa_state(tmp_path, lm)
    srv = serve(programs=[{"name": "qa", "signature": "question -> answer: int", "state": str(path)}], lm=lm)
    fake_lm.script(["[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"])
    r = srv.client.post("/v1/programs/qa", json={"question": "2+2?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outputs"] == {"answer": 4}  # typed: an int, not "4"
    assert body["trace"][0]["where"] == "native" and body["request_id"] == r.headers["x-request-id"]
    sent = fake_lm.requests[-1]["json"]["messages"]
    assert "Answer with a number." in sent[0]["content"]  # the saved instructions were loaded
    assert any("1+1?" in m["content"] for m in sent)  # and the saved demo


def test_chain_of_thought_and_openapi(serve: Any, lm: Any) -> None:
    srv = serve(programs=[{"name": "cot", "signature": "question -> answer: float", "module": "ChainOfThought"}], lm=lm)
    r = srv.client.post("/v1/programs/cot", json={"question": "pi?"})
    assert r.status_code == 200, r.text
    assert set(r.json()["outputs"]) == {"reasoning", "answer"} and isinstance(r.json()["outputs"]["answer"], float)
    doc = srv.client.get("/openapi.json").json()
    schema = doc["paths"]["/v1/programs/cot"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"] == {"question": {"type": "string"}} and schema["required"] == ["question"]
    out = doc["paths"]["/v1/programs/cot"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert out["properties"]["outputs"]["properties"]["answer"] == {"type": "number"}
    assert "/v1/programs/cot/stream" in doc["paths"]
    eps = srv.client.get("/v1/endpoints").json()["endpoints"]
    assert eps[0]["name"] == "cot" and eps[0]["inputs"][0]["name"] == "question"


def test_typed_inputs_schema_and_422_names_the_field(serve: Any, lm: Any) -> None:
    sig = "context: list[str], k: int, mode: Literal['fast', 'slow'], note: Optional[str] -> answer"
    srv = serve(programs=[{"name": "t", "signature": sig}], lm=lm)
    props = srv.client.get("/openapi.json").json()["paths"]["/v1/programs/t"]["post"]["requestBody"][
        "content"]["application/json"]["schema"]
    assert props["properties"]["context"] == {"type": "array", "items": {"type": "string"}}
    assert props["properties"]["mode"] == {"enum": ["fast", "slow"]}
    assert props["required"] == ["context", "k", "mode"]  # Optional is not required
    ok = srv.client.post("/v1/programs/t", json={"context": ["a"], "k": 2, "mode": "fast"})
    assert ok.status_code == 200, ok.text
    bad = srv.client.post("/v1/programs/t", json={"context": ["a", 3], "k": "2", "mode": "medium", "extra": 1})
    assert bad.status_code == 422
    fields = {f["field"]: f["problem"] for f in bad.json()["error"]["fields"]}
    assert set(fields) == {"context", "k", "mode", "extra"}
    assert "item 1" in fields["context"] and "integer" in fields["k"] and "unknown" in fields["extra"]
    missing = srv.client.post("/v1/programs/t", json={"context": []})
    assert missing.status_code == 422
    assert {f["field"] for f in missing.json()["error"]["fields"]} == {"k", "mode"}
    assert all("missing" in f["problem"] for f in missing.json()["error"]["fields"])
    assert srv.client.post("/v1/programs/t", json={"context": [], "k": True, "mode": "fast"}).status_code == 422


def test_malformed_oversized_and_wrong_bodies(serve: Any, lm: Any) -> None:
    srv = serve(programs=[{"name": "qa", "signature": "question -> answer"}], lm=lm, max_body_bytes=1000)
    c = srv.client
    r = c.post("/v1/programs/qa", content=b'{"question": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "MalformedJSON"
    assert c.post("/v1/programs/qa", content=b"", headers={"content-type": "application/json"}).status_code == 400
    r = c.post("/v1/programs/qa", json=["not", "an", "object"])
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "(body)"
    r = c.post("/v1/programs/qa", json={"question": "x" * 5000})
    assert r.status_code == 413 and r.json()["error"]["type"] == "BodyTooLarge"

    def chunks() -> Any:  # no Content-Length: the limit holds while streaming the body in
        for _ in range(20):
            yield b" " * 100

    r = c.post("/v1/programs/qa", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = c.post("/v1/programs/qa", content=b"question=x", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    assert c.get("/v1/programs/qa").status_code == 405
    r = c.post("/v1/programs/nope", json={})
    assert r.status_code == 404 and r.json()["error"]["message"] == "no such path"
    r = c.post("/v1/programs/qa", json={"question": "x"}, headers={"x-dspex-session": "bad session!"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadSession"
    assert c.post("/v1/programs/qa", json={"question": "fine"}).status_code == 200  # still serving


def test_object_programs_composite_function_and_class(serve: Any, lm: Any, fake_lm: Any) -> None:
    srv = serve(programs=[
        {"name": "composite", "object": "serve.programs_for_tests:Composite", "signature": "question -> answer"},
        {"name": "add", "object": "serve.programs_for_tests:add"},
        {"name": "qa", "object": "serve.programs_for_tests:qa"},
    ], lm=lm)
    fake_lm.clear_requests()
    r = srv.client.post("/v1/programs/composite", json={"question": "why?"})
    assert r.status_code == 200, r.text
    assert set(r.json()["outputs"]) == {"answer"} and len(fake_lm.requests) == 2  # both predictors ran
    schema = srv.client.get("/openapi.json").json()["paths"]["/v1/programs/add"]["post"]["requestBody"][
        "content"]["application/json"]["schema"]
    assert schema["properties"] == {"a": {"type": "integer"}, "b": {"type": "integer"}} and schema["required"] == ["a"]
    r = srv.client.post("/v1/programs/add", json={"a": 2, "b": 5})
    assert r.status_code == 200 and r.json()["outputs"] == {"output": 7}
    assert srv.client.post("/v1/programs/add", json={"b": 5}).status_code == 422
    r = srv.client.post("/v1/programs/qa", json={"question": "q"})  # a module-level Predict: its own signature
    assert r.status_code == 200 and set(r.json()["outputs"]) == {"answer"}


def test_dspex_module_class_with_trace_rows_and_timeout(serve: Any, lm: Any, fake_lm: Any) -> None:
    srv = serve(programs=[{"name": "two", "object": "serve.programs_for_tests:TwoStep",
                           "signature": "question -> answer"},
                          {"name": "slow", "object": "serve.programs_for_tests:slow", "timeout_s": 0.2}], lm=lm)
    r = srv.client.post("/v1/programs/two", json={"question": "q"})
    assert r.status_code == 200, r.text
    assert set(r.json()["outputs"]) >= {"answer"}
    steps = [row["step"] for row in r.json()["trace"]]
    assert steps == ["two", "two/draft", "two/polish.predict"], steps  # one row per predictor call
    r = srv.client.post("/v1/programs/slow", json={"seconds": 30})
    assert r.status_code == 504 and r.json()["error"]["type"] == "Timeout"


def test_errors_carry_no_traceback_or_secret(serve: Any, lm: Any, fake_lm: Any) -> None:
    from dspex.testing import Fault

    from .programs_for_tests import SECRET

    srv = serve(programs=[{"name": "broken", "object": "serve.programs_for_tests:broken"},
                          {"name": "qa", "signature": "question -> answer"}], lm=lm)
    r = srv.client.post("/v1/programs/broken", json={"x": "y"})
    assert r.status_code == 500
    text = r.text
    assert SECRET not in text and "Traceback" not in text and "boom" not in text
    assert r.json()["error"]["type"] == "InternalError" and r.json()["request_id"]
    fake_lm.script([Fault.status(500, body={"error": {"message": f"provider says {SECRET}"}})])
    r = srv.client.post("/v1/programs/qa", json={"question": "q"})
    assert r.status_code == 502 and SECRET not in r.text and "Traceback" not in r.text
    assert srv.client.post("/v1/programs/qa", json={"question": "q"}).status_code == 200


def test_health_ready_and_page(serve: Any, lm: Any) -> None:
    srv = serve(programs=[{"name": "qa", "signature": "question -> answer"}], lm=lm)
    assert srv.client.get("/healthz").json() == {"status": "ok"}
    assert srv.client.get("/readyz").json()["status"] == "ready"
    page = srv.client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "dspex serve" in page.text


def test_auth_on(serve: Any, lm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPEX_TEST_SERVE_KEY", "k-123")
    srv = serve(programs=[{"name": "qa", "signature": "question -> answer"}], lm=lm, api_key_env="DSPEX_TEST_SERVE_KEY")
    c = srv.client
    for method, path, kw in (("POST", "/v1/programs/qa", {"json": {"question": "q"}}), ("GET", "/metrics", {}),
                             ("GET", "/openapi.json", {}), ("GET", "/v1/endpoints", {}),
                             ("POST", "/v1/programs/qa/stream", {"json": {"question": "q"}})):
        r = c.request(method, path, **kw)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Bearer") and "k-123" not in r.text
        assert c.request(method, path, headers={"authorization": "Bearer wrong"}, **kw).status_code == 401
    ok = c.post("/v1/programs/qa", json={"question": "q"}, headers={"authorization": "Bearer k-123"})
    assert ok.status_code == 200
    assert c.post("/v1/programs/qa", json={"question": "q"}, headers={"x-api-key": "k-123"}).status_code == 200
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200  # probes stay open
    doc = c.get("/openapi.json", headers={"x-api-key": "k-123"}).json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_auth_off_on_loopback(serve: Any, lm: Any) -> None:
    srv = serve(programs=[{"name": "qa", "signature": "question -> answer"}], lm=lm)
    assert srv.client.post("/v1/programs/qa", json={"question": "q"}).status_code == 200
    assert "securitySchemes" not in srv.client.get("/openapi.json").json()["components"]


def test_refuses_non_loopback_without_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from dspex.serve import load_serve_config

    progs = [{"name": "qa", "signature": "question -> answer"}]
    with pytest.raises(ConfigError, match="not loopback"):
        load_serve_config(None, host="0.0.0.0", programs=progs).check()
    monkeypatch.delenv("DSPEX_TEST_SERVE_KEY", raising=False)
    with pytest.raises(ConfigError, match="empty or unset"):
        load_serve_config(None, host="0.0.0.0", api_key_env="DSPEX_TEST_SERVE_KEY", programs=progs).check()
    monkeypatch.setenv("DSPEX_TEST_SERVE_KEY", "secret")
    load_serve_config(None, host="0.0.0.0", api_key_env="DSPEX_TEST_SERVE_KEY", programs=progs).check()
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        load_serve_config(None, host=host, programs=progs).check()


def test_config_errors_say_what_to_do(tmp_path: Path) -> None:
    from dspex.serve import load_serve_config

    with pytest.raises(ConfigError, match="needs signature"):
        load_serve_config(None, programs=[{"name": "qa", "state": "x.json"}])
    with pytest.raises(ConfigError, match="not usable in a URL"):
        load_serve_config(None, programs=[{"name": "a b", "signature": "a -> b"}])
    with pytest.raises(ConfigError, match="unknown key"):
        load_serve_config(None, programs=[{"name": "a", "signature": "a -> b", "sgnature": 1}])
    with pytest.raises(ConfigError, match="two endpoints"):
        load_serve_config(None, programs=[{"name": "a", "signature": "a -> b"}] * 2).check()
    from dspex.serve import Service

    with pytest.raises(ConfigError, match="named like pool call options"):
        Service(load_serve_config(None, programs=[{"name": "h", "handler": "echo", "signature": "timeout -> y"}]))
    with pytest.raises(ConfigError, match=r"cannot read program state|does not exist"):
        Service(load_serve_config(None, programs=[{"name": "s", "signature": "a -> b", "state": str(tmp_path / "no.json")}]))
    with pytest.raises(ConfigError, match="cannot import"):
        Service(load_serve_config(None, programs=[{"name": "o", "object": "no_such_mod_xyz:f"}]))
    with pytest.raises(ConfigError, match="nothing to serve"):
        load_serve_config(None).check()
    f = tmp_path / "serve.toml"
    f.write_text('[serve]\nport = 0\n[[serve.programs]]\nname = "qa"\nsignature = "q -> a"\nstate = "qa.json"\n')
    cfg = load_serve_config(f)
    assert cfg.programs[0].state == str(tmp_path / "qa.json")  # relative to the file
    (tmp_path / "bad.toml").write_text("[serve\n")
    with pytest.raises(ConfigError, match="does not parse"):
        load_serve_config(tmp_path / "bad.toml")


def test_metrics_include_serve_router_and_pool(serve: Any, lm: Any) -> None:
    srv = serve(programs=[{"name": "qa", "signature": "question -> answer"},
                          {"name": "echo", "handler": "echo", "pool": "t", "signature": "x -> echoed"}],
                pools={"t": {"size": 1, "handlers": ["dspex.testing.handlers"]}}, lm=lm)
    assert srv.client.post("/v1/programs/qa", json={"question": "q"}).status_code == 200
    assert srv.client.post("/v1/programs/echo", json={"x": "hi"}).json()["outputs"] == {"echoed": {"args": [], "kwargs": {"x": "hi"}}}
    srv.client.post("/v1/programs/qa", json={})
    text = srv.client.get("/metrics").text
    assert 'dspex_serve_requests_total{endpoint="qa",status="200"} 1.0' in text
    assert 'dspex_serve_requests_total{endpoint="qa",status="422"} 1.0' in text
    assert 'dspex_pool_calls_total{pool="t"}' in text and 'dspex_pool_workers{pool="t",state=' in text
    assert "dspex_router_calls_total" in text and "dspex_serve_in_flight 0.0" in text
    assert "dspex_serve_ready 1.0" in text
    assert 'dspex_serve_request_seconds_count{endpoint="qa"} 1.0' in text  # 422s are not timed
    assert 'dspex_serve_request_seconds_bucket{endpoint="qa",le="+Inf"} 1.0' in text


def test_json_roundtrip_of_unicode(serve: Any, lm: Any, fake_lm: Any) -> None:
    srv = serve(programs=[{"name": "qa", "signature": "question -> answer"}], lm=lm)
    fake_lm.script(["[[ ## answer ## ]]\nJa — ✓ 日本\n\n[[ ## completed ## ]]"])
    r = srv.client.post("/v1/programs/qa", content=json.dumps({"question": "ünï"}).encode(),
                        headers={"content-type": "application/json; charset=utf-8"})
    assert r.json()["outputs"]["answer"] == "Ja — ✓ 日本"
    assert isinstance(r, httpx.Response)
