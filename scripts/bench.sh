#!/usr/bin/env bash
# Throughput and latency, measured with wrk against nginx (and HAProxy) in the same run, so the
# numbers are ratios on this machine rather than absolute claims. Loopback only; each load run
# is bounded by DURATION. Every server, backend and wrk runs in a session of its own (setsid):
# with the kernel's autogroup scheduling each session gets the same share of the CPU, so a proxy
# with more threads takes no CPU from wrk or the backends. Every table leads with the server's
# CPU microseconds per request (user + system time of its processes over the run / requests).
#
#   scripts/bench.sh server   # lb-backend vs nginx answering the same 1 KiB body
#   scripts/bench.sh proxy    # lb-sync vs nginx vs HAProxy in front of the same lb-backends, and direct
#   scripts/bench.sh cost     # syscalls and context switches per proxied keep-alive GET, lb-sync vs nginx
#   scripts/bench.sh profile  # lb-sync vs nginx at c=10, 64, 256, after a burst and with a new connection per
#                             # request: user/system CPU us and switches per request, lb-sync's perf samples by
#                             # kind of work (us per request); PROFILE_LOADS picks loads, LB_FLAGS adds flags
#   scripts/bench.sh upstream-tls  # an https:// backend vs the same one over plain HTTP, lb-sync and nginx
#   scripts/bench.sh slow     # 1000 slow senders / readers / heads, 100 slow backend requests: normal GETs meanwhile
#   scripts/bench.sh flood    # 300 x GET /?delay_ms=12000 from 127.0.0.1, a GET from 127.0.0.2 every second: its latency
#   scripts/bench.sh sweep    # lb-sync (pollers 1 and the default) vs nginx vs HAProxy (vs Pingora) at c=10, 64,
#                             # 256 and c=10 after a c=256 burst, in front of three nginx backends and of one
#                             # shared one: CPU us per request, req/s, p50, p99, context switches per request
#   scripts/bench.sh websocket  # WebSocket echo round trips/s through lb-sync vs nginx vs HAProxy vs direct
#   scripts/bench.sh tls      # HTTPS: lb-sync (pollers 1 and the default) vs nginx vs HAProxy, same certificate
#                             # (ECDSA P-256), same lb-backends; keep-alive, then a new TLS handshake per request
#   scripts/bench.sh scaling  # nginx, HAProxy and lb-sync pinned (taskset) to the same N cores, N = 1, 2, 4, ...
#                             # up to the machine's; backends and wrk on the other cores when there are at least
#                             # N of them: per N, CPU us per request, req/s, and each server's req/s over its N=1
#   scripts/bench.sh algorithms  # one lb-backend 10x slower than the other two, at ~80 % of their capacity, open loop:
#                             # p50/p99 through lb-sync with round_robin, least_connections, p2c and peak_ewma
#
# Environment: DURATION (default 10s; 5s per run for websocket and per point for scaling; 20s per algorithm for
# algorithms), ROUNDS (sweep and scaling: runs per cell, 1), FLOOD (300), FLOOD_DELAY_MS (12000), PROBE_SECONDS (30)
# for flood, SWEEP_CONNECTIONS ("10 64 256"), SWEEP_LAYOUTS ("separate shared"), BURST (5s), PINGORA (0: leave
# Pingora out of the sweep; ROUTED=1 adds lb-sync with one route taking every request), POLLERS (sweep and tls:
# the lb-sync rows, "1 default": --pollers 1 and lb-sync's default; numbers run --pollers N; skipped with a line
# when the binary has no --pollers), SCALING_CORES (scaling's N, "1 2 4 ... nproc"), WS_TUNNELS ("1 8 64"),
# WS_SIZE (64 bytes per frame), CONNECTIONS (64), WRK_THREADS (2; scaling: the load's cores, at least 2),
# THREADS (lb workers, 256), BODY_BYTES (1024), NGINX_WORKERS (auto); LB_BACKEND / LB_SYNC (binaries to use),
# else they come from ${CARGO_TARGET_DIR:-target}/release, built when missing or stale.
# Needs wrk and nginx (and haproxy, jq for proxy; haproxy, openssl for tls and upstream-tls): apt-get install wrk nginx-light haproxy jq openssl.
set -euo pipefail
# No job control: a background child stays in this shell's process group, so `setsid CMD &` makes
# the session in place (setsid forks only for a group leader) and $! is CMD's own PID.
set +m

mode="${1:-proxy}"
case "$mode" in
  websocket|scaling) duration="${DURATION:-5s}" ;;
  *) duration="${DURATION:-10s}" ;;
esac
connections="${CONNECTIONS:-64}"
wrk_threads="${WRK_THREADS:-2}"
threads="${THREADS:-256}"
body_bytes="${BODY_BYTES:-1024}"
# taskset prefixes for the servers under test and for the load (backends, wrk): `scaling` sets them.
server_pin=() load_pin=()
haproxy_threads=$(nproc)

root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
. "$root/scripts/processes.sh"
stop_on_exit

for tool in wrk nginx curl python3 setsid; do
  command -v "$tool" >/dev/null || { echo "bench.sh: $tool not found (apt-get install wrk nginx-light haproxy util-linux)" >&2; exit 1; }
done
. "$root/scripts/binaries.sh"

free_port() { free_ports 1; }
# N distinct free loopback ports (all held open while choosing, so they differ).
free_ports() {
  python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}
# The CPUs this script may run on, as taskset numbers them.
cpu_list() { python3 -c 'import os; print(" ".join(map(str, sorted(os.sched_getaffinity(0)))))'; }
wait_port() { # PORT [PATH] [LOG to show when nothing answers]
  for _ in $(seq 1 200); do
    curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:$1${2:-/}" && return 0
    sleep 0.05
  done
  echo "bench.sh: nothing answers on port $1${3:+; $3:}" >&2
  if [ -n "${3:-}" ]; then cat "$3" >&2; fi
  exit 1
}
# check_sessions PID...: says so for any that is not the leader of a session of its own (the
# autogroup that gives it its own CPU share) or no longer runs.
check_sessions() {
  local pid sid
  for pid in "$@"; do
    sid=$(awk '{print $6}' "/proc/$pid/stat" 2>/dev/null) || sid=""
    if [ -z "$sid" ]; then
      echo "bench.sh: PID $pid no longer runs" >&2
    elif [ "$sid" != "$pid" ]; then
      echo "bench.sh: PID $pid ($(cat "/proc/$pid/comm")) is in session $sid, not one of its own" >&2
    fi
  done
}
# nginx_pids MASTER: the master and its workers.
nginx_pids() { echo "$1 $(pgrep -P "$1" | tr '\n' ' ')"; }

