#!/usr/bin/env bash
# Several lb-sync instances that behave as one, for a newcomer to try: starts an etcd of its own
# (a temporary data directory, loopback only, ports that do not clash with a system etcd on
# 2379), three demo backends and three lb-sync instances sharing them through the registry, and
# stays in the foreground. Ctrl-C / SIGTERM stops everything it started (by PID) and removes the
# data directory. Anything that cannot start stops the whole set. Builds the release binaries
# first when they are missing or stale. Needs etcd (Debian: apt-get install etcd-server).
#
#   scripts/cluster.sh                       # backends 8001-8003, instances 8081-8083
#   scripts/cluster.sh --instances "9081 9082" --backends "9001 9002" --etcd-port 23790
#
# Then, in another terminal (README, "Running several instances"):
#   curl -s -X POST localhost:8081/lb/backends/add -d '{"host":"127.0.0.1","port":8004}'
#   curl -s localhost:8083/lb/backends | jq -r '.[].id'
set -euo pipefail

backends="8001 8002 8003"
instances="8081 8082 8083"
etcd_port=23790
algorithm="round_robin"
prefix="/lb-sync/cluster"
usage() {
  echo "usage: $0 [--backends \"8001 8002 8003\"] [--instances \"8081 8082 8083\"] [--etcd-port 23790]" \
    "[--algorithm round_robin] [--prefix /lb-sync/cluster]"
}
while [ $# -gt 0 ]; do
  case "$1" in
    --backends) backends="${2:?--backends needs a value}"; shift 2 ;;
    --instances) instances="${2:?--instances needs a value}"; shift 2 ;;
    --etcd-port) etcd_port="${2:?--etcd-port needs a value}"; shift 2 ;;
    --algorithm) algorithm="${2:?--algorithm needs a value}"; shift 2 ;;
    --prefix) prefix="${2:?--prefix needs a value}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "cluster.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

say() { echo "cluster.sh: $*" >&2; }
etcd_bin="${ETCD:-etcd}"
if ! command -v "$etcd_bin" >/dev/null; then
  say "etcd not found: install it (apt-get install etcd-server) or set ETCD=/path/to/etcd"
  exit 1
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
. "$root/scripts/binaries.sh"
. "$root/scripts/processes.sh"

declare -A name_of=()   # pid -> what it is, for everything still running
work="$(mktemp -d "${TMPDIR:-/tmp}/lb-sync-cluster.XXXXXX")"
stop_all() {
  stop_pids "${!name_of[@]}"
  name_of=()
  rm -rf "$work"
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

# Waits until $2 (a file) is not empty, while process $1 lives; 10 s at most.
wait_ready() {
  local pid=$1 file=$2 what=$3
  for _ in $(seq 1 1000); do
    [ -s "$file" ] && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      say "$what (pid $pid) could not start; stopping everything"
      [ -f "$work/$what.log" ] && tail -n 5 "$work/$what.log" >&2
      exit 1
    fi
    sleep 0.01
  done
  say "$what (pid $pid) not ready after 10 s; stopping everything"
  exit 1
}

peer_port=$((etcd_port + 1))
"$etcd_bin" --name cluster --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "cluster=http://127.0.0.1:$peer_port" >"$work/etcd.log" 2>&1 &
name_of[$!]="etcd"
etcd_pid=$!
for _ in $(seq 1 1000); do
  if curl -s "http://127.0.0.1:$etcd_port/health" 2>/dev/null | grep -q true; then break; fi
  if ! kill -0 "$etcd_pid" 2>/dev/null; then
    say "etcd (pid $etcd_pid) could not start (port $etcd_port or $peer_port taken?); its log:"
    tail -n 5 "$work/etcd.log" >&2
    exit 1
  fi
  sleep 0.01
done
say "etcd on 127.0.0.1:$etcd_port (pid $etcd_pid), data in $work/etcd"

backend_flags=()
for port in $backends; do
  "$backend_bin" --port "$port" >"$work/backend-$port.ready" &
  name_of[$!]="backend-$port"
  wait_ready $! "$work/backend-$port.ready" "backend-$port"
  say "backend on 127.0.0.1:$port (pid $!)"
  backend_flags+=(--backend "127.0.0.1:$port")
done

registry="etcd://127.0.0.1:$etcd_port$prefix"
for port in $instances; do
  # The first seeds the registry with the backends; the others take the table from it.
  "$sync_bin" --host 127.0.0.1 --port "$port" --algorithm "$algorithm" --registry "$registry" \
    --access-log false --health-check-interval 2 "${backend_flags[@]}" \
    >"$work/lb-$port.ready" 2>"$work/lb-$port.log" &
  name_of[$!]="lb-$port"
  wait_ready $! "$work/lb-$port.ready" "lb-$port"
  head -n 1 "$work/lb-$port.ready"
done
say "${#name_of[@]} processes running, sharing $registry; logs in $work; Ctrl-C stops them all"

set +e
wait -n -p ended "${!name_of[@]}"
status=$?
say "${name_of[${ended:-}]:-a process} (pid ${ended:-?}) exited with status $status; stopping the others"
exit 1
