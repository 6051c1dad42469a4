#!/usr/bin/env bash
# Counts what the kernel does for each server of one wasmgate-bench scenario: its system calls
# (futex, epoll_wait, recvfrom, sendto, write), context switches and CPU over 4 s of a run
# (perf stat on tracepoints), then, per thread, voluntary and involuntary context switches
# and CPU ticks over another 4 s (/proc/PID/task/*/status). Together with the bench's user
# and system CPU rows, this tells what a server's own code costs from what handing work
# between threads costs in the kernel. Writes OUTDIR/{wasmgate,baseline}.{stat,threads} and
# OUTDIR/table.md.
#
#   bench/sched.sh OUTDIR echo --clients 100
#
# Needs `perf` (Debian: linux-perf) allowed to read tracepoints (root, or
# kernel.perf_event_paranoid ≤ -1) and a release build of wasmgate-bench (BENCH= overrides
# the path).
set -euo pipefail
out=$1
shift
source "$(dirname "$0")/servers.sh"
start_run "$out" 12 "$@"
events=syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_recvfrom
events+=,syscalls:sys_enter_sendto,syscalls:sys_enter_write,context-switches,task-clock

# Voluntary and involuntary switches and CPU ticks of each thread of the processes $1
# (comma-separated pids).
threads() {
    for task in $(printf '/proc/%s/task/* ' ${1//,/ }); do
        printf '%s %s %s %s\n' "$(basename "$task")" "$(tr ' ' _ <"$task/comm")" \
            "$(awk '/^voluntary_ctxt/ {v = $2} /^nonvoluntary/ {n = $2} END {print v, n}' "$task/status")" \
            "$(awk '{print $14 + $15}' "$task/stat")"
    done | sort
}

for server in wasmgate baseline; do
    pids=$(server_pids "$bench" "$server")
    perf stat -e "$events" -p "$pids" -o "$out/$server.stat" -- sleep 4
    threads "$pids" >"$out/$server.before"
    sleep 4
    threads "$pids" >"$out/$server.after"
    {
        echo "thread name voluntary involuntary cpu-ticks (over 4 s)"
        join "$out/$server.before" "$out/$server.after" |
            awk '{print $1, $2, $7 - $3, $8 - $4, $9 - $5}'
    } >"$out/$server.threads"
    rm "$out/$server.before" "$out/$server.after"
    server_gone "$bench" "$server"
done
wait "$bench"
for server in wasmgate baseline; do
    echo "== $server"
    grep -E '^ +[0-9]' "$out/$server.stat"
    cat "$out/$server.threads"
done
grep -E 'msgs/s|deliveries/s|conns/s|server (user |system )?CPU' "$out/table.md"
