#!/usr/bin/env bash
# What /lb/history costs under load: `perf record -g` of lb-sync (default settings, three
# lb-backend processes, all on loopback) while `wrk -c64` runs and a dashboard's worth of
# GET /lb/history (every 2 s) is asked for, then the share of samples in history code: the
# history sampler thread, and frames of lb_sync::ops::history / admin::history /
# HistogramSnapshot::since on any other thread (the data path never calls them; the
# /lb/history answers do). Then, exactly, the sampler thread's CPU time over the run against
# lb-sync's (from /proc/PID/task/*/schedstat, in nanoseconds).
#
#   scripts/profile_history.sh     # DURATION=15 CONNECTIONS=64 FREQUENCY=4999 by default;
#                                  # KEEP=FILE keeps perf.data there
#
# Needs perf and wrk. A measurement: run it on a quiet machine (the lead's benchmarks use
# /work/tools/await-quiet). Everything started here is stopped on exit, by PID.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
duration="${DURATION:-15}"
connections="${CONNECTIONS:-64}"
frequency="${FREQUENCY:-4999}"
work="$(mktemp -d "${TMPDIR:-/tmp}/profile_history.XXXXXX")"
. "$root/scripts/processes.sh"
stop_on_exit
before_work_removed() { [ -z "${KEEP:-}" ] || cp "$work/perf.data" "$KEEP"; }

for tool in perf wrk curl; do command -v "$tool" >/dev/null || { echo "profile_history.sh: $tool not found" >&2; exit 1; }; done
. "$root/scripts/binaries.sh"

# ready FILE PID: the address at the end of a process's 'listening on' line (bounded wait).
ready() {
  for _ in $(seq 1 200); do
    if [ -s "$1" ] && grep -q 'listening on' "$1"; then
      sed -nE 's/.*listening on ([0-9.:]+).*/\1/p' "$1" | head -n 1
      return 0
    fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

backends=()
for i in 1 2 3; do
  "$backend_bin" --port 0 --host 127.0.0.1 > "$work/backend$i.out" 2>/dev/null &
  pids+=("$!")
  backends+=(--backend "$(ready "$work/backend$i.out" "$!")")
done
"$sync_bin" --host 127.0.0.1 --port 0 --access-log-file "$work/access.log" "${backends[@]}" > "$work/lb.out" 2> "$work/lb.err" &
lb_pid=$!
pids+=("$lb_pid")
addr=$(ready "$work/lb.out" "$lb_pid")
echo "lb-sync (pid $lb_pid) on $addr; wrk -t2 -c$connections -d${duration}s, GET /lb/history every 2 s, perf record -g"

wrk -t2 -c"$connections" -d"$((duration + 2))s" "http://$addr/" > "$work/wrk.out" &
wrk_pid=$!
pids+=("$wrk_pid")
(for _ in $(seq 1 $((duration / 2 + 1))); do curl -s -o /dev/null "http://$addr/lb/history"; sleep 2; done) &
pids+=("$!")
# cpu_ns [history]: nanoseconds on a CPU so far, of every lb-sync thread or of the sampler's.
cpu_ns() {
  local task sum=0
  for task in /proc/"$lb_pid"/task/*; do
    if [ -z "${1:-}" ] || [ "$(cat "$task/comm")" = history ]; then
      sum=$((sum + $(cut -d' ' -f1 "$task/schedstat")))
    fi
  done
  echo "$sum"
}
sleep 1
all_before=$(cpu_ns) history_before=$(cpu_ns history)
perf record -q -F "$frequency" -g -p "$lb_pid" -o "$work/perf.data" -- sleep "$duration" 2>/dev/null
all_after=$(cpu_ns) history_after=$(cpu_ns history)
wait "$wrk_pid" || true
grep -E 'Requests/sec|Latency ' "$work/wrk.out"

# One line per sample: its thread, then every frame's symbol.
perf script -i "$work/perf.data" -F comm,ip,sym 2>/dev/null | awk '
  /^[^ \t]/ { if (n) out(); comm = $1; frames = ""; n = 1; next }
  NF { frames = frames " " $0 }
  END { if (n) out() }
  function out() {
    total++
    if (comm == "history") sampler++
    else if (frames ~ /ops::history|admin::history|HistogramSnapshot::since/) answers++
  }
  END {
    printf "samples: %d; history sampler thread: %d (%.3f %%); /lb/history code on other threads: %d (%.3f %%)\n",
      total, sampler, 100 * sampler / total, answers, 100 * answers / total
    printf "history in all: %.3f %% of lb-sync'"'"'s samples\n", 100 * (sampler + answers) / total
  }'
awk -v a="$((all_after - all_before))" -v h="$((history_after - history_before))" -v d="$duration" 'BEGIN {
  printf "CPU time over %d s: lb-sync %.3f s, history sampler %.3f ms (%.4f %%)\n", d, a / 1e9, h / 1e6, 100 * h / a }'
