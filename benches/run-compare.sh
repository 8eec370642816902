#!/usr/bin/env bash
# Roost beside Mosquitto on this machine: the same fixed scenarios, the same load generator
# (roost-loadgen, benches/loadgen), one broker at a time, loopback only.
#
#   benches/run-compare.sh            # build, run both brokers, write benches/results/<date>-<sha>.md
#
# What it does:
#   1. cargo build --release -p roost -p roost-bench
#   2. starts target/release/roost serve on 127.0.0.1:21883 (temporary data dir, $SYS off,
#      log level warn), runs the scenarios below against it, stops it (SIGTERM);
#   3. the same against mosquitto on 127.0.0.1:21884 (installed with apt-get if missing;
#      generated config: listener 21884 127.0.0.1, allow_anonymous true,
#      max_queued_messages 1000, no persistence);
#   4. writes benches/results/<UTC date>-<short git sha>.md: hardware, commit, broker versions,
#      a comparison table (roost-loadgen table) and the raw JSON lines.
#
# Scenarios (fixed, so results stay comparable between commits):
#   idle       5,000 v5 connections, one subscription each, 5 s hold: broker KiB per connection
#   qos0       4 publishers -> 4 subscribers (one topic per pair), QoS 0, 64 B, 10 s
#   qos1       the same at QoS 1 (window 16 per publisher)
#   fanout     1 publisher -> 50 subscribers on bench/#, QoS 0, 64 B, 10 s
#
# Every scenario is bounded (timeout) and the whole run stops by itself in about 3 minutes
# after the build. Brokers and the load generator share the machine's cores: read the CPU
# columns with that in mind. Each connection needs a file descriptor in the load generator and
# one in the broker; the machine caps a process at 20,000 open files.
#
# Environment overrides (for a quick try; committed results use the defaults):
#   DURATION=10  IDLE_CONNECTIONS=5000  IDLE_HOLD=5  RESULTS_DIR=benches/results  SKIP_BUILD=0

set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DURATION="${DURATION:-10}"
IDLE_CONNECTIONS="${IDLE_CONNECTIONS:-5000}"
IDLE_HOLD="${IDLE_HOLD:-5}"
RESULTS_DIR="${RESULTS_DIR:-benches/results}"
ROOST_PORT=21883
MOSQUITTO_PORT=21884
LOADGEN="$ROOT/target/release/roost-loadgen"
ROOST="$ROOT/target/release/roost"

log() { printf '[run-compare] %s\n' "$*" >&2; }

