#!/usr/bin/env bash
# Runs every test: unit tests, the backend conformance suite and the end-to-end tests through
# the real binaries (which are built first). Slow suites that do not fit CI are opt-in; see
# README.md.
set -euo pipefail
cd "$(dirname "$0")"
# EC2 as a provider is a cargo feature (the AWS SDK, minutes to build): the tests build it in,
# and run against moto from target/venv (see README.md).
features=(--features mirari-coordinator/ec2,mirari-tests/ec2)
cargo build --workspace --bins --locked "${features[@]}"
cargo test --workspace --locked "${features[@]}" "$@"
