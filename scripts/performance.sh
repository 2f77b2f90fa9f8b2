#!/usr/bin/env bash
# Every figure of the first table in BENCHMARKS.md, from one run of each
# bench: instructions per request (callgrind), the hot path's paired time,
# allocations, contention, the stampede and loopback. Built with the `redis`
# feature, so that the hot path is measured with a RedisStore configured too,
# on a redis-server the benches start on 127.0.0.1 (installed when missing,
# as valgrind is). About three minutes after the build.
set -euo pipefail
cd "$(dirname "$0")/.."

lscpu | grep -m1 'Model name' || true
date -u +%Y-%m-%d
cargo bench --no-run --features redis --bench instructions --bench hot_path --bench contended \
    --bench stampede --bench loopback 2>/dev/null
scripts/instructions.sh --features redis 2>/dev/null
BENCH_PAIRED_ONLY=1 cargo bench --features redis --bench hot_path 2>/dev/null | grep paired
cargo test --features redis --test alloc -- --nocapture --test-threads=1 2>&1 | grep allocations
cargo bench --features redis --bench contended 2>/dev/null | grep contended
cargo bench --features redis --bench stampede 2>/dev/null | grep stampede
BENCH_PAIRED_ONLY=1 cargo bench --features redis --bench loopback 2>/dev/null | grep paired
