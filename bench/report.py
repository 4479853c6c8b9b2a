#!/usr/bin/env python3
"""Writes docs/performance.md and its chart from a bench/run.sh results directory.

Usage: bench/report.py RESULTS_DIR OUT.md OUT.svg

RESULTS_DIR holds machine.json and one <system>-<scenario>.json per run of
hubbub-bench. The hand-written parts that do not come from a run (what profiling
found) live in bench/profiling.md and are copied in. Standard library only.
"""

import html
import json
import os
import sys
from pathlib import Path

SYSTEMS = [
    ("hubbub", "hubbub, one node"),
    ("hubbub-mem", "hubbub, one node, storage in memory"),
    ("node-ws", "Node ws, one process"),
    ("socketio-1", "socket.io 4, one process"),
    ("floor", "Rust floor"),
    ("hubbub-2", "hubbub, two-node cluster"),
    ("socketio-2", "socket.io 4, two processes + Redis"),
    ("hubbub-3", "hubbub, three-node cluster"),
    ("hubbub-sio", "hubbub Socket.IO, one node"),
    ("socketioxide", "socketioxide, one process"),
    ("hubbub-sio-2", "hubbub Socket.IO, two-node cluster"),
]
# The hubbub systems: what their room logs are kept in, and how many nodes they have.
STORAGE = {"hubbub": "durable", "hubbub-mem": "memory", "hubbub-2": "durable", "hubbub-3": "durable",
           "hubbub-sio": "durable", "hubbub-sio-2": "durable"}
NODES = {"hubbub": 1, "hubbub-mem": 1, "hubbub-2": 2, "hubbub-3": 3, "hubbub-sio": 1, "hubbub-sio-2": 2}
# The Socket.IO comparison (its own section): every system here is spoken to in
# Socket.IO v5 over WebSocket by the same load generator. (system, nodes or processes)
SOCKETIO = [("hubbub-sio", 1), ("socketio-1", 1), ("socketioxide", 1),
            ("hubbub-sio-2", 2), ("socketio-2", 2)]
NAMES = dict(SYSTEMS)
COLOURS = {
    "hubbub": "#e8710a",
    "hubbub-mem": "#c25400",
    "hubbub-2": "#f5a55a",
    "hubbub-3": "#fbd0a8",
    "node-ws": "#4a7fb5",
    "socketio-1": "#6aa84f",
    "socketio-2": "#a3cf8f",
    "floor": "#888888",
    "hubbub-sio": "#b04a8c",
    "hubbub-sio-2": "#d98cbd",
    "socketioxide": "#7a5cc2",
}
KIB = 1024


def load(results):
    """The runs of a results directory, by (system, scenario); a file named
    <system>-<scenario>.2.json is the second pass of the same scenario (run.sh repeats
    the fan-out ramps) and goes to the repeats."""
    runs, repeats = {}, {}
    for path in sorted(Path(results).glob("*.json")):
        if path.name == "machine.json":
            continue
        data = json.loads(path.read_text())
        into = repeats if path.stem.endswith(".2") else runs
        into[(data["label"], data["scenario"])] = data
    machine = json.loads((Path(results) / "machine.json").read_text())
    return machine, runs, repeats


def ms(v):
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def rate(v):
    return f"{v:,.0f}" if v is not None else "—"


def command(run):
    """The hubbub-bench command line that produced a run."""
    parts = ["target/release/hubbub-bench", "--protocol", run["protocol"],
             "--url", ",".join(run["urls"]), run["scenario"]]
    for key, value in run["params"].items():
        flag = "--" + key.replace("_", "-")
        if key == "pids":
            for _ in value:
                parts += ["--pid", "PID"]
            continue
        if value is None or value is False:
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, ",".join(str(v) for v in value)]
        else:
            parts += [flag, str(value)]
    return " ".join(parts)


def fanout_best(runs, system):
    run = runs.get((system, "fanout"))
    if not run:
        return None, None
    result = run["result"]
    return result.get("max_rate_held"), result.get("best")


# Left out of the "same load for every system" rate: three nodes on a machine's shared
# cores hold far less, and would pull that rate (and the comparison at it) down to the
# ramp's first step for everyone.
NOT_IN_COMMON_RATE = {"hubbub-3"}


def common_rate(runs):
    """The highest rate every system's ramp ran and held (but NOT_IN_COMMON_RATE's): the
    same load for all."""
    held_sets = []
    for key, _ in SYSTEMS:
        if key in NOT_IN_COMMON_RATE:
            continue
        run = runs.get((key, "fanout"))
        if run:
            held_sets.append({round(s["rate"]) for s in run["result"]["steps"] if s["held"]})
    common = set.intersection(*held_sets) if held_sets else set()
    return max(common) if common else None


def step_at(run, rate):
    return next((s for s in run["result"]["steps"] if round(s["rate"]) == rate), None)


def step_verdict(step, bound):
    if step["held"]:
        return "held"
    why = []
    if step["lost"]:
        why.append(f"{step['lost']:,} lost")
    if step["errors"]:
        kinds = sorted(step["errors"].items(), key=lambda kv: -kv[1])
        why.append(f"{sum(step['errors'].values()):,} errors (" +
                   ", ".join(f"{k} ×{v}" for k, v in kinds[:2]) + (", …" if len(kinds) > 2 else "") + ")")
    if step["out_of_order"]:
        why.append(f"{step['out_of_order']} out of order")
    if step["latency"]["p99_ms"] > bound:
        why.append(f"p99 {ms(step['latency']['p99_ms'])} ms")
    return "did not hold: " + ", ".join(why)


