"""DSPy optimizers in a worker: progress, cancellation, checkpoints.

``run_optimizer(ctx, optimizer, program, trainset, metric, ...)`` is the body of the
``dspy.optimize`` handler.

* ``optimizer``: ``miprov2`` | ``bootstrap`` | ``bootstrap_rs`` | ``copro`` | ``gepa`` |
  ``simba`` | ``labeled``. ``options`` go to the optimizer's constructor or its
  ``compile`` (split by their signatures), e.g. ``{"auto": None, "num_candidates": 2,
  "num_trials": 2, "max_bootstrapped_demos": 1}``.
* ``program``: ``{"module": "Predict"|"ChainOfThought", "signature": <wire>,
  "state": <DSPy JSON state> | None}``.
* ``trainset`` / ``valset``: lists of dicts; ``input_keys`` (default: the
  signature's input fields) marks the inputs.
* ``metric``: ``"package.module:function"`` (imported and called here, with DSPy's
  own arguments) or ``{"callback": name}``: the host function is called back with
  ``(example: dict, prediction: dict)`` and returns a number/bool, or for GEPA
  optionally ``{"score": float, "feedback": str}``.
* LMs: ``lm`` (the task model), ``prompt_lm`` (MIPROv2/COPRO/SIMBA proposals),
  ``reflection_lm`` (GEPA; defaults to ``lm``), ``teacher_lm`` (bootstrapping).

Progress goes to the caller with ``ctx.progress``: ``{"kind": "start"}``,
``{"kind": "stage", "text"}``, ``{"kind": "trial", "trial", "of", "score", "best"}``
(MIPROv2: read from its log records, so they arrive as trials finish),
``{"kind": "metric", "calls", "score", "mean"}`` and ``{"kind": "lm", "calls"}``
(throttled), ``{"kind": "done", "score"}``.

Cancellation: the metric wrapper and an LM-start callback check ``ctx.cancelled``
and raise :class:`OptimizationCancelled`, a ``BaseException`` so DSPy's
``except Exception`` error budgets (Evaluate's max_errors, callback guards) do not
swallow it; the handler turns it into an ordinary error once out of DSPy.

Checkpoint (``checkpoint="path.json"``): after every trial/progress step the file
records the run so far (trials, scores, calls); at the end it records the result.
Resuming means: a *completed* checkpoint is returned at once, without LM calls;
an *interrupted* one is run again from the start (DSPy's optimizers do not expose
their mid-run state), seeded the same, and the result says ``resumed_after`` (the
trials the interrupted run had finished). Honest and simple; no optimizer here
continues mid-run.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback

from ..pool.handler import Context
from ..wire import E, WireError
from ._convert import build_signature, import_object, prediction_to_dict, to_plain
from ._lm import build_lm

__all__ = ["OPTIMIZERS", "OptimizationCancelled", "run_optimizer"]


class OptimizationCancelled(BaseException):
    """The caller cancelled the optimization."""


def _optimizer_classes() -> dict[str, Any]:
    return {
        "miprov2": dspy.MIPROv2,
        "bootstrap": dspy.BootstrapFewShot,
        "bootstrap_rs": dspy.BootstrapFewShotWithRandomSearch,
        "copro": dspy.COPRO,
        "gepa": dspy.GEPA,
        "simba": dspy.SIMBA,
        "labeled": dspy.LabeledFewShot,
    }


OPTIMIZERS = ("miprov2", "bootstrap", "bootstrap_rs", "copro", "gepa", "simba", "labeled")
_ALIASES = {"mipro": "miprov2", "mipro_v2": "miprov2", "bootstrapfewshot": "bootstrap",
            "bootstrap_fewshot": "bootstrap", "random_search": "bootstrap_rs",
            "bootstrapfewshotwithrandomsearch": "bootstrap_rs", "labeledfewshot": "labeled"}


class _Progress:
    """Counts metric and LM calls, checks cancellation, sends throttled events."""

    def __init__(self, ctx: Context, checkpoint: Path | None, base: dict[str, Any], interval_s: float = 0.2):
        self.ctx = ctx
        self.checkpoint = checkpoint
        self.base = base
        self.interval_s = interval_s
        self.metric_calls = 0
        self.lm_calls = 0
        self.score_sum = 0.0
        self.trials: list[dict[str, Any]] = []
        self.best: float | None = None
        self._last_emit = 0.0
        self._lock = threading.Lock()

    def check(self) -> None:
        if self.ctx.cancelled:
            raise OptimizationCancelled("optimization cancelled by the caller")

    def emit(self, force: bool = False, **event: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_emit < self.interval_s:
                return
            self._last_emit = now
        self.ctx.progress(**to_plain(event))

    def on_metric(self, score: Any) -> None:
        try:
            value = float(getattr(score, "score", score))
        except (TypeError, ValueError):
            value = 0.0
        with self._lock:
            self.metric_calls += 1
            self.score_sum += value
            calls, mean = self.metric_calls, self.score_sum / self.metric_calls
        self.emit(force=calls == 1, kind="metric", calls=calls, score=value, mean=mean)

    def on_lm(self) -> None:
        self.check()
        with self._lock:
            self.lm_calls += 1
            calls = self.lm_calls
        self.emit(force=calls == 1, kind="lm", calls=calls)

    def on_trial(self, trial: int, of: int | None, score: float | None) -> None:
        if score is not None and (self.best is None or score > self.best):
            self.best = score
        row = {"trial": trial, "of": of, "score": score, "best": self.best}
        self.trials.append(row)
        self.emit(force=True, kind="trial", **row)
        self.save(completed=False)

    def save(self, completed: bool, **extra: Any) -> None:
        if self.checkpoint is None:
            return
        data = {
            **self.base,
            "completed": completed,
            "trials": self.trials,
            "best_score": self.best,
            "metric_calls": self.metric_calls,
            "lm_calls": self.lm_calls,
            "updated": time.time(),
            **extra,
        }
        tmp = self.checkpoint.with_suffix(self.checkpoint.suffix + ".tmp")
        tmp.write_text(json.dumps(to_plain(data), indent=1))
        os.replace(tmp, self.checkpoint)  # atomic: a crash never leaves half a file


class _LMCounter(BaseCallback):
    def __init__(self, progress: _Progress):
        self.progress = progress

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.progress.on_lm()


_TRIAL = re.compile(r"Trial (\d+) / (\d+)")
_SCORE = re.compile(r"(?:^|\s)Score: ([0-9.]+)")
_DEFAULT = re.compile(r"Default program score: ([0-9.]+)")
_STEP = re.compile(r"==> (STEP \d+: [A-Z ]+) <==")


class _MiproLog(logging.Handler):
    """Turns MIPROv2's log lines into trial events as they happen (same thread only)."""

    def __init__(self, progress: _Progress, thread_id: int):
        super().__init__(logging.INFO)
        self.progress = progress
        self.thread_id = thread_id
        self.trial: int | None = None
        self.of: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread_id:
            return
        try:
            msg = record.getMessage()
        except Exception:
            return
        if m := _STEP.search(msg):
            self.progress.emit(force=True, kind="stage", text=m.group(1).title())
        elif m := _TRIAL.search(msg):
            self.trial, self.of = int(m.group(1)), int(m.group(2))
        elif m := _DEFAULT.search(msg):
            self.progress.on_trial(self.trial or 1, self.of, float(m.group(1)))
        elif (m := _SCORE.search(msg)) and self.trial is not None:
            self.progress.on_trial(self.trial, self.of, float(m.group(1)))


