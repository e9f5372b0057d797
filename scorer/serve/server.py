"""`scorer serve`: the HTTP scoring API, answered by the stream's scorers through Kafka request-reply.

Startup, each problem one line and an exit code before anything is served: the access rule (API keys
from their file, or serve_auth = "none" said explicitly: exit 2 without either) and the TLS files
(exit 2), the API port and the metrics port bound (exit 1 naming the address in use), the broker and
the transactions topic, this instance's reply topic read from its end, the publisher, and the watch
on the scorers' group. Then it serves on http_host:http_port until SIGTERM/SIGINT, when it stops
taking requests, lets those in flight finish (uvicorn's graceful shutdown) and flushes the producer.

/readyz (on the API port and on metrics_port) is 200 once a decision can come back: the reply topic is
read, the broker answers, and the scorers' group has settled with every partition assigned
(kafka/groups.py).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import ssl
import threading
from contextlib import ExitStack
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from scorer.config import Settings
from scorer.errors import ConfigError, ScorerError
from scorer.kafka import clients
from scorer.kafka.groups import ScorerGroupWatch
from scorer.kafka.requests import Publisher, ReplyListener, reply_topic
from scorer.kafka.topics import partition_counts
from scorer.runtime.health import serve_health
from scorer.runtime.process import install_signal_handlers
from scorer.serve.access import OPEN, Access, KeyAccess, KeyFile, OpenAccess
from scorer.serve.http import ScoringApp
from scorer.serve.metrics import ServeMetrics
from scorer.serve.pending import Pending
from scorer.serve.service import ScoringService
from scorer.serve.tls import server_context

logger = logging.getLogger(__name__)
MAX_WAIT_S = 600.0  # a request with no reply after this long is forgotten (its decision is in the log)
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def access_for(settings: Settings, metrics: ServeMetrics) -> Access:
    """The access rule the settings ask for; ConfigError (exit 2) for keys without a usable key file."""
    if settings.serve_auth == "none":
        metrics.count_keys([OPEN])
        return OpenAccess()
    if not settings.serve_api_keys_path:
        raise ConfigError(
            "scorer serve needs API keys: serve_api_keys_path (--api-keys FILE; create one with "
            '`scorer api-keys new NAME --file FILE`), or serve_auth = "none" (--no-auth) to serve anyone'
        )

    def reloaded(ok: bool) -> None:
        metrics.key_reloads.labels("ok" if ok else "failed").inc()
        if ok:
            metrics.count_keys(k.name for k in keys.keys)

    keys = KeyFile(Path(settings.serve_api_keys_path), settings.serve_key_rate_per_s, on_reload=reloaded)
    metrics.count_keys(k.name for k in keys.keys)
    return KeyAccess(keys, settings.serve_batch_max)


def listen(host: str, port: int) -> socket.socket:
    """The API port's listening socket, bound now so that a port in use is one line (exit 1), not a
    traceback after "serving"."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:  # the errno's text alone: create_server's message repeats the address
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ScorerError(f"cannot listen on {host}:{port}: {why}") from exc


def run_serve(settings: Settings) -> int:
    """Serve until a signal; returns the exit code."""
    registry = CollectorRegistry()
    metrics = ServeMetrics(registry)
    access = access_for(settings, metrics)
    tls = server_context(settings)
    ready = _Readiness()
    with ExitStack() as stack:  # closed in reverse: the watch, the listener, the producer's flush, the ports
        sock = listen(settings.http_host, settings.http_port)
        stack.callback(sock.close)
        health = serve_health(registry, settings.metrics_host, settings.metrics_port, lambda: ready() is None)
        if health is not None:
            stack.callback(health.stop)
        service = _kafka_side(settings, metrics, ready, stack)
        _serve(settings, ScoringApp(service, registry, metrics, ready, access), sock, tls)
    logger.info("stopped")
    return 0


def _kafka_side(
    settings: Settings, metrics: ServeMetrics, ready: _Readiness, stack: ExitStack
) -> ScoringService:
    """The transactions topic checked, the publisher, the reply listener and the watch on the scorers'
    group started (each closed by `stack`); the service that uses them."""
    partitions = _input_partitions(settings)
    pending = Pending(settings.serve_cache_size, metrics.late.inc)
    metrics.in_flight.set_function(pending.in_flight)
    topic = reply_topic(settings)
    publisher = Publisher(settings, topic)
    stack.callback(publisher.close)
    expire = functools.partial(pending.expire, MAX_WAIT_S)
    errors = metrics.listener_errors.labels
    listener = ReplyListener(
        settings, topic, pending.complete, expire, publisher.poll, lambda name: errors(name).inc()
    ).start()
    stack.callback(listener.close)
    admin = clients.admin(settings.admin_config())
    scorers = ScorerGroupWatch(admin, settings.group, settings.input_topic, partitions).start()
    stack.callback(scorers.close)
    ready.watch(listener, scorers)
    metrics.scorers_ready.set_function(lambda: float(scorers.why_not() is None))
    logger.info("reading_replies", extra={"reply_topic": topic})
    return ScoringService(settings, pending, publisher.publish)


def _input_partitions(settings: Settings) -> int:
    counts = partition_counts(settings, [settings.input_topic])
    if settings.input_topic not in counts:
        raise ScorerError(
            f"topic {settings.input_topic!r} is missing on {settings.brokers}: create it with `scorer topics`"
        )
    return counts[settings.input_topic]


def _serve(settings: Settings, app: ScoringApp, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
    """Run uvicorn on the bound socket until a signal."""
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # nothing here depends on the client's address or scheme: no X-Forwarded-* trusted
        timeout_graceful_shutdown=int(settings.serve_deadline_ms / 1000.0) + 2,
    )
    config.load()
    config.ssl = tls  # ours (serve/tls.py: loaded and checked at start), on the socket bound by listen()
    if settings.serve_auth == "none" and settings.http_host not in LOOPBACK:
        logger.warning("serving_without_auth", extra={"host": settings.http_host, "port": settings.http_port})
    logger.info(
        "serving",
        extra={
            "address": f"{settings.http_host}:{settings.http_port}",
            "tls": "mutual" if settings.serve_tls_client_ca_path else "on" if tls is not None else "off",
            "auth": settings.serve_auth,
            "settings": settings.masked(),
        },
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it, to the handler it found: ours, so that the
    # producer is flushed afterwards and the exit code is 0
    install_signal_handlers(threading.Event())
    server.run(sockets=[sock])  # SIGTERM/SIGINT: stop accepting, finish the requests in flight
    if not server.started:
        raise ScorerError(f"cannot serve on {settings.http_host}:{settings.http_port} (see the log above)")


class _Readiness:
    """None once a decision can come back, else why not: for /readyz on both ports."""

    def __init__(self) -> None:
        self._listener: ReplyListener | None = None
        self._scorers: ScorerGroupWatch | None = None

    def watch(self, listener: ReplyListener, scorers: ScorerGroupWatch) -> None:
        self._listener, self._scorers = listener, scorers

    def __call__(self) -> str | None:
        if self._listener is None or self._scorers is None:
            return "starting"
        if not self._listener.alive():
            return "the reply topic is not being read, or the broker does not answer"
        return self._scorers.why_not()