def fanout_ratio(runs, repeats, ours_key, theirs_key, factor=None):
    """Highest fan-out rate held by ours against theirs, in each ramp both ran: the
    measured text and, with a target factor, the verdict (None when not measured)."""
    passes = []
    for which in (runs, repeats):
        ours, _ = fanout_best(which, ours_key)
        theirs, _ = fanout_best(which, theirs_key)
        if (ours_key, "fanout") in which and (theirs_key, "fanout") in which:
            passes.append((ours, theirs))
    if not passes:
        return None, None
    texts, verdicts = [], []
    for n, (ours, theirs) in enumerate(passes):
        prefix = "" if n == 0 else "second ramp: "
        if ours is None or theirs is None:
            texts.append(prefix + "no rate held by " +
                         (NAMES[ours_key] if ours is None else NAMES[theirs_key]))
            verdicts.append(ours is not None)
            continue
        texts.append(f"{prefix}{rate(ours)} vs {rate(theirs)} msg/s: {ours / theirs:.2f}×")
        verdicts.append(factor is not None and ours >= theirs * factor)
    if factor is None:
        verdict = None
    elif all(verdicts):
        verdict = "met" if len(verdicts) == 1 else "met in both ramps"
    elif any(verdicts):
        verdict = f"**met in {sum(verdicts)} of {len(verdicts)} ramps**"
    else:
        verdict = "**missed**"
    return "; ".join(texts), verdict


def targets(runs, repeats):
    rows = []

    def compare(label, ours_key, theirs_key, factor):
        measured, verdict = fanout_ratio(runs, repeats, ours_key, theirs_key, factor)
        rows.append((label, measured or "not measured", verdict or "—"))

    compare("one hubbub node ≥ Node ws (fan-out, p99 < 50 ms, no loss)", "hubbub", "node-ws", 1)
    compare("one hubbub node ≥ 2× socket.io, one process", "hubbub", "socketio-1", 2)
    compare("two-node hubbub ≥ 3× socket.io, two processes + Redis", "hubbub-2", "socketio-2", 3)
    compare("one hubbub node ≥ 50 % of the Rust floor", "hubbub", "floor", 0.5)
    compare("Socket.IO: one hubbub node ≥ 5× socket.io, one process", "hubbub-sio", "socketio-1", 5)
    compare("Socket.IO: two-node hubbub ≥ 3× socket.io, two processes + Redis",
            "hubbub-sio-2", "socketio-2", 3)

    idle = runs.get(("hubbub", "idle"))
    if idle and idle["result"].get("rss_per_connection_bytes") is not None:
        r = idle["result"]
        per = r["rss_per_connection_bytes"] / KIB
        full = r["connected"] >= 10_000 and r["failed"] == 0
        rows.append(("idle: ≤ 16 KiB resident per connection at 10,000 connections",
                     f"{per:.1f} KiB at {r['connected']:,} connections",
                     ("met" if per <= 16 else "**missed**") if full else "not measured at 10,000"))
    else:
        rows.append(("idle: ≤ 16 KiB resident per connection at 10,000 connections", "not measured", "—"))

    for key in ("hubbub-2", "hubbub-3"):
        eff = runs.get((key, "efficiency"))
        label = (f"{NAMES[key]}: at most one `raft_append` per broadcast to each other node, "
                 f"whatever the members")
        if not eff:
            if key == "hubbub-2":
                rows.append((label, "not measured", "—"))
            continue
        if eff["result"]["metric"] != "available":
            rows.append((label, "metric not available (hubbub_cluster_messages_total)", "—"))
            continue
        cases = eff["result"]["cases"]
        shown = "; ".join(
            f"{c['members']} members: {c['broadcast_messages_per_broadcast']:.2f} (target {c['expected_per_broadcast']})"
            for c in cases)
        rows.append((label, shown, "met" if all(c["met"] for c in cases) else "**missed**"))

    acks = [(key, run) for key, _ in SYSTEMS for run in [runs.get((key, "ack"))] if run]
    label = "ack: every publish acknowledged in time, at every rate (hubbub systems)"
    if acks:
        steps = [(key, s) for key, run in acks for s in run["result"]["steps"]]
        failed = sum(s["failed"] for _, s in steps)
        sent = sum(s["sent"] for _, s in steps)
        who = sorted({NAMES[key] for key, s in steps if s["failed"]})
        rows.append((label,
                     f"{sent - failed:,} of {sent:,} acknowledged over {len(steps)} steps" +
                     (f"; failures on {', '.join(who)}" if who else ""),
                     "met" if failed == 0 else "**missed**"))
    else:
        rows.append((label, "not measured", "—"))
    return rows


