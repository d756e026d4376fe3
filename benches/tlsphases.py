#!/usr/bin/env python3
"""Where the time of a new TLS connection goes, read off the wire.

usage: tlsphases.py CAPTURE.pcap SERVER_PORT LABEL

Reads a loopback capture (tcpdump -w, full packets) of wrk's
`Connection: close` runs against one TLS proxy and prints one JSON line:
for every connection seen whole (SYN to the client's close_notify), the moments of
its TLS records, split into phases, each as p50/p90/p99 in ms:

- server_hello: ClientHello sent -> server's first flight (the server's
  accept queue and handshake work);
- client_finish: server's flight -> client's Finished (the client's work);
- client_request: client's Finished -> its request;
- server_response: request -> the response's last record (the proxy and the
  upstream; what the proxy's user waits for once the handshake is done);
- client_read: response -> the client's close_notify. wrk reads the
  response, records its latency and closes at once, so this is how long the
  response waited for wrk's event loop. wrk's reported latency is about server_response +
  client_read.

TLS 1.3 as wrk (OpenSSL 3) negotiates it with all three peers: the client's
first application-data record is its Finished, the second its request, and
its close_notify the first shorter than 40 bytes after them (against
HAProxy, wrk sometimes writes its request a second time before the answer);
the server's last application-data record of 40 bytes or more is the
response.
"""
import json
import struct
import sys


def packets(path):
    """(time, source port, destination port, TCP flags, payload) per packet."""
    with open(path, "rb") as f:
        head = f.read(24)
        nano = struct.unpack("<I", head[:4])[0] == 0xA1B23C4D
        link = struct.unpack("<I", head[20:24])[0]
        skip = {1: 14, 113: 16, 276: 20}.get(link)  # Ethernet, Linux SLL, SLL2
        if skip is None:
            sys.exit(f"{path}: link type {link} is not one this script reads")
        while len(rec := f.read(16)) == 16:
            sec, frac, incl, _ = struct.unpack("<IIII", rec)
            data = f.read(incl)[skip:]
            ihl = (data[0] & 15) * 4
            total = struct.unpack(">H", data[2:4])[0]
            tcp = data[ihl:total]
            sport, dport = struct.unpack(">HH", tcp[:4])
            off = (tcp[12] >> 4) * 4
            yield sec + frac / (1e9 if nano else 1e6), sport, dport, tcp[13], tcp[off:]


def records(path, port):
    """Per client port, the connection's events: ("syn"|"fin"|record type, to_server, length, time)."""
    conns, pending = {}, {}
    for t, sport, dport, flags, payload in packets(path):
        to_server = dport == port
        client = sport if to_server else dport
        if flags & 0x02 and to_server and not flags & 0x10:  # SYN: a new connection on this port
            conns[client] = [("syn", True, 0, t)]
            pending[(client, True)] = pending[(client, False)] = b""
            continue
        if client not in conns:
            continue  # began before the capture
        if flags & 0x01:
            conns[client].append(("fin", to_server, 0, t))
        buf = pending[(client, to_server)] + payload
        while len(buf) >= 5:
            length = struct.unpack(">H", buf[3:5])[0]
            if len(buf) < 5 + length:
                break
            conns[client].append((buf[0], to_server, length, t))
            buf = buf[5 + length :]
        pending[(client, to_server)] = buf
    return conns


def phases(events):
    """The five moments of one whole connection, or None."""
    def first(pred):
        return next((e[3] for e in events if pred(e)), None)

    hello = first(lambda e: e[0] == 0x16 and e[1])
    flight = first(lambda e: e[0] == 0x16 and not e[1])
    client_data = [e for e in events if e[0] == 0x17 and e[1]]
    server_data = [e for e in events if e[0] == 0x17 and not e[1] and e[2] >= 40]
    server_fin = first(lambda e: e[0] == "fin" and not e[1])
    closing = next((e[3] for e in client_data[2:] if e[2] < 40), None)
    if None in (hello, flight, server_fin, closing) or not server_data:
        return None
    finished, request = client_data[0][3], client_data[1][3]
    response = server_data[-1][3]
    return {
        "server_hello": flight - hello,
        "client_finish": finished - flight,
        "client_request": request - finished,
        "server_response": response - request,
        "client_read": closing - response,
    }


def main():
    path, port, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    split = [p for p in map(phases, records(path, port).values()) if p]
    out = {"target": label, "connections": len(split)}
    for name in ("server_hello", "client_finish", "client_request", "server_response", "client_read"):
        v = sorted(p[name] * 1000 for p in split)
        if v:
            out[name] = {q: round(v[min(len(v) - 1, int(len(v) * f))], 3) for q, f in (("p50", .5), ("p90", .9), ("p99", .99))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
