#!/usr/bin/env bash
# HTTP/2 cache hits over TLS: h2load -> cachingproxy (TLS listener, h2 by
# ALPN) and h2load -> nginx (listen ... ssl, http2, proxy_cache), both in
# front of the same nginx origin (a 1 KiB file cacheable for an hour), and
# cachingproxy's TLS listener again over HTTP/1.1 (h2load --h1) to show
# what HTTP/2 costs it. Rounds alternate between the rows, so that a busy
# moment of the machine falls on all; the medians are printed, and their
# ratios.
#
# Usage: bench/run_h2.sh
# Environment:
#   DURATION=10        seconds of measured load per run
#   WARMUP=2           seconds of unmeasured load before each run
#   ROUNDS=3           runs of each server, interleaved
#   CONNECTIONS=20     h2load client connections (-c)
#   STREAMS=10         concurrent streams per connection (-m)
#   BENCH_NO_PIN=1     do not pin processes to CPUs
#   BENCH_NO_INSTALL=1 never call apt-get
#   BENCH_VENV=...     the venv whose twistd runs cachingproxy (default .venv)
#   BENCH_KEEP_TMP=1   keep the temp dir (configs, logs, raw h2load output)
#
# CPU layout (needs >= 2 cores): the server under test on CPU 0; h2load and
# the origin on CPU 1. Read the ratio, not the absolute numbers.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-20}"
STREAMS="${STREAMS:-10}"
bench_positive_ints DURATION WARMUP ROUNDS CONNECTIONS STREAMS

bench_traps

bench_ensure_packages h2load:nghttp2-client nginx:nginx curl:curl openssl:openssl taskset:util-linux
for cmd in h2load nginx curl openssl; do
    command -v "$cmd" >/dev/null 2>&1 || bench_die "$cmd is not installed"
done
bench_ensure_venv
cd "$REPO_ROOT"
bench_pin_setup
bench_mktemp
T="$BENCH_TMP"

# --- a throwaway certificate for both servers ----------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$T/key.pem" -out "$T/cert.pem" >/dev/null 2>&1 \
    || bench_die "openssl could not make a certificate"

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

# --- origin: nginx, 1 KiB, cacheable for an hour ---------------------------------
mkdir -p "$T/www" "$T/origin"
head -c 1024 /dev/urandom >"$T/www/1k.bin"
ORIGIN_PORT="$(bench_free_port)"
cat >"$T/origin/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $T/origin/nginx.pid;
error_log $T/origin/error.log warn;
events { worker_connections 4096; }
http {
    access_log $T/origin/access.log;
    keepalive_requests 1000000;
    default_type application/octet-stream;
$(nginx_temp_paths "$T/origin")
    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        root $T/www;
        add_header Cache-Control "public, max-age=3600" always;
    }
}
EOF
bench_start "$T/origin/stdout.log" "${PIN_LOAD[@]}" nginx -p "$T/origin" -c "$T/origin/nginx.conf"
bench_wait_http "http://127.0.0.1:$ORIGIN_PORT/1k.bin" "$BENCH_LAST_PID" "$T/origin/error.log" 30 \
    || bench_die "the nginx origin did not start"
ORIGIN_URL="http://127.0.0.1:$ORIGIN_PORT"

# --- nginx with proxy_cache, TLS and HTTP/2, 1 worker ------------------------------
# nginx 1.25.1 and later: "http2 on"; before: "listen ... ssl http2".
mkdir -p "$T/peer/cache"
PEER_PORT="$(bench_free_port)"
nginx_version="$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')"
if printf '%s\n1.25.1\n' "$nginx_version" | sort -V -C; then
    PEER_LISTEN="listen 127.0.0.1:$PEER_PORT ssl http2;"
    PEER_HTTP2=""
else
    PEER_LISTEN="listen 127.0.0.1:$PEER_PORT ssl;"
    PEER_HTTP2="http2 on;"
fi
cat >"$T/peer/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $T/peer/nginx.pid;
error_log $T/peer/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
$(nginx_temp_paths "$T/peer")
    proxy_cache_path $T/peer/cache levels=1:2 keys_zone=bench:10m max_size=100m;
    upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 32; }
    server {
        $PEER_LISTEN
        $PEER_HTTP2
        ssl_certificate $T/cert.pem;
        ssl_certificate_key $T/key.pem;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            add_header X-Cache-Status \$upstream_cache_status always;
        }
    }
}
EOF
nginx -q -t -p "$T/peer" -c "$T/peer/nginx.conf" >"$T/peer/test.log" 2>&1 \
    || { cat "$T/peer/test.log" >&2; bench_die "the nginx peer's configuration does not load"; }
bench_start "$T/peer/stdout.log" "${PIN_PROXY[@]}" nginx -p "$T/peer" -c "$T/peer/nginx.conf"
PEER_PID="$BENCH_LAST_PID"

