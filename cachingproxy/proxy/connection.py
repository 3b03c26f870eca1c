# -*- test-case-name: tests.test_server -*-
"""
The client connection: L{ProxyProtocol}, one per client connection.

A connection is two small state machines, kept apart as h11 keeps its
client and server roles apart:

  - the I{reader} (L{ReaderState}) follows the bytes the client sends:
    waiting for a request head, reading a head, reading a body, holding
    what follows a request to upgrade until its answer, tunnelling, closed.
    It is moved only by L{ProxyProtocol._moveReader}.
  - each request is an L{Exchange} (L{ExchangeState}): queued behind
    earlier pipelined requests, forwarding (waiting for upstream), responding
    (streaming the response back), done. It is moved only by
    L{Exchange._move}.

Both tables are in L{cachingproxy.proxy.states}. A move they forbid raises
L{IllegalTransition}; the event entry points (L{ProxyProtocol.dataReceived},
L{ProxyProtocol.connectionLost}) log it and abort the connection.

Requests are answered strictly in order; requests pipelined behind the one
being answered are parsed and held (their bodies buffered up to a bound,
beyond which the connection stops reading until it catches up).

Parsing is done by httptools (llhttp) with every leniency off.
"""

from __future__ import annotations

from collections import deque
from operator import attrgetter
from typing import TYPE_CHECKING, Deque, List, Optional, Tuple

import httptools
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..errors import (
    BadRequest,
    ContentTooLarge,
    HeaderFieldsTooLarge,
    ProxyError,
    RequestTimeout,
    URITooLong,
)
from ..http.headers import Headers
from ..http.message import RequestHead
from .._twistedinternals import discardUnsent, sendNow
from ..cache.layer import NOT_PLAIN
from ..ops.admin import ADMIN_PREFIX
from .tunnel import TunnelPeer, joinTunnel
from .upstream import Origin
from .exchange import _UNKNOWN, Exchange, _Facts
from . import states
from .states import (
    EXCHANGE, READER, _READER_MOVES, IllegalTransition, ReaderState,
    R_BODY, R_CLOSED, R_HEAD, R_IDLE, R_TUNNEL, R_UPGRADE, X_DONE, X_FORWARDING, X_QUEUED,
)

if TYPE_CHECKING:
    from .factory import HotLane

__all__ = ["ProxyProtocol", "ReaderState"]


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
#: The parser's version text -> (major, minor), for the usual ones.
_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}
#: The end of a request line -> its version, for the usual ones.
_LINE_VERSIONS = {b" HTTP/1.1": (1, 1), b" HTTP/1.0": (1, 0)}
#: The fields that send a GET the long way (see L{ProxyProtocol._hotLane}):
#: those that frame a body, expect, ask to upgrade, carry Via, make the
#: request conditional or ask for part of it, or change what the cache may
#: answer with; and Host, of which there must be exactly one.
_LANE_STOP = NOT_PLAIN | frozenset(
    [b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"via", b"host"])
#: Bytes of pipelined request bodies held per connection before it stops
#: reading.
_PIPELINE_BUFFER = 64 * 1024
#: The longest read an exchange keeps as its L{Exchange.headRead}: the
#: connection keeps it too, with its last access line, so a read carrying a
#: large body is not kept (a head this long is logged the usual way).
HEAD_READ_KEPT = 4096


