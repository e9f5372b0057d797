"""The console's two queries on a store holding 10 M decisions: their latency percentiles and plans.

`python -m benchmarks.database` starts an embedded PostgreSQL (a temporary directory; fsync off while it loads:
the figures are the queries', not the load's), applies the store's migrations, and fills `decisions` with
generated rows of the shape `scorer store` writes: `--days` day partitions (made by the store's own
store_ensure_partition), `--decisions` rows spread evenly over them in time order (as a stream arrives),
`--customers` cards and 10,000 terminals drawn at random, about 0.7 % review and 0.3 % decline with scores
above the threshold (the demo's alert share), a 26-value feature vector and three reasons per row (from a
pool of 64, so rows have the real size). The indexes the migration defines are dropped for the load and
made again from their own definitions afterwards (faster than keeping them up row by row), then the table
is vacuumed and analysed, as autovacuum would have it.

Then, over one connection (prepared statements, as a web application keeps them), interleaved with random
parameters from a fixed seed, after a warm-up:
  card:   a card's last 30 days of decisions, newest first (what the console shows for a card);
  alerts: a day's top 100 alerts (review or decline) by score.
Latency is execute + fetch of every row, on the same machine (no network). The EXPLAIN (ANALYZE, BUFFERS)
of each query with the median card and the middle day is kept.

The console's pages on the same data (the load's alerts opened their cards' cases through the store's
trigger, as `scorer store` does): the queue (its 50 highest-priority cases, the capacity panel) and a random
card's case page, each built by the console's own queries (scorer/db/cases.py) and rendered by its
templates, timed from the first query to the HTML. Results: --out/<stem>.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg

from benchmarks.__main__ import machine
from scorer.db.embedded import EmbeddedPostgres
from scorer.db.migrate import migrate

QUERIES = {
    "card": (
        "select event_time, amount, terminal_id, score, action, rule_id, model_version from decisions "
        "where customer_id = %(customer)s and event_day >= %(since)s order by event_time desc"
    ),
    "alerts": (
        "select transaction_id, event_time, customer_id, terminal_id, amount, score, action, rule_id, "
        "model_version from decisions where event_day = %(day)s and action <> 'approve' "
        "order by score desc limit 100"
    ),
}
FIRST_DAY = datetime.date(2026, 1, 1)
TERMINALS = 10_000
POOL = 64  # distinct feature vectors and reasons the rows take theirs from
LOAD_SETTINGS = {"max_wal_size": "16GB", "checkpoint_timeout": "30min"}  # fewer checkpoints while loading
POOL_SQL = """
create temporary table pool as
select k,
       array(select (random() * 10)::real from generate_series(1, 26) where k >= 0) as features,
       jsonb_build_array(
           jsonb_build_object('feature', 'term_fresh_risk_7d', 'value', round(random()::numeric, 4)),
           jsonb_build_object('feature', 'cust_amount_ratio_30d', 'value', round(random()::numeric, 4)),
           jsonb_build_object('feature', 'term_fresh_risk_30d', 'value', round(random()::numeric, 4))
       ) as reasons
from generate_series(0, %(pool)s - 1) as k
"""
DAY_SQL = """
insert into decisions (
    event_day, transaction_id, event_time, customer_id, terminal_id, amount, score, flagged, action,
    action_source, threshold, model_version, reasons, scored_at, features, source_partition, source_offset
)
select
    %(day)s::date, 'tx' || lpad((%(first)s + g.i)::text, 10, '0'), t.at, 'C' || floor(random() * %(customers)s),
    'T' || floor(random() * %(terminals)s), round((exp(random() * 6))::numeric, 2)::float8,
    case when r.u < 0.01 then 0.092 + random() * 0.908 else random() * 0.092 end, r.u < 0.01,
    case when r.u < 0.003 then 'decline' when r.u < 0.01 then 'review' else 'approve' end,
    case when r.u < 0.0005 then 'block-list' else 'model' end, 0.092, 'default/2', p.reasons,
    t.at + interval '40 milliseconds', p.features, (g.i %% 4), %(first)s / 4 + g.i / 4
