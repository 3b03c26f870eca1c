#!/usr/bin/env bash
# Soak: N requests (default 1,000,000) of a 70% hit / 20% miss / 10% aborted
# client mix against one cachingproxy process (reverse mode, disk cache
# --cache-size 256M + memory tier, --no-access-log) in front of nginx; the
# proxy's RSS is sampled every second and compared after warm-up (the first
# 10% of the requests) and at the end.  All arguments go to bench/soak.py:
#
#   bench/run_soak.sh                             # 1,000,000 requests
#   bench/run_soak.sh --requests 200000           # a shorter check
#   bench/run_soak.sh --origin python             # no nginx
#   bench/run_soak.sh --fail-over-ratio           # exit 1 if end/warm-up RSS > 1.10
#
# Environment: BENCH_NO_INSTALL=1 never calls apt-get.
# The run is bounded by --time-limit (1800 s); `timeout` below is only a
# backstop.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

trap bench_cleanup EXIT
bench_ensure_packages wrk:wrk nginx:nginx taskset:util-linux
command -v wrk >/dev/null 2>&1 || bench_die "wrk is not installed"
bench_ensure_venv
cd "$REPO_ROOT"
if ! bench_cachingproxy_available; then
    echo "cachingproxy: not available"
    exit 0
fi
limit=1800
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --time-limit=*) limit="${args[$i]#--time-limit=}" ;;
        --time-limit) limit="${args[$((i + 1))]:-1800}" ;;
    esac
done
limit="${limit%.*}"
# SIGTERM makes the script stop its children and remove its temp dir.
exec timeout -k 10 $((limit + 240)) "$PY" "$BENCH_DIR/soak.py" "$@"
