"""
In-memory cost of one cache hit: the client protocol parses a request, the
cache looks it up in a store and the response is written, with no sockets
and no reactor loop. Prints microseconds per hit for the memory store, the
disk store and the tiered store; --profile prints a cProfile listing of
the chosen one.

    .venv/bin/python bench/micro_hit.py [--requests N] [--profile memory|disk|tiered]
        [--access-log none|combined|json] [--cpu] [--floor]
"""

import argparse
import cProfile
import pstats
import shutil
import sys
import tempfile
import time

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import MemoryReactorClock, StringTransport  # noqa: E402

from cachingproxy.cache.disk import DiskStore  # noqa: E402
from cachingproxy.cache.memory import MemoryStore  # noqa: E402
from cachingproxy.cache.tiered import TieredStore  # noqa: E402
from cachingproxy.cache.layer import CacheLayer, CacheSettings  # noqa: E402
from cachingproxy.proxy.factory import ProxyFactory
from cachingproxy.proxy.settings import ProxySettings# noqa: E402
from cachingproxy.proxy.upstream import Origin, UpstreamPool, UpstreamProtocol, UpstreamSettings  # noqa: E402

REQUEST = (
    b"GET /1k.bin HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk\r\n"
    b"Accept: */*\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: %s\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Mon, 23 Nov 2026 14:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "abc-400"\r\nCache-Control: public, max-age=3600\r\n'
    b"Accept-Ranges: bytes\r\n\r\n" + b"x" * 1024
)


def _fillAndTime(reactor, client, clientTransport, upstream, n: int, clock,
                 request: bytes = None) -> float:
    """
    Fill the cache with one miss, check that the next request is a hit,
    then time C{n} of them (of C{request}, by default L{REQUEST}).

    @return: the seconds they took.
    """
    from cachingproxy.http.headers import formatHTTPDate

    if request is None:
        request = REQUEST
    client.dataReceived(request)
    upstream.dataReceived(RESPONSE % formatHTTPDate(reactor.seconds()))
    assert b"200 OK" in clientTransport.value(), clientTransport.value()
    clientTransport.clear()
    client.dataReceived(request)
    assert b"X-Cache: HIT" in clientTransport.value(), clientTransport.value()
    clientTransport.clear()
    start = clock()
    for _ in range(n):
        client.dataReceived(request)
        clientTransport.clear()
    return clock() - start


def run(store, n: int, accessLog: str = "none", clock=time.perf_counter) -> float:
    from cachingproxy.ops.accesslog import AccessLog

    reactor = MemoryReactorClock()
    reactor.advance(time.time())
    origin = Origin(b"http", "127.0.0.1", 9000)
    pool = UpstreamPool(reactor, UpstreamSettings())
    factory = ProxyFactory(reactor, ProxySettings(upstream=origin, viaName=b"bench"), pool, None)
    factory.cache = CacheLayer(store, reactor, pool, CacheSettings())
    logFolder = None
    if accessLog != "none":
        # Batched as in the proxy: lines are written when the buffer fills
        # (the timer never fires on this clock).
        logFolder = tempfile.mkdtemp(prefix="cachingproxy-bench-log-")
        factory.accessLog = AccessLog(logFolder + "/access.log", accessLog, reactor=reactor)
    upstream = UpstreamProtocol(pool, origin)
    upstreamTransport = StringTransport()
    upstream.makeConnection(upstreamTransport)
    pool._release(upstream)
    client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    clientTransport = StringTransport()
    client.makeConnection(clientTransport)
    elapsed = _fillAndTime(reactor, client, clientTransport, upstream, n, clock)
    if logFolder is not None:
        factory.accessLog.close()
        shutil.rmtree(logFolder, ignore_errors=True)
    return elapsed / n * 1e6


#: L{REQUEST} as a client of a forward proxy sends it.
FORWARD_REQUEST = (
    b"GET http://127.0.0.1:9000/1k.bin HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nUser-Agent: curl\r\n"
    b"Accept: */*\r\nProxy-Connection: Keep-Alive\r\n\r\n"
)


