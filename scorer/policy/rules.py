"""Rules beside the model: allow and block lists, amount limits, blocks by merchant category or channel.

A fraud team keeps rules for what a model cannot know (a card blocked after an investigation, a known-good
corporate card, a hard limit, an attack on one merchant category). Each rule has an id, an action, an
optional expiry (event time) and a note. Precedence, fixed and documented: an allow-list match approves
whatever else matches; then block rules (customer, terminal, merchant category, channel); then amount
limits; then the model. Among rules of one step the strongest action wins (decline over review).

Evaluation is vectorised over a batch: list rules become one dict per field from value to rule position
(a lookup per event in C through `map`), limits a comparison per limit rule; a rule past its expiry is
masked out per event, by the event's own time, so a replay decides alike.
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
KINDS = (*LIST_FIELDS, "amount_limit")
RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
FOREVER = np.iinfo(np.int64).max


class RuleError(ValueError):
    """A malformed rule, or one that contradicts another."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule. `values` for list kinds; `max_amount` (and optionally `currency`) for amount_limit."""

    rule_id: str
    kind: str
    action: str
    values: tuple[str, ...] = ()
    max_amount: float | None = None
    currency: str | None = None
    expires_ms: int | None = None  # event time from which the rule no longer applies
    note: str = ""
    created_ms: int = 0

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

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.rule_id, "kind": self.kind, "action": self.action}
        if self.values:
            doc["values"] = list(self.values)
        if self.max_amount is not None:
            doc["max_amount"] = self.max_amount
        if self.currency is not None:
            doc["currency"] = self.currency
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
    so for every event the rule that decides is simply the lowest position that matches.
    """

    rules: list[Rule] = field(default_factory=list)
    expires: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    action_code: I8 = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    allow: B = field(default_factory=lambda: np.zeros(0, dtype=bool))
    lists: dict[str, dict[str, int]] = field(default_factory=dict)  # field -> value -> first rule holding it
    # values held by more than one list rule: all their rules in order (used when the first has expired)
    shared: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    limits: list[int] = field(default_factory=list)
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
        for i, rule in enumerate(ordered):
            if rule.kind == "amount_limit":
                book.limits.append(i)
                continue
            name = LIST_FIELDS[rule.kind]
            lookup = book.lists.setdefault(name, {})
            for value in rule.values:
                if value in lookup:
                    book.shared.setdefault(name, {}).setdefault(value, [lookup[value]]).append(i)
                else:
                    lookup[value] = i
        return book

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
        for name, lookup in self.lists.items():
            found = self._lookup(name, lookup, getattr(batch, name), ts)
            better = (found >= 0) & ((hit < 0) | (found < hit))
            hit[better] = found[better]
        if self.limits:
            self._limits(batch, ts, hit)
        return hit, (hit >= 0) & self.allow[np.maximum(hit, 0)]

    def _lookup(self, name: str, lookup: dict[str, int], values: Sequence[str], ts: I64) -> I64:
        """The first live rule whose list (for field `name`) holds each event's value, -1 for none."""
        found = np.fromiter(map(lookup.get, values, repeat(-1)), dtype=np.int64, count=len(values))
        dead = (found >= 0) & (ts >= self.expires[np.maximum(found, 0)])
        if dead.any():
            shared = self.shared.get(name, {})
            for j in np.flatnonzero(dead).tolist():  # expired: a later rule of the value may be live
                alive = [r for r in shared.get(values[j], ()) if ts[j] < self.expires[r]]
                found[j] = alive[0] if alive else -1
        return found

    def _limits(self, batch: TransactionBatch, ts: I64, hit: I64) -> None:
        """Amount limits, in order, for the events no list rule decided."""
        currency: npt.NDArray[np.object_] | None = None
        for i in self.limits:  # in strength order: the first hit is the strongest
            rule = self.rules[i]
            limit = float(rule.max_amount or 0.0)  # set on every amount_limit rule (checked on creation)
            over = (batch.amount > limit) & (ts < self.expires[i]) & (hit < 0)
            if rule.currency is not None and over.any():
                currency = np.asarray(batch.currency, dtype=object) if currency is None else currency
                over &= currency == rule.currency
            hit[over] = i

    def actions(self, hit: I64) -> I8:
        """The action code of each hit rule (APPROVE where none: callers keep the model's there)."""
        out = np.full(len(hit), APPROVE, dtype=np.int8)
        ruled = hit >= 0
        out[ruled] = self.action_code[hit[ruled]]
        return out
