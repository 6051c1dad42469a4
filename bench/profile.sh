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
bin=${BENCH:-target/release/wasmgate-bench}
mkdir -p "$out"
"$bin" "$@" --runs 1 --warmup 2 --duration 8 >"$out/table.md" 2>"$out/bench.log" &
bench=$!
for server in wasmgate baseline; do
    # wasmgate runs as `wasmgate start …` (this binary under another name), the baseline as
    # `wasmgate-bench baseline …`.
    case $server in
    wasmgate) pattern='^wasmgate start' ;;
    baseline) pattern=' baseline --listen' ;;
    esac
    for _ in $(seq 300); do
        pgrep -P "$bench" -f "$pattern" >/dev/null && break
        sleep 0.1
    done
    sleep 3 # past the start (of every process, with --layout split) and the warm-up
    pids=$(pgrep -P "$bench" -f "$pattern" | paste -sd, -)
    [ -n "$pids" ] || { echo "no $server process appeared" >&2; exit 1; }
    perf record -q -e cpu-clock -F 499 -g -p "$pids" -o "$out/$server.data" -- sleep 5
    perf report -i "$out/$server.data" --no-children --sort dso,sym --stdio \
        >"$out/$server.txt" 2>/dev/null
    while pgrep -P "$bench" -f "$pattern" >/dev/null; do sleep 0.2; done
done
wait "$bench"
cat "$out/table.md"
