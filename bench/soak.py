#!/usr/bin/env python3
"""
Soak: a bounded number of requests (default 1,000,000) against one
cachingproxy process in reverse mode with a disk cache and a memory tier,
while its resident memory is sampled every second.

    wrk (Lua mix) ----------+
                            +--> cachingproxy --> origin (nginx, or python)
    aborting clients (py) --+

The mix, of all requests:

  * ~70% hits: ``/hot/<i>`` for i in a fixed set (``--hot-objects``, each
    ``--hot-size`` bytes, ``Cache-Control: max-age=3600``), stored first by
    a priming pass;
  * ~20% misses: ``/miss/<unique>`` (``--miss-size`` bytes,
    ``Cache-Control: max-age=60``), each stored, so the disk cache fills
    to ``--cache-size`` and evicts from then on;
  * ~10% aborted clients: connect, GET a ``--large-size`` object (half of
    them ``/large/<i>`` from a small cached set, half ``/bigmiss/<unique>``,
    a cacheable miss being stored), read part of it, close (half with a
    plain FIN, half with a reset).

wrk (one thread, ``--connections`` keep-alive connections, a Lua
``request`` function for the URL mix, stopping itself after its share of
responses) makes the hits and misses; a small python process with
non-blocking sockets makes the aborted clients alongside.

The run has two phases: warm-up (the first 10% of the requests) and the
rest. Printed: RSS after warm-up, RSS at the end, their ratio and whether
it is within 10%, the peak RSS, requests done, the rate, errors, and the
proxy's cache figures (from ``/_cachingproxy/status.json``) after each
phase.

Everything is on 127.0.0.1; the whole run is bounded by ``--time-limit``
(a phase that has not reached its count by its share of the limit is
stopped), and every process started is stopped at the end.

Exit status: 0 when the run completed without errors and the proxy is
alive (whatever the memory ratio; ``--fail-over-ratio`` makes a ratio over
1.10 an exit 1), 1 otherwise.
"""

import argparse
import json
import os
import random
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
VENV_BIN = os.path.join(REPO_ROOT, ".venv", "bin")
KiB = 1024
MiB = 1024 * KiB


def log(msg):
    sys.stderr.write("[soak] %s\n" % (msg,))
    sys.stderr.flush()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def read_rss_kb(pid):
    """VmRSS of pid in kB, or None if it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def raise_nofile(want=65536):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def tail(path, n=20):
    try:
        with open(path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
    except OSError:
        return "(no log)"


def http_get(port, path, timeout=5.0):
    """One GET on a new connection; (status, headers dict, body) or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                      % path.encode())
            data = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
    return status, headers, body


