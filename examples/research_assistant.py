"""The main job: a research assistant mixing native steps and DSPy in worker processes.

    1. native   "question -> search_queries: list[str]"         (dspex Predict, in process)
    2. worker   dspy.ChainOfThought refines the queries         (DSPy, in the `dspy` pool)
    3. parallel native BM25 | worker dense retrieval | worker ColBERTv2-protocol retrieval
    4. native   merge the passages
    5. worker   dspy.ChainOfThought synthesis, optimized with MIPROv2 (state in research_program.json)
    6. native   markdown formatter

    python examples/research_assistant.py [--question "..."] [--api-base URL] [--reoptimize] [--debug]

By default everything runs offline on the embedded model (Qwen2.5-Coder-0.5B-Instruct through
llama.cpp), with grammar-constrained decoding so every reply parses and plain-text fields hold
no template echo or code, native and in workers alike. Dense retrieval uses the e5 neural
embedder when ``dspex[embed]`` is installed (hashing otherwise). Point ``--api-base`` at any
OpenAI-compatible server for a bigger model. The optimized synthesis program ships as
``research_program.json`` (MIPROv2 run once on the embedded model); ``--reoptimize`` runs
MIPROv2 again and replaces it. bench/bench_quality.py measures the answers.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dspex
from _common import print_trace, report_error, setup
from _research_trainset import TRAIN
from dspex.native.colbert_server import ColBERTv2Server
from dspex.native.retrieve import BM25
from dspex.pipeline import Pipeline, PipelineResult, native, parallel, pipeline, worker

SYNTHESIS = "question, context: list[str] -> answer"
PROGRAM = Path(__file__).resolve().parent / "research_program.json"
# Replies from the embedded model are capped here: the grammar shares the cap among the
# fields, so a CPU-bound small model writes short fields and each call takes seconds.
EMBEDDED_MAX_TOKENS = 256
# MIPROv2 kept small: 4 instruction / demo candidates, 8 trials over the validation questions
# (it splits the 48 training questions 10 / 38). Up to 2 labeled demos, which carry the gold
# rationale of training_example(), and 1 bootstrapped one.
# The proposer sees neither the program's source nor a dataset summary: both add long prompts
# and calls on a CPU-bound model without changing the plumbing.
MIPRO_OPTIONS: dict[str, Any] = dict(
    auto=None, num_candidates=4, num_trials=8, seed=7, max_bootstrapped_demos=1, max_labeled_demos=2, minibatch=False,
    program_aware_proposer=False, data_aware_proposer=False,
)
_bm25 = BM25.from_path("solar_system")


def bm25_search(question: str, refined_queries: list[str]) -> list[str]:
    """Native BM25 over the shipped corpus, for the question and every refined query."""
    hits = [h["text"] for q in [question, *refined_queries] for h in _bm25.search(str(q), 2)]
    return list(dict.fromkeys(hits))


def merge(bm25_passages: list[str], dense_hits: list[dict[str, Any]], colbert_hits: list[dict[str, Any]]) -> list[str]:
    texts = [*bm25_passages, *(h["text"] for h in dense_hits), *(h["text"] for h in colbert_hits)]
    # The best 3: more passages give the 0.5B reader near-misses to copy (6: 71%, 3: 85%; bench/results/quality.md).
    return list(dict.fromkeys(texts))[:3]


def to_markdown(question: str, answer: str, context: list[str]) -> str:
    sources = "\n".join(f"{i}. {t}" for i, t in enumerate(context[:3], 1))
    return f"## {question}\n\n{answer}\n\n**Sources**\n{sources}\n"


def concise(answer: str) -> bool:
    """A short answer, or one or two whole sentences (not text cut off at the length cap)."""
    words = answer.split()
    return len(words) <= 8 or (len(words) <= 40 and answer.rstrip().endswith((".", "!", "?", ")")))


def answer_match(example: Any, prediction: Any) -> float:
    """1 for the fact in a concise answer, 0.5 for the fact in a rambling one, else 0."""
    answer = str(prediction["answer"])
    try:
        fact = str(example["fact"])
    except KeyError:  # a plain question/answer example: the answer is the fact
        fact = str(example["answer"])
    if fact.lower() not in answer.lower():
        return 0.0
    return 1.0 if concise(answer) else 0.5


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def training_example(example: dict[str, str]) -> dict[str, Any]:
    """A training question with the best 3 BM25 passages (what the reader sees in the main job) and
    a gold rationale quoting the passage that holds the fact: demos MIPROv2 takes from the
    trainset then show the 0.5B reader how to pick the one passage that answers (bench/results/quality.md)."""
    context = [h["text"] for h in _bm25.search(example["question"], 3)]
    source = next((t for t in context if example["fact"].lower() in t.lower()), context[0])
    return {**example, "context": context, "reasoning": f"The passage '{source.split(' | ', 1)[-1]}' answers the question."}


def optimize_synthesis(lm: Any, path: Path) -> None:
    """Optimize the synthesis program with MIPROv2 (in the `optimizer` pool) and save its state."""
    print(f"optimizing the synthesis program with MIPROv2 (once; saved to {path.name}) ...", flush=True)
    started = time.monotonic()
    trainset = [training_example(ex) for ex in TRAIN]
    result = dspex.optimize(dspex.ChainOfThought(SYNTHESIS), trainset, optimizer="miprov2",
                            metric=answer_match, lm=lm, **MIPRO_OPTIONS)
    state = json.dumps(result.state, indent=1, ensure_ascii=False) + "\n"
    write_atomically(path, state)
    scores = ", ".join(f"{t['score']:.0f}" for t in result.trials or [] if t.get("score") is not None)
    predict: dict[str, Any] = next(iter(result.state.values()), {}) if isinstance(result.state, dict) else {}
    demos = len(predict.get("demos") or [])
    print(f"MIPROv2 done in {time.monotonic() - started:.0f} s: trial scores [{scores}], best {result.score}; "
          f"kept {demos} demo(s); saved {path}", flush=True)


def build(colbert_url: str, program: Path) -> Pipeline:
    return pipeline([
        native("question -> search_queries: list[str]", name="plan"),
        worker("dspy.ChainOfThought", signature="question, search_queries -> refined_queries: list[str]",
               pool="dspy", name="refine"),
        parallel([
            native(bm25_search, writes="bm25_passages", name="bm25"),
            worker(handler="dspy.embed_search", pool="dspy", reads={"query": "question"},
                   params={"k": 3, "embedder": "auto"}, writes="dense_hits", name="dense"),
            worker(handler="dspy.colbert_search", pool="dspy", reads={"query": "question"},
                   params={"url": colbert_url, "k": 3}, writes="colbert_hits", name="colbertv2"),
        ], name="retrieve"),
        native(merge, writes="context"),
        worker("dspy.ChainOfThought", signature=SYNTHESIS, pool="dspy", state=str(program),
               name="synthesize", retries=1),
        native(to_markdown, writes="markdown"),
    ], name="research_assistant")


def _progress(event: Any) -> None:
    """One line per finished step while the run goes (the table at the end has the details)."""
    from dspex.pipeline.trace import StepFinished

    if isinstance(event, StepFinished):
        where = event.where if event.pid is None else f"{event.where} pid {event.pid}"
        print(f"  {event.path:<22} {where:<16} {event.duration_s:6.1f} s", flush=True)


def main(argv: list[str] | None = None, *, lm: Any = None, program: Path | None = None) -> PipelineResult:
    def options(p: Any) -> None:
        p.add_argument("--question", default="Which planet has the most moons, and what is its largest moon?")
        p.add_argument("--program", type=Path, default=PROGRAM, help="the optimized synthesis state (JSON)")
        p.add_argument("--reoptimize", action="store_true",
                       help="run MIPROv2 again and replace the program file (atomically)")

    embedded = lm is None
    args, lm = setup(__doc__.splitlines()[0], argv, lm, options)
    if embedded and not args.api_base:
        lm = lm.copy(max_tokens=EMBEDDED_MAX_TOKENS)
    if not args.debug:
        from dspex._cli.common import quiet_worker_stderr

        quiet_worker_stderr()  # a worker's library chatter would bury the one-line error
    program = program or args.program
    print(f"LM: {lm.model} at {lm.api_base or 'its default endpoint'}", flush=True)
    if args.reoptimize or not program.exists():
        optimize_synthesis(lm, program)
    else:
        print(f"using the optimized synthesis program {program} (--reoptimize to run MIPROv2 again)", flush=True)
    with ColBERTv2Server("solar_system") as colbert:
        print(f"running the pipeline: {args.question}", flush=True)
        result = build(colbert.url, program).run(question=args.question, lm=lm, on_event=_progress)
    print()
    print(result["markdown"])
    print_trace(result.trace)
    return result


def cli(argv: list[str] | None = None) -> int:
    """``main`` with the examples' error rule: one line saying what failed and how to fix it."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        main(argv)
    except BaseException as exc:  # reported as one line and an exit code
        if isinstance(exc, SystemExit):
            raise
        return report_error(exc, debug="--debug" in argv, prog="research_assistant")
    finally:
        dspex.pool.manager().close_all()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
