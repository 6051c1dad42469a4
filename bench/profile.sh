#!/usr/bin/env bash
# Profiles the servers of one wasmgate-bench scenario with perf: cpu-clock sampling (these
# VMs expose no hardware counters) of every wasmgate process, then of the baseline, while
# the scenario runs once. Writes OUTDIR/{wasmgate,baseline}.{data,txt} and OUTDIR/table.md.
#
#   bench/profile.sh OUTDIR echo --clients 100
#   bench/profile.sh OUTDIR fanout --members 10000
#
# Needs `perf` (Debian: linux-perf) and a release build of wasmgate-bench (BENCH= overrides
# the path). Symbols come from the release binary; add debug info for call graphs.
set -euo pipefail
out=$1
shift
source "$(dirname "$0")/servers.sh"
start_run "$out" 8 "$@"
for server in wasmgate baseline; do
    pids=$(server_pids "$bench" "$server")
    perf record -q -e cpu-clock -F 499 -g -p "$pids" -o "$out/$server.data" -- sleep 5
    perf report -i "$out/$server.data" --no-children --sort dso,sym --stdio \
        >"$out/$server.txt" 2>/dev/null
    server_gone "$bench" "$server"
done
wait "$bench"
cat "$out/table.md"
