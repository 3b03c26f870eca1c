"""
The message model: header fields, list parsing, HTTP dates.
"""

from twisted.trial.unittest import SynchronousTestCase

from cachingproxy.http import (
    Headers,
    RequestHead,
    ResponseHead,
    formatHTTPDate,
    parseHTTPDate,
    splitList,
)


class HeadersTests(SynchronousTestCase):
    """
    L{Headers} keeps wire order and repeats, and looks names up without
    regard to case.
    """

    def test_caseInsensitive(self):
        """
        Lookups ignore case; the received spelling is kept on the wire.
        """
        h = Headers([(b"Content-Type", b"text/plain")])
        self.assertEqual(h.get(b"content-type"), b"text/plain")
        self.assertIn(b"CONTENT-TYPE", h)
        self.assertEqual(h.toWire(), b"Content-Type: text/plain\r\n")

    def test_repeatsAndOrder(self):
        """
        Repeated fields stay separate and in order; set() replaces them all
        at the first one's place; remove() drops them all.
        """
        h = Headers([(b"A", b"1"), (b"B", b"2"), (b"a", b"3")])
        self.assertEqual(h.getAll(b"a"), [b"1", b"3"])
        self.assertEqual(h.getCombined(b"a"), b"1, 3")
        h.set(b"A", b"9")
        self.assertEqual(list(h.items()), [(b"A", b"9"), (b"B", b"2")])
        self.assertTrue(h.remove(b"b"))
        self.assertFalse(h.remove(b"b"))
        self.assertEqual(list(h.items()), [(b"A", b"9")])

    def test_listsAndTokens(self):
        """
        List-based fields split across lines and commas, ignoring empty
        members; hasToken compares without case.
        """
        h = Headers([(b"Connection", b"keep-alive, , X-Foo"), (b"connection", b"Close")])
        self.assertEqual(h.getList(b"connection"), [b"keep-alive", b"X-Foo", b"Close"])
        self.assertTrue(h.hasToken(b"Connection", b"close"))
        self.assertFalse(h.hasToken(b"Connection", b"upgrade"))

    def test_copyIsIndependent(self):
        """
        A copy does not change when the original does.
        """
        h = Headers([(b"A", b"1")])
        c = h.copy()
        h.add(b"B", b"2")
        self.assertEqual(len(c), 1)
        self.assertEqual(len(h), 2)


class SplitListTests(SynchronousTestCase):
    """
    L{splitList} follows RFC 9110 section 5.6.1.
    """

    def test_quotedCommas(self):
        """
        Commas inside quoted strings (with escapes) do not split.
        """
        self.assertEqual(
            splitList(b'no-cache="a, b", max-age=5, x="q\\"," , ,y'),
            [b'no-cache="a, b"', b"max-age=5", b'x="q\\","', b"y"],
        )

    def test_plain(self):
        """
        Whitespace around members is trimmed.
        """
        self.assertEqual(splitList(b" gzip ,\tbr"), [b"gzip", b"br"])


class DateTests(SynchronousTestCase):
    """
    HTTP-date parsing and formatting (RFC 9110 section 5.6.7).
    """

    def test_threeFormats(self):
        """
        IMF-fixdate, RFC 850 and asctime forms all parse to the same time.
        """
        expected = 784111777.0
        for text in [
            b"Sun, 06 Nov 1994 08:49:37 GMT",
            b"Sunday, 06-Nov-94 08:49:37 GMT",
            b"Sun Nov  6 08:49:37 1994",
        ]:
            self.assertEqual(parseHTTPDate(text), expected, text)

    def test_invalid(self):
        """
        Garbage, empty values and non-ASCII bytes are C{None}.
        """
        for text in [None, b"", b"yesterday", b"\xff\xfe", b"0"]:
            self.assertIsNone(parseHTTPDate(text), text)

    def test_format(self):
        """
        formatHTTPDate writes IMF-fixdate, which parses back.
        """
        self.assertEqual(formatHTTPDate(784111777), b"Sun, 06 Nov 1994 08:49:37 GMT")
        self.assertEqual(parseHTTPDate(formatHTTPDate(1e9)), 1e9)


class HeadTests(SynchronousTestCase):
    """
    Request and response heads serialise as HTTP/1.1.
    """

    def test_requestWire(self):
        """
        A request head is its request line, its fields and a blank line.
        """
        head = RequestHead(b"GET", b"/x", (1, 1), Headers([(b"Host", b"a")]))
        self.assertEqual(head.toWire(), b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")

    def test_responseWire(self):
        """
        A response head without a reason phrase gets the standard one.
        """
        head = ResponseHead(404, b"", (1, 0), Headers([(b"A", b"b")]))
        self.assertEqual(head.toWire(), b"HTTP/1.1 404 Not Found\r\nA: b\r\n\r\n")
