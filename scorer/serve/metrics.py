"""`scorer serve`'s Prometheus metrics: requests by route and outcome, latency, in flight, late decisions."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ROUTES = ("score", "score_batch")
OUTCOMES = (  # a small fixed set (service.py): never an id
    "stream", "cache", "fallback", "invalid", "unavailable", "deadline_exceeded", "processing_error",
    "invalid_deadline", "expired", "unauthorized", "rate_limited", "internal_error",
)  # fmt: skip
KEY_RESULTS = ("accepted", "rate_limited")  # per key name; missing / unknown are only ever unauthorized
LISTENER_CALLBACKS = ("reply", "turn", "tick", "consume")
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
        self.keys = Counter(
            "scorer_serve_api_key_requests",
            "Scoring requests by API key name (missing, unknown: no valid key) and result.",
            ["key", "result"],
            registry=r,
        )
        self.key_reloads = Counter(
            "scorer_serve_api_key_reloads",
            "Reads of the changed API key file: ok, or failed (the keys in force stay).",
            ["result"],
            registry=r,
        )
        self.listener_errors = Counter(
            "scorer_serve_listener_errors",
            "Failures caught on the reply listener's thread, by callback (it goes on reading replies).",
            ["callback"],
            registry=r,
        )
        self.scorers_ready = Gauge(
            "scorer_serve_scorers_ready",
            "1 when the scorers' group can answer (settled with every partition assigned), else 0.",
            registry=r,
        )
        self._accepted: dict[str, Counter] = {}
        for callback in LISTENER_CALLBACKS:
            self.listener_errors.labels(callback)
        for result in ("ok", "failed"):
            self.key_reloads.labels(result)
        for route in ROUTES:
            self.latency.labels(route)
            for outcome in OUTCOMES:
                self.requests.labels(route, outcome)

    def accepted(self, name: str) -> None:
        """One more request accepted for the key `name` (its child counter cached: labels() costs more)."""
        child = self._accepted.get(name)
        if child is None:
            child = self._accepted[name] = self.keys.labels(name, "accepted")
        child.inc()

    def count_keys(self, names: Iterable[str]) -> None:
        """Pre-create the series of these key names (and of the requests without a valid key)."""
        for label in ("missing", "unknown"):
            self.keys.labels(label, "unauthorized")
        for name in names:
            for result in KEY_RESULTS:
                self.keys.labels(name, result)

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
