"""
HTTP/2 to clients (L{cachingproxy.proxy.h2}) over real loopback sockets:
curl over TLS (ALPN) and with prior knowledge, a raw frame client breaking
the rules, the rapid-reset pattern, flow control of a large response,
draining, and Chromium.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import List, Optional

from hpack import Decoder, Encoder
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from cachingproxy.proxy import h2 as h2module
from cachingproxy.proxy.h2 import HTTP2Connection, PREFACE, RESET_LIMIT, requestBytes
from cachingproxy.service import tap
from cachingproxy.service.config import fromOptions
from cachingproxy.service.tlsport import ServerTLS

from .helpers import _trackServerConnections, listenOrigin, pattern, until
from .tlshelpers import makeCA, makeServerCert

PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
REFUSED_STREAM = 0x7
ENHANCE_YOUR_CALM = 0xB


def _curl() -> str:
    path = shutil.which("curl")
    if path is None:
        raise SkipTest("curl is not installed")
    return path


class _Proxy:
    """
    A proxy built from settings as C{twistd cachingproxy} builds it, in
    reverse mode before a test origin, on a loopback port (TLS or plain).
    """

    def __init__(self, testCase, originPort: int, http2: str = "tls", tls: bool = True,
                 **more) -> None:
        folder = tempfile.mkdtemp(prefix="cachingproxy-h2-")
        testCase.addCleanup(shutil.rmtree, folder, True)
        given = {
            "upstream": f"http://127.0.0.1:{originPort}",
            "cache-dir": os.path.join(folder, "cache"),
            "refresh-rule": (r"/size/ 1h 20 1d",),
            "http2": http2,
        }
        given.update(more)
        config = fromOptions(given, environ={})
        self.lines: List[str] = []
        self.factory = tap.buildFactory(reactor, config, self.lines.append)
        listening = self.factory
        if tls:
            ca = makeCA()
            cert, key = makeServerCert(ca)
            certPath = os.path.join(folder, "cert.pem")
            keyPath = os.path.join(folder, "key.pem")
            with open(certPath, "wb") as f:
                f.write(cert)
            with open(keyPath, "wb") as f:
                f.write(key)
            listening = ServerTLS(f"ssl:0:privateKey={keyPath}:certKey={certPath}").wrap(self.factory)
        self.port = reactor.listenTCP(0, listening, interface="127.0.0.1")
        self.factory.port = self.port
        self.number = self.port.getHost().port
        testCase.addCleanup(self.factory.pool.closeCachedConnections)
        testCase.addCleanup(self.port.stopListening)
        _trackServerConnections(testCase, listening)

    def connections(self) -> List[HTTP2Connection]:
        return [p for p in self.factory.protocols if isinstance(p, HTTP2Connection)]


def _parseCurl(out: bytes):
    """
    @return: the last response head of C{curl -D -} output: status line and
        a dict of lowered field names.
    """
    text = out.decode("latin-1")
    blocks = [b for b in text.split("\r\n\r\n") if b.startswith("HTTP/")]
    lines = blocks[-1].split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return lines[0].strip(), fields


class CurlTests(TestCase):
    """
    curl, a real HTTP/2 client, through the proxy.
    """

    async def test_tlsMissThenHit(self):
        """
        Over TLS, curl --http2 gets HTTP/2 by ALPN; the first request is a
        miss stored by the cache, the second a hit (Cache-Status, Age),
        the origin is asked once and the access log says HTTP/2.0.
        """
        origin, originPort = listenOrigin(self)
        proxy = _Proxy(self, originPort)
        url = f"https://127.0.0.1:{proxy.number}/size/5000"
        results = []
        for _ in range(2):
            out, err, code = await getProcessOutputAndValue(
                _curl(), ["-sSk", "--http2", "-D", "-", "-o", os.devnull, url], env=os.environ)
            self.assertEqual(code, 0, err)
            results.append(_parseCurl(out))
        (first, miss), (second, hit) = results
        self.assertEqual(first, "HTTP/2 200")
        self.assertEqual(second, "HTTP/2 200")
        self.assertIn("fwd=", miss["cache-status"])
        self.assertIn("hit", hit["cache-status"])
        self.assertIn("age", hit)
        self.assertEqual(hit["content-length"], "5000")
        self.assertNotIn("connection", hit)
        self.assertEqual(len(origin.requests), 1)
        await until(lambda: len(proxy.lines) == 2)
        for line in proxy.lines:
            self.assertIn('"GET /size/5000 HTTP/2.0" 200 5000', line)

    async def test_tlsBodyAndHTTP11(self):
        """
        A request body goes up intact over HTTP/2, and the stream counts
        as secure (X-Forwarded-Proto: https); a client that asks for
        HTTP/1.1 over the same TLS listener still gets it.
        """
        origin, originPort = listenOrigin(self)
        proxy = _Proxy(self, originPort, **{"x-forwarded-proto": True})
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        bodyPath = os.path.join(folder, "body")
        with open(bodyPath, "wb") as f:
            f.write(pattern(200000))
        out, err, code = await getProcessOutputAndValue(
            _curl(), ["-sSk", "--http2", "--data-binary", "@" + bodyPath, "-D", "-",
                      "-o", os.path.join(folder, "out"),
                      f"https://127.0.0.1:{proxy.number}/echo"], env=os.environ)
        self.assertEqual(code, 0, err)
        status, fields = _parseCurl(out)
        self.assertEqual(status, "HTTP/2 200")
        self.assertEqual(fields["x-body-length"], "200000")
        with open(os.path.join(folder, "out"), "rb") as f:
            self.assertEqual(f.read(), pattern(200000))
        self.assertEqual(origin.requests[-1]["body"], pattern(200000))
        sent = {k.lower(): v for k, v in origin.requests[-1]["headers"]}
        self.assertEqual(sent[b"x-forwarded-proto"], b"https")

        out, err, code = await getProcessOutputAndValue(
            _curl(), ["-sSk", "--http1.1", "-D", "-", "-o", os.devnull,
                      f"https://127.0.0.1:{proxy.number}/size/10"], env=os.environ)
        self.assertEqual(code, 0, err)
        self.assertEqual(_parseCurl(out)[0], "HTTP/1.1 200 OK")

    async def test_priorKnowledge(self):
        """
        With --http2 all, a plain listener takes HTTP/2 with prior
        knowledge, and HTTP/1.1 as before.
        """
        origin, originPort = listenOrigin(self)
        proxy = _Proxy(self, originPort, http2="all", tls=False)
        url = f"http://127.0.0.1:{proxy.number}/size/300"
        out, err, code = await getProcessOutputAndValue(
            _curl(), ["-sS", "--http2-prior-knowledge", "-D", "-", url], env=os.environ)
        self.assertEqual(code, 0, err)
        self.assertEqual(_parseCurl(out)[0], "HTTP/2 200")
        self.assertTrue(out.endswith(pattern(300)))
        out, err, code = await getProcessOutputAndValue(
            _curl(), ["-sS", "--http1.1", "-D", "-", url], env=os.environ)
        self.assertEqual(code, 0, err)
        self.assertEqual(_parseCurl(out)[0], "HTTP/1.1 200 OK")

    async def test_tlsOnly(self):
        """
        With the default (--http2 tls), a plain listener does not take the
        HTTP/2 preface as HTTP/2.
        """
        origin, originPort = listenOrigin(self)
        proxy = _Proxy(self, originPort, tls=False)
        out, err, code = await getProcessOutputAndValue(
            _curl(), ["-sS", "--http2-prior-knowledge", "-o", os.devnull,
                      f"http://127.0.0.1:{proxy.number}/size/300"], env=os.environ)
        self.assertNotEqual(code, 0)
        self.assertEqual(origin.requests, [])


# -- a raw frame client -------------------------------------------------------


class _FrameClient(Protocol):
    """
    An HTTP/2 client that writes whatever frames it is given (rules or
    not) and records every frame the server sends.
    """

    def __init__(self, windowSize: Optional[int] = None) -> None:
        self.frames: List[Frame] = []
        self.headers: dict = {}
        self.data: dict = {}
        self.ended: set = set()
        self._buffer = b""
        self._encoder = Encoder()
        self._decoder = Decoder()
        self._windowSize = windowSize
        self.lost = defer.Deferred()
        self._waits: List = []
        self.autoWindow = True
        #: called with each frame received
        self.onFrame = None

    def connectionMade(self) -> None:
        settings = SettingsFrame(0)
        if self._windowSize is not None:
            settings.settings[SettingsFrame.INITIAL_WINDOW_SIZE] = self._windowSize
        self.transport.write(PREFACE + settings.serialize())

    def send(self, *frames: Frame) -> None:
        self.transport.write(b"".join(f.serialize() for f in frames))

    def headersFrame(self, streamId: int, fields, end: bool = True) -> HeadersFrame:
        flags = ["END_HEADERS"] + (["END_STREAM"] if end else [])
        return HeadersFrame(streamId, self._encoder.encode(fields), flags=flags)

    def request(self, streamId: int, path: bytes, method: bytes = b"GET",
                more=(), end: bool = True) -> None:
        self.send(self.headersFrame(streamId, [
            (b":method", method), (b":scheme", b"http"), (b":authority", b"localhost"),
            (b":path", path), *more], end))

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._buffer[:9]))
            if len(self._buffer) < 9 + length:
                break
            frame.parse_body(memoryview(self._buffer[9:9 + length]))
            self._buffer = self._buffer[9 + length:]
            self.frames.append(frame)
            if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                self.send(SettingsFrame(0, flags=["ACK"]))
            elif isinstance(frame, HeadersFrame):
                self.headers.setdefault(frame.stream_id, []).append(
                    dict(self._decoder.decode(bytes(frame.data), raw=True)))
            elif isinstance(frame, DataFrame):
                self.data.setdefault(frame.stream_id, []).append(bytes(frame.data))
                if self.autoWindow and frame.flow_controlled_length:
                    self.send(WindowUpdateFrame(0, frame.flow_controlled_length),
                              WindowUpdateFrame(frame.stream_id, frame.flow_controlled_length))
            if "END_STREAM" in getattr(frame, "flags", ()):
                self.ended.add(frame.stream_id)
            if self.onFrame is not None:
                self.onFrame(frame)
        self._check()

    def body(self, streamId: int) -> bytes:
        return b"".join(self.data.get(streamId, []))

    def when(self, predicate) -> defer.Deferred:
        d = defer.Deferred()
        self._waits.append((predicate, d))
        self._check()
        return d

    def _check(self) -> None:
        for predicate, d in list(self._waits):
            if predicate(self):
                self._waits.remove((predicate, d))
                d.callback(self)

    def goAway(self) -> Optional[GoAwayFrame]:
        for frame in self.frames:
            if isinstance(frame, GoAwayFrame):
                return frame
        return None

    def resets(self) -> dict:
        return {f.stream_id: f.error_code for f in self.frames if isinstance(f, RstStreamFrame)}

    def connectionLost(self, reason=None) -> None:
        self._check()
        self.lost.callback(None)


async def _connect(testCase, port: int, **kwargs) -> _FrameClient:
    client = _FrameClient(**kwargs)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)

    def cleanup():
        if not client.lost.called:
            client.transport.abortConnection()
            return client.lost

    testCase.addCleanup(cleanup)
    return client


async def _settled(client: _FrameClient, timeout: float = 10.0) -> None:
    """
    Wait for the connection to be closed by the server (or C{timeout}).
    """
    d = defer.Deferred()
    call = reactor.callLater(timeout, lambda: d.called or d.callback(None))
    client.lost.addBoth(lambda _: d.called or d.callback(None))
    await d
    if call.active():
        call.cancel()


class RuleBreakingTests(TestCase):
    """
    Frames that break RFC 9113 get the error it names (an h2spec-style
    selection), as a stream error (RST_STREAM) or a connection error
    (GOAWAY).
    """

    async def setUp(self):
        self.origin, self.originPort = listenOrigin(self)
        self.proxy = _Proxy(self, self.originPort, http2="all", tls=False)
        self.client = await _connect(self, self.proxy.number)
        await self.client.when(lambda c: any(isinstance(f, SettingsFrame) for f in c.frames))

    async def assertError(self, streamId: int, codes) -> None:
        client = self.client
        await client.when(lambda c: streamId in c.resets() or c.goAway() is not None)
        goAway = client.goAway()
        code = goAway.error_code if goAway is not None else client.resets()[streamId]
        self.assertIn(code, codes)

    async def test_dataOnStreamZero(self):
        """
        DATA on stream 0: connection error PROTOCOL_ERROR (section 6.1).
        """
        wire = DataFrame(1, b"x").serialize()
        # hyperframe will not build it: the stream id field set to 0.
        self.client.transport.write(wire[:5] + b"\0\0\0\0" + wire[9:])
        await self.client.when(lambda c: c.goAway() is not None)
        self.assertEqual(self.client.goAway().error_code, PROTOCOL_ERROR)
        await _settled(self.client)
        self.assertTrue(self.client.lost.called)

    async def test_uppercaseFieldName(self):
        """
        A field name in uppercase makes the request malformed: PROTOCOL_ERROR
        (section 8.2.1), and nothing reaches the origin.
        """
        self.client.request(1, b"/size/10", more=[(b"X-Upper", b"1")])
        await self.assertError(1, [PROTOCOL_ERROR])
        self.assertEqual(self.origin.requests, [])

    async def test_connectionSpecificField(self):
        """
        connection: keep-alive is a connection-specific field: the request
        is malformed (section 8.2.2).
        """
        self.client.request(1, b"/size/10", more=[(b"connection", b"keep-alive")])
        await self.assertError(1, [PROTOCOL_ERROR])
        self.assertEqual(self.origin.requests, [])

    async def test_headersAfterEndStream(self):
        """
        A second HEADERS without END_STREAM on a stream the client ended:
        STREAM_CLOSED (section 5.1, half-closed (remote)).
        """
        self.client.request(1, b"/delay/500")
        self.client.send(self.client.headersFrame(1, [(b"x-more", b"1")], end=False))
        await self.assertError(1, [STREAM_CLOSED])

    async def test_tooManyStreams(self):
        """
        A stream beyond SETTINGS_MAX_CONCURRENT_STREAMS is refused
        (section 5.1.2); the ones within the limit are served.
        """
        self.patch(h2module, "MAX_CONCURRENT_STREAMS", 3)
        client = await _connect(self, self.proxy.number)
        await client.when(lambda c: any(isinstance(f, SettingsFrame) for f in c.frames))
        for streamId in (1, 3, 5, 7):
            client.request(streamId, b"/delay/300")
        await client.when(lambda c: 7 in c.resets() or c.goAway() is not None)
        goAway = client.goAway()
        code = goAway.error_code if goAway is not None else client.resets()[7]
        self.assertIn(code, [PROTOCOL_ERROR, REFUSED_STREAM])
        if goAway is None:
            await client.when(lambda c: {1, 3, 5} <= c.ended)
            self.assertEqual(client.body(1), b"delayed 300")

    async def test_fieldLimitsPerStream(self):
        """
        --max-header-size and --max-header-fields hold for each stream's
        request as for HTTP/1.1: 431 for the stream over either limit,
        and nothing of it reaches the origin; a stream within both is
        served.
        """
        self.proxy = _Proxy(self, self.originPort, http2="all", tls=False,
                            **{"max-header-size": 1024, "max-header-fields": 10})
        self.client = client = await _connect(self, self.proxy.number)
        base = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"localhost")]
        requests = {
            1: [(b":path", b"/size/11"), (b"x-big", b"v" * 1100)],
            3: [(b":path", b"/size/12"), *[(b"x-f%d" % i, b"v") for i in range(11)]],
            5: [(b":path", b"/size/13"), *[(b"x-f%d" % i, b"v") for i in range(8)]],
        }
        for streamId, fields in requests.items():
            client.send(HeadersFrame(streamId, client._encoder.encode(base + fields),
                                     flags=["END_STREAM", "END_HEADERS"]))
        await client.when(lambda c: {1, 3, 5} <= set(c.headers))
        self.assertEqual([client.headers[n][0][b":status"] for n in (1, 3, 5)],
                         [b"431", b"431", b"200"])
        self.assertEqual([r["path"] for r in self.origin.requests], [b"/size/13"])

    async def test_headerListTooLarge(self):
        """
        A header list beyond SETTINGS_MAX_HEADER_LIST_SIZE (sent in
        CONTINUATION frames) is refused, and nothing reaches the origin.
        """
        from hyperframe.frame import ContinuationFrame

        block = self.client._encoder.encode([
            (b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"localhost"),
            (b":path", b"/size/10"),
            *[(b"x-filler-%d" % i, b"v" * 4000) for i in range(20)]])
        self.assertGreater(len(block), h2module.MAX_HEADER_LIST_SIZE)
        pieces = [block[i:i + 16384] for i in range(0, len(block), 16384)]
        frames = [HeadersFrame(1, pieces[0], flags=["END_STREAM"])]
        frames += [ContinuationFrame(1, piece) for piece in pieces[1:-1]]
        frames.append(ContinuationFrame(1, pieces[-1], flags=["END_HEADERS"]))
        self.client.send(*frames)
        await self.client.when(
            lambda c: 1 in c.resets() or c.goAway() is not None or 1 in c.headers)
        if 1 in self.client.headers:
            self.assertEqual(self.client.headers[1][0][b":status"], b"431")
        else:
            await self.assertError(1, [ENHANCE_YOUR_CALM, PROTOCOL_ERROR])
        self.assertEqual(self.origin.requests, [])

    async def test_windowOverflow(self):
        """
        A WINDOW_UPDATE taking the connection's window beyond 2^31-1:
        FLOW_CONTROL_ERROR (section 6.9.1).
        """
        self.client.send(WindowUpdateFrame(0, 2 ** 31 - 1))
        await self.client.when(lambda c: c.goAway() is not None)
        self.assertEqual(self.client.goAway().error_code, FLOW_CONTROL_ERROR)

    async def test_servedAfterAll(self):
        """
        The raw client, keeping the rules, is served: the frames and
        fields the proxy sends are well formed.
        """
        self.client.request(1, b"/size/1000")
        await self.client.when(lambda c: 1 in c.ended)
        head = self.client.headers[1][0]
        self.assertEqual(head[b":status"], b"200")
        self.assertEqual(head[b"content-length"], b"1000")
        self.assertEqual(self.client.body(1), pattern(1000))

    async def test_bodyInPieces(self):
        """
        A request body whose length is not known when its head arrives
        (given to the stream's protocol chunked) reaches the origin whole,
        and so does one that arrives with its head.
        """
        client = self.client
        client.request(1, b"/echo", method=b"POST", end=False)
        await until(lambda: True)
        client.send(DataFrame(1, b"a" * 1000))
        await until(lambda: True)
        client.send(DataFrame(1, b"b" * 1000, flags=["END_STREAM"]))
        await client.when(lambda c: 1 in c.ended)
        self.assertEqual(client.body(1), b"a" * 1000 + b"b" * 1000)
        self.assertEqual(self.origin.requests[0]["body"], b"a" * 1000 + b"b" * 1000)

        client.send(client.headersFrame(3, [
            (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"localhost"),
            (b":path", b"/echo")], end=False), DataFrame(3, b"c" * 10, flags=["END_STREAM"]))
        await client.when(lambda c: 3 in c.ended)
        self.assertEqual(client.body(3), b"c" * 10)
        second = {k.lower(): v for k, v in self.origin.requests[1]["headers"]}
        self.assertEqual(second[b"content-length"], b"10")

    async def test_continue(self):
        """
        An interim response (100 Continue, to expect: 100-continue) goes out
        as a HEADERS frame of its own before the final response.
        """
        client = self.client
        client.request(1, b"/echo", method=b"POST", end=False,
                       more=[(b"content-length", b"5"), (b"expect", b"100-continue")])
        await client.when(lambda c: 1 in c.headers)
        self.assertEqual(client.headers[1][0][b":status"], b"100")
        client.send(DataFrame(1, b"hello", flags=["END_STREAM"]))
        await client.when(lambda c: 1 in c.ended)
        self.assertEqual(client.headers[1][1][b":status"], b"200")
        self.assertEqual(client.body(1), b"hello")

    async def test_headAndNoContent(self):
        """
        A HEAD response ends with its HEADERS (its Content-Length kept, no
        DATA), and so does a 204 (with an empty DATA frame at most).
        """
        self.client.request(1, b"/size/1000", method=b"HEAD")
        self.client.request(3, b"/status/204")
        await self.client.when(lambda c: {1, 3} <= c.ended)
        head = self.client.headers[1][0]
        self.assertEqual(head[b":status"], b"200")
        self.assertEqual(head[b"content-length"], b"1000")
        self.assertEqual(self.client.data.get(1), None)
        self.assertEqual(self.client.headers[3][0][b":status"], b"204")
        self.assertEqual(self.client.body(3), b"")
        self.assertEqual(self.client.resets(), {})
        self.assertIsNone(self.client.goAway())


class TunnelTests(TestCase):
    """
    CONNECT over HTTP/2 (RFC 9113 section 8.5) in a forward proxy.
    """

    async def test_connect(self):
        """
        CONNECT with :authority only opens a tunnel: 200, then DATA both
        ways is the byte stream to and from the destination.
        """
        from .tlshelpers import listenDestination

        destination, destinationPort = listenDestination(self)
        proxy = _Proxy(self, 0, http2="all", tls=False, upstream="",
                       **{"connect-ports": str(destinationPort)})
        proxy.factory.access = None
        client = await _connect(self, proxy.number)
        client.send(client.headersFrame(1, [
            (b":method", b"CONNECT"), (b":authority", b"127.0.0.1:%d" % destinationPort)],
            end=False))
        await client.when(lambda c: 1 in c.headers)
        self.assertEqual(client.headers[1][0][b":status"], b"200")
        client.send(DataFrame(1, b"hello through h2"))
        await client.when(lambda c: c.body(1) == b"hello through h2")
        self.assertEqual(client.resets(), {})


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class AbuseTests(TestCase):
    """
    The rapid-reset pattern and a client with a small window.
    """

    async def test_rapidReset(self):
        """
        Thousands of HEADERS each followed by RST_STREAM (CVE-2023-44487):
        GOAWAY(ENHANCE_YOUR_CALM) and the connection closed, with the
        proxy's memory and the requests reaching the origin bounded.
        """
        origin, originPort = listenOrigin(self)
        proxy = _Proxy(self, originPort, http2="all", tls=False)
        client = await _connect(self, proxy.number)
        await client.when(lambda c: any(isinstance(f, SettingsFrame) for f in c.frames))
        before = _rss()
        streamId = 1
        for _ in range(10):
            frames = []
            for _ in range(500):
                frames.append(client.headersFrame(streamId, [
                    (b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"localhost"),
                    (b":path", b"/size/100000?%d" % streamId)]))
                frames.append(RstStreamFrame(streamId, error_code=0x8))
                streamId += 2
            if client.lost.called:
                break
            client.send(*frames)
            await until(lambda: True)
        await client.when(lambda c: c.goAway() is not None)
        self.assertEqual(client.goAway().error_code, ENHANCE_YOUR_CALM)
        await _settled(client)
        self.assertTrue(client.lost.called)
        await until(lambda: not proxy.connections())
        grown = _rss() - before
        self.assertLess(grown, 64 * 1024 * 1024)
        self.assertLessEqual(len(origin.requests), RESET_LIMIT + h2module.MAX_CONCURRENT_STREAMS)

    async def test_smallWindow(self):
        """
        A 5 MiB response to a client whose window is 16 KiB arrives
        complete as the client gives window back; meanwhile the proxy
        buffers a bounded amount for the stream.
        """
        origin, originPort = listenOrigin(self)
        proxy = _Proxy(self, originPort, http2="all", tls=False)
        client = await _connect(self, proxy.number, windowSize=16384)
        client.autoWindow = False
        await client.when(lambda c: any(isinstance(f, SettingsFrame) for f in c.frames))
        size = 5 * 1024 * 1024
        client.request(1, b"/size/%d" % size)
        await client.when(lambda c: len(c.body(1)) >= 16384)
        # The window is spent: let the origin fill what it can.
        await until(lambda: origin.requests, 10)
        for _ in range(20):
            await until(lambda: True)
        streams = [s for c in proxy.connections() for s in c.streams.values()]
        self.assertEqual(len(streams), 1)
        most = streams[0].outSize
        self.assertLessEqual(most, 2 * h2module._HIGH_WATER)
        self.assertEqual(len(client.body(1)), 16384)

        def sample(frame):
            for c in proxy.connections():
                for s in c.streams.values():
                    samples.append(s.outSize)

        samples = [most]
        client.onFrame = sample
        client.autoWindow = True
        client.send(WindowUpdateFrame(0, 16384), WindowUpdateFrame(1, 16384))
        await client.when(lambda c: 1 in c.ended)
        most = max(samples)
        self.assertEqual(client.body(1), pattern(size))
        self.assertLessEqual(most, 2 * h2module._HIGH_WATER)

    async def test_clientNotReading(self):
        """
        A client with large windows that stops reading its socket: the
        proxy's connection pauses its streams (what waits in the proxy for
        the stream stays bounded), and all arrives once it reads again.
        """
        origin, originPort = listenOrigin(self)
        proxy = _Proxy(self, originPort, http2="all", tls=False)
        client = await _connect(self, proxy.number, windowSize=2 ** 31 - 1)
        await client.when(lambda c: any(isinstance(f, SettingsFrame) for f in c.frames))
        client.send(WindowUpdateFrame(0, 2 ** 31 - 1 - 65535))
        size = 8 * 1024 * 1024
        client.transport.pauseProducing()
        client.request(1, b"/size/%d" % size)
        await until(lambda: any(c.paused for c in proxy.connections()), 20)
        for _ in range(20):
            await until(lambda: True)
        [connection] = proxy.connections()
        self.assertTrue(connection.paused)
        self.assertLessEqual(connection.streams[1].outSize, 2 * h2module._HIGH_WATER)
        client.transport.resumeProducing()
        await client.when(lambda c: 1 in c.ended)
        self.assertEqual(client.body(1), pattern(size))


class DrainTests(TestCase):
    """
    A draining proxy (reload, shutdown) ends HTTP/2 connections cleanly.
    """

    async def test_goAwayOnDrain(self):
        """
        drain: GOAWAY(NO_ERROR) naming the last stream; the stream in
        flight is served in full; a later one is refused; the connection
        closes and the drain completes.
        """
        origin, originPort = listenOrigin(self)
        proxy = _Proxy(self, originPort, http2="all", tls=False)
        client = await _connect(self, proxy.number)
        client.request(1, b"/delay/300")
        await until(lambda: origin.requests)
        drained = proxy.factory.drain(10)
        await client.when(lambda c: c.goAway() is not None)
        goAway = client.goAway()
        self.assertEqual(goAway.error_code, 0)
        self.assertEqual(goAway.last_stream_id, 1)
        client.request(3, b"/size/10")
        await client.when(lambda c: 1 in c.ended)
        self.assertEqual(client.body(1), b"delayed 300")
        await client.lost
        await drained
        self.assertEqual(client.resets().get(3, REFUSED_STREAM), REFUSED_STREAM)
        self.assertEqual(len(origin.requests), 1)

    async def test_idleConnection(self):
        """
        An HTTP/2 connection with no stream for --idle-timeout seconds is
        closed with GOAWAY(NO_ERROR).
        """
        origin, originPort = listenOrigin(self)
        proxy = _Proxy(self, originPort, http2="all", tls=False, **{"idle-timeout": "0.3"})
        client = await _connect(self, proxy.number)
        client.request(1, b"/size/10")
        await client.when(lambda c: 1 in c.ended)
        await client.lost
        self.assertEqual(client.goAway().error_code, 0)
        self.assertEqual(client.goAway().last_stream_id, 1)


class TranslationTests(SynchronousTestCase):
    """
    An HTTP/2 request head as the HTTP/1.1 request its stream's protocol
    reads (L{requestBytes}).
    """

    base = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"),
            (b":path", b"/a?b")]

    def test_reverse(self):
        """
        Reverse mode: origin form, :authority as Host first.
        """
        head, chunked = requestBytes(self.base + [(b"accept", b"*/*")], False, 0, True)
        self.assertEqual(head, b"GET /a?b HTTP/1.1\r\nhost: example.com\r\naccept: */*\r\n\r\n")
        self.assertFalse(chunked)

    def test_forward(self):
        """
        Forward mode: absolute form from :scheme, :authority and :path
        (RFC 9113 section 8.3.1).
        """
        head, _ = requestBytes(self.base, True, 0, True)
        self.assertTrue(head.startswith(b"GET https://example.com/a?b HTTP/1.1\r\n"))

    def test_cookies(self):
        """
        Cookie crumbs are joined with '; ' (section 8.2.3); a Host field
        gives way to :authority.
        """
        head, _ = requestBytes(self.base + [(b"cookie", b"a=1"), (b"host", b"other"),
                                            (b"cookie", b"b=2")], False, 0, True)
        self.assertIn(b"\r\ncookie: a=1; b=2\r\n", head)
        self.assertNotIn(b"other", head)

    def test_bodyFraming(self):
        """
        A body of known length gets Content-Length; one still arriving is
        chunked; the client's own Content-Length is kept.
        """
        post = [(b":method", b"POST")] + self.base[1:]
        head, chunked = requestBytes(post, False, 5, False)
        self.assertIn(b"content-length: 5\r\n", head)
        self.assertFalse(chunked)
        head, chunked = requestBytes(post, False, None, False)
        self.assertIn(b"transfer-encoding: chunked\r\n", head)
        self.assertTrue(chunked)
        head, chunked = requestBytes(post + [(b"content-length", b"9")], False, None, False)
        self.assertIn(b"content-length: 9\r\n", head)
        self.assertFalse(chunked)

    def test_malformed(self):
        """
        What HTTP/1.1 could not carry as it is is refused: CR or LF in a
        value, a space in :path, userinfo in :authority, a missing :path.
        """
        for fields in (
            self.base + [(b"x", b"a\r\nb: c")],
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"e"),
             (b":path", b"/a b")],
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"u@e"),
             (b":path", b"/")],
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"e")],
        ):
            self.assertRaises(ValueError, requestBytes, fields, False, 0, True)


class BrowserTests(TestCase):
    """
    Chromium, headless, loading a page through the TLS listener.
    """

    async def test_chromium(self):
        """
        Chromium speaks HTTP/2 to the proxy (by ALPN): the access log says
        HTTP/2.0 for the page it loaded.
        """
        from .test_status_page import findBrowser, runBrowser

        browser = findBrowser()
        origin, originPort = listenOrigin(self)
        proxy = _Proxy(self, originPort)
        home = tempfile.mkdtemp(prefix="cachingproxy-h2-browser-")
        self.addCleanup(shutil.rmtree, home, True)
        code, dom, err = await runBrowser(self, browser, [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--ignore-certificate-errors", "--virtual-time-budget=3000",
            "--user-data-dir=" + os.path.join(home, "profile"), "--dump-dom",
            f"https://127.0.0.1:{proxy.number}/status/200"], home)
        self.assertEqual(code, 0, err[-2000:])
        self.assertIn(b"status 200", dom)
        await until(lambda: any('"GET /status/200 ' in line for line in proxy.lines))
        [line] = [line for line in proxy.lines if '"GET /status/200 ' in line]
        self.assertIn('"GET /status/200 HTTP/2.0" 200', line)


class WorkersTests(TestCase):
    """
    With C{--workers}, every worker offers HTTP/2 on a TLS listener.
    """

    @classmethod
    def setUpClass(cls):
        from .test_workers import TLSWorkersTests

        cls.ca = makeCA()
        cls.certificateFiles = TLSWorkersTests.certificateFiles
        cls.startTLS = TLSWorkersTests.startTLS
        cls._stopWhenDone = TLSWorkersTests._stopWhenDone

    async def test_bothWorkersSpeakHTTP2(self):
        """
        twistd with C{--workers 2} and an C{ssl:} listener: curl --http2
        gets HTTP/2 from both workers.
        """
        import json

        certPEM, keyPEM = makeServerCert(self.ca)
        folder, certPath, keyPath = self.certificateFiles(certPEM, keyPEM)
        process, transport, port = await self.startTLS(certPath, keyPath)
        pids = set()
        for _ in range(100):
            out, err, code = await getProcessOutputAndValue(
                _curl(), ["-sSk", "--http2", "-w", "\n%{http_version}",
                          f"https://127.0.0.1:{port}/_cachingproxy/health"], env=os.environ)
            self.assertEqual(code, 0, err)
            body, _, version = out.rpartition(b"\n")
            self.assertEqual(version, b"2")
            pids.add(json.loads(body)["pid"])
            if len(pids) == 2:
                break
        self.assertEqual(len(pids), 2)
        self.assertNotIn(transport.pid, pids)


class ReloadTests(SynchronousTestCase):
    """
    --http2 changes on a reload (SIGHUP) for the connections that follow.
    """

    def test_reloaded(self):
        """
        A reload that turns HTTP/2 off makes TLS listeners offer HTTP/1.1
        only to new connections.
        """
        from cachingproxy.service.reload import ConfigReloader

        config = fromOptions({"cache-dir": "none"}, {})
        factory = tap.buildFactory(reactor, config)
        self.assertEqual(factory.acceptableProtocols(), [b"h2", b"http/1.1"])
        new = fromOptions({"cache-dir": "none", "http2": "off"}, {})
        self.assertTrue(ConfigReloader(reactor, lambda: new, config, factory).reload())
        self.assertEqual(factory.acceptableProtocols(), [b"http/1.1"])
