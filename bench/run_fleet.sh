#!/usr/bin/env bash
# The fleet tier (--redis): collapsing across proxies, what a hit from Redis
# costs, and what configuring it costs local hits.  One run starts its own
# redis-server (127.0.0.1, a free port, no persistence), its origin
# (bench/fleet_bench.py origin) and its proxies, and stops them on exit.
#
#   1. collapsing: BURSTS bursts of CLIENTS concurrent requests for one new
#      URL each (the origin answers after DELAY s), each request on its own
#      connection, spread round-robin over PROXIES proxies, each with its
#      own --cache-dir (a "machine"); origin requests per burst, median and
#      max, with Redis up (goal: 1) and with the --redis URL pointing at a
#      port nothing listens on (goal: at most one per proxy).
#   2. fleet hits: per round and size (1 KiB, 100 KiB), proxy A
#      (--cache-dir none --cache-memory 8M) stores COUNT new URLs in Redis
#      (4 connections, so that its bounded write queue drops nothing; checked
#      with its metrics); then bench/fleet_bench.py fetch takes each URL once
#      through proxy B (--cache-memory 0, a fresh --cache-dir): every
#      response must be a fleet hit (Cache-Status: ...; detail=fleet),
#      copied into B's disk tier; the same through proxy N (--cache-dir
#      none --cache-memory 256M): fleet hits copied into memory only; then
#      the same URLs again through B: local disk hits; and COUNT new URLs
#      through proxy C (--no-cache): plain misses.  CONNECTIONS keep-alive
#      connections.  req/s and the proxy's CPU microseconds per request
#      (utime + stime over the pass), medians over the rounds and medians of
#      the per-round ratios of both fleet rows to disk and to miss.
#   3. local hits: wrk on one hot URL (1 KiB) against a proxy with --redis
#      and one without (both --cache-memory 16M and a disk cache),
#      interleaved rounds; req/s, CPU us/request and the share of a CPU the
#      proxy used, medians and the median of the per-round ratios.
#
# Usage: bench/run_fleet.sh
# Environment:
#   PARTS="1 2 3 4"    which parts to run
#   PROXIES=3          proxies in part 1
#   BURSTS=20          bursts per case in part 1
#   CLIENTS=30         requests per burst
#   DELAY=0.2          seconds the origin takes to answer a burst URL
#   ROUNDS=3           rounds of part 2
#   HIT_ROUNDS=5       rounds of part 3 (each proxy once a round, the order
#                      alternating)
#   COUNT=2000         URLs per pass of 1 KiB objects in part 2
#   COUNT_LARGE=500    URLs per pass of 100 KiB objects in part 2
#   CONNECTIONS=16     keep-alive client connections in part 2
#   DURATION=8         seconds of measured wrk load per proxy and round (part 3)
#   WARMUP=2           seconds of unmeasured wrk load before each (part 3)
#   WRK_CONNECTIONS=50 wrk connections (1 thread) in part 3
#   WRITES=3000        new URLs per round of part 4
#   WRITE_CONNECTIONS=16 client connections in part 4
#   WRITE_ROUNDS=3     rounds of part 4
#   BENCH_NO_INSTALL=1 never call apt-get
#   BENCH_NO_PIN=1     do not pin (parts 2 and 3: the measured proxy on CPU 0;
#                      redis-server, origin, client, wrk and proxy A on CPU 1)
#   BENCH_KEEP_TMP=1   keep the temp dir (logs, raw output)
#
# Read the ratios, not the absolute numbers: the machine may be noisy.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PARTS="${PARTS:-1 2 3 4}"
PROXIES="${PROXIES:-3}"
BURSTS="${BURSTS:-20}"
CLIENTS="${CLIENTS:-30}"
DELAY="${DELAY:-0.2}"
ROUNDS="${ROUNDS:-3}"
HIT_ROUNDS="${HIT_ROUNDS:-5}"
COUNT="${COUNT:-2000}"
COUNT_LARGE="${COUNT_LARGE:-500}"
CONNECTIONS="${CONNECTIONS:-16}"
DURATION="${DURATION:-8}"
WARMUP="${WARMUP:-2}"
WRK_CONNECTIONS="${WRK_CONNECTIONS:-50}"
WRITES="${WRITES:-3000}"
WRITE_CONNECTIONS="${WRITE_CONNECTIONS:-16}"
WRITE_ROUNDS="${WRITE_ROUNDS:-3}"

