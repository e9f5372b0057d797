"""Rules and the decision policy on the real broker: `scorer rules` and `scorer models policy` from the
command line, a block rule added mid-stream declining a card's next transactions without a restart, its
removal giving the model back the decision, an expiry applied in event time; an analyst's verdict (its
label and its block, then an exemption from that block) published by KafkaVerdictPublisher."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from scorer.cases.model import LabelOut, RuleRequest
from scorer.config import Settings
from scorer.events.timestamps import parse_rfc3339_ms
from scorer.kafka.verdicts import KafkaVerdictPublisher
from tests.integration.conftest import Proc, consume, decisions, env_for, produce

T = "2026-03-01T10:{:02d}:00Z"


def cli(settings: Settings, model: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scorer", *args], env=env_for(settings, model), capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def tx(tid: str, customer: str, minute: int, amount: float = 20.0) -> tuple[bytes, bytes]:
    doc = {"transaction_id": tid, "customer_id": customer, "terminal_id": "T1", "amount": amount,
           "timestamp": T.format(minute)}  # fmt: skip
    return customer.encode(), orjson.dumps(doc)


def test_rules_from_the_command_line_refuse_what_is_malformed_or_contradictory(
    settings: Settings, tiny_model: Path
) -> None:
    added = cli(settings, tiny_model, "rules", "add", "stolen-7", "--kind", "block_customer", "--values", "C7,C8",
                "--note", "case 4411")  # fmt: skip
    assert added.returncode == 0 and "rule stolen-7 published" in added.stdout, added.stderr
    clash = cli(settings, tiny_model, "rules", "add", "vip", "--kind", "allow_customer", "--values", "C8")
    assert clash.returncode == 1
    assert (
        clash.stderr.strip()
        == "scorer: error: rule vip refused: 'C8' is already allowed and blocked in rule stolen-7"
    )
    bad = cli(settings, tiny_model, "rules", "add", "cap", "--kind", "amount_limit")
    assert (
        bad.returncode == 2
        and "amount_limit needs max_amount" in bad.stderr
        and "Traceback" not in bad.stderr
    )
    again = cli(
        settings, tiny_model, "rules", "add", "stolen-7", "--kind", "block_terminal", "--values", "T1"
    )
    assert again.returncode == 1 and "--replace" in again.stderr
    listed = cli(settings, tiny_model, "rules", "list")
    assert "stolen-7" in listed.stdout and "block_customer" in listed.stdout and "case 4411" in listed.stdout
    shown = orjson.loads(cli(settings, tiny_model, "rules", "show", "stolen-7").stdout)
    assert shown["values"] == ["C7", "C8"] and shown["action"] == "decline"
    past = cli(settings, tiny_model, "rules", "add", "case-c8", "--kind", "allow_customer_past_rule",
               "--values", "C8", "--past-rule", "stolen-7", "--expires", T.format(30))  # fmt: skip
    assert past.returncode == 0 and "published" in past.stdout and "note:" not in past.stdout, past.stderr
    assert (
        orjson.loads(cli(settings, tiny_model, "rules", "show", "case-c8").stdout)["past_rule"] == "stolen-7"
    )
    assert "C8 past rule stolen-7" in cli(settings, tiny_model, "rules", "list").stdout
    later = cli(settings, tiny_model, "rules", "add", "case-c9", "--kind", "allow_customer_past_rule",
                "--values", "C9", "--past-rule", "not-yet")  # fmt: skip
    assert later.returncode == 0 and "no rule not-yet in force" in later.stdout, later.stderr
    for rule_id in ("stolen-7", "case-c8", "case-c9"):
        assert cli(settings, tiny_model, "rules", "remove", rule_id).returncode == 0
    assert cli(settings, tiny_model, "rules", "remove", "stolen-7").returncode == 1  # no such rule any more
    assert "no rules in force" in cli(settings, tiny_model, "rules", "list").stdout

    policy = cli(settings, tiny_model, "models", "--registry", str(tiny_model.parent.parent), "policy",
                 "--review", "alert_budget:20", "--decline", "alert_budget:3")  # fmt: skip
    assert policy.returncode == 0, policy.stderr
    assert "tiny/1: review" in policy.stdout and "/day" in policy.stdout and "published" in policy.stdout
    shown_plan = cli(settings, tiny_model, "models", "--registry", str(tiny_model.parent.parent), "policy")
    assert "alert_budget:20" in shown_plan.stdout and "nothing published" in shown_plan.stdout


def test_a_block_rule_added_mid_stream_declines_without_a_restart_and_expires_in_event_time(
    settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    registry = str(tiny_model.parent.parent)
    policy = cli(settings, tiny_model, "models", "--registry", registry, "policy",
                 "--review", "threshold:0.02", "--decline", "threshold:0.3")  # fmt: skip
    assert policy.returncode == 0, policy.stderr
    scorer = Proc("run", settings, tiny_model, tmp_path / "run.log", SCORER_REGISTRY=registry)
    procs.append(scorer)
    produce(settings, settings.input_topic, [tx("before", "C7", 0)])
    assert len(consume(settings, settings.decisions_topic, 1)) == 1  # the scorer is running

    added = cli(settings, tiny_model, "rules", "add", "stolen", "--kind", "block_customer", "--values", "C7",
                "--expires", T.format(30))  # fmt: skip
    assert added.returncode == 0, added.stderr
    time.sleep(1.0)  # a second of event flow
    produce(
        settings,
        settings.input_topic,
        [tx("during", "C7", 10), tx("other", "C9", 11), tx("expired", "C7", 31)],
    )
    got = {d["transaction_id"]: d for d in decisions(consume(settings, settings.decisions_topic, 4))}
    assert (got["during"]["action"], got["during"]["action_source"]) == ("decline", "stolen")
    assert got["during"]["flagged"] is True
    assert got["other"]["action_source"] == "model" and got["before"]["action_source"] == "model"
    assert got["expired"]["action_source"] == "model"  # its event time is past the rule's expiry
    flags = decisions(consume(settings, settings.flags_topic, 10, timeout_s=5))
    assert "during" in {f["transaction_id"] for f in flags}

    assert cli(settings, tiny_model, "rules", "remove", "stolen").returncode == 0
    time.sleep(1.0)
    produce(settings, settings.input_topic, [tx("after", "C7", 12)])
    got = {d["transaction_id"]: d for d in decisions(consume(settings, settings.decisions_topic, 5))}
    assert got["after"]["action_source"] == "model"
    for d in got.values():  # the published policy's bands decide where no rule did
        if d["action_source"] == "model":
            band = "decline" if d["score"] >= 0.3 else "review" if d["score"] >= 0.02 else "approve"
            assert (d["action"], d["threshold"]) == (band, 0.02), d
    text = scorer.metrics()
    assert 'scorer_rule_hits_total{rule_id="stolen"} 1.0' in text
    assert 'scorer_decisions_total{action="decline",source="rule"} 1.0' in text
    assert scorer.terminate() == 0


def rules_built(scorer: Proc) -> float:
    """When the scorer last built its rule book (0 before the first): it applies it before its next batch."""
    found = re.search(
        r'scorer_watcher_last_update_timestamp_seconds\{topic_kind="rules"\} (\S+)', scorer.metrics()
    )
    return float(found.group(1)) if found else 0.0


def wait_for_new_rules(scorer: Proc, since: float, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while rules_built(scorer) <= since:
        assert time.monotonic() < deadline, f"no new rule book; {scorer.describe()}"
        time.sleep(0.05)


def test_a_verdict_labels_the_transaction_and_blocks_the_card_then_a_genuine_one_lets_it_past(
    settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    scorer = Proc("run", settings, tiny_model, tmp_path / "run.log")
    procs.append(scorer)
    produce(settings, settings.input_topic, [tx("seen", "C7", 0)])
    assert len(consume(settings, settings.decisions_topic, 1)) == 1  # the scorer is running
    built = rules_built(scorer)
    publisher = KafkaVerdictPublisher(settings)
    at = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    until = datetime(2026, 3, 2, tzinfo=UTC)
    fraud = LabelOut("seen", "C7", "T1", True, at, case_id="C7", analyst_id="ana")
    published_ms = [int(time.time() * 1000)]
    publisher.publish([fraud], [RuleRequest("block_customer", "C7", until, case_id="C7", analyst_id="ana")])
    published_ms.append(int(time.time() * 1000) + 1)

    wait_for_new_rules(scorer, built)
    built = rules_built(scorer)
    produce(settings, settings.input_topic, [tx("blocked", "C7", 10), tx("other", "C9", 11)])
    got = {d["transaction_id"]: d for d in decisions(consume(settings, settings.decisions_topic, 3))}
    assert (got["blocked"]["action"], got["blocked"]["action_source"]) == ("decline", "case-C7-block")
    assert got["other"]["action_source"] == "model"
    (record,) = consume(settings, settings.labels_topic, 1)
    label = orjson.loads(record["value"])  # type: ignore[arg-type]
    assert (
        record["key"] == b"C7"
        and published_ms[0] <= parse_rfc3339_ms(label.pop("reported_at")) <= published_ms[1]
    )
    assert label == {
        "transaction_id": "seen", "customer_id": "C7", "terminal_id": "T1", "is_fraud": True,
        "timestamp": "2026-03-01T10:00:00.000Z", "source": "analyst", "analyst_id": "ana", "case_id": "C7",
    }  # fmt: skip

    past = RuleRequest("allow_customer_past_rule", "C7", until, "C7", "bob", past_rule_id="case-C7-block")
    publisher.publish([], [past])
    publisher.close()
    wait_for_new_rules(scorer, built)
    produce(settings, settings.input_topic, [tx("let-past", "C7", 12)])
    got = {d["transaction_id"]: d for d in decisions(consume(settings, settings.decisions_topic, 4))}
    assert got["let-past"]["action_source"] == "model"
    assert scorer.terminate() == 0
