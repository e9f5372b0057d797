"""`scorer models list | show | validate`: the registry and its validation gate from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scorer.registry import DEFAULT_METRIC_TOLERANCE, Registry, passed, validate

METRICS_SHOWN = ("roc_auc", "average_precision", "card_precision_at_100", "precision", "recall")


def add_models_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="the model registry: list, show, validate")
    p.add_argument("--registry", type=Path, default=Path("models"), help="registry root (default: models)")
    models = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    q = models.add_parser("list", help="every registered version with its validation metrics")
    q.set_defaults(func=cmd_list)
    q = models.add_parser("show", help="one version's metadata, metrics, known faults and limits")
    q.add_argument("ref", help="name/version, name (newest version) or a directory")
    q.set_defaults(func=cmd_show)
    q = models.add_parser("validate", help="run the validation gate; exit 1 with the reasons if it fails")
    q.add_argument("ref", help="the candidate: name/version, name or a directory")
    q.add_argument("--champion", help="compare holdout metrics with this model (name/version or directory)")
    q.add_argument("--tolerance", type=float, default=DEFAULT_METRIC_TOLERANCE, help="allowed metric drop")
    q.set_defaults(func=cmd_validate)


def cmd_list(args: argparse.Namespace) -> int:
    entries = Registry(args.registry).entries()
    if not entries:
        print(f"no models in {args.registry}")
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
    e = Registry(args.registry).get(args.ref)
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
    registry = Registry(args.registry)
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
