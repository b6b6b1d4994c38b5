#!/usr/bin/env bash
# Run a command as root in dom0 of a booted test host, passing its output, stdin and exit status
# through: ssh.sh [--state DIR] CMD...   e.g. ssh.sh xl list -l;  ssh.sh 'cat >/root/f' <f
set -euo pipefail
state="${XTH_STATE:-/var/tmp/xen-testhost/run}"
if [ "${1:-}" = --state ]; then state="$2"; shift 2; fi
# shellcheck source=/dev/null
. "$state/env"
# Host keys change with every image build while the forwarded port stays, so remembering them
# would only produce mismatches. ServerAlive ends the shared connection once QEMU is gone.
opts=(-i "$XTH_KEY" -p "$XTH_SSH_PORT" -o BatchMode=yes -o ConnectTimeout=30
  -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
  -o ServerAliveInterval=5 -o ServerAliveCountMax=6 -o ControlPath="$state/ssh.ctl")
# A fresh SSH handshake costs about 5 s under TCG; one shared master connection brings each later
# command down to a fraction of a second. The master is started detached from our stdio (a
# ControlPersist master started by the command itself would hold the caller's pipes open), and
# stop.sh ends it. Without a master, ssh falls back to a direct connection.
if ! ssh "${opts[@]}" -O check root@127.0.0.1 2>/dev/null; then
  (
    flock 8
    ssh "${opts[@]}" -O check root@127.0.0.1 2>/dev/null ||
      ssh "${opts[@]}" -o ControlMaster=yes -o ControlPersist=yes -fN root@127.0.0.1 \
        </dev/null >/dev/null 2>&1 || true
  ) 8>"$state/ssh.lock"
fi
exec ssh "${opts[@]}" -o ControlMaster=no root@127.0.0.1 "$@"
