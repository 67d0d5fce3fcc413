#!/usr/bin/env bash
# The seed's manual test flow, automated: real lb-backend processes on
# 8001-8003, one lb-sync per algorithm on 8080 (round_robin), 8081 (weighted_round_robin),
# 8082 (ip_hash) and 8083 (least_connections), the seed's curl | jq checks, the seed's concurrency
# test, the management endpoints, a backend failure, and scripts/start_backends.sh itself (briefly,
# on 18101-18103). Prints PASS/FAIL per check and "N passed, M failed"; exits 0 only when all pass.
#
#   scripts/test_algorithms.sh
#
# Binaries: $LB_BACKEND and $LB_SYNC when set, else ${CARGO_TARGET_DIR:-target}/release/, built
# first (cargo build --release) when missing or older than src/ or Cargo.toml. Loopback only; every
# request is bounded by --max-time; everything started here is stopped on exit, by PID.
set -uo pipefail

backend_ports=(8001 8002 8003)
added_port=8004 # the seed's dynamic management example adds localhost:8004
rr_port=8080 wrr_port=8081 iph_port=8082 lc_port=8083
sb_ports=(18101 18102 18103) # start_backends.sh check

root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/test_algorithms.XXXXXX")"
# Everything started here goes in pids, stopped by PID on exit; a bounded wait of 5 s, as some
# are not our children (start_backends.sh's) and cannot be `wait`ed.
stop_grace_tenths=50
. "$root/scripts/processes.sh"
stop_on_exit

die() { echo "test_algorithms.sh: $*" >&2; exit 1; }

for tool in curl jq; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install curl jq)"
done

# ---- binaries (same rule as scripts/start_backends.sh, honouring CARGO_TARGET_DIR) ----
. "$root/scripts/binaries.sh" || die "cargo build failed"
[ -x "$backend_bin" ] || die "lb-backend not found at $backend_bin"
[ -x "$sync_bin" ] || die "lb-sync not found at $sync_bin"

# ---- the ports must be free before anything starts ----
port_taken() {
  if command -v ss >/dev/null; then
    [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}
for port in "${backend_ports[@]}" $added_port $rr_port $wrr_port $iph_port $lc_port "${sb_ports[@]}"; do
  if port_taken "$port"; then
    die "port $port is already in use (ss -ltnp 'sport = :$port' shows by whom); this test needs 8001-8004, 8080-8083 and 18101-18103 free"
  fi
done

# ---- results ----
passed=0 failed=0
pass() { passed=$((passed + 1)); echo "PASS $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; }
# check NAME EXPECTED SEEN
check() {
  if [ "$2" = "$3" ]; then pass "$1: ${3:-(none)}"; else fail "$1: expected [${2:-(none)}], saw [${3:-(none)}]"; fi
}
# check_true NAME DESCRIPTION-OF-WHAT-WAS-SEEN COMMAND...
check_true() {
  local name="$1" seen="$2"; shift 2
  if "$@"; then pass "$name: $seen"; else fail "$name: $seen"; fi
}

# ---- helpers ----
# server_info.id of one GET (http://127.0.0.1:PORT PATH [X-Forwarded-For]); "?" when not JSON.
get_id() {
  local url="http://127.0.0.1:$1${2:-/}" id
  if [ -n "${3:-}" ]; then
    id=$(curl -s --max-time 10 -H "X-Forwarded-For: $3" "$url" | jq -r '.server_info.id // "?"' 2>/dev/null)
  else
    id=$(curl -s --max-time 10 "$url" | jq -r '.server_info.id // "?"' 2>/dev/null)
  fi
  echo "${id:-?}"
}
# N sequential ids on one line.
ids() {
  local port="$1" n="$2" out=() i
  for ((i = 0; i < n; i++)); do out+=("$(get_id "$port" / "${3:-}")"); done
  echo "${out[*]}"
}
# "backend-8001:5 backend-8002:10" from a space-separated list, sorted by id.
counts() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort | uniq -c | awk '{printf "%s%s:%s", (NR > 1 ? " " : ""), $2, $1}'; }
distinct() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -u | wc -l; }
# wait_http PID PORT PATH LOG: poll until PATH answers 200; fail fast if the process died.
wait_http() {
  local pid="$1" port="$2" path="$3" log="$4"
  for _ in $(seq 1 200); do # 200 x 50 ms = 10 s
    curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:$port$path" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "process $pid (port $port) exited before it was ready; its log:" >&2
      cat "$log" >&2
      exit 1
    fi
    sleep 0.05
  done
  echo "nothing answers http://127.0.0.1:$port$path after 10 s; log of process $pid:" >&2
  cat "$log" >&2
  exit 1
}
children_of() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' '; }
# Only the lb-backend children: the supervisor may have a short-lived helper child (a subshell,
# a sleep) at the moment it is looked at.
backend_children_of() { ps -o pid=,comm= --ppid "$1" 2>/dev/null | awk '$2 == "lb-backend" {print $1}'; }

