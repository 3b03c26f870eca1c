#!/usr/bin/env python3
"""
Cache-hit memory benchmark: many clients download one large object that is
cached on disk only, while the proxy's resident memory is sampled.

    20 clients --> cachingproxy (disk cache, 16M memory tier) --> nginx origin

A 100 MiB object does not fit the 16 MiB memory tier, so every hit must be
streamed from the disk cache.  A proxy that reads the whole cached file into
memory (or buffers it for slow sockets) grows by about 100 MiB per client; a
streaming one stays close to its idle size.

The script:
  * writes a SIZE-byte file (default 100 MiB) of os.urandom bytes and its
    SHA-256, and starts nginx (1 worker, CPU 1) serving it with
    ``Cache-Control: public, max-age=3600`` (and a 1 KiB /small.bin for
    readiness polling); nginx logs every request it serves;
  * starts cachingproxy in reverse mode with ``--cache-dir TMP/cache
    --cache-memory 16M`` (CPU 0), exactly as a user would via twistd;
  * fills the cache with one request (must be a MISS), then checks that the
    next request is a HIT; every download's length and SHA-256 are checked;
  * records the proxy's idle VmRSS after the fill, then starts CLIENTS
    (default 20) threads that connect, wait at a barrier and download the
    object at once (raw sockets, each body hashed); VmRSS is read from
    /proc/PID/status every 0.1 s meanwhile;
  * prints idle RSS, peak RSS, peak minus idle, whether that is under 64 MiB,
    total seconds and aggregate MiB/s.

All traffic is on 127.0.0.1; the whole run is bounded by --timeout (300 s).
Exit status: 0 when every download was complete, correct and a hit (or
cachingproxy is not available), 1 otherwise, or with --fail-over-limit when
peak minus idle was not under --limit-mib.
"""

import argparse
import hashlib
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

# Shared helpers of the large-body benchmark (same folder).
from large_body import (  # noqa: E402
    REPO_ROOT,
    VENV_BIN,
    ChunkedDecoder,
    Procs,
    cachingproxy_available,
    free_port,
    read_status,
    tail,
    twistd_env,
    wait_ready,
)

MiB = 1024 * 1024
SMALL_BODY = b"s" * 1024
START = time.monotonic()


def log(msg):
    sys.stderr.write("[cache_hit_rss %5.1fs] %s\n" % (time.monotonic() - START, msg))
    sys.stderr.flush()


def parse_size(text):
    text = text.strip().upper()
    mult = 1
    for suffix, m in (("K", 1024), ("M", MiB), ("G", 1024 * MiB)):
        if text.endswith(suffix):
            text, mult = text[:-1], m
            break
    return int(text) * mult


# --------------------------------------------------------------------------
# Origin


def make_object(path, size):
    """Write size random bytes to path; return their SHA-256 hex digest."""
    h = hashlib.sha256()
    left = size
    with open(path, "wb") as f:
        while left:
            block = os.urandom(min(left, MiB))
            f.write(block)
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def start_origin(procs, tmp, pin, size):
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if not nginx:
        raise RuntimeError("nginx not found (bench/run_cache_rss.sh installs it)")
    www = os.path.join(tmp, "www")
    ngx = os.path.join(tmp, "nginx")
    os.makedirs(www)
    os.makedirs(ngx)
    digest = make_object(os.path.join(www, "big.bin"), size)
    with open(os.path.join(www, "small.bin"), "wb") as f:
        f.write(SMALL_BODY)
    port = free_port()
    conf = os.path.join(ngx, "nginx.conf")
    with open(conf, "w") as f:
        f.write(
            "worker_processes 1;\ndaemon off;\npid %(n)s/nginx.pid;\n"
            "error_log %(n)s/error.log warn;\nevents { worker_connections 256; }\n"
            "http {\n access_log %(n)s/access.log;\n sendfile on;\n keepalive_timeout 65s;\n"
            " default_type application/octet-stream;\n"
            " client_body_temp_path %(n)s/cb;\n proxy_temp_path %(n)s/px;\n"
            " fastcgi_temp_path %(n)s/fc;\n uwsgi_temp_path %(n)s/uw;\n scgi_temp_path %(n)s/sc;\n"
            " server {\n  listen 127.0.0.1:%(p)d;\n  root %(w)s;\n"
            '  add_header Cache-Control "public, max-age=3600" always;\n }\n}\n'
            % {"n": ngx, "p": port, "w": www}
        )
    proc = procs.start(pin + [nginx, "-p", ngx, "-c", conf], os.path.join(ngx, "stdout.log"))
    wait_ready(port, proc, os.path.join(ngx, "error.log"), 30)
    return port, digest, os.path.join(ngx, "access.log")


