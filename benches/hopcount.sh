#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: repeatable on a
# loaded machine, where wall-clock benchmarks are not (docs/benchmarks.md,
# "Upstream hop, session 3").
#
# Runs the data plane alone (proxy/examples/hop.rs, `profiling` profile:
# release with symbols) under callgrind in front of the test app, drives N1
# then N2 keep-alive requests over C connections (benches/hopload.py), and
# prints (Ir(N2) - Ir(N1)) / (N2 - N1): start-up, connection set-up and
# shutdown cancel out.
#
#   benches/hopcount.sh                  # this tree
#   HOP_BIN=/tmp/hop-before benches/hopcount.sh   # a given build, to compare
#   C=50 N1=5000 N2=15000 benches/hopcount.sh
#   KEEP=1 benches/hopcount.sh           # keep the N2 profile for callgrind_annotate
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-2000} N2=${N2:-12000} C=${C:-10}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
cargo build -q --profile profiling -p switchctl-proxy --example hop -p switchctl-testapp --bin testapp
HOP=${HOP_BIN:-$PWD/target/profiling/examples/hop}
WORK=$(mktemp -d /tmp/switchctl-hopcount.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [[ -n ${KEEP:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $1)).close()" 2>/dev/null && return
        sleep 0.2
    done
    echo "nothing listens on $1" >&2; exit 1
}

UP=$(free_port)
target/profiling/testapp --bind 127.0.0.1 --port "$UP" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$UP"

# Ir of the proxy process for $1 requests.
count() {
    local n=$1 port out fifo pid
    port=$(free_port) out=$WORK/callgrind.$n.out fifo=$WORK/stdin.$n
    mkfifo "$fifo"
    valgrind --tool=callgrind --callgrind-out-file="$out" "$HOP" "127.0.0.1:$port" "127.0.0.1:$UP" 1 \
        <"$fifo" 2>"$WORK/valgrind.$n.log" &
    pid=$!
    PIDS+=($pid)
    exec 9>"$fifo"    # the proxy runs until its stdin closes
    wait_port "$port"
    python3 benches/hopload.py "$port" "$n" "$C"
    exec 9>&-
    wait "$pid"
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}
A=$(count "$N1")
B=$(count "$N2")
echo "$(basename "$HOP"): $(( (B - A) / (N2 - N1) )) instructions per request (C=$C, N=$N1..$N2; Ir $A, $B)"
[[ -z ${KEEP:-} ]] || echo "profiles kept in $WORK" >&2
