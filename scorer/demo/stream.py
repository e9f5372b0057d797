"""`scorer stream`: a simulated transaction source for a real Kafka (compose stack, staging, load tests).

The simulated history goes out at a fixed rate in event-time order, transactions keyed by customer on the
input topic, and each fraud label on the labels topic once the stream has passed its report time, so the
aggregator, the scorers and the monitor see what they would see in production. `scorer demo` uses the same
Streamer against its embedded broker.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.kafka.sink import Sink
from scorer.kafka.topics import reach
from scorer.training.simulate import SimulatedData, label_values, transaction_values

logger = logging.getLogger(__name__)
REPORT_EVERY_S = 10.0


class Streamer:
    """Produces the simulated history at a fixed rate; labels go out once the stream passes their report time."""

    def __init__(self, settings: Settings, data: SimulatedData, rate: float, start: int = 0) -> None:
        """From transaction `start` on (the labels reported before it are taken as sent already)."""
        self.settings = settings
        self.data = data
        self.rate = rate
        self.start = start
        # the Sink waits while the producer queue is full and records a delivery refused after retries
        self.sink = Sink({**settings.admin_config(), "linger.ms": 5})
        self.next_tx = start
        first_ms = int(data.event_ts_ms[start]) if start < len(data.transaction_id) else 0
        self.next_label = int(np.searchsorted(data.label_reported_ts_ms, first_ms)) if start else 0
        self.started = time.monotonic()
        self.produced_ms = np.zeros(len(data.transaction_id), dtype=np.float64)  # wall time each tx was sent

    def pump(self) -> int:
        """Send what is due by now; returns how many transactions went out."""
        due = min(
            len(self.data.transaction_id), self.start + int((time.monotonic() - self.started) * self.rate)
        )
        if due <= self.next_tx:
            self.sink.poll(0)
            return 0
        idx = np.arange(self.next_tx, due)
        values = transaction_values(self.data, idx)
        keys = [self.data.customer_id[i].encode() for i in idx.tolist()]
        self.produced_ms[idx] = time.time() * 1000
        messages = [{"key": k, "value": v} for k, v in zip(keys, values, strict=True)]
        self.sink.send(self.settings.input_topic, messages)
        self._labels_until(int(self.data.event_ts_ms[due - 1]))
        self.next_tx = due
        return len(idx)

    def _labels_until(self, now_ms: int) -> None:
        reported = self.data.label_reported_ts_ms
        end = int(np.searchsorted(reported, now_ms, side="right"))
        if end <= self.next_label:
            return
        positions = np.arange(self.next_label, end)
        terminals = [self.data.terminal_id[i] for i in self.data.label_index[positions].tolist()]
        values = label_values(self.data, positions)
        labels = [{"key": t.encode(), "value": v} for t, v in zip(terminals, values, strict=True)]
        self.sink.send(self.settings.labels_topic, labels)
        self.next_label = end

    def remaining_labels(self) -> None:
        """The labels reported after the history ends, sent at once when a finite stream is over."""
        self._labels_until(int(self.data.label_reported_ts_ms.max(initial=0)))

    @property
    def done(self) -> bool:
        return self.next_tx >= len(self.data.transaction_id)

    @property
    def failure(self) -> str | None:
        """Why a record could not be delivered (the broker refused it after retries), if one could not."""
        return self.sink.failure

    def close(self, timeout_s: float = 30.0) -> bool:
        """Deliver what is queued; False when something was refused or is still waiting."""
        delivered = self.sink.wait(self.sink.seal(), timeout_s)
        self.sink.close(0)
        return delivered


def run_stream(settings: Settings, data: SimulatedData, rate: float, stop: threading.Event) -> int:
    """Stream until the history is out or `stop` is set; a progress line in the log every 10 s."""
    reach(settings)  # one clear line when the brokers cannot be reached
    streamer = Streamer(settings, data, rate)
    last = time.monotonic()
    logger.info("stream_started", extra={"transactions": len(data.transaction_id), "rate": rate})
    try:
        while not streamer.done and not stop.is_set() and streamer.failure is None:
            if streamer.pump() == 0:
                time.sleep(0.005)
            if time.monotonic() - last >= REPORT_EVERY_S:
                last = time.monotonic()
                logger.info(
                    "stream_progress", extra={"sent": streamer.next_tx, "labels": streamer.next_label}
                )
        if streamer.done and streamer.failure is None:
            streamer.remaining_labels()
    finally:
        delivered = streamer.close()
    if not delivered:
        why = streamer.failure or "the broker did not acknowledge every record within 30 s"
        raise ScorerError(f"stream stopped: {why} ({streamer.next_tx:,} transactions queued)")
    logger.info("stream_finished", extra={"sent": streamer.next_tx, "labels": streamer.next_label})
    return 0
