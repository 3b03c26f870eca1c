#!/usr/bin/env bash
# Instructions per request of the in-memory loops of bench/instructions.py,
# counted by valgrind (callgrind): each case runs with 2000 and with 6000
# requests, and the difference is divided by 4000, so start-up and warm-up
# cancel out. Unlike time, the count hardly moves from run to run on a
# shared machine (within about 1%; PYTHONHASHSEED is fixed), so it shows
# what a change to the per-request code did.
#
# Usage: bench/run_instructions.sh [CASE...]   (default: every case)
# Environment: BENCH_NO_INSTALL=1 never calls apt-get (for valgrind).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CASES=("$@")
[ "${#CASES[@]}" -gt 0 ] || CASES=(hit hit-log hit-browser hit-cli hit-cli-log hit-cli-json hit-cli-twistd hit-forward floor pass pass-nocache)
command -v valgrind >/dev/null 2>&1 || bench_ensure_packages valgrind:valgrind
bench_ensure_venv

count() {
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$PY" "$BENCH_DIR/instructions.py" "$1" "$2" 2>&1 >/dev/null \
        | awk '/refs:/ {gsub(",", "", $NF); print $NF}'
}

printf '%-14s %s\n' case "instructions per request"
for c in "${CASES[@]}"; do
    a="$(count "$c" 2000)"
    b="$(count "$c" 6000)"
    [ -n "$a" ] && [ -n "$b" ] || bench_die "valgrind gave no count for $c"
    printf '%-14s %d\n' "$c" $(( (b - a) / 4000 ))
done
