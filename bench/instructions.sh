#!/usr/bin/env bash
# Counts the user-space instructions each server executes per echo message (or per connection:
# connect, upgrade, one echo, close), under valgrind's callgrind: wasmgate in one process with
# the reference plugin, the hand-off baseline and the direct baseline. Instruction counts do not move with the load of a shared machine, so a
# change of a few hundred instructions per message (0.1 µs) shows here when no timed run can
# show it; the kernel's share (the sends and receives) is not counted. Writes
# OUTDIR/<server>.callgrind and OUTDIR/<server>.txt (callgrind_annotate, inclusive) and
# prints one line per server.
#
#   bench/instructions.sh OUTDIR echo|connect [CLIENTS] [COUNT_EACH]
#
# Threads run one at a time under valgrind, so a task woken for one message rarely finds a
# second queued: hops that batch under load (the link readers) count as if they did not.
# Needs valgrind, python3, a release build of wasmgate-bench (BENCH= overrides the path) and
# the reference plugin built by the test crate (target/plugins/…/commands.wasm).
set -euo pipefail
out=$1
scenario=$2
clients=${3:-20}
each=${4:-1000}
bench=$(realpath "${BENCH:-target/release/wasmgate-bench}")
plugin=$(realpath target/plugins/wasm32-wasip2/plugin/commands.wasm)
here=$(dirname "$(realpath "$0")")
mkdir -p "$out"
out=$(realpath "$out")
run=$(mktemp -d)
trap 'pkill -P $$ || true; rm -rf "$run"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 600); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null && return
        sleep 0.2
    done
    echo "nothing listens on $1" >&2
    exit 1
}

# Runs "$@" under callgrind, serving port $2's clients; $1 names the server.
count() {
    local name=$1 port=$2
    shift 2
    valgrind --tool=callgrind --callgrind-out-file="$run/$name.%p" "$@" >"$run/$name.log" 2>&1 &
    local server=$!
    wait_port "$port"
    python3 "$here/ws_client.py" "$scenario" "$port" "$clients" 50 >/dev/null # warm-up
    callgrind_control -z "$server" >/dev/null 2>&1
    local replies
    replies=$(python3 "$here/ws_client.py" "$scenario" "$port" "$clients" "$each")
    callgrind_control -d "$server" >/dev/null 2>&1
    # The dump is written when one of the server's threads next runs.
    for _ in $(seq 100); do
        compgen -G "$run/$name.*.1" >/dev/null && break
        sleep 0.1
    done
    kill "$server"
    wait "$server" || true
    mv "$run/$name".*.1 "$out/$name.callgrind"
    callgrind_annotate --inclusive=yes "$out/$name.callgrind" >"$out/$name.txt" 2>/dev/null
    local total
    total=$(grep 'PROGRAM TOTALS' "$out/$name.txt" | awk '{gsub(",","",$1); print $1}')
    local unit=message
    [ "$scenario" = connect ] && unit=connection
    echo "$name: $((total / replies)) instructions per $unit ($replies of them)"
}

# wasmgate: the bench's single-process configuration; its plugin compiled once outside
# valgrind (the compile cache), as cranelift under valgrind takes minutes.
register=$(free_port)
gateway=$(free_port)
mkdir "$run/plugins"
cp "$plugin" "$run/plugins/commands.wasm"
cat >"$run/wasmgate.toml" <<EOF
secret = "wasmgate-bench"
[register]
listen = "127.0.0.1:$register"
[worker]
register = "127.0.0.1:$register"
plugins = "$run/plugins"
cache = "$run/compile-cache"
[[gateway]]
name = "gw0"
listen = "ws://127.0.0.1:$gateway"
app = "commands"
register = "127.0.0.1:$register"
max_connections = 1000000
max_connections_per_ip = 0
EOF
# The bench binary is wasmgate when invoked under that name.
ln -s "$bench" "$run/wasmgate"
"$run/wasmgate" start -c "$run/wasmgate.toml" >"$run/prime.log" 2>&1 &
wait_port "$gateway"
python3 "$here/ws_client.py" echo "$gateway" 1 1 >/dev/null
kill $!
wait $! || true
count wasmgate "$gateway" "$run/wasmgate" start -c "$run/wasmgate.toml"

for shape in handed-off direct; do
    port=$(free_port)
    count "$shape" "$port" "$bench" baseline --listen "127.0.0.1:$port" --proto ws \
        --ws-lib fastwebsockets --shape "$shape"
done
