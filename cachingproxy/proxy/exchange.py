# -*- test-case-name: tests.test_server -*-
"""
One request and its answer: an L{Exchange}, moved by its state machine
(L{ExchangeState}, whose table is L{cachingproxy.proxy.states.EXCHANGE})
through L{Exchange._move} only.
"""

from __future__ import annotations

import functools
import time
from operator import attrgetter
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..errors import (
    BadGateway,
    ProxyError,
    UpstreamClosed,
    upstreamError,
)
from ..http.headers import HOP_BY_HOP, Headers, connectionOptions, formatHTTPDate, splitList
from ..http import wire
from ..http.message import RequestHead, ResponseHead, logText
from ..http.wire import Field
from .._twistedinternals import sendNow
from ..compress import compressWhole, compressor
from .tunnel import TunnelPeer
from .upstream import Origin, UpstreamRequest, _QuietFactory
from ..compress import compressedFields, compressionPlan
from .interfaces import ICacheExchange
from .states import (
    EXCHANGE, _EXCHANGE_MOVES, ExchangeState, IllegalTransition,
    R_UPGRADE, X_DONE, X_FORWARDING, X_QUEUED, X_RESPONDING, X_TUNNEL,
)

if TYPE_CHECKING:
    from .connection import ProxyProtocol

__all__ = ["Exchange", "ExchangeState"]


#: Not worked out yet.
_UNKNOWN = object()


class _ReadPauser:
    """
    Pauses the client connection's reading for one reason, so that several
    reasons (a full upstream buffer, a deep pipeline) can overlap.
    """

    def __init__(self, protocol: "ProxyProtocol", reason: str) -> None:
        self._protocol = protocol
        self._reason = reason

    def pauseProducing(self) -> None:
        self._protocol._pauseReading(self._reason)

    def resumeProducing(self) -> None:
        self._protocol._resumeReading(self._reason)

    def stopProducing(self) -> None:
        pass


