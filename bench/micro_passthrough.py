"""
In-memory cost of one pass-through request: the client protocol parses a
request, forwards it on a pooled upstream connection, parses the response
and writes it back, with no sockets and no reactor loop. Prints
microseconds per request, without a cache and with a disk cache that the
(no-store) response never enters; run with --profile for a cProfile
listing of the first.

    .venv/bin/python bench/micro_passthrough.py [--requests N] [--profile]
"""

import argparse
import cProfile
import pstats
import sys
import time

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import MemoryReactorClock, StringTransport  # noqa: E402

from cachingproxy.proxy.factory import ProxyFactory
from cachingproxy.proxy.settings import ProxySettings# noqa: E402
from cachingproxy.proxy.upstream import (  # noqa: E402
    Origin,
    UpstreamPool,
    UpstreamProtocol,
    UpstreamSettings,
)

REQUEST = (
    b"GET /1k.bin HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk\r\n"
    b"Accept: */*\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 15:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Mon, 23 Nov 2026 14:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "abc-400"\r\nCache-Control: no-store\r\nAccept-Ranges: bytes\r\n\r\n'
    + b"x" * 1024
)


def run(n: int, store=None) -> float:
    reactor = MemoryReactorClock()
    origin = Origin(b"http", "127.0.0.1", 9000)
    pool = UpstreamPool(reactor, UpstreamSettings())
    factory = ProxyFactory(reactor, ProxySettings(upstream=origin, viaName=b"bench"), pool, None)
    if store is not None:
        from cachingproxy.cache.layer import CacheLayer

        factory.cache = CacheLayer(store, reactor, pool)
    upstream = UpstreamProtocol(pool, origin)
    upstreamTransport = StringTransport()
    upstream.makeConnection(upstreamTransport)
    pool._release(upstream)
    client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    clientTransport = StringTransport()
    client.makeConnection(clientTransport)
    start = time.perf_counter()
    for _ in range(n):
        client.dataReceived(REQUEST)
        upstreamTransport.clear()
        upstream.dataReceived(RESPONSE)
        clientTransport.clear()
    elapsed = time.perf_counter() - start
    assert pool.idleCount() == 1
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    run(1000)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run(args.requests)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    else:
        print(f"{run(args.requests):.1f} us per pass-through request (in memory, no cache)")
        import shutil
        import tempfile

        from cachingproxy.cache.disk import DiskStore

        folder = tempfile.mkdtemp(prefix="cachingproxy-bench-")
        try:
            store = DiskStore(folder, maxSize=1 << 30, maxObjectSize=1 << 26)
            print(f"{run(args.requests, store):.1f} us per pass-through request "
                  "(in memory, disk cache on, response no-store)")
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
