#!/usr/bin/env bash
# This checkout's cachingproxy against another checkout's (an older commit,
# say), in interleaved rounds, on the paths every request takes:
#   hit   1 KiB fresh in the cache (disk store, the default), access log
#         and compression off: the engine;
#   pass  1 KiB through --no-cache, access log and compression off;
#   defaults-hit  the same hit with every default on (access log to the
#         twistd log, compression negotiated), as users run it.
# wrk -> cachingproxy -> bench/nostore_origin.py.
#
# Usage: bench/run_checkouts.sh OTHER_CHECKOUT
#   e.g. git worktree add /tmp/before <commit> && bench/run_checkouts.sh /tmp/before
# Environment:
#   ROUNDS=3           rounds; each runs both checkouts, alternating which is first
#   DURATION=8         seconds of measured load per run
#   WARMUP=2           seconds of unmeasured warm-up load per run
#   CONNECTIONS=50     wrk connections (wrk always runs with 1 thread)
#   MODES="hit pass defaults-hit"
#   BENCH_NO_INSTALL=1 never call apt-get
#   BENCH_KEEP_TMP=1   keep the temp dir
#   BENCH_NO_PIN=1     do not pin processes to CPUs
#
# CPU time per request is the proxy's utime + stime over the measured run
# divided by the requests wrk completed. Medians over the rounds of the
# per-round ratios this/other; read the ratios, not the absolute numbers.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OTHER="${1:-}"
[ -n "$OTHER" ] && [ -f "$OTHER/twisted/plugins/cachingproxy_plugin.py" ] \
    || bench_die "usage: bench/run_checkouts.sh OTHER_CHECKOUT (a cachingproxy checkout)"
OTHER="$(cd "$OTHER" && pwd)"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-8}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-50}"
MODES="${MODES:-hit pass defaults-hit}"

bench_positive_ints ROUNDS DURATION WARMUP CONNECTIONS

bench_traps

bench_ensure_packages wrk:wrk curl:curl taskset:util-linux
command -v wrk >/dev/null 2>&1 || bench_die "wrk is not installed"
bench_ensure_venv
cd "$REPO_ROOT"
bench_pin_setup
bench_mktemp
T="$BENCH_TMP"
RESULTS="$T/results.txt"
: >"$RESULTS"
TICK="$(getconf CLK_TCK)"

# start_origin NAME CACHE_CONTROL: sets ORIGIN_URL (not in a subshell, so
# that bench_cleanup knows the process).
start_origin() {
    local port
    port="$(bench_free_port)"
    bench_start "$T/origin-$1.log" "${PIN_LOAD[@]}" "$PY" "$BENCH_DIR/nostore_origin.py" \
        --port "$port" --cache-control "$2"
    bench_wait_http "http://127.0.0.1:$port/1k.bin" "$BENCH_LAST_PID" "$T/origin-$1.log" 30 \
        || bench_die "the origin did not start"
    ORIGIN_URL="http://127.0.0.1:$port"
}
start_origin store max-age=86400
STORE_ORIGIN="$ORIGIN_URL"
start_origin nostore no-store
NOSTORE_ORIGIN="$ORIGIN_URL"

# measure CHECKOUT_NAME ROOT MODE ROUND
measure() {
    local name="$1" root="$2" mode="$3" round="$4"
    local port log="$T/$name-$mode-$round.log" out="$T/wrk-$name-$mode-$round.txt" url pid
    local origin="$STORE_ORIGIN" args=()
    case "$mode" in
        hit) args=(--no-access-log --compress off --cache-dir "$T/cache-$name-$mode-$round") ;;
        pass) origin="$NOSTORE_ORIGIN"; args=(--no-access-log --compress off --no-cache) ;;
        defaults-hit) args=(--cache-dir "$T/cache-$name-$mode-$round") ;;
        *) bench_die "unknown mode $mode" ;;
    esac
    port="$(bench_free_port)"
    url="http://127.0.0.1:$port/1k.bin"
    bench_start "$log" "${PIN_PROXY[@]}" env PYTHONPATH="$root" "$VENV/bin/twistd" -n --pidfile= \
        --logfile "$T/twistd-$name-$mode-$round.log" cachingproxy \
        --port "tcp:$port:interface=127.0.0.1" --upstream "$origin" "${args[@]}"
    pid="$BENCH_LAST_PID"
    bench_wait_http "$url" "$pid" "$log" 30 || bench_die "$name ($mode) did not become ready"
    timeout $((WARMUP + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$url" \
        >/dev/null 2>&1 || true
    local before after
    before="$(bench_cpu_ticks "$pid")"
    timeout $((DURATION + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" \
        "$url" >"$out" 2>&1 || { cat "$out" >&2; bench_die "wrk failed"; }
    after="$(bench_cpu_ticks "$pid")"
    bench_stop "$pid"
    local rps total errors us
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    total="$(awk '/requests in/ {print $1}' "$out")"
    errors="$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$out")"
    [ "$errors" = 0 ] || bench_die "$name ($mode) had $errors errors in round $round (see $out)"
    us="$(awk -v t="$((after - before))" -v n="$total" -v hz="$TICK" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')"
    printf '%s %s %s %s %s\n' "$mode" "$name" "$round" "$rps" "$us" >>"$RESULTS"
    bench_log "round $round $mode $name: $rps req/s, $us CPU us/request"
}

for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        if [ $((round % 2)) = 1 ]; then
            measure this "$REPO_ROOT" "$mode" "$round"
            measure other "$OTHER" "$mode" "$round"
        else
            measure other "$OTHER" "$mode" "$round"
            measure this "$REPO_ROOT" "$mode" "$round"
        fi
    done
done

echo
echo "This checkout ($(git -C "$REPO_ROOT" rev-parse --short HEAD)) against $OTHER ($(git -C "$OTHER" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "GET 1 KiB, wrk -t1 -c$CONNECTIONS -d${DURATION}s (+${WARMUP}s warm-up), $ROUNDS interleaved rounds; ${PIN_NOTE/nginx origin/origin}"
echo "$("$PY" -V 2>&1), $NCPU CPUs, $(uname -r)"
echo
awk '
function median(a, n,    i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ rps[$1, $2, $3] = $4; us[$1, $2, $3] = $5; if ($3 > rounds) rounds = $3; if (!($1 in seen)) { seen[$1] = 1; order[++m] = $1 } }
END {
    printf "%-13s %12s %12s %12s %12s %14s %14s\n", "mode", "this req/s", "other req/s", "this us/req", "other us/req", "req/s this/other", "CPU this/other"
    for (k = 1; k <= m; k++) {
        mode = order[k]
        for (r = 1; r <= rounds; r++) {
            a[r] = rps[mode, "this", r]; b[r] = rps[mode, "other", r]
            c[r] = us[mode, "this", r]; d[r] = us[mode, "other", r]
            q[r] = a[r] / b[r]; p[r] = c[r] / d[r]
        }
        printf "%-13s %12.0f %12.0f %12.1f %12.1f %14.3f %14.3f\n", mode, median(a, rounds), median(b, rounds), median(c, rounds), median(d, rounds), median(q, rounds), median(p, rounds)
    }
}' "$RESULTS"
