"""`scorer serve`'s Prometheus metrics: requests by route and outcome, latency, in flight, late decisions."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ROUTES = ("score", "score_batch")
OUTCOMES = (  # a small fixed set (service.py): never an id
    "stream", "cache", "fallback", "invalid", "unavailable", "deadline_exceeded", "processing_error",
    "invalid_deadline", "expired",
)  # fmt: skip
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class ServeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter(
            "scorer_serve_requests", "HTTP scoring requests answered, by route and outcome.",
            ["route", "outcome"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "scorer_serve_request_seconds", "Time from a scoring request's arrival to its answer.",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "scorer_serve_in_flight", "Transactions published and waiting for their decision.", registry=r
        )
        self.late = Counter(
            "scorer_serve_late_decisions",
            "Decisions that arrived after their request's deadline (kept for a retry).", registry=r,
        )  # fmt: skip
        for route in ROUTES:
            self.latency.labels(route)
            for outcome in OUTCOMES:
                self.requests.labels(route, outcome)

    @contextmanager
    def timed(self, route: str) -> Iterator[Callable[[str], None]]:
        """Times the block; the block names its outcome through the function it is given."""
        started = time.perf_counter()
        outcome = ["unavailable"]

        def record(name: str) -> None:
            outcome[0] = name if name in OUTCOMES else "unavailable"

        try:
            yield record
        finally:
            self.requests.labels(route, outcome[0]).inc()
            self.latency.labels(route).observe(time.perf_counter() - started)
