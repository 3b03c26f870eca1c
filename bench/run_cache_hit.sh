#!/usr/bin/env bash
# Cache-HIT throughput: wrk -> caching proxy -> nginx origin (1 KiB file that
# the origin marks "Cache-Control: public, max-age=3600").  After the first
# request every request should be served from the proxy's cache; each row is
# checked to really be a hit before it is measured, and the origin's access
# log is counted during the measured run.
#
# Usage: bench/run_cache_hit.sh
# Environment:
#   DURATION=10        seconds of measured load per proxy
#   WARMUP=2           seconds of unmeasured warm-up load per proxy
#   CONNECTIONS=50     wrk connections (wrk always runs with 1 thread)
#   PROXIES="cachingproxy cachingproxy-disk squid varnish nginx"
#                      which rows to run, in order (also: origin)
#   CACHINGPROXY_ARGS="" extra cachingproxy options for both of its rows
#   BENCH_NO_PIN=1     do not pin processes to CPUs (for --workers runs)
#                      (split on whitespace), e.g. "--min-uses 2"
#   BENCH_NO_INSTALL=1 never call apt-get
#   BENCH_KEEP_TMP=1   keep the temp dir (configs, logs, raw wrk output)
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
PROXIES="${PROXIES:-cachingproxy cachingproxy-disk squid varnish nginx}"
read -r -a CP_EXTRA <<<"${CACHINGPROXY_ARGS:-}"

bench_positive_ints DURATION WARMUP CONNECTIONS

bench_traps

# --- prerequisites ---------------------------------------------------------
# lib.sh's installer only knows how to silence the nginx and squid services;
# the varnish package ships two more (varnish, varnishncsa).
_cache_hit_disable_varnish_services() {
    local svc
    for svc in varnish varnishncsa; do
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
            _bench_sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
        else
            if command -v update-rc.d >/dev/null 2>&1; then
                _bench_sudo update-rc.d "$svc" disable >/dev/null 2>&1 || true
            fi
            if [ -x "/etc/init.d/$svc" ]; then
                _bench_sudo "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
            fi
        fi
    done
}

had_varnish=1
command -v varnishd >/dev/null 2>&1 || had_varnish=0
bench_ensure_packages wrk:wrk nginx:nginx squid:squid varnishd:varnish curl:curl taskset:util-linux
if [ "$had_varnish" = 0 ] && command -v varnishd >/dev/null 2>&1; then
    _cache_hit_disable_varnish_services
fi
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

# Temp paths for the nginx instances (origin and proxy_cache peer).
nginx_temp_paths() {
    local d="$1"
    cat <<EOF
    client_body_temp_path $d/client_body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
EOF
}

# --- origin: nginx, 1 worker, 1 KiB static file, cacheable for an hour -------
# The origin logs every request it serves (unbuffered): a proxy that really
# serves hits sends it (almost) nothing during the measured run, so the line
# count is a second, independent hit check.
mkdir -p "$T/www" "$T/nginx"
head -c 1024 /dev/urandom >"$T/www/1k.bin"
ORIGIN_PORT="$(bench_free_port)"
ORIGIN_LOG="$T/nginx/access.log"
cat >"$T/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $T/nginx/nginx.pid;
error_log $T/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log $ORIGIN_LOG;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    default_type application/octet-stream;
$(nginx_temp_paths "$T/nginx")
    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        root $T/www;
        # Cache-hit benchmark: every shared cache may keep it for an hour.
        # nginx adds an ETag and Last-Modified by default.
        add_header Cache-Control "public, max-age=3600" always;
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
if ! curl -s -m 5 -D - -o /dev/null "$ORIGIN_URL/1k.bin" | grep -qi '^cache-control: public, max-age=3600'; then
    bench_die "origin does not send Cache-Control: public, max-age=3600"
fi

origin_requests() { wc -l <"$ORIGIN_LOG" 2>/dev/null || echo 0; }

