"""Who may call `scorer serve`'s scoring API: API keys, each with a name and a rate, from a key file.

The key file holds one key per line, `NAME sha256:HEX [RATE]` (`#` starts a comment): the SHA-256 of the
key, never the key, and optionally its own rate limit in transactions per second (else
`serve_key_rate_per_s`). A client sends `Authorization: Bearer <key>`. The presented key is hashed and
compared with every stored hash in constant time (hmac.compare_digest, no early exit), so neither the
answer's timing nor its content tells how close a guess was.

Why SHA-256 and not scrypt or argon2: those slow a guess down for secrets a person chose, which are
guessable; a key here is 32 random bytes (`scorer api-keys new`), 256 bits that no amount of guessing
against a stolen hash recovers, fast hash or slow. A slow hash would cost tens of milliseconds of CPU on
every request of an authorisation path whose whole budget is 200 ms, and buy nothing.

The file is read again when it changes (checked at most once a second, on requests): add a key, give it
to the client, remove the old one once the client uses the new one, with no restart and no request
refused. A file that no longer parses keeps the keys in force (logged and counted).

Each key has a token bucket: `rate` transactions per second (a batch costs one per transaction), holding
one second's worth and at least one full batch; past it the answer is 429 with Retry-After.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from scorer.errors import ConfigError

logger = logging.getLogger(__name__)
KEY_PREFIX = "scorer_"
HASH_PREFIX = "sha256:"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MISSING, UNKNOWN = "missing", "unknown"  # the metric's labels for a request without a valid key
OPEN = "open"  # the caller's name when serve_auth = "none"
RESERVED = (MISSING, UNKNOWN, OPEN)
CHECK_EVERY_S = 1.0  # how often the key file's modification is looked at (one stat)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as stored: its name (for metrics and logs), the SHA-256 of the key, its rate (0: no limit)."""

    name: str
    digest: bytes
    rate_per_s: float


ANYONE = ApiKey(OPEN, b"", 0.0)  # the caller when serve_auth = "none"


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a request is not served: 401 (no valid key) or 429 (over its key's rate)."""

    status: int
    label: str  # the key's name, or missing / unknown: the metric's label, never the key itself
    detail: str
    retry_after_s: int = 0


def new_key() -> str:
    """A fresh API key: 32 random bytes, URL-safe base64, with a prefix secret scanners can look for."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """What the key file stores for `key`: `sha256:` and the hex digest."""
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def key_line(name: str, key: str, rate_per_s: float | None = None) -> str:
    """The key file's line for `key` under `name`."""
    check_name(name)
    rate = "" if rate_per_s is None else f" {rate_per_s:g}"
    return f"{name} {key_digest(key)}{rate}"


def check_name(name: str) -> None:
    if not NAME.fullmatch(name) or name in RESERVED:
        raise ConfigError(
            f"API key name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (not {' or '.join(RESERVED)})"
        )


def parse_keys(text: str, source: str, default_rate_per_s: float) -> list[ApiKey]:
    """The keys of a key file's text; ConfigError naming `source:line` for the first bad line."""
    keys: list[ApiKey] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            key = _parse_line(line, default_rate_per_s)
        except ConfigError as exc:
            raise ConfigError(f"{source}:{number}: {exc}") from exc
        if key.name in names or key.digest in digests:
            raise ConfigError(
                f"{source}:{number}: the name or the key of {key.name!r} is already in the file"
            )
        names.add(key.name)
        digests.add(key.digest)
        keys.append(key)
    return keys


def _parse_line(line: str, default_rate_per_s: float) -> ApiKey:
    parts = line.split()
    if len(parts) not in (2, 3):
        raise ConfigError("expected NAME sha256:HEX [RATE_PER_S]")
    name, stored = parts[0], parts[1]
    check_name(name)
    hexdigest = stored.removeprefix(HASH_PREFIX)
    if not stored.startswith(HASH_PREFIX) or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
        raise ConfigError(f"{name}: the key's hash must be sha256: and 64 lower-case hex digits")
    rate = default_rate_per_s
    if len(parts) == 3:
        try:
            rate = float(parts[2])
        except ValueError:
            rate = -1.0
        if not 0 <= rate < math.inf:
            raise ConfigError(
                f"{name}: the rate must be transactions per second, 0 or more, got {parts[2]!r}"
            )
    return ApiKey(name, bytes.fromhex(hexdigest), rate)


class KeyFile:
    """The key file's keys, read again when the file changes (looked at once per CHECK_EVERY_S at most)."""

    def __init__(
        self,
        path: Path,
        default_rate_per_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_reload: Callable[[bool], object] | None = None,
    ) -> None:
        self.path = path
        self.default_rate_per_s = default_rate_per_s
        self.clock = clock
        self.on_reload = on_reload  # True after a reload, False after a file that could not be used
        self._stamp = self._stat()
        self._reported = ""  # the problem last reported, if the file is unusable now
        self.keys = self._read()  # at start, a problem is the caller's ConfigError (exit 2)
        if not self.keys:
            raise ConfigError(f"{path}: no API key in the file (add one with `scorer api-keys new`)")
        self._checked_s = clock()

    def current(self) -> Sequence[ApiKey]:
        """The keys in force, after reading the file again if it changed since the last look."""
        now = self.clock()
        if now - self._checked_s >= CHECK_EVERY_S:
            self._checked_s = now
            self.refresh()
        return self.keys

    def refresh(self) -> None:
        """Read the file again if its modification time, size or inode changed. A file that cannot be
        used leaves the keys in force, and is reported once (not once a second) until the problem changes."""
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return
            keys = self._read()
        except ConfigError as exc:
            self._unusable(str(exc))
            return
        self._reported = ""
        self._stamp, self.keys = stamp, keys
        logger.info("api_keys_loaded", extra={"path": str(self.path), "names": [k.name for k in keys]})
        if not keys:
            logger.warning("api_keys_empty", extra={"path": str(self.path)})
        if self.on_reload is not None:
            self.on_reload(True)

    def _unusable(self, error: str) -> None:
        if error == self._reported:
            return
        self._reported = error
        logger.error("api_keys_not_reloaded", extra={"path": str(self.path), "error": error})
        if self.on_reload is not None:
            self.on_reload(False)

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read the API key file ({exc.strerror})") from exc
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _read(self) -> list[ApiKey]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.path}: cannot read the API key file ({exc})") from exc
        return parse_keys(text, str(self.path), self.default_rate_per_s)


