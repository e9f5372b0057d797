"""Metrics of `scorer retrain` (scorer_retrain_*): what each cycle did, the candidate's state and its live
figures against the champion while it is in shadow."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

# what a cycle can end in (the label set of scorer_retrain_cycles_total)
OUTCOMES = (
    "trained",  # a candidate passed the gate and went into shadow
    "refused",  # the gate refused the candidate
    "failed",  # training could not run (too little data, the database or broker failed)
    "waiting",  # a shadow still gathering evidence, or a blend still ramping
    "promoted",  # a challenger took over (a blend started, or the champion changed)
    "retired",  # a challenger was dropped
    "not_due",  # nothing to do until the schedule comes round
    "paused",  # the kill switch is on
    "locked",  # another instance holds the lock
    "no_data",  # the store holds no transactions yet
)
STATES = ("none", "shadow", "blending")
MODELS = ("champion", "challenger")


class RetrainMetrics:
    """Cycles by outcome, the kill switch, the run in flight and its live evidence."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.registry = registry
        self.cycles = Counter(
            "scorer_retrain_cycles", "Retrain cycles by what they ended in.", ["outcome"], registry=r
        )
        for outcome in OUTCOMES:
            self.cycles.labels(outcome)
        self.last_cycle = Gauge(
            "scorer_retrain_last_cycle_timestamp_seconds", "Wall time the last cycle ended.", registry=r
        )
        self.training_seconds = Gauge(
            "scorer_retrain_training_seconds",
            "Wall time the last training took (read, train, gate).",
            registry=r,
        )
        self.paused = Gauge(
            "scorer_retrain_paused", "1 while `scorer retrain pause` is in force.", registry=r
        )
        self.state = Gauge(
            "scorer_retrain_candidate_state",
            "1 for the state of the run in flight (none, shadow, blending).",
            ["state"],
            registry=r,
        )
        self.set_state("none")
        self.stream_time = Gauge(
            "scorer_retrain_stream_time_seconds",
            "The store's newest event time, as the cycle saw it.",
            registry=r,
        )
        self.average_precision = Gauge(
            "scorer_retrain_shadow_average_precision",
            "Live average precision over the shadow window, per model.",
            ["model"],
            registry=r,
        )
        self.band_precision = Gauge(
            "scorer_retrain_shadow_band_precision",
            "Live review-band precision at the champion's alert volume, per model.",
            ["model"],
            registry=r,
        )
        self.shadow_frauds = Gauge(
            "scorer_retrain_shadow_frauds", "Labelled frauds among the shadow window's events.", registry=r
        )

    def set_state(self, state: str) -> None:
        for name in STATES:
            self.state.labels(name).set(1.0 if name == state else 0.0)
