# -*- test-case-name: tests.test_h2 -*-
"""
HTTP/2 to clients (RFC 9113), on TLS listeners by ALPN (C{--http2 tls},
the default) and, with C{--http2 all}, by prior knowledge on plain ones
(h2c: the client starts with the connection preface).

Design: every stream is an HTTP/1.1 connection in-process. The HTTP/2
framing is the C{h2} library's state machine (what C{twisted.web}'s own
HTTP/2 drives); each request stream gets its own L{ProxyProtocol}, built
by the listener's L{ProxyFactory} as for a TCP connection, fed the
request translated into HTTP/1.1 bytes through a small transport
(L{_Stream}), and what that protocol writes back is parsed with
C{httptools} into HEADERS and DATA frames. So the access rules, header
rules, limits, routing, the cache layer and the access log are the very
code an HTTP/1.1 request goes through, and nothing of theirs knows that
HTTP/2 exists. The exceptions are told here: the access log says
C{HTTP/2.0}, and a stream's protocol does not count as a client connection
(the HTTP/2 connection does, once).

The cost: each request is written as HTTP/1.1 text and parsed again twice
(the request by the stream's protocol, the response here), and each
stream builds a L{ProxyProtocol} with its parser and its timers. Measured
on a busy 2-core machine, a cache hit from memory took about 0.65 ms of
CPU over HTTP/2 against 0.08 ms over HTTP/1.1; a profile puts more than
half of it in C{h2} itself (HPACK and its state machines, pure Python)
and about a fifth in the translation and the extra protocol, which is
what a native HTTP/2 path through the exchange could win back. A miss
does not feel it.
C{bench/run_h2.sh} compares HTTP/2 hits with nginx's.

Flow control runs through the usual producers. A stream whose response
does not fit the client's windows buffers about L{_HIGH_WATER} bytes
(and the write that went beyond), then pauses the producer its protocol registered on the stream (the
upstream response or the stored body), and resumes it when a
WINDOW_UPDATE drains the buffer; when the client's TCP connection is full,
every stream pauses. Request bodies are acknowledged (WINDOW_UPDATE) only
as the stream's protocol takes them, so a paused upload is held by the
client's window, not here.

Limits: at most L{MAX_CONCURRENT_STREAMS} streams at once and a header
list of at most L{MAX_HEADER_LIST_SIZE} bytes (both advertised in
SETTINGS and enforced by C{h2}, which ends the connection with
GOAWAY(PROTOCOL_ERROR), or ENHANCE_YOUR_CALM for the header list, rather
than refusing the one stream), and the rapid-reset pattern
(CVE-2023-44487): more than L{RESET_LIMIT} streams reset by the client
within L{RESET_WINDOW} seconds ends the connection with
GOAWAY(ENHANCE_YOUR_CALM). A draining proxy (reload, shutdown) sends
GOAWAY(NO_ERROR) naming the last stream it will serve, finishes those and
closes.

CONNECT (section 8.5) is a tunnel as in HTTP/1.1: the stream's protocol
answers 200 with no length, so what follows is parsed as a body read to
the end, and goes out as DATA; the client's DATA goes to the destination
as it is.

Not served: server push, the extended CONNECT of RFC 8441 (WebSocket over
HTTP/2; not advertised) and HTTP/2 upstream (origins are spoken to in
HTTP/1.1).
"""

from __future__ import annotations

import re
from collections import deque
from typing import Deque, Dict, List, Optional, Tuple

import httptools
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IHandshakeListener,
    IPushProducer,
    ISSLTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "HTTP2Connection",
    "MAX_CONCURRENT_STREAMS",
    "MAX_HEADER_LIST_SIZE",
    "PREFACE",
    "RESET_LIMIT",
    "RESET_WINDOW",
    "choosingProtocol",
    "requestBytes",
]

#: What an HTTP/2 client sends first (RFC 9113 section 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: SETTINGS_MAX_CONCURRENT_STREAMS.
MAX_CONCURRENT_STREAMS = 100
#: SETTINGS_MAX_HEADER_LIST_SIZE (bytes, as RFC 9113 section 6.5.2
#: counts them); the stream's protocol then applies C{--max-header-size}.
MAX_HEADER_LIST_SIZE = 65536
#: Streams the client may reset within L{RESET_WINDOW} seconds.
RESET_LIMIT = 200
RESET_WINDOW = 10.0

