#!/usr/bin/env bash
# Builds benches/pingora-lb (Pingora's quick-start round-robin load balancer, the Rust anchor of
# scripts/bench.sh) in release mode when its binary is missing or older than its sources, and
# prints the binary's path on stdout, nothing else (cargo's output goes to stderr):
#
#   pingora_bin="$(scripts/build_pingora.sh)"
#   "$pingora_bin" --listen 127.0.0.1:8080 --threads 2 --backend 127.0.0.1:8001 --backend 127.0.0.1:8002
#
# The project is outside lb-sync's workspace, so CI and `cargo test` never compile it. Its target
# directory is ${CARGO_TARGET_DIR:-<repo>/target}/pingora-lb. The first build downloads the crates
# that Cargo.lock pins (crates.io needed once), then takes minutes on 2 cores; later builds are
# offline. Needs cargo, cmake, make and a C compiler (zlib-ng and zstd are built from C sources);
# the script checks for them and does not install anything.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
project="$root/benches/pingora-lb"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
target_dir="$target_dir/pingora-lb"
bin="$target_dir/release/pingora-lb"

stale() { [ ! -x "$bin" ] || [ -n "$(find "$project/src" "$project/Cargo.toml" "$project/Cargo.lock" -newer "$bin" -print -quit)" ]; }

if stale; then
  missing=() packages=()
  command -v cargo >/dev/null || missing+=("cargo (https://rustup.rs)")
  command -v cmake >/dev/null || { missing+=(cmake); packages+=(cmake); }
  command -v make >/dev/null || { missing+=(make); packages+=(make); }
  if ! command -v "${CC:-cc}" >/dev/null && ! command -v gcc >/dev/null && ! command -v clang >/dev/null; then
    missing+=("a C compiler"); packages+=(gcc)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    (IFS=,; echo "build_pingora.sh: missing ${missing[*]}" | sed 's/,/, /g' >&2)
    [ ${#packages[@]} -gt 0 ] && echo "build_pingora.sh: install with: apt-get install ${packages[*]}" >&2
    exit 1
  fi
  echo "build_pingora.sh: building $bin (minutes the first time)" >&2
  # --locked: exactly the versions in Cargo.lock; cargo goes to crates.io only for crates it
  # has not downloaded yet.
  if ! CARGO_TARGET_DIR="$target_dir" cargo build --release --locked --manifest-path "$project/Cargo.toml" >&2; then
    echo "build_pingora.sh: the build failed (see above)" >&2
    exit 1
  fi
  # cargo leaves an up-to-date binary untouched: mark it fresh so the check above holds.
  touch "$bin"
fi
echo "$bin"
