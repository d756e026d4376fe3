#!/usr/bin/env bash
# Attackers no one here wrote, against a release build of the daemon, with a
# normal client measuring what it gets meanwhile. Not run by CI.
#
# One `switchctl proxy` (process driver, the testapp as upstream) on
# 127.0.0.1; each attack runs ATTACK_S seconds from 127.0.0.1 while the
# normal client (benches/normalclient.py, 2 keep-alive connections from
# 127.0.0.2, so that the per-client limit sees two clients) sends GETs.
# Attacks, in order:
#   slowhttptest -H   slow headers (slowloris), CONNS connections
#   slowhttptest -B   slow body (R-U-Dead-Yet), CONNS connections
#   slowhttptest -X   slow read, CONNS connections, 1 MiB answers read 32 B at a time
#   h2load            HTTP/2 flood, 100 connections x 10 streams
#   idle              IDLE connections that each sent one request, then nothing
# For each: the normal client's successes, failures, p50/p99, and the
# daemon's descriptors and RSS before, at the peak during, and SETTLE_S after.
# Prints a markdown table (docs/reliability.md, "Attackers").
#
#   benches/attack.sh                       # per-client limit at its default (256)
#   PER_IP=0 benches/attack.sh              # as if every attacker had its own address
#   ATTACK_S=10 SETTLE_S=5 IDLE=2000 benches/attack.sh   # a quick run
#   SWITCHCTL_BIN=... TESTAPP_BIN=... benches/attack.sh  # given builds
#   ATTACKS="none X" benches/attack.sh      # some of: none H B X h2 idle
#
# Everything listens on loopback and is stopped at the end; the whole run is
# bounded (5 attacks x (ATTACK_S + SETTLE_S) plus start-up).
set -euo pipefail
cd "$(dirname "$0")/.."
ATTACK_S=${ATTACK_S:-30}
SETTLE_S=${SETTLE_S:-10}
CONNS=${CONNS:-1000}
IDLE=${IDLE:-10000}
PER_IP=${PER_IP:-256}
ATTACKS=${ATTACKS:-"none H B X h2 idle"}

# 10k connections need 10k descriptors in the holder and in the daemon.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (( $(ulimit -n) < IDLE + 2000 )); then
    echo "ulimit -n is $(ulimit -n): IDLE=$IDLE needs $((IDLE + 2000))" >&2
    exit 2
fi
for tool in slowhttptest:slowhttptest h2load:nghttp2-client python3:python3; do
    command -v "${tool%%:*}" >/dev/null || { echo "needs ${tool%%:*} (apt-get install ${tool#*:})" >&2; exit 2; }
done
if [[ -z ${SWITCHCTL_BIN:-} ]]; then
    cargo build --release -q
    SWITCHCTL_BIN=$PWD/target/release/switchctl
fi
if [[ -z ${TESTAPP_BIN:-} ]]; then
    cargo build --release -q -p switchctl-testapp
    TESTAPP_BIN=$PWD/target/release/testapp
fi

