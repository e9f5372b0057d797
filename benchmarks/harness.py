"""What every workload shares: the implementations as child processes, their CPU and memory, the output.

An implementation is one or more processes reading an input topic and writing one output record per
input. Each run gets its own topics and groups, so no run restores another's state or offsets.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from scorer.config import Settings
from scorer.demo.broker import free_port
from scorer.kafka.admin import TopicSpec, ensure_topics
from scorer.kafka.topics import create_topics

PARTITIONS = 4
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
SESSION_TIMEOUT_MS = 6000  # tansu: a group join otherwise waits ~20 s
# Input topics are created with retention.ms set: Quix Streams (the quix profile) derives its changelog
# topics' config from it, and tansu's DescribeConfigs reports only the configs given at creation.
INPUT_TOPIC_CONFIG = {"retention.ms": "-1"}


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a live process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
    except OSError:
        return 0


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, for utilisation over an interval."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICKS_PER_S, sum(values) / TICKS_PER_S


@dataclass(frozen=True, slots=True)
class Profile:
    """One implementation under test: its name and how to start its processes for a run."""

    name: str
    kind: str  # passthrough | naive | quix | scorer: the module benchmarks.<kind>, or `scorer run`
    env: Mapping[str, str] = field(default_factory=dict)  # scorer: SCORER_* settings of this profile
    scorers: int = 1  # scorer processes in the group (scale-out)
    aggregator: bool = True  # False: no terminal aggregator (isolates the scorer's own cost and latency)
    description: str = ""
    args: Sequence[str] = ()  # passthrough, naive, quix: extra command-line arguments


@dataclass
class Running:
    """The processes of one run and where their output goes."""

    profile: Profile
    output_topic: str
    procs: dict[str, subprocess.Popen[bytes]]  # role -> process
    logs: Path
    settings: Settings | None = None  # the scorer's topics (scorer profiles only)
    metrics_ports: dict[str, int] = field(default_factory=dict)  # scorer role -> its /metrics port

    def histogram(self, name: str) -> tuple[list[float], npt.NDArray[np.float64]]:
        """Bucket bounds and cumulative counts of a histogram, summed over the scorers (and labels)."""
        import urllib.request

        totals: dict[float, float] = {}
        prefix = f"{name}_bucket{{"
        for port in self.metrics_ports.values():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:  # noqa: S310
                for line in r.read().decode().splitlines():
                    if line.startswith(prefix):
                        le = line.split('le="', 1)[1].split('"', 1)[0]
                        bound = float("inf") if le == "+Inf" else float(le)
                        totals[bound] = totals.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
        bounds = sorted(totals)
        return bounds, np.array([totals[b] for b in bounds], dtype=np.float64)

    def cpu(self, roles: Sequence[str] | None = None) -> float:
        return sum(cpu_seconds(p.pid) for r, p in self.procs.items() if roles is None or r in roles)

    def rss(self) -> dict[str, int]:
        return {role: rss_bytes(p.pid) for role, p in self.procs.items()}

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())

    def stop(self, timeout_s: float = 20.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    @property
    def scoring_roles(self) -> list[str]:
        return [r for r in self.procs if r != "aggregator"]


class Launcher:
    """Starts profiles against one broker, each run with fresh topics named `<run>-...`."""

    def __init__(self, brokers: str, model: Path, workdir: Path, fetch_wait_ms: int) -> None:
        self.brokers = brokers
        self.model = model
        self.workdir = workdir
        self.fetch_wait_ms = fetch_wait_ms
        self.runs = 0

    def start(self, profile: Profile, input_topic: str) -> Running:
        self.runs += 1
        run = f"r{self.runs}-{profile.name}"
        logs = self.workdir / f"{run}.log"
        if profile.kind == "scorer":
            return self._scorer(profile, input_topic, run, logs)
        output = f"{run}-out"
        specs = [TopicSpec(output, PARTITIONS), TopicSpec(f"{run}-dlq", 1)]
        if profile.kind == "quix":  # its terminal table: empty, as the scorer's is without the aggregator
            specs.append(TopicSpec(f"{run}-terminal-features", PARTITIONS, compacted=True))
        ensure_topics(self.brokers, specs)
        common = [
            "--brokers", self.brokers, "--input", input_topic, "--output", output, "--group", run,
            "--fetch-wait-max-ms", str(self.fetch_wait_ms), "--session-timeout-ms", str(SESSION_TIMEOUT_MS),
        ]  # fmt: skip
        extra = []
        if profile.kind in ("naive", "quix"):
            extra = ["--dlq", f"{run}-dlq", "--model", str(self.model)]
        if profile.kind == "quix":
            extra += ["--terminal-topic", f"{run}-terminal-features", "--state-dir", str(self.workdir / run)]
        cmd = [sys.executable, "-m", f"benchmarks.{profile.kind}", *common, *extra, *profile.args]
        proc = _spawn(cmd, logs, {})
        return Running(profile, output, {profile.kind: proc}, logs)

    def scorer_settings(self, input_topic: str, run: str, profile: Profile) -> Settings:
        names = {
            "decisions_topic", "flags_topic", "dlq_topic", "labels_topic", "state_topic",
            "terminal_events_topic", "terminal_topic", "control_topic",
        }  # fmt: skip
        defaults = Settings()
        topics = {n: f"{run}-{getattr(defaults, n)}" for n in names}
        return dataclasses.replace(
            defaults,
            brokers=self.brokers,
            input_topic=input_topic,
            group=f"{run}-scorer",
            aggregator_group=f"{run}-aggregator",
            **topics,  # type: ignore[arg-type]  # every name is a str field
        )

    def _scorer(self, profile: Profile, input_topic: str, run: str, logs: Path) -> Running:
        s = self.scorer_settings(input_topic, run, profile)
        create_topics(s, PARTITIONS)
        env = {
            "SCORER_BROKERS": s.brokers,
            "SCORER_MODEL": str(self.model),
            "SCORER_GROUP": s.group,
            "SCORER_AGGREGATOR_GROUP": s.aggregator_group,
            "SCORER_FETCH_WAIT_MAX_MS": str(self.fetch_wait_ms),
            "SCORER_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
            "SCORER_LOG_LEVEL": "WARNING",
            **{f"SCORER_{n.upper()}": getattr(s, n) for n in _topic_fields(s)},
            **profile.env,
        }
        if not profile.aggregator:  # no one reads terminal-events: the scorer need not write its transactions
            env["SCORER_TERMINAL_EVENTS_FROM"] = "aggregator"
        procs, ports = {}, {}
        if profile.aggregator:
            procs["aggregator"] = _spawn(_scorer_cmd("aggregate"), logs, {**env, "SCORER_METRICS_PORT": "0"})
        for i in range(profile.scorers):
            ports[f"scorer{i}"] = free_port()
            procs[f"scorer{i}"] = _spawn(
                _scorer_cmd("run"), logs, {**env, "SCORER_METRICS_PORT": str(ports[f"scorer{i}"])}
            )
        return Running(profile, s.decisions_topic, procs, logs, s, ports)


def _topic_fields(s: Settings) -> list[str]:
    return [n for n in Settings.__dataclass_fields__ if n.endswith("_topic")]


def _scorer_cmd(command: str) -> list[str]:
    return [sys.executable, "-m", "scorer", command]


def _spawn(cmd: list[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own modules
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=Path.cwd()
        )


class Tail:
    """Reads a topic from the beginning as records arrive: progress and, kept, every output value.

    Progress is counted by reading, not from high watermarks: tansu's ListOffsets answers the base
    offset of the last record batch plus one, far below the real end when producers batch.
    """

    def __init__(self, brokers: str, topic: str, keep: bool = True, fetch_wait_ms: int = 10) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": brokers,
                "group.id": f"bench-tail-{time.monotonic_ns()}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": fetch_wait_ms,
            }
        )
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        self.keep = keep
        self.count = 0
        self.values: list[bytes] = []
        self.where: list[tuple[int, int]] = []  # (partition, offset) of each kept value

    def poll(self, timeout_s: float) -> int:
        """Read what has arrived (waiting up to timeout_s for the first record); returns the new count."""
        msgs = [m for m in self.consumer.consume(10_000, timeout_s) if not m.error()]
        self.count += len(msgs)
        if self.keep:
            self.values.extend(m.value() or b"" for m in msgs)
            self.where.extend((m.partition() or 0, m.offset() or 0) for m in msgs)
        return self.count

    def until(self, expected: int, timeout_s: float) -> int:
        """Read until `expected` records or until nothing new came for timeout_s."""
        idle_since = time.monotonic()
        while self.count < expected and time.monotonic() - idle_since < timeout_s:
            before = self.count
            if self.poll(0.5) > before:
                idle_since = time.monotonic()
        return self.count

    def close(self) -> None:
        self.consumer.close()


def decision_ids(values: Sequence[bytes]) -> list[str]:
    return [orjson.loads(v)["transaction_id"] for v in values]


def same_decisions(a: Sequence[bytes], b: Sequence[bytes], tolerance: float = 1e-5) -> dict[str, Any]:
    """Whether two implementations decided the same inputs alike: the equal-work check of a peer profile.

    Both must hold one decision per transaction id, the same ids, and scores within `tolerance` of each
    other (the features are computed by different code in float64 and rounded to float32, so a tree
    split may rarely see a last-bit difference; a real difference in the work shows as many). `ok` says
    whether every condition held; the counts say what differed.
    """
    scores: list[dict[str, float]] = []
    duplicates = 0
    for values in (a, b):
        docs = [orjson.loads(v) for v in values]
        by_id = {d["transaction_id"]: float(d["score"]) for d in docs}
        duplicates += len(docs) - len(by_id)
        scores.append(by_id)
    common = scores[0].keys() & scores[1].keys()
    diffs = {t: abs(scores[0][t] - scores[1][t]) for t in common}
    worst = max(diffs, key=diffs.__getitem__, default=None)
    result: dict[str, Any] = {
        "compared": len(common),
        "only_first": len(scores[0].keys() - common),
        "only_second": len(scores[1].keys() - common),
        "duplicates": duplicates,
        "over_tolerance": sum(d > tolerance for d in diffs.values()),
        "max_score_diff": diffs[worst] if worst is not None else 0.0,
        "worst_transaction": worst,
    }
    result["ok"] = bool(common) and not any(
        result[k] for k in ("only_first", "only_second", "duplicates", "over_tolerance")
    )
    return result


def passthrough_ids(values: Sequence[bytes]) -> list[str]:
    """'partition offset ts' -> 'partition:offset' (a fresh input topic holds offsets 0..high-1)."""
    return [b":".join(v.split(b" ", 2)[:2]).decode() for v in values]


def input_ms_of(kind: str) -> Callable[[Sequence[bytes]], npt.NDArray[np.int64]]:
    """How to read each output record's input produce time (the paced producer stamps events with it)."""

    def passthrough(values: Sequence[bytes]) -> npt.NDArray[np.int64]:
        return np.array([int(v.rsplit(b" ", 1)[1]) for v in values], dtype=np.int64)

    def decision(values: Sequence[bytes]) -> npt.NDArray[np.int64]:
        stamps = [orjson.loads(v)["timestamp"][:-1] for v in values]  # "...Z" as written by rfc3339_ms
        return np.array(stamps, dtype="datetime64[ms]").view(np.int64)

    return passthrough if kind == "passthrough" else decision


def histogram_quantile(
    bounds: Sequence[float], before: npt.NDArray[np.float64], after: npt.NDArray[np.float64], q: float
) -> float | None:
    """The upper bound of the bucket holding quantile q of what was observed between two scrapes."""
    delta = after - before
    if len(delta) == 0 or delta[-1] <= 0:
        return None
    return float(bounds[int(np.searchsorted(delta, q * delta[-1]))])
