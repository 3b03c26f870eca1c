"""
The proxy's own endpoints, and draining for a graceful stop.
"""

import json

from twisted.trial.unittest import TestCase

from cachingproxy.admin import AdminResource
from cachingproxy.server import ProxySettings
from cachingproxy.upstream import Origin

from .helpers import connectClient, exchange, listenOrigin, startProxy, until


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
        Draining closes an idle kept-alive connection at once, lets a
        request in flight finish with Connection: close, then fires; health
        says draining meanwhile.
        """
        origin, originPort = listenOrigin(self)
        factory, port, _ = startProxy(self, ProxySettings(viaName=b"test-proxy"))
        factory.admin = AdminResource(factory)
        idle, _ = await exchange(
            port, self, b"GET http://127.0.0.1:%d/size/1 HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        )
        busy = await connectClient(port, self)
        busy.transport.write(
            b"GET http://127.0.0.1:%d/delay/300 HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        )
        await until(lambda: any(r["path"] == b"/delay/300" for r in origin.requests))
        drained = factory.drain(5)
        await idle.closed
        self.assertFalse(drained.called)
        [response] = await busy.waitFor(1)
        self.assertEqual(response.body, b"delayed 300")
        self.assertEqual(response.header(b"connection"), b"close")
        await busy.closed
        await drained
        self.assertEqual(factory.openConnections, 0)
