"""deploy/README.md's recipe for a managed PostgreSQL, run as its text says on the embedded server: an
administrator who may create roles and databases but is no superuser (as RDS, Cloud SQL and Azure give) makes
the roles and the database, the store's user applies the migrations and creates day partitions, an analyst
reads and cannot write."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from scorer.cli.main import main
from scorer.db.embedded import EmbeddedPostgres

README = Path(__file__).resolve().parents[2] / "deploy" / "README.md"


def section() -> str:
    text = README.read_text()
    return text.split("## PostgreSQL for the store", 1)[1].split("\n## ", 1)[0]


def statements(sql: str) -> list[str]:
    """The statements of a SQL text, one by one (CREATE DATABASE refuses to share a query string)."""
    code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [s.strip() for s in code.split(";") if s.strip()]


def inline(pattern: str) -> str:
    """The README's inline code (`...`) that matches `pattern`."""
    prose = re.sub(r"```.*?```", "", section(), flags=re.S).replace("\n  ", " ")  # a list item's lines joined
    found = [c for c in re.findall(r"`([^`]+)`", prose) if re.search(pattern, c)]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A server of its own: the recipe creates server-wide roles (scorer_analyst) that others make too."""
    with EmbeddedPostgres(log_path=tmp_path / "postgres.log") as pg:
        with psycopg.connect(pg.uri, autocommit=True) as conn:
            conn.execute("create role provider_admin login password 'admin-pw' createrole createdb")
        yield pg


def url(server: EmbeddedPostgres, user: str, password: str, database: str) -> str:
    return f"postgresql://{user}:{password}@127.0.0.1:{server.port}/{database}"


def run_as_admin(server: EmbeddedPostgres, sql: list[str]) -> None:
    with psycopg.connect(url(server, "provider_admin", "admin-pw", "postgres"), autocommit=True) as admin:
        for statement in sql:
            admin.execute(statement.encode())  # as written: no parameters


def run_as(server: EmbeddedPostgres, user: str, password: str, sql: list[str]) -> None:
    with psycopg.connect(url(server, user, password, "fraud"), autocommit=True) as conn:
        for statement in sql:
            conn.execute(statement.encode())


def migrate_and_start_a_day(server: EmbeddedPostgres) -> str:
    """`scorer store --migrate` as the store's user, then what the store does on a new event day; the output."""
    store = url(server, "scorer_store", "choose-one", "fraud")
    assert main(["store", "--migrate", "--database-url", store]) == 0
    run_as(
        server,
        "scorer_store",
        "choose-one",
        ["select store_ensure_partition('decisions', date '2026-03-01')"],
    )
    return store


def assert_alice_reads_and_cannot_write(server: EmbeddedPostgres) -> None:
    with psycopg.connect(url(server, "alice", "...", "fraud"), autocommit=True) as alice:
        assert alice.execute("select count(*) from daily_alerts").fetchone() == (0,)
        assert alice.execute("select count(*) from decisions_20260301").fetchone() == (
            0,
        )  # made after the grants
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            alice.execute("delete from decisions")


def test_the_readmes_recipe_works_for_an_administrator_who_is_no_superuser(
    server: EmbeddedPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    (block,) = re.findall(r"```sql\n(.*?)```", section(), re.S)
    run_as_admin(server, [*statements(block), inline(r"^create role alice")])
    migrate_and_start_a_day(server)
    assert "migrations applied: 0001_store" in capsys.readouterr().out
    assert_alice_reads_and_cannot_write(server)


def test_the_analysts_role_made_after_the_migration_is_granted_by_hand_as_the_readme_says(
    server: EmbeddedPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    (block,) = re.findall(r"```sql\n(.*?)```", section(), re.S)
    first, *rest = statements(block)
    assert first == "create role scorer_analyst nologin"
    run_as_admin(server, rest)  # forgotten: the store's user may not create it, the migration goes on
    migrate_and_start_a_day(server)
    assert "migrations applied: 0001_store" in capsys.readouterr().out
    run_as_admin(server, [first, inline(r"^create role alice")])
    run_as(server, "scorer_store", "choose-one", statements(inline(r"^grant usage on schema public")))
    assert_alice_reads_and_cannot_write(server)
