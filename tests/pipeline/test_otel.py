"""OpenTelemetry spans for a run and its steps (needs opentelemetry-sdk; skipped without)."""

from __future__ import annotations

import pytest

from dspex.pipeline import native, parallel, pipeline

pytestmark = pytest.mark.timeout(30)


def test_spans_nest_and_carry_attributes() -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk is not installed")
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from dspex.pipeline import otel

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    otel._reset()

    def a(x: int) -> int:
        return x + 1

    def b(x: int) -> int:
        return x + 2

    pipeline([parallel([native(a, writes="ya"), native(b, writes="yb")], name="group")], name="traced").run(x=1)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"dspex.pipeline traced", "dspex.step group", "dspex.step group/a", "dspex.step group/b"} <= set(spans)
    root = spans["dspex.pipeline traced"]
    assert spans["dspex.step group"].parent.span_id == root.context.span_id
    assert spans["dspex.step group/a"].parent.span_id == spans["dspex.step group"].context.span_id
    assert spans["dspex.step group/a"].attributes["dspex.where"] == "native"
    assert spans["dspex.step group/a"].attributes["dspex.kind"] == "native"
