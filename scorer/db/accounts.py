"""Console accounts in PostgreSQL (migration 0003): users, sessions, API tokens, failed sign-ins.

Secrets never reach the database in clear: passwords as scrypt hashes (db/passwords.py), session and
API tokens as their SHA-256 (a token is 256 random bits, so a plain hash is enough: nothing to guess).
Every function runs in the caller's transaction and commits nothing itself.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import psycopg
from psycopg.rows import TupleRow

from scorer.db.passwords import hash_password, verify_password

ROLES = ("analyst", "lead")
SESSION_HOURS = 12
THROTTLE_WINDOW_MINUTES = 15
THROTTLE_PER_USER = 5  # failed sign-ins of one account within the window before it is held off
THROTTLE_PER_ADDRESS = 20  # failed sign-ins from one address within the window
# Verified against when the account does not exist, so a sign-in takes as long either way (no user
# enumeration by timing).
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16), n=2**15)

Conn = psycopg.Connection[TupleRow]


class AccountError(ValueError):
    """A change refused (unknown user, a name taken, a bad role): the message is the reason."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: a user and role, with the session's CSRF token (None for an API token)."""

    name: str
    role: str
    csrf_token: str | None


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def add_user(conn: Conn, name: str, role: str, password: str) -> None:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    try:
        with conn.transaction():
            conn.execute(
                "insert into console_users (name, role, password_hash) values (%s, %s, %s)",
                (name, role, hash_password(password)),
            )
    except psycopg.errors.UniqueViolation as exc:
        raise AccountError(f"user {name!r} exists") from exc
    except psycopg.errors.CheckViolation as exc:
        raise AccountError("a user name has 1-64 of A-Z a-z 0-9 _ . @ -") from exc


def set_disabled(conn: Conn, name: str, disabled: bool) -> None:
    """Disable (or enable) an account; disabling ends its sessions and stops its API tokens."""
    row = conn.execute(
        "update console_users set disabled = %s where name = %s returning name", (disabled, name)
    ).fetchone()
    if row is None:
        raise AccountError(f"no user {name!r}")
    if disabled:
        conn.execute("delete from console_sessions where user_name = %s", (name,))


def users(conn: Conn) -> list[tuple[str, str, bool]]:
    rows = conn.execute("select name, role, disabled from console_users order by name").fetchall()
    return [(str(r[0]), str(r[1]), bool(r[2])) for r in rows]


def throttled(conn: Conn, name: str, remote_addr: str | None) -> bool:
    """Whether sign-ins for this account or from this address are held off for now."""
    row = conn.execute(
        f"""
        select
            count(*) filter (where user_name = %(u)s),
            count(*) filter (where remote_addr = %(a)s)
        from console_login_failures
        where at > now() - interval '{THROTTLE_WINDOW_MINUTES} minutes'
          and (user_name = %(u)s or remote_addr = %(a)s)
        """,  # noqa: S608 (a constant)
        {"u": name, "a": remote_addr},
    ).fetchone() or (0, 0)  # an aggregate always returns a row
    return int(row[0]) >= THROTTLE_PER_USER or int(row[1]) >= THROTTLE_PER_ADDRESS


def check_password(conn: Conn, name: str, password: str, remote_addr: str | None) -> str | None:
    """The account's role when the password is right and the account enabled, else None (and the failure
    is recorded for throttling). The same work is done for an unknown account."""
    row = conn.execute(
        "select role, password_hash, disabled from console_users where name = %s", (name,)
    ).fetchone()
    ok = verify_password(password, str(row[1]) if row else _DUMMY_HASH)
    if row is None or not ok or row[2]:
        conn.execute(
            "insert into console_login_failures (user_name, remote_addr) values (%s, %s)", (name, remote_addr)
        )
        return None
    conn.execute(  # a success clears the account's count (not the address's); old failures go
        f"delete from console_login_failures where user_name = %s or at < now() - interval '{THROTTLE_WINDOW_MINUTES} minutes'",  # noqa: S608 (a constant)
        (name,),
    )
    return str(row[0])


def open_session(conn: Conn, name: str, remote_addr: str | None) -> tuple[str, str]:
    """A new session for `name`: (session token for the cookie, CSRF token for forms)."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    conn.execute("delete from console_sessions where expires_at < now()")  # expired ones go as new ones come
    conn.execute(
        f"""
        insert into console_sessions (token_sha256, user_name, csrf_token, expires_at, remote_addr)
        values (%s, %s, %s, now() + interval '{SESSION_HOURS} hours', %s)
        """,  # noqa: S608 (a constant)
        (token_digest(token), name, csrf, remote_addr),
    )
    return token, csrf


def session(conn: Conn, token: str) -> Principal | None:
    """Who the session token signs in, or None (unknown, expired, or the account disabled)."""
    row = conn.execute(
        """
        select u.name, u.role, s.csrf_token
        from console_sessions s join console_users u on u.name = s.user_name
        where s.token_sha256 = %s and s.expires_at > now() and not u.disabled
        """,
        (token_digest(token),),
    ).fetchone()
    return None if row is None else Principal(str(row[0]), str(row[1]), str(row[2]))


def close_session(conn: Conn, token: str) -> None:
    conn.execute("delete from console_sessions where token_sha256 = %s", (token_digest(token),))


def add_token(conn: Conn, token_name: str, user: str) -> str:
    """A new API token for `user` (returned once, in clear; stored as its SHA-256)."""
    token = "sct_" + secrets.token_urlsafe(32)
    try:
        with conn.transaction():
            conn.execute(
                "insert into console_api_tokens (name, token_sha256, user_name) values (%s, %s, %s)",
                (token_name, token_digest(token), user),
            )
    except psycopg.errors.UniqueViolation as exc:
        raise AccountError(f"a token named {token_name!r} exists") from exc
    except psycopg.errors.ForeignKeyViolation as exc:
        raise AccountError(f"no user {user!r}") from exc
    return token


def revoke_token(conn: Conn, token_name: str) -> None:
    row = conn.execute(
        "update console_api_tokens set revoked_at = now() where name = %s and revoked_at is null returning name",
        (token_name,),
    ).fetchone()
    if row is None:
        raise AccountError(f"no live token named {token_name!r}")


def token_principal(conn: Conn, token: str) -> Principal | None:
    """Who an API token acts as, or None (unknown, revoked, or the account disabled)."""
    row = conn.execute(
        """
        select u.name, u.role from console_api_tokens t join console_users u on u.name = t.user_name
        where t.token_sha256 = %s and t.revoked_at is null and not u.disabled
        """,
        (token_digest(token),),
    ).fetchone()
    return None if row is None else Principal(str(row[0]), str(row[1]), None)
