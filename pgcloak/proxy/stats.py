"""Process-wide counters, as plain native ints.

The hot path (compiled with mypyc when available) bumps these fields directly:
no locks, no label lookups. `metrics.py` turns them into Prometheus families
only when /metrics is scraped.
"""

from __future__ import annotations

from bisect import bisect_left

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
        self.reset()

    def reset(self) -> None:
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

    # Worker processes publish a snapshot into shared memory; the supervisor sums them.
    def snapshot(self) -> tuple[list[int], float]:
        """Counters (COUNTERS order, then histogram buckets, then count) and latency sum."""
        ints = [
            self.connections_active,
            self.connections_total,
            self.connections_rejected,
            self.bytes_from_client,
            self.bytes_to_client,
            self.messages_from_client,
            self.messages_from_server,
            self.queries,
            self.server_errors,
            self.proxy_errors,
            self.cancel_requests,
        ]
        return ints + self._buckets + [self._latency_count], self._latency_sum

    def add(self, ints: list[int], latency_sum: float) -> None:
        """Add another process's snapshot to these counters."""
        self.connections_active += ints[0]
        self.connections_total += ints[1]
        self.connections_rejected += ints[2]
        self.bytes_from_client += ints[3]
        self.bytes_to_client += ints[4]
        self.messages_from_client += ints[5]
        self.messages_from_server += ints[6]
        self.queries += ints[7]
        self.server_errors += ints[8]
        self.proxy_errors += ints[9]
        self.cancel_requests += ints[10]
        nb = len(self._buckets)
        for i in range(nb):
            self._buckets[i] += ints[11 + i]
        self._latency_count += ints[11 + nb]
        self._latency_sum += latency_sum


SNAPSHOT_INTS = 11 + len(LATENCY_BUCKETS) + 1 + 1  # counters, buckets (+Inf), count
