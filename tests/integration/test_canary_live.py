"""A canary with a challenger that returns NaN, on the real broker: a stable customer share asks for the
challenger, every one of those events falls back to the champion and is counted."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import orjson
from onnx import TensorProto, helper

from scorer.config import Settings
from scorer.kafka.control import publish
from scorer.rollout.deployment import Deployment
from scorer.rollout.plans import Plan
from tests.integration.conftest import Proc, consume, decisions, produce
from tests.integration.test_control import registry_with
from tests.integration.test_pipeline import metric
from tests.integration.test_rollout_live import wait_for_version

CUSTOMERS = 2000
SHARE = 0.3


def nan_model(directory: Path) -> None:
    """Replace model.onnx with a graph of the same interface whose probabilities are all NaN."""
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 26])
    probabilities = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])
    nodes = [
        helper.make_node("ReduceSum", ["features", "axes"], ["total"], keepdims=1),
        helper.make_node("Mul", ["total", "nan"], ["bad"]),
        helper.make_node("Concat", ["bad", "bad"], ["probabilities"], axis=1),
    ]
    initializers = [
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("nan", TensorProto.FLOAT, [1], [float("nan")]),
    ]
    graph = helper.make_graph(nodes, "nan", [features], [probabilities], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(directory / "model.onnx"))


def test_canary_with_a_broken_challenger_falls_back_per_customer(
    settings: Settings, tiny_model: Path, procs: list[Proc], tmp_path: Path
) -> None:
    registry = registry_with(tiny_model, tmp_path / "models")
    nan_model(registry / "tiny" / "2")
    champion = registry / "tiny" / "1"
    scorer = Proc("run", settings, champion, tmp_path / "scorer.log", SCORER_REGISTRY=str(registry))
    procs.append(scorer)
    plan = Plan("canary-1", "canary", "tiny/1", "tiny/2", start_ms=0, share=SHARE)
    publish(settings, Deployment("tiny/1", plan, None, int(time.time() * 1000)))
    wait_for_version(scorer, "tiny/1 -> tiny/2 (canary)")

    records: list[tuple[bytes | None, bytes | None]] = []
    for i in range(2 * CUSTOMERS):  # every customer twice
        customer = f"C{i % CUSTOMERS:05d}"
        doc = {"transaction_id": f"tx-{i}", "customer_id": customer, "terminal_id": f"T{i % 50}",
               "amount": 20.0, "timestamp": "2026-03-01T10:00:00Z"}  # fmt: skip
        records.append((customer.encode(), orjson.dumps(doc)))
    produce(settings, settings.input_topic, records)
    got = decisions(consume(settings, settings.decisions_topic, len(records)))
    assert len({d["transaction_id"] for d in got}) == len(records)

    canary: dict[str, set[bool]] = defaultdict(set)
    for d in got:
        assert d["challenger_version"] == "tiny/2" and d["blend_weight"] == 0.0  # NaN: never used
        assert "challenger_score" not in d
        canary[str(d["customer_id"])].add(bool(d.get("challenger_fallback", False)))
    assert all(len(sides) == 1 for sides in canary.values())  # sticky: a customer is in or out
    share = np.mean([True in sides for sides in canary.values()])
    assert abs(share - SHARE) < 0.04  # binomial sd at 2,000 customers: 0.01
    fell_back = sum(1 for d in got if d.get("challenger_fallback"))
    text = scorer.metrics()
    assert metric(text, "scorer_challenger_fallbacks_total", 'model_version="tiny/2"') == fell_back
    assert metric(text, "scorer_model_scored_total", 'model_version="tiny/2"') == 0  # no usable score
