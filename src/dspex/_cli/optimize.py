"""``dspex optimize program.json --trainset data.jsonl --optimizer bootstrap --metric mod:fn``.

* The program is a program-state JSON file (``Predict.save`` / DSPy ``module.save``).
* The trainset is JSONL: one JSON object per line (blank lines and ``#`` comments are
  skipped); a bad line is a usage error naming its line number. Each example must
  carry the program's input fields; the other keys are labels.
* ``--metric module:fn`` is imported here first (the working directory is on the
  path, and on ``PYTHONPATH`` for worker processes), so a typo fails in a second,
  not after the optimizer started.
* Progress events from the optimizer are shown as a rich progress bar when rich
  is installed and stderr is a terminal, else as plain lines on stderr.
* The result is written to a temporary file beside ``--out`` and renamed over it
  only on success: a failed or interrupted run leaves no (half-written) file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import (
    EnvironmentProblem,
    UsageError,
    emit_json,
    lm_from_args,
    lm_label,
    parse_kv,
    stderr_is_tty,
    to_jsonable,
)

# ---------------------------------------------------------------- inputs


def read_jsonl(path: Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, example) pairs from a JSONL file; a bad line is a UsageError naming it."""
    if not path.is_file():
        raise UsageError(f"{what} file {str(path)!r} does not exist", "check the path")
    rows: list[tuple[int, dict[str, Any]]] = []
    fix = 'write one JSON object per line, e.g. {"question": "...", "answer": "..."}'
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                row = json.loads(text)
            except ValueError as exc:
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                raise UsageError(f"{what} {path} line {lineno}: not valid JSON ({reason})", fix) from None
            if not isinstance(row, dict):
                raise UsageError(
                    f"{what} {path} line {lineno}: expected a JSON object, got {type(row).__name__}", fix
                )
            rows.append((lineno, row))
    if not rows:
        raise UsageError(f"{what} {path} has no examples", fix)
    return rows


def check_examples(
    rows: list[tuple[int, dict[str, Any]]], path: Path, what: str, inputs: list[str] | None
) -> None:
    """Every example carries the program's input fields (the rest are labels)."""
    for lineno, row in rows:
        missing = [k for k in inputs or [] if k not in row]
        if missing:
            raise UsageError(
                f"{what} {path} line {lineno}: missing input field {missing[0]!r}",
                f"every example needs the program's inputs: {', '.join(inputs or [])}",
            )


def check_metric(spec: str) -> None:
    """Import ``module:fn`` now so a typo is a usage error, not a failure deep in the run."""
    module_name, sep, fn_name = spec.partition(":")
    if not sep or not module_name or not fn_name:
        raise UsageError(f"--metric {spec!r} is not module:function", "e.g. --metric my_metrics:exact_match")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"--metric: cannot import module {module_name!r} ({exc})",
            "run from the folder that holds it or add that folder to PYTHONPATH",
        ) from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UsageError(f"--metric: {module_name} has no function {fn_name!r}", "check the function name")


