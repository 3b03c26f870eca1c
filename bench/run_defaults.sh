#!/usr/bin/env bash
# Defaults against defaults, in one run: cachingproxy as users start it
# (access log on, disk cache on) and with its access log variants, against
# Squid, Varnish and nginx proxy_cache as installed, each with its own
# default logging, on cache hits and on pass-through, in interleaved rounds.
#
#   wrk -> server under test -> nginx origin (1 KiB file)
#     hit   /hit/1k.bin   Cache-Control: public, max-age=3600
#     pass  /pass/1k.bin  Cache-Control: no-store
#
# Section 1 (pinned): every process and thread of the server on CPU 0, wrk
# (-t1) and the origin (1 worker) on CPU 1.  Per row and path: req/s and the
# server's CPU microseconds per request (utime + stime of ALL its processes:
# the twistd process, squid's master, kid and log daemon, nginx's master and
# worker, varnishd's manager and child), medians over the rounds, and the
# ratios to Squid and to Varnish (medians of the per-round ratios).
#
# Section 2 (WORKERS=1, unpinned, wrk -t2, origin with 2 workers): cachingproxy
# --workers 2 and --workers 1, squid "workers 2" and "workers 1", nginx
# "worker_processes 2" and 1; req/s, the server's CPU and wrk's own CPU per
# request, medians and ratios, and each server's w2/w1 beside the ceiling
# this machine sets: wrk runs on the same 2 CPUs, so two workers can have at
# most 2 CPUs less wrk's share, 2 / (1 + wrk CPU / server CPU) times one
# worker's single CPU.  PIPELINE=N makes wrk send N requests a write (a
# Lua script), which costs wrk far less per request and lifts that ceiling.
#
# Usage: bench/run_defaults.sh
# Environment:
#   ROUNDS=3           rounds; the row order rotates by one every round and
#                      the path order (hit, pass) alternates
#   DURATION=8         seconds of measured load per row, path and round
#   WARMUP=2           seconds of unmeasured warm-up load before each
#   CONNECTIONS=50     wrk connections (keep-alive)
#   ROWS="cp-defaults cp-log-file cp-log-json cp-no-log squid varnish nginx bare floor"
#                      (ROWS="" with WORKERS=1: section 2 only)
#                      section 1 rows, in first-round order (bare: the
#                      ceiling, bench/bare_protocol.py, hits only; floor:
#                      the same with strict parsing by httptools and the
#                      proxy's way of sending, bench/bare_protocol.py --parse)
#   WORKERS=1          run section 2 (0: skip it)
#   WORKER_ROWS="cp-w2 cp-w1 squid-w2 squid-w1 nginx-w2 nginx-w1"
#   PIPELINE=1         section 2: requests wrk sends in one write (1: none)
#   PATHS="hit pass"   the paths measured (PATHS=hit: hits only)
#   BENCH_NO_INSTALL=1 never call apt-get
#   BENCH_KEEP_TMP=1   keep the temp dir (configs, logs, raw wrk output)
#
# The cachingproxy is this checkout's (PYTHONPATH=checkout, as lib.sh does),
# run with twistd --logfile FILE: the twistd log is a file, as under
# systemd's journal, and the default access log ("--access-log -") goes to it.
# Read the ratios, not the absolute numbers: the machine may be noisy.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-8}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-50}"
ROWS="${ROWS-cp-defaults cp-log-file cp-log-json cp-no-log squid varnish nginx bare floor}"
WORKERS="${WORKERS:-1}"
WORKER_ROWS="${WORKER_ROWS:-cp-w2 cp-w1 squid-w2 squid-w1 nginx-w2 nginx-w1}"
PIPELINE="${PIPELINE:-1}"
PATHS="${PATHS:-hit pass}"

bench_positive_ints ROUNDS DURATION WARMUP CONNECTIONS PIPELINE
case "$WORKERS" in 0|1) ;; *) bench_die "WORKERS must be 0 or 1 (got '$WORKERS')" ;; esac
for p in $PATHS; do
    case "$p" in hit|pass) ;; *) bench_die "PATHS takes hit and pass (got '$p')" ;; esac
done
[ -n "${PATHS// /}" ] || bench_die "PATHS is empty"

# row_label ROW: the name printed in the report.
row_label() {
    case "$1" in
        cp-defaults) echo "cachingproxy defaults" ;;
        cp-log-file) echo "cachingproxy --access-log FILE" ;;
        cp-log-json) echo "cachingproxy --access-log FILE json" ;;
        cp-no-log) echo "cachingproxy --no-access-log" ;;
        squid) echo "squid" ;;
        varnish) echo "varnish" ;;
        nginx) echo "nginx proxy_cache" ;;
        bare) echo "twisted bare Protocol (ceiling)" ;;
        floor) echo "twisted Protocol + httptools (floor)" ;;
        cp-w2) echo "cachingproxy --workers 2" ;;
        cp-w1) echo "cachingproxy --workers 1" ;;
        squid-w2) echo "squid workers 2" ;;
        squid-w1) echo "squid workers 1" ;;
        nginx-w2) echo "nginx worker_processes 2" ;;
        nginx-w1) echo "nginx worker_processes 1" ;;
        *) return 1 ;;
    esac
}
for r in $ROWS; do
    case "$r" in cp-w[12]|squid-w[12]|nginx-w[12]) bench_die "$r is a WORKER_ROWS row, not a ROWS row" ;; esac
    row_label "$r" >/dev/null || bench_die "unknown row in ROWS: $r"
