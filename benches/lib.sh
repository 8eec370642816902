# Shared by benches/run-*.sh (sourced, not run): how a results file says where its numbers
# came from, so every results file records the commit and the hardware the same way.

# Short commit id for the results file name.
bench_sha() {
    git rev-parse --short HEAD 2>/dev/null || echo nogit
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
    echo "- CPU: $(lscpu | grep 'Model name' | sed 's/Model name:[[:space:]]*//' | head -1), $(nproc) cores available"
    echo "- memory: $mem; kernel $(uname -r)"
}
