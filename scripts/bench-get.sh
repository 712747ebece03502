#!/usr/bin/env bash
# Benchmark: one file from a local nginx with curl and with shoal get (see integration/BENCHMARKS.md).
# Usage: scripts/bench-get.sh [--size 1GiB] [--runs 3] [--json out.json]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin shoal -p shoal
cargo run --release -q -p shoal-integration --bin bench-get -- "$@"
