#!/usr/bin/env bash
# The dashboard in a real browser: three lb-backend processes and one lb-sync on ephemeral loopback
# ports (a config file: two backends in the default pool, one in the pool "api", a route "api"
# taking /api there), then tests/browser/dashboard_test.mjs in headless Chromium (Debian's
# /usr/bin/chromium, driven by playwright-core): the page lists the backends, a click on Disable
# changes the backend in the API; each pool has its section with its backends (a click in api's
# disables api's backend), the routes table shows the route and counts its requests; under load
# the second backend is killed and the history charts show its dip and its failed tries; a
# screenshot is written to target/dashboard.png (or $DASHBOARD_SCREENSHOT).
#
#   scripts/test_dashboard.sh
#   DASHBOARD_SCREENSHOT=docs/dashboard.png scripts/test_dashboard.sh   # the README's picture
#
# Needs node, npm and /usr/bin/chromium (.ci/run installs them). When one is missing the test is
# skipped, except under CI (CI set), where that is a failure. Ends with "N passed, M failed".
# Everything started here is stopped on exit, by PID.
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/test_dashboard.XXXXXX")"
. "$root/scripts/processes.sh"
stop_on_exit
die() { echo "test_dashboard.sh: $*" >&2; echo "0 passed, 1 failed"; exit 1; }

missing=""
for tool in node npm; do command -v "$tool" >/dev/null || missing+="$tool "; done
[ -x /usr/bin/chromium ] || missing+="/usr/bin/chromium "
if [ -n "$missing" ]; then
  [ -n "${CI:-}" ] && die "missing: $missing(apt-get install chromium nodejs npm)"
  echo "skipped: the dashboard browser test: missing $missing(apt-get install chromium nodejs npm)"
  echo "0 passed, 0 failed, 1 skipped"
  exit 0
fi

. "$root/scripts/binaries.sh" || die "cargo build failed"

# playwright-core only (no browser download): the lock file pins it.
if [ ! -d "$root/tests/browser/node_modules/playwright-core" ]; then
  (cd "$root/tests/browser" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in tests/browser failed"
fi

# first_line FILE PID: waits (bounded) for the first stdout line of a starting process.
first_line() {
  for _ in $(seq 1 200); do # 200 x 50 ms
    [ -s "$1" ] && head -n 1 "$1" | grep -q 'listening on' && { head -n 1 "$1"; return 0; }
    kill -0 "$2" 2>/dev/null || { cat "$1" "$1.err" >&2; return 1; }
    sleep 0.05
  done
  return 1
}

# Two backends in the default pool, one in the pool "api", which the route "api" takes /api to.
addresses=()
for i in 1 2 3; do
  "$backend_bin" --port 0 --host 127.0.0.1 > "$work/backend$i.out" 2> "$work/backend$i.out.err" &
  pids+=("$!")
  line=$(first_line "$work/backend$i.out" "$!") || die "lb-backend $i did not start"
  addresses+=("${line##* }")
  # The test kills the second one (it is ours: started here, by PID).
  [ "$i" = 2 ] && victim=("$!" "${line##* }")
done
entry() { echo "{\"host\": \"${1%:*}\", \"port\": ${1##*:}}"; }
cat > "$work/lb.json" <<EOF
{
  "host": "127.0.0.1", "port": 0, "threads": 8, "access_log": false,
  "backends": [$(entry "${addresses[0]}"), $(entry "${addresses[1]}")],
  "pools": {"api": {"backends": [$(entry "${addresses[2]}")], "algorithm": "least_connections"}},
  "routes": [{"name": "api", "path_prefix": "/api", "pool": "api"}]
}
EOF
"$sync_bin" --config "$work/lb.json" > "$work/lb.out" 2> "$work/lb.out.err" &
pids+=("$!")
line=$(first_line "$work/lb.out" "$!") || die "lb-sync did not start"
addr=$(sed -E 's/.* listening on ([^ ]+) .*/\1/' <<<"$line")
echo "lb-sync on $addr: $line"

screenshot="$(realpath -m "${DASHBOARD_SCREENSHOT:-${CARGO_TARGET_DIR:-$root/target}/dashboard.png}")"
mkdir -p "$(dirname "$screenshot")"
rm -f "$screenshot"
if (cd "$root/tests/browser" && timeout 120 node dashboard_test.mjs "http://$addr" "$screenshot" "${victim[@]}") && [ -s "$screenshot" ]; then
  echo "PASS dashboard: listed the backends, disabled one by a click, both pools' backends and the route shown, a killed backend's dip on the history charts, screenshot in $screenshot"
  echo "1 passed, 0 failed"
else
  echo "FAIL dashboard (lb-sync's stderr follows)"
  tail -n 30 "$work/lb.out.err"
  echo "0 passed, 1 failed"
  exit 1
fi
