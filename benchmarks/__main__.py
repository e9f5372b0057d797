"""`python -m benchmarks`: every workload through every implementation on one fresh embedded broker."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import confluent_kafka
import onnxruntime
import orjson

from benchmarks import report
from benchmarks.drain import drain, expected_ids, preload
from benchmarks.harness import Launcher, Profile
from benchmarks.paced import Events, paced
from benchmarks.serve import serve_workload
from benchmarks.soak import soak
from benchmarks.store import DEFAULT_PHASES, PHASES, store_workload
from scorer.config import DEFAULT_MODEL
from scorer.demo.broker import EmbeddedBroker
from scorer.training.simulate import SimulatedData, SimulationParams, simulate

EVENTS_PER_DAY = 9_000  # a little under the default simulation's, so a run never runs out of events
PROFILES = {
    "passthrough": Profile("passthrough", "passthrough", description="consume + produce, no parsing"),
    "naive": Profile(
        "naive", "naive", description="per-event json.loads, Python features, 1 ONNX call/event"
    ),
    "quix": Profile(
        "quix",
        "quix",
        description="Quix Streams app: per-message stateful apply (RocksDB), naive's features, 1 ONNX call/event",
    ),
    "scorer": Profile("scorer", "scorer", description="scorer run + aggregate, default settings"),
    "scorer-tuned": Profile(
        "scorer-tuned", "scorer", {"SCORER_BATCH_MAX": "5000"}, description="scorer, 5,000-record batches"
    ),
    "scorer-solo": Profile(
        "scorer-solo",
        "scorer",
        aggregator=False,
        description="scorer without the aggregator's broker traffic",
    ),
    "scorer-nowait": Profile(
        "scorer-nowait",
        "scorer",
        {"SCORER_BATCH_WAIT_S": "0"},
        description="scorer, batch_wait_s = 0: a batch is what has arrived, never waited for",
    ),
    "scorer-solo-nowait": Profile(
        "scorer-solo-nowait",
        "scorer",
        {"SCORER_BATCH_WAIT_S": "0"},
        aggregator=False,
        description="scorer-solo with batch_wait_s = 0",
    ),
    "scorer-x2": Profile("scorer-x2", "scorer", scorers=2, description="two scorer processes in one group"),
    "scorer-eos": Profile(
        "scorer-eos",
        "scorer",
        {"SCORER_PROCESSING_GUARANTEE": "exactly_once"},
        aggregator=False,
        description="scorer-solo in exactly_once mode: a Kafka transaction per input partition per second",
    ),
}
WORKLOADS = ("drain", "scaleout", "paced", "state", "memory", "stages", "serve", "store", "soak")
DEFAULT_WORKLOADS = (
    "drain,scaleout,paced,state,memory,stages,serve,store"  # soak: tansu cannot sustain it (README)
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--events", type=int, default=1_000_000, help="drain: events preloaded on 4 partitions")
    p.add_argument(
        "--naive-events", type=int, default=100_000, help="drain: events for the naive and quix profiles"
    )
    p.add_argument("--rates", default="1000,5000,20000", help="paced: events/s, comma separated")
    p.add_argument("--paced-seconds", type=float, default=15.0, help="paced: seconds per rate")
    p.add_argument("--state-customers", type=int, default=1_000_000)
    p.add_argument("--state-terminals", type=int, default=100_000)
    p.add_argument("--memory-events", type=int, default=1_200_000, help="memory: events streamed in-process")
    p.add_argument("--soak-seconds", type=float, default=600.0, help="soak: how long to stream")
    p.add_argument("--soak-rate", type=float, default=500.0, help="soak: events/s")
    p.add_argument("--serve-rates", default="200,1000", help="serve: HTTP requests/s, comma separated")
    p.add_argument("--serve-seconds", type=float, default=15.0, help="serve: seconds per rate")
    p.add_argument(
        "--store-phases", default=DEFAULT_PHASES, help=f"store: any of {', '.join(PHASES)}, comma separated"
    )
    p.add_argument("--workloads", default=DEFAULT_WORKLOADS, help=f"any of {', '.join(WORKLOADS)}")
    p.add_argument(
        "--profiles",
        default="passthrough,naive,scorer,scorer-solo,scorer-eos",
        help=f"any of {', '.join(PROFILES)}",
    )
    p.add_argument("--fetch-wait-ms", type=int, default=5, help="fetch.wait.max.ms of every consumer")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--stem", default="latest", help="output file names: <out>/<stem>.{json,md,png}")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds any one drain may take")
    return p.parse_args(argv)


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?"
    )
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 2**20),
        "python": platform.python_version(),
        "librdkafka": confluent_kafka.libversion()[0],
        "confluent_kafka": confluent_kafka.version()[0],
        "onnxruntime": onnxruntime.__version__,
    }


def history(events: int) -> SimulatedData:
    """Enough simulated history for the largest workload (default size when that suffices)."""
    days = max(SimulationParams().days, math.ceil(events / EVENTS_PER_DAY) + 1)
    return simulate(SimulationParams(days=days))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    profiles = [PROFILES[p] for p in args.profiles.split(",") if p]
    rates = [float(r) for r in args.rates.split(",") if r]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        sys.stderr.write(f"unknown workloads {unknown}; choose from {WORKLOADS}\n")
        return 2
    unknown = [p for p in args.store_phases.split(",") if p and p not in PHASES]
    if unknown:
        sys.stderr.write(f"unknown store phases {unknown}; choose from {tuple(PHASES)}\n")
        return 2
    paced_events = int(sum(rates) * args.paced_seconds * 1.2) + 1000
    data = history(max(args.events, paced_events))
    results: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "broker": "tansu (embedded, in-memory), same machine",
        "fetch_wait_max_ms": args.fetch_wait_ms,
    }
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        run_workloads(args, workloads, profiles, rates, data, Path(tmp), results)
    paths = report.write(results, args.out, args.stem)
    sys.stdout.write(report.markdown(results) + "\n\nwrote " + ", ".join(map(str, paths)) + "\n")
    return 0 if ok(results) else 1


@contextlib.contextmanager
def fresh_broker(args: argparse.Namespace, workdir: Path, name: str) -> Iterator[tuple[Launcher, int]]:
    """A new embedded broker per workload: tansu keeps every record in memory and slows as it fills."""
    with EmbeddedBroker(log_path=workdir / f"tansu-{name}.log") as broker:
        yield Launcher(broker.bootstrap, args.model, workdir, args.fetch_wait_ms), broker.pid


def run_workloads(
    args: argparse.Namespace,
    workloads: list[str],
    profiles: list[Profile],
    rates: list[float],
    data: SimulatedData,
    workdir: Path,
    results: dict[str, Any],
) -> None:
    if "drain" in workloads or "scaleout" in workloads:
        with fresh_broker(args, workdir, "drain") as (launcher, broker_pid):
            runs = drain_runs(args, workloads, profiles, data, launcher, broker_pid)
        results["drain"] = {"events": args.events, "runs": runs}
    if "paced" in workloads:
        events = Events(data, int(sum(rates) * args.paced_seconds * 1.2) + 1000)
        results["paced"] = {"seconds": args.paced_seconds, "runs": []}
        for profile in (p for p in profiles if p.scorers == 1):
            run: dict[str, Any] = {"profile": profile.name, "phases": []}
            for rate in rates:  # a fresh broker per rate: tansu slows down as its topics fill
                with fresh_broker(args, workdir, f"paced-{profile.name}-{rate:.0f}") as (launcher, pid):
                    one = paced(launcher, profile, events, [rate], args.paced_seconds, pid)
                run["phases"] += one.get("phases", [])
                run.update({k: v for k, v in one.items() if k not in ("profile", "phases")})
                if "error" in one or not one["phases"][-1]["kept_up"]:
                    break  # higher rates would only queue more
            results["paced"]["runs"].append(run)
            _progress("paced", run)
    if "state" in workloads:
        results["state"] = {kind: state_process(args, kind == "traced") for kind in ("rss", "traced")}
        _progress("state", results["state"])
    if "memory" in workloads:
        results["memory"] = child(["benchmarks.stages", "--memory", "--events", str(args.memory_events)])
        _progress("memory", {k: v for k, v in results["memory"].items() if k != "samples"})
    if "stages" in workloads:
        variants = {
            "tuned": [],
            "default": ["--default-gc"],
            "blend": ["--blend"],
            "rules": ["--rules", "10000"],
        }
        results["stages"] = {k: child(["benchmarks.stages", "--json", *v]) for k, v in variants.items()}
        _progress("stages", results["stages"])
    if "serve" in workloads:
        serve_rates = [float(r) for r in args.serve_rates.split(",") if r]
        events = Events(data, int(sum(serve_rates) * args.serve_seconds * 1.2) + 2000)
        brokers = functools.partial(fresh_broker, args, workdir)
        results["serve"] = serve_workload(brokers, events, serve_rates, args.serve_seconds)
        _progress("serve", results["serve"])
    if "store" in workloads:  # the scorer's drain, then `scorer store` over its decisions into PostgreSQL
        phases = [PHASES[p] for p in args.store_phases.split(",") if p]
        with fresh_broker(args, workdir, "store") as (launcher, broker_pid):
            ids = preload(launcher.brokers, "store-transactions", data, args.events)
            results["store"] = store_workload(
                launcher, broker_pid, "store-transactions", ids, phases, workdir, args.timeout
            )
        _progress("store", results["store"])
    if "soak" in workloads:  # each profile on its own broker: is a stall the profile's or the broker's?
        results["soak"] = {"runs": []}
        for profile in (p for p in profiles if p.kind in ("passthrough", "scorer") and p.scorers == 1):
            with fresh_broker(args, workdir, f"soak-{profile.name}") as (launcher, pid):
                run = soak(launcher, profile, args.soak_rate, args.soak_seconds, pid)
            results["soak"]["runs"].append(run)
            _progress("soak", {k: v for k, v in run.items() if k != "samples"})


def drain_runs(
    args: argparse.Namespace,
    workloads: list[str],
    profiles: list[Profile],
    data: SimulatedData,
    launcher: Launcher,
    broker_pid: int,
) -> list[dict[str, Any]]:
    """Each profile over the preloaded topic; the per-event ones (naive, quix) over their own, shorter topic."""
    ids = preload(launcher.brokers, "drain-transactions", data, args.events)
    chosen = [p for p in profiles if "drain" in workloads]
    if "scaleout" in workloads:
        chosen += [PROFILES["scorer"]] if PROFILES["scorer"] not in chosen else []
        chosen.append(PROFILES["scorer-x2"])
    runs = []
    for profile in chosen:
        topic, topic_ids = "drain-transactions", ids
        if profile.kind in ("naive", "quix") and args.naive_events < args.events:
            topic = (
                f"drain-{profile.kind}"  # one topic each: preloading one twice would hold every event twice
            )
            topic_ids = preload(launcher.brokers, topic, data, args.naive_events)
        expected = expected_ids(profile.kind, topic_ids, launcher.brokers, topic)
        runs.append(drain(launcher, profile, topic, expected, broker_pid, args.timeout))
        _progress("drain", runs[-1])
    return runs


def state_process(args: argparse.Namespace, trace: bool) -> dict[str, Any]:
    """The state workload in a fresh process, so its RSS is the state's."""
    cmd = [
        "benchmarks.state",
        "--customers",
        str(args.state_customers),
        "--terminals",
        str(args.state_terminals),
    ]
    return child([*cmd, *(["--trace"] if trace else [])])


def child(module_args: list[str]) -> dict[str, Any]:
    """Run `python -m <module> <args>` in a fresh process (its own RSS and GC) and parse its JSON output."""
    done = subprocess.run([sys.executable, "-m", *module_args], capture_output=True, check=True)  # noqa: S603
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


def _progress(workload: str, result: Any) -> None:
    sys.stderr.write(f"[{workload}] {orjson.dumps(result).decode()[:600]}\n")


def ok(results: dict[str, Any]) -> bool:
    """Every run finished and every drain output was exactly once."""
    runs = results.get("drain", {}).get("runs", []) + results.get("paced", {}).get("runs", [])
    runs += results.get("serve", {}).get("runs", [])
    store = results.get("store", {})
    runs += ([store["scorer"]] if "scorer" in store else []) + store.get("phases", [])
    return all("error" not in r and r.get("exactly_once", True) for r in runs) and "error" not in results.get(
        "soak", {}
    )


if __name__ == "__main__":
    sys.exit(main())
