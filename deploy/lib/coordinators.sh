# Sourced by the benchmark scripts: builds the release binaries, makes the certificates in a
# scratch directory that is removed on exit (kept if KEEP is set), and defines
#   start_coordinators   starts a 3-coordinator raft group on loopback (fsync on) and sets
#                        $all (the addresses, comma separated), coordinator_addresses and
#                        coordinator_pids (arrays)
#   stop_coordinators    kills that group and removes its data
#   leader_index         prints the index (0-2) of the coordinator that leads
#   first_member CHECK   prints the first index (0-2) for which `CHECK INDEX` succeeds
#   coordinator_rss      prints each coordinator's resident memory in KiB, space separated
# COORDINATOR_ARGS adds flags to every coordinator (e.g. "--tick-ms 100").
# Afterwards: $bin, $work, $pki, bench_tls (the load generator's TLS flags), pids (everything
# started, killed on exit); `mirari` runs as an operator.
# shellcheck shell=bash
cargo build --release --locked --quiet -p mirari-coordinator -p mirari --bins
bin="$PWD/target/release"
work="$(mktemp -d "${TMPDIR:-/var/tmp}/mirari-bench.XXXXXX")"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

# Mutual TLS, as in production: a CA, a certificate per server, an operator certificate for
# `mirari` (through the environment) and a coordinator certificate for the load generator.
pki="$work/pki"
"$bin/mirari" tls ca create --dir "$pki" >/dev/null
for name in coordinator-1 coordinator-2 coordinator-3 bench operator; do
  role=coordinator; [ "$name" = operator ] && role=operator
  "$bin/mirari" tls cert create --ca-dir "$pki" --role "$role" --name "$name" --ip 127.0.0.1 >/dev/null
done
export MIRARI_CACERT="$pki/ca.pem" MIRARI_CERT="$pki/operator.pem" MIRARI_KEY="$pki/operator-key.pem"
bench_tls=(--tls-ca "$pki/ca.pem" --tls-cert "$pki/bench.pem" --tls-key "$pki/bench-key.pem")

# A free base port below 32768, where the kernel picks ephemeral ports: a listener there can
# collide with an outgoing connection and hang the start.
pick_ports() { echo $((17000 + RANDOM % 15000)); }

start_coordinators() {
  local base id address flag
  base="$(pick_ports)"
  coordinator_addresses=() coordinator_pids=()
  for id in 1 2 3; do
    address="127.0.0.1:$((base + id))"
    coordinator_addresses+=("$address")
    flag=""; [ "$id" = 1 ] && flag="--bootstrap"
    rm -rf "$work/n$id"
    RUST_LOG="${RUST_LOG:-warn}" "$bin/mirari-coordinator" --id "$id" --data-dir "$work/n$id" --listen "$address" $flag ${COORDINATOR_ARGS:-} \
      --tls-cert "$pki/coordinator-$id.pem" --tls-key "$pki/coordinator-$id-key.pem" 2>"$work/n$id.log" &
    coordinator_pids+=($!) pids+=($!)
  done
  until leader_index >/dev/null; do sleep 0.2; done
  for id in 2 3; do
    until "$bin/mirari" cluster members add --id "$id" --address "${coordinator_addresses[$((id - 1))]}" \
      --coordinator "${coordinator_addresses[0]}" >/dev/null 2>&1; do sleep 0.2; done
  done
  all="$(IFS=,; echo "${coordinator_addresses[*]}")"
}

coordinator_rss() {
  local pid
  for pid in "${coordinator_pids[@]}"; do awk '/^VmRSS:/ { printf "%s ", $2 }' "/proc/$pid/status"; done
  echo
}

# first_member CHECK: prints the first index (0-2) for which `CHECK INDEX` succeeds.
first_member() {
  local i
  for i in 0 1 2; do
    if "$1" "$i"; then echo "$i"; return; fi
  done
  return 1
}

coordinator_leads() {
  local info
  info="$("$bin/mirari" cluster info --coordinator "${coordinator_addresses[$1]}" -o json 2>/dev/null)" || return 1
  grep -q '"role": "leader"' <<<"$info"
}

leader_index() { first_member coordinator_leads; }

# stop_members PIDS_ARRAY PREFIX: kills a 3-member cluster and removes $work/PREFIX{1,2,3}.
stop_members() {
  local -n members="$1"
  kill "${members[@]}" 2>/dev/null || true
  wait "${members[@]}" 2>/dev/null || true
  rm -rf "$work/$2"[123]
}

stop_coordinators() { stop_members coordinator_pids n; }
