"""The package's shape: imports flow one way (command line -> applications -> core -> contracts), no cycles,
the scoring core and the contracts know no Kafka, nothing low imports the CLI, the demos or the run loop,
and no module outgrows its concept."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import scorer

ROOT = Path(scorer.__file__).parent
MAX_LINES = 400
KAFKA_FREE = (  # the scoring core and everything it stands on; tests and other deployments reuse them
    "scorer.events", "scorer.features", "scorer.model", "scorer.rollout", "scorer.training",
    "scorer.scoring.core", "scorer.scoring.scored", "scorer.scoring.commits", "scorer.scoring.customers", "scorer.scoring.decisions",
    "scorer.aggregate.table", "scorer.aggregate.partition", "scorer.monitoring.inputs",
    "scorer.monitoring.drift", "scorer.monitoring.livequality", "scorer.config", "scorer.masking", "scorer.errors",
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported(path: Path) -> Iterator[str]:
    """Every module an import statement names, at any depth of the file (lazy imports included)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


@cache
def graph() -> dict[str, set[str]]:
    """scorer module -> the scorer modules it imports (the package facade `scorer` left out)."""
    known = modules()
    return {
        name: {m for m in imported(path) if m in known and m not in ("scorer", name)}
        for name, path in known.items()
        if name != "scorer"
    }


def reach(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph().get(todo.pop(), set()) - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def package(name: str) -> str:
    return ".".join(name.split(".")[:2])


def test_no_module_imports_itself_round_a_cycle() -> None:
    cycles = sorted(m for m in graph() if m in reach(m))
    assert not cycles


def test_subpackages_depend_on_each_other_one_way() -> None:
    edges = {
        (package(a), package(b)) for a, deps in graph().items() for b in deps if package(a) != package(b)
    }
    both_ways = sorted((a, b) for a, b in edges if (b, a) in edges)
    assert not both_ways


def test_nothing_below_the_command_line_imports_it_or_the_demos() -> None:
    for name, deps in graph().items():
        if not name.startswith(("scorer.cli", "scorer.__main__")):
            assert not {d for d in deps if d.startswith("scorer.cli")}, name
        if not name.startswith(("scorer.cli", "scorer.demo", "scorer.__main__")):
            assert not {d for d in deps if d.startswith("scorer.demo")}, name
    users_of_loops = {
        n for n, deps in graph().items() if deps & {"scorer.scoring.loop", "scorer.aggregate.aggregator"}
    }
    assert users_of_loops <= {"scorer.cli.main"}


def test_the_core_and_the_contracts_know_no_kafka() -> None:
    for name in graph():
        if name.startswith(KAFKA_FREE):
            deps = reach(name) | {name}
            assert not {d for d in deps if d.startswith("scorer.kafka")}, name
            assert not any(
                m.startswith("confluent_kafka")
                for d in deps
                if d in modules()
                for m in imported(modules()[d])
            ), name


def test_no_module_outgrows_its_concept() -> None:
    long = {
        name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long


def test_every_subpackage_says_what_it_holds() -> None:
    for name, path in modules().items():
        if path.name == "__init__.py":
            assert ast.get_docstring(ast.parse(path.read_text())), name


def test_the_public_api_is_importable_from_the_package() -> None:
    assert scorer.__all__
    for name in scorer.__all__:
        assert getattr(scorer, name) is not None
    assert importlib.import_module("scorer").__version__ == scorer.version.__version__


def test_every_test_module_has_a_name_of_its_own() -> None:
    """The test folders are no packages: pytest imports each test module by its file name, so two with one
    name in different folders stop the whole run at collection."""
    tests = ROOT.parent / "tests"
    names = [p.name for p in tests.rglob("test_*.py")]
    assert not {n for n in names if names.count(n) > 1}
