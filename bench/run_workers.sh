#!/usr/bin/env bash
# Pass-through and cache-hit throughput with --workers 1 and --workers 2,
# side by side with Squid, unpinned: the machine's cores are shared by the
# proxy's processes, wrk and the origin, so read the ratios.
#
# Usage: bench/run_workers.sh   (DURATION, WARMUP, CONNECTIONS as in the
# other scripts)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export BENCH_NO_PIN=1
for workers in 1 2; do
    echo "=== --workers $workers: pass-through ==="
    CACHINGPROXY_ARGS="--workers $workers" PROXIES="cachingproxy squid" \
        bash "$here/run_passthrough.sh" | sed -n '/^proxy /,$p'
    echo "=== --workers $workers: cache hits ==="
    CACHINGPROXY_ARGS="--workers $workers" PROXIES="cachingproxy squid" \
        bash "$here/run_cache_hit.sh" | sed -n '/^proxy /,$p'
done
