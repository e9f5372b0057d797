"""What the live demo has seen of the decisions: counts, latencies, the rate over the newest seconds."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

RATE_WINDOW_S = 5.0
VERDICT_RULES = "case-"  # the ids of the rules analysts' verdicts make (scorer/kafka/verdicts.py)


@dataclass(slots=True)
class Tally:
    """What the demo has seen of the decisions so far."""

    decided: int = 0
    flagged: int = 0
    flagged_fraud: int = 0
    frauds_decided: int = 0
    blocked: int = 0  # declined by a block an analyst's verdict made: counted apart from the flags
    blocked_fraud: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    window: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, decided), newest 5 s
    # which transactions were decided: a decision delivered twice (at-least-once) is counted once
    seen: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def count(self, now: float) -> None:
        self.window.append((now, self.decided))
        while len(self.window) > 2 and now - self.window[0][0] > RATE_WINDOW_S:
            self.window.pop(0)

    def rate(self) -> float | None:
        """Decisions per second over the newest RATE_WINDOW_S (None until a second has passed)."""
        (t0, n0), (t1, n1) = self.window[0], self.window[-1]
        return (n1 - n0) / (t1 - t0) if t1 - t0 >= 1.0 else None

    def percentile(self, q: float) -> float | None:
        recent = self.latencies_ms[-20_000:]
        return float(np.percentile(recent, q)) if recent else None

    @property
    def precision(self) -> float | None:
        return self.flagged_fraud / self.flagged if self.flagged else None

    @property
    def recall(self) -> float | None:
        return self.flagged_fraud / self.frauds_decided if self.frauds_decided else None
