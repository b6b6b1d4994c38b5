#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 10) each; a crash, a panic, a leak or one
# allocation above 256 MiB fails it, and leaves the input in fuzz/artifacts/TARGET/.
# Needs cargo-fuzz (`cargo install cargo-fuzz`). It builds with the stable toolchain:
# RUSTC_BOOTSTRAP lets cargo-fuzz pass the sanitizer flags it needs.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-10}"
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
cargo fuzz build -O
# The example app's source, as a bundle, seeds the archive target.
mkdir -p corpus/archive
tar --format=ustar -C ../examples/hello --exclude=_build --exclude=_mirari -cf corpus/archive/hello.tar .
for target in $targets; do
  mkdir -p "corpus/$target"
  seeds=()
  [ -d "seeds/$target" ] && seeds=("seeds/$target")
  echo "== $target (${seconds}s)"
  mkdir -p artifacts
  log="artifacts/$target.log"
  status=0
  cargo fuzz run -O "$target" "corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$seconds" -malloc_limit_mb=256 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^(Done|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY)|panicked|Test unit written" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log"
    echo "fuzz target $target failed (exit $status); the input is in fuzz/artifacts/$target/, the output in $log"
    exit 1
  fi
done