done
if [ "$WORKERS" = 1 ]; then
    for r in $WORKER_ROWS; do
        case "$r" in cp-w[12]|squid-w[12]|nginx-w[12]) ;; *) bench_die "unknown row in WORKER_ROWS: $r (use cp-w2 cp-w1 squid-w2 squid-w1 nginx-w2 nginx-w1)" ;; esac
    done
fi
[ -n "${ROWS// }" ] || [ "$WORKERS" = 1 ] || bench_die "ROWS is empty and WORKERS=0: nothing to run"

# --- processes -----------------------------------------------------------------
# tree_pids ROOT: ROOT and all its descendants, one pid a line.
tree_pids() {
    ps -e -o pid=,ppid= | awk -v root="$1" '
        { kids[$2] = kids[$2] " " $1; alive[$1] = 1 }
        END {
            if (!(root in alive)) exit
            n = 1; q[1] = root
            for (i = 1; i <= n; i++) {
                print q[i]
                m = split(kids[q[i]], k, " ")
                for (j = 1; j <= m; j++) q[++n] = k[j]
            }
        }'
}

# stop_tree ROOT: SIGTERM ROOT (as bench_stop does), then SIGKILL whatever
# is left of the processes that were its descendants.
stop_tree() {
    local root="$1" pids p
    pids="$(tree_pids "$root")"
    bench_stop "$root"
    for _ in $(seq 30); do
        local left=0
        for p in $pids; do kill -0 "$p" 2>/dev/null && left=1; done
        [ "$left" = 0 ] && return 0
        sleep 0.1
    done
    for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
}

defaults_cleanup() {
    local pid
    for pid in "${BENCH_PIDS[@]}"; do
        stop_tree "$pid"
    done
    bench_cleanup
}
trap defaults_cleanup EXIT
# Anything that fails without its own message still says where.
set -E
trap 'bench_log "ERROR: line $LINENO failed: $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# tree_cpu_ticks ROOT: utime + stime of ROOT and all its descendants, clock ticks.
tree_cpu_ticks() {
    local p
    for p in $(tree_pids "$1"); do
        cat "/proc/$p/stat" 2>/dev/null || true
    done | awk '{ sub(/^.*\) /, ""); n += $12 + $13 } END { print n + 0 }'
}

# steal_ticks: "STEAL ALL", the machine's CPU ticks taken by the hypervisor
# for others, and all its ticks, so far (/proc/stat).
steal_ticks() {
    awk '$1 == "cpu" { for (i = 2; i <= NF; i++) n += $i; print ($9 + 0) " " n; exit }' /proc/stat
}

