#!/usr/bin/env bash
# Pass-through (no caching) throughput: wrk -> proxy -> nginx origin (1 KiB file).
#
# Usage: bench/run_passthrough.sh
# Environment:
#   DURATION=10        seconds of measured load per proxy
#   WARMUP=2           seconds of unmeasured warm-up load per proxy
#   CONNECTIONS=50     wrk connections (wrk always runs with 1 thread)
#   PROXIES="origin cachingproxy cachingproxy-cache twisted squid"   rows, in order
#   BENCH_NO_INSTALL=1 never call apt-get
#   BENCH_KEEP_TMP=1   keep the temp dir (configs, logs, raw wrk output)
#   BENCH_NO_PIN=1     do not pin processes to CPUs (for --workers runs)
#   CACHINGPROXY_ARGS="" extra cachingproxy options for its rows
#
# CPU layout (needs >= 2 cores): the proxy under test runs alone on CPU 0;
# wrk AND the nginx origin (1 worker) share CPU 1.  Read the ratios, not the
# absolute numbers: the machine is shared and noisy.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-50}"
PROXIES="${PROXIES:-origin cachingproxy cachingproxy-cache twisted squid}"

bench_positive_ints DURATION WARMUP CONNECTIONS

bench_traps

# --- prerequisites ---------------------------------------------------------
bench_ensure_packages wrk:wrk nginx:nginx squid:squid curl:curl taskset:util-linux
command -v wrk >/dev/null 2>&1 || bench_die "wrk is not installed"
command -v nginx >/dev/null 2>&1 || bench_die "nginx is not installed"
command -v curl >/dev/null 2>&1 || bench_die "curl is not installed"
bench_ensure_venv
cd "$REPO_ROOT"

bench_pin_setup

bench_mktemp
T="$BENCH_TMP"
RESULTS="$T/results.txt"
: >"$RESULTS"

# --- origin: nginx, 1 worker, 1 KiB static file ------------------------------
mkdir -p "$T/www" "$T/nginx"
head -c 1024 /dev/urandom >"$T/www/1k.bin"
ORIGIN_PORT="$(bench_free_port)"
cat >"$T/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $T/nginx/nginx.pid;
error_log $T/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path $T/nginx/client_body;
    proxy_temp_path $T/nginx/proxy;
    fastcgi_temp_path $T/nginx/fastcgi;
    uwsgi_temp_path $T/nginx/uwsgi;
    scgi_temp_path $T/nginx/scgi;
    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        root $T/www;
        # Pass-through benchmark: forbid any cache from storing the response.
        add_header Cache-Control "no-store" always;
    }
}
EOF
nginx -q -t -p "$T/nginx" -c "$T/nginx/nginx.conf" >"$T/nginx/test.log" 2>&1 \
    || { cat "$T/nginx/test.log" >&2; bench_die "nginx config test failed"; }
bench_start "$T/nginx/stdout.log" "${PIN_LOAD[@]}" nginx -p "$T/nginx" -c "$T/nginx/nginx.conf"
ORIGIN_PID="$BENCH_LAST_PID"
bench_wait_http "http://127.0.0.1:$ORIGIN_PORT/1k.bin" "$ORIGIN_PID" "$T/nginx/error.log" 30 \
    || bench_die "nginx origin did not start"
ORIGIN_URL="http://127.0.0.1:$ORIGIN_PORT"

# --- measurement -------------------------------------------------------------
# record NAME RPS NON2XX SOCKERR P50 P99 NOTE
record() { printf '%s|%s|%s|%s|%s|%s|%s\n' "$@" >>"$RESULTS"; }

