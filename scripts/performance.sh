#!/usr/bin/env bash
# Every figure of the README's "Performance" table, from one run of each
# bench: instructions per request (callgrind), the hot path's paired time,
# allocations, contention, the stampede and loopback. Installs valgrind first
# when it is missing. About three minutes after the build.
set -euo pipefail
cd "$(dirname "$0")/.."

lscpu | grep -m1 'Model name' || true
date -u +%Y-%m-%d
cargo bench --no-run --bench instructions --bench hot_path --bench contended \
    --bench stampede --bench loopback 2>/dev/null
scripts/instructions.sh 2>/dev/null
BENCH_PAIRED_ONLY=1 cargo bench --bench hot_path 2>/dev/null | grep paired
cargo test --test alloc -- --nocapture --test-threads=1 2>&1 | grep allocations
cargo bench --bench contended 2>/dev/null | grep contended
cargo bench --bench stampede 2>/dev/null | grep stampede
BENCH_PAIRED_ONLY=1 cargo bench --bench loopback 2>/dev/null | grep paired
