#!/usr/bin/env python3
"""Where the milliseconds of `switchctl flip back` go, for benches/run.sh.

  flipsplit.py BIN CONFIG DAEMON_LOG FLIPS

For each of FLIPS flips back, the wall clock just before the CLI process is
started, the route swap's time as the daemon logs it (its `traffic now goes
to` line, microseconds), and the CLI's exit. Next to them, the same CLI
started for nothing (`--version`: exec, dynamic loading, clap, exit) and for
the cheapest round trip to the daemon (`status --json`: the config read to
find the socket, the connect, one admin request). Prints one line of JSON
with medians in ms:

  start_only      `switchctl --version`, start to exit
  status          `switchctl status --json`, start to exit
  to_swap         flip back: CLI start to the route swap (the visible part)
  swap_to_exit    flip back: route swap to CLI exit (state save, drain, history)

`to_swap - status` is what the daemon does before the swap beyond a plain
request: the operation lock, the standby's health probe, the intent write.
"""
import datetime, json, re, statistics, subprocess, sys, time

bin_, config, log, flips = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
SWAP = re.compile(r"^(\S+Z)\s.*traffic now goes to")

def run(*args):
    t0 = time.time()
    r = subprocess.run([bin_, "--config", config, *args], capture_output=True)
    t1 = time.time()
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed: {r.stderr.decode()}")
    return t0, t1

def swaps():
    out = []
    with open(log, errors="replace") as f:
        for line in f:
            m = SWAP.match(line)
            if m:
                out.append(datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp())
    return out

def ms(xs):
    return round(statistics.median(xs) * 1000, 2)

start_only = [b - a for a, b in (run("--version") for _ in range(flips))]
status = [b - a for a, b in (run("status", "--json") for _ in range(flips))]
to_swap, swap_to_exit = [], []
for _ in range(flips):
    seen = len(swaps())
    t0, t1 = run("flip", "back")
    new = swaps()[seen:]
    if len(new) != 1:
        sys.exit(f"expected one swap line in {log} for this flip, found {len(new)}")
    to_swap.append(new[0] - t0)
    swap_to_exit.append(t1 - new[0])
    time.sleep(0.1)
print(json.dumps({"flips": flips, "start_only_ms": ms(start_only), "status_ms": ms(status),
                  "to_swap_ms": ms(to_swap), "swap_to_exit_ms": ms(swap_to_exit)}))
