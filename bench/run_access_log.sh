#!/usr/bin/env bash
# What the access log costs on cache hits: wrk -> cachingproxy (reverse mode)
# -> python3 -m http.server, a 1 KiB file last modified a day ago (so the
# proxy holds it heuristically fresh and every measured request is a hit).
# Each mode runs once per round, the modes interleaved, ROUNDS rounds; the
# report gives each mode's median req/s and median server CPU microseconds
# per request (utime + stime from /proc/PID/stat across the measured run,
# divided by wrk's request count).
#
# Usage: bench/run_access_log.sh
# Environment:
#   DURATION=5         seconds of measured load per run
#   WARMUP=2           seconds of unmeasured warm-up load per run
#   ROUNDS=3           interleaved rounds
#   CONNECTIONS=50     wrk connections (1 thread)
#   MODES="none file stdout file-json stdout-json"
#                      none: --no-access-log; file: --access-log FILE;
#                      stdout: the default (the twistd log, stdout under -n);
#                      *-json: the same with --access-log-format json
#   BASELINE=DIR       also run every mode from the checkout DIR (e.g. an
#                      export of an older commit), as rows MODE@base,
#                      interleaved with this checkout's
#   PROFILE=1          run each mode once under twistd's cProfile instead,
#                      and print the top entries by internal time
#   BENCH_NO_PIN=1     do not pin (proxy on CPU 0, wrk and origin on CPU 1)
#   BENCH_KEEP_TMP=1   keep the temp dir
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-2}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-50}"
MODES="${MODES:-none file stdout file-json stdout-json}"
PROFILE="${PROFILE:-0}"

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
CLK_TCK="$(getconf CLK_TCK)"

# --- origin: a 1 KiB file modified a day ago: heuristically fresh -----------
mkdir -p "$T/www"
head -c 1024 /dev/urandom >"$T/www/1k.bin"
touch -d '1 day ago' "$T/www/1k.bin"
ORIGIN_PORT="$(bench_free_port)"
bench_start "$T/origin.log" "${PIN_LOAD[@]}" python3 -m http.server --bind 127.0.0.1 \
    --directory "$T/www" "$ORIGIN_PORT"
bench_wait_http "http://127.0.0.1:$ORIGIN_PORT/1k.bin" "$BENCH_LAST_PID" "$T/origin.log" 30 \
    || bench_die "origin did not start"

# mode_args MODE: the access log options for MODE, in MODE_ARGS.
mode_args() {
    case "$1" in
        none) MODE_ARGS=(--no-access-log) ;;
        file) MODE_ARGS=(--access-log "$T/access-$2.log") ;;
        stdout) MODE_ARGS=(--access-log -) ;;
        file-json) MODE_ARGS=(--access-log "$T/access-$2.log" --access-log-format json) ;;
        stdout-json) MODE_ARGS=(--access-log - --access-log-format json) ;;
        *) bench_die "unknown mode $1 (use none file stdout file-json stdout-json)" ;;
    esac
}