def runAsBuilt(folder: str, n: int, accessLog: str = "none", clock=time.perf_counter,
               forward: bool = False) -> float:
    """
    The hit loop with the factory the command line builds
    (L{cachingproxy.service.tap.buildFactory}: the access policy, the
    proxy's own pages, the disk cache in C{folder}) and the metrics every
    process keeps, as C{twistd cachingproxy --upstream ... --cache-dir ...}
    runs; C{accessLog} as in L{run}.  With C{forward}, as a forward proxy
    (no C{--upstream}) asked for L{FORWARD_REQUEST}.
    """
    from cachingproxy.ops.accesslog import AccessLog
    from cachingproxy.ops.metrics import Metrics
    from cachingproxy.service.config import fromOptions
    from cachingproxy.service.tap import buildFactory

    reactor = MemoryReactorClock()
    reactor.advance(time.time())
    options = {"cache-dir": folder + "/c"}
    if not forward:
        options["upstream"] = "http://127.0.0.1:9000"
    config = fromOptions(options, {})
    log = None
    if accessLog == "twistd":
        # The default: the twistd log (here a file, as twistd without -n).
        from cachingproxy.ops.accesslog import writeLogTo
        writeLogTo(open(folder + "/twistd.log", "w", encoding="utf-8"), "cachingproxy.access#info")
        log = AccessLog("-", "combined", reactor=reactor)
    elif accessLog != "none":
        log = AccessLog(folder + "/access.log", accessLog, reactor=reactor)
    factory = buildFactory(reactor, config, log)
    factory.metrics = Metrics.create(reactor, factory, directory=folder)
    pool = factory.pool
    origin = Origin(b"http", "127.0.0.1", 9000)
    upstream = UpstreamProtocol(pool, origin)
    upstreamTransport = StringTransport()
    upstream.makeConnection(upstreamTransport)
    pool._release(upstream)
    client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    clientTransport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8000),
                                      peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    client.makeConnection(clientTransport)
    elapsed = _fillAndTime(reactor, client, clientTransport, upstream, n, clock,
                           FORWARD_REQUEST if forward else REQUEST)
    if log is not None:
        log.close()
    return elapsed / n * 1e6


def runFloor(n: int, clock=time.perf_counter) -> float:
    """
    The same loop through bench/bare_protocol.py's Parsed protocol (strict
    parsing by httptools with the proxy's callbacks, a fixed answer): the
    floor the hit path is compared with.
    """
    import runpy

    from twisted.internet.protocol import Factory

    namespace = runpy.run_path(__file__.rsplit("/", 1)[0] + "/bare_protocol.py",
                               run_name="bare_protocol")
    factory = Factory.forProtocol(namespace["Parsed"])
    factory.response = RESPONSE % b"Mon, 23 Nov 2026 15:00:00 GMT"
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    start = clock()
    for _ in range(n):
        protocol.dataReceived(REQUEST)
        transport.clear()
    return (clock() - start) / n * 1e6


def stores():
    folder = tempfile.mkdtemp(prefix="cachingproxy-bench-")
    yield "memory", MemoryStore(64 << 20, 1 << 20)
    yield "disk", DiskStore(folder + "/d", maxSize=1 << 30, maxObjectSize=1 << 26)
    yield "tiered", TieredStore(MemoryStore(64 << 20, 1 << 20),
                                DiskStore(folder + "/t", maxSize=1 << 30, maxObjectSize=1 << 26))
    shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--profile", choices=["memory", "disk", "tiered"])
    parser.add_argument("--access-log", choices=["none", "combined", "json"], default="none",
                        help="log each hit to a file in this format (batched, as the proxy does)")
    parser.add_argument("--floor", action="store_true",
                        help="also run the floor (bench/bare_protocol.py --parse) the same way")
    parser.add_argument("--cpu", action="store_true",
                        help="count the process's CPU time rather than wall-clock time")
    args = parser.parse_args()
    clock = time.process_time if args.cpu else time.perf_counter
    for name, store in stores():
        if args.profile and name != args.profile:
            continue
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            run(store, args.requests, args.access_log, clock)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        else:
            print(f"{name:7s} {run(store, args.requests, args.access_log, clock):6.1f} us per hit (in memory)")
    if args.floor:
        print(f"floor   {runFloor(args.requests, clock):6.1f} us per request (in memory)")


if __name__ == "__main__":
    main()
