"""The console served in-process on a free port over the real PostgreSQL, with a publisher that records what a
verdict published (or refuses it), and a small HTTP client that keeps cookies: for the console's tests."""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from urllib.parse import urlencode

import psycopg
import uvicorn
from prometheus_client import CollectorRegistry

from scorer.cases.model import LabelOut, RuleRequest
from scorer.config import Settings
from scorer.console.app import ConsoleApp
from scorer.console.server import Readiness, open_pool, uvicorn_options
from scorer.console.service import ConsoleMetrics, ConsoleService
from scorer.db import accounts
from scorer.db.migrate import migrate
from scorer.errors import ScorerError
from scorer.kafka.verdicts import RuleRefused

PASSWORD = "correct horse battery"  # noqa: S105 (the test accounts' password)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class RecordingPublisher:
    """A VerdictPublisher that keeps what it was given; `refuse` makes the next publish fail as a broker
    that refused a delivery would."""

    def __init__(self) -> None:
        self.labels: list[LabelOut] = []
        self.rules: list[RuleRequest] = []
        self.refuse = False
        self.contradict = False
        self.reported_at: list[datetime | None] = []

    def publish(
        self, labels: Sequence[LabelOut], rules: Sequence[RuleRequest], reported_at: datetime | None = None
    ) -> None:
        if self.refuse:
            raise ScorerError("the broker refused a delivery: test")
        if self.contradict and rules:
            raise RuleRefused("rule case-C1-block refused: 'C1' is already allowed and blocked in rule vip")
        self.labels += labels
        self.rules += rules
        self.reported_at.append(reported_at)


class Client:
    """HTTP to the console with a cookie jar (name -> value) and no redirect following."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, form: dict[str, str] | list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None, body: bytes | None = None,
    ) -> tuple[int, dict[str, str], str]:  # fmt: skip
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if form is not None:
            body = urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        text = response.read().decode()
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                cookie = rest.split(";")[0]
                if cookie in ('""', "") or "max-age=0" in value.lower():
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = cookie
        conn.close()
        headers = {k.lower(): v for k, v in response.getheaders()}
        headers["set-cookie"] = "\n".join(v for k, v in response.getheaders() if k.lower() == "set-cookie")
        return response.status, headers, text

    def sign_in(self, name: str, password: str = PASSWORD) -> int:
        _, _, page = self.request("GET", "/login")
        match = CSRF.search(page)
        assert match is not None
        status, _, _ = self.request("POST", "/login", {"csrf": match[1], "name": name, "password": password})
        return status

    def csrf(self, path: str = "/") -> str:
        _, _, page = self.request("GET", path)
        match = CSRF.search(page)
        assert match is not None, page[:300]
        return match[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served_console(
    database_url: str, publisher: RecordingPublisher, trusted_proxies: str = "", deadline_s: float = 10.0
) -> Iterator[int]:
    """The console app on uvicorn in a thread, users anna (analyst), bob (analyst), lena (lead); its port."""
    with psycopg.connect(database_url) as conn:
        migrate(conn)
        for name, role in (("anna", "analyst"), ("bob", "analyst"), ("lena", "lead")):
            accounts.add_user(conn, name, role, PASSWORD)
    settings = Settings(
        database_url=database_url, database_timeout_s=5.0, console_trusted_proxies=trusted_proxies
    )
    pool = open_pool(settings)
    service = ConsoleService(
        pool, publisher, ConsoleMetrics(CollectorRegistry()), 4.0, 50, deadline_s=deadline_s
    )
    app = ConsoleApp(service, False, Readiness(pool), lambda: "review from threshold:0.5 (test)")
    port = free_port()
    options = uvicorn_options(settings) | {"loop": "asyncio"}  # the test's thread runs its own loop
    config = uvicorn.Config(app.starlette(), host="127.0.0.1", port=port, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the console did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        pool.close()
