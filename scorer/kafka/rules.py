"""The rules on the compacted `scorer-rules` topic: key = rule id, value = the rule (JSON), a tombstone
removes it. `scorer rules` writes them; every scorer follows the topic in a thread (RulesWatcher) and
swaps the new rule book in between batches, as it does with deployments: no restart."""

from __future__ import annotations

import logging
import threading
from typing import Any

import orjson

from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.kafka import clients
from scorer.kafka.control import read_compacted
from scorer.kafka.tables import TopicReader
from scorer.policy.rules import Rule, RuleBook, RuleError

logger = logging.getLogger(__name__)
RULES_POLL_S = 0.2


def read_rules(settings: Settings, timeout_s: float = 10.0) -> dict[str, Rule]:
    """Every rule in force, by id (an unreadable record is skipped and logged)."""
    rules: dict[str, Rule] = {}
    for key, value in read_compacted(settings, settings.rules_topic, timeout_s).items():
        rule = _rule(key, value)
        if rule is not None:
            rules[rule.rule_id] = rule
    return rules


def write_rule(settings: Settings, rule_id: str, rule: Rule | None, timeout_s: float = 10.0) -> None:
    """Publish a rule (None: its tombstone) and wait for the broker to acknowledge it."""
    producer = clients.producer(settings.producer_config())
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    value = None if rule is None else orjson.dumps(rule.to_dict())
    producer.produce(settings.rules_topic, value, rule_id.encode(), on_delivery=delivered)
    if producer.flush(timeout_s) != 0 or failures:
        raise ScorerError(f"could not publish to {settings.rules_topic}: {failures or 'timed out'}")


def _rule(key: bytes, value: bytes | None) -> Rule | None:
    if not value:
        return None
    try:
        rule = Rule.from_dict(orjson.loads(value))
    except (orjson.JSONDecodeError, RuleError, AttributeError) as exc:
        logger.error("rule_unreadable", extra={"key": key.decode("utf-8", "replace"), "error": str(exc)})
        return None
    if rule.rule_id.encode() != key:
        logger.error("rule_key_mismatch", extra={"key": key.decode("utf-8", "replace"), "rule": rule.rule_id})
        return None
    return rule


class RulesWatcher:
    """Follows the rules topic in a thread; `take()` gives the new rule book once per change."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rules: dict[str, Rule] = {}
        self.ready: RuleBook | None = None
        self.errors = 0
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rules-watcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def load_current(self) -> None:
        """The rules in force now (before the first batch); `take()` then gives them."""
        rules = read_rules(self.settings)
        with self._lock:
            self.ready = RuleBook.of(list(rules.values()))

    def take(self) -> RuleBook | None:
        with self._lock:
            ready, self.ready = self.ready, None
        return ready

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        config = self.settings.consumer_config(group=f"{self.settings.group}-rules", background=True)
        while not self.stop.is_set():
            reader = TopicReader(config, self.settings.rules_topic)
            try:
                reader.start()
                while not self.stop.is_set():
                    self.apply(reader.read(RULES_POLL_S, 1000))
            except ScorerError as exc:  # the topic is missing (created later by `scorer topics`): retry
                self.errors += 1
                logger.error("rules_topic_unreadable", extra={"error": str(exc)})
                self.stop.wait(5.0)
            finally:
                reader.close()

    def apply(self, records: list[tuple[int, bytes, bytes | None]]) -> None:
        """Fold records into the rules; publish a new book when anything changed."""
        if not records:
            return
        for _, key, value in records:
            rule = _rule(key, value)
            if rule is None:
                self.rules.pop(key.decode("utf-8", "replace"), None)
                self.errors += bool(value)
            else:
                self.rules[rule.rule_id] = rule
        book = RuleBook.of(list(self.rules.values()))
        with self._lock:
            self.ready = book
        logger.info("rules_loaded", extra={"rules": sorted(self.rules)})