# check_pinned ROOT LABEL: every thread of every process of the server may
# run on CPU 0 only.
check_pinned() {
    local p t cpus bad=""
    for p in $(tree_pids "$1"); do
        for t in /proc/"$p"/task/*; do
            cpus="$(awk '/^Cpus_allowed_list:/ {print $2}' "$t/status" 2>/dev/null || true)"
            [ -z "$cpus" ] || [ "$cpus" = 0 ] || bad="$bad ${t#/proc/}:$cpus"
        done
    done
    [ -z "$bad" ] || bench_die "$2: not all of its threads are pinned to CPU 0:$bad"
}

# --- prerequisites ---------------------------------------------------------
_defaults_disable_varnish_services() {
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
bench_ensure_packages wrk:wrk nginx:nginx squid:squid varnishd:varnish curl:curl taskset:util-linux ps:procps
if [ "$had_varnish" = 0 ] && command -v varnishd >/dev/null 2>&1; then
    _defaults_disable_varnish_services
fi
for c in wrk nginx curl ps; do
    command -v "$c" >/dev/null 2>&1 || bench_die "$c is not installed"
done
wanted=" $ROWS "
[ "$WORKERS" = 1 ] && wanted="$wanted $WORKER_ROWS "
case "$wanted" in *" squid"*) command -v squid >/dev/null 2>&1 || bench_die "squid is not installed (drop it from ROWS/WORKER_ROWS)" ;; esac
case "$wanted" in *" varnish "*) command -v varnishd >/dev/null 2>&1 || bench_die "varnishd is not installed (drop it from ROWS)" ;; esac
bench_ensure_venv
cd "$REPO_ROOT"
bench_cachingproxy_available || bench_die "twistd cachingproxy --help fails with this checkout"

bench_pin_setup
[ -z "${ROWS// }" ] || [ "${#PIN_PROXY[@]}" -gt 0 ] || bench_die "section 1 needs 2 CPUs and taskset (and no BENCH_NO_PIN): $PIN_NOTE"
bench_mktemp
T="$BENCH_TMP"
RESULTS="$T/results.txt"
: >"$RESULTS"
# Section 2 with PIPELINE=N: wrk writes N requests at once on a connection
# and counts each of the N responses.
cat >"$T/pipeline.lua" <<EOF
local depth = $PIPELINE
init = function(args)
    local r = {}
    for i = 1, depth do r[i] = wrk.format() end
    batch = table.concat(r)
end
request = function() return batch end
EOF
: >"$T/access-samples.txt"
TICK="$(getconf CLK_TCK)"
RUN_USER=""
if [ "$(id -u)" -eq 0 ]; then
    # Squid keeps its kids off root: they run as cache_effective_user.
    RUN_USER=proxy
    id -u "$RUN_USER" >/dev/null 2>&1 || RUN_USER=nobody
fi

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

# --- origins: nginx, 1 KiB file under /hit/ (cacheable) and /pass/ (no-store)
# The origin logs the /hit/ requests it serves: a server that really serves
# hits sends it (almost) none during the measured run.
mkdir -p "$T/www/hit" "$T/www/pass"
head -c 1024 /dev/urandom >"$T/www/hit/1k.bin"
cp "$T/www/hit/1k.bin" "$T/www/pass/1k.bin"

# start_origin NAME NWORKERS PIN...: sets ORIGIN_PORT.
start_origin() {
    local name="$1" nworkers="$2" d="$T/origin-$1"
    shift 2
    mkdir -p "$d"
    ORIGIN_PORT="$(bench_free_port)"
    cat >"$d/nginx.conf" <<EOF
worker_processes $nworkers;
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
    default_type application/octet-stream;
$(nginx_temp_paths "$d")
    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        root $T/www;
        location /hit/ {
            access_log $d/hit.log;
            add_header Cache-Control "public, max-age=3600" always;
        }
        location /pass/ {
            add_header Cache-Control "no-store" always;
        }
    }
}
EOF
    nginx -q -t -p "$d" -c "$d/nginx.conf" >"$d/test.log" 2>&1 \
        || { cat "$d/test.log" >&2; bench_die "origin $name: nginx config test failed"; }
    bench_start "$d/stdout.log" "$@" nginx -p "$d" -c "$d/nginx.conf"
    bench_wait_http "http://127.0.0.1:$ORIGIN_PORT/hit/1k.bin" "$BENCH_LAST_PID" "$d/error.log" 30 \
        || bench_die "origin $name did not start"
    curl -s -m 5 -D - -o /dev/null "http://127.0.0.1:$ORIGIN_PORT/hit/1k.bin" \
        | grep -qi '^cache-control: public, max-age=3600' || bench_die "origin $name: /hit/ lacks max-age=3600"
    curl -s -m 5 -D - -o /dev/null "http://127.0.0.1:$ORIGIN_PORT/pass/1k.bin" \
        | grep -qi '^cache-control: no-store' || bench_die "origin $name: /pass/ lacks no-store"
}
if [ -n "${ROWS// }" ]; then
    start_origin pinned 1 "${PIN_LOAD[@]}"
    PINNED_ORIGIN_PORT="$ORIGIN_PORT"
    PINNED_ORIGIN_PID="$BENCH_LAST_PID"
fi
if [ "$WORKERS" = 1 ]; then
    start_origin unpinned 2
    UNPINNED_ORIGIN_PORT="$ORIGIN_PORT"
    UNPINNED_ORIGIN_PID="$BENCH_LAST_PID"
fi

# --- servers -------------------------------------------------------------------
# start_server ROW SLUG ORIGIN_PORT PIN...: start ROW on a fresh port with a
# fresh config and cache; sets SRV_PID, SRV_PORT, SRV_KIND (for the hit
# check), SRV_LOG (its startup/error log) and SRV_ACCESS (the file its access
# log goes to, empty for none).
start_server() {
    local row="$1" slug="$2" oport="$3" d="$T/$2"
    shift 3
    mkdir -p "$d"
    SRV_PORT="$(bench_free_port)"
    SRV_ACCESS=""
    case "$row" in
        cp-*)
            local args=()
            case "$row" in
                cp-defaults|cp-w1) args=(--workers 1); SRV_ACCESS="$d/twistd.log" ;;
                # The parent relays its workers' log lines to --logfile.
                cp-w2) args=(--workers 2); SRV_ACCESS="$d/twistd.log" ;;
                cp-log-file) args=(--access-log "$d/access.log"); SRV_ACCESS="$d/access.log" ;;
                cp-log-json) args=(--access-log "$d/access.log" --access-log-format json); SRV_ACCESS="$d/access.log" ;;
                cp-no-log) args=(--no-access-log) ;;
            esac
            # --cache-dir: the default disk cache, only not in ./cache.
            SRV_KIND=cachingproxy
            SRV_LOG="$d/twistd.log"
            bench_start "$d/stdout.log" "$@" env PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" \
                "$VENV/bin/twistd" -n --pidfile= --logfile "$d/twistd.log" cachingproxy \
                --port "tcp:$SRV_PORT:interface=127.0.0.1" --upstream "http://127.0.0.1:$oport" \
                --cache-dir "$d/cache" "${args[@]}"
            ;;
        bare)
            # The ceiling: a 20-line Twisted Protocol answering one fixed
            # response (the origin's bytes) to every request.
            SRV_KIND=bare
            SRV_LOG="$d/stdout.log"
            bench_start "$d/stdout.log" "$@" "$VENV/bin/python" "$BENCH_DIR/bare_protocol.py" \
                "$SRV_PORT" "$T/www/hit/1k.bin"
            ;;
        floor)
            # A strict parse of each request (httptools, the proxy's
            # callbacks) and the fixed response sent at once, as a hit is.
            SRV_KIND=bare
            SRV_LOG="$d/stdout.log"
            bench_start "$d/stdout.log" "$@" "$VENV/bin/python" "$BENCH_DIR/bare_protocol.py" \
                "$SRV_PORT" "$T/www/hit/1k.bin" --parse
            ;;
        squid|squid-w[12])
            local nworkers=1 user_line=""
            [ "$row" = squid-w2 ] && nworkers=2
            if [ -n "$RUN_USER" ]; then
                user_line="cache_effective_user $RUN_USER"
                chown "$RUN_USER" "$d"
            fi
            # Squid's defaults otherwise (cache_mem 256 MB, no cache_dir, its
            # default access log: daemon module, "squid" logformat), as an
            # accelerator in front of the origin.
            cat >"$d/squid.conf" <<EOF
workers $nworkers
$user_line
http_port 127.0.0.1:$SRV_PORT accel defaultsite=127.0.0.1:$oport no-vhost
cache_peer 127.0.0.1 parent $oport 0 no-query originserver name=origin
cache_peer_access origin allow all
never_direct allow all
http_access allow all
access_log daemon:$d/access.log squid
cache_log $d/cache.log
pid_filename $d/squid.pid
coredump_dir $d
visible_hostname localhost
dns_nameservers 127.0.0.1
pinger_enable off
shutdown_lifetime 0 seconds
EOF
            squid -k parse -f "$d/squid.conf" >"$d/parse.log" 2>&1 \
                || { tail -n 20 "$d/parse.log" >&2; bench_die "$row: squid -k parse failed"; }
            SRV_KIND=squid
            SRV_LOG="$d/cache.log"
            SRV_ACCESS="$d/access.log"
            # --foreground: the master stays in the foreground and forks its
            # kid(s) as it does as a daemon (-N would run a single process).
            # -n: a service name of our own (shared memory, IPC sockets).
            bench_start "$d/stdout.log" "$@" squid --foreground -n "cpbench$$" -f "$d/squid.conf"
            ;;
        varnish)
            # -F: manager in the foreground, its child is the cache process;
            # -n: private work dir; no -s, no -p: the installed defaults.
            # No varnishncsa: Varnish only writes its shared-memory log.
            SRV_KIND=varnish
            SRV_LOG="$d/stdout.log"
            bench_start "$d/stdout.log" "$@" varnishd -F -n "$d/work" -T none \
                -a "127.0.0.1:$SRV_PORT" -b "127.0.0.1:$oport"
            ;;
        nginx|nginx-w[12])
            local nworkers=1
            [ "$row" = nginx-w2 ] && nworkers=2
            mkdir -p "$d/cache"
            # Debian's nginx.conf (sendfile, tcp_nopush, the combined access
            # log to a file) plus what proxying needs; the upstream keepalive
            # pool and keepalive_requests are set as in the other bench
            # scripts (nginx's defaults: a new upstream connection per
            # request, 1000 requests per client connection).
            cat >"$d/nginx.conf" <<EOF
worker_processes $nworkers;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log $d/access.log combined;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
$(nginx_temp_paths "$d")
    proxy_cache_path $d/cache levels=1:2 keys_zone=bench:10m;
    upstream origin {
        server 127.0.0.1:$oport;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$SRV_PORT;
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
            nginx -q -t -p "$d" -c "$d/nginx.conf" >"$d/test.log" 2>&1 \
                || { cat "$d/test.log" >&2; bench_die "$row: nginx config test failed"; }
            SRV_KIND=nginx
            SRV_LOG="$d/error.log"
            SRV_ACCESS="$d/access.log"
            bench_start "$d/stdout.log" "$@" nginx -p "$d" -c "$d/nginx.conf"
            ;;
        *) bench_die "unknown row $row" ;;
    esac
    SRV_PID="$BENCH_LAST_PID"
    bench_wait_http "http://127.0.0.1:$SRV_PORT/pass/1k.bin" "$SRV_PID" "$SRV_LOG" 60 \
        || bench_die "$row ($slug) did not become ready (log: $SRV_LOG)"
}

# --- hit check -----------------------------------------------------------------
# is_hit KIND HEADERFILE: does this response head say "served from cache"?
is_hit() {
    local kind="$1" h="$2"
    case "$kind" in
        cachingproxy|bare)
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
cache_headers() {
    grep -iE '^(x-cache|x-cache-status|cache-status|x-varnish|age):' "$1" \
        | tr -d '\r' | paste -sd ';' - || true
}

# check_path LABEL KIND URL PATH: fetch URL three times; every body must be
# the origin's bytes, and the last response a hit (PATH hit) or not (pass).
check_path() {
    local label="$1" kind="$2" url="$3" path="$4" i h b
    for i in 1 2 3; do
        h="$T/check.head"
        b="$T/check.bin"
        curl -s -m 5 -D "$h" -o "$b" "$url" || bench_die "$label: request to $url failed"
        head -n 1 "$h" | grep -q ' 200' || bench_die "$label: $url answered $(head -n 1 "$h" | tr -d '\r')"
        cmp -s "$b" "$T/www/hit/1k.bin" \
            || bench_die "$label: wrong body from $url ($(stat -c %s "$b") bytes)"
    done
    if [ "$path" = hit ]; then
        is_hit "$kind" "$h" || bench_die "$label: $url is not a cache hit ($(cache_headers "$h"))"
    else
        ! is_hit "$kind" "$h" || bench_die "$label: the no-store $url was served from cache ($(cache_headers "$h"))"
    fi
}

log_lines() {
    [ -n "$1" ] || { echo 0; return; }
    { cat "$1" "$1".[0-9]* 2>/dev/null || true; } | wc -l
}

# measure SECTION ROW PATH ROUND THREADS ORIGIN_DIR LOAD_PIN...: one wrk run
# against the running server (SRV_*); appends to RESULTS and adds the
# requests wrk completed to MEASURED.
measure() {
    local section="$1" row="$2" path="$3" round="$4" threads="$5" odir="$6"
    shift 6
    local label url out
    label="$(row_label "$row") [$path, round $round]"
    url="http://127.0.0.1:$SRV_PORT/$path/1k.bin"
    out="$T/wrk-$section-$row-$path-$round.txt"
    check_path "$label" "$SRV_KIND" "$url" "$path"
    local script=()
    [ "$section" = unpinned ] && [ "$PIPELINE" -gt 1 ] && script=(-s "$T/pipeline.lua")
    timeout $((WARMUP + 30)) "$@" wrk -t"$threads" -c"$CONNECTIONS" -d"${WARMUP}s" ${script[@]+"${script[@]}"} "$url" \
        >"$out.warmup" 2>&1 || { cat "$out.warmup" >&2; bench_die "$label: wrk warm-up failed"; }
    local before after obefore oafter ocpu0 ocpu1 steal0 steal1
    obefore="$(log_lines "$odir/hit.log")"
    ocpu0="$(tree_cpu_ticks "$ORIGIN_PID")"
    steal0="$(steal_ticks)"
    before="$(tree_cpu_ticks "$SRV_PID")"
    # The subshell's "times": its children's CPU, which is wrk's own (timeout
    # and taskset wait for it, so its time reaches them and then us).
    ( timeout $((DURATION + 30)) "$@" wrk -t"$threads" -c"$CONNECTIONS" -d"${DURATION}s" ${script[@]+"${script[@]}"} "$url" \
        >"$out" 2>&1 && times >"$out.times" ) || { cat "$out" >&2; bench_die "$label: wrk failed"; }
    after="$(tree_cpu_ticks "$SRV_PID")"
    steal1="$(steal_ticks)"
    ocpu1="$(tree_cpu_ticks "$ORIGIN_PID")"
    oafter="$(log_lines "$odir/hit.log")"
    kill -0 "$SRV_PID" 2>/dev/null || bench_die "$label: the server died during the run (log: $SRV_LOG)"
    local rps total non2xx sockerr us wrkus ous stolen
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    total="$(awk '/requests in/ {print $1}' "$out")"
    non2xx="$(awk '/Non-2xx or 3xx responses:/ {n += $NF} END {print n + 0}' "$out")"
    sockerr="$(awk '/Socket errors:/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$out")"
    if [ -z "$rps" ] || [ "${total:-0}" -eq 0 ]; then
        cat "$out" >&2
        bench_die "$label: no requests completed"
    fi
    if [ "$non2xx" != 0 ] || [ "$sockerr" != 0 ]; then
        cat "$out" >&2
        bench_die "$label: $non2xx non-2xx responses and $sockerr socket errors"
    fi
    if [ "$path" = hit ] && [ $(((oafter - obefore) * 100)) -gt "$total" ]; then
        if [ "$section" = pinned ]; then
            bench_die "$label: the origin served $((oafter - obefore)) of $total requests: not hits"
        fi
        # With several workers a server may keep a cache per worker (Squid
        # SMP's memory cache): said with the figures, not fatal.
        echo "$label: the origin served $((oafter - obefore)) of $total requests" >>"$T/not-hits.txt"
        bench_log "$label: the origin served $((oafter - obefore)) of $total requests (not all hits)"
    fi
    [ "$path" = hit ] && check_path "$label, after the run" "$SRV_KIND" "$url" hit
    us="$(awk -v t="$((after - before))" -v n="$total" -v hz="$TICK" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')"
    # "times" prints the shell's line, then its children's: "0m1.250s 0m3.500s".
    wrkus="$(awk -v n="$total" 'NR == 2 {
            t = 0
            for (i = 1; i <= 2; i++) { split($i, p, /[ms]/); t += p[1] * 60 + p[2] }
            printf "%.1f", t * 1e6 / n
        }' "$out.times")"
    ous="$(awk -v t="$((ocpu1 - ocpu0))" -v n="$total" -v hz="$TICK" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')"
    stolen="$(awk -v a="$steal0" -v b="$steal1" 'BEGIN {
            split(a, x, " "); split(b, y, " ")
            printf "%.1f", (y[2] > x[2] ? 100 * (y[1] - x[1]) / (y[2] - x[2]) : 0) }')"
    printf '%s %s %s %s %s %s %s %s %s\n' "$section" "$row" "$path" "$round" "$rps" "$us" "${wrkus:-0}" "$ous" "$stolen" >>"$RESULTS"
    MEASURED=$((MEASURED + total + $(awk '/requests in/ {print $1}' "$out.warmup")))
    bench_log "round $round $(row_label "$row") $path: $rps req/s, $us CPU us/request (wrk $wrkus, origin $ous; $stolen% of the machine stolen)"
}

# run_row SECTION ROW ROUND: start ROW, measure both paths (hit first in odd
# rounds), stop it, check its access log saw the requests.
run_row() {
    local section="$1" row="$2" round="$3" slug="$1-$2-$3" paths=()
    local threads oport odir pin=() load=() p
    # (in the order given in odd rounds, the other way round in even ones)
    for p in $PATHS; do
        if [ $((round % 2)) = 1 ]; then paths+=("$p"); else paths=("$p" ${paths[@]+"${paths[@]}"}); fi
    done
    # It caches nothing: it answers as a hit does.
    case "$row" in bare|floor) [[ " $PATHS " == *" hit "* ]] && paths=(hit) || return 0 ;; esac
    if [ "$section" = pinned ]; then
        threads=1 oport="$PINNED_ORIGIN_PORT" odir="$T/origin-pinned" ORIGIN_PID="$PINNED_ORIGIN_PID"
        pin=("${PIN_PROXY[@]}") load=("${PIN_LOAD[@]}")
    else
        threads=2 oport="$UNPINNED_ORIGIN_PORT" odir="$T/origin-unpinned" ORIGIN_PID="$UNPINNED_ORIGIN_PID"
    fi
    start_server "$row" "$slug" "$oport" ${pin[@]+"${pin[@]}"}
    [ "$section" = pinned ] && check_pinned "$SRV_PID" "$(row_label "$row")"
    bench_log "$(row_label "$row") (round $round): processes $(tree_pids "$SRV_PID" | paste -sd, -)"
    MEASURED=0
    local path
    for path in "${paths[@]}"; do
        measure "$section" "$row" "$path" "$round" "$threads" "$odir" ${load[@]+"${load[@]}"}
    done
    [ "$section" = pinned ] && check_pinned "$SRV_PID" "$(row_label "$row")"
    stop_tree "$SRV_PID"
    if [ -n "$SRV_ACCESS" ]; then
        local lines
        lines="$(log_lines "$SRV_ACCESS")"
        [ "$lines" -ge "$MEASURED" ] \
            || bench_die "$(row_label "$row"): $lines lines in its access log $SRV_ACCESS for $MEASURED requests"
        printf '%s %s %s\n' "$row" "$lines" "$( (grep -h -m1 -E 'GET |"GET"' "$SRV_ACCESS" || true) | cut -c1-150)" >>"$T/access-samples.txt"
    fi
    # The logs and caches of a finished row are no longer needed (they grow
    # by tens of MB a row).
    if [ "${BENCH_KEEP_TMP:-0}" != 1 ]; then
        rm -rf "$T/$slug/cache" "$T/$slug/access.log" "$T/$slug"/twistd.log* "$T/$slug/stdout.log"
    fi
}

# rotate N WORDS...: WORDS rotated left by N.
rotate() {
    local n="$1"; shift
    local a=("$@") i
    local k=${#a[@]}
    for ((i = 0; i < k; i++)); do printf '%s\n' "${a[$(((i + n) % k))]}"; done
}

read -r -a rows <<<"$ROWS"
read -r -a wrows <<<"$WORKER_ROWS"
for round in $(seq "$ROUNDS"); do
    for row in $(rotate $((round - 1)) "${rows[@]}"); do
        run_row pinned "$row" "$round"
    done
done
if [ "$WORKERS" = 1 ]; then
    for round in $(seq "$ROUNDS"); do
        # What the machine gives one busy loop and two at once, this round.
        for n in 1 2; do
            spun="$("$PY" "$BENCH_DIR/spin.py" "$n" "$DURATION")" || bench_die "bench/spin.py $n failed"
            printf 'spin %s cpu %s %s\n' "$n" "$round" "$spun" >>"$RESULTS"
            bench_log "round $round: $n busy loop(s) got ${spun% *} CPUs, ${spun#* }% stolen"
        done
        for row in $(rotate $((round - 1)) "${wrows[@]}"); do
            run_row unpinned "$row" "$round"
        done
    done
fi

# --- report ------------------------------------------------------------------
# The median of a[1..n] (sorts a), for the awk programs below.
AWK_MEDIAN='
function median(a, n,    i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
'
twisted_version="$("$PY" -c 'import twisted; print(twisted.__version__)' 2>/dev/null || echo '?')"
squid_version="$( (squid -v 2>/dev/null || true) | awk 'NR == 1 {print $NF}')"
nginx_version="$(nginx -v 2>&1 | awk -F/ '{print $2}')"
varnish_version="$( (varnishd -V 2>&1 || true) | awk -F'[- ]' 'NR == 1 {print $3}')"

# report SECTION BASE1 BASE2 ROWS...: per path, medians and the medians of the
# per-round ratios to the rows BASE1 and BASE2 (req/s: row/base, higher is
# faster; CPU: row/base, lower is cheaper).
report() {
    local section="$1" b1="$2" b2="$3" row labels=""
    shift 3
    for row in "$@"; do labels="$labels$row=$(row_label "$row")|"; done
    awk -v section="$section" -v b1="$b1" -v b2="$b2" -v order="$*" -v labels="$labels" -v pathlist="$PATHS" "$AWK_MEDIAN"'
# ratio_median(KIND, ROW, BASE, PATH): median over rounds of ROW/BASE.
function ratio_median(kind, row, base, path,    r, n, a) {
    n = 0
    for (r = 1; r <= rounds; r++)
        if ((row, path, r) in rps && (base, path, r) in rps)
            a[++n] = kind == "rps" ? rps[row, path, r] / rps[base, path, r] : us[row, path, r] / us[base, path, r]
    return n ? sprintf("%.2f", median(a, n)) : "-"
}
function col(row, path, kind,    r, n, a) {
    n = 0
    for (r = 1; r <= rounds; r++) if ((row, path, r) in rps) a[++n] = kind == "rps" ? rps[row, path, r] : us[row, path, r]
    return n ? median(a, n) : ""
}
$1 == section { rps[$2, $3, $4] = $5; us[$2, $3, $4] = $6; if ($4 > rounds) rounds = $4 }
END {
    m = split(labels, lp, "|")
    for (i = 1; i < m; i++) { split(lp[i], kv, "="); name[kv[1]] = kv[2] }
    n = split(order, rows, " ")
    npath = split(pathlist, paths, " ")
    f = "%-36s %9s %8s   %7s %7s   %7s %7s\n"
    for (p = 1; p <= npath; p++) {
        path = paths[p]
        printf "%s (%s)\n", path == "hit" ? "HIT" : "PASS-THROUGH", path == "hit" ? "Cache-Control: public, max-age=3600" : "Cache-Control: no-store"
        printf f, "", "req/s", "CPU us", "req/s /", "", "CPU /", ""
        printf f, "row", "", "/req", b1, b2, b1, b2
        for (i = 1; i <= n; i++) {
            row = rows[i]
            if (col(row, path, "rps") == "") continue
            printf f, name[row], sprintf("%.0f", col(row, path, "rps")), sprintf("%.1f", col(row, path, "us")),
                ratio_median("rps", row, b1, path), ratio_median("rps", row, b2, path),
                ratio_median("us", row, b1, path), ratio_median("us", row, b2, path)
        }
        printf "\n"
    }
}' "$RESULTS"
}

echo
echo "Defaults against defaults: GET 1 KiB through each server to an nginx origin"
echo "$ROUNDS interleaved rounds (row order rotated each round), wrk -c$CONNECTIONS -d${DURATION}s (+${WARMUP}s warm-up) a path; medians over rounds"
echo "nginx ${nginx_version:-?}, squid ${squid_version:-n/a}, varnish ${varnish_version:-n/a}, Twisted $twisted_version, $("$PY" -V 2>&1), $NCPU CPUs, $(uname -r)"
echo "cachingproxy $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO_ROOT" diff --quiet HEAD 2>/dev/null || echo ' (modified)'): disk cache on; twistd --logfile FILE (as under systemd's journal)"
echo
if [ "${#rows[@]}" -gt 0 ]; then
echo "== 1. pinned: server (all processes and threads) on CPU 0, wrk -t1 + origin on CPU 1"
echo "   ratios: median of the per-round ratios; req/s ratio > 1 is faster, CPU ratio < 1 is cheaper"
echo
report pinned squid varnish "${rows[@]}"
fi
case " ${rows[*]} " in
    *" bare "*|*" floor "*)
        echo "Hits as a fraction of the ceiling (bare) and of the strict-parsing floor (floor):"
        echo "req/s, medians of the per-round ratios"
        printf "    %-12s %8s %8s\n" row /bare /floor
        awk "$AWK_MEDIAN"'
function ratio(row, base,    r, n, a) {
    n = 0
    for (r = 1; r <= rounds; r++) if ((row, r) in rps && (base, r) in rps) a[++n] = rps[row, r] / rps[base, r]
    return n ? sprintf("%.2f", median(a, n)) : "-"
}
$1 == "pinned" && $3 == "hit" { rps[$2, $4] = $5; rows[$2] = 1; if ($4 > rounds) rounds = $4 }
END {
    for (row in rows) printf "    %-12s %8s %8s\n", row, ratio(row, "bare"), ratio(row, "floor")
}' "$RESULTS" | sort
        echo
        ;;
esac
if [ "$WORKERS" = 1 ]; then
    echo "== 2. workers: nothing pinned, wrk -t2, origin with 2 workers"
    echo
    [ "$PIPELINE" -gt 1 ] && echo "   wrk sends $PIPELINE requests in one write (PIPELINE=$PIPELINE)" && echo
    report unpinned squid-w2 cp-w1 "${wrows[@]}"
    echo "Two workers against one, per server: w2/w1 is the median of the per-round req/s ratios."
    echo "CPUs = req/s x (server + wrk + origin CPU us per request) / 1e6: what the run used of the machine."
    echo "Ceiling = the w2/w1 the run would show if every cost per request stayed as with one worker"
    echo "and the run used 2 CPUs (/2 CPU), or what two busy loops got that round (/spin):"
    echo "that many CPUs / (CPUs of w1 / req/s of w1) / req/s of w1.  Stolen: the share of the"
    echo "machine's CPU time its host gave to others during the run (steal in /proc/stat)."
    awk "$AWK_MEDIAN"'
function cpus(row, path, r) {
    return rps[row, path, r] * (us[row, path, r] + wus[row, path, r] + ous[row, path, r]) / 1e6
}
# stat(KIND, SERVER, PATH): median over the rounds where both w1 and w2 ran.
function stat(kind, sv, path,    r, n, a, w1, w2, v) {
    n = 0
    w1 = sv "-w1"; w2 = sv "-w2"
    for (r = 1; r <= rounds; r++) {
        if (!((w1, path, r) in rps) || !((w2, path, r) in rps)) continue
        if (kind == "ratio") v = rps[w2, path, r] / rps[w1, path, r]
        else if (kind == "ceiling") v = 2 / cpus(w1, path, r)
        else if (kind == "spun") { if (!(r in spin2)) continue; v = spin2[r] / cpus(w1, path, r) }
        else if (kind == "cpus1") v = cpus(w1, path, r)
        else if (kind == "cpus2") v = cpus(w2, path, r)
        else if (kind == "us1") v = us[w1, path, r]
        else if (kind == "us2") v = us[w2, path, r]
        else if (kind == "wrk1") v = wus[w1, path, r]
        else if (kind == "wrk2") v = wus[w2, path, r]
        else if (kind == "st1") v = st[w1, path, r]
        else if (kind == "st2") v = st[w2, path, r]
        a[++n] = v
    }
    return n ? median(a, n) : ""
}
function fmt(x, f) { return x == "" ? "-" : sprintf(f, x) }
$1 == "unpinned" {
    rps[$2, $3, $4] = $5; us[$2, $3, $4] = $6; wus[$2, $3, $4] = $7; ous[$2, $3, $4] = $8; st[$2, $3, $4] = $9
    if ($4 > rounds) rounds = $4
}
$1 == "spin" { if ($2 == 1) spin1[$4] = $5; else { spin2[$4] = $5; spinst[$4] = $6 } }
END {
    n = 0
    for (r in spin2) if (r in spin1) { sr[++n] = spin2[r] / spin1[r]; s1[n] = spin1[r]; s2[n] = spin2[r]; ss[n] = spinst[r] }
    if (n) printf "    Two busy loops (bench/spin.py) got %.2f CPUs against one loop%s %.2f: %.2fx, %.0f%% stolen (medians)\n",
        median(s2, n), "\047s", median(s1, n), median(sr, n), median(ss, n)
    f = "    %-5s %-13s %6s %7s %7s %6s %6s %7s %7s %6s %6s %6s %6s\n"
    printf f, "", "", "", "ceiling", "ceiling", "", "", "us/req", "us/req", "wrk", "wrk", "stolen", "stolen"
    printf f, "path", "server", "w2/w1", "/2 CPU", "/spin", "CPUs1", "CPUs2", "w1", "w2", "w1", "w2", "w1 %", "w2 %"
    ns = split("cp squid nginx", servers, " ")
    for (p = 1; p <= 2; p++) {
        path = p == 1 ? "hit" : "pass"
        for (i = 1; i <= ns; i++) {
            sv = servers[i]
            if (stat("ratio", sv, path) == "") continue
            printf f, path, sv == "cp" ? "cachingproxy" : sv,
                fmt(stat("ratio", sv, path), "%.2f"), fmt(stat("ceiling", sv, path), "%.2f"), fmt(stat("spun", sv, path), "%.2f"),
                fmt(stat("cpus1", sv, path), "%.2f"), fmt(stat("cpus2", sv, path), "%.2f"),
                fmt(stat("us1", sv, path), "%.1f"), fmt(stat("us2", sv, path), "%.1f"),
                fmt(stat("wrk1", sv, path), "%.1f"), fmt(stat("wrk2", sv, path), "%.1f"),
                fmt(stat("st1", sv, path), "%.0f"), fmt(stat("st2", sv, path), "%.0f")
        }
    }
}' "$RESULTS"
    echo
    if [ -s "$T/not-hits.txt" ]; then
        echo "Hit rows that were not all hits:"
        sed 's/^/    /' "$T/not-hits.txt"
    fi
fi
echo "Rows: cachingproxy defaults = no logging option: the access log goes to the twistd log file;"
echo "  squid = its default access log (daemon module, logformat squid, to a file), cache_mem default;"
echo "  varnish = varnishd as installed (default storage and VCL, no varnishncsa);"
echo "  nginx = proxy_cache with the default combined access log to a file, upstream keepalive 32."
echo "  cachingproxy --workers 2: the parent relays its workers' access lines to the --logfile file."
echo "Every run: 0 non-2xx, 0 socket errors; hits checked before and after the run and by the origin's log."
echo "Access log lines per row (round 1; both paths, warm-ups and checks), first access line:"
awk '!seen[$1]++ { print "    " $0 }' "$T/access-samples.txt"
