"""One terminal-events partition of the aggregator: its records folded into terminal state, its day
closes as records for `terminal-features`, and its recovery from them. No Kafka here.

Each transaction (written by the scorer that decoded it, or by the re-key stage) and each label (by the
re-key stage) is a small binary record keyed by terminal_id, carrying its source partition and offset (a
label also its source and transaction id, so that terminal risk counts each transaction once and applies
a reversed verdict: features/frauds.py);
a watermark record (scoring/terminal_events.py) only says how far one source has got in event time. Each
partition keeps the event time reached per source ("t3": transactions partition 3, "l0": labels partition
0), which is what decides when a day may close (aggregate/watermark.py). A close publishes the rows of
every terminal that changed, tombstones for the expired, then a marker:
  {"day", "position": next terminal-events offset folded, "replay_from": the oldest label still waiting
   for a later close, "sources": the newest source offset folded per source partition,
   "reached": the event time reached per source};
before the marker, the label memory that changed (a record per labelled transaction under
LABEL_MEMORY_PREFIX, a tombstone once forgotten), so a restored partition counts later labels as the
uninterrupted one would.
The aggregator commits `replay_from`. On restore the rows are loaded and the records before `position`
that the rows already hold are skipped (labels reported after the close excepted); `sources` lets a
record that a crashed re-key stage sent twice count once, before and after the restart.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from scorer.events.batches import LabelBatch
from scorer.events.timestamps import MS_PER_DAY, NEVER
from scorer.features.engine import LATE_GRACE_DAYS, FeatureConfig, TerminalFeatures
from scorer.features.rows import (
    LABEL_MEMORY_PREFIX,
    MARKER_KEY,
    PartitionDump,
    RowCodec,
    encode_marker,
    load_rows,
)

TX = struct.Struct("<cqiq")  # b"T", event_ts_ms, source partition, source offset
LABEL = struct.Struct("<cqq?iq")  # b"L", reported_ts_ms, tx_ts_ms, is_fraud, source partition, source offset
# ... then the label's source (one byte, LABEL_SOURCE_BYTES) and its transaction id (UTF-8). A record of
# exactly LABEL.size (written before labels carried them) is a chargeback of no known transaction.
LABEL_SOURCE_BYTES = {"chargeback": b"c", "analyst": b"a"}
SOURCE_OF_BYTE = {v: k for k, v in LABEL_SOURCE_BYTES.items()}
WATERMARK = struct.Struct("<cqci")  # b"W", event time a source reached, its kind (b"t"/b"l") and partition
FENCE = struct.Struct("<cq")  # b"F", a nonce: the aggregator's own mark that it has read this far
Record = dict[str, Any]  # {"key": bytes, "value": bytes | None}
EventRecord = tuple[int, bytes, bytes]  # terminal-events offset, key (terminal_id), value


def transaction_record(terminal_id: str, ts_ms: int, partition: int, offset: int) -> Record:
    return {"key": terminal_id.encode(), "value": TX.pack(b"T", ts_ms, partition, offset)}


_TX_ROW = np.dtype([("tag", "S1"), ("ts", "<i8"), ("partition", "<i4"), ("offset", "<i8")])  # = TX, packed


def transaction_records(
    terminal_id: Sequence[str], ts_ms: npt.NDArray[np.int64], partition: npt.NDArray[np.int64],
    offset: npt.NDArray[np.int64],
) -> list[Record]:  # fmt: skip
    """`transaction_record` for a whole batch: the values packed by numpy in one buffer, then sliced."""
    rows = np.empty(len(ts_ms), dtype=_TX_ROW)
    rows["tag"], rows["ts"], rows["partition"], rows["offset"] = b"T", ts_ms, partition, offset
    buf, size = rows.tobytes(), TX.size
    values = [buf[i : i + size] for i in range(0, len(buf), size)]
    return [{"key": k, "value": v} for k, v in zip(map(str.encode, terminal_id), values, strict=True)]


def watermark_record(ts_ms: int, source: str) -> Record:
    """Source ("t3": transactions partition 3, "l0": labels partition 0) has reached event time `ts_ms`."""
    return {"key": b"", "value": WATERMARK.pack(b"W", ts_ms, source[:1].encode(), int(source[1:]))}


def fence_record(nonce: int) -> Record:
    """A fence the aggregator appends to a partition; folding it means everything before it is folded."""
    return {"key": b"", "value": FENCE.pack(b"F", nonce)}


def label_record(
    terminal_id: str, reported_ms: int, tx_ms: int, is_fraud: bool, partition: int, offset: int,
    transaction_id: str = "", source: str = "chargeback",
) -> Record:  # fmt: skip
    """A label's terminal event; without a transaction id, the older record (it counts, never corrects)."""
    value = LABEL.pack(b"L", reported_ms, tx_ms, is_fraud, partition, offset)
    if transaction_id:
        value += LABEL_SOURCE_BYTES[source] + transaction_id.encode()
    return {"key": terminal_id.encode(), "value": value}