def _checkFields(fields: List[Tuple[bytes, bytes, bytes]], settings) -> None:
    """
    Refuse a request head with more fields than C{maxHeaderFields}, or
    whose fields take more than C{maxHeaderSize} bytes (each field's name
    and value, with 4 for the separator and the line end).

    @raise HeaderFieldsTooLarge: either way.
    """
    if len(fields) > settings.maxHeaderFields:
        raise HeaderFieldsTooLarge("the request has too many header fields")
    if sum([len(name) + len(value) + 4 for _, name, value in fields]) > settings.maxHeaderSize:
        raise HeaderFieldsTooLarge("the request header section is too large")


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
class ProxyProtocol(Protocol):
    """
    One client connection.

    @ivar reader: the L{ReaderState} (read-only: L{_moveReader} moves it).
    @ivar closing: the connection ends after the response being sent.
    @ivar draining: the proxy is draining: the next response says
        C{Connection: close}, and the connection closes once idle for
        L{ProxySettings.drainIdleTimeout}.
    """

    _log = Logger()

    reader = property(attrgetter("_reader"))
    #: an illegal move was logged; the connection is being aborted
    _broken = False

    def __init__(self) -> None:
        self._reader = R_IDLE
        self.closing = False
        self.draining = False
        self._queue: Deque[Exchange] = deque()
        self._reading: Optional[Exchange] = None
        self._pauses: set = set()
        self._bufferedBytes = 0
        self._timer = None
        self._timerAt = 0.0
        self._deadline = 0.0
        self._completedInRead = 0
        self._local = _UNKNOWN
        #: the read a request began at the start of, until its head is read
        self._started = b""
        self._secure: Optional[bool] = None
        self._clientVerdict = _UNKNOWN
        #: the hot lane whose access verdicts were found to allow this
        #: connection (see L{_hotLane})
        self._laneCleared = None
        self._trusted: Optional[bool] = None
        self._destinationVerdicts: Optional[dict] = None
        self._timerPurpose: Optional[ReaderState] = None
        self._tunnelPeer: Optional[TunnelPeer] = None
        #: the request asking to upgrade whose answer is awaited
        self._upgrading: Optional[Exchange] = None
        #: the total timeout of an upgraded connection
        self._upgradeTimer = None
        self.clientHost = "-"
        #: What the last access line said of the client, the second and
        #: the Referer and User-Agent, with its text, and the text of the
        #: last line of a request not sent upstream up to the seconds
        #: taken, or C{None} (L{cachingproxy.ops.accesslog.combinedLine}).
        self._combinedSaid: Optional[tuple] = None
        self._combinedKept: Optional[tuple] = None
        #: The same for JSON lines (L{cachingproxy.ops.accesslog}).
        self._jsonSaid: Optional[tuple] = None
        self._jsonKept: Optional[tuple] = None

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
        self._armTimer(self._idleTimeout(), R_IDLE)

    def connectionLost(self, reason: Failure = None) -> None:
        try:
            self._connectionLost()
        except IllegalTransition as e:
            self._illegal(e)
        finally:
            self._reading = None
            peer, self._tunnelPeer = self._tunnelPeer, None
            if peer is not None and peer.transport is not None:
                peer.transport.loseConnection()
            # What the client did not take stays queued in the transport
            # until this protocol is garbage collected: let go of it now.
            discardUnsent(self.transport)
            # The parser calls back into this protocol: without it, nothing
            # keeps a closed connection's objects in a cycle.
            self._parser = None
            self.factory.connectionClosed(self)

    def _connectionLost(self) -> None:
        if self._reader is not R_CLOSED:
            self._moveReader(R_CLOSED)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._upgradeTimer is not None and self._upgradeTimer.active():
            self._upgradeTimer.cancel()
        self._upgradeTimer = None
        self._upgrading = None
        queue, self._queue = self._queue, deque()
        if queue and queue[0].state is not X_QUEUED and queue[0].state is not X_DONE:
            active = queue[0]
            if active.state is X_FORWARDING:
                # nginx's convention: the client closed before an answer.
                active.status = 499
            if self._tunnelPeer is not None:
                active.bytesSent = self._tunnelPeer.bytesFromDestination
            self.factory.logAccess(active, self)
        for exchange in queue:
            exchange.clientGone()
        if self._reading is not None and self._reading not in queue:
            self._reading.clientGone()

    def _moveReader(self, new: ReaderState) -> None:
        """
        The reader's only mover: L{READER}'s table says where it may go.

        @raise IllegalTransition: if the table forbids the move.
        """
        if new not in _READER_MOVES[self._reader]:
            raise READER.illegalMove(self._reader, new, self)
        self._reader = new

    def _illegal(self, error: IllegalTransition) -> None:
        """
        An event entry point caught C{error}: log it (once per connection)
        and abort the connection, unless the tests asked for it to be
        raised (L{states.strict}).
        """
        if not self._broken:
            self._broken = True
            states.refuse(self._log, error, f"client {self.clientHost}")
        states.abortOther(error, self)
        if self._reader is not R_CLOSED:
            self._moveReader(R_CLOSED)
        if self.transport is not None:
            self.transport.abortConnection()

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
        # (the pending call is dropped when it fires or is cancelled, so
        # one that is kept is active, and due at _timerAt)
        if self._timer is None:
            self._timer = reactor.callLater(seconds, self._timedOut)
            self._timerAt = deadline
        elif self._timerAt > deadline:
            self._timer.reset(seconds)
            self._timerAt = deadline

    def _timedOut(self) -> None:
        self._timer = None
        reactor = self.factory.reactor
        early = self._deadline - reactor.seconds()
        if early > 0:
            self._timer = reactor.callLater(early, self._timedOut)
            self._timerAt = self._deadline
            return
        purpose = self._timerPurpose
        if purpose is not self._reader:
            return
        if purpose is R_IDLE and not self._queue:
            self._log.debug("closing idle connection from {client}", client=self.clientHost)
            self._moveReader(R_CLOSED)
            self.transport.loseConnection()
        elif purpose is R_HEAD:
            self._protocolError(RequestTimeout("the request head did not arrive in time"))
        elif purpose is R_BODY:
            self._protocolError(RequestTimeout("the request body did not arrive in time"))
        elif purpose is R_TUNNEL:
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
        self._method: Optional[bytes] = None
        self._methodPrefix = b""

    def dataReceived(self, data: bytes) -> None:
        try:
            self._dataReceived(data)
        except IllegalTransition as e:
            self._illegal(e)

    def _dataReceived(self, data: bytes) -> None:
        reader = self._reader
        if reader is R_TUNNEL:
            self._tunnelData(data)
            return
        if reader is R_UPGRADE:
            self._upgradeData(data)
            return
        if reader is R_CLOSED:
            if self._parser is None and not self._broken:
                # (the transport reports bytes after reporting the end)
                raise READER.illegalEvent(reader, "data after the connection was lost", self)
            # RFC 9112 section 9.6: nothing after a request asking to
            # close (or after an answer that closes) is processed.
            return
        if reader is R_IDLE and self._method is None and (
                self._methodPrefix or not data.startswith(b"GET ")):
            # (a request starting with "GET " has a method llhttp knows)
            data = self._substituteMethod(data)
            if data is None:
                return
        if reader is R_IDLE:
            # A request begins at the start of this read: its request line
            # is read for the version (see on_headers_complete).
            self._started = data
            self._headSize += len(data)
        elif reader is R_HEAD:
            self._headSize += len(data)
            # A head read in parts is not known by its first read (see
            # Exchange.headRead).
            self._started = b""
        startedBetween = reader is R_IDLE
        self._completedInRead = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgraded(data[e.args[0]:])
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _StopReading):
                return
            if isinstance(cause, IllegalTransition):
                raise cause
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
            if self._reader is R_HEAD:
                # The head is incomplete: what of it was read so far stays
                # within the limits (a field line that never ends, say).
                settings = self.factory.settings
                if self._headSize > settings.maxHeaderSize + settings.maxRequestLine:
                    self._protocolError(
                        HeaderFieldsTooLarge("the request header section is too large")
                    )
                elif len(self._fields) > settings.maxHeaderFields:
                    self._protocolError(
                        HeaderFieldsTooLarge("the request has too many header fields"))
                elif self._timerPurpose is not R_HEAD:
                    # A head began in this read and is incomplete: from
                    # now (the time of its first byte), it has
                    # headerTimeout to arrive.
                    self._armTimer(settings.headerTimeout, R_HEAD)

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
        if self._reader is R_CLOSED:
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
        self._moveReader(R_IDLE)
        self._resetHead()
        self._dataReceived(data[boundary:])
        return True

    def _parsedMethod(self) -> bytes:
        """
        @return: the method of the request being read, if the parser got
            that far, for log lines about requests that failed mid-head.
        """
        if self._reader is not R_HEAD or not self._url:
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
        if self._reader is R_CLOSED:
            # The connection is ending (an answer said so while the rest of
            # this read was being parsed): nothing after it is read.
            raise _StopReading()
        self._moveReader(R_HEAD)
        # The header timer is armed after this read (L{_dataReceived}) if
        # the head is still incomplete then: most heads arrive whole, and
        # need none. Whatever the timer watched before no longer applies.
        self._timerPurpose = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.factory.settings.maxRequestLine:
            raise URITooLong("the request target is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # (trailer fields of a chunked request body are not forwarded)
        if self._reader is R_HEAD:
            # The limits apply to the fields as a whole: after each read
            # while the head is incomplete (_dataReceived), and once it is
            # complete (_checkFields); here they would cost more than the
            # rest of the parse of a field.
            self._fields.append((name.lower(), name, value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        method = self._method or parser.get_method()
        # The version: from the request line when it is the start of the
        # read that began this request (llhttp has checked it, and asking
        # it costs four times more), else from the parser.
        started = self._started
        # (a request after this one in the same read starts mid-read; and a
        # body being read holds no read of its head)
        self._started = b""
        end = started.find(b"\r\n")
        version = _LINE_VERSIONS.get(started[end - 9:end]) if end > 9 else None
        if version is None:
            text = parser.get_http_version()
            version = _VERSIONS.get(text) or (int(text[0]), int(text[2]))
        fields = self._fields
        settings = self.factory.settings
        if len(fields) > settings.maxHeaderFields or not (
                started and len(started) <= settings.maxHeaderSize):
            # (a read no longer than the limit holds a header section no
            # longer than it)
            _checkFields(fields, settings)
        keepAlive = parser.should_keep_alive() and not self.closing
        if self._method is not None or len(started) > HEAD_READ_KEPT:
            # (the parser read a stand-in method: see _substituteMethod; or
            # a read longer than a connection keeps for its access lines)
            started = b""
        lane = self.factory.lane
        if (lane is not None and method == b"GET" and keepAlive and version == (1, 1)
                and not self._queue and self._hotLane(lane, method, version, fields, started)):
            return
        head = RequestHead(method, self._url, version, Headers.fromLowered(fields))
        self._resetHead()
        self._moveReader(R_BODY)
        exchange = Exchange(self, head, keepAlive)
        if started:
            exchange.headRead = started
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
            if (not facts.chunked and exchange.error is None
                    and int(facts.length) > settings.maxBodySize):
                exchange.error = ContentTooLarge(
                    f"the request body is larger than {settings.maxBodySize} bytes")
            self._armTimer(settings.bodyTimeout, R_BODY)
        self._reading = exchange
        self._queue.append(exchange)
        if not keepAlive:
            self.closing = True
        if len(self._queue) == 1:
            exchange.start()
        elif len(self._queue) > self.factory.settings.maxPipeline:
            self._pauseReading("pipeline")

    def _hotLane(self, lane: "HotLane", method: bytes, version: Tuple[int, int],
                 fields: List[Tuple[bytes, bytes, bytes]], started: bytes) -> bool:
        """
        A GET on a kept-alive HTTP/1.1 connection with nothing before it in
        the queue, just read: when it is a plain request for a remembered
        fresh response, answer it at once from the cache's hot table, with
        the bytes, the count and the log line the long way gives it
        (through L{Exchange.start}, the routing, the access checks and
        the cache layer), in a fraction of the work; when it is one for a
        key remembered as passing (its responses are not stored), forward
        it as the long way would, without asking again where it goes (see
        L{_passLane}).

        Plain here is what that long way lets through to the same answer
        without looking further: one Host field and none of the fields
        that frame a body, ask to upgrade or expect, carry Via or make the
        request conditional (L{_LANE_STOP}); a target in origin form in
        reverse mode, in absolute form in forward mode, not one of the
        proxy's own endpoints or pages; a client and origin the access
        policy allows (asked once per connection and lane in reverse mode,
        per connection and origin in forward mode, where each verdict is
        remembered by the connection).

        @param started: the read the head was all in, or C{b""}
            (L{Exchange.headRead}).
        @return: whether it answered or forwarded; if not, nothing was
            changed.
        """
        url = self._url
        if url[:1] == b"/":
            if url.startswith(ADMIN_PREFIX):
                return False
            key = lane.keys.get(url)
            if key is None:
                # (None in forward mode)
                key = lane.keyOf(url)
            origin = lane.origin
            path = None
        else:
            found = lane.targets.get(url)
            if found is None:
                found = lane.absoluteOf(url)
            if found is False:
                return False
            origin, key, path = found
        if key in lane.hot:
            passing = None
        else:
            passing = lane.passing.get(key)
            if passing is None:
                return False
        hosts = 0
        for field in fields:
            name = field[0]
            if name in _LANE_STOP:
                if hosts or name != b"host":
                    return False
                hosts = 1
        if not hosts:
            return False
        if lane.access is not None and self._laneCleared is not lane:
            if self.clientVerdict() is not None or \
                    self.destinationVerdict(origin) is not None:
                return False
            if lane.origin is not None:
                # (in forward mode each origin has its verdict)
                self._laneCleared = lane
        headers = Headers.fromLowered(fields)
        if passing is not None:
            if path is None:
                path = lane.upstreamPath + url if lane.upstreamPath else url
            return self._passLane(lane, passing, origin, key, path,
                                  RequestHead(method, url, version, headers), fields, started)
        variant = lane.cache.hotAnswer(key, headers)
        if variant is None:
            return False
        exchange = Exchange.answeredHot(self, RequestHead(method, url, version, headers),
                                        origin, len(variant.body), started)
        self._resetHead()
        # (on to IDLE at on_message_complete, as after any request)
        self._moveReader(R_BODY)
        transport = self.transport
        rest = sendNow(transport, variant.wire)
        if rest:
            transport.write(rest)
        self.factory.logAccess(exchange, self)
        return True

    def _passLane(self, lane: "HotLane", passing, origin: Origin, key: bytes, path: bytes,
                  head: RequestHead, fields: List[Tuple[bytes, bytes, bytes]],
                  started: bytes) -> bool:
        """
        The lane's request (see L{_hotLane}) is for a key remembered as
        passing: if that still holds (the cache layer's C{passing}), queue
        its exchange and forward it through the cache layer's
        C{forwardPassing}, which is where the long way takes it: the
        request has no body, and what L{Exchange.start} and the routing
        would find out is known from the lane's checks (HTTP/1.1, one
        Host, no Via, allowed by the access policy; the origin and the
        path the lane made as the routing does).

        @return: whether it forwarded; if not, nothing was changed.
        """
        cache = lane.cache
        if not cache.passing(key, passing):
            return False
        self._resetHead()
        self._moveReader(R_BODY)
        exchange = Exchange(self, head, True)
        if started:
            exchange.headRead = started
        # (what upstreamHead reads: the fields Connection nominates)
        exchange.facts = _Facts(fields)
        self._reading = exchange
        self._queue.append(exchange)
        exchange.startKnown(origin, path)
        cache.forwardPassing(exchange, origin, key, passing)
        return True

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
        if self._reader is R_CLOSED:
            return
        if exchange is not None and exchange.head.method == b"CONNECT":
            # What follows is the tunnel, dealt with by _upgraded.
            exchange.requestBodyEnd()
            return
        if exchange is not None and exchange is self._upgrading:
            if exchange.state is not X_DONE:
                # What follows waits for the answer (see _upgraded).
                self._moveReader(R_UPGRADE)
                exchange.requestBodyEnd()
                return
            # Answered already (refused before forwarding): HTTP goes on.
            self._upgrading = None
        self._moveReader(R_IDLE)
        if exchange is not None:
            exchange.requestBodyEnd()
        if self.closing:
            # Connection: close: no further request is read (RFC 9112
            # section 9.6).
            self._moveReader(R_CLOSED)
        elif not self._queue:
            self._armTimer(self._idleTimeout(), R_IDLE)

    def _upgraded(self, rest: bytes) -> None:
        """
        llhttp stopped after a request that asks to leave HTTP: a CONNECT
        (the rest is tunnel data), a request to upgrade to a protocol this
        proxy carries (the rest waits for the answer: L{_upgradeRefused} or
        L{_startTunnel}), or one that it does not (forwarded as a plain
        request, so HTTP goes on with a fresh parser).
        """
        if self._reader is R_CLOSED:
            return
        if self._reader is R_UPGRADE:
            if rest:
                self._upgradeData(rest)
            return
        queue = self._queue
        last = queue[-1] if queue else None
        if last is not None and last.head.method == b"CONNECT":
            self._moveReader(R_TUNNEL)
            if rest:
                last.tunnelData.append(rest)
                last.bytesReceived += len(rest)
            return
        self._parser = httptools.HttpRequestParser(self)
        if self._reader is R_BODY:
            self._moveReader(R_IDLE)
        if rest:
            self._dataReceived(rest)

    def _protocolError(self, error: ProxyError) -> None:
        """
        The client broke the protocol or a limit: answer (after the
        requests before it) and close.
        """
        if self._reader is R_CLOSED:
            return
        method = self._method or self._parsedMethod()
        self._moveReader(R_CLOSED)
        self.closing = True
        reading, self._reading = self._reading, None
        if reading is not None and reading.state is X_QUEUED:
            # A pipelined request whose body broke: answered in its turn.
            reading.error = error
            return
        if reading is not None and reading.state is X_FORWARDING:
            # Its body broke while it was being forwarded.
            reading.respondError(error)
            return
        if reading is not None and reading.state is not X_DONE:
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
        queue = self._queue
        if not queue or queue[0] is not exchange:
            # Requests are answered in order: only the first one can end.
            raise EXCHANGE.illegalEvent(exchange.state, "an answer out of turn", self)
        queue.popleft()
        self.factory.logAccess(exchange, self)
        refused = exchange is self._upgrading
        if refused:
            self._upgrading = None
        if exchange._closeAfter:
            self.closing = True
            if self._reader is not R_CLOSED:
                self._moveReader(R_CLOSED)
            for queued in self._queue:
                queued.clientGone()
            self._queue.clear()
            self.transport.loseConnection()
            return
        if refused and self._reader is R_UPGRADE:
            self._upgradeRefused(exchange)
            return
        if self._pauses:
            self._resumeReading("pipeline")
        if self._queue:
            self._queue[0].start()
        elif self._reader is R_IDLE:
            self._armTimer(self._idleTimeout(), R_IDLE)

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
        if self._reader is not R_CLOSED:
            self._moveReader(R_CLOSED)
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
        self._moveReader(R_IDLE)
        self._resumeReading("pipeline")
        self._armTimer(self._idleTimeout(), R_IDLE)
        if pending:
            self._dataReceived(b"".join(pending))

    def _tunnelActivity(self) -> None:
        """
        A byte went through an upgraded connection, one way or the other:
        its idle timeout starts again.
        """
        self._armTimer(self.factory.settings.upgradeIdleTimeout, R_TUNNEL)

    def _upgradeExpired(self) -> None:
        self._upgradeTimer = None
        if self._reader is R_TUNNEL:
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
            self._moveReader(R_TUNNEL)
        elif self._reader is not R_TUNNEL:
            self._moveReader(R_TUNNEL)
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
        if self._reader is R_CLOSED:
            return
        queue = self._queue
        if queue and queue[-1].state in (X_QUEUED, X_FORWARDING):
            # Its head is not sent yet: it will say Connection: close.
            queue[-1]._closeAfter = True
        elif not queue and self._reader is R_IDLE:
            self._armTimer(self._idleTimeout(), R_IDLE)

    def tunnelClosed(self) -> None:
        """
        The destination closed its side: close ours.
        """
        peer, self._tunnelPeer = self._tunnelPeer, None
        if self._queue:
            exchange = self._queue[0]
            if peer is not None:
                exchange.bytesSent = peer.bytesFromDestination
            if exchange.state is not X_DONE:
                exchange._move(X_DONE)
            self.factory.logAccess(exchange, self)
            self._queue.clear()
        self.transport.loseConnection()