class TokenBucket:
    """`rate_per_s` tokens a second, holding at most `capacity`; a request takes one per transaction."""

    def __init__(self, rate_per_s: float, capacity: float, now_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self.tokens = capacity
        self.updated_s = now_s

    def take(self, cost: int, now_s: float) -> float:
        """0.0 if `cost` tokens were taken, else the seconds until there will be enough (nothing taken)."""
        elapsed = max(0.0, now_s - self.updated_s)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate_per_s)
        self.updated_s = now_s
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate_per_s


class Access(Protocol):
    """Decides who is served: `identify` from the Authorization header, `spend` a request's cost."""

    def identify(self, authorization: str | None) -> ApiKey | Refused:
        """The caller's key, or why it is refused (401)."""
        ...

    def spend(self, key: ApiKey, cost: int) -> Refused | None:
        """None if the key may send `cost` more transactions now, else the 429."""
        ...


class OpenAccess:
    """serve_auth = "none": everyone is served, unlimited (the demo, the tests, a trusted network)."""

    def identify(self, authorization: str | None) -> ApiKey:
        return ANYONE

    def spend(self, key: ApiKey, cost: int) -> None:
        return None


class KeyAccess:
    """serve_auth = "keys": a valid key in `Authorization: Bearer <key>`, within its key's rate."""

    def __init__(
        self,
        keys: KeyFile,
        batch_max: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = keys
        self.batch_max = batch_max
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def identify(self, authorization: str | None) -> ApiKey | Refused:
        presented = _bearer(authorization)
        if presented is None:
            return Refused(401, MISSING, "an API key is required: Authorization: Bearer <key>")
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for key in self.keys.current():  # every comparison made, whatever matched: no timing to learn
            if hmac.compare_digest(digest, key.digest):
                found = key
        if found is None:
            return Refused(401, UNKNOWN, "the API key is not valid (revoked, or never issued)")
        return found

    def spend(self, key: ApiKey, cost: int) -> Refused | None:
        if key.rate_per_s == 0:
            return None  # unlimited
        now = self.clock()
        bucket = self._bucket(key, now)
        wait_s = bucket.take(cost, now)
        if wait_s == 0.0:
            return None
        detail = f"over the rate of the key {key.name!r} ({key.rate_per_s:g} transactions per second)"
        return Refused(429, key.name, detail, max(1, math.ceil(wait_s)))

    def _bucket(self, key: ApiKey, now: float) -> TokenBucket:
        capacity = max(key.rate_per_s, float(self.batch_max))  # one second's worth, at least one full batch
        bucket = self._buckets.get(key.name)
        if bucket is None:
            bucket = self._buckets[key.name] = TokenBucket(key.rate_per_s, capacity, now)
        bucket.rate_per_s, bucket.capacity = key.rate_per_s, capacity  # the file may have changed them
        return bucket


def _bearer(authorization: str | None) -> str | None:
    """The token of `Authorization: Bearer <token>` (the scheme in any case), or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
