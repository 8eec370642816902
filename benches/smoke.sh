#!/usr/bin/env bash
# Smoke test of roost-loadgen: every scenario once, about a second each, against a `roost serve`
# this script starts on free loopback ports with a temporary data directory. It checks that
# each scenario *runs* (exit code 0), never how fast: timing and rates on a shared CI machine
# mean nothing, and no number here fails the run.
#
#   cargo build -p roost -p roost-bench --bin roost --bin roost-loadgen
#   benches/smoke.sh
#
# Builds nothing itself: it uses the debug binaries already built.
#   ROOST_BIN    the broker    (default target/debug/roost)
#   LOADGEN_BIN  the generator (default target/debug/roost-loadgen)
#   SMOKE_SECS   measured seconds per scenario (default 1)
#   KEEP=1       keep the work directory (JSON lines, plots, broker log) and print its path
#
# Scenarios (TCP unless said): idle (with subscriptions); throughput pairs, fan-in, fan-out
# (with --nodes naming the one node) and shared subscription, each at QoS 0 and 1; round-trip
# at QoS 0 and 1; subscribe-latency; throughput pairs at QoS 1 over TLS and over QUIC (a CA and
# a certificate for localhost made with openssl; skipped, and said so, when openssl is missing
# or fails); then `table` and `plot` over everything the runs printed. Publishing runs are rate
# limited (--rate) so a debug build on two cores keeps up.
#
# Every step runs under `timeout`; the broker is stopped (SIGTERM, then SIGKILL) on exit. Exit
# status: 0 when every step exited 0, 1 when any did not (each failure is named at the end),
# 2 when the broker or the binaries are missing or the broker does not start.

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOST="${ROOST_BIN:-$ROOT/target/debug/roost}"
LOADGEN="${LOADGEN_BIN:-$ROOT/target/debug/roost-loadgen}"
SECS="${SMOKE_SECS:-1}"

log() { printf '[smoke] %s\n' "$*" >&2; }

for bin in "$ROOST" "$LOADGEN"; do
    if [[ ! -x "$bin" ]]; then
        log "missing $bin: build it first (cargo build -p roost -p roost-bench --bin roost --bin roost-loadgen)"
        exit 2
    fi
done

WORK="$(mktemp -d -t roost-smoke.XXXXXX)"
BROKER_PID=""
cleanup() {
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    if [[ "${KEEP:-0}" == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# --- ports and certificates --------------------------------------------------------------------
# free_port VAR: sets VAR to a loopback port in 20000-32767 (below Linux's ephemeral range, so
# no outgoing connection holds it) that nothing listens on over TCP or UDP and that was not
# handed out before. Without `ss`, a port nothing accepts TCP connections on.
TAKEN=" "
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 12768))
        [[ "$TAKEN" == *" $port "* ]] && continue
        if command -v ss >/dev/null; then
            [[ -z "$(ss -Htuln "sport = :$port" 2>/dev/null)" ]] || continue
        elif (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            continue
        fi
        TAKEN+="$port "
        printf -v "$1" '%s' "$port"
        return 0
    done
    return 1
}

# make_certs DIR: ca.pem, and server.pem / server.key for localhost signed by it.
make_certs() {
    local d=$1
    command -v openssl >/dev/null || return 1
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -keyout "$d/ca.key" -out "$d/ca.pem" -days 2 -subj "/CN=roost smoke CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" &&
        openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
            -keyout "$d/server.key" -out "$d/server.csr" -subj "/CN=localhost" &&
        printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' \
            >"$d/server.ext" &&
        openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
            -CAcreateserial -out "$d/server.pem" -days 2 -extfile "$d/server.ext"
}

SECURE=1
mkdir -p "$WORK/pki"
if ! make_certs "$WORK/pki" >"$WORK/openssl.log" 2>&1; then
    SECURE=0
    log "no certificates (openssl missing or failed): TLS and QUIC runs are skipped"
fi

# --- the broker --------------------------------------------------------------------------------
# ready PORT: the admin API answers /readyz with 200 (a Raft leader exists), up to 20 s.
ready() {
    local port=$1 status
    for _ in $(seq 1 200); do
        kill -0 "$BROKER_PID" 2>/dev/null || return 1
        status="$( (exec 3<>"/dev/tcp/127.0.0.1/$port" &&
            printf 'GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3 &&
            head -c 12 <&3) 2>/dev/null || true)"
        [[ "$status" == "HTTP/1.1 200" || "$status" == "HTTP/1.0 200" ]] && return 0
        sleep 0.1
    done
    return 1
}

