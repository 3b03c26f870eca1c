"""
Finished requests are freed by reference counting alone.

Objects caught in reference cycles wait for Python's cycle collector, whose
collections grow with the number of live objects and run on the request
path. Each test here runs requests through the real protocol, pool and
cache classes over Twisted's test doubles with the collector switched off,
then asks the collector what it found: no object of this package may be
among it.
"""

from __future__ import annotations

import gc
import time
from typing import Iterator, List, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from cachingproxy.cache.memory import MemoryStore
from cachingproxy.http.headers import formatHTTPDate
from cachingproxy.cache.layer import CacheLayer, CacheSettings
from cachingproxy.proxy.factory import ProxyFactory
from cachingproxy.proxy.settings import ProxySettings
from cachingproxy.proxy.upstream import Origin, UpstreamPool, UpstreamProtocol, UpstreamSettings

ORIGIN = Origin(b"http", "127.0.0.1", 9000)


def request(path: bytes) -> bytes:
    return (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: t\r\n"
            b"Accept: */*\r\n\r\n" % path)


def response(date: bytes, cacheControl: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nDate: %s\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 5\r\nCache-Control: %s\r\n\r\nhello" % (date, cacheControl))


class Rig:
    """
    A reverse proxy on a L{MemoryReactorClock}, with or without a memory
    cache, and one pooled upstream connection per call to L{origin}.
    """

    def __init__(self, cache: bool) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(time.time())
        self.pool = UpstreamPool(self.reactor, UpstreamSettings())
        self.factory = ProxyFactory(
            self.reactor, ProxySettings(upstream=ORIGIN, viaName=b"test"), self.pool, None)
        self.store = MemoryStore(1 << 20, 1 << 16) if cache else None
        if cache:
            self.factory.cache = CacheLayer(self.store, self.reactor, self.pool,
                                               CacheSettings())

    def origin(self) -> Tuple[UpstreamProtocol, StringTransport]:
        protocol = UpstreamProtocol(self.pool, ORIGIN)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.pool._release(protocol)
        return protocol, transport

    def client(self, port: int = 40000) -> Tuple[object, StringTransport]:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def date(self) -> bytes:
        return formatHTTPDate(self.reactor.seconds())


def lose(protocol, transport: StringTransport) -> None:
    """
    The connection of C{protocol} over C{transport} is lost, as a TCP
    transport reports it: the transport lets go of its producer
    (C{FileDescriptor.connectionLost}), then the protocol is told.
    """
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    transport.producer = None
    transport.disconnected = True
    protocol.connectionLost(Failure(ConnectionDone()))


def ownGarbage(run) -> List[str]:
    """
    Run C{run} with the cycle collector off; the names of this package's
    types among what a collection then finds unreachable.
    """
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        run()
        gc.collect()
        found = sorted({
            type(o).__qualname__ for o in gc.garbage
            if type(o).__module__.startswith("cachingproxy")
        })
    finally:
        gc.set_debug(0)
        del gc.garbage[:]
        gc.enable()
    return found


class NoCycleTests(SynchronousTestCase):

    def rounds(self) -> Iterator[int]:
        return iter(range(20))

    def test_passThrough(self) -> None:
        """
        A forwarded request and its response leave nothing for the
        collector: the exchange, its upstream request and the heads it
        held are freed as soon as the exchange is over.
        """
        rig = Rig(cache=False)
        upstream, upstreamTransport = rig.origin()
        client, clientTransport = rig.client()

        def run() -> None:
            for _ in self.rounds():
                client.dataReceived(request(b"/a"))
                upstream.dataReceived(response(rig.date(), b"no-store"))
                self.assertIn(b"hello", clientTransport.value())
                clientTransport.clear()
                upstreamTransport.clear()

        self.assertEqual(ownGarbage(run), [])

    def test_storedMissAndHits(self) -> None:
        """
        A miss that is stored (its storer leads a flight) and the hits
        after it leave nothing for the collector.
        """
        rig = Rig(cache=True)
        upstream, upstreamTransport = rig.origin()
        client, clientTransport = rig.client()

        def run() -> None:
            for i in self.rounds():
                path = b"/m%d" % i
                client.dataReceived(request(path))
                upstream.dataReceived(response(rig.date(), b"max-age=600"))
                upstreamTransport.clear()
                client.dataReceived(request(path))
                self.assertEqual(clientTransport.value().count(b"hello"), 2)
                self.assertEqual(upstreamTransport.value(), b"")
                clientTransport.clear()

        self.assertEqual(ownGarbage(run), [])

    def test_collapsedWaiters(self) -> None:
        """
        Clients that waited on another client's fetch (collapsed
        forwarding) and were answered from it leave nothing for the
        collector: the flight lets go of its leader when the fetch ends.
        """
        rig = Rig(cache=True)
        upstream, upstreamTransport = rig.origin()
        leader, leaderTransport = rig.client(40000)
        waiter, waiterTransport = rig.client(40001)

        def run() -> None:
            for i in self.rounds():
                path = b"/c%d" % i
                leader.dataReceived(request(path))
                waiter.dataReceived(request(path))
                upstream.dataReceived(response(rig.date(), b"max-age=600"))
                self.assertIn(b"hello", leaderTransport.value())
                self.assertIn(b"hello", waiterTransport.value())
                self.assertEqual(upstreamTransport.value().count(b"GET "), 1)
                leaderTransport.clear()
                waiterTransport.clear()
                upstreamTransport.clear()

        self.assertEqual(ownGarbage(run), [])

    def test_closedConnection(self) -> None:
        """
        A client connection that closes leaves nothing for the collector:
        the protocol lets go of its parser, which points back at it.
        """
        rig = Rig(cache=False)
        upstream, upstreamTransport = rig.origin()

        def run() -> None:
            for i in self.rounds():
                client, clientTransport = rig.client(41000 + i)
                client.dataReceived(request(b"/a"))
                upstream.dataReceived(response(rig.date(), b"no-store"))
                self.assertIn(b"hello", clientTransport.value())
                upstreamTransport.clear()
                lose(client, clientTransport)

        self.assertEqual(ownGarbage(run), [])

    def test_clientLeavesMidResponse(self) -> None:
        """
        A client that leaves in the middle of a response being stored
        leaves nothing for the collector: its exchange, the storer and the
        flight it led let go of each other.
        """
        rig = Rig(cache=True)

        def run() -> None:
            for i in self.rounds():
                upstream, upstreamTransport = rig.origin()
                client, clientTransport = rig.client(42000 + i)
                client.dataReceived(request(b"/big%d" % i))
                upstream.dataReceived(
                    b"HTTP/1.1 200 OK\r\nDate: %s\r\nContent-Length: 10\r\n"
                    b"Cache-Control: max-age=600\r\n\r\nhalf" % rig.date())
                self.assertIn(b"half", clientTransport.value())
                lose(client, clientTransport)
                self.assertTrue(upstreamTransport.disconnecting)
                lose(upstream, upstreamTransport)

        self.assertEqual(ownGarbage(run), [])