# measure NAME PORT PID LOGFILE: wait for the proxy, check one response,
# warm up, run wrk, record the result.
measure() {
    local name="$1" port="$2" pid="$3" logfile="$4"
    local url="http://127.0.0.1:$port/1k.bin" out="$T/wrk-$name.txt" got
    if ! bench_wait_http "$url" "$pid" "$logfile" 30; then
        record "$name" - - - - - "did not become ready (see log above)"
        return 0
    fi
    # Sanity: the proxy must return the origin's exact bytes.
    if ! curl -s -m 5 -o "$T/check-$name.bin" "$url" || ! cmp -s "$T/check-$name.bin" "$T/www/1k.bin"; then
        got="$(stat -c %s "$T/check-$name.bin" 2>/dev/null || echo 0)"
        record "$name" - - - - - "wrong body through proxy ($got bytes)"
        return 0
    fi
    bench_log "$name: warm-up ${WARMUP}s"
    timeout $((WARMUP + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >/dev/null 2>&1 || true
    bench_log "$name: measuring ${DURATION}s (wrk -t1 -c$CONNECTIONS)"
    if ! timeout $((DURATION + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$out" 2>&1; then
        cat "$out" >&2 || true
        record "$name" - - - - - "wrk failed"
        return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        record "$name" - - - - - "process died during the run"
        return 0
    fi
    local rps non2xx sockerr p50 p99 total
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    non2xx="$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")"
    sockerr="$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out")"
    p50="$(awk '$1 == "50%" {print $2}' "$out")"
    p99="$(awk '$1 == "99%" {print $2}' "$out")"
    total="$(awk '/requests in/ {print $1}' "$out")"
    local note=""
    if [ "${non2xx:-0}" != 0 ] || [ "${sockerr:-0}" != 0 ]; then
        note="ERRORS: req/s is not trustworthy"
    fi
    if [ "${total:-0}" = 0 ]; then
        note="no requests completed"
    fi
    record "$name" "${rps:--}" "${non2xx:-0}" "${sockerr:-0}" "${p50:--}" "${p99:--}" "$note"
    bench_log "$name: ${rps:-?} req/s, non-2xx=${non2xx:-0}, socket errors=${sockerr:-0}"
}

run_origin() {
    # Reference row: wrk straight at nginx (both on CPU 1, nothing on CPU 0).
    measure "origin-direct" "$ORIGIN_PORT" "$ORIGIN_PID" "$T/nginx/error.log"
}

# run_cachingproxy NAME [EXTRA OPTIONS...]: "cachingproxy" runs with
# --no-cache and --compress off (Squid runs with "cache deny all" and does
# not compress); "cachingproxy-cache" keeps
# its disk cache on, so every request also pays for a lookup (the origin's
# responses are no-store, so nothing is stored).
run_cachingproxy() {
    local name="$1"
    shift
    if ! bench_cachingproxy_available; then
        echo "$name: not available"
        record "$name" - - - - - "not available (twistd cachingproxy --help fails)"
        return 0
    fi
    local port log="$T/$name.log"
    port="$(bench_free_port)"
    bench_cachingproxy_cmd "$port" "$ORIGIN_URL"
    local extra=()
    read -r -a extra <<<"${CACHINGPROXY_ARGS:-}"
    bench_start "$log" "${PIN_PROXY[@]}" "${BENCH_CP_CMD[@]}" "$@" "${extra[@]}"
    local pid="$BENCH_LAST_PID"
    measure "$name" "$port" "$pid" "$log"
    bench_stop "$pid"
}

run_twisted() {
    local port log="$T/twisted-web-proxy.log"
    port="$(bench_free_port)"
    bench_start "$log" "${PIN_PROXY[@]}" "$PY" "$BENCH_DIR/twisted_web_proxy.py" \
        --port "$port" --upstream-host 127.0.0.1 --upstream-port "$ORIGIN_PORT"
    local pid="$BENCH_LAST_PID"
    measure "twisted.web.proxy" "$port" "$pid" "$log"
    bench_stop "$pid"
}

run_squid() {
    if ! command -v squid >/dev/null 2>&1; then
        echo "squid: not installed"
        record "squid" - - - - - "squid not installed"
        return 0
    fi
    local port d="$T/squid" user_line=""
    port="$(bench_free_port)"
    mkdir -p "$d"
    if [ "$(id -u)" -eq 0 ]; then
        # Squid refuses to keep running as root: it drops to
        # cache_effective_user, which must be able to write its log/pid dir.
        local u=proxy
        id -u "$u" >/dev/null 2>&1 || u=nobody
        user_line="cache_effective_user $u"
        chown "$u" "$d"
    fi
    cat >"$d/squid.conf" <<EOF
# Private reverse proxy (accelerator) instance for the benchmark; no caching.
workers 1
$user_line
http_port 127.0.0.1:$port accel defaultsite=127.0.0.1:$ORIGIN_PORT no-vhost
cache_peer 127.0.0.1 parent $ORIGIN_PORT 0 no-query originserver name=origin
cache_peer_access origin allow all
never_direct allow all
http_access allow all
cache deny all
cache_mem 0 MB
digest_generation off
access_log none
cache_store_log none
cache_log $d/cache.log
pid_filename $d/squid.pid
coredump_dir $d
visible_hostname localhost
dns_nameservers 127.0.0.1
pinger_enable off
shutdown_lifetime 0 seconds
logfile_rotate 0
EOF
    if ! squid -k parse -f "$d/squid.conf" >"$d/parse.log" 2>&1; then
        tail -n 20 "$d/parse.log" >&2
        record "squid" - - - - - "squid -k parse failed"
        return 0
    fi
    # -N: stay in the foreground (no daemon, no SMP kids).
    bench_start "$d/stdout.log" "${PIN_PROXY[@]}" squid -N -f "$d/squid.conf"
    local pid="$BENCH_LAST_PID"
    measure "squid" "$port" "$pid" "$d/cache.log"
    bench_stop "$pid"
}

for p in $PROXIES; do
    case "$p" in
        origin) run_origin ;;
        cachingproxy) run_cachingproxy cachingproxy --no-cache --compress off ;;
        cachingproxy-cache) run_cachingproxy cachingproxy-cache --cache-dir "$T/cp-cache" ;;
        twisted) run_twisted ;;
        squid) run_squid ;;
        *) bench_die "unknown entry in PROXIES: $p (use origin cachingproxy cachingproxy-cache twisted squid)" ;;
    esac