from generate_series(0, %(n)s - 1) as g(i)
cross join lateral (select random() as u where g.i >= 0) as r  -- per row: correlated
cross join lateral (
    select %(day)s::date::timestamp at time zone 'UTC' + make_interval(secs => 86400.0 * g.i / %(n)s) as at
) as t
join pool as p on p.k = g.i %% %(pool)s
"""


def load(conn: psycopg.Connection[Any], decisions: int, days: int, customers: int) -> dict[str, Any]:
    """The generated rows, the migration's indexes made afresh afterwards; what it took."""
    started = time.monotonic()
    migrate(conn)
    conn.execute("select setseed(0.25)")
    conn.execute(POOL_SQL, {"pool": POOL})
    for d in range(days):
        conn.execute("select store_ensure_partition('decisions', %s)", (FIRST_DAY + datetime.timedelta(d),))
    indexes = _drop_indexes(conn)
    conn.commit()
    per_day, first = decisions // days, 0
    for d in range(days):
        n = per_day if d < days - 1 else decisions - first
        day = FIRST_DAY + datetime.timedelta(d)
        params = {"day": day, "first": first, "n": n, "customers": customers, "terminals": TERMINALS}
        conn.execute(DAY_SQL, {**params, "pool": POOL})
        conn.commit()
        first += n
    loaded = time.monotonic()
    for statement in indexes:
        conn.execute(statement)
    conn.commit()
    indexed = time.monotonic()
    conn.autocommit = True
    conn.execute("vacuum (analyze) decisions")
    conn.autocommit = False
    return {
        "load_s": round(loaded - started, 1),
        "index_s": round(indexed - loaded, 1),
        "vacuum_s": round(time.monotonic() - indexed, 1),
        "indexes": indexes,
    }


def _drop_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    """Drop the indexes of `decisions` (the primary key's constraint too); the statements that make them."""
    key = conn.execute(
        "select conname, pg_get_constraintdef(oid) from pg_constraint "
        "where conrelid = 'decisions'::regclass and contype = 'p'"
    ).fetchone()
    others = conn.execute(
        "select indexname, indexdef from pg_indexes where tablename = 'decisions' and indexname <> %s",
        (key[0] if key else "",),
    ).fetchall()
    statements = []
    if key:
        conn.execute(f'alter table decisions drop constraint "{key[0]}"')
        statements.append(f'alter table decisions add constraint "{key[0]}" {key[1]}')
    for name, definition in others:
        conn.execute(f'drop index "{name}"')
        statements.append(definition.replace(" ON ONLY ", " ON "))  # ONLY: the parent's alone, no partition
    return statements


