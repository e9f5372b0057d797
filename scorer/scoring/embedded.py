"""The scorer inside an application: `Scorer.load(model_dir)`, then `.score(transactions)`, no Kafka.

The same scoring core as `scorer run` (decode, customer windows, terminal features, one model call, the
decision records), with every key's state in this process: customer windows in one store, terminal state
closed day by day here (aggregate/local.py) instead of read from the aggregator's table. A history
directory (`scorer simulate` format) warms the state first, so the first decisions already see the
customers' and terminals' past; its fraud labels, and those given later to `.label()`, reach terminal
features at the close of the day they were reported on, as in the stream. Scores equal those of the
offline replay (training's features) for the same history and order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from prometheus_client import CollectorRegistry

from scorer.aggregate.local import InProcessTerminals, day_runs
from scorer.config import DEFAULT_MODEL, Settings
from scorer.errors import Rejected, ScorerError
from scorer.events.batches import take_transactions
from scorer.events.decode import DecodedTransactions, decode_labels, decode_transactions
from scorer.model.onnx import OnnxModel
from scorer.policy.actions import DecisionPolicy
from scorer.policy.rules import Rule, RuleBook
from scorer.rollout.serving import Serving
from scorer.runtime.metrics import Metrics
from scorer.scoring.core import DEAD_LETTER_REASONS, ScoringCore
from scorer.scoring.customers import CustomerStore
from scorer.scoring.scored import DeadLetter, Scored
from scorer.training.dataset import History, load_history

I64 = npt.NDArray[np.int64]
WARM_CHUNK = 8192
PARTITION = 0  # one process holds every customer: a single partition of state
Progress = Callable[[int, int], None]
Record = Mapping[str, Any] | bytes | str


class Scorer:
    """A stateful, in-process fraud scorer: transactions in, decisions (the decision schema) out."""

    def __init__(
        self,
        model: OnnxModel,
        settings: Settings | None = None,
        policy: DecisionPolicy | None = None,
        rules: Sequence[Rule] = (),
    ) -> None:
        config = model.meta.feature_config
        self.settings = settings or Settings()
        self.registry = CollectorRegistry()  # the core's metrics, kept apart from the application's
        self.terminals = InProcessTerminals(config)
        self.customers = CustomerStore(config)
        metrics = Metrics(self.registry, DEAD_LETTER_REASONS)
        serving = Serving(model, policy=policy or DecisionPolicy())
        serving.bands(model)  # a band this model cannot resolve fails here, not in the first batch
        self.core = ScoringCore(self.settings, serving, self.customers, self.terminals, metrics)
        self.core.rules = RuleBook.of(list(rules))

    @classmethod
    def load(
        cls,
        model_dir: str | Path | None = None,
        *,
        history: str | Path | None = None,
        settings: Settings | None = None,
        progress: Progress | None = None,
        policy: DecisionPolicy | None = None,
        rules: Sequence[Rule] = (),
    ) -> Scorer:
        """The model artefact in `model_dir` (default: the shipped model, as the CLI's; a relative path is
        read from the current directory); with `history`, state warmed on that directory's data; `policy`
        (review / decline bands) and `rules` as `scorer run` would apply them. A missing or unusable
        model is a ModelError (a ScorerError) naming the path."""
        threads = settings.onnx_threads if settings is not None else 1
        model = OnnxModel(DEFAULT_MODEL if model_dir is None else model_dir, threads)
        scorer = cls(model, settings, policy, rules)
        if history is not None:
            scorer.warm(load_history(Path(history)), progress)
        return scorer

    @property
    def model_version(self) -> str:
        return self.core.serving.champion.label

    def warm(self, history: History, progress: Progress | None = None) -> None:
        """Replay a history into the state (features only, no model call): its labels, then its
        transactions in event-time order, as the stream would have seen them."""
        self.terminals.labels(history.labels)
        tx = history.transactions  # sorted by event time (load_history)
        for begin in range(0, len(tx), WARM_CHUNK):
            done = min(len(tx), begin + WARM_CHUNK)
            batch = take_transactions(tx, np.arange(begin, done))
            for start, stop in day_runs(batch.event_ts_ms):
                run = take_transactions(batch, np.arange(start, stop))
                self.core.features(run, np.full(len(run), PARTITION, dtype=np.int64))
                self.terminals.count(run.terminal_id, run.event_ts_ms)
            if progress is not None:
                progress(done, len(tx))

    def score(self, transactions: Iterable[Record]) -> list[dict[str, Any]]:
        """Decisions (dicts of the decision schema), one per transaction, in order.

        Transactions are dicts, or JSON text/bytes, of the transaction schema. If one breaks the
        contract, nothing is scored and `Rejected` says which (its position) and why, with the reason
        the dead-letter topic would carry.
        """
        values = [_as_json(t) for t in transactions]
        decoded = decode_transactions(values, self.settings.max_value_bytes)
        if decoded.rejected:
            index, exc = decoded.rejected[0]
            more = f" ({len(decoded.rejected)} invalid in all)" if len(decoded.rejected) > 1 else ""
            raise Rejected(exc.reason, f"transaction {index}: {exc.detail}{more}")
        scored = self.score_decoded(decoded, len(values))
        if scored.dead_letters:
            failed = scored.dead_letters[0]
            raise ScorerError(f"transaction {failed.index} could not be scored: {failed.detail}")
        return [orjson.loads(d["value"]) for d in scored.decisions]

    def score_values(self, values: Sequence[bytes | None]) -> Scored:
        """The core's result for raw JSON values: decisions of the valid ones, dead letters for the rest
        (with their positions), as `scorer run` would produce them (`scorer score` uses this)."""
        decoded = decode_transactions(values, self.settings.max_value_bytes)
        return self.score_decoded(decoded, len(values))

    def score_decoded(self, decoded: DecodedTransactions, inputs: int) -> Scored:
        """Score each same-day run of `inputs` decoded values in turn, counting its transactions into
        terminal state after it."""
        batch, kept = decoded.batch, decoded.kept
        partitions = np.full(inputs, PARTITION, dtype=np.int64)
        runs = day_runs(batch.event_ts_ms)
        if not runs:
            return self.core.score_decoded(decoded, partitions)
        out: Scored | None = None
        for start, stop in runs:
            idx = np.arange(start, stop)
            part = DecodedTransactions(take_transactions(batch, idx), kept[idx], [])
            scored = self.core.score_decoded(part, partitions)
            self.terminals.count(part.batch.terminal_id, part.batch.event_ts_ms)
            out = scored if out is None else out.followed_by(scored, 0)
        assert out is not None  # noqa: S101 - runs is not empty
        rejected = [_dead(i, exc) for i, exc in decoded.rejected]
        out.dead_letters = sorted(out.dead_letters + rejected, key=lambda d: d.index)
        return out

    def label(self, labels: Iterable[Record]) -> None:
        """Fraud labels (the label schema); they reach terminal features at the close of their report
        day. An invalid label refuses the whole call (`Rejected`)."""
        decoded = decode_labels([_as_json(label) for label in labels], self.settings.max_value_bytes)
        if decoded.rejected:
            index, exc = decoded.rejected[0]
            raise Rejected(exc.reason, f"label {index}: {exc.detail}")
        self.terminals.labels(decoded.batch)


def _as_json(record: Record) -> bytes:
    if isinstance(record, bytes):
        return record
    if isinstance(record, str):
        return record.encode()
    return orjson.dumps(record)


def _dead(index: int, exc: Rejected) -> DeadLetter:
    return DeadLetter(index, exc.reason, exc.detail)
