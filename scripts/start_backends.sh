#!/usr/bin/env bash
# Starts one lb-backend per port and stays in the foreground, supervising them: a backend that
# exits (killed, crashed) is logged and the others keep running; start it again with this script
# (`scripts/start_backends.sh --ports "8002"`) while they do. Ctrl-C / SIGTERM stops them all.
# A backend that cannot start (its port is taken) stops the whole set at once: a half-started
# set misleads tests. Builds the release binaries first when they are missing or stale.
#
#   scripts/start_backends.sh --ports "8001 8002 8003"
set -euo pipefail

ports="8001 8002 8003"
host="127.0.0.1"
usage() { echo "usage: $0 [--ports \"8001 8002 8003\"] [--host 127.0.0.1]"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --ports) ports="${2:?--ports needs a value}"; shift 2 ;;
    --ports=*) ports="${1#*=}"; shift ;;
    --host) host="${2:?--host needs a value}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "start_backends.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
. "$root/scripts/binaries.sh"
. "$root/scripts/processes.sh"
bin="$backend_bin"
say() { echo "start_backends.sh: $*" >&2; }

declare -A port_of=()   # pid -> port, for the backends still running
stop_children() {
  stop_pids "${!port_of[@]}"
  port_of=()
}
trap 'stop_children; exit 0' INT TERM
trap stop_children EXIT

# Each backend's stdout goes to a file until its ready line (it is listening) is there.
ready_dir="$(mktemp -d "${TMPDIR:-/tmp}/start_backends.XXXXXX")"
trap 'stop_children; rm -rf "$ready_dir"' EXIT
for port in $ports; do
  "$bin" --port "$port" --host "$host" >"$ready_dir/$port" &
  port_of[$!]=$port
  say "started backend on port $port (pid $!)"
done
# Each must say it listens within 10 s, or the set is stopped.
for pid in "${!port_of[@]}"; do
  port=${port_of[$pid]}
  for _ in $(seq 1 1000); do
    [ -s "$ready_dir/$port" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      say "backend on port $port (pid $pid) could not start; stopping the others"
      exit 1
    fi
    sleep 0.01
  done
  if [ ! -s "$ready_dir/$port" ]; then
    say "backend on port $port (pid $pid) is not listening after 10 s; stopping the others"
    exit 1
  fi
  head -n 1 "$ready_dir/$port"
done
say "${#port_of[@]} backend(s) running; one that exits is logged and the others keep running"

set +e
while [ ${#port_of[@]} -gt 0 ]; do
  wait -n -p ended "${!port_of[@]}"
  status=$?
  [ -n "${ended:-}" ] || continue
  port=${port_of[$ended]:-?}
  unset "port_of[$ended]"
  say "backend on port $port (pid $ended) exited with status $status; ${#port_of[@]} other(s) keep running." \
    "Start it again with: $0 --ports \"$port\" --host $host"
  ended=
done
say "every backend has exited"
exit 1
