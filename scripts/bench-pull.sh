#!/usr/bin/env bash
# Benchmark: `shoal pull` against `ctr images pull` of one image on loopback, cold, side by side
# (see integration/BENCHMARKS.md). As root. Usage: scripts/bench-pull.sh [--size 1GiB] [--layers 4] [--runs 3]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin shoal -p shoal
cargo run --release -q -p shoal-integration --bin bench-pull -- "$@"
