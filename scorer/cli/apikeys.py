"""`scorer api-keys new|revoke|list`: the key file `scorer serve` reads (serve/access.py).

`new` appends a key's name and SHA-256 to the file (created readable by its owner only) and prints the
key once, on stdout: it is stored nowhere else. `revoke` removes a key's line; a running `scorer serve`
reads the file again within a second of the change, so neither needs a restart.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from scorer.cli.args import HelpFormatter
from scorer.errors import ConfigError, ScorerError
from scorer.serve.access import check_name, key_line, new_key, parse_keys

HEADER = "# scorer serve API keys: NAME sha256:HEX-OF-THE-KEY [TRANSACTIONS-PER-S] (scorer api-keys new)\n"
DEFAULT = -1.0  # list: a key without a rate of its own (serve applies serve_key_rate_per_s)


def add_api_keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "api-keys",
        formatter_class=HelpFormatter,
        help="the API keys of scorer serve: create one, revoke one, list them",
    )
    keys = p.add_subparsers(dest="api_keys_command", required=True, metavar="ACTION")
    q = keys.add_parser(
        "new", formatter_class=HelpFormatter, help="a new key: its hash into FILE, the key on stdout"
    )
    q.add_argument("name", help="the key's name (metrics and logs): 1-64 letters, digits, '.', '_', '-'")
    q.add_argument(
        "--file", required=True, help="the key file (created if missing, readable by its owner only)"
    )
    q.add_argument("--rate", type=float, help="its transactions per second (default: serve_key_rate_per_s)")
    q.set_defaults(func=cmd_new)
    q = keys.add_parser("revoke", formatter_class=HelpFormatter, help="remove a key from FILE")
    q.add_argument("name")
    q.add_argument("--file", required=True, help="the key file")
    q.set_defaults(func=cmd_revoke)
    q = keys.add_parser("list", formatter_class=HelpFormatter, help="the names in FILE and their rates")
    q.add_argument("--file", required=True, help="the key file")
    q.set_defaults(func=cmd_list)


def cmd_new(args: argparse.Namespace) -> int:
    check_name(args.name)
    if args.rate is not None and not 0 <= args.rate < float("inf"):
        raise ConfigError(f"--rate must be transactions per second, 0 (no limit) or more, got {args.rate}")
    path = Path(args.file)
    text = _read(path) if path.exists() else ""
    if args.name in {k.name for k in parse_keys(text, str(path), 0.0)}:
        raise ScorerError(
            f"{path}: a key named {args.name!r} exists already (revoke it first, or pick a name)"
        )
    key = new_key()
    line = key_line(args.name, key, args.rate)
    separator = HEADER if not text else "" if text.endswith("\n") else "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as out:
            out.write(f"{separator}{line}\n")
    except OSError as exc:
        raise ScorerError(f"{path}: cannot write the key file ({exc.strerror})") from exc
    print(key)
    print(f"key {args.name!r} added to {path}; the line above is the key, shown only now", file=sys.stderr)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    path = Path(args.file)
    text = _read(path)
    names = [k.name for k in parse_keys(text, str(path), 0.0)]
    if args.name not in names:
        raise ScorerError(f"{path}: no key named {args.name!r} (there are: {', '.join(names) or 'none'})")
    kept = [raw for raw in text.splitlines(keepends=True) if _name_of(raw) != args.name]
    _replace(path, "".join(kept))
    print(f"key {args.name!r} removed from {path}", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    path = Path(args.file)
    for key in parse_keys(_read(path), str(path), DEFAULT):
        rate = (
            "serve_key_rate_per_s"
            if key.rate_per_s == DEFAULT
            else "no limit"
            if key.rate_per_s == 0
            else None
        )
        print(f"{key.name}\t{rate or f'{key.rate_per_s:g} transactions/s'}")
    return 0


def _name_of(raw: str) -> str | None:
    parts = raw.split("#", 1)[0].split()
    return parts[0] if parts else None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such key file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the key file ({exc})") from exc


def _replace(path: Path, text: str) -> None:
    """Write `text` to a new file beside `path` and rename it over: a reader sees the old or the new."""
    mode = path.stat().st_mode & 0o777
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except OSError as exc:
        raise ScorerError(f"{path}: cannot write the key file ({exc.strerror})") from exc
