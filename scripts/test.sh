#!/usr/bin/env bash
# The test command: set-up, formatting, lints, then every unit, property and end-to-end
# test (the end-to-end tests start real broker and worker processes on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
