#!/usr/bin/env bash
# Benchmark: how soon a container on a fresh host reads a file of a lazily mounted layer, against
# the full pull of the same image over the same link (see integration/BENCHMARKS.md). As root.
# Usage: scripts/bench-lazy.sh [--size 1GiB] [--rate 200mbit] [--runs 3]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin shoal -p shoal
cargo run --release -q -p shoal-integration --bin bench-lazy -- "$@"
