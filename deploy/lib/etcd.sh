# Sourced by the benchmark scripts after coordinators.sh: etcd, the anchor, as a 3-member
# cluster on loopback with the same mutual TLS (certificates from the same CA) and its default
# fsync and timings. Installs Debian's etcd-server when it is missing. Defines
#   start_etcd        starts the cluster and sets $etcd_all (client addresses, comma
#                     separated) and etcd_pids (an array)
#   stop_etcd         kills it and removes its data
#   etcd_leader_index prints the index (0-2) of the member that leads
# shellcheck shell=bash
if ! command -v etcd >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
  # The package starts a system etcd on the default ports; the benchmark runs its own.
  $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
fi
etcd_version="$(etcd --version | awk '/etcd Version/ { print $3 }')"

start_etcd() {
  local base i cluster="" tls
  base="$(pick_ports)"
  etcd_addresses=() etcd_metrics=() etcd_pids=()
  for i in 1 2 3; do cluster+="${cluster:+,}e$i=https://127.0.0.1:$((base + 10 + i))"; done
  for i in 1 2 3; do
    etcd_addresses+=("127.0.0.1:$((base + i))")
    etcd_metrics+=("127.0.0.1:$((base + 20 + i))")
    tls=(--cert-file "$pki/coordinator-$i.pem" --key-file "$pki/coordinator-$i-key.pem" --trusted-ca-file "$pki/ca.pem"
      --client-cert-auth --peer-cert-file "$pki/coordinator-$i.pem" --peer-key-file "$pki/coordinator-$i-key.pem"
      --peer-trusted-ca-file "$pki/ca.pem" --peer-client-cert-auth)
    rm -rf "$work/e$i"
    etcd --name "e$i" --data-dir "$work/e$i" "${tls[@]}" \
      --listen-client-urls "https://${etcd_addresses[-1]}" --advertise-client-urls "https://${etcd_addresses[-1]}" \
      --listen-peer-urls "https://127.0.0.1:$((base + 10 + i))" --initial-advertise-peer-urls "https://127.0.0.1:$((base + 10 + i))" \
      --listen-metrics-urls "http://${etcd_metrics[-1]}" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench 2>"$work/e$i.log" &
    etcd_pids+=($!) pids+=($!)
  done
  until etcd_leader_index >/dev/null; do sleep 0.2; done
  etcd_all="$(IFS=,; echo "${etcd_addresses[*]}")"
}

etcd_leads() {
  local metrics
  # Read whole before grep: `grep -q` would stop reading early and fail the pipeline.
  metrics="$(curl -sf "http://${etcd_metrics[$1]}/metrics" 2>/dev/null)" || return 1
  grep -q '^etcd_server_is_leader 1' <<<"$metrics"
}

etcd_leader_index() { first_member etcd_leads; }

stop_etcd() { stop_members etcd_pids e; }
