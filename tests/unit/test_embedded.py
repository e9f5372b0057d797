"""The embedded Scorer and `scorer score`: the stream's scores without Kafka, bad input refused clearly."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from scorer import Scorer
from scorer.aggregate.local import day_runs
from scorer.config import DEFAULT_MODEL
from scorer.errors import ModelError, Rejected
from scorer.events.timestamps import MS_PER_DAY
from scorer.features.engine import FEATURE_NAMES
from scorer.model.onnx import OnnxModel
from scorer.training.dataset import load_history, replay_features

ROOT = Path(__file__).resolve().parents[2]


def split_history(data: Path, out: Path, share: float) -> tuple[Path, list[bytes]]:
    """A history directory with the first `share` of the transactions (and every label), and the rest's lines."""
    lines = (data / "transactions.jsonl").read_bytes().splitlines()
    cut = int(len(lines) * share)
    out.mkdir()
    (out / "transactions.jsonl").write_bytes(b"\n".join(lines[:cut]) + b"\n")
    (out / "labels.jsonl").write_bytes((data / "labels.jsonl").read_bytes())
    return out, lines[cut:]


def offline_scores(data: Path, model_dir: Path) -> dict[str, float]:
    """transaction_id -> score of the offline replay (training's features) over the whole history."""
    history = load_history(data)
    model = OnnxModel(model_dir)
    scores = model.predict(replay_features(history, model.meta.feature_config))
    return dict(zip(history.transactions.transaction_id, scores.tolist(), strict=True))


def test_day_runs_split_at_every_change_of_day() -> None:
    ts = np.array([0, 5, MS_PER_DAY, MS_PER_DAY + 1, 3, 2 * MS_PER_DAY], dtype=np.int64)
    assert day_runs(ts) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert day_runs(np.zeros(0, dtype=np.int64)) == []


def test_warmed_scorer_gives_the_offline_replays_scores(
    tiny_data: Path, tiny_model: Path, tmp_path: Path
) -> None:
    history, rest = split_history(tiny_data, tmp_path / "history", 0.7)
    scorer = Scorer.load(tiny_model, history=history)
    expected = offline_scores(tiny_data, tiny_model)
    got: dict[str, float] = {}
    for start in range(0, len(rest), 777):  # batches that cut days anywhere
        for d in scorer.score(rest[start : start + 777]):
            got[d["transaction_id"]] = d["score"]
    assert len(got) == len(rest)
    worst = max(abs(got[t] - expected[t]) for t in got)
    assert worst <= 1e-6, worst
    assert sum(v >= scorer.core.serving.champion.threshold for v in got.values()) > 0  # some are flagged


def test_labels_given_later_reach_terminal_features_after_their_report_day(tiny_model: Path) -> None:
    scorer = Scorer.load(tiny_model)
    tx = [tx_doc(f"t{i}", f"C{i}", "T1", f"2026-03-{1 + i:02d}T12:00:00Z") for i in range(12)]
    scorer.score(tx[:10])
    scorer.label([
        {"transaction_id": f"t{i}", "customer_id": f"C{i}", "terminal_id": "T1", "is_fraud": True,
         "reported_at": "2026-03-10T13:00:00Z", "timestamp": f"2026-03-{1 + i:02d}T12:00:00Z"}
        for i in range(3)
    ])  # fmt: skip
    day_11, day_12 = (fresh_risk(d) for d in scorer.score(tx[10:]))
    assert day_11 > 0.0 and day_12 > 0.0  # reported on the 10th: in the close of the 10th, seen from the 11th
    plain = Scorer.load(tiny_model)
    plain.score(tx[:10])
    assert all(fresh_risk(d) == 0.0 for d in plain.score(tx[10:]))


def fresh_risk(decision: dict[str, object]) -> float:
    """The largest term_fresh_risk_* value the decision's feature vector holds."""
    features = decision["features"]
    assert isinstance(features, list)
    return max(v for n, v in zip(FEATURE_NAMES, features, strict=True) if n.startswith("term_fresh_risk"))


def tx_doc(tid: str, customer: str, terminal: str, ts: str, amount: float = 40.0) -> dict[str, object]:
    return {"transaction_id": tid, "customer_id": customer, "terminal_id": terminal, "amount": amount,
            "timestamp": ts}  # fmt: skip


def test_one_invalid_transaction_refuses_the_call_and_counts_nothing(tiny_model: Path) -> None:
    valid = [tx_doc(f"t{i}", "C1", "T1", f"2026-03-01T1{i}:00:00Z") for i in range(3)]
    scorer = Scorer.load(tiny_model)
    with pytest.raises(Rejected) as refused:
        scorer.score([*valid, {"transaction_id": "bad", "customer_id": "C1"}])
    assert refused.value.reason == "missing_field"
    assert "transaction 3" in refused.value.detail
    with pytest.raises(Rejected, match="invalid_json"):
        scorer.score([b"{not json"])
    after = [d["score"] for d in scorer.score(valid)]
    assert after == [d["score"] for d in Scorer.load(tiny_model).score(valid)]  # no window counted twice
    with pytest.raises(Rejected, match="label 0"):
        scorer.label([{"transaction_id": "t1"}])


