#!/usr/bin/env bash
# Compressed cache-HIT throughput: wrk -> caching proxy -> nginx origin, for
# a 100 KiB text/plain object that the origin marks "Cache-Control: public,
# max-age=3600".  cachingproxy without compression (identity), with gzip and
# with br, side by side with nginx proxy_cache + "gzip on" (and the same
# nginx without Accept-Encoding).  Each row is checked before and after it
# is measured: a cache hit, the expected Content-Encoding, and a body that
# decodes to the origin's exact bytes.
#
# Usage: bench/run_compress.sh
# Environment:
#   DURATION=10        seconds of measured load per row
#   WARMUP=2           seconds of unmeasured warm-up load per row
#   CONNECTIONS=50     wrk connections (wrk always runs with 1 thread)
#   OBJECT_SIZE=102400 size of the text object in bytes (cachingproxy's hot
#                      path, which compresses once per coding, only takes
#                      bodies up to resource._SMALL_BODY, 256 KiB)
#   ROWS="cp-identity cp-gzip cp-br nginx-gzip nginx-identity"
#                      which rows to run, in order
#   CACHINGPROXY_ARGS="" extra cachingproxy options for its rows (split on
#                      whitespace)
#   BENCH_WAIT=600     wait up to this many seconds for other benchmarks
#                      (soak.py, run_soak.sh, wrk) to finish before each
#                      row; 0 does not wait
#   BENCH_NO_PIN=1     do not pin processes to CPUs
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
BENCH_WAIT="${BENCH_WAIT:-600}"
ROWS="${ROWS:-cp-identity cp-gzip cp-br nginx-gzip nginx-identity}"
read -r -a CP_EXTRA <<<"${CACHINGPROXY_ARGS:-}"
OBJECT_SIZE="${OBJECT_SIZE:-102400}"

bench_positive_ints DURATION WARMUP CONNECTIONS OBJECT_SIZE
[[ "$BENCH_WAIT" =~ ^[0-9]+$ ]] || bench_die "BENCH_WAIT must be a number of seconds (got '$BENCH_WAIT')"

bench_traps

# --- prerequisites ---------------------------------------------------------
bench_ensure_packages wrk:wrk nginx:nginx curl:curl gzip:gzip taskset:util-linux
command -v wrk >/dev/null 2>&1 || bench_die "wrk is not installed"
command -v nginx >/dev/null 2>&1 || bench_die "nginx is not installed"
command -v curl >/dev/null 2>&1 || bench_die "curl is not installed"
command -v gzip >/dev/null 2>&1 || bench_die "gzip is not installed"
bench_ensure_venv
cd "$REPO_ROOT"

bench_pin_setup

# wait_for_others: do not measure while another benchmark loads the machine
# (bounded by BENCH_WAIT seconds; after that, go on with a warning).
wait_for_others() {
    [ "$BENCH_WAIT" -gt 0 ] || return 0
    local deadline others
    deadline=$(( $(date +%s) + BENCH_WAIT ))
    while others="$(pgrep -f 'bench/soak.py|run_soak.sh|wrk ' || true)" && [ -n "$others" ]; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            bench_log "other benchmarks still running after ${BENCH_WAIT}s (pids: $(echo "$others" | paste -sd ' ' -)); measuring anyway"
            return 0
        fi
        bench_log "waiting for other benchmarks to finish (pids: $(echo "$others" | paste -sd ' ' -))"
        sleep 5
    done
}

bench_mktemp
T="$BENCH_TMP"
RESULTS="$T/results.txt"
: >"$RESULTS"

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

