#!/usr/bin/env bash
# Redis client throughput: GET of a 1 KiB value from a local redis-server at
# 10 and 100 commands in flight, for cachingproxy's fleet client, txredisapi
# and redis-py's asyncio client (see redis_clients.py), medians of
# interleaved rounds, as ratios to cachingproxy's client.
#
# Usage: bench/run_redis_clients.sh
# Environment:
#   ROUNDS=3           interleaved rounds
#   DURATION=3         seconds measured per client and depth
#   BENCH_NO_INSTALL=1 never call apt-get
#   BENCH_NO_PIN=1     do not pin processes to CPUs
#
# CPU layout (needs >= 2 cores): redis-server on CPU 1, the client on CPU 0.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-3}"

trap bench_cleanup EXIT
bench_ensure_packages redis-server:redis-server
bench_ensure_venv
"$PY" -c 'import hiredis, txredisapi, redis' 2>/dev/null \
    || "$VENV/bin/pip" install -q -e "$REPO_ROOT[bench]" >&2
bench_mktemp

# CPU pinning as a command prefix (not a shell function), so that the pid
# bench_start records is redis-server's own and bench_cleanup stops it
PIN0=() PIN1=()
if [ "${BENCH_NO_PIN:-0}" != 1 ] && command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
    PIN0=(taskset -c 0) PIN1=(taskset -c 1)
fi

bench_start_redis "$BENCH_TMP" ${PIN1[@]+"${PIN1[@]}"}
PORT="$BENCH_REDIS_PORT"
bench_log "redis-server $(redis-server --version | awk '{print $3}') on port $PORT"

cd "$REPO_ROOT"
PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "${PIN0[@]}" "$PY" bench/redis_clients.py all \
    --port "$PORT" --rounds "$ROUNDS" --duration "$DURATION"
