"""The decision policy (bands on the validation curve) and the rules beside the model (policy/)."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from scorer import Scorer
from scorer.events.batches import TransactionBatch
from scorer.events.timestamps import MS_PER_DAY
from scorer.model.curve import Curve, validation_curve
from scorer.model.onnx import OnnxModel
from scorer.model.quality import ThresholdPolicy, choose_threshold
from scorer.policy.actions import NEVER_SCORE, Band, DecisionPolicy, PolicyError, model_actions
from scorer.policy.rules import EXEMPTION, Rule, RuleBook, RuleError, contradiction
from scorer.training.dataset import day_index, load_history, replay_features

T0 = 1_772_323_200_000  # 2026-03-01T00:00:00Z


def test_the_curve_resolves_bands_as_training_chooses_thresholds() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.1
    scores = np.clip(rng.normal(0.3, 0.2, 300) + 0.4 * y, 0, 1).round(3)  # ties, as real scores have
    curve = validation_curve(scores, y, n_days=7.0)
    assert len(curve.threshold) <= 300 and np.all(np.diff(curve.threshold) < 0)
    for budget in (0.5, 3.0, 10.0, 40.0):
        expected = choose_threshold(ThresholdPolicy("alert_budget", budget), scores, y, 7.0)
        assert Band("alert_budget", budget).resolve(curve) == pytest.approx(expected)
    for target in (0.5, 0.8):
        expected = choose_threshold(ThresholdPolicy("precision_target", target), scores, y, 7.0)
        found = Band("precision_target", target).resolve(curve)
        assert found == pytest.approx(expected) or found >= expected  # the curve keeps fewer points
    assert Band("alert_budget", 0.0).resolve(curve) == NEVER_SCORE  # nothing fits: nothing in the band
    assert Band("threshold", 0.4).resolve(None) == 0.4
    with pytest.raises(PolicyError, match="validation curve"):
        Band("alert_budget", 5).resolve(None)
    again = Curve.from_dict(orjson.loads(orjson.dumps(curve.to_dict())))
    assert again.at(float(curve.threshold[3]))[0] == pytest.approx(curve.alerts_per_day[3], abs=1e-3)


@pytest.mark.parametrize(
    ("text", "message"),
    [("budget:5", "unknown band kind"), ("alert_budget", "KIND:VALUE"), ("threshold:1.5", r"\[0, 1\]"),
     ("precision_target:0", r"\(0, 1\]"), ("alert_budget:-1", ">= 0"), ("alert_budget:x", "not a number")],
)  # fmt: skip
def test_a_malformed_band_says_why(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Band.parse(text)


def test_bands_make_actions_and_decline_never_starts_below_review() -> None:
    policy = DecisionPolicy(Band("threshold", 0.5), Band("threshold", 0.3))
    assert policy.thresholds(0.1, None) == (0.5, 0.5)
    assert DecisionPolicy().thresholds(0.2, None) == (0.2, NEVER_SCORE)  # no policy: review = the flag
    actions = model_actions(np.array([0.1, 0.5, 0.7, 0.95, 1.0]), 0.5, 0.9)
    assert actions.tolist() == [0, 1, 1, 2, 2]
    per_row = model_actions(np.array([0.6, 0.6]), np.array([0.5, 0.7]), np.array([0.9, 0.9]))
    assert per_row.tolist() == [1, 0]


def batch(rows: list[dict[str, object]]) -> TransactionBatch:
    return TransactionBatch(
        transaction_id=[str(r.get("tid", i)) for i, r in enumerate(rows)],
        customer_id=[str(r.get("customer", "C0")) for r in rows],
        terminal_id=[str(r.get("terminal", "T0")) for r in rows],
        amount=np.asarray([float(r.get("amount", 10.0)) for r in rows]),  # type: ignore[arg-type]
        event_ts_ms=np.asarray([int(r.get("ts", T0)) for r in rows], dtype=np.int64),  # type: ignore[call-overload]
        currency=[r.get("currency") for r in rows],  # type: ignore[misc]
        channel=[r.get("channel") for r in rows],  # type: ignore[misc]
        merchant_category=[r.get("mcc") for r in rows],  # type: ignore[misc]
    )


RULES = [
    Rule("vip", "allow_customer", "approve", ("C1",)),
    Rule("stolen", "block_customer", "decline", ("C1", "C2")),
    Rule("watch", "block_terminal", "review", ("T9",)),
    Rule("attack", "block_merchant_category", "decline", ("7995",), expires_ms=T0 + MS_PER_DAY),
    Rule("cap", "amount_limit", "review", max_amount=1000.0),
    Rule("cap-usd", "amount_limit", "decline", max_amount=5000.0, currency="USD"),
]


def test_rules_apply_in_their_precedence_and_expire_in_event_time() -> None:
    book = RuleBook.of(RULES)
    rows = [
        {"customer": "C1", "amount": 9000.0, "currency": "USD"},  # allow list beats block and limits
        {"customer": "C2", "terminal": "T9"},  # block: the stronger action of two block rules
        {"terminal": "T9", "amount": 2000.0},  # block before limits
        {"mcc": "7995", "ts": T0 + 10},  # category block, live
        {"mcc": "7995", "ts": T0 + MS_PER_DAY},  # expired at its event time
        {"amount": 2000.0, "currency": "EUR"},  # the every-currency limit
        {"amount": 6000.0, "currency": "USD"},  # the stronger, USD-only limit
        {"amount": 10.0, "channel": None, "mcc": None},  # nothing: the model decides
    ]
    hit, allowed = book.apply(batch(rows))
    ids = [book.rules[h].rule_id if h >= 0 else None for h in hit.tolist()]
    assert ids == ["vip", "stolen", "watch", "attack", None, "cap", "cap-usd", None]
    assert allowed.tolist() == [True] + [False] * 7
    assert book.actions(hit).tolist() == [0, 2, 1, 2, 0, 1, 2, 0]
    assert orjson.loads(book.json_sources[hit[1] + 1]) == "stolen"
    empty_hit, _ = RuleBook().apply(batch(rows))
    assert (empty_hit == -1).all()


def test_vectorised_rules_equal_a_per_event_reading_of_the_precedence() -> None:
    rng = np.random.default_rng(5)
    rules = [Rule(f"b{i}", "block_customer", ("review", "decline")[i % 2], tuple(f"C{j}" for j in range(i * 40, i * 40 + 60)),
                  expires_ms=int(T0 + rng.integers(0, 3 * MS_PER_DAY))) for i in range(10)]  # fmt: skip
    rules += [Rule("a", "allow_customer", "approve", tuple(f"C{j}" for j in range(0, 400, 7)))]
    rules += [Rule("lim", "amount_limit", "review", max_amount=500.0)]
    rows = [{"customer": f"C{rng.integers(0, 500)}", "amount": float(rng.integers(1, 1000)),
             "ts": int(T0 + rng.integers(0, 3 * MS_PER_DAY))} for _ in range(2000)]  # fmt: skip
    book = RuleBook.of(rules)
    hit, _ = book.apply(batch(rows))

    def reference(row: dict[str, object]) -> str | None:
        live = [r for r in book.rules if r.expires_ms is None or int(row["ts"]) < r.expires_ms]  # type: ignore[call-overload]
        for step in ("allow_customer", "block_customer"):
            found = [r for r in live if r.kind == step and row["customer"] in r.values]
            if found:
                return found[0].rule_id  # book.rules is in strength order
        over = [r for r in live if r.kind == "amount_limit" and float(row["amount"]) > (r.max_amount or 0)]  # type: ignore[arg-type]
        return over[0].rule_id if over else None

    assert [book.rules[h].rule_id if h >= 0 else None for h in hit.tolist()] == [reference(r) for r in rows]


def test_a_card_let_past_a_rule_gets_the_next_rule_or_the_model_until_the_expiry() -> None:
    day = T0 + MS_PER_DAY
    rules = [
        *RULES,
        Rule("watch-c1", "block_customer", "review", ("C1", "C5")),  # C1 is held by stolen and watch-c1
        Rule("case-c1", EXEMPTION, "approve", ("C1",), expires_ms=day, past_rule="vip"),
        Rule("case-c1b", EXEMPTION, "approve", ("C1",), expires_ms=day, past_rule="stolen"),
        Rule("case-c2", EXEMPTION, "approve", ("C2", "C4"), expires_ms=day, past_rule="stolen"),
        Rule("case-c3", EXEMPTION, "approve", ("C3",), past_rule="cap"),
        Rule("case-c5", EXEMPTION, "approve", ("C5",), past_rule="later"),  # no rule later: dormant
    ]
    book = RuleBook.of(rules)
    rows = [
        {"customer": "C1"},  # past vip and stolen: the next rule holding C1 decides
        {"customer": "C1", "ts": day},  # the exemptions have expired: the allow list again
        {"customer": "C2"},  # past stolen: the model
        {"customer": "C2", "terminal": "T9"},  # past stolen, not past the terminal's rule
        {"customer": "C2", "ts": day},  # expired: blocked again
        {"customer": "C3", "amount": 2000.0},  # past the every-currency limit
        {"customer": "C3", "amount": 6000.0, "currency": "USD"},  # not past the USD one
        {"customer": "C4", "amount": 2000.0},  # past stolen (C4 is not in it): the limit as for anyone
        {"customer": "C5"},  # the dormant exemption changes nothing
        {"customer": "C9", "amount": 2000.0},  # another card: the limit
    ]
    hit, allowed = book.apply(batch(rows))
    ids = [book.rules[h].rule_id if h >= 0 else None for h in hit.tolist()]
    assert ids == ["watch-c1", "vip", None, "watch", "stolen", None, "cap-usd", "cap", "watch-c1", "cap"]
    assert allowed.tolist() == [False, True] + [False] * 8
    assert book.actions(hit).tolist() == [1, 0, 0, 1, 2, 0, 2, 1, 1, 1]
    later = RuleBook.of([*rules, Rule("later", "block_customer", "decline", ("C5",))])
    (first,) = later.apply(batch([{"customer": "C5"}]))[0].tolist()
    assert later.rules[first].rule_id == "watch-c1"  # it applies once `later` exists: the next rule decides
    assert RuleBook.of(rules[-3:]).apply(batch(rows))[0].tolist() == [-1] * len(rows)  # they never decide


def test_vectorised_exemptions_equal_a_per_event_reading() -> None:
    rng = np.random.default_rng(11)
    span = 3 * MS_PER_DAY

    def expiry() -> int | None:
        return None if rng.random() < 0.3 else int(T0 + rng.integers(0, span))

    rules = [Rule(f"b{i}", "block_customer", ("review", "decline")[i % 2], tuple(f"C{j}" for j in range(i * 10, i * 10 + 30)),
                  expires_ms=expiry()) for i in range(8)]  # fmt: skip
    rules += [
        Rule("a", "allow_customer", "approve", tuple(f"C{j}" for j in range(0, 100, 7)), expires_ms=expiry())
    ]
    rules += [
        Rule("t", "block_terminal", "review", ("T1", "T2")),
        Rule("t2", "block_terminal", "decline", ("T2",)),
    ]
    rules += [
        Rule("lim", "amount_limit", "review", max_amount=500.0),
        Rule("lim2", "amount_limit", "decline", max_amount=900.0),
    ]
    targets = [r.rule_id for r in rules] + ["nowhere"]
    rules += [Rule(f"x{i}", EXEMPTION, "approve", tuple(f"C{j}" for j in rng.integers(0, 200, 4).tolist()),
                   expires_ms=expiry(), past_rule=str(rng.choice(targets))) for i in range(60)]  # fmt: skip
    rows = [{"customer": f"C{rng.integers(0, 200)}", "terminal": f"T{rng.integers(0, 4)}", "amount": float(rng.integers(1, 1000)),
             "ts": int(T0 + rng.integers(0, span))} for _ in range(3000)]  # fmt: skip
    book = RuleBook.of(rules)
    hit, _ = book.apply(batch(rows))

    def reference(row: dict[str, object]) -> str | None:
        ts, customer = int(row["ts"]), row["customer"]  # type: ignore[call-overload]

        def live(r: Rule) -> bool:
            return (r.expires_ms is None or ts < r.expires_ms) and not any(
                x.past_rule == r.rule_id
                and customer in x.values
                and (x.expires_ms is None or ts < x.expires_ms)
                for x in book.rules
                if x.kind == EXEMPTION
            )

        lists = [
            r
            for r in book.rules
            if r.kind in ("allow_customer", "block_customer", "block_terminal") and live(r)
        ]
        found = [r for r in lists if customer in r.values or row["terminal"] in r.values]
        if found:
            return found[0].rule_id  # book.rules is in precedence order
        over = [
            r
            for r in book.rules
            if r.kind == "amount_limit" and live(r) and float(row["amount"]) > (r.max_amount or 0)
        ]  # type: ignore[arg-type]
        return over[0].rule_id if over else None

    expected = [reference(r) for r in rows]
    assert [book.rules[h].rule_id if h >= 0 else None for h in hit.tolist()] == expected
    plain = RuleBook.of([r for r in rules if r.kind != EXEMPTION]).apply(batch(rows))[0]
    assert (plain != hit).sum() > 50  # the exemptions changed many decisions: the comparison tests them


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (dict(rule_id="x y", kind="block_customer", action="decline", values=("C1",)), "rule id"),
        (dict(rule_id="x", kind="block_card", action="decline", values=("C1",)), "kind"),
        (dict(rule_id="x", kind="allow_customer", action="decline", values=("C1",)), "approve"),
        (dict(rule_id="x", kind="block_customer", action="approve", values=("C1",)), "review or decline"),
        (dict(rule_id="x", kind="block_customer", action="decline"), "one or more"),
        (dict(rule_id="x", kind="amount_limit", action="review"), "max_amount"),
        (dict(rule_id="x", kind="amount_limit", action="review", max_amount=5.0, currency="eur"), "currency"),
        (dict(rule_id="x", kind="block_channel", action="review", values=("web",), max_amount=3.0), "amount_limit"),
        (dict(rule_id="x", kind=EXEMPTION, action="approve", values=("C1",)), "needs past_rule"),
        (dict(rule_id="x", kind=EXEMPTION, action="approve", values=("C1",), past_rule="a b"), "needs past_rule"),
        (dict(rule_id="x", kind=EXEMPTION, action="approve", values=("C1",), past_rule="x"), "itself"),
        (dict(rule_id="x", kind=EXEMPTION, action="decline", values=("C1",), past_rule="y"), "approve"),
        (dict(rule_id="x", kind=EXEMPTION, action="approve", past_rule="y"), "one or more"),
        (dict(rule_id="x", kind="block_customer", action="decline", values=("C1",), past_rule="y"), "past_rule belongs"),
    ],
)  # fmt: skip
def test_a_malformed_rule_is_refused_with_its_reason(rule: dict[str, object], message: str) -> None:
    with pytest.raises(RuleError, match=message):
        Rule(**rule)  # type: ignore[arg-type]


def test_contradictions_are_named() -> None:
    assert "allowed and blocked in rule stolen" in str(
        contradiction(Rule("v2", "allow_customer", "approve", ("C2",)), RULES)
    )
    assert "decline by it" in str(contradiction(Rule("w", "block_customer", "review", ("C2",)), RULES))
    assert "limits USD" in str(
        contradiction(Rule("u", "amount_limit", "review", max_amount=9.0, currency="USD"), RULES)
    )
    assert contradiction(Rule("ok", "block_customer", "decline", ("C2", "C3")), RULES) is None  # same action
    assert (
        contradiction(Rule("stolen", "allow_customer", "approve", ("C2",)), RULES) is None
    )  # its own id: replaced
    assert Rule.from_dict(RULES[3].to_dict()) == RULES[3]
    exemption = Rule(
        "case-c1", EXEMPTION, "approve", ("C1",), expires_ms=T0, note="genuine", past_rule="stolen"
    )
    assert Rule.from_dict(exemption.to_dict()) == exemption
    assert contradiction(exemption, RULES) is None  # it lets past, it contradicts nothing
    assert contradiction(RULES[1], [exemption]) is None


def test_decisions_carry_the_action_and_its_source(tiny_model: Path) -> None:
    rules = [Rule("stolen", "block_customer", "decline", ("C2",)), Rule("vip", "allow_customer", "approve", ("C3",)),
             Rule("cap", "amount_limit", "review", max_amount=100.0)]  # fmt: skip
    scorer = Scorer.load(tiny_model, rules=rules, policy=DecisionPolicy(Band("threshold", 0.0), None))
    tx = [{"transaction_id": f"t{i}", "customer_id": f"C{i}", "terminal_id": "T1", "amount": a,
           "timestamp": "2026-03-01T10:00:00Z"} for i, a in ((1, 20.0), (2, 20.0), (3, 900.0), (4, 900.0))]  # fmt: skip
    got = [(d["action"], d["action_source"], d["flagged"]) for d in scorer.score(tx)]
    assert got == [("review", "model", True), ("decline", "stolen", True), ("approve", "vip", False),
                   ("review", "cap", True)]  # fmt: skip
    plain = Scorer.load(tiny_model).score(tx[:1])[0]
    assert (
        plain["action"] == ("review" if plain["flagged"] else "approve") and plain["action_source"] == "model"
    )


def test_action_bands_follow_the_policy_on_a_replay(tiny_data: Path, tiny_model: Path) -> None:
    model = OnnxModel(tiny_model)
    policy = DecisionPolicy(Band("alert_budget", 20.0), Band("alert_budget", 3.0))
    review, decline = policy.thresholds(model.threshold, model.curve)
    assert review < decline < 1.0
    scorer = Scorer.load(tiny_model, policy=policy)
    scorer.label((tiny_data / "labels.jsonl").read_bytes().splitlines())  # each seen after its report day
    lines = (tiny_data / "transactions.jsonl").read_bytes().splitlines()
    decisions = [d for start in range(0, len(lines), 5000) for d in scorer.score(lines[start : start + 5000])]
    scores = np.asarray([d["score"] for d in decisions])
    assert [d["action"] for d in decisions] == [
        ("approve", "review", "decline")[a] for a in model_actions(scores, review, decline)
    ]
    history = load_history(tiny_data)  # the validation days: the bands split them as the curve says
    periods = model.meta.raw["training"]["periods"]["validation"]
    first, last = (
        datetime.date.fromisoformat(d).toordinal() - datetime.date(1970, 1, 1).toordinal() for d in periods
    )
    on_days = (day_index(history) >= first) & (day_index(history) <= last)
    replayed = model.predict(replay_features(history, model.meta.feature_config))[on_days]
    assert np.allclose(np.sort(replayed), np.sort(scores[on_days]), atol=1e-6)  # same scores, any order
    n_days = last - first + 1
    assert (replayed >= review).sum() / n_days == pytest.approx(model.curve.at(review)[0], abs=1e-3)
    assert (replayed >= decline).sum() / n_days == pytest.approx(model.curve.at(decline)[0], abs=1e-3)
    assert (replayed >= decline).sum() / n_days <= 3.0 < (replayed >= review).sum() / n_days <= 20.0