# --- the object: OBJECT_SIZE (100 KiB) of real text ----------------------------------------
# The licence texts Debian ships (English prose, compresses about 3:1), cut
# to exactly OBJECT_SIZE bytes.  Without them (or if they are too short): numbered
# lines of words and numbers.
mkdir -p "$T/www" "$T/nginx"
OBJECT="$T/www/text.txt"
if ls /usr/share/common-licenses/* >/dev/null 2>&1; then
    # (|| true: head closes the pipe early, which is not an error here)
    { cat /usr/share/common-licenses/* 2>/dev/null || true; } | head -c "$OBJECT_SIZE" >"$OBJECT" || true
    OBJECT_DESC="/usr/share/common-licenses/* concatenated"
fi
if [ "$(stat -c %s "$OBJECT" 2>/dev/null || echo 0)" -ne "$OBJECT_SIZE" ]; then
    { awk -v size="$OBJECT_SIZE" 'BEGIN {
        split("cache proxy origin request response header body client server stale fresh " \
              "entry object store memory disk latency bytes token window stream", w, " ")
        srand(1)
        for (i = 1; i <= int(size / 40) + 10; i++) {
            line = sprintf("%05d", i)
            for (j = 0; j < 8; j++) line = line " " w[int(rand() * 22) + 1] " " int(rand() * 1000)
            print line
        }
    }' || true; } | head -c "$OBJECT_SIZE" >"$OBJECT" || true
    OBJECT_DESC="generated lines of words and numbers"
fi
[ "$(stat -c %s "$OBJECT")" -eq "$OBJECT_SIZE" ] || bench_die "could not make the $OBJECT_SIZE-byte object"
GZIP6_SIZE="$(gzip -6 -c "$OBJECT" | wc -c)"

# --- origin: nginx, 1 worker, the text file, cacheable for an hour ----------
# No gzip at the origin: it always sends identity.  Every request is logged
# (the line count shows that the proxies serve hits).
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
    gzip off;
    types { text/plain txt; }
    default_type text/plain;
$(nginx_temp_paths "$T/nginx")
    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        root $T/www;
        add_header Cache-Control "public, max-age=3600" always;
    }
}
EOF
nginx -q -t -p "$T/nginx" -c "$T/nginx/nginx.conf" >"$T/nginx/test.log" 2>&1 \
    || { cat "$T/nginx/test.log" >&2; bench_die "nginx config test failed"; }
bench_start "$T/nginx/stdout.log" "${PIN_LOAD[@]}" nginx -p "$T/nginx" -c "$T/nginx/nginx.conf"
ORIGIN_PID="$BENCH_LAST_PID"
bench_wait_http "http://127.0.0.1:$ORIGIN_PORT/text.txt" "$ORIGIN_PID" "$T/nginx/error.log" 30 \
    || bench_die "nginx origin did not start"
ORIGIN_URL="http://127.0.0.1:$ORIGIN_PORT"
curl -s -m 5 -D "$T/origin.head" -o /dev/null "$ORIGIN_URL/text.txt" || bench_die "origin request failed"
grep -qi '^cache-control: public, max-age=3600' "$T/origin.head" \
    || bench_die "origin does not send Cache-Control: public, max-age=3600"
grep -qi '^content-type: text/plain' "$T/origin.head" || bench_die "origin does not send Content-Type: text/plain"

origin_requests() { wc -l <"$ORIGIN_LOG" 2>/dev/null || echo 0; }

# --- checks ------------------------------------------------------------------
# is_hit KIND HEADERFILE
is_hit() {
    local kind="$1" h="$2"
    case "$kind" in
        cachingproxy)
            grep -qiE '^x-cache:[[:space:]]*hit([[:space:]]|$)' "$h" \
                || grep -qiE '^cache-status:.*;[[:space:]]*hit([[:space:]]*[;,]|[[:space:]]*$)' "$h" ;;
        nginx)
            grep -qiE '^x-cache-status:[[:space:]]*hit([[:space:]]|$)' "$h" ;;
        *) return 1 ;;
    esac
}

# content_encoding HEADERFILE: the Content-Encoding value ("" when absent).
content_encoding() {
    grep -iE '^content-encoding:' "$1" | tail -n 1 | cut -d: -f2- | tr -d ' \r' | tr '[:upper:]' '[:lower:]' || true
}

# decode CODING IN OUT: undo CODING ("" = identity).
decode() {
    case "$1" in
        "") cp "$2" "$3" ;;
        gzip) gzip -dc <"$2" >"$3" ;;
        br) "$PY" -c 'import brotli, sys
sys.stdout.buffer.write(brotli.decompress(sys.stdin.buffer.read()))' <"$2" >"$3" ;;
        *) return 1 ;;
    esac
}

# verify SLUG KIND URL CODING: two requests (Accept-Encoding: CODING unless
# CODING is empty); the last must be a hit, carry Content-Encoding CODING
# (none for identity) and decode to the origin's exact bytes.  Sets VERIFY_OK
# (yes/no) and VERIFY_DESC.
verify() {
    local slug="$1" kind="$2" url="$3" coding="$4" i h b ce
    local ae=()
    [ -n "$coding" ] && ae=(-H "Accept-Encoding: $coding")
    VERIFY_OK=no
    VERIFY_DESC=""
    for i in 1 2; do
        h="$T/check-$slug-$i.head"
        b="$T/check-$slug-$i.body"
        if ! curl -s -m 5 ${ae[@]+"${ae[@]}"} -D "$h" -o "$b" "$url"; then
            VERIFY_DESC="request $i failed"
            return 0
        fi
    done
    ce="$(content_encoding "$h")"
    local cache
    cache="$(grep -iE '^(x-cache|x-cache-status|cache-status|age):' "$h" | tr -d '\r' | paste -sd ';' - || true)"
    VERIFY_DESC="${cache:-no cache headers}; Content-Encoding: ${ce:-none}"
    if ! is_hit "$kind" "$h"; then
        VERIFY_DESC="not a hit ($VERIFY_DESC)"
    elif [ "$ce" != "$coding" ]; then
        VERIFY_DESC="Content-Encoding ${ce:-none}, expected ${coding:-none}"
    elif ! decode "$coding" "$b" "$b.decoded" 2>/dev/null; then
        VERIFY_DESC="body does not decode as ${coding:-identity}"
    elif ! cmp -s "$b.decoded" "$OBJECT"; then
        VERIFY_DESC="decoded body differs from the origin's ($(stat -c %s "$b.decoded") bytes)"
    else
        VERIFY_OK=yes
    fi
    bench_log "$slug: check ($VERIFY_OK): $(head -n 1 "$h" | tr -d '\r'); $VERIFY_DESC"
}

# --- measurement ---------------------------------------------------------------
# record NAME RPS VSKEY WIRE BODY MBS NON2XX SOCKERR P50 P99 VERIFIED ORIGINREQS NOTE
record() { printf '%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s\n' "$@" >>"$RESULTS"; }

# measure NAME SLUG KIND PORT PID LOGFILE CODING
measure() {
    local name="$1" slug="$2" kind="$3" port="$4" pid="$5" logfile="$6" coding="$7"
    local url="http://127.0.0.1:$port/text.txt" out="$T/wrk-$slug.txt"
    local ae=()
    [ -n "$coding" ] && ae=(-H "Accept-Encoding: $coding")
    wait_for_others
    if ! bench_wait_http "$url" "$pid" "$logfile" 30; then
        record "$name" - "$slug" - - - - - - - no - "did not become ready (see log above)"
        return 0
    fi
    verify "$slug" "$kind" "$url" "$coding"
    local ok_before="$VERIFY_OK" desc_before="$VERIFY_DESC"
    # One request with the row's headers: bytes on the wire (head + body as
    # sent; curl does not decode without --compressed).
    local sizes wire body
    sizes="$(curl -s -m 5 ${ae[@]+"${ae[@]}"} -o /dev/null -w '%{size_header} %{size_download}' "$url" || echo '- -')"
    body="${sizes#* }"
    wire="-"
    [[ "$sizes" =~ ^[0-9]+\ [0-9]+$ ]] && wire=$(( ${sizes% *} + body ))
    bench_log "$name: warm-up ${WARMUP}s"
    timeout $((WARMUP + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" \
        ${ae[@]+"${ae[@]}"} "$url" >/dev/null 2>&1 || true
    local origin_before origin_after
    origin_before="$(origin_requests)"
    bench_log "$name: measuring ${DURATION}s (wrk -t1 -c$CONNECTIONS${coding:+ -H \"Accept-Encoding: $coding\"})"
    if ! timeout $((DURATION + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
            ${ae[@]+"${ae[@]}"} "$url" >"$out" 2>&1; then
        cat "$out" >&2 || true
        record "$name" - "$slug" "$wire" "$body" - - - - - "$ok_before" - "wrk failed"
        return 0
    fi
    origin_after="$(origin_requests)"
    if ! kill -0 "$pid" 2>/dev/null; then
        record "$name" - "$slug" "$wire" "$body" - - - - - "$ok_before" - "process died during the run"
        return 0
    fi
    local rps non2xx sockerr p50 p99 total mbs origin_reqs
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    non2xx="$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")"
    sockerr="$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out")"
    p50="$(awk '$1 == "50%" {print $2}' "$out")"
    p99="$(awk '$1 == "99%" {print $2}' "$out")"
    total="$(awk '/requests in/ {print $1}' "$out")"
    mbs="$(awk '/^Transfer\/sec:/ {v = $2; u = substr(v, length(v) - 1); n = v + 0;
        if (u == "GB") n *= 1024; else if (u == "KB") n /= 1024; else if (u !~ /MB/) n /= 1048576;
        printf "%.1f", n}' "$out")"
    origin_reqs=$((origin_after - origin_before))

    verify "$slug-after" "$kind" "$url" "$coding"
    local verified="$ok_before" note=""
    if [ "$ok_before" != yes ]; then
        note="WARNING: NOT VERIFIED ($desc_before): not a ${coding:-identity} hit"
    elif [ "$VERIFY_OK" != yes ]; then
        verified=no
        note="WARNING: not verified after the run ($VERIFY_DESC)"
    elif [ "${total:-0}" -gt 0 ] && [ $((origin_reqs * 100)) -gt "${total:-0}" ]; then
        verified=no
        note="WARNING: origin served $origin_reqs of $total requests: not hit throughput"
    fi
    if [ "${non2xx:-0}" != 0 ] || [ "${sockerr:-0}" != 0 ]; then
        note="${note:+$note; }ERRORS: req/s is not trustworthy"
    fi
    [ "${total:-0}" = 0 ] && note="no requests completed"
    record "$name" "${rps:--}" "$slug" "$wire" "$body" "${mbs:--}" "${non2xx:-0}" "${sockerr:-0}" \
        "${p50:--}" "${p99:--}" "$verified" "$origin_reqs" "$note"
    bench_log "$name: ${rps:-?} req/s, ${body} body bytes/response, non-2xx=${non2xx:-0}, socket errors=${sockerr:-0}, verified=$verified, origin requests during run=$origin_reqs"
}

# run_cachingproxy NAME SLUG CODING EXTRA-ARGS...: a fresh cachingproxy in
# reverse mode with its own cache directory and a 64 MiB memory tier.
run_cachingproxy() {
    local name="$1" slug="$2" coding="$3"; shift 3
    if ! bench_cachingproxy_available; then
        echo "cachingproxy: not available"
        record "$name" - "$slug" - - - - - - - no - "not available (twistd cachingproxy --help fails)"
        return 0
    fi
    local port log="$T/$slug.log"
    port="$(bench_free_port)"
    bench_cachingproxy_cmd "$port" "$ORIGIN_URL"
    bench_start "$log" "${PIN_PROXY[@]}" "${BENCH_CP_CMD[@]}" --cache-dir "$T/$slug-cache" \
        --cache-memory 64M "$@" ${CP_EXTRA[@]+"${CP_EXTRA[@]}"}
    local pid="$BENCH_LAST_PID"
    measure "$name" "$slug" cachingproxy "$port" "$pid" "$log" "$coding"
    bench_stop "$pid"
}

# The nginx proxy_cache + gzip instance, shared by the two nginx rows.
NGX_PID=""
NGX_PORT=""
NGX_DIR="$T/nginx-cache"
start_nginx_proxy() {
    [ -n "$NGX_PID" ] && return 0
    local d="$NGX_DIR"
    NGX_PORT="$(bench_free_port)"
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
    gzip on;
    gzip_types text/plain;
    gzip_proxied any;
    gzip_comp_level 6;
$(nginx_temp_paths "$d")
    proxy_cache_path $d/cache levels=1:2 keys_zone=bench:10m max_size=64m inactive=1h use_temp_path=off;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Cache the identity representation only; gzip is applied on
            # the way out, to every response.
            proxy_set_header Accept-Encoding "";
            proxy_cache bench;
            proxy_cache_valid 200 1m;
            proxy_cache_revalidate on;
            add_header X-Cache-Status \$upstream_cache_status always;
        }
    }
}
EOF
    if ! nginx -q -t -p "$d" -c "$d/nginx.conf" >"$d/test.log" 2>&1; then
        cat "$d/test.log" >&2
        return 1
    fi
    bench_start "$d/stdout.log" "${PIN_PROXY[@]}" nginx -p "$d" -c "$d/nginx.conf"
    NGX_PID="$BENCH_LAST_PID"
}

run_nginx() {
    local name="$1" slug="$2" coding="$3"
    if ! start_nginx_proxy; then
        record "$name" - "$slug" - - - - - - - no - "nginx config test failed"
        return 0
    fi
    measure "$name" "$slug" nginx "$NGX_PORT" "$NGX_PID" "$NGX_DIR/error.log" "$coding"
}

for r in $ROWS; do
    case "$r" in
        cp-identity) run_cachingproxy "cachingproxy identity" cp-identity "" --compress off ;;
        cp-gzip) run_cachingproxy "cachingproxy gzip" cp-gzip gzip --compress on ;;
        cp-br) run_cachingproxy "cachingproxy br" cp-br br --compress on ;;
        nginx-gzip) run_nginx "nginx proxy_cache gzip" nginx-gzip gzip ;;
        nginx-identity) run_nginx "nginx proxy_cache identity" nginx-identity "" ;;
        *) bench_die "unknown entry in ROWS: $r (use cp-identity cp-gzip cp-br nginx-gzip nginx-identity)" ;;
    esac
done
[ -n "$NGX_PID" ] && bench_stop "$NGX_PID"

# --- report ------------------------------------------------------------------
# The reference: nginx gzip, when verified and without non-2xx responses.
# Its socket errors are wrk timeouts (connections its one worker starves for
# > 2 s while it compresses), which lower its req/s rather than inflate it:
# ratios are still given then, marked with '*'.
ref_rps="$(awk -F'|' '$3 == "nginx-gzip" && $2 != "-" && $7 == 0 && $11 == "yes" {print $2}' "$RESULTS")"
ref_sockerr="$(awk -F'|' '$3 == "nginx-gzip" {print $8}' "$RESULTS")"
ref_mark=""
[ -n "$ref_rps" ] && [ "${ref_sockerr:-0}" != 0 ] && ref_mark="*"
twisted_version="$("$PY" -c 'import twisted; print(twisted.__version__)' 2>/dev/null || echo '?')"
brotli_version="$("$PY" -c 'import brotli; print(getattr(brotli, "__version__", "?"))' 2>/dev/null || echo 'n/a')"
nginx_version="$(nginx -v 2>&1 | awk -F/ '{print $2}')"
# The largest body cachingproxy keeps in its hot path (compressed once per
# coding there); larger bodies are streamed from the store and compressed on
# every response.
hot_limit="$(env PYTHONPATH="$REPO_ROOT" "$PY" -c 'from cachingproxy import resource
print(resource._SMALL_BODY)' 2>/dev/null || echo '')"
echo
echo "Compressed cache-hit throughput: GET $OBJECT_SIZE-byte text/plain (Cache-Control: public, max-age=3600) via caching proxy -> nginx origin"
echo "object: $OBJECT_SIZE bytes, $OBJECT_DESC (gzip -6: $GZIP6_SIZE bytes)"
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s (+${WARMUP}s warm-up), -H 'Accept-Encoding: gzip|br' on the compressed rows; $PIN_NOTE"
echo "nginx ${nginx_version:-?}, Twisted $twisted_version, brotli $brotli_version, $("$PY" -V 2>&1), $NCPU CPUs, $(uname -r)"
echo
awk -F'|' -v ref="$ref_rps" -v mark="$ref_mark" '
BEGIN {
    f = "%-27s %9s %8s %7s %7s %6s %7s %8s %8s %8s %8s %6s  %s\n"
    printf f, "row", "req/s", "vs ngx-gz", "wire B", "body B", "MB/s", "non-2xx", "sock-err", "p50", "p99", "verified", "origin", "note"
    printf f, "---", "-----", "---------", "------", "------", "----", "-------", "--------", "---", "---", "--------", "------", "----"
}
{
    ratio = "n/a"
    if (ref != "" && $2 != "-") ratio = sprintf("%.2fx%s", $2 / ref, mark)
    printf f, $1, $2, ratio, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13
}' "$RESULTS"
if [ -z "$ref_rps" ]; then
    echo
    echo "note: nginx proxy_cache gzip was not measured cleanly (missing, failed, non-2xx or not verified): no ratios."
elif [ -n "$ref_mark" ]; then
    echo
    ref_timeouts="$(awk '/Socket errors:/ {print $NF}' "$T/wrk-nginx-gzip.txt" 2>/dev/null || true)"
    echo "*: the reference (nginx proxy_cache gzip) had $ref_sockerr socket errors, ${ref_timeouts:-?} of them wrk"
    echo "   timeouts (requests unanswered for > 2 s, which lower its req/s rather than inflate it)."
fi
echo
echo "wire B / body B: one response with the row's headers (curl %{size_header}+%{size_download} / %{size_download})."
echo "MB/s: wrk's Transfer/sec.  origin: requests the origin served during the measured run."
echo "verified: before AND after the run, a repeated request was a cache hit with the expected"
echo "          Content-Encoding (none for identity) whose body decodes to the origin's exact bytes,"
echo "          and the origin served < 1% of the measured requests."
echo "Note: cachingproxy compresses a small object (body <= ${hot_limit:-?} bytes, its hot path) once per"
echo "      coding (gzip level 6, br quality 4) and then serves the stored compressed bytes on every"
echo "      hit; nginx gzip (gzip_comp_level 6) compresses the cached identity body on every response."
if [ -n "$hot_limit" ] && [ "$OBJECT_SIZE" -gt "$hot_limit" ]; then
    echo "      THIS object ($OBJECT_SIZE bytes) is larger than that limit: cachingproxy streams it from"
    echo "      its store and compresses it on every response too (try OBJECT_SIZE=$hot_limit)."
elif [ -n "$hot_limit" ]; then
    echo "      This object ($OBJECT_SIZE bytes) is within that limit: its compressed hits cost no compression."
fi
echo "Rows with non-2xx or socket errors, or verified=no, are not comparable."