started=$(date +%s.%N)

# ==== scripts/start_backends.sh (briefly, on other ports) ====
echo "== scripts/start_backends.sh --ports \"${sb_ports[*]}\""
LB_BACKEND="$backend_bin" "$root/scripts/start_backends.sh" --ports "${sb_ports[*]}" > "$work/start_backends.log" 2>&1 &
sb_pid=$!
pids+=("$sb_pid")
for port in "${sb_ports[@]}"; do wait_http "$sb_pid" "$port" /health "$work/start_backends.log"; done
pids+=($(children_of "$sb_pid")) # so that they are stopped even if the script misbehaves
sb_children=($(backend_children_of "$sb_pid"))
health_ids=""
for port in "${sb_ports[@]}"; do
  health_ids+="$(curl -s --max-time 5 "http://127.0.0.1:$port/health" | jq -r .status 2>/dev/null) "
  health_ids+="$(get_id "$port") "
done
check "start_backends.sh: /health and server_info.id on each port" \
  "healthy backend-18101 healthy backend-18102 healthy backend-18103" "${health_ids% }"
check "start_backends.sh: one child process per port" 3 "${#sb_children[@]}"
kill -TERM "$sb_pid"
sb_status=timeout
for _ in $(seq 1 100); do # 10 s
  if ! kill -0 "$sb_pid" 2>/dev/null; then wait "$sb_pid"; sb_status=$?; break; fi
  sleep 0.1
done
check "start_backends.sh: exit status after SIGTERM" 0 "$sb_status"
left=""
for pid in "${sb_children[@]}"; do kill -0 "$pid" 2>/dev/null && left+="$pid "; done
check "start_backends.sh: children gone after SIGTERM" "" "${left% }"
answering=""
for port in "${sb_ports[@]}"; do
  curl -s --max-time 1 -o /dev/null "http://127.0.0.1:$port/health" && answering+="$port "
done
check "start_backends.sh: ports no longer answering" "" "${answering% }"

# ==== backends 8001-8003, started here so that one can be killed by PID ====
declare -A backend_pid
for port in "${backend_ports[@]}"; do
  "$backend_bin" --port "$port" > "$work/backend-$port.log" 2>&1 &
  backend_pid[$port]=$!
  pids+=("$!")
done
for port in "${backend_ports[@]}"; do wait_http "${backend_pid[$port]}" "$port" /health "$work/backend-$port.log"; done

# ==== one balancer per algorithm, the seed's default backends (no --backend) ====
declare -A lb_pid
start_lb() { # ALGORITHM PORT
  "$sync_bin" --algorithm "$1" --port "$2" --access-log false > "$work/lb-$2.out" 2> "$work/lb-$2.err" &
  lb_pid[$2]=$!
  pids+=("$!")
}
start_lb round_robin $rr_port
start_lb weighted_round_robin $wrr_port
start_lb ip_hash $iph_port
start_lb least_connections $lc_port
for port in $rr_port $wrr_port $iph_port $lc_port; do
  wait_http "${lb_pid[$port]}" "$port" /lb/health "$work/lb-$port.err"