def origin_requests(access_log, path=b"/big.bin"):
    """How many requests for path the origin has served so far."""
    try:
        with open(access_log, "rb") as f:
            return sum(1 for line in f if b" " + path + b" " in line)
    except OSError:
        return 0


# --------------------------------------------------------------------------
# Client


class Download:
    """One GET of /big.bin over a raw socket, body length and SHA-256 checked."""

    def __init__(self, port, path, deadline):
        self.port = port
        self.path = path
        self.deadline = deadline
        self.sock = None
        self.status = None
        self.headers = {}
        self.got = 0
        self.digest = None
        self.error = None
        self.start = None
        self.end = None

    def connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def cache_result(self):
        """'HIT', 'MISS', ... from X-Cache, else from Cache-Status, else '-'."""
        x = self.headers.get(b"x-cache")
        if x:
            return x.split()[0].decode("latin-1").upper()
        cs = self.headers.get(b"cache-status", b"").lower()
        if b"; hit" in cs or b";hit" in cs:
            return "HIT"
        if b"fwd=" in cs:
            return "MISS"
        return "-"

    def describe_cache(self):
        return "; ".join(
            "%s: %s" % (k.decode("latin-1"), self.headers[k].decode("latin-1"))
            for k in (b"x-cache", b"cache-status", b"age")
            if k in self.headers
        ) or "no cache headers"

    def run(self):
        try:
            if self.sock is None:
                self.connect()
            self._get()
        except (OSError, ValueError) as e:
            self.error = "client error: %s" % (e,)
        finally:
            if self.end is None:
                self.end = time.monotonic()
            if self.sock is not None:
                self.sock.close()

    def _get(self):
        s = self.sock
        self.start = time.monotonic()
        s.sendall(
            b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: cachingproxy-bench\r\n"
            b"Connection: close\r\n\r\n" % (self.path.encode(), self.port)
        )
        head = b""
        while b"\r\n\r\n" not in head:
            d = s.recv(65536)
            if not d:
                self.error = "connection closed before response headers"
                return
            head += d
            if len(head) > 65536:
                self.error = "response headers too large"
                return
        head, rest = head.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ", 2)[1])
        for line in lines[1:]:
            if b":" in line:
                k, v = line.split(b":", 1)
                self.headers[k.strip().lower()] = v.strip()
        chunked = b"chunked" in self.headers.get(b"transfer-encoding", b"").lower()
        clen = self.headers.get(b"content-length")
        clen = int(clen) if clen is not None and not chunked else None
        dec = ChunkedDecoder() if chunked else None
        h = hashlib.sha256()
        buf = bytearray(256 * 1024)
        view = memoryview(buf)

        def consume(data):
            pieces = dec.feed(data) if dec else [data]
            for p in pieces:
                if clen is not None and self.got + len(p) > clen:
                    p = p[: clen - self.got]
                h.update(p)
                self.got += len(p)

        if rest:
            consume(rest)
        while True:
            if clen is not None and self.got >= clen:
                break
            if dec is not None and dec.state == "done":
                break
            if time.monotonic() > self.deadline:
                self.error = "timed out after %d bytes" % self.got
                break
            try:
                n = s.recv_into(view)
            except socket.timeout:
                self.error = "no data for 30s after %d bytes" % self.got
                break
            if n == 0:
                if clen is not None or dec is not None:
                    self.error = "connection closed early after %d bytes" % self.got
                break
            consume(view[:n])
        self.end = time.monotonic()
        self.digest = h.hexdigest()

    def ok(self, size, digest):
        return self.error is None and self.status == 200 and self.got == size and self.digest == digest


def single_get(port, deadline, size, digest, what):
    d = Download(port, "/big.bin", deadline)
    d.run()
    good = d.ok(size, digest)
    log("%s: status %s, %d bytes, %s, %s%s"
        % (what, d.status, d.got, "body OK" if good else "BODY WRONG", d.describe_cache(),
           ", error: %s" % d.error if d.error else ""))
    return d, good


class RssSampler(threading.Thread):
    def __init__(self, pid, interval):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            st = read_status(self.pid)
            if st is None:
                return
            self.peak_kb = max(self.peak_kb, st.get("VmRSS", 0))
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(2)


# --------------------------------------------------------------------------
# Main


