#!/usr/bin/env bash
# Throughput and latency, measured with wrk against nginx (and HAProxy) in the same run, so the
# numbers are ratios on this machine rather than absolute claims. Loopback only; each load run
# is bounded by DURATION.
#
#   scripts/bench.sh server   # lb-backend vs nginx answering the same 1 KiB body
#   scripts/bench.sh proxy    # lb-sync vs nginx vs HAProxy in front of the same lb-backends, and direct
#
# Environment: DURATION (default 10s), CONNECTIONS (64), WRK_THREADS (2), THREADS (lb workers, 8),
# BODY_BYTES (1024). Needs wrk and nginx (and haproxy for proxy): apt-get install wrk nginx-light haproxy.
set -euo pipefail

mode="${1:-proxy}"
duration="${DURATION:-10s}"
connections="${CONNECTIONS:-64}"
wrk_threads="${WRK_THREADS:-2}"
threads="${THREADS:-8}"
body_bytes="${BODY_BYTES:-1024}"

root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { echo "bench.sh: $tool not found (apt-get install wrk nginx-light haproxy)" >&2; exit 1; }
done
(cd "$root" && cargo build --release --quiet --bin lb-backend --bin lb-sync)
bin="$root/target/release"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 200); do
    curl -sf -o /dev/null "http://127.0.0.1:$1${2:-/}" && return 0
    sleep 0.05
  done
  echo "bench.sh: nothing answers on port $1" >&2; exit 1
}
# One wrk run; prints "name  requests/s  p50  p99".
load() {
  local name="$1" url="$2"
  wrk -t"$wrk_threads" -c"$connections" -d"$duration" --latency "$url" > "$work/$name.wrk"
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/$name.wrk")
  p50=$(awk '$1 == "50%" {print $2}' "$work/$name.wrk")
  p99=$(awk '$1 == "99%" {print $2}' "$work/$name.wrk")
  errors=$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' "$work/$name.wrk")
  printf '%-28s %12s req/s   p50 %-9s p99 %-9s %s\n' "$name" "$rps" "$p50" "$p99" "$errors"
  echo "$rps" > "$work/$name.rps"
}
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$(cat "$work/$1.rps")" "$(cat "$work/$2.rps")"; }
nginx_up() { # $1 = config body (http block content)
  mkdir -p "$work/nginx/logs"
  cat > "$work/nginx/nginx.conf" <<CONF
worker_processes ${NGINX_WORKERS:-auto};
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  $1
}
CONF
  nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
  pids+=("$!")
}

echo "machine: $(nproc) cores; wrk -t$wrk_threads -c$connections -d$duration; body $body_bytes bytes"
case "$mode" in
  server)
    port=$(free_port)
    "$bin/lb-backend" --port "$port" --threads "$threads" > /dev/null &
    pids+=("$!")
    nginx_port=$(free_port)
    body=$(head -c "$body_bytes" /dev/zero | tr '\0' x)
    nginx_up "server { listen 127.0.0.1:$nginx_port; location / { default_type application/octet-stream; return 200 '$body'; } }"
    wait_port "$port" "/?bytes=$body_bytes"
    wait_port "$nginx_port"
    load "lb-backend ($threads threads)" "http://127.0.0.1:$port/?bytes=$body_bytes"
    load "nginx (return 200)" "http://127.0.0.1:$nginx_port/?bytes=$body_bytes"
    echo "lb-backend / nginx: $(ratio "lb-backend ($threads threads)" "nginx (return 200)")"
    ;;
  proxy)
    "$root/scripts/bench_proxy.sh" 2>/dev/null || { echo "proxy mode arrives with the balancer (issue 3)" >&2; exit 1; }
    ;;
  *) echo "usage: $0 server|proxy" >&2; exit 2 ;;
esac