# in_session OUT CMD...: a load generator (wrk, ws_bench, open_loop) in a session of its own, on
# the load's cores, its stdout to OUT. Tracked in pids while it runs: an interrupted benchmark stops it too.
in_session() {
  local out="$1" pid status=0
  shift
  setsid "${load_pin[@]}" "$@" > "$out" &
  pid=$!
  pids+=("$pid")
  wait "$pid" || status=$?
  unset 'pids[-1]'
  return "$status"
}
hz=$(getconf CLK_TCK)
# CPU ticks (user + system, all threads) and voluntary context switches (all threads) of the PIDs.
ticks() { for pid in "$@"; do awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || true; done | awk '{s += $1} END {print s + 0}'; }
switches() { for pid in "$@"; do cat /proc/"$pid"/task/*/status 2>/dev/null || true; done | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s + 0}'; }
runs=0
# measure "PIDS" WRK-ARGS...: one wrk run (--latency added) with the CPU time and switches of PIDS
# (space-separated; empty: not measured) taken around it. Sets result to a tab-separated line:
# CPU us/req (- when not measured), req/s, p50 ms, p99 ms, voluntary switches/req, errors.
measure() {
  local measured="$1" out t0 s0 t1 s1
  shift
  runs=$((runs + 1))
  out="$work/wrk-$runs.txt"
  # shellcheck disable=SC2086 # a list of PIDs
  t0=$(ticks $measured) s0=$(switches $measured)
  in_session "$out" wrk --latency "$@"
  # shellcheck disable=SC2086
  t1=$(ticks $measured) s1=$(switches $measured)
  result=$(python3 - "$out" "$((t1 - t0))" "$hz" "$((s1 - s0))" "${measured:+yes}" <<'PY'
import re, sys
path, ticks, hz, switches, measured = sys.argv[1:]
text = open(path).read()
def ms(v):
    n, unit = re.match(r"([0-9.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
n = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
errors = " ".join(l.strip() for l in text.splitlines() if "Non-2xx" in l or "Socket errors" in l)
cpu = f"{int(ticks) * 1e6 / int(hz) / max(n, 1):.1f}" if measured else "-"
vcs = f"{int(switches) / max(n, 1):.2f}" if measured else "-"
print(f"{cpu}\t{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{vcs}\t{errors}")
PY
)
}
# load NAME "PIDS" URL [wrk options]: one wrk -t$wrk_threads -c$connections -d$duration run with
# the CPU of PIDS measured; prints a row of header's table and keeps req/s for ratio.
load() {
  local name="$1" measured="$2" url="$3" cpu rps p50 p99 errors
  shift 3
  measure "$measured" -t"$wrk_threads" -c"$connections" -d"$duration" "$@" "$url"
  IFS=$'\t' read -r cpu rps p50 p99 _ errors <<<"$result"
  printf '%-38s %10s %10s %9s %9s   %s\n' "$name" "$cpu" "$rps" "$p50" "$p99" "$errors"
  echo "$rps" > "$work/$name.rps"
}
header() { printf '%-38s %10s %10s %9s %9s   %s\n' server "CPU us/req" "req/s" "p50 ms" "p99 ms" errors; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$(cat "$work/$1.rps")" "$(cat "$work/$2.rps")"; }
# "a, b, c" of the arguments.
listed() { local out; printf -v out '%s, ' "$@"; echo "${out%, }"; }
# lb-sync's rows for POLLERS ("1 default"): lb_names[i] ("lb-sync pollers=2") runs with the flags
# lb_flags[i] ("--pollers 2", empty for lb-sync's default). A binary without --pollers gives one
# row, "lb-sync", and a line saying the variants were skipped.
pollers_variants() {
  lb_names=() lb_flags=()
  if ! grep -q -- '--pollers' <<<"$("$sync_bin" --help 2>&1 || true)"; then
    echo "(pollers variants skipped: this lb-sync has no --pollers; one lb-sync row, with its one poller)"
    lb_names=(lb-sync) lb_flags=("")
    return 0
  fi
  local default p n flag seen=" "
  default=$(cpu_list | wc -w)
  [ "$default" -gt 16 ] && default=16 # lb-sync's default: the CPUs it may run on, at most 16
  for p in ${POLLERS:-1 default}; do
    case "$p" in
      default) n=$default flag="" ;;
      "" | *[!0-9]*) echo "bench.sh: POLLERS takes numbers and 'default', not '$p'" >&2; exit 2 ;;
      *) n=$p flag="--pollers $p" ;;
    esac
    case "$seen" in *" $n "*) continue ;; esac # the default may be one of the numbers
    seen+="$n "
    lb_names+=("lb-sync pollers=$n") lb_flags+=("$flag")
  done
}
nginx_up() { # $1 = config body (http block content), $2 = instance name (default nginx); nginx_role=backend: on the load's cores
  local dir="$work/${2:-nginx}" pin=("${server_pin[@]}")
  [ "${nginx_role:-server}" = backend ] && pin=("${load_pin[@]}")
  mkdir -p "$dir/logs"
  cat > "$dir/nginx.conf" <<CONF
worker_processes ${NGINX_WORKERS:-auto};
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  $1
}
CONF
  setsid "${pin[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' &
  pids+=("$!")
}

# The same backends for the three proxies: lb_args (lb-sync flags), upstream (nginx server
# lines) and haproxy_servers (HAProxy server lines) for these loopback ports.
backend_lists() {
  lb_args=() upstream="" haproxy_servers=""
  for port in "$@"; do
    lb_args+=(--backend "127.0.0.1:$port")
    upstream+="server 127.0.0.1:$port; "
    haproxy_servers+="  server b$port 127.0.0.1:$port"$'\n'
  done
}

# HAProxy (nbthread $haproxy_threads) in front of "$haproxy_servers" (server lines), round robin
# with connection reuse, bound as $1 (an address, plus options such as "ssl crt FILE"); sets haproxy_pid.
haproxy_up() {
  cat > "$work/haproxy.cfg" <<CFG
global
  nbthread $haproxy_threads
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend front
  bind $1
  default_backend backends
backend backends
  balance roundrobin
  http-reuse always
$haproxy_servers
CFG
  setsid "${server_pin[@]}" haproxy -f "$work/haproxy.cfg" -db > "$work/haproxy.log" 2>&1 &
  haproxy_pid=$!
  pids+=("$haproxy_pid")
}

autogroup=$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo unknown)
echo "machine: $(nproc) cores; sched_autogroup_enabled $autogroup (every server, backend and wrk in a session of its own$([ "$autogroup" = 1 ] && echo ": the same CPU share each")); wrk -t$wrk_threads -c$connections -d$duration; body $body_bytes bytes"
case "$mode" in
  server)
    port=$(free_port)
    setsid "$backend_bin" --port "$port" --threads "$threads" > /dev/null &
    pids+=("$!")
    backend_pid=$!
    nginx_port=$(free_port)
    body=$(head -c "$body_bytes" /dev/zero | tr '\0' x)
    nginx_up "server { listen 127.0.0.1:$nginx_port; location / { default_type application/octet-stream; return 200 '$body'; } }"
    nginx_pid=${pids[-1]}
    wait_port "$port" "/?bytes=$body_bytes"
    wait_port "$nginx_port"
    check_sessions "${pids[@]}"
    header
    load "lb-backend ($threads threads)" "$backend_pid" "http://127.0.0.1:$port/?bytes=$body_bytes"
    load "nginx (return 200)" "$(nginx_pids "$nginx_pid")" "http://127.0.0.1:$nginx_port/?bytes=$body_bytes"
    echo "lb-backend / nginx: $(ratio "lb-backend ($threads threads)" "nginx (return 200)")"
    ;;
  proxy)
    for tool in haproxy jq; do
      command -v "$tool" >/dev/null || { echo "bench.sh: $tool not found (apt-get install haproxy jq)" >&2; exit 1; }
    done
    read -r -a ports <<<"$(free_ports 6)"
    backend_ports=("${ports[@]:0:3}")
    lb_port=${ports[3]} nginx_port=${ports[4]} haproxy_port=${ports[5]}
    for port in "${backend_ports[@]}"; do
      setsid "$backend_bin" --port "$port" --threads 16 > /dev/null &
      pids+=("$!")
    done
    direct_pid=${pids[-3]}
    backend_lists "${backend_ports[@]}"
    setsid "$sync_bin" --algorithm round_robin --host 127.0.0.1 --port "$lb_port" --threads "$threads" --access-log false \
      "${lb_args[@]}" > "$work/lb-sync.out" 2> "$work/lb-sync.err" &
    lb_pid=$!
    pids+=("$lb_pid")
    nginx_up "upstream backends { $upstream keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }"
    nginx_pid=${pids[-1]}
    haproxy_up "127.0.0.1:$haproxy_port"
    for port in "${backend_ports[@]}"; do wait_port "$port" "/?bytes=$body_bytes"; done
    wait_port "$lb_port" /lb/health "$work/lb-sync.err" # a management request: the distribution below counts only wrk's
    wait_port "$nginx_port" "/?bytes=$body_bytes" "$work/nginx/logs/error.log"
    wait_port "$haproxy_port" "/?bytes=$body_bytes" "$work/haproxy.log"
    check_sessions "${pids[@]}"
    echo "3 lb-backend (--threads 16) on ${backend_ports[*]}; lb-sync --threads $threads; nginx workers ${NGINX_WORKERS:-auto}; haproxy nbthread $haproxy_threads"
    header
    load "direct (one lb-backend)" "$direct_pid" "http://127.0.0.1:${backend_ports[0]}/?bytes=$body_bytes"
    load "lb-sync round_robin" "$lb_pid" "http://127.0.0.1:$lb_port/?bytes=$body_bytes"
    # Round robin: equal thirds, +-1 (wrk's requests only: readiness used /lb/health).
    distribution=$(curl -s --max-time 5 "http://127.0.0.1:$lb_port/lb/backends" |
      jq -r '[.[].total_requests] as $n
        | [.[] | "\(.id) (:\(.port)) \(.total_requests)"] | join(", ")
        + (if ($n | max) - ($n | min) <= 1 then " (even: max - min <= 1)" else " (UNEVEN: max - min = \(($n | max) - ($n | min)))" end)' \
      2>/dev/null || echo "(unreadable)")
    load "nginx proxy keepalive 64" "$(nginx_pids "$nginx_pid")" "http://127.0.0.1:$nginx_port/?bytes=$body_bytes"
    load "haproxy http-reuse always" "$haproxy_pid" "http://127.0.0.1:$haproxy_port/?bytes=$body_bytes"
    echo
    echo "lb-sync / nginx:   $(ratio "lb-sync round_robin" "nginx proxy keepalive 64")"
    echo "lb-sync / haproxy: $(ratio "lb-sync round_robin" "haproxy http-reuse always")"
    echo "lb-sync / direct:  $(ratio "lb-sync round_robin" "direct (one lb-backend)")"
    echo
    echo "lb-sync requests per backend (/lb/backends total_requests): $distribution"
    rss() { for pid in "$@"; do cat "/proc/$pid/status" 2>/dev/null || true; done | awk '/^VmRSS/ {s += $2} END {printf "%.1f MiB", s / 1024}'; }
    mapfile -t nginx_workers < <(pgrep -P "$nginx_pid" || true)
    echo "RSS after the runs: lb-sync $(rss "$lb_pid"); nginx $(rss "$nginx_pid" "${nginx_workers[@]}") (master + ${#nginx_workers[@]} workers); haproxy $(rss "$haproxy_pid")"
    ;;
  websocket)
    command -v haproxy >/dev/null || { echo "bench.sh: haproxy not found (apt-get install haproxy)" >&2; exit 1; }
    ws_seconds="${DURATION:-5s}"
    ws_seconds="${ws_seconds%s}"
    ws_size="${WS_SIZE:-64}"
    ws_bench="$(example_bin ws_bench)"
    read -r -a ports <<<"$(free_ports 4)"
    backend_port=${ports[0]} lb_port=${ports[1]} nginx_port=${ports[2]} haproxy_port=${ports[3]}
    setsid "$backend_bin" --port "$backend_port" --threads 16 > /dev/null &
    pids+=("$!")
    backend_pid=$!
    setsid "$sync_bin" --host 127.0.0.1 --port "$lb_port" --threads "$threads" --access-log false \
      --health-check-interval 0 --backend "127.0.0.1:$backend_port" > "$work/lb-sync.out" 2> "$work/lb-sync.err" &
    lb_pid=$!
    pids+=("$lb_pid")
    # The usual WebSocket proxying of each (README: WebSockets and other upgrades).
    nginx_up "upstream ws { server 127.0.0.1:$backend_port; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://ws;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \"upgrade\";
      proxy_read_timeout 3600s;
    }
  }"
    nginx_pid=${pids[-1]}
    cat > "$work/haproxy-ws.cfg" <<CFG
global
  nbthread $haproxy_threads
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
frontend front
  bind 127.0.0.1:$haproxy_port
  default_backend ws
backend ws
  server b1 127.0.0.1:$backend_port
CFG
    setsid haproxy -f "$work/haproxy-ws.cfg" -db > "$work/haproxy.log" 2>&1 &
    haproxy_pid=$!
    pids+=("$haproxy_pid")
    wait_port "$backend_port" /health
    wait_port "$lb_port" /lb/health "$work/lb-sync.err"
    wait_port "$nginx_port" /health "$work/nginx/logs/error.log"
    wait_port "$haproxy_port" /health "$work/haproxy.log"
    check_sessions "${pids[@]}"
    echo "one lb-backend (/ws echo, a thread per session); lb-sync --threads $threads; nginx workers ${NGINX_WORKERS:-auto}; haproxy nbthread $haproxy_threads"
    echo "each tunnel sends a $ws_size-byte binary frame and waits for its echo, for ${ws_seconds} s per run; CPU: the proxy's (direct: the backend's)"
    printf '%-10s %-10s %12s %14s %10s %10s\n' tunnels via "CPU us/trip" "round trips/s" "p50 us" "p99 us"
    declare -A ws_pids=([direct]="$backend_pid" [lb-sync]="$lb_pid" [nginx]="$(nginx_pids "$nginx_pid")" [haproxy]="$haproxy_pid")
    for tunnels in ${WS_TUNNELS:-1 8 64}; do
      for via in direct:$backend_port lb-sync:$lb_port nginx:$nginx_port haproxy:$haproxy_port; do
        name=${via%%:*}
        # shellcheck disable=SC2086 # a list of PIDs
        t0=$(ticks ${ws_pids[$name]})
        in_session "$work/ws.out" "$ws_bench" "127.0.0.1:${via#*:}" "$tunnels" "$ws_seconds" "$ws_size"
        # shellcheck disable=SC2086
        t1=$(ticks ${ws_pids[$name]})
        read -r rate p50 p99 < "$work/ws.out"
        cpu=$(python3 -c "import sys; print(f'{int(sys.argv[1]) * 1e6 / int(sys.argv[2]) / max(float(sys.argv[3]) * float(sys.argv[4]), 1):.1f}')" \
          "$((t1 - t0))" "$hz" "$rate" "$ws_seconds")
        printf '%-10s %-10s %12s %14s %10s %10s\n' "$tunnels" "$name" "$cpu" "$rate" "$p50" "$p99"
        echo "$rate" > "$work/ws-$tunnels-$name.rps"
      done
      echo "  lb-sync / direct: $(ratio "ws-$tunnels-lb-sync" "ws-$tunnels-direct"), lb-sync / nginx: $(ratio "ws-$tunnels-lb-sync" "ws-$tunnels-nginx"), lb-sync / haproxy: $(ratio "ws-$tunnels-lb-sync" "ws-$tunnels-haproxy")"
    done
    # Syscalls per round trip (strace -c -f attached to the proxy for one run): a cost that the
    # machine's load does not move.
    if command -v strace >/dev/null; then
      echo
      echo "syscalls per echo round trip in the proxy (strace -c -f):"
      for tunnels in 1 8; do
        for via in lb-sync:$lb_port:$lb_pid nginx:$nginx_port:$(pgrep -P "$nginx_pid" | tr '\n' ,) haproxy:$haproxy_port:$haproxy_pid; do
          IFS=: read -r name port traced <<<"$via"
          strace_args=()
          for pid in ${traced//,/ }; do strace_args+=(-p "$pid"); done
          strace -c -f -o "$work/ws-strace.txt" "${strace_args[@]}" 2>/dev/null &
          strace_pid=$!
          sleep 1 # attached to every thread before the run
          in_session "$work/ws.out" "$ws_bench" "127.0.0.1:$port" "$tunnels" "$ws_seconds" "$ws_size"
          read -r rate _ < "$work/ws.out"
          kill -INT "$strace_pid"; wait "$strace_pid" 2>/dev/null || true
          python3 - "$name" "$tunnels" "$rate" "$ws_seconds" "$work/ws-strace.txt" <<'PY'
import sys
name, tunnels, rate, seconds, path = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
trips = max(rate * seconds, 1)
calls, top = 0, []
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit():
        if f[-1] == "total":
            calls = int(f[3])
        else:
            top.append((int(f[3]), f[-1]))
calls = calls or sum(c for c, _ in top)
top.sort(reverse=True)
detail = ", ".join(f"{c / trips:.2f} {s}" for c, s in top[:5])
print(f"  {tunnels:>3} tunnel(s) {name:8} {calls / trips:5.2f} syscalls/round trip  ({detail})")
PY
        done
      done
    fi
    ;;
  cost)
    # Per proxied keep-alive GET: syscalls (strace -c -f attached for one wrk run) and context
    # switches (voluntary + involuntary over every thread, from /proc, in a second run without
    # strace), for lb-sync and for nginx in front of the same nginx backend.
    command -v strace >/dev/null || { echo "bench.sh: strace not found (apt-get install strace)" >&2; exit 1; }
    read -r -a ports <<<"$(free_ports 3)"
    backend_port=${ports[0]} lb_port=${ports[1]} nginx_port=${ports[2]}
    nginx_up "server { listen 127.0.0.1:$backend_port; location / { default_type text/plain; return 200 'ok'; } }" backend
    nginx_up "upstream backends { server 127.0.0.1:$backend_port; keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }"
    nginx_pid=${pids[-1]}
    setsid "$sync_bin" --algorithm round_robin --host 127.0.0.1 --port "$lb_port" --threads "$threads" --access-log false \
      --health-check-interval 0 --backend "127.0.0.1:$backend_port" > "$work/lb-sync.out" 2> "$work/lb-sync.err" &
    lb_pid=$!
    pids+=("$lb_pid")
    wait_port "$backend_port"
    wait_port "$lb_port" / "$work/lb-sync.err"
    wait_port "$nginx_port" / "$work/nginx/logs/error.log"
    check_sessions "${pids[@]}"
    ctx_sum() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'; }
    requests() { awk '/requests in/ {print $1}' "$1"; }
    cost_of() { # NAME PORT PID...
      local name="$1" port="$2"; shift 2
      local before after n
      before=0; for pid in "$@"; do before=$((before + $(ctx_sum "$pid"))); done
      in_session "$work/ctx.wrk" wrk -t1 -c8 -d"$duration" "http://127.0.0.1:$port/"
      after=0; for pid in "$@"; do after=$((after + $(ctx_sum "$pid"))); done
      n=$(requests "$work/ctx.wrk")
      local strace_args=()
      for pid in "$@"; do strace_args+=(-p "$pid"); done
      strace -c -f -o "$work/strace.txt" "${strace_args[@]}" 2>/dev/null &
      local strace_pid=$!
      sleep 1 # strace attaches to every thread; the run below must start after it
      in_session "$work/strace.wrk" wrk -t1 -c8 -d"$duration" "http://127.0.0.1:$port/"
      kill -INT "$strace_pid"; wait "$strace_pid" 2>/dev/null || true
      local calls m
      calls=$(awk '$NF == "total" {print $(NF-2)}' "$work/strace.txt")
      m=$(requests "$work/strace.wrk")
      python3 - "$name" "$calls" "$m" "$((after - before))" "$n" "$work/strace.txt" <<'PY'
import sys
name, calls, m, ctx, n, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
top = []
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
        top.append((int(f[3]), f[-1]))
top.sort(reverse=True)
detail = ", ".join(f"{c / m:.1f} {s}" for c, s in top[:6])
print(f"{name:10} {calls / m:6.1f} syscalls/req  {ctx / n:5.2f} ctx switches/req   ({detail})")
PY
    }
    echo "wrk -t1 -c8 against a proxy in front of one nginx backend (return 200 'ok'); lb-sync --threads $threads"
    cost_of lb-sync "$lb_port" "$lb_pid"
    cost_of nginx "$nginx_port" $(pgrep -P "$nginx_pid")
    ;;
  slow)
    ulimit -n 65536 2>/dev/null || true
    read -r -a ports <<<"$(free_ports 2)"
    backend_port=${ports[0]} lb_port=${ports[1]}
    setsid "$backend_bin" --port "$backend_port" --threads 160 > /dev/null &
    pids+=("$!")
    mkdir -p "$work/bodies"
    setsid "$sync_bin" --host 127.0.0.1 --port "$lb_port" --access-log false --health-check-interval 0 \
      --backend "127.0.0.1:$backend_port" --config <(echo "{\"client_body_temp_path\": \"$work/bodies\"}") \
      > "$work/lb-sync.out" 2> "$work/lb-sync.err" &
    lb_pid=$!
    pids+=("$lb_pid")
    wait_port "$backend_port"
    wait_port "$lb_port" / "$work/lb-sync.err"
    check_sessions "${pids[@]}"
    echo "lb-sync (default 256 workers) in front of one lb-backend; ${SLOW_PEERS:-1000} peers per case"
    python3 "$root/scripts/slow_peers.py" "127.0.0.1:$lb_port" "$lb_pid" "$work/bodies" "${SLOW_PEERS:-1000}"
    ;;
  flood)
    # Issue 25's fairness scenario: lb-sync with its defaults (256 workers, a client's share
    # half of them) in front of three lb-backends with room for the whole flood.
    ulimit -n 65536 2>/dev/null || true
    read -r -a ports <<<"$(free_ports 4)"
    backend_args=()
    for port in "${ports[@]:0:3}"; do
      setsid "$backend_bin" --port "$port" --threads 200 > /dev/null &
      pids+=("$!")
      backend_args+=(--backend "127.0.0.1:$port")
    done
    lb_port=${ports[3]}
    setsid "$sync_bin" --host 127.0.0.1 --port "$lb_port" --threads "$threads" --access-log false --health-check-interval 0 \
      "${backend_args[@]}" > "$work/lb-sync.out" 2> "$work/lb-sync.err" &
    pids+=("$!")
    for port in "${ports[@]:0:3}"; do wait_port "$port"; done
    wait_port "$lb_port" / "$work/lb-sync.err"
    check_sessions "${pids[@]}"
    python3 "$root/scripts/client_flood.py" "127.0.0.1:$lb_port" "${FLOOD:-300}" "${FLOOD_DELAY_MS:-12000}" "${PROBE_SECONDS:-30}"
    ;;
  sweep)
    # Issue 18's targets in one run: lb-sync (its defaults; a row per POLLERS value), nginx and
    # HAProxy (and Pingora's load balancer, the Rust anchor, when scripts/build_pingora.sh can
    # build it) in front of the same nginx backends, at several concurrencies, then at c=10 right
    # after a c=256 burst. Twice: three backend processes (one nginx worker each), and the three
    # ports served by one shared single-worker nginx. Per cell: the proxy's CPU microseconds per
    # request (user + system time of all its processes from /proc/PID/stat over the run), req/s,
    # p50, p99 and voluntary context switches per request (every thread, /proc/PID/task/*/status).
    # ROUNDS runs each cell that many times, interleaving the proxies; the tables show medians.
    command -v haproxy >/dev/null || { echo "bench.sh: haproxy not found (apt-get install haproxy)" >&2; exit 1; }
    rounds="${ROUNDS:-1}"
    levels="${SWEEP_CONNECTIONS:-10 64 256}"
    burst="${BURST:-5s}"
    pingora_bin=""
    if [ "${PINGORA:-1}" != 0 ] && [ -x "$root/scripts/build_pingora.sh" ]; then
      pingora_bin=$("$root/scripts/build_pingora.sh" 2> "$work/pingora-build.log") || {
        echo "(Pingora left out: its build failed; see scripts/build_pingora.sh)"; pingora_bin=""; }
    fi
    pollers_variants
    body=$(head -c "$body_bytes" /dev/zero | tr '\0' x)
    results="$work/sweep.tsv"
    : > "$results"
    declare -A proxy_port proxy_pids
    # cell LAYOUT ROW PROXY CONNS: one wrk run against PROXY, one line of $results.
    cell() {
      measure "${proxy_pids[$3]}" -t"$wrk_threads" -c"$4" -d"$duration" "http://127.0.0.1:${proxy_port[$3]}/"
      printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$result" >> "$results"
    }
    # run_layout separate|shared: starts backends and proxies, measures every row, stops them.
    run_layout() {
      local layout="$1" first=${#pids[@]} i
      read -r -a ports <<<"$(free_ports $((7 + ${#lb_names[@]})))"
      backend_ports=("${ports[@]:0:3}")
      proxy_port[nginx]=${ports[3]} proxy_port[haproxy]=${ports[4]} proxy_port[pingora]=${ports[5]}
      proxy_port[lb-sync-routed]=${ports[6]}
      for i in "${!lb_names[@]}"; do proxy_port[${lb_names[$i]}]=${ports[$((7 + i))]}; done
      backend_lists "${backend_ports[@]}"
      if [ "$layout" = shared ]; then
        local listens=""
        for port in "${backend_ports[@]}"; do listens+="listen 127.0.0.1:$port; "; done
        NGINX_WORKERS=1 nginx_up "server { $listens location / { default_type text/plain; return 200 '$body'; } }" "backends-$layout"
      else
        for port in "${backend_ports[@]}"; do
          NGINX_WORKERS=1 nginx_up "server { listen 127.0.0.1:$port; location / { default_type text/plain; return 200 '$body'; } }" "backend-$port"
        done
      fi
      nginx_up "upstream backends { $upstream keepalive 64; }
  server {
    listen 127.0.0.1:${proxy_port[nginx]};
    location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }" "nginx-$layout"
      local nginx_pid=${pids[-1]}
      local lb_threads=() proxies=()
      [ -n "${THREADS:-}" ] && lb_threads=(--threads "$THREADS")
      for i in "${!lb_names[@]}"; do
        # shellcheck disable=SC2086 # lb_flags[i] is a list of flags
        setsid "$sync_bin" --algorithm round_robin --host 127.0.0.1 --port "${proxy_port[${lb_names[$i]}]}" "${lb_threads[@]}" \
          ${lb_flags[$i]} --access-log false --health-check-interval 0 "${lb_args[@]}" > "$work/lb-sync-$i.out" 2> "$work/lb-sync-$i.err" &
        pids+=("$!")
        proxy_pids[${lb_names[$i]}]=$!
        proxies+=("${lb_names[$i]}")
      done
      haproxy_up "127.0.0.1:${proxy_port[haproxy]}"
      proxy_pids[haproxy]=$haproxy_pid
      proxies+=(nginx haproxy)
      if [ "${ROUTED:-0}" != 0 ]; then
        # The same lb-sync with one route that takes every request: what the route lookup and
        # the canonical host cost per request (issue 26: no change beyond noise).
        echo '{"routes": [{"name": "all", "path_prefix": "/", "pool": "default"}]}' > "$work/one-route.json"
        setsid "$sync_bin" --config "$work/one-route.json" --algorithm round_robin --host 127.0.0.1 \
          --port "${proxy_port[lb-sync-routed]}" "${lb_threads[@]}" --access-log false --health-check-interval 0 \
          "${lb_args[@]}" > "$work/lb-sync-routed.out" 2> "$work/lb-sync-routed.err" &
        pids+=("$!")
        proxy_pids[lb-sync-routed]=$!
        proxies+=(lb-sync-routed)
      fi
      if [ -n "$pingora_bin" ]; then
        local pingora_args=()
        for port in "${backend_ports[@]}"; do pingora_args+=(--backend "127.0.0.1:$port"); done
        setsid "$pingora_bin" --listen "127.0.0.1:${proxy_port[pingora]}" --threads "$(nproc)" "${pingora_args[@]}" \
          > "$work/pingora.log" 2>&1 &
        pids+=("$!")
        proxy_pids[pingora]=$!
        proxies+=(pingora)
      fi
      for port in "${backend_ports[@]}"; do wait_port "$port"; done
      for i in "${!lb_names[@]}"; do wait_port "${proxy_port[${lb_names[$i]}]}" / "$work/lb-sync-$i.err"; done
      wait_port "${proxy_port[nginx]}" / "$work/nginx-$layout/logs/error.log"
      wait_port "${proxy_port[haproxy]}" / "$work/haproxy.log"
      [ "${ROUTED:-0}" != 0 ] && wait_port "${proxy_port[lb-sync-routed]}" / "$work/lb-sync-routed.err"
      [ -n "$pingora_bin" ] && wait_port "${proxy_port[pingora]}" / "$work/pingora.log"
      check_sessions "${pids[@]:$first}"
      proxy_pids[nginx]=$(nginx_pids "$nginx_pid")
      for c in $levels; do
        for _ in $(seq 1 "$rounds"); do
          for proxy in "${proxies[@]}"; do cell "$layout" "c=$c" "$proxy" "$c"; done
        done
      done
      # c=10 right after a c=256 burst: what a spike leaves behind (pooled connections, awake
      # workers) and how soon the cost per request is back to c=10's.
      for _ in $(seq 1 "$rounds"); do
        for proxy in "${proxies[@]}"; do
          in_session /dev/null wrk -t"$wrk_threads" -c256 -d"$burst" "http://127.0.0.1:${proxy_port[$proxy]}/"
          cell "$layout" "c=10 after c=256" "$proxy" 10
        done
      done
      stop_pids "${pids[@]:$first}"
      pids=("${pids[@]:0:$first}")
    }
    echo "lb-sync ${THREADS:+--threads $THREADS }(defaults otherwise; rows: $(listed "${lb_names[@]}")); nginx proxy: one worker per core, keepalive 64; haproxy nbthread $haproxy_threads, http-reuse always${pingora_bin:+; Pingora LB, $(nproc) threads}"
    echo "backends: nginx answering $body_bytes bytes; rounds per cell: $rounds (medians shown)"
    for layout in ${SWEEP_LAYOUTS:-separate shared}; do
      run_layout "$layout"
    done
    python3 - "$results" <<'PY'
import statistics, sys
rows = {}
order = []
for line in open(sys.argv[1]):
    layout, row, proxy, cpu, rps, p50, p99, vcs, *errors = line.rstrip("\n").split("\t")
    key = (layout, row)
    if key not in rows:
        rows[key] = {}
        order.append(key)
    rows[key].setdefault(proxy, []).append((float(cpu), float(rps), float(p50), float(p99), float(vcs), errors[0] if errors else ""))
med = lambda xs: statistics.median(xs)
titles = {"separate": "three backends (a single-worker nginx each)", "shared": "one shared single-worker nginx serving the three ports"}
for layout in dict.fromkeys(k[0] for k in order):
    print(f"\n## {titles.get(layout, layout)}")
    print(f"| load | proxy | CPU us/req | req/s | x nginx req/s | p50 ms | p99 ms | vol. switches/req |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for key in [k for k in order if k[0] == layout]:
        cells = rows[key]
        nginx_rps = med([r[1] for r in cells["nginx"]]) if "nginx" in cells else None
        for proxy, runs in cells.items():
            cpu, rps, p50, p99, vcs = (med([r[i] for r in runs]) for i in range(5))
            ratio = f"{rps / nginx_rps:.2f}" if nginx_rps else ""
            errors = "; ".join(sorted({r[5] for r in runs if r[5]}))
            print(f"| {key[1]} | {proxy} | {cpu:.1f} | {rps:.0f} | {ratio} | {p50:.2f} | {p99:.2f} | {vcs:.2f} |{' ' + errors if errors else ''}")
    summary = []
    for proxy in dict.fromkeys(p for k in order if k[0] == layout for p in rows[k] if p.startswith("lb-sync")):
        lb = {k[1]: rows[k].get(proxy) for k in order if k[0] == layout}
        cpu = {r: med([x[0] for x in v]) for r, v in lb.items() if v}
        rps = {r: med([x[1] for x in v]) for r, v in lb.items() if v}
        notes = []
        if "c=10" in cpu and "c=256" in cpu:
            notes.append(f"CPU us/req at c=256 / at c=10: {cpu['c=256'] / cpu['c=10']:.2f}")
        if "c=10" in rps and "c=10 after c=256" in rps:
            notes.append(f"req/s at c=10 after a c=256 burst / fresh: {rps['c=10 after c=256'] / rps['c=10']:.2f}")
        if notes:
            summary.append(f"{proxy}: " + "; ".join(notes))
    if summary:
        print("\n" + "\n".join(summary))
PY
    ;;
  profile)
    # Where a proxied keep-alive request's CPU goes, lb-sync (its defaults) beside nginx, in front
    # of the same three nginx backends, at each concurrency of the sweep and at c=10 right after a
    # c=256 burst. Per load and proxy: user and system microseconds per request (/proc/PID/stat,
    # every process), voluntary and involuntary context switches per request (every thread);
    # then for lb-sync a second run under `perf record -g`, its samples summed by kind of work
    # (scripts/perf_breakdown.py) and shown as microseconds per request of the first run's CPU.
    command -v perf >/dev/null || { echo "bench.sh: perf not found (apt-get install linux-perf)" >&2; exit 1; }
    levels="${PROFILE_LOADS:-10 64 256 burst close}"
    burst="${BURST:-5s}"
    body=$(head -c "$body_bytes" /dev/zero | tr '\0' x)
    read -r -a ports <<<"$(free_ports 5)"
    backend_ports=("${ports[@]:0:3}") nginx_port=${ports[3]} lb_port=${ports[4]}
    backend_lists "${backend_ports[@]}"
    for port in "${backend_ports[@]}"; do
      NGINX_WORKERS=1 nginx_up "server { listen 127.0.0.1:$port; location / { default_type text/plain; return 200 '$body'; } }" "backend-$port"
    done
    nginx_up "upstream backends { $upstream keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection \"\";  }
  }" nginx-proxy
    nginx_master=${pids[-1]}
    # LB_FLAGS: more lb-sync flags (`--upstream-reuse always`...), split on spaces.
    read -r -a lb_flags <<<"${LB_FLAGS:-}"
    setsid "$sync_bin" --algorithm round_robin --host 127.0.0.1 --port "$lb_port" --access-log false \
      --health-check-interval 0 "${lb_flags[@]}" "${lb_args[@]}" > "$work/lb-sync.out" 2> "$work/lb-sync.err" &
    pids+=("$!")
    lb_pid=$!
    for port in "${backend_ports[@]}"; do wait_port "$port"; done
    wait_port "$lb_port" / "$work/lb-sync.err"
    wait_port "$nginx_port" / "$work/nginx-proxy/logs/error.log"
    check_sessions "${pids[@]}"
    nginx_measured=$(nginx_pids "$nginx_master")
    split_ticks() { for pid in "$@"; do awk '{print $14, $15}' "/proc/$pid/stat" 2>/dev/null || true; done | awk '{u += $1; s += $2} END {print u + 0, s + 0}'; }
    all_switches() { for pid in "$@"; do cat /proc/"$pid"/task/*/status 2>/dev/null || true; done | awk '/ctxt_switches/ {s += $2} END {print s + 0}'; }
    # cost NAME "PIDS" PORT CONNS [WRK OPTIONS]: one wrk run; prints a row and sets cost_cpu (us/req).
    cost() {
      local name="$1" measured="$2" port="$3" conns="$4" u0 s0 u1 s1 w0 w1 n out
      shift 4
      runs=$((runs + 1)); out="$work/wrk-$runs.txt"
      # shellcheck disable=SC2086 # a list of PIDs
      read -r u0 s0 <<<"$(split_ticks $measured)"; w0=$(all_switches $measured)
      in_session "$out" wrk --latency -t"$wrk_threads" -c"$conns" -d"$duration" "$@" "http://127.0.0.1:$port/"
      # shellcheck disable=SC2086
      read -r u1 s1 <<<"$(split_ticks $measured)"; w1=$(all_switches $measured)
      n=$(awk '/requests in/ {print $1}' "$out")
      read -r cost_cpu row <<<"$(python3 -c '
import sys
u, s, w, n, hz = (float(x) for x in sys.argv[1:6])
us = lambda t: t * 1e6 / hz / max(n, 1)
print(f"{us(u) + us(s):.1f} {us(u) + us(s):.1f} {us(u):.1f} {us(s):.1f} {w / max(n, 1):.2f} {n / float(sys.argv[6]):.0f}")
' "$((u1 - u0))" "$((s1 - s0))" "$((w1 - w0))" "$n" "$hz" "${duration%s}")"
      printf '| %s | %s | %s |\n' "$name" "$label" "$(echo "$row" | tr ' ' '|' | sed 's/|/ | /g')"
    }
    echo
    echo "| proxy | connections | CPU us/req | user | system | switches/req | req/s |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    breakdowns=()
    for level in $levels; do
      conns=$level label=$level wrk_extra=()
      if [ "$level" = close ]; then
        # A new connection per request: the client closes each after its answer.
        conns=64 label="64, a new connection per request" wrk_extra=(-H "Connection: close")
      fi
      if [ "$level" = burst ]; then
        in_session "$work/burst.txt" wrk -t"$wrk_threads" -c256 -d"$burst" "http://127.0.0.1:$lb_port/"
        in_session "$work/burst-nginx.txt" wrk -t"$wrk_threads" -c256 -d"$burst" "http://127.0.0.1:$nginx_port/"
        conns=10 label="10 after a burst"
      fi
      cost "lb-sync" "$lb_pid" "$lb_port" "$conns" "${wrk_extra[@]}"
      lb_cpu=$cost_cpu
      # shellcheck disable=SC2086
      cost "nginx" "$nginx_measured" "$nginx_port" "$conns" "${wrk_extra[@]}"
      perf record -q -F 999 -g -p "$lb_pid" -o "$work/perf-$level.data" -- sleep "${duration%s}" 2>/dev/null &
      perf_pid=$!
      in_session "$work/perf-wrk-$level.txt" wrk -t"$wrk_threads" -c"$conns" -d"$duration" "${wrk_extra[@]}" "http://127.0.0.1:$lb_port/"
      wait "$perf_pid" 2>/dev/null || true
      breakdowns+=("$label|$lb_cpu|$work/perf-$level.data")
    done
    for entry in "${breakdowns[@]}"; do
      IFS='|' read -r label lb_cpu data <<<"$entry"
      echo
      echo "lb-sync at c=$label: $lb_cpu us of CPU per request, by kind of work (perf record -g, self time)"
      "$root/scripts/perf_breakdown.py" "$data" | python3 -c '
import sys
cpu = float(sys.argv[1])
for line in sys.stdin:
    cells = line.rstrip("\n").split("|")
    if len(cells) > 3 and cells[2].strip().endswith("%"):
        share = float(cells[2].strip().rstrip("%").strip())
        cells[2] = f" {share:.1f} % ({share * cpu / 100:.1f} us) "
    elif len(cells) > 3 and cells[2].strip() == "share of samples":
        cells[2] = " share of samples (us/req) "
    print("|".join(cells))
' "$lb_cpu"
    done
    ;;
  upstream-tls)
    # The cost of TLS to the backend: one nginx backend answering the same body on an HTTP and
    # an HTTPS port (a certificate for localhost from a CA made here), lb-sync and an nginx
    # proxy each in front of both; keep-alive to the backend in every case.
    command -v openssl >/dev/null || { echo "bench.sh: openssl not found (apt-get install openssl)" >&2; exit 1; }
    read -r -a ports <<<"$(free_ports 6)"
    plain_port=${ports[0]} tls_port=${ports[1]} lb_plain=${ports[2]} lb_tls=${ports[3]} nginx_plain=${ports[4]} nginx_tls=${ports[5]}
    (cd "$work" &&
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 1 \
        -subj "/CN=bench CA" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign &&
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj /CN=localhost &&
      printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext &&
      openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile server.ext) \
      > "$work/openssl.log" 2>&1 || { cat "$work/openssl.log" >&2; exit 1; }
    body=$(head -c "$body_bytes" /dev/zero | tr '\0' x)
    nginx_up "server { listen 127.0.0.1:$plain_port; listen 127.0.0.1:$tls_port ssl;
    ssl_certificate $work/server.pem; ssl_certificate_key $work/server.key;
    location / { default_type application/octet-stream; return 200 '$body'; } }" backend
    nginx_up "upstream plain { server 127.0.0.1:$plain_port; keepalive 64; }
  upstream tls { server 127.0.0.1:$tls_port; keepalive 64; }
  server { listen 127.0.0.1:$nginx_plain;
    location / { proxy_pass http://plain; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }
  server { listen 127.0.0.1:$nginx_tls;
    location / { proxy_pass https://tls; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_ssl_verify on; proxy_ssl_trusted_certificate $work/ca.pem; proxy_ssl_name localhost;
      proxy_ssl_server_name on; proxy_ssl_session_reuse on; } }"
    nginx_pid=${pids[-1]}
    declare -A lb_pids
    for pair in "$lb_plain:127.0.0.1:$plain_port" "$lb_tls:https://localhost:$tls_port"; do
      setsid "$sync_bin" --host 127.0.0.1 --port "${pair%%:*}" --threads "$threads" --access-log false \
        --health-check-interval 0 --upstream-ca "$work/ca.pem" --backend "${pair#*:}" \
        > "$work/lb-sync-${pair%%:*}.out" 2> "$work/lb-sync-${pair%%:*}.err" &
      pids+=("$!")
      lb_pids[${pair%%:*}]=$!
    done
    wait_port "$plain_port"
    for port in "$lb_plain" "$lb_tls"; do wait_port "$port" /lb/health "$work/lb-sync-$port.err"; done
    for port in "$nginx_plain" "$nginx_tls"; do wait_port "$port" / "$work/nginx/logs/error.log"; done
    curl -sf --max-time 5 -o /dev/null "http://127.0.0.1:$lb_tls/" || { echo "bench.sh: lb-sync cannot reach the HTTPS backend" >&2; cat "$work/lb-sync-$lb_tls.err" >&2; exit 1; }
    check_sessions "${pids[@]}"
    echo "one nginx backend (return 200, ${NGINX_WORKERS:-auto} workers) on :$plain_port (http) and :$tls_port (https, ECDSA P-256); lb-sync --threads $threads"
    echo "CPU: the proxy's (the nginx proxy serves both of its rows)"
    header
    load "lb-sync -> http backend" "${lb_pids[$lb_plain]}" "http://127.0.0.1:$lb_plain/"
    load "lb-sync -> https backend" "${lb_pids[$lb_tls]}" "http://127.0.0.1:$lb_tls/"
    load "nginx -> http backend" "$(nginx_pids "$nginx_pid")" "http://127.0.0.1:$nginx_plain/"
    load "nginx -> https backend" "$(nginx_pids "$nginx_pid")" "http://127.0.0.1:$nginx_tls/"
    echo
    echo "https / http, lb-sync: $(ratio "lb-sync -> https backend" "lb-sync -> http backend")"
    echo "https / http, nginx:   $(ratio "nginx -> https backend" "nginx -> http backend")"
    echo "lb-sync / nginx, https: $(ratio "lb-sync -> https backend" "nginx -> https backend")"
    ;;
  tls)
    for tool in haproxy openssl; do
      command -v "$tool" >/dev/null || { echo "bench.sh: $tool not found (apt-get install haproxy openssl)" >&2; exit 1; }
    done
    # One certificate for all three: a CA of our own and an ECDSA P-256 leaf for localhost (the
    # key type most sites serve now; an RSA-2048 handshake costs the server about 10x more).
    pki="$work/pki"
    mkdir -p "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$pki/ca.key" -out "$pki/ca.pem" \
      -days 2 -subj "/CN=bench CA" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$pki/site.key" -out "$pki/site.csr" \
      -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$pki/site.ext"
    openssl x509 -req -in "$pki/site.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
      -extfile "$pki/site.ext" -out "$pki/site.pem" 2>/dev/null
    cat "$pki/site.pem" "$pki/site.key" > "$pki/site.combined.pem" # HAProxy's crt: chain and key in one file
    pollers_variants
    read -r -a ports <<<"$(free_ports $((6 + 2 * ${#lb_names[@]})))"
    backend_ports=("${ports[@]:0:3}")
    nginx_port=${ports[3]} haproxy_port=${ports[4]} nginx_http_port=${ports[$((5 + 2 * ${#lb_names[@]}))]}
    for port in "${backend_ports[@]}"; do
      setsid "$backend_bin" --port "$port" --threads 16 > /dev/null &
      pids+=("$!")
    done
    backend_lists "${backend_ports[@]}"
    # One lb-sync per POLLERS row, each with a plain and an HTTPS port.
    declare -A lb_http lb_https lb_pids
    for i in "${!lb_names[@]}"; do
      name=${lb_names[$i]}
      lb_http[$name]=${ports[$((5 + 2 * i))]} lb_https[$name]=${ports[$((6 + 2 * i))]}
      # shellcheck disable=SC2086 # lb_flags[i] is a list of flags
      setsid "$sync_bin" --algorithm round_robin --host 127.0.0.1 --port "${lb_http[$name]}" --threads "$threads" ${lb_flags[$i]} \
        --access-log false --health-check-interval 0 --tls-port "${lb_https[$name]}" --tls-cert "$pki/site.pem" \
        --tls-key "$pki/site.key" "${lb_args[@]}" > "$work/lb-sync-$i.out" 2> "$work/lb-sync-$i.err" &
      pids+=("$!")
      lb_pids[$name]=$!
    done
    # nginx's defaults otherwise (its session cache off, tickets on): as a fresh install serves.
    nginx_up "upstream backends { $upstream keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port ssl;
    listen 127.0.0.1:$nginx_http_port;
    ssl_certificate $pki/site.pem;
    ssl_certificate_key $pki/site.key;
    location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }"
    nginx_pid=${pids[-1]}
    haproxy_up "127.0.0.1:$haproxy_port ssl crt $pki/site.combined.pem alpn http/1.1"
    wait_tls_port() { # PORT LOG
      for _ in $(seq 1 200); do
        curl -sf --max-time 1 --cacert "$pki/ca.pem" -o /dev/null "https://localhost:$1/?bytes=$body_bytes" && return 0
        sleep 0.05
      done
      echo "bench.sh: nothing answers https on port $1; $2:" >&2
      cat "$2" >&2
      exit 1
    }
    for port in "${backend_ports[@]}"; do wait_port "$port" "/?bytes=$body_bytes"; done
    for i in "${!lb_names[@]}"; do wait_tls_port "${lb_https[${lb_names[$i]}]}" "$work/lb-sync-$i.err"; done
    wait_tls_port "$nginx_port" "$work/nginx/logs/error.log"
    wait_port "$nginx_http_port" "/?bytes=$body_bytes" "$work/nginx/logs/error.log"
    wait_tls_port "$haproxy_port" "$work/haproxy.log"
    check_sessions "${pids[@]}"
    nginx_all=$(nginx_pids "$nginx_pid")
    echo "3 lb-backend (--threads 16); lb-sync --threads $threads (rows: $(listed "${lb_names[@]}")); nginx workers ${NGINX_WORKERS:-auto}; haproxy nbthread $haproxy_threads; ECDSA P-256, TLS 1.3"
    header
    url="/?bytes=$body_bytes"
    for name in "${lb_names[@]}"; do load "$name https keep-alive" "${lb_pids[$name]}" "https://127.0.0.1:${lb_https[$name]}$url"; done
    load "nginx https keep-alive" "$nginx_all" "https://127.0.0.1:$nginx_port$url"
    load "haproxy https keep-alive" "$haproxy_pid" "https://127.0.0.1:$haproxy_port$url"
    for name in "${lb_names[@]}"; do load "$name http keep-alive" "${lb_pids[$name]}" "http://127.0.0.1:${lb_http[$name]}$url"; done
    load "nginx http keep-alive" "$nginx_all" "http://127.0.0.1:$nginx_http_port$url"
    # A connection per request: wrk reconnects after each Connection: close answer, resuming its
    # TLS session (no certificate signature: full handshakes cost lb-sync's poller about 0.2 ms
    # each with this ECDSA certificate, see README "TLS").
    for name in "${lb_names[@]}"; do
      load "$name https conn per req" "${lb_pids[$name]}" "https://127.0.0.1:${lb_https[$name]}$url" -H "Connection: close"
    done
    load "nginx https conn per req" "$nginx_all" "https://127.0.0.1:$nginx_port$url" -H "Connection: close"
    load "haproxy https conn per req" "$haproxy_pid" "https://127.0.0.1:$haproxy_port$url" -H "Connection: close"
    for name in "${lb_names[@]}"; do
      load "$name http conn per req" "${lb_pids[$name]}" "http://127.0.0.1:${lb_http[$name]}$url" -H "Connection: close"
    done
    load "nginx http conn per req" "$nginx_all" "http://127.0.0.1:$nginx_http_port$url" -H "Connection: close"
    echo
    for kind in "keep-alive" "conn per req"; do
      for name in "${lb_names[@]}"; do
        printf '%-14s %s / nginx %s, / haproxy %s, https / http %s\n' "$kind:" "$name" "$(ratio "$name https $kind" "nginx https $kind")" \
          "$(ratio "$name https $kind" "haproxy https $kind")" "$(ratio "$name https $kind" "$name http $kind")"
        printf '%-14s %s http / nginx http %s\n' "$kind:" "$name" "$(ratio "$name http $kind" "nginx http $kind")"
      done
    done
    ;;
  scaling)
    # The same N cores for each server under test (taskset -c), N = 1, 2, 4, ... up to the CPUs
    # this script may use (SCALING_CORES to choose): nginx worker_processes N, HAProxy nbthread N,
    # lb-sync --pollers N with its default --threads. The backends (one nginx serving three
    # ports, a worker per load core) and wrk run on the other cores when at least N are left, else
    # on every core, shared with the servers (each N says which). Keep-alive, wrk -c$connections.
    # Per N and server: CPU us per request, req/s, x nginx, and x the server's own req/s at the
    # first N: a bigger machine gives the scaling curve from the same command.
    for tool in haproxy taskset; do
      command -v "$tool" >/dev/null || { echo "bench.sh: $tool not found (apt-get install haproxy util-linux)" >&2; exit 1; }
    done
    read -r -a cpus <<<"$(cpu_list)"
    total=${#cpus[@]}
    steps="${SCALING_CORES:-}"
    if [ -z "$steps" ]; then
      n=1
      while [ "$n" -lt "$total" ]; do steps+="$n "; n=$((n * 2)); done
      steps+="$total"
    fi
    for n in $steps; do
      case "$n" in "" | *[!0-9]*) n=0 ;; esac
      if [ "$n" -lt 1 ] || [ "$n" -gt "$total" ]; then
        echo "bench.sh: SCALING_CORES takes core counts from 1 to $total (the CPUs this script may use: ${cpus[*]})" >&2
        exit 2
      fi
    done
    rounds="${ROUNDS:-1}"
    pollers_flag=yes
    if ! grep -q -- '--pollers' <<<"$("$sync_bin" --help 2>&1 || true)"; then
      echo "(pollers variants skipped: this lb-sync has no --pollers; it runs its one poller, pinned to the N cores)"
      pollers_flag=""
    fi
    lb_threads=()
    [ -n "${THREADS:-}" ] && lb_threads=(--threads "$THREADS")
    body=$(head -c "$body_bytes" /dev/zero | tr '\0' x)
    results="$work/scaling.tsv"
    : > "$results"
    cores_of() { local IFS=,; echo "$*"; } # taskset's list of these CPUs
    lb_desc="${pollers_flag:+--pollers N }${THREADS:+--threads $THREADS}"
    echo "N = $steps of ${cpus[*]}; nginx worker_processes N, haproxy nbthread N, lb-sync ${lb_desc:-(its defaults)}; backends: one nginx answering $body_bytes bytes on three ports; rounds per point: $rounds (medians shown)"
    for n in $steps; do
      first=${#pids[@]}
      rest=("${cpus[@]:$n}")
      server_cores=$(cores_of "${cpus[@]:0:$n}")
      if [ "${#rest[@]}" -ge "$n" ]; then
        load_cores=$(cores_of "${rest[@]}") load_count=${#rest[@]}
        where="backends and wrk on cores $load_cores"
      else
        load_cores=$(cores_of "${cpus[@]}") load_count=$total
        where="backends and wrk share all $total cores with the servers (${#rest[@]} other cores, fewer than $n)"
      fi
      server_pin=(taskset -c "$server_cores") load_pin=(taskset -c "$load_cores")
      haproxy_threads=$n
      wrk_threads=${WRK_THREADS:-$((load_count < 2 ? 2 : load_count))}
      [ "$wrk_threads" -gt "$connections" ] && wrk_threads=$connections
      read -r -a ports <<<"$(free_ports 6)"
      backend_ports=("${ports[@]:0:3}")
      nginx_port=${ports[3]} haproxy_port=${ports[4]} lb_port=${ports[5]}
      backend_lists "${backend_ports[@]}"
      listens=""
      for port in "${backend_ports[@]}"; do listens+="listen 127.0.0.1:$port; "; done
      NGINX_WORKERS=$load_count nginx_role=backend \
        nginx_up "server { $listens location / { default_type text/plain; return 200 '$body'; } }" "backends-$n"
      NGINX_WORKERS=$n nginx_up "upstream backends { $upstream keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }" "nginx-$n"
      nginx_pid=${pids[-1]}
      haproxy_up "127.0.0.1:$haproxy_port"
      lb_pollers=()
      [ -n "$pollers_flag" ] && lb_pollers=(--pollers "$n")
      setsid "${server_pin[@]}" "$sync_bin" --algorithm round_robin --host 127.0.0.1 --port "$lb_port" "${lb_pollers[@]}" \
        "${lb_threads[@]}" --access-log false --health-check-interval 0 "${lb_args[@]}" \
        > "$work/lb-sync-$n.out" 2> "$work/lb-sync-$n.err" &
      pids+=("$!")
      lb_pid=$!
      for port in "${backend_ports[@]}"; do wait_port "$port"; done
      wait_port "$nginx_port" / "$work/nginx-$n/logs/error.log"
      wait_port "$haproxy_port" / "$work/haproxy.log"
      wait_port "$lb_port" / "$work/lb-sync-$n.err"
      check_sessions "${pids[@]:$first}"
      declare -A server_port=([nginx]=$nginx_port [haproxy]=$haproxy_port [lb-sync]=$lb_port)
      declare -A server_pids=([nginx]="$(nginx_pids "$nginx_pid")" [haproxy]=$haproxy_pid [lb-sync]=$lb_pid)
      echo "N=$n: servers on cores $server_cores; $where; wrk -t$wrk_threads -c$connections -d$duration"
      for _ in $(seq 1 "$rounds"); do
        for server in nginx haproxy lb-sync; do
          measure "${server_pids[$server]}" -t"$wrk_threads" -c"$connections" -d"$duration" "http://127.0.0.1:${server_port[$server]}/"
          printf '%s\t%s\t%s\n' "$n" "$server" "$result" >> "$results"
        done
      done
      stop_pids "${pids[@]:$first}"
      pids=("${pids[@]:0:$first}")
    done
    server_pin=() load_pin=()
    python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    n, server, cpu, rps, p50, p99, vcs, *errors = line.rstrip("\n").split("\t")
    rows.setdefault(int(n), {}).setdefault(server, []).append((float(cpu), float(rps), float(p50), float(p99), errors[0] if errors else ""))
med = statistics.median
base = min(rows)
print(f"\n| N | server | CPU us/req | req/s | x nginx req/s | x its N={base} req/s | p50 ms | p99 ms |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
for n in sorted(rows):
    nginx = med([r[1] for r in rows[n]["nginx"]])
    for server, runs in rows[n].items():
        cpu, rps, p50, p99 = (med([r[i] for r in runs]) for i in range(4))
        own = med([r[1] for r in rows[base][server]])
        errors = "; ".join(sorted({r[4] for r in runs if r[4]}))
        print(f"| {n} | {server} | {cpu:.1f} | {rps:.0f} | {rps / nginx:.2f} | {rps / own:.2f} | {p50:.2f} | {p99:.2f} |{' ' + errors if errors else ''}")
lb = {n: med([r[1] for r in rows[n]["lb-sync"]]) for n in sorted(rows)}
print(f"\nlb-sync req/s at N / at N={base}: " + ", ".join(f"N={n} {lb[n] / lb[base]:.2f}" for n in lb))
PY
    ;;
  algorithms)
    # Issue 20's real run, beside `lb-sync simulate` (README "Choosing an algorithm"): three
    # lb-backends with 4 workers each, two answering in FAST_MS and one in 10x that, so together
    # they serve 4/fast + 4/fast + 4/(10 fast) requests a second; an open-loop generator (the
    # open_loop example: Poisson arrivals, latency counted from each request's due time) sends
    # LOAD (0.8) of that through a fresh lb-sync per algorithm. One run each, not a test.
    fast_ms="${FAST_MS:-10}"
    slow_ms=$((fast_ms * 10))
    load_share="${LOAD:-0.8}"
    seconds="${DURATION:-20s}"
    seconds="${seconds%s}"
    open_loop="$(example_bin open_loop)"
    read -r -a ports <<<"$(free_ports 3)"
    for i in 0 1 2; do
      delay=$fast_ms
      [ "$i" = 2 ] && delay=$slow_ms
      setsid "$backend_bin" --port "${ports[$i]}" --id "b$((i + 1))" --threads 4 --delay-ms "$delay" > /dev/null &
      pids+=("$!")
    done
    for port in "${ports[@]}"; do wait_port "$port" /health; done
    read -r rate requests <<<"$(python3 -c "import sys
fast, slow, load, seconds = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
capacity = 4 * 1000 / fast * 2 + 4 * 1000 / slow
rate = load * capacity
print(f'{rate:.1f} {int(rate * seconds)}')" "$fast_ms" "$slow_ms" "$load_share" "$seconds")"
    echo "3 lb-backends (--threads 4): b1, b2 --delay-ms $fast_ms, b3 --delay-ms $slow_ms; open loop at $rate req/s ($load_share of their capacity), $requests requests (${seconds} s) per algorithm"
    check_sessions "${pids[@]}"
    printf '%-18s %10s %8s %8s %7s %10s %10s   %s\n' algorithm "CPU us/req" sent ok errors "p50 ms" "p99 ms" "requests b1 / b2 / b3 (lb-sync's /lb/backends)"
    for algorithm in round_robin least_connections p2c peak_ewma; do
      lb_port=$(free_port)
      setsid "$sync_bin" --algorithm "$algorithm" --host 127.0.0.1 --port "$lb_port" --access-log false --health-check-interval 0 \
        --backend "b1=127.0.0.1:${ports[0]}" --backend "b2=127.0.0.1:${ports[1]}" --backend "b3=127.0.0.1:${ports[2]}" \
        > "$work/lb-sync-$algorithm.out" 2> "$work/lb-sync-$algorithm.err" &
      lb_pid=$!
      pids+=("$lb_pid")
      wait_port "$lb_port" /lb/health "$work/lb-sync-$algorithm.err"
      check_sessions "$lb_pid"
      t0=$(ticks "$lb_pid")
      in_session "$work/open_loop.out" "$open_loop" "http://127.0.0.1:$lb_port/" "$rate" "$requests"
      t1=$(ticks "$lb_pid")
      read -r sent ok errors p50 p99 < "$work/open_loop.out"
      cpu=$(python3 -c "import sys; print(f'{int(sys.argv[1]) * 1e6 / int(sys.argv[2]) / max(int(sys.argv[3]), 1):.1f}')" "$((t1 - t0))" "$hz" "$sent")
      split=$(curl -s --max-time 5 "http://127.0.0.1:$lb_port/lb/backends" | jq -r '[.[].total_requests] | map(tostring) | join(" / ")' 2>/dev/null || echo "(unreadable)")
      printf '%-18s %10s %8s %8s %7s %10s %10s   %s\n' "$algorithm" "$cpu" "$sent" "$ok" "$errors" "$p50" "$p99" "$split"
      echo "$p99" > "$work/$algorithm.p99"
      kill "$lb_pid"; wait "$lb_pid" 2>/dev/null || true
    done
    echo "peak_ewma p99 / round_robin p99: $(python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.3f}')" "$(cat "$work/peak_ewma.p99")" "$(cat "$work/round_robin.p99")")"
    ;;
  *) echo "usage: $0 server|proxy|cost|slow|sweep|upstream-tls|websocket|tls|scaling|algorithms" >&2; exit 2 ;;
esac