def storage_section(w, runs, repeats):
    """Fan-out of one node with durable room logs against the same node with them in
    memory, from the same run."""
    pair = [key for key in ("hubbub", "hubbub-mem") if (key, "fanout") in runs]
    w("## Fan-out, storage on vs off\n")
    if len(pair) < 2:
        w("Not measured in this run (it needs the systems `hubbub` and `hubbub-mem`).\n")
        return
    w("One hubbub node with its room logs durable (`storage.fsync = \"always\"`, the "
      "default: every publish waits for an fsync, publishes waiting at the same time "
      "share one) and the same node with `storage.engine = \"memory\"`, through the same "
      "fan-out ramp in the same run.\n")
    both = [{round(s["rate"]) for s in runs[(key, "fanout")]["result"]["steps"] if s["held"]} for key in pair]
    same = max(both[0] & both[1]) if both[0] & both[1] else None
    head = "| system | storage | highest rate held (msg/s) | second ramp | deliveries/s | p99 ms at best |"
    rule = "|---|---|---:|---:|---:|---:|"
    if same:
        head += f" at {same:,} msg/s (held by both): p50 ms | p99 ms | server CPU µs per delivery |"
        rule += "---:|---:|---:|"
    w(head)
    w(rule)
    for key in pair:
        run = runs[(key, "fanout")]
        r = run["result"]
        best = r.get("best")
        again = repeats.get((key, "fanout"))
        again_text = (rate(again["result"]["max_rate_held"]) if again and again["result"]["max_rate_held"]
                      else ("none held" if again else "—"))
        storage = ("durable, fsync `always`" if STORAGE[key] == "durable" else "memory")
        row = (f"| {NAMES[key]} | {storage} | {rate(r['max_rate_held']) if best else 'none held'} | {again_text} | "
               f"{rate(best['deliveries_per_s']) if best else '—'} | {ms(best['latency']['p99_ms']) if best else '—'} |")
        if same:
            at = step_at(run, same)
            server = at.get("server")
            row += (f" {ms(at['latency']['p50_ms'])} | {ms(at['latency']['p99_ms'])} | "
                    f"{server['cpu_us_per_delivery']:.1f} |" if server else
                    f" {ms(at['latency']['p50_ms'])} | {ms(at['latency']['p99_ms'])} | — |")
        w(row)
    w("")
    ratios = []
    for which, name in ((runs, "first ramps"), (repeats, "second ramps")):
        on, _ = fanout_best(which, "hubbub")
        off, _ = fanout_best(which, "hubbub-mem")
        if on and off:
            ratios.append(f"{off / on:.2f}× ({name})")
    if ratios:
        w(f"Highest rate held, storage off against storage on: {', '.join(ratios)}. Above 1, "
          f"the disk costs fan-out; read it against how far two ramps of one system land "
          f"apart (above).\n")


