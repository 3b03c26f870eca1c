# -*- test-case-name: tests.test_server -*-
"""
The client-facing side: L{ProxyProtocol}, one per client connection, and
L{ProxyFactory}, which holds what the connections share.

A connection is two small state machines, kept apart as h11 keeps its
client and server roles apart:

  - the I{reader} (L{ReaderState}) follows the bytes the client sends:
    waiting for a request head, reading a head, reading a body, holding
    what follows a request to upgrade until its answer, tunnelling, closed. It is moved only by L{ProxyProtocol._moveReader}.
  - each request is an L{Exchange} (L{ExchangeState}): queued behind
    earlier pipelined requests, forwarding (waiting for upstream), responding
    (streaming the response back), done. It is moved only by
    L{Exchange._move}.

Requests are answered strictly in order; requests pipelined behind the one
being answered are parsed and held (their bodies buffered up to a bound,
beyond which the connection stops reading until it catches up).

Parsing is done by httptools (llhttp) with every leniency off.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, FrozenSet, List, Optional, Sequence, Tuple

import httptools
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IProtocolNegotiationFactory, IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..errors import (
    BadGateway,
    BadRequest,
    ContentTooLarge,
    Forbidden,
    HeaderFieldsTooLarge,
    LoopDetected,
    MethodNotAllowed,
    NotImplementedScheme,
    ProxyError,
    RequestTimeout,
    UpstreamClosed,
    URITooLong,
    VersionNotSupported,
)
from ..http.headers import HOP_BY_HOP, Headers, connectionOptions, formatHTTPDate, splitList
from ..http.message import REASONS, RequestHead, ResponseHead, logText
from .._twistedinternals import discardUnsent, sendNow
from .forwarding import FORWARDING_FIELDS, Disagreement, forwardedParameters, toldTarget
from ..compress import compressWhole, compressor, negotiate, noTransform, weakenETag
from ..access import isThisProxy
from ..ops.accesslog import _Clock
from ..ops.admin import ADMIN_PREFIX, LANDING_PATHS
from .tunnel import TunnelPeer, joinTunnel
from .upstream import Origin, UpstreamPool, UpstreamRequest, _QuietFactory, connectError

__all__ = [
    "ExchangeState",
    "ProxyFactory",
    "ProxyProtocol",
    "ProxySettings",
    "ReaderState",
]

#: Methods llhttp knows; any other token is forwarded as an extension
#: method (see L{ProxyProtocol._substituteMethod}).
_KNOWN_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE "
    b"PROPFIND PROPPATCH SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT "
    b"MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH "
    b"PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)
_TCHAR = frozenset(
    b"!#$%&'*+-.^_`|~0123456789"
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
#: Longest method token accepted.
_MAX_METHOD = 32
#: Bytes of pipelined request bodies held per connection before it stops
#: reading.
_PIPELINE_BUFFER = 64 * 1024


@dataclass(frozen=True)
class ProxySettings:
    """
    What every client connection of one listening port shares.

    @ivar upstream: in reverse mode, the origin every request goes to;
        C{None} in forward mode.
    @ivar upstreamPath: in reverse mode, the path prefix of the upstream URL.
    @ivar viaName: the received-by name this proxy puts in C{Via} and looks
        for to detect loops.
    @ivar connectPorts: ports CONNECT may reach.
    @ivar idleTimeout: seconds a kept-alive client connection may wait for
        its next request.
    @ivar drainIdleTimeout: once the proxy drains, seconds an idle
        kept-alive connection stays open for a request already on its way
        (answered with C{Connection: close}).
    @ivar headerTimeout: seconds from the first byte of a request head to
        its end.
    @ivar maxRequestLine: longest request target accepted (414 beyond).
    @ivar maxHeaderSize: largest header section accepted (431 beyond).
    @ivar maxConnections: client connections served at once; beyond it the
        proxy stops accepting until one closes.
    @ivar maxHeaderFields: most header fields in a request (431 beyond).
    @ivar maxBodySize: largest request body (413 beyond).
    @ivar bodyTimeout: seconds to receive a whole request body (408 beyond).
    @ivar maxPipeline: requests held behind the one being answered before
        the connection stops reading.
    @ivar xForwardedFor: add the client address to C{X-Forwarded-For}.
    @ivar forwarded: add an RFC 7239 C{Forwarded} element.
    @ivar xForwardedProto: add C{X-Forwarded-Proto}.
    @ivar xForwardedHost: add C{X-Forwarded-Host}.
    @ivar preserveHost: in reverse mode, send the client's Host upstream.
    @ivar trustedProxies: the clients (a L{cachingproxy.access.Networks})
        whose forwarding fields (L{FORWARDING_FIELDS}) are passed on and
        extended; from any other client they are dropped. C{None}: no
        client is trusted.
    @ivar rewriteRedirects: in reverse mode, rewrite C{Location} and
        C{Content-Location} naming the upstream to the client's Host.
    @ivar requestRules: L{cachingproxy.rules.HeaderRules} for requests
        going upstream, or C{None}.
    @ivar responseRules: the same for responses going to clients.
    @ivar compression: L{cachingproxy.compress.CompressionSettings} to
        compress responses on the fly, or C{None}.
    @ivar upgradeProtocols: the protocol names (lower case, without
        version) a request may ask to upgrade to; such a request is
        forwarded with its C{Upgrade} field, and a 101 turns the connection
        into a tunnel (RFC 9110 section 7.8).
    @ivar upgradeIdleTimeout: seconds an upgraded connection may carry no
        byte either way before it is closed; 0 for no limit.
    @ivar upgradeTimeout: seconds an upgraded connection may last in all;
        0 for no limit.
    """

    upstream: Optional[Origin] = None
    upstreamPath: bytes = b""
    viaName: bytes = b"cachingproxy"
    connectPorts: FrozenSet[int] = frozenset([443])
    idleTimeout: float = 60.0
    drainIdleTimeout: float = 2.0
    headerTimeout: float = 10.0
    maxRequestLine: int = 8192
    maxHeaderSize: int = 65536
    maxConnections: int = 10000
    maxHeaderFields: int = 100
    maxBodySize: int = 1 << 30
    bodyTimeout: float = 300.0
    maxPipeline: int = 16
    compression: object = None
    upgradeProtocols: FrozenSet[bytes] = frozenset([b"websocket"])
    upgradeIdleTimeout: float = 300.0
    upgradeTimeout: float = 0.0
    adminNetworks: Tuple = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    xForwardedFor: bool = False
    forwarded: bool = False
    xForwardedProto: bool = False
    xForwardedHost: bool = False
    preserveHost: bool = False
    rewriteRedirects: bool = True
    requestRules: object = None
    responseRules: object = None
    trustedProxies: object = None


class ReaderState(enum.Enum):
    """
    What the client connection is reading.

    @cvar IDLE: between requests; the idle timeout runs.
    @cvar HEAD: part of a request head has arrived; the header timeout
        runs.
    @cvar BODY: a head was parsed and its body is arriving.
    @cvar UPGRADE: a request asking to upgrade was read; what follows it
        waits for its answer: tunnel bytes after a 101, the next request
        after any other.
    @cvar TUNNEL: the bytes are no longer HTTP (after CONNECT or a 101).
    @cvar CLOSED: nothing more is read (the connection is closing, or a
        request asked for the connection to end).
    """

    IDLE = "IDLE"
    HEAD = "HEAD"
    BODY = "BODY"
    UPGRADE = "UPGRADE"
    TUNNEL = "TUNNEL"
    CLOSED = "CLOSED"

    # Members are singletons: hash by identity (C speed) rather than by
    # name, as the transition tables are consulted on every request.
    __hash__ = object.__hash__


_READER_MOVES = {
    ReaderState.IDLE: {ReaderState.HEAD, ReaderState.CLOSED},
    ReaderState.HEAD: {ReaderState.BODY, ReaderState.CLOSED},
    ReaderState.BODY: {
        ReaderState.IDLE,
        ReaderState.UPGRADE,
        ReaderState.TUNNEL,
        ReaderState.CLOSED,
    },
    ReaderState.UPGRADE: {ReaderState.IDLE, ReaderState.TUNNEL, ReaderState.CLOSED},
    ReaderState.TUNNEL: {ReaderState.CLOSED},
    ReaderState.CLOSED: set(),
}


class ExchangeState(enum.Enum):
    """
    Where one request stands.

    @cvar QUEUED: parsed, waiting behind an earlier request.
    @cvar FORWARDING: being forwarded; no response head sent to the client.
    @cvar RESPONDING: the response head was sent; the body is streaming.
    @cvar TUNNEL: CONNECT succeeded, or the origin switched protocols; the
        connection is a byte pipe.
    @cvar DONE: the response is complete (or the exchange was abandoned).
    """

    QUEUED = "QUEUED"
    FORWARDING = "FORWARDING"
    RESPONDING = "RESPONDING"
    TUNNEL = "TUNNEL"
    DONE = "DONE"

    __hash__ = object.__hash__


_EXCHANGE_MOVES = {
    ExchangeState.QUEUED: {ExchangeState.FORWARDING, ExchangeState.DONE},
    ExchangeState.FORWARDING: {
        ExchangeState.RESPONDING,
        ExchangeState.TUNNEL,
        ExchangeState.DONE,
    },
    ExchangeState.RESPONDING: {ExchangeState.DONE},
    ExchangeState.TUNNEL: {ExchangeState.DONE},
    ExchangeState.DONE: set(),
}


#: Not worked out yet.
_UNKNOWN = object()


class _CompletionCounter:
    """
    Counts the requests a probe parser completes.
    """

    count = 0

    def on_message_complete(self) -> None:
        self.count += 1


class _StopReading(Exception):
    """
    Raised from a parser callback to stop parsing the rest of a read.
    """


@implementer(IPushProducer)
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


class Exchange:
    """
    One request and its response.

    Provides L{cachingproxy.proxy.upstream.IResponseHandler} for the upstream
    response it forwards.
    """

    _log = Logger()

    # Defaults shared by every exchange until one sets its own (most
    # requests change few of them; this keeps creating one cheap).
    status = 0
    bytesSent = 0
    error: Optional[ProxyError] = None
    _bodyBuffered = 0
    bodyDone = False
    bodyChunked = False
    hasBody = False
    expectContinue = False
    upstream: Optional[UpstreamRequest] = None
    _upstreamDeferred: Optional[defer.Deferred] = None
    _chunked = False
    _noBody = False
    _bodyUnwanted = False
    _registeredUpstreamProducer = False
    _registeredClientProducer = False
    #: compresses the response body on its way out, or C{None}
    _compressor = None
    #: a response head not written yet: it goes out with the first body
    #: bytes of the same read from the origin, or after that read
    _held = b""
    #: what produces the response body: the upstream request, or a stored
    #: body being read
    producer = None
    #: called with no argument if the client leaves before the end
    onClientGone: Optional[Callable[[], None]] = None
    #: where and as what the cache layer forwards this request
    cacheOrigin: Optional[Origin] = None
    cacheHead: Optional[RequestHead] = None
    #: the stored responses found for this request (for stale-if-error)
    cacheEntries: Sequence = ()
    facts: Optional["_Facts"] = None
    _abandoned = False
    _upstreamHead: Optional[RequestHead] = None
    #: for the access log and metrics: what the cache did (C{HIT}, C{MISS},
    #: C{STALE}, C{REVALIDATED}, C{PASS}, C{-} without a cache), request
    #: body bytes received, seconds until the origin's response head
    #: (C{None} if the origin was not asked), when it finished
    cacheResult = "-"
    bytesReceived = 0
    upstreamSeconds: Optional[float] = None
    forwardedAt: Optional[float] = None
    finished: Optional[float] = None
    upstreamOrigin: Optional[Origin] = None
    #: answered by the proxy itself (its own endpoints and pages), not
    #: sent anywhere
    ownEndpoint = False
    upstreamPath = b""
    #: the Upgrade field value sent upstream with C{Connection: Upgrade}
    #: (the protocols asked for that the proxy carries), or C{None} for a
    #: request that does not ask to upgrade
    upgrade: Optional[bytes] = None

    def __init__(self, protocol: "ProxyProtocol", head: RequestHead, keepAlive: bool):
        self.protocol = protocol
        self.head = head
        self.state = ExchangeState.QUEUED
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

    def _move(self, new: ExchangeState) -> None:
        if new not in _EXCHANGE_MOVES[self.state]:
            raise RuntimeError(
                f"exchange {self.head.method!r} {self.head.target!r} "
                f"cannot move from {self.state.name} to {new.name}"
            )
        self.state = new

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
        self._move(ExchangeState.FORWARDING)
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

    def forward(self, origin: Origin, head: RequestHead, handler) -> None:
        """
        Send C{head} to C{origin}, streaming this exchange's request body;
        C{handler} (this exchange, or a cache layer in front of it) is told
        about the response.
        """
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

    def _upstreamReady(self, upstream: UpstreamRequest) -> None:
        self._upstreamDeferred = None
        if self.state is ExchangeState.DONE or self._abandoned:
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
        if self.state is ExchangeState.DONE or self._abandoned:
            return
        if self.handler is not None:
            # A cache layer decides (it may serve stale content).
            self.handler.responseFailed(reason, False)
        elif isinstance(reason.value, ProxyError):
            self.respondError(reason.value)
        else:
            self._log.failure("forwarding failed", failure=reason)
            self.respondError(BadGateway("cannot reach the origin"))

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
            if self.state is ExchangeState.DONE or self._abandoned:
                peer.transport.loseConnection()
                return
            self.status = 200
            self.protocol.transport.write(
                b"HTTP/1.1 200 Connection Established\r\n\r\n"
            )
            self._move(ExchangeState.TUNNEL)
            self.protocol._startTunnel(self, peer)

        def failed(reason: Failure) -> None:
            self._upstreamDeferred = None
            if self.state is not ExchangeState.DONE and not self._abandoned:
                self.respondError(connectError(reason, origin))

        d.addCallbacks(connected, failed)

    # -- IResponseHandler --------------------------------------------------

    def responseInterim(self, head: ResponseHead) -> None:
        if self.state is not ExchangeState.FORWARDING:
            return
        if head.status == 100:
            if not self.expectContinue:
                return
            self.expectContinue = False
            self.protocol.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        if head.status == 101 or self.head.version < (1, 1):
            return
        headers = head.headers.copy()
        _removeHopByHop(headers)
        self.protocol.transport.write(
            ResponseHead(head.status, head.reason, headers=headers).toWire()
        )

    def responseHead(self, head: ResponseHead) -> None:
        if self.state is not ExchangeState.FORWARDING:
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
        head.headers = Headers.fromLowered(fields)
        self._sendHead(head.status, head.reason, fields, knownLength, hold=True)

    def responseUpgraded(self, head: ResponseHead, peer: TunnelPeer) -> None:
        """
        The origin answered 101 (RFC 9110 section 15.2.2): pass the head on
        with C{Connection: Upgrade} and its Upgrade field, and join the two
        connections into a tunnel.
        """
        protocol = self.protocol
        if self.state is not ExchangeState.FORWARDING or protocol.reader is not ReaderState.UPGRADE:
            peer.transport.loseConnection()
            if self.state is ExchangeState.FORWARDING:
                self.respondError(BadGateway("the origin switched protocols unasked"))
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
        self._move(ExchangeState.TUNNEL)
        protocol.transport.write(
            b"HTTP/1.1 101 %s\r\n%s\r\n"
            % (head.reason or REASONS.get(101, b"Switching Protocols"), _fieldLines(fields))
        )
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
            and self.state is ExchangeState.FORWARDING
        )

    def serveBytes(self, status: int, data: bytes, bodyLength: int) -> None:
        """
        Send a complete response already in wire form (see
        L{plainKeepAlive}).
        """
        self.status = status
        self.bytesSent = bodyLength
        self._move(ExchangeState.RESPONDING)
        self._write(data)
        self._finish()

    def serveStored(self, status: int, reason: bytes, fields: list, body, length: int) -> None:
        """
        Answer from the cache: C{fields} (lowered triples, without framing
        fields) and a body of C{length} bytes, given either as C{bytes} or as
        an L{cachingproxy.cache.store.IBodyReader} streamed with flow control.
        """
        if self.state is not ExchangeState.FORWARDING:
            if not isinstance(body, bytes) and body is not None:
                body.close()
            return
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
        compression = protocol.factory.settings.compression
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
        self._move(ExchangeState.RESPONDING)
        wire = (
            b"HTTP/1.1 %d %s\r\n%s\r\n%s"
            % (status, reason or REASONS.get(status, b"Unknown"), _fieldLines(fields), firstBody)
        )
        if hold and self.upstream is not None and self.upstream.afterRead(self._flushHeld):
            self._held = wire
        else:
            self._write(wire)

    def _flushHeld(self) -> None:
        if self._held and self.state is ExchangeState.RESPONDING:
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
        if self.state is not ExchangeState.RESPONDING or self._noBody:
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
        if self.state is not ExchangeState.RESPONDING:
            return
        self._bodyEnd()
        self._finish()

    def responseFailed(self, reason: Failure, receivedAnything: bool) -> None:
        if self.state is ExchangeState.DONE:
            return
        if self.state is ExchangeState.RESPONDING:
            # Part of the response is out: the only honest thing left is to
            # end the connection without a false end of message.
            self._log.info(
                "origin response for {target} broke off: {reason}",
                target=logText(self.head.target),
                reason=reason.getErrorMessage(),
            )
            self.upstream = None
            self._move(ExchangeState.DONE)
            self.protocol._exchangeAborted(self)
            return
        value = reason.value
        if isinstance(value, ProxyError):
            self.respondError(value)
        elif isinstance(value, UpstreamClosed):
            self.respondError(BadGateway(_closedMessage(value)))
        else:
            self._log.failure("upstream failure", failure=reason)
            self.respondError(BadGateway("the origin failed"))

    # -- ending ------------------------------------------------------------

    def respondError(self, error: ProxyError) -> None:
        """
        Answer with C{error}'s status and a short text body, unless the
        response has already started, in which case the connection ends.
        """
        if self.state is ExchangeState.RESPONDING:
            self.responseFailed(Failure(error), True)
            return
        if self.state is ExchangeState.QUEUED:
            self._move(ExchangeState.FORWARDING)
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
        headers = [
            b"HTTP/1.1 %d %s\r\n" % (error.status, REASONS.get(error.status, b"Error")),
            b"Date: %s\r\n" % formatHTTPDate(protocol.factory.reactor.seconds()),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b"Via: 1.1 %s\r\n" % protocol.factory.settings.viaName,
        ]
        for name, value in getattr(error, "headers", ()):
            headers.append(name + b": " + value + b"\r\n")
        if self._closeAfter:
            headers.append(b"Connection: close\r\n")
        elif self.head.version < (1, 1):
            headers.append(b"Connection: keep-alive\r\n")
        headers.append(b"\r\n")
        self._move(ExchangeState.RESPONDING)
        if self.head.method != b"HEAD":
            headers.append(body)
            self.bytesSent = len(body)
        protocol.transport.writeSequence(headers)
        self._finish()

    def _abandonUpstream(self) -> None:
        self._abandoned = True
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
        self._move(ExchangeState.DONE)
        self.protocol._exchangeDone(self)
        self._letGo()

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
        if self.state is ExchangeState.DONE:
            return
        self.state = ExchangeState.DONE
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
            self.hopByHop = HOP_BY_HOP | connectionOptions(connection)
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


def _fieldLines(fields) -> bytes:
    return b"".join([name + b": " + value + b"\r\n" for _, name, value in fields])


def _closedMessage(closed: UpstreamClosed) -> str:
    """
    @return: why an origin connection ended, for the client and the log:
        a failed TLS handshake (an unverifiable certificate, most often)
        says so.
    """
    reason = closed.reason
    value = getattr(reason, "value", None)
    try:
        from OpenSSL.SSL import Error as TLSError
    except ImportError:  # pragma: no cover
        TLSError = ()
    if TLSError and isinstance(value, TLSError):
        return f"TLS with the origin failed: {value}"
    return "the origin closed the connection"


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
                    exchange._move(ExchangeState.DONE)
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


class ProxyProtocol(Protocol):
    """
    One client connection.

    @ivar reader: the L{ReaderState}.
    @ivar closing: the connection ends after the response being sent.
    @ivar draining: the proxy is draining: the next response says
        C{Connection: close}, and the connection closes once idle for
        L{ProxySettings.drainIdleTimeout}.
    """

    _log = Logger()

    def __init__(self) -> None:
        self.reader = ReaderState.IDLE
        self.closing = False
        self.draining = False
        self._queue: Deque[Exchange] = deque()
        self._reading: Optional[Exchange] = None
        self._pauses: set = set()
        self._bufferedBytes = 0
        self._timer = None
        self._deadline = 0.0
        self._completedInRead = 0
        self._local = _UNKNOWN
        self._secure: Optional[bool] = None
        self._clientVerdict = _UNKNOWN
        self._trusted: Optional[bool] = None
        self._destinationVerdicts: Optional[dict] = None
        self._timerPurpose: Optional[ReaderState] = None
        self._tunnelPeer: Optional[TunnelPeer] = None
        #: the request asking to upgrade whose answer is awaited
        self._upgrading: Optional[Exchange] = None
        #: the total timeout of an upgraded connection
        self._upgradeTimer = None
        self.clientHost = "-"
        #: The Referer and User-Agent of the last access line, and their
        #: text: C{(referer, agent, text)}, or C{None}.
        self._loggedAgent: Optional[tuple] = None
        #: The same for JSON lines (L{cachingproxy.ops.accesslog}).
        self._jsonSaid: Optional[tuple] = None

    # -- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.clientHost = getattr(peer, "host", None) or "-"
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            try:
                setNoDelay(True)
            except Exception:
                pass
        self._parser = httptools.HttpRequestParser(self)
        self._resetHead()
        self.factory.connectionOpened(self)
        self._armTimer(self._idleTimeout(), ReaderState.IDLE)

    def connectionLost(self, reason: Failure = None) -> None:
        self.reader = ReaderState.CLOSED
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._upgradeTimer is not None and self._upgradeTimer.active():
            self._upgradeTimer.cancel()
        self._upgradeTimer = None
        self._upgrading = None
        queue, self._queue = self._queue, deque()
        if queue and queue[0].state is not ExchangeState.QUEUED and queue[0].state is not ExchangeState.DONE:
            active = queue[0]
            if active.state is ExchangeState.FORWARDING:
                # nginx's convention: the client closed before an answer.
                active.status = 499
            if self._tunnelPeer is not None:
                active.bytesSent = self._tunnelPeer.bytesFromDestination
            self.factory.logAccess(active, self)
        for exchange in queue:
            exchange.clientGone()
        if self._reading is not None and self._reading not in queue:
            self._reading.clientGone()
        self._reading = None
        peer, self._tunnelPeer = self._tunnelPeer, None
        if peer is not None and peer.transport is not None:
            peer.transport.loseConnection()
        # What the client did not take stays queued in the transport until
        # this protocol is garbage collected: let go of it now.
        discardUnsent(self.transport)
        # The parser calls back into this protocol: without it, nothing
        # keeps a closed connection's objects in a cycle.
        self._parser = None
        self.factory.connectionClosed(self)

    def _moveReader(self, new: ReaderState) -> None:
        if new not in _READER_MOVES[self.reader]:
            raise RuntimeError(
                f"client {self.clientHost} reader cannot move from "
                f"{self.reader.name} to {new.name}"
            )
        self.reader = new

    # -- timers ------------------------------------------------------------

    def _armTimer(self, seconds: float, purpose: ReaderState) -> None:
        """
        Watch for C{purpose} lasting C{seconds}. One pending call serves
        every request of the connection: re-arming only moves the deadline,
        and the call, when it fires early, waits on for the new one.
        """
        self._timerPurpose = purpose
        reactor = self.factory.reactor
        deadline = reactor.seconds() + seconds
        self._deadline = deadline
        timer = self._timer
        if timer is None or not timer.active():
            self._timer = reactor.callLater(seconds, self._timedOut)
        elif timer.getTime() > deadline:
            timer.reset(seconds)

    def _timedOut(self) -> None:
        self._timer = None
        reactor = self.factory.reactor
        early = self._deadline - reactor.seconds()
        if early > 0:
            self._timer = reactor.callLater(early, self._timedOut)
            return
        purpose = self._timerPurpose
        if purpose is not self.reader:
            return
        if purpose is ReaderState.IDLE and not self._queue:
            self._log.debug("closing idle connection from {client}", client=self.clientHost)
            self.reader = ReaderState.CLOSED
            self.transport.loseConnection()
        elif purpose is ReaderState.HEAD:
            self._protocolError(RequestTimeout("the request head did not arrive in time"))
        elif purpose is ReaderState.BODY:
            self._protocolError(RequestTimeout("the request body did not arrive in time"))
        elif purpose is ReaderState.TUNNEL:
            self._log.info("closing upgraded connection from {client}: idle for {seconds}s",
                           client=self.clientHost,
                           seconds=self.factory.settings.upgradeIdleTimeout)
            self._closeTunnel()

    # -- flow control ------------------------------------------------------

    def _pauseReading(self, reason: str) -> None:
        if not self._pauses and self.transport is not None:
            self.transport.pauseProducing()
        self._pauses.add(reason)

    def _resumeReading(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and self.transport is not None:
            self.transport.resumeProducing()

    def _buffered(self, n: int) -> None:
        self._bufferedBytes += n
        if self._bufferedBytes > _PIPELINE_BUFFER:
            self._pauseReading("buffer")

    def _unbuffered(self, n: int) -> None:
        self._bufferedBytes -= n
        if self._bufferedBytes <= _PIPELINE_BUFFER:
            self._resumeReading("buffer")

    # -- reading -----------------------------------------------------------

    def _resetHead(self) -> None:
        self._url = b""
        self._fields: List[Tuple[bytes, bytes]] = []
        self._headSize = 0
        self._fieldBytes = 0
        self._method: Optional[bytes] = None
        self._methodPrefix = b""

    def dataReceived(self, data: bytes) -> None:
        reader = self.reader
        if reader is ReaderState.TUNNEL:
            self._tunnelData(data)
            return
        if reader is ReaderState.UPGRADE:
            self._upgradeData(data)
            return
        if reader is ReaderState.CLOSED:
            return
        if reader is ReaderState.IDLE and self._method is None:
            data = self._substituteMethod(data)
            if data is None:
                return
        if reader is ReaderState.HEAD or reader is ReaderState.IDLE:
            self._headSize += len(data)
        startedBetween = reader is ReaderState.IDLE
        self._completedInRead = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgraded(data[e.args[0]:])
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _StopReading):
                return
            if isinstance(cause, ProxyError):
                self._protocolError(cause)
            else:
                self._log.failure(
                    "request handling failed",
                    failure=Failure(cause) if cause is not None else Failure(e),
                )
                self._protocolError(BadRequest("the request could not be handled"))
        except httptools.HttpParserInvalidMethodError:
            if startedBetween and self._completedInRead and self._resumeAtUnknownMethod(data):
                return
            self._protocolError(BadRequest("invalid request method"))
        except httptools.HttpParserError as e:
            self._protocolError(BadRequest(f"malformed request: {e}"))
        else:
            if (
                self.reader is ReaderState.HEAD
                and self._headSize
                > self.factory.settings.maxHeaderSize + self.factory.settings.maxRequestLine
            ):
                self._protocolError(
                    HeaderFieldsTooLarge("the request header section is too large")
                )

    def _resumeAtUnknownMethod(self, data: bytes) -> bool:
        """
        llhttp stopped at a method it does not know, at the start of a
        request pipelined in the same read behind complete ones. Find where
        that request starts (a probe parser, fed byte by byte, counts the
        requests that completed before it: a rare path) and parse on from
        there with a fresh parser, so that L{_substituteMethod} can handle
        the extension method as it does at the start of a read.

        @return: whether parsing went on.
        """
        if self.reader is ReaderState.CLOSED:
            return False
        target = self._completedInRead
        counter = _CompletionCounter()
        probe = httptools.HttpRequestParser(counter)
        boundary = None
        try:
            for i in range(len(data)):
                probe.feed_data(data[i:i + 1])
                if counter.count == target:
                    boundary = i + 1
                    break
        except httptools.HttpParserError:
            return False
        if boundary is None:
            return False
        # The failed parser had begun the next request (its head state);
        # nothing of it was used. Start that request again.
        self._parser = httptools.HttpRequestParser(self)
        self.reader = ReaderState.IDLE
        self._resetHead()
        self.dataReceived(data[boundary:])
        return True

    def _parsedMethod(self) -> bytes:
        """
        @return: the method of the request being read, if the parser got
            that far, for log lines about requests that failed mid-head.
        """
        if self.reader is not ReaderState.HEAD or not self._url:
            # (before the target, llhttp's method is its first, DELETE,
            # whatever the bytes were: garbage or a TLS handshake)
            return b"-"
        try:
            return self._parser.get_method() or b"-"
        except Exception:
            return b"-"

    def _substituteMethod(self, data: bytes) -> Optional[bytes]:
        """
        llhttp knows a fixed list of methods, but HTTP allows any token
        (RFC 9110 section 9.1). At the start of a request, an unknown but
        valid method token is remembered and replaced by C{POST} for the
        parser only: request framing does not depend on the method (RFC 9112
        section 6.3), so the parse is the same.

        @return: the bytes to feed the parser, or C{None} if more bytes are
            needed to see the whole method.
        """
        pending = self._methodPrefix
        if pending:
            data = pending + data
            self._methodPrefix = b""
        space = data.find(b" ", 0, _MAX_METHOD + 1)
        if space == -1:
            if len(data) <= _MAX_METHOD and all(b in _TCHAR for b in data):
                self._methodPrefix = data
                return None
            return data
        method = data[:space]
        if method in _KNOWN_METHODS or not method or not all(b in _TCHAR for b in method):
            return data
        self._method = method
        return b"POST" + data[space:]

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.reader is ReaderState.CLOSED:
            # The connection is ending (an answer said so while the rest of
            # this read was being parsed): nothing after it is read.
            raise _StopReading()
        self._moveReader(ReaderState.HEAD)
        self._armTimer(self.factory.settings.headerTimeout, ReaderState.HEAD)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.factory.settings.maxRequestLine:
            raise URITooLong("the request target is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.reader is not ReaderState.HEAD:
            # Trailer fields of a chunked request body are not forwarded.
            return
        self._headSize = 0
        self._fieldBytes += len(name) + len(value) + 4
        settings = self.factory.settings
        if self._fieldBytes > settings.maxHeaderSize:
            raise HeaderFieldsTooLarge("the request header section is too large")
        if len(self._fields) >= settings.maxHeaderFields:
            raise HeaderFieldsTooLarge("the request has too many header fields")
        self._fields.append((name.lower(), name, value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        method = self._method or parser.get_method()
        version = parser.get_http_version()
        fields = self._fields
        head = RequestHead(
            method,
            self._url,
            (int(version[0]), int(version[2])),
            Headers.fromLowered(fields),
        )
        keepAlive = parser.should_keep_alive() and not self.closing
        self._resetHead()
        self._moveReader(ReaderState.BODY)
        exchange = Exchange(self, head, keepAlive)
        facts = exchange.facts = _Facts(fields)
        if facts.chunked:
            exchange.hasBody = True
            exchange.bodyChunked = True
        else:
            length = facts.length
            exchange.hasBody = length is not None and length.strip() not in (b"0", b"")
        if (
            facts.expect is not None
            and head.version >= (1, 1)
            and facts.expect.strip().lower() == b"100-continue"
        ):
            exchange.expectContinue = True
        exchange.error = self.factory.checkRequest(exchange)
        if (exchange.hasBody and exchange.error is None and method != b"CONNECT"
                and parser.should_upgrade()):
            # httptools ends a request that asks to upgrade at its head,
            # body or not: the body it skips would be read as the next
            # request, and the origin would wait for it.
            exchange.error = BadRequest("a request asking to upgrade cannot carry a body")
        elif (exchange.error is None and method != b"CONNECT" and not exchange.hasBody
                and head.version == (1, 1) and parser.should_upgrade()):
            exchange.upgrade = self.factory.upgradeAsked(head)
            if exchange.upgrade is not None:
                self._upgrading = exchange
        if exchange.hasBody:
            settings = self.factory.settings
            if (not facts.chunked and exchange.error is None
                    and int(facts.length) > settings.maxBodySize):
                exchange.error = ContentTooLarge(
                    f"the request body is larger than {settings.maxBodySize} bytes")
            self._armTimer(settings.bodyTimeout, ReaderState.BODY)
        self._reading = exchange
        self._queue.append(exchange)
        if not keepAlive:
            self.closing = True
        if len(self._queue) == 1:
            exchange.start()
        elif len(self._queue) > self.factory.settings.maxPipeline:
            self._pauseReading("pipeline")

    def on_body(self, data: bytes) -> None:
        exchange = self._reading
        if exchange is not None:
            if exchange.bytesReceived + len(data) > self.factory.settings.maxBodySize:
                raise ContentTooLarge(
                    f"the request body is larger than {self.factory.settings.maxBodySize} bytes")
            exchange.requestBody(data)

    def on_message_complete(self) -> None:
        self._completedInRead += 1
        exchange, self._reading = self._reading, None
        if self.reader is ReaderState.CLOSED:
            return
        if exchange is not None and exchange.head.method == b"CONNECT":
            # What follows is the tunnel, dealt with by _upgraded.
            exchange.requestBodyEnd()
            return
        if exchange is not None and exchange is self._upgrading:
            if exchange.state is not ExchangeState.DONE:
                # What follows waits for the answer (see _upgraded).
                self._moveReader(ReaderState.UPGRADE)
                exchange.requestBodyEnd()
                return
            # Answered already (refused before forwarding): HTTP goes on.
            self._upgrading = None
        self._moveReader(ReaderState.IDLE)
        if exchange is not None:
            exchange.requestBodyEnd()
        if self.closing:
            # Connection: close: no further request is read (RFC 9112
            # section 9.6).
            self._moveReader(ReaderState.CLOSED)
        elif not self._queue:
            self._armTimer(self._idleTimeout(), ReaderState.IDLE)

    def _upgraded(self, rest: bytes) -> None:
        """
        llhttp stopped after a request that asks to leave HTTP: a CONNECT
        (the rest is tunnel data), a request to upgrade to a protocol this
        proxy carries (the rest waits for the answer: L{_upgradeRefused} or
        L{_startTunnel}), or one that it does not (forwarded as a plain
        request, so HTTP goes on with a fresh parser).
        """
        if self.reader is ReaderState.CLOSED:
            return
        if self.reader is ReaderState.UPGRADE:
            if rest:
                self._upgradeData(rest)
            return
        queue = self._queue
        last = queue[-1] if queue else None
        if last is not None and last.head.method == b"CONNECT":
            self._moveReader(ReaderState.TUNNEL)
            if rest:
                last.tunnelData.append(rest)
                last.bytesReceived += len(rest)
            return
        self._parser = httptools.HttpRequestParser(self)
        if self.reader is ReaderState.BODY:
            self._moveReader(ReaderState.IDLE)
        if rest:
            self.dataReceived(rest)

    def _protocolError(self, error: ProxyError) -> None:
        """
        The client broke the protocol or a limit: answer (after the
        requests before it) and close.
        """
        if self.reader is ReaderState.CLOSED:
            return
        method = self._method or self._parsedMethod()
        self.reader = ReaderState.CLOSED
        self.closing = True
        reading, self._reading = self._reading, None
        if reading is not None and reading.state is ExchangeState.QUEUED:
            # A pipelined request whose body broke: answered in its turn.
            reading.error = error
            return
        if reading is not None and reading.state is ExchangeState.FORWARDING:
            # Its body broke while it was being forwarded.
            reading.respondError(error)
            return
        if reading is not None and reading.state is not ExchangeState.DONE:
            # Its response is already streaming: nothing honest can be
            # said any more except closing.
            self._log.info(
                "{status} for {client} mid-exchange: {message}; closing",
                status=error.status,
                client=self.clientHost,
                message=error.message,
            )
            self.transport.loseConnection()
            return
        head = RequestHead(method, self._url or b"-", (1, 1))
        exchange = Exchange(self, head, keepAlive=False)
        exchange.bodyDone = True
        exchange.error = error
        self._queue.append(exchange)
        if len(self._queue) == 1:
            exchange.start()

    # -- the queue ---------------------------------------------------------

    def _exchangeDone(self, exchange: Exchange) -> None:
        self.factory.logAccess(exchange, self)
        if self._queue and self._queue[0] is exchange:
            self._queue.popleft()
        refused = exchange is self._upgrading
        if refused:
            self._upgrading = None
        if exchange._closeAfter:
            self.closing = True
            self.reader = ReaderState.CLOSED
            for queued in self._queue:
                queued.clientGone()
            self._queue.clear()
            self.transport.loseConnection()
            return
        if refused and self.reader is ReaderState.UPGRADE:
            self._upgradeRefused(exchange)
            return
        self._resumeReading("pipeline")
        if self._queue:
            self._queue[0].start()
        elif self.reader is ReaderState.IDLE:
            self._armTimer(self._idleTimeout(), ReaderState.IDLE)

    def _idleTimeout(self) -> float:
        settings = self.factory.settings
        if self.draining:
            return min(settings.idleTimeout, settings.drainIdleTimeout)
        return settings.idleTimeout

    def _exchangeAborted(self, exchange: Exchange) -> None:
        """
        A response broke off mid-body: log it and close the connection
        without ending the message.
        """
        self.factory.logAccess(exchange, self)
        self.reader = ReaderState.CLOSED
        self.transport.loseConnection()

    # -- upgrades ----------------------------------------------------------

    def _upgradeData(self, data: bytes) -> None:
        """
        Bytes after a request asking to upgrade, before its answer: held
        (tunnel data after a 101, the next requests after anything else).
        """
        self._upgrading.tunnelData.append(data)
        self._buffered(len(data))

    def _upgradeRefused(self, exchange: Exchange) -> None:
        """
        The answer to a request asking to upgrade was not a 101: the
        connection stays HTTP, and what the client sent after that request
        is parsed as its next requests.
        """
        pending, exchange.tunnelData = exchange.tunnelData, []
        held = sum(len(data) for data in pending)
        if held:
            self._unbuffered(held)
        self._parser = httptools.HttpRequestParser(self)
        self._moveReader(ReaderState.IDLE)
        self._resumeReading("pipeline")
        self._armTimer(self._idleTimeout(), ReaderState.IDLE)
        if pending:
            self.dataReceived(b"".join(pending))

    def _tunnelActivity(self) -> None:
        """
        A byte went through an upgraded connection, one way or the other:
        its idle timeout starts again.
        """
        self._armTimer(self.factory.settings.upgradeIdleTimeout, ReaderState.TUNNEL)

    def _upgradeExpired(self) -> None:
        self._upgradeTimer = None
        if self.reader is ReaderState.TUNNEL:
            self._log.info("closing upgraded connection from {client}: it lasted "
                           "{seconds}s", client=self.clientHost,
                           seconds=self.factory.settings.upgradeTimeout)
            self._closeTunnel()

    def _closeTunnel(self) -> None:
        peer = self._tunnelPeer
        if peer is not None and peer.transport is not None:
            peer.transport.loseConnection()
        self.transport.loseConnection()

    # -- tunnels -----------------------------------------------------------

    def _startTunnel(self, exchange: Exchange, peer: TunnelPeer,
                     upgraded: bool = False) -> None:
        """
        Join this connection and C{peer}'s into a byte pipe: after a
        CONNECT, or with C{upgraded} after a 101, which also starts the
        upgraded connection's idle and total timeouts.
        """
        self._tunnelPeer = peer
        self._pauses.clear()
        self._bufferedBytes = 0
        if upgraded:
            self._upgrading = None
            self._moveReader(ReaderState.TUNNEL)
        elif self.reader is not ReaderState.TUNNEL:
            self.reader = ReaderState.TUNNEL
        self._timerPurpose = None
        settings = self.factory.settings
        if upgraded and settings.upgradeIdleTimeout > 0:
            peer.onActivity = self._tunnelActivity
            self._tunnelActivity()
        if upgraded and settings.upgradeTimeout > 0:
            self._upgradeTimer = self.factory.reactor.callLater(
                settings.upgradeTimeout, self._upgradeExpired)
        joinTunnel(self, peer)
        pending, exchange.tunnelData = exchange.tunnelData, []
        for data in pending:
            peer.transport.write(data)
        self.transport.resumeProducing()

    def _tunnelData(self, data: bytes) -> None:
        if self._queue:
            # (the CONNECT exchange: its log line counts the bytes each way)
            self._queue[-1].bytesReceived += len(data)
        peer = self._tunnelPeer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
            if peer.onActivity is not None:
                peer.onActivity()
        elif self._queue:
            self._queue[-1].tunnelData.append(data)
            self._buffered(len(data))

    def isSecure(self) -> bool:
        """
        @return: whether the client connection is TLS.
        """
        secure = self._secure
        if secure is None:
            secure = self._secure = ISSLTransport.providedBy(self.transport)
        return secure

    def localAddress(self) -> Optional[Tuple[str, int]]:
        """
        @return: the (host, port) this connection was accepted on, so that
            requests to the proxy itself can be refused as loops.
        """
        local = self._local
        if local is _UNKNOWN:
            host = getattr(self.transport, "getHost", None)
            if host is None:
                local = None
            else:
                address = host()
                local = (getattr(address, "host", None), getattr(address, "port", None))
            self._local = local
        return local

    def clientVerdict(self) -> Optional[ProxyError]:
        """
        The access policy's word on this client (one per connection: the
        address does not change).
        """
        verdict = self._clientVerdict
        if verdict is _UNKNOWN:
            verdict = self._clientVerdict = self.factory.access.checkClient(self.clientHost)
        return verdict

    def forwardingTrusted(self) -> bool:
        """
        Whether this client is one of the trusted proxies, whose forwarding
        fields are passed on (decided once per connection: the address
        does not change).
        """
        trusted = self._trusted
        if trusted is None:
            networks = self.factory.settings.trustedProxies
            trusted = self._trusted = networks is not None and networks.hasHost(self.clientHost)
        return trusted

    def destinationVerdict(self, origin: Origin) -> Optional[ProxyError]:
        """
        The access policy's word on sending this client to C{origin},
        remembered per connection and origin.
        """
        verdicts = self._destinationVerdicts
        if verdicts is None:
            verdicts = self._destinationVerdicts = {}
        try:
            return verdicts[origin]
        except KeyError:
            verdict = verdicts[origin] = self.factory.access.checkDestination(
                self.clientHost, origin, self.localAddress())
            if len(verdicts) > 64:
                verdicts.clear()
            return verdict

    def drain(self) -> None:
        """
        The proxy is shutting down or being replaced: serve what has
        started, tell the client to go elsewhere, and close without racing
        its next request.

        Closing an idle kept-alive connection at once would race with a
        request the client may be sending at that very moment (it would
        meet a reset and could not tell whether it was served). So a
        connection idle now stays open for
        L{ProxySettings.drainIdleTimeout}; a request arriving meanwhile is
        answered in full with C{Connection: close}, and the connection
        closes right after that response. A response under way whose head
        already promised keep-alive is finished; the connection then waits
        idle the same way.
        """
        self.draining = True
        self.closing = True
        if self.reader is ReaderState.CLOSED:
            return
        queue = self._queue
        if queue and queue[-1].state in (ExchangeState.QUEUED, ExchangeState.FORWARDING):
            # Its head is not sent yet: it will say Connection: close.
            queue[-1]._closeAfter = True
        elif not queue and self.reader is ReaderState.IDLE:
            self._armTimer(self._idleTimeout(), ReaderState.IDLE)

    def tunnelClosed(self) -> None:
        """
        The destination closed its side: close ours.
        """
        peer, self._tunnelPeer = self._tunnelPeer, None
        if self._queue:
            exchange = self._queue[0]
            if peer is not None:
                exchange.bytesSent = peer.bytesFromDestination
            exchange.state = ExchangeState.DONE
            self.factory.logAccess(exchange, self)
            self._queue.clear()
        self.transport.loseConnection()


@implementer(IProtocolNegotiationFactory)
class ProxyFactory(Factory):
    """
    What the client connections share: settings, the upstream pool, the
    access log and the connection count.

    @ivar pool: the L{UpstreamPool}.
    @ivar accessLog: called with one formatted line per finished request,
        or C{None}.
    @ivar port: the listening port, once known; used to stop accepting at
        the connection limit.
    """

    protocol = ProxyProtocol

    def acceptableProtocols(self):
        """
        What a TLS listener offers in ALPN: HTTP/1.1 only. Said outright
        because Twisted's C{tls:} listener fails the handshake of a client
        that offers ALPN (curl, browsers) when the factory names nothing.
        """
        return [b"http/1.1"]
    noisy = False
    _log = Logger()

    def __init__(
        self,
        reactor,
        settings: ProxySettings,
        pool: UpstreamPool,
        accessLog: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.pool = pool
        self.accessLog = accessLog
        #: the L{cachingproxy.cache.layer.CacheResource}, or C{None} for a
        #: proxy that only forwards
        self.cache = None
        #: told about every finished request (C{requestDone(exchange)}), or
        #: C{None}
        self.metrics = None
        #: who may use the proxy and reach what
        #: (L{cachingproxy.access.AccessPolicy}), or C{None}: anyone, anywhere
        self.access = None
        #: the proxy's own endpoints (L{cachingproxy.ops.admin.AdminResource})
        self.admin = None
        self.port = None
        self.openConnections = 0
        self.protocols: set = set()
        self.draining = False
        self._drained: List[defer.Deferred] = []
        self._acceptingPaused = False
        viaName = settings.viaName.lower()
        self._viaName = viaName
        #: whether what the origin is told of the request's scheme and host
        #: may differ from the origin's own: then the cache key is built
        #: from the request as it goes upstream (L{cacheTarget})
        self.keyFromHead = bool(
            settings.preserveHost or settings.xForwardedHost or settings.xForwardedProto
            or settings.trustedProxies is not None or settings.requestRules)

    def connectionOpened(self, protocol: ProxyProtocol) -> None:
        self.openConnections += 1
        self.protocols.add(protocol)
        if self.draining:
            protocol.drain()
        if self.openConnections >= self.settings.maxConnections:
            self._pauseAccepting()

    def connectionClosed(self, protocol: ProxyProtocol) -> None:
        self.openConnections -= 1
        self.protocols.discard(protocol)
        if self._acceptingPaused and self.openConnections < self.settings.maxConnections:
            self._resumeAccepting()
        if self.draining and not self.protocols:
            waiters, self._drained = self._drained, []
            for d in waiters:
                if not d.called:
                    d.callback(None)

    def isAdmin(self, clientHost: str) -> bool:
        """
        @return: whether C{clientHost} may use the proxy's own endpoints
            and methods (PURGE).
        """
        if self.access is not None:
            return self.access.isAdmin(clientHost)
        try:
            address = ipaddress.ip_address(clientHost)
        except ValueError:
            return False
        return any(address in network for network in self.settings.adminNetworks)

    def drain(self, grace: float) -> defer.Deferred:
        """
        Finish what is in flight: idle connections close now, busy ones
        after their current response; after C{grace} seconds whatever is
        left is cut off. (Stopping the listening port is the service's
        job.)

        @return: a L{Deferred} firing once no client connection is left.
        """
        self.draining = True
        self._log.info("draining {n} client connections (grace {grace}s)",
                       n=len(self.protocols), grace=grace)
        d = defer.Deferred()
        if not self.protocols:
            d.callback(None)
            return d
        self._drained.append(d)
        for protocol in list(self.protocols):
            protocol.drain()

        def cutOff():
            if not d.called:
                self._log.warn("{n} connections still busy after {grace}s: closing them",
                               n=len(self.protocols), grace=grace)
                for protocol in list(self.protocols):
                    if protocol.transport is not None:
                        protocol.transport.abortConnection()

        call = self.reactor.callLater(grace, cutOff)
        d.addBoth(lambda result: (call.active() and call.cancel(), result)[1])
        return d

    def _pauseAccepting(self) -> None:
        stop = getattr(self.port, "stopReading", None)
        if stop is not None and not self._acceptingPaused:
            self._acceptingPaused = True
            self._log.warn(
                "{n} client connections open (the limit): not accepting more for now",
                n=self.openConnections,
            )
            stop()

    def _resumeAccepting(self) -> None:
        self._acceptingPaused = False
        start = getattr(self.port, "startReading", None)
        if start is not None:
            start()

    # -- decisions about a request ------------------------------------------

    def checkRequest(self, exchange: Exchange) -> Optional[ProxyError]:
        """
        @return: the error a request gets before any forwarding, or C{None}.
        """
        facts = exchange.facts
        version = exchange.head.version
        if version != (1, 1) and version != (1, 0):
            # llhttp accepts any single-digit version; only HTTP/1.x is
            # spoken here (RFC 9110 section 15.6.6).
            return VersionNotSupported(f"HTTP/{version[0]}.{version[1]} is not supported")
        if version == (1, 0) and facts.chunked:
            # RFC 9112 section 6.1: Transfer-Encoding in an HTTP/1.0
            # message means faulty framing.
            return BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if facts.hosts > 1:
            return BadRequest("more than one Host field")
        if facts.hosts == 0 and exchange.head.version >= (1, 1):
            # RFC 9112 section 3.2.
            return BadRequest("no Host field")
        if facts.via is not None:
            for member in splitList(facts.via):
                parts = member.split()
                if len(parts) >= 2 and parts[1].lower() == self._viaName:
                    return LoopDetected("the request has already passed through this proxy")
        access = self.access
        if access is not None:
            refused = exchange.protocol.clientVerdict()
            if refused is None and access.authenticates and \
                    not self._ownTarget(exchange):
                refused = access.authenticate(exchange.head.headers,
                                              exchange.protocol.clientHost)
            if refused is not None:
                return refused
        return None

    def route(self, exchange: Exchange) -> Tuple[Optional[Origin], bytes]:
        """
        Decide where an exchange's request goes: the origin (C{None} for
        the proxy's own endpoints) and the request target to send there
        (see L{upstreamHead} for the rest of the request).

        @raise ProxyError: when the request cannot be forwarded.
        """
        head = exchange.head
        protocol = exchange.protocol
        settings = self.settings
        method = head.method
        target = head.target
        if method == b"CONNECT":
            if settings.upstream is not None:
                raise MethodNotAllowed("CONNECT is not served by a reverse proxy")
            origin = _parseAuthority(b"https", target, requirePort=True)
            if origin.port not in settings.connectPorts:
                raise Forbidden(f"CONNECT to port {origin.port} is not allowed")
            return origin, target
        if self.admin is not None:
            own = self._ownTarget(exchange)
            if own is not None:
                if own.startswith(ADMIN_PREFIX) and not self.isAdmin(protocol.clientHost):
                    raise Forbidden("the proxy's own endpoints are for admin addresses only")
                return None, own
        if target.startswith(b"/"):
            if settings.upstream is None:
                raise BadRequest("this is a proxy: the request target must be an absolute URI")
            origin = settings.upstream
            path = settings.upstreamPath + target if settings.upstreamPath else target
        elif target == b"*":
            if method != b"OPTIONS":
                raise BadRequest("'*' is only a target for OPTIONS")
            if settings.upstream is None:
                raise BadRequest("this is a proxy: the request target must be an absolute URI")
            origin = settings.upstream
            path = b"*"
        else:
            scheme, sep, rest = target.partition(b"://")
            if not sep:
                raise BadRequest("invalid request target")
            scheme = scheme.lower()
            if scheme not in (b"http", b"https"):
                raise NotImplementedScheme(
                    f"the {scheme.decode('ascii', 'replace')!r} scheme is not supported"
                )
            slash = rest.find(b"/")
            query = rest.find(b"?")
            cut = min(i for i in (slash, query, len(rest)) if i != -1)
            authority, path = rest[:cut], rest[cut:]
            if path.startswith(b"?"):
                path = b"/" + path
            if settings.upstream is not None:
                origin = settings.upstream
                if settings.upstreamPath:
                    path = settings.upstreamPath + (path or b"/")
            else:
                origin = _parseAuthority(scheme, authority, requirePort=False)
            if not path:
                # RFC 9112 section 3.2.4: the last proxy turns an empty path
                # of an OPTIONS request into '*'.
                path = b"*" if method == b"OPTIONS" else b"/"
        return origin, path

    def _ownTarget(self, exchange: Exchange) -> Optional[bytes]:
        """
        Whether a request is for the proxy itself rather than for an
        origin: the proxy's own endpoints (C{/_cachingproxy/...}), as an
        origin-form target or as an absolute-form one naming this proxy (a
        browser that sends even loopback traffic through its proxy asks
        that way), and in forward mode the page that tells a visitor this
        is a proxy (C{GET /}, and C{/_cachingproxy}, which redirects),
        asked for either way too.

        @return: the path to answer (in origin form), or C{None}.
        """
        head = exchange.head
        target = head.target
        if target.startswith(ADMIN_PREFIX):
            return target
        forward = self.settings.upstream is None
        if target.startswith(b"/"):
            if forward and head.method in (b"GET", b"HEAD") and \
                    target.split(b"?", 1)[0] in LANDING_PATHS:
                return target
            return None
        if not forward:
            # Reverse mode sends every absolute-form target upstream.
            return None
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            return None
        slash = rest.find(b"/")
        path = rest[slash:] if slash != -1 else b"/"
        if not path.startswith(ADMIN_PREFIX) and not (
                head.method in (b"GET", b"HEAD") and path.split(b"?", 1)[0] in LANDING_PATHS):
            return None
        try:
            origin = _parseAuthority(scheme.lower(), rest[:slash] if slash != -1 else rest,
                                     requirePort=False)
        except BadRequest:
            return None
        if not isThisProxy(origin, exchange.protocol.localAddress()):
            return None
        return path

    def upgradeAsked(self, head: RequestHead) -> Optional[bytes]:
        """
        Whether a request carrying C{Connection: upgrade} and Upgrade
        (RFC 9110 section 7.8) names a protocol this proxy carries
        (L{ProxySettings.upgradeProtocols}).

        @return: the Upgrade field value to send upstream, the protocols
            carried in the client's order, or C{None} when there is none
            (the request is then forwarded without the upgrade).
        """
        if not head.headers.hasToken(b"connection", b"upgrade"):
            return None
        allowed = self.settings.upgradeProtocols
        kept = [
            member
            for member in splitList(head.headers.getCombined(b"upgrade") or b"")
            if member.split(b"/", 1)[0].strip().lower() in allowed
        ]
        return b", ".join(kept) if kept else None

    def upstreamHead(self, exchange: Exchange, origin: Origin, path: bytes) -> RequestHead:
        """
        Build the request to send upstream: origin-form C{path}, the
        end-to-end fields in their order with Host set to C{origin}, and
        Via.
        """
        head = exchange.head
        protocol = exchange.protocol
        settings = self.settings
        facts = exchange.facts
        hopByHop = facts.hopByHop
        if head.version < (1, 1) and facts.expect is not None:
            # RFC 9110 section 10.1.1: an HTTP/1.0 client's Expect is ignored.
            hopByHop = hopByHop | {b"expect"}
        # Host keeps its place, with the target's authority (RFC 9112
        # section 3.2.2: a proxy ignores the received Host for an
        # absolute-form target).
        authority = origin.authority()
        clientHost = head.headers.get(b"host")
        if settings.preserveHost and settings.upstream is not None and clientHost:
            authority = clientHost
        # Forwarding fields from a client that is not a trusted proxy are
        # its own claims about itself: an origin that believes them would
        # build links, redirects and cached pages for a host or scheme the
        # client chose.
        trusted = protocol.forwardingTrusted()
        fields = [
            f if f[0] != b"host" else (b"host", f[1], authority)
            for f in _framedFields(head.headers.lowered(), hopByHop,
                                   None if facts.chunked else facts.length)
            if trusted or f[0] not in FORWARDING_FIELDS
        ]
        if facts.hosts == 0:
            fields.insert(0, (b"host", b"Host", authority))
        headers = Headers.fromLowered(fields)
        if facts.chunked:
            headers.add(b"Transfer-Encoding", b"chunked")
        if settings.xForwardedFor:
            _appendField(headers, b"X-Forwarded-For", protocol.clientHost.encode())
        if settings.xForwardedProto or settings.xForwardedHost or settings.forwarded:
            if settings.upstream is None:
                # Forward mode: what the client asked for is the target URI
                # (its Host is ignored, RFC 9112 section 3.2.2).
                proto, toldHost = origin.scheme, origin.authority()
            else:
                proto = b"https" if protocol.isSecure() else b"http"
                toldHost = clientHost
            if trusted:
                # What a trusted proxy told stands: one story for the origin,
                # whichever of the fields it reads.
                told = _keptTarget(headers)
                proto = told[0] or proto
                toldHost = told[1] or toldHost
            if settings.xForwardedProto and b"x-forwarded-proto" not in headers:
                headers.set(b"X-Forwarded-Proto", proto)
            if settings.xForwardedHost and toldHost and b"x-forwarded-host" not in headers:
                headers.set(b"X-Forwarded-Host", toldHost)
            if settings.forwarded:
                client = protocol.clientHost
                node = f'"[{client}]"' if ":" in client else client
                element = f"for={node}".encode()
                if toldHost and settings.xForwardedHost:
                    element += b';host="' + toldHost.replace(b'"', b"").replace(b"\\", b"") + b'"'
                if settings.xForwardedProto:
                    element += b";proto=" + proto
                _appendField(headers, b"Forwarded", element)
        if exchange.upgrade is not None:
            # Hop-by-hop, but carried on purpose: the upgrade is asked of
            # the origin (RFC 9110 section 7.8).
            headers.add(b"Connection", b"Upgrade")
            headers.add(b"Upgrade", exchange.upgrade)
        rules = settings.requestRules
        if rules:
            headers = Headers.fromLowered(rules.apply(headers.lowered()))
        headers.add(b"Via", b"%d.%d %s" % (head.version[0], head.version[1], settings.viaName))
        return RequestHead(head.method, path, (1, 1), headers)

    def cacheTarget(self, origin: Origin, head: RequestHead) -> Optional[Tuple[bytes, bytes]]:
        """
        The scheme and authority of a request's cache key (RFC 9111
        section 2): those of the target URI the origin builds from the
        request as it reaches it (RFC 9110 section 7.1), that is from the
        Host sent and the scheme and host the forwarding fields tell
        (L{cachingproxy.proxy.forwarding.toldTarget}). In forward mode the key
        is the target URI, and a request telling the origin of another
        one is not cached.

        @param head: the request as it goes upstream.
        @return: C{(scheme, authority)}, or C{None} when the request must
            not be answered from, nor stored in, the cache: the fields
            tell two different stories.
        """
        try:
            scheme, told = toldTarget(head.headers)
        except Disagreement:
            return None
        own = origin.authority()
        ownLower = own.lower()
        sent = head.headers.get(b"host")
        sent = ownLower if sent is None else sent.strip().lower()
        if self.settings.upstream is None:
            if (scheme not in (None, origin.scheme) or told not in (None, ownLower)
                    or sent != ownLower):
                return None
            return origin.scheme, own
        if told is not None and sent != ownLower and told != sent:
            # The origin could build its URI from either.
            return None
        return scheme or origin.scheme, told or sent

    def downstreamFields(self, exchange: Exchange, fields: list) -> list:
        """
        The response fields a client receives, after every caching
        decision: in reverse mode, C{Location} and C{Content-Location}
        naming the upstream are rewritten to the address the client used;
        then the operator's response rules.
        """
        settings = self.settings
        upstream = settings.upstream
        if upstream is not None and settings.rewriteRedirects and any(
                f[0] in _LOCATIONS for f in fields):
            clientHost = exchange.head.headers.get(b"host")
            if clientHost:
                fields = _rewriteLocations(fields, upstream, clientHost,
                                           b"https" if exchange.protocol.isSecure() else b"http")
        rules = settings.responseRules
        if rules:
            fields = rules.apply(fields)
        return fields

    # -- logging -----------------------------------------------------------

    def logAccess(self, exchange: Exchange, protocol: ProxyProtocol) -> None:
        """
        Count a finished request (L{metrics}) and write its access log line
        (L{accessLog}).
        """
        exchange.finished = self.reactor.seconds()
        if self.metrics is not None:
            try:
                self.metrics.requestDone(exchange)
            except Exception:
                self._log.failure("counting a request failed")
        accessLog = self.accessLog
        if accessLog is not None:
            record = getattr(accessLog, "record", None)
            if record is not None:
                record(exchange, protocol)
            else:
                accessLog(self.accessLine(exchange, protocol))

    def accessLine(self, exchange: Exchange, protocol: ProxyProtocol) -> str:
        """
        One Combined Log Format line for a finished request, with the cache
        result, the seconds the origin took to answer (C{-} if it was not
        asked), the seconds taken in all and the bytes received from the
        client (the request body, or what went up a CONNECT tunnel)
        appended.
        """
        head = exchange.head
        elapsed = (exchange.finished or self.reactor.seconds()) - exchange.started
        headers = head.headers
        referer = headers.get(b"referer", b"-")
        agent = headers.get(b"user-agent", b"-")
        # A connection's requests mostly tell the same Referer and
        # User-Agent: their escaped text is kept from its last line.
        said = protocol._loggedAgent
        if said is None or said[0] != referer or said[1] != agent:
            said = protocol._loggedAgent = (
                referer, agent, '"%s" "%s"' % (_printable(referer), _printable(agent)))
        method = head.method
        upstream = exchange.upstreamSeconds
        return '%s - - [%s] "%s %s %s" %d %d %s %s %s %.4f %d' % (
            protocol.clientHost,
            _clfTime(exchange.wallStarted),
            _METHOD_TEXT.get(method) or _printable(method),
            _printable(head.target),
            _VERSION_TEXT.get(head.version) or "HTTP/%d.%d" % head.version,
            exchange.status,
            exchange.bytesSent,
            said[2],
            exchange.cacheResult,
            "-" if upstream is None else "%.4f" % upstream,
            elapsed,
            exchange.bytesReceived,
        )


def compressionPlan(settings, fields: list, knownLength: bool,
                    acceptEncoding: Optional[bytes]) -> Tuple[list, Optional[str], bool]:
    """
    Whether a 200 response (to anything but HEAD) is compressed for a
    client: never with a Content-Encoding already, a Content-Range,
    C{no-transform} (RFC 9111 section 5.2.2.6), a type not listed or a
    known length under the minimum. A compressible response gets
    C{Vary: Accept-Encoding} whatever this client accepts, so caches
    further down keep the variants apart.

    @return: the fields (Vary added if compressible), the coding for
        this client (or C{None} for identity), and whether the response is
        compressible at all.
    """
    contentType = length = None
    for lower, _, value in fields:
        if lower == b"content-encoding" or lower == b"content-range":
            return fields, None, False
        if lower == b"cache-control" and noTransform(value):
            return fields, None, False
        if lower == b"content-type":
            contentType = value
        elif lower == b"content-length":
            length = value
    if not settings.compressibleType(contentType):
        return fields, None, False
    if knownLength and length is not None and length.strip().isdigit() \
            and int(length) < settings.minSize:
        return fields, None, False
    fields = _addVary(fields, b"Accept-Encoding")
    return fields, negotiate(acceptEncoding, settings.codings), True


def compressedFields(fields: list, coding: str) -> list:
    """
    @return: C{fields} for the compressed representation: no
        Content-Length (the framing says where it ends, or the caller sets
        it), C{Content-Encoding}, and a weak ETag (RFC 9110 section 8.8.1).
    """
    out = []
    for field in fields:
        if field[0] == b"content-length":
            continue
        if field[0] == b"etag":
            field = (field[0], field[1], weakenETag(field[2]))
        out.append(field)
    out.append((b"content-encoding", b"Content-Encoding", coding.encode("ascii")))
    return out


def _addVary(fields: list, name: bytes) -> list:
    lower = name.lower()
    for index, (fieldLower, fieldName, value) in enumerate(fields):
        if fieldLower == b"vary":
            members = [m.strip().lower() for m in value.split(b",")]
            if lower in members or b"*" in members:
                return fields
            fields = list(fields)
            fields[index] = (fieldLower, fieldName, value + b", " + name)
            return fields
    return fields + [(b"vary", b"Vary", name)]


_LOCATIONS = frozenset([b"location", b"content-location"])


def _rewriteLocations(fields: list, upstream: Origin, clientHost: bytes, scheme: bytes) -> list:
    """
    @return: C{fields} with C{Location} and C{Content-Location} values that
        name C{upstream} pointed at C{scheme://clientHost} instead.
    """
    prefixes = [upstream.scheme + b"://" + upstream.authority()]
    if upstream.scheme == b"http" and upstream.port == 80 or (
            upstream.scheme == b"https" and upstream.port == 443):
        prefixes.append(prefixes[0] + b":%d" % upstream.port)
    out = []
    for field in fields:
        if field[0] in (b"location", b"content-location"):
            value = field[2]
            for prefix in prefixes:
                if value.lower().startswith(prefix.lower()) and (
                        len(value) == len(prefix) or value[len(prefix):len(prefix) + 1] in b"/?#"):
                    field = (field[0], field[1], scheme + b"://" + clientHost + value[len(prefix):])
                    break
        out.append(field)
    return out


#: The Combined Log Format time of a second, made once a second.
_clfTime = _Clock(lambda second: time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second)))

#: The access log text of the usual methods and versions.
_METHOD_TEXT = {m: m.decode("ascii") for m in (
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE")}
_VERSION_TEXT = {(1, 0): "HTTP/1.0", (1, 1): "HTTP/1.1"}

#: A byte an access log line shows escaped.
_UNPRINTABLE = re.compile(rb'[^\x20\x21\x23-\x7e]')


def _printable(value: bytes) -> str:
    if _UNPRINTABLE.search(value) is None:
        # Nearly every value: nothing to escape.
        return value.decode("ascii")
    text = value.decode("latin-1")
    return "".join(c if 32 <= ord(c) < 127 and c != '"' else "\\x%02x" % ord(c) for c in text)


def _keptTarget(headers: Headers) -> Tuple[Optional[bytes], Optional[bytes]]:
    """
    @return: the scheme and host a trusted proxy's forwarding fields (kept
        in C{headers}) tell, each C{None} when untold: X-Forwarded-Proto
        and -Host, else the first Forwarded element's proto and host.
    """
    proto = headers.getList(b"x-forwarded-proto")[:1]
    host = headers.getList(b"x-forwarded-host")[:1]
    if not (proto and host):
        forwarded = headers.getCombined(b"forwarded")
        if forwarded:
            parameters = forwardedParameters(forwarded)
            proto = proto or [parameters.get(b"proto")]
            host = host or [parameters.get(b"host")]
    return (proto[0] if proto else None), (host[0] if host else None)


def _appendField(headers: Headers, name: bytes, value: bytes) -> None:
    existing = headers.getCombined(name)
    headers.set(name, existing + b", " + value if existing else value)


def _parseAuthority(scheme: bytes, authority: bytes, requirePort: bool) -> Origin:
    """
    Parse C{host[:port]} (RFC 9110 section 4.2): IPv6 literals in brackets,
    no user information.

    @raise BadRequest: if C{authority} is not a valid authority.
    """
    if not authority or b"@" in authority:
        raise BadRequest("invalid authority in the request target")
    if authority.startswith(b"["):
        end = authority.find(b"]")
        if end == -1:
            raise BadRequest("invalid IPv6 literal in the request target")
        host = authority[1:end]
        rest = authority[end + 1:]
        if rest and not rest.startswith(b":"):
            raise BadRequest("invalid authority in the request target")
        portText = rest[1:] if rest else b""
    else:
        host, _, portText = authority.partition(b":")
    if requirePort and not portText:
        raise BadRequest("CONNECT needs host:port")
    if portText:
        if not portText.isdigit() or not 0 < int(portText) < 65536:
            raise BadRequest("invalid port in the request target")
        port = int(portText)
    else:
        port = 443 if scheme == b"https" else 80
    try:
        hostText = host.decode("ascii").lower()
    except UnicodeDecodeError:
        raise BadRequest("invalid host in the request target")
    if not hostText or any(c in hostText for c in " \t/\\?#%"):
        raise BadRequest("invalid host in the request target")
    return Origin(scheme, hostText, port)
