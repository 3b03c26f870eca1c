# shellcheck shell=bash
# Shared helpers for the bench/ scripts.  Source it; do not run it.
#
# Provides: REPO_ROOT, VENV, PY, bench_log, bench_die, bench_ensure_packages,
# bench_ensure_venv, bench_free_port, bench_start, bench_stop, bench_cleanup,
# bench_wait_http, bench_cachingproxy_available, bench_cachingproxy_cmd.

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
VENV="${BENCH_VENV:-$REPO_ROOT/.venv}"
PY="$VENV/bin/python"
# Debian puts nginx and squid in /usr/sbin, which is not always on PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

BENCH_PIDS=()       # processes we started; killed by bench_cleanup
BENCH_TMP=""        # temp dir; removed by bench_cleanup
_BENCH_POLICY_RC_CREATED=0

bench_log() { printf '[bench] %s\n' "$*" >&2; }
bench_die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

_bench_sudo() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        bench_die "need root (or sudo) to run: $*"
    fi
}

# bench_ensure_packages CMD:PKG ...
# Installs the Debian package PKG when command CMD is missing.  The distro
# services that come with nginx/squid are never started (policy-rc.d) and are
# stopped/disabled afterwards in case something started them anyway.
bench_ensure_packages() {
    local spec cmd pkg missing=()
    for spec in "$@"; do
        cmd="${spec%%:*}"; pkg="${spec#*:}"
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "${BENCH_NO_INSTALL:-0}" = 1 ]; then
        bench_log "missing packages (BENCH_NO_INSTALL=1, not installing): ${missing[*]}"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || bench_die "missing ${missing[*]} and no apt-get to install them"
    bench_log "installing from Debian: ${missing[*]}"
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # Forbid maintainer scripts from starting services during the install.
        _bench_sudo sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
        _BENCH_POLICY_RC_CREATED=1
    fi
    local rc=0
    _bench_sudo apt-get update -q >&2 || rc=$?
    if [ "$rc" -eq 0 ]; then
        _bench_sudo env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 || rc=$?
    fi
    if [ "$_BENCH_POLICY_RC_CREATED" = 1 ]; then
        _bench_sudo rm -f /usr/sbin/policy-rc.d
        _BENCH_POLICY_RC_CREATED=0
    fi
    _bench_disable_system_services "${missing[@]}"
    [ "$rc" -eq 0 ] || bench_log "apt-get failed (rc=$rc); continuing with what is available"
}

# Make sure the distro's own nginx/squid services are neither running nor
# enabled.  We only ever run private instances with private config files.
_bench_disable_system_services() {
    local pkg
    for pkg in "$@"; do
        case "$pkg" in nginx|squid) ;; *) continue ;; esac
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
            _bench_sudo systemctl disable --now "$pkg" >/dev/null 2>&1 || true
        else
            if command -v update-rc.d >/dev/null 2>&1; then
                _bench_sudo update-rc.d "$pkg" disable >/dev/null 2>&1 || true
            fi
            if [ -x "/etc/init.d/$pkg" ]; then
                _bench_sudo "/etc/init.d/$pkg" stop >/dev/null 2>&1 || true
            fi
        fi
    done
}

# Create the project venv if it does not exist.
bench_ensure_venv() {
    if [ -x "$PY" ]; then
        return 0
    fi
    bench_log "no venv at $VENV: creating it and installing the project (pip install -e .)"
    [ -f "$REPO_ROOT/setup.cfg" ] || [ -f "$REPO_ROOT/pyproject.toml" ] || [ -f "$REPO_ROOT/setup.py" ] \
        || bench_die "no setup.cfg/pyproject.toml/setup.py in $REPO_ROOT; cannot pip install -e ."
    if ! python3 -m venv "$VENV" >&2; then
        rm -rf "$VENV"
        bench_ensure_packages "__none__:python3-venv"
        python3 -m venv "$VENV" >&2 || bench_die "python3 -m venv failed"
    fi
    "$VENV/bin/pip" install -q -e "$REPO_ROOT" >&2 || bench_die "pip install -e $REPO_ROOT failed"
}

