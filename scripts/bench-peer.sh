#!/usr/bin/env bash
# Benchmark: one peer-to-peer transfer on loopback, beside curl (see integration/BENCHMARKS.md).
# Usage: scripts/bench-peer.sh [--size 1GiB] [--runs 3]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin shoal -p shoal
cargo run --release -q -p shoal-integration --bin bench-peer -- "$@"
