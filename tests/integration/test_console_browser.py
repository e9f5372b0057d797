"""The console as an analyst uses it, in headless Chromium (Debian's, driven by Playwright), on the real broker
and PostgreSQL with `scorer run`, `scorer store` and `scorer console` running: sign in, open the top case,
close it as fraud with a block; then the label is on the labels topic, the block rule on the rules topic,
and the card's next transaction is declined by it.

SCORER_SCREENSHOTS=DIR keeps the queue's and the case page's screenshots there (docs/console.md's come
from this test)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psycopg
import pytest

from scorer.config import Settings
from scorer.demo.broker import free_port
from scorer.kafka.rules import read_rules, write_rule
from scorer.policy.rules import Rule
from tests.integration.conftest import Proc, consume, decisions, env_for, produce

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "a long test passphrase"  # noqa: S105 (the test account's)
T = "2026-03-01T10:{:02d}:00Z"


def tx(tid: str, customer: str, minute: int, amount: float, terminal: str = "T1") -> tuple[bytes, bytes]:
    doc = {"transaction_id": tid, "customer_id": customer, "terminal_id": terminal, "amount": amount,
           "timestamp": T.format(minute)}  # fmt: skip
    return customer.encode(), orjson.dumps(doc)


def wait_for(what: str, check: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def case_exists(database_url: str, case_id: str) -> bool:
    with psycopg.connect(database_url) as conn:
        try:
            return conn.execute("select 1 from cases where case_id = %s", (case_id,)).fetchone() is not None
        except psycopg.errors.UndefinedTable:
            return False  # the store has not migrated yet


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="make test installs Debian's chromium")
def test_an_analyst_closes_the_top_case_as_fraud_with_a_block_in_a_real_browser(
    settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path, database_url: str
) -> None:
    from playwright.sync_api import sync_playwright

    # an amount over 1,000 goes to review, so the test knows which card alerts whatever the tiny model says
    write_rule(settings, "big-amount", Rule("big-amount", "amount_limit", "review", max_amount=1000.0))
    registry = str(tiny_model.parent.parent)
    env = env_for(settings, tiny_model, SCORER_DATABASE_URL=database_url, SCORER_REGISTRY=registry)
    policy = subprocess.run(
        [sys.executable, "-m", "scorer", "models", "--registry", registry, "policy", "--review", "threshold:0.9",
         "--decline", "threshold:0.97"], env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert policy.returncode == 0, policy.stderr
    added = subprocess.run(
        [sys.executable, "-m", "scorer", "console", "users", "add", "lena", "--role", "lead"],
        input=PASSWORD + "\n", env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    port = free_port()
    for command in ("run", "store", "console"):
        extra = {
            "SCORER_DATABASE_URL": database_url,
            "SCORER_CONSOLE_PORT": str(port),
            "SCORER_HTTP_HOST": "127.0.0.1",
        }
        procs.append(Proc(command, settings, tiny_model, tmp_path / f"{command}.log", **extra))
    produce(settings, settings.input_topic, [tx("small", "C2", 0, 12.0), tx("big", "C1", 1, 4200.0, "T7")])
    wait_for("the case of card C1", lambda: case_exists(database_url, "C1"))

    shots = Path(os.environ.get("SCORER_SCREENSHOTS") or tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        base = f"http://127.0.0.1:{port}"
        page.goto(f"{base}/")
        assert page.url.endswith("/login")  # no page without a session
        page.fill("input[name=name]", "lena")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("#queue")
        assert "review from threshold:0.9, decline from threshold:0.97" in page.inner_text("#policy")
        page.screenshot(path=str(shots / "queue.png"), full_page=True)
        page.click("#queue a.case-link >> nth=0")  # the top case
        assert page.inner_text("#case-id") == "C1"
        page.check("input[name=outcome][value=fraud]")
        page.fill("input[name=block_days]", "7")
        page.screenshot(path=str(shots / "case.png"), full_page=True)
        page.click("#verdict-form button[type=submit]")
        page.wait_for_selector("text=closed as fraud")
        assert page.inner_text("#case-status") == "closed (fraud)"
        browser.close()

    labels = [orjson.loads(r["value"]) for r in consume(settings, settings.labels_topic, 1)]  # type: ignore[arg-type]
    assert [
        (lb["transaction_id"], lb["is_fraud"], lb["source"], lb["analyst_id"], lb["case_id"]) for lb in labels
    ] == [("big", True, "analyst", "lena", "C1")]
    rules = read_rules(settings)
    (block,) = [r for r in rules.values() if r.kind == "block_customer"]
    assert block.values == ("C1",) and block.action == "decline"
    time.sleep(1.0)  # the scorer swaps rules in between batches: a second of flow
    produce(settings, settings.input_topic, [tx("next", "C1", 5, 20.0)])
    got = {d["transaction_id"]: d for d in decisions(consume(settings, settings.decisions_topic, 3))}
    assert (got["next"]["action"], got["next"]["action_source"]) == ("decline", block.rule_id)
    assert [p.terminate() for p in procs] == [0, 0, 0]  # every child stops cleanly
