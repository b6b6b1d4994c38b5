# Sourced by the benchmark scripts: builds the release binaries and starts a 3-coordinator raft
# group on loopback (fsync on) in a scratch directory that is removed on exit (kept if KEEP is
# set). Afterwards: $bin, $work, $all (the addresses, comma separated), pids (an array).
# shellcheck shell=bash
cargo build --release --locked --quiet -p mirari-coordinator -p mirari --bins
bin="$PWD/target/release"
work="$(mktemp -d "${TMPDIR:-/var/tmp}/mirari-bench.XXXXXX")"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

base=$((17000 + RANDOM % 20000))
addresses=()
for id in 1 2 3; do
  address="127.0.0.1:$((base + id))"
  addresses+=("$address")
  flag=""; [ "$id" = 1 ] && flag="--bootstrap"
  RUST_LOG="${RUST_LOG:-warn}" "$bin/mirari-coordinator" --id "$id" --data-dir "$work/n$id" --listen "$address" $flag 2>"$work/n$id.log" &
  pids+=($!)
done
until "$bin/mirari" cluster info --coordinator "${addresses[0]}" -o json 2>/dev/null | grep -q '"role": "leader"'; do sleep 0.2; done
for id in 2 3; do
  until "$bin/mirari" cluster members add --id "$id" --address "${addresses[$((id - 1))]}" --coordinator "${addresses[0]}" >/dev/null 2>&1; do sleep 0.2; done
done
all="$(IFS=,; echo "${addresses[*]}")"
