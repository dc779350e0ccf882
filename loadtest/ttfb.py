#!/usr/bin/env python3
"""Time to first byte of a server-sent-events stream, direct and through Gatehouse.

The upstream (in this script) answers every GET with `text/event-stream`, chunked: the
first event at once, the second 20 ms later, then the end. The client sends one request
at a time on a kept-alive connection and measures, per request, the time from the
request's last byte written to the first event's bytes read (its TTFB), then reads the
rest. Rounds alternate direct / gateway so both see the same machine noise.

    loadtest/ttfb.py                          # target/release/gatehouse, 5 rounds x 200
    loadtest/ttfb.py --bin target/debug/gatehouse --rounds 3 --requests 100

Prints p50/p90/p99 in milliseconds for each path and the gateway's added p50. Python
standard library only.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def serve_upstream(listener):
    def handle(conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    got = conn.recv(65536)
                    if not got:
                        return
                    buf += got
                _, buf = buf.split(b"\r\n\r\n", 1)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
                    + chunk(b"data: one\n\n")
                )
                time.sleep(0.02)
                conn.sendall(chunk(b"data: two\n\n") + b"0\r\n\r\n")
        except OSError:
            return
        finally:
            conn.close()

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def measure(port, n):
    """TTFB of n sequential requests on one kept-alive connection, in ms."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = b"GET /events HTTP/1.1\r\nHost: ttfb.test\r\naccept: text/event-stream\r\n\r\n"
    out = []
    buf = b""
    for _ in range(n):
        t0 = time.perf_counter()
        s.sendall(req)
        first = None
        while True:
            got = s.recv(65536)
            if not got:
                raise SystemExit("connection closed mid-response")
            buf += got
            if first is None and b"data: one" in buf:
                first = time.perf_counter()
            if b"\r\n0\r\n\r\n" in buf:
                buf = buf.split(b"\r\n0\r\n\r\n", 1)[1]
                break
        out.append((first - t0) * 1000.0)
    s.close()
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/gatehouse")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=200)
    a = ap.parse_args()

    up = socket.socket()
    up.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    up.bind(("127.0.0.1", 0))
    up.listen(128)
    up_port = up.getsockname()[1]
    threading.Thread(target=serve_upstream, args=(up,), daemon=True).start()

    gw_port, admin_port = free_port(), free_port()
    work = tempfile.mkdtemp(prefix="gh-ttfb-")
    cfg = os.path.join(work, "gatehouse.yaml")
    with open(cfg, "w") as f:
        f.write(
            f"""version: 1
server: {{ threads: 1 }}
listeners: [ {{ name: public, address: "127.0.0.1:{gw_port}" }} ]
admin: {{ address: "127.0.0.1:{admin_port}" }}
access_log: {{ path: "off" }}
upstreams:
  sse: {{ targets: [ {{ address: "127.0.0.1:{up_port}" }} ] }}
routes:
  - {{ name: events, match: {{ path_prefix: / }}, upstream: sse }}
"""
        )
    gw = subprocess.Popen([a.bin, "run", "-c", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("the gateway did not become ready")
        measure(up_port, 20)  # warm-up
        measure(gw_port, 20)
        direct, gateway = [], []
        for _ in range(a.rounds):
            direct += measure(up_port, a.requests)
            gateway += measure(gw_port, a.requests)
        print(f"TTFB of the first SSE event, {len(direct)} requests each ({a.bin}):")
        for name, xs in (("direct", direct), ("gateway", gateway)):
            print(f"  {name:8} p50 {pct(xs, 50):.3f} ms  p90 {pct(xs, 90):.3f} ms  p99 {pct(xs, 99):.3f} ms")
        print(f"  added by the gateway at p50: {pct(gateway, 50) - pct(direct, 50):.3f} ms")
    finally:
        gw.terminate()
        try:
            gw.wait(10)
        except subprocess.TimeoutExpired:
            gw.kill()


if __name__ == "__main__":
    sys.exit(main())
