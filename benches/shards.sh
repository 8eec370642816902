#!/usr/bin/env bash
# Connection shards (node.shards, RFC 0009) against the shared work-stealing runtime
# (node.shards = 0): the same release binary, the same scenarios, runs interleaved
# (A B A B ...) so drift on a shared machine falls on both.
#
#   benches/shards.sh [CONFIGS="0 N"] [ROUNDS=2] [DURATION=10] [SCENARIOS="..."]
#
# A configuration `Nu` (say `2u`) runs N shards with io_uring (`node.io = "io_uring"`,
# RFC 0010) on ROOST_URING_BIN (default: the same binary), a roost built with
# `--features io-uring`; compare io_uring with epoll on the same scenarios with
#   ROOST_URING_BIN=target-uring/release/roost CONFIGS="0 2 2u" benches/shards.sh
#
# Scenarios (64-byte payloads, MQTT v5, loopback):
#   round-trip-q1   one client, QoS 1, publishing to its own topic, one message in flight
#   fanout-500-q0   1 publisher at 100 msg/s -> 500 subscribers on bench/#, QoS 0
#   fanin-20-q0     20 publishers (own topics, as fast as TCP allows) -> 1 subscriber, QoS 0
#   fanin-20-q1     the same at QoS 1, window 32
#   q1-50k          4 publishers x 12,500 msg/s -> 4 subscribers, QoS 1
#   connect-5k      roost-loadgen idle: 5,000 connections, 500 handshakes in flight: connect rate
#   race            benches/subscribe-publish-race.py, 60 tries: SUBSCRIBE then another
#                   client's PUBLISH with no gap; how many miss (issue 7 item 10)
# Writes one JSON line per run to $OUT (default /tmp/shards-<date>.jsonl) and prints a summary
# table (medians over rounds). Loopback only; every run is bounded by a timeout; stops by
# itself in about (ROUNDS x 2 x 7 scenarios x (DURATION + 10)) seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONFIGS="${CONFIGS:-0 $(nproc)}"
SCENARIOS="${SCENARIOS:-round-trip-q1 fanout-500-q0 fanin-20-q0 fanin-20-q1 q1-50k connect-5k race}"
ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-10}"
ROOST="${ROOST_BIN:-$ROOT/target/release/roost}"
ROOST_URING="${ROOST_URING_BIN:-$ROOST}"
LOADGEN="${LOADGEN_BIN:-$ROOT/target/release/roost-loadgen}"
# The race script reuses the interop suite's packet helpers (paho-mqtt): scripts/install-test-deps.
PY="${PYTHON:-$ROOT/.venv-test/bin/python}"
OUT="${OUT:-/tmp/shards-$(date -u +%Y%m%d-%H%M%S).jsonl}"
PORT=26883
WORK="$(mktemp -d -t roost-shards.XXXXXX)"
PID=""
cleanup() {
    [[ -n "$PID" ]] && kill -KILL "$PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n 20000 2>/dev/null || true
log() { printf '[shards] %s\n' "$*" >&2; }

start() { # $1 = node.shards, with a `u` suffix for io_uring
    rm -rf "$WORK/data"
    local bin="$ROOST" io=epoll
    if [[ "$1" == *u ]]; then bin="$ROOST_URING"; io=io_uring; fi
    ROOST_LOG__LEVEL=warn ROOST_NODE__SYS_INTERVAL_SECS=0 ROOST_NODE__SHARDS="${1%u}" \
        ROOST_NODE__IO="$io" "$bin" serve --mqtt "127.0.0.1:$PORT" --http 127.0.0.1:26980 \
        --cluster 127.0.0.1:26990 --data-dir "$WORK/data" >"$WORK/roost.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 100); do
        curl -sf http://127.0.0.1:26980/readyz >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "roost did not become ready"; cat "$WORK/roost.log" >&2; exit 1
}
stop() {
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
}

run() { # $1 = shards, $2 = scenario
    local shards="$1" name="$2" json
    start "$shards"
    local common=(--host "127.0.0.1:$PORT" --no-progress --broker-pid "$PID" --json
        --warmup-secs 1 --duration-secs "$DURATION")
    case "$name" in
        round-trip-q1) json=$(timeout 120 "$LOADGEN" round-trip "${common[@]}" --qos 1 --clients 1) ;;
        fanout-500-q0) json=$(timeout 120 "$LOADGEN" throughput "${common[@]}" --publishers 1 \
            --subscribers 500 --fanout --qos 0 --rate 100) ;;
        fanin-20-q0) json=$(timeout 120 "$LOADGEN" throughput "${common[@]}" --publishers 20 \
            --subscribers 1 --fan-in --qos 0) ;;
        fanin-20-q1) json=$(timeout 120 "$LOADGEN" throughput "${common[@]}" --publishers 20 \
            --subscribers 1 --fan-in --qos 1 --window 32) ;;
        q1-50k) json=$(timeout 120 "$LOADGEN" throughput "${common[@]}" --publishers 4 \
            --subscribers 4 --qos 1 --rate 12500) ;;
        connect-5k) json=$(timeout 120 "$LOADGEN" idle --host "127.0.0.1:$PORT" --no-progress \
            --broker-pid "$PID" --json --connections 5000 --concurrency 500 --hold-secs 2) ;;
        race) json=$(timeout 300 "$PY" benches/subscribe-publish-race.py "$PORT" 60 |
            awk '{print "{\"missed\":" $2 ",\"tries\":" $4 "}"}') ;;
    esac
    stop
    printf '{"shards":"%s","scenario":"%s","result":%s}\n' "$shards" "$name" "$json" >>"$OUT"
    log "shards=$shards $name done"
    sleep 2
}

log "binary $ROOST (io_uring: $ROOST_URING), node.shards in ($CONFIGS), $ROUNDS rounds, results in $OUT"
read -r -a configs <<<"$CONFIGS"
for round in $(seq 1 "$ROUNDS"); do
    for name in $SCENARIOS; do
        # Alternate the order between rounds, so drift falls on every configuration.
        order=("${configs[@]}")
        if (( round % 2 == 0 )); then
            order=(); for (( i=${#configs[@]}-1; i>=0; i-- )); do order+=("${configs[i]}"); done
        fi
        for s in "${order[@]}"; do run "$s" "$name"; done
    done
done
"$PY" - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def pick(r):
    res = r["result"]
    if r["scenario"] == "race":
        return {"missed": res["missed"]}
    lat = res.get("latency_us") or {}
    out = {k: lat.get(k) for k in ("p50", "p99") if isinstance(lat, dict)}
    for k in ("delivered_per_sec", "round_trips_per_sec", "broker_cpu_percent", "lost",
              "connections_per_sec", "broker_kib_per_connection"):
        if k in res:
            out[k] = res[k]
    return out
by = {}
for r in rows:
    by.setdefault((r["scenario"], r["shards"]), []).append(pick(r))
for (scen, shards), runs in sorted(by.items()):
    keys = sorted({k for run in runs for k in run})
    med = {k: statistics.median([run[k] for run in runs if run.get(k) is not None] or [0]) for k in keys}
    print(f"{scen:15} shards={shards!s:<3} " + " ".join(f"{k}={v:g}" for k, v in med.items()))
EOF
