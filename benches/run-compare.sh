#!/usr/bin/env bash
# Roost beside Mosquitto on this machine: the same fixed scenarios, the same load generator
# (roost-loadgen, benches/loadgen), one broker at a time, loopback only.
#
#   benches/run-compare.sh     # build, run both brokers, write the results and docs/benchmarks.md
#
# What it does:
#   1. cargo build --release -p roost -p roost-bench (SKIP_BUILD=1 skips it);
#   2. starts roost serve on 127.0.0.1:21883 (cluster listener 21885, temporary data dir, $SYS
#      off, log level warn), runs the scenarios below against it, stops it (SIGTERM); then a
#      3-node `roost dev-cluster` (MQTT 24000-24002) for the cross-node row, stopped the same way;
#   3. the same against mosquitto on 127.0.0.1:21884 (installed with apt-get if missing;
#      generated config: listener 21884 127.0.0.1, allow_anonymous true,
#      max_queued_messages 1000, no persistence);
#   4. draws one throughput and one latency plot per publishing scenario, both brokers on the
#      same axes (roost-loadgen plot), into $RESULTS_DIR/plots/<UTC date>-<short sha>/;
#   5. writes $RESULTS_DIR/<UTC date>-<short sha>.md (hardware, commit, broker versions, exact
#      commands, the targets table of issue 10 with each row met or missed and by how much
#      (benches/targets.py), the comparison table, links to the plots, the raw JSON lines) and
#      $DOCS_FILE (docs/benchmarks.md: the same, latest run only, without the raw lines).
#
# Scenarios (fixed, so results stay comparable between commits; 64-byte payloads, MQTT v5):
#   idle          $IDLE_CONNECTIONS connections, one subscription each, 5 s hold: KiB per connection;
#                 and, last, on a freshly started broker, the same with persistent sessions (v5
#                 Session Expiry Interval 3600 s, ended at DISCONNECT), whose cost includes the
#                 session registry's entry
#   connect       10,000 connections offered at 30,000/s, at most 500 handshakes in flight, no
#                 subscription: connections accepted per second
#   pairs         4 publishers -> 4 subscribers (one topic per pair), QoS 0 and QoS 1
#   paced QoS 1   the same pairs at 12,500 msg/s each (50,000/s offered): p99 and broker CPU
#   fan-in        20 publishers (own topics) -> 1 subscriber on bench/#, QoS 0, and QoS 1 with
#                 32 unacknowledged per publisher
#   fan-out       1 publisher -> 50 subscribers on bench/#, QoS 0 and QoS 1
#   paced fan-out 1 publisher at 100 and at 2,000 msg/s -> 500 subscribers, QoS 0
#   shared        4 publishers -> 4 subscribers in $share/bench/bench/#, QoS 0 and QoS 1
#   round-trip    1 client publishing to its own topic, one message in flight, QoS 0 and QoS 1
#   subscribe     subscribe-latency, 4 clients x 250 new filters (SUBACK latency)
#   cross-node    Roost only, on a 3-node dev-cluster: the QoS 1 fan-in with its publishers
#                 on node 1 and the subscriber on node 2; the fan-out (1 publisher on node 1,
#                 50 subscribers at QoS 1, and 500 at 100 msg/s QoS 0, spread over nodes 2
#                 and 3): each beside the one-node run of the same shape
# Throughput runs: 1 s warm-up, then $DURATION s, publishers as fast as the window (16
# unacknowledged, QoS 1) or TCP (QoS 0) allow.
#
# Every scenario is bounded (timeout), and followed by a pause until the broker is idle (2 s
# to 32 s); the whole run stops by itself in about 12 to 15 minutes after the build. Brokers and the load generator share the machine's cores: read the CPU columns
# with that in mind. Each connection needs a file descriptor in the load generator and one in
# the broker; the machine caps a process at 20,000 open files.
#
# Environment overrides (for a quick try; committed results use the defaults):
#   DURATION=10  IDLE_CONNECTIONS=19000  IDLE_HOLD=5  RESULTS_DIR=benches/results
#   DOCS_FILE=docs/benchmarks.md  SKIP_BUILD=0
#   ROOST_BIN=target/release/roost  LOADGEN_BIN=target/release/roost-loadgen

