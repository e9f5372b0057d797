"""The requests `scorer serve` waits on, and the decisions it keeps for retries. No Kafka, no HTTP here.

Each published transaction gets a correlation id and a future; the reply listener completes the future
when the decision comes back. A transaction_id already in flight joins that request instead of being
published again, and one decided before is answered from a bounded cache of decisions (the oldest go
first), so a client's retry never counts the transaction twice. A decision that arrives after its
request's deadline still lands in the cache: a retry then gets the model's decision, not a fallback.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import orjson


class ScoringFailed(Exception):
    """The scorer dead-lettered the transaction (a processing error), or it could not be published."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Request:
    """One transaction in flight: its correlation id and the future its decision completes."""

    transaction_id: str
    correlation_id: bytes
    future: Future[bytes] = field(default_factory=Future)
    timed_out: bool = False  # a waiter gave up on it (its decision will be late)
    started_s: float = field(default_factory=time.monotonic)


class Pending:
    """Thread-safe: HTTP handlers start and wait, the reply listener and delivery callbacks complete.

    A request is resolved exactly once, by whoever takes it out of the table under the lock: a reply
    (`complete`), a refused delivery (`fail`) or the expiry. The others find it gone and do nothing, so a
    delivery error reported for a transaction that was in fact written, racing its reply, can never
    resolve a future twice (which raised InvalidStateError on the listener's thread).
    """

    def __init__(self, cache_size: int, on_late: Callable[[], None] | None = None) -> None:
        self.cache_size = cache_size
        self.on_late = on_late
        self._lock = threading.Lock()
        self._by_correlation: dict[bytes, Request] = {}
        self._by_transaction: dict[str, Request] = {}
        self._decided: OrderedDict[str, bytes] = OrderedDict()
        self.late = 0  # decisions that arrived after a waiter's deadline

    def begin(self, transaction_id: str) -> tuple[Request, bool] | bytes:
        """The cached decision, or (the request, True if it is new and must be published)."""
        with self._lock:
            decided = self._decided.get(transaction_id)
            if decided is not None:
                self._decided.move_to_end(transaction_id)
                return decided
            request = self._by_transaction.get(transaction_id)
            if request is not None:
                return request, False
            request = Request(transaction_id, uuid.uuid4().hex.encode())
            self._by_correlation[request.correlation_id] = request
            self._by_transaction[transaction_id] = request
            return request, True

    def complete(self, correlation_id: bytes, value: bytes) -> bool:
        """A reply arrived: a decision, or `{"error": ...}` from a dead letter. False if not ours."""
        with self._lock:
            request = self._by_correlation.pop(correlation_id, None)
            if request is None:
                return False  # not ours, or already resolved (failed or expired): nothing to do
            if self._by_transaction.get(request.transaction_id) is request:
                del self._by_transaction[request.transaction_id]
            error = _error(value)
            if error is None:
                self._remember(request.transaction_id, value)
            if request.timed_out:
                self.late += 1
        if request.timed_out and self.on_late is not None:
            self.on_late()
        if error is None:  # ours alone: taken out of the table under the lock above
            request.future.set_result(value)
        else:
            request.future.set_exception(error)
        return True

    def fail(self, request: Request, reason: str, detail: str) -> bool:
        """The transaction never reached the log (publishing failed), or waited too long: nothing to wait
        for. False (and nothing done) if the request was already resolved, by its reply for instance."""
        with self._lock:
            if self._by_correlation.get(request.correlation_id) is not request:
                return False
            del self._by_correlation[request.correlation_id]
            if self._by_transaction.get(request.transaction_id) is request:
                del self._by_transaction[request.transaction_id]
        request.future.set_exception(ScoringFailed(reason, detail))  # ours alone: taken out above
        return True

    def gave_up(self, request: Request) -> None:
        """A waiter's deadline passed; the request stays in flight for its late decision."""
        request.timed_out = True

    def expire(self, max_age_s: float) -> int:
        """Forget requests in flight for longer than `max_age_s` (their scorer never answered: the
        transaction is in the log and gets its decision there); returns how many went."""
        cutoff = time.monotonic() - max_age_s
        with self._lock:
            old = [r for r in self._by_correlation.values() if r.started_s < cutoff]
        return sum(self.fail(r, "expired", f"no reply within {max_age_s:.0f} s") for r in old)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._by_correlation)

    def _remember(self, transaction_id: str, value: bytes) -> None:
        if self.cache_size <= 0:
            return
        self._decided[transaction_id] = value
        while len(self._decided) > self.cache_size:
            self._decided.popitem(last=False)


def _error(value: bytes) -> ScoringFailed | None:
    """A reply that is an error object (the scorer's dead letter), not a decision."""
    if not value.startswith(b'{"error"'):
        return None
    doc = orjson.loads(value)
    return ScoringFailed(str(doc.get("error")), str(doc.get("detail", "")))
