"""The console's parts that need no database: password hashes, reading a verdict form, the rule a verdict may
ask for, the queue's filters, and `scorer console` refusing what it cannot use in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scorer.cases.model import OPEN_STATUSES, CaseError
from scorer.console.forms import BadRequest, Form, closing_from, local_link, queue_filter, same
from scorer.console.service import Closing, _rule_days
from scorer.db.passwords import hash_password, password_problem, verify_password


def test_a_password_hash_verifies_only_its_password_and_never_raises() -> None:
    stored = hash_password("correct horse battery", n=2**10)  # a low cost: the test is about the format
    assert stored.startswith("scrypt$1024$8$1$") and "correct" not in stored
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    assert hash_password("correct horse battery", n=2**10) != stored  # a fresh salt each time
    for broken in ("", "scrypt$x$8$1$AA$AA", "bcrypt$1$2$3$4$5", stored.replace("$", "$$")):
        assert not verify_password("correct horse battery", broken)


def test_new_passwords_are_refused_with_a_reason() -> None:
    assert password_problem("short") == "a password has at least 12 characters"
    assert password_problem(" padded password ") is not None
    assert password_problem("a long enough passphrase") is None


def test_a_verdict_form_is_read_strictly() -> None:
    form = Form([("case_id", "C1"), ("outcome", "fraud"), ("block_days", "7"), ("from_transaction_id", "")])
    assert closing_from(form) == Closing("C1", "fraud", None, 7, None, 0)
    for bad in ("-1", "7.5", "seven", "99999"):
        with pytest.raises(BadRequest, match="whole number of days"):
            closing_from(Form([("case_id", "C1"), ("outcome", "fraud"), ("block_days", bad)]))
    with pytest.raises(BadRequest, match="'outcome' is missing"):
        closing_from(Form([("case_id", "C1")]))


def test_a_verdict_asks_only_for_the_rule_its_outcome_allows() -> None:
    assert _rule_days(Closing("C1", "fraud", block_days=7)) == 7
    assert _rule_days(Closing("C1", "genuine", allow_rule_id="limit-1000", allow_days=3)) == 3
    assert _rule_days(Closing("C1", "inconclusive")) == 0
    refused = {
        "blocked after a fraud verdict only": Closing("C1", "genuine", block_days=7),
        "past a rule after a genuine verdict only": Closing("C1", "fraud", allow_rule_id="r", allow_days=1),
        "needs both the rule and the days": Closing("C1", "genuine", allow_rule_id="r"),
        "1 to 365 days": Closing("C1", "fraud", block_days=400),
    }
    for reason, closing in refused.items():
        with pytest.raises(CaseError, match=reason):
            _rule_days(closing)


def test_queue_filters_from_the_query_string() -> None:
    flt = queue_filter({"mine": "1", "action": "decline", "offset": "50"}, "anna")
    assert (flt.assigned_to, flt.action, flt.offset, flt.statuses) == ("anna", "decline", 50, OPEN_STATUSES)
    assert queue_filter({"closed": "1", "offset": "-3"}, "anna").statuses == ("closed",)
    assert queue_filter({"offset": "9" * 20}, "anna").offset == 0


def test_csrf_comparison_and_local_links() -> None:
    assert same("abc", "abc") and not same("abc", "abd") and not same("", "") and not same(None, "x")
    assert (
        local_link("/case?id=1")
        and not local_link("//evil.example/x")
        and not local_link("https://evil.example/")
    )


def test_console_commands_refuse_in_one_line_what_they_cannot_use(tmp_path: Path) -> None:
    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        return subprocess.run(
            [sys.executable, "-m", "scorer", *args], input=stdin, capture_output=True, text=True, timeout=60,
            env=env, check=False,
        )  # fmt: skip

    weak = run("console", "users", "add", "anna", "--role", "analyst", stdin="short\n")
    assert weak.returncode == 2 and "at least 12 characters" in weak.stderr and "Traceback" not in weak.stderr
    no_db = run("console", "users", "add", "anna", "--role", "analyst", stdin="a long enough passphrase\n")
    assert no_db.returncode == 2 and "no database" in no_db.stderr and "Traceback" not in no_db.stderr
    serve = run("console")
    assert serve.returncode != 0 and "no database" in serve.stderr and "Traceback" not in serve.stderr
    bad_role = run("console", "users", "add", "anna", "--role", "admin")
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr
