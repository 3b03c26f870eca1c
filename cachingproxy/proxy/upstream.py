# -*- test-case-name: tests.test_upstream -*-
"""
The upstream side: a pool of persistent HTTP/1.1 connections to origins and
the client protocol that runs one request at a time on each of them.

Usage::

    pool = UpstreamPool(reactor, UpstreamSettings(connectTimeout=10))
    d = pool.request(Origin(b"http", "example.com", 80), head, handler,
                     hasBody=False)
    d.addCallback(lambda upstreamRequest: upstreamRequest.finish())

C{handler} provides the L{IResponseHandler} methods and is told about the
response as it streams: interim heads, the final head, body chunks, the end,
or a failure. The L{UpstreamRequest} the Deferred fires with is how the
caller streams a request body (C{write}, C{finish}) and applies flow control
to the response (C{pauseProducing}, C{resumeProducing}); C{abort} abandons
the request and closes its connection.

A request that asks to upgrade (it carries an C{Upgrade} field) and is
answered 101 takes its connection out of the pool for good: the handler's
C{responseUpgraded} is given the 101 head and a L{TunnelPeer} that
receives what the origin sends from then on, the bytes that followed the
head included.

A request that fails on a reused connection before any byte of its response
arrived is sent once more on a fresh connection, if its method is idempotent
and it has no body (RFC 9110 section 9.2.2). The Deferred fails (it never
raises) with L{BadGateway} or L{GatewayTimeout} when no connection can be
made.
"""

from __future__ import annotations

import functools
from collections import deque
from operator import attrgetter
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Protocol as TypingProtocol

import httptools
from twisted.internet import defer
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._twistedinternals import writeNow
from ..errors import BadGateway, GatewayTimeout, UpstreamClosed, upstreamError
from ..http.headers import Headers
from ..http.message import RequestHead, ResponseHead
from . import states
from .states import UPSTREAM, _UPSTREAM_MOVES, IllegalTransition, UpstreamState, U_BUSY, U_CLOSED, U_IDLE
from ..service.config import fromSetting
from .tunnel import TunnelPeer

__all__ = [
    "IResponseHandler",
    "Origin",
    "UpstreamPool",
    "UpstreamProtocol",
    "UpstreamRequest",
    "UpstreamSettings",
    "UpstreamState",
]

_IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"])

_UPGRADE = frozenset([b"upgrade"])
_CONTENT_LENGTH = frozenset([b"content-length"])

#: What the parser reports as the version of nearly every response, as the
#: C{(major, minor)} a head carries (any other is converted as it comes).
_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}

#: Where the fields that follow a final head go: trailer fields are
#: dropped (nothing downstream asked for them), and a sink lets
#: L{UpstreamProtocol.on_header} append without asking which kind it has.
_TRAILERS = deque(maxlen=0)


