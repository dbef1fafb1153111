"""The same saved program served natively and by the real DSPy 3.4.1 in a worker sends
the LM the same messages and answers the same outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import dspex

pytest.importorskip("dspy")


@pytest.mark.dspy
@pytest.mark.timeout(180)
def test_native_and_dspy_endpoints_agree(serve: Any, lm: Any, fake_lm: Any, tmp_path: Path) -> None:
    p = dspex.Predict("question -> answer: int", instructions="Answer with a number.")
    p.demos = [dspex.Example(question="1+1?", answer=2)]
    p.save(tmp_path / "qa.json")
    common = {"signature": "question -> answer: int", "state": str(tmp_path / "qa.json")}
    srv = serve(programs=[{"name": "native", **common}, {"name": "dspy", "impl": "dspy", "pool": "dspy", **common}],
                pools={"dspy": {"size": 1, "env": {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "DSPEX_DSPY_CACHE": "off"}}},
                lm=lm)
    reply = "[[ ## answer ## ]]\n5\n\n[[ ## completed ## ]]"
    outs, sent = [], []
    for name in ("native", "dspy"):
        fake_lm.clear_requests()
        fake_lm.script([reply])
        r = srv.client.post(f"/v1/programs/{name}", json={"question": "2+3?"}, headers={"X-Dspex-Session": "s1"})
        assert r.status_code == 200, r.text
        outs.append(r.json()["outputs"])
        sent.append(fake_lm.requests[-1]["json"]["messages"])
    assert outs[0] == outs[1] == {"answer": 5}
    assert sent[0] == sent[1]
    trace = srv.client.post("/v1/programs/dspy", json={"question": "x"}).json()["trace"]
    assert trace[0]["where"] == "dspy" and trace[0]["pid"] != __import__("os").getpid()
