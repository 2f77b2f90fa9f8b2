#!/usr/bin/env bash
# Instructions per request on the hot path, counted by callgrind
# (benches/instructions.rs). Installs valgrind first when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq valgrind
fi

exec cargo bench --bench instructions "$@"
