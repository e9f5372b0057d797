"""`scorer serve`: the HTTP scoring API, answered by the stream's scorers through Kafka request-reply.

Startup checks the broker and the transactions topic, creates this instance's reply topic, starts
reading it and the publisher, then listens on http_host:http_port until SIGTERM/SIGINT, when it stops
taking requests, lets those in flight finish (uvicorn's graceful shutdown) and flushes the producer.
"""

from __future__ import annotations

import functools
import logging
import threading

import uvicorn
from prometheus_client import CollectorRegistry

from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.kafka.requests import Publisher, ReplyListener, reply_topic
from scorer.kafka.topics import partition_counts
from scorer.runtime.process import install_signal_handlers
from scorer.serve.http import ScoringApp
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
    publisher = Publisher(settings, topic)
    expire = functools.partial(pending.expire, MAX_WAIT_S)
    listener = ReplyListener(settings, topic, pending.complete, expire, publisher.poll).start()
    try:
        service = ScoringService(settings, pending, publisher.publish)
        app = ScoringApp(service, registry, metrics, listener.alive)
        logger.info(
            "serving",
            extra={"port": settings.http_port, "reply_topic": topic, "settings": settings.masked()},
        )
        config = uvicorn.Config(
            app, host=settings.http_host, port=settings.http_port, loop="uvloop", http="httptools",
            lifespan="off", access_log=False, log_config=None, server_header=False,
            timeout_graceful_shutdown=int(settings.serve_deadline_ms / 1000.0) + 2,
        )  # fmt: skip
        server = uvicorn.Server(config)
        # uvicorn re-raises the signal that stopped it, to the handler it found: ours, so that the
        # producer is flushed below and the exit code is 0
        install_signal_handlers(threading.Event())
        server.run()  # SIGTERM/SIGINT: stop accepting, finish the requests in flight
        if not server.started:
            raise ScorerError(
                f"cannot listen on {settings.http_host}:{settings.http_port} (see the log above)"
            )
    finally:
        publisher.close()
        listener.close()
    logger.info("stopped")
    return 0
