"""`scorer serve`: the HTTP scoring API, answered by the stream's scorers through Kafka request-reply.

Startup checks the broker and the transactions topic, creates this instance's reply topic, starts
reading it and the publisher, then listens on http_host:http_port until SIGTERM/SIGINT, when it stops
taking requests, lets those in flight finish (aiohttp's graceful shutdown) and flushes the producer.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CollectorRegistry

from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.kafka.requests import Publisher, ReplyListener, reply_topic
from scorer.kafka.topics import partition_counts
from scorer.serve.http import build_app
from scorer.serve.metrics import ServeMetrics
from scorer.serve.pending import Pending
from scorer.serve.service import ScoringService

logger = logging.getLogger(__name__)
MAX_WAIT_S = 600.0  # a request with no reply after this long is forgotten (its decision is in the log)


def run_serve(settings: Settings) -> int:
    """Serve until a signal; returns the exit code."""
    if settings.input_topic not in partition_counts(settings, [settings.input_topic]):
        raise ScorerError(
            f"topic {settings.input_topic!r} is missing on {settings.brokers}: create it with `scorer topics`"
        )
    registry = CollectorRegistry()
    metrics = ServeMetrics(registry)
    pending = Pending(settings.serve_cache_size, metrics.late.inc)
    topic = reply_topic(settings)
    listener = ReplyListener(settings, topic, pending.complete, lambda: pending.expire(MAX_WAIT_S)).start()
    publisher = Publisher(settings, topic)
    try:
        service = ScoringService(settings, pending, publisher.publish)
        app = build_app(service, registry, metrics, listener.alive)
        logger.info(
            "serving",
            extra={"port": settings.http_port, "reply_topic": topic, "settings": settings.masked()},
        )
        web.run_app(
            app, host=settings.http_host, port=settings.http_port, access_log=None, print=None,
            handle_signals=True, shutdown_timeout=settings.serve_deadline_ms / 1000.0 + 1.0,
        )  # fmt: skip
    finally:
        publisher.close()
        listener.close()
    logger.info("stopped")
    return 0
