#!/usr/bin/env bash
# Cache-hit memory benchmark: 20 clients at once download a 100 MiB object
# that cachingproxy holds in its disk cache only (--cache-memory 16M); the
# proxy's peak RSS over its idle RSS is reported.  All arguments go to
# bench/cache_hit_rss.py, e.g.
#
#   bench/run_cache_rss.sh                        # defaults: 100 MiB, 20 clients
#   bench/run_cache_rss.sh --clients 50 --size 200M
#   bench/run_cache_rss.sh --fail-over-limit      # exit 1 if peak - idle >= 64 MiB
#
# Environment: BENCH_NO_INSTALL=1 never calls apt-get.
# The run is bounded by --timeout (300 s); `timeout` below is only a backstop.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

trap bench_cleanup EXIT
bench_ensure_packages nginx:nginx taskset:util-linux
command -v nginx >/dev/null 2>&1 || bench_die "nginx is not installed"
bench_ensure_venv
cd "$REPO_ROOT"
# SIGTERM makes the script stop its children and remove its temp dir.
exec timeout -k 10 330 "$PY" "$BENCH_DIR/cache_hit_rss.py" "$@"
