"""Prometheus exposition of the counters in `stats.Metrics`.

A custom collector reads the plain ints only when /metrics is scraped, so
per-message accounting stays an integer add on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from pgcloak.proxy.stats import LATENCY_BUCKETS, Metrics

__all__ = ["LATENCY_BUCKETS", "Metrics", "make_registry"]


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
