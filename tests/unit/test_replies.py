"""Replies to scorer serve (scoring/replies.py) and the requests serve waits on (serve/pending.py)."""

from __future__ import annotations

import threading

import numpy as np
import orjson
import pytest

from scorer.kafka.requests import CORRELATION_ID, REPLY_TO, TRANSACTION_ID
from scorer.scoring.replies import ReplyBook, find_requests
from scorer.scoring.scored import DeadLetter, Scored
from scorer.serve.pending import Pending, ScoringFailed


def request_headers(tid: str, cid: bytes, reply_to: bytes = b"replies-a") -> list[tuple[str, bytes]]:
    return [(REPLY_TO, reply_to), (CORRELATION_ID, cid), (TRANSACTION_ID, tid.encode())]


def test_requests_are_the_records_with_a_reply_address() -> None:
    headers = [None, request_headers("t1", b"c1"), [("other", b"x")], request_headers("t2", b"c2", b"b")]
    found = find_requests(headers)
    assert found is not None
    assert found.index.tolist() == [1, 3]
    assert found.reply_to == ["replies-a", "b"]
    assert found.correlation_id == [b"c1", b"c2"] and found.transaction_id == ["t1", "t2"]
    assert find_requests([None, [("other", b"x")], [(REPLY_TO, b"only-half")]]) is None


def scored(decided: list[int], dead: list[int] = ()) -> Scored:  # type: ignore[assignment]
    """A batch where records `decided` got decisions (value: their position) and `dead` dead letters."""
    return Scored(
        decisions=[{"key": b"k", "value": orjson.dumps({"position": i})} for i in decided],
        kept=np.asarray(decided, dtype=np.int64),
        dead_letters=[DeadLetter(i, "processing_error", "boom") for i in dead],
    )


def test_each_request_gets_its_decision_or_its_error_at_its_address() -> None:
    headers = [
        request_headers("t0", b"c0"),
        None,
        request_headers("t2", b"c2", b"b"),
        request_headers("t3", b"c3"),
    ]
    requests = find_requests(headers)
    assert requests is not None
    book = ReplyBook(window=10)
    partitions = np.array([0, 0, 1, 0])
    replies = book.answer(requests, scored([0, 1, 2], dead=[3]), partitions)
    assert replies[("replies-a", 0)] == [
        {"key": b"c0", "value": b'{"position":0}'},
        {"key": b"c3", "value": orjson.dumps({"error": "processing_error", "detail": "boom"})},
    ]
    assert replies[("b", 1)] == [{"key": b"c2", "value": b'{"position":2}'}]
    assert book.partitions == {0: {"t0": b'{"position":0}'}, 1: {"t2": b'{"position":2}'}}  # errors not kept


def test_a_retried_request_is_answered_with_the_first_decision_in_its_partition_only() -> None:
    book = ReplyBook(window=10)
    first = find_requests([request_headers("t0", b"c0")])
    assert first is not None
    book.answer(first, scored([0]), np.array([2]))
    retry = find_requests([None, request_headers("t0", b"c9", b"elsewhere"), request_headers("t5", b"c5")])
    assert retry is not None
    repeated, replies = book.repeats(retry, np.array([2, 2, 2]))
    assert repeated.tolist() == [0]  # position in `retry`: the t0 retry, not t5
    assert replies == {("elsewhere", 2): [{"key": b"c9", "value": b'{"position":0}'}]}
    other_partition, _ = book.repeats(retry, np.array([1, 1, 1]))
    assert other_partition.tolist() == []
    book.forget([2])
    assert book.repeats(retry, np.array([2, 2, 2]))[0].tolist() == []


def test_the_window_keeps_the_newest_requests() -> None:
    book = ReplyBook(window=3)
    for i in range(5):
        book.remember(0, f"t{i}", b"d")
    assert list(book.partitions[0]) == ["t2", "t3", "t4"]
    off = ReplyBook(window=0)
    off.remember(0, "t", b"d")
    assert off.partitions == {}


def test_pending_joins_a_retry_to_the_request_in_flight_and_caches_the_decision() -> None:
    pending = Pending(cache_size=2)
    begun = pending.begin("t1")
    assert isinstance(begun, tuple) and begun[1] is True
    request = begun[0]
    again = pending.begin("t1")
    assert isinstance(again, tuple) and again[0] is request and again[1] is False  # not published twice
    assert not pending.complete(b"someone-elses", b"{}")
    assert pending.complete(request.correlation_id, b'{"score":0.5}')
    assert request.future.result(0) == b'{"score":0.5}'
    assert pending.begin("t1") == b'{"score":0.5}'
    for tid in ("t2", "t3"):
        req = pending.begin(tid)
        assert isinstance(req, tuple)
        pending.complete(req[0].correlation_id, tid.encode())
    assert isinstance(pending.begin("t1"), tuple)  # the oldest decision left the cache
    assert pending.in_flight() == 1


def test_a_late_decision_is_counted_and_kept_and_an_error_reply_fails_the_request() -> None:
    pending = Pending(cache_size=10)
    begun = pending.begin("late")
    assert isinstance(begun, tuple)
    pending.gave_up(begun[0])
    pending.complete(begun[0].correlation_id, b'{"score":0.1}')
    assert pending.late == 1 and pending.begin("late") == b'{"score":0.1}'
    failing = pending.begin("bad")
    assert isinstance(failing, tuple)
    pending.complete(failing[0].correlation_id, orjson.dumps({"error": "processing_error", "detail": "x"}))
    with pytest.raises(ScoringFailed) as failed:
        failing[0].future.result(0)
    assert failed.value.reason == "processing_error"
    assert isinstance(pending.begin("bad"), tuple)  # an error is not cached: a retry is scored


def test_pending_expires_requests_nobody_answered_and_survives_concurrent_use() -> None:
    pending = Pending(cache_size=1000)
    begun = pending.begin("lost")
    assert isinstance(begun, tuple)
    assert pending.expire(max_age_s=3600) == 0
    assert pending.expire(max_age_s=0) == 1
    with pytest.raises(ScoringFailed, match="expired"):
        begun[0].future.result(0)

    def worker(k: int) -> None:
        for i in range(200):
            got = pending.begin(f"{k}-{i % 50}")
            if isinstance(got, tuple) and got[1]:
                pending.complete(got[0].correlation_id, b"d")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pending.in_flight() == 0
    assert all(pending.begin(f"{k}-{i}") == b"d" for k in range(4) for i in range(50))
