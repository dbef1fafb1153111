"""Prometheus metrics of one service: its own requests, plus router and pool figures.

The service's counters live in a private ``CollectorRegistry`` (two apps in one process
do not share them). Router rows (``dspex.router_stats()``) and pool stats
(``PoolManager.stats()``) are read at scrape time by a collector, so they are always
current and cost nothing between scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

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
    """The service's own metrics; ``endpoint`` labels come from the configured names only.

    Counted in plain ints on the event loop (no lock per request: prometheus_client's
    metric objects take one per operation) and turned into metric families at scrape
    time; copies of the dicts are taken under the GIL, so a scrape thread never sees a
    half-updated one."""

    def __init__(self, endpoints: Iterable[str], manager: Any = None):
        self.registry = CollectorRegistry(auto_describe=False)
        self.known = set(endpoints)
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # endpoint -> [count per bucket..., +Inf count, sum]
        self.rejected: dict[str, int] = {}
        self.cancelled: dict[str, int] = {}
        self.in_flight = 0
        self.ready = False
        self.registry.register(self)
        self.registry.register(_LiveCollector(manager))

    def label(self, endpoint: str) -> str:
        return endpoint if endpoint in self.known else "other"

    def observe(self, endpoint: str, status: int, seconds: float | None) -> None:
        ep = self.label(endpoint)
        key = (ep, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        if seconds is not None:
            row = self.latency.get(ep)
            if row is None:
                row = self.latency[ep] = [0.0] * (len(_BUCKETS) + 2)
            row[bisect_left(_BUCKETS, seconds)] += 1  # the first bucket whose bound is >= seconds
            row[-1] += seconds

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def cancel(self, endpoint: str) -> None:
        ep = self.label(endpoint)
        self.cancelled[ep] = self.cancelled.get(ep, 0) + 1

    def collect(self) -> Iterator[Metric]:
        req = CounterMetricFamily("dspex_serve_requests", "answered requests", labels=["endpoint", "status"])
        for (ep, status), n in sorted(dict(self.requests).items()):
            req.add_metric([ep, str(status)], n)
        lat = HistogramMetricFamily("dspex_serve_request_seconds", "time to answer a call", labels=["endpoint"])
        for ep, row in sorted(dict(self.latency).items()):
            row = list(row)
            cumulative, buckets = 0.0, []
            for bound, count in zip((*_BUCKETS, float("inf")), row[:-1], strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            lat.add_metric([ep], buckets, sum_value=row[-1])
        rej = CounterMetricFamily("dspex_serve_rejected", "requests refused before running", labels=["reason"])
        for reason, n in sorted(dict(self.rejected).items()):
            rej.add_metric([reason], n)
        can = CounterMetricFamily("dspex_serve_cancelled", "calls cancelled because the client went away",
                                  labels=["endpoint"])
        for ep, n in sorted(dict(self.cancelled).items()):
            can.add_metric([ep], n)
        yield from (req, lat, rej, can)
        yield GaugeMetricFamily("dspex_serve_in_flight", "calls running now", value=self.in_flight)
        yield GaugeMetricFamily("dspex_serve_ready", "1 when every endpoint can take calls", value=int(self.ready))

    def render(self) -> bytes:
        return generate_latest(self.registry)
