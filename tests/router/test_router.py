"""The router: explain, auto rules, overrides from config/context, no-DSPy installs, stats."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pydantic
import pytest

import dspex
from dspex import router

pytestmark = pytest.mark.timeout(60)


class Planet(pydantic.BaseModel):
    name: str
    moons: int


def test_explain_auto_rules() -> None:
    d = dspex.explain("predict", "question -> answer: int")
    assert d.impl == "native" and d.requested == "auto"
    assert "supports this request" in d.reason and "dspy" in d.alternatives
    text = str(d)
    assert text.startswith("predict -> native") and "why:" in text and "requested: auto" in text

    xml = dspex.explain("predict", "question -> answer", adapter="xml")
    assert xml.impl == "dspy" and "adapter 'xml' has no native implementation" in xml.reason

    sig = dspex.signature("question -> answer").append("planet", dspex.OutputField(), Planet)
    custom = dspex.explain("predict", sig)
    assert custom.impl == "dspy" and "field 'planet' has type" in custom.reason

    opts = dspex.explain("chain_of_thought", "question -> answer", rationale_field="why")
    assert opts.impl == "dspy" and "rationale_field" in opts.reason

    for op in ("react", "program_of_thought", "best_of_n", "refine", "optimize"):
        e = dspex.explain(op, "question -> answer")
        assert e.impl == "dspy" and f"no native implementation of {op}" in e.alternatives["native"]
    assert dspex.explain("ReAct", "q -> a").op == "react"  # DSPy names work too


def test_forced_impl_that_cannot_run() -> None:
    with pytest.raises(dspex.ImplementationUnavailable, match="cannot run natively"):
        dspex.react("question -> answer", tools=[], impl="native")
    e = dspex.explain("react", "question -> answer", impl="native")
    assert e.impl == "unavailable" and "react cannot run natively" in e.reason
    with pytest.raises(dspex.ImplementationUnavailable, match="xml"):
        dspex.predict("question -> answer", {"question": "?"}, impl="native", adapter="xml")
    with pytest.raises(dspex.ImplementationUnavailable, match="no DSPy implementation of signature"):
        router.decide("signature", impl="dspy")
    with pytest.raises(dspex.ConfigError):
        dspex.explain("predict", "q -> a", impl="fastest")


def test_overrides_context_and_config(config_file) -> None:
    config_file('[router]\nimpl = "auto"\n[router.ops]\npredict = "dspy"\n')
    d = dspex.explain("predict", "q -> a")
    assert d.impl == "dspy" and d.source == "config [router.ops] predict"
    assert dspex.explain("chain_of_thought", "q -> a").impl == "native"  # other ops keep [router] impl
    with dspex.context(impl="native"):
        d = dspex.explain("predict", "q -> a")
        assert d.impl == "native" and d.source == "dspex.context(impl=...)"
        d = dspex.explain("predict", "q -> a", impl="dspy")  # the call's impl= wins
        assert d.impl == "dspy" and d.source == "the call's impl="
    config_file('[router]\nimpl = "dspy"\n')
    assert dspex.explain("chain_of_thought", "q -> a").impl == "dspy"
    assert dspex.explain("compile_signature", "q -> a").impl == "unavailable"  # native-only op, forced dspy


def test_auto_routes_unsupported_types_to_dspy_with_same_types(fake_lm, router_pool) -> None:
    """A pydantic output goes to DSPy under auto; the value comes back as the model, not a dict."""
    sig = dspex.signature("question -> answer").append("planet", dspex.OutputField(), Planet)
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url, cache=False)
    fake_lm.script(['[[ ## answer ## ]]\nMars\n\n[[ ## planet ## ]]\n{"name": "Mars", "moons": 2}\n\n[[ ## completed ## ]]'])
    with dspex.context(pools={"dspy": router_pool}):
        pred = dspex.predict(sig, {"question": "Red planet?"}, lm=lm)
    assert isinstance(pred.planet, Planet) and pred.planet.moons == 2
    assert len(fake_lm.requests) == 1


def test_router_stats(fake_lm, router_pool) -> None:
    router.reset_stats()
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url, cache=False)
    for _ in range(3):
        dspex.predict("question -> answer", {"question": "?"}, lm=lm)
    with dspex.context(pools={"dspy": router_pool}):
        dspex.predict("question -> answer", {"question": "?"}, lm=lm, impl="dspy")
    with pytest.raises(dspex.ImplementationUnavailable):
        dspex.predict("question -> answer", {"question": "?"}, impl="native", adapter="xml")  # never ran: not counted
    router.record("react", "dspy", 2.0)
    router.record("react", "dspy", 4.0, ok=False)
    router.record("optimize", "dspy", 1.0)
    st = dspex.router_stats()
    rows = {(r["op"], r["impl"]): r for r in st.rows}
    assert rows[("predict", "native")]["calls"] == 3 and rows[("predict", "dspy")]["calls"] == 1
    react = rows[("react", "dspy")]
    assert react["calls"] == 2 and react["errors"] == 1 and react["total_s"] == pytest.approx(6.0)
    assert react["mean_ms"] == pytest.approx(3000.0)
    assert 1500 <= react["p50_ms"] <= 3000 and 3000 <= react["p99_ms"] <= 4000
    for r in st.rows:
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"] + 1e-9
    ranking = [c["op"] for c in st.candidates]
    assert ranking[:2] == ["react", "optimize"] and "predict" in ranking
    assert st.candidates[0]["native_exists"] is False
    assert "candidates for native" in str(st)
    assert st["candidates_for_native"] == st.candidates


NO_DSPY = textwrap.dedent(
    """
    import json, sys
    out = {}
    try:
        import dspy  # noqa
        out["dspy_import"] = "ok"
    except ImportError as exc:
        out["dspy_import"] = "ImportError"
    import dspex
    from dspex.testing import FakeLMServer
    with FakeLMServer() as server:
        lm = dspex.LM("openai/fake", api_base=server.base_url, cache=False)
        pred = dspex.predict("question -> answer: int", {"question": "6*7?"}, lm=lm)
        out["native_answer_type"] = type(pred.answer).__name__
        cot = dspex.chain_of_thought("question -> answer", lm=lm)
        out["cot"] = type(cot).__name__
        out["bm25"] = dspex.retrieve("volcano", k=1)[0]["pid"]
        errors = {}
        for name, fn in {
            "react": lambda: dspex.react("question -> answer", tools=[]),
            "cot_dspy": lambda: dspex.chain_of_thought("question -> answer", impl="dspy"),
            "xml": lambda: dspex.predict("question -> answer", {"question": "?"}, adapter="xml", lm=lm),
            "optimize": lambda: dspex.optimize("q -> a", [], metric=lambda e, p: 1.0),
            "dense": lambda: dspex.retrieve("x", source="dense:solar_system"),
        }.items():
            try:
                fn()
                errors[name] = None
            except dspex.ImplementationUnavailable as exc:
                errors[name] = str(exc)
        out["errors"] = errors
        out["explain_react"] = dspex.explain("react", "q -> a").impl
    out["dspy_loaded"] = any(m == "dspy" or m.startswith("dspy.") for m, v in sys.modules.items() if v is not None)
    print(json.dumps(out))
    """
)


def test_without_dspy_installed(tmp_path) -> None:
    """A subprocess where `import dspy` fails: native calls work; DSPy-only ones say what to install."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['dspy'] = None  # import dspy -> ImportError\n")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("DSPEX_CONFIG",)}
    env["PYTHONPATH"] = str(shim)
    env["DSPEX_NO_LOCAL_MODEL"] = "1"
    proc = subprocess.run([sys.executable, "-c", NO_DSPY], capture_output=True, text=True, env=env, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dspy_import"] == "ImportError"
    assert out["native_answer_type"] == "int" and out["cot"] == "ChainOfThought" and isinstance(out["bm25"], int)
    for name, msg in out["errors"].items():
        assert msg is not None, f"{name} should need DSPy"
        assert "pip install 'dspex[dspy]'" in msg, (name, msg)
    assert out["explain_react"] == "unavailable"
    assert out["dspy_loaded"] is False
