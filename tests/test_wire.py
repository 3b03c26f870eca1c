"""
Tests for L{cachingproxy.http.wire}: message heads as bytes.
"""

from twisted.trial.unittest import SynchronousTestCase

from cachingproxy.http import wire
from cachingproxy.http.headers import Headers
from cachingproxy.http.message import RequestHead, ResponseHead

FIELDS = [
    (b"content-type", b"Content-Type", b"text/plain"),
    (b"x-two", b"X-Two", b"a"),
    (b"x-two", b"x-two", b"b"),
]


class FieldLinesTests(SynchronousTestCase):
    """
    L{wire.fieldLines}.
    """

    def test_lines(self):
        """
        Each field is C{Name: value} and CRLF, in order, with names as sent
        and repeats kept; nothing ends the block.
        """
        self.assertEqual(
            wire.fieldLines(FIELDS),
            b"Content-Type: text/plain\r\nX-Two: a\r\nx-two: b\r\n",
        )
        self.assertEqual(wire.fieldLines([]), b"")


class ResponseHeadTests(SynchronousTestCase):
    """
    L{wire.responseHead}, L{wire.headPrefix} and L{wire.finishHead}.
    """

    def test_head(self):
        """
        The HTTP/1.1 status line with the usual reason phrase, the field
        lines and the blank line.
        """
        self.assertEqual(
            wire.responseHead(404, b"", FIELDS[:1]),
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\n",
        )

    def test_reason(self):
        """
        A reason phrase given is kept; a status without a known phrase is
        C{Unknown}.
        """
        self.assertEqual(wire.responseHead(200, b"Fine", ()), b"HTTP/1.1 200 Fine\r\n\r\n")
        self.assertEqual(wire.responseHead(299, b"", ()), b"HTTP/1.1 299 Unknown\r\n\r\n")

    def test_everyStatusTheProxySays(self):
        """
        Every status the proxy's own errors carry has its phrase.
        """
        from cachingproxy import access, errors

        classes = [getattr(errors, name) for name in errors.__all__]
        classes += [access.ProxyAuthenticationRequired, access.TooManyAttempts]
        for cls in classes:
            status = getattr(cls, "status", None)
            if status is not None:
                self.assertIn(status, wire.REASONS, cls)

    def test_firstBody(self):
        """
        Body bytes given follow the blank line, in the same bytes.
        """
        self.assertEqual(
            wire.responseHead(200, b"", [(b"content-length", b"Content-Length", b"2")], b"ok"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )

    def test_prefixThenFinish(self):
        """
        A prefix finished with more fields and a body is the head of all
        the fields followed by the body.
        """
        tail = [(b"age", b"Age", b"3")]
        prefix = wire.headPrefix(200, b"", FIELDS)
        self.assertEqual(prefix, b"HTTP/1.1 200 OK\r\n" + wire.fieldLines(FIELDS))
        self.assertEqual(
            wire.finishHead(prefix, tail, b"body"),
            wire.responseHead(200, b"", FIELDS + tail, b"body"),
        )

    def test_interimAndTunnel(self):
        """
        The fixed heads: 100 Continue and the CONNECT answer.
        """
        self.assertEqual(wire.CONTINUE, b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(wire.CONNECTION_ESTABLISHED,
                         b"HTTP/1.1 200 Connection Established\r\n\r\n")


class RequestHeadTests(SynchronousTestCase):
    """
    L{wire.requestHead}.
    """

    def test_head(self):
        """
        The request line with the version given, the field lines and the
        blank line.
        """
        self.assertEqual(
            wire.requestHead(b"GET", b"/x?y", (1, 0), [(b"host", b"Host", b"a")]),
            b"GET /x?y HTTP/1.0\r\nHost: a\r\n\r\n",
        )


class ModelTests(SynchronousTestCase):
    """
    The message model writes itself through L{wire}.
    """

    def test_same(self):
        """
        L{Headers.toWire}, L{ResponseHead.toWire} and L{RequestHead.toWire}
        give what L{wire} gives for the same fields; a response head is
        always HTTP/1.1, whatever version it was received as.
        """
        headers = Headers([(b"Content-Type", b"text/plain"), (b"X-Two", b"a")])
        fields = headers.lowered()
        self.assertEqual(headers.toWire(), wire.fieldLines(fields))
        self.assertEqual(
            ResponseHead(503, version=(1, 0), headers=headers).toWire(),
            wire.responseHead(503, b"", fields),
        )
        self.assertEqual(
            RequestHead(b"POST", b"/", (1, 1), headers).toWire(),
            wire.requestHead(b"POST", b"/", (1, 1), fields),
        )
