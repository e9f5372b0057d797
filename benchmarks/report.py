"""Results as JSON (everything), a markdown table (for the README) and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def write(results: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    paths[0].write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    paths[1].write_text(markdown(results))
    png = out_dir / f"{stem}.png"
    if plot(results, png):
        paths.append(png)
    return paths


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"Run {r['started']} on {m['cpus']} x {m['cpu_model']}, {m['memory_gib']} GiB, Python {m['python']}, "
        f"librdkafka {m['librdkafka']}, onnxruntime {m['onnxruntime']}; broker: {r['broker']}. "
        f"Command: `{r['command']}`",
        "",
    ]
    sections = (
        ("Drain", _drain), ("Paced latency", _paced), ("State", _state), ("Memory over a stream", _memory),
        ("Stages", _stages), ("Serve", _serve), ("Store", _store), ("Soak", _soak),
    )  # fmt: skip
    for title, render in sections:
        if r.get(title.split()[0].lower()):
            lines += [f"### {title}", "", *render(r), ""]
    return "\n".join(lines)


def _drain(r: dict[str, Any]) -> list[str]:
    rows = r["drain"]["runs"]
    out = [
        f"{r['drain']['events']:,} events preloaded on 4 partitions (the naive and quix profiles: the first "
        f"{min((x['events'] for x in rows), default=0):,}); rates from the first output to the last.",
        "",
        "| implementation | events/s | events per CPU-s | vs passthrough | vs naive | vs quix | aggregator CPU-s | "
        "per CPU-s incl. aggregator | broker CPU-s | machine busy | exactly once |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    base = {x["profile"]: x.get("events_per_cpu_s", 0) for x in rows}
    for x in rows:
        if "error" in x:
            out.append(f"| {x['profile']} | {x['error']} ||||||||||||")
            continue
        pt, nv, qx = (base.get(p) or 0 for p in ("passthrough", "naive", "quix"))
        eff = x["events_per_cpu_s"]
        out.append(
            f"| {x['profile']} | {x['events_per_s']:,} | {eff:,} | {_pct(eff, pt)} | {_times(eff, nv)} | "
            f"{_times(eff, qx)} | "
            f"{x['aggregator_cpu_s']:.1f} | {x['events_per_cpu_s_with_aggregator']:,} | {x['broker_cpu_s']:.1f} | "
            f"{x['machine_busy_share']:.0%} | {'yes' if x['exactly_once'] else _faults(x)} |"
        )
    return out


def _pct(a: float, b: float) -> str:
    if not b:
        return "-"
    return f"{a / b:.1%}" if a / b < 0.1 else f"{a / b:.0%}"  # a per-event peer is well under 1%


def _times(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "-"


def _faults(x: dict[str, Any]) -> str:
    return f"NO: {x['duplicates']} duplicates, {x['missing']} missing, {x['unexpected']} unexpected"


def _paced(r: dict[str, Any]) -> list[str]:
    out = [
        "End to end: output create time minus input produce time. Added p99 = this p99 minus the "
        "passthrough's p99 at the same rate. The scorer's own view, from its histograms over the phase (bucket "
        "bounds): batch p99 = wall time to decode, score and hand a batch to the producer (in brackets: its CPU "
        "time; a wall time far above it is the process waiting for a core); produced p99 = "
        "handed to the producer minus the input's timestamp (the input hop and the batch, not the output hop).",
        "",
        "| implementation | rate/s | p50 ms | p99 ms | p99.9 ms | added p99 ms | batch p99 ms | produced p99 ms | "
        "max lag | CPU share | aggregator CPU | broker CPU | kept up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    base = {
        ph["rate"]: ph["p99_ms"]
        for x in r["paced"]["runs"]
        if x["profile"] == "passthrough"
        for ph in x.get("phases", [])
    }
    for x in r["paced"]["runs"]:
        if "error" in x:
            out.append(f"| {x['profile']} | {x['error']} ||||||||||||")
        for ph in x.get("phases", []):
            added = f"{ph['p99_ms'] - base[ph['rate']]:+.1f}" if ph["rate"] in base else "-"
            out.append(
                f"| {x['profile']} | {ph['rate']:,.0f} | {ph['p50_ms']:.1f} | {ph['p99_ms']:.1f} | "
                f"{ph['p999_ms']:.1f} | {added} | {_le(ph.get('batch_p99_le_ms'))}{_cpu(ph)} | "
                f"{_le(ph.get('produced_p99_le_ms'))} | {ph['max_lag']:,} | {ph['cpu_share']:.0%} | "
                f"{ph['aggregator_cpu_share']:.0%} | {ph['broker_cpu_share']:.0%} | {'yes' if ph['kept_up'] else 'no'} |"
            )
    return out


def _le(value: float | None) -> str:
    return "-" if value is None else f"<= {value:g}"


def _cpu(phase: dict[str, Any]) -> str:
    cpu = phase.get("batch_cpu_p99_le_ms")
    return "" if cpu is None else f" ({_le(cpu)})"


def _serve(r: dict[str, Any]) -> list[str]:
    sv = r["serve"]
    out = [
        f"Open-loop POST /v1/score at each rate for {sv['seconds']:.0f} s over {sv['connections']} keep-alive "
        "connections; latency from each request's scheduled send to its answer. Floor: serve + the passthrough "
        "echoing each request as its reply. Added p99 = this p99 minus the floor's at the same rate. Lost: not "
        "answered 200 by the stream; unequal: answer differs from the decisions topic's record.",
        "",
        "| system | rate/s | requests | p50 ms | p99 ms | p99.9 ms | added p99 ms | lost | unequal | "
        "CPU-s system | CPU-s serve | CPU-s broker |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in sv["runs"]:
        if "error" in x:
            out.append(f"| {x['system']} | {x['error']} |||||||||||")
        for ph in x.get("phases", []):
            cpu = ph["cpu_s"]
            out.append(
                f"| {x['system']} | {ph['rate']:,.0f} | {ph['requests']:,} | {ph['p50_ms']:.1f} | "
                f"{ph['p99_ms']:.1f} | {ph['p999_ms']:.1f} | {ph['added_p99_ms']:+.1f} | {ph['lost']:,} | "
                f"{ph.get('unequal', '-')} | {cpu['system']:.1f} | {cpu['serve']:.1f} | {cpu['broker']:.1f} |"
            )
    return out


def _store(r: dict[str, Any]) -> list[str]:
    st = r["store"]
    sc = st["scorer"]
    if "error" in sc:
        return [f"The scorer's drain failed: {sc['error']}"]
    out = [
        f"{st['events']:,} events: the scorer (`scorer run` + `scorer aggregate`) drained them at "
        f"**{sc['events_per_s']:,} decisions/s** ({sc['cpu_s']:.1f} CPU-s, broker {sc['broker_cpu_s']:.1f} CPU-s, "
        f"machine {sc['machine_busy_share']:.0%} busy; exactly once: {'yes' if sc['exactly_once'] else _faults(sc)}). "
        "Then, per phase, `scorer store` over that decisions topic into a fresh embedded PostgreSQL, from its first "
        "committed batch to its last. Store CPU: its process; database CPU: the postmaster and every backend "
        "and worker. Keeps up: events/s at least the scorer's decisions/s, on at most one core of its own.",
        "",
        "| phase | rows | rows/s | events/s | vs scorer | store cores (all processes) | store us/row | database cores | "
        "database us/row | machine busy | exactly once | keeps up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for x in st["phases"]:
        if "error" in x:
            out.append(f"| {x['phase']} | {x['error']} |||||||||||")
            continue
        once = "yes" if x["exactly_once"] else "NO: " + orjson.dumps(x["tables"]).decode()
        out.append(
            f"| {x['phase']} | {x['rows']:,} | {x['rows_per_s']:,} | {x['events_per_s']:,} | "
            f"{x['events_per_s'] / sc['events_per_s']:.0%} | {x['store_cores']:.2f} | {x['us_per_row_store']:.1f} | "
            f"{x['database_cores']:.2f} | {x['us_per_row_database']:.1f} | {x['machine_busy_share']:.0%} | {once} | "
            f"{'yes' if x['keeps_up'] else 'no'} |"
        )
    out += [
        "",
        *(
            f"- {x['phase']}: {x['description']} (1-minute load average before it: {x['load_average_1m_before']})"
            for x in st["phases"]
        ),
    ]
    return out


def _state(r: dict[str, Any]) -> list[str]:
    s = r["state"]
    out = ["| kind | keys | scorer_state_bytes per key | allocated per key (tracemalloc) | RSS per key |"]
    out.append("|---|---:|---:|---:|---:|")
    for kind in ("customer", "terminal"):
        a, b = s["rss"][kind], s["traced"][kind]
        out.append(
            f"| {kind} | {a['keys']:,} | {a['nbytes_per_key']:.0f} | {b['traced_bytes_per_key']:.0f} | "
            f"{a['rss_bytes_per_key']:.0f} |"
        )
    return out


def _memory(r: dict[str, Any]) -> list[str]:
    m = r["memory"]
    full = [x for x in m["samples"] if x["windows_full"]]
    out = [
        f"{m['events']:,} simulated events through the scorer's steps in one process (no broker); RSS sampled "
        f"every {m['samples'][0]['events']:,} events. {m['note']}.",
        "",
        f"After the windows are full: {m['events_after_full']:,} more events, state keys "
        f"{full[0]['state_keys']:,} -> {full[-1]['state_keys']:,}, RSS {m['rss_growth_after_full_bytes'] / 2**20:+.1f} MiB "
        f"({m['rss_growth_after_full']:+.2%})."
        if full
        else "The windows never filled: raise --memory-events.",
    ]
    return out


def _stages(r: dict[str, Any]) -> list[str]:
    tuned, default = r["stages"]["tuned"]["us_per_event"], r["stages"]["default"]["us_per_event"]
    blend = r["stages"].get("blend", {}).get("us_per_event", {})
    rules = r["stages"].get("rules", {}).get("us_per_event", {})
    out = [
        "Microseconds per event of each step of `scorer run`'s hot path, in-process, batches of 2,000 "
        "(`python -m benchmarks.stages`); the Kafka side is the passthrough's.",
        "",
        "| step | GC tuned (as shipped) | Python's default GC | two models, blend plan | 10,000 rule entries |",
        "|---|---:|---:|---:|---:|",
    ]
    nan = float("nan")
    out += [
        f"| {k} | {tuned[k]:.2f} | {default[k]:.2f} | {blend.get(k, nan):.2f} | {rules.get(k, nan):.2f} |"
        for k in tuned
    ]
    out.append(
        f"| **total** | **{sum(tuned.values()):.2f}** | **{sum(default.values()):.2f}** | "
        f"**{sum(blend.values()):.2f}** | **{sum(rules.values()):.2f}** |"
    )
    return out


def _soak(r: dict[str, Any]) -> list[str]:
    runs = r["soak"].get("runs", [r["soak"]])  # results before the passthrough run: one scorer run
    out = [
        "| profile | events/s | seconds | RSS growth after the windows filled | first fell 10 s behind | "
        "then: broker CPU | profile CPU | probe round trip |",
        "|---|---:|---:|---|---|---:|---:|---:|",
    ]
    for s in runs:
        growth = ", ".join(f"{k} {v:+.1%}" for k, v in s.get("rss_growth", {}).items()) or (
            "windows never full: the output stopped first" if s.get("stall") else s.get("error", "-")
        )
        stall = s.get("stall")
        where = f"at {stall['t']:.0f} s, {stall['scored']:,} of {stall['sent']:,} out" if stall else "never"
        busy = (
            f"{stall['broker_cpu']:.2f} | {stall['profile_cpu']:.2f} | {_ms(stall['probe_ms'])}"
            if stall else "- | - | -"
        )  # fmt: skip
        seconds = s["samples"][-1]["t"] if s.get("samples") else 0
        out.append(f"| {s['profile']} | {s['rate']:,.0f} | {seconds:.0f} | {growth} | {where} | {busy} |")
    return out


def _ms(value: float | None) -> str:
    return "> 5 s" if value is None else f"{value:,.0f} ms"


def plot(r: dict[str, Any], path: Path) -> bool:
    """Throughput bars and latency percentiles against rate; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    runs = [x for x in r.get("drain", {}).get("runs", []) if "error" not in x]
    names = [x["profile"] for x in runs]
    left.bar(names, [x["events_per_cpu_s"] for x in runs], color="tab:blue", label="events per CPU-s")
    left.bar(names, [x["events_per_s"] for x in runs], color="tab:orange", width=0.4, label="events/s (wall)")
    left.set_title(f"Drain, {r.get('drain', {}).get('events', 0):,} events")
    left.legend()
    left.tick_params(axis="x", rotation=20)
    for x in r.get("paced", {}).get("runs", []):
        phases = x.get("phases", [])
        for key, style in (("p50_ms", ":"), ("p99_ms", "-"), ("p999_ms", "--")):
            right.plot(
                [p["rate"] for p in phases],
                [p[key] for p in phases],
                style,
                marker="o",
                label=f"{x['profile']} {key[:-3]}",
            )
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("events/s")
    right.set_ylabel("end-to-end latency, ms")
    right.set_title("Paced latency")
    if right.get_lines():
        right.legend(fontsize=7, ncol=2)
    fig.suptitle(f"scorer benchmark, {r['started']}, {r['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
