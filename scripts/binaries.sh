# Sourced by the scripts (needs $root): sets backend_bin and sync_bin to $LB_BACKEND / $LB_SYNC
# when given, else ${CARGO_TARGET_DIR:-$root/target}/release/, building both first when one is
# missing or older than src/ or Cargo.toml. Returns non-zero when the build fails.
target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
backend_bin="${LB_BACKEND:-$target_dir/release/lb-backend}"
sync_bin="${LB_SYNC:-$target_dir/release/lb-sync}"
stale() { [ ! -x "$1" ] || [ -n "$(find "$root/src" "$root/Cargo.toml" -newer "$1" -print -quit)" ]; }
if { [ -z "${LB_BACKEND:-}" ] && stale "$backend_bin"; } || { [ -z "${LB_SYNC:-}" ] && stale "$sync_bin"; }; then
  (cd "$root" && CARGO_TARGET_DIR="$target_dir" cargo build --release --quiet --bin lb-backend --bin lb-sync)
fi
# The path of examples/NAME.rs built in release, building it first when it is missing or older
# than its source, src/ or Cargo.toml (bench.sh's load generators).
example_bin() {
  local bin="$target_dir/release/examples/$1"
  if [ ! -x "$bin" ] || [ -n "$(find "$root/examples/$1.rs" "$root/src" "$root/Cargo.toml" -newer "$bin" -print -quit)" ]; then
    (cd "$root" && CARGO_TARGET_DIR="$target_dir" cargo build --release --quiet --example "$1") >&2 || return 1
  fi
  echo "$bin"
}