done
for pair in round_robin:$rr_port weighted_round_robin:$wrr_port ip_hash:$iph_port least_connections:$lc_port; do
  algo=${pair%:*} port=${pair#*:}
  line=$(head -n 1 "$work/lb-$port.out")
  check_true "ready line of lb-sync --algorithm $algo" "'$line'" \
    grep -q "^lb-sync $algo listening on 0.0.0.0:$port " "$work/lb-$port.out"
done

# ==== round robin (8080) ====
echo "== round_robin on :$rr_port"
check "round_robin: 6 sequential requests" \
  "backend-8001 backend-8002 backend-8003 backend-8001 backend-8002 backend-8003" "$(ids $rr_port 6)"

# ==== weighted round robin (8081) ====
echo "== weighted_round_robin on :$wrr_port (weights 1:2:1)"
wrr=$(ids $wrr_port 20)
check "weighted_round_robin: 20 requests, sort | uniq -c" \
  "backend-8001:5 backend-8002:10 backend-8003:5" "$(counts "$wrr")"
check "weighted_round_robin: smooth order (nginx), first 8" \
  "backend-8002 backend-8001 backend-8003 backend-8002 backend-8002 backend-8001 backend-8003 backend-8002" \
  "$(cut -d' ' -f1-8 <<<"$wrr")"
burst=$(tr ' ' '\n' <<<"$wrr" | awk '$0 == prev {run++} $0 != prev {run = 1; prev = $0} run > max {max = run} END {print max}')
check_true "weighted_round_robin: never the same backend 3 times in a row" "longest run $burst" [ "$burst" -lt 3 ]

# ==== ip hash (8082) ====
echo "== ip_hash on :$iph_port"
own=$(ids $iph_port 10)
check "ip_hash: 10 requests without X-Forwarded-For go to one backend" 1 "$(distinct "$own")"
check "ip_hash: 127.0.0.1 maps to backend2" backend-8002 "${own%% *}"
declare -A seed_ip_backend
for ip in 192.168.1.100 192.168.1.101 192.168.1.102; do
  seen=$(ids $iph_port 5 "$ip")
  seed_ip_backend[$ip]=${seen%% *}
  check "ip_hash: X-Forwarded-For $ip, 5 repeats on one backend" 1 "$(distinct "$seen")"
  echo "     $ip -> ${seen%% *}"
done
check "ip_hash: 192.168.1.100 maps to backend1" backend-8001 "${seed_ip_backend[192.168.1.100]}"
declare -A ip_backend
spread=""
for i in $(seq 1 20); do
  ip="10.20.$((i * 7)).$((i * 13 % 250 + 1))"
  ip_backend[$ip]=$(get_id $iph_port / "$ip")
  spread+="${ip_backend[$ip]} "
done
check_true "ip_hash: 20 distinct client addresses use at least 2 backends" "$(counts "$spread")" \
  [ "$(distinct "$spread")" -ge 2 ]
again=""
for ip in "${!ip_backend[@]}"; do [ "$(get_id $iph_port / "$ip")" = "${ip_backend[$ip]}" ] || again+="$ip "; done
check "ip_hash: the 20 addresses map to the same backend when asked again (addresses that moved)" "" "${again% }"

# ==== least connections (8083) ====
echo "== least_connections on :$lc_port"
lc=$(ids $lc_port 6)
check_true "least_connections: 6 sequential requests on an idle balancer use all three" "$lc" \
  [ "$(distinct "$lc")" -eq 3 ]
slow_pids=()
for i in 1 2; do
  curl -s --max-time 10 -o "$work/slow$i.json" -w '%{http_code}' "http://127.0.0.1:$lc_port/?delay_ms=1500" > "$work/slow$i.code" &
  slow_pids+=("$!")
  pids+=("$!")
done
active=""
for _ in $(seq 1 100); do # 100 x 10 ms
  active=$(curl -s --max-time 2 "http://127.0.0.1:$lc_port/lb/backends" | jq -c '[.[] | {id, port, active_connections}]' 2>/dev/null)
  [ "$(jq '[.[].active_connections] | add' <<<"${active:-[]}" 2>/dev/null)" = 2 ] && break
  sleep 0.01
done
check "least_connections: /lb/backends shows the 2 slow requests in flight" 2 \
  "$(jq '[.[].active_connections] | add' <<<"${active:-[]}" 2>/dev/null)"
idle=$(jq -r '[.[] | select(.active_connections == 0) | "backend-\(.port)"] | join(" ")' <<<"${active:-[]}" 2>/dev/null)
third=$(get_id $lc_port /)
check_true "least_connections: a third request goes to the backend with 0 active connections" \
  "idle [$idle], third request -> $third; in flight: $active" \
  bash -c '[ "$(wc -w <<<"$1")" -eq 1 ] && [ "$1" = "$2" ]' _ "$idle" "$third"
seed_jq=$(curl -s --max-time 5 "http://127.0.0.1:$lc_port/lb/backends" | jq -c '.[] | {id: .id, active_connections: .active_connections}' 2>&1)
echo "$seed_jq" | sed 's/^/     /'
check_true "least_connections: the seed's jq '.[] | {id, active_connections}' gives 3 objects" \
  "$(wc -l <<<"$seed_jq") lines" [ "$(grep -c '"active_connections":[0-9]' <<<"$seed_jq")" -eq 3 ]
for pid in "${slow_pids[@]}"; do wait "$pid"; done
slow=""
for i in 1 2; do slow+="$(cat "$work/slow$i.code"):$(jq -r .server_info.id "$work/slow$i.json" 2>/dev/null) "; done
check_true "least_connections: both slow requests answered 200 by different backends" "$slow" \
  bash -c 'set -- $1; [ "${1%%:*}" = 200 ] && [ "${2%%:*}" = 200 ] && [ "${1#*:}" != "${2#*:}" ]' _ "$slow"
after=""
for _ in $(seq 1 100); do
  after=$(curl -s --max-time 2 "http://127.0.0.1:$lc_port/lb/backends" | jq '[.[].active_connections] | add' 2>/dev/null)
  [ "$after" = 0 ] && break
  sleep 0.01
done
check "least_connections: active_connections back to 0 when the requests are done" 0 "$after"

# ==== the seed's concurrency test: 3 groups of 5 concurrent requests ====
echo "== concurrency (seed's test_concurrent)"
concurrent() { # PORT GROUPS: GROUPS x 5 concurrent curls; prints the ids
  local port="$1" groups="$2" g j cpids=()
  for ((g = 0; g < groups; g++)); do
    for j in 1 2 3 4 5; do
      curl -s --max-time 10 -o "$work/c-$port-$g-$j.json" "http://127.0.0.1:$port/" &
      cpids+=("$!")
    done
  done
  wait "${cpids[@]}" # each bounded by --max-time
  for ((g = 0; g < groups; g++)); do
    for j in 1 2 3 4 5; do jq -r '.server_info.id // "?"' "$work/c-$port-$g-$j.json" 2>/dev/null || echo "?"; done
  done | tr '\n' ' '
}
check "round_robin: 15 concurrent requests spread exactly" \
  "backend-8001:5 backend-8002:5 backend-8003:5" "$(counts "$(concurrent $rr_port 3)")"
check "weighted_round_robin: 20 concurrent requests spread exactly" \
  "backend-8001:5 backend-8002:10 backend-8003:5" "$(counts "$(concurrent $wrr_port 4)")"

# ==== management endpoints ====
echo "== management API"
for port in $rr_port $wrr_port $iph_port $lc_port; do
  code=$(curl -s --max-time 5 -o "$work/health.json" -w '%{http_code}' "http://127.0.0.1:$port/lb/health")
  check ":$port /lb/health: status code and .status" "200 healthy" "$code $(jq -r .status "$work/health.json" 2>/dev/null)"
done
code=$(curl -s --max-time 5 -o "$work/stats.json" -w '%{http_code}' "http://127.0.0.1:$rr_port/lb/stats")
check "/lb/stats answers 200 JSON" "200 object" "$code $(jq -r type "$work/stats.json" 2>/dev/null)"
missing=$(jq -r '
  . as $s
  | ([("load_balancer", "total_requests", "successful_requests", "failed_requests", "success_rate",
       "average_response_time", "backends") | select(. as $k | $s | has($k) | not)]
     + [("algorithm", "total_backends", "healthy_backends", "unhealthy_backends")
        | select(. as $k | ($s.backends // {}) | has($k) | not) | "backends.\(.)"])
  | join(" ")' "$work/stats.json" 2>/dev/null || echo "(not JSON)")
check "/lb/stats has the seed's keys (missing ones)" "" "$missing"
check "/lb/stats backends: total, healthy, unhealthy" "3 3 0" \
  "$(jq -r '.backends | "\(.total_backends) \(.healthy_backends) \(.unhealthy_backends)"' "$work/stats.json" 2>/dev/null)"
check "/lb/stats circuit_breaker: state, failure_count, success_count" "closed number number" \
  "$(jq -r '.circuit_breaker | "\(.state) \(.failure_count | type) \(.success_count | type)"' "$work/stats.json" 2>/dev/null)"
# Rate limiting is off here: the object is there all the same and counts every proxied request.
check "/lb/stats rate_limiter: type, total = allowed + rejected = proxied requests, rejected" "token_bucket true 0" \
  "$(jq -r '. as $s | .rate_limiter | "\(.type) \(.total_requests == .allowed_requests + .rejected_requests and
    .total_requests == $s.total_requests and .total_requests > 0) \(.rejected_requests)"' "$work/stats.json" 2>/dev/null)"
code=$(curl -s --max-time 5 -o "$work/backends.json" -w '%{http_code}' "http://127.0.0.1:$rr_port/lb/backends")
check "/lb/backends: 200, array of 3 with id and active_connections" "200 3" \
  "$code $(jq '[.[] | select(has("id") and has("active_connections"))] | length' "$work/backends.json" 2>/dev/null)"
code=$(curl -s --max-time 5 -o "$work/config.json" -w '%{http_code}' "http://127.0.0.1:$rr_port/lb/config")
check "/lb/config answers 200 JSON" "200 ok" "$code $(jq -e . "$work/config.json" >/dev/null 2>&1 && echo ok)"

# ==== failover: backend-8002 dies ====
echo "== failover: kill backend-8002 (PID ${backend_pid[8002]})"
kill "${backend_pid[8002]}"
wait "${backend_pid[8002]}" 2>/dev/null
codes="" served=""
for i in $(seq 1 20); do
  out=$(curl -s --max-time 10 -w '\n%{http_code}' "http://127.0.0.1:$rr_port/")
  codes+="$(tail -n 1 <<<"$out") "
  served+="$(sed '$d' <<<"$out" | jq -r '.server_info.id // "?"' 2>/dev/null) "
done
check "round_robin after backend-8002 died: 20 requests, status codes" \
  "$(printf '200 %.0s' $(seq 1 20) | sed 's/ $//')" "${codes% }"
check "round_robin after backend-8002 died: who answered" "backend-8001:10 backend-8003:10" "$(counts "$served")"
echo "     backend2 as /lb/backends shows it now: $(curl -s --max-time 5 "http://127.0.0.1:$rr_port/lb/backends" |
  jq -c '.[] | select(.port == 8002) | {healthy, usable, failed_requests, circuit_breaker}' 2>/dev/null)"
moved_wrong=""
for ip in "${!ip_backend[@]}"; do
  now=$(get_id $iph_port / "$ip")
  if [ "${ip_backend[$ip]}" = backend-8002 ]; then
    [ "$now" = backend-8001 ] || [ "$now" = backend-8003 ] || moved_wrong+="$ip:${ip_backend[$ip]}->$now "
  else
    [ "$now" = "${ip_backend[$ip]}" ] || moved_wrong+="$ip:${ip_backend[$ip]}->$now "
  fi
done
check "ip_hash after backend-8002 died: only its clients move, all answered (wrong moves)" "" "${moved_wrong% }"

# ==== the seed's dynamic management commands, exactly as written, traffic checked after each ====
echo "== dynamic management (the seed's curl commands on :8080)"
"$backend_bin" --port $added_port > "$work/backend-$added_port.log" 2>&1 &
pids+=("$!")
wait_http "$!" $added_port /health "$work/backend-$added_port.log"
has() { [[ " $1 " == *" $2 "* ]]; }
out=$(curl -X POST -H "Content-Type: application/json" \
  -d '{"host":"localhost","port":8004,"weight":1}' \
  http://localhost:8080/lb/backends/add 2>/dev/null)
check "add: the new backend's id and port" "backend4 8004" "$(jq -r '"\(.id) \(.port)"' <<<"$out" 2>/dev/null)"
seen=$(ids $rr_port 9)
check_true "add: backend-8004 takes requests" "$seen" has "$seen" backend-8004
out=$(curl -X POST http://localhost:8080/lb/backends/backend1/disable 2>/dev/null)
check "disable: message" "backend backend1 disabled" "$(jq -r .message <<<"$out" 2>/dev/null)"
seen=$(ids $rr_port 9)
check_true "disable: backend-8001 gets no request" "$seen" bash -c '[[ " $1 " != *" backend-8001 "* ]]' _ "$seen"
out=$(curl -X POST http://localhost:8080/lb/backends/backend1/enable 2>/dev/null)
check "enable: message" "backend backend1 enabled" "$(jq -r .message <<<"$out" 2>/dev/null)"
seen=$(ids $rr_port 9)
check_true "enable: backend-8001 takes requests again" "$seen" has "$seen" backend-8001
out=$(curl -X DELETE http://localhost:8080/lb/backends/backend1/remove 2>/dev/null)
check_true "remove: message" "$(jq -r .message <<<"$out" 2>/dev/null)" has "$(jq -r .message <<<"$out" 2>/dev/null)" removed
seen=$(ids $rr_port 9)
check_true "remove: backend-8001 gets no request" "$seen" bash -c '[[ " $1 " != *" backend-8001 "* ]]' _ "$seen"
check "remove: /lb/backends ids" "backend2 backend3 backend4" \
  "$(curl -s http://localhost:8080/lb/backends | jq -r '[.[].id] | join(" ")' 2>/dev/null)"
stats=$(curl http://localhost:8080/lb/stats 2>/dev/null)
check "stats: total_requests = successful_requests + failed_requests" "true" \
  "$(jq '.total_requests == .successful_requests + .failed_requests' <<<"$stats" 2>/dev/null)"

elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
if [ "$failed" -gt 0 ]; then
  for port in $rr_port $wrr_port $iph_port $lc_port; do
    echo "---- lb-sync :$port stderr (last 30 lines)"
    tail -n 30 "$work/lb-$port.err"
  done
fi
echo "($elapsed s)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
