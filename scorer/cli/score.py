"""`scorer score`: a file of transactions scored without Kafka (scoring/batchfile.py does the work)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

from scorer.cli.args import HelpFormatter
from scorer.config import DEFAULT_MODEL
from scorer.errors import ConfigError
from scorer.policy.actions import Band, DecisionPolicy, PolicyError
from scorer.policy.rules import Rule, RuleError


def add_score_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "score",
        formatter_class=HelpFormatter,
        help="score a file of transactions (JSON lines or CSV) without Kafka",
    )
    p.add_argument("--input", required=True, help="transactions: FILE.jsonl, or FILE.csv with a header row")
    p.add_argument("--output", required=True, help="decisions, one JSON object per line, in input order")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model artefact directory")
    p.add_argument(
        "--history", help="warm the state on this directory first (transactions.jsonl + labels.jsonl)"
    )
    p.add_argument(
        "--bad-lines", choices=["skip", "fail"], default="skip",
        help="a line that breaks the event contract: report it and go on, or stop with no output",
    )  # fmt: skip
    p.add_argument("--rejects", help="also write each bad line with its line number and reason here")
    p.add_argument("--review", metavar="KIND:VALUE", help="where review starts (as `scorer models policy`)")
    p.add_argument("--decline", metavar="KIND:VALUE", help="where decline starts (as `scorer models policy`)")
    p.add_argument("--rules", help="a JSON file: a list of rules as `scorer rules show` prints them")
    p.set_defaults(func=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    from scorer.runtime.console import ProgressBar  # imported here: `scorer --help` stays fast
    from scorer.scoring.batchfile import check_paths, score_file
    from scorer.scoring.embedded import Scorer

    source, output = Path(args.input), Path(args.output)
    rejects = Path(args.rejects) if args.rejects else None
    check_paths(source, output, rejects)  # before seconds of warming and scoring, not after
    policy, rules = _policy_and_rules(args)
    started = time.monotonic()
    warm = ProgressBar("warming on history") if args.history else None
    try:
        scorer = Scorer.load(args.model, history=args.history, progress=warm, policy=policy, rules=rules)
    except PolicyError as exc:  # a band the model cannot resolve (no validation curve)
        raise ConfigError(str(exc)) from exc
    if args.history:
        _err(f"state warmed on {args.history} in {time.monotonic() - started:.0f} s")
    progress = ProgressBar(f"scoring {source.name}")
    result = score_file(
        scorer, source, output, fail_on_bad=args.bad_lines == "fail", rejects=rejects, progress=progress
    )
    progress.finish()
    for line in result.bad_lines:
        _err(line)
    if result.bad > len(result.bad_lines):
        _err(f"... and {result.bad - len(result.bad_lines):,} more bad lines")
    rate = result.scored / result.seconds if result.seconds > 0 else 0.0
    skipped = f", {result.bad:,} bad lines skipped" if result.bad else ""
    print(
        f"scored {result.scored:,} transactions ({result.flagged:,} flagged{skipped}) with {scorer.model_version} "
        f"in {result.seconds:.1f} s: {rate:,.0f} transactions/s -> {output}"
    )
    return 0


def _policy_and_rules(args: argparse.Namespace) -> tuple[DecisionPolicy, list[Rule]]:
    """The what-if's policy and rules; ConfigError (exit 2) naming what is malformed."""
    try:
        review = Band.parse(args.review) if args.review else None
        decline = Band.parse(args.decline) if args.decline else None
    except PolicyError as exc:
        raise ConfigError(str(exc)) from exc
    if not args.rules:
        return DecisionPolicy(review, decline), []
    try:
        docs = orjson.loads(Path(args.rules).read_bytes())
        if not isinstance(docs, list):
            raise RuleError("the file must hold a JSON list of rules")
        return DecisionPolicy(review, decline), [Rule.from_dict(d) for d in docs]
    except (OSError, orjson.JSONDecodeError, RuleError, AttributeError) as exc:
        raise ConfigError(f"--rules {args.rules}: {exc}") from exc


def _err(message: str) -> None:
    print(message, file=sys.stderr)