WORK="$(mktemp -d -t roost-compare.XXXXXX)"
BROKER_PID=""
cleanup() {
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -KILL "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- 1. build ------------------------------------------------------------------------------
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building roost and roost-loadgen (release)"
    cargo build --release -p roost -p roost-bench
fi

# 5,000 connections need 5,000+ descriptors in each process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (( $(ulimit -n) < IDLE_CONNECTIONS + 200 )); then
    log "open-file limit $(ulimit -n) is too low for $IDLE_CONNECTIONS connections"
    exit 1
fi

# --- helpers -------------------------------------------------------------------------------
wait_for_port() { # port: up to 10 s
    local port=$1
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            return 1
        fi
        sleep 0.1
    done
    return 1
}

stop_broker() { # SIGTERM, then SIGKILL after 10 s
    [[ -n "$BROKER_PID" ]] || return 0
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$BROKER_PID" 2>/dev/null; then
        log "broker $BROKER_PID did not stop on SIGTERM; killing it"
        kill -KILL "$BROKER_PID" 2>/dev/null || true
    fi
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

# scenario LABEL TIMEOUT_SECS ARGS...: one JSON line appended to $OUT, summary to stderr.
scenario() {
    local label=$1 limit=$2
    shift 2
    log "$NAME: $label"
    if ! timeout --kill-after=10 "$limit" "$LOADGEN" "$@" --host "127.0.0.1:$PORT" \
        --broker-pid "$BROKER_PID" --json --label "$label" >>"$OUT"; then
        log "$NAME: scenario '$label' failed (no result recorded)"
    fi
    # Let the broker finish whatever the last run left in its sockets before the next one.
    sleep 2
}

run_scenarios() {
    local throughput_limit=$((DURATION + 60))
    scenario "idle $IDLE_CONNECTIONS, 1 subscription each" $((IDLE_HOLD + 240)) \
        idle --connections "$IDLE_CONNECTIONS" --subscribe --hold-secs "$IDLE_HOLD"
    scenario "4 pub → 4 sub, QoS 0, 64 B" "$throughput_limit" \
        throughput --publishers 4 --subscribers 4 --qos 0 --payload 64 --duration-secs "$DURATION"
    scenario "4 pub → 4 sub, QoS 1, 64 B" "$throughput_limit" \
        throughput --publishers 4 --subscribers 4 --qos 1 --payload 64 --duration-secs "$DURATION"
    scenario "fan-out 1 pub → 50 sub, QoS 0, 64 B" "$throughput_limit" \
        throughput --publishers 1 --subscribers 50 --fanout --qos 0 --payload 64 \
        --duration-secs "$DURATION"
}

# Other work on the machine skews every number here: record the load around the runs.
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- 2. roost --------------------------------------------------------------------------------
NAME=roost
PORT=$ROOST_PORT
OUT="$WORK/roost.jsonl"
: >"$OUT"
ROOST_VERSION="$("$ROOST" --version 2>/dev/null || echo "roost (unknown version)")"
log "starting $ROOST_VERSION on 127.0.0.1:$PORT"
ROOST_NODE__SYS_INTERVAL_SECS=0 ROOST_LOG__LEVEL=warn \
    "$ROOST" serve --mqtt "127.0.0.1:$PORT" --http 127.0.0.1:0 --data-dir "$WORK/roost-data" \
    >"$WORK/roost.log" 2>&1 &
BROKER_PID=$!
if ! wait_for_port "$PORT"; then
    log "roost did not start:"
    tail -20 "$WORK/roost.log" >&2
    exit 1
fi
run_scenarios
stop_broker

# --- 3. mosquitto ----------------------------------------------------------------------------
MOSQUITTO="$(command -v mosquitto || true)"
[[ -z "$MOSQUITTO" && -x /usr/sbin/mosquitto ]] && MOSQUITTO=/usr/sbin/mosquitto
if [[ -z "$MOSQUITTO" ]]; then
    log "mosquitto not found; installing it with apt-get"
    SUDO=""
    [[ "$(id -u)" != 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto
    MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
fi
MOSQUITTO_VERSION="$("$MOSQUITTO" -h 2>/dev/null | head -1 || true)"
[[ -n "$MOSQUITTO_VERSION" ]] || MOSQUITTO_VERSION="mosquitto (unknown version)"

NAME=mosquitto
PORT=$MOSQUITTO_PORT
OUT="$WORK/mosquitto.jsonl"
: >"$OUT"
cat >"$WORK/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
max_queued_messages 1000
persistence false
log_dest stderr
log_type error
log_type warning
EOF
log "starting $MOSQUITTO_VERSION on 127.0.0.1:$PORT"
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
BROKER_PID=$!
if ! wait_for_port "$PORT"; then
    log "mosquitto did not start:"
    tail -20 "$WORK/mosquitto.log" >&2
    exit 1
fi
run_scenarios
stop_broker

# --- 4. results ------------------------------------------------------------------------------
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
SHA="$(bench_sha)"
mkdir -p "$RESULTS_DIR"
RESULT="$RESULTS_DIR/$(date -u +%Y-%m-%d)-$SHA.md"
{
    echo "# Roost vs Mosquitto, $(date -u +%Y-%m-%d) (commit $SHA)"
    echo
    echo "Written by \`benches/run-compare.sh\`; numbers from one run, nothing edited by hand."
    echo
    bench_provenance
    echo "- load average (1/5/15 min) before the runs: $LOAD_BEFORE; after: $LOAD_AFTER"
    echo "- brokers: $ROOST_VERSION (release build, \$SYS off, log warn); $MOSQUITTO_VERSION"
    echo "  (\`max_queued_messages 1000\`, no persistence)"
    echo "- load generator: roost-loadgen (same machine, same cores as the broker), MQTT v5"
    echo
    echo "Scenarios: idle = $IDLE_CONNECTIONS connections, one subscription each, ${IDLE_HOLD} s hold;"
    echo "throughput = 1 s warm-up then ${DURATION} s measured, publishers as fast as the window (16"
    echo "unacknowledged, QoS 1) or TCP (QoS 0) allow. Latency is publish-to-delivery on one"
    echo "monotonic clock; at QoS 0 under saturation it is mostly time spent queued in socket"
    echo "buffers. CPU is % of one core over the measured window. \"lost\" counts messages a"
    echo "subscriber had not received when it stopped (nothing for 0.5 s, or 5 s after the window):"
    echo "at QoS 0 that is allowed (bounded queues) and includes backlog still in socket buffers;"
    echo "at QoS 1 it means the broker dropped messages it had acknowledged."
    echo
    "$LOADGEN" table --input "roost=$WORK/roost.jsonl" --input "mosquitto=$WORK/mosquitto.jsonl"
    echo
    echo "<details><summary>Raw results (roost-loadgen --json)</summary>"
    echo
    echo '```'
    sed 's/^/roost     /' "$WORK/roost.jsonl"
    sed 's/^/mosquitto /' "$WORK/mosquitto.jsonl"
    echo '```'
    echo
    echo "</details>"
} >"$RESULT"
log "wrote $RESULT"
cat "$RESULT"
