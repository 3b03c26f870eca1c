#!/usr/bin/env python3
"""
Large-body memory benchmark: a slow client downloads a 1 GiB response through
a proxy while the proxy's resident memory is sampled.

    client (paced, ~128 MiB/s) --> proxy under test --> origin (1 GiB body)

The origin can produce data far faster than the client reads it, so a proxy
without end-to-end flow control (backpressure from the client socket to the
upstream socket) buffers most of the body in memory.  A streaming proxy should
stay flat.

The script:
  * starts an origin on 127.0.0.1 serving /big.bin (SIZE bytes, default 1 GiB)
    and /small.bin (1 KiB):
      - ``--origin python`` (default): a tiny asyncio server in a child process
        that writes a repeated pseudo-random 64 KiB+1 pattern with flow
        control (drain), so the content can be verified byte for byte;
      - ``--origin nginx``: nginx (1 worker) serving a sparse file made with
        truncate(); the content (all zeros) is verified too;
  * starts the proxy (default: cachingproxy via twistd, on CPU 0 when there
    are >= 2 CPUs; origin and client share CPU 1);
  * downloads /big.bin through the proxy with a paced client, verifies it got
    exactly SIZE correct bytes, and samples VmRSS from /proc/PID/status every
    0.2 s; reports the peak, plus VmHWM at the end.

All traffic is on 127.0.0.1; the whole run is bounded by --timeout (300 s).
Exit status: 0 when the transfer was complete and correct (or cachingproxy is
not available yet), 1 when it was not, or with --fail-over-limit when the peak
RSS was over --limit-mib.
"""

import argparse
import asyncio
import os
import random
import shlex
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
MiB = 1024 * 1024
GiB = 1024 * MiB

# Origin content for --origin python: a pattern whose length is not a power
# of two, so dropped/duplicated/reordered blocks are detected.
PATTERN_LEN = 65537
SMALL_BODY = b"s" * 1024


def make_pattern():
    rnd = random.Random(20240601)
    return bytes(rnd.getrandbits(8) for _ in range(PATTERN_LEN))


# --------------------------------------------------------------------------
# Origin (python): run as a child process with --serve-origin.


async def _origin_handle(reader, writer, size, pattern, cacheable):
    block = pattern * 4  # ~256 KiB per write, still period PATTERN_LEN
    writer.transport.set_write_buffer_limits(high=512 * 1024)
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.split(b"\r\n")
            try:
                method, target, version = lines[0].split(b" ", 2)
            except ValueError:
                return
            headers = {}
            for line in lines[1:]:
                if b":" in line:
                    k, v = line.split(b":", 1)
                    headers[k.strip().lower()] = v.strip().lower()
            conn = headers.get(b"connection", b"")
            close = b"close" in conn or (version == b"HTTP/1.0" and b"keep-alive" not in conn)
            if target.split(b"?")[0] == b"/big.bin":
                length = size
            else:
                length = len(SMALL_BODY)
            writer.write(
                b"HTTP/1.1 200 OK\r\n"
                b"Content-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\n"
                b"%s%s\r\n"
                % (
                    length,
                    b"" if cacheable else b"Cache-Control: no-store\r\n",
                    b"Connection: close\r\n" if close else b"",
                )
            )
            if method != b"HEAD":
                if length == size and target.startswith(b"/big"):
                    view = memoryview(block)
                    left = size
                    while left:
                        n = min(left, len(block))
                        writer.write(view[:n])
                        left -= n
                        await writer.drain()
                else:
                    writer.write(SMALL_BODY)
            await writer.drain()
            if close:
                return
    except ConnectionError:
        return
    finally:
        writer.close()


def serve_origin(port, size, cacheable):
    pattern = make_pattern()

    async def main():
        server = await asyncio.start_server(
            lambda r, w: _origin_handle(r, w, size, pattern, cacheable), "127.0.0.1", port, backlog=128
        )
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


# --------------------------------------------------------------------------
# Helpers


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def log(msg):
    sys.stderr.write("[large_body] %s\n" % (msg,))
    sys.stderr.flush()


