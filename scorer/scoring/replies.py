"""Replies to `scorer serve`: the decision of a transaction published by serve also goes to its reply topic.

serve publishes each request's transaction to the transactions topic like any producer (keyed by
customer), with three headers: `scorer-reply-to` (its reply topic), `scorer-correlation-id` and
`scorer-transaction-id`. The scorer that owns the partition scores it in its batch as usual and sends the
decision's bytes, exactly as on the decisions topic, to partition 0 of the reply topic, keyed by the
correlation id (produce_batch carries no headers, so the key does). A request the core dead-letters is
answered with `{"error": reason, "detail": ...}` so serve need not wait for its deadline.

Retries: a client that retries (same transaction_id) through another serve instance, or after a serve
restart, publishes the transaction again. The partition's owner keeps the decisions of its last
`reply_window` requests; a request whose transaction_id is among them is answered with the first
decision and not scored again, so the customer's windows count it once. The window lives in memory: a
retry after the partition moved to another scorer is scored again (README).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
import numpy.typing as npt
import orjson

from scorer.kafka.requests import CORRELATION_ID, REPLY_TO, TRANSACTION_ID
from scorer.scoring.scored import Scored

I64 = npt.NDArray[np.int64]
HeaderValue = str | bytes | None
Headers = Mapping[str, HeaderValue] | Sequence[tuple[str, HeaderValue]] | None  # as Message.headers() gives
Record = dict[str, bytes]
Replies = dict[tuple[str, int], list[Record]]  # (reply topic, input partition) -> reply records


@dataclass(frozen=True, slots=True)
class Requests:
    """The records of a batch that carry a reply address: position, address, correlation and transaction id."""

    index: I64
    reply_to: list[str]
    correlation_id: list[bytes]
    transaction_id: list[str]


def find_requests(headers: Sequence[Headers]) -> Requests | None:
    """The batch's requests (None when there are none: the common case costs one pass over the list)."""
    rows: list[tuple[int, str, bytes, str]] = []
    for i in np.flatnonzero(np.fromiter(map(bool, headers), dtype=bool, count=len(headers))).tolist():
        found = dict(headers[i] or {})
        reply_to, correlation = _bytes(found.get(REPLY_TO)), _bytes(found.get(CORRELATION_ID))
        if reply_to and correlation:
            tid = _bytes(found.get(TRANSACTION_ID)).decode("utf-8", "replace")
            rows.append((i, reply_to.decode("utf-8", "replace"), correlation, tid))
    if not rows:
        return None
    return Requests(
        np.asarray([r[0] for r in rows], dtype=np.int64),
        [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
    )  # fmt: skip


def _bytes(value: HeaderValue) -> bytes:
    return value.encode() if isinstance(value, str) else (value or b"")


class ReplyBook:
    """The decisions of each partition's last `window` requests, by transaction_id (oldest dropped)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.partitions: dict[int, dict[str, bytes]] = {}

    def repeats(self, requests: Requests, partitions: I64) -> tuple[I64, Replies]:
        """Positions (in `requests`) of requests answered before, and the replies that answer them again."""
        replies: Replies = {}
        repeated: list[int] = []
        for j, (i, tid) in enumerate(zip(requests.index.tolist(), requests.transaction_id, strict=True)):
            p = int(partitions[i])
            first = self.partitions.get(p, {}).get(tid) if tid else None
            if first is not None:
                repeated.append(j)
                record = {"key": requests.correlation_id[j], "value": first}
                replies.setdefault((requests.reply_to[j], p), []).append(record)
        return np.asarray(repeated, dtype=np.int64), replies

    def answer(self, requests: Requests, scored: Scored, partitions: I64) -> Replies:
        """Reply records for a scored batch's requests: their decisions (remembered), or their errors."""
        position = np.full(int(requests.index.max()) + 1, -1, dtype=np.int64)
        keep = scored.kept[scored.kept < len(position)]
        position[keep] = np.flatnonzero(scored.kept < len(position))
        errors = {d.index: d for d in scored.dead_letters}
        replies: Replies = {}
        for j, i in enumerate(requests.index.tolist()):
            p = int(partitions[i])
            if position[i] >= 0:
                value = scored.decisions[int(position[i])]["value"]
                self.remember(p, requests.transaction_id[j], value)
            elif i in errors:
                value = orjson.dumps({"error": errors[i].reason, "detail": errors[i].detail})
            else:
                continue
            replies.setdefault((requests.reply_to[j], p), []).append(
                {"key": requests.correlation_id[j], "value": value}
            )
        return replies

    def remember(self, partition: int, transaction_id: str, decision: bytes) -> None:
        if not transaction_id or self.window <= 0:
            return
        book = self.partitions.setdefault(partition, {})
        book[transaction_id] = decision
        if len(book) > self.window:
            for tid in list(islice(book, len(book) - self.window)):
                del book[tid]

    def forget(self, partitions: Sequence[int]) -> None:
        """A revoked partition's window goes with it (its new owner starts an empty one)."""
        for p in partitions:
            self.partitions.pop(p, None)
