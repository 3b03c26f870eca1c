"""
Property-based tests of the request side (hypothesis): whatever bytes a
client sends, the proxy either forwards exactly one well-framed request per
request it answers, or refuses with a 4xx; and how the bytes are split
across reads never changes the outcome.
"""

import httptools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from .test_server import ProxyHarness

#: Field names: ordinary ones, the framing ones smuggling plays with, and
#: odd tokens.
NAMES = st.sampled_from(
    [b"Content-Length", b"Content-Length", b"Transfer-Encoding", b"Connection", b"X-A",
     b"Expect", b"TE", b"Via", b"content-length", b"Transfer-encoding", b"X A", b"",
     b"X\x00", b"Upgrade", b"Keep-Alive"])
VALUES = st.one_of(
    st.sampled_from([b"chunked", b"gzip, chunked", b"0", b"5", b"05", b"-1", b"5, 5",
                     b"close", b"keep-alive", b"100-continue", b"x", b" chunked",
                     b"chunked ", b"\x01", b"a\rb", b"10.0.0.1:8080", b"3", b"24",
                     # Connection options, the framing and routing ones
                     # among them (RFC 9110 section 7.6.1)
                     b"Content-Length", b"close, content-length", b"Transfer-Encoding",
                     b"Host", b"X-A, TE", b"keep-alive, Content-Length, Host"]),
    st.binary(max_size=12).filter(lambda v: len(v) % 4 == 0),
)
FIELDS = st.lists(st.tuples(NAMES, VALUES), max_size=6)
BODY = st.binary(max_size=24)


class _Upstream:
    """
    Collects what the proxy forwarded, parsed with llhttp as an origin
    would: complete requests, and whether the stream was well framed.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.bodies = []
        self.hosts = []
        self._body = b""
        self._host = False

    def on_message_begin(self):
        self._body = b""
        self._host = False

    def on_header(self, name, value):
        if name.lower() == b"host":
            self._host = True

    def on_body(self, data):
        self._body += data

    def on_message_complete(self):
        self.requests += 1
        self.bodies.append(self._body)
        self.hosts.append(self._host)


def _run(data: bytes, cuts):
    """
    Feed C{data} to a proxy split at C{cuts}; answer every forwarded
    request from a fake origin.

    @return: (client-visible bytes, what the origin parsed, whether the
        forwarded bytes were well framed)
    """
    h = ProxyHarness()
    pieces = []
    last = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))):
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    for piece in pieces:
        h.send(piece)
    upstream = _Upstream()
    wellFramed = True
    if h.reactor.tcpClients and not h.reactor.connectors[-1].stoppedConnecting:
        # (A request refused while its connection was being made cancels
        # the attempt: nothing of it can have been sent.)
        origin = h.origin()
        try:
            httptools.HttpRequestParser(upstream).feed_data(origin.received())
        except httptools.HttpParserError:
            wellFramed = False
        if upstream.requests:
            origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    return h.received(), upstream, wellFramed


class RequestSoupTests(SynchronousTestCase):
    """
    Any header soup parses to one meaning or is refused (RFC 9112 sections
    6 and 11).
    """

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(FIELDS, BODY, st.lists(st.integers(min_value=0, max_value=400), max_size=6))
    def test_oneMeaningOrRefused(self, fields, body, cuts):
        """
        The origin receives well-framed requests only, at most one per
        request line sent; a refused request gets a 4xx (or 5xx for a
        version) and nothing of it reaches the origin; splitting the bytes
        differently changes nothing.
        """
        head = b"POST http://10.0.0.1:8080/p HTTP/1.1\r\nHost: h\r\n" + b"".join(
            name + b": " + value + b"\r\n" for name, value in fields)
        data = head + b"\r\n" + body
        whole, upstream, wellFramed = _run(data, [])
        split, upstreamSplit, wellFramedSplit = _run(data, cuts)
        self.assertTrue(wellFramed)
        self.assertLessEqual(upstream.requests, 1)
        self.assertEqual(upstream.bodies, upstreamSplit.bodies)
        statuses = [int(whole[9:12])] if whole.startswith(b"HTTP/1.1 ") else []
        if statuses and statuses[0] >= 400:
            self.assertEqual(upstream.requests, 0, whole)
        if upstream.requests:
            # The origin reads the body the proxy read from the client,
            # whatever Connection nominates (RFC 9110 section 7.6.1), and
            # the request still names its Host.
            client = _Upstream()
            try:
                httptools.HttpRequestParser(client).feed_data(data)
            except httptools.HttpParserError:
                pass
            self.assertEqual(upstream.bodies[:1], client.bodies[:1], (fields, body))
            self.assertTrue(upstream.hosts[0], fields)
        self.assertEqual(whole[:12], split[:12])

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.sampled_from([b"Content-Length", b"content-length", b"Transfer-Encoding",
                                     b"Host", b"HOST", b"close", b"keep-alive", b"X-A", b"TE",
                                     b"Upgrade", b"Via"]), min_size=1, max_size=4),
           FIELDS, st.binary(min_size=1, max_size=24), st.booleans())
    def test_framingCannotBeNominated(self, options, fields, body, chunked):
        """
        Whatever Connection nominates, a well-framed request with a body
        reaches the origin as one request with that body and a Host (RFC
        9110 section 7.6.1; RFC 9112 sections 3.2 and 6).
        """
        framing = (b"Transfer-Encoding: chunked\r\n" if chunked
                   else b"Content-Length: %d\r\n" % len(body))
        payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked else body
        head = (b"POST http://10.0.0.1:8080/p HTTP/1.1\r\nHost: h\r\n" + framing
                + b"Connection: " + b", ".join(options) + b"\r\n"
                + b"".join(n + b": " + v + b"\r\n" for n, v in fields
                           if n.lower() not in (b"content-length", b"transfer-encoding",
                                                b"connection", b"host")
                           # A line break in a value ends the field (or the
                           # head) early: that request is not well framed.
                           and b"\r" not in v and b"\n" not in v))
        whole, upstream, wellFramed = _run(head + b"\r\n" + payload, [])
        self.assertTrue(wellFramed)
        if upstream.requests:
            self.assertEqual((upstream.requests, upstream.bodies, upstream.hosts),
                             (1, [body], [True]), whole)
        else:
            self.assertTrue(whole.startswith(b"HTTP/1.1 4"), whole)
