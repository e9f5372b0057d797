"""bytes -> columnar batches of Transactions / Labels, or Rejected(reason): the only code that parses input.

(Skeleton: the dataclasses below are the contract every later stage works on; decoding is implemented
by the decoder work package.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MS_PER_DAY = 86_400_000


@dataclass(slots=True)
class TransactionBatch:
    """A columnar batch of valid transactions, the unit that features, model and sink work on."""

    transaction_id: list[str]
    customer_id: list[str]
    terminal_id: list[str]
    amount: npt.NDArray[np.float64]
    event_ts_ms: npt.NDArray[np.int64]  # event time, ms since the Unix epoch, UTC
    currency: list[str | None]
    channel: list[str | None]
    merchant_category: list[str | None]

    def __len__(self) -> int:
        return len(self.transaction_id)


@dataclass(slots=True)
class LabelBatch:
    """A columnar batch of delayed fraud labels (chargebacks, investigations)."""

    transaction_id: list[str]
    customer_id: list[str]
    terminal_id: list[str]
    is_fraud: npt.NDArray[np.bool_]
    reported_ts_ms: npt.NDArray[np.int64]
    tx_ts_ms: npt.NDArray[np.int64]  # the labelled transaction's event time; -1 when the label lacks it

    def __len__(self) -> int:
        return len(self.transaction_id)
