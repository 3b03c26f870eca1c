"""
Tests for L{cachingproxy.proxy}: one client connection (L{ProxyProtocol})
driven byte by byte, with its upstream connections completed by hand from a
L{MemoryReactorClock} (STYLE.md section D, levels 2 and 3).

No test opens a socket: the client side is a L{StringTransport}, and every
connection the L{UpstreamPool} asks for is found in C{reactor.tcpClients}
and completed with a L{StringTransport} of its own (L{FakeOrigin}), or,
for the level-3 test, pumped against a L{twisted.web.server.Site} with
L{twisted.test.iosim}.

Tests marked with a C{todo} show a bug in the proxy that is reported rather
than fixed here; the C{todo} string names it.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    TimeoutError,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from cachingproxy.access import parseNetworks
from cachingproxy.proxy.states import ExchangeState, ReaderState
from cachingproxy.proxy.factory import ProxyFactory
from cachingproxy.proxy.connection import ProxyProtocol
from cachingproxy.proxy.settings import ProxySettings
from cachingproxy.proxy.upstream import Origin, UpstreamPool, UpstreamSettings, UpstreamState


CLIENT = IPv4Address("TCP", "127.0.0.1", 5555)
#: What C{formatHTTPDate} makes of a L{MemoryReactorClock} at time 0.
EPOCH_DATE = b"Thu, 01 Jan 1970 00:00:00 GMT"
REVERSE = Origin(b"http", "10.0.0.2", 80)


class FakeOrigin:
    """
    The far end of one upstream connection the pool made through a
    L{MemoryReactorClock}: what the proxy wrote to it, and a way to answer.

    @ivar wrapper: the endpoint's C{_WrappingProtocol}, which the reactor
        would drive.
    @ivar protocol: the L{cachingproxy.proxy.upstream.UpstreamProtocol} inside it.
    @ivar transport: the L{StringTransport} the proxy writes to.
    """

    def __init__(self, reactor: MemoryReactorClock, index: int) -> None:
        host, port, factory, timeout, bindAddress = reactor.tcpClients[index]
        self.host = host
        self.port = port
        self.timeout = timeout
        # Building and connecting the wrapping protocol is what fires the
        # endpoint's connect Deferred (_WrappingProtocol.connectionMade).
        self.wrapper = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", host, port)
        )
        self.wrapper.makeConnection(self.transport)
        self.protocol = self.wrapper._wrappedProtocol

    def received(self) -> bytes:
        """
        @return: every byte the proxy sent this origin so far.
        """
        return self.transport.value()

    def send(self, data: bytes) -> None:
        """
        The origin sends C{data} to the proxy.
        """
        self.wrapper.dataReceived(data)

    def close(self, reason: type = ConnectionDone) -> None:
        """
        The origin's side of the connection ends.
        """
        self.wrapper.connectionLost(Failure(reason()))


class ProxyHarness:
    """
    A L{ProxyFactory} on a L{MemoryReactorClock} with one client connection.
    """

    def __init__(
        self,
        settings: ProxySettings = ProxySettings(),
        upstreamSettings: UpstreamSettings = UpstreamSettings(),
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.pool = UpstreamPool(self.reactor, upstreamSettings)
        self.log: List[str] = []
        self.factory = ProxyFactory(
            self.reactor, settings, self.pool, accessLog=self.log.append
        )
        self.proto, self.transport = self.connectClient()

    def connectClient(self) -> Tuple[ProxyProtocol, StringTransport]:
        """
        Open one more client connection.
        """
        proto = self.factory.buildProtocol(CLIENT)
        transport = StringTransport(peerAddress=CLIENT)
        proto.makeConnection(transport)
        return proto, transport

    def send(self, data: bytes) -> None:
        """
        The client sends C{data}.
        """
        self.proto.dataReceived(data)

    def sendByteByByte(self, data: bytes) -> None:
        """
        The client sends C{data} one byte per read.
        """
        for i in range(len(data)):
            self.proto.dataReceived(data[i : i + 1])

    def received(self) -> bytes:
        """
        @return: every byte the proxy sent the client so far.
        """
        return self.transport.value()

    def origin(self, index: int = -1) -> FakeOrigin:
        """
        Complete a connection attempt the pool made.
        """
        return FakeOrigin(self.reactor, index)

    def connectionAttempts(self) -> List[Tuple[str, int]]:
        return [(host, port) for host, port, _, _, _ in self.reactor.tcpClients]

    def clientClosed(self, reason: type = ConnectionDone) -> None:
        """
        Deliver C{connectionLost} to the client protocol, as the reactor
        would after C{loseConnection} (or after the peer went away).
        """
        self.proto.connectionLost(Failure(reason()))


def clientTimers(h: "ProxyHarness") -> list:
    """
    @return: the pending timed calls of the client protocol (idle and
        header timeouts), leaving out the pool's.
    """
    return [
        call
        for call in h.reactor.getDelayedCalls()
        if getattr(call.func, "__self__", None) is h.proto
    ]


def errorResponse(
    status: int,
    reason: bytes,
    message: bytes,
    close: bool = True,
    withBody: bool = True,
    keepAlive10: bool = False,
    date: bytes = EPOCH_DATE,
) -> bytes:
    """
    @return: the exact bytes of one error response of the proxy.
    """
    body = message + b"\n"
    out = (
        b"HTTP/1.1 %d %s\r\n" % (status, reason)
        + b"Date: " + date + b"\r\n"
        + b"Content-Type: text/plain; charset=utf-8\r\n"
        + b"Content-Length: %d\r\n" % (len(body),)
        + b"Via: 1.1 cachingproxy\r\n"
    )
    if close:
        out += b"Connection: close\r\n"
    elif keepAlive10:
        out += b"Connection: keep-alive\r\n"
    out += b"\r\n"
    if withBody:
        out += body
    return out


def splitResponse(data: bytes) -> Tuple[bytes, List[Tuple[bytes, bytes]], bytes]:
    """
    @return: the status line, the fields and the rest of one response.
    """
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, data
    lines = head.split(b"\r\n")
    fields = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.append((name, value.strip()))
    return lines[0], fields, rest


def logStatus(line: str) -> int:
    """
    @return: the status recorded in one access log line.
    """
    after = line.split('" ', 1)[1]
    return int(after.split()[0])


GET_1 = b"GET http://10.0.0.1:8080/one HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n"
OK_HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
OK_HELLO_RELAYED = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nVia: 1.1 cachingproxy\r\n\r\nhello"
)
FORWARDED_GET_1 = (
    b"GET /one HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nVia: 1.1 cachingproxy\r\n\r\n"
)


class RequestForwardingTests(SynchronousTestCase):
    """
    The request the origin sees.
    """

    def test_absoluteFormRewrittenToOriginForm(self):
        """
        A forward-proxy request in absolute-form is sent to the origin its
        target names, in origin-form, with Host set from the target
        authority (RFC 9112 section 3.2.2), the query kept and C{Via}
        appended.
        """
        h = ProxyHarness()
        h.send(
            b"GET http://10.0.0.1:8080/a/b?c=d&e HTTP/1.1\r\n"
            b"Host: elsewhere.example\r\n"
            b"Accept: */*\r\n"
            b"\r\n"
        )
        self.assertEqual(h.connectionAttempts(), [("10.0.0.1", 8080)])
        origin = h.origin()
        self.assertEqual(
            origin.received(),
            b"GET /a/b?c=d&e HTTP/1.1\r\n"
            b"Host: 10.0.0.1:8080\r\n"
            b"Accept: */*\r\n"
            b"Via: 1.1 cachingproxy\r\n"
            b"\r\n",
        )

    def test_defaultPortLeftOutOfHost(self):
        """
        With the scheme's default port the forwarded Host has no port, and a
        target with an empty path is sent as C{/}; the query alone gets a
        leading slash.
        """
        h = ProxyHarness()
        h.send(b"GET http://10.0.0.1?q=1 HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n")
        self.assertEqual(h.connectionAttempts(), [("10.0.0.1", 80)])
        self.assertEqual(
            h.origin().received(),
            b"GET /?q=1 HTTP/1.1\r\nHost: 10.0.0.1\r\nVia: 1.1 cachingproxy\r\n\r\n",
        )

    def test_optionsEmptyPathBecomesAsterisk(self):
        """
        An OPTIONS request whose absolute-form target has an empty path is
        forwarded as C{OPTIONS *} (RFC 9112 section 3.2.4).
        """
        h = ProxyHarness()
        h.send(b"OPTIONS http://10.0.0.1:8080 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(
            h.origin().received(),
            b"OPTIONS * HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n"
            b"Via: 1.1 cachingproxy\r\n\r\n",
        )

    def test_byteByByteSameAsWhole(self):
        """
        A request with a chunked body, split into one-byte reads, is
        forwarded with the same head and the same body as when read at once
        (one-byte reads of chunk data become one-byte chunks upstream, so the
        bodies are compared de-chunked).
        """
        request = (
            b"POST http://10.0.0.1:8080/up HTTP/1.1\r\n"
            b"Host: 10.0.0.1:8080\r\n"
            b"Transfer-Encoding: chunked\r\n"
            b"X-Thing: 1\r\n"
            b"\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        expectedHead = (
            b"POST /up HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nX-Thing: 1\r\n"
            b"Transfer-Encoding: chunked\r\nVia: 1.1 cachingproxy\r\n\r\n"
        )
        whole = ProxyHarness()
        whole.send(request)
        wholeOrigin = whole.origin()
        self.assertEqual(wholeOrigin.received(), expectedHead + b"5\r\nhello\r\n0\r\n\r\n")

        split = ProxyHarness()
        split.sendByteByByte(request)
        splitOrigin = split.origin()
        head, _, body = splitOrigin.received().partition(b"\r\n\r\n")
        self.assertEqual(head + b"\r\n\r\n", expectedHead)
        self.assertEqual(_dechunk(body), b"hello")
        self.assertEqual(split.proto.reader, ReaderState.IDLE)

    def test_byteByByteGetIdentical(self):
        """
        A bodiless GET split into one-byte reads is forwarded byte for byte
        as when read at once, and its response is relayed the same.
        """
        for feed in ("send", "sendByteByByte"):
            h = ProxyHarness()
            getattr(h, feed)(GET_1)
            origin = h.origin()
            self.assertEqual(origin.received(), FORWARDED_GET_1, feed)
            origin.send(OK_HELLO)
            self.assertEqual(h.received(), OK_HELLO_RELAYED, feed)

    def test_hopByHopFieldsRemovedFromRequest(self):
        """
        Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade,
        Proxy-Authorization and every field the Connection field nominates
        are not forwarded (RFC 9110 section 7.6.1); other fields are.
        """
        h = ProxyHarness()
        h.send(
            b"GET http://10.0.0.1:8080/ HTTP/1.1\r\n"
            b"Host: 10.0.0.1:8080\r\n"
            b"Connection: keep-alive, X-Private, x-other\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"Proxy-Connection: keep-alive\r\n"
            b"TE: trailers\r\n"
            b"Trailer: X-Checksum\r\n"
            b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
            b"X-Private: secret\r\n"
            b"X-Other: also\r\n"
            b"X-Public: kept\r\n"
            b"\r\n"
        )
        self.assertEqual(
            h.origin().received(),
            b"GET / HTTP/1.1\r\n"
            b"Host: 10.0.0.1:8080\r\n"
            b"X-Public: kept\r\n"
            b"Via: 1.1 cachingproxy\r\n"
            b"\r\n",
        )

    def test_upgradeNotForwarded(self):
        """
        A request asking for an upgrade to a protocol the proxy does not
        carry (RFC 9110 section 7.8; h2c is not in the default
        C{upgradeProtocols}) is forwarded as a plain request (Upgrade and
        Connection removed), and a request pipelined behind it in the same
        read is still parsed and forwarded in turn.
        """
        h = ProxyHarness()
        h.send(
            b"GET http://10.0.0.1:8080/ws HTTP/1.1\r\n"
            b"Host: 10.0.0.1:8080\r\n"
            b"Connection: Upgrade\r\n"
            b"Upgrade: h2c\r\n"
            b"\r\n" + GET_1
        )
        origin = h.origin()
        self.assertEqual(
            origin.received(),
            b"GET /ws HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nVia: 1.1 cachingproxy\r\n\r\n",
        )
        origin.transport.clear()
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(origin.received(), FORWARDED_GET_1)

    def test_upgradeIdleTimeoutRestartsOnTraffic(self):
        """
        RFC 9110 section 7.8: after a 101 the connection is a tunnel whose
        idle timeout starts again with every byte, either way, and closes
        both connections once it runs out.
        """
        h = ProxyHarness(ProxySettings(upgradeIdleTimeout=10))
        h.send(
            b"GET http://10.0.0.1:8080/ws HTTP/1.1\r\n"
            b"Host: 10.0.0.1:8080\r\n"
            b"Connection: Upgrade\r\n"
            b"Upgrade: websocket\r\n"
            b"\r\n"
        )
        origin = h.origin()
        self.assertIn(b"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n", origin.received())
        origin.send(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                    b"Upgrade: websocket\r\n\r\n")
        self.assertTrue(h.received().startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertIs(h.proto.reader, ReaderState.TUNNEL)
        h.reactor.advance(8)
        h.send(b"up")
        h.reactor.advance(8)
        origin.send(b"down")
        h.reactor.advance(8)
        self.assertFalse(h.transport.disconnecting)
        self.assertTrue(origin.received().endswith(b"\r\n\r\nup"))
        self.assertTrue(h.received().endswith(b"\r\n\r\ndown"))
        h.reactor.advance(2.5)
        self.assertTrue(h.transport.disconnecting)
        self.assertTrue(origin.transport.disconnecting)

    def test_viaAppendedToRequest(self):
        """
        An existing Via is kept and this proxy's entry, with the protocol
        version of the request it received, is added after it; the Host an
        HTTP/1.0 client left out is added as the first field (RFC 9110
        section 7.2).
        """
        h = ProxyHarness()
        h.send(
            b"GET http://10.0.0.1:8080/ HTTP/1.0\r\n"
            b"Via: 1.1 first-proxy\r\n"
            b"\r\n"
        )
        self.assertEqual(
            h.origin().received(),
            b"GET / HTTP/1.1\r\n"
            b"Host: 10.0.0.1:8080\r\n"
            b"Via: 1.1 first-proxy\r\n"
            b"Via: 1.0 cachingproxy\r\n"
            b"\r\n",
        )

    def test_fieldOrderAndRepeatsKeptInRequest(self):
        """
        Fields are forwarded in the order received, repeated fields stay
        separate lines, and the case of their names is kept.
        """
        h = ProxyHarness()
        h.send(
            b"GET http://10.0.0.1:8080/ HTTP/1.1\r\n"
            b"X-B: 2\r\n"
            b"Host: 10.0.0.1:8080\r\n"
            b"x-a: 1\r\n"
            b"Cookie: a=1\r\n"
            b"X-B: 3\r\n"
            b"Cookie: b=2\r\n"
            b"\r\n"
        )
        self.assertEqual(
            h.origin().received(),
            b"GET / HTTP/1.1\r\n"
            b"X-B: 2\r\n"
            b"Host: 10.0.0.1:8080\r\n"
            b"x-a: 1\r\n"
            b"Cookie: a=1\r\n"
            b"X-B: 3\r\n"
            b"Cookie: b=2\r\n"
            b"Via: 1.1 cachingproxy\r\n"
            b"\r\n",
        )

    def test_expectRemovedFromHttp10Request(self):
        """
        Expect is not forwarded for an HTTP/1.0 request (an HTTP/1.0 client
        cannot take a 100 Continue), while the body is.
        """
        h = ProxyHarness()
        h.send(
            b"POST http://10.0.0.1:8080/ HTTP/1.0\r\n"
            b"Expect: 100-continue\r\n"
            b"Content-Length: 2\r\n"
            b"\r\nhi"
        )
        self.assertEqual(
            h.origin().received(),
            b"POST / HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nContent-Length: 2\r\n"
            b"Via: 1.0 cachingproxy\r\n\r\nhi",
        )

    def test_extensionMethodForwarded(self):
        """
        A method llhttp does not know is forwarded with its name intact, its
        body framed as usual (RFC 9110 section 9.1).
        """
        h = ProxyHarness()
        h.send(
            b"BREW http://10.0.0.1:8080/pot HTTP/1.1\r\n"
            b"Host: 10.0.0.1:8080\r\n"
            b"Content-Length: 3\r\n"
            b"\r\ntea"
        )
        origin = h.origin()
        self.assertEqual(
            origin.received(),
            b"BREW /pot HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nContent-Length: 3\r\n"
            b"Via: 1.1 cachingproxy\r\n\r\ntea",
        )
        origin.send(b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 0\r\n"
            b"Via: 1.1 cachingproxy\r\n\r\n",
        )
        self.assertIn('"BREW http://10.0.0.1:8080/pot HTTP/1.1" 418 0', h.log[0])

    def test_extensionMethodByteByByte(self):
        """
        An extension method split over several reads is still recognised
        and forwarded with its name intact.
        """
        h = ProxyHarness()
        h.sendByteByByte(
            b"BREW http://10.0.0.1:8080/pot HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n"
        )
        self.assertEqual(
            h.origin().received(),
            b"BREW /pot HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nVia: 1.1 cachingproxy\r\n\r\n",
        )

    def test_extensionMethodPipelined(self):
        """
        An extension method pipelined in the same read behind another
        request is forwarded in its turn, like the first request.
        """
        h = ProxyHarness()
        h.send(
            GET_1
            + b"BREW http://10.0.0.1:8080/pot HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n"
        )
        origin = h.origin()
        origin.send(OK_HELLO)
        self.assertEqual(
            origin.received(),
            FORWARDED_GET_1
            + b"BREW /pot HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n"
            b"Via: 1.1 cachingproxy\r\n\r\n",
        )
        self.assertEqual(h.received(), OK_HELLO_RELAYED)
        self.assertFalse(h.transport.disconnecting)

    def test_reverseModeOriginForm(self):
        """
        In reverse mode an origin-form request goes to the configured
        upstream, its path prefixed with C{upstreamPath}, with Host naming
        the upstream.
        """
        h = ProxyHarness(ProxySettings(upstream=REVERSE, upstreamPath=b"/app"))
        h.send(b"GET /x?y HTTP/1.1\r\nHost: public.example\r\n\r\n")
        self.assertEqual(h.connectionAttempts(), [("10.0.0.2", 80)])
        self.assertEqual(
            h.origin().received(),
            b"GET /app/x?y HTTP/1.1\r\nHost: 10.0.0.2\r\nVia: 1.1 cachingproxy\r\n\r\n",
        )

    def test_reverseModeAbsoluteFormGoesToUpstream(self):
        """
        In reverse mode an absolute-form target's authority is ignored:
        the request still goes to the configured upstream.
        """
        h = ProxyHarness(ProxySettings(upstream=REVERSE))
        h.send(b"GET http://10.9.9.9:81/p HTTP/1.1\r\nHost: 10.9.9.9:81\r\n\r\n")
        self.assertEqual(h.connectionAttempts(), [("10.0.0.2", 80)])
        self.assertEqual(
            h.origin().received(),
            b"GET /p HTTP/1.1\r\nHost: 10.0.0.2\r\nVia: 1.1 cachingproxy\r\n\r\n",
        )

    def test_forwardedForFields(self):
        """
        With C{xForwardedFor} and C{forwarded} on, a trusted proxy's
        X-Forwarded-For is appended to and a Forwarded element is added.
        """
        h = ProxyHarness(ProxySettings(xForwardedFor=True, forwarded=True,
                                       trustedProxies=parseNetworks(["127.0.0.1"])))
        h.send(
            b"GET http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\n"
            b"X-Forwarded-For: 192.0.2.1\r\n\r\n"
        )
        self.assertEqual(
            h.origin().received(),
            b"GET / HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n"
            b"X-Forwarded-For: 192.0.2.1, 127.0.0.1\r\n"
            b"Forwarded: for=127.0.0.1\r\n"
            b"Via: 1.1 cachingproxy\r\n\r\n",
        )

    def test_untrustedForwardingFieldsReplaced(self):
        """
        From a client that is not a trusted proxy, every forwarding field is
        dropped, and the proxy's own take the place of those it adds.
        """
        h = ProxyHarness(ProxySettings(xForwardedFor=True, forwarded=True))
        h.send(
            b"GET http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\n"
            b"X-Forwarded-For: 192.0.2.1\r\nForwarded: for=192.0.2.1\r\n"
            b"X-Real-IP: 192.0.2.1\r\nX-Forwarded-Host: evil.example\r\n"
            b"X-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\n"
            b"X-Forwarded-Server: evil\r\n\r\n"
        )
        self.assertEqual(
            h.origin().received(),
            b"GET / HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n"
            b"X-Forwarded-For: 127.0.0.1\r\n"
            b"Forwarded: for=127.0.0.1\r\n"
            b"Via: 1.1 cachingproxy\r\n\r\n",
        )


def _dechunk(data: bytes) -> bytes:
    """
    @return: the payload of a complete chunked body (no trailers).
    """
    out = b""
    while True:
        size, _, data = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            assert data == b"\r\n", data
            return out
        out += data[:n]
        assert data[n : n + 2] == b"\r\n"
        data = data[n + 2 :]


class ResponseRelayTests(SynchronousTestCase):
    """
    The response the client sees.
    """

    def exchange(self, response: bytes, request: bytes = GET_1) -> ProxyHarness:
        h = ProxyHarness()
        h.send(request)
        h.origin().send(response)
        return h

    def test_hopByHopFieldsRemovedFromResponse(self):
        """
        Connection, Keep-Alive, Proxy-Authenticate, Trailer, Upgrade and the
        fields Connection nominates are removed from the response; Via is
        added.
        """
        h = self.exchange(
            b"HTTP/1.1 200 OK\r\n"
            b"Connection: keep-alive, X-Hop\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"X-Hop: 1\r\n"
            b"Trailer: X-Sum\r\n"
            b"Proxy-Authenticate: Basic\r\n"
            b"Upgrade: h2c\r\n"
            b"Content-Length: 2\r\n"
            b"X-End: 2\r\n"
            b"\r\nok"
        )
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-End: 2\r\n"
            b"Via: 1.1 cachingproxy\r\n\r\nok",
        )

    def test_fieldOrderAndRepeatsKeptInResponse(self):
        """
        Response fields keep their order, their repeats (Set-Cookie) and an
        earlier Via, and the reason phrase is relayed.
        """
        h = self.exchange(
            b"HTTP/1.1 404 Nope\r\n"
            b"Set-Cookie: a=1\r\n"
            b"Via: 1.1 origin-cache\r\n"
            b"Set-Cookie: b=2\r\n"
            b"Content-Length: 0\r\n"
            b"\r\n"
        )
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 404 Nope\r\nSet-Cookie: a=1\r\nVia: 1.1 origin-cache\r\n"
            b"Set-Cookie: b=2\r\nContent-Length: 0\r\nVia: 1.1 cachingproxy\r\n\r\n",
        )
        self.assertEqual(logStatus(h.log[0]), 404)

    def test_chunkedResponseToHttp11Client(self):
        """
        A chunked response goes to an HTTP/1.1 client chunked, one chunk per
        piece received, with a proper last chunk.
        """
        h = ProxyHarness()
        h.send(GET_1)
        origin = h.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
        origin.send(b"2\r\nef\r\n0\r\nX-Trailer: t\r\n\r\n")
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nVia: 1.1 cachingproxy\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n",
        )
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(h.pool.idleCount(), 1)

    def test_contentLengthResponse(self):
        """
        A response with Content-Length is passed on with that length and its
        body as it arrives; the log line records the body bytes sent.
        """
        h = ProxyHarness()
        h.send(GET_1)
        origin = h.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nVia: 1.1 cachingproxy\r\n\r\nabc",
        )
        self.assertEqual(h.log, [])
        origin.send(b"def")
        self.assertTrue(h.received().endswith(b"\r\n\r\nabcdef"))
        self.assertEqual(len(h.log), 1)
        self.assertIn('"GET http://10.0.0.1:8080/one HTTP/1.1" 200 6', h.log[0])

    def test_closeDelimitedResponseEndsWithLastChunk(self):
        """
        A response framed by the origin closing (no Content-Length, not
        chunked) ends normally when the origin closes: an HTTP/1.1 client
        gets it chunked with a last chunk, and its connection stays open.
        """
        h = ProxyHarness()
        h.send(GET_1)
        origin = h.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nabc")
        origin.send(b"def")
        origin.close()
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nVia: 1.1 cachingproxy\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
        )
        self.assertFalse(h.transport.disconnecting)

    def test_closeDelimitedResponseToHttp10Client(self):
        """
        A close-delimited response goes to an HTTP/1.0 client
        close-delimited too: its body, then the connection closes.
        """
        h = ProxyHarness()
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.0\r\n\r\n")
        origin = h.origin()
        origin.send(b"HTTP/1.0 200 OK\r\n\r\nabc")
        self.assertFalse(h.transport.disconnecting)
        origin.close()
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nVia: 1.1 cachingproxy\r\nConnection: close\r\n\r\nabc",
        )
        self.assertTrue(h.transport.disconnecting)

    def test_originClosesMidBodyContentLength(self):
        """
        When the origin closes before a Content-Length body is complete, the
        client connection is closed with nothing more written (the short
        body shows the failure), and the log records the bytes sent.
        """
        h = ProxyHarness()
        h.send(GET_1)
        origin = h.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        before = h.received()
        origin.close(ConnectionLost)
        self.assertEqual(h.received(), before)
        self.assertTrue(before.endswith(b"\r\n\r\nabc"))
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.proto.reader, ReaderState.CLOSED)
        self.assertEqual(len(h.log), 1)
        self.assertIn(" 200 3 ", h.log[0])
        self.assertEqual(h.pool.idleCount(), 0)

    def test_originClosesMidBodyChunked(self):
        """
        When the origin closes in the middle of a chunked body, the client
        gets no last chunk (no false end of message) and its connection is
        closed.
        """
        h = ProxyHarness()
        h.send(GET_1)
        origin = h.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        origin.close(ConnectionLost)
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nVia: 1.1 cachingproxy\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n",
        )
        self.assertTrue(h.transport.disconnecting)

    def test_originClosesBeforeHead(self):
        """
        When a fresh origin connection closes before any response byte, the
        client gets a 502 and keeps its connection.
        """
        h = ProxyHarness()
        h.send(GET_1)
        h.origin().close(ConnectionLost)
        self.assertEqual(
            h.received(),
            errorResponse(502, b"Bad Gateway", b"the origin closed the connection", close=False),
        )
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(logStatus(h.log[0]), 502)

    def test_invalidResponse(self):
        """
        A response llhttp rejects (Content-Length with Transfer-Encoding) is
        a 502 for the client, and the origin connection is aborted, never
        pooled.
        """
        h = ProxyHarness()
        h.send(GET_1)
        origin = h.origin()
        origin.send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.assertEqual(
            h.received(),
            errorResponse(502, b"Bad Gateway", b"invalid response from the origin", close=False),
        )
        self.assertTrue(origin.transport.disconnected)
        self.assertEqual(h.pool.idleCount(), 0)

    def test_noContentResponse(self):
        """
        A 304 keeps its Content-Length and has no body, even though the
        origin's Content-Length is not zero; the origin connection is pooled.
        """
        h = self.exchange(
            b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 10\r\n\r\n'
        )
        self.assertEqual(
            h.received(),
            b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 10\r\n'
            b"Via: 1.1 cachingproxy\r\n\r\n",
        )
        self.assertEqual(h.pool.idleCount(), 1)


class WriteCoalescingTests(SynchronousTestCase):
    """
    A response head goes to the client together with the body bytes that
    came in the same read from the origin: one write, not two.
    """

    def harness(self):
        h = ProxyHarness()
        writes: List[bytes] = []
        write = h.transport.write

        def recording(data: bytes) -> None:
            writes.append(data)
            write(data)

        h.transport.write = recording
        return h, writes

    def test_headAndBodyInOneRead(self):
        """
        Head and whole body in one read from the origin: one write.
        """
        h, writes = self.harness()
        h.send(GET_1)
        h.origin().send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(writes, [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 cachingproxy\r\n\r\nok"])

    def test_headAloneIsNotHeldBack(self):
        """
        A head whose body has not come yet is written when the read that
        brought it is handled, not later with the body.
        """
        h, writes = self.harness()
        h.send(GET_1)
        origin = h.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        self.assertEqual(writes, [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 cachingproxy\r\n\r\n"])
        origin.send(b"ok")
        self.assertEqual(writes[1:], [b"ok"])

    def test_bodylessResponse(self):
        """
        A response without a body (a 304 here) is written when it ends.
        """
        h, writes = self.harness()
        h.send(GET_1)
        h.origin().send(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n")
        self.assertEqual(writes, [
            b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nVia: 1.1 cachingproxy\r\n\r\n"])
        self.assertEqual(logStatus(h.log[0]), 304)

    def test_chunkedHeadWithFirstChunk(self):
        """
        A chunked response: the head and the first chunk of the same read
        leave together; the last chunk follows with its own read.
        """
        h, writes = self.harness()
        h.send(GET_1)
        origin = h.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
        self.assertEqual(len(writes), 1)
        self.assertTrue(writes[0].endswith(b"\r\n\r\n2\r\nok\r\n"), writes[0])
        origin.send(b"0\r\n\r\n")
        self.assertEqual(writes[1:], [b"0\r\n\r\n"])

    def test_originFailsAfterHeadInSameRead(self):
        """
        The origin sends a head and then invalid framing in one read: the
        client connection is closed and no head is written that would
        promise a body which never comes.
        """
        h, writes = self.harness()
        h.send(GET_1)
        h.origin().send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        self.assertEqual(writes, [])
        self.assertTrue(h.transport.disconnecting)


class KeepAliveTests(SynchronousTestCase):
    """
    When the client connection persists (RFC 9112 section 9.3).
    """

    def test_http11Persists(self):
        """
        An HTTP/1.1 connection stays open after a response, and the next
        request on it reuses the pooled origin connection.
        """
        h = ProxyHarness()
        h.send(GET_1)
        origin = h.origin()
        origin.send(OK_HELLO)
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(h.proto.reader, ReaderState.IDLE)
        origin.transport.clear()
        h.transport.clear()
        h.send(GET_1)
        self.assertEqual(len(h.reactor.tcpClients), 1)
        self.assertEqual(origin.received(), FORWARDED_GET_1)
        origin.send(OK_HELLO)
        self.assertEqual(h.received(), OK_HELLO_RELAYED)

    def test_connectionCloseClosesAfterResponse(self):
        """
        C{Connection: close} from the client: the response says so, the
        connection closes once the response is sent and not before, and a
        request sent after it is not read.
        """
        h = ProxyHarness()
        h.send(
            b"GET http://10.0.0.1:8080/one HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            + GET_1
        )
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(h.proto.reader, ReaderState.CLOSED)
        origin = h.origin()
        origin.send(OK_HELLO)
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nVia: 1.1 cachingproxy\r\n"
            b"Connection: close\r\n\r\nhello",
        )
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(origin.received(), FORWARDED_GET_1)
        self.assertEqual(len(h.reactor.tcpClients), 1)

    def test_http10ClosesByDefault(self):
        """
        An HTTP/1.0 request without keep-alive gets C{Connection: close}
        and the connection ends after the response.
        """
        h = ProxyHarness()
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.0\r\n\r\n")
        h.origin().send(OK_HELLO)
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nVia: 1.1 cachingproxy\r\n"
            b"Connection: close\r\n\r\nhello",
        )
        self.assertTrue(h.transport.disconnecting)

    def test_http10KeepAlive(self):
        """
        An HTTP/1.0 request with C{Connection: keep-alive} gets a response
        saying C{Connection: keep-alive}, and the connection stays open.
        """
        h = ProxyHarness()
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        h.origin().send(OK_HELLO)
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nVia: 1.1 cachingproxy\r\n"
            b"Connection: keep-alive\r\n\r\nhello",
        )
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(h.proto.reader, ReaderState.IDLE)

    def test_http10ClientChunkedUpstream(self):
        """
        An HTTP/1.0 client cannot read chunked: a chunked response reaches it
        de-chunked, ended by the connection closing, even with keep-alive
        asked for.
        """
        h = ProxyHarness()
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        origin = h.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        self.assertFalse(h.transport.disconnecting)
        origin.send(b"2\r\nde\r\n0\r\n\r\n")
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nVia: 1.1 cachingproxy\r\nConnection: close\r\n\r\nabcde",
        )
        self.assertTrue(h.transport.disconnecting)
        # The origin connection itself was fine and is pooled.
        self.assertEqual(h.pool.idleCount(), 1)

    def test_upstreamCloseDoesNotCloseClient(self):
        """
        C{Connection: close} from the origin ends the origin connection
        (never pooled) but not the client's.
        """
        h = ProxyHarness()
        h.send(GET_1)
        origin = h.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 cachingproxy\r\n\r\nok",
        )
        self.assertFalse(h.transport.disconnecting)
        self.assertTrue(origin.transport.disconnecting)
        self.assertEqual(h.pool.idleCount(), 0)


class PipeliningTests(SynchronousTestCase):
    """
    Several requests before any response (RFC 9112 section 9.3.2).
    """

    REQUESTS = [
        b"GET http://10.0.0.1:8080/1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST http://10.0.0.2:8080/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"GET http://10.0.0.1:8080/3 HTTP/1.1\r\nHost: x\r\n\r\n",
    ]

    def runThree(self, pipelined: bool) -> ProxyHarness:
        h = ProxyHarness()
        if pipelined:
            h.send(b"".join(self.REQUESTS))
        else:
            for request in self.REQUESTS:
                h.send(request)
        # Only the first request is being forwarded.
        self.assertEqual(h.connectionAttempts(), [("10.0.0.1", 8080)])
        self.assertEqual(
            [e.state for e in h.proto._queue],
            [ExchangeState.FORWARDING, ExchangeState.QUEUED, ExchangeState.QUEUED],
        )
        first = h.origin(0)
        first.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
        self.assertEqual(h.connectionAttempts(), [("10.0.0.1", 8080), ("10.0.0.2", 8080)])
        second = h.origin(1)
        self.assertEqual(
            second.received(),
            b"POST /2 HTTP/1.1\r\nHost: 10.0.0.2:8080\r\nContent-Length: 5\r\n"
            b"Via: 1.1 cachingproxy\r\n\r\nhello",
        )
        # The third is held until the second is answered, though its origin
        # connection is idle in the pool and could carry it.
        self.assertEqual(
            first.received(),
            b"GET /1 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nVia: 1.1 cachingproxy\r\n\r\n",
        )
        second.send(b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\n2")
        self.assertEqual(
            first.received(),
            b"GET /1 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nVia: 1.1 cachingproxy\r\n\r\n"
            b"GET /3 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nVia: 1.1 cachingproxy\r\n\r\n",
        )
        first.send(b"HTTP/1.1 202 Accepted\r\nContent-Length: 1\r\n\r\n3")
        return h

    def assertThreeAnswered(self, h: ProxyHarness) -> None:
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nVia: 1.1 cachingproxy\r\n\r\n1"
            b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\nVia: 1.1 cachingproxy\r\n\r\n2"
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 1\r\nVia: 1.1 cachingproxy\r\n\r\n3",
        )
        self.assertEqual([logStatus(line) for line in h.log], [200, 201, 202])
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(h.proto._bufferedBytes, 0)

    def test_pipelinedInOneRead(self):
        """
        Three requests in one read, for two origins, one with a body, are
        forwarded one at a time and answered in order; the pipelined body is
        buffered until its request is forwarded.
        """
        self.assertThreeAnswered(self.runThree(pipelined=True))

    def test_separateReads(self):
        """
        The same three requests in separate reads give the same exchange.
        """
        self.assertThreeAnswered(self.runThree(pipelined=False))

    def test_laterOriginReadyFirst(self):
        """
        Responses go out in request order even when the origin of a later
        request has its answer ready first: nothing of the second response
        reaches the client before the first response is complete.
        """
        h = ProxyHarness()
        h.send(
            b"GET http://10.0.0.1:8080/slow HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET http://10.0.0.2:8080/fast HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        slow = h.origin(0)
        slow.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsl")
        # The second request has not been sent anywhere yet.
        self.assertEqual(len(h.reactor.tcpClients), 1)
        slow.send(b"ow")
        fast = h.origin(1)
        fast.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfast")
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nVia: 1.1 cachingproxy\r\n\r\nslow"
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nVia: 1.1 cachingproxy\r\n\r\nfast",
        )

    def test_pipelinedVersionsEach(self):
        """
        Each request of a read has its own version, whether its request line
        starts the read or not: an HTTP/1.1 request, then an HTTP/1.0 one
        without Host (valid in 1.0 only), then a 1.1 one again, all in one
        read, then a 1.0 one split across two reads.
        """
        h = ProxyHarness()
        h.send(
            b"GET http://10.0.0.1:8080/a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET http://10.0.0.1:8080/b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            b"GET http://10.0.0.1:8080/c HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        origin = h.origin(0)
        for _ in range(3):
            origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        h.send(b"GET http://10.0.0.1:8080/d HT")
        h.send(b"TP/1.0\r\nConnection: keep-alive\r\n\r\n")
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 cachingproxy\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 cachingproxy\r\n"
            b"Connection: keep-alive\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 cachingproxy\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 cachingproxy\r\n"
            b"Connection: keep-alive\r\n\r\nok",
        )

    def test_pipelinedBodyBeyondBufferPausesReading(self):
        """
        A pipelined request body beyond the buffer bound (64 KiB) stops the
        connection reading; reading resumes once that body has been handed
        upstream.
        """
        h = ProxyHarness()
        body = b"x" * (70 * 1024)
        h.send(GET_1)
        h.send(
            b"POST http://10.0.0.1:8080/big HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: %d\r\n\r\n" % (len(body),)
        )
        h.send(body)
        self.assertEqual(h.transport.producerState, "paused")
        origin = h.origin()
        origin.send(OK_HELLO)
        # The big request now goes on the pooled connection, body and all.
        self.assertTrue(origin.received().endswith(b"\r\n\r\n" + body))
        self.assertEqual(h.transport.producerState, "producing")
        self.assertEqual(h.proto._bufferedBytes, 0)

    def test_deepPipelinePausesReading(self):
        """
        More than 16 requests held behind the one being answered stop the
        connection reading; it reads again once one is answered.
        """
        h = ProxyHarness()
        h.send(GET_1 * 16)
        self.assertEqual(h.transport.producerState, "producing")
        h.send(GET_1)
        self.assertEqual(h.transport.producerState, "paused")
        h.origin().send(OK_HELLO)
        self.assertEqual(h.transport.producerState, "producing")

    def test_pipelinedConnectionCloseAnswered(self):
        """
        A request with C{Connection: close} pipelined behind another is
        still answered: the first response keeps the connection, the second
        says C{Connection: close}, and the connection closes after it (RFC
        9112 section 9.6).
        """
        h = ProxyHarness()
        h.send(
            GET_1
            + b"GET http://10.0.0.1:8080/two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        origin = h.origin()
        origin.send(OK_HELLO)
        self.assertEqual(h.received(), OK_HELLO_RELAYED)
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(
            origin.received(),
            FORWARDED_GET_1
            + b"GET /two HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nVia: 1.1 cachingproxy\r\n\r\n",
        )
        origin.send(OK_HELLO)
        self.assertEqual(
            h.received(),
            OK_HELLO_RELAYED
            + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nVia: 1.1 cachingproxy\r\n"
            b"Connection: close\r\n\r\nhello",
        )
        self.assertTrue(h.transport.disconnecting)


    def test_pipelinedMalformedAnsweredAfterEarlier(self):
        """
        A malformed request pipelined behind a good one gets its 400 after
        the good one's response, then the connection closes.
        """
        h = ProxyHarness()
        h.send(GET_1 + b"GET http://10.0.0.1:8080/ HTTP/1.1\r\nBad Field: x\r\n\r\n")
        self.assertFalse(h.transport.disconnecting)
        h.origin().send(OK_HELLO)
        data = h.received()
        self.assertTrue(data.startswith(OK_HELLO_RELAYED), data)
        rest = data[len(OK_HELLO_RELAYED):]
        self.assertTrue(rest.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data)
        self.assertTrue(h.transport.disconnecting)



class BodyTests(SynchronousTestCase):
    """
    Request bodies on their way upstream.
    """

    def test_chunkedRequestBodyRechunked(self):
        """
        A chunked request body is sent upstream chunked, one chunk per piece
        read, trailer fields dropped, ended by a last chunk.
        """
        h = ProxyHarness()
        h.send(
            b"POST http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        origin = h.origin()
        h.send(b"5;ext=1\r\nhello\r\n")
        h.send(b"6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
        self.assertEqual(
            origin.received(),
            b"POST / HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nTransfer-Encoding: chunked\r\n"
            b"Via: 1.1 cachingproxy\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        self.assertEqual(h.proto.reader, ReaderState.IDLE)

    def test_chunkedBodyBeforeConnectBuffered(self):
        """
        Chunked body data read before the origin connection is made is held
        and sent (re-chunked) once it is.
        """
        h = ProxyHarness()
        h.send(
            b"POST http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        origin = h.origin()
        self.assertEqual(
            origin.received(),
            b"POST / HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nTransfer-Encoding: chunked\r\n"
            b"Via: 1.1 cachingproxy\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )

    def test_contentLengthBodyStreamed(self):
        """
        A Content-Length body is sent upstream as it arrives, unchanged;
        while it streams, the origin transport's producer is the client's
        reading, and it is unregistered once the body is complete.
        """
        h = ProxyHarness()
        h.send(b"PUT http://10.0.0.1:8080/f HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
        origin = h.origin()
        self.assertIsNotNone(origin.transport.producer)
        h.send(b"abc")
        self.assertTrue(origin.received().endswith(b"\r\n\r\nabc"))
        h.send(b"def")
        self.assertEqual(
            origin.received(),
            b"PUT /f HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nContent-Length: 6\r\n"
            b"Via: 1.1 cachingproxy\r\n\r\nabcdef",
        )
        self.assertIsNone(origin.transport.producer)

    def test_earlyResponseEndsClientConnection(self):
        """
        When the origin answers before the request body is complete, the
        response is relayed, the origin connection is closed and the client
        connection closes after the response (the rest of the body cannot
        be told from a next request).
        """
        h = ProxyHarness()
        h.send(b"POST http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        origin = h.origin()
        origin.send(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(h.received().startswith(b"HTTP/1.1 413 Content Too Large\r\n"))
        self.assertTrue(origin.transport.disconnecting)
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.pool.idleCount(), 0)


class InterimResponseTests(SynchronousTestCase):
    """
    1xx responses (RFC 9110 section 15.2).
    """

    def test_100ContinueRelayed(self):
        """
        With C{Expect: 100-continue}, the origin's 100 is relayed, then the
        body the client sends after it is forwarded and the final response
        relayed.
        """
        h = ProxyHarness()
        h.send(
            b"POST http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\n"
            b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        origin = h.origin()
        self.assertEqual(
            origin.received(),
            b"POST / HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\nVia: 1.1 cachingproxy\r\n\r\n",
        )
        origin.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(h.received(), b"HTTP/1.1 100 Continue\r\n\r\n")
        h.send(b"hello")
        self.assertTrue(origin.received().endswith(b"\r\n\r\nhello"))
        origin.send(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nVia: 1.1 cachingproxy\r\n\r\n",
        )

    def test_100NotRelayedUnasked(self):
        """
        A 100 the client did not ask for is not relayed.
        """
        h = ProxyHarness()
        h.send(GET_1)
        origin = h.origin()
        origin.send(b"HTTP/1.1 100 Continue\r\n\r\n" + OK_HELLO)
        self.assertEqual(h.received(), OK_HELLO_RELAYED)

    def test_103RelayedToHttp11Client(self):
        """
        103 Early Hints is relayed to an HTTP/1.1 client with its fields
        (hop-by-hop ones removed), before the final response.
        """
        h = ProxyHarness()
        h.send(GET_1)
        origin = h.origin()
        origin.send(
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n"
            b"Connection: X-H\r\nX-H: 1\r\n\r\n" + OK_HELLO
        )
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            + OK_HELLO_RELAYED,
        )

    def test_103NotRelayedToHttp10Client(self):
        """
        An HTTP/1.0 client gets no 1xx response.
        """
        h = ProxyHarness()
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        h.origin().send(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK_HELLO)
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nVia: 1.1 cachingproxy\r\n"
            b"Connection: keep-alive\r\n\r\nhello",
        )


class HeadTests(SynchronousTestCase):
    """
    Responses to HEAD (RFC 9110 section 9.3.2).
    """

    def test_headResponseLengthWithoutBody(self):
        """
        A HEAD response keeps its Content-Length and has no body.
        """
        h = ProxyHarness()
        h.send(b"HEAD http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\n\r\n")
        origin = h.origin()
        self.assertEqual(
            origin.received(),
            b"HEAD / HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nVia: 1.1 cachingproxy\r\n\r\n",
        )
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nVia: 1.1 cachingproxy\r\n\r\n",
        )
        self.assertIn(" 200 0 ", h.log[0])

    def test_upstreamReusableAfterHead(self):
        """
        After a HEAD response the origin connection is pooled, and the next
        request reuses it (no new connection), its response parsed afresh.
        """
        h = ProxyHarness()
        h.send(b"HEAD http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\n\r\n")
        origin = h.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertEqual(h.pool.idleCount(), 1)
        h.transport.clear()
        origin.transport.clear()
        h.send(GET_1)
        self.assertEqual(len(h.reactor.tcpClients), 1)
        self.assertEqual(origin.received(), FORWARDED_GET_1)
        origin.send(OK_HELLO)
        self.assertEqual(h.received(), OK_HELLO_RELAYED)


class ErrorResponseTests(SynchronousTestCase):
    """
    Requests the proxy answers itself.
    """

    def assertError(
        self,
        h: ProxyHarness,
        status: int,
        reason: bytes,
        message: Optional[bytes] = None,
        close: bool = True,
    ) -> None:
        """
        The client got exactly one error response with C{status}, a text
        body, and a closed connection if C{close}; the log records it.
        """
        data = h.received()
        statusLine, fields, body = splitResponse(data)
        self.assertEqual(statusLine, b"HTTP/1.1 %d %s" % (status, reason))
        self.assertIn((b"Content-Type", b"text/plain; charset=utf-8"), fields)
        self.assertIn((b"Content-Length", b"%d" % (len(body),)), fields)
        self.assertTrue(body.endswith(b"\n") and len(body) > 1, body)
        if message is not None:
            self.assertEqual(data, errorResponse(status, reason, message, close=close))
        self.assertEqual((b"Connection", b"close") in fields, close)
        self.assertEqual(h.transport.disconnecting, close)
        self.assertEqual(len(h.log), 1)
        self.assertEqual(logStatus(h.log[0]), status)
        self.assertEqual(h.reactor.tcpClients, [])

    def test_badHeaderToken(self):
        """
        A space in a field name is a 400, and the connection closes.
        """
        h = ProxyHarness()
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.1\r\nHo st: x\r\n\r\n")
        self.assertError(h, 400, b"Bad Request")
        self.assertEqual(h.proto.reader, ReaderState.CLOSED)

    def test_contentLengthWithTransferEncoding(self):
        """
        Content-Length together with Transfer-Encoding is a 400 (RFC 9112
        section 6.1: a smuggling vector), and the connection closes.
        """
        h = ProxyHarness()
        h.send(
            b"POST http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        self.assertError(h, 400, b"Bad Request")

    def test_invalidChunkSizeWhileForwarding(self):
        """
        An invalid chunk size in a body being forwarded is a 400; the origin
        connection, which got part of the body, is aborted.
        """
        h = ProxyHarness()
        h.send(
            b"POST http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        origin = h.origin()
        h.send(b"3\r\nabc\r\nzz\r\n")
        data = h.received()
        self.assertTrue(data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data)
        self.assertIn(b"\r\nConnection: close\r\n", data)
        self.assertTrue(h.transport.disconnecting)
        self.assertTrue(origin.transport.disconnected)
        self.assertEqual(h.pool.idleCount(), 0)
        self.assertEqual(logStatus(h.log[0]), 400)

    def test_invalidChunkSizeWhileConnecting(self):
        """
        An invalid chunk size read while the origin connection is still
        being made is a 400 too, and the connection attempt is abandoned.
        """
        h = ProxyHarness()
        h.send(
            b"POST http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"
        )
        data = h.received()
        self.assertTrue(data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data)
        self.assertTrue(h.transport.disconnecting)
        self.assertTrue(h.reactor.connectors[-1].stoppedConnecting)
        self.assertEqual([logStatus(line) for line in h.log], [400])


    def test_uriTooLong(self):
        """
        A request target longer than C{maxRequestLine} is a 414.
        """
        h = ProxyHarness(ProxySettings(maxRequestLine=64))
        h.send(b"GET http://10.0.0.1:8080/" + b"a" * 64 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertError(h, 414, b"URI Too Long", b"the request target is too long")

    def test_uriAtLimitAccepted(self):
        """
        A request target exactly C{maxRequestLine} long is accepted.
        """
        target = b"http://10.0.0.1:8080/"
        target += b"a" * (64 - len(target))
        h = ProxyHarness(ProxySettings(maxRequestLine=64))
        h.send(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(h.received(), b"")
        self.assertEqual(len(h.reactor.tcpClients), 1)

    def test_headerFieldsTooLarge(self):
        """
        A header section larger than C{maxHeaderSize} is a 431.
        """
        h = ProxyHarness(ProxySettings(maxHeaderSize=100))
        h.send(
            b"GET http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\nX-Big: "
            + b"a" * 200
            + b"\r\n\r\n"
        )
        self.assertError(
            h, 431, b"Request Header Fields Too Large",
            b"the request header section is too large",
        )

    def test_headerFieldsTooLargeNeverEnding(self):
        """
        One field line that keeps growing without ending is cut off with a
        431 before its end arrives.
        """
        h = ProxyHarness(ProxySettings(maxHeaderSize=100, maxRequestLine=100))
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(3):
            h.send(b"a" * 80)
        self.assertError(
            h, 431, b"Request Header Fields Too Large",
            b"the request header section is too large",
        )

    def _fieldsOf(self, size: int) -> bytes:
        """
        @return: a Host field and one more, together C{size} bytes as the
            header size limit counts them (a field's name and value, and 4).
        """
        pad = size - (len(b"Host") + len(b"x") + 4) - (len(b"X-Pad") + 4)
        return b"Host: x\r\nX-Pad: " + b"a" * pad + b"\r\n"

    def _sendSized(self, size: int, form: str) -> Tuple[ProxyHarness, Optional[FakeOrigin]]:
        """
        Send a request whose fields count C{size} against a limit of 300,
        whole in one read, in parts, or pipelined behind another request
        in one read (whose response the fake origin then gives).

        @return: the harness, and the origin the pipelined requests went to.
        """
        h = ProxyHarness(ProxySettings(maxHeaderSize=300))
        head = b"GET http://10.0.0.1:8080/ HTTP/1.1\r\n" + self._fieldsOf(size) + b"\r\n"
        origin = None
        if form == "whole":
            h.send(head)
        elif form == "parts":
            h.send(head[:60])
            h.send(head[60:])
        else:
            h.send(GET_1 + head)
            origin = h.origin()
            origin.send(OK_HELLO)
        return h, origin

    def test_headerFieldsAtLimit(self):
        """
        Fields of exactly C{maxHeaderSize} bytes are accepted (the request
        goes upstream) however the head was read: whole (a read longer
        than the limit has its fields counted), in parts, or behind
        another request in the same read.
        """
        for form in ("whole", "parts"):
            h, _ = self._sendSized(300, form)
            self.assertFalse(h.transport.disconnecting, form)
            self.assertEqual(len(h.reactor.tcpClients), 1, form)
        h, origin = self._sendSized(300, "pipelined")
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(origin.received().count(b"X-Pad: "), 1)

    def test_headerFieldsOverLimit(self):
        """
        One byte more is a 431, however the head was read.
        """
        for form in ("whole", "parts"):
            self.assertError(self._sendSized(301, form)[0], 431,
                             b"Request Header Fields Too Large",
                             b"the request header section is too large")
        h, origin = self._sendSized(301, "pipelined")
        self.assertNotIn(b"X-Pad: ", origin.received())
        data = h.received()
        self.assertTrue(data.startswith(OK_HELLO_RELAYED), data)
        self.assertEqual(
            data[len(OK_HELLO_RELAYED):],
            errorResponse(431, b"Request Header Fields Too Large",
                          b"the request header section is too large"))
        self.assertTrue(h.transport.disconnecting)

    def test_headerFieldsWithinShortRead(self):
        """
        A head read whole in a read no longer than C{maxHeaderSize} is not
        counted field by field: its fields cannot be longer.
        """
        h = ProxyHarness(ProxySettings(maxHeaderSize=300))
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.1\r\n" + self._fieldsOf(200) + b"\r\n")
        self.assertEqual(len(h.reactor.tcpClients), 1)

    def test_tooManyFieldsInParts(self):
        """
        A head that keeps sending fields in small reads is cut off with a
        431 once it has more than C{maxHeaderFields}, before it ends (the
        parser hands a field on when the next line starts: the read with
        the twelfth field's line completes the eleventh).
        """
        h = ProxyHarness(ProxySettings(maxHeaderFields=10))
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\n")
        for i in range(10):
            h.send(b"X-F%d: v\r\n" % i)
        self.assertEqual(h.received(), b"")
        h.send(b"X-F10: v\r\n")
        self.assertError(h, 431, b"Request Header Fields Too Large",
                         b"the request has too many header fields")

    def test_tooManyFieldsWhole(self):
        """
        One field more than C{maxHeaderFields} in one short read: 431.
        """
        h = ProxyHarness(ProxySettings(maxHeaderFields=10))
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\n"
               + b"".join(b"X-F%d: v\r\n" % i for i in range(9)) + b"\r\n")
        self.assertEqual(len(h.reactor.tcpClients), 1)
        h = ProxyHarness(ProxySettings(maxHeaderFields=10))
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\n"
               + b"".join(b"X-F%d: v\r\n" % i for i in range(10)) + b"\r\n")
        self.assertError(h, 431, b"Request Header Fields Too Large",
                         b"the request has too many header fields")

    def test_unsupportedScheme(self):
        """
        An ftp:// target is a 501.
        """
        h = ProxyHarness()
        h.send(b"GET ftp://10.0.0.1/file HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n")
        self.assertError(h, 501, b"Not Implemented", close=h.transport.disconnecting)
        self.assertEqual(
            splitResponse(h.received())[2], b"the 'ftp' scheme is not supported\n"
        )

    def test_nonClosingErrorKeepsConnection(self):
        """
        An error that does not break framing (501 for a bodiless request)
        leaves the connection open: the next request is answered.
        """
        h = ProxyHarness()
        h.send(b"GET ftp://10.0.0.1/file HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n")
        self.assertEqual(
            h.received(),
            errorResponse(501, b"Not Implemented", b"the 'ftp' scheme is not supported", close=False),
        )
        self.assertFalse(h.transport.disconnecting)
        h.transport.clear()
        h.send(GET_1)
        h.origin().send(OK_HELLO)
        self.assertEqual(h.received(), OK_HELLO_RELAYED)


    def test_headErrorHasNoBody(self):
        """
        The error response to a HEAD request has the Content-Length of the
        text but no body.
        """
        h = ProxyHarness()
        h.send(b"HEAD ftp://10.0.0.1/ HTTP/1.1\r\nHost: x\r\n\r\n")
        status, fields, body = splitResponse(h.received())
        self.assertEqual(status, b"HTTP/1.1 501 Not Implemented")
        self.assertIn((b"Content-Length", b"34"), fields)
        self.assertEqual(body, b"")
        self.assertIn(" 501 0 ", h.log[0])

    def test_originFormInForwardMode(self):
        """
        An origin-form target sent to a forward proxy is a 400.
        """
        h = ProxyHarness()
        h.send(b"GET /index.html HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n")
        self.assertError(
            h, 400, b"Bad Request",
            b"this is a proxy: the request target must be an absolute URI",
        )

    def test_missingHost(self):
        """
        An HTTP/1.1 request without Host is a 400 (RFC 9112 section 3.2).
        """
        h = ProxyHarness()
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.1\r\n\r\n")
        self.assertError(h, 400, b"Bad Request", b"no Host field")

    def test_duplicateHost(self):
        """
        Two Host fields are a 400.
        """
        h = ProxyHarness()
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertError(h, 400, b"Bad Request", b"more than one Host field")

    def test_loopDetected(self):
        """
        A request whose Via already names this proxy is a 508, whatever the
        case of the name and wherever it is in the list.
        """
        h = ProxyHarness()
        h.send(
            b"GET http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\n"
            b"Via: 1.0 other, 1.1 CachingProxy (Twisted)\r\n\r\n"
        )
        self.assertError(
            h, 508, b"Loop Detected", close=h.transport.disconnecting
        )
        self.assertEqual(
            splitResponse(h.received())[2],
            b"the request has already passed through this proxy\n",
        )

    def test_connectToForbiddenPort(self):
        """
        CONNECT to a port not in C{connectPorts} is a 403, and the
        connection closes (bytes after a refused CONNECT are not HTTP).
        """
        h = ProxyHarness()
        h.send(b"CONNECT 10.0.0.1:22 HTTP/1.1\r\nHost: 10.0.0.1:22\r\n\r\n")
        self.assertError(h, 403, b"Forbidden", b"CONNECT to port 22 is not allowed")

    def test_connectInReverseMode(self):
        """
        CONNECT to a reverse proxy is a 405.
        """
        h = ProxyHarness(ProxySettings(upstream=REVERSE))
        h.send(b"CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\n\r\n")
        self.assertError(
            h, 405, b"Method Not Allowed", b"CONNECT is not served by a reverse proxy"
        )

    def test_connectRefused(self):
        """
        A refused origin connection is a 502 that keeps the client
        connection.
        """
        h = ProxyHarness()
        h.send(GET_1)
        factory = h.reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(
            h.reactor.connectors[-1], Failure(ConnectionRefusedError())
        )
        self.assertEqual(
            h.received(),
            errorResponse(
                502, b"Bad Gateway", b"connection to 10.0.0.1:8080 refused", close=False
            ),
        )
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(logStatus(h.log[0]), 502)


class TimeoutTests(SynchronousTestCase):
    """
    Timeouts, driven by L{MemoryReactorClock.advance}.
    """

    def test_headerTimeout(self):
        """
        A request head not complete C{headerTimeout} seconds after its first
        byte is a 408, and the connection closes; not a moment earlier.
        """
        h = ProxyHarness(ProxySettings(headerTimeout=5, idleTimeout=100))
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.1\r\nHo")
        h.reactor.advance(4.9)
        self.assertEqual(h.received(), b"")
        self.assertFalse(h.transport.disconnecting)
        h.reactor.advance(0.1)
        self.assertEqual(
            h.received(),
            errorResponse(
                408, b"Request Timeout", b"the request head did not arrive in time",
                date=b"Thu, 01 Jan 1970 00:00:05 GMT",
            ),
        )
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(logStatus(h.log[0]), 408)
        self.assertEqual(h.reactor.tcpClients, [])

    def test_headerTimeoutOfEachHead(self):
        """
        Each request head has C{headerTimeout} from its own first byte: a
        head that begins in the read that completes the one before it (whose
        request is still waiting for its answer) is not cut off by the
        earlier head's deadline, and is cut off by its own.
        """
        h = ProxyHarness(ProxySettings(headerTimeout=5, idleTimeout=100))
        h.send(b"GET http://10.0.0.1:8080/a HTTP/1.1\r\nHo")
        h.reactor.advance(3)
        h.send(b"st: 10.0.0.1:8080\r\n\r\nGET http://10.0.0.1:8080/b HTTP/1.1\r\nHo")
        self.assertEqual(len(h.proto._queue), 1)
        h.reactor.advance(4.9)
        # (t=7.9: past the first head's deadline, not the second's)
        self.assertEqual(len(h.proto._queue), 1)
        self.assertIs(h.proto.reader, ReaderState.HEAD)
        h.reactor.advance(0.1)
        # The 408 waits behind the first request's answer.
        self.assertIs(h.proto.reader, ReaderState.CLOSED)
        self.assertEqual(len(h.proto._queue), 2)
        self.assertEqual(h.proto._queue[1].error.status, 408)

    def test_dribbledHeadCutOffByDefault(self):
        """
        With the default settings, a client that sends one header line a
        second (slowloris) gets its 408 and the closed connection within
        the default header time, which the settings table and the proxy
        agree on and which is well under 20 seconds.
        """
        from cachingproxy.service.config import SETTINGS

        [setting] = [s for s in SETTINGS if s.name == "header-timeout"]
        default = ProxySettings().headerTimeout
        self.assertEqual(setting.default, default)
        self.assertLessEqual(default, 10)
        h = ProxyHarness()
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\n")
        for second in range(20):
            if h.transport.disconnecting:
                break
            h.reactor.advance(1)
            h.send(b"X-Line-%d: y\r\n" % second)
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.reactor.seconds(), default)
        self.assertEqual(logStatus(h.log[0]), 408)

    def test_garbageLoggedWithoutMethod(self):
        """
        Bytes that are not HTTP (here the start of a TLS ClientHello on the
        plain port) are logged with C{-} as method and target, not with
        the parser's default method.
        """
        h = ProxyHarness()
        h.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        self.assertEqual(logStatus(h.log[0]), 400)
        self.assertIn('"- - HTTP/1.1" 400 ', h.log[0])

    def test_headerTimeoutLogNamesMethod(self):
        """
        The access log line of a request cut off by the header timeout names
        the method of its (complete) request line.
        """
        h = ProxyHarness(ProxySettings(headerTimeout=5))
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.1\r\nHo")
        h.reactor.advance(5)
        self.assertIn('"GET http://10.0.0.1:8080/ HTTP/1.1" 408 ', h.log[0])


    def test_idleTimeoutClosesSilently(self):
        """
        A kept-alive connection with no new request for C{idleTimeout}
        seconds is closed without a response.
        """
        h = ProxyHarness(ProxySettings(idleTimeout=20, headerTimeout=5))
        h.send(GET_1)
        h.origin().send(OK_HELLO)
        h.transport.clear()
        h.reactor.advance(19.9)
        self.assertFalse(h.transport.disconnecting)
        h.reactor.advance(0.1)
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.received(), b"")
        self.assertEqual(h.proto.reader, ReaderState.CLOSED)

    def test_idleTimeoutOnFreshConnection(self):
        """
        A connection that never sends anything is closed after
        C{idleTimeout}.
        """
        h = ProxyHarness(ProxySettings(idleTimeout=7))
        h.reactor.advance(6.9)
        self.assertFalse(h.transport.disconnecting)
        h.reactor.advance(0.1)
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.received(), b"")

    def test_idleTimeoutNotWhileAnswering(self):
        """
        The idle timeout does not close a connection whose response is still
        awaited from a slow origin.
        """
        h = ProxyHarness(
            ProxySettings(idleTimeout=5, headerTimeout=5),
            UpstreamSettings(responseTimeout=100),
        )
        h.send(GET_1)
        origin = h.origin()
        h.reactor.advance(50)
        self.assertFalse(h.transport.disconnecting)
        origin.send(OK_HELLO)
        self.assertEqual(h.received(), OK_HELLO_RELAYED)
        self.assertFalse(h.transport.disconnecting)

    def test_connectTimeout(self):
        """
        The pool asks for a connection with C{connectTimeout}; when that
        attempt times out the client gets a 504 and keeps its connection.
        """
        h = ProxyHarness(upstreamSettings=UpstreamSettings(connectTimeout=3))
        h.send(GET_1)
        host, port, factory, timeout, bindAddress = h.reactor.tcpClients[-1]
        self.assertEqual((host, port, timeout), ("10.0.0.1", 8080, 3))
        # MemoryReactor never times out by itself: the connector's timeout
        # is reported to the factory as a real reactor would.
        h.reactor.advance(3)
        factory.clientConnectionFailed(h.reactor.connectors[-1], Failure(TimeoutError()))
        self.assertEqual(
            h.received(),
            errorResponse(
                504, b"Gateway Timeout", b"connecting to 10.0.0.1:8080 timed out",
                close=False, date=b"Thu, 01 Jan 1970 00:00:03 GMT",
            ),
        )
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(logStatus(h.log[0]), 504)

    def test_responseTimeoutBeforeHead(self):
        """
        An origin silent for C{responseTimeout} seconds before any response
        byte: the client gets a 504 and the origin connection is aborted.
        """
        h = ProxyHarness(upstreamSettings=UpstreamSettings(responseTimeout=5))
        h.send(GET_1)
        origin = h.origin()
        h.reactor.advance(4.9)
        self.assertEqual(h.received(), b"")
        h.reactor.advance(1.1)
        self.assertEqual(
            h.received(),
            errorResponse(
                504, b"Gateway Timeout", b"the origin did not answer in time",
                close=False, date=b"Thu, 01 Jan 1970 00:00:06 GMT",
            ),
        )
        self.assertTrue(origin.transport.disconnected)
        self.assertEqual(h.pool.idleCount(), 0)
        self.assertFalse(h.transport.disconnecting)

    def test_responseTimeoutMidBody(self):
        """
        An origin that goes silent mid-body: each byte restarts the clock;
        after C{responseTimeout} seconds of silence the client connection is
        closed with no last chunk written.
        """
        h = ProxyHarness(upstreamSettings=UpstreamSettings(responseTimeout=5))
        h.send(GET_1)
        origin = h.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        h.reactor.advance(4)
        origin.send(b"1\r\nd\r\n")
        h.reactor.advance(4)
        self.assertFalse(h.transport.disconnecting)
        h.reactor.advance(2)
        self.assertEqual(
            h.received(),
            b"HTTP/1.1 200 OK\r\nVia: 1.1 cachingproxy\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n1\r\nd\r\n",
        )
        self.assertTrue(h.transport.disconnecting)
        self.assertTrue(origin.transport.disconnected)
        self.assertEqual(logStatus(h.log[0]), 200)


class ClientDisconnectTests(SynchronousTestCase):
    """
    The client goes away.
    """

    def test_midResponse(self):
        """
        A client gone mid-response: the origin connection is aborted, never
        pooled, even if the rest of the response then arrives.
        """
        h = ProxyHarness()
        h.send(GET_1)
        origin = h.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        h.clientClosed(ConnectionLost)
        self.assertTrue(origin.transport.disconnected)
        self.assertEqual(origin.protocol.state, UpstreamState.CLOSED)
        origin.send(b"defghij")
        origin.close()
        self.assertEqual(h.pool.idleCount(), 0)
        self.assertEqual(h.factory.openConnections, 0)

    def test_whileAwaitingHead(self):
        """
        A client gone while the origin is still working: the origin
        connection is aborted.
        """
        h = ProxyHarness()
        h.send(GET_1)
        origin = h.origin()
        h.clientClosed(ConnectionLost)
        self.assertTrue(origin.transport.disconnected)
        self.assertEqual(h.pool.idleCount(), 0)

    def test_whileConnecting(self):
        """
        A client gone while the origin connection is being made: the
        attempt is stopped, and nothing is logged or written.
        """
        h = ProxyHarness()
        h.send(GET_1)
        h.clientClosed(ConnectionLost)
        self.assertTrue(h.reactor.connectors[-1].stoppedConnecting)
        self.assertEqual(h.received(), b"")
        self.assertEqual(h.factory.openConnections, 0)

    def test_pipelinedRequestsDropped(self):
        """
        A client gone with requests still queued: none of them is sent.
        """
        h = ProxyHarness()
        h.send(GET_1 * 3)
        origin = h.origin()
        h.clientClosed(ConnectionLost)
        self.assertEqual(origin.received(), FORWARDED_GET_1)
        self.assertEqual(len(h.reactor.tcpClients), 1)
        self.assertEqual(len(h.proto._queue), 0)


    def test_duringHead(self):
        """
        A client gone halfway through a request head: nothing is forwarded,
        no timer is left running, and the connection is no longer counted.
        """
        h = ProxyHarness()
        h.send(b"GET http://10.0.0.1:8080/ HTTP/1.1\r\nHo")
        self.assertEqual(len(clientTimers(h)), 1)
        h.clientClosed(ConnectionLost)
        self.assertEqual(h.reactor.tcpClients, [])
        self.assertEqual(clientTimers(h), [])
        self.assertEqual(h.factory.openConnections, 0)
        self.assertEqual(h.proto.reader, ReaderState.CLOSED)

    def test_duringRequestBody(self):
        """
        A client gone while its request body is being forwarded: the origin
        connection, which got part of the body, is aborted.
        """
        h = ProxyHarness()
        h.send(b"PUT http://10.0.0.1:8080/ HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        origin = h.origin()
        h.clientClosed(ConnectionLost)
        self.assertTrue(origin.transport.disconnected)
        self.assertEqual(h.pool.idleCount(), 0)
        self.assertEqual(clientTimers(h), [])

    def test_afterResponse(self):
        """
        A client that closes its idle kept-alive connection leaves the
        origin connection pooled and no timer running.
        """
        h = ProxyHarness()
        h.send(GET_1)
        origin = h.origin()
        origin.send(OK_HELLO)
        self.assertEqual(len(clientTimers(h)), 1)
        h.clientClosed()
        self.assertEqual(h.pool.idleCount(), 1)
        self.assertFalse(origin.transport.disconnecting)
        self.assertEqual(clientTimers(h), [])


class ConnectionLimitTests(SynchronousTestCase):
    """
    C{maxConnections}.
    """

    def test_pauseAndResumeAccepting(self):
        """
        At C{maxConnections} open connections the listening port stops
        reading (accepting); when one closes it reads again.
        """

        class FakePort:
            def __init__(self):
                self.calls = []

            def stopReading(self):
                self.calls.append("stop")

            def startReading(self):
                self.calls.append("start")

        h = ProxyHarness(ProxySettings(maxConnections=2))
        port = h.factory.port = FakePort()
        self.assertEqual(h.factory.openConnections, 1)
        self.assertEqual(port.calls, [])
        second, _ = h.connectClient()
        self.assertEqual(port.calls, ["stop"])
        self.assertEqual(h.factory.openConnections, 2)
        second.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(port.calls, ["stop", "start"])
        self.assertEqual(h.factory.openConnections, 1)
        h.connectClient()
        self.assertEqual(port.calls, ["stop", "start", "stop"])


class ConnectTunnelTests(SynchronousTestCase):
    """
    CONNECT (RFC 9110 section 9.3.6).
    """

    def test_tunnel(self):
        """
        CONNECT to an allowed port: 200, then bytes go both ways unchanged
        (including bytes sent right after the request), and the client
        connection closes when the destination does.
        """
        h = ProxyHarness()
        h.send(b"CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\n\r\nearly")
        # HostnameEndpoint resolves through the MemoryReactor's resolver.
        host, port, factory, timeout, _ = h.reactor.tcpClients[-1]
        self.assertEqual(port, 443)
        peer = factory.buildProtocol(None)
        peerTransport = StringTransport()
        peer.makeConnection(peerTransport)
        self.assertEqual(h.received(), b"HTTP/1.1 200 Connection Established\r\n\r\n")
        self.assertEqual(h.proto.reader, ReaderState.TUNNEL)
        h.send(b"GET not http")
        peer.dataReceived(b"\x16\x03\x01")
        self.assertEqual(peerTransport.value(), b"earlyGET not http")
        self.assertEqual(
            h.received(), b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x01"
        )
        peer.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(logStatus(h.log[0]), 200)
        # bytes down the tunnel, then (last field) bytes up it
        self.assertEqual(h.log[0].split()[9], "3")
        self.assertEqual(h.log[0].split()[-1], "%d" % len(b"earlyGET not http"))


    def test_clientClosesTunnel(self):
        """
        When the client side of a tunnel closes, the destination connection
        is closed too, and the tunnel is logged.
        """
        h = ProxyHarness()
        h.send(b"CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\n\r\n")
        peer = h.reactor.tcpClients[-1][2].buildProtocol(None)
        peerTransport = StringTransport()
        peer.makeConnection(peerTransport)
        h.clientClosed()
        self.assertTrue(peerTransport.disconnecting)
        self.assertEqual(logStatus(h.log[0]), 200)


class EndToEndTests(SynchronousTestCase):
    """
    Level 3: a client, the proxy and a L{twisted.web.server.Site} origin,
    connected by L{iosim} pumps, no sockets.
    """

    def test_getThroughProxy(self):
        """
        A GET through the proxy reaches a twisted.web origin in origin-form
        with our Via, and its response comes back with the body intact and
        our Via added; a second GET reuses the origin connection.
        """
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        seen = []

        class Recorder(Resource):
            isLeaf = True

            def render_GET(self, request):
                seen.append(
                    (request.uri, request.requestHeaders.getRawHeaders(b"via"))
                )
                request.setHeader(b"content-type", b"text/plain")
                return b"hello from origin"

        reactor = MemoryReactorClock()
        pool = UpstreamPool(reactor, UpstreamSettings())
        factory = ProxyFactory(reactor, ProxySettings(), pool)
        proxy = factory.buildProtocol(CLIENT)

        from twisted.internet.protocol import Protocol

        class Client(Protocol):
            def __init__(self):
                self.data = b""

            def dataReceived(self, data):
                self.data += data

        client = Client()
        clientPump = iosim.connect(
            proxy, iosim.FakeTransport(proxy, isServer=True),
            client, iosim.FakeTransport(client, isServer=False),
            clock=reactor,
        )
        client.transport.write(b"GET http://10.0.0.1:8080/hi HTTP/1.1\r\nHost: x\r\n\r\n")
        clientPump.flush()

        site = Site(Recorder(), reactor=reactor)
        channel = site.buildProtocol(None)
        wrapper = reactor.tcpClients[-1][2].buildProtocol(None)
        originPump = iosim.connect(
            channel, iosim.FakeTransport(channel, isServer=True),
            wrapper, iosim.FakeTransport(wrapper, isServer=False),
            clock=reactor,
        )
        originPump.flush()
        clientPump.flush()
        self.assertEqual(seen, [(b"/hi", [b"1.1 cachingproxy"])])
        status, fields, body = splitResponse(client.data)
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertIn((b"Content-Length", b"17"), fields)
        self.assertEqual(fields[-1], (b"Via", b"1.1 cachingproxy"))
        self.assertEqual(body, b"hello from origin")

        client.data = b""
        client.transport.write(b"GET http://10.0.0.1:8080/again HTTP/1.1\r\nHost: x\r\n\r\n")
        clientPump.flush()
        originPump.flush()
        clientPump.flush()
        self.assertEqual(len(reactor.tcpClients), 1)
        self.assertEqual(seen[-1][0], b"/again")
        self.assertTrue(client.data.endswith(b"\r\n\r\nhello from origin"))


class HotLaneDecisionTests(SynchronousTestCase):
    """
    L{ProxyFactory.lane}: a reverse proxy to one origin, or a forward
    proxy, with a cache and neither routes nor proxy authentication has
    one, decided again whenever what it depends on is set (as a reload
    does).
    """

    def factory(self, **settings) -> ProxyFactory:
        from cachingproxy.cache.layer import CacheLayer
        from cachingproxy.cache.memory import MemoryStore

        reactor = MemoryReactorClock()
        pool = UpstreamPool(reactor, UpstreamSettings())
        factory = ProxyFactory(reactor, ProxySettings(**settings), pool)
        factory.cache = CacheLayer(MemoryStore(1 << 20, 1 << 16), reactor, pool)
        return factory

    def test_reverseWithCache(self) -> None:
        """
        In front of an origin with a cache: a lane for that origin and
        path prefix, keyed as the cache keys it.
        """
        origin = Origin(b"http", "127.0.0.1", 9000)
        factory = self.factory(upstream=origin, upstreamPath=b"/base")
        lane = factory.lane
        self.assertIs(lane.origin, origin)
        self.assertIs(lane.cache, factory.cache)
        self.assertEqual(lane.upstreamPath, b"/base")
        self.assertEqual(lane.keyOf(b"/a"), b"http://127.0.0.1:9000/base/a")
        self.assertEqual(lane.keys, {b"/a": b"http://127.0.0.1:9000/base/a"})

    def test_keysBounded(self) -> None:
        """
        The lane remembers the keys of at most C{maxKeys} targets.
        """
        factory = self.factory(upstream=Origin(b"http", "127.0.0.1", 9000))
        lane = factory.lane
        lane.maxKeys = 3
        for i in range(7):
            lane.keyOf(b"/%d" % i)
            self.assertLessEqual(len(lane.keys), 3)
        self.assertEqual(lane.keys[b"/6"], b"http://127.0.0.1:9000/6")

    def test_forward(self) -> None:
        """
        In forward mode: a lane for absolute-form targets, each keyed as
        the cache keys it and with the origin and path the request goes
        to; none
        for origin-form targets (the proxy's own pages there), for targets
        that are not http or https URIs, and for any that may name the
        proxy's own endpoints or pages.
        """
        lane = self.factory().lane
        self.assertIsNone(lane.origin)
        self.assertIsNone(lane.keyOf(b"/a"))
        self.assertEqual(lane.keys, {})
        self.assertEqual(
            lane.absoluteOf(b"http://Example.COM:8080/a?b"),
            (Origin(b"http", "example.com", 8080), b"http://example.com:8080/a?b", b"/a?b"))
        self.assertEqual(
            lane.absoluteOf(b"HTTPS://example.com/a"),
            (Origin(b"https", "example.com", 443), b"https://example.com/a", b"/a"))
        self.assertEqual(lane.absoluteOf(b"http://example.com/x")[1], b"http://example.com/x")
        for target in [b"ftp://example.com/", b"http:/x", b"http://u@example.com/",
                       b"http://example.com:0/", b"http://example.com/_cachingproxy/status",
                       b"http://example.com/_cachingproxy", b"http://example.com/",
                       b"http://example.com", b"http://example.com/?x", b"https://example.com?q",
                       b"http://example.com?/_cachingproxy/metrics"]:
            self.assertIs(lane.absoluteOf(target), False, target)
            self.assertIs(lane.targets[target], False)
        self.assertEqual(lane.targets[b"http://example.com/x"][1], b"http://example.com/x")

    def test_forwardTargetsBounded(self) -> None:
        """
        The forward lane remembers at most C{maxKeys} targets.
        """
        lane = self.factory().lane
        lane.maxKeys = 3
        for i in range(7):
            lane.absoluteOf(b"http://example.com/%d" % i)
            self.assertLessEqual(len(lane.targets), 3)
        self.assertEqual(lane.targets[b"http://example.com/6"][1], b"http://example.com/6")

    def test_reverseLeavesAbsoluteTargets(self) -> None:
        """
        In reverse mode an absolute-form target goes the long way.
        """
        lane = self.factory(upstream=Origin(b"http", "127.0.0.1", 9000)).lane
        self.assertIs(lane.absoluteOf(b"http://127.0.0.1:9000/a"), False)

    def test_none(self) -> None:
        """
        No lane without a cache, with routes, or when the key is built
        from what the origin is told.
        """
        origin = Origin(b"http", "127.0.0.1", 9000)
        factory = self.factory()
        factory.cache = None
        self.assertIsNone(factory.lane)
        self.assertIsNone(self.factory(xForwardedProto=True).lane)
        factory = self.factory(upstream=origin)
        factory.cache = None
        self.assertIsNone(factory.lane)
        factory = self.factory(upstream=origin)
        factory.sites = object()
        self.assertIsNone(factory.lane)
        self.assertIsNone(self.factory(upstream=origin, preserveHost=True).lane)

    def test_decidedAgainOnReload(self) -> None:
        """
        New settings decide the lane again, and what else is worked out of
        them: whether the key comes from the head, and the Via name
        checked for loops.
        """
        origin = Origin(b"http", "127.0.0.1", 9000)
        factory = self.factory(upstream=origin, viaName=b"one")
        self.assertIsNotNone(factory.lane)
        self.assertFalse(factory.keyFromHead)
        factory.settings = ProxySettings(upstream=origin, viaName=b"Two", preserveHost=True)
        self.assertIsNone(factory.lane)
        self.assertTrue(factory.keyFromHead)
        self.assertEqual(factory._viaName, b"two")
        other = Origin(b"http", "127.0.0.1", 9001)
        factory.settings = ProxySettings(upstream=other)
        self.assertIs(factory.lane.origin, other)
        self.assertFalse(factory.keyFromHead)


class HeadReadTests(SynchronousTestCase):
    """
    L{Exchange.headRead} is the read a request's head was all in, from its
    first byte, and empty whenever the same read would not mean the same
    head.
    """

    GET = b"GET http://10.0.0.1:8080/1 HTTP/1.1\r\nHost: x\r\nUser-Agent: a\r\n\r\n"

    def reads(self, *reads: bytes) -> List[bytes]:
        h = ProxyHarness()
        for data in reads:
            h.send(data)
        return [exchange.headRead for exchange in h.proto._queue]

    def test_wholeRead(self) -> None:
        """
        A head that came in one read, alone or with its body.
        """
        post = b"POST http://10.0.0.1:8080/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
        self.assertEqual(self.reads(self.GET), [self.GET])
        self.assertEqual(self.reads(post), [post])

    def test_pipelined(self) -> None:
        """
        Of requests in one read, only the first is known by it; each read
        that starts one afresh knows that one.
        """
        self.assertEqual(self.reads(self.GET * 3, self.GET), [self.GET * 3, b"", b"", self.GET])

    def test_inParts(self) -> None:
        """
        A head read in parts is not known by its first read, which another
        head could start with too; the version is still read.
        """
        h = ProxyHarness()
        h.send(self.GET[:40])
        h.send(self.GET[40:])
        [exchange] = h.proto._queue
        self.assertEqual(exchange.headRead, b"")
        self.assertEqual(exchange.head.version, (1, 1))
        self.assertEqual(exchange.head.headers.get(b"user-agent"), b"a")

    def test_longRead(self) -> None:
        """
        A read longer than L{HEAD_READ_KEPT} (a body came with the head,
        say) is not kept: the connection would keep it with its last
        access line.
        """
        from cachingproxy.proxy.connection import HEAD_READ_KEPT

        def post(size: int) -> bytes:
            head = b"POST http://10.0.0.1:8080/1 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
            return head % (size - len(head % size)) + b"x" * (size - len(head % size))

        self.assertEqual(self.reads(post(HEAD_READ_KEPT)), [post(HEAD_READ_KEPT)])
        self.assertEqual(self.reads(post(HEAD_READ_KEPT + 1)), [b""])

    def test_unknownMethod(self) -> None:
        """
        A request with a method the parser does not know is read with a
        stand-in method, which other methods share: not known by its read.
        """
        self.assertEqual(self.reads(b"FOO" + self.GET[3:]), [b""])
