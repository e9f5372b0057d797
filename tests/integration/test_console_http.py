"""The console over HTTP on the real PostgreSQL: who may see and do what (sessions, CSRF, roles, tokens,
throttling), escaping, verdicts publishing labels and rules, and a refused publish changing nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import psycopg
import pytest
from consolekit import Client, RecordingPublisher, served_console
from test_cases_db import add_decision

from scorer.db import accounts
from scorer.db.embedded import EmbeddedPostgres

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def port(database_url: str, publisher: RecordingPublisher) -> Iterator[int]:
    with psycopg.connect(database_url) as conn:
        from scorer.db.migrate import migrate

        migrate(conn)
        add_decision(conn, "t1", "C1", score=0.91, amount=420.0)
        add_decision(conn, "t2", "C1", minutes=3, action="approve")
        add_decision(conn, "t3", XSS, score=0.8, action="decline")
        add_decision(conn, "t4", "C2", score=0.6, source="limit-1000", action="decline")
    with served_console(database_url, publisher) as p:
        yield p


def test_nothing_without_a_session_or_a_token(port: int) -> None:
    anon = Client(port)
    for path in ("/", "/case?id=C1"):
        status, headers, _ = anon.request("GET", path)
        assert (status, headers["location"]) == (303, "/login")
    status, _, _ = anon.request("POST", "/case/close", {"case_id": "C1", "outcome": "fraud", "csrf": "x"})
    assert status == 303  # to sign-in, nothing closed
    status, headers, body = anon.request("GET", "/api/v1/cases")
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    status, _, _ = anon.request("GET", "/api/v1/cases", headers={"Authorization": "Bearer sct_forged"})
    assert status == 401


def test_sign_in_sets_a_strict_httponly_cookie_and_wrong_passwords_are_throttled(port: int) -> None:
    client = Client(port)
    _, _, page = client.request("GET", "/login")
    status, headers, _ = client.request(
        "POST",
        "/login",
        {"csrf": client.cookies["scorer_login_csrf"], "name": "anna", "password": "correct horse battery"},
    )
    assert status == 303
    (cookie,) = [c.lower() for c in headers["set-cookie"].splitlines() if c.startswith("scorer_session=")]
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert "content-security-policy" in headers
    no_csrf = Client(port)
    assert no_csrf.request("POST", "/login", {"name": "anna", "password": "correct horse battery"})[0] == 403
    attacker = Client(port)
    assert [attacker.sign_in("bob", "wrong password!") for _ in range(5)] == [401] * 5
    assert attacker.sign_in("bob") == 429  # the right password too, while held off


def test_a_state_change_without_the_csrf_token_is_refused(port: int, publisher: RecordingPublisher) -> None:
    client = Client(port)
    assert client.sign_in("anna") == 303
    status, _, body = client.request("POST", "/case/close", {"case_id": "C1", "outcome": "fraud"})
    assert status == 403 and "CSRF" in body
    status, _, _ = client.request(
        "POST", "/case/close", {"case_id": "C1", "outcome": "fraud", "csrf": "forged"}
    )
    assert status == 403
    assert publisher.labels == []


def test_data_is_escaped_in_every_page(port: int) -> None:
    client = Client(port)
    client.sign_in("anna")
    _, _, queue = client.request("GET", "/")
    assert XSS not in queue and "&lt;img src=x onerror=alert(1)&gt;" in queue
    _, _, case = client.request("GET", "/case?id=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    assert XSS not in case and "&lt;img src=x onerror=alert(1)&gt;" in case


def test_a_fraud_verdict_with_a_block_publishes_labels_and_the_rule(
    port: int, publisher: RecordingPublisher
) -> None:
    client = Client(port)
    client.sign_in("anna")
    csrf = client.csrf("/case?id=C1")
    status, headers, _ = client.request(
        "POST", "/case/close", {"csrf": csrf, "case_id": "C1", "outcome": "fraud", "block_days": "7"}
    )
    assert status == 303 and headers["location"] == "/case?id=C1"
    assert "closed+as+fraud" in client.cookies["scorer_flash"]  # shown once on the page it leads to
    assert [(lb.transaction_id, lb.is_fraud, lb.analyst_id) for lb in publisher.labels] == [
        ("t1", True, "anna")
    ]
    (rule,) = publisher.rules
    assert (rule.kind, rule.customer_id, rule.case_id) == ("block_customer", "C1", "C1")
    _, _, page = client.request("GET", "/case?id=C1")
    assert "closed (fraud)" in page and "rule_requested" in page and "7 labels" not in page
    assert "closed as fraud: 1 labels published" in page and "scorer_flash" not in client.cookies
    assert publisher.reported_at == [None]  # the publisher's clock: console_label_time = "now"
    lead = Client(port)
    lead.sign_in("lena")
    status, _, _ = lead.request(
        "POST", "/case/close", {"csrf": lead.csrf(), "case_id": "C1", "outcome": "genuine"}
    )
    assert status == 303  # reversed: the label corrected and the block lifted
    assert [(lb.transaction_id, lb.is_fraud) for lb in publisher.labels[1:]] == [("t1", False)]
    assert [r.kind for r in publisher.rules] == ["block_customer", "unblock_customer"]


def test_a_refused_publish_leaves_the_case_open(port: int, publisher: RecordingPublisher) -> None:
    client = Client(port)
    client.sign_in("anna")
    csrf = client.csrf("/case?id=C1")
    publisher.refuse = True
    status, _, body = client.request(
        "POST", "/case/close", {"csrf": csrf, "case_id": "C1", "outcome": "fraud"}
    )
    assert status == 503 and "nothing changed" in body
    _, _, page = client.request("GET", "/case?id=C1")
    assert 'id="case-status">open' in page


def test_a_block_that_contradicts_a_rule_in_force_is_refused_with_its_reason(
    port: int, publisher: RecordingPublisher
) -> None:
    client = Client(port)
    client.sign_in("anna")
    publisher.contradict = True
    form = {"csrf": client.csrf("/case?id=C1"), "case_id": "C1", "outcome": "fraud", "block_days": "7"}
    status, _, body = client.request("POST", "/case/close", form)
    assert status == 409 and "already allowed" in body and "nothing changed" in body
    _, _, page = client.request("GET", "/case?id=C1")
    assert 'id="case-status">open' in page and publisher.labels == []


def test_roles_an_analyst_cannot_take_anothers_case_or_bulk_close(
    port: int, publisher: RecordingPublisher
) -> None:
    anna, bob, lena = Client(port), Client(port), Client(port)
    for client, name in ((anna, "anna"), (bob, "bob"), (lena, "lena")):
        assert client.sign_in(name) == 303
    csrf = anna.csrf()
    assert anna.request("POST", "/case/take?id=C1", {"csrf": csrf})[0] == 303
    bob_csrf = bob.csrf()
    status, _, body = bob.request(
        "POST", "/case/assign", {"csrf": bob_csrf, "case_id": "C1", "assignee": "bob"}
    )
    assert status == 403
    status, _, _ = bob.request(
        "POST", "/case/close", {"csrf": bob_csrf, "case_id": "C1", "outcome": "genuine"}
    )
    assert status == 403
    status, _, _ = bob.request(
        "POST", "/cases/bulk-close", [("csrf", bob_csrf), ("case_id", "C2"), ("outcome", "genuine")]
    )
    assert status == 403
    assert publisher.labels == []
    lena_csrf = lena.csrf()
    status, headers, _ = lena.request(
        "POST",
        "/cases/bulk-close",
        [("csrf", lena_csrf), ("case_id", "C1"), ("case_id", "C2"), ("outcome", "genuine")],
    )
    assert status == 303 and lena.cookies["scorer_flash"].startswith("2+closed")
    assert sorted(lb.transaction_id for lb in publisher.labels) == ["t1", "t4"]


def test_the_api_with_a_token_and_a_revoked_token(
    port: int, database_url: str, publisher: RecordingPublisher
) -> None:
    with psycopg.connect(database_url) as conn:
        token = accounts.add_token(conn, "siem", "anna")
    client = Client(port)
    auth = {"Authorization": f"Bearer {token}"}
    status, _, body = client.request("GET", "/api/v1/cases", headers=auth)
    assert status == 200
    assert orjson.loads(body)["cases"][0]["case_id"] == "C1"  # the highest score first
    verdict = orjson.dumps({"case_id": "C2", "outcome": "genuine"})
    status, _, body = client.request(
        "POST", "/api/v1/case/verdict", headers=auth | {"Content-Type": "application/json"}, body=verdict
    )
    assert status == 200 and orjson.loads(body)["labels"][0]["transaction_id"] == "t4"
    status, _, body = client.request("POST", "/api/v1/case/verdict", headers=auth, body=verdict)
    assert status == 409 and "already closed" in body
    with psycopg.connect(database_url) as conn:
        accounts.revoke_token(conn, "siem")
    assert client.request("GET", "/api/v1/cases", headers=auth)[0] == 401


def test_behind_a_trusted_proxy_the_clients_address_is_its_forwarded_one(database_url: str) -> None:
    with served_console(database_url, RecordingPublisher(), trusted_proxies="127.0.0.1") as port:
        client = Client(port)
        _, _, _ = client.request("GET", "/login")
        headers = {"X-Forwarded-For": "10.9.9.9"}
        form = {"csrf": client.cookies["scorer_login_csrf"], "name": "anna", "password": "not her password"}
        assert client.request("POST", "/login", form, headers=headers)[0] == 401
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("select remote_addr from console_login_failures").fetchall()
    assert rows == [("10.9.9.9",)]


def test_without_trusted_proxies_a_forwarded_address_is_ignored(port: int, database_url: str) -> None:
    client = Client(port)
    client.request("GET", "/login")
    form = {"csrf": client.cookies["scorer_login_csrf"], "name": "anna", "password": "not her password"}
    assert client.request("POST", "/login", form, headers={"X-Forwarded-For": "10.9.9.9"})[0] == 401
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("select remote_addr from console_login_failures").fetchall()
    assert rows == [("127.0.0.1",)]  # a client cannot choose the address it is throttled by


def test_a_database_that_stops_answering_is_503_within_the_deadline_then_served_again(
    database_url: str, postgres: EmbeddedPostgres
) -> None:
    with served_console(database_url, RecordingPublisher(), deadline_s=2.0) as port:
        client = Client(port)
        assert client.sign_in("anna") == 303
        postgres.pause()  # SIGSTOP: the server holds every connection without a word
        try:
            status, _, body = client.request("GET", "/")
            assert status == 503 and "did not answer" in body
            assert client.request("GET", "/readyz")[0] == 503
        finally:
            postgres.resume()
        deadline = time.monotonic() + 30
        while client.request("GET", "/")[0] != 200:  # the pool replaces the connections it dropped
            assert time.monotonic() < deadline, "the console did not recover"
            time.sleep(0.2)
        assert client.request("GET", "/readyz")[0] == 200