def sizes(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Rows, bytes of the table and of each index (over every partition), and the alert share."""
    rows, alerts = conn.execute(
        "select count(*), count(*) filter (where action <> 'approve') from decisions"
    ).fetchone() or (0, 0)
    parts = conn.execute(
        "select coalesce(sum(pg_table_size(c.oid)), 0) from pg_inherits i join pg_class c on c.oid = i.inhrelid "
        "where i.inhparent = 'decisions'::regclass"
    ).fetchone()
    indexes = conn.execute(
        "select pi.inhparent::regclass::text, sum(pg_relation_size(pi.inhrelid)) from pg_inherits pi "
        "join pg_index x on x.indexrelid = pi.inhrelid group by 1 order by 1"
    ).fetchall()
    return {
        "rows": rows,
        "alerts": alerts,
        "customers_with_rows": conn.execute("select count(distinct customer_id) from decisions").fetchone()[
            0
        ],  # type: ignore[index]
        "table_bytes": int(parts[0]) if parts else 0,
        "index_bytes": {name: int(size) for name, size in indexes},
    }


def measure(
    conn: psycopg.Connection[Any], days: int, customers: int, repetitions: int, warmup: int, seed: int
) -> dict[str, Any]:
    """Both queries interleaved with random cards and days; latency percentiles and rows per query."""
    rng = random.Random(seed)  # noqa: S311 - query parameters, not secrets
    last = FIRST_DAY + datetime.timedelta(days - 1)
    since = last - datetime.timedelta(29)

    def params(name: str) -> dict[str, Any]:
        if name == "card":
            return {"customer": f"C{rng.randrange(customers)}", "since": since}
        return {"day": FIRST_DAY + datetime.timedelta(rng.randrange(days))}

    seconds: dict[str, list[float]] = {name: [] for name in QUERIES}
    rows: dict[str, list[int]] = {name: [] for name in QUERIES}
    for i in range(warmup + repetitions):
        for name, query in QUERIES.items():
            p = params(name)
            t0 = time.perf_counter()
            got = conn.execute(query, p).fetchall()
            elapsed = time.perf_counter() - t0
            if i >= warmup:
                seconds[name].append(elapsed)
                rows[name].append(len(got))
        conn.rollback()  # a console request's transaction ends; no snapshot held across requests
    return {name: _percentiles(seconds[name], rows[name]) for name in QUERIES}


def pages(conn: psycopg.Connection[Any], customers: int, repetitions: int, seed: int) -> dict[str, Any]:
    """The queue and case pages built and rendered as the console does (no HTTP): latency percentiles."""
    from scorer.cases.model import OUTCOMES, QueueFilter
    from scorer.console.app import templates
    from scorer.db.accounts import Principal
    from scorer.db.cases import PostgresCases

    rng = random.Random(seed)  # noqa: S311 - query parameters, not secrets
    env, who = templates(), Principal("bench", "lead", "x")
    cases = PostgresCases(conn, sla_hours=4.0)
    seconds: dict[str, list[float]] = {"queue page": [], "case page": []}
    sizes: dict[str, list[int]] = {"queue page": [], "case page": []}
    for _ in range(repetitions):
        t0 = time.perf_counter()
        flt = QueueFilter()
        html = env.get_template("queue.html").render(
            who=who, csrf="x", message=None, message_kind="info", cases=cases.queue(flt),
            capacity=cases.capacity(100), alerts_24h={}, figures=cases.verdict_figures(), policy="bench", flt=flt, outcomes=OUTCOMES,
            page_link=str,
        )  # fmt: skip
        seconds["queue page"].append(time.perf_counter() - t0)
        sizes["queue page"].append(len(html))
        t0 = time.perf_counter()
        detail = cases.case(f"C{rng.randrange(customers)}")
        if detail is not None:
            html = env.get_template("case.html").render(
                who=who,
                csrf="x",
                message=None,
                message_kind="info",
                case=detail,
                outcomes=OUTCOMES,
                rules_hit=[],
            )
            seconds["case page"].append(time.perf_counter() - t0)
            sizes["case page"].append(len(detail.transactions))
        conn.rollback()
    return {name: _percentiles(seconds[name], sizes[name]) for name in seconds}


def _percentiles(seconds: list[float], rows: list[int]) -> dict[str, Any]:
    ms = np.array(seconds) * 1000
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
        "mean_rows": round(float(np.mean(rows)), 1),
        "max_rows": int(max(rows)),
    }


def plans(conn: psycopg.Connection[Any], days: int, customers: int) -> dict[str, str]:
    """EXPLAIN (ANALYZE, BUFFERS) of each query: the card with the median number of rows in the last 30
    days, and the middle day."""
    last = FIRST_DAY + datetime.timedelta(days - 1)
    since = last - datetime.timedelta(29)
    median = conn.execute(
        "select customer_id from decisions where event_day >= %s group by customer_id "
        "order by count(*), customer_id offset (select count(distinct customer_id) / 2 from decisions "
        "where event_day >= %s) limit 1",
        (since, since),
    ).fetchone()
    values: dict[str, dict[str, Any]] = {
        "card": {"customer": median[0] if median else "C0", "since": since},
        "alerts": {"day": FIRST_DAY + datetime.timedelta(days // 2)},
    }
    out = {}
    for name, query in QUERIES.items():
        conn.execute(query, values[name]).fetchall()  # its pages read once, as in the timed runs
        lines = conn.execute("explain (analyze, buffers) " + query, values[name]).fetchall()
        out[name] = "\n".join(str(line[0]) for line in lines)
    conn.rollback()
    return out


def markdown(r: dict[str, Any]) -> str:
    m, s, load = r["machine"], r["sizes"], r["load"]
    lines = [
        f"Run {r['started']} on {m['cpus']} x {m['cpu_model']}, {m['memory_gib']} GiB; PostgreSQL {r['postgres']} "
        f"(embedded, default settings but {', '.join(f'{k}={v}' for k, v in r['settings'].items())}). "
        f"Command: `{r['command']}`. 1-minute load average before the queries: {r['load_average_1m']}.",
        "",
        f"{s['rows']:,} decisions over {r['days']} day partitions, {s['customers_with_rows']:,} cards, "
        f"{s['alerts']:,} alerts ({s['alerts'] / max(s['rows'], 1):.2%}); table {s['table_bytes'] / 2**30:.1f} GiB, "
        + ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in s["index_bytes"].items())
        + f". Loaded in {load['load_s']:.0f} s, indexed in {load['index_s']:.0f} s, vacuumed in {load['vacuum_s']:.0f} s.",
        "",
        f"{r['repetitions']:,} runs of each query, interleaved, random cards and days (seed {r['seed']}), after "
        f"{r['warmup']} warm-up runs; execute + fetch over one connection with prepared statements.",
        "",
        "| query | runs | p50 ms | p90 ms | p99 ms | max ms | rows (mean / max) | p99 <= 20 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, x in r["latency"].items():
        lines.append(
            f"| {name} | {x['n']:,} | {x['p50_ms']:.2f} | {x['p90_ms']:.2f} | {x['p99_ms']:.2f} | {x['max_ms']:.2f} | "
            f"{x['mean_rows']:.0f} / {x['max_rows']} | {'yes' if x['p99_ms'] <= 20 else 'no'} |"
        )
    total, still_open = r["cases"]
    lines += [
        "",
        f"The console's pages ({total:,} cases, {still_open:,} open: every alert opened or joined its card's case "
        "through the store's trigger), built by its queries and rendered by its templates, no HTTP:",
        "",
        "| page | runs | p50 ms | p90 ms | p99 ms | max ms | size (mean / max) | p99 <= 200 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, x in r["pages"].items():
        unit = "bytes" if name == "queue page" else "rows"
        lines.append(
            f"| {name} | {x['n']:,} | {x['p50_ms']:.2f} | {x['p90_ms']:.2f} | {x['p99_ms']:.2f} | {x['max_ms']:.2f} | "
            f"{x['mean_rows']:,.0f} / {x['max_rows']:,} {unit} | {'yes' if x['p99_ms'] <= 200 else 'no'} |"
        )
    lines += ["", "Indexes (as the migration defines them):", "", "```sql", *load["indexes"], "```"]
    for name, plan in r["plans"].items():
        lines += [
            "",
            f"EXPLAIN (ANALYZE, BUFFERS) of `{name}`:",
            "",
            "```sql",
            QUERIES[name],
            "```",
            "",
            "```",
            plan,
            "```",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.database", description=__doc__)
    p.add_argument("--decisions", type=int, default=10_000_000)
    p.add_argument("--days", type=int, default=120)
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--repetitions", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--page-repetitions", type=int, default=300, help="runs of each console page")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--stem", default="database")
    args = p.parse_args(argv)
    result: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.database " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "settings": {"fsync": "off", **LOAD_SETTINGS},
        **{k: getattr(args, k) for k in ("days", "repetitions", "warmup", "seed")},
    }
    with EmbeddedPostgres(settings=LOAD_SETTINGS) as server, psycopg.connect(server.uri) as conn:
        result["postgres"] = conn.execute("show server_version").fetchone()[0]  # type: ignore[index]
        result["load"] = load(conn, args.decisions, args.days, args.customers)
        result["sizes"] = sizes(conn)
        conn.commit()
        result["load_average_1m"] = round(os.getloadavg()[0], 2)
        result["latency"] = measure(conn, args.days, args.customers, args.repetitions, args.warmup, args.seed)
        result["plans"] = plans(conn, args.days, args.customers)
        result["cases"] = conn.execute(
            "select count(*), count(*) filter (where status <> 'closed') from cases"
        ).fetchone()
        result["pages"] = pages(conn, args.customers, args.page_repetitions, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.stem}.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    text = markdown(result)
    (args.out / f"{args.stem}.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
