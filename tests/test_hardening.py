"""
Strict on the wire: malformed and smuggling-prone requests are refused
with a status and a closed connection, over real sockets, and nothing of
them (nor anything sent after them) reaches the origin.
"""

from twisted.trial.unittest import TestCase

from cachingproxy.proxy.settings import ProxySettings

from .helpers import connectClient, listenOrigin, listenScripted, startProxy

#: name -> (request head and body with {target} for the absolute-form
#: target, expected status). Each is followed on the same connection by a
#: request for /smuggled, which must never reach the origin.
CASES = {
    "Content-Length with Transfer-Encoding": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "two different Content-Lengths": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        400),
    "Content-Length list": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 4\r\n\r\nabcd", 400),
    "signed Content-Length": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd", 400),
    "Transfer-Encoding other than chunked": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabcd", 400),
    "chunked not last": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400),
    "chunked twice": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "Transfer-Encoding in HTTP/1.0": (
        b"POST {target} HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "invalid chunk size": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n", 400),
    "chunk size overflow": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ffffffffffffffffff\r\n", 400),
    "invalid chunk extension": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1;\x01\r\nx\r\n0\r\n\r\n", 400),
    "bare LF in chunked body": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\n0\n\n", 400),
    "obs-fold": (b"GET {target} HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    "whitespace before colon": (b"GET {target} HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    "bare CR": (b"GET {target} HTTP/1.1\r\nHost: x\rX-B: b\r\n\r\n", 400),
    "NUL in a field": (b"GET {target} HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    "control byte in a field": (b"GET {target} HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", 400),
    "bare LF line ends": (b"GET {target} HTTP/1.1\nHost: x\n\n", 400),
    "space in the target": (b"GET {target}/a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "control byte in the target": (b"GET {target}/a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "empty field name": (b"GET {target} HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", 400),
    "two Host fields": (b"GET {target} HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    "no Host in HTTP/1.1": (b"GET {target} HTTP/1.1\r\nX-A: a\r\n\r\n", 400),
    "Upgrade with a body": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\nabcde", 400),
    "HTTP/2.0 request line": (b"GET {target} HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "HTTP/1.2": (b"GET {target} HTTP/1.2\r\nHost: x\r\n\r\n", 400),
}


class RejectionTests(TestCase):
    """
    Each case is refused, the connection closes, and the origin receives
    neither it nor the request sent after it.
    """

    async def _check(self, raw: bytes, status: int):
        origin, originPort = listenOrigin(self)
        _, port, lines = startProxy(self, ProxySettings(viaName=b"test-proxy"))
        target = b"http://127.0.0.1:%d/echo" % originPort
        smuggled = b"GET http://127.0.0.1:%d/smuggled HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        client = await connectClient(port, self)
        client.transport.write(raw.replace(b"{target}", target) + smuggled)
        await client.closed
        statuses = [r.status for r in client.finalResponses()]
        self.assertEqual(statuses, [status], client.raw[:300])
        self.assertEqual([r["path"] for r in origin.requests], [])
        self.assertTrue(any(('" %d ' % status) in line for line in lines), lines)

    for _name, (_raw, _status) in CASES.items():
        def _test(self, raw=_raw, status=_status):
            return self._check(raw, status)

        _test.__name__ = "test_" + "".join(c if c.isalnum() else "_" for c in _name)
        _test.__doc__ = f"{_name}: {_status}, closed, nothing forwarded."
        locals()[_test.__name__] = _test
    del _test, _name, _raw, _status


class ResponseFramingTests(TestCase):
    """
    The same discipline towards origins: a response with broken framing
    is a 502 and the origin connection is dropped.
    """

    async def _check(self, script):
        origin, originPort = listenScripted(self, script)
        _, port, _ = startProxy(self, ProxySettings(viaName=b"test-proxy"))
        client = await connectClient(port, self)
        client.transport.write(
            b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % originPort)
        [response] = await client.waitFor(1)
        self.assertEqual(response.status, 502)
        await origin.whenLost()

    def test_contentLengthAndChunked(self):
        """
        Content-Length together with chunked from an origin: 502.
        """
        return self._check([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"])

    async def test_invalidStatusLine(self):
        """
        A garbage status line: 502, and the log line names the origin as a
        URL, not as a Python repr of bytes or of an object.
        """
        from twisted.logger import formatEvent, globalLogPublisher

        messages = []

        def observe(event):
            messages.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        await self._check([b"HTTP/1.1 2OO OK\r\n\r\n"])
        [line] = [m for m in messages if m.startswith("invalid response from")]
        self.assertRegex(line, r"^invalid response from http://127\.0\.0\.1:\d+: ")
        self.assertNotIn("b'", "\n".join(messages))
        self.assertNotIn("Origin(", "\n".join(messages))

    async def test_invalidChunk(self):
        """
        An invalid chunk size after the head was passed on: the client
        connection closes without a complete response, and the origin
        connection is dropped.
        """
        origin, originPort = listenScripted(
            self, [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"])
        _, port, _ = startProxy(self, ProxySettings(viaName=b"test-proxy"))
        client = await connectClient(port, self)
        client.transport.write(
            b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % originPort)
        raw = await client.closed
        self.assertEqual(client.finalResponses(), [])
        self.assertIn(b"hello", raw)
        self.assertFalse(raw.endswith(b"0\r\n\r\n"))
        await origin.whenLost()


class HostDisagreementTests(TestCase):
    """
    An absolute-form target whose authority disagrees with Host cannot
    route two ways: the target wins (RFC 9112 section 3.2.2) and the Host
    sent upstream is the target's.
    """

    async def test_targetWins(self):
        """
        The origin named by the target receives the request, with Host set
        to the target's authority.
        """
        import json

        from .helpers import exchange

        origin, originPort = listenOrigin(self)
        _, port, _ = startProxy(self, ProxySettings(viaName=b"test-proxy"))
        _, [response] = await exchange(
            port, self, b"GET http://127.0.0.1:%d/headers HTTP/1.1\r\nHost: evil.example\r\n\r\n"
            % originPort)
        received = dict((k.lower(), v) for k, v in json.loads(response.body))
        self.assertEqual(received["host"], "127.0.0.1:%d" % originPort)


class _OriginView:
    """
    What an origin made of the bytes the proxy sent it, parsed with llhttp
    as an origin would: each complete request's fields and body.
    """

    def __init__(self, data: bytes) -> None:
        import httptools

        self.requests = []
        self._fields = []
        self._body = b""
        httptools.HttpRequestParser(self).feed_data(data)

    def on_message_begin(self):
        self._fields, self._body = [], b""

    def on_header(self, name, value):
        self._fields.append((name.lower(), value))

    def on_body(self, data):
        self._body += data

    def on_message_complete(self):
        self.requests.append((dict(self._fields), self._body))


#: The attack: a body that is itself a request, and a Connection field
#: that nominates the Content-Length framing it.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def _bothModes(namespace, kind: str, check: str, nominations, doc: str) -> None:
    """
    Add to a class body's C{namespace} one test per nomination and mode
    (forward and reverse), each calling the method C{check} with the
    nomination and whether the proxy is in reverse mode.
    """
    for nominated in nominations:
        for reverse in (False, True):
            mode = "reverse" if reverse else "forward"

            def test(self, nominated=nominated, reverse=reverse):
                return getattr(self, check)(nominated, reverse)

            slug = "".join(c if c.isalnum() else "_" for c in nominated.decode())
            test.__name__ = f"test_{kind}_{slug}_{mode}"
            test.__doc__ = doc.format(value=nominated.decode(), mode=mode)
            namespace[test.__name__] = test


class ConnectionNominationTests(TestCase):
    """
    Connection may nominate more hop-by-hop fields (RFC 9110 section
    7.6.1), but never the framing or Host of a message (RFC 9112 sections
    6 and 3.2): such a nomination is ignored, and the framing the proxy
    sends is the one it parsed, in forward and in reverse mode, in
    requests and in responses.
    """

    async def _forward(self, head: bytes, body: bytes, reverse: bool):
        """
        Send one request with C{head} fields and C{body} and a second
        plain request on the same connection.

        @return: the client's responses and what the origin parsed.
        """
        from cachingproxy.proxy.upstream import Origin

        reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        origin, originPort = listenScripted(self, [reply])
        settings = ProxySettings(viaName=b"test-proxy")
        if reverse:
            settings = ProxySettings(viaName=b"test-proxy",
                                     upstream=Origin(b"http", "127.0.0.1", originPort))
            target = b"/p"
        else:
            target = b"http://127.0.0.1:%d/p" % originPort
        _, port, _ = startProxy(self, settings)
        client = await connectClient(port, self)
        client.transport.write(b"POST " + target + b" HTTP/1.1\r\nHost: h.example\r\n"
                               + head + b"\r\n" + body)
        [response] = await client.waitFor(1)
        [conn] = origin.connections
        return response, _OriginView(conn.received)

    async def _check(self, nominated: bytes, reverse: bool):
        length = b"Content-Length: %d\r\n" % len(SMUGGLED)
        response, seen = await self._forward(
            length + b"Connection: " + nominated + b"\r\n", SMUGGLED, reverse)
        self.assertEqual(response.status, 200)
        self.assertEqual(len(seen.requests), 1, seen.requests)
        [(fields, body)] = seen.requests
        self.assertEqual(body, SMUGGLED)
        self.assertEqual(fields[b"content-length"], b"%d" % len(SMUGGLED))
        self.assertIn(b"host", fields)

    _bothModes(locals(), "request", "_check",
               [b"Content-Length", b"content-length", b"close, Content-Length",
                b"Host", b"Transfer-Encoding", b"Content-Length, Host, X-A"],
               "Connection: {value} on a request with a body that is itself a request "
               "({mode} mode): the origin receives one request, framed by Content-Length, "
               "with that body (RFC 9110 section 7.6.1, RFC 9112 section 6.3).")

    async def test_requestChunkedNominated(self):
        """
        A chunked request whose Connection nominates Transfer-Encoding and
        Content-Length reaches the origin as one chunked request with the
        same body (RFC 9112 section 7.1).
        """
        response, seen = await self._forward(
            b"Transfer-Encoding: chunked\r\nConnection: Transfer-Encoding, Content-Length\r\n",
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED), reverse=True)
        self.assertEqual(response.status, 200)
        [(fields, body)] = seen.requests
        self.assertEqual(body, SMUGGLED)
        self.assertEqual(fields[b"transfer-encoding"], b"chunked")
        self.assertNotIn(b"content-length", fields)

    async def test_otherNominationsStillHonoured(self):
        """
        A nomination of an ordinary field still removes it (RFC 9110
        section 7.6.1): only the framing and Host are kept.
        """
        response, seen = await self._forward(
            b"Content-Length: 4\r\nX-Hop: 1\r\nConnection: X-Hop, Content-Length\r\n",
            b"abcd", reverse=True)
        [(fields, body)] = seen.requests
        self.assertNotIn(b"x-hop", fields)
        self.assertEqual((fields[b"content-length"], body), (b"4", b"abcd"))

    async def _response(self, script, reverse: bool):
        """
        Two requests on one connection to an origin that answers each
        request head with C{script}.

        @return: the two responses the client parsed.
        """
        from cachingproxy.proxy.upstream import Origin

        from twisted.internet import reactor
        from twisted.internet.protocol import Factory, Protocol

        class EveryRequest(Protocol):
            received = b""

            def dataReceived(self, data):
                self.received += data
                while b"\r\n\r\n" in self.received:
                    _, self.received = self.received.split(b"\r\n\r\n", 1)
                    self.transport.write(b"".join(script))

        listening = reactor.listenTCP(0, Factory.forProtocol(EveryRequest),
                                      interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        originPort = listening.getHost().port
        if reverse:
            settings = ProxySettings(viaName=b"test-proxy",
                                     upstream=Origin(b"http", "127.0.0.1", originPort))
            target = b"/r"
        else:
            settings = ProxySettings(viaName=b"test-proxy")
            target = b"http://127.0.0.1:%d/r" % originPort
        _, port, _ = startProxy(self, settings)
        client = await connectClient(port, self)
        request = b"GET " + target + b" HTTP/1.1\r\nHost: h.example\r\n\r\n"
        client.transport.write(request)
        [first] = await client.waitFor(1)
        client.transport.write(request)
        responses = await client.waitFor(2)
        return responses

    async def _checkResponse(self, nominated: bytes, reverse: bool):
        reply = (b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 5\r\n"
                 b"Connection: " + nominated + b"\r\n\r\nhello")
        first, second = await self._response([reply], reverse)
        self.assertEqual((first.status, first.body), (200, b"hello"))
        self.assertEqual(first.header(b"content-length"), b"5")
        self.assertEqual((second.status, second.body), (200, b"hello"))

    _bothModes(locals(), "response", "_checkResponse",
               [b"Content-Length", b"Transfer-Encoding", b"keep-alive, content-length"],
               "An origin response with Connection: {value} reaches the client framed by "
               "its Content-Length ({mode} mode), and the next response on the connection "
               "is read as one (RFC 9110 section 7.6.1, RFC 9112 section 6.3).")

    async def test_storedResponseKeepsFraming(self):
        """
        A storable response whose Connection nominates Content-Length is
        stored, then served whole from the cache with its length (RFC 9111
        section 3.1: the fields Connection nominates are not stored, but
        the framing cannot be nominated).
        """
        from twisted.internet import reactor

        from cachingproxy.cache.memory import MemoryStore
        from cachingproxy.cache.layer import CacheLayer, CacheSettings

        reply = (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n"
                 b"Connection: Content-Length\r\n\r\nhello")
        origin, originPort = listenScripted(self, [reply])
        factory, port, _ = startProxy(self, ProxySettings(viaName=b"test-proxy"))
        factory.cache = CacheLayer(MemoryStore(1 << 20, 1 << 20), reactor, factory.pool,
                                      CacheSettings())
        client = await connectClient(port, self)
        request = b"GET http://127.0.0.1:%d/s HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        client.transport.write(request)
        await client.waitFor(1)
        client.transport.write(request)
        first, second = await client.waitFor(2)
        self.assertEqual(len(origin.connections), 1)
        self.assertIn(b"hit", second.header(b"cache-status"))
        for response in (first, second):
            self.assertEqual((response.body, response.header(b"content-length")),
                             (b"hello", b"5"))
