"""The shipped alert rules and Grafana dashboard: valid for promtool, and naming only metrics we export.

promtool (Debian package `prometheus`, installed by `make test`) checks the rules, runs their unit tests
(deploy/prometheus/alerts.test.yml) and parses every dashboard query, wrapped as a recording rule.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from scorer.config import Settings
from scorer.monitoring.livequality import LiveQuality
from scorer.monitoring.monitor import Models, Monitor, families
from scorer.monitoring.verdicts import Verdicts, verdict_families
from scorer.runtime.metrics import AggregatorMetrics, Metrics
from scorer.serve.metrics import ServeMetrics
from scorer.store.metrics import StoreMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "scorer.json"
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "info": ("_info",),
    "gauge": ("",),
}
GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$job": ".*",
    "$instance": ".*",
    "$monitor_job": ".*",
    "$store_job": ".*",
}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool not found: install the Debian package prometheus (make test does)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd, check=False)


def exported() -> set[str]:
    """Every sample name the scorer, the aggregator, the monitor, serve and the store can expose."""
    registries = [CollectorRegistry() for _ in range(5)]
    Metrics(registries[0])
    ServeMetrics(registries[3])
    StoreMetrics(registries[4])
    AggregatorMetrics(registries[1])
    Monitor(Settings(brokers="127.0.0.1:1"), registries[2])
    fams = [f for r in registries for f in r.collect()]
    fams += families(LiveQuality(10, 1), Models(Settings()), Settings())
    fams += verdict_families(Verdicts(1, 10), 7)
    return {f.name + s for f in fams for s in SUFFIXES.get(f.type, ("",))} | {"up"}


def names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:scorer_|up\b)[a-z0-9_]*)", expr))


def dashboard_queries() -> Iterator[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    check = promtool("check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    tests = promtool("test", "rules", "alerts.test.yml", cwd=RULES.parent)
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_rule_unit_tests_cover_every_alert() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    cases = yaml.safe_load((RULES.parent / "alerts.test.yml").read_text())["tests"]
    fired = {c["alertname"] for case in cases for c in case["alert_rule_test"] if c["exp_alerts"]}
    assert fired == alerts


def test_rules_and_dashboard_name_only_exported_metrics() -> None:
    known = exported()
    rules = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    queries = [e for _, e in dashboard_queries()]
    assert len(rules) >= 9 and len(queries) >= 18
    for expr in rules + queries:
        assert names_in(expr), expr  # every expression reads at least one of our metrics
        assert names_in(expr) <= known, (expr, names_in(expr) - known)


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = []
    for _, expr in dashboard_queries():
        for var, stand_in in GRAFANA_VARS.items():
            expr = expr.replace(var, stand_in)
        queries.append(expr)
    assert all("$" not in q for q in queries), [q for q in queries if "$" in q]
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"q{i}", "expr": q} for i, q in enumerate(queries)]}
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    check = promtool("check", "rules", str(path))
    assert check.returncode == 0, check.stdout + check.stderr


def test_dashboard_layout() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in doc["panels"]).lower()
    for topic in ("scored per second", "latency", "lag", "flag rate", "dead letters", "psi", "quality"):
        assert topic in titles, topic
    assert {v["name"] for v in doc["templating"]["list"]} == {
        "datasource",
        "job",
        "instance",
        "monitor_job",
        "store_job",
    }
    # no two panels share a cell of the grid (a new row placed over an old one hides it)
    cells = {(x, y) for p in doc["panels"] for x in range(p["gridPos"]["x"], p["gridPos"]["x"] + p["gridPos"]["w"])
             for y in range(p["gridPos"]["y"], p["gridPos"]["y"] + p["gridPos"]["h"])}  # fmt: skip
    assert len(cells) == sum(p["gridPos"]["w"] * p["gridPos"]["h"] for p in doc["panels"])


def test_the_dashboard_shows_the_stores_lag_and_write_rate_per_table() -> None:
    queries: dict[str, list[str]] = {}
    for title, expr in dashboard_queries():
        queries.setdefault(title, []).append(expr)
    lag = queries["Store lag: records not yet in PostgreSQL"]
    rows = queries["Rows written to PostgreSQL per second, by table"]
    assert any(q.startswith("sum by (topic) (scorer_store_lag_records{") for q in lag)
    assert any(q.startswith("sum by (table) (rate(scorer_store_rows_total{") for q in rows)
    assert all('job=~"$store_job"' in q for q in lag + rows)
