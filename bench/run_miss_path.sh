#!/usr/bin/env bash
# The miss path of the disk cache for responses that are never stored:
# wrk -> cachingproxy -> bench/nostore_origin.py (1 KiB, Cache-Control:
# no-store), cachingproxy with its disk cache against cachingproxy with
# --no-cache, in interleaved rounds.
#
# Usage: bench/run_miss_path.sh
# Environment:
#   ROUNDS=3           rounds; each runs both proxies, alternating which is first
#   DURATION=8         seconds of measured load per proxy and round
#   WARMUP=2           seconds of unmeasured warm-up load per proxy and round
#   CONNECTIONS=50     wrk connections (wrk always runs with 1 thread)
#   CACHE_CONTROL=no-store   the origin's Cache-Control (e.g. private)
#   BENCH_NO_INSTALL=1 never call apt-get
#   BENCH_KEEP_TMP=1   keep the temp dir (logs, raw wrk output)
#   BENCH_NO_PIN=1     do not pin processes to CPUs
#
# Both run with --compress off and --no-access-log; the disk cache is a
# fresh folder in the temp dir. CPU time per request is the proxy's
# utime + stime (/proc/PID/stat) over the measured run divided by the
# requests wrk completed. Medians over the rounds; read the ratios, not
# the absolute numbers: the machine is shared and noisy.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-8}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-50}"
CACHE_CONTROL="${CACHE_CONTROL:-no-store}"

bench_positive_ints ROUNDS DURATION WARMUP CONNECTIONS

bench_traps

bench_ensure_packages wrk:wrk curl:curl taskset:util-linux
command -v wrk >/dev/null 2>&1 || bench_die "wrk is not installed"
command -v curl >/dev/null 2>&1 || bench_die "curl is not installed"
bench_ensure_venv
cd "$REPO_ROOT"
bench_cachingproxy_available || bench_die "twistd cachingproxy --help fails"

bench_pin_setup
bench_mktemp
T="$BENCH_TMP"
RESULTS="$T/results.txt"
: >"$RESULTS"
TICK="$(getconf CLK_TCK)"

ORIGIN_PORT="$(bench_free_port)"
bench_start "$T/origin.log" "${PIN_LOAD[@]}" "$PY" "$BENCH_DIR/nostore_origin.py" \
    --port "$ORIGIN_PORT" --cache-control "$CACHE_CONTROL"
ORIGIN_PID="$BENCH_LAST_PID"
bench_wait_http "http://127.0.0.1:$ORIGIN_PORT/1k.bin" "$ORIGIN_PID" "$T/origin.log" 30 \
    || bench_die "the origin did not start"
ORIGIN_URL="http://127.0.0.1:$ORIGIN_PORT"

# measure NAME ROUND [OPTIONS...]: one proxy, one round.
measure() {
    local name="$1" round="$2"
    shift 2
    local port log="$T/$name-$round.log" out="$T/wrk-$name-$round.txt" url pid
    port="$(bench_free_port)"
    url="http://127.0.0.1:$port/1k.bin"
    bench_cachingproxy_cmd "$port" "$ORIGIN_URL"
    bench_start "$log" "${PIN_PROXY[@]}" "${BENCH_CP_CMD[@]}" --compress off "$@"
    pid="$BENCH_LAST_PID"
    bench_wait_http "$url" "$pid" "$log" 30 || bench_die "$name did not become ready"
    curl -s -m 5 -D "$T/head-$name.txt" -o /dev/null "$url"
    timeout $((WARMUP + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$url" \
        >/dev/null 2>&1 || true
    local before after
    before="$(bench_cpu_ticks "$pid")"
    timeout $((DURATION + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" \
        "$url" >"$out" 2>&1 || { cat "$out" >&2; bench_die "wrk failed"; }
    after="$(bench_cpu_ticks "$pid")"
    bench_stop "$pid"
    local rps total errors
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    total="$(awk '/requests in/ {print $1}' "$out")"
    errors="$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$out")"
    [ "$errors" = 0 ] || bench_die "$name had $errors errors in round $round (see $out)"
    local us
    us="$(awk -v t="$((after - before))" -v n="$total" -v hz="$TICK" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')"
    printf '%s %s %s %s\n' "$name" "$round" "$rps" "$us" >>"$RESULTS"
    bench_log "round $round $name: $rps req/s, $us CPU us/request"
}

for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then
        measure no-cache "$round" --no-cache
        measure disk "$round" --cache-dir "$T/cache-$round"
    else
        measure disk "$round" --cache-dir "$T/cache-$round"
        measure no-cache "$round" --no-cache
    fi
done

echo
echo "Miss path: GET 1 KiB, origin answers Cache-Control: $CACHE_CONTROL"
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s (+${WARMUP}s warm-up), $ROUNDS interleaved rounds; ${PIN_NOTE/nginx origin/origin}"
echo "$("$PY" -V 2>&1), $NCPU CPUs, $(uname -r)"
echo
awk '
function median(a, n,    i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ rps[$1, $2] = $3; us[$1, $2] = $4; if ($2 > rounds) rounds = $2 }
END {
    printf "%-9s %12s %12s\n", "", "req/s", "CPU us/req"
    for (r = 1; r <= rounds; r++) {
        ratio[r] = rps["disk", r] / rps["no-cache", r]
        cratio[r] = us["disk", r] / us["no-cache", r]
        a[r] = rps["no-cache", r]; b[r] = rps["disk", r]; c[r] = us["no-cache", r]; d[r] = us["disk", r]
        printf "round %-3d no-cache %10.0f %10.1f   disk %10.0f %10.1f   disk/no-cache %.3f (CPU %.3f)\n", r, a[r], c[r], b[r], d[r], ratio[r], cratio[r]
    }
    printf "\nmedian    no-cache %10.0f req/s %7.1f us/req\n", median(a, rounds), median(c, rounds)
    printf "median    disk     %10.0f req/s %7.1f us/req\n", median(b, rounds), median(d, rounds)
    printf "median of the round ratios: throughput disk/no-cache %.3f, CPU per request disk/no-cache %.3f\n", median(ratio, rounds), median(cratio, rounds)
}' "$RESULTS"
echo
echo "Response head through the disk cache:"
sed 's/^/    /' "$T/head-disk.txt"
