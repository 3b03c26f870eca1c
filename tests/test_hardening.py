"""
Strict on the wire: malformed and smuggling-prone requests are refused
with a status and a closed connection, over real sockets, and nothing of
them (nor anything sent after them) reaches the origin.
"""

from twisted.trial.unittest import TestCase

from cachingproxy.server import ProxySettings

from .helpers import connectClient, listenOrigin, listenScripted, startProxy

#: name -> (request head and body with {target} for the absolute-form
#: target, expected status). Each is followed on the same connection by a
#: request for /smuggled, which must never reach the origin.
CASES = {
    "Content-Length with Transfer-Encoding": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "two different Content-Lengths": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        400),
    "Content-Length list": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 4\r\n\r\nabcd", 400),
    "signed Content-Length": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd", 400),
    "Transfer-Encoding other than chunked": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabcd", 400),
    "chunked not last": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400),
    "chunked twice": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "Transfer-Encoding in HTTP/1.0": (
        b"POST {target} HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "invalid chunk size": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n", 400),
    "chunk size overflow": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ffffffffffffffffff\r\n", 400),
    "invalid chunk extension": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1;\x01\r\nx\r\n0\r\n\r\n", 400),
    "bare LF in chunked body": (
        b"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\n0\n\n", 400),
    "obs-fold": (b"GET {target} HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    "whitespace before colon": (b"GET {target} HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    "bare CR": (b"GET {target} HTTP/1.1\r\nHost: x\rX-B: b\r\n\r\n", 400),
    "NUL in a field": (b"GET {target} HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    "control byte in a field": (b"GET {target} HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", 400),
    "bare LF line ends": (b"GET {target} HTTP/1.1\nHost: x\n\n", 400),
    "space in the target": (b"GET {target}/a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "control byte in the target": (b"GET {target}/a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "empty field name": (b"GET {target} HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", 400),
    "two Host fields": (b"GET {target} HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    "no Host in HTTP/1.1": (b"GET {target} HTTP/1.1\r\nX-A: a\r\n\r\n", 400),
    "HTTP/2.0 request line": (b"GET {target} HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "HTTP/1.2": (b"GET {target} HTTP/1.2\r\nHost: x\r\n\r\n", 400),
}


class RejectionTests(TestCase):
    """
    Each case is refused, the connection closes, and the origin receives
    neither it nor the request sent after it.
    """

    async def _check(self, raw: bytes, status: int):
        origin, originPort = listenOrigin(self)
        _, port, lines = startProxy(self, ProxySettings(viaName=b"test-proxy"))
        target = b"http://127.0.0.1:%d/echo" % originPort
        smuggled = b"GET http://127.0.0.1:%d/smuggled HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        client = await connectClient(port, self)
        client.transport.write(raw.replace(b"{target}", target) + smuggled)
        await client.closed
        statuses = [r.status for r in client.finalResponses()]
        self.assertEqual(statuses, [status], client.raw[:300])
        self.assertEqual([r["path"] for r in origin.requests], [])
        self.assertTrue(any(('" %d ' % status) in line for line in lines), lines)

    for _name, (_raw, _status) in CASES.items():
        def _test(self, raw=_raw, status=_status):
            return self._check(raw, status)

        _test.__name__ = "test_" + "".join(c if c.isalnum() else "_" for c in _name)
        _test.__doc__ = f"{_name}: {_status}, closed, nothing forwarded."
        locals()[_test.__name__] = _test
    del _test, _name, _raw, _status


class ResponseFramingTests(TestCase):
    """
    The same discipline towards origins: a response with broken framing
    is a 502 and the origin connection is dropped.
    """

    async def _check(self, script):
        origin, originPort = listenScripted(self, script)
        _, port, _ = startProxy(self, ProxySettings(viaName=b"test-proxy"))
        client = await connectClient(port, self)
        client.transport.write(
            b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % originPort)
        [response] = await client.waitFor(1)
        self.assertEqual(response.status, 502)
        await origin.whenLost()

    def test_contentLengthAndChunked(self):
        """
        Content-Length together with chunked from an origin: 502.
        """
        return self._check([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"])

    def test_invalidStatusLine(self):
        """
        A garbage status line: 502.
        """
        return self._check([b"HTTP/1.1 2OO OK\r\n\r\n"])

    async def test_invalidChunk(self):
        """
        An invalid chunk size after the head was passed on: the client
        connection closes without a complete response, and the origin
        connection is dropped.
        """
        origin, originPort = listenScripted(
            self, [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"])
        _, port, _ = startProxy(self, ProxySettings(viaName=b"test-proxy"))
        client = await connectClient(port, self)
        client.transport.write(
            b"GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % originPort)
        raw = await client.closed
        self.assertEqual(client.finalResponses(), [])
        self.assertIn(b"hello", raw)
        self.assertFalse(raw.endswith(b"0\r\n\r\n"))
        await origin.whenLost()


class HostDisagreementTests(TestCase):
    """
    An absolute-form target whose authority disagrees with Host cannot
    route two ways: the target wins (RFC 9112 section 3.2.2) and the Host
    sent upstream is the target's.
    """

    async def test_targetWins(self):
        """
        The origin named by the target receives the request, with Host set
        to the target's authority.
        """
        import json

        from .helpers import exchange

        origin, originPort = listenOrigin(self)
        _, port, _ = startProxy(self, ProxySettings(viaName=b"test-proxy"))
        _, [response] = await exchange(
            port, self, b"GET http://127.0.0.1:%d/headers HTTP/1.1\r\nHost: evil.example\r\n\r\n"
            % originPort)
        received = dict((k.lower(), v) for k, v in json.loads(response.body))
        self.assertEqual(received["host"], "127.0.0.1:%d" % originPort)
