#!/usr/bin/env python3
"""Slow peers against a running balancer: N slow body senders, N slow readers of a large
response, N slow heads, N requests to a slow backend endpoint, each case separately. During each
case, 20 normal GETs on new connections are timed. Prints one line per case:
case, peers, normal GETs answered 200, their p50 and max latency, RSS growth of the balancer,
temp files seen. Loopback only; every socket is closed before the next case.

usage: slow_peers.py HOST:PORT PID TEMP_DIR [PEERS]
"""
import socket
import sys
import time


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def normal_gets(addr, count=20):
    times, ok = [], 0
    for i in range(count):
        start = time.monotonic()
        try:
            s = socket.create_connection(addr, timeout=5)
            s.sendall(f"GET /normal/{i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            if data.startswith(b"HTTP/1.1 200"):
                ok += 1
        except OSError:
            pass
        times.append((time.monotonic() - start) * 1000)
    times.sort()
    return ok, times[len(times) // 2], times[-1]


def open_peers(addr, n, first, after=b""):
    peers = []
    for _ in range(n):
        s = socket.create_connection(addr, timeout=10)
        s.sendall(first)
        if after:
            s.sendall(after)
        peers.append(s)
    return peers


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    addr = (host, int(port))
    pid, temp_dir = int(sys.argv[2]), sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    import os
    cases = [
        ("slow body senders (60 KB)", lambda: open_peers(
            addr, n, b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 60000\r\n\r\n", b"x" * 30000)),
        ("slow readers (20 MB)", lambda: open_peers(
            addr, n, b"GET /big?bytes=20000000 HTTP/1.1\r\nHost: t\r\n\r\n")),
        ("slow heads", lambda: open_peers(addr, n, b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Slow:")),
        ("slow backend (4 s), 100 in flight", lambda: open_peers(
            addr, 100, b"GET /slow?delay_ms=4000 HTTP/1.1\r\nHost: t\r\n\r\n")),
    ]
    print(f"{'case':36} {'peers':>6} {'GETs 200':>9} {'p50 ms':>8} {'max ms':>8} {'RSS +MB':>8} {'temp files':>10}")
    for name, start in cases:
        before = rss_kb(pid)
        peers = start()
        time.sleep(0.5)  # let the balancer take them all in before timing normal requests
        ok, p50, worst = normal_gets(addr)
        grown = (rss_kb(pid) - before) / 1024
        files = len(os.listdir(temp_dir))
        print(f"{name:36} {len(peers):6} {ok:6}/20 {p50:8.1f} {worst:8.1f} {grown:8.1f} {files:10}")
        for s in peers:
            s.close()
        time.sleep(1)


if __name__ == "__main__":
    main()
