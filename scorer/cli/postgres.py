"""`scorer postgres`: the embedded PostgreSQL in the foreground, for someone with no PostgreSQL of their own.

The same server the demo and the tests start (db/embedded.py), on a port the user chooses, until Ctrl-C or
SIGTERM. Without --dir its data lives in a temporary directory that goes when it stops; with --dir it is kept
(fsync on) and the next `scorer postgres --dir` starts it again with the same password.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

from scorer.cli.args import HelpFormatter
from scorer.cli.broker import port_arg
from scorer.errors import ScorerError

DEFAULT_PORT = 5432  # libpq's default: psql and the other PostgreSQL tools find it without a flag
POLL_S = 0.5  # how often the foreground loop checks that the server still runs


def add_postgres_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "postgres",
        formatter_class=HelpFormatter,
        help="run the embedded PostgreSQL (for scorer store) in the foreground until Ctrl-C",
    )
    p.add_argument(
        "--port",
        type=port_arg,
        default=DEFAULT_PORT,
        help="TCP port on 127.0.0.1 (0: any free port, printed)",
    )
    p.add_argument(
        "--dir",
        type=Path,
        help="data directory to keep (made and initialised if new, started again as it is if not); "
        "default: a temporary one, deleted when the server stops",
    )
    p.set_defaults(func=cmd_postgres)


def cmd_postgres(args: argparse.Namespace) -> int:
    """Run the server until SIGINT/SIGTERM, then stop it (exit 0). ScorerError (one line, exit 1) when the
    `postgres` extra is missing, the port is taken, the directory is unusable, or the server does not start
    or stops by itself."""
    from scorer.db.embedded import EmbeddedPostgres, check_port_free, postgres_bin
    from scorer.runtime.process import install_signal_handlers

    postgres_bin()  # the `postgres` extra, before anything is started
    if args.port:
        check_port_free(args.port, hint="another PostgreSQL? Choose a port with --port")
    stop = threading.Event()
    install_signal_handlers(stop)  # before the start: a SIGTERM then still stops postgres (its own session)
    # a temporary data directory goes when the server stops: its log is kept outside it
    log = None if args.dir else Path(tempfile.mkdtemp(prefix="scorer-postgres-log-")) / "postgres.log"
    with EmbeddedPostgres(args.dir, port=args.port or None, log_path=log) as server:
        kept = "kept" if args.dir else "deleted when it stops"
        print(
            f"postgres on 127.0.0.1:{server.port}: point the commands at it with --database-url {server.uri}"
        )
        print(
            f"data in {server.directory} ({kept}); postgres pid {server.pid}, log {server.log_file}; Ctrl-C stops it"
        )
        sys.stdout.flush()
        while not stop.wait(POLL_S):
            if server.exit_code is not None:
                raise ScorerError(
                    f"PostgreSQL stopped by itself (exit code {server.exit_code}; log {server.log_file})"
                )
    print("postgres stopped")
    return 0
