"""
End-to-end tests through real loopback sockets: a real origin (a scripted
twisted.web resource, or a raw scripted protocol for broken behaviour), the
proxy on a real port, and a raw client that parses what comes back.
"""

import json
import socket

from twisted.internet import reactor
from twisted.internet.interfaces import IHostnameResolver, IResolutionReceiver
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from cachingproxy.access import parseNetworks
from cachingproxy.proxy.settings import ProxySettings
from cachingproxy.proxy.upstream import Origin, UpstreamSettings

from .helpers import (
    connectClient,
    exchange,
    listenOrigin,
    listenScripted,
    pattern,
    startProxy,
    until,
)

TEN_MIB = 10 * 1024 * 1024


def chunk(data: bytes, size: int = 65536) -> bytes:
    """
    @return: C{data} in the chunked transfer coding, with the last chunk.
    """
    out = []
    for i in range(0, len(data), size):
        piece = data[i:i + size]
        out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    out.append(b"0\r\n\r\n")
    return b"".join(out)


class _ModeMixin:
    """
    The same behaviour checked in forward mode (absolute-form targets) and
    reverse mode (origin-form targets to a fixed upstream).
    """

    reverse = False

    def setUpProxy(self, **kwargs):
        self.origin, self.originPort = listenOrigin(self)
        if self.reverse:
            kwargs["upstream"] = Origin(b"http", "127.0.0.1", self.originPort)
        kwargs.setdefault("viaName", b"test-proxy")
        self.factory, self.port, self.lines = startProxy(self, ProxySettings(**kwargs))

    def target(self, path: bytes) -> bytes:
        if self.reverse:
            return path
        return b"http://127.0.0.1:%d%s" % (self.originPort, path)

    def request(self, method: bytes, path: bytes, headers: bytes = b"", body: bytes = b"",
                version: bytes = b"HTTP/1.1") -> bytes:
        return b"%s %s %s\r\nHost: 127.0.0.1:%d\r\n%s\r\n%s" % (
            method, self.target(path), version, self.originPort, headers, body
        )

    async def test_methods(self):
        """
        GET, HEAD, POST (10 MiB, with Content-Length and chunked), PUT and
        DELETE reach the origin with their bodies and come back intact.
        """
        self.setUpProxy()
        big = pattern(TEN_MIB)
        _, [get] = await exchange(self.port, self, self.request(b"GET", b"/size/3000"))
        self.assertEqual((get.status, get.body), (200, pattern(3000)))

        _, [head] = await exchange(
            self.port, self, self.request(b"HEAD", b"/size/3000"), headResponses=[0]
        )
        self.assertEqual(head.status, 200)
        self.assertEqual(head.header(b"content-length"), b"3000")
        self.assertEqual(head.body, b"")

        _, [post] = await exchange(
            self.port, self,
            self.request(b"POST", b"/echo", b"Content-Length: %d\r\n" % len(big), big),
        )
        self.assertEqual(post.status, 200)
        self.assertEqual(post.header(b"x-body-length"), b"%d" % len(big))
        self.assertEqual(post.body, big)

        _, [chunked] = await exchange(
            self.port, self,
            self.request(b"POST", b"/echo", b"Transfer-Encoding: chunked\r\n", chunk(big)),
        )
        self.assertEqual(chunked.status, 200)
        self.assertEqual(chunked.body, big)

        _, [put] = await exchange(
            self.port, self, self.request(b"PUT", b"/echo", b"Content-Length: 5\r\n", b"hello")
        )
        self.assertEqual((put.header(b"x-method"), put.body), (b"PUT", b"hello"))

        _, [delete] = await exchange(self.port, self, self.request(b"DELETE", b"/echo"))
        self.assertEqual(delete.header(b"x-method"), b"DELETE")

        seen = [(r["method"], r["path"], len(r["body"])) for r in self.origin.requests]
        self.assertEqual(
            seen,
            [
                (b"GET", b"/size/3000", 0),
                (b"HEAD", b"/size/3000", 0),
                (b"POST", b"/echo", TEN_MIB),
                (b"POST", b"/echo", TEN_MIB),
                (b"PUT", b"/echo", 5),
                (b"DELETE", b"/echo", 0),
            ],
        )

    async def test_keepAliveHTTP11(self):
        """
        An HTTP/1.1 connection stays open across requests, and the origin
        sees one upstream connection for many sequential requests.
        """
        self.setUpProxy()
        client = await connectClient(self.port, self)
        for i in range(10):
            client.transport.write(self.request(b"GET", b"/size/%d" % (100 + i)))
            responses = await client.waitFor(i + 1)
            self.assertEqual(responses[-1].body, pattern(100 + i))
        self.assertFalse(client.closed.called)
        self.assertEqual(self.origin.connectionCount(), 1)
        self.assertEqual(len(self.origin.requests), 10)

    async def test_upstreamReusedAcrossClients(self):
        """
        Sequential client connections share one pooled upstream connection.
        """
        self.setUpProxy()
        for i in range(5):
            client, [response] = await exchange(
                self.port, self, self.request(b"GET", b"/size/10", b"Connection: close\r\n")
            )
            await client.closed
            self.assertEqual(response.status, 200)
        self.assertEqual(self.origin.connectionCount(), 1)

    async def test_keepAliveHTTP10(self):
        """
        An HTTP/1.0 connection closes after the response, unless it asked
        for keep-alive, which the response then confirms.
        """
        self.setUpProxy()
        client, [response] = await exchange(
            self.port, self, self.request(b"GET", b"/size/10", version=b"HTTP/1.0")
        )
        await client.closed
        self.assertEqual(response.body, pattern(10))

        client, [first] = await exchange(
            self.port, self,
            self.request(b"GET", b"/size/10", b"Connection: keep-alive\r\n", version=b"HTTP/1.0"),
        )
        self.assertEqual(first.header(b"connection"), b"keep-alive")
        client.transport.write(
            self.request(b"GET", b"/size/20", b"Connection: keep-alive\r\n", version=b"HTTP/1.0")
        )
        responses = await client.waitFor(2)
        self.assertEqual(responses[1].body, pattern(20))
        self.assertFalse(client.closed.called)

    async def test_http10ClientChunkedOrigin(self):
        """
        A body of unknown length goes to an HTTP/1.0 client delimited by the
        connection closing, never chunked.
        """
        self.setUpProxy()
        client = await connectClient(self.port, self)
        client.transport.write(self.request(b"GET", b"/chunked/20000", version=b"HTTP/1.0"))
        raw = await client.closed
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertNotIn(b"chunked", head.lower())
        self.assertIn(b"connection: close", head.lower())
        self.assertEqual(body, pattern(20000))

    async def test_pipelining(self):
        """
        Pipelined requests are answered in the order they were sent, even
        when a later one is ready first.
        """
        self.setUpProxy()
        _, responses = await exchange(
            self.port, self,
            self.request(b"GET", b"/delay/300")
            + self.request(b"GET", b"/delay/1")
            + self.request(b"GET", b"/size/7"),
            count=3,
        )
        self.assertEqual(
            [r.body for r in responses], [b"delayed 300", b"delayed 1", pattern(7)]
        )

    async def test_hopByHopRemovedFromRequest(self):
        """
        Connection, the fields it nominates, Keep-Alive, Proxy-Connection,
        TE, Trailer, Upgrade and Proxy-Authorization never reach the origin;
        end-to-end fields keep their order and repeats; Via is added.
        """
        self.setUpProxy()
        _, [response] = await exchange(
            self.port, self,
            self.request(
                b"GET", b"/headers",
                b"Connection: X-Hop, TE\r\nX-Hop: secret\r\nKeep-Alive: 300\r\n"
                b"Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-Sum\r\n"
                b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
                b"X-First: 1\r\nX-Repeat: a\r\nX-Repeat: b\r\n",
            ),
        )
        received = [(k.lower(), v) for k, v in json.loads(response.body)]
        names = [k for k, _ in received]
        for hop in ["connection", "x-hop", "keep-alive", "proxy-connection", "te",
                    "trailer", "upgrade", "proxy-authorization"]:
            self.assertNotIn(hop, names)
        self.assertEqual([v for k, v in received if k == "x-repeat"], ["a", "b"])
        self.assertIn(("via", "1.1 test-proxy"), received)
        self.assertEqual(dict(received)["host"], "127.0.0.1:%d" % self.originPort)

    async def test_hopByHopRemovedFromResponse(self):
        """
        The origin's hop-by-hop fields (and those its Connection nominates)
        are removed from the response; Via is added.
        """
        self.setUpProxy()
        _, [response] = await exchange(self.port, self, self.request(b"GET", b"/hop"))
        names = response.headerNames()
        for hop in [b"x-private-hop", b"keep-alive", b"proxy-connection", b"upgrade", b"trailer"]:
            self.assertNotIn(hop, names)
        self.assertNotIn(b"X-Private-Hop", response.header(b"connection") or b"")
        self.assertEqual(response.header(b"x-end-to-end"), b"kept")
        self.assertEqual(response.header(b"via"), b"1.1 test-proxy")
        self.assertEqual(response.body, b"hop")

    async def test_loopRefused(self):
        """
        A request whose Via already names this proxy is refused and never
        forwarded.
        """
        self.setUpProxy()
        _, [response] = await exchange(
            self.port, self, self.request(b"GET", b"/size/1", b"Via: 1.0 other, 1.1 test-proxy\r\n")
        )
        self.assertEqual(response.status, 508)
        self.assertEqual(self.origin.requests, [])

    async def test_expectContinue(self):
        """
        A client that sends Expect: 100-continue gets the origin's 100
        before it sends its body, then the final response.
        """
        self.setUpProxy()
        client = await connectClient(self.port, self)
        client.transport.write(
            self.request(b"PUT", b"/echo", b"Expect: 100-continue\r\nContent-Length: 11\r\n")
        )
        await client.whenTrue(lambda c: c.responses)
        self.assertEqual(client.responses[0].status, 100)
        client.transport.write(b"hello world")
        [response] = await client.waitFor(1)
        self.assertEqual((response.status, response.body), (200, b"hello world"))

    async def test_chunkedResponse(self):
        """
        A response of unknown length reaches an HTTP/1.1 client chunked,
        with every byte.
        """
        self.setUpProxy()
        client, [response] = await exchange(self.port, self, self.request(b"GET", b"/chunked/100000"))
        self.assertEqual(response.header(b"transfer-encoding"), b"chunked")
        self.assertEqual(response.body, pattern(100000))
        self.assertTrue(client.raw.endswith(b"0\r\n\r\n"))

    async def test_accessLog(self):
        """
        Each request leaves one access log line with the request line, the
        status and the body size.
        """
        self.setUpProxy()
        await exchange(self.port, self, self.request(b"GET", b"/size/123"))
        self.assertEqual(len(self.lines), 1)
        self.assertIn('"GET %s HTTP/1.1" 200 123' % self.target(b"/size/123").decode(), self.lines[0])


