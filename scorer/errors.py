"""The few error types the scorer raises, each with a stable snake_case `reason`."""

from __future__ import annotations


class ScorerError(Exception):
    """A failure the CLI reports as one clear line (never a traceback)."""

    reason = "scorer_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ConfigError(ScorerError):
    """Invalid settings: the CLI exits with code 2."""

    reason = "invalid_config"


class DataError(ScorerError):
    """A data file (jsonl) cannot be read; the message names the file and line."""

    reason = "invalid_data"


class ModelError(ScorerError):
    """A model artefact is missing, does not load or does not fit the feature engine."""

    reason = "invalid_model"


class Rejected(ValueError):
    """One input record breaks the event contract; `reason` goes to the dead-letter headers."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
