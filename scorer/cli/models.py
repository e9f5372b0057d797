"""`scorer models ...`: the registry, its validation gate and the deployment on the control topic.

list / show / validate read the registry only. plan / promote / finish / rollback read and write the
deployment record on `scorer-control` (kafka/control.py); promote runs the gate first. publish puts a
version on `scorer-models` (kafka/artefacts.py), where scorers without the registry's disk fetch it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
from pathlib import Path

from scorer.cli.args import HelpFormatter, add_kafka_args, settings_from
from scorer.config import DEFAULT_MODEL, Settings
from scorer.errors import ConfigError, ScorerError
from scorer.kafka.artefacts import publish_model
from scorer.kafka.control import publish, read_deployment
from scorer.kafka.topics import reach
from scorer.model.curve import Curve
from scorer.model.onnx import read_meta, resolve_artefact
from scorer.model.registry import DEFAULT_METRIC_TOLERANCE, Registry, passed, validate
from scorer.policy.actions import Band, DecisionPolicy, PolicyError
from scorer.rollout.deployment import Deployment
from scorer.rollout.plans import STRATEGIES, Plan, schedule

METRICS_SHOWN = ("roc_auc", "average_precision", "card_precision_at_100", "precision", "recall")


def add_models_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "models", formatter_class=HelpFormatter,
        help="the model registry (list, show, validate, publish) and deployments (plan, promote, finish, rollback)",
    )  # fmt: skip
    p.add_argument(
        "--registry", type=Path, default=None,
        help="registry root (default: ./models if it exists, else the models shipped with scorer)",
    )  # fmt: skip
    models = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    q = models.add_parser(
        "list", formatter_class=HelpFormatter, help="every registered version with its validation metrics"
    )
    q.set_defaults(func=cmd_list)
    q = models.add_parser(
        "show", formatter_class=HelpFormatter, help="one version's metadata, metrics, known faults and limits"
    )
    q.add_argument("ref", help="name/version, name (newest version) or a directory")
    q.set_defaults(func=cmd_show)
    q = models.add_parser(
        "validate",
        formatter_class=HelpFormatter,
        help="run the validation gate; exit 1 with the reasons if it fails",
    )
    q.add_argument("ref", help="the candidate: name/version, name or a directory")
    q.add_argument("--champion", help="compare holdout metrics with this model (name/version or directory)")
    q.add_argument("--tolerance", type=float, default=DEFAULT_METRIC_TOLERANCE, help="allowed metric drop")
    q.set_defaults(func=cmd_validate)
    add_deployment_parsers(models)


def add_deployment_parsers(models: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:

    q = models.add_parser(
        "plan",
        formatter_class=HelpFormatter,
        help="the deployment in force: champion, plan and its weight schedule",
    )
    add_kafka_args(q, "models")
    q.set_defaults(func=cmd_plan)
    q = models.add_parser(
        "promote", formatter_class=HelpFormatter, help="validate a challenger, then publish a changeover plan"
    )
    q.add_argument("ref", help="the challenger: name/version or name")
    q.add_argument(
        "--strategy", choices=STRATEGIES, required=True,
        help="direct: switch at --start; shadow: score beside, never decide; blend: ramp the weight; canary: a share of customers",
    )  # fmt: skip
    q.add_argument("--start", default="now", help="event time the plan starts: now or YYYY-MM-DDTHH:MM:SSZ")
    q.add_argument("--end", help="blend: event time the weight reaches 1")
    q.add_argument("--steps", type=int, default=0, help="blend: n equal steps instead of a linear ramp")
    q.add_argument("--share", type=float, default=0.0, help="canary: share of customers, (0, 1]")
    q.add_argument("--tolerance", type=float, default=DEFAULT_METRIC_TOLERANCE, help="allowed metric drop")
    _policy_args(q)
    add_kafka_args(q, "models")
    q.set_defaults(func=cmd_promote)
    q = models.add_parser(
        "policy", formatter_class=HelpFormatter,
        help="show the decision policy's split of the validation days, and with --review/--decline publish a new one",
    )  # fmt: skip
    _policy_args(q)
    add_kafka_args(q, "models")
    q.set_defaults(func=cmd_policy)
    q = models.add_parser(
        "finish",
        formatter_class=HelpFormatter,
        help="make the plan's challenger the champion (the plan ends)",
    )
    add_kafka_args(q, "models")
    q.set_defaults(func=cmd_finish)
    q = models.add_parser(
        "rollback",
        formatter_class=HelpFormatter,
        help="drop the plan in force, or return to the previous champion",
    )
    add_kafka_args(q, "models")
    q.set_defaults(func=cmd_rollback)
    q = models.add_parser(
        "publish", formatter_class=HelpFormatter,
        help="put a version on the models topic, for scorers without the registry's disk (again: replaces it)",
    )  # fmt: skip
    q.add_argument(
        "directory", type=Path, metavar="DIR", help="the version's directory, e.g. models/default/2"
    )
    add_kafka_args(q, "models")
    q.set_defaults(func=cmd_publish)


def _policy_args(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--review", metavar="KIND:VALUE",
        help="where review starts: threshold:S, alert_budget:PER_DAY or precision_target:P (default: kept)",
    )  # fmt: skip
    q.add_argument(
        "--decline", metavar="KIND:VALUE", help="where decline starts, the same way (default: kept)"
    )


def _policy(args: argparse.Namespace, current: DecisionPolicy) -> DecisionPolicy:
    """The policy in force with the bands the flags give replaced; ConfigError for a malformed band."""
    try:
        review = Band.parse(args.review) if args.review else current.review
        decline = Band.parse(args.decline) if args.decline else current.decline
    except PolicyError as exc:
        raise ConfigError(str(exc)) from exc
    return DecisionPolicy(review, decline)


def policy_split(policy: DecisionPolicy, model_dirs: list[Path]) -> list[str]:
    """How `policy` splits each model's validation days into actions (from the curve in model.json)."""
    lines = [f"policy: {policy.describe()}"]
    for directory in model_dirs:
        meta = read_meta(directory)
        curve = Curve.from_dict(meta.raw["validation_curve"]) if "validation_curve" in meta.raw else None
        try:
            review, decline = policy.thresholds(meta.threshold, curve)
        except PolicyError as exc:
            raise ScorerError(f"{meta.label}: {exc}") from exc
        if curve is None:
            lines.append(
                f"  {meta.label}: review from {review:.4f}, decline from {decline:.4f} (no validation curve)"
            )
            continue
        (a_r, p_r, r_r), (a_d, p_d, r_d) = curve.at(review), curve.at(decline)
        band = a_r - a_d
        band_precision = (p_r * a_r - p_d * a_d) / band if band > 0 else 0.0
        declines = (
            f"decline >= {decline:.4f}: {a_d:.1f}/day (precision {p_d:.2f}, recall {r_d:.2f})"
            if decline <= 1.0 else "no decline by score"
        )  # fmt: skip
        lines.append(
            f"  {meta.label}: review from {review:.4f}: {band:.1f}/day (precision {band_precision:.2f}); "
            f"{declines}; recall of review + decline {r_r:.2f}; approve the rest"
        )
    return lines


