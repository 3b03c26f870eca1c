"""
Tests for L{cachingproxy.proxy.upstream}: the L{UpstreamPool} and the
L{UpstreamProtocol} it runs on each origin connection, driven from a
L{MemoryReactorClock} whose connection attempts are completed by hand with
L{StringTransport}s (STYLE.md section D, level 2). No sockets.

Tests marked with a C{todo} show a bug that is reported rather than fixed
here; the C{todo} string names it.
"""

from __future__ import annotations

from typing import List

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cachingproxy.errors import BadGateway, GatewayTimeout, UpstreamClosed, upstreamError
from cachingproxy.http.headers import Headers
from cachingproxy.http.message import RequestHead
from cachingproxy.proxy.upstream import (
    Origin,
    UpstreamPool,
    UpstreamRequest,
    UpstreamSettings,
    UpstreamState,
)


ORIGIN = Origin(b"http", "10.0.0.1", 8080)
OTHER = Origin(b"http", "10.0.0.2", 8080)


class RecordingHandler:
    """
    An L{IResponseHandler} that records what it is told, in order.
    """

    def __init__(self) -> None:
        self.events: List[tuple] = []

    def responseInterim(self, head) -> None:
        self.events.append(("interim", head.status, list(head.headers.items())))

    def responseHead(self, head) -> None:
        self.events.append(("head", head.status, list(head.headers.items())))

    def responseBody(self, data: bytes) -> None:
        self.events.append(("body", data))

    def responseEnd(self) -> None:
        self.events.append(("end",))

    def responseFailed(self, reason: Failure, receivedAnything: bool) -> None:
        self.events.append(("failed", reason.value, receivedAnything))

    def requestBodyUnwanted(self) -> None:
        self.events.append(("unwanted",))

    def names(self) -> List[str]:
        return [e[0] for e in self.events]


class FakeOrigin:
    """
    The origin end of one connection the pool asked the reactor for.
    """

    def __init__(self, reactor: MemoryReactorClock, index: int) -> None:
        host, port, factory, timeout, _ = reactor.tcpClients[index]
        self.wrapper = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.transport = StringTransport()
        # Connecting the wrapping protocol fires the endpoint's Deferred.
        self.wrapper.makeConnection(self.transport)
        self.protocol = self.wrapper._wrappedProtocol

    def received(self) -> bytes:
        return self.transport.value()

    def send(self, data: bytes) -> None:
        self.wrapper.dataReceived(data)

    def close(self, reason: type = error.ConnectionDone) -> None:
        self.wrapper.connectionLost(Failure(reason()))


def get(path: bytes = b"/", method: bytes = b"GET", fields=None) -> RequestHead:
    return RequestHead(
        method, path, (1, 1), Headers(fields or [(b"Host", b"10.0.0.1:8080")])
    )


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class PoolTestCase(SynchronousTestCase):
    """
    A pool on a L{MemoryReactorClock}.
    """

    settings = UpstreamSettings()

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pool = UpstreamPool(self.reactor, self.settings)

    def request(
        self, head=None, origin=ORIGIN, hasBody=False, finish=True
    ) -> "tuple[RecordingHandler, defer.Deferred]":
        handler = RecordingHandler()
        d = self.pool.request(origin, head or get(), handler, hasBody)
        if finish:
            d.addCallback(lambda r: (r.finish(), r)[1])
        return handler, d

    def origin(self, index: int = -1) -> FakeOrigin:
        return FakeOrigin(self.reactor, index)

    def exchangeOnNew(self, response: bytes = OK, head=None):
        """
        One complete exchange on a new connection.
        """
        handler, d = self.request(head)
        origin = self.origin()
        origin.send(response)
        return handler, origin, self.successResultOf(d)


