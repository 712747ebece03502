#!/usr/bin/env bash
# Benchmark: the scheduler under load, simulated hosts over real gRPC, the scheduler pinned to
# one core (see integration/BENCHMARKS.md). Usage: scripts/bench-scheduler.sh [--hosts 1000]
# [--tasks 1] [--per-host 1] [--pieces 64] [--piece-ms 100]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin shoal -p shoal
cargo run --release -q -p shoal-integration --bin bench-scheduler -- "$@"
