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

    def test_firstOfTwo(self):
        """
        L{Headers.firstOfTwo} gives the first value of each of two fields
        (by lowercase name), or C{None} for one that is not there.
        """
        h = Headers([(b"Host", b"h"), (b"User-Agent", b"one"), (b"Referer", b"r1"),
                     (b"user-agent", b"two"), (b"REFERER", b"r2")])
        self.assertEqual(h.firstOfTwo(b"referer", b"user-agent"), (b"r1", b"one"))
        self.assertEqual(h.firstOfTwo(b"user-agent", b"referer"), (b"one", b"r1"))
        self.assertEqual(h.firstOfTwo(b"referer", b"accept"), (b"r1", None))
        self.assertEqual(h.firstOfTwo(b"accept", b"host"), (None, b"h"))
        self.assertEqual(Headers().firstOfTwo(b"referer", b"user-agent"), (None, None))

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


#: 1994-11-06 08:49:37 GMT, the example of RFC 9110 section 5.6.7.
EXAMPLE = 784111777.0

#: The time the RFC 850 rows are read at (2025-01-01 00:00:00 GMT).
NOW = 1735689600.0

#: C{(what the row checks, field value, seconds since the epoch or None)}
#: for L{DateTests.test_table}: one row per form, valid or not.
DATE_TABLE = [
    # RFC 9110 section 5.6.7: the three forms.
    ("IMF-fixdate", b"Sun, 06 Nov 1994 08:49:37 GMT", EXAMPLE),
    ("RFC 850", b"Sunday, 06-Nov-94 08:49:37 GMT", EXAMPLE),
    ("asctime, one-digit day padded with a space",
     b"Sun Nov  6 08:49:37 1994", EXAMPLE),
    ("asctime, two-digit day", b"Wed Nov 16 08:49:37 1994",
     EXAMPLE + 10 * 86400),
    ("asctime, one-digit day with a zero", b"Sun Nov 06 08:49:37 1994",
     EXAMPLE),
    ("whitespace around the value is not part of it",
     b" \tSun, 06 Nov 1994 08:49:37 GMT\t ", EXAMPLE),
    ("a leap second", b"Sun, 06 Nov 1994 23:59:60 GMT",
     EXAMPLE - 8 * 3600 - 49 * 60 - 37 + 86400),
    ("29 February of a leap year", b"Thu, 29 Feb 1996 00:00:00 GMT",
     825552000.0),
    ("the epoch", b"Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    # RFC 9110 section 5.6.7: a two-digit year more than 50 years in the
    # future is in the past century.
    ("RFC 850 year 75 is 2075, 50 years ahead",
     b"Tuesday, 01-Jan-75 00:00:00 GMT", 3313526400.0),
    ("RFC 850 year 76 is 1976, 2076 being 51 years ahead",
     b"Thursday, 01-Jan-76 00:00:00 GMT", 189302400.0),
    ("RFC 850 year 25 is this year", b"Wednesday, 01-Jan-25 00:00:00 GMT",
     NOW),
    # Zones other than GMT.
    ("numeric zone", b"Sun, 06 Nov 1994 08:49:37 +0000", None),
    ("UTC", b"Sun, 06 Nov 1994 08:49:37 UTC", None),
    ("PST", b"Sun, 06 Nov 1994 08:49:37 PST", None),
    ("lower-case gmt", b"Sun, 06 Nov 1994 08:49:37 gmt", None),
    ("no zone", b"Sun, 06 Nov 1994 08:49:37", None),
    ("RFC 850 with a numeric zone", b"Sunday, 06-Nov-94 08:49:37 +0000",
     None),
    ("asctime with a zone", b"Sun Nov  6 08:49:37 1994 GMT", None),
    # Shapes.
    ("IMF-fixdate with a two-digit year", b"Sun, 06 Nov 94 08:49:37 GMT",
     None),
    ("RFC 850 with a four-digit year", b"Sunday, 06-Nov-1994 08:49:37 GMT",
     None),
    ("missing comma", b"Sun 06 Nov 1994 08:49:37 GMT", None),
    ("missing comma in RFC 850", b"Sunday 06-Nov-94 08:49:37 GMT", None),
    ("doubled space", b"Sun, 06 Nov  1994 08:49:37 GMT", None),
    ("doubled space after the comma", b"Sun,  06 Nov 1994 08:49:37 GMT",
     None),
    ("asctime, one-digit day without padding", b"Sun Nov 6 08:49:37 1994",
     None),
    ("asctime, padding and a two-digit day", b"Sun Nov  16 08:49:37 1994",
     None),
    ("tab for a space", b"Sun,\t06 Nov 1994 08:49:37 GMT", None),
    ("dashes in IMF-fixdate", b"Sun, 06-Nov-1994 08:49:37 GMT", None),
    ("spaces in RFC 850", b"Sunday, 06 Nov 94 08:49:37 GMT", None),
    ("dots in the time", b"Sun, 06 Nov 1994 08.49.37 GMT", None),
    ("one-digit hour", b"Sun, 06 Nov 1994 8:49:37 GMT", None),
    ("one-digit day", b"Sun, 6 Nov 1994 08:49:37 GMT", None),
    ("fractional seconds", b"Sun, 06 Nov 1994 08:49:37.5 GMT", None),
    ("no seconds", b"Sun, 06 Nov 1994 08:49 GMT", None),
    ("ISO 8601", b"1994-11-06T08:49:37Z", None),
    ("trailing text", b"Sun, 06 Nov 1994 08:49:37 GMT x", None),
    ("two dates", b"Sun, 06 Nov 1994 08:49:37 GMT, "
     b"Sun, 06 Nov 1994 08:49:37 GMT", None),
    # Names.
    ("long day name in IMF-fixdate", b"Sunday, 06 Nov 1994 08:49:37 GMT",
     None),
    ("short day name in RFC 850", b"Sun, 06-Nov-94 08:49:37 GMT", None),
    ("unknown day name", b"Sno, 06 Nov 1994 08:49:37 GMT", None),
    ("day name in lower case", b"sun, 06 Nov 1994 08:49:37 GMT", None),
    ("long month name", b"Sun, 06 November 1994 08:49:37 GMT", None),
    ("month name in upper case", b"Sun, 06 NOV 1994 08:49:37 GMT", None),
    ("month as a number", b"Sun, 06 11 1994 08:49:37 GMT", None),
    # Ranges.
    ("hour 24", b"Sun, 06 Nov 1994 24:00:00 GMT", None),
    ("minute 60", b"Sun, 06 Nov 1994 08:60:37 GMT", None),
    ("second 61", b"Sun, 06 Nov 1994 08:49:61 GMT", None),
    ("day 00", b"Sun, 00 Nov 1994 08:49:37 GMT", None),
    ("day 32", b"Sun, 32 Oct 1994 08:49:37 GMT", None),
    ("31 November", b"Sun, 31 Nov 1994 08:49:37 GMT", None),
    ("29 February of a common year", b"Tue, 29 Feb 1994 08:49:37 GMT", None),
    ("year 0000", b"Sat, 01 Jan 0000 00:00:00 GMT", None),
    ("asctime day 32", b"Sun Nov 32 08:49:37 1994", None),
    ("RFC 850 hour 25", b"Sunday, 06-Nov-94 25:49:37 GMT", None),
    # Not dates at all.
    ("absent", None, None),
    ("empty", b"", None),
    ("Expires: 0", b"0", None),
    ("a negative number", b"-1", None),
    ("a word", b"yesterday", None),
    ("not ASCII", b"\xff\xfe", None),
    ("non-ASCII in place of a space",
     b"Sun,\xa006 Nov 1994 08:49:37 GMT", None),
]


class DateTests(SynchronousTestCase):
    """
    HTTP-date parsing and formatting (RFC 9110 section 5.6.7).
    """

    def test_table(self):
        """
        RFC 9110 section 5.6.7: IMF-fixdate, RFC 850 and asctime dates parse
        exactly as the grammar has them (an RFC 850 year more than 50 years
        ahead being in the past century); every other form is invalid.
        """
        wrong = [
            (what, text, parseHTTPDate(text, now=NOW), expected)
            for what, text, expected in DATE_TABLE
            if parseHTTPDate(text, now=NOW) != expected
        ]
        self.assertEqual(wrong, [])

    def test_remembered(self):
        """
        Without C{now}, each form parses to the same result as with it,
        and again from the remembered result (RFC 9110 section 5.6.7).
        """
        for what, text, expected in DATE_TABLE:
            if not what.startswith("RFC 850 year"):
                self.assertEqual(parseHTTPDate(text), expected, what)
                self.assertEqual(parseHTTPDate(text), expected, what)

    def test_rfc850Century(self):
        """
        RFC 9110 section 5.6.7: the century of an RFC 850 year follows the
        clock, in the window that ends 50 years ahead.
        """
        value = b"Thursday, 01-Jan-70 00:00:00 GMT"
        self.assertEqual(parseHTTPDate(value, now=EXAMPLE), 0.0)
        in2070 = 3155760000.0
        self.assertEqual(parseHTTPDate(value, now=NOW), in2070)
        # Read in 2070, "05" is 2105 (35 years ahead), not 2005 (65 ago).
        in2105 = 4260211200.0
        self.assertEqual(
            parseHTTPDate(b"Thursday, 01-Jan-05 00:00:00 GMT", now=in2070),
            in2105)

    def test_format(self):
        """
        RFC 9110 section 5.6.7: formatHTTPDate writes IMF-fixdate, which
        parses back.
        """
        self.assertEqual(formatHTTPDate(EXAMPLE), b"Sun, 06 Nov 1994 08:49:37 GMT")
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
