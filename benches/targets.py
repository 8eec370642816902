#!/usr/bin/env python3
"""Issue 10's performance targets, judged from one run of benches/run-compare.sh.

    python3 benches/targets.py --roost roost.jsonl --mosquitto mosquitto.jsonl \
        --cluster roost-cluster.jsonl

Reads the roost-loadgen --json lines of each broker (one report per line) and prints a Markdown
table: one row per figure of the issue, both brokers' numbers, the target, and whether Roost met
it or by how much it missed. A scenario that produced no result prints "no result" and counts
as missed. The rows find their scenarios by label: keep the labels here and in run-compare.sh
in step.

How a target is read where the issue leaves room (written here so a reader can disagree):
- "<= Mosquitto" on a latency pair: both p50 and p99 at most Mosquitto's.
- fan-in QoS 0 "keep >= 6x": Roost's delivered rate at least 6x Mosquitto's, and p50 < 20 ms.
- fan-in QoS 1 "keep": 0 lost, a delivered rate above Mosquitto's, and p99 < 20 ms.
- fan-out 2000 x 500 "1.0M/s": at least 98 % of the 1,000,000 deliveries/s offered.
- memory "<= 2 KiB, any topic mix", "a persistent session's registry entry is part of its
  cost": two rows, the idle run with clean sessions and the one with persistent sessions, each
  judged against 2 KiB.
- 3 nodes ">= 0.8x one node": the cross-node QoS 1 fan-in delivers at least 0.8x the same
  fan-in on a single node in the same run, and loses nothing.
"""

import argparse
import json
import sys

CONNECT = "connect 10000 at 30000/s offered, 500 in flight"
IDLE_PREFIX = "idle "
IDLE_PERSISTENT = "persistent"
ROUND_TRIP = "round-trip 1 client, QoS 1, 64 B"
FAN_OUT_100 = "fan-out 1 pub at 100 msg/s → 500 sub, QoS 0, 64 B"
FAN_OUT_2000 = "fan-out 1 pub at 2000 msg/s → 500 sub, QoS 0, 64 B"
FAN_IN_0 = "fan-in 20 pub → 1 sub, QoS 0, 64 B"
FAN_IN_1 = "fan-in 20 pub → 1 sub, QoS 1 (window 32), 64 B"
PACED_QOS1 = "4 pub → 4 sub at 50000 msg/s offered, QoS 1, 64 B"
CROSS_NODE = "3 nodes: fan-in 20 pub on node 1 → 1 sub on node 2, QoS 1 (window 32), 64 B"


def load(path):
    """label -> report, from a file of JSON lines (missing file: nothing). A run written as
    failed (run-compare.sh's "run_failed" lines) counts as not measured."""
    out = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    report = json.loads(line)
                    if "run_failed" not in report:
                        out[report.get("label", "")] = report
    except FileNotFoundError:
        pass
    return out


def find_idle(reports, persistent):
    """The idle scenario with clean sessions, or the one with persistent sessions (its label
    says "persistent")."""
    for key, report in reports.items():
        if key.startswith(IDLE_PREFIX) and (IDLE_PERSISTENT in key) == persistent:
            return report
    return None


def ms(report, pct):
    return report["latency_us"][pct] / 1000.0


def lat(report):
    """p50 / p99, in µs below a millisecond."""
    p50, p99 = ms(report, "p50"), ms(report, "p99")
    if p99 < 1:
        return f"{p50 * 1000:.0f} / {p99 * 1000:.0f} µs"
    return f"{p50:.2f} / {p99:.2f} ms"


def pct_over(value, limit):
    """How far `value` is above `limit`, in percent of `limit`."""
    return (value / limit - 1.0) * 100.0 if limit else float("inf")


def verdict(misses):
    if not misses:
        return "**met**"
    return "missed: " + "; ".join(misses)


