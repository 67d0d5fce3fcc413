#!/usr/bin/env python3
"""One client floods a balancer with slow requests while another probes it (issue 25's fairness
scenario): FLOOD connections from 127.0.0.1 each send `GET /?delay_ms=DELAY`, all at once, and
a client at 127.0.0.2 sends `GET /` on a new connection every second. Prints each probe's latency
and status, then how the flood ended (statuses, when its last answer came).

    scripts/client_flood.py HOST:PORT [FLOOD=300] [DELAY_MS=12000] [PROBE_SECONDS=30]

Run by `scripts/bench.sh flood`; loopback only (127.0.0.0/8 is all loopback on Linux).
"""
import socket
import sys
import threading
import time


def request(addr, source, path, timeout):
    """One GET on a connection of its own from `source`; (status, seconds) or (error, seconds)."""
    start = time.monotonic()
    try:
        with socket.create_connection(addr, timeout=timeout, source_address=(source, 0)) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: flood\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else f"bad:{data[:20]!r}"
            while s.recv(65536):
                pass
    except OSError as e:
        status = f"error:{e.__class__.__name__}"
    return status, time.monotonic() - start


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    addr = (host, int(port))
    flood = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    delay_ms = int(sys.argv[3]) if len(sys.argv) > 3 else 12000
    probe_seconds = int(sys.argv[4]) if len(sys.argv) > 4 else 30
    results = [None] * flood
    began = time.monotonic()

    def flooder(i):
        results[i] = request(addr, "127.0.0.1", f"/?delay_ms={delay_ms}", timeout=600)

    threads = [threading.Thread(target=flooder, args=(i,)) for i in range(flood)]
    for t in threads:
        t.start()
    time.sleep(1)  # the flood is in
    print(f"{flood} x GET /?delay_ms={delay_ms} from 127.0.0.1; GET / from 127.0.0.2 every second")
    print(f"{'t (s)':>6} {'status':>6} {'latency (ms)':>13}")
    latencies = []
    for _ in range(probe_seconds):
        tick = time.monotonic()
        status, took = request(addr, "127.0.0.2", "/", timeout=60)
        latencies.append(took)
        print(f"{tick - began:6.1f} {status:>6} {took * 1000:13.1f}", flush=True)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    for t in threads:
        t.join()
    statuses = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    last = max(took for _, took in results)
    latencies.sort()
    print(f"probes: max {latencies[-1] * 1000:.1f} ms, median {latencies[len(latencies) // 2] * 1000:.1f} ms")
    print(f"flood: {statuses}, last answer after {last:.1f} s")


if __name__ == "__main__":
    main()
