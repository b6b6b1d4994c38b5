#!/usr/bin/env bash
# Runs every test: unit tests, the backend conformance suite and the end-to-end tests through
# the real binaries (which are built first). Slow suites that do not fit CI are opt-in; see
# README.md.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
