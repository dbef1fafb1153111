"""The embedded model (default Qwen2.5-Coder-0.5B via llama.cpp): startup, speed, and parse failures
with and without dspex's grammar, side by side with DSPy 3.4.1 on the same server.

    python bench/bench_local.py                 # 35 prompts over 7 signatures
    python bench/bench_local.py --n 14 --no-dspy --out bench/results/local.md
    python bench/bench_local.py --model smollm2-135m    # or qwen2.5-1.5b

Rows (same prompts, same server, temperature 0, same max_tokens):
  dspex + grammar   ChatAdapter prompt, GBNF from gbnf_for(): one call per prompt
  dspex, no grammar ChatAdapter prompt, free generation: one call per prompt
  DSPy 3.4.1        dspy.Predict / dspy.ChainOfThought: ChatAdapter, then its one
                    JSONAdapter retry on a parse error (what DSPy does for local models)
A "parse failure" is a reply the adapter cannot parse into every output field with
its type (for DSPy: an AdapterParseError after its fallback).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

SUITE: list[tuple[str, bool, list[dict[str, str]]]] = [
    # (signature, chain_of_thought, inputs)
    (
        "question -> answer",
        False,
        [
            {"question": "What is the capital of France?"},
            {"question": "Who wrote Romeo and Juliet?"},
            {"question": "What color is the sky on a clear day?"},
            {"question": "What is the largest planet in the solar system?"},
            {"question": "What language is spoken in Brazil?"},
        ],
    ),
    (
        "question -> answer: int",
        False,
        [
            {"question": "What is 2 + 3?"},
            {"question": "How many legs does a spider have?"},
            {"question": "What is 10 minus 4?"},
            {"question": "How many days are in a week?"},
            {"question": "What is 6 times 7?"},
        ],
    ),
    (
        "question -> is_true: bool",
        False,
        [
            {"question": "Is the sun a star?"},
            {"question": "Is water dry?"},
            {"question": "Do fish live in water?"},
            {"question": "Is 7 an even number?"},
            {"question": "Is Paris in France?"},
        ],
    ),
    (
        "text -> sentiment: Literal['positive', 'negative', 'neutral']",
        False,
        [
            {"text": "I love this movie, it was wonderful!"},
            {"text": "The food was cold and the service was terrible."},
            {"text": "The meeting is at 3pm."},
            {"text": "What a fantastic day at the beach."},
            {"text": "I am very disappointed with this product."},
        ],
    ),
    (
        "topic -> keywords: list[str]",
        False,
        [
            {"topic": "cooking pasta"},
            {"topic": "training for a marathon"},
            {"topic": "planting a vegetable garden"},
            {"topic": "learning to play guitar"},
            {"topic": "saving money"},
        ],
    ),
    (
        "context, question -> answer, confidence: float",
        False,
        [
            {"context": "The Eiffel Tower is in Paris.", "question": "Where is the Eiffel Tower?"},
            {"context": "Alice is 30 years old.", "question": "How old is Alice?"},
            {"context": "The meeting moved to Friday.", "question": "When is the meeting?"},
            {"context": "Bob's favourite fruit is mango.", "question": "What fruit does Bob like?"},
            {"context": "The store closes at 9pm.", "question": "When does the store close?"},
        ],
    ),
    (
        "question -> answer: int",
        True,
        [
            {"question": "Tom has 3 apples and eats one. How many are left?"},
            {"question": "A box has 4 red and 5 blue balls. How many balls in total?"},
            {"question": "Sara had 10 dollars and spent 3. How much is left?"},
            {"question": "There are 2 cats with 4 legs each. How many legs?"},
            {"question": "A train leaves at 2pm and arrives at 5pm. How many hours?"},
        ],
    ),
]


def _prompts(n: int) -> list[tuple[str, bool, dict[str, str]]]:
    rows = [(spec, cot, inp) for i in range(5) for spec, cot, inputs in SUITE for inp in inputs[i : i + 1]]
    return rows[:n]


def _dspex_rows(
    lm: Any, prompts: list[tuple[str, bool, dict[str, str]]], max_tokens: int, grammar: bool
) -> dict[str, Any]:
    from dspex.errors import ParseError
    from dspex.native.adapters import ChatAdapter
    from dspex.native.grammar import gbnf_for
    from dspex.native.signature import signature

    adapter = ChatAdapter()
    fails, lat, toks, examples = 0, [], [], []
    for spec, cot, inputs in prompts:
        sig = signature(spec)
        if cot:
            sig = sig.with_reasoning()
        messages = adapter.format(sig, demos=[], inputs=inputs)
        kw: dict[str, Any] = {"max_tokens": max_tokens, "cache": False}
        if grammar:
            kw["grammar"] = gbnf_for(sig, adapter, max_tokens=max_tokens)
        t0 = time.perf_counter()
        completion = lm.complete(messages, **kw)
        lat.append(time.perf_counter() - t0)
        toks.append(int(completion.usage.get("completion_tokens", 0)))
        try:
            adapter.parse(sig, completion.text)
        except ParseError:
            fails += 1
            if len(examples) < 2:
                examples.append(completion.text[:160])
    return {
        "fails": fails,
        "n": len(prompts),
        "lat": lat,
        "toks": toks,
        "examples": examples,
        "calls": len(prompts),
    }


def _dspy_rows(
    url: str, prompts: list[tuple[str, bool, dict[str, str]]], max_tokens: int, alias: str
) -> dict[str, Any]:
    import dspy
    from dspy.utils.exceptions import AdapterParseError

    lm = dspy.LM(
        f"openai/{alias}",
        api_base=url,
        api_key="local",
        temperature=0.0,
        max_tokens=max_tokens,
        cache=False,
        extra_body={"max_tokens": max_tokens},  # llama.cpp ignores max_completion_tokens
    )
    fails, lat, toks, examples = 0, [], [], []
    calls = 0
    with dspy.context(lm=lm):
        for spec, cot, inputs in prompts:
            module = dspy.ChainOfThought(spec) if cot else dspy.Predict(spec)
            before = len(lm.history)
            t0 = time.perf_counter()
            try:
                module(**inputs)
            except AdapterParseError as exc:
                fails += 1
                if len(examples) < 2:
                    examples.append(str(getattr(exc, "lm_response", ""))[:160])
            lat.append(time.perf_counter() - t0)
            new = lm.history[before:]
            calls += len(new)
            toks.append(sum(int((h.get("usage") or {}).get("completion_tokens", 0)) for h in new))
    return {"fails": fails, "n": len(prompts), "lat": lat, "toks": toks, "examples": examples, "calls": calls}


def _speed(url: str) -> dict[str, float]:
    import httpx

    def call(
        messages: list[dict[str, str]], max_tokens: int, grammar: str | None = None
    ) -> tuple[float, dict[str, int]]:
        body: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
        if grammar:
            body["grammar"] = grammar
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/chat/completions", json=body, timeout=300).json()
        return time.perf_counter() - t0, r["usage"]

    from dspex.native.grammar import gbnf_for

    story = [{"role": "user", "content": "Write a long story about a cat who learns to fly."}]
    call(story, 4)  # warm up
    dt, usage = call(story, 96)
    gen = usage["completion_tokens"] / dt
    g = gbnf_for("question -> answer", "chat", max_chars=2000)
    dt_g, usage_g = call(story, 96, g)
    gen_g = usage_g["completion_tokens"] / dt_g
    long_prompt = [
        {"role": "user", "content": "Summarize: " + "The quick brown fox jumps over the lazy dog. " * 30}
    ]
    dt_p, usage_p = call(long_prompt, 1)
    return {
        "gen_tok_s": gen,
        "gen_tok_s_grammar": gen_g,
        "prompt_tok_s": usage_p["prompt_tokens"] / dt_p,
        "prompt_tokens": usage_p["prompt_tokens"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=35, help="prompts (cycled over the 7 signatures)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--no-dspy", action="store_true", help="skip the DSPy 3.4.1 row")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    ap.add_argument("--model", default=None, help="embedded model name (default: the default model)")
    args = ap.parse_args()

    from dspex.local import LocalModelService
    from dspex.native.lm import LM

    state = tempfile.mkdtemp(prefix="dspex-bench-local-")
    os.environ["DSPEX_LOCAL_STATE_DIR"] = state  # our own server, never a developer's
    os.environ.pop("DSPEX_LOCAL_BASE_URL", None)
    startups = []
    svc = LocalModelService(model_path=args.model)
    for _ in range(2):
        t0 = time.perf_counter()
        svc.ensure_running()
        startups.append(time.perf_counter() - t0)
        if len(startups) < 2:
            svc.stop()
    url = svc.ensure_running()
    print(f"server {url}  cold start to ready: {', '.join(f'{s:.2f}s' for s in startups)}", flush=True)
    try:
        speed = _speed(url)
        print(
            f"generation {speed['gen_tok_s']:.1f} tok/s (with a grammar {speed['gen_tok_s_grammar']:.1f}); "
            f"prompt {speed['prompt_tok_s']:.0f} tok/s",
            flush=True,
        )
        lm = LM(f"openai/{svc.alias}", api_base=url, temperature=0.0, grammar=True, num_retries=0)
        prompts = _prompts(args.n)
        rows: list[tuple[str, dict[str, Any]]] = []
        print(f"{len(prompts)} prompts, max_tokens={args.max_tokens}", flush=True)
        rows.append(("dspex + grammar", _dspex_rows(lm, prompts, args.max_tokens, grammar=True)))
        print("  dspex + grammar done", flush=True)
        rows.append(("dspex, no grammar", _dspex_rows(lm, prompts, args.max_tokens, grammar=False)))
        print("  dspex, no grammar done", flush=True)
        if not args.no_dspy:
            rows.append(("DSPy 3.4.1 (Chat → JSON fallback)", _dspy_rows(url, prompts, args.max_tokens, svc.alias)))
            print("  DSPy done", flush=True)
    finally:
        svc.stop()

    base_fail = rows[1][1]["fails"] / rows[1][1]["n"]
    lines = [
        f"Embedded model: {svc.alias} ({svc.model_path.name}) via llama-cpp-python 0.3.36 server, "
        f"{svc.n_threads} generation thread(s), {os.cpu_count()} cores (shared machine).",
        "",
        "| what | value |",
        "|---|---|",
        f"| cold start to ready (spawn → GET /v1/models ok) | {' / '.join(f'{s:.2f} s' for s in startups)} |",
        f"| generation speed, free / under a grammar | {speed['gen_tok_s']:.1f} / {speed['gen_tok_s_grammar']:.1f} tok/s |",
        f"| prompt processing ({speed['prompt_tokens']} tokens) | {speed['prompt_tok_s']:.0f} tok/s |",
        "",
        f"Parse failures over {len(prompts)} prompts (7 signatures: str, int, bool, Literal, list[str], "
        f"two outputs incl. float, ChainOfThought reasoning+int), temperature 0, max_tokens={args.max_tokens}:",
        "",
        "| path | parse failures | failure rate | vs no grammar | LM calls | mean latency / prompt | mean completion tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        rate = r["fails"] / r["n"]
        ratio = "—" if base_fail == 0 else f"{rate / base_fail:.2f}×"
        lines.append(
            f"| {name} | {r['fails']}/{r['n']} | {rate:.0%} | {ratio} | {r['calls']} | "
            f"{statistics.mean(r['lat']):.2f} s | {statistics.mean(r['toks']):.0f} |"
        )
    lines.append("")
    for name, r in rows:
        for ex in r["examples"]:
            lines.append(f"- {name} failure example: `{ex!r}`".replace("``", "`"))
    text = "\n".join(lines)
    print()
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = "python bench/bench_local.py " + " ".join(sys.argv[1:])
        args.out.write_text(
            f"# Embedded local model: grammar-constrained output\n\nCommand: `{cmd.strip()}`\n\n{text}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