# Print a free TCP port on 127.0.0.1.
bench_free_port() {
    "${PY:-python3}" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# bench_mktemp: create BENCH_TMP (world-traversable: nginx workers run as
# nobody and squid as proxy).
bench_mktemp() {
    BENCH_TMP="$(mktemp -d "${TMPDIR:-/tmp}/cachingproxy-bench.XXXXXX")"
    chmod 755 "$BENCH_TMP"
}

# bench_start LOGFILE CMD...: start CMD in the background, remember its pid in
# BENCH_LAST_PID and BENCH_PIDS.  CMD must exec the real server (no shell
# wrapper) so the pid is the server's own.
bench_start() {
    local logfile="$1"; shift
    "$@" >"$logfile" 2>&1 </dev/null &
    BENCH_LAST_PID=$!
    BENCH_PIDS+=("$BENCH_LAST_PID")
}

# bench_start_redis DIR [PIN...]: start a throwaway redis-server (no
# persistence, its files and DIR/redis.log in DIR) on a free port of
# 127.0.0.1, under the PIN command (taskset ...) if given; wait until it
# answers PING. Sets BENCH_REDIS_PORT and BENCH_LAST_PID.
bench_start_redis() {
    local dir="$1"; shift
    BENCH_REDIS_PORT="$(bench_free_port)"
    bench_start "$dir/redis.log" "$@" redis-server --port "$BENCH_REDIS_PORT" --bind 127.0.0.1 \
        --save '' --appendonly no --dir "$dir"
    for _ in $(seq 100); do
        redis-cli -p "$BENCH_REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.05
    done
    bench_die "redis-server did not start (see $dir/redis.log)"
}

# bench_stop PID: SIGTERM, wait up to 5 s, then SIGKILL.
bench_stop() {
    local pid="$1"
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
    local pid
    for pid in "${BENCH_PIDS[@]}"; do
        bench_stop "$pid"
    done
    BENCH_PIDS=()
    if [ "$_BENCH_POLICY_RC_CREATED" = 1 ]; then
        _bench_sudo rm -f /usr/sbin/policy-rc.d || true
    fi
    if [ -n "$BENCH_TMP" ] && [ -d "$BENCH_TMP" ]; then
        if [ "${BENCH_KEEP_TMP:-0}" = 1 ]; then
            bench_log "keeping temp dir $BENCH_TMP"
        else
            rm -rf "$BENCH_TMP"
        fi
    fi
}

# bench_wait_http URL PID LOGFILE [TIMEOUT_S]: poll URL with curl until it
# answers 200, for at most TIMEOUT_S seconds (default 30).  Fails early if
# PID exits.  Returns 0 when ready, 1 otherwise (after printing the log tail).
bench_wait_http() {
    local url="$1" pid="$2" logfile="$3" timeout="${4:-30}" code deadline
    deadline=$(( $(date +%s) + timeout ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            bench_log "process $pid exited before $url was ready; last log lines:"
            tail -n 20 "$logfile" >&2 || true
            return 1
        fi
        code="$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$url" 2>/dev/null || true)"
        [ "$code" = 200 ] && return 0
        sleep 0.1
    done
    bench_log "$url not ready after ${timeout}s (last status: ${code:-none}); last log lines:"
    tail -n 20 "$logfile" >&2 || true
    return 1
}

# twistd finds plugins on sys.path; put the work tree first so the
# cachingproxy plugin and package of this checkout are the ones used.
_bench_twistd_env() {
    env PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$@"
}

bench_cachingproxy_available() {
    [ -x "$VENV/bin/twistd" ] || return 1
    (cd "$REPO_ROOT" && _bench_twistd_env timeout 60 "$VENV/bin/twistd" cachingproxy --help) >/dev/null 2>&1
}

# bench_cachingproxy_cmd PORT UPSTREAM_URL: set the array
# BENCH_CP_CMD to the command line that runs cachingproxy in the foreground.
bench_cachingproxy_cmd() {
    # shellcheck disable=SC2034  # used by the scripts that source this file
    BENCH_CP_CMD=(env PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
        "$VENV/bin/twistd" -n --pidfile= cachingproxy
        --port "tcp:$1:interface=127.0.0.1" --upstream "$2" --no-access-log)
}

# bench_pin_setup: set NCPU, and PIN_PROXY / PIN_LOAD (taskset prefixes) and
# PIN_NOTE: the proxy alone on CPU 0, the load generator and the origin on
# CPU 1; no pinning with BENCH_NO_PIN set, or with fewer than 2 CPUs.
bench_pin_setup() {
    NCPU="$(nproc)"
    if [ -n "${BENCH_NO_PIN:-}" ]; then
        PIN_PROXY=()
        PIN_LOAD=()
        PIN_NOTE="NOT pinned (BENCH_NO_PIN): proxy, wrk and origin share every CPU"
    elif [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
        PIN_PROXY=(taskset -c 0)
        PIN_LOAD=(taskset -c 1)
        PIN_NOTE="proxy on CPU 0; wrk + nginx origin share CPU 1"
    else
        PIN_PROXY=()
        PIN_LOAD=()
        PIN_NOTE="NOT pinned ($NCPU CPU(s) or no taskset): numbers are even noisier"
    fi
}

# bench_positive_ints VAR...: die unless each named variable holds a
# positive integer.
bench_positive_ints() {
    local v
    for v in "$@"; do
        if ! [[ "${!v}" =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then
            bench_die "$v must be a positive integer (got '${!v}')"
        fi
    done
}

# bench_traps: stop everything started (bench_cleanup) however the script
# ends.
bench_traps() {
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# bench_cpu_ticks PID: the process's utime + stime, in clock ticks.
bench_cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