def _cwd_on_path() -> None:
    """Metrics and programs named ``module:fn`` resolve from the working directory, here and in workers."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if cwd not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([cwd, *parts])


def load_program(path: Path, signature: str, cot: bool) -> Any:
    """The program: ``Predict`` (or ``ChainOfThought``) of ``signature`` with the file's state.

    DSPy's state shape has no field names, so the signature comes from the command
    line; a ChainOfThought state (nested under ``"predict"``) is recognised by itself.
    """
    if not path.is_file():
        raise UsageError(f"program file {str(path)!r} does not exist", "check the path")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UsageError(
            f"program file {path} is not valid JSON ({exc})", "pass a file written by Predict.save"
        ) from None
    if not isinstance(state, dict):
        raise UsageError(
            f"program file {path} must hold a JSON object", "pass a file written by Predict.save"
        )
    import dspex

    nested = isinstance(state.get("predict"), dict) and "signature" not in state
    program = dspex.ChainOfThought(signature) if (cot or nested) else dspex.Predict(signature)
    n_fields = len(program.signature.fields)
    saved = (state.get("predict") if nested else state) or {}
    saved_fields = (saved.get("signature") or {}).get("fields")
    if isinstance(saved_fields, list) and saved_fields and len(saved_fields) != n_fields:
        raise UsageError(
            f"program file {path} has {len(saved_fields)} fields but --signature {signature!r} gives {n_fields}",
            "pass the signature the program was saved with (with --cot for a ChainOfThought)",
        )
    try:
        return program.load(str(path))
    except (KeyError, TypeError, ValueError) as exc:
        from ..errors import DspexError

        if isinstance(exc, DspexError):
            raise
        raise UsageError(
            f"program file {path} is not a program state ({exc})", "pass a file written by Predict.save"
        ) from None


def _input_fields(program: Any) -> list[str] | None:
    sig = getattr(program, "signature", None)
    fields = getattr(sig, "input_fields", None)
    return list(fields) if fields else None


# ---------------------------------------------------------------- atomic output


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it over ``target`` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # ".tmp.json": state writers insist on a .json suffix.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp.json", dir=str(target.parent))
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def save_program(program: Any, path: Path) -> None:
    if isinstance(program, dict):
        path.write_text(json.dumps(program, ensure_ascii=False, indent=2), encoding="utf-8")
    elif hasattr(program, "save"):
        program.save(str(path))
    elif hasattr(program, "dump_state"):
        path.write_text(
            json.dumps(to_jsonable(program.dump_state()), ensure_ascii=False, indent=2), encoding="utf-8"
        )
    else:
        raise TypeError(f"the optimizer returned {type(program).__name__}, which cannot be saved")


# ---------------------------------------------------------------- progress


class Progress:
    """Shows the optimizer's progress events on stderr (rich bar, or plain lines)."""

    def __init__(self, enabled: bool, title: str, total_examples: int | None = None) -> None:
        self.enabled = enabled
        self.title = title
        self.total_examples = total_examples
        self.events: list[dict[str, Any]] = []
        self._rich: Any = None
        self._task: Any = None
        self._last_plain = 0.0
        if enabled and stderr_is_tty():
            try:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
                from rich.progress import Progress as RichProgress

                self._rich = RichProgress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"),
                    console=Console(stderr=True),
                    transient=False,
                )
            except ImportError:
                self._rich = None

    def __enter__(self) -> Progress:
        if self._rich is not None:
            self._rich.start()
            self._task = self._rich.add_task(self.title, total=None, info="")
        elif self.enabled:
            sys.stderr.write(f"{self.title}...\n")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()

    def __call__(self, event: Any) -> None:
        ev = dict(event) if isinstance(event, dict) else {"message": str(event)}
        if len(self.events) < 10_000:  # bounded history
            self.events.append(to_jsonable(ev))
        if not self.enabled:
            return
        kind = _first(ev, "kind", "stage", "phase", "event", "type")
        done = _first(ev, "trial", "step", "done", "completed", "round", "iteration")
        total = _first(ev, "of", "total", "num_trials", "trials", "rounds")
        if done is None and kind == "metric" and self.total_examples:
            # Bootstrap-style runs report metric calls: show them against the trainset size.
            done, total = ev.get("calls"), self.total_examples
        info = _describe(ev)
        if self._rich is not None:
            update: dict[str, Any] = {"info": info}
            if isinstance(total, (int, float)):
                update["total"] = total
            if isinstance(done, (int, float)):
                update["completed"] = min(done, total) if isinstance(total, (int, float)) else done
            if kind == "stage" and ev.get("text"):
                update["description"] = f"{self.title}: {ev['text']}"
            self._rich.update(self._task, **update)
            return
        pos = f" {done}/{total}" if done is not None and total is not None else ""
        sys.stderr.write(f"[{kind or 'progress'}{pos}] {info}".rstrip() + "\n")
        sys.stderr.flush()


_SHOWN = ("text", "message", "msg", "score", "best", "best_score", "mean", "calls")


def _first(ev: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if ev.get(key) is not None:
            return ev[key]
    return None


def _describe(ev: dict[str, Any]) -> str:
    parts = []
    for key in _SHOWN:
        value = ev.get(key)
        if value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.3f}"
        parts.append(str(value) if key in ("text", "message", "msg") else f"{key}={value}")
    return " ".join(parts)


# ---------------------------------------------------------------- the command


def _progress_kwarg(fn: Any) -> str | None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    for name in ("on_event", "progress", "on_progress", "callback"):
        if name in params:
            return name
    return None


