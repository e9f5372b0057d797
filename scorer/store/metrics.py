"""Metrics of `scorer store`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TABLES = ("transactions", "decisions", "labels", "dead_letters")
SKIP_REASONS = ("invalid_transaction", "invalid_decision", "invalid_label", "nul_character")


class StoreMetrics:
    """Rows written, batch write time, failures, lag and whether the database answers."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.registry = registry
        self.rows = Counter("scorer_store_rows", "Rows written (upserted) per table.", ["table"], registry=r)
        self.skipped = Counter(
            "scorer_store_skipped_records",
            "Records not stored, per table and reason (still in Kafka; refused transactions are stored as "
            "the scorer's dead letters).",
            ["table", "reason"],
            registry=r,
        )
        for table in TABLES:
            self.rows.labels(table)
            for reason in SKIP_REASONS:
                self.skipped.labels(table, reason)
        self.batch_seconds = Histogram(
            "scorer_store_batch_seconds",
            "Wall time to write one batch: partitions, upserts, offsets, commit.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.batch_records = Histogram(
            "scorer_store_batch_records",
            "Records per written batch.",
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000),
            registry=r,
        )
        self.commit_failures = Counter(
            "scorer_store_commit_failures",
            "Batches the database did not take, by reason (transient ones are retried).",
            ["reason"],
            registry=r,
        )
        self.lag = Gauge(
            "scorer_store_lag_records",
            "Records not yet stored per input partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.database_up = Gauge(
            "scorer_store_database_up",
            "1 while the database takes writes, 0 while the store waits for it.",
            registry=r,
        )
        self.partitions_dropped = Counter(
            "scorer_store_partitions_dropped", "Day partitions dropped by the retention.", registry=r
        )
