#!/usr/bin/env bash
# Reloads under keep-alive load: what a client sees while the proxy is
# reloaded again and again.
#
# cachingproxy runs as users run it behind a load balancer: reverse mode,
# --workers 2, in front of a local origin (python3 -m http.server serving a
# 1 KiB file, answered from the cache after the first request). A load
# generator keeps 20 keep-alive connections busy while the parent gets
# SIGHUP RELOADS times (default 10), each after the previous reload has
# completed ("reload complete" in its log). Run once with wrk, once with
# ab -k. What is printed is what a client lost: wrk's socket errors and
# non-2xx answers, ab's failed requests; all must be 0.
#
# usage: bench/run_reload.sh [RELOADS]
# Installs wrk and apache2-utils from Debian when they are missing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

RELOADS="${1:-10}"
bench_ensure_packages wrk:wrk ab:apache2-utils curl:curl
bench_ensure_venv
bench_mktemp
trap bench_cleanup EXIT

head -c 1024 /dev/urandom | base64 -w 0 | head -c 1024 > "$BENCH_TMP/file.txt"
# a day old: heuristically fresh for hours, so the load is cache hits
touch -d '1 day ago' "$BENCH_TMP/file.txt"
originPort="$(bench_free_port)"
bench_start "$BENCH_TMP/origin.log" python3 -m http.server "$originPort" \
    --bind 127.0.0.1 --directory "$BENCH_TMP"
origin=$BENCH_LAST_PID
bench_wait_http "http://127.0.0.1:$originPort/file.txt" "$origin" "$BENCH_TMP/origin.log"

run() {
    local tool="$1" port log out
    port="$(bench_free_port)"
    log="$BENCH_TMP/proxy-$tool.log"
    out="$BENCH_TMP/load-$tool.txt"
    bench_cachingproxy_cmd "$port" "http://127.0.0.1:$originPort"
    bench_start "$log" "${BENCH_CP_CMD[@]}" --workers 2 --cache-dir "$BENCH_TMP/cache-$tool"
    local proxy=$BENCH_LAST_PID
    local url="http://127.0.0.1:$port/file.txt"
    bench_wait_http "$url" "$proxy" "$log" 60
    if [ "$tool" = wrk ]; then
        # long enough for every reload; wrk is stopped once they are done
        wrk -t2 -c20 -d600s --latency "$url" > "$out" 2>&1 &
    else
        ab -k -c20 -n 10000000 "$url" > "$out" 2>&1 &
    fi
    local load=$!
    sleep 1
    local i
    for i in $(seq "$RELOADS"); do
        kill -HUP "$proxy"
        for _ in $(seq 600); do
            [ "$(grep -c 'reload complete' "$log")" -ge "$i" ] && break
            sleep 0.1
        done
        sleep 0.3
    done
    local completed
    completed="$(grep -c 'reload complete' "$log" || true)"
    # wrk and ab print their totals on SIGINT
    kill -INT "$load"
    wait "$load" || true
    bench_stop "$proxy"
    if [ "$tool" = wrk ]; then
        local requests errors non2xx
        requests="$(awk '/requests in/ {print $1}' "$out")"
        errors="$(awk '/Socket errors/ {print $0}' "$out")"
        non2xx="$(awk '/Non-2xx/ {print $NF}' "$out")"
        printf 'wrk -c20:   %s reloads completed, %s requests, socket errors: %s, non-2xx: %s\n' \
            "$completed" "${requests:-?}" "${errors:-none}" "${non2xx:-0}"
    else
        local complete failed non2xx
        complete="$(awk '/^Complete requests/ {print $3}' "$out")"
        failed="$(awk '/^Failed requests/ {print $3}' "$out")"
        non2xx="$(awk '/^Non-2xx/ {print $3}' "$out")"
        printf 'ab -k -c20: %s reloads completed, %s requests, failed: %s, non-2xx: %s\n' \
            "$completed" "${complete:-?}" "${failed:-?}" "${non2xx:-0}"
    fi
}

run wrk
run ab
