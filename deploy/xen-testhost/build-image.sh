#!/usr/bin/env bash
# Build the Xen test host: a Debian 12 dom0 disk image plus the files QEMU boots (Xen, dom0 kernel,
# dom0 initrd) and the SSH key that opens dom0. See README.md.
#   build-image.sh [--cache DIR] [--out DIR] [--extra DIR] [--enable UNIT]...
# Three layers, so that only what changed is redone:
#   CACHE/base-HASH    debootstrap output (minutes); HASH covers suite, mirror and package list
#   CACHE/rootfs-HASH  base + our configuration (seconds); HASH also covers this script and rootfs/
#   OUT/disk.img       rootfs + --extra tree, written by mkfs.ext4 -d on every run (seconds)
# --extra DIR is laid over / (e.g. DIR/usr/local/bin/mirari-agent, DIR/etc/systemd/system/x.service);
# --enable UNIT enables a unit from the result, as `systemctl enable` would.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${XTH_CACHE:-/var/tmp/xen-testhost}"
out=""
extra=""
enable=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cache) cache="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --extra) extra="$(cd "$2" && pwd)"; shift 2 ;;
    --enable) enable+=("$2"); shift 2 ;;
    *) echo "usage: $0 [--cache DIR] [--out DIR] [--extra DIR] [--enable UNIT]..." >&2; exit 2 ;;
  esac
done
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
out="${out:-$cache/image}"

suite=bookworm
mirror="${XTH_MIRROR:-http://deb.debian.org/debian}"
# busybox-static and cpio let tests build tiny guest initrds inside dom0; openssh-server is the
# command channel; dbus keeps systemd-networkd and logind quiet; gcc, make and libc6-dev let the
# Mirari agent in dom0 build the example app (builds run on a host with the target's backend);
# curl fetches from guests on the bridge xenbr0 (iproute2's ip is all vif-bridge needs: no brctl).
packages=systemd-sysv,udev,dbus,kmod,procps,iproute2,iputils-ping,openssh-server,busybox-static,cpio
packages+=,gcc,make,libc6-dev,curl
packages+=,linux-image-amd64,xen-system-amd64,xen-utils-4.17,xen-hypervisor-4.17-amd64

for tool in debootstrap mkfs.ext4 ssh-keygen; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap e2fsprogs openssh-client; break; }
done

# One builder at a time per cache: concurrent callers wait, then find the layers already built.
exec 9>"$cache/.lock"
flock 9
rm -rf "$cache"/tmp.*  # left by a build that was killed; no other build runs while we hold the lock

base_hash="$(printf '%s\n' "$suite" "$mirror" "$packages" | sha256sum | cut -c1-16)"
rootfs_hash="$( { echo "$base_hash"; cd "$here"; find build-image.sh rootfs -type f -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16)"
base="$cache/base-$base_hash"
rootfs="$cache/rootfs-$rootfs_hash"
tmp="$cache/tmp.$$"
trap 'rm -rf "$tmp"' EXIT

# A layer directory exists only once complete (built under tmp, then renamed), so an interrupted
# build is simply redone. Older layers are removed: each is about 1 GB.
if [ ! -d "$base" ]; then
  echo "building $base (debootstrap, 2-4 minutes)" >&2
  debootstrap --variant=minbase --include="$packages" "$suite" "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  rm -rf "$tmp"/var/cache/apt/archives/*.deb
  mv "$tmp" "$base"
  find "$cache" -maxdepth 1 -name 'base-*' ! -path "$base" -exec rm -rf {} +
fi

if [ ! -d "$rootfs" ]; then
  echo "building $rootfs" >&2
  cp -a "$base" "$tmp"
  cp -rT --preserve=mode "$here/rootfs" "$tmp"
  echo xen-testhost >"$tmp/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 xen-testhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$tmp/etc/hosts"
  printf '/dev/vda / ext4 defaults,errors=remount-ro 0 1\n' >"$tmp/etc/fstab"
  printf 'nameserver 10.0.2.3\n' >"$tmp/etc/resolv.conf"  # QEMU user-net DNS
  chroot "$tmp" passwd -qd root
  # Xen's console (hvc0) would otherwise get a getty that fights tests and the READY marker for it.
  systemctl -q --root="$tmp" mask serial-getty@hvc0.service
  # e2scrub_reap alone costs about 30 s of boot under TCG, and a throwaway test disk needs no scrub.
  systemctl -q --root="$tmp" mask e2scrub_reap.service e2scrub_all.timer
  # Debian ships Xen's start-up as SysV scripts (xen: xenstored + xenconsoled; xendomains);
  # update-rc.d links them into the runlevels, from which systemd generates xen.service.
  chroot "$tmp" update-rc.d xen defaults
  chroot "$tmp" update-rc.d xendomains defaults
  systemctl -q --root="$tmp" enable systemd-networkd.service ssh.service xen-testhost-ready.service
  mv "$tmp" "$rootfs"
  find "$cache" -maxdepth 1 -name 'rootfs-*' ! -path "$rootfs" -exec rm -rf {} +
fi

# The client key lives outside the layers so rebuilding them does not change it.
[ -f "$cache/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C xen-testhost -f "$cache/id_ed25519"

# Stage = hard links to the cached rootfs (instant, no copy). Anything written into the stage must
# replace a file rather than write through it, or the cache would change: hence rm before writes
# and cp --remove-destination.
mkdir -p "$out"
cp -al "$rootfs" "$tmp"
install -d -m 700 "$tmp/root/.ssh"
rm -f "$tmp/root/.ssh/authorized_keys"
install -m 600 "$cache/id_ed25519.pub" "$tmp/root/.ssh/authorized_keys"
if [ -n "$extra" ]; then
  cp -a --no-preserve=ownership --remove-destination "$extra/." "$tmp/"
fi
for unit in ${enable[@]+"${enable[@]}"}; do
  systemctl -q --root="$tmp" enable "$unit"
done

# Free space in dom0 for guest kernels, blobs and test files, on top of what the tree needs.
size_mib=$(( $(du -sm "$tmp" | cut -f1) + ${XTH_HEADROOM_MIB:-1024} ))
rm -f "$out/disk.img.tmp"
mkfs.ext4 -q -F -L xen-testhost -d "$tmp" "$out/disk.img.tmp" "${size_mib}M" >/dev/null
mv "$out/disk.img.tmp" "$out/disk.img"
zcat "$rootfs"/boot/xen-4.17-amd64.gz >"$out/xen.elf"
cp "$rootfs"/boot/vmlinuz-* "$out/vmlinuz"
cp "$rootfs"/boot/initrd.img-* "$out/initrd.img"
cp "$cache/id_ed25519" "$out/id_ed25519"
echo "$out/disk.img"
