#!/usr/bin/env python3
"""A normal client, for benches/attack.sh: what one well-behaved client gets
while the proxy is under attack.

  normalclient.py URL SECONDS

Two threads, each with one keep-alive connection from 127.0.0.2 (so that a
per-client limit counts it apart from attackers on 127.0.0.1), send GETs one
after the other for SECONDS (at most 200,000 requests in all), reconnecting
after a failure. A request fails on an error, a status other than 200, or no
answer within 5 s. Prints one line of JSON: ok, failed, p50_ms, p99_ms.
"""
import http.client, json, sys, threading, time, urllib.parse

url, seconds = urllib.parse.urlsplit(sys.argv[1]), float(sys.argv[2])
MAX_REQUESTS = 200_000
lock = threading.Lock()
latencies, failed = [], [0]


def worker(deadline):
    conn = None
    while time.monotonic() < deadline:
        with lock:
            if len(latencies) + failed[0] >= MAX_REQUESTS:
                return
        if conn is None:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5,
                                              source_address=("127.0.0.2", 0))
        t = time.monotonic()
        try:
            conn.request("GET", url.path or "/", headers={"Host": "normal"})
            resp = conn.getresponse()
            resp.read()
            good = resp.status == 200
            if resp.getheader("connection", "").lower() == "close":
                conn.close(); conn = None
        except Exception:
            good = False
            conn.close(); conn = None
            time.sleep(0.01)
        with lock:
            if good:
                latencies.append(time.monotonic() - t)
            else:
                failed[0] += 1


deadline = time.monotonic() + seconds
threads = [threading.Thread(target=worker, args=(deadline,)) for _ in range(2)]
for th in threads:
    th.start()
for th in threads:
    th.join()
latencies.sort()
pct = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")
print(json.dumps({"ok": len(latencies), "failed": failed[0], "p50_ms": pct(0.50), "p99_ms": pct(0.99)}))
