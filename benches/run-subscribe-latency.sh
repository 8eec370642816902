#!/usr/bin/env bash
# The cost of "SUBACK after the route commits cluster-wide" (docs/rfcs/0002, "SUBACK after
# commit"): roost-loadgen subscribe-latency against one node and against a 3-node dev cluster,
# every filter new (a route change: Raft commit + wait until every member applied it) beside
# the control, the same filters already routed on that node (--existing: no commit).
#
#   benches/run-subscribe-latency.sh   # build, run, write benches/results/<date>-<sha>-subscribe-latency.md
#
# What it does:
#   1. cargo build --release -p roost -p roost-bench (SKIP_BUILD=1 skips it);
#   2. measures this disk's fsync cost where the data directories live (dd oflag=dsync, 4 KiB);
#   3. single node: roost serve on 127.0.0.1:22883 (HTTP 22983, cluster 23083, temporary data
#      dir); new filters, then existing filters;
#   4. roost dev-cluster --nodes 3 --base-port 21000 (node i: MQTT 21000+i, HTTP 21100+i,
#      cluster 21200+i); asks node 0 for the leader; then, each with --publish-host (a QoS 1
#      publish on another node after every SUBACK; none may be lost):
#        follower, new and existing (publishing on the other follower),
#        leader, new and existing (publishing on a follower),
#        follower, new, half the filters shared by all clients;
#      stops the cluster with SIGINT;
#   5. writes the results file: hardware, commit, fsync cost, the exact commands, tables
#      (roost-loadgen table) and the raw JSON lines.
#
# Every step is bounded (timeout); the whole run takes about a minute after the build.
# Environment overrides: CLIENTS=4 SUBS=250 RESULTS_DIR=benches/results SKIP_BUILD=0

set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CLIENTS="${CLIENTS:-4}"
SUBS="${SUBS:-250}"
RESULTS_DIR="${RESULTS_DIR:-benches/results}"
LOADGEN="$ROOT/target/release/roost-loadgen"
ROOST="$ROOT/target/release/roost"
BASE=21000

log() { printf '[run-subscribe-latency] %s\n' "$*" >&2; }

WORK="$(mktemp -d -t roost-sublat.XXXXXX)"
PID=""
cleanup() {
    if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        sleep 2
        kill -KILL "$PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building roost and roost-loadgen (release)"
    cargo build --release -p roost -p roost-bench
fi

COMMANDS="$WORK/commands.txt"
: >"$COMMANDS"

# run COLUMN LABEL ARGS...: one JSON line appended to $WORK/COLUMN.jsonl, summary to stderr.
run() {
    local column=$1 label=$2
    shift 2
    local cmd=(roost-loadgen subscribe-latency --clients "$CLIENTS" --subscriptions "$SUBS" "$@")
    echo "${cmd[*]} --json --label '$label'" >>"$COMMANDS"
    log "$column: $label"
    if ! timeout --kill-after=5 120 "$LOADGEN" "${cmd[@]:1}" --json --label "$label" \
        >>"$WORK/$column.jsonl"; then
        log "run '$label' ($column) failed (no result recorded)"
    fi
    sleep 1
}

wait_ready() { # HTTP port, seconds
    for _ in $(seq 1 $(($2 * 10))); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$1/readyz" 2>/dev/null; then
            return 0
        fi
        kill -0 "$PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

stop() { # SIGNAL: stop $PID, SIGKILL after 15 s
    kill "-$1" "$PID" 2>/dev/null || true
    for _ in $(seq 1 150); do
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$PID" 2>/dev/null; then
        log "$PID did not stop on SIG$1; killing it"
        kill -KILL "$PID" 2>/dev/null || true
    fi
    wait "$PID" 2>/dev/null || true
    PID=""
}

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- fsync cost of this disk -------------------------------------------------------------------
FSYNC_DIR="$(mktemp -d)"
FSYNC="$( { dd if=/dev/zero of="$FSYNC_DIR/f" bs=4k count=500 oflag=dsync 2>&1 >/dev/null || true; } |
    awk '/copied/ { printf "%.3f ms per synchronous 4 KiB write (500 writes in %s s)", $(NF-3) * 1000 / 500, $(NF-3) }')"
rm -rf "$FSYNC_DIR"
FS="$(df -T "$(dirname "$WORK")" | awk 'NR == 2 { print $2 " on " $1 }')"
log "fsync: $FSYNC ($FS)"

# --- single node -------------------------------------------------------------------------------
SINGLE="roost serve --mqtt 127.0.0.1:22883 --http 127.0.0.1:22983 --cluster 127.0.0.1:23083 --data-dir \$(mktemp -d) --log-level warn"
"$ROOST" serve --mqtt 127.0.0.1:22883 --http 127.0.0.1:22983 --cluster 127.0.0.1:23083 \
    --data-dir "$WORK/single" --log-level warn >"$WORK/single.log" 2>&1 &
PID=$!
if ! wait_ready 22983 30; then
    log "single node did not become ready:"
    tail -20 "$WORK/single.log" >&2
    exit 1
fi
echo "# single node: $SINGLE" >>"$COMMANDS"
L="single node"
run new "$L" --host 127.0.0.1:22883 --broker-pid "$PID"
run existing "$L" --host 127.0.0.1:22883 --broker-pid "$PID" --existing
stop TERM

# --- 3-node cluster ------------------------------------------------------------------------------
CLUSTER="roost dev-cluster --nodes 3 --base-port $BASE --data-dir \$(mktemp -d)"
"$ROOST" dev-cluster --nodes 3 --base-port "$BASE" --data-dir "$WORK/cluster" \
    >"$WORK/cluster.log" 2>&1 &
PID=$!
if ! bench_wait_cluster "$WORK/cluster.log" "$PID" 3; then
    log "cluster did not become ready:"
    tail -20 "$WORK/cluster.log" >&2
    exit 1
fi
LEADER_ID=""
for _ in $(seq 1 100); do
    LEADER_ID="$(curl -fsS "127.0.0.1:$((BASE + 100))/api/v1/cluster" 2>/dev/null |
        sed -n 's/.*"leader_id":\([0-9]*\).*/\1/p')"
    [[ -n "$LEADER_ID" ]] && break
    sleep 0.1
