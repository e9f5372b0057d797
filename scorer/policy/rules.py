"""Rules beside the model: allow and block lists, amount limits, blocks by merchant category or channel,
and exemptions that let one card past one rule.

A fraud team keeps rules for what a model cannot know (a card blocked after an investigation, a known-good
corporate card, a hard limit, an attack on one merchant category). Each rule has an id, an action, an
optional expiry (event time) and a note. Precedence, fixed and documented: an allow-list match approves
whatever else matches; then block rules (customer, terminal, merchant category, channel); then amount
limits; then the model. Among rules of one step the strongest action wins (decline over review).

An `allow_customer_past_rule` rule (an analyst found a card genuine that rule `past_rule` stopped) decides
nothing itself: for its cards' transactions before its expiry, the rule named `past_rule` does not apply,
and the next rule in precedence, or the model, decides. It may name a rule not (yet) in force: it is
dormant until that rule exists (a rule is often removed and added again under its id). It never
exempts from another exemption.

Evaluation is vectorised over a batch: list rules become one dict per field from value to rule position
(a lookup per event in C through `map`), limits a comparison per limit rule; a rule past its expiry, or one
the event's card is let past, is masked out per event, by the event's own time, so a replay decides alike.
When the first rule holding a value is masked out for an event, the value's next rules are tried a depth
at a time (one more lookup over those events per depth), never an event at a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from scorer.events.batches import TransactionBatch
from scorer.events.timestamps import parse_rfc3339_ms
from scorer.policy.actions import ACTIONS, APPROVE

I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
B = npt.NDArray[np.bool_]
LIST_FIELDS = {  # rule kind -> the transaction field its values match
    "allow_customer": "customer_id",
    "allow_terminal": "terminal_id",
    "block_customer": "customer_id",
    "block_terminal": "terminal_id",
    "block_merchant_category": "merchant_category",
    "block_channel": "channel",
}
EXEMPTION = "allow_customer_past_rule"  # its values are customer ids; `past_rule` the rule they may pass
KINDS = (*LIST_FIELDS, "amount_limit", EXEMPTION)
RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
FOREVER = np.iinfo(np.int64).max
NOT_EXEMPT = np.iinfo(np.int64).min  # the "exempt until" of an event that is not: no time is before it


class RuleError(ValueError):
    """A malformed rule, or one that contradicts another."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule. `values` for list kinds and exemptions (customer ids); `max_amount` (and optionally
    `currency`) for amount_limit; `past_rule` (a rule id) for allow_customer_past_rule. Raises RuleError
    with the reason when malformed."""

    rule_id: str
    kind: str
    action: str
    values: tuple[str, ...] = ()
    max_amount: float | None = None
    currency: str | None = None
    expires_ms: int | None = None  # event time from which the rule no longer applies
    note: str = ""
    created_ms: int = 0
    past_rule: str | None = None

    def __post_init__(self) -> None:
        if not RULE_ID.fullmatch(self.rule_id):
            raise RuleError(
                f"rule id {self.rule_id!r}: 1-64 letters, digits, '_', '.', '-' (starting alphanumeric)"
            )
        if self.kind not in KINDS:
            raise RuleError(f"rule {self.rule_id}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        allowed = ("approve",) if self.kind.startswith("allow_") else ("review", "decline")
        if self.action not in allowed:
            raise RuleError(
                f"rule {self.rule_id}: a {self.kind} rule's action is {' or '.join(allowed)}, not {self.action!r}"
            )
        if self.kind == "amount_limit":
            if self.max_amount is None or not np.isfinite(self.max_amount) or self.max_amount < 0:
                raise RuleError(f"rule {self.rule_id}: amount_limit needs max_amount >= 0")
            if self.values:
                raise RuleError(f"rule {self.rule_id}: amount_limit takes no values")
        elif not self.values or any(not v for v in self.values):
            raise RuleError(f"rule {self.rule_id}: {self.kind} needs one or more non-empty values")
        elif self.max_amount is not None or self.currency is not None:
            raise RuleError(f"rule {self.rule_id}: max_amount and currency belong to amount_limit rules")
        if self.currency is not None and not re.fullmatch(r"[A-Z]{3}", self.currency):
            raise RuleError(f"rule {self.rule_id}: currency {self.currency!r} is not 3 upper-case letters")
        if self.kind != EXEMPTION:
            if self.past_rule is not None:
                raise RuleError(f"rule {self.rule_id}: past_rule belongs to {EXEMPTION} rules")
        elif self.past_rule is None or not RULE_ID.fullmatch(self.past_rule):
            raise RuleError(
                f"rule {self.rule_id}: {EXEMPTION} needs past_rule, the id of the rule to let past"
            )
        elif self.past_rule == self.rule_id:
            raise RuleError(f"rule {self.rule_id}: an exemption cannot let past itself")

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.rule_id, "kind": self.kind, "action": self.action}
        if self.values:
            doc["values"] = list(self.values)
        if self.max_amount is not None:
            doc["max_amount"] = self.max_amount
        if self.currency is not None:
            doc["currency"] = self.currency
        if self.past_rule is not None:
            doc["past_rule"] = self.past_rule
        if self.expires_ms is not None:
            doc["expires_ms"] = self.expires_ms
        return {**doc, "note": self.note, "created_ms": self.created_ms}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Rule:
        try:
            return cls(
                str(doc["id"]), str(doc["kind"]), str(doc["action"]), tuple(str(v) for v in doc.get("values", ())),
                None if doc.get("max_amount") is None else float(doc["max_amount"]),
                None if doc.get("currency") is None else str(doc["currency"]),
                None if doc.get("expires_ms") is None else int(doc["expires_ms"]),
                str(doc.get("note", "")), int(doc.get("created_ms", 0)),
                None if doc.get("past_rule") is None else str(doc["past_rule"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, RuleError):
                raise
            raise RuleError(f"unreadable rule: {exc}") from exc


def parse_expiry(text: str) -> int:
    """An RFC 3339 UTC time (as the event schema writes them) in ms."""
    try:
        return parse_rfc3339_ms(text)
    except ValueError as exc:
        raise RuleError(f"--expires {text!r}: not an RFC 3339 UTC time such as 2026-12-31T00:00:00Z") from exc


def contradiction(new: Rule, existing: Iterable[Rule]) -> str | None:
    """Why `new` cannot join `existing` (None if it can): a value both allowed and blocked, or blocked
    by two rules with different actions; the same limit scope twice with different actions."""
    field_of = LIST_FIELDS.get(new.kind)
    mine = set(new.values)
    for rule in existing:
        if rule.rule_id == new.rule_id:
            continue
        if field_of is not None and LIST_FIELDS.get(rule.kind) == field_of:
            shared = sorted(mine & set(rule.values))
            allow = (new.kind.startswith("allow_"), rule.kind.startswith("allow_"))
            if shared and (allow[0] != allow[1] or new.action != rule.action):
                what = "allowed and blocked" if allow[0] != allow[1] else f"{rule.action} by it"
                return f"{shared[0]!r} is already {what} in rule {rule.rule_id}"
        if (
            new.kind == rule.kind == "amount_limit"
            and new.currency == rule.currency
            and new.action != rule.action
        ):
            scope = new.currency or "every currency"
            return f"rule {rule.rule_id} already limits {scope} with action {rule.action}"
    return None


@dataclass(slots=True)
class RuleBook:
    """The rules in force, prepared for vectorised evaluation.

    Rules are held in precedence order: allow rules, then the others by strength (decline before review),
    so for every event the rule that decides is simply the lowest position that matches and is live for
    it (not expired at its time, and not one its card is let past). Exemptions hold positions too (so
    `rules` lists every rule in force) but never match.
    """

    rules: list[Rule] = field(default_factory=list)
    expires: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    action_code: I8 = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    allow: B = field(default_factory=lambda: np.zeros(0, dtype=bool))
    lists: dict[str, dict[str, int]] = field(default_factory=dict)  # field -> value -> first rule holding it
    # values held by more than one list rule: (value, k) -> the k-th rule holding it (k >= 1), tried when
    # the ones before it are not live for an event
    deeper: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)
    limits: list[int] = field(default_factory=list)
    # (customer id, position of the rule it is let past) -> event time until which it is (exclusive)
    exempt_until: dict[tuple[str, int], int] = field(default_factory=dict)
    exempt_customers: frozenset[str] = frozenset()
    exempt_limits: frozenset[int] = frozenset()  # limit positions some card is let past
    json_sources: npt.NDArray[np.object_] = field(  # "model", then each rule's id, as JSON strings
        default_factory=lambda: np.asarray([b'"model"'], dtype=object)
    )

    @classmethod
    def of(cls, rules: Sequence[Rule]) -> RuleBook:
        ordered = sorted(
            rules, key=lambda r: (not r.kind.startswith("allow_"), -ACTIONS.index(r.action), r.rule_id)
        )
        book = cls(list(ordered))
        book.expires = np.asarray(
            [FOREVER if r.expires_ms is None else r.expires_ms for r in ordered], dtype=np.int64
        )
        book.action_code = np.asarray([ACTIONS.index(r.action) for r in ordered], dtype=np.int8)
        book.allow = np.asarray([r.kind.startswith("allow_") for r in ordered], dtype=bool)
        book.json_sources = np.asarray(
            [b'"model"', *(orjson.dumps(r.rule_id) for r in ordered)], dtype=object
        )
        depth: dict[tuple[str, str], int] = {}  # (field, value) -> rules holding it so far
        for i, rule in enumerate(ordered):
            if rule.kind == "amount_limit":
                book.limits.append(i)
                continue
            if rule.kind == EXEMPTION:
                continue
            name = LIST_FIELDS[rule.kind]
            lookup = book.lists.setdefault(name, {})
            for value in rule.values:
                k = depth.get((name, value), 0)
                if k == 0:
                    lookup[value] = i
                else:
                    book.deeper.setdefault(name, {})[(value, k)] = i
                depth[(name, value)] = k + 1
        book._exemptions()
        return book

    def _exemptions(self) -> None:
        """Who is let past which rule, until when; an exemption naming no rule in force (or another
        exemption) is dormant. Two exemptions of one card past one rule: the later expiry counts."""
        position = {r.rule_id: i for i, r in enumerate(self.rules) if r.kind != EXEMPTION}
        for i, rule in enumerate(self.rules):
            target = position.get(rule.past_rule or "") if rule.kind == EXEMPTION else None
            if target is None:
                continue
            for customer in rule.values:
                key = (customer, target)
                self.exempt_until[key] = max(self.exempt_until.get(key, NOT_EXEMPT), int(self.expires[i]))
        self.exempt_customers = frozenset(c for c, _ in self.exempt_until)
        self.exempt_limits = frozenset(t for _, t in self.exempt_until if t in self.limits)

    def __len__(self) -> int:
        return len(self.rules)

    def apply(self, batch: TransactionBatch) -> tuple[I64, B]:
        """(the deciding rule's position per event, -1 for none; True where it is an allow rule): one
        lookup per field with lists, then the limits for the events no list rule decided."""
        n = len(batch)
        hit = np.full(n, -1, dtype=np.int64)
        if not self.rules:
            return hit, np.zeros(n, dtype=bool)
        ts = batch.event_ts_ms
        passes = self._passes(batch.customer_id)
        for name, lookup in self.lists.items():
            found = self._lookup(name, lookup, getattr(batch, name), ts, passes)
            better = (found >= 0) & ((hit < 0) | (found < hit))
            hit[better] = found[better]
        if self.limits:
            self._limits(batch, ts, hit, passes)
        return hit, (hit >= 0) & self.allow[np.maximum(hit, 0)]

    def _passes(self, customers: Sequence[str]) -> _Passes:
        """The batch's cards as the exemption check needs them (nothing when no card of it has one)."""
        if not self.exempt_customers or not any(map(self.exempt_customers.__contains__, customers)):
            return _Passes(self.exempt_until, None)
        return _Passes(self.exempt_until, np.asarray(customers, dtype=object))

    def _lookup(
        self, name: str, lookup: dict[str, int], values: Sequence[str], ts: I64, passes: _Passes
    ) -> I64:
        """The first live rule whose list (for field `name`) holds each event's value, -1 for none."""
        found = np.fromiter(map(lookup.get, values, repeat(-1)), dtype=np.int64, count=len(values))
        idx = np.flatnonzero(found >= 0)
        dead = ~self._live(idx, found[idx], ts[idx], passes)
        if not dead.any():
            return found
        idx = idx[dead]  # their first rule is not live for them: a later rule holding the value may be
        found[idx] = -1
        deeper = self.deeper.get(name, {})
        held = np.asarray(values, dtype=object)[idx]
        k = 1
        while len(idx) and deeper:
            rule = np.fromiter(map(deeper.get, zip(held.tolist(), repeat(k)), repeat(-1)), np.int64, len(idx))
            live = (rule >= 0) & self._live(idx, np.maximum(rule, 0), ts[idx], passes)
            found[idx[live]] = rule[live]
            more = (rule >= 0) & ~live
            idx, held, k = idx[more], held[more], k + 1
        return found

    def _live(self, idx: I64, rule: I64, ts: I64, passes: _Passes) -> B:
        """Whether each rule applies to the event `idx` at time `ts`: not expired, not let past."""
        live: B = ts < self.expires[rule]
        return live & ~passes.exempt(idx, rule, ts)

    def _limits(self, batch: TransactionBatch, ts: I64, hit: I64, passes: _Passes) -> None:
        """Amount limits, in order, for the events no list rule decided."""
        currency: npt.NDArray[np.object_] | None = None
        for i in self.limits:  # in strength order: the first hit is the strongest
            rule = self.rules[i]
            limit = float(rule.max_amount or 0.0)  # set on every amount_limit rule (checked on creation)
            over = (batch.amount > limit) & (ts < self.expires[i]) & (hit < 0)
            if rule.currency is not None and over.any():
                currency = np.asarray(batch.currency, dtype=object) if currency is None else currency
                over &= currency == rule.currency
            if i in self.exempt_limits and over.any():
                idx = np.flatnonzero(over)
                over[idx] = ~passes.exempt(idx, np.full(len(idx), i, dtype=np.int64), ts[idx])
            hit[over] = i

    def actions(self, hit: I64) -> I8:
        """The action code of each hit rule (APPROVE where none: callers keep the model's there)."""
        out = np.full(len(hit), APPROVE, dtype=np.int8)
        ruled = hit >= 0
        out[ruled] = self.action_code[hit[ruled]]
        return out


@dataclass(frozen=True, slots=True)
class _Passes:
    """The exemptions as one batch needs them: `customers` is None when no card of the batch has one."""

    until: dict[tuple[str, int], int]
    customers: npt.NDArray[np.object_] | None

    def exempt(self, idx: I64, rule: I64, ts: I64) -> B:
        """Whether event `idx[j]`'s card is let past rule `rule[j]` at time `ts[j]` (one dict lookup each,
        in C through `map`)."""
        if self.customers is None or not len(idx):
            return np.zeros(len(idx), dtype=bool)
        pairs = zip(self.customers[idx].tolist(), rule.tolist(), strict=True)
        until = np.fromiter(map(self.until.get, pairs, repeat(NOT_EXEMPT)), np.int64, len(idx))
        exempt: B = ts < until
        return exempt