def run(args: argparse.Namespace) -> int:
    _cwd_on_path()
    # DSPy's tqdm bars in the workers would interleave with ours; workers inherit this.
    os.environ.setdefault("TQDM_DISABLE", "1")
    check_metric(args.metric)
    options = parse_kv(args.option, what="--option")
    program_path = Path(args.program)
    out = Path(args.out) if args.out else program_path.with_name(program_path.stem + ".optimized.json")
    if out.exists() and out.is_dir():
        raise UsageError(f"--out {out} is a directory", "name a file, e.g. --out optimized.json")
    if not out.parent.exists():
        raise UsageError(f"--out folder {out.parent} does not exist", "create it first or pick another path")

    train_rows = read_jsonl(Path(args.trainset), "trainset")
    val_rows = read_jsonl(Path(args.valset), "valset") if args.valset else None
    program = load_program(program_path, args.signature, args.cot)
    fields = _input_fields(program)
    check_examples(train_rows, Path(args.trainset), "trainset", fields)
    if val_rows is not None:
        check_examples(val_rows, Path(args.valset), "valset", fields)
    trainset = [row for _, row in train_rows]
    valset = [row for _, row in val_rows] if val_rows is not None else None
    lm = lm_from_args(args)

    if lm is not None:
        preflight(lm)

    import dspex
    from dspex.errors import ConfigError

    kwargs: dict[str, Any] = {"optimizer": args.optimizer, "metric": args.metric}
    reserved = {"program", "trainset", "valset", "optimizer", "metric", "lm", "progress", "pool", "impl"}
    clash = sorted(reserved & set(options))
    if clash:
        raise UsageError(
            f"--option {clash[0]}=... is not an optimizer option", f"use the --{clash[0]} flag instead"
        )
    kwargs.update(options)  # optimizer options, e.g. max_bootstrapped_demos=2, checkpoint=run.json
    if valset is not None:
        kwargs["valset"] = valset
    if lm is not None:
        kwargs["lm"] = lm
    show = not args.no_progress
    progress = Progress(show, f"optimize ({args.optimizer})", len(trainset))
    key = _progress_kwarg(dspex.optimize)
    if key:
        kwargs[key] = progress
    t0 = time.perf_counter()
    with atomic_path(out) as tmp:
        with progress, dspex.context(lm=lm) as usage:
            try:
                optimized = dspex.optimize(program, trainset, **kwargs)
            except ConfigError as exc:  # the optimizer takes no such option (wire code "option")
                raise UsageError(f"--option: {exc}", "use only the options listed") from None
        save_program(optimized, tmp)
    seconds = time.perf_counter() - t0
    state = json.loads(out.read_text(encoding="utf-8"))
    summary = {
        "out": str(out),
        "optimizer": args.optimizer,
        "metric": args.metric,
        "trainset_size": len(trainset),
        "valset_size": len(valset) if valset is not None else None,
        "demos": _count_demos(state),
        "seconds": round(seconds, 3),
        "lm": lm_label(lm),
        "usage": usage.as_dict(),
        "score": _final_score(optimized, progress.events),
    }
    if args.json:
        summary["events"] = progress.events
        summary["program"] = state
        emit_json(summary)
        return 0
    if summary["demos"] == 0 and args.optimizer.startswith("bootstrap"):
        sys.stderr.write(
            "dspex: warning: no demos were bootstrapped (failed LM calls or a metric that never passed?)\n"
        )
    score = f", score {summary['score']}" if summary["score"] is not None else ""
    print(f"optimized program written to {out} ({summary['demos']} demos{score}, {seconds:.1f} s)")
    return 0


def preflight(lm: Any) -> None:
    """Fail in a second when the LM endpoint is down: DSPy's optimizers count failed LM
    calls as failed attempts and would "succeed" with an empty program after a long run."""
    base = getattr(lm, "api_base", None)
    if not base:
        return
    from .doctor import probe

    reachable, how = probe(str(base).rstrip("/") + "/models", timeout=5.0)
    if not reachable:
        raise EnvironmentProblem(
            f"LM endpoint unreachable at {base} ({how})",
            "start the server or pass the right --api-base / DSPEX_API_BASE (`dspex doctor` checks it)",
        )


def _count_demos(state: Any) -> int:
    if isinstance(state, dict):
        n = len(state["demos"]) if isinstance(state.get("demos"), list) else 0
        return n + sum(_count_demos(v) for k, v in state.items() if k != "demos" and isinstance(v, dict))
    return 0


def _final_score(optimized: Any, events: list[dict[str, Any]]) -> Any:
    for attr in ("score", "best_score"):
        value = getattr(optimized, attr, None)
        if isinstance(value, (int, float)):
            return value
    for ev in reversed(events):
        for key in ("best", "best_score", "score"):
            if isinstance(ev.get(key), (int, float)):
                return ev[key]
    return None