def cmd_policy(args: argparse.Namespace) -> int:
    settings, current = _current(args)
    registry = Registry(registry_root(args))
    policy = _policy(args, current.policy)
    models = [current.champion] + ([current.plan.challenger] if current.plan else [])
    for line in policy_split(policy, [registry.get(m).path for m in models]):
        print(line)
    if policy == current.policy:
        print("(no --review/--decline: nothing published)")
        return 0
    publish(settings, dataclasses.replace(current, policy=policy, published_ms=int(time.time() * 1000)))
    print("published: every scorer applies it between batches")
    return 0


def registry_root(args: argparse.Namespace) -> Path:
    """--registry, else ./models when there is one, else the models shipped with scorer."""
    if args.registry is not None:
        return Path(args.registry)
    here = Path("models")
    return here if here.is_dir() else DEFAULT_MODEL.parent.parent


def cmd_list(args: argparse.Namespace) -> int:
    entries = Registry(registry_root(args)).entries()
    if not entries:
        print(f"no models in {registry_root(args)}")
        return 0
    print(f"{'model':24} {'created':26} {'roc_auc':>8} {'avg_prec':>8}  path")
    for e in entries:
        v = e.meta.raw.get("metrics", {}).get("validation", {})
        print(
            f"{e.label:24} {str(e.meta.raw.get('created', '?')):26} {v.get('roc_auc', float('nan')):8.4f} "
            f"{v.get('average_precision', float('nan')):8.4f}  {e.path}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    e = Registry(registry_root(args)).get(args.ref)
    raw = e.meta.raw
    print(f"{e.label}  ({e.path})")
    print(f"  created    {raw.get('created', '?')}")
    print(f"  threshold  {e.meta.threshold:.6f}  ({raw.get('threshold_policy', {}).get('description', '')})")
    training = raw.get("training", {})
    print(
        f"  trained on {training.get('data_dir', '?')}  sha256 {str(training.get('data_sha256', '?'))[:16]}"
    )
    v = raw.get("metrics", {}).get("validation", {})
    print("  validation " + ", ".join(f"{k} {v[k]:.4f}" for k in METRICS_SHOWN if k in v))
    for title, key in (("known faults", "known_faults"), ("limits", "limits")):
        print(f"  {title}:")
        for item in raw.get(key, []) or ["(none written down)"]:
            print(f"    - {item}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    registry = Registry(registry_root(args))
    candidate = Path(args.ref) if Path(args.ref).is_dir() else registry.get(args.ref).path  # may not load
    champion = registry.get(args.champion).path if args.champion else None
    checks = validate(candidate, champion, args.tolerance)
    for c in checks:
        print(f"  {'ok  ' if c.ok else 'FAIL'} {c.name:18} {c.detail}")
    if passed(checks):
        print(f"{args.ref}: passes the validation gate")
        return 0
    failed = ", ".join(c.name for c in checks if not c.ok)
    print(f"scorer: error: {args.ref} is refused by the validation gate ({failed})", file=sys.stderr)
    return 1


def _event_ms(text: str) -> int:
    if text == "now":
        return int(time.time() * 1000)
    try:
        stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ScorerError(f"not a time (now or YYYY-MM-DDTHH:MM:SSZ): {text!r}") from exc
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return int(stamp.timestamp() * 1000)


def _current(args: argparse.Namespace) -> tuple[Settings, Deployment]:
    """(settings, deployment in force); without a published one, the configured model is champion."""

    settings = settings_from(args)
    reach(settings)  # one clear line when the brokers cannot be reached
    deployment = read_deployment(settings)
    if deployment is None:
        deployment = Deployment(read_meta(resolve_artefact(Path(settings.model))).label)
    return settings, deployment


def cmd_plan(args: argparse.Namespace) -> int:

    _, deployment = _current(args)
    print(
        f"champion  {deployment.champion}"
        + (f"  (previous: {deployment.previous})" if deployment.previous else "")
    )
    plan = deployment.plan
    if plan is None:
        print("plan      none: the champion decides every event")
        return 0
    print(f"plan      {plan.plan_id}: {plan.strategy} to {plan.challenger}")
    points = (
        [plan.start_ms]
        if plan.strategy != "blend"
        else [plan.start_ms + (plan.end_ms - plan.start_ms) * k // 4 for k in range(5)]
    )
    for at, weight in zip(points, schedule(plan, points), strict=True):
        when = datetime.datetime.fromtimestamp(at / 1000, datetime.UTC).isoformat(timespec="seconds")
        extra = f" of customers {plan.share:.0%}" if plan.strategy == "canary" else ""
        print(f"  from {when}  challenger weight {weight:.2f}{extra}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """One line: label, the ONNX file's sha256 and the bundle's size; exit 1 with the reason otherwise."""
    settings = settings_from(args)
    reach(settings)  # one clear line when the brokers cannot be reached
    published = publish_model(settings, args.directory)
    print(
        f"published {published.label} to {settings.models_topic}: model.onnx sha256 {published.onnx_sha256}, "
        f"{published.bundle_bytes:,} bytes"
    )
    return 0


def cmd_promote(args: argparse.Namespace) -> int:

    settings, current = _current(args)
    if current.plan is not None:
        raise ScorerError(f"plan {current.plan.plan_id} is in force: finish it or roll it back first")
    registry = Registry(registry_root(args))
    challenger = registry.get(args.ref)
    checks = validate(challenger.path, registry.get(current.champion).path, args.tolerance)
    for c in checks:
        print(f"  {'ok  ' if c.ok else 'FAIL'} {c.name:18} {c.detail}")
    if not passed(checks):
        failed = ", ".join(c.name for c in checks if not c.ok)
        raise ScorerError(f"{challenger.label} is refused by the validation gate ({failed})")
    start = _event_ms(args.start)
    plan = Plan(
        plan_id=f"{challenger.label}@{start}",
        strategy=args.strategy,
        champion=current.champion,
        challenger=challenger.label,
        start_ms=start,
        end_ms=_event_ms(args.end) if args.end else 0,
        steps=args.steps,
        share=args.share,
    )
    policy = _policy(args, current.policy)
    for line in policy_split(policy, [registry.get(current.champion).path, challenger.path]):
        print(line)
    published = Deployment(current.champion, plan, current.previous, int(time.time() * 1000), policy)
    publish(settings, published)
    print(f"published plan {plan.plan_id}: {plan.strategy} from {current.champion} to {challenger.label}")
    return 0


def cmd_finish(args: argparse.Namespace) -> int:

    settings, current = _current(args)
    if current.plan is None:
        raise ScorerError("no plan is in force: nothing to finish")
    done = Deployment(
        current.plan.challenger, None, current.champion, int(time.time() * 1000), current.policy
    )
    publish(settings, done)
    print(f"champion is now {done.champion} (previous: {done.previous})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:

    settings, current = _current(args)
    now = int(time.time() * 1000)
    if current.plan is not None:
        back = Deployment(current.champion, None, current.previous, now, current.policy)
        what = f"dropped plan {current.plan.plan_id}; {current.champion} decides every event"
    elif current.previous:
        back = Deployment(current.previous, None, current.champion, now, current.policy)
        what = f"champion is {current.previous} again (was {current.champion})"
    else:
        raise ScorerError(f"nothing to roll back: {current.champion} has no plan and no previous champion")
    publish(settings, back)
    print(what)
    return 0