def ack_section(w, runs):
    """Publish-to-acknowledgement latency at fixed rates, per hubbub system."""
    w("## Publish-to-ack latency\n")
    acks = [(key, runs[(key, "ack")]) for key, _ in SYSTEMS if (key, "ack") in runs]
    if not acks:
        w("Not measured in this run.\n")
        return
    p = acks[0][1]["params"]
    w(f"{p['publishers']} publishers spread round robin over the nodes, in {p['rooms']} rooms, "
      f"{p['duration']:g} s per rate, {p['size']}-byte contents; the time from sending a "
      f"publish to its reply, which comes once the message is committed (on a cluster: "
      f"held by a majority of its shard's voters). A publish with no reply within "
      f"{acks[0][1]['result']['reply_timeout_ms'] / 1000:g} s of its step's end counts as a "
      f"timeout; failed = due and not acknowledged.\n")
    w("| system | nodes | storage | rate (msg/s) | sent | acked | p50 ms | p90 ms | p99 ms | max ms | "
      "at the leader: p50 / p99 ms | forwarded: p50 / p99 ms | errors |")
    w("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for key, run in acks:
        for s in run["result"]["steps"]:
            lat = s["latency"]
            at, fw = s.get("latency_at_leader"), s.get("latency_forwarded")
            split = lambda l: f"{ms(l['p50_ms'])} / {ms(l['p99_ms'])} ({l['count']:,})" if l and l["count"] else "—"
            if s["failed"] or s["errors"]:
                kinds = ", ".join(f"{k} ×{v}" for k, v in sorted(s["errors"].items(), key=lambda kv: -kv[1]))
                errors = (f"{s['failed']:,} failed ({s['refused']:,} refused, {s['timeouts']:,} timeouts)"
                          + (f"; {kinds}" if kinds else ""))
            else:
                errors = "none"
            w(f"| {NAMES[key]} | {NODES.get(key, run['result']['nodes'])} | {STORAGE.get(key, '—')} | "
              f"{rate(s['rate'])} | {s['sent']:,} | {s['acked']:,} | {ms(lat['p50_ms'])} | {ms(lat['p90_ms'])} | "
              f"{ms(lat['p99_ms'])} | {ms(lat['max_ms'])} | {split(at)} | {split(fw)} | {errors} |")
    w("")
    one, three = runs.get(("hubbub", "ack")), runs.get(("hubbub-3", "ack"))
    if one and three:
        lines = []
        for s3 in three["result"]["steps"]:
            s1 = next((s for s in one["result"]["steps"] if round(s["rate"]) == round(s3["rate"])), None)
            if s1 and s1["latency"]["count"] and s3["latency"]["count"]:
                lines.append(f"at {rate(s3['rate'])} msg/s, p50 {ms(s1['latency']['p50_ms'])} → "
                             f"{ms(s3['latency']['p50_ms'])} ms and p99 {ms(s1['latency']['p99_ms'])} → "
                             f"{ms(s3['latency']['p99_ms'])} ms")
        if lines:
            w("Raft across three nodes against one node (both durable): " + "; ".join(lines) + ".\n")
    lag = max((s["send_lag"]["p99_ms"] for _, run in acks for s in run["result"]["steps"]), default=0)
    w(f"The load generator sent on schedule within {ms(lag)} ms at p99 in every step (its own "
      f"lag, not in the latencies above).\n")


def socketio_section(w, runs, repeats, bound):
    """hubbub's Socket.IO endpoint against socket.io 4 and socketioxide: the same load
    generator speaking Socket.IO v5 over WebSocket to each, the same scenarios."""
    w("## Socket.IO\n")
    shown = [(key, n) for key, n in SOCKETIO
             if any((key, sc) in runs for sc in ("fanout", "idle", "churn"))]
    if not shown:
        w("Not measured in this run (it needs the systems `hubbub-sio`, `socketio-1`, "
          "`socketioxide`, `hubbub-sio-2` and `socketio-2`: "
          "`BENCH_SYSTEMS=socketio bench/run.sh`).\n")
        return
    w("hubbub's Socket.IO endpoint ([socketio.md](socketio.md)) against socket.io 4 (one "
      "process, and two behind `@socket.io/redis-adapter` on Redis) and socketioxide (the "
      "Rust Socket.IO server, one process), all spoken to by the same load generator in "
      "Socket.IO v5 over WebSocket (`--protocol socketio`): `join`, `leave` and `publish` "
      "events with acks, `message` events to every member of the room. `hubbub-sio` and "
      "`hubbub-sio-2` are the nodes of `hubbub` and `hubbub-2` (durable room logs); "
      "Socket.IO has no order across processes, so no system's `seq` is checked here. "
      "The fan-out, idle and churn scenarios and their sizes are the ones above.\n")
    w(f"| system | nodes / processes | highest rate held (msg/s) | second ramp | deliveries/s | "
      f"p99 ms at best | idle: per connection | churn: completed/s |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, n in shown:
        run = runs.get((key, "fanout"))
        best = run and run["result"].get("best")
        again = repeats.get((key, "fanout"))
        again_text = (rate(again["result"]["max_rate_held"]) if again and again["result"]["max_rate_held"]
                      else ("none held" if again else "—"))
        held = (rate(run["result"]["max_rate_held"]) if best else "none held") if run else "—"
        idle = runs.get((key, "idle"))
        per = idle and idle["result"].get("rss_per_connection_bytes")
        idle_text = (f"{per / KIB:.1f} KiB ({idle['result']['connected']:,} open)" if per is not None and idle
                     else "—")
        churn = runs.get((key, "churn"))
        churn_text = rate(churn["result"]["cycles_per_s"]) if churn else "—"
        w(f"| {NAMES[key]} | {n} | {held} | {again_text} | "
          f"{rate(best['deliveries_per_s']) if best else '—'} | {ms(best['latency']['p99_ms']) if best else '—'} | "
          f"{idle_text} | {churn_text} |")
    w("")
    w(f"Fan-out: highest rate held (p99 ≤ {bound:g} ms, nothing lost, no error), hubbub's "
      f"Socket.IO endpoint against each:\n")
    w("| comparison | target | measured | |\n|---|---|---|---|")
    for label, ours, theirs, factor in (
            ("one node against socket.io 4, one process", "hubbub-sio", "socketio-1", 5),
            ("two nodes against socket.io 4, two processes + Redis", "hubbub-sio-2", "socketio-2", 3),
            ("one node against socketioxide, one process", "hubbub-sio", "socketioxide", None),
            ("Socket.IO against protocol v1 on the same node (hubbub-sio / hubbub)", "hubbub-sio", "hubbub", None)):
        measured, verdict = fanout_ratio(runs, repeats, ours, theirs, factor)
        w(f"| {label} | {f'≥ {factor}×' if factor else 'none'} | {measured or 'not measured'} | "
          f"{verdict or '—'} |")
    w("")
    ours = runs.get(("hubbub-sio", "idle"))
    ours_per = ours and ours["result"].get("rss_per_connection_bytes")
    lines = []
    for theirs_key in ("socketio-1", "socketioxide"):
        theirs = runs.get((theirs_key, "idle"))
        theirs_per = theirs and theirs["result"].get("rss_per_connection_bytes")
        if ours_per and theirs_per:
            lines.append(f"{ours_per / KIB:.1f} KiB against {theirs_per / KIB:.1f} KiB for "
                         f"{NAMES[theirs_key]} (theirs / ours: {theirs_per / ours_per:.2f}×)")
    if lines:
        w("Idle memory per Socket.IO connection, hubbub's endpoint on one node: "
          + "; ".join(lines) + ". (No two-process idle run: it would count Redis.)\n")
    else:
        w("Idle memory per Socket.IO connection: not measured for both sides in this run.\n")


def chart(runs, path):
    same = common_rate(runs)
    data = []
    for key, name in SYSTEMS:
        run = runs.get((key, "fanout"))
        if not run:
            continue
        held, _ = fanout_best(runs, key)
        at = step_at(run, same) if same else None
        data.append((key, name, held or 0, at["latency"]["p99_ms"] if at else 0))
    if not data:
        Path(path).write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>\n')
        return
    row, top, left, panel = 30, 50, 250, 300
    height = top + row * len(data) + 40
    width = left + 2 * panel + 200
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="13">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    panels = [
        ("Highest fan-out rate that held (messages/s)", 2, lambda v: f"{v:,.0f}"),
        (f"p99 latency at {same:,} messages/s, all systems (ms)" if same else "p99 latency (ms)",
         3, lambda v: f"{v:.1f}"),
    ]
    for p, (title, index, fmt) in enumerate(panels):
        x0 = left + p * (panel + 60)
        biggest = max(max(d[index] for d in data), 1e-9)
        out.append(f'<text x="{x0}" y="{top - 20}" font-weight="bold">{html.escape(title)}</text>')
        for i, d in enumerate(data):
            y = top + i * row
            w = panel * d[index] / biggest
            out.append(f'<rect x="{x0}" y="{y}" width="{w:.1f}" height="{row - 8}" fill="{COLOURS[d[0]]}"/>')
            label = fmt(d[index]) if d[index] else "—"
            out.append(f'<text x="{x0 + w + 4:.1f}" y="{y + row - 13}">{label}</text>')
    for i, d in enumerate(data):
        y = top + i * row
        out.append(f'<text x="{left - 10}" y="{y + row - 13}" text-anchor="end">{html.escape(d[1])}</text>')
    out.append(f'<text x="{left}" y="{height - 12}" fill="#555">Same machine, same run, same load '
               f'generator; p99 bound {50} ms, no loss. Source: bench/results/*-fanout.json</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out) + "\n")


def main():
    results, md_path, svg_path = sys.argv[1:4]
    machine, runs, repeats = load(results)
    chart(runs, svg_path)
    fan_params = next((r["params"] for (s, sc), r in runs.items() if sc == "fanout"), {})
    bound = fan_params.get("p99_bound_ms", 50)
    md = []
    w = md.append

    w("# Performance\n")
    w("hubbub against the servers people would otherwise choose, measured side by side on "
      "one machine in one run: a Node [`ws`](https://github.com/websockets/ws) server, "
      "[socket.io](https://socket.io) 4 (one process, and two processes behind "
      "`@socket.io/redis-adapter`), [socketioxide](https://github.com/Totodore/socketioxide) "
      "(against hubbub's Socket.IO endpoint), and a *Rust floor*: the smallest tokio + tungstenite "
      "broadcast server, no actors and no framework, to show how fast this machine can do "
      "the job at all. Everything here is produced by `bench/run.sh`; the load generator "
      "is `bench/hubbub-bench`, the peers are in `bench/peers/`, and the raw results of "
      "the run below are in `bench/results/`.\n")
    if machine.get("quick"):
        w("> **This is a quick run (`BENCH_QUICK=1`): small numbers, to check the script. "
          "Do not quote these figures.**\n")

    w("## The run\n")
    load_before = ", ".join(f"{v:.2f}" for v in machine["load_before"])
    load_after = ", ".join(f"{v:.2f}" for v in machine.get("load_after", [])) or "—"
    w("| | |\n|---|---|")
    w(f"| date (UTC) | {machine['date_utc']} |")
    w(f"| machine | {machine['nproc']} cores ({machine['cpu_model']}), {machine['mem_total_gib']} GiB, "
      f"Linux {machine['kernel']} |")
    w(f"| load average (1, 5, 15 min) | before: {load_before}; after: {load_after} (the benchmark's own load) |")
    w(f"| hubbub | commit {machine['git_commit']}{' (with uncommitted changes)' if machine.get('git_dirty') else ''}, "
      f"{machine['rustc']}, release profile |")
    peers = [f"Node {machine['node']}" if machine.get("node") else None,
             f"ws {machine['ws']}" if machine.get("ws") else None,
             f"socket.io {machine['socket.io']}" if machine.get("socket.io") else None,
             f"@socket.io/redis-adapter {machine['redis_adapter']}" if machine.get("redis_adapter") else None,
             f"socketioxide {machine['socketioxide']}" if machine.get("socketioxide") else None,
             machine["redis"].split(" sha=")[0] if machine.get("redis") else None]
    w(f"| peers | {', '.join(p for p in peers if p) or 'none in this run'} |")
    w("")
    w("The load generator runs on the same cores as the system under test (loopback only), "
      "so every system shares the machine with the same client; figures compare systems, "
      "they are not what a dedicated server would do.\n")

    w("### Repeating it\n")
    w("```sh\nbench/run.sh                 # everything (~32 min on 2 cores): installs, builds, runs, writes this page\n"
      "BENCH_QUICK=1 bench/run.sh   # small numbers, to check the script\n"
      "BENCH_REPEAT=0 bench/run.sh  # without the second fan-out ramp per system (~20 min)\n"
      "BENCH_SYSTEMS=\"hubbub floor\" bench/run.sh   # some systems only (the page then has only theirs)\n"
      "BENCH_SYSTEMS=socketio BENCH_NO_DOC=1 bench/run.sh   # the Socket.IO systems only (~14 min)\n```\n")
    w("Check `uptime` first: with other work on the machine the figures are noise. "
      "The exact load generator commands of this run (URLs and pids differ per run; "
      "`bench/run.sh` also passes `--source-ips 4` to `idle` and `--source-ips 8` to "
      "`churn`, and `--label` and `--json`):\n")
    w("```sh")
    seen = set()
    for key, _ in SYSTEMS:
        for scenario in ("fanout", "idle", "churn", "efficiency", "ack"):
            run = runs.get((key, scenario))
            if run:
                line = f"# {key}\n{command(run)}"
                if line not in seen:
                    seen.add(line)
                    w(line)
    w("```\n")

    w("## Targets\n")
    w("| target | measured | |\n|---|---|---|")
    for label, measured, verdict in targets(runs, repeats):
        w(f"| {label} | {measured} | {verdict} |")
    w("")
    w("![Fan-out: highest rate that held, and its p99, per system](performance.svg)\n")

    w("## The systems\n")
    w("| system | what runs |\n|---|---|")
    w("| hubbub, one node | `target/release/hubbub` with defaults except: rate limits off "
      "(`limits.frames_per_second = 0`, `[rate_limit]` all 0: none of the peers has any) "
      "and `limits.max_connections = 20000`; logs at `warn`. Every other limit "
      "(outbound queue 1024 with slow-consumer close, history 100, heartbeats) stays on. "
      "The room logs are durable (`storage.engine = \"durable\"`, the default, in an "
      "empty directory under the run's output at every start) with the default "
      "`storage.fsync = \"always\"`: a publish is answered only once its entry is fsynced. |")
    w("| hubbub, one node, storage in memory | the same with `storage.engine = \"memory\"`: "
      "the same Raft path, nothing written to disk |")
    w("| hubbub, two-node cluster | the same, two processes with `[cluster]` on (default "
      "heartbeat 500 ms, failure timeout 3 s), each seeded with both addresses, and each "
      "sized to its half of the machine with `node.threads` = half the cores (1 here: one "
      "HTTP worker, one actor thread; a socket.io process is single-threaded too); "
      "clients spread over both nodes; durable storage as for one node |")
    w("| hubbub, three-node cluster | the same with three nodes, voters `a`, `b`, `c`: "
      "every shard's Raft group spans the three and commits on two; `node.threads` = a "
      "third of the cores (at least 1); clients spread over the three nodes |")
    w("| Node ws | `bench/peers/node-ws/server.js`: the tutorial broadcast server extended "
      "to `join`/`leave`/`publish` → `message` (with `seq` per room) and `reply`, in hubbub's "
      "frame shapes; one process |")
    w("| socket.io 4, one process | `bench/peers/socketio/server.js`: `join`, `leave`, "
      "`publish` events with acks; `io.to(room).emit('message', …)`; WebSocket transport only |")
    w("| socket.io 4, two processes + Redis | the same server twice, with "
      "`@socket.io/redis-adapter` on one Debian `redis-server`; clients spread over both; "
      "idle memory would count Redis too |")
    w("| hubbub Socket.IO, one node / two-node cluster | the nodes of *hubbub, one node* "
      "and *hubbub, two-node cluster*, the load generator connecting to "
      "`/socket.io/?EIO=4&transport=websocket` and speaking Socket.IO v5 |")
    w("| socketioxide, one process | `bench/peers/socketioxide`: socketioxide on axum, "
      "WebSocket transport only, the same events and acks as the socket.io peer, "
      "`io.to(room).emit(\"message\", …)`; defaults but a per-socket buffer of 4096 "
      "packets (128 by default: socketioxide drops what does not fit, where socket.io "
      "queues without bound) |")
    w("| Rust floor | `bench/peers/rust-floor`: tokio + tokio-tungstenite, rooms in one "
      "`Mutex<HashMap>`, a broadcast encoded once and queued (unbounded) to every member's "
      "writer task |")
    w("")

    w("## The scenarios\n")
    w(f"- **fanout**: C clients spread over R rooms (and over the nodes, for clusters); "
      f"P of them publish to their room at an aggregate rate X for T seconds. Every "
      f"member of a room, the publisher included, receives every message of the room. "
      f"Each message carries the time it was *due* to be sent (the publishers follow a "
      f"fixed schedule, so a sender falling behind shows as latency, not as a lower rate). "
      f"Reported per step: deliveries per second, end-to-end latency from due time to "
      f"arrival (p50/p90/p99/max), lost = expected − received after a drain of up to "
      f"5 s, and errors by kind. With `--ramp`, the rate doubles while a step *holds* "
      f"(p99 ≤ {bound:g} ms, nothing lost, no error, no sequence out of order), then "
      f"narrows down between the highest rate that held and the lowest that did not, "
      f"to within 15 %. The figure is the highest rate that held. Latency includes up to "
      f"1 ms of the load generator's timer granularity.")
    w("- **idle**: on a freshly started server, N connections opened (from "
      "127.0.0.1–127.0.0.4) and held; the server's resident memory (VmRSS of its process "
      "from `/proc`) before the first and while all are held, divided by N. (A process that "
      "has already run the fan-out keeps the memory it freed and makes connections look "
      "cheaper.)")
    w("- **churn**: at a rate, a cycle of connect (and handshake), `join`, `leave` and "
      "close, each step waiting for its answer; at most 256 cycles at once, cycles due "
      "beyond that are *skipped* and counted. Reported: completed cycles per second and "
      "each stage's latency. Close is timed to the server's close frame.")
    w("- **efficiency** (hubbub cluster only): one room per case with its members spread "
      "over the nodes; 200 messages published; `hubbub_cluster_messages_total` "
      "(direction `out`) read from every node's `/metrics` before and after. The target "
      "is at most one `raft_append` (AppendEntries with entries) per broadcast to each "
      "node other than the leader of the room's shard (from `GET /cluster`), whatever "
      "the number of members: every node applies every shard's log.")
    w("- **ack** (hubbub systems): P publishers spread round robin over the nodes, each "
      "joined to one of R rooms, publish at a fixed total rate for T seconds per rate "
      "(the schedule does not wait for replies). For each publish: the time from handing "
      "it to its connection to its `reply` (`ok: true`, matched by `ref`), which hubbub "
      "sends only once the message is committed by a majority of its shard's voters. "
      "After each rate the load generator waits for the step's replies up to its "
      "`--timeout-ms`; a publish with no reply by then is a *timeout*, an error, "
      "and has no latency; a refusal is counted by its code. On a cluster the latency is "
      "also split by whether the publisher's node led its room's shard (`GET /cluster`) "
      "or forwarded the publish to the leader. It runs on the node(s) that have just run "
      "the fan-out ramp and churn, after a warm-up at the first rate.")
    w("")

    w("## Fan-out\n")
    if fan_params:
        w(f"{fan_params['clients']:,} clients, {fan_params['rooms']} rooms "
          f"({fan_params['clients'] // fan_params['rooms']} members each), "
          f"{fan_params.get('publishers') or fan_params['rooms']} publishers, "
          f"{fan_params['size']}-byte contents, {fan_params['duration']:g} s per step.\n")
    w("| system | highest rate held (msg/s) | deliveries/s | p50 ms | p90 ms | p99 ms | max ms | first rate that did not hold | second ramp: highest rate held |")
    w("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for key, name in SYSTEMS:
        run = runs.get((key, "fanout"))
        if not run:
            continue
        r = run["result"]
        best = r.get("best")
        failed = [s for s in r["steps"] if not s["held"]]
        first_fail = min(failed, key=lambda s: s["rate"]) if failed else None
        fail_text = (f"{rate(first_fail['rate'])}/s: {step_verdict(first_fail, bound).removeprefix('did not hold: ')}"
                     if first_fail else "none")
        again = repeats.get((key, "fanout"))
        again_text = (rate(again["result"]["max_rate_held"]) if again and again["result"]["max_rate_held"]
                      else ("none held" if again else "—"))
        if best:
            lat = best["latency"]
            w(f"| {name} | {rate(r['max_rate_held'])} | {rate(best['deliveries_per_s'])} | "
              f"{ms(lat['p50_ms'])} | {ms(lat['p90_ms'])} | {ms(lat['p99_ms'])} | {ms(lat['max_ms'])} | {fail_text} | {again_text} |")
        else:
            w(f"| {name} | none held | | | | | | {fail_text} | {again_text} |")
    w("")
    spreads = []
    for key, name in SYSTEMS:
        first = runs.get((key, "fanout"))
        again = repeats.get((key, "fanout"))
        if not (first and again):
            continue
        a, b = first["result"]["max_rate_held"], again["result"]["max_rate_held"]
        if a and b:
            spreads.append((max(a, b) / min(a, b), name))
    if spreads:
        widest, who = max(spreads)
        w(f"How far two ramps of one system land apart on this machine, in the same run: up "
          f"to {widest:.2f}× ({who}). A ramp doubles its rate until a step fails and then "
          f"narrows down, so one unlucky step moves its result a long way; a target met by "
          f"a thin margin in one ramp is within that spread, which is why every ramp is "
          f"shown.\n")
    same = common_rate(runs)
    if same:
        w(f"The same load for every system: {same:,} messages/s "
          f"({same * (fan_params['clients'] // fan_params['rooms']):,} deliveries/s), the highest "
          f"rate every ramp ran and held"
          f"{' (but ' + ', '.join(NAMES[k] for k in sorted(NOT_IN_COMMON_RATE)) + ', shown when its ramp ran that rate)' if any((k, 'fanout') in runs for k in NOT_IN_COMMON_RATE) else ''}:\n")
        w("| system | p50 ms | p90 ms | p99 ms | max ms | server CPU µs per delivery |")
        w("|---|---:|---:|---:|---:|---:|")
        for key, name in SYSTEMS:
            run = runs.get((key, "fanout"))
            at = run and step_at(run, same)
            if not at:
                continue
            lat = at["latency"]
            server = at.get("server")
            w(f"| {name} | {ms(lat['p50_ms'])} | {ms(lat['p90_ms'])} | {ms(lat['p99_ms'])} | {ms(lat['max_ms'])} | "
              f"{server['cpu_us_per_delivery']:.1f} |" if server else
              f"| {name} | {ms(lat['p50_ms'])} | {ms(lat['p90_ms'])} | {ms(lat['p99_ms'])} | {ms(lat['max_ms'])} | — |")
        w("")
    w("What a delivery cost in CPU (user + system time of the server's processes, and of "
      "the load generator, divided by deliveries), at the ramp's first rate (the same load "
      "for every system) and at the highest rate that held. Under load, costs per "
      "delivery fall as writes batch up.\n")
    w("| system | first step: rate | server µs | load generator µs | best step: rate | server µs | load generator µs |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for key, name in SYSTEMS:
        run = runs.get((key, "fanout"))
        if not run:
            continue
        steps = run["result"]["steps"]
        first = steps[0] if steps else None
        best = run["result"].get("best")

        def cost(step, side):
            c = step and step.get(side)
            return f"{c['cpu_us_per_delivery']:.1f}" if c else "—"

        w(f"| {name} | {rate(first['rate']) if first else '—'} | {cost(first, 'server')} | {cost(first, 'client')} | "
          f"{rate(best['rate']) if best else '—'} | {cost(best, 'server')} | {cost(best, 'client')} |")
    w("")
    w("Every step of every ramp, in the order run (the second ramps ran after every "
      "system's first pass):\n")
    w("| system | steps: rate (msg/s) → p99 ms, verdict |\n|---|---|")
    for key, name, run in [(k, n, runs.get((k, "fanout"))) for k, n in SYSTEMS] + \
            [(k, n + ", second ramp", repeats.get((k, "fanout"))) for k, n in SYSTEMS]:
        if not run:
            continue
        cells = []
        for s in run["result"]["steps"]:
            mark = "✓" if s["held"] else "✗"
            extra = "" if s["held"] else f" ({step_verdict(s, bound).removeprefix('did not hold: ')})"
            again = " (after reconnecting)" if s.get("reconnected") else ""
            cells.append(f"{rate(s['rate'])}{again} → {ms(s['latency']['p99_ms'])} {mark}{extra}")
        connect = run["result"]["connect_errors"]
        if connect:
            cells.append(f"connect errors: {connect}")
        w(f"| {name} | {'; '.join(cells)} |")
    w("")

    socketio_section(w, runs, repeats, bound)
    storage_section(w, runs, repeats)
    ack_section(w, runs)

    w("## Idle connections\n")
    w("| system | open | failed | RSS before | RSS held | per connection | connect p99 ms |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for key, name in SYSTEMS:
        run = runs.get((key, "idle"))
        if not run:
            continue
        r = run["result"]
        per = r.get("rss_per_connection_bytes")
        mib = lambda b: f"{b / KIB / KIB:.1f} MiB" if b is not None else "—"
        w(f"| {name} | {r['connected']:,} | {r['failed']:,} | {mib(r['rss_before_bytes'])} | "
          f"{mib(r['rss_held_bytes'])} | {per / KIB:.1f} KiB | {ms(r['connect_latency']['p99_ms'])} |"
          if per is not None else f"| {name} | {r['connected']:,} | {r['failed']:,} | — | — | — | — |")
    w("")

    w("## Churn\n")
    w("| system | offered/s | completed/s | failed | skipped | connect p50 / p99 ms | join p99 | leave p99 | close p99 | cycle p50 / p99 ms | errors |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for key, name in SYSTEMS:
        run = runs.get((key, "churn"))
        if not run:
            continue
        r, p = run["result"], run["params"]
        errs = ", ".join(f"{k} ×{v}" for k, v in r["errors"].items()) or "none"
        w(f"| {name} | {p['rate']:,.0f} | {r['cycles_per_s']:,.0f} | {r['failed']:,} | {r['skipped']:,} | "
          f"{ms(r['connect_latency']['p50_ms'])} / {ms(r['connect_latency']['p99_ms'])} | "
          f"{ms(r['join_latency']['p99_ms'])} | {ms(r['leave_latency']['p99_ms'])} | "
          f"{ms(r['close_latency']['p99_ms'])} | {ms(r['cycle_latency']['p50_ms'])} / "
          f"{ms(r['cycle_latency']['p99_ms'])} | {errs} |")
    w("")

    w("## Cluster efficiency\n")
    effs = [(key, runs.get((key, "efficiency"))) for key in ("hubbub-2", "hubbub-3")]
    effs = [(key, eff) for key, eff in effs if eff]
    if not effs:
        w("Not measured in this run.\n")
    for key, eff in effs:
        if len(effs) > 1:
            w(f"### {NAMES[key]}\n")
        res = eff["result"]
        if res["metric"] != "available":
            w("**metric not available**: the nodes did not serve `hubbub_cluster_messages_total` "
              "on `/metrics`. Deliveries were still checked:\n")
        w("| members | per node | shard leader | published | delivered / expected | raft_append per broadcast | target (at most) | | room-log traffic per broadcast, by kind |")
        w("|---:|---|---|---:|---:|---:|---:|---|---|")
        for c in res["cases"]:
            kinds = c.get("sent_per_broadcast")
            per = c.get("broadcast_messages_per_broadcast")
            w(f"| {c['members']} | {' / '.join(str(n) for n in c['members_per_node'])} | "
              f"{'node ' + 'abc'[c['owner']] if c['owner'] is not None else 'unknown'} | {c['published']} | "
              f"{c['received']:,} / {c['expected_deliveries']:,} | "
              f"{f'{per:.2f}' if per is not None else 'metric not available'} | "
              f"{c['expected_per_broadcast'] if c['expected_per_broadcast'] is not None else '—'} | "
              f"{'met' if c['met'] else ('**missed**' if c['met'] is False else '—')} | "
              f"{', '.join(f'{k} {v:.2f}' for k, v in kinds.items()) if kinds else '—'} |")
        w("")
    if effs:
        w("`raft_write` (a publish forwarded to the shard's leader) appears when the "
          "publisher's node does not lead the room's shard; `raft_answer` are the answers "
          "to every Raft call (docs/cluster.md, *Rooms across nodes*).\n")

    profiling = Path(__file__).with_name("profiling.md")
    if profiling.exists():
        w(profiling.read_text().rstrip() + "\n")

    Path(md_path).write_text("\n".join(md).rstrip() + "\n")


if __name__ == "__main__":
    main()
