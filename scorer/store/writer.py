"""The store's database writes on a thread of their own, one batch at a time, while the next batch is read.

Reading a batch (consuming, parsing, checking) and writing it (the server inserting, indexing, committing)
cost about the same; done one after the other, the store waits on the database for about half its time.
The writer overlaps them: the store hands it batch N and reads batch N+1 meanwhile; before it hands over
N+1 it waits for N. At most one batch is ever in flight, so the database is still written batch after
batch in the order read, each in its own transaction with its offsets: the exactly-once argument
(scorer/store/app.py) does not change. Whatever else touches the database (the offsets read on
assignment, the retention) waits for the batch in flight first: one connection, one user at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from scorer.store.batch import StoreBatch


@dataclass(frozen=True, slots=True)
class Written:
    """A batch the database took, and how long its write took (waits for the database included)."""

    batch: StoreBatch
    seconds: float


class BatchWriter:
    """Writes each batch with `write` on one worker thread (`threaded=False`: at once, on the caller's).

    Not for several callers: the store's loop alone submits and finishes."""

    def __init__(
        self, write: Callable[[StoreBatch], None], clock: Callable[[], float], threaded: bool
    ) -> None:
        self._write = write
        self._clock = clock
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="store-writer") if threaded else None
        self._pending: tuple[StoreBatch, Future[float]] | None = None
        self._lock = threading.Lock()  # finish() runs from the loop and from rebalance callbacks within it

    @property
    def busy(self) -> bool:
        """A batch has been handed over and not yet finished."""
        return self._pending is not None

    def submit(self, batch: StoreBatch) -> None:
        """Start writing `batch`. The previous one must have been finished (ValueError otherwise: a bug)."""
        with self._lock:
            if self._pending is not None:
                raise ValueError("a batch is already being written: finish() it first")
            self._pending = (batch, self._start(batch))

    def finish(self) -> Written | None:
        """Wait for the batch in flight; what was written (None if nothing was in flight). The write's
        error is raised here, once: the batch is then not in the database, and not in flight any more."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return None
        batch, future = pending
        return Written(batch, future.result())

    def close(self) -> None:
        """Stop the worker thread (a batch in flight is waited for; call finish() first to see its end)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _start(self, batch: StoreBatch) -> Future[float]:
        if self._pool is not None:
            return self._pool.submit(self._timed, batch)
        done: Future[float] = Future()
        try:
            done.set_result(self._timed(batch))
        except BaseException as exc:  # handed to finish(), as the thread's future would
            done.set_exception(exc)
        return done

    def _timed(self, batch: StoreBatch) -> float:
        started = self._clock()
        self._write(batch)
        return self._clock() - started