def _label_of(value: bytes) -> tuple[tuple[Any, ...], str, str] | None:
    """(LABEL fields, source, transaction id) of a label record, or None when `value` is none."""
    if len(value) == LABEL.size:
        return LABEL.unpack(value), "chargeback", ""
    source = SOURCE_OF_BYTE.get(value[LABEL.size : LABEL.size + 1])
    if len(value) > LABEL.size + 1 and source is not None:
        return LABEL.unpack(value[: LABEL.size]), source, value[LABEL.size + 1 :].decode("utf-8", "replace")
    return None


@dataclass(slots=True)
class Folded:
    """What one fold applied, for the metrics."""

    transactions: int = 0
    labels: int = 0
    late_transactions: int = 0


@dataclass(slots=True)
class PartitionAgg:
    """Terminal state of one terminal-events partition and where it stands."""

    terminals: TerminalFeatures
    watermark_ms: int = NEVER  # the newest event time folded, whatever its source
    reached: dict[str, int] = field(default_factory=dict)  # event time reached per source ("t3", "l0")
    position: int = 0  # next offset to read
    skip_before: int = 0  # records before this offset are already in the restored rows
    skip_labels_before_ms: int = NEVER  # ... unless a label was reported after the restored close
    label_offsets: list[tuple[int, int]] = field(default_factory=list)  # (offset, reported_ms) still pending
    # newest source offset applied per source ("t3": transactions partition 3, "l0": labels partition 0):
    # a re-key stage that crashed re-sends a suffix of each source, and those repeats must count once
    sources: dict[str, int] = field(default_factory=dict)
    replayed: set[tuple[int, int]] = field(default_factory=set)  # pending labels met again since restore
    fence: int = -1  # the newest fence folded (aggregate/watermark.py)

    @classmethod
    def restore(cls, config: FeatureConfig, codec: RowCodec, dump: PartitionDump) -> PartitionAgg:
        """The partition as of its last close: rows, position, pending labels and sources."""
        part = cls(TerminalFeatures(config))
        rows = {k: v for k, v in dump.rows.items() if not k.startswith(LABEL_MEMORY_PREFIX)}
        load_rows(part.terminals.ring, codec, {k.decode("utf-8", "replace"): v for k, v in rows.items()})
        part.terminals.ring.drain_changes()
        frauds = part.terminals.frauds
        for key, value in dump.rows.items():
            if key.startswith(LABEL_MEMORY_PREFIX) and value is not None:
                frauds.load(key[len(LABEL_MEMORY_PREFIX) :].decode("utf-8", "replace"), value)
        frauds.drain()
        if dump.marker is not None:
            day = int(dump.marker["day"])
            part.terminals.closed_day = day
            part.position = int(dump.marker["replay_from"])
            part.skip_before = int(dump.marker["position"])
            part.skip_labels_before_ms = (day + 1) * MS_PER_DAY
            part.sources = {str(k): int(v) for k, v in dump.marker.get("sources", {}).items()}
            for source, ts in dump.marker.get("reached", {}).items():  # sources silent since this close
                part._reach(str(source), int(ts))
        return part

    def fold(self, records: Sequence[EventRecord], closed_day: int) -> Folded:
        """Apply terminal-events records (in offset order) to the state, each source record once."""
        tx_ids: list[str] = []
        tx_ts: list[int] = []
        labels: list[tuple[str, int, int, bool, int, str, str]] = []
        late = 0
        for offset, key, value in records:
            self.position = offset + 1
            terminal = key.decode("utf-8", "replace")
            if value[:1] == b"T" and len(value) == TX.size:
                _, ts, src_partition, src_offset = TX.unpack(value)
                self._reach(f"t{src_partition}", ts)
                if offset >= self.skip_before and self._first_time(f"t{src_partition}", src_offset):
                    tx_ids.append(terminal)
                    tx_ts.append(ts)
                    late += ts // MS_PER_DAY <= closed_day
            elif value[:1] == b"F" and len(value) == FENCE.size:
                self.fence = max(self.fence, FENCE.unpack(value)[1])
            elif value[:1] == b"W" and len(value) == WATERMARK.size:  # (an older 9-byte one names no source)
                _, ts, kind, src_partition = WATERMARK.unpack(value)
                self._reach(f"{kind.decode('ascii', 'replace')}{src_partition}", ts)
            elif value[:1] == b"L" and (label := _label_of(value)) is not None:
                (_, reported, tx_time, is_fraud, src_partition, src_offset), source, tid = label
                self._reach(f"l{src_partition}", reported)
                if offset < self.skip_before:  # folded before the restored close: replay the pending only
                    keep = reported >= self.skip_labels_before_ms and self._first_replay(
                        src_partition, src_offset
                    )
                else:
                    keep = self._first_time(f"l{src_partition}", src_offset)
                if keep:
                    labels.append((terminal, reported, tx_time, is_fraud, offset, source, tid))
        if tx_ids:
            self.terminals.add_transactions(tx_ids, np.asarray(tx_ts, dtype=np.int64))
        if labels:
            self.terminals.buffer_labels(_label_batch(labels))
            # what the terminals hold until a close: frauds, and genuine labels that may reverse one
            self.label_offsets += [(o, r) for _, r, _, fraud, o, _, tid in labels if fraud or tid]
        return Folded(len(tx_ids), len(labels), late)

    def _reach(self, source: str, ts_ms: int) -> None:
        """Event time only moves forward: a late record of a source does not take it back."""
        if ts_ms > self.reached.get(source, NEVER):
            self.reached[source] = ts_ms
        self.watermark_ms = max(self.watermark_ms, ts_ms)

    def _first_replay(self, partition: int, offset: int) -> bool:
        """True the first time a pending label is met again below `skip_before` (it may be there twice)."""
        if (partition, offset) in self.replayed:
            return False
        self.replayed.add((partition, offset))
        return True

    def _first_time(self, source: str, offset: int) -> bool:
        """True (and remembered) unless this source record was already applied."""
        if offset <= self.sources.get(source, -1):
            return False
        self.sources[source] = offset
        return True

    def close(self, day: int, codec: RowCodec) -> tuple[list[Record], int, int]:
        """Close `day`: the records for partition p of `terminal-features` (changed rows, tombstones,
        the marker), the offset to commit (replay_from) and how many rows changed."""
        terminals = self.terminals
        terminals.close(day)
        terminals.ring.expire_idle(day + 1, LATE_GRACE_DAYS)
        keys, slots, expired = terminals.ring.drain_changes()
        values = codec.encode(terminals.ring, slots) if len(slots) else []
        records: list[Record] = [{"key": k.encode(), "value": v} for k, v in zip(keys, values, strict=True)]
        records += [{"key": k.encode(), "value": None} for k in expired]
        remembered, forgotten = terminals.frauds.drain()
        records += [{"key": LABEL_MEMORY_PREFIX + t.encode(), "value": v} for t, v in remembered.items()]
        records += [{"key": LABEL_MEMORY_PREFIX + t.encode(), "value": None} for t in forgotten]
        cutoff = (day + 1) * MS_PER_DAY
        self.label_offsets = [(o, r) for o, r in self.label_offsets if r >= cutoff]
        replay_from = min([o for o, _ in self.label_offsets], default=self.position)
        marker = {
            "day": day,
            "position": self.position,
            "replay_from": replay_from,
            "ring_days": codec.n_days,
            "sources": dict(self.sources),
            "reached": dict(self.reached),
        }
        records.append({"key": MARKER_KEY, "value": encode_marker(marker)})
        return records, replay_from, len(keys)


def _label_batch(rows: Sequence[tuple[str, int, int, bool, int, str, str]]) -> LabelBatch:
    return LabelBatch(
        transaction_id=[r[6] for r in rows],
        customer_id=[""] * len(rows),
        terminal_id=[r[0] for r in rows],
        is_fraud=np.asarray([r[3] for r in rows], dtype=bool),
        reported_ts_ms=np.asarray([r[1] for r in rows], dtype=np.int64),
        tx_ts_ms=np.asarray([r[2] for r in rows], dtype=np.int64),
        source=[r[5] for r in rows],
    )