# run MODE SLUG: start the proxy, make the object a hit, warm up, measure.
run() {
    local mode="$1" slug="$2" port log="$T/$2.out" pid url out before after total rps
    local root="$REPO_ROOT"
    case "$mode" in *@base) root="$BASELINE" ;; esac
    mode_args "${mode%@base}" "$slug"
    port="$(bench_free_port)"
    local profile=()
    [ "$PROFILE" = 1 ] && profile=(--profile "$T/$slug.prof" --profiler cprofile --savestats)
    # As bench_cachingproxy_cmd, without its --no-access-log (which would
    # win over --access-log).
    local cmd=(env PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$VENV/bin/twistd" -n
        --pidfile= ${profile[@]+"${profile[@]}"} cachingproxy
        --port "tcp:$port:interface=127.0.0.1" --upstream "http://127.0.0.1:$ORIGIN_PORT")
    # From the checkout's directory, where twistd finds its plugin.
    bench_start "$log" "${PIN_PROXY[@]}" env -C "$root" "${cmd[@]}" --cache-memory 64M \
        "${MODE_ARGS[@]}"
    pid="$BENCH_LAST_PID"
    url="http://127.0.0.1:$port/1k.bin"
    bench_wait_http "$url" "$pid" "$log" 30 || bench_die "$slug: proxy did not start"
    curl -s -o /dev/null "$url"
    curl -s -D "$T/$slug.head" -o /dev/null "$url"
    grep -qiE '^(x-cache: *hit|cache-status:.*hit)' "$T/$slug.head" \
        || bench_die "$slug: not a cache hit: $(tr -d '\r' <"$T/$slug.head" | paste -sd ';')"
    "${PIN_LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >/dev/null 2>&1 || true
    out="$T/$slug.wrk"
    before="$(bench_cpu_ticks "$pid")"
    "${PIN_LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "$url" >"$out" 2>&1 \
        || { cat "$out" >&2; bench_die "$slug: wrk failed"; }
    after="$(bench_cpu_ticks "$pid")"
    total="$(awk '/requests in/ {print $1}' "$out")"
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    grep -q 'Non-2xx' "$out" && bench_die "$slug: non-2xx responses: $(cat "$out")"
    bench_stop "$pid"
    local us
    us="$(awk -v t="$((after - before))" -v hz="$CLK_TCK" -v n="$total" \
        'BEGIN {printf "%.1f", t / hz * 1e6 / n}')"
    printf '%s %s %s\n' "$mode" "$rps" "$us" >>"$RESULTS"
    bench_log "$slug: $rps req/s, $us CPU us/request ($total requests)"
    if [ "$PROFILE" = 1 ]; then
        echo "== $mode: top 15 by internal time"
        "$PY" -c 'import pstats, sys
s = pstats.Stats(sys.argv[1])
s.sort_stats("tottime").print_stats(15)
print("-- access log entries by cumulative time")
s.sort_stats("cumulative").print_stats("accesslog|logger|accessLine|_printable|strftime|json", 12)' "$T/$slug.prof" \
            | grep -v '^ *$' | grep -vE '^(   Ordered|   List reduced|.*function calls)'
    fi
}

if [ -n "${BASELINE:-}" ]; then
    [ -d "$BASELINE/cachingproxy" ] || bench_die "BASELINE=$BASELINE has no cachingproxy package"
    BASELINE="$(cd "$BASELINE" && pwd)"
    all=""
    for mode in $MODES; do all="$all $mode@base $mode"; done
    MODES="${all# }"
fi
rounds="$ROUNDS"
[ "$PROFILE" = 1 ] && rounds=1
for round in $(seq "$rounds"); do
    for mode in $MODES; do
        run "$mode" "$mode-$round"
    done
done

echo
echo "Access log cost on 1 KiB cache hits: wrk -t1 -c$CONNECTIONS -d${DURATION}s (+${WARMUP}s warm-up),"
echo "$rounds interleaved round(s); $PIN_NOTE; $("$PY" -V 2>&1), $NCPU CPUs"
[ "$PROFILE" = 1 ] && echo "(under cProfile: the figures are not comparable with unprofiled runs)"
echo
awk -v modes="$MODES" '
function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ rps[$1] = rps[$1] " " $2; us[$1] = us[$1] " " $3 }
END {
    printf "%-18s %9s %11s %8s  %s\n", "mode", "req/s", "CPU us/req", "vs none", "runs (req/s | us/req)"
    n = split(modes, m, " ")
    for (i = 1; i <= n; i++) {
        k = m[i]
        none = (k ~ /@base$/) ? "none@base" : "none"
        base = (none in us) ? median(us[none]) : 0
        ratio = base ? sprintf("%.2fx", median(us[k]) / base) : "n/a"
        printf "%-18s %9.0f %11.1f %8s %s |%s\n", k, median(rps[k]), median(us[k]), ratio, rps[k], us[k]
    }
}' "$RESULTS"
