#!/usr/bin/env python3
"""
Memory per idle client connection: open ``--connections`` (default 10,000)
idle TCP connections to one cachingproxy process and compare its resident
memory (VmRSS from /proc/PID/status) before and after.

    .venv/bin/python bench/conn_memory.py [--connections 10000] [--sources 4]

The proxy runs as a user would run it (``twistd -n cachingproxy``, reverse
mode, no cache, no access log) with ``--idle-timeout 600`` (so no
connection is closed while it is measured) and ``--max-connections`` above
the count, under a ``ulimit -n`` (RLIMIT_NOFILE, set for the child before
it starts) high enough for every connection. This script raises its own
limit too (as root it may raise the hard limit; otherwise up to it).

The connections are spread over a few loopback source addresses
(127.0.0.2, 127.0.0.3, ...) so the ephemeral ports of one address are not
exhausted; they are opened in batches and never send a byte. The count
is confirmed by the proxy itself (``connections`` in
``/_cachingproxy/health``) before RSS is read.

Printed: RSS before, after half and after all connections, the cost per
connection (bytes) for each step, and RSS once they are closed again.
Everything is on 127.0.0.1; the run is bounded by ``--timeout``.
"""

import argparse
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
VENV_BIN = os.path.join(REPO_ROOT, ".venv", "bin")


def log(msg):
    sys.stderr.write("[conn_memory] %s\n" % (msg,))
    sys.stderr.flush()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def settled_rss_kb(pid, seconds=2.0):
    """The lowest of a few readings over C{seconds} (ignores transients)."""
    readings = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        r = rss_kb(pid)
        if r is None:
            return None
        readings.append(r)
        time.sleep(0.25)
    return min(readings)