#: Response bytes a stream buffers beyond the client's windows before it
#: pauses its producer; it resumes once below L{_LOW_WATER}.
_HIGH_WATER = 65536
_LOW_WATER = 16384

#: Request fields that describe one HTTP/1.1 connection (RFC 9113 section
#: 8.2.2); C{h2} refuses a request carrying them, and they are left out of
#: the translation all the same. C{Host} comes from C{:authority}.
_CONNECTION_FIELDS = frozenset([
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
    b"upgrade", b"te", b"http2-settings",
])
#: Response fields of the HTTP/1.1 hop that HTTP/2 has no place for.
_HOP_FIELDS = frozenset([
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
    b"upgrade", b"te", b"trailer",
])

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
_METHOD = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VISIBLE = re.compile(rb"^[\x21-\x7e]+\Z")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")


class _Malformed(ValueError):
    """
    A request that RFC 9113 section 8.1.1 calls malformed: the stream is
    reset with PROTOCOL_ERROR.
    """


def requestBytes(fields: List[Tuple[bytes, bytes]], forward: bool,
                 length: Optional[int], ended: bool) -> Tuple[bytes, bool]:
    """
    Translate an HTTP/2 request head into an HTTP/1.1 one.

    @param fields: the decoded field list, pseudo-fields first.
    @param forward: a forward proxy: the target is in absolute form
        (C{:scheme://:authority:path}), which is what RFC 9113 section
        8.3.1 says the pseudo-fields amount to.
    @param length: the body's length when it is already known (all of it
        arrived with the head), else C{None}.
    @param ended: the head ended the stream: there is no body.
    @return: the HTTP/1.1 request head, and whether its body is sent
        chunked.
    @raise _Malformed: for a request HTTP/1.1 cannot carry as it is.
    """
    pseudo: Dict[bytes, bytes] = {}
    lines: List[bytes] = []
    cookies: List[bytes] = []
    hostField: Optional[bytes] = None
    contentLength: Optional[bytes] = None
    for name, value in fields:
        if _BAD_VALUE.search(value):
            raise _Malformed("a field value carries CR, LF or NUL")
        if name.startswith(b":"):
            if name in pseudo or name not in (b":method", b":scheme", b":authority", b":path"):
                raise _Malformed("unknown or repeated pseudo-field")
            pseudo[name] = value
            continue
        if not _TOKEN.match(name):
            raise _Malformed("invalid field name")
        if name in _CONNECTION_FIELDS:
            continue
        if name == b"cookie":
            # RFC 9113 section 8.2.3: crumbs are joined again for HTTP/1.1.
            cookies.append(value)
            continue
        if name == b"host":
            hostField = value
            continue
        if name == b"content-length":
            if contentLength is not None and contentLength != value:
                raise _Malformed("conflicting content-length")
            contentLength = value
            continue
        lines.append(b"%s: %s\r\n" % (name, value))
    method = pseudo.get(b":method")
    if method is None or not _METHOD.match(method):
        raise _Malformed("missing or invalid :method")
    authority = pseudo.get(b":authority")
    if authority is not None and (not _VISIBLE.match(authority) or b"@" in authority):
        raise _Malformed("invalid :authority")
    if method == b"CONNECT":
        if authority is None or b":path" in pseudo or b":scheme" in pseudo:
            raise _Malformed("CONNECT takes :authority only")
        target = authority
        chunked = False
    else:
        path = pseudo.get(b":path")
        scheme = pseudo.get(b":scheme")
        if path is None or scheme is None or not _VISIBLE.match(path) \
                or not (path.startswith(b"/") or (path == b"*" and method == b"OPTIONS")):
            raise _Malformed("missing or invalid :path or :scheme")
        if scheme not in (b"http", b"https"):
            raise _Malformed("unsupported :scheme")
        if forward and authority is not None and path != b"*":
            target = b"%s://%s%s" % (scheme, authority, path)
        else:
            target = path
        chunked = False
        if contentLength is not None:
            lines.append(b"content-length: %s\r\n" % contentLength)
        elif length is not None and (length or method in (b"POST", b"PUT", b"PATCH")):
            lines.append(b"content-length: %d\r\n" % length)
        elif not ended and length is None:
            lines.append(b"transfer-encoding: chunked\r\n")
            chunked = True
    host = authority if authority is not None else hostField
    if host is not None:
        lines.insert(0, b"host: %s\r\n" % host)
    if cookies:
        lines.append(b"cookie: %s\r\n" % b"; ".join(cookies))
    return b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, b"".join(lines)), chunked


