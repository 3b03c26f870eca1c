"""
Collapsed forwarding under bursts: how many requests reach the origin when
N clients miss on one URL at once, through C{twistd cachingproxy --workers
W} with a disk cache, from a given checkout.

Usage: python bench/collapse_burst.py CHECKOUT [--workers 2] [--bursts 20]
       [--clients 40] [--delay 0.2] [--kind slow|nostore]

Prints one line: the origin requests per burst (mean, min, max), how many
workers answered each burst (mean), and the burst's wall time (median).
"""

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter

TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


async def origin(counts: Counter, delay: float):
    async def serve(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                counts[path] += 1
                await asyncio.sleep(delay)
                body = path * 200
                control = b"no-store" if b"/nostore/" in path else b"max-age=600"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nCache-Control: %s\r\n\r\n"
                             % (len(body), control) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def fetch(proxyPort: int, originPort: int, path: bytes):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxyPort)
    writer.write(b"GET http://127.0.0.1:%d%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
                 b"GET /_cachingproxy/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                 % (originPort, path, originPort))
    data = await reader.read()
    writer.close()
    if not data.startswith(b"HTTP/1.1 200") or path * 200 not in data:
        raise RuntimeError(f"bad answer for {path!r}: {data[:200]!r}")
    pid = re.search(rb'"pid":\s*(\d+)', data)
    return int(pid.group(1)) if pid else None


async def main(args) -> None:
    counts: Counter = Counter()
    server = await origin(counts, args.delay)
    originPort = server.sockets[0].getsockname()[1]
    cacheDir = tempfile.mkdtemp(prefix="collapse-bench-")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", TWISTD, "-n", "--pidfile=", "cachingproxy",
        "--port", "tcp:0:interface=127.0.0.1", "--workers", str(args.workers),
        "--cache-dir", cacheDir, "--no-access-log",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=args.checkout), cwd=args.checkout)
    output = b""
    port = None
    try:
        deadline = time.monotonic() + 60
        while port is None or output.count(b") ready") < args.workers and args.workers > 1:
            line = await asyncio.wait_for(process.stdout.readline(), deadline - time.monotonic())
            if not line:
                raise RuntimeError(output.decode(errors="replace"))
            output += line
            found = re.search(rb"listening on 127\.0\.0\.1:(\d+)", output)
            if found:
                port = int(found.group(1))
        drain = asyncio.ensure_future(process.stdout.read())
        perBurst, workers, times = [], [], []
        for i in range(args.bursts):
            path = b"/%s/%d" % (args.kind.encode(), i)
            started = time.monotonic()
            pids = await asyncio.gather(*[fetch(port, originPort, path)
                                          for _ in range(args.clients)])
            times.append(time.monotonic() - started)
            perBurst.append(counts[path])
            workers.append(len(set(pids)))
        print(f"{args.label}: origin requests per burst of {args.clients} "
              f"({args.kind}, {args.bursts} bursts, origin delay {args.delay}s): "
              f"mean {statistics.mean(perBurst):.2f}, min {min(perBurst)}, max {max(perBurst)}; "
              f"workers answering: mean {statistics.mean(workers):.2f}; "
              f"burst time median {statistics.median(times):.3f}s")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except asyncio.TimeoutError:
            process.kill()
        server.close()
        shutil.rmtree(cacheDir, True)
    del drain


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("checkout")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--kind", choices=["slow", "nostore"], default="slow")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    args.label = args.label or os.path.basename(os.path.abspath(args.checkout))
    asyncio.run(main(args))
