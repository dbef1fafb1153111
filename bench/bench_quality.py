"""Answer quality of the embedded default model on the shipped corpus, three ways in one run.

    python bench/bench_quality.py                      # all 34 questions, all systems
    python bench/bench_quality.py --limit 5            # a quick look
    python bench/bench_quality.py --model qwen2.5-1.5b --systems main

Systems (same server, same model, temperature 0, same questions):
  main    the main job, examples/research_assistant.py (plan -> refine in DSPy ->
          BM25 | dense | ColBERTv2 -> merge -> DSPy ChainOfThought synthesis with
          the shipped optimized state; grammar-constrained in native and workers)
  native  dspex ChainOfThought("question, context: list[str] -> answer") in process,
          context = the main job's BM25 passages; grammar-constrained
  dspy    DSPy 3.4.1 dspy.ChainOfThought, same signature and context, in process (no
          grammar: what DSPy does on its own against the same server)
  main-unoptimized   the main job with the synthesis state's MIPROv2 choices undone
          (no demos, DSPy's default instructions): what the optimization bought
Scores: right = the answer contains a gold fact; clean = no template echo ({answer},
[[ ## ... ]]), no code (``` fences, def/import lines), no empty answer; the headline
is right AND clean; concise = also short or whole sentences (research_assistant.concise,
the MIPROv2 metric's second half). Parse failures: the adapter could not read the reply (DSPy:
AdapterParseError after its JSON fallback). Also printed: retrieval recall@k of
BM25, hashing and the e5 neural embedder on these questions and on paraphrases.

The machine is shared: s/question depends on what else runs (load printed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("DSPEX_DSPY_CACHE", "off")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))

from quality_questions import PARAPHRASES, QUESTIONS  # noqa: E402

_ECHO = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}|\$\{|\[\[ ##")
_CODE = re.compile(r"```|^\s*(def |import |class |print\()", re.M)


def judge(answer: Any, gold: list[str]) -> dict[str, bool]:
    from research_assistant import concise

    text = "" if answer is None else str(answer)
    echo = bool(_ECHO.search(text))
    code = bool(_CODE.search(text))
    right = any(g.lower() in text.lower() for g in gold)
    clean = bool(text.strip()) and not echo and not code
    return {"right": right, "clean": clean, "echo": echo, "code": code, "ok": right and clean,
            "concise": right and clean and concise(text)}


def unoptimized_program(shipped: Path, folder: Path) -> Path:
    """The shipped synthesis state with MIPROv2's choices undone: no demos, DSPy's default instructions."""
    state = json.loads(shipped.read_text())
    for predictor in state.values():
        predictor["demos"] = []
        predictor["signature"]["instructions"] = "Given the fields `question`, `context`, produce the fields `answer`."
    path = folder / "unoptimized_program.json"
    path.write_text(json.dumps(state, indent=1))
    return path


def recall_table(k_values: tuple[int, ...] = (3, 5)) -> list[str]:
    from dspex.bridge import _embedders
    from dspex.bridge._retrieval import embed_search
    from dspex.native.retrieve import BM25

    bm25 = BM25.from_path("solar_system")
    kinds = ["bm25", "hash"] + (["e5"] if _embedders.available("e5") else [])
    lines = ["| retriever | " + " | ".join(f"recall@{k} questions | recall@{k} paraphrases" for k in k_values) + " |"]
    lines.append("|---" * (1 + 2 * len(k_values)) + "|")
    for kind in kinds:
        cells = []
        for k in k_values:
            for qs in (QUESTIONS, PARAPHRASES):
                hit = 0
                for q in qs:
                    hits = bm25.search(str(q["question"]), k) if kind == "bm25" else embed_search(
                        str(q["question"]), k, embedder=kind
                    )
                    hit += any(h["pid"] in q["pids"] for h in hits)  # type: ignore[operator]
                cells.append(f"{hit / len(qs):.2f}")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines


def run_main(questions: list[dict[str, Any]], lm: Any, program: Path) -> list[tuple[Any, float, bool]]:
    import research_assistant as ra
    from dspex.native.colbert_server import ColBERTv2Server

    out = []
    with ColBERTv2Server("solar_system") as colbert:
        job = ra.build(colbert.url, program)
        for q in questions:
            t0 = time.monotonic()
            try:
                result = job.run(question=q["question"], lm=lm)
                answer, failed = result["answer"], False
            except Exception as exc:  # a failed run counts as a parse failure with no answer
                answer, failed = f"<error {type(exc).__name__}: {exc}>", True
            out.append((answer, time.monotonic() - t0, failed))
            _progress("main", len(out), len(questions), out[-1])
    return out


def _progress(system: str, i: int, n: int, result: tuple[Any, float, bool]) -> None:
    answer, seconds, failed = result
    print(f"    {system} {i}/{n} {seconds:5.1f} s {'FAIL ' if failed else ''}{str(answer)[:70]!r}", flush=True)


def run_native(questions: list[dict[str, Any]], lm: Any) -> list[tuple[Any, float, bool]]:
    import research_assistant as ra
    from dspex.errors import ParseError
    from dspex.native.predict import ChainOfThought

    cot = ChainOfThought(ra.SYNTHESIS)
    name = "native"
    out: list[tuple[Any, float, bool]] = []
    for q in questions:
        context = ra.bm25_search(q["question"], [])
        t0 = time.monotonic()
        try:
            answer, failed = cot(question=q["question"], context=context, lm=lm)["answer"], False
        except ParseError as exc:
            answer, failed = getattr(exc, "raw", None) or str(exc), True
        out.append((answer, time.monotonic() - t0, failed))
        _progress(name, len(out), len(questions), out[-1])
    return out


def run_dspy(questions: list[dict[str, Any]], url: str, alias: str, max_tokens: int) -> list[tuple[Any, float, bool]]:
    import dspy

    import research_assistant as ra

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    lm = dspy.LM(f"openai/{alias}", api_base=url, api_key="local", temperature=0.0, max_tokens=max_tokens,
                 cache=False, num_retries=0)
    cot = dspy.ChainOfThought(ra.SYNTHESIS)
    name = "dspy"
    out: list[tuple[Any, float, bool]] = []
    for q in questions:
        context = ra.bm25_search(q["question"], [])
        t0 = time.monotonic()
        try:
            with dspy.context(lm=lm):
                answer, failed = cot(question=q["question"], context=context).answer, False
        except Exception as exc:  # AdapterParseError (after DSPy's JSON fallback) and kin
            answer, failed = f"<{type(exc).__name__}>", True
        out.append((answer, time.monotonic() - t0, failed))
        _progress(name, len(out), len(questions), out[-1])
    return out


def summarize(name: str, questions: list[dict[str, Any]], results: list[tuple[Any, float, bool]]) -> dict[str, Any]:
    verdicts = [judge(a, q["gold"]) for q, (a, _, _) in zip(questions, results, strict=True)]
    n = len(results)
    times = [t for _, t, _ in results]
    return {
        "system": name,
        "n": n,
        "ok": sum(v["ok"] for v in verdicts) / n,
        "concise": sum(v["concise"] for v in verdicts) / n,
        "right": sum(v["right"] for v in verdicts) / n,
        "echo": sum(v["echo"] for v in verdicts),
        "code": sum(v["code"] for v in verdicts),
        "parse_failures": sum(f for _, _, f in results),
        "s_per_q": statistics.mean(times),
        "s_p50": statistics.median(times),
        "wrong": [
            (q["question"], str(a)[:160]) for q, (a, _, _), v in zip(questions, results, verdicts, strict=True)
            if not v["ok"]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--systems", default="main,native,dspy",
                   help="comma-separated: main, main-unoptimized (the main job without the MIPROv2 state), native, dspy")
    p.add_argument("--model", default=None, help="embedded model name (default: the default model)")
    p.add_argument("--program", type=Path, default=None, help="synthesis state for the main job")
    p.add_argument("--no-recall", action="store_true", help="skip the retrieval recall table")
    p.add_argument("--show-wrong", action="store_true", help="print every answer that is not right and clean")
    args = p.parse_args(argv)
    questions = list(QUESTIONS[: args.limit] if args.limit else QUESTIONS)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]

    import dspex
    import research_assistant as ra
    from dspex.local import LocalModelService
    from dspex.native.lm import LM

    program = args.program or ra.PROGRAM
    svc = LocalModelService(model_path=args.model)
    t0 = time.monotonic()
    url = svc.ensure_running()
    print(f"model {svc.alias} ({svc.model_path.name}) at {url}, ready in {time.monotonic() - t0:.1f} s; "
          f"{len(questions)} questions; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
          flush=True)
    lm = LM(f"openai/{svc.alias}", api_base=url, temperature=0.0, max_tokens=ra.EMBEDDED_MAX_TOKENS,
            grammar=True, cache=False)
    rows = []
    try:
        for name in systems:
            t = time.monotonic()
            if name == "main":
                res = run_main(questions, lm, program)
            elif name == "main-unoptimized":
                res = run_main(questions, lm, unoptimized_program(program, Path(tempfile.mkdtemp())))
            elif name == "native":
                res = run_native(questions, lm)
            elif name == "dspy":
                res = run_dspy(questions, url, svc.alias, ra.EMBEDDED_MAX_TOKENS)
            else:
                raise SystemExit(f"unknown system {name!r}: use main, main-unoptimized, native, dspy")
            rows.append(summarize(name, questions, res))
            r = rows[-1]
            print(f"  {name}: {time.monotonic() - t:.0f} s; right&clean {r['ok']:.0%}, concise {r['concise']:.0%}, "
                  f"echoes {r['echo']}, parse failures {r['parse_failures']}, {r['s_per_q']:.1f} s/question", flush=True)
    finally:
        dspex.pool.manager().close_all()
        svc.stop()
    print(f"\nload average after: {os.getloadavg()[0]:.1f}\n")
    print("| system | right & clean | right | right, clean & concise | template echoes | code in text | "
          "parse failures | s/question (mean, p50) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['ok']:.0%} | {r['right']:.0%} | {r['concise']:.0%} | {r['echo']} | {r['code']} | "
              f"{r['parse_failures']} | {r['s_per_q']:.1f}, {r['s_p50']:.1f} |")
    if len(rows) > 1:
        base = rows[-1]
        for r in rows[:-1]:
            ratio = base["s_per_q"] / r["s_per_q"] if r["s_per_q"] else float("nan")
            print(f"{r['system']} vs {base['system']}: right&clean {r['ok']:.0%} vs {base['ok']:.0%}, "
                  f"time ratio {ratio:.2f}x")
    if args.show_wrong:
        for r in rows:
            for q, a in r["wrong"]:
                print(f"  [{r['system']}] {q} -> {a!r}")
    if not args.no_recall:
        print()
        print("\n".join(recall_table()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