# --- cachingproxy, TLS listener (h2 by ALPN), memory cache -----------------------
CP_PORT="$(bench_free_port)"
bench_start "$T/cachingproxy.log" "${PIN_PROXY[@]}" \
    env PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" \
    "$VENV/bin/twistd" -n --pidfile= cachingproxy \
    --port "ssl:$CP_PORT:privateKey=$T/key.pem:certKey=$T/cert.pem:interface=127.0.0.1" \
    --upstream "$ORIGIN_URL" --cache-dir none --cache-memory 64M --no-access-log --http2 tls
CP_PID="$BENCH_LAST_PID"

wait_h2() {
    local url="$1" pid="$2" log="$3" deadline
    deadline=$(( $(date +%s) + 60 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; return 1; }
        [ "$(curl -sk --http2 -o /dev/null -m 2 -w '%{http_version} %{http_code}' "$url" || true)" = "2 200" ] \
            && return 0
        sleep 0.2
    done
    tail -n 20 "$log" >&2
    return 1
}
wait_h2 "https://127.0.0.1:$PEER_PORT/1k.bin" "$PEER_PID" "$T/peer/error.log" \
    || bench_die "nginx does not answer over HTTP/2"
wait_h2 "https://127.0.0.1:$CP_PORT/1k.bin" "$CP_PID" "$T/cachingproxy.log" \
    || bench_die "cachingproxy does not answer over HTTP/2"

# Both must serve hits before anything is measured.
curl -sk --http2 -o /dev/null "https://127.0.0.1:$CP_PORT/1k.bin"
curl -sk --http2 -D "$T/cp.head" -o /dev/null "https://127.0.0.1:$CP_PORT/1k.bin"
grep -qi '^cache-status:.*hit' "$T/cp.head" || { cat "$T/cp.head" >&2; bench_die "cachingproxy does not serve a hit"; }
curl -sk --http2 -o /dev/null "https://127.0.0.1:$PEER_PORT/1k.bin"
curl -sk --http2 -D "$T/peer.head" -o /dev/null "https://127.0.0.1:$PEER_PORT/1k.bin"
grep -qi '^x-cache-status: HIT' "$T/peer.head" || { cat "$T/peer.head" >&2; bench_die "nginx does not serve a hit"; }

# run_h2load NAME PORT ROUND [PROTOCOL]: prints the req/s of one measured
# run, over h2 (or http/1.1: h2load --h1, one request at a time per
# connection).
run_h2load() {
    local name="$1" port="$2" round="$3" protocol="${4:-h2}" out="$T/h2load-$1-$3.txt" rate failed
    local how=(-m "$STREAMS")
    [ "$protocol" = h2 ] || how=(--h1)
    "${PIN_LOAD[@]}" h2load -c "$CONNECTIONS" "${how[@]}" -t 1 \
        --warm-up-time="${WARMUP}s" -D "${DURATION}s" \
        "https://127.0.0.1:$port/1k.bin" >"$out" 2>&1 || true
    rate="$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' "$out")"
    failed="$(sed -n 's/^requests: .* \([0-9]*\) failed.*/\1/p' "$out")"
    if ! grep -q "Application protocol: $protocol" "$out"; then
        bench_die "$name: h2load did not speak $protocol (see $out; BENCH_KEEP_TMP=1 keeps it)"
    fi
    [ -n "$rate" ] || bench_die "$name: no rate in h2load's output: $(tail -n 5 "$out")"
    [ "${failed:-0}" = 0 ] || bench_log "$name round $round: $failed requests failed"
    echo "$rate"
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }

bench_log "cache hits over TLS: $ROUNDS rounds of ${DURATION}s (+${WARMUP}s warm-up), -c $CONNECTIONS, -m $STREAMS over h2; $PIN_NOTE"
: >"$T/cachingproxy.rates"
: >"$T/nginx.rates"
: >"$T/cachingproxy-h1.rates"
for round in $(seq "$ROUNDS"); do
    cp="$(run_h2load cachingproxy "$CP_PORT" "$round")"
    ng="$(run_h2load nginx "$PEER_PORT" "$round")"
    h1="$(run_h2load cachingproxy-h1 "$CP_PORT" "$round" http/1.1)"
    echo "$cp" >>"$T/cachingproxy.rates"
    echo "$ng" >>"$T/nginx.rates"
    echo "$h1" >>"$T/cachingproxy-h1.rates"
    bench_log "round $round: cachingproxy $cp req/s, nginx $ng req/s (h2); cachingproxy $h1 req/s (http/1.1)"
done
cp_median="$(median <"$T/cachingproxy.rates")"
ng_median="$(median <"$T/nginx.rates")"
h1_median="$(median <"$T/cachingproxy-h1.rates")"
printf '%-36s %14s\n' "hits over TLS" "req/s (median)"
printf '%-36s %14s\n' "cachingproxy, h2" "$cp_median"
printf '%-36s %14s\n' "nginx proxy_cache, h2" "$ng_median"
printf '%-36s %14s\n' "cachingproxy, http/1.1 (h2load --h1)" "$h1_median"
awk -v a="$cp_median" -v b="$ng_median" -v c="$h1_median" 'BEGIN {
    if (b > 0) printf "cachingproxy h2 / nginx h2: %.2f\n", a / b
    if (c > 0) printf "cachingproxy h2 / cachingproxy http/1.1: %.2f\n", a / c
}'
