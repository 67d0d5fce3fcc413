#!/usr/bin/env bash
# Does memory come back after bursts of slow readers, and what does a keep-alive request cost?
# Loopback only; every process it starts is stopped by PID at its end.
#
#   scripts/memory_bursts.sh bursts [LB_SYNC...]  # per binary: RSS at start, then after each of
#       BURSTS (11) bursts of PEERS (500) slow readers: each asks for a 20 MB response and reads
#       it slowly (4 KiB per reader every 100 ms, for HOLD seconds), then all close at once; RSS
#       is read once lb-sync's open files are back to their count before the burst, plus SETTLE
#       seconds, and once more REST seconds after the last burst (allocators that return memory
#       on a timer show it there)
#   scripts/memory_bursts.sh cpu [LB_SYNC...]     # per binary, ROUNDS (3) runs interleaved: wrk
#       -t2 -c64 -d5s keep-alive GETs of 1 KiB; lb-sync's CPU (utime + stime from /proc/PID/stat)
#       per request, in microseconds
#
# Each LB_SYNC is an lb-sync binary (default: this tree's release build, built when missing or
# stale), optionally LABEL=PATH. lb-sync runs with 256 workers (the default) in front of three
# lb-backends. The environment reaches lb-sync, so `MALLOC_ARENA_MAX=2 scripts/memory_bursts.sh`
# measures glibc with two arenas. Environment: BURSTS, PEERS, HOLD (3), SETTLE (2), REST (15),
# ROUNDS, DURATION (5s). Needs python3 and, for cpu, wrk.
set -euo pipefail

mode="${1:-bursts}"
shift || true
bursts="${BURSTS:-11}"
peers="${PEERS:-500}"
hold="${HOLD:-3}"
settle="${SETTLE:-2}"
rest="${REST:-15}"
rounds="${ROUNDS:-3}"
duration="${DURATION:-5s}"

root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
. "$root/scripts/processes.sh"
stop_on_exit
. "$root/scripts/binaries.sh"
say() { echo "memory_bursts.sh: $*" >&2; }
case "$mode" in bursts | cpu) ;; *) say "unknown mode '$mode' (bursts or cpu)"; exit 2 ;; esac
[ "$mode" = cpu ] && ! command -v wrk >/dev/null && { say "wrk not found (apt-get install wrk)"; exit 1; }
if [ $# -eq 0 ]; then set -- "$sync_bin"; fi
# The process limit: 500 readers hold 1,000 of lb-sync's descriptors and 500 of ours.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_ports() {
  python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}
wait_port() {
  for _ in $(seq 1 200); do
    python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  say "nothing listens on port $1"
  exit 1
}

read -r -a backend_ports <<<"$(free_ports 3)"
backend_args=()
for port in "${backend_ports[@]}"; do
  "$backend_bin" --port "$port" >"$work/backend-$port.log" 2>&1 &
  pids+=("$!")
  backend_args+=(--backend "127.0.0.1:$port")
done
for port in "${backend_ports[@]}"; do wait_port "$port"; done

lb_pid=""
lb_port=""
start_lb() { # BINARY
  lb_port="$(free_ports 1)"
  "$1" --host 127.0.0.1 --port "$lb_port" "${backend_args[@]}" --access-log false \
    --health-check-interval 0 >"$work/lb.out" 2>"$work/lb.err" &
  lb_pid=$!
  pids+=("$lb_pid")
  wait_port "$lb_port"
}
stop_lb() {
  stop_pids "$lb_pid"
  pids=("${pids[@]/$lb_pid/}")
}
rss_mb() { awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$lb_pid/status"; }
open_files() { find "/proc/$lb_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$lb_pid/stat"; }

# PEERS slow readers of a 20 MB response for HOLD seconds, then all closed; fails unless every
# one got its 200 started.
burst() {
  python3 - "$lb_port" "$peers" "$hold" <<'EOF'
import socket, sys, time
port, peers, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
readers = []
for i in range(peers):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"GET /big/{i}?bytes=20000000 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    readers.append(s)
for s in readers:
    head = b""
    while len(head) < 12:
        chunk = s.recv(12 - len(head))
        if not chunk:
            sys.exit("a slow reader's connection closed before its answer")
        head += chunk
    if head != b"HTTP/1.1 200":
        sys.exit(f"a slow reader got {head!r}")
    s.setblocking(False)
end = time.monotonic() + hold
while time.monotonic() < end:
    for s in readers:
        try:
            s.recv(4096)
        except BlockingIOError:
            pass
    time.sleep(0.1)
for s in readers:
    s.close()
EOF
}

label_of() { case "$1" in *=*) echo "${1%%=*}" ;; *) basename "$1" ;; esac; }
path_of() { case "$1" in *=*) echo "${1#*=}" ;; *) echo "$1" ;; esac; }

if [ "$mode" = bursts ]; then
  for spec in "$@"; do
    start_lb "$(path_of "$spec")"
    for i in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$lb_port/warm/$i" || true; done
    line="$(label_of "$spec"): start $(rss_mb) MB; after each burst:"
    files="$(open_files)"
    for _ in $(seq 1 "$bursts"); do
      burst
      for _ in $(seq 1 300); do [ "$(open_files)" -le "$files" ] && break; sleep 0.1; done
      sleep "$settle"
      line="$line $(rss_mb)"
    done
    sleep "$rest"
    echo "$line MB; ${rest} s later $(rss_mb) MB"
    stop_lb
  done
else
  for round in $(seq 1 "$rounds"); do
    for spec in "$@"; do
      start_lb "$(path_of "$spec")"
      wrk -t2 -c64 -d1s "http://127.0.0.1:$lb_port/?bytes=1024" >/dev/null
      before="$(cpu_ticks)"
      wrk -t2 -c64 -d"$duration" "http://127.0.0.1:$lb_port/?bytes=1024" >"$work/wrk.out"
      after="$(cpu_ticks)"
      requests="$(awk '/requests in/ {print $1}' "$work/wrk.out")"
      rps="$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")"
      python3 -c 'import os, sys
ticks, requests = int(sys.argv[2]) - int(sys.argv[1]), int(sys.argv[3])
us = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / requests
print(f"round {sys.argv[4]}  {sys.argv[5]:24} {float(sys.argv[6]):10.0f} req/s  {us:6.1f} us CPU per request")' \
        "$before" "$after" "$requests" "$round" "$(label_of "$spec")" "$rps"
      stop_lb
    done
  done
fi