class ForwardModeTests(_ModeMixin, TestCase):
    """
    The proxy as a forward proxy.
    """

    reverse = False

    async def test_originFormRefused(self):
        """
        A forward proxy given an origin-form target answers 400 (it cannot
        know which origin is meant).
        """
        self.setUpProxy()
        _, [response] = await exchange(self.port, self, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(response.status, 400)

    async def test_unsupportedScheme(self):
        """
        An ftp:// target is answered 501.
        """
        self.setUpProxy()
        _, [response] = await exchange(
            self.port, self, b"GET ftp://127.0.0.1/file HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        self.assertEqual(response.status, 501)
        self.assertIn(b"ftp", response.body)

    async def test_unknownMethodForwarded(self):
        """
        An extension method llhttp does not know is forwarded by name.
        """
        self.setUpProxy()
        _, [response] = await exchange(self.port, self, self.request(b"BREW", b"/echo"))
        self.assertEqual(response.header(b"x-method"), b"BREW")


    async def test_forwardedFields(self):
        """
        With the options on, the client address is appended to a trusted
        proxy's X-Forwarded-For and a Forwarded element is added.
        """
        self.setUpProxy(xForwardedFor=True, forwarded=True,
                        trustedProxies=parseNetworks(["127.0.0.1"]))
        _, [response] = await exchange(
            self.port, self,
            self.request(b"GET", b"/headers", b"X-Forwarded-For: 192.0.2.7\r\n"),
        )
        received = dict((k.lower(), v) for k, v in json.loads(response.body))
        self.assertEqual(received["x-forwarded-for"], "192.0.2.7, 127.0.0.1")
        self.assertEqual(received["forwarded"], "for=127.0.0.1")


class ReverseModeTests(_ModeMixin, TestCase):
    """
    The proxy as a reverse proxy in front of one origin.
    """

    reverse = True

    async def test_pathPrefix(self):
        """
        The path of the upstream URL prefixes every forwarded path.
        """
        origin, originPort = listenOrigin(self)
        _, port, _ = startProxy(
            self,
            ProxySettings(
                upstream=Origin(b"http", "127.0.0.1", originPort),
                upstreamPath=b"/size",
                viaName=b"test-proxy",
            ),
        )
        _, [response] = await exchange(port, self, b"GET /42 HTTP/1.1\r\nHost: site\r\n\r\n")
        self.assertEqual(response.body, pattern(42))
        self.assertEqual(origin.requests[0]["path"], b"/size/42")


def _freePort() -> int:
    """
    @return: a loopback port nothing listens on.
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@implementer(IHostnameResolver)
class _FailingResolver:
    """
    Resolves nothing: every name is unknown.
    """

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        receiver = IResolutionReceiver(receiver)
        receiver.resolutionBegan(None)
        receiver.resolutionComplete()
        return receiver


class ErrorTests(TestCase):
    """
    Every failure gets its status, a text body and a log line.
    """

    def setUp(self):
        self.factory, self.port, self.lines = startProxy(
            self, upstreamSettings=UpstreamSettings(connectTimeout=2, responseTimeout=0.5)
        )

    async def test_refused(self):
        """
        An origin that refuses the connection gives 502.
        """
        port = _freePort()
        _, [response] = await exchange(
            self.port, self, b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % port
        )
        self.assertEqual(response.status, 502)
        self.assertIn(b"refused", response.body)
        self.assertIn('" 502 ', self.lines[0])

    async def test_unresolvable(self):
        """
        An origin whose name does not resolve gives 502.
        """
        previous = reactor.installNameResolver(_FailingResolver())
        self.addCleanup(reactor.installNameResolver, previous)
        _, [response] = await exchange(
            self.port, self, b"GET http://no-such-host.test/ HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        self.assertEqual(response.status, 502)

    async def test_responseTimeout(self):
        """
        An origin that accepts the request but never answers gives 504
        once the upstream timeout passes.
        """
        origin, originPort = listenScripted(self, [])
        _, [response] = await exchange(
            self.port, self, b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        )
        self.assertEqual(response.status, 504)
        await origin.whenLost()

    async def test_malformed(self):
        """
        A malformed request (a space before a field's colon) gives 400 and
        the connection closes.
        """
        client, [response] = await exchange(
            self.port, self, b"GET http://127.0.0.1/ HTTP/1.1\r\nHost : x\r\n\r\n"
        )
        self.assertEqual(response.status, 400)
        await client.closed

    async def test_smuggling(self):
        """
        Content-Length together with Transfer-Encoding is refused with 400.
        """
        client, [response] = await exchange(
            self.port, self,
            b"POST http://127.0.0.1/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        self.assertEqual(response.status, 400)
        await client.closed

    async def test_uriTooLong(self):
        """
        A request target longer than the limit gives 414.
        """
        client, [response] = await exchange(
            self.port, self, b"GET http://127.0.0.1/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        self.assertEqual(response.status, 414)
        await client.closed

    async def test_headersTooLarge(self):
        """
        A header section larger than the limit gives 431.
        """
        fields = b"".join(b"X-Field-%d: %s\r\n" % (i, b"v" * 1000) for i in range(80))
        client, [response] = await exchange(
            self.port, self, b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n"
        )
        self.assertEqual(response.status, 431)
        await client.closed

    async def test_originClosesMidBody(self):
        """
        An origin that closes before the declared length: the client gets
        what arrived, then the connection closes without a complete
        message.
        """
        origin, originPort = listenScripted(
            self, [b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10, None]
        )
        client = await connectClient(self.port, self)
        client.transport.write(
            b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        )
        raw = await client.closed
        self.assertEqual(client.finalResponses(), [])
        self.assertTrue(raw.endswith(b"\r\n\r\n" + b"x" * 10))

    async def test_originClosesMidChunkedBody(self):
        """
        An origin that closes inside a chunked body: the client never sees
        the last chunk.
        """
        origin, originPort = listenScripted(
            self,
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", None],
        )
        client = await connectClient(self.port, self)
        client.transport.write(
            b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        )
        raw = await client.closed
        self.assertEqual(client.finalResponses(), [])
        self.assertIn(b"hello", raw)
        self.assertFalse(raw.endswith(b"0\r\n\r\n"))

    async def test_closeDelimitedOrigin(self):
        """
        A response framed by the origin closing is complete when it closes,
        and reaches an HTTP/1.1 client as a properly ended chunked body.
        """
        origin, originPort = listenScripted(
            self, [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it", None]
        )
        _, [response] = await exchange(
            self.port, self, b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        )
        self.assertEqual(response.body, b"all of it")

    async def test_clientDisconnectsMidBody(self):
        """
        When the client leaves during the body, the upstream connection is
        closed, not returned to the pool.
        """
        origin, originPort = listenScripted(
            self, [b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000]
        )
        client = await connectClient(self.port, self)
        client.transport.write(
            b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        )
        await client.whenTrue(lambda c: b"x" in c.raw)
        client.transport.loseConnection()
        await origin.whenLost()
        self.assertEqual(self.factory.pool.idleCount(), 0)


def _queued(transport) -> int:
    """
    @return: the bytes a Twisted TCP transport holds to send.
    """
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class ClientLeavesTests(TestCase):
    """
    What a client that leaves in the middle of a response leaves behind.
    """

    async def test_unsentBytesReleased(self):
        """
        The response bytes the proxy had queued for a client that left are
        let go when its connection is lost, not when the garbage collector
        gets to the connection's objects (found by bench/soak.py: aborted
        clients left megabytes queued in dead transports).
        """
        size = 16 * 1024 * 1024
        _, originPort = listenOrigin(self)
        factory, port, _ = startProxy(self)
        client = await connectClient(port, self)
        # A small receive window, so the proxy queues what the kernel
        # does not take, whatever the system's buffer sizes.
        client.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.transport.write(
            b"GET http://127.0.0.1:%d/size/%d HTTP/1.1\r\nHost: x\r\n\r\n" % (originPort, size))
        await client.whenTrue(lambda c: b"\r\n\r\n" in c.raw)
        client.transport.pauseProducing()
        [proxySide] = factory.protocols
        transport = proxySide.transport
        await until(lambda: _queued(transport) > 0)
        client.transport.abortConnection()
        await client.closed
        await until(lambda: proxySide not in factory.protocols)
        self.assertEqual(_queued(transport), 0)