WORK=$(mktemp -d /tmp/switchctl-attack.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [[ -f $WORK/state/state.json ]]; then
        grep -o '"pid": [0-9]*' "$WORK/state/state.json" | awk '{print $2}' |
            while read -r pid; do kill -- "-$pid" 2>/dev/null || true; done
    fi
    [[ -n ${DAEMON:-} ]] && kill "$DAEMON" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/switchctl.toml" <<TOML
driver = "process"
state_dir = "$WORK/state"
[proxy]
listen = ["127.0.0.1:$PORT"]
admin_socket = "$WORK/admin.sock"
drain_timeout = "5s"
max_connections_per_ip = $PER_IP
[deploy]
health_check_interval = "100ms"
[[service]]
name = "web"
command = ["$TESTAPP_BIN", "--bind", "127.0.0.1", "--port", "{port}", "--version", "{tag}"]
health = { path = "/health" }
TOML
"$SWITCHCTL_BIN" --config "$WORK/switchctl.toml" proxy >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
for _ in $(seq 1 100); do [[ -S $WORK/admin.sock ]] && break; sleep 0.05; done
"$SWITCHCTL_BIN" --config "$WORK/switchctl.toml" deploy v1 >/dev/null
BASE=http://127.0.0.1:$PORT

rss() { awk '/VmRSS/ {print $2}' "/proc/$DAEMON/status"; }
fds() { ls "/proc/$DAEMON/fd" | wc -l; }

# The idle holder: IDLE connections, one answered request each, held.
cat > "$WORK/idle.py" <<'PY'
import asyncio, sys
port, n, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
async def one(sem, held):
    async with sem:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            w.write(b"GET / HTTP/1.1\r\nHost: attack\r\n\r\n")
            await w.drain()
            await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            held.append(w)
        except Exception:
            pass
async def main():
    held, sem = [], asyncio.Semaphore(500)
    await asyncio.gather(*(one(sem, held) for _ in range(n)))
    await asyncio.sleep(hold)
    for w in held:
        w.close()
asyncio.run(main())
PY

ROWS=$WORK/rows
: > "$ROWS"
run_attack() { # key label command...
    local key=$1 label=$2; shift 2
    [[ " $ATTACKS " == *" $key "* ]] || return 0
    local rss0 fds0 peak_rss=0 peak_fds=0 r f
    rss0=$(rss); fds0=$(fds)
    python3 benches/normalclient.py "$BASE/" "$ATTACK_S" > "$WORK/normal.json" &
    local normal=$!
    PIDS+=("$normal")
    "$@" > "$WORK/attack.log" 2>&1 &
    local attacker=$!
    PIDS+=("$attacker")
    for _ in $(seq 1 "$ATTACK_S"); do
        sleep 1
        r=$(rss); f=$(fds)
        (( r > peak_rss )) && peak_rss=$r
        (( f > peak_fds )) && peak_fds=$f
    done
    wait "$normal" || true
    # An attacker that outlives its time is stopped: the run stays bounded.
    kill "$attacker" 2>/dev/null || true
    wait "$attacker" 2>/dev/null || true
    sleep "$SETTLE_S"
    python3 - "$label" "$rss0" "$fds0" "$peak_rss" "$peak_fds" "$(rss)" "$(fds)" "$WORK/normal.json" >> "$ROWS" <<'PY'
import json, sys
label, rss0, fds0, rssp, fdsp, rss1, fds1, normal = sys.argv[1:]
n = json.load(open(normal))
mib = lambda k: f"{int(k) / 1024:.1f}"
print(f"| {label} | {n['ok']} | {n['failed']} | {n['p50_ms']:.2f} | {n['p99_ms']:.2f} | "
      f"{fds0} / {fdsp} / {fds1} | {mib(rss0)} / {mib(rssp)} / {mib(rss1)} |")
PY
    echo "done: $label" >&2
}

run_attack none "none (baseline)" sleep "$ATTACK_S"
run_attack H "slowhttptest -H, $CONNS conns" \
    slowhttptest -H -c "$CONNS" -r 200 -i 10 -x 24 -l "$ATTACK_S" -u "$BASE/"
run_attack B "slowhttptest -B, $CONNS conns" \
    slowhttptest -B -c "$CONNS" -r 200 -i 10 -x 24 -s 8192 -l "$ATTACK_S" -u "$BASE/upload"
run_attack X "slowhttptest -X, $CONNS conns" \
    slowhttptest -X -c "$CONNS" -r 200 -w 512 -y 1024 -n 5 -z 32 -k 3 -l "$ATTACK_S" -u "$BASE/stream?bytes=1048576"
run_attack h2 "h2load, 100 conns x 10 streams" \
    h2load -D "$ATTACK_S" -c 100 -m 10 "$BASE/"
run_attack idle "$IDLE idle connections" \
    python3 "$WORK/idle.py" "$PORT" "$IDLE" "$ATTACK_S"

echo
echo "max_connections_per_ip = $PER_IP; $ATTACK_S s per attack, 'after' is $SETTLE_S s after it ended"
echo "| attack | normal client ok | failed | p50 ms | p99 ms | daemon fds before / peak / after | RSS MiB before / peak / after |"
echo "|---|---|---|---|---|---|---|"
cat "$ROWS"
