"""The server's greedy-first grammar sampler picks exactly the plain grammar sampler's tokens."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

_SCRIPT = textwrap.dedent(
    """
    import json, time
    from dspex.local import _server, model_path
    from dspex.native.adapters import ChatAdapter
    from dspex.native.grammar import gbnf_for
    from dspex.native.signature import signature

    _server.disable_extra_buffer_types()
    from llama_cpp import Llama, LlamaGrammar

    llm = Llama(model_path=str(model_path()), n_ctx=1024, n_threads=1, verbose=False)
    cases = [
        ("question -> reasoning, answer: int", {"question": "What is 3 + 4?"}),
        ("topic -> keywords: list[str]", {"topic": "cooking"}),
        ("text -> sentiment: Literal['positive', 'negative']", {"text": "Great food!"}),
    ]

    def run():
        out, dt = [], 0.0
        for spec, inputs in cases:
            sig = signature(spec)
            messages = ChatAdapter().format(sig, demos=[], inputs=inputs)
            grammar = LlamaGrammar.from_string(gbnf_for(sig, "chat", max_tokens=48), verbose=False)
            t0 = time.perf_counter()
            r = llm.create_chat_completion(messages, grammar=grammar, temperature=0.0, max_tokens=48)
            dt += time.perf_counter() - t0
            out.append(r["choices"][0]["message"]["content"])
        return out, dt

    plain, _ = run()
    _server.fast_greedy_grammar()
    assert Llama._init_sampler.__qualname__.endswith("init_sampler") and Llama._init_sampler.__module__ == "dspex.local._server"
    fast, _ = run()
    print(json.dumps({"plain": plain, "fast": fast}))
    """
)


def test_fast_greedy_grammar_is_exact() -> None:
    pytest.importorskip("llama_cpp")
    import json

    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["fast"] == result["plain"]
    assert all(text.startswith("[[ ## ") for text in result["plain"])
