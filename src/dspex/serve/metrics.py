"""Prometheus metrics of one service: its own requests, plus router and pool figures.

The service's counters live in a private ``CollectorRegistry`` (two apps in one process
do not share them). Router rows (``dspex.router_stats()``) and pool stats
(``PoolManager.stats()``) are read at scrape time by a collector, so they are always
current and cost nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["CONTENT_TYPE", "ServeMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_POOL_COUNTERS = ("calls", "errors", "timeouts", "crashes", "restarts", "recycles", "cancelled", "overloaded",
                  "requeued")
_POOL_GAUGES = ("queue_depth", "in_flight", "sessions")


class _LiveCollector:
    """Router and pool figures, read when Prometheus scrapes."""

    def __init__(self, manager: Any):
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        yield from self._router()
        yield from self._pools()

    def _router(self) -> Iterable[Metric]:
        try:
            from ..api import router_stats

            rows = router_stats().rows
        except Exception:  # a metrics scrape never fails the service
            rows = []
        calls = CounterMetricFamily("dspex_router_calls", "calls per operation and implementation",
                                    labels=["op", "impl"])
        errs = CounterMetricFamily("dspex_router_errors", "failed calls per operation and implementation",
                                   labels=["op", "impl"])
        lat = GaugeMetricFamily("dspex_router_latency_seconds", "call latency quantiles",
                                labels=["op", "impl", "quantile"])
        for r in rows:
            key = [str(r["op"]), str(r["impl"])]
            calls.add_metric(key, float(r.get("calls", 0)))
            errs.add_metric(key, float(r.get("errors", 0)))
            for q, col in (("0.5", "p50_ms"), ("0.99", "p99_ms")):
                lat.add_metric([*key, q], float(r.get(col, 0.0)) / 1000.0)
        return [calls, errs, lat]

    def _pools(self) -> Iterable[Metric]:
        try:
            stats = self.manager.stats() if self.manager is not None else {}
        except Exception:
            stats = {}
        counters = {k: CounterMetricFamily(f"dspex_pool_{k}", f"pool {k} since start", labels=["pool"])
                    for k in _POOL_COUNTERS}
        gauges = {k: GaugeMetricFamily(f"dspex_pool_{k}", f"pool {k} now", labels=["pool"]) for k in _POOL_GAUGES}
        workers = GaugeMetricFamily("dspex_pool_workers", "workers per state", labels=["pool", "state"])
        lat = GaugeMetricFamily("dspex_pool_latency_seconds", "pool call latency quantiles",
                                labels=["pool", "quantile"])
        for name, st in stats.items():
            for k, fam in counters.items():
                fam.add_metric([name], float(st.get(k, 0) or 0))
            for k, g in gauges.items():
                g.add_metric([name], float(st.get(k, 0) or 0))
            states: dict[str, int] = {}
            for w in st.get("workers") or []:
                states[str(w.get("state"))] = states.get(str(w.get("state")), 0) + 1
            for state, n in states.items():
                workers.add_metric([name, state], float(n))
            ls = st.get("latency_s") or {}
            for q, col in (("0.5", "p50"), ("0.99", "p99")):
                if ls.get(col) is not None:
                    lat.add_metric([name, q], float(ls[col]))
        return [*counters.values(), *gauges.values(), workers, lat]


class ServeMetrics:
    """The service's own metrics; ``endpoint`` labels come from the configured names only."""

    def __init__(self, endpoints: Iterable[str], manager: Any = None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.known = set(endpoints)
        r = self.registry
        self.requests = Counter("dspex_serve_requests", "answered requests", ["endpoint", "status"], registry=r)
        self.latency = Histogram("dspex_serve_request_seconds", "time to answer a call", ["endpoint"],
                                 buckets=_BUCKETS, registry=r)
        self.in_flight = Gauge("dspex_serve_in_flight", "calls running now", registry=r)
        self.rejected = Counter("dspex_serve_rejected", "requests refused before running", ["reason"], registry=r)
        self.cancelled = Counter("dspex_serve_cancelled", "calls cancelled because the client went away",
                                 ["endpoint"], registry=r)
        self.ready = Gauge("dspex_serve_ready", "1 when every endpoint can take calls", registry=r)
        r.register(_LiveCollector(manager))
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def label(self, endpoint: str) -> str:
        return endpoint if endpoint in self.known else "other"

    def observe(self, endpoint: str, status: int, seconds: float | None) -> None:
        ep = self.label(endpoint)
        child = self._children.get((ep, status))
        if child is None:  # labelled children cached: .labels() takes a lock and builds a tuple
            child = self._children[(ep, status)] = (self.requests.labels(ep, str(status)), self.latency.labels(ep))
        child[0].inc()
        if seconds is not None:
            child[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
