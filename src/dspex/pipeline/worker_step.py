"""Worker steps: a DSPy module run through the router's dispatcher (the same payload as
the API's), or any handler of any pool (``worker()``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PipelineError
from ..router import Decision, decide
from ..router.dispatch import CallInfo, arun_module
from ..wire import H, op_of
from .base import Step, _field_names, _parse_signature, _reads_spec, _sig_io, _sig_string

if TYPE_CHECKING:
    from .runner import RunState
    from .trace import StepTrace

__all__ = ["WorkerStep", "worker"]


class WorkerStep(Step):
    """A step run in a worker process of a pool. See ``worker()``."""

    kind = "worker"

    def __init__(
        self,
        module: str | None = None,
        *,
        handler: str | None = None,
        pool: Any = "dspy",
        signature: Any = None,
        name: str | None = None,
        reads: str | Sequence[str] | Mapping[str, str] | None = None,
        writes: str | Sequence[str] | None = None,
        params: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        state: Any = None,
        adapter: str | None = None,
        lm: Any = None,
        timeout: float | None = None,
        retries: int = 0,
        backoff: float = 0.1,
        fallback: Any = None,
        cache: bool | int = False,
        **more_options: Any,
    ):
        if (module is None) == (handler is None):
            raise PipelineError(
                "dspex.worker() needs either a DSPy module name (dspex.worker('dspy.ChainOfThought', "
                "signature=...)) or handler= (dspex.worker(handler='echo', pool=...)), not both"
            )
        self.module = module
        self.op: str | None = None
        if module is not None:
            try:
                self.op = op_of(module)
            except ValueError as exc:
                raise PipelineError(f"dspex.worker({module!r}): {exc}") from None
        self.handler = handler or H.RUN
        self.pool = pool
        self.params = dict(params or {})
        self.options = {**dict(options or {}), **more_options}
        self.tools = self.options.pop("tools", None)
        self.state = state
        self.adapter = adapter
        self.lm = lm
        self.signature: Any = None
        (r, arg_map), w = _reads_spec(reads), _field_names(writes)
        read_types: dict[str, Any] = {}
        write_types: dict[str, Any] = {}
        if module is not None:
            if signature is None:
                raise PipelineError(
                    f"dspex.worker({module!r}) needs signature=, e.g. signature='question -> answer'"
                )
            self.signature = _parse_signature(signature)
            self.signature_text = signature if isinstance(signature, str) else _sig_string(self.signature)
            read_types, write_types = _sig_io(self.signature)
            if self.module_short() in ("ChainOfThought",) and "reasoning" not in write_types:
                write_types = {"reasoning": None, **write_types}
            auto = "_".join(n for n in write_types if n != "reasoning") or self.module_short().lower()
        else:
            if more_options:
                raise PipelineError(
                    f"dspex.worker(handler={handler!r}) got unknown options {sorted(more_options)}; "
                    "pass constant handler arguments as params={...}"
                )
            auto = str(handler).replace(".", "_")
            if w is None:
                w = (name or auto,)
            if r is None:
                r = ()
        if r is not None:
            read_types = {k: read_types.get(k) for k in r}
        if w is not None:
            write_types = {k: write_types.get(k) for k in w}
        super().__init__(
            name=name or auto,
            reads=list(read_types),
            writes=list(write_types),
            read_types=read_types,
            write_types=write_types,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            fallback=fallback,
            cache=cache,
            named=name is not None,
        )
        self.arg_map = arg_map

    def module_short(self) -> str:
        return (self.module or "").removeprefix("dspy.")

    def pool_name(self) -> str:
        if isinstance(self.pool, str):
            return self.pool
        return str(getattr(self.pool, "name", "pool"))

    def where(self) -> str:
        return self.pool_name()

    def label(self) -> str:
        if self.module is not None:
            return f"{self.name}: {self.module}({self.signature_text})"
        return f"{self.name}: {self.handler}"

    def _load_state(self) -> Any:
        if isinstance(self.state, str | Path):
            path = Path(self.state)
            if not path.is_file():
                return None  # not optimized yet: run the module as built
            return json.loads(path.read_text())
        return self.state

    def decision(self) -> Decision:
        """What the step runs: the router's decision for its op, always in a worker."""
        assert self.op is not None
        return decide(self.op, self.signature, impl="dspy", form="call")

    def module_options(self) -> dict[str, Any]:
        """The op's options as the API takes them (``state`` loaded from its file)."""
        opts = dict(self.options)
        state = self._load_state()
        if state is not None:
            opts["state"] = state
        return opts

    async def _execute(self, data: Mapping[str, Any], rt: RunState, st: StepTrace) -> dict[str, Any]:
        inputs = self.inputs_of(data)
        if self.module is None:
            return self._outputs(await rt.call_worker(self, {**self.params, **inputs}, st))
        lm = self.lm if self.lm is not None else rt.lm
        pool = await rt.use_pool(self.pool, st)
        info = CallInfo()
        call = arun_module(self.decision(), self.signature, inputs, lm=lm, adapter=self.adapter,
                           options=self.module_options(), tools=self.tools, pool=pool, session=rt.session,
                           on_event=rt.event_sink(st), info=info)
        pred = await rt.in_context(call, lm, st)
        st.pid = info.pid
        return self._outputs(pred)


def worker(
    module: str | None = None,
    *,
    handler: str | None = None,
    pool: Any = "dspy",
    signature: Any = None,
    name: str | None = None,
    reads: str | Sequence[str] | Mapping[str, str] | None = None,
    writes: str | Sequence[str] | None = None,
    params: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    state: Any = None,
    adapter: str | None = None,
    lm: Any = None,
    timeout: float | None = None,
    retries: int = 0,
    backoff: float = 0.1,
    fallback: Any = None,
    cache: bool | int = False,
    **module_options: Any,
) -> WorkerStep:
    """A step run in a worker process, with the run's session.

    - ``dspex.worker("dspy.ChainOfThought", signature="a -> b", pool="dspy", **options)``:
      the router's dispatcher sends exactly what ``dspex.predict`` / the API sends for that
      op (``dspy.run``: signature with instructions and field descriptions, options,
      ``tools=`` host functions as callbacks); ``state=`` a program state dict or a JSON
      file path (used when the file exists) loads optimized instructions/demos; ``lm=`` or
      the run's LM travels as ``LM.to_spec()`` (no secrets).
    - ``dspex.worker(handler="echo", pool="mypool", reads=["x"], writes=["y"])``: any
      handler; the fields read are passed as keyword arguments (plus ``params``), the
      return value is stored under ``writes`` (default: the step's name).
      ``reads={"query": "question"}`` passes the field ``question`` as ``query=``.

    ``pool`` is a pool name (from the config, or ``Pipeline(pools={...})``) or a Pool.
    """
    return WorkerStep(
        module,
        handler=handler,
        pool=pool,
        signature=signature,
        name=name,
        reads=reads,
        writes=writes,
        params=params,
        options=options,
        state=state,
        adapter=adapter,
        lm=lm,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        fallback=fallback,
        cache=cache,
        **module_options,
    )