start_broker() { # up to 3 tries with fresh ports (another process may take one meanwhile)
    local try
    for try in 1 2 3; do
        free_port MQTT && free_port HTTP && free_port CLUSTER && free_port MQTTS &&
            free_port QUIC || return 1
        local args=(serve --mqtt "127.0.0.1:$MQTT" --http "127.0.0.1:$HTTP"
            --cluster "127.0.0.1:$CLUSTER" --data-dir "$WORK/data-$try" --log-level warn)
        if [[ $SECURE == 1 ]]; then
            args+=(--mqtts "127.0.0.1:$MQTTS" --quic "127.0.0.1:$QUIC"
                --tls-cert "$WORK/pki/server.pem" --tls-key "$WORK/pki/server.key")
        fi
        ROOST_NODE__SYS_INTERVAL_SECS=0 "$ROOST" "${args[@]}" >"$WORK/roost-$try.log" 2>&1 &
        BROKER_PID=$!
        if ready "$HTTP"; then
            log "roost (pid $BROKER_PID) on 127.0.0.1:$MQTT$([[ $SECURE == 1 ]] &&
                echo ", TLS $MQTTS, QUIC $QUIC")"
            return 0
        fi
        log "roost did not start (try $try):"
        tail -5 "$WORK/roost-$try.log" >&2
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=""
    done
    return 1
}

START=$SECONDS
if ! start_broker; then
    log "cannot start the broker"
    exit 2
fi

# --- the steps ---------------------------------------------------------------------------------
JSON="$WORK/smoke.jsonl"
: >"$JSON"
PASSED=()
FAILED=()

# step NAME LIMIT_SECS ARGS...: roost-loadgen ARGS under timeout; JSON lines to $JSON.
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS rc=0
    timeout --kill-after=5 "$limit" "$LOADGEN" "$@" >>"$JSON" 2>"$WORK/step.log" || rc=$?
    if [[ $rc == 0 ]]; then
        PASSED+=("$name")
        log "ok    $name ($((SECONDS - t0)) s)"
    else
        FAILED+=("$name (exit $rc)")
        log "FAIL  $name (exit $rc after $((SECONDS - t0)) s): roost-loadgen $*"
        tail -15 "$WORK/step.log" >&2
    fi
}

TCP=(--host "127.0.0.1:$MQTT" --broker-pid "$BROKER_PID" --json --no-progress)
# Publishing runs: no warm-up, SECS measured, at most 2 s of drain, rate-limited publishers.
RUN=(--warmup-secs 0 --duration-secs "$SECS" --drain-secs 2)
LIMIT=$((SECS + 40))

step "idle" "$LIMIT" idle "${TCP[@]}" --connections 50 --subscribe --hold-secs 1 \
    --label "idle 50"
for qos in 0 1; do
    step "pairs qos$qos" "$LIMIT" throughput "${TCP[@]}" "${RUN[@]}" --qos "$qos" \
        --publishers 2 --subscribers 2 --rate 2000 --label "pairs 2x2 qos$qos"
    step "fan-in qos$qos" "$LIMIT" throughput "${TCP[@]}" "${RUN[@]}" --qos "$qos" \
        --publishers 4 --subscribers 1 --fan-in --rate 1000 --label "fan-in 4x1 qos$qos"
    step "fan-out qos$qos" "$LIMIT" throughput --nodes "127.0.0.1:$MQTT" \
        --broker-pid "$BROKER_PID" --json --no-progress "${RUN[@]}" --qos "$qos" \
        --publishers 1 --subscribers 4 --fanout --rate 1000 --label "fan-out 1x4 qos$qos"
    step "shared qos$qos" "$LIMIT" throughput "${TCP[@]}" "${RUN[@]}" --qos "$qos" \
        --publishers 2 --subscribers 3 --shared smoke --rate 1000 --label "shared 2x3 qos$qos"
    step "round-trip qos$qos" "$LIMIT" round-trip "${TCP[@]}" --warmup-secs 0 \
        --duration-secs "$SECS" --qos "$qos" --clients 2 --timeout-ms 2000 \
        --plot "$WORK/plots-run" --label "round-trip 2 qos$qos"
done
step "subscribe-latency" "$LIMIT" subscribe-latency "${TCP[@]}" --clients 2 \
    --subscriptions 20 --max-secs 30 --label "subscribe-latency 2x20"
if [[ $SECURE == 1 ]]; then
    for transport in tls quic; do
        port=$MQTTS
        [[ $transport == quic ]] && port=$QUIC
        step "pairs qos1 $transport" "$LIMIT" throughput --host "127.0.0.1:$port" \
            --transport "$transport" --ca "$WORK/pki/ca.pem" --server-name localhost \
            --json --no-progress "${RUN[@]}" --qos 1 --publishers 2 --subscribers 2 \
            --rate 1000 --label "pairs 2x2 qos1 $transport"
    done
fi

# table and plot over what the runs printed (their output is not JSON: not appended).
t0=$SECONDS
if timeout 30 "$LOADGEN" table --input "roost=$JSON" >"$WORK/table.md" 2>"$WORK/step.log" &&
    timeout 60 "$LOADGEN" plot --input "roost=$JSON" --out "$WORK/plots" >"$WORK/plots.txt" \
        2>>"$WORK/step.log"; then
    PASSED+=("table + plot")
    log "ok    table + plot ($((SECONDS - t0)) s, $(wc -l <"$WORK/plots.txt") SVG files)"
else
    FAILED+=("table + plot")
    log "FAIL  table + plot"
    tail -15 "$WORK/step.log" >&2
fi

log "done in $((SECONDS - START)) s"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    printf '[smoke] failed: %s\n' "${FAILED[@]}" >&2
fi
echo "smoke: ${#PASSED[@]} passed, ${#FAILED[@]} failed"
[[ ${#FAILED[@]} -eq 0 ]]