done

# --- report ------------------------------------------------------------------
squid_rps="$(awk -F'|' '$1 == "squid" && $2 != "-" && $3 == 0 && $4 == 0 {print $2}' "$RESULTS")"
twisted_version="$("$PY" -c 'import twisted; print(twisted.__version__)' 2>/dev/null || echo '?')"
squid_version="$( (squid -v 2>/dev/null || true) | awk 'NR == 1 {print $NF}')"
nginx_version="$(nginx -v 2>&1 | awk -F/ '{print $2}')"
echo
echo "Pass-through throughput: GET 1 KiB via proxy -> nginx origin (no caching)"
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s (+${WARMUP}s warm-up); $PIN_NOTE"
echo "nginx ${nginx_version:-?}, squid ${squid_version:-n/a}, Twisted $twisted_version, $("$PY" -V 2>&1), $NCPU CPUs, $(uname -r)"
echo
awk -F'|' -v squid="$squid_rps" '
BEGIN {
    printf "%-18s %12s %9s %8s %9s %9s %9s  %s\n", "proxy", "req/s", "vs squid", "non-2xx", "sock-err", "p50", "p99", "note"
    printf "%-18s %12s %9s %8s %9s %9s %9s  %s\n", "-----", "-----", "--------", "-------", "--------", "---", "---", "----"
}
{
    ratio = "n/a"
    if (squid != "" && $2 != "-") ratio = sprintf("%.2fx", $2 / squid)
    printf "%-18s %12s %9s %8s %9s %9s %9s  %s\n", $1, $2, ratio, $3, $4, $5, $6, $7
}' "$RESULTS"
if [ -z "$squid_rps" ]; then
    echo
    echo "note: squid was not measured cleanly (missing, failed or had errors): no ratios."
fi
echo
echo "origin-direct is wrk straight at nginx (same CPU 1): an upper bound, not a proxy."
echo "Rows with non-2xx or socket errors are not comparable: errors are often fast."
