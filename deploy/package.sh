#!/bin/sh
# Builds a .deb per binary (mirari, mirari-agent, mirari-coordinator) with cargo-deb, from a
# release build, and prints their paths. Each binary writes its own man pages (and the CLI its
# shell completions), so they match its --help. Prints each .deb's absolute path.
# Usage: deploy/package.sh            (installs cargo-deb with `cargo install` if missing)
#   MIRARI_PACKAGE_PROFILE=dev deploy/package.sh   packages the debug build instead: the same
#   packages, made in seconds from binaries the tests already built (CI does this; what ships
#   is the release build).
set -eu
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb --version 3.8.0
profile="${MIRARI_PACKAGE_PROFILE:-release}"
case "$profile" in
	dev) out=target/debug ;;
	*) out="target/$profile" ;;
esac
cargo build --profile "$profile" --locked --bins
docs="$out/package"
rm -rf "$docs"
mkdir -p "$docs/completions"
for binary in mirari mirari-agent mirari-coordinator; do
	"$out/$binary" man --out "$docs/man/$binary"
done
"$out/mirari" completions bash >"$docs/completions/mirari"
"$out/mirari" completions zsh >"$docs/completions/_mirari"
"$out/mirari" completions fish >"$docs/completions/mirari.fish"
for package in mirari mirari-agent mirari-coordinator; do
	realpath "$(cargo deb --locked --no-build --profile "$profile" -p "$package" --output target/debian/ | tail -n 1)"
done
