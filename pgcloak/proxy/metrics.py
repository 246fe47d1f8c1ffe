"""Process-wide counters exposed in Prometheus format.

The hot path only bumps plain ints on a `Metrics` instance (no locks, no
label lookups); a custom collector turns them into metric families when
/metrics is scraped. That keeps per-message accounting to an integer add.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    """Plain counters; one instance per proxy process."""

    def __init__(self) -> None:
        self.connections_active = 0
        self.connections_total = 0
        self.connections_rejected = 0
        self.bytes_from_client = 0
        self.bytes_to_client = 0
        self.messages_from_client = 0
        self.messages_from_server = 0
        self.queries = 0  # simple Query messages + Execute messages
        self.server_errors = 0  # ErrorResponse relayed from the upstream
        self.proxy_errors = 0  # errors raised by pgcloak itself
        self.cancel_requests = 0
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._latency_count = 0

    def observe_latency(self, seconds: float) -> None:
        self._buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._latency_sum += seconds
        self._latency_count += 1

    def latency_histogram(self) -> tuple[list[tuple[str, float]], float]:
        cumulative = 0
        out: list[tuple[str, float]] = []
        for bound, n in zip(LATENCY_BUCKETS, self._buckets, strict=False):
            cumulative += n
            out.append((repr(bound), cumulative))
        cumulative += self._buckets[-1]
        out.append(("+Inf", cumulative))
        return out, self._latency_sum


class _Collector(Collector):
    def __init__(self, m: Metrics) -> None:
        self.m = m

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        m = self.m
        yield GaugeMetricFamily(
            "pgcloak_client_connections_active",
            "Client connections currently open",
            m.connections_active,
        )
        counters = [
            ("pgcloak_client_connections", "Client connections accepted", m.connections_total),
            (
                "pgcloak_failed_connections",
                "Client connections that ended before their session was ready",
                m.connections_rejected,
            ),
            ("pgcloak_cancel_requests", "CancelRequests received", m.cancel_requests),
            ("pgcloak_queries", "Simple queries and Execute messages", m.queries),
            ("pgcloak_server_errors", "ErrorResponses relayed from upstream", m.server_errors),
            ("pgcloak_proxy_errors", "Errors raised by pgcloak itself", m.proxy_errors),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value)
        b = CounterMetricFamily("pgcloak_bytes", "Bytes relayed", labels=["direction"])
        b.add_metric(["from_client"], m.bytes_from_client)
        b.add_metric(["to_client"], m.bytes_to_client)
        yield b
        msgs = CounterMetricFamily("pgcloak_messages", "Messages relayed", labels=["direction"])
        msgs.add_metric(["from_client"], m.messages_from_client)
        msgs.add_metric(["from_server"], m.messages_from_server)
        yield msgs
        buckets, total = m.latency_histogram()
        yield HistogramMetricFamily(
            "pgcloak_query_latency_seconds",
            "Time from Query/Sync to ReadyForQuery",
            buckets=buckets,
            sum_value=total,
        )


def make_registry(m: Metrics) -> CollectorRegistry:
    """A registry holding only pgcloak's metrics (no process globals)."""
    reg = CollectorRegistry(auto_describe=True)
    reg.register(_Collector(m))
    return reg