def set_nofile(limit):
    """Raise RLIMIT_NOFILE to C{limit} (the hard limit too, when allowed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < limit:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return limit
        except (ValueError, OSError):
            limit = hard
    if soft < limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def health(port, timeout=5.0):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET /_cachingproxy/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def open_connections(port, count, sources, batch, deadline):
    """
    Open C{count} idle connections from C{sources} (round robin).

    @return: the connected sockets, and how many failed.
    """
    sel = selectors.DefaultSelector()
    done = []
    failed = 0
    pending = 0
    made = 0
    while (len(done) + failed) < count and time.monotonic() < deadline:
        while made < count and pending < batch:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            source = sources[made % len(sources)]
            made += 1
            try:
                s.bind((source, 0))
                s.setblocking(False)
                err = s.connect_ex(("127.0.0.1", port))
            except OSError:
                s.close()
                failed += 1
                continue
            if err not in (0, 115):  # EINPROGRESS
                s.close()
                failed += 1
                continue
            sel.register(s, selectors.EVENT_WRITE)
            pending += 1
        for key, _ in sel.select(1.0):
            s = key.fileobj
            sel.unregister(s)
            pending -= 1
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                done.append(s)
            else:
                s.close()
                failed += 1
    for key in list(sel.get_map().values()):
        sel.unregister(key.fileobj)
        key.fileobj.close()
        failed += 1
    sel.close()
    return done, failed


def wait_for_count(port, want, deadline):
    """Wait until the proxy reports C{want} open connections (+ the probe)."""
    seen = None
    while time.monotonic() < deadline:
        h = health(port)
        if h is not None:
            seen = h.get("connections")
            # The probe's own connection is counted too.
            if seen is not None and seen >= want + 1:
                return seen - 1
        time.sleep(0.2)
    return None if seen is None else seen - 1


def run(args):
    need = args.connections + 1000
    mine = set_nofile(need + 1000)
    if mine < need:
        log("ERROR: RLIMIT_NOFILE is %d here; need %d (run as root or raise the hard limit)"
            % (mine, need))
        return 1
    deadline = time.monotonic() + args.timeout
    tmp = tempfile.mkdtemp(prefix="cachingproxy-connmem.")
    port = free_port()
    argv = [os.path.join(VENV_BIN, "twistd"), "-n", "--pidfile=", "cachingproxy",
            "--port", "tcp:%d:interface=127.0.0.1:backlog=4096" % port,
            "--upstream", "http://127.0.0.1:9", "--no-access-log", "--cache-dir", "none",
            "--idle-timeout", "600", "--header-timeout", "600",
            "--max-connections", str(args.connections + 5000)]
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    limit = need + 1000

    def child_limits():
        # As `ulimit -n LIMIT` would, for the proxy only.
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    pin = ["taskset", "-c", "0"] if (os.cpu_count() or 1) >= 2 and shutil.which("taskset") \
        and not args.no_pin else []
    logpath = os.path.join(tmp, "proxy.log")
    log("proxy (ulimit -n %d): %s" % (limit, " ".join(pin + argv)))
    with open(logpath, "wb") as logf:
        proxy = subprocess.Popen(pin + argv, stdout=logf, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=env,
                                 preexec_fn=child_limits)
    socks = []
    try:
        while health(port, 1.0) is None:
            if proxy.poll() is not None or time.monotonic() > deadline:
                with open(logpath, "rb") as f:
                    log("proxy did not start:\n" + f.read()[-2000:].decode(errors="replace"))
                return 1
            time.sleep(0.1)
        with open("/proc/%d/limits" % proxy.pid) as f:
            for line in f:
                if line.startswith("Max open files"):
                    log("proxy: " + " ".join(line.split()))
        # A few requests first, so what they allocate once is not counted.
        for _ in range(20):
            health(port)
        sources = ["127.0.0.%d" % (2 + i) for i in range(args.sources)]
        before = settled_rss_kb(proxy.pid)
        steps = []
        half = args.connections // 2
        for target in (half, args.connections):
            got, failed = open_connections(port, target - len(socks), sources, args.batch,
                                           deadline)
            socks.extend(got)
            counted = wait_for_count(port, len(socks), deadline)
            after = settled_rss_kb(proxy.pid)
            steps.append((len(socks), failed, counted, after))
            log("%d connections open (%d failed), proxy counts %s, RSS %.1f MiB"
                % (len(socks), failed, counted, (after or 0) / 1024))
        alive = proxy.poll() is None
        for s in socks:
            s.close()
        socks = []
        wait_for_count(port, 0, min(deadline, time.monotonic() + 30))
        closed = settled_rss_kb(proxy.pid)

        print()
        print("Idle client connections to one cachingproxy process (%s)"
              % ("pinned to CPU 0" if pin else "not pinned"))
        print("  source addresses:       %s" % ", ".join(sources))
        print("  RSS before:             %.1f MiB" % (before / 1024))
        prev_n, prev_rss = 0, before
        for n, failed, counted, after in steps:
            print("  RSS with %5d open:    %.1f MiB  (proxy counts %s; %d failed)"
                  % (n, after / 1024, counted, failed))
            if n > prev_n:
                print("    per connection:       %.0f bytes over the last %d"
                      % ((after - prev_rss) * 1024 / (n - prev_n), n - prev_n))
            prev_n, prev_rss = n, after
        n, _, counted, after = steps[-1]
        per = (after - before) * 1024 / n if n else float("nan")
        print("  per connection (all):   %.0f bytes  (%.1f KiB)" % (per, per / 1024))
        print("  RSS after closing all:  %.1f MiB" % ((closed or 0) / 1024))
        ok = alive and n == args.connections and counted == args.connections
        if not ok:
            print("  INCOMPLETE: %d of %d connections open, proxy counted %s, proxy %s"
                  % (n, args.connections, counted, "alive" if alive else "EXITED"))
        return 0 if ok else 1
    finally:
        for s in socks:
            s.close()
        if proxy.poll() is None:
            proxy.terminate()
            try:
                proxy.wait(10)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait(5)
        if args.keep_tmp:
            log("keeping temp dir %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=10000,
                   help="idle connections to open (default %(default)s)")
    p.add_argument("--sources", type=int, default=4,
                   help="loopback source addresses 127.0.0.2... (default %(default)s)")
    p.add_argument("--batch", type=int, default=500,
                   help="connects in flight at once (default %(default)s)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="hard limit for the run, s (default %(default)s)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the proxy to CPU 0")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (proxy log)")
    args = p.parse_args(argv)
    if args.connections < 2 or args.sources < 1 or args.batch < 1:
        p.error("--connections >= 2, --sources >= 1, --batch >= 1")

    def _bye(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _bye)
    signal.signal(signal.SIGALRM, _bye)
    signal.alarm(int(args.timeout) + 60)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