# --- hit check -----------------------------------------------------------------
# is_hit KIND HEADERFILE: does this response head say "served from cache"?
#   cachingproxy: X-Cache: HIT, or Cache-Status: <name>; hit
#   squid:        X-Cache: HIT from ...
#   varnish:      X-Varnish: <this xid> <xid of the request that stored it>,
#                 or Age > 0
#   nginx:        X-Cache-Status: HIT   (add_header ... $upstream_cache_status)
is_hit() {
    local kind="$1" h="$2"
    case "$kind" in
        cachingproxy)
            grep -qiE '^x-cache:[[:space:]]*hit([[:space:]]|$)' "$h" \
                || grep -qiE '^cache-status:.*;[[:space:]]*hit([[:space:]]*[;,]|[[:space:]]*$)' "$h" ;;
        squid)
            grep -qiE '^x-cache:[[:space:]]*hit([[:space:]]|$)' "$h" ;;
        varnish)
            grep -qiE '^x-varnish:[[:space:]]*[0-9]+[[:space:]]+[0-9]+' "$h" \
                || grep -qiE '^age:[[:space:]]*[1-9][0-9]*' "$h" ;;
        nginx)
            grep -qiE '^x-cache-status:[[:space:]]*hit([[:space:]]|$)' "$h" ;;
        *) return 1 ;;
    esac
}

# cache_headers HEADERFILE: the cache-related fields of a response, one line.
cache_headers() {
    grep -iE '^(x-cache|x-cache-status|cache-status|x-varnish|age):' "$1" \
        | tr -d '\r' | paste -sd ';' - || true
}

# check_hit SLUG KIND URL: request URL twice more (the readiness poll already
# fetched it once); the last response must be a hit with the origin's bytes.
# Sets HIT_OK (yes/no) and HIT_DESC.
check_hit() {
    local slug="$1" kind="$2" url="$3" i h b
    HIT_OK=no
    HIT_DESC=""
    for i in 1 2; do
        h="$T/hit-$slug-$i.head"
        b="$T/hit-$slug-$i.bin"
        if ! curl -s -m 5 -D "$h" -o "$b" "$url"; then
            HIT_DESC="request $i failed"
            return 0
        fi
    done
    if ! cmp -s "$b" "$T/www/1k.bin"; then
        HIT_DESC="wrong body on the cached response ($(stat -c %s "$b" 2>/dev/null || echo 0) bytes)"
        return 0
    fi
    HIT_DESC="$(cache_headers "$h")"
    if is_hit "$kind" "$h"; then
        HIT_OK=yes
    fi
    bench_log "$slug: hit check ($HIT_OK): $(head -n 1 "$h" | tr -d '\r'); ${HIT_DESC:-no cache headers}"
}

# --- measurement ---------------------------------------------------------------
# record NAME RPS NON2XX SOCKERR P50 P99 HIT ORIGINREQS NOTE
record() { printf '%s|%s|%s|%s|%s|%s|%s|%s|%s\n' "$@" >>"$RESULTS"; }

