"""Mermaid flowcharts of pipelines: parallel groups and fan-outs as subgraphs, branches
as decisions, native and worker steps in different styles."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .steps import Branch, FanOut, NativeStep, Parallel, Step, WorkerStep

if TYPE_CHECKING:
    from .core import Pipeline

__all__ = ["render_mermaid"]

_STYLES = [
    "classDef native fill:#e8f5e9,stroke:#2e7d32,color:#1b5e20",
    "classDef worker fill:#e3f2fd,stroke:#1565c0,color:#0d47a1",
    "classDef io fill:#fafafa,stroke:#9e9e9e,color:#424242",
]


def _text(s: str) -> str:
    """Mermaid-safe label text."""
    return re.sub(r'["<>]', lambda m: {'"': "#quot;", "<": "#lt;", ">": "#gt;"}[m.group()], s)


class _Renderer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.n = 0

    def new_id(self, prefix: str = "s") -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def leaf(self, s: Step, indent: str) -> str:
        nid = self.new_id()
        if isinstance(s, WorkerStep):
            what = f"{s.module if s.module is not None else s.handler} @ {s.pool_name()}"
            cls = "worker"
        else:
            what = f"native {s.module_name}" if isinstance(s, NativeStep) and s.mode == "signature" else "native"
            cls = "native"
        parts = [s.name, what]
        if s.reads or s.writes:
            parts.append(f"{', '.join(s.reads)} → {', '.join(s.writes)}")
        self.lines.append(f'{indent}{nid}["{"<br/>".join(_text(p) for p in parts)}"]:::{cls}')
        return nid

    def edge(self, a: str, b: str, label: str | None = None) -> None:
        self.lines.append(f"  {a} -->|{_text(label)}| {b}" if label else f"  {a} --> {b}")

    def seq(self, steps: Sequence[Step], entries: list[str], indent: str) -> list[str]:
        """Draw steps in order; ``entries`` are the nodes flowing into the first one.
        Returns the nodes flowing out of the last one."""
        current = entries
        for s in steps:
            first, last = self.step(s, indent)
            for a in current:
                self.edge(a, first)
            current = last
        return current

    def step(self, s: Step, indent: str) -> tuple[str, list[str]]:
        """Draw one step; returns (entry node, exit nodes)."""
        if isinstance(s, Parallel):
            gid = self.new_id("p")
            title = f"parallel: {s.name}" + (f" (max {s.concurrency})" if s.concurrency else "")
            fork, join = f"{gid}_in", f"{gid}_out"
            self.lines.append(f'{indent}subgraph {gid} ["{_text(title)}"]')
            self.lines.append(f"{indent}  direction LR")
            self.lines.append(f"{indent}  {fork}(( ))")
            self.lines.append(f"{indent}  {join}(( ))")
            for child in s.steps:
                cin, couts = self.step(child, indent + "  ")
                self.edge(fork, cin)
                for c in couts:
                    self.edge(c, join)
            self.lines.append(f"{indent}end")
            return fork, [join]
        if isinstance(s, Branch):
            did = self.new_id("b")
            self.lines.append(f'{indent}{did}{{"{_text(s.name)}: {_text(s.condition_label())}?"}}')
            exits: list[str] = []
            for label, arm in (("yes", s.then), ("no", s.otherwise)):
                if not arm:
                    exits.append(did)
                    continue
                first, last = self.step(arm[0], indent)
                self.edge(did, first, label)
                exits += self.seq(arm[1:], last, indent)
            return did, exits
        if isinstance(s, FanOut):
            gid = self.new_id("f")
            title = f"fan_out: {s.name} over {s.over} → {s.into} (max {s.concurrency})"
            self.lines.append(f'{indent}subgraph {gid} ["{_text(title)}"]')
            first, last = self.step(s.step, indent + "  ")
            self.lines.append(f"{indent}end")
            return first, last
        nid = self.leaf(s, indent)
        if s.fallback is not None:
            fin, fouts = self.step(s.fallback, indent)
            self.lines.append(f"  {nid} -.->|on failure| {fin}")
            return nid, [nid, *fouts]
        return nid, [nid]


def render_mermaid(pipeline: Pipeline, *, direction: str = "TD") -> str:
    """The pipeline as a Mermaid ``flowchart``."""
    r = _Renderer()
    r.lines.append(f"flowchart {direction}")
    inputs = sorted(pipeline.inputs) if pipeline.inputs else []
    start_label = "inputs" + (f": {', '.join(inputs)}" if inputs else "")
    r.lines.append(f'  start(["{_text(start_label)}"]):::io')
    ends = r.seq(pipeline.steps, ["start"], "  ")
    r.lines.append('  done(["outputs"]):::io')
    for e in ends:
        r.edge(e, "done")
    r.lines += [f"  {s}" for s in _STYLES]
    return "\n".join(r.lines) + "\n"
