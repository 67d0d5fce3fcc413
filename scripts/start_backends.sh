#!/usr/bin/env bash
# Starts one lb-backend per port, stays in the foreground, and stops its
# children on Ctrl-C / SIGTERM. Builds the release binaries first when they are missing or stale.
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
bin="$backend_bin"

pids=()
stop_children() {
  if [ ${#pids[@]} -gt 0 ]; then
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap 'stop_children; exit 0' INT TERM
trap stop_children EXIT

for port in $ports; do
  "$bin" --port "$port" --host "$host" &
  pids+=("$!")
done
# One backend exiting (port taken, crash) ends the group: a half-started set misleads tests.
set +e
wait -n
status=$?
echo "start_backends.sh: a backend exited (status $status); stopping the others" >&2
exit 1
