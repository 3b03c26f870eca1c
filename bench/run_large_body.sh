#!/usr/bin/env bash
# Large-body memory benchmark: 1 GiB through the proxy to a slow client,
# peak proxy RSS reported.  All arguments go to bench/large_body.py, e.g.
#
#   bench/run_large_body.sh                      # cachingproxy (default)
#   bench/run_large_body.sh --proxy twisted      # twisted.web.proxy baseline
#   bench/run_large_body.sh --origin nginx       # nginx + sparse file origin
#   bench/run_large_body.sh --fail-over-limit    # exit 1 if peak RSS >= 64 MiB
#
# Environment: BENCH_NO_INSTALL=1 never calls apt-get.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

trap bench_cleanup EXIT
need=(taskset:util-linux)
for a in "$@"; do
    case "$a" in
        nginx|--origin=nginx) need+=(nginx:nginx) ;;
    esac
done
bench_ensure_packages "${need[@]}"
bench_ensure_venv
cd "$REPO_ROOT"
exec "$PY" "$BENCH_DIR/large_body.py" "$@"
