#!/usr/bin/env bash
# The full soak of tests/soak.rs: c=64 keep-alive clients for 10 minutes against lb-sync in front
# of three lb-backend processes, one killed (SIGKILL) and restarted every 3 s in turn. Fails on
# any failed request, a thread count that moves, RSS that grows past 20 % (+4 MiB) from the first
# quarter to the last, or counters that disagree; prints one line of figures. CI runs the same
# test for 30 s.
#
#   scripts/soak.sh [--secs 600] [--clients 64]
set -euo pipefail
secs=600
clients=64
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) secs="${2:?--secs needs a value}"; shift 2 ;;
    --clients) clients="${2:?--clients needs a value}"; shift 2 ;;
    -h|--help) echo "usage: $0 [--secs 600] [--clients 64]"; exit 0 ;;
    *) echo "soak.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
LB_SOAK_SECS="$secs" LB_SOAK_CLIENTS="$clients" \
  cargo test --release --test soak -- --nocapture --test-threads 1 2>&1 | grep -E '^soak |panicked|assert|left|right|^test result'