def test_the_readme_example_runs_from_any_directory(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- embedded-example -->\s*```python\n(.*?)```", readme, re.S)
    assert block is not None, "README: the embedded example is marked with <!-- embedded-example -->"
    assert len(block.group(1).strip().splitlines()) <= 12
    proc = subprocess.run(
        [sys.executable, "-c", block.group(1)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^t1 [\d.e-]+ (approve|review|decline) \[", proc.stdout, re.M), proc.stdout


def test_load_without_a_path_is_the_shipped_model_and_a_relative_path_is_read_from_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert Scorer.load().model_version == OnnxModel(DEFAULT_MODEL).label
    with pytest.raises(ModelError) as missing:  # a ScorerError: one line, the path it looked in
        Scorer.load("models/default/2")
    assert f"models/default/2 ({tmp_path}/models/default/2: relative to the current directory)" in str(
        missing.value
    )
    shutil.copytree(DEFAULT_MODEL, tmp_path / "mine" / "1")
    assert Scorer.load("mine/1").model_version == Scorer.load().model_version


# -- scorer score -----------------------------------------------------------------------------------------


def run_score(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scorer", "score", *args], capture_output=True, text=True, timeout=300
    )


def test_score_a_file_with_bad_lines(tiny_data: Path, tiny_model: Path, tmp_path: Path) -> None:
    history, rest = split_history(tiny_data, tmp_path / "history", 0.8)
    source = tmp_path / "in.jsonl"
    lines = [*rest[:500], b"{oops", b"", *rest[500:900], b'{"transaction_id": "x"}', *rest[900:]]
    source.write_bytes(b"\n".join(lines) + b"\n")
    out, rejects = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"
    args = ["--input", str(source), "--output", str(out), "--model", str(tiny_model)]
    proc = run_score(*args, "--history", str(history), "--rejects", str(rejects))
    assert proc.returncode == 0, proc.stderr
    assert f"{source}:501: invalid_json" in proc.stderr
    assert f"{source}:903: missing_field: customer_id" in proc.stderr
    assert f"scored {len(rest):,} transactions" in proc.stdout and "2 bad lines skipped" in proc.stdout
    decisions = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [d["transaction_id"] for d in decisions] == [orjson.loads(r)["transaction_id"] for r in rest]
    expected = offline_scores(tiny_data, tiny_model)
    assert max(abs(d["score"] - expected[d["transaction_id"]]) for d in decisions) <= 1e-6
    assert [orjson.loads(r)["line"] for r in rejects.read_bytes().splitlines()] == [501, 903]

    failed = run_score(*args[:2], "--output", str(tmp_path / "none.jsonl"), *args[4:], "--bad-lines", "fail")
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].startswith(f"scorer: error: {source}:501: invalid_json")
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "none.jsonl").exists() and not list(tmp_path.glob(".none*"))


def test_a_csv_file_scores_like_its_json_lines(tiny_data: Path, tiny_model: Path, tmp_path: Path) -> None:
    rows = [orjson.loads(line) for line in (tiny_data / "transactions.jsonl").read_bytes().splitlines()[:300]]
    fields = sorted({k for r in rows for k in r})
    csv_path, jsonl_path = tmp_path / "in.csv", tmp_path / "in.jsonl"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        writer.writerow({"transaction_id": "bad-amount", "customer_id": "C1", "terminal_id": "T1",
                         "amount": "lots", "timestamp": "2026-01-02T00:00:00Z"})  # fmt: skip
    jsonl_path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    outputs, stderr = [], []
    for source in (csv_path, jsonl_path):
        out = tmp_path / f"{source.suffix[1:]}.out"
        proc = run_score("--input", str(source), "--output", str(out), "--model", str(tiny_model))
        assert proc.returncode == 0, proc.stderr
        stderr.append(proc.stderr)
        decisions = map(orjson.loads, out.read_bytes().splitlines())
        outputs.append([(d["transaction_id"], d["score"]) for d in decisions])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 300
    assert f"{csv_path}:302: wrong_type: amount must be a number" in stderr[0]


def test_score_refuses_a_missing_input_or_overwriting_it(tmp_path: Path) -> None:
    missing = run_score("--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o.jsonl"))
    assert missing.returncode == 1 and "nope.jsonl: no such file" in missing.stderr
    assert "Traceback" not in missing.stderr
    same = tmp_path / "same.jsonl"
    same.write_text("")
    clash = run_score("--input", str(same), "--output", str(same))
    assert clash.returncode == 2 and "--output must not be the --input file" in clash.stderr


def test_score_a_what_if_with_a_policy_and_rules(tiny_data: Path, tiny_model: Path, tmp_path: Path) -> None:
    source, out, rules = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "rules.json"
    lines = (tiny_data / "transactions.jsonl").read_bytes().splitlines()[:200]
    source.write_bytes(b"\n".join(lines))
    blocked = orjson.loads(lines[0])["customer_id"]
    rules.write_bytes(
        orjson.dumps([{"id": "stolen", "kind": "block_customer", "action": "decline", "values": [blocked]}])
    )
    args = ["--input", str(source), "--output", str(out), "--model", str(tiny_model)]
    proc = run_score(*args, "--review", "threshold:0.0", "--decline", "threshold:1.0", "--rules", str(rules))
    assert proc.returncode == 0, proc.stderr
    decisions = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert {(d["action"], d["action_source"]) for d in decisions if d["customer_id"] == blocked} == {
        ("decline", "stolen")
    }
    assert {d["action"] for d in decisions if d["customer_id"] != blocked} <= {
        "review",
        "decline",
    }  # review from 0
    bad = run_score(*args, "--decline", "alert_budget:lots")
    assert bad.returncode == 2 and "not a number" in bad.stderr and "Traceback" not in bad.stderr
    rules.write_text('[{"id": "x", "kind": "block_card"}]')
    bad = run_score(*args, "--rules", str(rules))
    assert bad.returncode == 2 and "--rules" in bad.stderr and "Traceback" not in bad.stderr
