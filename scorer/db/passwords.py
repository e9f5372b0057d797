"""Password hashes for console accounts: scrypt (RFC 7914) from Python's hashlib (OpenSSL's), no new dependency.

Stored as `scrypt$n$r$p$salt_b64$hash_b64`, so the cost can be raised later and old hashes still verify.
n=2**15, r=8, p=1 takes ~50-100 ms and 32 MiB per hash on this machine: slow enough to make guessing a
stolen table expensive, fast enough for a sign-in. Comparison is constant-time (hmac.compare_digest).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

N, R, P = 2**15, 8, 1
MAXMEM = 64 * 1024 * 1024
MIN_PASSWORD_CHARS = 12


def hash_password(password: str, *, n: int = N) -> str:
    """The stored form of `password` (a fresh random salt each time)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=R, p=P, maxmem=MAXMEM, dklen=32)
    return "$".join(("scrypt", str(n), str(R), str(P), _b64(salt), _b64(digest)))


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches `stored`; False (never an exception) for a malformed stored value."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_PASSWORD_CHARS:
        return f"a password has at least {MIN_PASSWORD_CHARS} characters"
    if password.strip() != password:
        return "a password does not start or end with white space"
    return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
