"""`scorer rules add|remove|list|show`: the rules beside the model, on the compacted `scorer-rules` topic.

A malformed rule is refused with one line (exit 2), one that contradicts a rule in force with one line
naming it (exit 1); every scorer applies a change between batches, without a restart.
"""

from __future__ import annotations

import argparse
import time

import orjson

from scorer.cli.args import HelpFormatter, add_kafka_args, settings_from
from scorer.config import Settings
from scorer.errors import ConfigError, ScorerError
from scorer.policy.rules import KINDS, Rule, RuleError, parse_expiry
from scorer.runtime.console import table


def add_rules_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "rules", formatter_class=HelpFormatter,
        help="rules beside the model: allow/block lists, amount limits, category and channel blocks, exemptions",
    )  # fmt: skip
    rules = p.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    q = rules.add_parser("add", formatter_class=HelpFormatter, help="add a rule (or --replace one)")
    q.add_argument("rule_id", help="the rule's id: 1-64 letters, digits, '_', '.', '-'")
    q.add_argument("--kind", choices=KINDS, required=True, help="what the rule matches")
    q.add_argument(
        "--action", choices=["approve", "review", "decline"],
        help="allow_* rules approve; the others review or decline (default: approve for allow_*, else decline)",
    )  # fmt: skip
    q.add_argument("--values", help="list kinds: comma-separated ids, categories or channels")
    q.add_argument(
        "--past-rule", metavar="RULE_ID",
        help="allow_customer_past_rule: the rule the --values cards are let past (it may be added later)",
    )  # fmt: skip
    q.add_argument("--max-amount", type=float, help="amount_limit: amounts above this get the action")
    q.add_argument("--currency", help="amount_limit: only this currency (default: every currency)")
    q.add_argument("--expires", help="event time from which the rule stops applying (RFC 3339, UTC)")
    q.add_argument("--note", default="", help="why the rule exists (an investigation, a ticket)")
    q.add_argument("--replace", action="store_true", help="replace the rule of the same id")
    add_kafka_args(q, "rules")
    q.set_defaults(func=cmd_add)
    q = rules.add_parser("remove", formatter_class=HelpFormatter, help="remove a rule")
    q.add_argument("rule_id")
    add_kafka_args(q, "rules")
    q.set_defaults(func=cmd_remove)
    q = rules.add_parser("list", formatter_class=HelpFormatter, help="the rules in force")
    add_kafka_args(q, "rules")
    q.set_defaults(func=cmd_list)
    q = rules.add_parser("show", formatter_class=HelpFormatter, help="one rule, in full (JSON)")
    q.add_argument("rule_id")
    add_kafka_args(q, "rules")
    q.set_defaults(func=cmd_show)


def rule_from(args: argparse.Namespace) -> Rule:
    """The rule the flags describe; ConfigError (exit 2) with the reason when malformed."""
    action = args.action or ("approve" if args.kind.startswith("allow_") else "decline")
    values = tuple(v.strip() for v in (args.values or "").split(",") if v.strip())
    try:
        expires = parse_expiry(args.expires) if args.expires else None
        return Rule(
            args.rule_id, args.kind, action, values, args.max_amount, args.currency, expires, args.note,
            int(time.time() * 1000), args.past_rule,
        )  # fmt: skip
    except RuleError as exc:
        raise ConfigError(str(exc)) from exc


def cmd_add(args: argparse.Namespace) -> int:
    from scorer.kafka.rules import check_rule, read_rules, write_rule

    rule = rule_from(args)
    settings = _reached(args)
    existing = read_rules(settings)
    check_rule(rule, existing, args.replace)
    write_rule(settings, rule.rule_id, rule)
    print(f"rule {rule.rule_id} published: {describe(rule)}")
    if rule.past_rule is not None and rule.past_rule not in existing:
        print(f"note: no rule {rule.past_rule} in force: the exemption applies once one of that id is added")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from scorer.kafka.rules import read_rules, write_rule

    settings = _reached(args)
    if args.rule_id not in read_rules(settings):
        raise ScorerError(f"no rule {args.rule_id} in force")
    write_rule(settings, args.rule_id, None)
    print(f"rule {args.rule_id} removed")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from scorer.kafka.rules import read_rules

    rules = sorted(read_rules(_reached(args)).values(), key=lambda r: r.rule_id)
    if not rules:
        print("no rules in force")
        return 0
    rows = [(r.rule_id, r.kind, r.action, _what(r), _expiry(r), r.note) for r in rules]
    print(table(["id", "kind", "action", "matches", "expires", "note"], rows))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from scorer.kafka.rules import read_rules

    rule = read_rules(_reached(args)).get(args.rule_id)
    if rule is None:
        raise ScorerError(f"no rule {args.rule_id} in force")
    print(orjson.dumps(rule.to_dict(), option=orjson.OPT_INDENT_2).decode())
    return 0


def _reached(args: argparse.Namespace) -> Settings:
    """The settings, once the brokers answer; ScorerError naming the address and why when they do not
    (at once when every broker refuses, as every other command that needs Kafka)."""
    from scorer.kafka.topics import reach

    settings = settings_from(args)
    reach(settings)
    return settings


def describe(rule: Rule) -> str:
    return f"{rule.kind} -> {rule.action} ({_what(rule)}; expires {_expiry(rule)})"


def _what(rule: Rule) -> str:
    if rule.kind == "amount_limit":
        return f"amount > {rule.max_amount:g}" + (f" {rule.currency}" if rule.currency else "")
    if rule.past_rule is not None:
        return f"{_listed(rule)} past rule {rule.past_rule}"
    return _listed(rule)


def _listed(rule: Rule) -> str:
    shown = ", ".join(rule.values[:3])
    return shown + (f" (+{len(rule.values) - 3} more)" if len(rule.values) > 3 else "")


def _expiry(rule: Rule) -> str:
    if rule.expires_ms is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rule.expires_ms / 1000))