def run(args):
    # Downloads stop at the deadline; SIGALRM (main) ends the run 10 s later
    # at the latest, leaving time to stop the children within --timeout.
    deadline = START + max(1.0, args.timeout - 15)
    ncpu = os.cpu_count() or 1
    pin_ok = not args.no_pin and ncpu >= 2 and shutil.which("taskset")
    pin_proxy = ["taskset", "-c", "0"] if pin_ok else []
    pin_load = ["taskset", "-c", "1"] if pin_ok else []
    if pin_ok:
        os.sched_setaffinity(0, {1})  # the clients

    if not cachingproxy_available():
        print("cachingproxy: not available")
        return 0

    tmp = tempfile.mkdtemp(prefix="cachingproxy-cacherss.")
    os.chmod(tmp, 0o755)  # nginx workers run as nobody
    procs = Procs()
    try:
        log("writing a %d-byte object and starting the nginx origin" % args.size)
        origin_port, digest, access_log = start_origin(procs, tmp, pin_load, args.size)
        log("origin on 127.0.0.1:%d, sha256 %s" % (origin_port, digest))

        port = free_port()
        argv = pin_proxy + [
            os.path.join(VENV_BIN, "twistd"), "-n", "--pidfile=", "cachingproxy",
            "--port", "tcp:%d:interface=127.0.0.1" % port,
            "--upstream", "http://127.0.0.1:%d" % origin_port, "--no-access-log",
            "--cache-dir", os.path.join(tmp, "cache"), "--cache-memory", args.cache_memory,
        ] + args.proxy_arg
        log("proxy: %s" % " ".join(shlex.quote(a) for a in argv))
        plog = os.path.join(tmp, "proxy.log")
        proxy = procs.start(argv, plog, cwd=REPO_ROOT, env=twistd_env())
        wait_ready(port, proxy, plog, 30)
        fresh = read_status(proxy.pid) or {}

        problems = []
        # Fill: the first request must be a miss that stores the object.
        fill, good = single_get(port, deadline, args.size, digest, "fill")
        if not good:
            problems.append("fill request failed or body wrong")
        if fill.cache_result() != "MISS":
            problems.append("fill request was not a MISS (%s)" % fill.describe_cache())
        # The store may complete just after the response: allow a few tries.
        hit = None
        for attempt in range(1, 4):
            hit, good = single_get(port, deadline, args.size, digest, "hit check %d" % attempt)
            if not good:
                problems.append("hit check download failed or body wrong")
                break
            if hit.cache_result() == "HIT":
                break
            time.sleep(0.5)
        hit_verified = hit is not None and hit.cache_result() == "HIT" and not problems
        if hit is not None and hit.cache_result() != "HIT":
            problems.append("second request was not a HIT (%s): NOT measuring hits" % hit.describe_cache())

        time.sleep(args.settle)
        idle = read_status(proxy.pid) or {}
        idle_kb = idle.get("VmRSS", 0)
        origin_before = origin_requests(access_log)

        if time.monotonic() > deadline:
            raise RuntimeError("the %ds limit was reached before the concurrent downloads (%s)"
                               % (args.timeout, "; ".join(problems) or "fill too slow"))
        log("%d clients downloading the cached object at once" % args.clients)
        clients = [Download(port, "/big.bin", deadline) for _ in range(args.clients)]
        for c in clients:
            try:
                c.connect()
            except OSError as e:
                c.error = "connect failed: %s" % (e,)
        barrier = threading.Barrier(len(clients) + 1)

        def client_main(c):
            try:
                barrier.wait(30)
            except threading.BrokenBarrierError:
                pass
            if c.error is None:
                c.run()

        threads = [threading.Thread(target=client_main, args=(c,), daemon=True) for c in clients]
        for t in threads:
            t.start()
        sampler = RssSampler(proxy.pid, args.interval)
        sampler.start()
        barrier.wait(30)
        t0 = time.monotonic()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        t1 = max([c.end for c in clients if c.end is not None] or [time.monotonic()])
        timed_out = any(t.is_alive() for t in threads)
        sampler.stop()
        end = read_status(proxy.pid) or {}
        alive = proxy.poll() is None
        origin_during = origin_requests(access_log) - origin_before

        peak_kb = max(sampler.peak_kb, end.get("VmRSS", 0))
        secs = t1 - t0
        total_bytes = sum(c.got for c in clients)
        n_ok = sum(1 for c in clients if c.ok(args.size, digest))
        results = {}
        for c in clients:
            results[c.cache_result()] = results.get(c.cache_result(), 0) + 1
        growth_kb = peak_kb - idle_kb
        under = growth_kb < args.limit_mib * 1024
        all_ok = n_ok == len(clients) and not timed_out and alive
        all_hits = results.get("HIT", 0) == len(clients) and origin_during == 0

        print()
        print("Cache-hit memory: %d clients at once, %.0f MiB object cached on disk only"
              % (args.clients, args.size / MiB))
        print("cachingproxy --cache-dir TMP --cache-memory %s; %s"
              % (args.cache_memory, "proxy on CPU 0, clients + origin on CPU 1" if pin_ok else "not pinned"))
        print()
        print("  fill request:        %s, %s" % (fill.cache_result(), fill.describe_cache()))
        print("  hit check:           %s, %s" % (hit.cache_result() if hit else "-",
                                                  hit.describe_cache() if hit else "-"))
        print("  hit verified:        %s" % ("yes" if hit_verified and all_hits else "NO"))
        print("  client cache result: %s" % ", ".join("%s=%d" % kv for kv in sorted(results.items())))
        print("  origin requests:     %d during the concurrent downloads" % origin_during)
        print("  downloads correct:   %d of %d (length %d, sha256 checked)" % (n_ok, len(clients), args.size))
        for i, c in enumerate(clients):
            if not c.ok(args.size, digest):
                print("    client %d: status %s, %d bytes, %s%s"
                      % (i, c.status, c.got,
                         "still running" if c.digest is None and c.error is None
                         else "sha256 ok" if c.digest == digest else "sha256 WRONG",
                         ", error: %s" % c.error if c.error else ""))
        print("  proxy RSS fresh:     %.1f MiB (before the fill)" % (fresh.get("VmRSS", 0) / 1024))
        print("  proxy RSS idle:      %.1f MiB (after the fill)" % (idle_kb / 1024))
        print("  proxy peak RSS:      %.1f MiB (VmRSS every %.1fs, %d samples)"
              % (peak_kb / 1024, args.interval, sampler.samples))
        print("  peak - idle:         %.1f MiB" % (growth_kb / 1024))
        print("  under %d MiB:        %s" % (args.limit_mib, "YES" if under else "NO"))
        print("  total seconds:       %.2f" % secs)
        print("  aggregate MiB/s:     %.1f (%d MiB delivered)"
              % (total_bytes / MiB / secs if secs > 0 else 0.0, total_bytes // MiB))
        if timed_out:
            print("  TIMED OUT: some clients were still downloading at the %ds limit" % args.timeout)
        for p in problems:
            print("  WARNING: %s" % p)
        if not all_hits:
            print("  WARNING: not every concurrent download was a cache HIT served without the origin")
        if not alive:
            print("  proxy exited during the run (status %s); log tail:\n%s" % (proxy.returncode, tail(plog)))
        if not (all_ok and hit_verified and all_hits):
            return 1
        if args.fail_over_limit and not under:
            return 1
        return 0
    finally:
        procs.stop_all()
        if args.keep_tmp:
            log("keeping temp dir %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Many clients download one large cached (disk-only) object through cachingproxy; "
                    "report the proxy's RSS growth."
    )
    p.add_argument("--size", type=parse_size, default=100 * MiB,
                   help="object size, bytes or with K/M/G suffix (default 100M)")
    p.add_argument("--clients", type=int, default=20, help="concurrent clients (default %(default)s)")
    p.add_argument("--cache-memory", default="16M",
                   help="cachingproxy --cache-memory (default %(default)s: smaller than the object)")
    p.add_argument("--proxy-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for cachingproxy (repeatable)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="hard limit for the whole run, s (default %(default)s)")
    p.add_argument("--interval", type=float, default=0.1, help="RSS sampling interval, s (default %(default)s)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds to wait after the fill before reading the idle RSS (default %(default)s)")
    p.add_argument("--limit-mib", type=int, default=64, help="budget for peak - idle, MiB (default %(default)s)")
    p.add_argument("--fail-over-limit", action="store_true", help="exit 1 if peak - idle is over --limit-mib")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs, cache)")
    args = p.parse_args(argv)
    if args.size <= 0 or args.clients <= 0 or args.timeout <= 0 or args.interval <= 0:
        p.error("--size, --clients, --timeout and --interval must be positive")

    # Turn SIGTERM/SIGHUP into a normal exit so children are stopped, and
    # bound the whole run (SIGALRM) even if something hangs.
    def _bye(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _bye)
    signal.signal(signal.SIGHUP, _bye)
    signal.signal(signal.SIGALRM, _bye)
    signal.alarm(max(1, int(args.timeout) - 5))
    try:
        return run(args)
    except RuntimeError as e:
        log("ERROR: %s" % e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