@dataclass(frozen=True)
class Origin:
    """
    Where a request goes: the pool keys connections by this.
    """

    scheme: bytes
    host: str
    port: int

    #: what L{authority} returns, once it was asked (not a field: no
    #: annotation)
    _authorityValue = None

    def authority(self) -> bytes:
        """
        @return: the Host field value for this origin (the port only when it
            is not the scheme's default).
        """
        value = self._authorityValue
        if value is None:
            # Asked for several times for every request: kept. (The fields
            # are frozen, and so is what they make.)
            value = _authority(self.scheme, self.host, self.port)
            object.__setattr__(self, "_authorityValue", value)
        return value

    def __str__(self) -> str:
        """
        @return: the origin as a URL, for log lines: C{http://127.0.0.1:9000}.
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme.decode('ascii', 'replace')}://{host}:{self.port}"


@functools.lru_cache(maxsize=4096)
def _authority(scheme: bytes, host: str, port: int) -> bytes:
    if ":" in host:
        host = f"[{host}]"
    default = 443 if scheme == b"https" else 80
    if port == default:
        return host.encode("idna") if not host.isascii() else host.encode()
    return f"{host}:{port}".encode("ascii", "replace")


@dataclass(frozen=True)
class UpstreamSettings:
    """
    @ivar connectTimeout: seconds to establish a connection.
    @ivar responseTimeout: seconds of silence from the origin tolerated while
        a response is awaited or is arriving.
    @ivar maxIdlePerOrigin: idle persistent connections kept per origin.
    @ivar idleTimeout: seconds an idle pooled connection is kept.
    @ivar trustRoot: a L{twisted.internet.ssl.IOpenSSLTrustRoot} for https
        origins, or C{None} for the platform's trust store.
    """

    connectTimeout: float = fromSetting("connect-timeout")
    responseTimeout: float = fromSetting("upstream-timeout")
    maxIdlePerOrigin: int = fromSetting("upstream-max-idle")
    idleTimeout: float = fromSetting("upstream-idle-timeout")
    trustRoot: object = None


class IResponseHandler(TypingProtocol):
    """
    What an upstream request reports to, in this order: any number of
    C{responseInterim}, then C{responseHead}, any number of
    C{responseBody}, then C{responseEnd}; or C{responseFailed} at any point
    (after which nothing else is called). A request that asked to upgrade
    may instead end with C{responseUpgraded}: the connection is then a
    byte pipe, and nothing else is called.
    """

    def responseInterim(self, head: ResponseHead) -> None: ...

    def responseHead(self, head: ResponseHead) -> None: ...

    def responseBody(self, data: bytes) -> None: ...

    def responseEnd(self) -> None: ...

    def responseFailed(self, reason: Failure, receivedAnything: bool) -> None: ...

    def requestBodyUnwanted(self) -> None: ...

    def responseUpgraded(self, head: ResponseHead, peer: TunnelPeer) -> None: ...


class _Unasked(Exception):
    """
    Raised from the parser's message-begin callback when a response starts
    on a connection that has no request waiting for one.
    """


class _HeadDone(Exception):
    """
    Raised from the parser's headers-complete callback to end a response
    to HEAD after its head: llhttp cannot be told that a response has no
    body because of the request it answers.
    """


class UpstreamProtocol(Protocol):
    """
    One connection to an origin, carrying one request at a time.

    @ivar state: the L{UpstreamState} (read-only: L{_move} moves it, on its
        own or when the pool asks with L{close}).
    @ivar _requestDone: the request (head and body) has been sent in full.
    @ivar _responseStarted: at least one byte of the response arrived.
    @ivar _reusable: the connection may go back to the pool after this
        exchange (both sides agree on keep-alive, framing was clean).
    """

    _log = Logger()

    state = property(attrgetter("_state"))

    def __init__(self, pool: "UpstreamPool", origin: Origin) -> None:
        self._pool = pool
        self.origin = origin
        self._state = U_IDLE
        self.reused = False
        self._handler: Optional[IResponseHandler] = None
        self._request: Optional[UpstreamRequest] = None
        self._method = b""
        #: the fields of the head being parsed (L{_TRAILERS} once it is
        #: complete)
        self._headerFields: List = _TRAILERS
        self._reason = b""
        self._parser = httptools.HttpResponseParser(self)
        self._timer = None
        self._timerWanted = False
        self._lastActivity = 0.0
        self.idleSince = 0.0
        self._requestDone = True
        self._responseStarted = False
        self._responseComplete = False
        self._finalHeadSeen = False
        self._closeDelimited = False
        self._responseHead: Optional[ResponseHead] = None
        self._lostWaiters: List[defer.Deferred] = []
        #: called once the bytes being parsed now are all handled (see
        #: L{UpstreamRequest.afterRead}); C{None} when not parsing
        self._afterRead: Optional[List[Callable[[], None]]] = None
        #: the request carries Upgrade: a 101 is an answer, not an error
        self._upgradeAsked = False
        #: the 101 head awaiting the parser's report of the switch
        self._switchHead: Optional[ResponseHead] = None
        #: once switched, where the origin's bytes go
        self._tunnel: Optional[TunnelPeer] = None

    def _move(self, new: UpstreamState) -> None:
        """
        The connection's only mover: L{UPSTREAM}'s table says where it may
        go.

        @raise IllegalTransition: if the table forbids the move.
        """
        if new not in _UPSTREAM_MOVES[self._state]:
            raise UPSTREAM.illegalMove(self._state, new, self)
        self._state = new

    def close(self) -> None:
        """
        Close this connection (the pool asks, for one it will not reuse):
        it moves to L{UpstreamState.CLOSED}, if it is not there already.
        """
        if self._state is not U_CLOSED:
            self._move(U_CLOSED)
        if self.transport is not None:
            self.transport.loseConnection()

    def _illegal(self, error: IllegalTransition) -> None:
        """
        An event entry point caught C{error}: log it and abort this
        connection (and the client connection whose machine broke, if it
        was one of those), unless the tests asked for it to be raised
        (L{states.strict}).
        """
        states.refuse(self._log, error, f"upstream {self.origin}")
        states.abortOther(error, self)
        self._handler = None
        self._request = None
        if self._state is not U_CLOSED:
            self._move(U_CLOSED)
        self._dropTimer()
        if self.transport is not None:
            self.transport.abortConnection()

    # -- wiring --------------------------------------------------------

    def connectionMade(self) -> None:
        self.idleSince = self._pool.reactor.seconds()
        # Upstream sockets should never wait on Nagle.
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            try:
                setNoDelay(True)
            except Exception:
                pass

    def sendRequest(
        self, head: RequestHead, handler: IResponseHandler, request: "UpstreamRequest"
    ) -> None:
        """
        Send C{head} and start awaiting its response.
        """
        self._move(U_BUSY)
        self._handler = handler
        self._request = request
        self._method = head.method
        self._requestDone = False
        self._responseStarted = False
        self._responseHead: Optional[ResponseHead] = None
        self._finalHeadSeen = False
        self._responseComplete = False
        self._reusable = True
        # (the fields and reason of the response start afresh with each
        # head the parser begins: on_message_begin)
        self._upgradeAsked = head.headers.hasAny(_UPGRADE)
        self._switchHead = None
        request._protocol = self
        writeNow(self.transport, head.toWire())
        self._armTimer()
        if request._paused:
            self.transport.pauseProducing()

    def writeBody(self, data: bytes) -> None:
        if self._state is U_BUSY and not self._requestDone:
            writeNow(self.transport, data)
            self._lastActivity = self._pool.reactor.seconds()

    def finishBody(self) -> None:
        if self._state is not U_BUSY or self._requestDone:
            return
        self._requestDone = True
        self._lastActivity = self._pool.reactor.seconds()

    def abort(self) -> None:
        """
        Abandon the current request: the connection is closed, never pooled.
        """
        if self._state is U_CLOSED:
            return
        self._move(U_CLOSED)
        self._handler = None
        self._dropTimer()
        self.transport.abortConnection()

    # -- timers --------------------------------------------------------

    def _armTimer(self) -> None:
        self._lastActivity = self._pool.reactor.seconds()
        self._timerWanted = True
        if self._timer is None or not self._timer.active():
            self._timer = self._pool.reactor.callLater(
                self._pool.settings.responseTimeout, self._checkTimeout
            )

    def _cancelTimer(self) -> None:
        """
        Stop watching for silence. The pending call, if any, is left to
        fire harmlessly (it checks the state), so that a busy connection
        does not schedule and cancel a call for every request.
        """
        self._timerWanted = False

    def _dropTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _checkTimeout(self) -> None:
        self._timer = None
        if self._state is not U_BUSY or not self._timerWanted:
            return
        timeout = self._pool.settings.responseTimeout
        quiet = self._pool.reactor.seconds() - self._lastActivity
        if quiet < timeout:
            self._timer = self._pool.reactor.callLater(
                timeout - quiet, self._checkTimeout
            )
            return
        self._log.info(
            "upstream {origin} silent for {timeout}s; abandoning request",
            origin=self.origin,
            timeout=timeout,
        )
        self._fail(
            Failure(GatewayTimeout("the origin did not answer in time")),
            closeTransport=True,
        )

    # -- receiving -----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.dataReceived(data)
            return
        if self._state is not U_BUSY:
            # Bytes nobody asked for (or the rest of a response abandoned,
            # read before the close took effect): the connection cannot be
            # trusted.
            self.close()
            return
        self._lastActivity = self._pool.reactor.seconds()
        self._responseStarted = True
        self._afterRead = []
        try:
            self._feed(data)
        except IllegalTransition as e:
            self._illegal(e)
        finally:
            hooks, self._afterRead = self._afterRead, None
            try:
                for hook in hooks:
                    hook()
            except IllegalTransition as e:
                self._illegal(e)

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _HeadDone):
                self._parser = httptools.HttpResponseParser(self)
                self.on_message_complete()
                return
            if isinstance(e.__context__, IllegalTransition):
                raise e.__context__
            if isinstance(e.__context__, _Unasked):
                # Bytes nobody asked for: the connection cannot be trusted.
                self.close()
                return
            self._log.failure(
                "response handling failed for {origin}",
                failure=Failure(e.__context__ or e),
                origin=self.origin,
            )
            self._fail(Failure(BadGateway("invalid response")), closeTransport=True)
        except httptools.HttpParserUpgrade as e:
            if self._switchHead is not None:
                self._switched(data[e.args[0]:])
                return
            # A switch nobody asked for is a broken origin.
            self._fail(
                Failure(BadGateway("unexpected protocol switch")), closeTransport=True
            )
        except httptools.HttpParserError as e:
            self._log.info(
                "invalid response from {origin}: {error}", origin=self.origin, error=e
            )
            self._fail(
                Failure(BadGateway("invalid response from the origin")),
                closeTransport=True,
            )

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._state is not U_BUSY:
            # A response after the one asked for, in the same read.
            raise _Unasked()
        self._headerFields = []
        self._reason = b""
        self._responseComplete = False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # (after a head, into L{_TRAILERS}: dropped)
        self._headerFields.append((name.lower(), name, value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        version = parser.get_http_version()
        headers = Headers.fromLowered(self._headerFields)
        head = ResponseHead(
            status,
            self._reason,
            _VERSIONS.get(version) or (int(version[0]), int(version[2])),
            headers,
        )
        self._headerFields = _TRAILERS
        if status == 101 and self._upgradeAsked:
            # RFC 9110 section 15.2.2: the answer to the upgrade; the
            # parser reports the switch once the head is complete.
            self._switchHead = head
            return
        if 100 <= status < 200:
            if self._handler is not None:
                self._handler.responseInterim(head)
            return
        self._finalHeadSeen = True
        self._responseHead = head
        # Decided now: the handler may change the head it is given.
        self._closeDelimited = not headers.hasAny(_CONTENT_LENGTH) and not (
            headers.hasToken(b"transfer-encoding", b"chunked")
        )
        if not parser.should_keep_alive():
            self._reusable = False
        if self._handler is not None:
            self._handler.responseHead(head)
        if self._method == b"HEAD":
            # RFC 9112 section 6.3: no body, whatever the framing fields
            # say (llhttp knows this of a 204 and a 304 by itself).
            raise _HeadDone()

    def on_body(self, data: bytes) -> None:
        if self._handler is not None:
            self._handler.responseBody(data)

    def on_message_complete(self) -> None:
        if not self._finalHeadSeen or self._switchHead is not None:
            # The end of an interim (1xx) response.
            return
        self._responseComplete = True
        handler = self._handler
        if not self._requestDone:
            # The origin answered before the request body was sent in
            # full: the rest of the body is not wanted, and the connection
            # cannot be reused.
            self._reusable = False
        self._quiesce()
        if handler is not None:
            handler.responseEnd()

    def _quiesce(self) -> None:
        """
        The exchange on this connection is over: pool or close it.
        """
        handler = self._handler
        requestDone = self._requestDone
        request = self._request
        self._handler = None
        self._request = None
        # (_cancelTimer, inline: this runs for every response)
        self._timerWanted = False
        if request is not None:
            # The handle no longer steers this connection.
            request._protocol = None
            if request._paused:
                # A slow client paused this connection's reading; a
                # pooled connection must read again for its next request.
                self.transport.resumeProducing()
        if self._reusable and requestDone and self._state is U_BUSY:
            self._move(U_IDLE)
            self.reused = True
            self._finalHeadSeen = False
            self._responseHead = None
            self._pool._release(self)
        else:
            # (a connection abandoned or closed by the pool while this
            # response was being read stays closed: never pooled)
            self.close()
            if not requestDone and handler is not None:
                handler.requestBodyUnwanted()

    def _switched(self, rest: bytes) -> None:
        """
        The origin switched protocols (RFC 9110 section 7.8): this
        connection leaves the pool for good and becomes one end of a
        tunnel; C{rest}, what followed the 101 head, is its first data.
        """
        head, self._switchHead = self._switchHead, None
        handler = self._handler
        request = self._request
        self._handler = None
        self._request = None
        self._move(U_CLOSED)
        self._dropTimer()
        self._pool._forget(self)
        if request is not None:
            request._protocol = None
            if request._paused:
                self.transport.resumeProducing()
        peer = TunnelPeer()
        peer.makeConnection(self.transport)
        self._tunnel = peer
        if rest:
            peer.dataReceived(rest)
        if handler is None:
            self.transport.loseConnection()
            return
        handler.responseUpgraded(head, peer)

    # -- failures ------------------------------------------------------

    def _fail(self, reason: Failure, closeTransport: bool) -> None:
        handler = self._handler
        request = self._request
        started = self._responseStarted
        self._handler = None
        self._request = None
        if self._state is not U_CLOSED:
            self._move(U_CLOSED)
        self._dropTimer()
        if closeTransport:
            self.transport.abortConnection()
        if handler is not None:
            if request is not None:
                request._failed = True
            handler.responseFailed(reason, started)

    def whenClosed(self) -> defer.Deferred:
        """
        @return: a L{Deferred} that fires when this connection is gone.
        """
        d = defer.Deferred()
        self._lostWaiters.append(d)
        return d

    def connectionLost(self, reason: Failure = None) -> None:
        waiters, self._lostWaiters = self._lostWaiters, []
        try:
            self._connectionLost(reason)
        except IllegalTransition as e:
            self._illegal(e)
        finally:
            # The parser calls back into this protocol, and the request
            # points at it: a closed connection lets go of both, so that
            # nothing it held waits for the cycle collector.
            self._parser = None
            self._request = None
            self._handler = None
            for d in waiters:
                d.callback(None)

    def _connectionLost(self, reason: Failure) -> None:
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            tunnel.connectionLost(reason)
            return
        self._dropTimer()
        state = self._state
        if state is not U_CLOSED:
            self._move(U_CLOSED)
        self._pool._forget(self)
        if state is not U_BUSY or self._handler is None:
            return
        if self._finalHeadSeen and self._responseHead is not None:
            # A response framed by the end of the connection ends here
            # normally; llhttp knows which kind this one is.
            if self._closeDelimited:
                self._reusable = False
                self._responseComplete = True
                handler = self._handler
                self._handler = None
                self._request = None
                if handler is not None:
                    handler.responseEnd()
                return
        request = self._request
        if (
            self.reused
            and not self._responseStarted
            and request is not None
            and request._retryable()
        ):
            self._handler = None
            self._request = None
            self._pool._retry(request)
            return
        self._fail(
            Failure(UpstreamClosed(self._responseStarted, reason)), closeTransport=False
        )


class UpstreamRequest:
    """
    The caller's handle on one request sent upstream.

    It survives a transparent retry: the protocol underneath may change.
    """

    __slots__ = ("_pool", "origin", "head", "handler", "hasBody", "_protocol", "_paused",
                 "_finished", "_failed", "_retried", "_aborted")

    def __init__(
        self,
        pool: "UpstreamPool",
        origin: Origin,
        head: RequestHead,
        handler: IResponseHandler,
        hasBody: bool,
    ) -> None:
        self._pool = pool
        self.origin = origin
        self.head = head
        self.handler = handler
        self.hasBody = hasBody
        self._protocol: Optional[UpstreamProtocol] = None
        self._paused = False
        self._finished = False
        self._failed = False
        self._retried = False
        self._aborted = False

    def _retryable(self) -> bool:
        """
        Whether a failure before any response byte may be retried: once,
        for an idempotent method without a body, and not after an abort
        (the shape of Twisted's C{_RetryingHTTP11ClientProtocol._shouldRetry}).
        """
        return (
            not self._retried
            and not self.hasBody
            and not self._aborted
            and self.head.method in _IDEMPOTENT
        )

    @property
    def transport(self):
        """
        The transport of the connection currently carrying this request.
        """
        return self._protocol.transport if self._protocol is not None else None

    def afterRead(self, hook: Callable[[], None]) -> bool:
        """
        Call C{hook} once the response bytes being handled now (one read
        from the origin) are all handled, so that what they produce can go
        to the client in one write.

        @return: whether C{hook} will be called (C{False} outside a read).
        """
        protocol = self._protocol
        if protocol is None or protocol._afterRead is None:
            return False
        protocol._afterRead.append(hook)
        return True

    def write(self, data: bytes) -> None:
        """
        Send some of the request body.
        """
        if self._protocol is not None:
            self._protocol.writeBody(data)

    @property
    def finished(self) -> bool:
        """
        Whether L{finish} was called.
        """
        return self._finished

    def finish(self) -> None:
        """
        The request body (if any) is complete.
        """
        self._finished = True
        if self._protocol is not None:
            self._protocol.finishBody()

    def abort(self) -> None:
        """
        Abandon this request; its connection is closed.
        """
        self._aborted = True
        if self._protocol is not None:
            self._protocol.abort()
            self._protocol = None

    # IPushProducer, for the response body

    def pauseProducing(self) -> None:
        self._paused = True
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.abort()


class UpstreamPool:
    """
    Persistent connections to origins, keyed by L{Origin}.

    @ivar reactor: the reactor everything runs on.
    @ivar settings: L{UpstreamSettings}.
    """

    _log = Logger()

    def __init__(self, reactor, settings: UpstreamSettings = UpstreamSettings()) -> None:
        self.reactor = reactor
        self.settings = settings
        self._idle: Dict[Origin, List[UpstreamProtocol]] = {}
        #: the origin last looked up in C{_idle} and its list there (or
        #: C{None}): hashing an L{Origin} is a Python call, and a proxy in
        #: front of one origin asks for the same one, the same object,
        #: again and again. Whatever replaces or removes a list of
        #: C{_idle} forgets it.
        self._recentOrigin: Optional[Origin] = None
        self._recentIdle: Optional[List[UpstreamProtocol]] = None
        self._all: set = set()
        self._sweeper = None
        self.connectionsMade = 0

    def request(
        self,
        origin: Origin,
        head: RequestHead,
        handler: IResponseHandler,
        hasBody: bool,
    ) -> defer.Deferred:
        """
        Send C{head} to C{origin}.

        @return: a L{Deferred} firing with an L{UpstreamRequest} once the
            head is on its way, or failing with L{BadGateway} or
            L{GatewayTimeout} when no connection could be made. Cancelling
            it abandons the attempt.
        """
        request = self.requestOnIdle(origin, head, handler, hasBody)
        if request is not None:
            return defer.succeed(request)
        request = UpstreamRequest(self, origin, head, handler, hasBody)
        return self._sendOnNewConnection(request)

    def requestOnIdle(
        self,
        origin: Origin,
        head: RequestHead,
        handler: IResponseHandler,
        hasBody: bool,
    ) -> Optional[UpstreamRequest]:
        """
        Send C{head} on a pooled idle connection to C{origin}, if there is
        one: the synchronous fast path of L{request}.

        @return: the L{UpstreamRequest}, or C{None} when no idle connection
            is pooled (call L{request} then).
        """
        protocol = self._takeIdle(origin)
        if protocol is None:
            return None
        request = UpstreamRequest(self, origin, head, handler, hasBody)
        protocol.sendRequest(head, handler, request)
        return request

    def _sendOnNewConnection(self, request: UpstreamRequest) -> defer.Deferred:
        def connected(protocol: UpstreamProtocol) -> UpstreamRequest:
            if request._aborted:
                protocol.transport.loseConnection()
                return request
            protocol.sendRequest(request.head, request.handler, request)
            if request._finished:
                # A retry: the body (there is none) was finished already.
                protocol.finishBody()
            return request

        d = self._connect(request.origin)
        d.addCallback(connected)
        return d

    def _retry(self, request: UpstreamRequest) -> None:
        """
        Send C{request} again on a fresh connection after its reused one
        failed before answering.
        """
        request._retried = True
        request._protocol = None
        self._log.debug("retrying {method} on a fresh connection to {origin}",
                        method=request.head.method.decode("latin-1"), origin=request.origin)

        def failed(reason: Failure) -> None:
            if not request._aborted:
                request.handler.responseFailed(reason, False)

        self._sendOnNewConnection(request).addErrback(failed)

    def _endpoint(self, origin: Origin):
        reactor = self.reactor
        timeout = self.settings.connectTimeout
        host = origin.host
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(reactor, host, origin.port, timeout=timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(reactor, host, origin.port, timeout=timeout)
        else:
            endpoint = HostnameEndpoint(reactor, host, origin.port, timeout=timeout)
        if origin.scheme == b"https":
            from twisted.internet.ssl import optionsForClientTLS

            options = optionsForClientTLS(
                host, trustRoot=self.settings.trustRoot
            )
            endpoint = wrapClientTLS(options, endpoint)
        return endpoint

    def _connect(self, origin: Origin) -> defer.Deferred:
        try:
            endpoint = self._endpoint(origin)
        except Exception:
            return defer.fail(Failure(BadGateway(f"cannot connect to {origin.host}")))
        d = endpoint.connect(_QuietFactory(lambda: UpstreamProtocol(self, origin)))

        def made(protocol: UpstreamProtocol) -> UpstreamProtocol:
            self.connectionsMade += 1
            self._all.add(protocol)
            return protocol

        def failed(reason: Failure) -> Failure:
            error = upstreamError(reason, origin)
            # Nothing of the request was sent: another origin may take it.
            error.beforeSending = True
            return Failure(error)

        d.addCallbacks(made, failed)
        return d

    def _takeIdle(self, origin: Origin) -> Optional[UpstreamProtocol]:
        if origin is self._recentOrigin:
            idle = self._recentIdle
        else:
            idle = self._idle.get(origin)
            self._recentOrigin = origin
            self._recentIdle = idle
        if not idle:
            return None
        oldest = self.reactor.seconds() - self.settings.idleTimeout
        while idle:
            protocol = idle.pop()
            if protocol._state is U_IDLE and protocol.idleSince > oldest:
                return protocol
            protocol.close()
        return None

    def _release(self, protocol: UpstreamProtocol) -> None:
        origin = protocol.origin
        if origin is self._recentOrigin and self._recentIdle is not None:
            idle = self._recentIdle
        else:
            idle = self._idle.get(origin)
            if idle is None:
                idle = self._idle[origin] = []
            self._recentOrigin = origin
            self._recentIdle = idle
        if len(idle) >= self.settings.maxIdlePerOrigin:
            protocol.close()
            return
        protocol.idleSince = self.reactor.seconds()
        idle.append(protocol)
        if self._sweeper is None:
            self._sweeper = self.reactor.callLater(
                self.settings.idleTimeout, self._sweep
            )

    def _sweep(self) -> None:
        """
        Close pooled connections idle for longer than the idle timeout.
        """
        self._sweeper = None
        self._recentOrigin = self._recentIdle = None
        oldest = self.reactor.seconds() - self.settings.idleTimeout
        remaining = 0
        for origin, idle in list(self._idle.items()):
            keep = []
            for protocol in idle:
                if protocol.state is U_IDLE and protocol.idleSince > oldest:
                    keep.append(protocol)
                else:
                    protocol.close()
            if keep:
                self._idle[origin] = keep
                remaining += len(keep)
            else:
                del self._idle[origin]
        if remaining:
            self._sweeper = self.reactor.callLater(
                self.settings.idleTimeout / 2, self._sweep
            )

    def _forget(self, protocol: UpstreamProtocol) -> None:
        self._all.discard(protocol)
        idle = self._idle.get(protocol.origin)
        if idle and protocol in idle:
            idle.remove(protocol)

    def idleCount(self, origin: Optional[Origin] = None) -> int:
        """
        @return: the number of idle pooled connections (to C{origin}, or to
            every origin).
        """
        if origin is not None:
            return len(self._idle.get(origin, ()))
        return sum(len(v) for v in self._idle.values())

    def closeCachedConnections(self) -> defer.Deferred:
        """
        Close every connection, idle or busy.

        @return: a L{Deferred} that fires once they are all closed.
        """
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
        self._idle.clear()
        self._recentOrigin = self._recentIdle = None
        waits = []
        for protocol in list(self._all):
            if protocol.transport is None:
                continue
            waits.append(protocol.whenClosed())
            protocol.close()
        return defer.gatherResults(waits).addCallback(lambda _: None)


class _QuietFactory(Factory):
    """
    Builds one protocol per outgoing connection, without a log line each.
    """

    noisy = False

    def __init__(self, build) -> None:
        self._build = build

    def buildProtocol(self, addr):
        return self._build()