@implementer(ICacheExchange)
class Exchange:
    """
    One request and its response.

    Provides L{cachingproxy.proxy.upstream.IResponseHandler} for the upstream
    response it forwards.

    @ivar state: the L{ExchangeState} (read-only: L{_move} moves it).
    """

    _log = Logger()

    state = property(attrgetter("_state"))

    # Every attribute is a slot, set in __init__. Without slots, CPython
    # 3.11 lays out the attributes of a class's instances by one set of
    # names they all share, which takes at most 30 names, in the order
    # they are first set in the process; an exchange that sets a name
    # past those gets a dict of its own, and every attribute it reads or
    # sets after that costs more. An exchange has more than 30 attributes
    # across the paths a request can take (what the first requests set
    # decides which of them fit), so that cost fell on some paths and not
    # others: measured on a remembered pass, 13k of its 258k instructions
    # (bench/run_instructions.sh pass).
    __slots__ = (
        "protocol", "head", "_state", "keepAlive", "started", "wallStarted", "_closeAfter",
        "_bodyBuffer", "tunnelData", "handler", "status", "bytesSent", "error", "verdict",
        "_bodyBuffered", "bodyDone", "bodyChunked", "hasBody", "expectContinue", "upstream",
        "_upstreamDeferred", "_chunked", "_noBody", "_bodyUnwanted",
        "_registeredUpstreamProducer", "_registeredClientProducer", "_compressor", "_held",
        "producer", "onClientGone", "cacheOrigin", "cacheHead", "cacheEntries", "cacheStamp",
        "facts", "_abandoned", "_upstreamHead", "cacheResult", "bytesReceived",
        "upstreamSeconds", "headRead", "forwardedAt", "finished", "upstreamOrigin",
        "ownEndpoint", "upstreamPath", "upgrade", "route", "routeSettings", "_attempt",
    )

    def __init__(self, protocol: "ProxyProtocol", head: RequestHead, keepAlive: bool):
        self.protocol = protocol
        self.head = head
        self._state = X_QUEUED
        self.keepAlive = keepAlive
        self.started = protocol.factory.reactor.seconds()
        self.wallStarted = time.time()
        self._closeAfter = not keepAlive
        self._bodyBuffer: List[bytes] = []
        self.tunnelData: List[bytes] = []
        #: who hears about the upstream response: a cache layer in front of
        #: this exchange, or None for the exchange itself (kept as None
        #: rather than a reference to itself so that a finished exchange is
        #: freed by reference counting, not by the cycle collector)
        self.handler = None
        self.status = 0
        self.bytesSent = 0
        self.error: Optional[ProxyError] = None
        #: the access decision still under way (a password being checked): a
        #: Deferred firing with the refusal or C{None}, waited for before
        #: anything else
        self.verdict: Optional[defer.Deferred] = None
        self._bodyBuffered = 0
        self.bodyDone = False
        self.bodyChunked = False
        self.hasBody = False
        self.expectContinue = False
        self.upstream: Optional[UpstreamRequest] = None
        self._upstreamDeferred: Optional[defer.Deferred] = None
        self._chunked = False
        self._noBody = False
        self._bodyUnwanted = False
        self._registeredUpstreamProducer = False
        self._registeredClientProducer = False
        #: compresses the response body on its way out, or C{None}
        self._compressor = None
        #: a response head not written yet: it goes out with the first body
        #: bytes of the same read from the origin, or after that read
        self._held = b""
        #: what produces the response body: the upstream request, or a stored
        #: body being read
        self.producer = None
        #: called with no argument if the client leaves before the end
        self.onClientGone: Optional[Callable[[], None]] = None
        #: where and as what the cache layer forwards this request
        self.cacheOrigin: Optional[Origin] = None
        self.cacheHead: Optional[RequestHead] = None
        #: the stored responses found for this request (for stale-if-error)
        self.cacheEntries: Sequence = ()
        #: the store's stamp for the request's key read before the lookup (see
        #: L{cachingproxy.cache.store.IStore.stamp}), or C{None}
        self.cacheStamp: object = None
        self.facts: Optional["_Facts"] = None
        self._abandoned = False
        self._upstreamHead: Optional[RequestHead] = None
        #: for the access log and metrics: what the cache did (C{HIT}, C{MISS},
        #: C{STALE}, C{REVALIDATED}, C{PASS}, C{-} without a cache), request
        #: body bytes received, seconds until the origin's response head
        #: (C{None} if the origin was not asked), when it finished
        self.cacheResult = "-"
        self.bytesReceived = 0
        self.upstreamSeconds: Optional[float] = None
        #: the bytes of the read the request's head was all in, from its
        #: first byte, when it was (as a keep-alive client's requests mostly
        #: are), else C{b""}: the same bytes again are the same head, which
        #: lets the access log keep a connection's line instead of making it
        #: again (L{cachingproxy.ops.accesslog})
        self.headRead = b""
        self.forwardedAt: Optional[float] = None
        self.finished: Optional[float] = None
        self.upstreamOrigin: Optional[Origin] = None
        #: answered by the proxy itself (its own endpoints and pages), not
        #: sent anywhere
        self.ownEndpoint = False
        self.upstreamPath = b""
        #: the Upgrade field value sent upstream with C{Connection: Upgrade}
        #: (the protocols asked for that the proxy carries), or C{None} for a
        #: request that does not ask to upgrade
        self.upgrade: Optional[bytes] = None
        #: with routes and origin groups: the L{cachingproxy.sites.model.Route}
        #: of this request, its L{ProxySettings
        #: <cachingproxy.proxy.settings.ProxySettings>} (the proxy's own with the
        #: route's put over them) and its trip to a server under way
        #: (L{cachingproxy.sites.wiring}); C{None} without
        self.route = None
        self.routeSettings = None
        self._attempt = None

    @classmethod
    def answeredHot(cls, protocol: "ProxyProtocol", head: RequestHead, origin: Origin,
                    bodyLength: int, headRead: bytes = b"") -> "Exchange":
        """
        An exchange its connection answered from the cache's hot table as
        soon as its head was read (L{ProxyProtocol._hotLane}): never queued,
        done from the start, kept for the access log and the metrics, which
        see it as the exchange that served the same hit the long way would
        look: a 200 from the cache for C{origin}, C{bodyLength} bytes of
        body, with C{headRead} as L{headRead}.
        """
        exchange = cls(protocol, head, True)
        if headRead:
            exchange.headRead = headRead
        # (QUEUED to DONE, a move the table allows, made without the check)
        exchange._state = X_DONE
        exchange.status = 200
        exchange.bytesSent = bodyLength
        exchange.cacheResult = "HIT"
        exchange.upstreamOrigin = origin
        exchange.bodyDone = True
        return exchange

    def _move(self, new: ExchangeState) -> None:
        """
        The exchange's only mover: L{EXCHANGE}'s table says where it may go.

        @raise IllegalTransition: if the table forbids the move.
        """
        if new not in _EXCHANGE_MOVES[self._state]:
            raise EXCHANGE.illegalMove(self._state, new, self.protocol)
        self._state = new

    def _illegal(self, reason: Failure) -> None:
        """
        An L{IllegalTransition} out of a callback of the connection to the
        origin: the client connection's entry point for it (logged, and the
        connection aborted, as L{ProxyProtocol.dataReceived} does).
        """
        reason.trap(IllegalTransition)
        self.protocol._illegal(reason.value)

    def _unexpected(self, event: str) -> None:
        """
        C{event} arrived outside the state it belongs to: dropped once the
        exchange is over (a cache layer may keep a fetch going for other
        clients after this one left, or the exchange was answered and its
        fetch abandoned); anywhere else it is a bug.

        @raise IllegalTransition: unless the exchange is L{DONE
            <ExchangeState.DONE>}.
        """
        if self._state is not X_DONE:
            raise EXCHANGE.illegalEvent(self._state, event, self.protocol)

    # -- request body ----------------------------------------------------

    def requestBody(self, data: bytes) -> None:
        self.bytesReceived += len(data)
        if self._bodyUnwanted:
            return
        upstream = self.upstream
        if upstream is not None:
            if self.bodyChunked:
                upstream.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                upstream.write(data)
            return
        self._bodyBuffer.append(data)
        self._bodyBuffered += len(data)
        self.protocol._buffered(len(data))

    def requestBodyEnd(self) -> None:
        self.bodyDone = True
        upstream = self.upstream
        if upstream is None or upstream.finished:
            # Not under way yet, or a request without a body already sent
            # in full.
            return
        self._finishUpstreamBody(upstream)

    def _finishUpstreamBody(self, upstream: UpstreamRequest) -> None:
        if self._registeredUpstreamProducer:
            self._registeredUpstreamProducer = False
            transport = upstream.transport
            if transport is not None:
                transport.unregisterProducer()
            self.protocol._resumeReading("upstream")
        if self.bodyChunked and not self._bodyUnwanted:
            upstream.write(b"0\r\n\r\n")
        upstream.finish()

    def requestBodyUnwanted(self) -> None:
        """
        The origin answered before the request body was complete: drop the
        rest, and end the client connection after the response (what is
        still to come of the body cannot be told from the next request).
        """
        self._bodyUnwanted = True
        if not self.bodyDone:
            self._closeAfter = True
        if self._registeredUpstreamProducer:
            self._registeredUpstreamProducer = False
            self.protocol._resumeReading("upstream")

    # -- forwarding ------------------------------------------------------

    def start(self) -> None:
        """
        This exchange is now the one the connection answers.
        """
        self._move(X_FORWARDING)
        verdict = self.verdict
        if verdict is not None:
            self.verdict = None
            verdict.addCallback(self._decided)
            return
        self._proceed()

    def startKnown(self, origin: Origin, path: bytes) -> None:
        """
        This exchange is now the one the connection answers, and its
        connection has found, as L{start} would, that it goes to
        C{origin} for C{path} with nothing else to check first (see
        L{cachingproxy.proxy.connection.ProxyProtocol._hotLane}): the
        caller forwards it.
        """
        self._move(X_FORWARDING)
        self.upstreamOrigin = origin
        self.upstreamPath = path

    def _decided(self, refused: Optional[ProxyError]) -> None:
        if self.state is X_DONE or self._abandoned:
            return
        if refused is not None:
            self.respondError(refused)
        else:
            self._proceed()

    def _proceed(self) -> None:
        if self.error is not None:
            self.respondError(self.error)
            return
        factory = self.protocol.factory
        try:
            origin, path = factory.route(self)
        except ProxyError as e:
            self.respondError(e)
            return
        if self.head.method == b"CONNECT":
            if factory.access is not None:
                refused = self.protocol.destinationVerdict(origin)
                if refused is not None:
                    self.respondError(refused)
                    return
            self._connectTunnel(origin)
            return
        if origin is None:
            # The proxy's own endpoints.
            self.ownEndpoint = True
            factory.admin.handle(self, path)
            return
        self.upstreamOrigin = origin
        self.upstreamPath = path
        if factory.access is not None:
            refused = self.protocol.destinationVerdict(origin)
            if refused is not None:
                self.respondError(refused)
                return
        cache = factory.cache
        if self.route is not None:
            cache = factory.sites.cacheFor(self.route, cache)
        if self.upgrade is not None:
            # What answers an upgrade is a connection, not a representation:
            # never looked up, never stored.
            if cache is not None:
                self.cacheResult = "PASS"
            self.forward(origin, self.upstreamHead(), self)
        elif cache is not None:
            cache.handle(self, origin, path)
        else:
            self.forward(origin, self.upstreamHead(), self)

    def upstreamHead(self) -> RequestHead:
        """
        The request as it goes upstream (built once, when first needed: a
        cache hit never needs it).
        """
        head = self._upstreamHead
        if head is None:
            head = self._upstreamHead = self.protocol.factory.upstreamHead(
                self, self.upstreamOrigin, self.upstreamPath
            )
        return head

    # -- what the cache layer reads through ICacheExchange -------------------

    def cacheTarget(self, origin: Origin) -> Optional[Tuple[bytes, bytes]]:
        """
        The scheme and authority of this request's cache key: C{origin}'s,
        or when the origin may be told another host or scheme than its own,
        those of the target URI it builds
        (L{cachingproxy.proxy.factory.ProxyFactory.cacheTarget}); C{None}
        when the request must not be answered from, nor stored in, the
        cache.
        """
        factory = self.protocol.factory
        if self.route is not None:
            return factory.sites.cacheTarget(self)
        if not factory.keyFromHead:
            return (origin.scheme, origin.authority())
        return factory.cacheTarget(origin, self.upstreamHead())

    def fromAdmin(self) -> bool:
        """
        Whether the client may use the proxy's own endpoints and methods.
        """
        return self.protocol.factory.isAdmin(self.protocol.clientHost)

    def sharedFields(self, fields: list) -> Optional[list]:
        """
        The response C{fields} as every client receives them (see
        L{cachingproxy.proxy.factory.ProxyFactory.downstreamFields}), or
        C{None} when they are rewritten for this client's Host.
        """
        factory = self.protocol.factory
        settings = self.routeSettings or factory.settings
        if settings.upstream is not None and settings.rewriteRedirects and any(
                f[0] == b"location" or f[0] == b"content-location" for f in fields):
            return None
        return factory.downstreamFields(self, list(fields))

    def hotFacts(self) -> Tuple[bytes, object]:
        """
        @return: C{(viaName, compression)} of this port's settings, for a
            response built in wire form.
        """
        settings = self.routeSettings or self.protocol.factory.settings
        return settings.viaName, settings.compression

    def forward(self, origin: Origin, head: RequestHead, handler, _tried=()) -> None:
        """
        Send C{head} to C{origin}, streaming this exchange's request body;
        C{handler} (this exchange, or a cache layer in front of it) is told
        about the response. A routed request goes to a server of its
        route's group instead (C{_tried}: the servers that could not be
        reached, L{cachingproxy.sites.wiring.SitesRouting.attempt}).
        """
        if self.route is not None:
            routed = self.protocol.factory.sites.attempt(self, head, handler, _tried)
            if routed is None:
                return
            origin, head, handler = routed
        self.handler = None if handler is self else handler
        pool = self.protocol.factory.pool
        self.forwardedAt = pool.reactor.seconds()
        upstream = pool.requestOnIdle(origin, head, handler, self.hasBody)
        if upstream is not None:
            self._upstreamReady(upstream)
            return
        d = pool.request(origin, head, handler, self.hasBody)
        self._upstreamDeferred = d
        d.addCallbacks(self._upstreamReady, self._upstreamUnreachable)
        d.addErrback(self._illegal)

    def _upstreamReady(self, upstream: UpstreamRequest) -> None:
        self._upstreamDeferred = None
        if self._state is X_DONE or self._abandoned:
            upstream.abort()
            return
        self.upstream = upstream
        self.producer = upstream
        buffered, self._bodyBuffer = self._bodyBuffer, []
        if buffered:
            self.protocol._unbuffered(self._bodyBuffered)
            self._bodyBuffered = 0
            for data in buffered:
                self.requestBody(data)
        if self.bodyDone or not self.hasBody:
            if not self._bodyUnwanted:
                self._finishUpstreamBody(upstream)
        elif not self._bodyUnwanted:
            transport = upstream.transport
            if transport is not None:
                transport.registerProducer(
                    _ReadPauser(self.protocol, "upstream"), True
                )
                self._registeredUpstreamProducer = True

    def _upstreamUnreachable(self, reason: Failure) -> None:
        self._upstreamDeferred = None
        if self._state is X_DONE or self._abandoned:
            return
        if self.handler is not None:
            # A cache layer decides (it may serve stale content).
            self.handler.responseFailed(reason, False)
        else:
            error = upstreamError(reason, self.upstreamOrigin)
            if not reason.check(ProxyError):
                self._log.failure("forwarding failed", failure=reason)
                if not isinstance(error, ProxyError):
                    # A connection attempt cancelled elsewhere.
                    error = BadGateway("cannot reach the origin")
            self.respondError(error)

    def _connectTunnel(self, origin: Origin) -> None:
        factory = self.protocol.factory
        endpoint = HostnameEndpoint(
            factory.reactor,
            origin.host,
            origin.port,
            timeout=factory.pool.settings.connectTimeout,
        )
        d = endpoint.connect(_QuietFactory(TunnelPeer))
        self._upstreamDeferred = d

        def connected(peer: TunnelPeer) -> None:
            self._upstreamDeferred = None
            if self._state is X_DONE or self._abandoned:
                peer.transport.loseConnection()
                return
            self.status = 200
            self.protocol.transport.write(wire.CONNECTION_ESTABLISHED)
            self._move(X_TUNNEL)
            self.protocol._startTunnel(self, peer)

        def failed(reason: Failure) -> None:
            self._upstreamDeferred = None
            if self._state is not X_DONE and not self._abandoned:
                self.respondError(upstreamError(reason, origin))

        d.addCallbacks(connected, failed)
        d.addErrback(self._illegal)

    # -- IResponseHandler --------------------------------------------------

    def responseInterim(self, head: ResponseHead) -> None:
        if self._state is not X_FORWARDING:
            self._unexpected("an interim response head")
            return
        if head.status == 100:
            if not self.expectContinue:
                return
            self.expectContinue = False
            self.protocol.transport.write(wire.CONTINUE)
            return
        if head.status == 101 or self.head.version < (1, 1):
            return
        headers = head.headers.copy()
        _removeHopByHop(headers)
        self.protocol.transport.write(
            ResponseHead(head.status, head.reason, headers=headers).toWire()
        )

    def responseHead(self, head: ResponseHead, cacheFields: Sequence[Field] = ()) -> None:
        """
        Pass on a response head from upstream.

        @param cacheFields: the cache's own fields (Cache-Status, X-Cache),
            added after the origin's fields have been framed: no origin
            field frames or nominates them.
        """
        if self._state is not X_FORWARDING:
            self._unexpected("a response head")
            return
        if self.forwardedAt is not None:
            self.upstreamSeconds = self.protocol.factory.reactor.seconds() - self.forwardedAt
        fields = head.headers.lowered()
        facts = _Facts(fields)
        # The framing sent on is written here from what the parser read:
        # Content-Length, normalised, unless the origin chunked the body;
        # Transfer-Encoding is hop-by-hop (the client side chunks anew).
        knownLength = facts.length is not None and not facts.chunked
        fields = _framedFields(fields, facts.hopByHop,
                               facts.length if knownLength else None)
        if cacheFields:
            fields.extend(cacheFields)
        head.headers = Headers.fromLowered(fields)
        self._sendHead(head.status, head.reason, fields, knownLength, hold=True)

    def responseUpgraded(self, head: ResponseHead, peer: TunnelPeer) -> None:
        """
        The origin answered 101 (RFC 9110 section 15.2.2): pass the head on
        with C{Connection: Upgrade} and its Upgrade field, and join the two
        connections into a tunnel.
        """
        protocol = self.protocol
        if self._state is not X_FORWARDING or protocol.reader is not R_UPGRADE:
            peer.transport.loseConnection()
            if self._state is X_FORWARDING:
                self.respondError(BadGateway("the origin switched protocols unasked"))
            else:
                self._unexpected("a switch of protocols")
            return
        factory = protocol.factory
        if self.forwardedAt is not None:
            self.upstreamSeconds = factory.reactor.seconds() - self.forwardedAt
        fields = head.headers.lowered()
        fields = _framedFields(fields, _Facts(fields).hopByHop, None)
        fields.append((b"connection", b"Connection", b"Upgrade"))
        fields.append((b"upgrade", b"Upgrade", head.headers.get(b"upgrade") or self.upgrade))
        fields = factory.downstreamFields(self, fields)
        fields.append((b"via", b"Via", b"1.1 " + factory.settings.viaName))
        self.status = 101
        self.upstream = self.producer = self.handler = None
        if self._registeredClientProducer:
            self._registeredClientProducer = False
            protocol.transport.unregisterProducer()
        self._move(X_TUNNEL)
        protocol.transport.write(wire.responseHead(101, head.reason, fields))
        # What the client sent after its request is the first tunnel data.
        self.bytesReceived += sum(len(data) for data in self.tunnelData)
        protocol._startTunnel(self, peer, upgraded=True)

    def plainKeepAlive(self) -> bool:
        """
        Whether the response can be the bytes of a plain HTTP/1.1
        keep-alive answer (no Connection field, no body to skip).
        """
        return (
            self.head.version == (1, 1)
            and not self._closeAfter
            and not self.hasBody
            and self._state is X_FORWARDING
        )

    def serveBytes(self, status: int, data: bytes, bodyLength: int) -> None:
        """
        Send a complete response already in wire form (see
        L{plainKeepAlive}).
        """
        self.status = status
        self.bytesSent = bodyLength
        self._move(X_RESPONDING)
        self._write(data)
        self._finish()

    def respondWithBody(self, status: int, reason: bytes, fields: list, body, length: int) -> None:
        """
        Answer from the cache: C{fields} (lowered triples, without framing
        fields) and a body of C{length} bytes, given either as C{bytes} or as
        an L{cachingproxy.cache.store.IBodyReader} streamed with flow control.
        """
        if self._state is not X_FORWARDING:
            if not isinstance(body, bytes) and body is not None:
                body.close()
            self._unexpected("a stored response")
            return
        if self.forwardedAt is not None and self.upstreamSeconds is None:
            # The origin was asked first (a revalidation, say): how long it
            # took, for the access log.
            self.upstreamSeconds = self.protocol.factory.reactor.seconds() - self.forwardedAt
        noBody = self.head.method == b"HEAD" or status in (204, 304)
        if status not in (204, 304) and not (100 <= status < 200):
            fields.append((b"content-length", b"Content-Length", b"%d" % length))
        if noBody or isinstance(body, bytes):
            self._sendHead(status, reason, fields, True, firstBody=b"" if noBody else body)
            if body is not None and not isinstance(body, bytes):
                body.close()
            self._finish()
            return
        self._sendHead(status, reason, fields, True)
        streamer = _StoredBodyStreamer(self, body)
        self.producer = streamer
        self.protocol.transport.registerProducer(streamer, True)
        self._registeredClientProducer = True
        streamer.resumeProducing()

    def _sendHead(self, status: int, reason: bytes, fields: list, knownLength: bool,
                  firstBody: bytes = b"", hold: bool = False) -> None:
        """
        Write the response head (with Via and the framing this client
        needs), and C{firstBody} in the same write. With C{hold}, while
        the origin's bytes are being read, the head waits for the body
        bytes of that same read, so that both leave in one send.
        """
        protocol = self.protocol
        self.status = status
        fields = protocol.factory.downstreamFields(self, fields)
        compression = (self.routeSettings or protocol.factory.settings).compression
        if compression is not None and status == 200 and self.head.method != b"HEAD":
            fields, coding, _ = compressionPlan(compression, fields, knownLength,
                                                self.head.headers.get(b"accept-encoding"))
            if coding is not None:
                fields = compressedFields(fields, coding)
                if firstBody:
                    # A whole body in hand: compress it at once, and say
                    # its length.
                    firstBody = compressWhole(coding, firstBody, compression)
                    fields.append((b"content-length", b"Content-Length",
                                   b"%d" % len(firstBody)))
                else:
                    self._compressor = compressor(coding, compression)
                    knownLength = False
        self.bytesSent += len(firstBody)
        fields.append((b"via", b"Via", b"1.1 " + protocol.factory.settings.viaName))
        if self.head.method == b"HEAD" or status in (204, 304):
            self._noBody = True
        elif knownLength:
            pass
        elif self.head.version >= (1, 1):
            fields.append((b"transfer-encoding", b"Transfer-Encoding", b"chunked"))
            self._chunked = True
        else:
            # An HTTP/1.0 client learns where the body ends from the
            # connection closing.
            self._closeAfter = True
        if self.hasBody and not self.bodyDone:
            # The origin answered before the request body was complete: what
            # is left of it cannot be told from a next request.
            self._closeAfter = True
        if self._closeAfter:
            fields.append((b"connection", b"Connection", b"close"))
        elif self.head.version < (1, 1):
            fields.append((b"connection", b"Connection", b"keep-alive"))
        self._move(X_RESPONDING)
        head = wire.responseHead(status, reason, fields, firstBody)
        if hold and self.upstream is not None and self.upstream.afterRead(self._flushHeld):
            self._held = head
        else:
            self._write(head)

    def _flushHeld(self) -> None:
        if self._held and self._state is X_RESPONDING:
            self._write(b"")

    def _write(self, data: bytes) -> None:
        """
        Send response bytes to the client. Only when the client does not
        take them at once does the upstream response become the producer of
        the client connection, so that a slow client pauses the origin; a
        response that goes out at once costs no registration.
        """
        transport = self.protocol.transport
        if self._held:
            data = self._held + data
            self._held = b""
        rest = sendNow(transport, data)
        if rest:
            if not self._registeredClientProducer and self.producer is not None:
                transport.registerProducer(self.producer, True)
                self._registeredClientProducer = True
            transport.write(rest)

    def responseBody(self, data: bytes) -> None:
        if self._state is not X_RESPONDING:
            self._unexpected("response body")
            return
        if self._noBody:
            return
        compressor = self._compressor
        if compressor is not None:
            data = compressor.compress(data)
            if not data:
                return
        self.bytesSent += len(data)
        if self._chunked:
            self._write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self._write(data)

    def _bodyEnd(self) -> None:
        compressor, self._compressor = self._compressor, None
        if compressor is not None and not self._noBody:
            tail = compressor.finish()
            if tail:
                self.bytesSent += len(tail)
                self._write(b"%x\r\n%s\r\n" % (len(tail), tail) if self._chunked else tail)
        if self._chunked:
            self._write(b"0\r\n\r\n")

    def responseEnd(self) -> None:
        if self._state is not X_RESPONDING:
            self._unexpected("the end of a response")
            return
        self._bodyEnd()
        self._finish()

    def responseFailed(self, reason: Failure, receivedAnything: bool) -> None:
        if self._state is X_DONE:
            return
        if self._state is X_RESPONDING:
            # Part of the response is out: the only honest thing left is to
            # end the connection without a false end of message.
            self._log.info(
                "origin response for {target} broke off: {reason}",
                target=logText(self.head.target),
                reason=reason.getErrorMessage(),
            )
            self.upstream = None
            self._move(X_DONE)
            self.protocol._exchangeAborted(self)
            return
        if not reason.check(ProxyError, UpstreamClosed):
            self._log.failure("upstream failure", failure=reason)
        self.respondError(upstreamError(reason))

    # -- ending ------------------------------------------------------------

    def respondError(self, error: ProxyError) -> None:
        """
        Answer with C{error}'s status and a short text body, unless the
        response has already started, in which case the connection ends.
        """
        if self._state is X_RESPONDING:
            self.responseFailed(Failure(error), True)
            return
        if self._state is X_QUEUED:
            self._move(X_FORWARDING)
        self._abandonUpstream()
        protocol = self.protocol
        self.status = error.status
        if (
            error.closeConnection
            or (self.hasBody and not self.bodyDone)
            or self.head.method == b"CONNECT"
        ):
            # An unread request body cannot be told from the next request,
            # nor can bytes sent after a refused CONNECT.
            self._closeAfter = True
        self._log.info(
            "{status} for {client} {method} {target}: {message}",
            status=error.status,
            client=protocol.clientHost,
            method=logText(self.head.method),
            target=logText(self.head.target),
            message=error.message,
        )
        body = (error.message + "\n").encode("utf-8", "replace")
        fields = [
            (b"date", b"Date", formatHTTPDate(protocol.factory.reactor.seconds())),
            (b"content-type", b"Content-Type", b"text/plain; charset=utf-8"),
            (b"content-length", b"Content-Length", b"%d" % len(body)),
            (b"via", b"Via", b"1.1 " + protocol.factory.settings.viaName),
        ]
        for name, value in error.headers:
            fields.append((name.lower(), name, value))
        if self._closeAfter:
            fields.append((b"connection", b"Connection", b"close"))
        elif self.head.version < (1, 1):
            fields.append((b"connection", b"Connection", b"keep-alive"))
        self._move(X_RESPONDING)
        if self.head.method == b"HEAD":
            body = b""
        else:
            self.bytesSent = len(body)
        protocol.transport.write(wire.responseHead(error.status, b"", fields, body))
        self._finish()

    def _abandonUpstream(self) -> None:
        self._abandoned = True
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.abandon()
        d, self._upstreamDeferred = self._upstreamDeferred, None
        if d is not None:
            d.cancel()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()

    def _finish(self) -> None:
        if self._held:
            self._write(b"")
        if self._registeredClientProducer:
            self._registeredClientProducer = False
            self.protocol.transport.unregisterProducer()
        self._move(X_DONE)
        self.protocol._exchangeDone(self)
        # (what _letGo does, on the path every response takes)
        self.upstream = self.producer = self.handler = None

    def _letGo(self) -> None:
        """
        The exchange is over: the upstream request and the cache layer
        point back at it, so let go of them, and nothing keeps a cycle
        alive for the collector.
        """
        self.upstream = self.producer = self.handler = None

    def clientGone(self) -> None:
        """
        The client connection is gone: release everything this exchange
        holds upstream (a half-used upstream connection is closed, never
        pooled), unless the cache layer keeps the fetch going for other
        clients sharing it (its C{onClientGone} says so).
        """
        if self._state is X_DONE:
            return
        self._move(X_DONE)
        if self._bodyBuffered:
            self.protocol._unbuffered(self._bodyBuffered)
            self._bodyBuffered = 0
        self._bodyBuffer = []
        producer, self.producer = self.producer, None
        if isinstance(producer, _StoredBodyStreamer):
            producer.stopProducing()
        gone, self.onClientGone = self.onClientGone, None
        keepFetching = gone() if gone is not None else False
        if not keepFetching:
            self._abandonUpstream()
        self._letGo()


