"""
The proxy's own endpoints, and draining for a graceful stop.
"""

import json

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from cachingproxy.ops.admin import AdminPages
from cachingproxy.proxy.settings import ProxySettings
from cachingproxy.proxy.upstream import Origin

from .helpers import (connectClient, exchange, listenOrigin, listenScripted, pattern,
                      startProxy, until)


def adminProxy(testCase, **kwargs):
    """
    Start a proxy with C{ProxySettings(**kwargs)} and its own endpoints
    (worker C{w1}).

    @return: the factory and the port.
    """
    kwargs.setdefault("viaName", b"test-proxy")
    factory, port, _ = startProxy(testCase, ProxySettings(**kwargs))
    factory.admin = AdminPages(factory, "w1")
    return factory, port


class HealthTests(TestCase):
    """
    C{/_cachingproxy/health}.
    """

    def proxy(self, **kwargs):
        return adminProxy(self, **kwargs)

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


class LandingTests(TestCase):
    """
    What someone opening a forward proxy's address in a browser gets: C{/}
    and C{/_cachingproxy}.
    """

    def proxy(self, **kwargs):
        return adminProxy(self, **kwargs)

    async def test_root(self):
        """
        C{GET /} is a short page (200) saying this is cachingproxy, a
        forward proxy, how to use it with the address the client used, and
        linking to the status page; HEAD gets the same head.
        """
        factory, port = self.proxy()
        _, [page] = await exchange(port, self, b"GET /?from=bookmark HTTP/1.1\r\nHost: proxy.test:3128\r\n\r\n")
        self.assertEqual(page.status, 200)
        self.assertEqual(page.header(b"content-type"), b"text/html; charset=utf-8")
        self.assertEqual(page.header(b"cache-control"), b"no-store")
        self.assertIn(b"<strong>cachingproxy</strong>, a caching forward HTTP proxy", page.body)
        self.assertIn(b"curl -x http://proxy.test:3128 http://example.org/", page.body)
        self.assertIn(b'href="/_cachingproxy/"', page.body)
        self.assertNotRegex(page.body, rb"(src|href)=\"(https?:)?//")
        _, [head] = await exchange(port, self, b"HEAD / HTTP/1.1\r\nHost: proxy.test:3128\r\n\r\n",
                                   headResponses=[0])
        self.assertEqual(head.status, 200)
        self.assertEqual(head.header(b"content-length"), b"%d" % len(page.body))
        self.assertEqual(head.body, b"")

    async def test_rootThroughTheProxy(self):
        """
        A browser set to use the proxy for every address asks for the
        proxy's own C{/} in absolute form: it gets the same page, not a
        loop refusal (other paths at the proxy's address stay loops:
        L{tests.test_access.LoopbackTests.test_ownEndpointsAbsoluteForm}).
        """
        factory, port = self.proxy()
        _, [page] = await exchange(
            port, self, b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
            % (port, port))
        self.assertEqual(page.status, 200)
        self.assertIn(b'href="/_cachingproxy/"', page.body)
        _, [bare] = await exchange(
            port, self, b"GET http://127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
            % (port, port))
        self.assertEqual(bare.status, 200)

    async def test_hostNotReflected(self):
        """
        A Host field that is not a plain host and port is not put in the
        page: the address the client connected to is shown instead.
        """
        factory, port = self.proxy()
        _, [page] = await exchange(port, self, b"GET / HTTP/1.1\r\nHost: <script>x</script>\r\n\r\n")
        self.assertEqual(page.status, 200)
        self.assertNotIn(b"<script>", page.body)
        self.assertIn(b"curl -x http://127.0.0.1:%d http://example.org/" % port, page.body)

    async def test_redirectToStatus(self):
        """
        C{/_cachingproxy} redirects (301) to C{/_cachingproxy/}, where the
        status page's relative links work.
        """
        factory, port = self.proxy()
        _, [moved] = await exchange(port, self, b"GET /_cachingproxy HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(moved.status, 301)
        self.assertEqual(moved.header(b"location"), b"/_cachingproxy/")
        self.assertIn(b'href="/_cachingproxy/"', moved.body)

    async def test_statusStaysAdminOnly(self):
        """
        A client outside the admin networks gets the page at C{/}, and 403
        where it links to.
        """
        factory, port = self.proxy(adminNetworks=())
        _, [page, status] = await exchange(
            port, self, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /_cachingproxy/ HTTP/1.1\r\nHost: x\r\n\r\n",
            count=2)
        self.assertEqual(page.status, 200)
        self.assertEqual(status.status, 403)

    async def test_otherTargetsStillRefused(self):
        """
        Other origin-form requests to a forward proxy keep the 400 that
        says it is a proxy, as do other methods on C{/}.
        """
        factory, port = self.proxy()
        for request in (b"GET /index.html HTTP/1.1\r\n", b"POST / HTTP/1.1\r\nContent-Length: 0\r\n",
                        b"GET /_cachingproxyx HTTP/1.1\r\n"):
            _, [response] = await exchange(port, self, request + b"Host: x\r\n\r\n")
            self.assertEqual(response.status, 400, request)
            self.assertIn(b"must be an absolute URI", response.body)

    async def test_reverseModeForwards(self):
        """
        In reverse mode C{/} and C{/_cachingproxy} belong to the origin.
        """
        origin, originPort = listenOrigin(self)
        factory, port = self.proxy(upstream=Origin(b"http", "127.0.0.1", originPort))
        _, responses = await exchange(
            port, self, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /_cachingproxy HTTP/1.1\r\nHost: x\r\n\r\n",
            count=2)
        self.assertEqual([r.status for r in responses], [404, 404])
        self.assertEqual([r["path"] for r in origin.requests], [b"/", b"/_cachingproxy"])


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
        factory.admin = AdminPages(factory)
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