bench_positive_ints PROXIES BURSTS CLIENTS ROUNDS HIT_ROUNDS COUNT COUNT_LARGE CONNECTIONS DURATION WARMUP \
    WRK_CONNECTIONS WRITES WRITE_CONNECTIONS WRITE_ROUNDS
for part in $PARTS; do
    case "$part" in 1|2|3|4) ;; *) bench_die "PARTS: unknown part $part (use 1 2 3 4)" ;; esac
done

bench_traps

bench_ensure_packages wrk:wrk curl:curl taskset:util-linux redis-server:redis-server redis-cli:redis-tools
for c in wrk curl redis-server redis-cli; do
    command -v "$c" >/dev/null 2>&1 || bench_die "$c is not installed"
done
bench_ensure_venv
cd "$REPO_ROOT"
bench_cachingproxy_available || bench_die "twistd cachingproxy --help fails"

bench_pin_setup
LOAD_NOTE="${PIN_NOTE/wrk + nginx origin share/redis-server, origin, clients and proxy A share}"
HIT_NOTE="${PIN_NOTE/nginx origin/origin + redis-server}"
bench_mktemp
T="$BENCH_TMP"
TICK="$(getconf CLK_TCK)"
FB=("$PY" "$BENCH_DIR/fleet_bench.py")

# --- redis-server and the origin, on the load CPU ------------------------------
bench_start_redis "$T" "${PIN_LOAD[@]}"
REDIS_PORT="$BENCH_REDIS_PORT"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

ORIGIN_PORT="$(bench_free_port)"
bench_start "$T/origin.log" "${PIN_LOAD[@]}" "${FB[@]}" origin --port "$ORIGIN_PORT" --delay "$DELAY"
bench_wait_http "http://127.0.0.1:$ORIGIN_PORT/obj/1/ready" "$BENCH_LAST_PID" "$T/origin.log" 30 \
    || bench_die "the origin did not start"
ORIGIN_URL="http://127.0.0.1:$ORIGIN_PORT"

# start_proxy NAME PIN... -- OPTIONS...: start cachingproxy NAME in front of
# the origin; sets PORT_<NAME> and PID_<NAME>.
start_proxy() {
    local name="$1" pin=() port
    shift
    while [ "$1" != -- ]; do pin+=("$1"); shift; done
    shift
    port="$(bench_free_port)"
    bench_cachingproxy_cmd "$port" "$ORIGIN_URL"
    bench_start "$T/$name.log" ${pin[@]+"${pin[@]}"} "${BENCH_CP_CMD[@]}" "$@"
    bench_wait_http "http://127.0.0.1:$port/_cachingproxy/health" "$BENCH_LAST_PID" "$T/$name.log" 60 \
        || bench_die "proxy $name did not start (log: $T/$name.log)"
    printf -v "PORT_$name" '%s' "$port"
    printf -v "PID_$name" '%s' "$BENCH_LAST_PID"
}

# stop_proxy NAME: stop it and forget its pid.
stop_proxy() {
    local pidvar="PID_$1" pid p kept=()
    pid="${!pidvar}"
    bench_stop "$pid"
    for p in "${BENCH_PIDS[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
    BENCH_PIDS=(${kept[@]+"${kept[@]}"})
}

# fleet_event NAME EVENT: the proxy's cachingproxy_fleet_events_total{event=EVENT}.
fleet_event() {
    local portvar="PORT_$1"
    curl -s -m 5 "http://127.0.0.1:${!portvar}/_cachingproxy/metrics" \
        | awk -v e="$2" '$1 == "cachingproxy_fleet_events_total{event=\"" e "\"}" {printf "%d", $2; found = 1}
                         END {if (!found) print 0}'
}