_WATCHED = frozenset(
    [b"content-length", b"transfer-encoding", b"connection", b"host", b"expect", b"via"]
)


@functools.lru_cache(maxsize=256)
def _hopByHopWith(connection: bytes) -> frozenset:
    """
    The hop-by-hop fields of a message whose Connection field says
    C{connection}, remembered: few values recur (C{keep-alive}, C{close}).
    """
    return HOP_BY_HOP | connectionOptions(connection)


class _Facts:
    """
    What one pass over a head's fields found: the framing fields, the
    fields Connection nominates, the Host count, Expect and Via.
    """

    __slots__ = ("length", "chunked", "hopByHop", "hosts", "expect", "via")

    def __init__(self, fields) -> None:
        length = te = connection = expect = via = None
        hosts = 0
        for lower, _, value in fields:
            if lower in _WATCHED:
                if lower == b"content-length":
                    length = value
                elif lower == b"transfer-encoding":
                    te = value if te is None else te + b"," + value
                elif lower == b"connection":
                    connection = value if connection is None else connection + b"," + value
                elif lower == b"host":
                    hosts += 1
                elif lower == b"expect":
                    expect = value
                else:
                    via = value if via is None else via + b"," + value
        self.length = length
        # RFC 9112 section 6.1: chunked must be the final coding.
        self.chunked = bool(te) and splitList(te)[-1].lower() == b"chunked"
        if connection is None:
            self.hopByHop = HOP_BY_HOP
        else:
            # RFC 9110 section 7.6.1: Connection names more fields that
            # describe this connection only (never the framing or Host).
            self.hopByHop = _hopByHopWith(connection)
        self.hosts = hosts
        self.expect = expect
        self.via = via