def _wrap_metric(metric: Any, progress: _Progress, gepa: bool) -> Any:
    if isinstance(metric, str):
        fn = import_object(metric)

        def call(gold: Any, pred: Any, trace: Any, pred_name: Any, pred_trace: Any) -> Any:
            if gepa:
                return fn(gold, pred, trace, pred_name, pred_trace)
            return fn(gold, pred, trace)

    elif isinstance(metric, dict) and isinstance(metric.get("callback"), str):
        name = metric["callback"]

        def call(gold: Any, pred: Any, trace: Any, pred_name: Any, pred_trace: Any) -> Any:
            out = progress.ctx.callback(name, to_plain(gold.toDict()), prediction_to_dict(pred))
            if isinstance(out, dict):
                if gepa:
                    return dspy.Prediction(score=float(out.get("score", 0.0)), feedback=str(out.get("feedback", "")))
                return float(out.get("score", 0.0))
            return out

    else:
        raise TypeError("metric must be 'module:function' or {'callback': name}")

    def metric_fn(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
        progress.check()
        score = call(gold, pred, trace, pred_name, pred_trace)
        progress.on_metric(score)
        return score

    return metric_fn


def _split_options(cls: Any, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    init_params = inspect.signature(cls.__init__).parameters
    compile_params = inspect.signature(cls.compile).parameters
    init_kw: dict[str, Any] = {}
    compile_kw: dict[str, Any] = {}
    for key, value in options.items():
        if key in compile_params and key not in ("student", "trainset"):
            compile_kw[key] = value
        elif key in init_params or any(p.kind is p.VAR_KEYWORD for p in init_params.values()):
            init_kw[key] = value
        else:
            raise WireError(
                E.BAD_OPTION,
                f"{cls.__name__} takes no option {key!r}; constructor: "
                f"{sorted(k for k in init_params if k != 'self')}, compile: "
                f"{sorted(k for k in compile_params if k not in ('self', 'student', 'trainset'))}"
            )
    return init_kw, compile_kw


def _examples(rows: list[dict[str, Any]] | None, input_keys: list[str]) -> list[Any]:
    return [dspy.Example(**row).with_inputs(*input_keys) for row in rows or []]


def _strip_lm(state: Any) -> Any:
    if isinstance(state, dict):
        return {k: (None if k == "lm" else _strip_lm(v)) for k, v in state.items()}
    return state


def run_optimizer(
    ctx: Context,
    optimizer: str,
    program: dict[str, Any],
    trainset: list[dict[str, Any]],
    metric: Any,
    lm: Any = None,
    options: dict[str, Any] | None = None,
    valset: list[dict[str, Any]] | None = None,
    input_keys: list[str] | None = None,
    adapter: Any = None,
    prompt_lm: Any = None,
    reflection_lm: Any = None,
    teacher_lm: Any = None,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    from .dspy_handlers import _adapter, build_module

    started = time.monotonic()
    name = _ALIASES.get(optimizer.lower().replace("-", "_"), optimizer.lower().replace("-", "_"))
    classes = _optimizer_classes()
    if name not in classes:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    cls = classes[name]
    ckpt = Path(checkpoint) if checkpoint else None
    resumed_after = 0
    if ckpt is not None and ckpt.exists():
        saved = json.loads(ckpt.read_text())
        if saved.get("completed") and saved.get("optimizer") == name:
            ctx.progress(kind="resumed", completed=True, trials=len(saved.get("trials", [])))
            return {**saved.get("result", {}), "resumed": True, "resumed_after": len(saved.get("trials", []))}
        resumed_after = len(saved.get("trials", []))

    opts = dict(options or {})
    module_name = program.get("module", "Predict")
    if module_name == "Program":  # a composite dspex.Module, rebuilt with DSPy predictors (_program.py)
        from ._program import rebuild

        student = rebuild(program)
        keys = list(input_keys or program.get("input_keys") or [])
        if not keys:
            raise ValueError(f"{program.get('class')}: pass input_keys= (or Examples with .with_inputs(...))")
    else:
        sig = build_signature(program["signature"])
        keys = list(input_keys or sig.input_fields.keys())
        student = build_module(module_name, program["signature"], program.get("options"), state=program.get("state"))
    progress = _Progress(ctx, ckpt, {"optimizer": name, "module": module_name})
    train = _examples(trainset, keys)
    val = _examples(valset, keys) if valset else None
    task_lm = build_lm(lm)

    if name != "labeled":
        opts["metric"] = _wrap_metric(metric, progress, gepa=name == "gepa")
    init_params = inspect.signature(cls.__init__).parameters
    if "num_threads" in init_params:
        # Host metrics are called back one at a time anyway; threads only add overhead here.
        opts.setdefault("num_threads", 1)
    if prompt_lm is not None and "prompt_model" in init_params:
        opts["prompt_model"] = build_lm(prompt_lm)
    if name == "gepa":
        opts["reflection_lm"] = build_lm(reflection_lm) if reflection_lm is not None else task_lm
    if teacher_lm is not None and "teacher_settings" in init_params:
        opts["teacher_settings"] = {"lm": build_lm(teacher_lm)}
    init_kw, compile_kw = _split_options(cls, opts)
    if val is not None and "valset" in inspect.signature(cls.compile).parameters:
        compile_kw["valset"] = val

    progress.emit(force=True, kind="start", optimizer=name, module=module_name, train=len(train),
                  resumed_after=resumed_after, pid=os.getpid())
    log_handler = _MiproLog(progress, threading.get_ident())
    mipro_logger = logging.getLogger("dspy.teleprompt.mipro_optimizer_v2")
    old_level = mipro_logger.level
    mipro_logger.addHandler(log_handler)
    if mipro_logger.getEffectiveLevel() > logging.INFO:
        mipro_logger.setLevel(logging.INFO)
    overrides: dict[str, Any] = {"callbacks": [_LMCounter(progress)]}
    if task_lm is not None:
        overrides["lm"] = task_lm
    ad = _adapter(adapter)
    if ad is not None:
        overrides["adapter"] = ad
    try:
        with dspy.context(**overrides):
            opt = cls(**init_kw)
            compiled = opt.compile(student, trainset=train, **compile_kw)
    except OptimizationCancelled as exc:
        progress.save(completed=False, cancelled=True)
        # Out of DSPy now: an ordinary exception for the pool to report.
        raise RuntimeError(str(exc)) from None
    finally:
        mipro_logger.removeHandler(log_handler)
        mipro_logger.setLevel(old_level)

    score = getattr(compiled, "score", None)
    if score is None:
        score = progress.best
    result = {
        "state": to_plain(_strip_lm(compiled.dump_state())),
        "module": module_name,
        "optimizer": name,
        "score": float(score) if isinstance(score, (int, float)) else None,
        "trials": progress.trials,
        "metric_calls": progress.metric_calls,
        "lm_calls": progress.lm_calls,
        "elapsed_s": time.monotonic() - started,
        "pid": os.getpid(),
        "resumed": False,
        "resumed_after": resumed_after,
    }
    progress.save(completed=True, result=result)
    progress.emit(force=True, kind="done", score=result["score"], lm_calls=progress.lm_calls,
                  metric_calls=progress.metric_calls)
    return result
