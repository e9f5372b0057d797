"""The rules on the compacted `scorer-rules` topic: key = rule id, value = the rule (JSON), a tombstone
removes it. `scorer rules` writes them; every scorer follows the topic in a thread (rules_watcher, the
same watcher as the control topic's) and swaps the new rule book in between batches: no restart."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

from scorer.config import Settings
from scorer.errors import ScorerError
from scorer.kafka import clients
from scorer.kafka.compacted import CompactedWatcher, read_compacted
from scorer.kafka.tables import TopicReader
from scorer.policy.rules import Rule, RuleBook, RuleError, contradiction
from scorer.runtime.metrics import Metrics

logger = logging.getLogger(__name__)


def read_rules(settings: Settings, timeout_s: float = 10.0) -> dict[str, Rule]:
    """Every rule in force, by id (an unreadable record is skipped and logged)."""
    rules: dict[str, Rule] = {}
    for key, value in read_compacted(settings, settings.rules_topic, timeout_s).items():
        try:
            rule = parse_rule(key, value)
        except ScorerError as exc:
            logger.error("rule_unreadable", extra={"error": str(exc)})
            continue
        rules[rule.rule_id] = rule
    return rules


def rule_record(rule_id: str, rule: Rule | None) -> tuple[bytes, bytes | None]:
    """The (key, value) of a rule on `scorer-rules`: key = its id, value = its JSON (None: the tombstone
    that removes it). `scorer rules` and the analysts' verdicts (kafka/verdicts.py) both write these."""
    return rule_id.encode(), None if rule is None else orjson.dumps(rule.to_dict())


def check_rule(rule: Rule, in_force: Mapping[str, Rule], replace: bool) -> None:
    """Refuse, with ScorerError naming why, a rule that cannot join those in force: its id is taken (unless
    `replace`), or it contradicts another rule (policy.rules.contradiction)."""
    if rule.rule_id in in_force and not replace:
        raise ScorerError(f"rule {rule.rule_id} exists: --replace to change it, or choose another id")
    clash = contradiction(rule, in_force.values())
    if clash is not None:
        raise ScorerError(f"rule {rule.rule_id} refused: {clash}")


def write_rule(settings: Settings, rule_id: str, rule: Rule | None, timeout_s: float = 10.0) -> None:
    """Publish a rule (None: its tombstone) and wait for the broker to acknowledge it."""
    producer = clients.producer(settings.producer_config())
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    key, value = rule_record(rule_id, rule)
    producer.produce(settings.rules_topic, value, key, on_delivery=delivered)
    if producer.flush(timeout_s) != 0 or failures:
        raise ScorerError(f"could not publish to {settings.rules_topic}: {failures or 'timed out'}")


def rules_watcher(settings: Settings, metrics: Metrics) -> CompactedWatcher[Rule, RuleBook]:
    """The watcher of `scorer-rules`: the rule book of every rule in force, anew after each change."""
    config = settings.consumer_config(group=f"{settings.group}-rules", background=True)
    return CompactedWatcher(
        "rules", lambda: TopicReader(config, settings.rules_topic), parse_rule, _book, metrics
    )


def parse_rule(key: bytes, value: bytes) -> Rule:
    """The rule a record holds; ScorerError when it is unreadable or filed under another rule's id."""
    try:
        rule = Rule.from_dict(orjson.loads(value))
    except (orjson.JSONDecodeError, RuleError, AttributeError) as exc:
        raise ScorerError(f"rule {key.decode('utf-8', 'replace')!r} is unreadable: {exc}") from exc
    if rule.rule_id.encode() != key:
        raise ScorerError(f"rule {rule.rule_id!r} is filed under the key {key.decode('utf-8', 'replace')!r}")
    return rule


def _book(table: Mapping[bytes, Rule]) -> RuleBook:
    book = RuleBook.of(list(table.values()))
    logger.info("rules_loaded", extra={"rules": sorted(rule.rule_id for rule in book.rules)})
    return book
