"""Schemathesis against the service's own OpenAPI document: generated valid and invalid
requests for every operation; no 5xx, and valid requests get answers that fit the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from dspex.pipeline import Pipeline, native  # noqa: E402

from . import programs_for_tests as progs  # noqa: E402

_SIG = ("context: list[str], k: int, ratio: float, flag: bool, mode: Literal['a', 'b'], "
        "meta: dict[str, int], note: Optional[str] -> answer: int, tags: list[str]")


@pytest.mark.timeout(280)
def test_no_server_errors_for_generated_requests(serve: Any, lm: Any, tmp_path: Path) -> None:
    Pipeline([native(progs.shout, writes="loud"), native(progs.count_words, writes="n")],
             inputs={"question": str}).save(tmp_path / "p.yaml")
    srv = serve(programs=[{"name": "typed", "signature": _SIG},
                          {"name": "add", "object": "serve.programs_for_tests:add"},
                          {"name": "echo", "handler": "echo", "pool": "w", "signature": "x: int, y: list[str] -> echoed"}],
                pools={"w": {"size": 1, "handlers": ["dspex.testing.handlers"]}},
                pipelines=[{"name": "words", "path": str(tmp_path / "p.yaml"),
                            "allow": ["serve.programs_for_tests:*"]}],
                lm=lm, max_body_bytes=20_000)
    doc = srv.client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) == 4 * 2 + 4  # call + stream per endpoint, and the four GETs
    seen: dict[str, set[int]] = {}
    def run(op: Any, mode: GenerationMode) -> None:
        @settings(max_examples=15, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            resp = case.call(base_url=srv.url, timeout=30)
            seen.setdefault(op.label, set()).add(resp.status_code)
            assert resp.status_code < 500, (op.label, resp.status_code, resp.text[:300])
            if mode is GenerationMode.POSITIVE:
                case.validate_response(resp, checks=[not_a_server_error, status_code_conformance,
                                                     content_type_conformance, response_schema_conformance])

        check()

    for op in ops:
        run(op, GenerationMode.POSITIVE)
        if op.method.upper() == "POST":  # the GETs take no input: nothing to make invalid
            run(op, GenerationMode.NEGATIVE)
    assert 200 in seen["POST /v1/programs/typed"] and 422 in seen["POST /v1/programs/typed"] | seen.get(
        "POST /v1/programs/typed/stream", set()), seen
