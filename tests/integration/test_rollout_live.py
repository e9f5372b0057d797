"""A plan published while `scorer run` streams: decisions change over between batches, nothing is lost."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from scorer.cli.main import main
from scorer.config import Settings
from scorer.kafka.control import publish
from scorer.rollout.deployment import Deployment
from tests.integration.conftest import Proc, consume, decisions, env_for, produce
from tests.integration.test_control import registry_with
from tests.integration.test_pipeline import metric
from tests.variants import currency_aware, with_feature_config


def batch(start: int, n: int) -> list[tuple[bytes | None, bytes | None]]:
    """n transactions on 2026-03-01 10:00 UTC, 10/48 of the way into the blend below."""
    return [
        (
            f"C{i % 9}".encode(),
            orjson.dumps(
                {
                    "transaction_id": f"tx-{i}",
                    "customer_id": f"C{i % 9}",
                    "terminal_id": f"T{i % 5}",
                    "amount": 10.0 + i,
                    "timestamp": "2026-03-01T10:00:00Z",
                }
            ),
        )  # fmt: skip
        for i in range(start, start + n)
    ]


def in_range(docs: list[dict[str, object]], start: int, stop: int) -> list[dict[str, object]]:
    return [d for d in docs if start <= int(str(d["transaction_id"])[3:]) < stop]


def wait_for_version(scorer: Proc, text: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            exposition = scorer.metrics()
        except OSError:  # the metrics server is not up yet
            exposition = ""
        info = [line for line in exposition.splitlines() if line.startswith("scorer_model_info{")]
        if info and f'version="{text}"' in info[0]:
            return
        time.sleep(0.2)
    raise AssertionError(f"the scorer never served {text!r}")


def cli_environment(
    settings: Settings, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path]:
    """A registry (tiny/1..3) and the SCORER_* environment the in-process CLI reads: (registry, champion)."""
    registry = registry_with(tiny_model, tmp_path / "models")
    champion = registry / "tiny" / "1"
    for key, value in env_for(settings, champion, SCORER_REGISTRY=str(registry)).items():
        monkeypatch.setenv(key, value)
    return registry, champion


def test_blend_then_rollback_while_streaming(
    settings: Settings,
    tiny_model: Path,
    procs: list[Proc],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, champion = cli_environment(settings, tiny_model, tmp_path, monkeypatch)
    scorer = Proc("run", settings, champion, tmp_path / "scorer.log", SCORER_REGISTRY=str(registry))
    procs.append(scorer)
    produce(settings, settings.input_topic, batch(0, 40))
    first = decisions(consume(settings, settings.decisions_topic, 40))
    assert all("challenger_version" not in d and d["model_version"] == "tiny/1" for d in first)

    models = ["models", "--registry", str(registry)]
    blend = ["--strategy", "blend", "--start", "2026-03-01T00:00:00Z", "--end", "2026-03-03T00:00:00Z"]
    assert main([*models, "promote", "tiny/2", *blend]) == 0
    wait_for_version(scorer, "tiny/1 -> tiny/2 (blend)")
    produce(settings, settings.input_topic, batch(40, 40))
    second = in_range(decisions(consume(settings, settings.decisions_topic, 80)), 40, 80)
    assert len(second) == 40
    assert {d["challenger_version"] for d in second} == {"tiny/2"}
    assert all(d["blend_weight"] == pytest.approx(10 / 48) and d["model_version"] == "tiny/1" for d in second)
    assert all(d["score"] == pytest.approx(d["challenger_score"]) for d in second)  # same model both sides
    text = scorer.metrics()
    assert metric(text, "scorer_model_scored_total", 'model_version="tiny/2"') == 40
    assert metric(text, "scorer_challenger_agreement_total", 'model_version="tiny/2"') == 40
    assert metric(text, "scorer_model_score_count", 'model_version="tiny/1"') == 80

    assert main([*models, "rollback"]) == 0
    wait_for_version(scorer, "tiny/1")
    produce(settings, settings.input_topic, batch(80, 40))
    everything = decisions(consume(settings, settings.decisions_topic, 120))
    assert sorted(d["transaction_id"] for d in everything) == sorted(f"tx-{i}" for i in range(120))
    late = in_range(everything, 80, 120)
    assert not [d for d in late if "challenger_version" in d]


def test_rollback_reaches_every_instance_of_the_group(
    settings: Settings,
    tiny_model: Path,
    procs: list[Proc],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, champion = cli_environment(settings, tiny_model, tmp_path, monkeypatch)
    group = [
        Proc("run", settings, champion, tmp_path / f"scorer{i}.log", SCORER_REGISTRY=str(registry))
        for i in range(2)
    ]
    procs.extend(group)
    produce(settings, settings.input_topic, batch(0, 40))
    assert len(consume(settings, settings.decisions_topic, 40)) == 40  # both joined and scoring
    models = ["models", "--registry", str(registry)]
    assert main([*models, "promote", "tiny/2", "--strategy", "shadow"]) == 0
    for scorer in group:
        wait_for_version(scorer, "tiny/1 -> tiny/2 (shadow)")
    produce(settings, settings.input_topic, batch(40, 40))
    shadow = decisions(consume(settings, f"{settings.decisions_topic}-shadow", 40))
    assert sorted(d["transaction_id"] for d in shadow) == sorted(f"tx-{i}" for i in range(40, 80))
    assert {d["model_version"] for d in shadow} == {"tiny/2"}
    decided = in_range(decisions(consume(settings, settings.decisions_topic, 80)), 40, 80)
    # the champion decides; each decision carries the shadow's version and score at weight 0 (for the store)
    assert len(decided) == 40 and all(
        d["model_version"] == "tiny/1" and d["challenger_version"] == "tiny/2" and d["blend_weight"] == 0
        for d in decided
    )
    scored = {d["transaction_id"]: d["score"] for d in shadow}
    assert any(d.get("challenger_score") == scored[d["transaction_id"]] for d in decided)
    assert main([*models, "rollback"]) == 0
    for scorer in group:
        wait_for_version(scorer, "tiny/1")


def test_a_promoted_model_with_a_new_currency_scores_as_scorer_score_does_and_a_state_misfit_is_refused(
    settings: Settings,
    tiny_model: Path,
    procs: list[Proc],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """tiny/4 knows USD (tiny/1 does not) and scores it 0.5 higher: after it is promoted, the stream's
    decisions equal `scorer score --model tiny/4` on the same transactions. tiny/5 keeps another label delay
    than the running scorers' state: the gate refuses it, and published anyway, the scorer keeps tiny/4."""
    registry, champion = cli_environment(settings, tiny_model, tmp_path, monkeypatch)
    currency_aware(tiny_model, registry / "tiny" / "4", "USD", "4")
    with_feature_config(tiny_model, registry / "tiny" / "5", "5", label_delay_days=3)
    scorer = Proc("run", settings, champion, tmp_path / "scorer.log", SCORER_REGISTRY=str(registry))
    procs.append(scorer)
    models = ["models", "--registry", str(registry)]
    assert main([*models, "promote", "tiny/5", "--strategy", "direct"]) == 1
    assert "label_delay_days 3 (the running scorers keep 7)" in capsys.readouterr().out
    assert main([*models, "promote", "tiny/4", "--strategy", "direct"]) == 0
    assert main([*models, "finish"]) == 0
    wait_for_version(scorer, "tiny/4")

    paid = []
    for i, (key, value) in enumerate(batch(0, 40)):
        doc = {**orjson.loads(value or b""), "currency": "USD" if i % 2 else "EUR"}
        paid.append((key, orjson.dumps(doc)))
    produce(settings, settings.input_topic, paid)
    streamed = {
        str(d["transaction_id"]): d for d in decisions(consume(settings, settings.decisions_topic, 40))
    }
    source = tmp_path / "paid.jsonl"
    source.write_bytes(b"\n".join(v for _, v in paid if v) + b"\n")
    scored = tmp_path / "scored.jsonl"
    offline_command = ["score", "--input", str(source), "--output", str(scored)]
    assert main([*offline_command, "--model", str(registry / "tiny" / "4")]) == 0
    offline = {d["transaction_id"]: d for d in map(orjson.loads, scored.read_bytes().splitlines())}
    assert set(streamed) == set(offline) and len(offline) == 40
    for tid, doc in offline.items():
        assert streamed[tid]["model_version"] == "tiny/4"
        assert streamed[tid]["score"] == pytest.approx(doc["score"], abs=1e-9), tid
    usd = [streamed[f"tx-{i}"]["score"] for i in range(1, 40, 2)]
    assert min(usd) >= 0.5  # USD known: raised by 0.5 (as unseen it would score like EUR)

    publish(settings, Deployment("tiny/5", None, "tiny/4", int(time.time() * 1000)))
    deadline = time.monotonic() + 30
    while (
        metric(scorer.metrics(), "scorer_watcher_errors_total", 'reason="not_applied",topic_kind="control"')
        != 1
    ):
        assert time.monotonic() < deadline, scorer.describe()
        time.sleep(0.2)
    wait_for_version(scorer, "tiny/4")
