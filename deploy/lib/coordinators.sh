# Sourced by the benchmark scripts: builds the release binaries and starts a 3-coordinator raft
# group on loopback (fsync on) in a scratch directory that is removed on exit (kept if KEEP is
# set). Afterwards: $bin, $work, $all (the addresses, comma separated), pids (an array),
# bench_tls (the load generator's TLS flags); `mirari` runs as an operator.
# shellcheck shell=bash
cargo build --release --locked --quiet -p mirari-coordinator -p mirari --bins
bin="$PWD/target/release"
work="$(mktemp -d "${TMPDIR:-/var/tmp}/mirari-bench.XXXXXX")"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

# Mutual TLS, as in production: a CA, a certificate per coordinator, an operator certificate
# for `mirari` (through the environment) and a coordinator certificate for the load generator.
"$bin/mirari" tls ca create --dir "$work/pki" >/dev/null
for name in coordinator-1 coordinator-2 coordinator-3 bench operator; do
  role=coordinator; [ "$name" = operator ] && role=operator
  "$bin/mirari" tls cert create --ca-dir "$work/pki" --role "$role" --name "$name" --ip 127.0.0.1 >/dev/null
done
export MIRARI_CACERT="$work/pki/ca.pem" MIRARI_CERT="$work/pki/operator.pem" MIRARI_KEY="$work/pki/operator-key.pem"
bench_tls=(--tls-ca "$work/pki/ca.pem" --tls-cert "$work/pki/bench.pem" --tls-key "$work/pki/bench-key.pem")

# Below 32768, where the kernel picks ephemeral ports: a listener there can collide with an
# outgoing connection and hang the start.
base=$((17000 + RANDOM % 15000))
addresses=()
for id in 1 2 3; do
  address="127.0.0.1:$((base + id))"
  addresses+=("$address")
  flag=""; [ "$id" = 1 ] && flag="--bootstrap"
  RUST_LOG="${RUST_LOG:-warn}" "$bin/mirari-coordinator" --id "$id" --data-dir "$work/n$id" --listen "$address" $flag \
    --tls-cert "$work/pki/coordinator-$id.pem" --tls-key "$work/pki/coordinator-$id-key.pem" 2>"$work/n$id.log" &
  pids+=($!)
done
until "$bin/mirari" cluster info --coordinator "${addresses[0]}" -o json 2>/dev/null | grep -q '"role": "leader"'; do sleep 0.2; done
for id in 2 3; do
  until "$bin/mirari" cluster members add --id "$id" --address "${addresses[$((id - 1))]}" --coordinator "${addresses[0]}" >/dev/null 2>&1; do sleep 0.2; done
done
all="$(IFS=,; echo "${addresses[*]}")"
