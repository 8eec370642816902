# Shared by benches/run-*.sh (sourced, not run): how a results file says where its numbers
# came from, so every results file records the commit and the hardware the same way.

# Short commit id for the results file name.
bench_sha() {
    git rev-parse --short HEAD 2>/dev/null || echo nogit
}

# The CPU model and count from /proc/cpuinfo (lscpu is not on every machine).
bench_cpu() {
    local model count
    model="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null)"
    count="$(grep -c '^processor' /proc/cpuinfo 2>/dev/null || echo '?')"
    echo "${model:-unknown CPU}, $count logical CPUs in /proc/cpuinfo, $(nproc) available to this process"
}

# Markdown list items: the commit (and any uncommitted files), the CPU, memory and kernel.
bench_provenance() {
    local dirty=""
    if [[ -n "$(git status --porcelain 2>/dev/null)" ]]; then
        dirty=" plus uncommitted changes in the working tree: $(git status --porcelain | awk '{ print $2 }' | paste -sd, -)"
    fi
    local mem
    mem="$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "- commit: \`$(git rev-parse HEAD 2>/dev/null || echo unknown)\`$dirty"
    echo "- CPU: $(bench_cpu)"
    echo "- memory: $mem; kernel $(uname -r)"
}

# `free -m` as an indented code block (memory free when the numbers were taken).
bench_free() {
    echo '```'
    free -m 2>/dev/null || grep -E '^(MemTotal|MemAvailable|SwapTotal)' /proc/meminfo
    echo '```'
}

# The pid listening on 127.0.0.1:PORT (empty if unknown).
bench_pid_on() {
    ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1
}

# bench_wait_cluster LOG PID N: waits up to 30 s until `roost dev-cluster` (process PID, output
# in LOG) says N nodes are ready; returns 1 if it does not (or the process ended).
bench_wait_cluster() {
    local log=$1 pid=$2 n=$3
    for _ in $(seq 1 300); do
        (($(grep -c ' ready: ' "$log" || true) >= n)) && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    (($(grep -c ' ready: ' "$log" || true) >= n))
}