# measure NAME SLUG KIND PORT PID LOGFILE: wait for the proxy, check that a
# repeated request is a hit, warm up (which also fills the cache), run wrk,
# recheck the hit, count origin requests during the run, record the result.
measure() {
    local name="$1" slug="$2" kind="$3" port="$4" pid="$5" logfile="$6"
    local url="http://127.0.0.1:$port/1k.bin" out="$T/wrk-$slug.txt" got
    if ! bench_wait_http "$url" "$pid" "$logfile" 30; then
        record "$name" - - - - - no - "did not become ready (see log above)"
        return 0
    fi
    # Sanity: the proxy must return the origin's exact bytes.
    if ! curl -s -m 5 -o "$T/check-$slug.bin" "$url" || ! cmp -s "$T/check-$slug.bin" "$T/www/1k.bin"; then
        got="$(stat -c %s "$T/check-$slug.bin" 2>/dev/null || echo 0)"
        record "$name" - - - - - no - "wrong body through proxy ($got bytes)"
        return 0
    fi
    local hit_before=yes desc_before=""
    if [ "$kind" != origin ]; then
        check_hit "$slug" "$kind" "$url"
        hit_before="$HIT_OK"
        desc_before="$HIT_DESC"
    fi
    bench_log "$name: warm-up ${WARMUP}s"
    timeout $((WARMUP + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >/dev/null 2>&1 || true
    local origin_before origin_after
    origin_before="$(origin_requests)"
    bench_log "$name: measuring ${DURATION}s (wrk -t1 -c$CONNECTIONS)"
    if ! timeout $((DURATION + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$out" 2>&1; then
        cat "$out" >&2 || true
        record "$name" - - - - - "$hit_before" - "wrk failed"
        return 0
    fi
    origin_after="$(origin_requests)"
    if ! kill -0 "$pid" 2>/dev/null; then
        record "$name" - - - - - "$hit_before" - "process died during the run"
        return 0
    fi
    local rps non2xx sockerr p50 p99 total origin_reqs
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    non2xx="$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")"
    sockerr="$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out")"
    p50="$(awk '$1 == "50%" {print $2}' "$out")"
    p99="$(awk '$1 == "99%" {print $2}' "$out")"
    total="$(awk '/requests in/ {print $1}' "$out")"
    origin_reqs=$((origin_after - origin_before))

    local hit="$hit_before" note=""
    if [ "$kind" = origin ]; then
        hit="n/a"
    else
        # Still a hit after the run?  (An object evicted or never stored
        # during the load would show here or in the origin count.)
        check_hit "$slug-after" "$kind" "$url"
        if [ "$hit_before" != yes ]; then
            note="WARNING: NOT A CACHE HIT (${desc_before:-no cache headers}): miss-path throughput"
        elif [ "$HIT_OK" != yes ]; then
            hit=no
            note="WARNING: not a hit after the run (${HIT_DESC:-no cache headers})"
        elif [ "${total:-0}" -gt 0 ] && [ $((origin_reqs * 100)) -gt "${total:-0}" ]; then
            hit=no
            note="WARNING: origin served $origin_reqs of $total requests: not hit throughput"
        fi
    fi
    if [ "${non2xx:-0}" != 0 ] || [ "${sockerr:-0}" != 0 ]; then
        note="${note:+$note; }ERRORS: req/s is not trustworthy"
    fi
    if [ "${total:-0}" = 0 ]; then
        note="no requests completed"
    fi
    record "$name" "${rps:--}" "${non2xx:-0}" "${sockerr:-0}" "${p50:--}" "${p99:--}" "$hit" "$origin_reqs" "$note"
    bench_log "$name: ${rps:-?} req/s, non-2xx=${non2xx:-0}, socket errors=${sockerr:-0}, hit=$hit, origin requests during run=$origin_reqs"
}

run_origin() {
    # Reference row: wrk straight at nginx (both on CPU 1, nothing on CPU 0).
    measure "origin-direct" "origin" origin "$ORIGIN_PORT" "$ORIGIN_PID" "$T/nginx/error.log"
}

# run_cachingproxy NAME SLUG EXTRA-ARGS...: cachingproxy in reverse mode with
# a fresh cache directory of its own.
run_cachingproxy() {
    local name="$1" slug="$2"; shift 2
    if ! bench_cachingproxy_available; then
        echo "cachingproxy: not available"
        record "$name" - - - - - no - "not available (twistd cachingproxy --help fails)"
        return 0
    fi
    local port log="$T/$slug.log"
    port="$(bench_free_port)"
    bench_cachingproxy_cmd "$port" "$ORIGIN_URL"
    bench_start "$log" "${PIN_PROXY[@]}" "${BENCH_CP_CMD[@]}" --cache-dir "$T/$slug-cache" "$@" \
        ${CP_EXTRA[@]+"${CP_EXTRA[@]}"}
    local pid="$BENCH_LAST_PID"
    measure "$name" "$slug" cachingproxy "$port" "$pid" "$log"
    bench_stop "$pid"
}

run_squid() {
    if ! command -v squid >/dev/null 2>&1; then
        echo "squid: not installed"
        record "squid" - - - - - no - "squid not installed"
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
# Private caching reverse proxy (accelerator) for the benchmark: memory cache
# only (no cache_dir), 64 MB.
workers 1
$user_line
http_port 127.0.0.1:$port accel defaultsite=127.0.0.1:$ORIGIN_PORT no-vhost
cache_peer 127.0.0.1 parent $ORIGIN_PORT 0 no-query originserver name=origin
cache_peer_access origin allow all
never_direct allow all
http_access allow all
cache allow all
cache_mem 64 MB
maximum_object_size_in_memory 1 MB
memory_replacement_policy lru
# Freshness from the origin's Cache-Control: max-age wins over these
# heuristics (which only apply to responses without explicit freshness).
refresh_pattern . 0 20% 4320
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
        record "squid" - - - - - no - "squid -k parse failed"
        return 0
    fi
    # -N: stay in the foreground (no daemon, no SMP kids).
    bench_start "$d/stdout.log" "${PIN_PROXY[@]}" squid -N -f "$d/squid.conf"
    local pid="$BENCH_LAST_PID"
    measure "squid" "squid" squid "$port" "$pid" "$d/cache.log"
    bench_stop "$pid"
}

run_varnish() {
    if ! command -v varnishd >/dev/null 2>&1; then
        echo "varnish: not installed"
        record "varnish" - - - - - no - "varnish not installed"
        return 0
    fi
    local port d="$T/varnish"
    port="$(bench_free_port)"
    # -F: manager in the foreground (its child, the cache process, dies with
    # it); -n: private work dir; -T none: no management port; default VCL
    # from -b, which honours the origin's Cache-Control.  Started as root it
    # drops the cache process to the varnish/vcache users itself.
    bench_start "$T/varnish.log" "${PIN_PROXY[@]}" varnishd -F -n "$d" -T none \
        -a "127.0.0.1:$port" -b "127.0.0.1:$ORIGIN_PORT" -s malloc,64m
    local pid="$BENCH_LAST_PID"
    measure "varnish" "varnish" varnish "$port" "$pid" "$T/varnish.log"
    bench_stop "$pid"
}

run_nginx_cache() {
    local port d="$T/nginx-cache"
    port="$(bench_free_port)"
    mkdir -p "$d/cache"
    cat >"$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
$(nginx_temp_paths "$d")
    proxy_cache_path $d/cache levels=1:2 keys_zone=bench:10m max_size=64m inactive=1h use_temp_path=off;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            # The origin's Cache-Control/Expires take precedence over
            # proxy_cache_valid, which only covers responses without them.
            proxy_cache_valid 200 1m;
            proxy_cache_revalidate on;
            add_header X-Cache-Status \$upstream_cache_status always;
        }
    }
}
EOF
    if ! nginx -q -t -p "$d" -c "$d/nginx.conf" >"$d/test.log" 2>&1; then
        cat "$d/test.log" >&2
        record "nginx proxy_cache" - - - - - no - "nginx config test failed"
        return 0
    fi
    bench_start "$d/stdout.log" "${PIN_PROXY[@]}" nginx -p "$d" -c "$d/nginx.conf"
    local pid="$BENCH_LAST_PID"
    measure "nginx proxy_cache" "nginx-cache" nginx "$port" "$pid" "$d/error.log"
    bench_stop "$pid"
}