class PoolReuseTests(PoolTestCase):
    """
    Persistent connections, kept per L{Origin}.
    """

    def test_requestOnNewConnection(self):
        """
        The first request to an origin makes a connection (with the
        connect timeout) and sends the head there; the Deferred fires with
        the L{UpstreamRequest} once it is sent.
        """
        handler, d = self.request(get(b"/a"))
        self.assertNoResult(d)
        self.assertEqual(
            [(h, p, t) for h, p, _, t, _ in self.reactor.tcpClients],
            [("10.0.0.1", 8080, 10.0)],
        )
        origin = self.origin()
        request = self.successResultOf(d)
        self.assertIsInstance(request, UpstreamRequest)
        self.assertEqual(origin.received(), b"GET /a HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n")
        self.assertEqual(self.pool.connectionsMade, 1)

    def test_secondRequestReusesConnection(self):
        """
        After a complete response the connection is pooled, and the next
        request to the same origin goes on it, with no new connection.
        """
        handler, origin, _ = self.exchangeOnNew()
        self.assertEqual(handler.events, [
            ("head", 200, [(b"Content-Length", b"2")]), ("body", b"ok"), ("end",),
        ])
        self.assertEqual(self.pool.idleCount(ORIGIN), 1)
        origin.transport.clear()
        handler2, d2 = self.request(get(b"/b"))
        self.successResultOf(d2)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.pool.idleCount(), 0)
        self.assertEqual(origin.received(), b"GET /b HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n")
        self.assertTrue(origin.protocol.reused)
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nagn")
        self.assertEqual(handler2.names(), ["head", "body", "end"])
        self.assertEqual(self.pool.idleCount(ORIGIN), 1)

    def test_equalOriginShares(self):
        """
        The pool keys connections by the origin's value: a request to an
        equal L{Origin} built afresh goes on the pooled connection.
        """
        self.exchangeOnNew()
        handler, d = self.request(origin=Origin(b"http", "10.0.0.1", 8080))
        self.successResultOf(d)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.pool.idleCount(), 0)

    def test_otherOriginNotShared(self):
        """
        A pooled connection to one origin is not used for another.
        """
        self.exchangeOnNew()
        self.request(origin=OTHER)
        self.assertEqual(
            [(h, p) for h, p, _, _, _ in self.reactor.tcpClients],
            [("10.0.0.1", 8080), ("10.0.0.2", 8080)],
        )
        self.assertEqual(self.pool.idleCount(ORIGIN), 1)

    def test_busyConnectionNotShared(self):
        """
        A second request while the first is still being answered gets a
        connection of its own.
        """
        self.request()
        self.origin()
        self.request()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_closedIdleConnectionForgotten(self):
        """
        A pooled connection the origin closes leaves the pool.
        """
        handler, origin, _ = self.exchangeOnNew()
        origin.close()
        self.assertEqual(self.pool.idleCount(), 0)
        self.request()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_unsolicitedBytesCloseIdleConnection(self):
        """
        Bytes from the origin on an idle connection make it untrustworthy:
        it is closed and not used again.
        """
        handler, origin, _ = self.exchangeOnNew()
        origin.send(b"HTTP/1.1 200 OK\r\n")
        self.assertTrue(origin.transport.disconnecting)
        self.assertEqual(origin.protocol.state, UpstreamState.CLOSED)
        self.request()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_secondResponseInOneReadClosesConnection(self):
        """
        A second response in the same read as the one asked for is bytes
        nobody asked for: the connection is closed, pooled once at most,
        and not used again.
        """
        handler, origin, _ = self.exchangeOnNew(OK + OK)
        self.assertEqual(handler.names(), ["head", "body", "end"])
        self.assertTrue(origin.transport.disconnecting)
        self.assertEqual(origin.protocol.state, UpstreamState.CLOSED)
        self.assertLessEqual(self.pool.idleCount(), 1)
        self.request()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_abandonedMidReadNotPooled(self):
        """
        A request abandoned while its response is being read (here when its
        head arrives) leaves its connection closed, even when the rest of
        the response is in the same read: it is never pooled.
        """
        handler, d = self.request()
        origin = self.origin()
        request = self.successResultOf(d)
        handler.responseHead = lambda head: request.abort()
        origin.send(OK)
        self.assertTrue(origin.transport.disconnected)
        self.assertEqual(origin.protocol.state, UpstreamState.CLOSED)
        self.assertEqual(self.pool.idleCount(), 0)

    def test_closedByPoolMidReadNotPooled(self):
        """
        A connection the pool closes while its response is being read stays
        closed when the response ends in the same read: it is never pooled.
        """
        handler, d = self.request()
        origin = self.origin()
        handler.responseHead = lambda head: self.pool.closeCachedConnections()
        origin.send(OK)
        self.assertTrue(origin.transport.disconnecting)
        self.assertEqual(origin.protocol.state, UpstreamState.CLOSED)
        self.assertEqual(self.pool.idleCount(), 0)

    def test_connectionCloseNotPooled(self):
        """
        A response with C{Connection: close} ends its connection.
        """
        handler, origin, _ = self.exchangeOnNew(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(handler.names(), ["head", "end"])
        self.assertTrue(origin.transport.disconnecting)
        self.assertEqual(self.pool.idleCount(), 0)

    def test_http10ResponseNotPooled(self):
        """
        An HTTP/1.0 response without keep-alive ends its connection.
        """
        handler, origin, _ = self.exchangeOnNew(
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(handler.names(), ["head", "end"])
        self.assertEqual(self.pool.idleCount(), 0)
        self.assertTrue(origin.transport.disconnecting)

    def test_closeCachedConnections(self):
        """
        C{closeCachedConnections} closes idle and busy connections and fires
        once they are all gone.
        """
        _, idle, _ = self.exchangeOnNew()
        self.request(origin=OTHER)
        busy = self.origin()
        d = self.pool.closeCachedConnections()
        self.assertTrue(idle.transport.disconnecting)
        self.assertTrue(busy.transport.disconnecting)
        self.assertEqual(self.pool.idleCount(), 0)
        self.assertNoResult(d)
        idle.close()
        self.assertNoResult(d)
        busy.close()
        self.assertIsNone(self.successResultOf(d))


class IdleLimitTests(PoolTestCase):
    """
    How long and how many idle connections are kept.
    """

    settings = UpstreamSettings(idleTimeout=30, maxIdlePerOrigin=1)

    def test_sweepClosesIdleConnections(self):
        """
        A pooled connection idle for C{idleTimeout} seconds is closed by the
        sweep, and the next request makes a new connection.
        """
        _, origin, _ = self.exchangeOnNew()
        self.reactor.advance(29)
        self.assertFalse(origin.transport.disconnecting)
        self.assertEqual(self.pool.idleCount(), 1)
        self.reactor.advance(1)
        self.assertTrue(origin.transport.disconnecting)
        self.assertEqual(self.pool.idleCount(), 0)
        self.request()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_pooledAgainAfterSweep(self):
        """
        Once the sweep closed every connection to an origin, a new one to
        it is pooled when its exchange ends, and taken again.
        """
        self.exchangeOnNew()
        self.reactor.advance(30)
        self.assertEqual(self.pool.idleCount(), 0)
        self.exchangeOnNew()
        self.assertEqual(self.pool.idleCount(ORIGIN), 1)
        self.request()
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.pool.idleCount(), 0)

    def test_pooledAgainAfterCloseCachedConnections(self):
        """
        After L{UpstreamPool.closeCachedConnections}, a new connection is
        pooled when its exchange ends.
        """
        _, origin, _ = self.exchangeOnNew()
        self.pool.closeCachedConnections()
        origin.close()
        self.exchangeOnNew()
        self.assertEqual(self.pool.idleCount(ORIGIN), 1)

    def test_sweepKeepsRecentConnections(self):
        """
        The sweep keeps a connection pooled less than C{idleTimeout} ago,
        and closes it at a later sweep.
        """
        _, first, _ = self.exchangeOnNew()
        self.reactor.advance(10)
        handler, d = self.request()
        # The pooled connection was taken again and answered at t=10.
        first.send(OK)
        self.assertEqual(handler.names(), ["head", "body", "end"])
        self.reactor.advance(20)
        self.assertFalse(first.transport.disconnecting)
        self.assertEqual(self.pool.idleCount(), 1)
        self.reactor.advance(25)
        self.assertTrue(first.transport.disconnecting)
        self.assertEqual(self.pool.idleCount(), 0)

    def test_staleIdleConnectionNotTaken(self):
        """
        A pooled connection older than C{idleTimeout} is not handed out even
        before the sweep ran: it is closed and a new connection made.
        """
        _, origin, _ = self.exchangeOnNew()
        # Cancel the sweep so only the check at take time can act.
        self.pool._sweeper.cancel()
        self.pool._sweeper = None
        self.reactor.advance(31)
        self.request()
        self.assertTrue(origin.transport.disconnecting)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_maxIdlePerOrigin(self):
        """
        No more than C{maxIdlePerOrigin} connections per origin are kept;
        one finishing beyond that is closed.
        """
        h1, d1 = self.request()
        h2, d2 = self.request()
        o1 = self.origin(0)
        o2 = self.origin(1)
        o1.send(OK)
        o2.send(OK)
        self.assertEqual(h1.names(), ["head", "body", "end"])
        self.assertEqual(h2.names(), ["head", "body", "end"])
        self.assertEqual(self.pool.idleCount(ORIGIN), 1)
        self.assertFalse(o1.transport.disconnecting)
        self.assertTrue(o2.transport.disconnecting)
        self.assertEqual(o2.protocol.state, UpstreamState.CLOSED)

    def test_capIsPerOrigin(self):
        """
        The cap counts each origin separately.
        """
        h1, d1 = self.request()
        o1 = self.origin()
        h2, d2 = self.request(origin=OTHER)
        o2 = self.origin()
        o1.send(OK)
        o2.send(OK)
        self.assertEqual(self.pool.idleCount(ORIGIN), 1)
        self.assertEqual(self.pool.idleCount(OTHER), 1)
        self.assertEqual(self.pool.idleCount(), 2)


class RetryTests(PoolTestCase):
    """
    A request that fails on a reused connection before any response byte
    is sent once more on a fresh one (RFC 9110 section 9.2.2).
    """

    def reusedConnection(self) -> FakeOrigin:
        _, origin, _ = self.exchangeOnNew()
        return origin

    def test_idempotentRetried(self):
        """
        A GET whose reused connection closes before any response byte is
        sent again on a new connection, and the handler gets the response
        from there, with no failure reported.
        """
        first = self.reusedConnection()
        handler, d = self.request(get(b"/again"))
        request = self.successResultOf(d)
        first.close()
        self.assertEqual(handler.events, [])
        self.assertEqual(len(self.reactor.tcpClients), 2)
        second = self.origin()
        self.assertEqual(
            second.received(), b"GET /again HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n"
        )
        self.assertIs(request._protocol, second.protocol)
        second.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
        self.assertEqual(handler.events[:2], [
            ("head", 200, [(b"Content-Length", b"5")]), ("body", b"fresh"),
        ])
        self.assertEqual(handler.events[-1], ("end",))
        self.assertNotIn("failed", handler.names())

    def test_retriedConnectionPooled(self):
        """
        After a retried request's response the new connection is pooled
        like any other, and the handler is not told the request body was
        unwanted (there was none, and it was finished).
        """
        first = self.reusedConnection()
        handler, d = self.request(get(b"/again"))
        first.close()
        second = self.origin()
        second.send(OK)
        self.assertEqual(handler.names(), ["head", "body", "end"])
        self.assertEqual(self.pool.idleCount(ORIGIN), 1)
        self.assertFalse(second.transport.disconnecting)


    def test_retryOnlyOnce(self):
        """
        If the retry's connection closes too, the handler is told, with
        nothing received.
        """
        first = self.reusedConnection()
        handler, d = self.request()
        first.close()
        second = self.origin()
        second.close()
        self.assertEqual(len(handler.events), 1)
        name, value, receivedAnything = handler.events[0]
        self.assertEqual(name, "failed")
        self.assertIsInstance(value, UpstreamClosed)
        self.assertFalse(value.receivedAnything)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_retryConnectFailure(self):
        """
        If the retry cannot connect, the handler gets the connect error.
        """
        first = self.reusedConnection()
        handler, d = self.request()
        first.close()
        factory = self.reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[-1], Failure(error.ConnectionRefusedError())
        )
        self.assertEqual(len(handler.events), 1)
        self.assertEqual(handler.events[0][0], "failed")
        self.assertIsInstance(handler.events[0][1], BadGateway)
        self.assertFalse(handler.events[0][2])

    def test_postWithBodyNotRetried(self):
        """
        A POST with a body is not retried: the handler is told the
        connection closed, nothing received.
        """
        first = self.reusedConnection()
        handler, d = self.request(get(method=b"POST"), hasBody=True, finish=False)
        request = self.successResultOf(d)
        request.write(b"data")
        request.finish()
        first.close()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(len(handler.events), 1)
        name, value, receivedAnything = handler.events[0]
        self.assertEqual(name, "failed")
        self.assertIsInstance(value, UpstreamClosed)
        self.assertFalse(value.receivedAnything)

    def test_postWithoutBodyNotRetried(self):
        """
        POST is not idempotent: even without a body it is not retried.
        """
        first = self.reusedConnection()
        handler, d = self.request(get(method=b"POST"))
        first.close()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(handler.names(), ["failed"])

    def test_notRetriedAfterResponseBytes(self):
        """
        A reused connection that closes after part of the response arrived
        is not retried: the handler is told, with bytes received.
        """
        first = self.reusedConnection()
        handler, d = self.request()
        first.send(b"HTTP/1.1 200 OK\r\nContent-Le")
        first.close(error.ConnectionLost)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(len(handler.events), 1)
        name, value, receivedAnything = handler.events[0]
        self.assertEqual(name, "failed")
        self.assertIsInstance(value, UpstreamClosed)
        self.assertTrue(receivedAnything)
        self.assertTrue(value.receivedAnything)

    def test_notRetriedOnFreshConnection(self):
        """
        A fresh (never reused) connection that closes before answering is
        not retried.
        """
        handler, d = self.request()
        self.origin().close()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(handler.names(), ["failed"])
        self.assertFalse(handler.events[0][1].receivedAnything)

    def test_receivedAnythingFalseWhenNothingArrived(self):
        """
        The C{receivedAnything} argument of C{responseFailed} is false when
        the connection closed before any response byte, as the
        L{UpstreamClosed} it carries says.
        """
        handler, d = self.request()
        self.origin().close()
        name, value, receivedAnything = handler.events[0]
        self.assertFalse(value.receivedAnything)
        self.assertFalse(receivedAnything)


    def test_abortedNotRetried(self):
        """
        A request abandoned by its caller is not retried when its connection
        then closes.
        """
        first = self.reusedConnection()
        handler, d = self.request()
        request = self.successResultOf(d)
        request.abort()
        self.assertTrue(first.transport.disconnected)
        first.close()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(handler.events, [])


