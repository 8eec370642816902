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