for p in $PROXIES; do
    case "$p" in
        origin) run_origin ;;
        cachingproxy) run_cachingproxy "cachingproxy" cp --cache-memory 64M ;;
        cachingproxy-disk) run_cachingproxy "cachingproxy (disk only)" cp-disk ;;
        squid) run_squid ;;
        varnish) run_varnish ;;
        nginx) run_nginx_cache ;;
        *) bench_die "unknown entry in PROXIES: $p (use origin cachingproxy cachingproxy-disk squid varnish nginx)" ;;
    esac
done

# --- report ------------------------------------------------------------------
squid_rps="$(awk -F'|' '$1 == "squid" && $2 != "-" && $3 == 0 && $4 == 0 && $7 == "yes" {print $2}' "$RESULTS")"
twisted_version="$("$PY" -c 'import twisted; print(twisted.__version__)' 2>/dev/null || echo '?')"
squid_version="$( (squid -v 2>/dev/null || true) | awk 'NR == 1 {print $NF}')"
nginx_version="$(nginx -v 2>&1 | awk -F/ '{print $2}')"
varnish_version="$( (varnishd -V 2>&1 || true) | awk -F'[- ]' 'NR == 1 {print $3}')"
echo
echo "Cache-hit throughput: GET 1 KiB (Cache-Control: public, max-age=3600) via caching proxy -> nginx origin"
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s (+${WARMUP}s warm-up); $PIN_NOTE"
echo "nginx ${nginx_version:-?}, squid ${squid_version:-n/a}, varnish ${varnish_version:-n/a}, Twisted $twisted_version, $("$PY" -V 2>&1), $NCPU CPUs, $(uname -r)"
echo
awk -F'|' -v squid="$squid_rps" '
BEGIN {
    f = "%-26s %10s %9s %8s %9s %9s %9s %5s %7s  %s\n"
    printf f, "proxy", "req/s", "vs squid", "non-2xx", "sock-err", "p50", "p99", "hit", "origin", "note"
    printf f, "-----", "-----", "--------", "-------", "--------", "---", "---", "---", "------", "----"
}
{
    ratio = "n/a"
    if (squid != "" && $2 != "-") ratio = sprintf("%.2fx", $2 / squid)
    printf f, $1, $2, ratio, $3, $4, $5, $6, $7, $8, $9
}' "$RESULTS"
if [ -z "$squid_rps" ]; then
    echo
    echo "note: squid was not measured cleanly (missing, failed, errors or not a hit): no ratios."
fi
echo
echo "hit: a repeated request was a cache hit before AND after the run, and the origin served"
echo "     < 1% of the measured requests.  origin: requests the origin served during the run."
echo "A row with hit=no measures the miss path, not hits: do not compare it."
echo "Rows with non-2xx or socket errors are not comparable: errors are often fast."