def read_status(pid):
    """Return {'VmRSS': kB, 'VmHWM': kB} for pid, or None if it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            out = {}
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
            return out
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None


def cpu_seconds(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def http_get_small(port, timeout=1.0):
    """One GET /small.bin; return the status code or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(
                b"GET /small.bin HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % port
            )
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            parts = data.split(b" ", 2)
            return int(parts[1]) if len(parts) > 1 else None
    except (OSError, ValueError):
        return None


def wait_ready(port, proc, logpath, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                "process exited (status %s) before port %d was ready:\n%s"
                % (proc.returncode, port, tail(logpath))
            )
        if http_get_small(port) == 200:
            return
        time.sleep(0.1)
    raise RuntimeError("port %d not ready after %ss:\n%s" % (port, timeout, tail(logpath)))


def tail(path, n=20):
    try:
        with open(path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
    except OSError:
        return "(no log)"


class Procs:
    """Children we started; all are stopped on exit."""

    def __init__(self):
        self.procs = []

    def start(self, argv, logpath, **kw):
        logf = open(logpath, "wb")
        try:
            p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
        finally:
            logf.close()
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
            except Exception as e:  # keep going: stop the others
                log("could not stop pid %s: %s" % (p.pid, e))


class RssSampler(threading.Thread):
    def __init__(self, pid, interval=0.2):
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
            rss = st.get("VmRSS", 0)
            self.peak_kb = max(self.peak_kb, rss)
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(2)


# --------------------------------------------------------------------------
# Paced client


class ChunkedDecoder:
    """Incremental Transfer-Encoding: chunked decoder; feed() returns body pieces."""

    def __init__(self):
        self.buf = b""
        self.left = 0  # bytes left in current chunk data
        self.state = "size"  # size | data | crlf | trailer | done

    def feed(self, data):
        out = []
        if self.state == "data" and not self.buf:
            # fast path: avoid copying large data through self.buf
            n = min(self.left, len(data))
            out.append(data[:n])
            self.left -= n
            data = data[n:]
            if self.left == 0:
                self.state = "crlf"
            if not data:
                return out
        self.buf += bytes(data)
        while True:
            if self.state == "size":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    return out
                line = self.buf[:i].split(b";")[0].strip()
                self.buf = self.buf[i + 2 :]
                self.left = int(line, 16)
                self.state = "data" if self.left else "trailer"
            elif self.state == "data":
                if not self.buf:
                    return out
                n = min(self.left, len(self.buf))
                out.append(self.buf[:n])
                self.buf = self.buf[n:]
                self.left -= n
                if self.left == 0:
                    self.state = "crlf"
            elif self.state == "crlf":
                if len(self.buf) < 2:
                    return out
                if self.buf[:2] != b"\r\n":
                    raise ValueError("bad chunk terminator %r" % self.buf[:2])
                self.buf = self.buf[2:]
                self.state = "size"
            elif self.state == "trailer":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    return out
                line, self.buf = self.buf[:i], self.buf[i + 2 :]
                if not line:
                    self.state = "done"
            else:
                return out


class Verifier:
    def __init__(self, kind):
        self.kind = kind
        self.offset = 0
        self.bad_at = None
        if kind == "pattern":
            pat = make_pattern()
            self.ref = pat * (2 + (4 * MiB) // PATTERN_LEN)
        else:
            self.ref = bytes(4 * MiB)

    def feed(self, piece):
        n = len(piece)
        if self.bad_at is None:
            pos = 0
            while pos < n:
                m = min(n - pos, 2 * MiB)
                if self.kind == "pattern":
                    a = (self.offset + pos) % PATTERN_LEN
                else:
                    a = 0
                got = bytes(piece[pos : pos + m])
                want = self.ref[a : a + m]
                if got != want:
                    first = next(i for i in range(m) if got[i] != want[i])
                    self.bad_at = self.offset + pos + first
                    break
                pos += m
        self.offset += n


def paced_download(port, path, expect_size, rate, read_size, deadline, verify_kind):
    """Download path via 127.0.0.1:port at about rate bytes/s.

    Returns (status, body_bytes, seconds, verifier, error)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.settimeout(30)
        s.sendall(
            b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: cachingproxy-bench\r\n"
            b"Connection: close\r\n\r\n" % (path.encode(), port)
        )
        head = b""
        while b"\r\n\r\n" not in head:
            d = s.recv(65536)
            if not d:
                return None, 0, 0.0, None, "connection closed before response headers"
            head += d
            if len(head) > 65536:
                return None, 0, 0.0, None, "response headers too large"
        head, rest = head.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        hdrs = {}
        for line in lines[1:]:
            if b":" in line:
                k, v = line.split(b":", 1)
                hdrs[k.strip().lower()] = v.strip()
        chunked = b"chunked" in hdrs.get(b"transfer-encoding", b"").lower()
        clen = hdrs.get(b"content-length")
        clen = int(clen) if clen is not None and not chunked else None
        log(
            "response: %d, %s"
            % (status, "chunked" if chunked else "Content-Length: %s" % clen if clen is not None else "until close")
        )
        dec = ChunkedDecoder() if chunked else None
        ver = Verifier(verify_kind)
        got = 0
        raw = 0
        buf = bytearray(read_size)
        view = memoryview(buf)
        start = time.monotonic()
        error = None

        def consume(data):
            nonlocal got
            pieces = dec.feed(data) if dec else [data]
            for p in pieces:
                if clen is not None and got + len(p) > clen:
                    p = p[: clen - got]
                ver.feed(p)
                got += len(p)

        if rest:
            consume(memoryview(rest))
            raw += len(rest)
        while True:
            if clen is not None and got >= clen:
                break
            if dec is not None and dec.state == "done":
                break
            if time.monotonic() > deadline:
                error = "timed out after %d bytes" % got
                break
            try:
                # read up to read_size, then pause to hold the target rate
                n = s.recv_into(view, read_size)
            except socket.timeout:
                error = "no data for 30s after %d bytes" % got
                break
            if n == 0:
                if clen is not None or dec is not None:
                    error = "connection closed early after %d bytes" % got
                break
            raw += n
            consume(view[:n])
            ahead = start + raw / rate - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)
        secs = time.monotonic() - start
        return status, got, secs, ver, error
    finally:
        s.close()


# --------------------------------------------------------------------------
# Main


def cachingproxy_available():
    twistd = os.path.join(VENV_BIN, "twistd")
    if not os.access(twistd, os.X_OK):
        return False
    try:
        r = subprocess.run(
            [twistd, "cachingproxy", "--help"],
            cwd=REPO_ROOT,
            env=twistd_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


def twistd_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def proxy_argv(args, port, upstream_port):
    upstream = "http://127.0.0.1:%d" % upstream_port
    if args.proxy_cmd:
        return [
            a.format(port=port, upstream=upstream, upstream_host="127.0.0.1", upstream_port=upstream_port)
            for a in shlex.split(args.proxy_cmd)
        ]
    if args.proxy == "cachingproxy":
        return [
            os.path.join(VENV_BIN, "twistd"), "-n", "--pidfile=", "cachingproxy",
            "--port", "tcp:%d:interface=127.0.0.1" % port,
            "--upstream", upstream, "--no-access-log", "--no-cache",
        ]
    if args.proxy == "twisted":
        return [
            sys.executable, os.path.join(BENCH_DIR, "twisted_web_proxy.py"),
            "--port", str(port), "--upstream-host", "127.0.0.1", "--upstream-port", str(upstream_port),
        ]
    raise SystemExit("unknown --proxy %r" % args.proxy)


def start_origin(args, procs, tmp, pin):
    port = free_port()
    if args.origin == "nginx":
        nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
        if not nginx:
            raise RuntimeError("--origin nginx: nginx not found (bench/run_large_body.sh installs it)")
        www = os.path.join(tmp, "www")
        ngx = os.path.join(tmp, "nginx")
        os.makedirs(www)
        os.makedirs(ngx)
        with open(os.path.join(www, "big.bin"), "wb") as f:
            f.truncate(args.size)  # sparse: no disk used
        with open(os.path.join(www, "small.bin"), "wb") as f:
            f.write(SMALL_BODY)
        conf = os.path.join(ngx, "nginx.conf")
        with open(conf, "w") as f:
            f.write(
                "worker_processes 1;\ndaemon off;\npid %(n)s/nginx.pid;\n"
                "error_log %(n)s/error.log warn;\nevents { worker_connections 256; }\n"
                "http {\n access_log off;\n sendfile on;\n keepalive_timeout 65s;\n"
                " default_type application/octet-stream;\n"
                " client_body_temp_path %(n)s/cb;\n proxy_temp_path %(n)s/px;\n"
                " fastcgi_temp_path %(n)s/fc;\n uwsgi_temp_path %(n)s/uw;\n scgi_temp_path %(n)s/sc;\n"
                " server { listen 127.0.0.1:%(p)d; root %(w)s; %(cc)s}\n}\n"
                % {"n": ngx, "p": port, "w": www,
                   "cc": "" if args.cacheable else 'add_header Cache-Control "no-store" always; '}
            )
        argv = pin + [nginx, "-p", ngx, "-c", conf]
        logpath = os.path.join(ngx, "error.log")
        proc = procs.start(argv, os.path.join(ngx, "stdout.log"))
    else:
        argv = pin + [sys.executable, os.path.abspath(__file__), "--serve-origin", "--port", str(port),
                      "--size", str(args.size)] + (["--cacheable"] if args.cacheable else [])
        logpath = os.path.join(tmp, "origin.log")
        proc = procs.start(argv, logpath)
    wait_ready(port, proc, logpath, 30)
    return port


def run(args):
    ncpu = os.cpu_count() or 1
    pin_ok = not args.no_pin and ncpu >= 2 and shutil.which("taskset")
    pin_proxy = ["taskset", "-c", "0"] if pin_ok else []
    pin_load = ["taskset", "-c", "1"] if pin_ok else []
    if pin_ok:
        os.sched_setaffinity(0, {1})  # the client itself

    if args.proxy_cmd:
        name = args.name or args.proxy_cmd
    else:
        name = args.proxy
        if args.proxy == "cachingproxy" and not cachingproxy_available():
            print("cachingproxy: not available")
            return 0

    tmp = tempfile.mkdtemp(prefix="cachingproxy-largebody.")
    os.chmod(tmp, 0o755)  # nginx workers run as nobody
    procs = Procs()
    try:
        origin_port = start_origin(args, procs, tmp, pin_load)
        log("origin (%s) on 127.0.0.1:%d serving %d bytes" % (args.origin, origin_port, args.size))
        port = free_port()
        argv = pin_proxy + proxy_argv(args, port, origin_port)
        log("proxy: %s" % " ".join(shlex.quote(a) for a in argv))
        plog = os.path.join(tmp, "proxy.log")
        proxy = procs.start(argv, plog, cwd=REPO_ROOT, env=twistd_env())
        wait_ready(port, proxy, plog, 30)
        idle = read_status(proxy.pid) or {}
        cpu0 = cpu_seconds(proxy.pid)

        sampler = RssSampler(proxy.pid, args.interval)
        sampler.start()
        deadline = time.monotonic() + args.timeout
        log("downloading %d bytes at ~%.0f MiB/s (read %d KiB at a time)"
            % (args.size, args.rate_mib, args.read_kib))
        try:
            status, got, secs, ver, error = paced_download(
                port, "/big.bin", args.size, args.rate_mib * MiB, args.read_kib * 1024, deadline,
                "zeros" if args.origin == "nginx" else "pattern",
            )
        except (OSError, ValueError) as e:
            status, got, secs, ver, error = None, 0, 0.0, None, "client error: %s" % e
        sampler.stop()
        end = read_status(proxy.pid) or {}
        cpu1 = cpu_seconds(proxy.pid)
        alive = proxy.poll() is None
        peak_kb = max(sampler.peak_kb, end.get("VmRSS", 0))
        hwm_kb = end.get("VmHWM")

        ok = status == 200 and got == args.size and error is None and ver is not None and ver.bad_at is None
        under = peak_kb < args.limit_mib * 1024
        print()
        print("Large body through %s (origin: %s, client paced at ~%.0f MiB/s)" % (name, args.origin, args.rate_mib))
        print("  status:              %s" % (status,))
        print("  bytes received:      %d (expected %d)%s" % (got, args.size, "" if got == args.size else "  MISMATCH"))
        if ver is not None:
            print("  content check:       %s" % ("ok" if ver.bad_at is None else "WRONG from byte %d" % ver.bad_at))
        if error:
            print("  error:               %s" % error)
        print("  seconds:             %.2f (%.1f MiB/s)" % (secs, got / MiB / secs if secs else 0.0))
        print("  proxy RSS idle:      %.1f MiB" % (idle.get("VmRSS", 0) / 1024))
        print("  proxy peak RSS:      %.1f MiB (VmRSS sampled every %.1fs, %d samples)"
              % (peak_kb / 1024, args.interval, sampler.samples))
        print("  proxy VmHWM at end:  %s" % ("%.1f MiB" % (hwm_kb / 1024) if hwm_kb else "n/a (process gone)"))
        if cpu0 is not None and cpu1 is not None:
            print("  proxy CPU time:      %.2f s" % (cpu1 - cpu0))
        print("  under %d MiB:        %s" % (args.limit_mib, "YES" if under else "NO"))
        print("  transfer:            %s" % ("OK" if ok else "FAILED"))
        if not alive:
            print("  proxy exited during the run (status %s); log tail:\n%s" % (proxy.returncode, tail(plog)))
        if not ok:
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
        description="Download a 1 GiB body through a proxy with a slow client; report the proxy's peak RSS."
    )
    p.add_argument("--proxy", choices=["cachingproxy", "twisted"], default="cachingproxy",
                   help="proxy to test (default %(default)s; 'twisted' = bench/twisted_web_proxy.py)")
    p.add_argument("--proxy-cmd", metavar="CMD",
                   help="run this command as the proxy instead; placeholders {port}, {upstream}, "
                        "{upstream_host}, {upstream_port}; split with shlex, no shell (RSS is measured "
                        "on the started pid, so it must exec the server itself)")
    p.add_argument("--name", help="label for --proxy-cmd in the report")
    p.add_argument("--origin", choices=["python", "nginx"], default="python",
                   help="origin server (default %(default)s)")
    p.add_argument("--cacheable", action="store_true",
                   help="origin omits 'Cache-Control: no-store' (by default it forbids caching)")
    p.add_argument("--size", type=int, default=GiB, help="body size in bytes (default 1 GiB)")
    p.add_argument("--rate-mib", type=float, default=128.0,
                   help="client read rate in MiB/s (default %(default)s)")
    p.add_argument("--read-kib", type=int, default=256, help="client recv size in KiB (default %(default)s)")
    p.add_argument("--timeout", type=float, default=300.0, help="hard limit for the download, s (default %(default)s)")
    p.add_argument("--interval", type=float, default=0.2, help="RSS sampling interval, s (default %(default)s)")
    p.add_argument("--limit-mib", type=int, default=64, help="RSS budget in MiB (default %(default)s)")
    p.add_argument("--fail-over-limit", action="store_true", help="exit 1 if peak RSS is over --limit-mib")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("--serve-origin", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.serve_origin:
        serve_origin(args.port, args.size, args.cacheable)
        return 0
    if args.size <= 0 or args.rate_mib <= 0 or args.read_kib <= 0:
        p.error("--size, --rate-mib and --read-kib must be positive")

    # Turn SIGTERM/SIGHUP into a normal exit so children are stopped, and
    # bound the whole run even if something hangs outside the client loop.
    def _bye(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _bye)
    signal.signal(signal.SIGHUP, _bye)
    signal.signal(signal.SIGALRM, _bye)
    signal.alarm(int(args.timeout) + 120)
    try:
        return run(args)
    except RuntimeError as e:
        log("ERROR: %s" % e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