def wait_ready(port, path, proc, logpath, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("process exited (status %s) before port %d was ready:\n%s"
                               % (proc.returncode, port, tail(logpath)))
        got = http_get(port, path, 1.0)
        if got is not None and got[0] == 200:
            return
        time.sleep(0.1)
    raise RuntimeError("port %d not ready after %ss:\n%s" % (port, timeout, tail(logpath)))


class Procs:
    """Children we started; all are stopped on exit."""

    def __init__(self):
        self.procs = []

    def start(self, argv, logpath, **kw):
        with open(logpath, "wb") as logf:
            p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def stop_all(self):
        for p in reversed(self.procs):
            try:
                self.stop(p)
            except Exception as e:
                log("could not stop pid %s: %s" % (p.pid, e))


class RssSampler(threading.Thread):
    """VmRSS every second: the samples, and the peak."""

    def __init__(self, pid, interval=1.0):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples = []  # (seconds since start, kB)
        self.peak_kb = 0
        self._halt = threading.Event()
        self._start = time.monotonic()

    def run(self):
        while not self._halt.is_set():
            rss = read_rss_kb(self.pid)
            if rss is None:
                return
            self.samples.append((time.monotonic() - self._start, rss))
            self.peak_kb = max(self.peak_kb, rss)
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(3)


# --------------------------------------------------------------------------
# Origins


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid %(n)s/nginx.pid;
error_log %(n)s/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 8192; }
http {
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 100000000;
    default_type application/octet-stream;
    client_body_temp_path %(n)s/cb;
    proxy_temp_path %(n)s/px;
    fastcgi_temp_path %(n)s/fc;
    uwsgi_temp_path %(n)s/uw;
    scgi_temp_path %(n)s/sc;
    server {
        listen 127.0.0.1:%(p)d backlog=4096;
        root %(w)s;
        location /hot/     { rewrite ^ /hot.bin break;   add_header Cache-Control "max-age=3600" always; }
        location /miss/    { rewrite ^ /miss.bin break;  add_header Cache-Control "max-age=60" always; }
        location /large/   { rewrite ^ /large.bin break; add_header Cache-Control "max-age=3600" always; }
        location /bigmiss/ { rewrite ^ /large.bin break; add_header Cache-Control "max-age=60" always; }
        location = /ready  { rewrite ^ /hot.bin break;   add_header Cache-Control "no-store" always; }
    }
}
"""


def origin_bodies(args):
    rnd = random.Random(20240601)
    return {
        "hot": bytes(rnd.getrandbits(8) for _ in range(args.hot_size)),
        "miss": bytes(rnd.getrandbits(8) for _ in range(args.miss_size)),
        "large": (bytes(rnd.getrandbits(8) for _ in range(65537)) * (args.large_size // 65537 + 1))
        [:args.large_size],
    }


def serve_python_origin(args):
    """A small asyncio origin with the same paths as the nginx one."""
    import asyncio

    bodies = origin_bodies(args)
    kinds = {"hot": ("hot", "max-age=3600"), "miss": ("miss", "max-age=60"),
             "large": ("large", "max-age=3600"), "bigmiss": ("large", "max-age=60"),
             "ready": ("hot", "no-store")}

    async def handle(reader, writer):
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                line = head.split(b"\r\n", 1)[0].split(b" ")
                path = line[1].decode("latin-1") if len(line) > 1 else "/"
                kind = path.split("/")[1] if "/" in path else ""
                if kind not in kinds:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                else:
                    body, cc = bodies[kinds[kind][0]], kinds[kind][1]
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nCache-Control: %s\r\n"
                                 b"Content-Type: application/octet-stream\r\n\r\n"
                                 % (len(body), cc.encode()))
                    if line[0] != b"HEAD":
                        writer.write(body)
                await writer.drain()
                if b"\r\nconnection: close" in head.lower():
                    return
        except ConnectionError:
            return
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", args.port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def start_origin(args, procs, tmp, pin):
    port = free_port()
    bodies = origin_bodies(args)
    if args.origin == "nginx":
        nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
        if not nginx:
            log("nginx not found: using the python origin")
            args.origin = "python"
    if args.origin == "nginx":
        www = os.path.join(tmp, "www")
        ngx = os.path.join(tmp, "nginx")
        os.makedirs(www)
        os.makedirs(ngx)
        for name, body in (("hot.bin", bodies["hot"]), ("miss.bin", bodies["miss"]),
                           ("large.bin", bodies["large"])):
            with open(os.path.join(www, name), "wb") as f:
                f.write(body)
        conf = os.path.join(ngx, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF % {"n": ngx, "p": port, "w": www})
        logpath = os.path.join(ngx, "error.log")
        proc = procs.start(pin + [nginx, "-p", ngx, "-c", conf], os.path.join(ngx, "stdout.log"))
    else:
        logpath = os.path.join(tmp, "origin.log")
        proc = procs.start(pin + [sys.executable, os.path.abspath(__file__), "--serve-origin",
                                  "--port", str(port), "--hot-size", str(args.hot_size),
                                  "--miss-size", str(args.miss_size),
                                  "--large-size", str(args.large_size)], logpath)
    wait_ready(port, "/ready", proc, logpath)
    return port, bodies


# --------------------------------------------------------------------------
# Aborting clients (run as a child process: --abort-client)


def abort_client(args):
    """
    Make --count aborted requests, --concurrency at a time, until done or
    --deadline (epoch seconds). Prints one JSON line: done, errors, kinds.
    """
    raise_nofile()
    sel = selectors.DefaultSelector()
    rnd = random.Random(os.getpid())
    done = errors = started = 0
    t0 = time.monotonic()
    why = {}
    deadline = args.deadline
    state = {}

    def fail(reason):
        nonlocal errors
        errors += 1
        why[reason] = why.get(reason, 0) + 1

    def launch():
        nonlocal started
        started += 1
        if rnd.random() < 0.5:
            path = "/large/%d" % rnd.randrange(args.large_objects)
        else:
            path = "/bigmiss/%s-%d" % (args.tag, started)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", args.port))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            fail("connect")
            return
        want = rnd.randrange(16 * KiB, min(256 * KiB, args.large_size // 2) + 1)
        state[s] = {"req": b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode(),
                    "kind": path.split("/")[1],
                    "got": 0, "want": want, "head": b"", "status": None, "rst": rnd.random() < 0.5}
        sel.register(s, selectors.EVENT_WRITE)

    def finish(s, ok, reason=None):
        nonlocal done
        st = state.pop(s)
        if reason is not None:
            reason = "%s (/%s/, %s)" % (
                reason, st["kind"], "no response" if st["status"] is None else "mid-body")
        sel.unregister(s)
        if st["rst"]:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        s.close()
        if ok:
            done += 1
        else:
            fail(reason)

    while (done + errors) < args.count and time.time() < deadline:
        while (len(state) < args.concurrency and started < args.count
               and time.monotonic() >= t0 + started / args.rate):
            launch()
        if not state and started >= args.count:
            break
        wait = 0.5
        if len(state) < args.concurrency and started < args.count:
            wait = min(wait, max(0.0, t0 + started / args.rate - time.monotonic()))
        if not state:
            time.sleep(wait)
            continue
        for key, mask in sel.select(wait):
            s = key.fileobj
            st = state[s]
            if mask & selectors.EVENT_WRITE:
                try:
                    s.send(st["req"])
                except OSError:
                    finish(s, False, "send")
                    continue
                sel.modify(s, selectors.EVENT_READ)
                continue
            try:
                data = s.recv(65536)
            except OSError:
                finish(s, False, "recv")
                continue
            if not data:
                finish(s, False, "closed early")
                continue
            if st["status"] is None:
                st["head"] += data
                if b"\r\n" in st["head"]:
                    try:
                        st["status"] = int(st["head"].split(b" ", 2)[1])
                    except (IndexError, ValueError):
                        st["status"] = -1
                    if st["status"] != 200:
                        finish(s, False, "status %s" % st["status"])
                        continue
                    st["head"] = b""
            st["got"] += len(data)
            if st["got"] >= st["want"]:
                finish(s, True)
    for s in list(state):
        finish(s, False, "unfinished at deadline")
    print(json.dumps({"done": done, "errors": errors, "why": why}))
    return 0


# --------------------------------------------------------------------------
# wrk


WRK_LUA = r"""
-- soak mix for bench/soak.py: 70/90 hits of a hot set, 20/90 unique misses
threads = {}
done_n = 0
errors = 0
hits = 0
function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end
function init(args)
   limit = tonumber(args[1])
   hot = tonumber(args[2])
   tag = args[3]
   marker = args[4]
   counter = 0
   math.randomseed(id * 7919 + os.time())
