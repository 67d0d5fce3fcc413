#!/usr/bin/env python3
"""What a few clients can hold in a running balancer's body temp files: CLIENTS clients (one
loopback address each, 127.0.0.1 up) each open CONNS uploads of BODY bytes, send all but the
last byte at once, then keep each upload alive with one byte every EVERY seconds, never
finishing it. Every SAMPLE seconds, for HOLD seconds, one line: the bytes of the balancer's
unlinked temp files in TEMP_DIR (its /proc/PID/fd links ending in "(deleted)"), how many
uploads are still open, the answers the others got (413, 429, 503, 408...), and the free space
of TEMP_DIR. Loopback only; every socket is closed at the end.

usage: spool_hold.py HOST:PORT PID TEMP_DIR [CLIENTS CONNS BODY EVERY HOLD SAMPLE]
defaults:                                    4       1     200000000 50 180 10
"""
import os
import select
import socket
import sys
import time


def human(n):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def spooled(pid, temp_dir):
    total, files = 0, 0
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
            if target.startswith(temp_dir) and target.endswith(" (deleted)"):
                total += os.stat(f"{fd_dir}/{fd}").st_size
                files += 1
        except OSError:
            pass
    return total, files


def free(temp_dir):
    st = os.statvfs(temp_dir)
    return st.f_bavail * st.f_frsize


def open_upload(addr, client, body, reserve):
    """An upload from 127.0.0.<client+1>, all but `reserve` bytes of it sent (a refusal stops it)."""
    s = socket.socket()
    s.bind((f"127.0.0.{client + 1}", 0))
    s.settimeout(30)
    s.connect(addr)
    try:
        s.sendall(f"POST /hold HTTP/1.1\r\nHost: t\r\nContent-Length: {body}\r\n\r\n".encode())
        block = b"x" * (1 << 20)
        left = body - reserve
        while left > 0:
            # An answer already (a refusal) ends the upload.
            if select.select([s], [], [], 0)[0]:
                break
            n = s.send(block[: min(left, len(block))])
            left -= n
    except OSError:
        pass
    return s


def answer_of(s):
    """The status of an answer waiting on `s`, or None if there is none (still held)."""
    if not select.select([s], [], [], 0)[0]:
        return None
    try:
        data = s.recv(4096)
    except OSError:
        return "reset"
    if not data:
        return "closed"
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "?"


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    addr = (host, int(port))
    pid, temp_dir = int(sys.argv[2]), sys.argv[3]
    numbers = [int(a) for a in sys.argv[4:10]]
    clients, conns, body, every, hold, sample = numbers + [4, 1, 200_000_000, 50, 180, 10][len(numbers):]
    print(f"{clients} clients x {conns} uploads of {human(body)}, a byte every {every} s, for {hold} s; "
          f"{temp_dir}: {human(free(temp_dir))} free before")
    start = time.monotonic()
    open_ = []
    answers = {}
    # Kept back for the trickle, so that no upload ever completes.
    reserve = hold // every + 2
    for c in range(conns):
        for client in range(clients):
            open_.append(open_upload(addr, client, body, reserve))
    print(f"opened in {time.monotonic() - start:.1f} s")
    start = time.monotonic()
    next_byte, next_sample = start + every, start
    while True:
        now = time.monotonic()
        still = []
        for s in open_:
            status = answer_of(s)
            if status is None:
                still.append(s)
            else:
                answers[status] = answers.get(status, 0) + 1
                s.close()
        open_ = still
        if now >= next_byte:
            for s in open_:
                try:
                    s.send(b"x")
                except OSError:
                    pass
            next_byte += every
        if now >= next_sample:
            held, files = spooled(pid, temp_dir)
            said = ", ".join(f"{k}: {v}" for k, v in sorted(answers.items())) or "none"
            print(f"t={now - start:5.0f} s  held {human(held):>10} in {files:4} files  open {len(open_):4}  "
                  f"answers {said}  free {human(free(temp_dir))}", flush=True)
            next_sample += sample
        if now - start >= hold:
            break
        time.sleep(0.2)
    for s in open_:
        s.close()


if __name__ == "__main__":
    main()
