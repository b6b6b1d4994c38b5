#!/usr/bin/env bash
# Stop a test host started by boot.sh: stop.sh [--state DIR]. Idempotent. With the default
# -snapshot disk nothing is lost that a fresh boot would keep.
set -euo pipefail
state="${XTH_STATE:-/var/tmp/xen-testhost/run}"
if [ "${1:-}" = --state ]; then state="$2"; fi
# The shared SSH connection that ssh.sh started.
if [ -S "$state/ssh.ctl" ]; then
  ssh -o ControlPath="$state/ssh.ctl" -O exit root@127.0.0.1 2>/dev/null || true
  rm -f "$state/ssh.ctl"
fi
if [ -f "$state/qemu.pid" ]; then
  pid="$(cat "$state/qemu.pid")"
  # Only signal the pid if it is still our QEMU, not a recycled number.
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = qemu-system-x86 ]; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
  fi
fi
rm -f "$state/qemu.pid" "$state/env" "$state/ssh.lock"