set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DURATION="${DURATION:-10}"
# Issue 10's memory row is stated at 19,000 idle connections: what this machine's 20,000
# open files per process allow. Fewer where the limit is lower (below); the label says how many.
IDLE_CONNECTIONS="${IDLE_CONNECTIONS:-}"
IDLE_HOLD="${IDLE_HOLD:-5}"
RESULTS_DIR="${RESULTS_DIR:-benches/results}"
DOCS_FILE="${DOCS_FILE:-docs/benchmarks.md}"
ROOST_PORT=21883
ROOST_CLUSTER_PORT=21885
MOSQUITTO_PORT=21884
LOADGEN="${LOADGEN_BIN:-$ROOT/target/release/roost-loadgen}"
ROOST="${ROOST_BIN:-$ROOT/target/release/roost}"

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
BUILD="release build"
# Read before this run writes its own results into the tree (they are not changes it ran on).
PROVENANCE="$(bench_provenance)"
[[ "$ROOST" == */debug/* || "$LOADGEN" == */debug/* ]] &&
    BUILD="DEBUG build: not for publication"

# N idle connections need N+ descriptors in each process (broker and load generator).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ -z $IDLE_CONNECTIONS ]]; then
    IDLE_CONNECTIONS=19000
    if (( $(ulimit -n) < IDLE_CONNECTIONS + 1000 )); then
        IDLE_CONNECTIONS=$(( $(ulimit -n) - 1000 ))
        log "open-file limit $(ulimit -n): the idle scenario opens $IDLE_CONNECTIONS connections"
    fi
fi
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

COMMANDS="$WORK/commands.txt"
: >"$COMMANDS"

# scenario LABEL TIMEOUT_SECS ARGS...: one JSON line appended to $OUT, summary to stderr; the
# command line (the first broker's) recorded in $COMMANDS. A run that fails or times out is
# written as a line with a "run_failed" field, so the table tells it from a scenario not run.
scenario() {
    local label=$1 limit=$2
    shift 2
    local kind=$1
    local args=("$@" --host "127.0.0.1:$PORT" --broker-pid "${MEASURED_PID:-$BROKER_PID}" --json
        --label "$label")
    if [[ $NAME == roost* ]]; then
        local line="roost-loadgen" a
        for a in "${args[@]}"; do
            if [[ "$a" =~ ^[A-Za-z0-9_./:=,+-]+$ ]]; then
                line+=" $a"
            else
                line+=" '$a'" # no label here has a single quote
            fi
        done
        echo "$line" >>"$COMMANDS"
    fi
    log "$NAME: $label"
    local status=0 reason
    timeout --kill-after=10 "$limit" "$LOADGEN" "${args[@]}" >>"$OUT" || status=$?
    if ((status != 0)); then
        if ((status == 124 || status == 137)); then
            reason="timed out after $limit s"
        else
            reason="exit status $status"
        fi
        log "$NAME: scenario '$label' failed: $reason"
        python3 -c 'import json, sys
print(json.dumps({"scenario": sys.argv[1], "label": sys.argv[2], "run_failed": sys.argv[3]},
                 ensure_ascii=False))' "$kind" "$label" "$reason" >>"$OUT"
    fi
    settle
}

# settle: let the broker finish whatever the last run left in its sockets (a saturating QoS 0
# run leaves a backlog) before the next one: at least 2 s, then until it used less than 10 %
# of a core over half a second, at most 30 s more.
settle() {
    sleep 2
    local before after
    for _ in $(seq 1 60); do
        before="$(broker_ticks)"
        sleep 0.5
        after="$(broker_ticks)"
        # /proc/PID/stat counts 100 ticks per second: 5 ticks in 0.5 s is 10 % of a core.
        (( after - before <= 5 )) && return 0
    done
    log "$NAME still busy after 30 s; going on"
}

broker_ticks() { # utime + stime of the broker, in clock ticks
    awk '{ print $14 + $15 }' "/proc/$BROKER_PID/stat" 2>/dev/null || echo 0
}

# Labels benches/targets.py finds the issue's rows by (keep the two in step).
CONNECT_LABEL="connect 10000 at 30000/s offered, 500 in flight"
PACED_QOS1_LABEL="4 pub → 4 sub at 50000 msg/s offered, QoS 1, 64 B"
fan_in_label() { # QOS
    if [[ $1 == 1 ]]; then
        echo "fan-in 20 pub → 1 sub, QoS 1 (window 32), 64 B"
    else
        echo "fan-in 20 pub → 1 sub, QoS $1, 64 B"
    fi
}
paced_fan_out_label() { echo "fan-out 1 pub at $1 msg/s → 500 sub, QoS 0, 64 B"; }
CROSS_NODE_LABEL="3 nodes: fan-in 20 pub on node 1 → 1 sub on node 2, QoS 1 (window 32), 64 B"
CROSS_FAN_OUT_LABEL="3 nodes: fan-out 1 pub on node 1 → 50 sub on nodes 2 and 3, QoS 1, 64 B"
CROSS_PACED_FAN_OUT_LABEL="3 nodes: fan-out 1 pub on node 1 at 100 msg/s → 500 sub on nodes 2 and 3, QoS 0, 64 B"

# Persistent sessions, on a broker process of their own: after the clean idle run in the same
# process, they would reuse the memory it freed (Mosquitto then reads 0.02 KiB per session).
run_persistent_idle() {
    scenario "idle $IDLE_CONNECTIONS, persistent sessions, 1 subscription each" \
        $((IDLE_HOLD + 240)) idle --connections "$IDLE_CONNECTIONS" --subscribe \
        --session-expiry-secs 3600 --hold-secs "$IDLE_HOLD"
}

run_scenarios() {
    local limit=$((DURATION + 60))
    local t=(throughput --payload 64 --duration-secs "$DURATION")
    scenario "idle $IDLE_CONNECTIONS, 1 subscription each" $((IDLE_HOLD + 240)) \
        idle --connections "$IDLE_CONNECTIONS" --subscribe --hold-secs "$IDLE_HOLD"
    scenario "$CONNECT_LABEL" 240 \
        idle --connections 10000 --concurrency 500 --connect-rate 30000 --hold-secs 1
    for qos in 0 1; do
        scenario "4 pub → 4 sub, QoS $qos, 64 B" "$limit" \
            "${t[@]}" --publishers 4 --subscribers 4 --qos "$qos"
    done
    scenario "$PACED_QOS1_LABEL" "$limit" \
        "${t[@]}" --publishers 4 --subscribers 4 --qos 1 --rate 12500
    scenario "$(fan_in_label 0)" "$limit" \
        "${t[@]}" --publishers 20 --subscribers 1 --fan-in --qos 0
    scenario "$(fan_in_label 1)" "$limit" \
        "${t[@]}" --publishers 20 --subscribers 1 --fan-in --qos 1 --window 32
    for qos in 0 1; do
        scenario "fan-out 1 pub → 50 sub, QoS $qos, 64 B" "$limit" \
            "${t[@]}" --publishers 1 --subscribers 50 --fanout --qos "$qos"
    done
    for rate in 100 2000; do
        scenario "$(paced_fan_out_label "$rate")" "$limit" \
            "${t[@]}" --publishers 1 --subscribers 500 --fanout --qos 0 --rate "$rate"
    done
    for qos in 0 1; do
        scenario "shared 4 pub → 4 sub in one group, QoS $qos, 64 B" "$limit" \
            "${t[@]}" --publishers 4 --subscribers 4 --shared bench --qos "$qos"
    done
    for qos in 0 1; do
        scenario "round-trip 1 client, QoS $qos, 64 B" "$limit" \
            round-trip --clients 1 --qos "$qos" --payload 64 --duration-secs "$DURATION"
    done
    scenario "subscribe 4 clients × 250 new filters" 180 \
        subscribe-latency --clients 4 --subscriptions 250 --max-secs 120
}

# Other work on the machine skews every number here: record the load around the runs.
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
START=$SECONDS

# --- 2. roost --------------------------------------------------------------------------------
NAME=roost
PORT=$ROOST_PORT
OUT="$WORK/roost.jsonl"
: >"$OUT"
ROOST_VERSION="$("$ROOST" --version 2>/dev/null || echo "roost (unknown version)")"
ROOST_CMD=(serve --mqtt "127.0.0.1:$PORT" --http 127.0.0.1:0
    --cluster "127.0.0.1:$ROOST_CLUSTER_PORT" --data-dir "$WORK/roost-data")
start_roost() { # a fresh process and data directory
    rm -rf "$WORK/roost-data"
    log "starting $ROOST_VERSION on 127.0.0.1:$PORT"
    ROOST_NODE__SYS_INTERVAL_SECS=0 ROOST_LOG__LEVEL=warn \
        "$ROOST" "${ROOST_CMD[@]}" >"$WORK/roost.log" 2>&1 &
    BROKER_PID=$!
    if ! wait_for_port "$PORT"; then
        log "roost did not start:"
        tail -20 "$WORK/roost.log" >&2
        exit 1
    fi
}
start_roost
run_scenarios
stop_broker
start_roost
run_persistent_idle
stop_broker

# The cross-node runs: a 3-node dev-cluster (node i: MQTT 24000+i, HTTP 24100+i, cluster
# 24200+i), the fan-in's publishers on node 1 and its subscriber on node 2, the fan-outs'
# publisher on node 1 and their subscribers on nodes 2 and 3; CPU is node 1's.
NAME=roost-cluster
OUT="$WORK/roost-cluster.jsonl"
: >"$OUT"
CLUSTER_BASE=24000
CLUSTER_CMD=(dev-cluster --nodes 3 --base-port "$CLUSTER_BASE" --data-dir "$WORK/cluster-data")
log "starting a 3-node dev-cluster on 127.0.0.1:$CLUSTER_BASE-$((CLUSTER_BASE + 2))"
ROOST_NODE__SYS_INTERVAL_SECS=0 ROOST_LOG__LEVEL=warn \
    "$ROOST" "${CLUSTER_CMD[@]}" >"$WORK/cluster.log" 2>&1 &
BROKER_PID=$!
if bench_wait_cluster "$WORK/cluster.log" "$BROKER_PID" 3; then
    PORT=$CLUSTER_BASE
    MEASURED_PID="$(bench_pid_on "$CLUSTER_BASE")"
    scenario "$CROSS_NODE_LABEL" $((DURATION + 60)) \
        throughput --payload 64 --duration-secs "$DURATION" --publishers 20 --subscribers 1 \
        --fan-in --qos 1 --window 32 --pub-nodes "127.0.0.1:$CLUSTER_BASE" \
        --sub-nodes "127.0.0.1:$((CLUSTER_BASE + 1))"
    OTHERS="127.0.0.1:$((CLUSTER_BASE + 1)),127.0.0.1:$((CLUSTER_BASE + 2))"
    scenario "$CROSS_FAN_OUT_LABEL" $((DURATION + 60)) \
        throughput --payload 64 --duration-secs "$DURATION" --publishers 1 --subscribers 50 \
        --fanout --qos 1 --pub-nodes "127.0.0.1:$CLUSTER_BASE" --sub-nodes "$OTHERS"
    scenario "$CROSS_PACED_FAN_OUT_LABEL" $((DURATION + 60)) \
        throughput --payload 64 --duration-secs "$DURATION" --publishers 1 --subscribers 500 \
        --fanout --qos 0 --rate 100 --pub-nodes "127.0.0.1:$CLUSTER_BASE" --sub-nodes "$OTHERS"
    unset MEASURED_PID
else
    log "the dev-cluster did not become ready (no cross-node result):"
    tail -20 "$WORK/cluster.log" >&2
fi
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
start_mosquitto() {
    log "starting $MOSQUITTO_VERSION on 127.0.0.1:$PORT"
    "$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    BROKER_PID=$!
    if ! wait_for_port "$PORT"; then
        log "mosquitto did not start:"
        tail -20 "$WORK/mosquitto.log" >&2
        exit 1
    fi
}
start_mosquitto
run_scenarios
stop_broker
start_mosquitto
run_persistent_idle
stop_broker

# --- 4. plots --------------------------------------------------------------------------------
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
ELAPSED=$((SECONDS - START))
SHA="$(bench_sha)"
STAMP="$(date -u +%Y-%m-%d)-$SHA"
mkdir -p "$RESULTS_DIR"
RESULT="$RESULTS_DIR/$STAMP.md"
PLOTS="$RESULTS_DIR/plots/$STAMP"
INPUTS=(--input "roost=$WORK/roost.jsonl" --input "mosquitto=$WORK/mosquitto.jsonl")
rm -rf "$PLOTS"
if ! "$LOADGEN" plot "${INPUTS[@]}" --out "$PLOTS" >"$WORK/plots.txt"; then
    log "plotting failed; the results have no plots"
    : >"$WORK/plots.txt"
fi
TABLE="$("$LOADGEN" table "${INPUTS[@]}" --input "roost 3 nodes=$WORK/roost-cluster.jsonl")"
TARGETS="$(python3 benches/targets.py --roost "$WORK/roost.jsonl" \
    --mosquitto "$WORK/mosquitto.jsonl" --cluster "$WORK/roost-cluster.jsonl")"

# plot_links DIR_OF_THE_MARKDOWN_FILE: a list of the plots, each linked relative to that dir.
plot_links() {
    local from=$1 svg name
    while read -r svg; do
        [[ -n "$svg" ]] || continue
        name="$(basename "$svg" .svg)"
        echo "- [$name]($(realpath -m --relative-to="$from" "$svg"))"
    done <"$WORK/plots.txt"
}

# common_body MARKDOWN_DIR: everything both files share.
common_body() {
    local from=$1
    echo "$PROVENANCE"
    echo "- load average (1/5/15 min) before the runs: $LOAD_BEFORE; after: $LOAD_AFTER"
    echo "- brokers: $ROOST_VERSION ($BUILD, \$SYS off, log warn); $MOSQUITTO_VERSION"
    echo "  (\`max_queued_messages 1000\`, no persistence)"
    echo "- load generator: roost-loadgen ($BUILD, same machine, same cores as the broker), MQTT v5"
    echo "- wall time of both brokers' runs: ${ELAPSED} s"
    echo
    echo "Memory when the runs ended (\`free -m\`):"
    echo
    bench_free
    echo
    echo "Scenarios: idle = $IDLE_CONNECTIONS connections, one subscription each, ${IDLE_HOLD} s hold, clean sessions and then persistent ones (expiry 3600 s, ended at DISCONNECT);"
    echo "throughput (pairs, fan-in, fan-out, shared) = 1 s warm-up then ${DURATION} s measured,"
    echo "publishers as fast as the window (16 unacknowledged, QoS 1) or TCP (QoS 0) allow;"
    echo "round-trip = one client, one message in flight, ${DURATION} s after 1 s warm-up. Latency"
    echo "is publish-to-delivery (round-trip: to the message's return) on one monotonic clock,"
    echo "HdrHistogram with 3 significant digits; at QoS 0 under saturation it is mostly time"
    echo "spent queued in socket buffers. CPU is % of one core over the measured window. \"lost\""
    echo "counts messages a subscriber had not received when it stopped (nothing for 0.5 s, or"
    echo "5 s after the window): at QoS 0 that is allowed (bounded queues) and includes backlog"
    echo "still in socket buffers; at QoS 1 it means the broker dropped messages it had"
    echo "acknowledged. \"reordered\" counts messages that arrived after a later one from the same"
    echo "publisher; shared-subscription loss and duplicates are counted over the whole group."
    echo
    echo "Issue 10's table, measured by this run (targets and how each is judged:"
    echo "\`benches/targets.py\`):"
    echo
    echo "$TARGETS"
    echo
    echo "All scenarios:"
    echo
    echo "$TABLE"
    echo
    echo "Plots (messages per second and latency p50/p99 per second, both brokers on one chart):"
    echo
    plot_links "$from"
    echo
    echo "<details><summary>Exact commands</summary>"
    echo
    echo '```sh'
    echo "# roost (the same roost-loadgen lines follow against each broker, --host and"
    echo "# --broker-pid changed)"
    echo "ROOST_NODE__SYS_INTERVAL_SECS=0 ROOST_LOG__LEVEL=warn roost ${ROOST_CMD[*]/$WORK/\$TMP}"
    echo "# the cross-node runs (their roost-loadgen lines are the last three of the roost lines below)"
    echo "ROOST_NODE__SYS_INTERVAL_SECS=0 ROOST_LOG__LEVEL=warn roost ${CLUSTER_CMD[*]/$WORK/\$TMP}"
    echo "# mosquitto (config above)"
    echo "mosquitto -c mosquitto.conf"
    sed -e "s|$WORK|\$TMP|g" "$COMMANDS"
    echo "roost-loadgen table --input roost=roost.jsonl --input mosquitto=mosquitto.jsonl"
    echo "roost-loadgen plot --input roost=roost.jsonl --input mosquitto=mosquitto.jsonl --out $PLOTS"
    echo '```'
    echo
    echo "</details>"
}

# --- 5. results -------------------------------------------------------------------------------
{
    echo "# Roost vs Mosquitto, $(date -u +%Y-%m-%d) (commit $SHA)"
    echo
    echo "Written by \`benches/run-compare.sh\`; numbers from one run, nothing edited by hand."
    echo
    common_body "$(dirname "$RESULT")"
    echo
    echo "<details><summary>Raw results (roost-loadgen --json)</summary>"
    echo
    echo '```'
    sed 's/^/roost     /' "$WORK/roost.jsonl"
    sed 's/^/roost-3n  /' "$WORK/roost-cluster.jsonl"
    sed 's/^/mosquitto /' "$WORK/mosquitto.jsonl"
    echo '```'
    echo
    echo "</details>"
} >"$RESULT"
log "wrote $RESULT and $(wc -l <"$WORK/plots.txt") plots in $PLOTS"

mkdir -p "$(dirname "$DOCS_FILE")"
{
    echo "# Benchmarks: Roost beside Mosquitto"
    echo
    echo "The latest run of \`benches/run-compare.sh\` on $(date -u +%Y-%m-%d), commit $SHA; this"
    echo "file is rewritten by every run (the raw JSON lines are in"
    echo "[$(basename "$RESULT")]($(realpath -m --relative-to="$(dirname "$DOCS_FILE")" "$RESULT"))). One machine, both brokers and the"
    echo "load generator on it, loopback only: compare the columns, not these numbers with other"
    echo "machines'. How to run it, and what each scenario measures: \`benches/README.md\`."
    echo
    common_body "$(dirname "$DOCS_FILE")"
} >"$DOCS_FILE"
log "wrote $DOCS_FILE"
cat "$RESULT"