class _StreamFactory:
    """
    The listener's factory as a stream's protocol sees it: everything is
    the factory's own, except that a stream is no client connection of
    its own (the HTTP/2 connection is counted once), and its access log
    line says HTTP/2.0.
    """

    def __init__(self, factory) -> None:
        self._factory = factory

    def __getattr__(self, name):
        return getattr(self._factory, name)

    def connectionOpened(self, protocol) -> None:
        pass

    def connectionClosed(self, protocol) -> None:
        pass

    def logAccess(self, exchange, protocol) -> None:
        head = getattr(exchange, "head", None)
        if head is not None:
            head.version = (2, 0)
        self._factory.logAccess(exchange, protocol)


@implementer(ITransport, IConsumer, IPushProducer)
class _Stream:
    """
    One request stream, and the transport of the L{ProxyProtocol} that
    serves it: what the protocol writes is the HTTP/1.1 response, turned
    into HEADERS and DATA frames here.

    (No attribute is called C{transport}: nothing beneath this one is to
    be reached through it.)
    """

    disconnecting = False
    _log = Logger()

    def __init__(self, connection: "HTTP2Connection", streamId: int, method: bytes) -> None:
        self._connection = connection
        self.streamId = streamId
        self._method = method
        self.protocol = None
        self.producer = None
        self._producerPaused = False
        #: the stream's protocol asked for no more request bytes
        self._readPaused = False
        #: request bytes taken but not yet acknowledged to the client
        self._unacknowledged = 0
        self._chunked = False
        self._parser = httptools.HttpResponseParser(self)
        self._fields: List[Tuple[bytes, bytes]] = []
        self._status = 0
        self._final = False
        self._closeDelimited = False
        self.out: Deque[bytes] = deque()
        self.outSize = 0
        #: the response is complete: END_STREAM follows what is buffered
        self.ended = False
        #: END_STREAM or RST_STREAM sent, or the stream reset by the client
        self.closed = False
        self._lost = False
        self._loseCall = None

    # -- the request, from the client --------------------------------------

    def start(self, protocol, head: bytes, chunked: bool) -> None:
        self.protocol = protocol
        self._chunked = chunked
        protocol.makeConnection(self)
        if not self._lost:
            protocol.dataReceived(head)

    def requestData(self, data: bytes, flowLength: int) -> None:
        if self._lost:
            self._connection.acknowledge(self, flowLength)
            return
        if data:
            self.protocol.dataReceived(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
        if self._readPaused:
            self._unacknowledged += flowLength
        else:
            self._connection.acknowledge(self, flowLength)

    def requestEnd(self) -> None:
        if self._chunked and not self._lost:
            self.protocol.dataReceived(b"0\r\n\r\n")

    def reset(self) -> None:
        """
        The client reset the stream, or the connection is gone.
        """
        self.closed = True
        self.out.clear()
        self.outSize = 0
        self._lose(ConnectionLost("the client reset the stream"))

    # -- ITransport, for the stream's protocol ----------------------------

    def write(self, data: bytes) -> None:
        if self.closed or self.ended:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._log.failure("the response to stream {stream} cannot be framed",
                              failure=Failure(e), stream=self.streamId)
            self._connection.resetStream(self, ErrorCodes.INTERNAL_ERROR)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if not self.closed and self._final and not self.ended and self._closeDelimited:
            # The end of a close-delimited body.
            self.on_message_complete()
        if not self.closed and not self.ended:
            self._connection.resetStream(self, ErrorCodes.INTERNAL_ERROR)
        self._scheduleLose(ConnectionDone("the response is complete"))

    def abortConnection(self) -> None:
        if not self.closed and not self.ended:
            self._connection.resetStream(self, ErrorCodes.INTERNAL_ERROR)
        self._scheduleLose(ConnectionLost("aborted"))

    def getPeer(self):
        return self._connection.transport.getPeer()

    def getHost(self):
        return self._connection.transport.getHost()

    def getPeerCertificate(self):
        return None

    # -- IConsumer --------------------------------------------------------

    def registerProducer(self, producer, streaming: bool) -> None:
        self.producer = producer
        self._producerPaused = False
        if self._lost:
            producer.stopProducing()
            return
        self.updateProducer()

    def unregisterProducer(self) -> None:
        self.producer = None
        self._producerPaused = False

    def updateProducer(self) -> None:
        """
        Pause the producer while too much is buffered here or the client's
        connection is full; resume it once that is over.
        """
        producer = self.producer
        if producer is None:
            return
        full = self.outSize > _HIGH_WATER or self._connection.paused
        if full and not self._producerPaused:
            self._producerPaused = True
            producer.pauseProducing()
        elif self._producerPaused and not self._connection.paused and self.outSize <= _LOW_WATER:
            self._producerPaused = False
            producer.resumeProducing()

    # -- IPushProducer: the stream's protocol pausing the request ------------

    def pauseProducing(self) -> None:
        self._readPaused = True

    def resumeProducing(self) -> None:
        self._readPaused = False
        if self._unacknowledged:
            n, self._unacknowledged = self._unacknowledged, 0
            self._connection.acknowledge(self, n)

    def stopProducing(self) -> None:
        pass

    # -- the response, parsed -----------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        fields, self._fields = self._fields, []
        named = set()
        for name, value in fields:
            if name == b"connection":
                named.update(v.strip().lower() for v in value.split(b","))
        headers = [(b":status", b"%d" % status)]
        headers.extend((n, v) for n, v in fields if n not in _HOP_FIELDS and n not in named)
        if 100 <= status < 200:
            if status != 101:
                self._connection.sendHeaders(self, headers, False)
            return
        self._final = True
        self._status = status
        names = {n for n, _ in fields}
        head = self._method == b"HEAD"
        self._closeDelimited = (
            not head and status not in (204, 304) and b"content-length" not in names
            and b"transfer-encoding" not in names)
        if head:
            # llhttp cannot be told that this answers a HEAD: the message
            # ends here, whatever its Content-Length says.
            self.ended = True
            self._connection.sendHeaders(self, headers, True)
            return
        self._connection.sendHeaders(self, headers, False)

    def on_body(self, data: bytes) -> None:
        if self.closed or self.ended:
            return
        self.out.append(data)
        self.outSize += len(data)
        self._connection.sendData(self)

    def on_message_complete(self) -> None:
        if not self._final or self.closed or self.ended:
            return
        self.ended = True
        self._connection.sendData(self)

    # -- the end ---------------------------------------------------------

    def done(self) -> None:
        """
        END_STREAM went out: the stream's protocol has served its request.
        """
        self.closed = True
        self._scheduleLose(ConnectionDone("the response is complete"))

    def _scheduleLose(self, reason) -> None:
        if self._lost:
            if self.closed:
                self._connection.streamGone(self)
            return
        if self._loseCall is not None:
            return
        # Not in the middle of the protocol's own call: as a real
        # transport, the loss is told on a later turn of the reactor.
        self._loseCall = self._connection.reactor.callLater(0, self._lose, reason)

    def _lose(self, reason) -> None:
        """
        Tell the stream's protocol its connection is gone. The stream
        itself stays while a complete response still waits for window.
        """
        if not self._lost:
            self._lost = True
            call, self._loseCall = self._loseCall, None
            if call is not None and call.active():
                call.cancel()
            producer, self.producer = self.producer, None
            if producer is not None:
                producer.stopProducing()
            protocol = self.protocol
            if protocol is not None:
                self.protocol = None
                protocol.connectionLost(Failure(reason))
            self._parser = None
            if self._unacknowledged:
                n, self._unacknowledged = self._unacknowledged, 0
                self._connection.acknowledge(self, n)
        if self.closed:
            self._connection.streamGone(self)


@implementer(ISSLTransport)
class _SecureStream(_Stream):
    """
    A stream of a TLS connection: its protocol's C{isSecure()} holds.
    """


@implementer(IPushProducer)
class HTTP2Connection(Protocol):
    """
    One client connection speaking HTTP/2.

    @ivar paused: the client's TCP connection is not taking more.
    @ivar draining: GOAWAY was sent; streams above L{_lastStream} are
        refused.
    """

    _log = Logger()

    def __init__(self, factory, secure: bool, received: bytes = b"") -> None:
        self.factory = factory
        self.reactor = factory.reactor
        self._streamFactory = _StreamFactory(factory)
        self._streamClass = _SecureStream if secure else _Stream
        self._received = received
        self.streams: Dict[int, _Stream] = {}
        self.paused = False
        self._readingPaused = False
        self.draining = False
        self._lastStream = 2 ** 31 - 1
        self._resets = 0
        self._resetsSince = 0.0
        self._idleCall = None
        self._closed = False
        self.clientHost = "-"

    # -- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.clientHost = getattr(peer, "host", None) or "-"
        # What is sent comes from an HTTP/1.1 response that httptools
        # parsed (strictly) and that on_headers_complete lowered and rid
        # of connection fields: h2's own check of it is not repeated.
        conn = self.conn = H2Connection(H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False))
        conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
        })
        conn.decoder.max_header_list_size = MAX_HEADER_LIST_SIZE
        conn.initiate_connection()
        self.transport.registerProducer(self, True)
        self.factory.connectionOpened(self)
        self._flush()
        self._armIdle()
        received, self._received = self._received, b""
        if received:
            self.dataReceived(received)

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as e:
            self._log.debug("HTTP/2 protocol error from {client}: {error}",
                            client=self.clientHost, error=e)
            self._close()
            return
        for index, event in enumerate(events):
            if self._closed:
                return
            kind = type(event)
            if kind is RequestReceived:
                self._requestReceived(event, events, index)
            elif kind is DataReceived:
                stream = self.streams.get(event.stream_id)
                if stream is None:
                    self.acknowledge(None, event.flow_controlled_length, event.stream_id)
                else:
                    stream.requestData(event.data, event.flow_controlled_length)
            elif kind is StreamEnded:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.requestEnd()
            elif kind is StreamReset:
                self._streamReset(event)
            elif kind is WindowUpdated:
                if event.stream_id == 0:
                    self._sendAll()
                else:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None:
                        self.sendData(stream)
            elif kind is RemoteSettingsChanged:
                if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    self._sendAll()
            elif kind is ConnectionTerminated:
                self._close(sendGoAway=False)
                return
        self._flush()
        if self.paused and not self._readingPaused and not self._closed:
            # The client does not read what it is sent: read no more of it
            # (what it sends makes frames to answer: PING, SETTINGS).
            self._readingPaused = True
            self.transport.pauseProducing()

    def connectionLost(self, reason: Failure = None) -> None:
        self._closed = True
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = None
        for stream in list(self.streams.values()):
            stream.reset()
        self.streams.clear()
        self.factory.connectionClosed(self)

    def _close(self, error: int = ErrorCodes.NO_ERROR, sendGoAway: bool = True) -> None:
        """
        End the connection: what C{h2} has queued (a GOAWAY for a protocol
        error) goes out first.
        """
        if self._closed:
            return
        self._closed = True
        if sendGoAway and error != ErrorCodes.NO_ERROR:
            try:
                self.conn.close_connection(error)
            except ProtocolError:
                pass
        self._flush()
        self.transport.loseConnection()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    # -- requests ----------------------------------------------------------

    def _requestReceived(self, event: RequestReceived, events: list, index: int) -> None:
        streamId = event.stream_id
        self._disarmIdle()
        if self.draining and streamId > self._lastStream:
            self._reset(streamId, ErrorCodes.REFUSED_STREAM)
            return
        ended = event.stream_ended is not None
        length: Optional[int] = 0 if ended else None
        if not ended:
            # All of a small body often comes in the same read as its
            # head, right behind it: then it goes on with a Content-Length.
            seen = 0
            for later in range(index + 1, len(events)):
                following = events[later]
                if getattr(following, "stream_id", None) != streamId:
                    break
                if type(following) is DataReceived:
                    seen += len(following.data)
                elif type(following) is StreamEnded:
                    length = seen
                    break
                else:
                    break
        method = b""
        for name, value in event.headers:
            if name == b":method":
                method = value
                break
        try:
            head, chunked = requestBytes(
                event.headers, self.factory.settings.upstream is None, length, ended)
        except _Malformed as e:
            self._log.debug("malformed HTTP/2 request from {client}: {error}",
                            client=self.clientHost, error=e)
            self._reset(streamId, ErrorCodes.PROTOCOL_ERROR)
            return
        stream = self._streamClass(self, streamId, method)
        self.streams[streamId] = stream
        protocol = self.factory.protocol()
        protocol.factory = self._streamFactory
        stream.start(protocol, head, chunked)

    def _streamReset(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.reset()
        if not event.remote_reset:
            return
        now = self.reactor.seconds()
        if now - self._resetsSince > RESET_WINDOW:
            self._resetsSince = now
            self._resets = 0
        self._resets += 1
        if self._resets > RESET_LIMIT:
            self._log.warn(
                "{client} reset more than {limit} streams in {window}s: closing its "
                "HTTP/2 connection", client=self.clientHost, limit=RESET_LIMIT,
                window=RESET_WINDOW)
            self._close(ErrorCodes.ENHANCE_YOUR_CALM)

    def _reset(self, streamId: int, error: int) -> None:
        try:
            self.conn.reset_stream(streamId, error)
        except ProtocolError:
            pass

    def acknowledge(self, stream: Optional[_Stream], n: int, streamId: int = 0) -> None:
        """
        Give the client C{n} bytes of window back for a stream (and for the
        connection).
        """
        if self._closed or not n:
            return
        try:
            self.conn.acknowledge_received_data(n, stream.streamId if stream else streamId)
        except ProtocolError:
            pass
        self._flush()

    # -- responses ---------------------------------------------------------

    def sendHeaders(self, stream: _Stream, headers, end: bool) -> None:
        if self._closed or stream.closed:
            return
        try:
            self.conn.send_headers(stream.streamId, headers, end_stream=end)
        except ProtocolError as e:
            self._log.debug("stream {stream}: {error}", stream=stream.streamId, error=e)
            self.resetStream(stream, ErrorCodes.INTERNAL_ERROR)
            return
        if end:
            stream.done()
        self._flush()

    def sendData(self, stream: _Stream) -> None:
        """
        Send what a stream has buffered, as far as the windows allow.
        """
        if self._closed or stream.closed:
            return
        conn = self.conn
        streamId = stream.streamId
        out = stream.out
        try:
            while out and not self.paused:
                window = min(conn.local_flow_control_window(streamId),
                             conn.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = out[0]
                if len(chunk) > window:
                    out[0] = chunk[window:]
                    chunk = chunk[:window]
                else:
                    out.popleft()
                stream.outSize -= len(chunk)
                conn.send_data(streamId, chunk, end_stream=stream.ended and not out)
                if stream.ended and not out:
                    stream.done()
            if stream.ended and not out and not stream.closed:
                conn.end_stream(streamId)
                stream.done()
        except ProtocolError as e:
            self._log.debug("stream {stream}: {error}", stream=streamId, error=e)
            self.resetStream(stream, ErrorCodes.INTERNAL_ERROR)
            return
        self._flush()
        stream.updateProducer()

    def _sendAll(self) -> None:
        for stream in list(self.streams.values()):
            if stream.out or stream.ended:
                self.sendData(stream)

    def resetStream(self, stream: _Stream, error: int) -> None:
        if stream.closed:
            return
        stream.closed = True
        stream.out.clear()
        stream.outSize = 0
        if not self._closed:
            self._reset(stream.streamId, error)
            self._flush()
        stream._scheduleLose(ConnectionLost("the stream was reset"))

    def streamGone(self, stream: _Stream) -> None:
        self.streams.pop(stream.streamId, None)
        if not self.streams and not self._closed:
            if self.draining:
                self._finishDrain()
            else:
                self._armIdle()

    # -- IPushProducer: the client's TCP connection --------------------------

    def pauseProducing(self) -> None:
        self.paused = True
        for stream in list(self.streams.values()):
            stream.updateProducer()

    def resumeProducing(self) -> None:
        self.paused = False
        if self._readingPaused:
            self._readingPaused = False
            self.transport.resumeProducing()
        self._sendAll()
        for stream in list(self.streams.values()):
            stream.updateProducer()

    def stopProducing(self) -> None:
        pass

    # -- idleness and draining ------------------------------------------------

    def _armIdle(self) -> None:
        if self._idleCall is None or not self._idleCall.active():
            self._idleCall = self.reactor.callLater(
                self.factory.settings.idleTimeout, self._idleTimedOut)

    def _disarmIdle(self) -> None:
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = None

    def _idleTimedOut(self) -> None:
        self._idleCall = None
        if self.streams or self._closed:
            return
        self._log.debug("closing idle HTTP/2 connection from {client}", client=self.clientHost)
        self._goAwayAndClose()

    def drain(self) -> None:
        """
        The proxy is shutting down or being replaced: GOAWAY(NO_ERROR)
        names the last stream served; those finish, later ones are
        refused, and the connection closes when none is left.
        """
        if self.draining or self._closed:
            return
        self.draining = True
        self._lastStream = self.conn.highest_inbound_stream_id
        # Written beside h2, whose state machine takes no frame after a
        # GOAWAY of its own: the streams in flight go on.
        self._flush()
        self.transport.write(GoAwayFrame(
            stream_id=0, last_stream_id=self._lastStream,
            error_code=ErrorCodes.NO_ERROR).serialize())
        if not self.streams:
            # Closing at once would race a request on its way: the client
            # gets the idle drain time to read the GOAWAY first.
            self._disarmIdle()
            self._idleCall = self.reactor.callLater(
                self.factory.settings.drainIdleTimeout, self._finishDrain)

    def _finishDrain(self) -> None:
        if self.streams or self._closed:
            return
        self._goAwayAndClose()

    def _goAwayAndClose(self) -> None:
        self._disarmIdle()
        try:
            self.conn.close_connection(ErrorCodes.NO_ERROR,
                                       last_stream_id=min(self._lastStream,
                                                          self.conn.highest_inbound_stream_id))
        except ProtocolError:
            pass
        self._close()


class _Choosing(Protocol):
    """
    A new client connection before it is known to speak HTTP/2: an
    HTTP/1.1 L{ProxyProtocol} serves it (and counts it, and times it out)
    until the TLS handshake has chosen C{h2} by ALPN or the first bytes
    are the HTTP/2 preface; then an L{HTTP2Connection} takes its place.
    """

    def __init__(self, factory, tls: bool) -> None:
        self.factory = factory
        self._tls = tls
        self._buffer = b""
        self._current = None

    def makeConnection(self, transport) -> None:
        self.transport = transport
        protocol = self.factory.protocol()
        protocol.factory = self.factory
        self._current = protocol
        protocol.makeConnection(transport)
        if self._tls:
            # Nothing to tell from the bytes: the handshake decides.
            self.dataReceived = protocol.dataReceived

    def handshakeCompleted(self) -> None:
        if getattr(self.transport, "negotiatedProtocol", None) == b"h2":
            self._become(b"")

    def dataReceived(self, data: bytes) -> None:
        data = self._buffer + data
        if PREFACE.startswith(data[:len(PREFACE)]) and len(data) < len(PREFACE):
            self._buffer = data
            return
        self._buffer = b""
        if data.startswith(PREFACE):
            self._become(data)
            return
        protocol = self._current
        self.dataReceived = protocol.dataReceived
        protocol.dataReceived(data)

    def _become(self, received: bytes) -> None:
        old = self._current
        new = self._current = HTTP2Connection(self.factory, self._tls, received)
        self.dataReceived = new.dataReceived
        # The HTTP/2 connection is counted before the HTTP/1.1 one that
        # stood for it goes, so that a drain never sees none in between.
        new.makeConnection(self.transport)
        old.transport = None
        old.connectionLost(Failure(ConnectionDone("HTTP/2 was chosen")))

    def connectionLost(self, reason=None) -> None:
        if self._current is not None:
            self._current.connectionLost(reason)


@implementer(IHandshakeListener)
class _ChoosingTLS(_Choosing):
    """
    L{_Choosing} on a TLS connection: told when the handshake is done.
    """


def choosingProtocol(factory, tls: bool) -> Protocol:
    """
    @return: the protocol of a new client connection that may speak
        HTTP/2 (by ALPN when C{tls}, by prior knowledge otherwise).
    """
    return _ChoosingTLS(factory, True) if tls else _Choosing(factory, False)
