"""
The proxy's own endpoints, and draining for a graceful stop.
"""

import json

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from cachingproxy.admin import AdminResource
from cachingproxy.server import ProxySettings
from cachingproxy.upstream import Origin

from .helpers import (connectClient, exchange, listenOrigin, listenScripted, pattern,
                      startProxy, until)


class HealthTests(TestCase):
    """
    C{/_cachingproxy/health}.
    """

    def proxy(self, **kwargs):
        kwargs.setdefault("viaName", b"test-proxy")
        factory, port, lines = startProxy(self, ProxySettings(**kwargs))
        factory.admin = AdminResource(factory, "w1")
        return factory, port

    async def test_healthForward(self):
        """
        In forward mode the health endpoint answers 200 with the worker's
        identity, without any origin.
        """
        factory, port = self.proxy()
        _, [response] = await exchange(port, self, b"GET /_cachingproxy/health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(response.status, 200)
        report = json.loads(response.body)
        self.assertEqual((report["status"], report["worker"]), ("ok", "w1"))

    async def test_healthReverse(self):
        """
        In reverse mode the prefix is the proxy's, not the origin's.
        """
        origin, originPort = listenOrigin(self)
        factory, port = self.proxy(upstream=Origin(b"http", "127.0.0.1", originPort))
        _, [response] = await exchange(port, self, b"GET /_cachingproxy/health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(response.status, 200)
        self.assertEqual(origin.requests, [])

    async def test_refusedOutsideAdminNetworks(self):
        """
        Clients outside the admin networks get 403.
        """
        factory, port = self.proxy(adminNetworks=())
        _, [response] = await exchange(port, self, b"GET /_cachingproxy/health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(response.status, 403)

    async def test_unknownEndpoint(self):
        """
        An unknown admin path is a 404.
        """
        factory, port = self.proxy()
        _, [response] = await exchange(port, self, b"GET /_cachingproxy/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(response.status, 404)


class DrainTests(TestCase):
    """
    L{ProxyFactory.drain}: what is in flight finishes, idle connections go.
    """

    async def test_drain(self):
        """
        Draining lets a request in flight finish with Connection: close and
        closes an idle kept-alive connection once it has stayed idle for
        the drain idle timeout, then fires; health says draining
        meanwhile.
        """
        origin, originPort = listenOrigin(self)
        factory, port, _ = startProxy(
            self, ProxySettings(viaName=b"test-proxy", drainIdleTimeout=0.3))
        factory.admin = AdminResource(factory)
        idle, _ = await exchange(
            port, self, b"GET http://127.0.0.1:%d/size/1 HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        )
        busy = await connectClient(port, self)
        busy.transport.write(
            b"GET http://127.0.0.1:%d/delay/1500 HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        )
        await until(lambda: any(r["path"] == b"/delay/1500" for r in origin.requests))
        started = reactor.seconds()
        drained = factory.drain(5)
        await idle.closed
        self.assertGreaterEqual(reactor.seconds() - started, 0.25)
        self.assertFalse(drained.called)
        [response] = await busy.waitFor(1)
        self.assertEqual(response.body, b"delayed 1500")
        self.assertEqual(response.header(b"connection"), b"close")
        await busy.closed
        await drained
        self.assertEqual(factory.openConnections, 0)

    async def test_requestOnIdleConnectionWhileDraining(self):
        """
        A request that arrives on an idle kept-alive connection while the
        proxy drains is answered in full, with Connection: close, and the
        connection closes right after that response rather than at the
        end of the drain idle timeout.
        """
        origin, originPort = listenOrigin(self)
        factory, port, _ = startProxy(
            self, ProxySettings(viaName=b"test-proxy", drainIdleTimeout=30))
        client, [first] = await exchange(
            port, self, b"GET http://127.0.0.1:%d/size/10 HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        )
        self.assertIsNone(first.header(b"connection"))
        drained = factory.drain(60)
        client.transport.write(
            b"GET http://127.0.0.1:%d/size/1000 HTTP/1.1\r\nHost: x\r\n\r\n" % originPort)
        [_, second] = await client.waitFor(2)
        self.assertEqual((second.status, second.body), (200, pattern(1000)))
        self.assertEqual(second.header(b"connection"), b"close")
        await client.closed
        await drained
        self.assertEqual(factory.openConnections, 0)

    async def test_responseUnderWayWhileDraining(self):
        """
        A response whose head already went out without Connection: close
        when the drain starts is finished, and the connection stays open
        for the next request (answered with Connection: close) rather than
        closing under a client that was promised keep-alive.
        """
        origin, originPort = listenOrigin(self)
        # The head and half the body, the rest a second later.
        _, slowPort = listenScripted(self, [
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf-", 1.0, b"whole"])
        factory, port, _ = startProxy(
            self, ProxySettings(viaName=b"test-proxy", drainIdleTimeout=30))
        client = await connectClient(port, self)
        client.transport.write(
            b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % slowPort)
        await client.whenTrue(lambda c: b"half-" in c.raw)
        drained = factory.drain(60)
        [first] = await client.waitFor(1)
        self.assertEqual(first.body, b"half-whole")
        self.assertIsNone(first.header(b"connection"))
        self.assertFalse(client.closed.called)
        client.transport.write(
            b"GET http://127.0.0.1:%d/size/10 HTTP/1.1\r\nHost: x\r\n\r\n" % originPort)
        [_, second] = await client.waitFor(2)
        self.assertEqual((second.status, second.body), (200, pattern(10)))
        self.assertEqual(second.header(b"connection"), b"close")
        await client.closed
        await drained
