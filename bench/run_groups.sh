#!/usr/bin/env bash
# Routes and origin groups against a single origin: wrk -> cachingproxy ->
# bench/nostore_origin.py (1 KiB), with one --upstream (no sites machinery)
# against three --upstream (one round-robin group with health checks), for
# cache hits (--cache-memory, the origin answering Cache-Control:
# max-age=3600) and for pass-through (--no-cache), in interleaved rounds.
#
# Usage: bench/run_groups.sh
# Environment:
#   ROUNDS=3           rounds; each runs the four cases, alternating the order
#   DURATION=8         seconds of measured load per case and round
#   WARMUP=2           seconds of unmeasured warm-up load per case and round
#   CONNECTIONS=50     wrk connections (wrk always runs with 1 thread)
#   BENCH_NO_INSTALL=1 never call apt-get
#   BENCH_KEEP_TMP=1   keep the temp dir (logs, raw wrk output)
#   BENCH_NO_PIN=1     do not pin processes to CPUs
#   BENCH_VENV=DIR     the virtualenv to run (default: .venv of the checkout)
#
# Every proxy runs with --compress off, --no-access-log and --cache-dir
# none. CPU time per request is the proxy's utime + stime
# (/proc/PID/stat) over the measured run divided by the requests wrk
# completed. Medians over the rounds, and the median of the per-round
# ratios group/single; read the ratios, not the absolute numbers: the
# machine is shared and noisy.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-8}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-50}"

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

# Three origins cacheable for an hour (pass-through runs with --no-cache).
ORIGINS=()
for i in 1 2 3; do
    port="$(bench_free_port)"
    bench_start "$T/origin-$i.log" "${PIN_LOAD[@]}" "$PY" "$BENCH_DIR/nostore_origin.py" \
        --port "$port" --cache-control "max-age=3600"
    bench_wait_http "http://127.0.0.1:$port/1k.bin" "$BENCH_LAST_PID" "$T/origin-$i.log" 30 \
        || bench_die "origin $i did not start"
    ORIGINS+=("http://127.0.0.1:$port")
done

# measure MODE KIND ROUND: one proxy (single or group), one kind of load
# (hit or pass), one round.
measure() {
    local mode="$1" kind="$2" round="$3"
    local name="$mode-$kind" port log out url pid
    port="$(bench_free_port)"
    log="$T/$name-$round.log"
    out="$T/wrk-$name-$round.txt"
    url="http://127.0.0.1:$port/1k.bin"
    bench_cachingproxy_cmd "$port" "${ORIGINS[0]}"
    local extra=(--compress off --cache-dir none)
    if [ "$mode" = group ]; then
        extra+=(--upstream "${ORIGINS[1]}" --upstream "${ORIGINS[2]}")
    fi
    if [ "$kind" = hit ]; then
        extra+=(--cache-memory 64M)
    else
        extra+=(--no-cache)
    fi
    bench_start "$log" "${PIN_PROXY[@]}" "${BENCH_CP_CMD[@]}" "${extra[@]}"
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
        order=(single group)
    else
        order=(group single)
    fi
    for kind in hit pass; do
        for mode in "${order[@]}"; do
            measure "$mode" "$kind" "$round"
        done
    done
done

echo
echo "One origin (--upstream once) against a group of three (--upstream three times), GET 1 KiB"
echo "hit: --cache-memory 64M, the origin says max-age=3600; pass: --no-cache"
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s (+${WARMUP}s warm-up), $ROUNDS interleaved rounds; ${PIN_NOTE/nginx origin/origins}"
echo "$("$PY" -V 2>&1), $NCPU CPUs, $(uname -r)"
echo
awk '
function median(a, n,    i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ rps[$1, $2] = $3; us[$1, $2] = $4; if ($2 > rounds) rounds = $2 }
END {
    split("hit pass", kinds, " ")
    for (k = 1; k <= 2; k++) {
        kind = kinds[k]
        printf "%s\n", kind
        for (r = 1; r <= rounds; r++) {
            a[r] = rps["single-" kind, r]; b[r] = rps["group-" kind, r]
            c[r] = us["single-" kind, r]; d[r] = us["group-" kind, r]
            ratio[r] = b[r] / a[r]; cratio[r] = d[r] / c[r]
            printf "  round %-3d single %8.0f req/s %7.1f us/req   group %8.0f req/s %7.1f us/req   group/single %.3f (CPU %.3f)\n", r, a[r], c[r], b[r], d[r], ratio[r], cratio[r]
        }
        printf "  median    single %8.0f req/s %7.1f us/req   group %8.0f req/s %7.1f us/req\n", median(a, rounds), median(c, rounds), median(b, rounds), median(d, rounds)
        printf "  median of the round ratios group/single: throughput %.3f, CPU per request %.3f\n\n", median(ratio, rounds), median(cratio, rounds)
    }
}' "$RESULTS"
echo "Response heads through the group:"
sed 's/^/    /' "$T/head-group-hit.txt"
