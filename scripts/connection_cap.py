#!/usr/bin/env python3
"""One client holds more idle keep-alive connections than the balancer's connection cap, then a
new client asks for a page. Each held connection makes one request and reads its answer, so it is
idle between requests (what a browser or a pooled HTTP client leaves behind). Prints how the held
connections' requests were answered, how many held connections the balancer closed, and the new
client's status and time.

usage: connection_cap.py HOST:PORT [HELD]     (HELD default 10100; raise `ulimit -n` above it)
"""
import socket
import sys
import time


def exchange(sock, path):
    """Sends a GET and reads one response (its head and Content-Length body); status or None."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        body += chunk
    return int(head.split()[1])


def closed(sock):
    """True when the server closed the connection (EOF or reset) and sent nothing more."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    addr = (host, int(port))
    held_n = int(sys.argv[2]) if len(sys.argv) > 2 else 10100
    held, statuses = [], {}
    start = time.monotonic()
    for i in range(held_n):
        s = socket.create_connection(addr, timeout=10)
        status = exchange(s, f"/held/{i}")
        statuses[status] = statuses.get(status, 0) + 1
        held.append(s)
    opened = time.monotonic() - start
    time.sleep(0.5)
    gone = [i for i, s in enumerate(held) if closed(s)]
    start = time.monotonic()
    try:
        new = socket.create_connection(addr, timeout=30)
        status = exchange(new, "/new")
    except OSError as e:
        status = f"error: {e}"
    took = (time.monotonic() - start) * 1000
    print(f"held connections: {held_n} opened in {opened:.1f} s; their answers by status: {statuses}")
    if gone:
        print(f"held connections closed by the balancer: {len(gone)} (first {gone[0]}, last {gone[-1]})")
    else:
        print("held connections closed by the balancer: 0")
    print(f"new client's GET: {status} in {took:.1f} ms")
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
