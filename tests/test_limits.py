"""
Every limit has a status, a log line and a test: over real sockets, with
the origin shown to receive nothing of a refused request.
"""

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from cachingproxy.proxy.settings import ProxySettings

from .helpers import RawClient, connectClient, exchange, listenOrigin, startProxy, until


class LimitTests(TestCase):
    """
    Limits of size, count and time.
    """

    timeout = 30

    def setUpProxy(self, **kwargs):
        self.origin, self.originPort = listenOrigin(self)
        kwargs.setdefault("viaName", b"test-proxy")
        self.factory, self.port, self.lines = startProxy(self, ProxySettings(**kwargs))
        self.target = b"http://127.0.0.1:%d/echo" % self.originPort

    async def refused(self, data: bytes, status: int):
        client = await connectClient(self.port, self)
        client.transport.write(data)
        await client.closed
        self.assertEqual([r.status for r in client.finalResponses()], [status], client.raw[:200])
        self.assertEqual(self.origin.requests, [])
        self.assertTrue(any('" %d ' % status in line for line in self.lines), self.lines)

    async def test_declaredBodyTooLarge(self):
        """
        A Content-Length over --max-body-size: 413 before any body byte is
        forwarded, and the connection closes.
        """
        self.setUpProxy(maxBodySize=1000)
        await self.refused(
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n" % self.target
            + b"a" * 1001, 413)

    async def test_chunkedBodyTooLarge(self):
        """
        A chunked body growing past --max-body-size: 413, and the origin's
        request is abandoned (its connection closed) rather than completed.
        """
        self.setUpProxy(maxBodySize=1000)
        client = await connectClient(self.port, self)
        client.transport.write(
            b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" % self.target
            + b"258\r\n" + b"a" * 600 + b"\r\n" + b"258\r\n" + b"a" * 600 + b"\r\n")
        await client.closed
        self.assertEqual([r.status for r in client.finalResponses()], [413])
        self.assertEqual(self.origin.requests, [])

    async def test_tooManyFields(self):
        """
        More header fields than --max-header-fields: 431.
        """
        self.setUpProxy(maxHeaderFields=10)
        fields = b"".join(b"X-F%d: v\r\n" % i for i in range(11))
        await self.refused(b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (self.target, fields), 431)

    async def test_slowHead(self):
        """
        A request head that does not complete within --header-timeout
        (slowloris): 408 and the connection closes.
        """
        self.setUpProxy(headerTimeout=0.3)
        await self.refused(b"GET %s HTTP/1.1\r\nHost: x\r\nX-Slow: " % self.target, 408)

    async def test_slowBody(self):
        """
        A request body that does not complete within --body-timeout: 408,
        and the request forwarded so far is abandoned.
        """
        self.setUpProxy(bodyTimeout=0.3)
        client = await connectClient(self.port, self)
        client.transport.write(
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc" % self.target)
        await client.closed
        self.assertEqual([r.status for r in client.finalResponses()], [408])
        self.assertEqual(self.origin.requests, [])

    async def test_idleClosed(self):
        """
        A kept-alive connection idle for --idle-timeout is closed without a
        response.
        """
        self.setUpProxy(idleTimeout=0.3)
        client, [response] = await exchange(
            self.port, self, b"GET http://127.0.0.1:%d/size/1 HTTP/1.1\r\nHost: x\r\n\r\n"
            % self.originPort)
        raw = await client.closed
        self.assertEqual(response.status, 200)
        self.assertEqual(len(client.responses), 1, raw)

    async def test_connectionLimit(self):
        """
        At --max-connections the proxy stops accepting; a connection over
        the limit is served once another closes; nothing crashes.
        """
        from twisted.logger import formatEvent, globalLogPublisher

        logged = []

        def observer(event):
            logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.setUpProxy(maxConnections=2)
        first = await connectClient(self.port, self)
        second = await connectClient(self.port, self)
        await until(lambda: self.factory.openConnections == 2)
        third = RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), third)
        self.addCleanup(lambda: third.transport.abortConnection() if not third.closed.called else None)
        third.transport.write(
            b"GET http://127.0.0.1:%d/size/3 HTTP/1.1\r\nHost: x\r\n\r\n" % self.originPort)
        self.assertTrue(self.factory._acceptingPaused)
        self.assertEqual(self.factory.openConnections, 2)
        first.transport.loseConnection()
        [response] = await third.waitFor(1)
        self.assertEqual(response.status, 200)
        self.assertTrue(any("not accepting more" in line for line in logged), logged)
        second.transport.loseConnection()

    async def test_pipelineDepth(self):
        """
        Requests pipelined beyond --max-pipeline stop the connection's
        reading until it catches up; all are answered, in order.
        """
        self.setUpProxy(maxPipeline=2)
        requests = b"".join(
            b"GET http://127.0.0.1:%d/size/%d HTTP/1.1\r\nHost: x\r\n\r\n" % (self.originPort, n)
            for n in range(1, 9))
        _, responses = await exchange(self.port, self, requests, count=8)
        self.assertEqual([len(r.body) for r in responses], list(range(1, 9)))