def _framedFields(fields, hopByHop, length: Optional[bytes]) -> list:
    """
    @param length: the Content-Length the parser framed the message by, or
        C{None} when it was chunked or had none.

    @return: C{fields} without the hop-by-hop ones, order and repeats
        kept, and with Content-Length only as C{length} says: whatever the
        fields said, the framing sent on is the one that was parsed.
    """
    if length is None:
        return [f for f in fields if f[0] not in hopByHop and f[0] != b"content-length"]
    # (the parser allows one Content-Length field only)
    value = b"%d" % int(length)
    return [f if f[0] != b"content-length" else (f[0], f[1], value)
            for f in fields if f[0] not in hopByHop or f[0] == b"content-length"]


@implementer(IPushProducer)
class _StoredBodyStreamer:
    """
    Streams a stored body to the client in 64 KiB reads, for as long as
    the client connection takes them (it pauses this producer when its
    buffer fills).
    """

    _log = Logger()
    chunkSize = 65536

    def __init__(self, exchange: "Exchange", reader) -> None:
        self._exchange = exchange
        self._reader = reader
        self._paused = False
        self._done = False
        self._pumping = False

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._paused and not self._done:
                try:
                    data = self._reader.read(self.chunkSize)
                except OSError as e:
                    # The stored body turned out damaged: end the connection
                    # without a false end of message.
                    self._log.warn("stored body unreadable: {error}", error=e)
                    self._stop()
                    exchange = self._exchange
                    exchange._move(X_DONE)
                    exchange.protocol._exchangeAborted(exchange)
                    return
                if not data:
                    self._stop()
                    self._exchange._bodyEnd()
                    self._exchange._finish()
                    return
                self._exchange.responseBody(data)
        finally:
            self._pumping = False

    def _stop(self) -> None:
        self._done = True
        self._reader.close()

    def stopProducing(self) -> None:
        if not self._done:
            self._stop()


def _removeHopByHop(headers: Headers) -> None:
    """
    Remove the fields that describe one connection (RFC 9110 section
    7.6.1): the fixed set, and every field the Connection field nominates.
    """
    headers.removeMany(_Facts(headers.lowered()).hopByHop)


