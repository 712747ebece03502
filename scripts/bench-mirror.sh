#!/usr/bin/env bash
# Benchmark: a warm blob and a manifest through the registry mirror, beside docker-registry itself
# (see integration/BENCHMARKS.md). Usage: scripts/bench-mirror.sh [--size 1GiB] [--runs 5]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin shoal -p shoal
cargo run --release -q -p shoal-integration --bin bench-mirror -- "$@"