def row_latency_le(roost, mosq):
    misses = []
    for pct in ("p50", "p99"):
        r, m = ms(roost, pct), ms(mosq, pct)
        if r > m:
            misses.append(f"{pct} {r:.3f} ms is {pct_over(r, m):.0f} % above {m:.3f} ms")
    return lat(roost), lat(mosq), verdict(misses)


def rows(roost, mosq, cluster):
    """(figure, target, judge) with judge(roost, mosq, cluster) -> (roost cell, mosq cell,
    verdict), given the reports it needs (None when a scenario has no result)."""
    out = []

    def need(*reports):
        return all(r is not None for r in reports)

    r, m = roost.get(ROUND_TRIP), mosq.get(ROUND_TRIP)
    out.append(("QoS 1 round trip to itself, p50 / p99", "<= Mosquitto",
                row_latency_le(r, m) if need(r, m) else None))

    r, m = roost.get(FAN_OUT_100), mosq.get(FAN_OUT_100)
    out.append(("fan-out 100 msg/s x 500 subscribers (QoS 0), p50 / p99", "<= Mosquitto",
                row_latency_le(r, m) if need(r, m) else None))

    r, m = roost.get(FAN_OUT_2000), mosq.get(FAN_OUT_2000)
    cell = None
    if need(r, m):
        misses = []
        if r["delivered_per_sec"] < 980_000:
            misses.append(f"{r['delivered_per_sec'] / 1e6:.2f}M/s delivered is "
                          f"{(1 - r['delivered_per_sec'] / 1e6) * 100:.0f} % short of 1.0M/s")
        if ms(r, "p50") >= 5:
            misses.append(f"p50 {ms(r, 'p50'):.1f} ms >= 5 ms")
        if ms(r, "p99") >= 20:
            misses.append(f"p99 {ms(r, 'p99'):.1f} ms >= 20 ms")

        def desc(x):
            return f"{x['delivered_per_sec'] / 1e6:.2f}M/s, {lat(x)}"
        cell = (desc(r), desc(m), verdict(misses))
    out.append(("fan-out 2000 msg/s x 500 (1M deliveries/s offered), delivered, p50 / p99",
                "1.0M/s at p50 < 5 ms, p99 < 20 ms", cell))

    r, m = roost.get(FAN_IN_0), mosq.get(FAN_IN_0)
    cell = None
    if need(r, m):
        misses = []
        ratio = r["delivered_per_sec"] / max(m["delivered_per_sec"], 1.0)
        if ratio < 6:
            misses.append(f"{ratio:.1f}x Mosquitto's rate")
        if ms(r, "p50") >= 20:
            misses.append(f"p50 {ms(r, 'p50'):.1f} ms >= 20 ms")

        def desc(x):
            dropped = x["lost"] / max(x["expected_deliveries"], 1) * 100
            return (f"{x['delivered_per_sec'] / 1e3:.0f}k msg/s, p50 {ms(x, 'p50'):.1f} ms, "
                    f"{dropped:.1f} % lost")
        cell = (desc(r), desc(m), verdict(misses))
    out.append(("20 publishers -> 1 subscriber, QoS 0", "keep >= 6x, p50 < 20 ms", cell))

    r, m = roost.get(FAN_IN_1), mosq.get(FAN_IN_1)
    cell = None
    if need(r, m):
        misses = []
        if r["lost"]:
            misses.append(f"{r['lost']} lost")
        if r["delivered_per_sec"] <= m["delivered_per_sec"]:
            misses.append("not faster than Mosquitto")
        if ms(r, "p99") >= 20:
            misses.append(f"p99 {ms(r, 'p99'):.1f} ms >= 20 ms")

        def desc(x):
            return (f"{x['delivered_per_sec'] / 1e3:.0f}k msg/s, p99 {ms(x, 'p99'):.1f} ms, "
                    f"{x['lost']} lost")
        cell = (desc(r), desc(m), verdict(misses))
    out.append(("same at QoS 1 (window 32)", "keep (0 lost, faster), p99 < 20 ms", cell))

    r, m = roost.get(PACED_QOS1), mosq.get(PACED_QOS1)
    cell = None
    if need(r, m):
        misses = []
        if ms(r, "p99") >= 1:
            misses.append(f"p99 {ms(r, 'p99'):.2f} ms >= 1 ms")
        if r["broker_cpu_percent"] > 30:
            misses.append(f"CPU {r['broker_cpu_percent']:.0f} % > 30 %")

        def desc(x):
            return (f"p99 {ms(x, 'p99'):.2f} ms, CPU {x['broker_cpu_percent']:.0f} % "
                    f"({x['delivered_per_sec'] / 1e3:.1f}k msg/s)")
        cell = (desc(r), desc(m), verdict(misses))
    out.append(("QoS 1 at 50k msg/s offered (4 pairs): p99, broker CPU",
                "p99 < 1 ms, CPU <= 30 %", cell))

    def kib_desc(x):
        kib = x.get("broker_kib_per_connection")
        return f"{kib:.2f} KiB ({x['connected']} connections)" if kib is not None else "—"

    for persistent, figure in (
            (False, "idle connections, one subscription (unique topic) each: RSS per connection"),
            (True, "the same with persistent sessions (their registry entries counted)")):
        r, m = find_idle(roost, persistent), find_idle(mosq, persistent)
        cell = None
        if need(r, m) and r.get("broker_kib_per_connection") is not None:
            kib = r["broker_kib_per_connection"]
            misses = [] if kib <= 2 else [f"{kib:.2f} KiB is {kib / 2:.1f}x the 2 KiB target"]
            cell = (kib_desc(r), kib_desc(m), verdict(misses))
        out.append((figure, "<= 2 KiB", cell))

    r, single = cluster.get(CROSS_NODE), roost.get(FAN_IN_1)
    cell = None
    if need(r, single):
        ratio = r["delivered_per_sec"] / max(single["delivered_per_sec"], 1.0)
        misses = []
        if ratio < 0.8:
            misses.append(f"{ratio:.2f}x one node")
        if r["lost"]:
            misses.append(f"{r['lost']} lost")
        cell = (f"{r['delivered_per_sec'] / 1e3:.0f}k msg/s, {r['lost']} lost (one node: "
                f"{single['delivered_per_sec'] / 1e3:.0f}k msg/s, {ratio:.2f}x)", "—",
                verdict(misses))
    out.append(("3-node cluster, 20 pub on node 1 -> 1 sub on node 2, QoS 1",
                ">= 0.8x one node, 0 lost", cell))

    r, m = roost.get(CONNECT), mosq.get(CONNECT)
    cell = None
    if need(r, m):
        rr, mr = r["connections_per_sec"], m["connections_per_sec"]
        misses = [] if rr >= mr else [f"{rr / mr:.2f}x Mosquitto's rate"]

        def desc(x):
            return f"{x['connections_per_sec'] / 1e3:.1f}k/s ({x['connected']} of {x['connections_requested']})"
        cell = (desc(r), desc(m), verdict(misses))
    out.append(("connect rate at 30k/s offered, 500 handshakes in flight", ">= Mosquitto", cell))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--roost", required=True)
    parser.add_argument("--mosquitto", required=True)
    parser.add_argument("--cluster", required=True)
    args = parser.parse_args()
    roost, mosq, cluster = load(args.roost), load(args.mosquitto), load(args.cluster)
    lines = ["| figure | Roost | Mosquitto | target | result |", "|---|--:|--:|---|---|"]
    met = 0
    table = rows(roost, mosq, cluster)
    for figure, target, cell in table:
        if cell is None:
            cell = ("no result", "no result", "missed: no result")
        if cell[2] == "**met**":
            met += 1
        lines.append(f"| {figure} | {cell[0]} | {cell[1]} | {target} | {cell[2]} |")
    lines.append("")
    lines.append(f"{met} of {len(table)} targets met.")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
