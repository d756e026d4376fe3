#!/usr/bin/env python3
"""Switch visibility under load, for benches/run.sh.

Runs `wrk -t1 -c50` against PORT for the whole measurement, performs FLIPS
switches one after another, and for each one starts a prober on fresh
connections before the switching command; the prober polls as fast as it can
(one new TCP connection and one GET per poll) and reads the upstream's
`X-Color` header. The figure is the time from the command's start to the
first response from the other color. Prints one line of JSON.

  switchprobe.py PORT FLIPS MODE ARGS...
    MODE switchctl BIN CONFIG        `BIN --config CONFIG flip back` (a process start, as an operator runs it)
    MODE switchctl-api SOCKET        `POST /v1/flip-back` on the admin socket, sent from this process
                                     (no process start: the daemon's own share, like HAProxy's row)
    MODE spawn-api SOCKET            `/bin/true` started and waited for, then the same request: the
                                     floor of any command that is a process (what a process start
                                     costs under this load, plus the daemon's share)
    MODE paired BIN CONFIG SOCKET    switchctl and spawn-api in turn, FLIPS each, under one wrk run:
                                     the CLI and the floor measured side by side (two JSON lines)
    MODE haproxy SOCKET BLUE GREEN   `set server be/up addr 127.0.0.1 port P` on the stats socket
                                     (sent from this process: no process start)
    MODE nginx CONF BLUE_CONF GREEN_CONF   copy the other color's file over CONF, `nginx -c CONF -s reload`
"""
import json, re, socket, statistics, subprocess, sys, threading, time

port, flips, mode, args = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
conns = int(__import__("os").environ.get("CONNS", "50"))
TIMEOUT = 2.0  # a switch not visible by then counts as "not visible"

def get_color():
    s = socket.create_connection(("127.0.0.1", port), timeout=1)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    m = re.search(rb"(?im)^x-color:\s*(\w+)", buf)
    return m.group(1).decode() if m else None

def flip_back_over_api(sock):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(b"POST /v1/flip-back HTTP/1.1\r\nHost: switchctl\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    answer = b""
    while True:  # the NDJSON events, until the daemon closes after `done`
        chunk = s.recv(65536)
        if not chunk:
            break
        answer += chunk
    s.close()
    if b'"outcome":"flipped"' not in answer:
        sys.exit(f"flip back failed: {answer.decode(errors='replace')[-500:]}")

kinds = ["switchctl", "spawn-api"] if mode == "paired" else [mode]
socket_arg = args[2] if mode == "paired" else (args[0] if args else None)

def switch(kind, to_green):
    if kind == "switchctl":
        r = subprocess.run([args[0], "--config", args[1], "flip", "back"], capture_output=True)
        if r.returncode != 0:
            sys.exit(f"flip back failed: {r.stderr.decode()}")
    elif kind == "switchctl-api":
        flip_back_over_api(socket_arg)
    elif kind == "spawn-api":
        subprocess.run(["/bin/true"], check=True, capture_output=True)
        flip_back_over_api(socket_arg)
    elif kind == "haproxy":
        p = args[2] if to_green else args[1]
        s = socket.socket(socket.AF_UNIX)
        s.connect(args[0])
        s.sendall(f"set server be/up addr 127.0.0.1 port {p}\n".encode())
        s.recv(4096)
        s.close()
    elif kind == "nginx":
        src = args[2] if to_green else args[1]
        with open(src, "rb") as f, open(args[0], "wb") as g:
            g.write(f.read())
        subprocess.run(["nginx", "-e", "/dev/null", "-c", args[0], "-s", "reload"], check=True, capture_output=True)
    else:
        sys.exit(f"unknown mode {mode}")

def probe(before, started, out, strays):
    # polls until a response from another color than `before` arrives after
    # the command started; one before it is a stray (an old connection of
    # the proxy's still going to the side the previous switch left), counted
    # and otherwise ignored
    while True:
        try:
            c = get_color()
        except OSError:
            c = None
        now = time.monotonic()
        if c is not None and c != before:
            if not started:
                strays.append(now)
                continue
            out.append(now)
            return
        if started and now - started[0] > TIMEOUT:
            return

def settle(expected):
    # Before a switch, the previous one must be complete for fresh
    # connections: SETTLE answers in a row from `expected`. A proxy that
    # still sends some requests to the old side (HAProxy reusing an idle
    # server connection to the old address) would otherwise make the next
    # prober see "the other side" before the command even starts.
    deadline, streak = time.monotonic() + TIMEOUT, 0
    while streak < SETTLE and time.monotonic() < deadline:
        try:
            streak = streak + 1 if get_color() == expected else 0
        except OSError:
            streak = 0
    return streak >= SETTLE

SETTLE = 5
rounds = flips * len(kinds)
duration = int(rounds * (3 * TIMEOUT + 0.5) + 10)  # an upper bound: wrk is stopped by SIGINT when done
wrk = subprocess.Popen(["wrk", "-t1", f"-c{conns}", f"-d{duration}s", f"http://127.0.0.1:{port}/"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
time.sleep(1.5)
visible = {k: [] for k in kinds}
invisible = {k: 0 for k in kinds}
unsettled, strays = 0, []
before = get_color()
for i in range(rounds):
    kind = kinds[i % len(kinds)]
    if not settle(before):
        unsettled += 1
    started, out = [], []
    t = threading.Thread(target=probe, args=(before, started, out, strays))
    t.start()                     # the prober polls before the command starts
    time.sleep(0.01)
    t0 = time.monotonic()
    started.append(t0)
    switch(kind, before != "green")
    t.join()
    if out:
        visible[kind].append((out[0] - t0) * 1000)
    else:
        invisible[kind] += 1
    before = "green" if before != "green" else "blue"
    time.sleep(0.2)
wrk.send_signal(__import__("signal").SIGINT)  # wrk stops and prints its totals
wout = wrk.communicate()[0]
total = re.search(r"(\d+) requests in", wout)
errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", wout))
m = re.search(r"Non-2xx or 3xx responses: (\d+)", wout)
errs += int(m.group(1)) if m else 0
if not total:
    sys.exit(f"wrk failed:\n{wout}")
for kind in kinds:  # in paired mode, both lines share the run's totals
    v = visible[kind]
    print(json.dumps({
        "mode": kind, "flips": flips, "visible": len(v), "not_visible_within_s": TIMEOUT if invisible[kind] else None,
        "not_visible": invisible[kind], "unsettled_before_switch": unsettled, "strays_before_command": len(strays),
        "median_ms": round(statistics.median(v), 1) if v else None,
        "max_ms": round(max(v), 1) if v else None,
        "requests": int(total.group(1)), "failed": errs, "paired": mode == "paired",
    }))
