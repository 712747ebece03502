#!/usr/bin/env bash
# The test command: installs what the tests need, builds the `shoal` binary the integration tests
# run, then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --bin shoal
cargo test --workspace "$@"