done
[[ -n "$LEADER_ID" ]] || { log "no leader"; exit 1; }
LEADER=$((LEADER_ID - 1)) # node index: MQTT BASE+index
FOLLOWERS=()
for i in 0 1 2; do ((i != LEADER)) && FOLLOWERS+=("$i"); done
F0=${FOLLOWERS[0]}
F1=${FOLLOWERS[1]}
mqtt() { echo "127.0.0.1:$((BASE + $1))"; }
node() { echo "node $(($1 + 1))"; }
log "leader: $(node "$LEADER"); followers: $(node "$F0"), $(node "$F1")"
echo "# 3-node cluster: $CLUSTER" >>"$COMMANDS"
echo "# leader: curl -s 127.0.0.1:$((BASE + 100))/api/v1/cluster -> leader_id $LEADER_ID" >>"$COMMANDS"

L="3 nodes: subscribe on follower ($(node "$F0")), publish on follower ($(node "$F1"))"
run new "$L" --host "$(mqtt "$F0")" --publish-host "$(mqtt "$F1")" --broker-pid "$(bench_pid_on $((BASE + F0)))"
run existing "$L" --host "$(mqtt "$F0")" --publish-host "$(mqtt "$F1")" --existing \
    --broker-pid "$(bench_pid_on $((BASE + F0)))"
L="3 nodes: subscribe on leader ($(node "$LEADER")), publish on follower ($(node "$F0"))"
run new "$L" --host "$(mqtt "$LEADER")" --publish-host "$(mqtt "$F0")" \
    --broker-pid "$(bench_pid_on $((BASE + LEADER)))"
run existing "$L" --host "$(mqtt "$LEADER")" --publish-host "$(mqtt "$F0")" --existing \
    --broker-pid "$(bench_pid_on $((BASE + LEADER)))"
L="3 nodes: subscribe on follower ($(node "$F0")), publish on follower ($(node "$F1")), 50 % shared filters"
run shared "$L" --host "$(mqtt "$F0")" --publish-host "$(mqtt "$F1")" --shared-filter-fraction 0.5 \
    --broker-pid "$(bench_pid_on $((BASE + F0)))"
stop INT
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- results -------------------------------------------------------------------------------------
SHA="$(bench_sha)"
mkdir -p "$RESULTS_DIR"
RESULT="$RESULTS_DIR/$(date -u +%Y-%m-%d)-$SHA-subscribe-latency.md"
{
    echo "# SUBACK after commit: subscribe latency, $(date -u +%Y-%m-%d) (commit $SHA)"
    echo
    echo "Written by \`benches/run-subscribe-latency.sh\`; numbers from one run, nothing edited by hand."
    echo
    bench_provenance
    echo "- disk: $FS; fsync: $FSYNC (dd oflag=dsync)"
    echo "- load average (1/5/15 min) before the runs: $LOAD_BEFORE; after: $LOAD_AFTER"
    echo "- roost $("$ROOST" --version 2>/dev/null | awk '{ print $2 }') release build; roost-loadgen on the same machine and cores, MQTT v5"
    echo "- $CLIENTS clients x $SUBS SUBSCRIBEs each (one filter per SUBSCRIBE, each waiting for its SUBACK)"
    echo
    echo "Commands (\`roost\` and \`roost-loadgen\` are target/release/):"
    echo
    echo '```sh'
    cat "$COMMANDS"
    echo '```'
    echo
    "$LOADGEN" table --input "new filters=$WORK/new.jsonl" --input "existing filters=$WORK/existing.jsonl"
    echo
    "$LOADGEN" table --input "new filters, 50 % shared=$WORK/shared.jsonl"
    echo
    echo "<details><summary>Raw results (roost-loadgen --json)</summary>"
    echo
    echo '```'
    sed 's/^/new      /' "$WORK/new.jsonl"
    sed 's/^/existing /' "$WORK/existing.jsonl"
    sed 's/^/shared   /' "$WORK/shared.jsonl"
    echo '```'
    echo
    echo "</details>"
} >"$RESULT"
log "wrote $RESULT"
cat "$RESULT"
