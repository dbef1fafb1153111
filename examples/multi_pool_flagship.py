"""Two pools, sessions and GEPA: optimize in the `optimizer` pool, serve in the `dspy` pool.

GEPA (reflective prompt evolution) improves a ChainOfThought in the one-worker
`optimizer` pool; the result is served by DSPy in the `dspy` pool inside a pipeline,
in a batch where every run has its own session (worker-side state found again by
every step of that run, dropped at its end), next to a native check step.
"""

from __future__ import annotations

from typing import Any

import dspex
from _common import print_trace, setup, show

TRAIN = [
    {"question": "Which planet is closest to the Sun?", "answer": "Mercury"},
    {"question": "Which planet has the Great Red Spot?", "answer": "Jupiter"},
    {"question": "What is the largest moon of Saturn?", "answer": "Titan"},
]


def metric(example: Any, prediction: Any) -> dict[str, Any]:
    ok = str(example["answer"]).lower() in str(prediction["answer"]).lower()
    return {"score": float(ok), "feedback": "correct" if ok else f"the answer is {example['answer']}"}


def main(argv: list[str] | None = None, *, lm: Any = None, optimize_timeout: float = 600.0) -> list[dict[str, Any]]:
    _, lm = setup(__doc__, argv, lm)
    state = None
    try:
        optimized = dspex.optimize(dspex.ChainOfThought("question -> answer"), TRAIN, optimizer="gepa",
                                   metric=metric, lm=lm, reflection_lm=lm, max_metric_calls=12,
                                   timeout=optimize_timeout)
        show("GEPA score", optimized.score)
        state = optimized.state
    except dspex.DspexError as exc:  # e.g. CallTimeout: the optimizer's worker is replaced, we go on
        show("GEPA did not finish", f"{type(exc).__name__}: {exc}; serving the unoptimized program")
    serve = dspex.pipeline([
        dspex.worker("dspy.ChainOfThought", signature="question -> answer", pool="dspy",
                     state=state, name="answer"),
        dspex.native("question, answer -> plausible: bool", name="check"),
    ], lm=lm)
    results = serve.batch([{"question": q} for q in ("Which planet has rings?", "Which moon has lakes?")],
                          concurrency=2)
    for r in results:
        show(r["question"], f"{r['answer']}  (session {r.trace.session[:12]}, pid {r.trace.step('answer').pid})")
    print_trace(results[0].trace)
    for name, stats in dspex.pool.manager().stats().items():
        show(f"pool {name}", f"{len(stats['workers'])} workers, {stats['calls']} calls, {stats['sessions']} sessions")
    return [dict(r) for r in results]


if __name__ == "__main__":
    main()
