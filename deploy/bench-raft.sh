#!/usr/bin/env bash
# Benchmark: committed writes per second and p50/p99 latency through a 3-coordinator raft
# group on this machine (loopback, fsync on), at 1, 16 and 256 concurrent clients.
#   deploy/bench-raft.sh [SECONDS_PER_RUN]      (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
cargo build --release --locked --quiet -p mirari-coordinator -p mirari --bins
bin="$PWD/target/release"
work="$(mktemp -d "${TMPDIR:-/var/tmp}/mirari-bench-raft.XXXXXX")"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

base=$((17000 + RANDOM % 20000))
addresses=()
for id in 1 2 3; do
  address="127.0.0.1:$((base + id))"
  addresses+=("$address")
  flag=""; [ "$id" = 1 ] && flag="--bootstrap"
  RUST_LOG=warn "$bin/mirari-coordinator" --id "$id" --data-dir "$work/n$id" --listen "$address" $flag 2>"$work/n$id.log" &
  pids+=($!)
done
until "$bin/mirari" cluster info --coordinator "${addresses[0]}" -o json 2>/dev/null | grep -q '"role": "leader"'; do sleep 0.2; done
for id in 2 3; do
  until "$bin/mirari" cluster members add --id "$id" --address "${addresses[$((id - 1))]}" --coordinator "${addresses[0]}" >/dev/null 2>&1; do sleep 0.2; done
done
all="$(IFS=,; echo "${addresses[*]}")"
echo "3 coordinators on loopback, data in $work (fsync on), ${seconds}s per run:"
for clients in 1 16 256; do
  "$bin/mirari-bench" raft --coordinators "$all" --clients "$clients" --duration "${seconds}s" --prefix "c$clients"
done
