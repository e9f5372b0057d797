"""`scorer store` (the topics into PostgreSQL, or a recorded history: --backfill) and `scorer sql` (a query
against the store's database)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from scorer.cli.args import HelpFormatter, add_kafka_args, database_settings
from scorer.config import Settings
from scorer.errors import ConfigError, ScorerError

SQL_ROWS = 1000  # at most this many rows printed by `scorer sql`


def add_store_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "store",
        formatter_class=HelpFormatter,
        help="write the transactions, decisions, labels and dead letters into PostgreSQL, exactly once",
    )
    add_kafka_args(p, "store")
    p.add_argument(
        "--migrate",
        action="store_true",
        help="apply the schema's migrations and exit (the store also applies them when it starts)",
    )
    p.add_argument(
        "--backfill",
        metavar="DIR",
        help="write the history in DIR (transactions.jsonl, labels.jsonl: a `scorer simulate` directory) "
        "into the tables, leaving every row already stored as it is, and exit",
    )
    p.add_argument(
        "--until",
        metavar="RFC3339",
        help="with --backfill: only the transactions up to this event time and the labels reported by then",
    )
    p.set_defaults(func=cmd_store)
    q = sub.add_parser(
        "sql",
        formatter_class=HelpFormatter,
        help="run one read-only query against the store's database and print the rows",
    )
    add_kafka_args(q, "sql")
    q.add_argument("query", help='the SQL, e.g. "select * from daily_alerts order by event_day desc limit 5"')
    q.set_defaults(func=cmd_sql)


def _database_url(args: argparse.Namespace) -> Any:
    return database_settings(args)


def cmd_store(args: argparse.Namespace) -> int:
    """Migrate, check the topics, then store until SIGTERM/SIGINT. One line, exit 1, when the database cannot
    be reached at start or refuses the migrations."""
    import threading

    from scorer.kafka.topics import require_topics
    from scorer.runtime import logs
    from scorer.runtime.process import install_signal_handlers
    from scorer.store.app import Store
    from scorer.store.batch import topics
    from scorer.store.database import PostgresTarget

    settings = _database_url(args)
    if args.backfill is not None or args.until is not None:
        return _backfill(args, settings)
    logs.configure(settings.log_level)
    target = PostgresTarget(settings.database_url, settings.store_group, settings.database_timeout_s)
    try:
        applied = target.migrate()
        if not args.migrate:
            require_topics(settings, topics(settings))
    except BaseException:
        target.close()
        raise
    if args.migrate:
        target.close()
        print(f"migrations applied: {', '.join(applied) or 'none (the schema is up to date)'}")
        return 0
    stop = threading.Event()
    install_signal_handlers(stop)
    return Store(settings, target).run(stop)


def _backfill(args: argparse.Namespace, settings: Settings) -> int:
    """Migrate, then add DIR's history (scorer/db/backfill.py) and print the counts. One line, exit 2, for a
    missing directory, a bad line or a bad --until; exit 1 when the database cannot be reached or refuses."""
    from pathlib import Path

    import psycopg

    from scorer.db.backfill import backfill
    from scorer.db.connect import connect
    from scorer.db.migrate import migrate
    from scorer.errors import DataError, Rejected
    from scorer.events.timestamps import parse_rfc3339_ms
    from scorer.training.dataset import load_history

    if args.backfill is None:
        raise ConfigError("--until needs --backfill DIR")
    try:
        until_ms = None if args.until is None else parse_rfc3339_ms(args.until)
    except Rejected as exc:
        raise ConfigError(f"--until: {exc.detail}") from None
    data = Path(args.backfill)
    if not data.is_dir():  # before connecting: a typo costs no database round trip
        raise ConfigError(
            f"--backfill {data}: no such directory (expected transactions.jsonl and labels.jsonl)"
        )
    conn = connect(
        settings.database_url,
        application_name="scorer-backfill",
        connect_timeout_s=settings.database_timeout_s,
    )
    try:
        history = load_history(data)  # after connecting: an unreachable database is told before a long read
        migrate(conn)
        done = backfill(conn, history.transactions, history.labels, until_ms)
    except DataError as exc:
        raise ConfigError(str(exc)) from None  # the input is wrong, as a bad flag is: exit 2
    except psycopg.Error as exc:
        raise ScorerError(f"the backfill failed: {str(exc).strip().splitlines()[0]}") from None
    finally:
        conn.close()
    print(done)
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    """The query in a read-only transaction; its rows as aligned columns (at most SQL_ROWS). One line, exit 1,
    when the database refuses it."""
    import psycopg

    from scorer.db.connect import connect

    settings = _database_url(args)
    conn = connect(
        settings.database_url, application_name="scorer-sql", connect_timeout_s=settings.database_timeout_s
    )
    try:
        conn.read_only = True
        cur = conn.execute(args.query.encode())
        if cur.description is None:
            print("(no rows: not a query)")
            return 0
        names = [d.name for d in cur.description]
        rows = cur.fetchmany(SQL_ROWS + 1)
    except psycopg.Error as exc:
        raise ScorerError(f"the database refused the query: {str(exc).strip().splitlines()[0]}") from None
    finally:
        conn.close()
    _print_table(names, rows[:SQL_ROWS])
    if len(rows) > SQL_ROWS:
        print(f"(the first {SQL_ROWS} rows; add a LIMIT)", file=sys.stderr)
    return 0


def _print_table(names: list[str], rows: list[tuple[Any, ...]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    print("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
