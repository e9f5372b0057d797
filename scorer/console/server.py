"""`scorer console`: the analysts' console on uvicorn, over the store's PostgreSQL and the broker.

At start: the database is migrated (the console's tables come with the store's schema, under the same
lock), the port bound (a port in use is one line, exit 1), the verdict publisher connected. Until a signal
it serves; then it finishes the requests in flight, closes the pool and flushes the publisher.
/readyz (on the console's port and the metrics port) is 200 while the database answers.
"""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from typing import Any

import psycopg
import uvicorn
from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from scorer.config import Settings
from scorer.console.app import ConsoleApp
from scorer.console.service import ConsoleMetrics, ConsoleService
from scorer.db.connect import connect
from scorer.db.deadline import Deadline, DeadlineExceeded
from scorer.db.migrate import migrate
from scorer.errors import ScorerError
from scorer.kafka.control import read_deployment
from scorer.runtime.health import serve_health
from scorer.runtime.process import install_signal_handlers
from scorer.serve.server import listen
from scorer.serve.tls import server_context

logger = logging.getLogger(__name__)
VERDICT_TIMEOUT_S = 10.0  # how long a verdict waits for the broker to acknowledge its labels and rules
POOL_SIZE = 8  # connections: pages are short queries, verdicts hold one while the broker acknowledges


def migrate_database(settings: Settings) -> None:
    """Apply the schema's migrations (one line, exit 1, when the database cannot be reached or refuses)."""
    conn = connect(
        settings.database_url,
        application_name="scorer-console",
        connect_timeout_s=settings.database_timeout_s,
    )
    try:
        migrate(conn)
        conn.commit()
    finally:
        conn.close()


def open_pool(settings: Settings) -> ConnectionPool[psycopg.Connection[psycopg.rows.TupleRow]]:
    """The console's connections: each checked before use, a request waits at most database_timeout_s."""
    pool: ConnectionPool[psycopg.Connection[psycopg.rows.TupleRow]] = ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=POOL_SIZE,
        timeout=settings.database_timeout_s,
        kwargs={
            "application_name": "scorer-console",
            "connect_timeout": max(2, int(settings.database_timeout_s)),
        },
        open=False,  # no check on borrowing: it could hang on a frozen server; each request has a deadline
    )
    pool.open(wait=False)
    return pool


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn serves the console. Behind an ingress every request comes from the proxy, which would
    make the per-address sign-in throttle count every analyst together: the client's address is taken from
    X-Forwarded-For only when the peer is one of console_trusted_proxies (never from anyone else)."""
    trusted = [p.strip() for p in settings.console_trusted_proxies.split(",") if p.strip()]
    return {
        "loop": "uvloop", "http": "httptools", "lifespan": "off", "access_log": False, "log_config": None,
        "server_header": False, "timeout_graceful_shutdown": 5,
        "proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None,
    }  # fmt: skip


def run_console(settings: Settings) -> int:
    """Serve until a signal; returns the exit code."""
    from scorer.kafka.verdicts import KafkaVerdictPublisher  # librdkafka only where a verdict is published

    if not settings.database_url:
        raise ScorerError(
            "no database: give --database-url (or SCORER_DATABASE_URL); `scorer postgres` runs one"
        )
    migrate_database(settings)
    tls = server_context(settings)
    registry = CollectorRegistry()
    metrics = ConsoleMetrics(registry)
    with ExitStack() as stack:
        sock = listen(settings.http_host, settings.console_port)
        stack.callback(sock.close)
        pool = open_pool(settings)
        stack.callback(pool.close)
        publisher = KafkaVerdictPublisher(settings, timeout_s=VERDICT_TIMEOUT_S)
        stack.callback(publisher.close)
        service = ConsoleService(
            pool, publisher, metrics, settings.console_sla_hours, settings.console_daily_capacity
        )
        ready = Readiness(pool)
        policy = PolicyText(settings).start()
        stack.callback(policy.close)
        health = serve_health(registry, settings.metrics_host, settings.metrics_port, ready)
        if health is not None:
            stack.callback(health.stop)
        app = ConsoleApp(service, settings.console_secure_cookies or tls is not None, ready, policy)
        config = uvicorn.Config(app.starlette(), **uvicorn_options(settings))
        config.load()
        config.ssl = tls
        logger.info(
            "console_serving",
            extra={"address": f"{settings.http_host}:{settings.console_port}", "tls": tls is not None,
                   "settings": settings.masked()},
        )  # fmt: skip
        server = uvicorn.Server(config)
        install_signal_handlers(threading.Event())
        server.run(sockets=[sock])
        if not server.started:
            raise ScorerError(
                f"cannot serve on {settings.http_host}:{settings.console_port} (see the log above)"
            )
    logger.info("stopped")
    return 0


class PolicyText:
    """The decision policy in force as one line for the queue page, read from `scorer-control` by a thread
    of its own every REFRESH_S (a page never waits on the broker; an unreadable topic says so)."""

    REFRESH_S = 60.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.text = "not read yet"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="policy-text", daemon=True)

    def start(self) -> PolicyText:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)

    def __call__(self) -> str:
        return self.text

    def _run(self) -> None:
        while True:
            self.text = self.read()
            if self.stop.wait(self.REFRESH_S):
                return

    def read(self) -> str:
        try:
            deployment = read_deployment(self.settings, timeout_s=5.0)
        except (ScorerError, KafkaException) as exc:
            return (
                f"unknown: {self.settings.control_topic} could not be read ({str(exc).splitlines()[0][:120]})"
            )
        if deployment is None:
            return "none published: each model's own threshold flags for review"
        return f"{deployment.policy.describe()} (champion {deployment.champion})"


class Readiness:
    """True while a pooled connection answers `select 1` within a second."""

    def __init__(self, pool: ConnectionPool[psycopg.Connection[psycopg.rows.TupleRow]]) -> None:
        self.pool = pool

    def __call__(self) -> bool:
        try:
            with self.pool.connection(timeout=1.0) as conn, Deadline(conn, 1.0, what="the readiness check"):
                conn.execute("select 1")
        except (psycopg.Error, TimeoutError, DeadlineExceeded) as exc:
            logger.warning("database_not_ready", extra={"error": str(exc).strip().splitlines()[0]})
            return False
        return True
