# Sourced by the scripts that measure the servers of a wasmgate-bench scenario (profile.sh,
# sched.sh): starts the scenario's run and finds each server's processes, which the bench
# starts and stops in turn, wasmgate's first, then the baseline's.

# Starts one run of the scenario "$3"… in the background, measured for $2 seconds, its table
# and log in directory $1; sets `bench` to its pid. BENCH= overrides the bench's path.
start_run() {
    local out=$1 duration=$2
    shift 2
    mkdir -p "$out"
    "${BENCH:-target/release/wasmgate-bench}" "$@" --runs 1 --warmup 2 --duration "$duration" \
        >"$out/table.md" 2>"$out/bench.log" &
    bench=$!
}

# The pattern of server $1's command lines: wasmgate runs as `wasmgate start …` (the bench's
# binary under another name), the baseline as `wasmgate-bench baseline …`.
server_pattern() {
    case $1 in
    wasmgate) echo '^wasmgate start' ;;
    baseline) echo ' baseline --listen' ;;
    esac
}

# Waits for server $2's processes under the bench run $1, past their start (of every process,
# with --layout split) and the warm-up, and prints their pids, comma-separated; fails if
# none appeared.
server_pids() {
    local pattern pids
    pattern=$(server_pattern "$2")
    for _ in $(seq 300); do
        pgrep -P "$1" -f "$pattern" >/dev/null && break
        sleep 0.1
    done
    sleep 3
    pids=$(pgrep -P "$1" -f "$pattern" | paste -sd, -)
    [ -n "$pids" ] || { echo "no $2 process appeared" >&2; return 1; }
    echo "$pids"
}

# Waits until server $2's processes under the bench run $1 are gone (its run is over).
server_gone() {
    while pgrep -P "$1" -f "$(server_pattern "$2")" >/dev/null; do sleep 0.2; done
}
