"""What `scorer serve` answers, apart from HTTP: validate, publish through the stream, wait, or fall back.

A request's transaction is checked with the stream's own decoder (invalid: 422 with the dead-letter
reason, and nothing reaches Kafka), published to the transactions topic with a reply address (or joined
to the same transaction_id in flight, or answered from the cache of decisions), and answered with the
decision the scorer that owns its partition made: the bytes on the decisions topic with
`"decision_source": "stream"` put in front. When the deadline passes first, the answer is the configured
fallback (or 504); the transaction still flows through the stream and its late decision goes into the
cache for a retry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import orjson

from scorer.config import Settings
from scorer.errors import Rejected
from scorer.events.decode import decode_transactions, decode_transactions_per_record
from scorer.events.timestamps import rfc3339_ms
from scorer.serve.pending import Pending, Request, ScoringFailed

Publish = Callable[
    [str, bytes, str, bytes, Callable[[str], object]], None
]  # customer, value, tid, cid, failed
DEADLINE_HEADER = "x-scorer-deadline-ms"
MAX_DEADLINE_MS = 60_000
PER_RECORD_BELOW = 16  # fewer transactions: the per-record decoder (the column one's reference) is cheaper


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP status, a JSON body and the outcome label the metrics count it under."""

    status: int
    body: bytes
    outcome: str  # stream | cache | fallback | invalid | unavailable | deadline_exceeded | ...
    headers: tuple[tuple[bytes, bytes], ...] = ()  # beyond content-type and length (WWW-Authenticate, ...)


@dataclass(frozen=True, slots=True)
class Ticket:
    """A valid transaction on its way: answered already (cached), or a request to wait for."""

    index: int
    value: bytes  # the transaction as received (for the fallback's echo of its ids)
    cached: bytes | None
    request: Request | None

    @property
    def future(self) -> Future[bytes] | None:
        return None if self.request is None else self.request.future


class ScoringService:
    """Admits requests and turns what comes back (or does not) into answers."""

    def __init__(self, settings: Settings, pending: Pending, publish: Publish) -> None:
        self.settings = settings
        self.pending = pending
        self.publish = publish

    def deadline_s(self, header: str | None) -> float | Answer:
        """The request's deadline: its X-Scorer-Deadline-Ms header, else the default setting."""
        if header is None or header == "":
            return self.settings.serve_deadline_ms / 1000.0
        try:
            ms = int(header)
        except ValueError:
            ms = -1
        if not 1 <= ms <= MAX_DEADLINE_MS:
            detail = (
                f"X-Scorer-Deadline-Ms must be an integer from 1 to {MAX_DEADLINE_MS}, got {header[:20]!r}"
            )
            return _error(400, "invalid_deadline", detail)
        return ms / 1000.0

    def admit(self, values: list[bytes]) -> list[Ticket] | Answer:
        """Validate every transaction (one invalid refuses the request: nothing is published), then
        publish those neither cached nor in flight."""
        decode = decode_transactions if len(values) > PER_RECORD_BELOW else decode_transactions_per_record
        decoded = decode(values, self.settings.max_value_bytes)
        if decoded.rejected:
            return _invalid(decoded.rejected, batch=len(values) > 1)
        batch, tickets = decoded.batch, []
        for i, tid in enumerate(batch.transaction_id):
            begun = self.pending.begin(tid)
            if isinstance(begun, bytes):
                tickets.append(Ticket(i, values[i], begun, None))
                continue
            request, new = begun
            if new:
                self._publish(batch.customer_id[i], values[i], request)
            tickets.append(Ticket(i, values[i], None, request))
        return tickets

    def _publish(self, customer_id: str, value: bytes, request: Request) -> None:
        """Publish a new request; a failure of ours (not the broker's refusal, which `publish` reports
        through the failer) releases the request before it propagates, so no later retry joins it."""
        try:
            self.publish(
                customer_id,
                value,
                request.transaction_id,
                request.correlation_id,
                _failer(self.pending, request),
            )
        except BaseException:
            self.pending.fail(request, "internal_error", "the transaction could not be published")
            raise

    def answer(self, ticket: Ticket, single: bool = True) -> Answer:
        """The answer for a ticket whose wait is over: decided, failed, or past its deadline.

        A transaction that could not be published is 503 on its own (it is not in the log: retry); a
        missed deadline or a scorer's dead letter is the fallback, or 504 when so configured. In a batch
        every item is a body (decision or fallback) and the request is 200.
        """
        if ticket.cached is not None:
            return Answer(200, _sourced(ticket.cached, "cache"), "cache")
        future, request = ticket.future, ticket.request
        assert future is not None and request is not None  # noqa: S101 - not cached: a request
        if future.done():
            try:
                return Answer(200, _sourced(future.result(0), "stream"), "stream")
            except ScoringFailed as exc:
                reason, detail = exc.reason, exc.detail
        else:
            self.pending.gave_up(request)
            reason, detail = "deadline", "no decision within the deadline"
        if single and reason == "unavailable":
            return _error(503, "unavailable", f"the transaction was not published, retry: {detail}")
        if single and self.settings.serve_on_deadline == "504":
            return _error(504, "deadline_exceeded" if reason == "deadline" else reason, detail)
        return Answer(200, self.fallback(ticket.value, reason), "fallback")

    def fallback(self, value: bytes, reason: str) -> bytes:
        """The documented fallback: the transaction's ids, the configured action, no score."""
        doc = orjson.loads(value)
        action = self.settings.serve_fallback_action
        now = rfc3339_ms(np.asarray([int(time.time() * 1000)], dtype=np.int64))[0]
        return orjson.dumps({
            "transaction_id": doc["transaction_id"], "customer_id": doc["customer_id"],
            "terminal_id": doc["terminal_id"], "decision_source": "fallback", "fallback_reason": reason,
            "action": action, "flagged": action != "approve", "decided_at": now,
        })  # fmt: skip


FEATURES = b',"features":['


def _sourced(decision: bytes, source: str) -> bytes:
    """The decision's bytes with "decision_source" first: the decisions topic's record without its feature
    vector. The vector tells a caller how the scorer sees the card and the terminal (a terminal's fraud
    risk among them), which a caller probing the API must not learn; the reasons name the three that
    counted. It is the record's last field, and the text `,"features":[` with an unescaped quote cannot
    occur inside a JSON string, so cutting at its last occurrence is exact."""
    cut = decision.rfind(FEATURES)
    body = decision[1:cut] + b"}" if cut > 0 else decision[1:]
    return b'{"decision_source":"' + source.encode() + b'",' + body


def _failer(pending: Pending, request: Request) -> Callable[[str], object]:
    return lambda detail: pending.fail(request, "unavailable", detail)


def _invalid(rejected: list[tuple[int, Rejected]], batch: bool) -> Answer:
    errors = [{"index": i, "reason": exc.reason, "detail": exc.detail} for i, exc in rejected]
    if batch:
        body = orjson.dumps({"error": "invalid_transaction", "errors": errors})
    else:
        body = orjson.dumps(
            {"error": "invalid_transaction", "reason": errors[0]["reason"], "detail": errors[0]["detail"]}
        )
    return Answer(422, body, "invalid")


def _error(status: int, error: str, detail: str) -> Answer:
    return Answer(status, orjson.dumps({"error": error, "detail": detail}), error)
