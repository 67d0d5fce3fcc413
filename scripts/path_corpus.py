#!/usr/bin/env python3
"""The path confusion corpus (tests/data/path_corpus.tsv) sent to lb-sync and to nginx side by
side, in front of one backend that answers with the request target exactly as it read it.

For each case: what lb-sync answered and forwarded, and which nginx `location` matched (nginx
matches its decoded, resolved path) and what nginx forwarded (`proxy_pass` without a URI passes
the raw one on). A row is marked where the two differ. Prints a Markdown table.

    cargo build --release && scripts/path_corpus.py > docs/path_corpus.md

Needs nginx and python3. Everything listens on 127.0.0.1; every process it starts is stopped by
PID when it ends.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LB_SYNC = os.path.join(ROOT, "target", "release", "lb-sync")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo_backend():
    """A backend answering each request with its target as read off the wire."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def serve(conn):
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while True:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        data += chunk
                    head, data = data.split(b"\r\n\r\n", 1)
                    parts = head.split(b"\r\n", 1)[0].split(b" ")
                    target = parts[1] if len(parts) > 1 else b""
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(target), target))
            except OSError:
                return

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def wait_port(port, limit=10.0):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port} after {limit} s")


def send(port, target, host):
    """One request; (status, X-Location header, body) or (None, '', error)."""
    raw = b"GET " + target.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(raw)
            answer = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
    except OSError as e:
        return None, "", str(e)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ")[1])
    except (IndexError, ValueError):
        return None, "", "no status line"
    location = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "x-location":
            location = value.strip()
    return status, location, body.decode("utf-8", "replace")


def corpus():
    with open(os.path.join(ROOT, "tests", "data", "path_corpus.tsv"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            target, host, expected, why = line.rstrip("\n").split("\t")
            yield target, host, expected, why


def cell(status, body):
    if status is None:
        return f"no answer ({body})"
    if status == 200:
        return f"`{body}`"
    return str(status)


def main():
    if not os.path.exists(LB_SYNC):
        sys.exit("build first: cargo build --release")
    if not shutil.which("nginx"):
        sys.exit("nginx not found (apt-get install nginx-light)")
    work = tempfile.mkdtemp(prefix="lb-sync-paths-")
    procs = []
    try:
        backend = echo_backend()
        lb_port, nginx_port = free_port(), free_port()
        config = os.path.join(work, "lb.json")
        with open(config, "w") as f:
            f.write('{"host": "127.0.0.1", "port": %d, "health_check_interval": 0, "access_log": false, '
                    '"backends": [{"host": "127.0.0.1", "port": %d}]}' % (lb_port, backend))
        log = open(os.path.join(work, "lb.log"), "w")
        procs.append(subprocess.Popen([LB_SYNC, "--config", config], stdout=subprocess.DEVNULL, stderr=log))
        os.makedirs(os.path.join(work, "logs"))
        # Three locations, so the table shows which one nginx matched for each case.
        locations = "".join(
            f"location {path} {{ add_header X-Location {name} always; proxy_pass http://127.0.0.1:{backend}; }}\n"
            for path, name in (("/", "/"), ("/public/", "/public/"), ("/admin", "/admin"))
        )
        with open(os.path.join(work, "nginx.conf"), "w") as f:
            f.write(f"""worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  server {{
    listen 127.0.0.1:{nginx_port};
    server_name t;
    {locations}
  }}
}}
""")
        procs.append(subprocess.Popen(["nginx", "-p", work, "-c", os.path.join(work, "nginx.conf"), "-g", "daemon off;"]))
        wait_port(lb_port)
        wait_port(nginx_port)

        print("| target (Host) | expected | lb-sync | nginx matched | nginx forwarded | differ |")
        print("|---|---|---|---|---|---|")
        same = differ = 0
        for target, host, expected, why in corpus():
            lb_status, _, lb_body = send(lb_port, target, host)
            ng_status, ng_location, ng_body = send(nginx_port, target, host)
            lb_cell = "admin API" if expected == "admin" and lb_status == 200 and lb_body.startswith("[") else cell(lb_status, lb_body)
            ng_cell = cell(ng_status, ng_body)
            lb_forwarded = lb_body if lb_status == 200 and expected != "admin" else None
            ng_forwarded = ng_body if ng_status == 200 else None
            mark = "yes" if (lb_status != ng_status or lb_forwarded != ng_forwarded) else ""
            differ += bool(mark)
            same += not mark
            shown = target.replace("|", "\\|").replace("`", "\\`")
            print(f"| `{shown}` ({host}) | {expected.replace('|', chr(92) + '|')} | {lb_cell.replace('|', chr(92) + '|')} "
                  f"| {ng_location or '-'} | {ng_cell.replace('|', chr(92) + '|')} | {mark} |")
        print(f"\n{same + differ} cases: {same} the same, {differ} different.")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
