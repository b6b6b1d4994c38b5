#!/bin/sh
# Installs Debian's Raspberry Pi 3 build of U-Boot (package u-boot-rpi, arm64 only) on an amd64
# host, for the rpi backend's raspi3b board: /usr/lib/u-boot/rpi_3/u-boot.bin.
#
# The package is not installable here (it is arm64), so it is downloaded with apt, which checks
# its signature against the host's Debian keyring, using a private package list for arm64
# (the host's own apt state and architectures are left alone), and unpacked with dpkg-deb.
# Usage: deploy/rpi/install-u-boot-rpi.sh [DEST]   (DEST defaults to /usr/lib/u-boot/rpi_3)
set -eu
dest=${1:-/usr/lib/u-boot/rpi_3}
if [ -f "$dest/u-boot.bin" ]; then
	echo "install-u-boot-rpi: $dest/u-boot.bin is already there"
	exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work" # apt downloads as _apt
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
apt_arm64="-o Dir::State::Lists=$work/lists -o Dir::Cache=$work/cache -o Dir::State::status=/dev/null
	-o APT::Architecture=arm64 -o APT::Architectures::=arm64"
# shellcheck disable=SC2086 # the options are meant to split
apt-get -q $apt_arm64 update >"$work/update.log" 2>&1 || { cat "$work/update.log" >&2; exit 1; }
# shellcheck disable=SC2086
(cd "$work" && apt-get -q $apt_arm64 download u-boot-rpi:arm64)
dpkg-deb -x "$work"/u-boot-rpi_*_arm64.deb "$work/root"
mkdir -p "$dest"
cp "$work/root/usr/lib/u-boot/rpi_3/u-boot.bin" "$dest/u-boot.bin.tmp"
mv "$dest/u-boot.bin.tmp" "$dest/u-boot.bin"
echo "install-u-boot-rpi: installed $dest/u-boot.bin ($(basename "$work"/u-boot-rpi_*_arm64.deb))"
