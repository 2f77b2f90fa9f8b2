#!/usr/bin/env bash
# The fleet's figures: `load --replicas 8` against the embedded server, with
# the login shared through one redis-server, through a Redis Cluster of three
# primaries and three replicas, and with no store at all (one replica), one
# JSON summary each. Every server is started here on free ports of
# 127.0.0.1, with persistence off and its files in a temporary directory, and
# killed on exit. Needs Debian's redis-server and redis-tools (installed when
# missing, as .ci/run does). About a minute after the build.
set -euo pipefail
cd "$(dirname "$0")/.."

for program in redis-server redis-cli; do
  if ! command -v "$program" >/dev/null; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server redis-tools
    break
  fi
done

dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

# A free TCP port of 127.0.0.1 (and its cluster bus port, +10000).
free_port() {
  python3 - <<'EOF'
import socket
while True:
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        port = a.getsockname()[1]
        if port + 10000 > 65535:
            continue
        try:
            b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        print(port)
        break
EOF
}

# Starts a redis-server on $1 with the other arguments; waits (10 s at most)
# until it answers.
start_redis() {
  local port=$1
  shift
  mkdir -p "$dir/$port"
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    --dir "$dir/$port" "$@" >"$dir/$port.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "redis-server on $port did not start" >&2
  exit 1
}

cargo build --release --features redis --example load 2>/dev/null
load=target/release/examples/load

lscpu | grep -m1 'Model name' || true
date -u +%Y-%m-%d

single=$(free_port)
start_redis "$single"
echo "8 replicas, one redis-server:"
"$load" --replicas 8 --store "redis://127.0.0.1:$single/" --json

cluster=()
for _ in 1 2 3 4 5 6; do
  port=$(free_port)
  start_redis "$port" --cluster-enabled yes --cluster-node-timeout 1000 \
    --cluster-config-file "$dir/$port/nodes.conf"
  cluster+=("$port")
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${cluster[@]}") \
  --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1
for _ in $(seq 100); do
  if redis-cli -p "${cluster[0]}" cluster info | grep -q 'cluster_state:ok'; then break; fi
  sleep 0.1
done
seeds="127.0.0.1:${cluster[0]},127.0.0.1:${cluster[1]},127.0.0.1:${cluster[2]}"
echo "8 replicas, a Redis Cluster of 3 primaries and 3 replicas:"
"$load" --replicas 8 --store "redis+cluster://$seeds/" --json

echo "1 replica, no store:"
"$load" --json