end
function request()
   counter = counter + 1
   local path
   if math.random(90) <= 70 then
      path = "/hot/" .. math.random(0, hot - 1)
   else
      path = "/miss/" .. tag .. "-" .. id .. "-" .. counter
   end
   return wrk.format("GET", path)
end
function response(status, headers, body)
   done_n = done_n + 1
   if status ~= 200 then errors = errors + 1 end
   if headers["X-Cache"] == "HIT" then hits = hits + 1 end
   if done_n == limit then
      -- tell bench/soak.py, which stops wrk (wrk itself waits for -d)
      local f = io.open(marker .. "." .. id, "w")
      if f then f:close() end
      wrk.thread:stop()
   end
end
function done(summary, latency, requests)
   local n, e, h = 0, 0, 0
   for _, t in ipairs(threads) do
      n = n + t:get("done_n")
      e = e + t:get("errors")
      h = h + t:get("hits")
   end
   io.write(string.format("SOAK responses=%d status_errors=%d hits=%d\n", n, e, h))
end
"""


def parse_wrk(out):
    res = {"requests": 0, "status_errors": 0, "socket_errors": 0, "hits": 0, "rps": 0.0}
    m = re.search(r"SOAK responses=(\d+) status_errors=(\d+) hits=(\d+)", out)
    if m:
        res["requests"], res["status_errors"], res["hits"] = map(int, m.groups())
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["socket_errors"] = sum(map(int, m.groups()))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    return res


def run_phase(args, name, count, port, tmp, pin, deadline, abort_rate):
    """
    Run wrk (90% of count) and the aborting clients (10%) together.

    @return: a dict of figures.
    """
    aborts = count // 10
    wrk_count = count - aborts
    per_thread = max(1, wrk_count // args.wrk_threads)
    tag = "%s%d" % (name, int(time.time()))
    seconds = max(5, int(deadline - time.time()))
    lua = os.path.join(tmp, "soak.lua")
    marker = os.path.join(tmp, "wrk-%s.done" % name)
    with open(lua, "w") as f:
        f.write(WRK_LUA)
    wrk_argv = pin + ["wrk", "-t%d" % args.wrk_threads, "-c%d" % args.connections,
                      "-d%ds" % seconds, "--timeout", "10s", "-s", lua,
                      "http://127.0.0.1:%d" % port, "--", str(per_thread),
                      str(args.hot_objects), tag, marker]
    ab_argv = pin + [sys.executable, os.path.abspath(__file__), "--abort-client",
                     "--port", str(port), "--count", str(aborts),
                     "--concurrency", str(args.abort_concurrency),
                     "--large-objects", str(args.large_objects),
                     "--large-size", str(args.large_size),
                     "--tag", tag, "--deadline", str(deadline),
                     "--rate", str(abort_rate)]
    log("%s: %d requests (wrk %d, aborted clients %d), at most %ds"
        % (name, count, per_thread * args.wrk_threads, aborts, seconds))
    t0 = time.monotonic()
    wrk_log = os.path.join(tmp, "wrk-%s.txt" % name)
    with open(wrk_log, "w") as out:
        wrk = subprocess.Popen(wrk_argv, stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    ab = subprocess.Popen(ab_argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True)
    # wrk sleeps for its whole -d even once every thread has stopped
    # itself: each thread leaves a marker at its count, then SIGINT makes
    # wrk report at once.
    markers = [marker + ".%d" % (i + 1) for i in range(args.wrk_threads)]
    while wrk.poll() is None and time.time() < deadline:
        if all(os.path.exists(m) for m in markers):
            break
        time.sleep(0.05)
    if wrk.poll() is None:
        wrk.send_signal(signal.SIGINT)
    try:
        wrk.wait(30)
    except subprocess.TimeoutExpired:
        wrk.kill()
        wrk.wait(5)
    wrk_done = time.monotonic() - t0
    with open(wrk_log) as f:
        wrk_out = f.read()
    try:
        ab_out, _ = ab.communicate(timeout=max(5, deadline - time.time() + 30))
    except subprocess.TimeoutExpired:
        ab.kill()
        ab_out, _ = ab.communicate()
    took = time.monotonic() - t0
    w = parse_wrk(wrk_out)
    if not w["requests"]:
        log("wrk output:\n" + wrk_out)
    try:
        a = json.loads(ab_out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        log("abort client output:\n" + ab_out)
        a = {"done": 0, "errors": aborts, "why": {"no report": 1}}
    return {
        "wrk_seconds": wrk_done,
        "requests": w["requests"] + a["done"] + a["errors"],
        "wrk": w,
        "aborts": a,
        "errors": w["status_errors"] + w["socket_errors"] + a["errors"],
        "seconds": took,
    }


def cache_figures(port):
    got = http_get(port, "/_cachingproxy/status.json")
    if got is None or got[0] != 200:
        return None
    try:
        report = json.loads(got[2])
    except ValueError:
        return None
    return report.get("cache")


def prime(args, port, bodies):
    """Store every hot and large object; return (requests, errors)."""
    errors = 0
    paths = ["/hot/%d" % i for i in range(args.hot_objects)]
    paths += ["/large/%d" % i for i in range(args.large_objects)]
    for path in paths:
        got = http_get(port, path, 10.0)
        want = bodies["large" if path.startswith("/large/") else "hot"]
        if got is None or got[0] != 200 or got[2] != want:
            errors += 1
    # And once more: these must now be hits.
    misses = 0
    for path in paths[:50]:
        got = http_get(port, path, 10.0)
        if got is None or got[1].get("x-cache") != "HIT":
            misses += 1
    if misses:
        log("WARNING: %d of %d primed objects were not hits" % (misses, min(50, len(paths))))
    return len(paths) + min(50, len(paths)), errors + misses


def run(args):
    raise_nofile()
    ncpu = os.cpu_count() or 1
    pin_ok = not args.no_pin and ncpu >= 2 and shutil.which("taskset")
    pin_proxy = ["taskset", "-c", "0"] if pin_ok else []
    pin_load = ["taskset", "-c", "1"] if pin_ok else []
    if pin_ok:
        os.sched_setaffinity(0, {1})
    if not shutil.which("wrk"):
        log("ERROR: wrk not found (bench/run_soak.sh installs it)")
        return 1
    start = time.time()
    hard_deadline = start + args.time_limit

    tmp = tempfile.mkdtemp(prefix="cachingproxy-soak.")
    os.chmod(tmp, 0o755)
    procs = Procs()
    try:
        origin_port, bodies = start_origin(args, procs, tmp, pin_load)
        log("origin (%s) on 127.0.0.1:%d" % (args.origin, origin_port))
        port = free_port()
        cache_dir = os.path.join(tmp, "cache")
        argv = pin_proxy + [
            os.path.join(VENV_BIN, "twistd"), "-n", "--pidfile=", "cachingproxy",
            "--port", "tcp:%d:interface=127.0.0.1:backlog=4096" % port,
            "--upstream", "http://127.0.0.1:%d" % origin_port, "--no-access-log",
            "--cache-dir", cache_dir, "--cache-size", args.cache_size,
            "--cache-memory", args.cache_memory,
        ]
        log("proxy: %s" % " ".join(argv))
        plog = os.path.join(tmp, "proxy.log")
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO_ROOT + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proxy = procs.start(argv, plog, cwd=REPO_ROOT, env=env)
        wait_ready(port, "/ready", proxy, plog)
        rss_idle = read_rss_kb(proxy.pid)
        primed, prime_errors = prime(args, port, bodies)
        log("primed %d requests (%d errors); RSS %.1f MiB"
            % (primed, prime_errors, (read_rss_kb(proxy.pid) or 0) / 1024))

        sampler = RssSampler(proxy.pid)
        sampler.start()
        warm_n = max(10, args.requests // 10)
        rest_n = args.requests - warm_n
        budget = hard_deadline - time.time()
        warm = run_phase(args, "warmup", warm_n, port, tmp, pin_load,
                         time.time() + max(10, budget * 0.2), args.abort_rate)
        time.sleep(1.0)
        rss_warm = read_rss_kb(proxy.pid)
        cache_warm = cache_figures(port)
        log("warm-up: %d requests in %.1fs, RSS %.1f MiB, cache %s"
            % (warm["requests"], warm["seconds"], (rss_warm or 0) / 1024, cache_warm))
        # Aborted clients paced to 10% of the rate the warm-up reached.
        rate = warm["requests"] / warm["wrk_seconds"] if warm["wrk_seconds"] else 0
        main = run_phase(args, "main", rest_n, port, tmp, pin_load, hard_deadline,
                         max(10.0, rate / 10))
        time.sleep(1.0)
        rss_end = read_rss_kb(proxy.pid)
        cache_end = cache_figures(port)
        sampler.stop()
        alive = proxy.poll() is None

        done = primed + warm["requests"] + main["requests"]
        errors = prime_errors + warm["errors"] + main["errors"]
        secs = warm["seconds"] + main["seconds"]
        wrk_total = warm["wrk"]["requests"] + main["wrk"]["requests"]
        hits = warm["wrk"]["hits"] + main["wrk"]["hits"]
        aborted = warm["aborts"]["done"] + main["aborts"]["done"]
        ratio = (rss_end / rss_warm) if rss_warm and rss_end else float("nan")
        peak = max(sampler.peak_kb, rss_end or 0)
        print()
        print("Soak: cachingproxy (reverse, disk %s + memory %s cache, no access log), origin %s"
              % (args.cache_size, args.cache_memory, args.origin))
        print("  requests asked:        %d (+%d priming)" % (args.requests, primed))
        print("  requests done:         %d (wrk %d of which X-Cache HIT %d = %.1f%%; "
              "aborted clients %d)" % (done, wrk_total, hits,
                                       100.0 * hits / (wrk_total + aborted) if wrk_total else 0.0,
                                       aborted))
        print("  seconds:               %.1f  (%.0f req/s; warm-up %.0f req/s, rest %.0f req/s)"
              % (secs, (warm["requests"] + main["requests"]) / secs if secs else 0.0,
                 warm["requests"] / warm["seconds"] if warm["seconds"] else 0.0,
                 main["requests"] / main["seconds"] if main["seconds"] else 0.0))
        print("  errors:                %d  (wrk status %d, wrk socket %d, aborted clients %d %s,"
              " priming %d)"
              % (errors, warm["wrk"]["status_errors"] + main["wrk"]["status_errors"],
                 warm["wrk"]["socket_errors"] + main["wrk"]["socket_errors"],
                 warm["aborts"]["errors"] + main["aborts"]["errors"],
                 json.dumps({k: warm["aborts"]["why"].get(k, 0) + main["aborts"]["why"].get(k, 0)
                             for k in set(warm["aborts"]["why"]) | set(main["aborts"]["why"])}),
                 prime_errors))
        print("  RSS idle:              %.1f MiB" % ((rss_idle or 0) / 1024))
        print("  RSS after warm-up:     %.1f MiB  (after %d requests)"
              % ((rss_warm or 0) / 1024, primed + warm["requests"]))
        print("  RSS at the end:        %.1f MiB" % ((rss_end or 0) / 1024))
        print("  ratio end/warm-up:     %.3f  -> %s" % (
            ratio, "within 10%" if ratio <= 1.10 else "NOT within 10%"))
        print("  peak RSS:              %.1f MiB  (%d samples, 1 s apart)"
              % (peak / 1024, len(sampler.samples)))
        print("  cache after warm-up:   %s" % (cache_warm,))
        print("  cache at the end:      %s" % (cache_end,))
        if sampler.samples:
            step = max(1, len(sampler.samples) // 10)
            print("  RSS timeline (s: MiB): %s" % ", ".join(
                "%d: %.1f" % (t, kb / 1024) for t, kb in sampler.samples[::step]))
        if not alive:
            print("  proxy EXITED during the run (status %s); log tail:\n%s"
                  % (proxy.returncode, tail(plog)))
        complete = done >= args.requests
        if not complete:
            print("  NOT COMPLETE: the time limit (%ds) stopped the run" % args.time_limit)
        if not alive or errors or not complete:
            return 1
        if args.fail_over_ratio and not ratio <= 1.10:
            return 1
        return 0
    finally:
        procs.stop_all()
        if args.keep_tmp:
            log("keeping temp dir %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1_000_000,
                   help="requests in all (default %(default)s)")
    p.add_argument("--time-limit", type=float, default=1800.0,
                   help="hard limit for the whole run, s (default %(default)s)")
    p.add_argument("--origin", choices=["nginx", "python"], default="nginx",
                   help="origin server (default %(default)s; python when nginx is missing)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default %(default)s)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default %(default)s)")
    p.add_argument("--abort-concurrency", type=int, default=8,
                   help="aborting clients at once (default %(default)s)")
    p.add_argument("--hot-objects", type=int, default=1000, help="size of the hit set (default %(default)s)")
    p.add_argument("--hot-size", type=int, default=2048, help="bytes per hot object (default %(default)s)")
    p.add_argument("--miss-size", type=int, default=16384, help="bytes per miss object (default %(default)s)")
    p.add_argument("--abort-rate", type=float, default=400.0,
                   help="aborted clients per second during the warm-up; afterwards 10%% of "
                        "the rate the warm-up reached (default %(default)s)")
    p.add_argument("--large-objects", type=int, default=8,
                   help="cached large objects for aborted clients (default %(default)s)")
    p.add_argument("--large-size", type=int, default=1 * MiB,
                   help="bytes per large object (default %(default)s)")
    p.add_argument("--cache-size", default="256M", help="proxy --cache-size (default %(default)s)")
    p.add_argument("--cache-memory", default="16M", help="proxy --cache-memory (default %(default)s)")
    p.add_argument("--fail-over-ratio", action="store_true",
                   help="exit 1 when RSS end/warm-up is over 1.10")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    # child modes
    p.add_argument("--serve-origin", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--abort-client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--concurrency", type=int, default=8, help=argparse.SUPPRESS)
    p.add_argument("--tag", default="x", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=1e9, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.serve_origin:
        serve_python_origin(args)
        return 0
    if args.abort_client:
        return abort_client(args)
    if args.requests < 100:
        p.error("--requests must be at least 100")

    def _bye(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _bye)
    signal.signal(signal.SIGHUP, _bye)
    signal.signal(signal.SIGALRM, _bye)
    signal.alarm(int(args.time_limit) + 180)
    try:
        return run(args)
    except RuntimeError as e:
        log("ERROR: %s" % e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
