"""`scorer console` (the analysts' console) and its accounts: `scorer console users add|disable|enable|list`,
`scorer console tokens add|revoke`."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from scorer.cli.args import HelpFormatter, add_kafka_args, database_settings
from scorer.errors import ConfigError, ScorerError


def add_console_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "console",
        formatter_class=HelpFormatter,
        help="the analysts' console: the review queue, case pages, verdicts published as labels",
    )
    add_kafka_args(p, "console")
    p.set_defaults(func=cmd_console)
    admin = p.add_subparsers(dest="console_command", metavar="{users,tokens}")
    users = admin.add_parser("users", help="console accounts").add_subparsers(
        dest="users_command", required=True
    )
    add = _admin(
        users, "add", "add an account (its password from stdin, or asked for on a terminal)", _users_add
    )
    add.add_argument("name")
    add.add_argument("--role", choices=("analyst", "lead"), required=True)
    for verb, text in (
        ("disable", "disable an account (ends its sessions, stops its tokens)"),
        ("enable", "enable it again"),
    ):
        _admin(users, verb, text, _users_disable if verb == "disable" else _users_enable).add_argument("name")
    _admin(users, "list", "list the accounts", _users_list)
    tokens = admin.add_parser("tokens", help="API tokens for /api/v1").add_subparsers(
        dest="tokens_command", required=True
    )
    token = _admin(tokens, "add", "make an API token for a user (printed once)", _tokens_add)
    token.add_argument("name", help="the token's name (for the audit log and revoking)")
    token.add_argument("--user", required=True, help="the account the token acts as (its role applies)")
    _admin(tokens, "revoke", "revoke a token by name", _tokens_revoke).add_argument("name")


def _admin(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], verb: str, text: str,
    func: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:  # fmt: skip
    q = sub.add_parser(verb, formatter_class=HelpFormatter, help=text)
    add_kafka_args(q, "console-admin")
    q.set_defaults(func=func)
    return q


def cmd_console(args: argparse.Namespace) -> int:
    from scorer.runtime import logs

    settings = database_settings(args)
    try:
        from scorer.console.server import run_console
    except ImportError as exc:
        raise ScorerError(
            f"scorer console needs the console extra ({exc.name} is missing): pip install 'scorer[console]'"
        ) from None
    logs.configure(settings.log_level)
    return run_console(settings)


@contextmanager
def _accounts(args: argparse.Namespace) -> Iterator[Any]:
    """A migrated database connection, committed when the block succeeds; a change the accounts refuse
    (AccountError) becomes one line and exit 1."""
    from scorer.console.server import migrate_database
    from scorer.db.accounts import AccountError
    from scorer.db.connect import connect

    settings = database_settings(args)
    migrate_database(settings)
    conn = connect(
        settings.database_url,
        application_name="scorer-console",
        connect_timeout_s=settings.database_timeout_s,
    )
    try:
        yield conn
        conn.commit()
    except AccountError as exc:  # a change the accounts refuse: its reason, one line, exit 1
        raise ScorerError(str(exc)) from None
    finally:
        conn.close()


def _users_add(args: argparse.Namespace) -> int:
    from scorer.db import accounts
    from scorer.db.passwords import password_problem

    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    problem = password_problem(password)
    if problem:
        raise ConfigError(problem)
    with _accounts(args) as conn:
        accounts.add_user(conn, args.name, args.role, password)
    print(f"added {args.role} {args.name}")
    return 0


def _set_disabled(args: argparse.Namespace, disabled: bool) -> int:
    from scorer.db import accounts

    with _accounts(args) as conn:
        accounts.set_disabled(conn, args.name, disabled)
    print(f"{'disabled' if disabled else 'enabled'} {args.name}")
    return 0


def _users_disable(args: argparse.Namespace) -> int:
    return _set_disabled(args, True)


def _users_enable(args: argparse.Namespace) -> int:
    return _set_disabled(args, False)


def _users_list(args: argparse.Namespace) -> int:
    from scorer.db import accounts

    with _accounts(args) as conn:
        for name, role, disabled in accounts.users(conn):
            print("\t".join([name, role, *(["disabled"] if disabled else [])]))
    return 0


def _tokens_add(args: argparse.Namespace) -> int:
    from scorer.db import accounts

    with _accounts(args) as conn:
        token = accounts.add_token(conn, args.name, args.user)
    print(token)
    print(f"(token {args.name!r} for {args.user}: shown once, stored only as its hash)", file=sys.stderr)
    return 0


def _tokens_revoke(args: argparse.Namespace) -> int:
    from scorer.db import accounts

    with _accounts(args) as conn:
        accounts.revoke_token(conn, args.name)
    print(f"revoked {args.name}")
    return 0
