"""The server's RAM prompt cache stays within its byte cap and still returns the same tokens.

llama-cpp-python counts only an entry's KV bytes while each entry also copies the
logits rows (311 MB with Qwen2.5's vocabulary): unpatched, the embedded server was
OOM-killed at 23.7 GB during a MIPROv2 run. ``_server.bounded_prompt_cache`` keeps one
row (restored states are decoded again before sampling) and counts every byte.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

_SCRIPT = textwrap.dedent(
    """
    import json
    from dspex.local import _server, model_path

    _server.disable_extra_buffer_types()
    from llama_cpp import Llama, LlamaRAMCache

    llm = Llama(model_path=str(model_path()), n_ctx=1024, n_threads=1, verbose=False)
    prompts = [f"Question {i}: name a planet of the Solar System.\\nAnswer:" for i in range(5)]

    def run():
        return [llm.create_completion(p, max_tokens=8, temperature=0.0)["choices"][0]["text"] for p in prompts]

    plain = run()
    rows_before = len(llm.save_state().scores)
    _server.bounded_prompt_cache()
    state = llm.save_state()
    cap = 3 * _server.entry_bytes(state)
    cache = LlamaRAMCache(capacity_bytes=cap)
    llm.set_cache(cache)
    cached = run()   # fills the cache past its cap
    again = run()    # prompts found in the cache resume from a restored state
    print(json.dumps({"plain": plain, "cached": cached, "again": again, "rows_before": rows_before,
                      "rows_after": len(state.scores), "cap": cap, "size": cache.cache_size,
                      "real": sum(s.llama_state_size + s.scores.nbytes + s.input_ids.nbytes
                                  for s in cache.cache_state.values()),
                      "entries": len(cache.cache_state)}))
    """
)


def test_prompt_cache_is_bounded_and_exact() -> None:
    pytest.importorskip("llama_cpp")
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["rows_before"] > 1 and r["rows_after"] == 1  # the logits copy shrank to the one row read
    assert r["size"] == r["real"] <= r["cap"] and r["entries"] >= 1
    assert r["cached"] == r["plain"] and r["again"] == r["plain"]