class ResponseParsingTests(PoolTestCase):
    """
    What the handler is told about a response.
    """

    settings = UpstreamSettings(responseTimeout=5)

    def test_headResponseEndsAfterHead(self):
        """
        A response to HEAD ends after its head, whatever its framing fields
        say, and the connection's parser is fresh for the next response.
        """
        handler, d = self.request(get(method=b"HEAD"))
        origin = self.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        self.assertEqual(
            handler.events, [("head", 200, [(b"Content-Length", b"100")]), ("end",)]
        )
        self.assertEqual(self.pool.idleCount(), 1)
        handler2, d2 = self.request()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        origin.send(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabc")
        self.assertEqual(
            handler2.events,
            [("head", 201, [(b"Content-Length", b"3")]), ("body", b"abc"), ("end",)],
        )

    def test_headChunkedResponse(self):
        """
        A HEAD response saying chunked also ends after its head.
        """
        handler, d = self.request(get(method=b"HEAD"))
        origin = self.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertEqual(handler.names(), ["head", "end"])
        self.assertEqual(self.pool.idleCount(), 1)

    def test_noContent(self):
        """
        A 204 has no body even with a Content-Length, and the connection is
        reused for the next response.
        """
        handler, origin, _ = self.exchangeOnNew(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"
        )
        self.assertEqual(handler.names(), ["head", "end"])
        handler2, _ = self.request()
        origin.send(OK)
        self.assertEqual(handler2.names(), ["head", "body", "end"])

    def test_interimResponses(self):
        """
        1xx responses are passed to C{responseInterim}, with their fields,
        before the final head.
        """
        handler, origin, _ = self.exchangeOnNew(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK
        )
        self.assertEqual(handler.events, [
            ("interim", 100, []),
            ("interim", 103, [(b"Link", b"</a.css>")]),
            ("head", 200, [(b"Content-Length", b"2")]),
            ("body", b"ok"),
            ("end",),
        ])
        self.assertEqual(self.pool.idleCount(), 1)

    def test_chunkedBodyAndTrailers(self):
        """
        A chunked body is passed de-chunked; trailer fields are dropped.
        """
        handler, origin, _ = self.exchangeOnNew(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"
        )
        self.assertEqual(handler.events, [
            ("head", 200, [(b"Transfer-Encoding", b"chunked")]),
            ("body", b"abc"),
            ("end",),
        ])

    def test_trailersLeaveHeadAlone(self):
        """
        Trailer fields are not added to the head the handler was given.
        """
        heads = []
        handler, d = self.request()
        handler.responseHead = heads.append
        origin = self.origin()
        origin.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"
        )
        self.assertEqual(list(heads[0].headers.items()),
                         [(b"Transfer-Encoding", b"chunked")])
        self.assertEqual(self.pool.idleCount(), 1)
        heads2 = []
        handler2, d2 = self.request()
        handler2.responseHead = heads2.append
        origin.send(b"HTTP/1.1 200 OK\r\nX-Next: 2\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(list(heads2[0].headers.items()),
                         [(b"X-Next", b"2"), (b"Content-Length", b"0")])

    def test_responseVersion(self):
        """
        The head carries the version the origin answered with.
        """
        heads = []
        handler, d = self.request()
        handler.responseHead = heads.append
        origin = self.origin()
        origin.send(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(heads[0].version, (1, 0))
        self.assertEqual(handler.names(), ["body", "end"])

    def test_responseSplitByteByByte(self):
        """
        A response arriving one byte per read is reported as when it arrives
        at once (body bytes may come in several pieces).
        """
        response = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 3\r\n\r\nabc"
        handler, d = self.request()
        origin = self.origin()
        for i in range(len(response)):
            origin.send(response[i : i + 1])
        self.assertEqual(handler.events[0], ("head", 200, [(b"X-A", b"1"), (b"Content-Length", b"3")]))
        self.assertEqual(b"".join(e[1] for e in handler.events if e[0] == "body"), b"abc")
        self.assertEqual(handler.events[-1], ("end",))

    def test_invalidResponse(self):
        """
        Bytes that are not an HTTP response: C{responseFailed} with
        L{BadGateway}, received-anything set, and the connection aborted.
        """
        handler, d = self.request()
        origin = self.origin()
        origin.send(b"SSH-2.0-OpenSSH_9.0\r\n")
        self.assertEqual(len(handler.events), 1)
        name, value, receivedAnything = handler.events[0]
        self.assertEqual(name, "failed")
        self.assertIsInstance(value, BadGateway)
        self.assertEqual(value.status, 502)
        self.assertTrue(receivedAnything)
        self.assertTrue(origin.transport.disconnected)
        self.assertEqual(self.pool.idleCount(), 0)

    def test_invalidBodyFraming(self):
        """
        An invalid chunk size mid-body fails the response after its head.
        """
        handler, d = self.request()
        origin = self.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n")
        self.assertEqual(handler.names(), ["head", "failed"])
        self.assertIsInstance(handler.events[1][1], BadGateway)
        self.assertTrue(origin.transport.disconnected)

    def test_switchingProtocols(self):
        """
        A 101 (never asked for) is a L{BadGateway}.
        """
        handler, d = self.request()
        origin = self.origin()
        origin.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n")
        self.assertEqual(handler.names()[-1], "failed")
        self.assertIsInstance(handler.events[-1][1], BadGateway)
        self.assertTrue(origin.transport.disconnected)

    def test_switchingProtocolsAsked(self):
        """
        RFC 9110 section 7.8: a 101 to a request carrying Upgrade hands the
        handler the 101 head and a tunnel end holding the bytes that
        followed it; the connection leaves the pool for good, and what the
        origin sends next goes to the tunnel, not to the parser.
        """
        upgraded = []

        class Upgrading(RecordingHandler):
            def responseUpgraded(self, head, peer):
                upgraded.append((head, peer))

        handler = Upgrading()
        head = get(fields=[(b"Host", b"10.0.0.1:8080"), (b"Connection", b"Upgrade"),
                           (b"Upgrade", b"websocket")])
        self.pool.request(ORIGIN, head, handler, False).addCallback(lambda r: r.finish())
        origin = self.origin()
        origin.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n\r\nfirst")
        self.assertEqual(handler.events, [])
        [(switched, peer)] = upgraded
        self.assertEqual(switched.status, 101)
        self.assertEqual(switched.headers.get(b"upgrade"), b"websocket")
        self.assertEqual(peer._pending, [b"first"])
        origin.send(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(peer.bytesFromDestination, len(b"first") + 19)
        self.assertEqual(self.pool.idleCount(), 0)
        self.assertNotIn(origin.protocol, self.pool._all)
        self.assertFalse(origin.transport.disconnected)

    def test_closeDelimitedBody(self):
        """
        A response without Content-Length or chunked framing ends normally
        when the origin closes; the connection is not pooled.
        """
        handler, d = self.request()
        origin = self.origin()
        origin.send(b"HTTP/1.1 200 OK\r\n\r\nabc")
        origin.close()
        self.assertEqual(handler.events, [("head", 200, []), ("body", b"abc"), ("end",)])
        self.assertEqual(self.pool.idleCount(), 0)

    def test_closeDelimitedSurvivesHandlerChangingHead(self):
        """
        A handler that rewrites the head's fields (as the proxy does when it
        adds Transfer-Encoding for its client) does not change how the end
        of the response is found.
        """

        class Rewriting(RecordingHandler):
            def responseHead(self, head):
                super().responseHead(head)
                head.headers.add(b"Transfer-Encoding", b"chunked")

        handler = Rewriting()
        self.pool.request(ORIGIN, get(), handler, False).addCallback(
            lambda r: r.finish()
        )
        origin = self.origin()
        origin.send(b"HTTP/1.1 200 OK\r\n\r\nabc")
        origin.close()
        self.assertEqual(handler.names(), ["head", "body", "end"])

    def test_truncatedContentLength(self):
        """
        A Content-Length body cut short by the close is a failure with bytes
        received, not an end.
        """
        handler, d = self.request()
        origin = self.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
        origin.close(error.ConnectionLost)
        self.assertEqual(handler.names(), ["head", "body", "failed"])
        self.assertIsInstance(handler.events[-1][1], UpstreamClosed)
        self.assertTrue(handler.events[-1][2])

    def test_responseTimeout(self):
        """
        No response byte for C{responseTimeout} seconds: L{GatewayTimeout},
        nothing received, connection aborted.
        """
        handler, d = self.request()
        origin = self.origin()
        self.reactor.advance(4.9)
        self.assertEqual(handler.events, [])
        self.reactor.advance(0.1)
        self.assertEqual(len(handler.events), 1)
        name, value, receivedAnything = handler.events[0]
        self.assertEqual(name, "failed")
        self.assertIsInstance(value, GatewayTimeout)
        self.assertFalse(receivedAnything)
        self.assertTrue(origin.transport.disconnected)

    def test_responseTimeoutCountsSilence(self):
        """
        The response timeout counts silence, not total time: a slow but
        steady body is not cut off.
        """
        handler, d = self.request()
        origin = self.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        for byte in b"abcd":
            self.reactor.advance(4)
            origin.send(bytes([byte]))
        self.reactor.advance(10)
        self.assertEqual(handler.names(), ["head", "body", "body", "body", "body", "end"])
        self.assertEqual(self.pool.idleCount(), 1)

    def test_earlyResponse(self):
        """
        A response that ends before the request body was finished: the
        handler is told the rest of the body is unwanted, and the connection
        is closed rather than pooled.
        """
        handler, d = self.request(get(method=b"POST"), hasBody=True, finish=False)
        origin = self.origin()
        request = self.successResultOf(d)
        request.write(b"part")
        origin.send(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(handler.names(), ["head", "unwanted", "end"])
        self.assertTrue(origin.transport.disconnecting)
        self.assertEqual(self.pool.idleCount(), 0)

    def test_requestBodyStreamed(self):
        """
        C{write} sends body bytes as given; after C{finish} and the response
        the connection is pooled.
        """
        handler, d = self.request(get(method=b"PUT"), hasBody=True, finish=False)
        origin = self.origin()
        request = self.successResultOf(d)
        request.write(b"abc")
        request.write(b"def")
        request.finish()
        self.assertEqual(
            origin.received(),
            b"PUT / HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\nabcdef",
        )
        origin.send(OK)
        self.assertEqual(self.pool.idleCount(), 1)

    def test_flowControl(self):
        """
        C{pauseProducing}/C{resumeProducing} on the request pause and resume
        the origin transport; a connection paused when its response ends is
        resumed before it is pooled.
        """
        handler, d = self.request()
        origin = self.origin()
        request = self.successResultOf(d)
        request.pauseProducing()
        self.assertEqual(origin.transport.producerState, "paused")
        request.resumeProducing()
        self.assertEqual(origin.transport.producerState, "producing")
        request.pauseProducing()
        origin.send(OK)
        self.assertEqual(origin.transport.producerState, "producing")
        self.assertEqual(self.pool.idleCount(), 1)


class ConnectErrorTests(PoolTestCase):
    """
    Failures to connect, as the client will be told of them.
    """

    def connectFails(self, exception: Exception):
        handler, d = self.request()
        factory = self.reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(self.reactor.connectors[-1], Failure(exception))
        return self.failureResultOf(d)

    def test_dnsLookupError(self):
        """
        A name that does not resolve is a L{BadGateway} (502).
        """
        value = upstreamError(Failure(error.DNSLookupError("nx.example")), ORIGIN)
        self.assertIsInstance(value, BadGateway)
        self.assertEqual(value.status, 502)
        self.assertEqual(value.message, "cannot resolve 10.0.0.1")

    def test_timeoutError(self):
        """
        A connect timeout is a L{GatewayTimeout} (504), through the pool as
        well.
        """
        value = upstreamError(Failure(error.TimeoutError()), ORIGIN)
        self.assertIsInstance(value, GatewayTimeout)
        self.assertEqual(value.status, 504)
        failure = self.connectFails(error.TimeoutError())
        self.assertIsInstance(failure.value, GatewayTimeout)
        self.assertEqual(failure.value.message, "connecting to 10.0.0.1:8080 timed out")

    def test_deferredTimeoutError(self):
        """
        L{defer.TimeoutError} is a L{GatewayTimeout} too.
        """
        self.assertIsInstance(
            upstreamError(Failure(defer.TimeoutError()), ORIGIN), GatewayTimeout
        )

    def test_connectionRefused(self):
        """
        A refused connection is a L{BadGateway} (502), through the pool as
        well.
        """
        value = upstreamError(Failure(error.ConnectionRefusedError()), ORIGIN)
        self.assertIsInstance(value, BadGateway)
        self.assertEqual(value.status, 502)
        failure = self.connectFails(error.ConnectionRefusedError())
        self.assertIsInstance(failure.value, BadGateway)
        self.assertEqual(failure.value.message, "connection to 10.0.0.1:8080 refused")

    def test_otherError(self):
        """
        Any other connect failure is a L{BadGateway} naming the destination.
        """
        value = upstreamError(Failure(error.NoRouteError()), ORIGIN)
        self.assertIsInstance(value, BadGateway)
        self.assertTrue(value.message.startswith("cannot connect to 10.0.0.1:8080: "))

    def test_closedConnection(self):
        """
        An origin connection that ended is a L{BadGateway}; when it ended in
        a failed TLS handshake, the message names the TLS error, connecting
        or not.
        """
        from OpenSSL.SSL import Error as TLSError

        closed = UpstreamClosed(False, Failure(error.ConnectionDone()))
        self.assertEqual(upstreamError(Failure(closed)).message,
                         "the origin closed the connection")
        tls = UpstreamClosed(False, Failure(TLSError("certificate verify failed")))
        for origin in (None, ORIGIN):
            value = upstreamError(Failure(tls), origin)
            self.assertIsInstance(value, BadGateway)
            self.assertTrue(value.message.startswith("TLS with the origin failed: "))
            self.assertIn("certificate verify failed", value.message)

    def test_proxyErrorPassesThrough(self):
        """
        A failure that already is a L{ProxyError} is told as it is.
        """
        timeout = GatewayTimeout("the origin did not answer in time")
        self.assertIs(upstreamError(Failure(timeout)), timeout)
        self.assertIs(upstreamError(timeout, ORIGIN), timeout)

    def test_cancelledPassesThrough(self):
        """
        Cancellation is not turned into a gateway error.
        """
        cancelled = defer.CancelledError()
        self.assertIs(upstreamError(Failure(cancelled), ORIGIN), cancelled)

    def test_cancellingConnectStopsAttempt(self):
        """
        Cancelling the request's Deferred while connecting stops the
        connection attempt, and the Deferred fails.
        """
        handler, d = self.request()
        d.cancel()
        self.assertTrue(self.reactor.connectors[-1].stoppedConnecting)
        self.failureResultOf(d)
        self.assertEqual(handler.events, [])


class OriginTests(SynchronousTestCase):
    """
    L{Origin.authority}: the Host field value (RFC 9110 section 7.2).
    """

    def test_defaultPortOmitted(self):
        """
        The scheme's default port is left out.
        """
        self.assertEqual(Origin(b"http", "10.0.0.1", 80).authority(), b"10.0.0.1")
        self.assertEqual(Origin(b"https", "example.com", 443).authority(), b"example.com")

    def test_otherPortIncluded(self):
        """
        Any other port is included, 443 for http too.
        """
        self.assertEqual(Origin(b"http", "10.0.0.1", 8080).authority(), b"10.0.0.1:8080")
        self.assertEqual(Origin(b"http", "example.com", 443).authority(), b"example.com:443")

    def test_ipv6Bracketed(self):
        """
        An IPv6 literal is put in brackets.
        """
        self.assertEqual(Origin(b"http", "::1", 80).authority(), b"[::1]")
        self.assertEqual(Origin(b"http", "::1", 8080).authority(), b"[::1]:8080")
