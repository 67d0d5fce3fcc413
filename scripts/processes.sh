# Sourced by the scripts that start processes, to stop them by PID (never by name).
#
# stop_pids PID...: SIGTERM to each, then waits for each. With $stop_grace_tenths set, PIDs that
# are not this shell's children (which `wait` cannot wait for) are polled every 0.1 s up to that
# many times, and whatever still runs then gets SIGKILL.
stop_pids() {
  [ $# -gt 0 ] || return 0
  local pid alive
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "${stop_grace_tenths:-}" ]; then
    for _ in $(seq 1 "$stop_grace_tenths"); do
      alive=0
      for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
      [ $alive = 0 ] && break
      sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# stop_on_exit: from now on, whatever ends the script (its end, `exit`, Ctrl-C with status 130,
# SIGTERM with 143) stops every PID in `pids` (the script appends each it starts: pids+=("$!")),
# runs `before_work_removed` when the script defines one, and removes $work.
stop_on_exit() {
  pids=()
  trap stop_and_clean EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
stop_and_clean() {
  trap - EXIT INT TERM
  stop_pids "${pids[@]}"
  if declare -F before_work_removed >/dev/null; then before_work_removed; fi
  rm -rf "$work"
}