# median VALUES...: their median.
median() {
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

REPORT="$T/report.txt"
: >"$REPORT"

# --- 1. collapsing across proxies ------------------------------------------------
part1() {
    local down_port i ports case_name url
    down_port="$(bench_free_port)"
    for case_name in up down; do
        url="$REDIS_URL"
        [ "$case_name" = down ] && url="redis://127.0.0.1:$down_port"
        ports=""
        for i in $(seq "$PROXIES"); do
            start_proxy "c$i" -- --cache-dir "$T/collapse-$case_name-$i" --redis "$url"
            local portvar="PORT_c$i"
            ports="$ports${ports:+,}${!portvar}"
        done
        bench_log "part 1, Redis $case_name: $PROXIES proxies on ports $ports"
        "${FB[@]}" burst --proxies "$ports" --origin-port "$ORIGIN_PORT" --bursts "$BURSTS" \
            --clients "$CLIENTS" --label "redis-$case_name" >"$T/burst-$case_name.txt" 2>"$T/burst-$case_name.log" \
            || { cat "$T/burst-$case_name.log" >&2; bench_die "part 1 (Redis $case_name) failed"; }
        for i in $(seq "$PROXIES"); do stop_proxy "c$i"; done
        cat "$T/burst-$case_name.txt" >&2
    done
    {
        echo "== 1. collapsing across $PROXIES proxies (own --cache-dir each, 1 process each)"
        echo "   $BURSTS bursts of $CLIENTS concurrent requests for a new URL each, round-robin over the proxies; origin answers after ${DELAY}s"
        echo "   goal: 1 origin request per burst with Redis up; at most $PROXIES (one per proxy) with Redis down"
        echo "   Redis up:   $(cut -d: -f2- "$T/burst-up.txt")"
        echo "   Redis down (--redis to a port nothing listens on):"
        echo "              $(cut -d: -f2- "$T/burst-down.txt")"
        echo
    } >>"$REPORT"
}

# --- 2. fleet hits against disk hits and misses ----------------------------------
# pass NAME ROUND SIZE ROW PREFIX COUNT EXPECT: one fetch pass through
# proxy NAME; appends "ROUND SIZE ROW REQ/S US/REQ UNEXPECTED" to RESULTS2.
pass() {
    local name="$1" round="$2" size="$3" row="$4" prefix="$5" count="$6" expect="$7"
    local portvar="PORT_$1" pidvar="PID_$1" before after out
    before="$(bench_cpu_ticks "${!pidvar}")"
    out="$("${PIN_LOAD[@]}" "${FB[@]}" fetch --port "${!portvar}" --prefix "$prefix" --count "$count" \
        --connections "$CONNECTIONS" --expect "$expect" 2>>"$T/fetch.log")" \
        || { tail -n 5 "$T/fetch.log" >&2; bench_die "part 2: $row pass (round $round, $size B) failed"; }
    after="$(bench_cpu_ticks "${!pidvar}")"
    # shellcheck disable=SC2086
    set -- $out
    awk -v r="$round" -v s="$size" -v row="$row" -v n="$1" -v sec="$2" -v bad="$3" \
        -v t="$((after - before))" -v hz="$TICK" \
        'BEGIN { printf "%s %s %s %.0f %.1f %d\n", r, s, row, n / sec, t / hz * 1e6 / n, bad }' >>"$RESULTS2"
    bench_log "part 2 round $round ${size} B $row: $(tail -n 1 "$RESULTS2" | cut -d' ' -f4-) (req/s, CPU us/req, unexpected)"
}

part2() {
    RESULTS2="$T/results2.txt"
    : >"$RESULTS2"
    start_proxy a "${PIN_LOAD[@]}" -- --cache-dir none --cache-memory 8M --redis "$REDIS_URL"
    start_proxy m "${PIN_PROXY[@]}" -- --no-cache
    local round size count dropped before
    for round in $(seq "$ROUNDS"); do
        start_proxy b "${PIN_PROXY[@]}" -- --cache-dir "$T/fleet-b-$round" --cache-memory 0 \
            --redis "$REDIS_URL"
        start_proxy n "${PIN_PROXY[@]}" -- --cache-dir none --cache-memory 256M --redis "$REDIS_URL"
        for size in 1024 102400; do
            count="$COUNT"
            [ "$size" = 102400 ] && count="$COUNT_LARGE"
            # store COUNT new URLs in Redis through proxy A
            dropped="$(fleet_event a dropped_writes)"
            "${PIN_LOAD[@]}" "${FB[@]}" fetch --port "$PORT_a" --prefix "/obj/$size/r$round-" \
                --count "$count" --connections 4 --expect miss >/dev/null 2>>"$T/fetch.log" \
                || bench_die "part 2: storing through proxy A failed"
            # its writes go after the responses: wait until Redis stops growing
            before=-1
            for _ in $(seq 100); do
                local now
                now="$(redis-cli -p "$REDIS_PORT" dbsize)"
                [ "$now" = "$before" ] && break
                before="$now"
                sleep 0.3
            done
            [ "$(fleet_event a dropped_writes)" = "$dropped" ] \
                || bench_log "part 2: proxy A dropped $(($(fleet_event a dropped_writes) - dropped)) writes (queue full): fewer fleet hits"
            if [ $((round % 2)) = 1 ]; then
                pass b "$round" "$size" fleet "/obj/$size/r$round-" "$count" fleet
                pass n "$round" "$size" fleet-mem "/obj/$size/r$round-" "$count" fleet
                pass b "$round" "$size" disk "/obj/$size/r$round-" "$count" hit
                pass m "$round" "$size" miss "/obj/$size/m$round-" "$count" miss
            else
                pass m "$round" "$size" miss "/obj/$size/m$round-" "$count" miss
                pass n "$round" "$size" fleet-mem "/obj/$size/r$round-" "$count" fleet
                pass b "$round" "$size" fleet "/obj/$size/r$round-" "$count" fleet
                pass b "$round" "$size" disk "/obj/$size/r$round-" "$count" hit
            fi
        done
        stop_proxy b
        stop_proxy n
        rm -rf "$T/fleet-b-$round"
    done
    stop_proxy a
    stop_proxy m
    {
        echo "== 2. fleet hits: a local miss answered from Redis (copied into the disk tier), per process"
        echo "   $ROUNDS rounds; per round and size $COUNT (1 KiB) / $COUNT_LARGE (100 KiB) URLs, each fetched once per pass, $CONNECTIONS keep-alive connections"
        echo "   fleet = proxy B (--cache-memory 0, fresh --cache-dir, --redis), URLs stored in Redis by proxy A"
        echo "   fleet-mem = the same through proxy N (--cache-dir none --cache-memory 256M, --redis): copied into memory only"
        echo "   disk  = proxy B again on the same URLs (now on its disk); miss = proxy C (--no-cache) to the origin"
        echo "   $LOAD_NOTE"
        awk '
function median(a, n,    i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ rps[$1, $2, $3] = $4; us[$1, $2, $3] = $5; bad[$2, $3] += $6; if ($1 > rounds) rounds = $1 }
END {
    split("1024 102400", sizes, " ")
    nrows = split("fleet fleet-mem disk miss", rows, " ")
    printf "   %-8s %-9s %9s %10s %11s\n", "size", "row", "req/s", "CPU us/req", "unexpected"
    for (s = 1; s <= 2; s++) {
        size = sizes[s]
        for (i = 1; i <= nrows; i++) {
            row = rows[i]
            for (r = 1; r <= rounds; r++) { a[r] = rps[r, size, row]; b[r] = us[r, size, row] }
            printf "   %-8s %-9s %9.0f %10.1f %11d\n", size == 1024 ? "1 KiB" : "100 KiB", row, median(a, rounds), median(b, rounds), bad[size, row]
        }
        for (f = 1; f <= 2; f++) for (k = 3; k <= 4; k++) {
            for (r = 1; r <= rounds; r++) {
                a[r] = rps[r, size, rows[f]] / rps[r, size, rows[k]]
                b[r] = us[r, size, rows[f]] / us[r, size, rows[k]]
            }
            printf "   %-8s %14s req/s %.2f, CPU/req %.2f\n", "", rows[f] "/" rows[k], median(a, rounds), median(b, rounds)
        }
    }
}' "$RESULTS2"
        echo "   (unexpected: responses whose Cache-Status was not the row's, summed over the rounds)"
        echo
    } >>"$REPORT"
}

# --- 3. local hits with and without the fleet tier -------------------------------
# hits NAME ROUND: wrk on the hot URL through proxy NAME; appends
# "ROUND NAME REQ/S US/REQ CPU%" to RESULTS3 (CPU%: the share of a CPU the
# proxy used during the run; below 100 it waited, for CPU 0 taken by other
# processes or for wrk).
hits() {
    local name="$1" round="$2" portvar="PORT_$1" pidvar="PID_$1" url out before after
    url="http://127.0.0.1:${!portvar}/obj/1024/hot"
    out="$T/wrk-$name-$round.txt"
    curl -s -m 5 -o /dev/null "$url"
    curl -s -m 5 -D "$T/head-$name.txt" -o /dev/null "$url"
    grep -qiE '^cache-status:.*; hit' "$T/head-$name.txt" || bench_die "part 3: $name does not serve a hit"
    timeout $((WARMUP + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$WRK_CONNECTIONS" -d"${WARMUP}s" "$url" \
        >/dev/null 2>&1 || true
    before="$(bench_cpu_ticks "${!pidvar}")"
    timeout $((DURATION + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$WRK_CONNECTIONS" -d"${DURATION}s" "$url" \
        >"$out" 2>&1 || { cat "$out" >&2; bench_die "part 3: wrk failed"; }
    after="$(bench_cpu_ticks "${!pidvar}")"
    local rps total errors
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    total="$(awk '/requests in/ {print $1}' "$out")"
    errors="$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$out")"
    [ "$errors" = 0 ] || bench_die "part 3: $name had $errors errors in round $round (see $out)"
    awk -v r="$round" -v name="$name" -v rps="$rps" -v n="$total" -v t="$((after - before))" -v hz="$TICK" \
        -v d="$DURATION" 'BEGIN { printf "%s %s %s %.1f %.0f\n", r, name, rps, t / hz * 1e6 / n, t / hz / d * 100 }' >>"$RESULTS3"
    bench_log "part 3 round $round $name: $(tail -n 1 "$RESULTS3" | cut -d' ' -f3-) (req/s, CPU us/req, CPU %)"
}

part3() {
    RESULTS3="$T/results3.txt"
    : >"$RESULTS3"
    start_proxy fleet "${PIN_PROXY[@]}" -- --cache-dir "$T/hits-fleet" --cache-memory 16M --redis "$REDIS_URL"
    start_proxy local "${PIN_PROXY[@]}" -- --cache-dir "$T/hits-local" --cache-memory 16M
    local round
    for round in $(seq "$HIT_ROUNDS"); do
        if [ $((round % 2)) = 1 ]; then
            hits local "$round"; hits fleet "$round"
        else
            hits fleet "$round"; hits local "$round"
        fi
    done
    {
        echo "== 3. local hits (one hot 1 KiB URL, --cache-memory 16M + disk cache), with --redis and without"
        echo "   wrk -t1 -c$WRK_CONNECTIONS -d${DURATION}s (+${WARMUP}s warm-up), $HIT_ROUNDS interleaved rounds; $HIT_NOTE"
        awk '
function median(a, n,    i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ rps[$1, $2] = $3; us[$1, $2] = $4; cpu[$1, $2] = $5; if ($1 > rounds) rounds = $1 }
END {
    for (r = 1; r <= rounds; r++) {
        printf "   round %d: without %8.0f req/s %6.1f us/req (CPU %3d%%)   with --redis %8.0f req/s %6.1f us/req (CPU %3d%%)\n", r, rps[r, "local"], us[r, "local"], cpu[r, "local"], rps[r, "fleet"], us[r, "fleet"], cpu[r, "fleet"]
        a[r] = rps[r, "local"]; b[r] = us[r, "local"]; c[r] = rps[r, "fleet"]; d[r] = us[r, "fleet"]
        x[r] = rps[r, "fleet"] / rps[r, "local"]; y[r] = us[r, "fleet"] / us[r, "local"]
    }
    printf "   median: without %8.0f req/s %6.1f us/req   with --redis %8.0f req/s %6.1f us/req\n", median(a, rounds), median(b, rounds), median(c, rounds), median(d, rounds)
    printf "   with/without (median of the round ratios): req/s %.3f, CPU/req %.3f\n", median(x, rounds), median(y, rounds)
    printf "   (CPU %%: the share of a CPU the proxy used; below 100%% it waited, for CPU 0 or for wrk: req/s follows it, CPU/req does not)\n"
}' "$RESULTS3"
        echo
    } >>"$REPORT"
    stop_proxy fleet
    stop_proxy local
}

# --- 4. the write queue under a stream of misses ---------------------------------
# redis_settled: wait until Redis stops growing; prints its key count.
redis_settled() {
    local before=-1 now
    for _ in $(seq 100); do
        now="$(redis-cli -p "$REDIS_PORT" dbsize)"
        [ "$now" = "$before" ] && break
        before="$now"
        sleep 0.3
    done
    echo "$now"
}

# entries: how many entries (variant hashes) Redis holds.
entries() {
    redis-cli -p "$REDIS_PORT" --scan --pattern 'cp:{*}:e' | wc -l
}

part4() {
    local round out dropped failed keys0 keys1 before_d before_f
    RESULTS4="$T/results4.txt"
    : >"$RESULTS4"
    start_proxy w "${PIN_PROXY[@]}" -- --cache-dir none --cache-memory 64M --redis "$REDIS_URL"
    for round in $(seq "$WRITE_ROUNDS"); do
        redis_settled >/dev/null
        keys0="$(entries)"
        before_d="$(fleet_event w dropped_writes)"
        before_f="$(fleet_event w failed_writes)"
        out="$("${PIN_LOAD[@]}" "${FB[@]}" fetch --port "$PORT_w" --prefix "/obj/1024/w$round-" \
            --count "$WRITES" --connections "$WRITE_CONNECTIONS" --expect miss 2>>"$T/fetch.log")" \
            || bench_die "part 4: the store pass failed"
        redis_settled >/dev/null
        keys1="$(entries)"
        dropped=$(($(fleet_event w dropped_writes) - before_d))
        failed=$(($(fleet_event w failed_writes) - before_f))
        # shellcheck disable=SC2086
        set -- $out
        awk -v r="$round" -v n="$1" -v sec="$2" -v d="$dropped" -v f="$failed" -v k="$((keys1 - keys0))" \
            'BEGIN { printf "%s %.0f %d %d %d\n", r, n / sec, d, f, k }' >>"$RESULTS4"
        bench_log "part 4 round $round: $(tail -n 1 "$RESULTS4" | cut -d' ' -f2-) (req/s, dropped, failed, stored)"
    done
    stop_proxy w
    {
        echo "== 4. writes: $WRITES new 1 KiB URLs per round through one proxy (--cache-dir none --cache-memory 64M, --redis), $WRITE_CONNECTIONS connections, $WRITE_ROUNDS rounds"
        echo "   $LOAD_NOTE"
        awk '{ printf "   round %d: %6d req/s  dropped %5d  failed %5d  stored %5d of '"$WRITES"'\n", $1, $2, $3, $4, $5 }' "$RESULTS4"
        echo
    } >>"$REPORT"
}

for part in $PARTS; do
    "part$part"
done

echo
echo "Fleet tier: cachingproxy $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO_ROOT" diff --quiet HEAD 2>/dev/null || echo ' (modified)'), redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2)"
echo "$("$PY" -V 2>&1), $NCPU CPUs, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
cat "$REPORT"
