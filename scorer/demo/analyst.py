"""The demo's automatic analyst: each simulated day it answers the top `capacity` cases of the console's queue
with the simulator's truth, through the console's JSON API as an integration would (an API token of its own
account), blocking the card for a week after a fraud verdict. A person watching the console sees verdicts
flow: cases closing, labels on the topic, blocked cards declined.

It runs on a thread of its own; an answer the console refuses (another verdict came first, the broker is
down) is counted and skipped, never retried in a loop, and never stops the demo.
"""

from __future__ import annotations

import http.client
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import numpy as np
import numpy.typing as npt
import orjson

from scorer.errors import ScorerError
from scorer.events.timestamps import MS_PER_DAY

logger = logging.getLogger(__name__)
BLOCK_DAYS = 7
TICK_S = 0.5


@dataclass(slots=True)
class Answered:
    """What the analyst did so far."""

    fraud: int = 0
    genuine: int = 0
    refused: int = 0
    reasons: list[str] = field(default_factory=list)


class AutoAnalyst:
    """Answers the queue once per simulated day (the day of `event_ms()`, the stream's position)."""

    def __init__(
        self,
        port: int,
        token: str,
        capacity: int,
        truth: dict[str, bool],
        event_ms: Callable[[], int],
    ) -> None:
        self.port = port
        self.token = token
        self.capacity = capacity
        self.truth = truth  # transaction id -> fraud, from the simulator
        self.event_ms = event_ms
        self.answered = Answered()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="auto-analyst", daemon=True)
        self.day = -1

    def start(self) -> AutoAnalyst:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        while not self.stop.wait(TICK_S):
            day = self.event_ms() // MS_PER_DAY
            if self.capacity and day > self.day >= 0:
                self.answer_day()
            self.day = max(self.day, day)

    def answer_day(self) -> None:
        """The day's top cases (unassigned, highest priority first), each closed with the truth."""
        try:
            cases = self._call("GET", "/api/v1/cases?" + urlencode({"unassigned": 1}))["cases"]
        except (OSError, ValueError, KeyError) as exc:
            self._refused(f"queue: {exc}")
            return
        for case in cases[: self.capacity]:
            if self.stop.is_set():
                return
            self._answer(str(case["case_id"]))

    def _answer(self, case_id: str) -> None:
        try:
            detail = self._call("GET", "/api/v1/case?" + urlencode({"id": case_id}))
            alerted = [t["transaction_id"] for t in detail["transactions"] if t["alerted"]]
            fraud = any(self.truth.get(tx, False) for tx in alerted)
            body: dict[str, Any] = {"case_id": case_id, "outcome": "fraud" if fraud else "genuine"}
            if fraud:
                body["block_days"] = BLOCK_DAYS
            self._call("POST", "/api/v1/case/verdict", orjson.dumps(body))
        except (OSError, ValueError, KeyError) as exc:
            self._refused(f"{case_id}: {exc}")
            return
        if fraud:
            self.answered.fraud += 1
        else:
            self.answered.genuine += 1

    def _refused(self, why: str) -> None:
        self.answered.refused += 1
        if len(self.answered.reasons) < 5:
            self.answered.reasons.append(why)
        logger.info("auto_analyst_refused", extra={"why": why})

    def _call(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        """One API call; ValueError with the console's reason when it answers other than 200."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}: {data[:200].decode(errors='replace')}")
        parsed = orjson.loads(data)
        if not isinstance(parsed, dict):
            raise ValueError("the console answered something other than a JSON object")
        return parsed


def truth_of(transaction_ids: list[str], is_fraud: npt.NDArray[np.bool_]) -> dict[str, bool]:
    """The simulator's frauds by transaction id (only the frauds: every other transaction is genuine)."""
    return {transaction_ids[i]: True for i in np.flatnonzero(is_fraud).tolist()}


@dataclass(frozen=True, slots=True)
class DemoConsole:
    """The console the demo started: where, the person's sign-in, and the automatic analyst's token."""

    port: int
    login: str
    password: str
    token: str

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


def demo_accounts(database_url: str, port: int) -> DemoConsole:
    """The schema migrated, a lead account for the person watching (a fresh random password each demo)
    and the automatic analyst's account and API token."""
    import secrets

    import psycopg

    from scorer.db import accounts
    from scorer.db.connect import connect
    from scorer.db.migrate import migrate

    conn = connect(database_url, application_name="scorer-demo", connect_timeout_s=10.0)
    try:
        migrate(conn)
        password = secrets.token_urlsafe(12)
        accounts.add_user(conn, "analyst", "lead", password)
        accounts.add_user(conn, "auto-analyst", "analyst", secrets.token_urlsafe(24))
        token = accounts.add_token(conn, "demo-auto-analyst", "auto-analyst")
        conn.commit()
    except (psycopg.Error, accounts.AccountError) as exc:  # a database of the user's that refuses them
        raise ScorerError(
            f"the console's demo accounts could not be made: {str(exc).strip().splitlines()[0]}"
        ) from None
    finally:
        conn.close()
    return DemoConsole(port, "analyst", password, token)
