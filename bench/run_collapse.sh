#!/usr/bin/env bash
# Collapsed forwarding across worker processes: origin requests per burst
# of N concurrent misses for one URL, through twistd cachingproxy --workers
# 2 with a disk cache, for this checkout and (optionally) another one.
#
# Usage: bench/run_collapse.sh [OTHER_CHECKOUT]
#   e.g. git worktree add /tmp/before f01f575 && bench/run_collapse.sh /tmp/before
# Environment:
#   BURSTS=20 CLIENTS=40 DELAY=0.2 WORKERS=2 KINDS="slow nostore"
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
this="$(cd "$here/.." && pwd)"
PY="${PY:-$this/.venv/bin/python}"
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
other="${1:-}"
for kind in ${KINDS:-slow nostore}; do
    for checkout in ${other:+"$other"} "$this"; do
        label=after
        [ "$checkout" = "$this" ] || label=before
        "$PY" "$here/collapse_burst.py" "$checkout" --label "$label" \
            --workers "${WORKERS:-2}" --bursts "${BURSTS:-20}" --clients "${CLIENTS:-40}" \
            --delay "${DELAY:-0.2}" --kind "$kind"
    done
done
