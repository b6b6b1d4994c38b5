#!/bin/sh
# Builds a .deb per binary (mirari, mirari-agent, mirari-coordinator) with cargo-deb, from a
# release build, and prints their paths. Each binary writes its own man pages (and the CLI its
# shell completions), so they match its --help. Prints each .deb's absolute path.
# Usage: deploy/package.sh            (installs cargo-deb with `cargo install` if missing)
set -eu
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb --version 3.8.0
cargo build --release --locked --bins
docs=target/release/package
rm -rf "$docs"
mkdir -p "$docs/completions"
for binary in mirari mirari-agent mirari-coordinator; do
	"target/release/$binary" man --out "$docs/man/$binary"
done
target/release/mirari completions bash >"$docs/completions/mirari"
target/release/mirari completions zsh >"$docs/completions/_mirari"
target/release/mirari completions fish >"$docs/completions/mirari.fish"
for package in mirari mirari-agent mirari-coordinator; do
	realpath "$(cargo deb --locked --no-build -p "$package" --output target/debian/ | tail -n 1)"
done
