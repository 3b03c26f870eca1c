"""
Incomplete responses in the cache, through real loopback sockets (RFC 9111
sections 3.3 and 3.4, RFC 9110 section 14): an origin that honours Range,
the caching proxy in front of it with a memory store and with a disk
store, a raw client.
"""

import hashlib
import random
import re

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from cachingproxy.cache.disk import DiskStore
from cachingproxy.http.headers import formatHTTPDate

from .helpers import connectClient, listenOrigin, temporaryPath, until
from .test_cache_end_to_end import CacheTestCase

SIZE = 1000

_RANGE = re.compile(rb"bytes=(\d*)-(\d*)\Z")


class RangeOrigin(Resource):
    """
    An origin with one representation of L{SIZE} random bytes, the
    Cache-Control L{cacheControl} (C{max-age=60}) and the ETag L{etag}. It answers a single range
    (C{first-last}, C{first-} or C{-suffix}) with a 206, If-None-Match
    with a 304, and, while L{cutAfter} is set, a plain GET with a
    Content-Length of the whole body and only that many bytes before it
    closes the connection.

    @ivar requests: the request fields of each request, lower-case names.
    """

    isLeaf = True

    def __init__(self, clock, seed: int = 1) -> None:
        super().__init__()
        self.clock = clock
        self.body = random.Random(seed).randbytes(SIZE)
        self.etag = b'"v1"'
        self.cutAfter = None
        self.cacheControl = b"max-age=60"
        self.requests = []

    def render(self, request):
        fields = dict((k.lower(), v[0]) for k, v in request.requestHeaders.getAllRawHeaders())
        self.requests.append(fields)
        body = self.body
        request.setHeader(b"Date", formatHTTPDate(self.clock.seconds()))
        request.setHeader(b"Cache-Control", self.cacheControl)
        request.setHeader(b"ETag", self.etag)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        if fields.get(b"if-none-match") == self.etag:
            request.setResponseCode(304)
            return b""
        match = _RANGE.match(fields.get(b"range", b""))
        if match is not None:
            first, last = match.groups()
            if not first:
                first, last = len(body) - int(last), len(body) - 1
            else:
                first = int(first)
                last = min(int(last), len(body) - 1) if last else len(body) - 1
            request.setResponseCode(206)
            request.setHeader(b"Content-Range", b"bytes %d-%d/%d" % (first, last, len(body)))
            return body[first:last + 1]
        if self.cutAfter is not None:
            request.setHeader(b"Content-Length", b"%d" % len(body))
            request.write(body[:self.cutAfter])
            request.channel.transport.loseConnection()
            return NOT_DONE_YET
        return body


class PartialContentTestsMixin:
    """
    The scenarios, for any store (see the subclasses).
    """

    def setUp(self):
        super().setUp()
        self.origin = RangeOrigin(self.clock)
        _, self.originPort = listenOrigin(self, self.origin)

    def ranged(self, spec: bytes, path: bytes = b"/file"):
        return self.get(path, b"Range: bytes=%s\r\n" % spec)

    def assertPart(self, response, first: int, last: int, xcache: bytes) -> None:
        """
        C{response} is the 206 for C{first}-C{last} of the origin's body
        (RFC 9110 section 14.4), with the X-Cache given.
        """
        self.assertEqual(response.status, 206)
        self.assertEqual(response.header(b"content-range"),
                         b"bytes %d-%d/%d" % (first, last, SIZE))
        self.assertEqual(response.body, self.origin.body[first:last + 1])
        self.assertEqual(response.header(b"x-cache"), xcache)

    async def test_rangeFromStoredPart(self):
        """
        RFC 9111 section 3.3: a 206 with a strong ETag is stored as an
        incomplete response; a range within it is a hit with a correct 206
        and Content-Range (RFC 9110 section 14.4), the origin asked once.
        """
        first = await self.ranged(b"0-99")
        self.assertPart(first, 0, 99, b"MISS")
        self.assertIn(b"stored", first.header(b"cache-status"))
        second = await self.ranged(b"10-20")
        self.assertPart(second, 10, 20, b"HIT")
        self.assertTrue(second.header(b"cache-status").startswith(b"cachingproxy; hit"))
        self.assertIsNotNone(second.header(b"age"))
        self.assertEqual(len(self.origin.requests), 1)

    async def test_openAndSuffixRanges(self):
        """
        RFC 9110 section 14.1.2: open (C{first-}) and suffix (C{-n}) ranges
        are resolved against the complete length the stored part knows of;
        a range reaching outside the stored part goes to the origin with
        C{fwd=partial} (RFC 9211 section 2.2).
        """
        await self.ranged(b"900-999")
        suffix = await self.ranged(b"-50")
        self.assertPart(suffix, 950, 999, b"HIT")
        tail = await self.ranged(b"950-")
        self.assertPart(tail, 950, 999, b"HIT")
        outside = await self.ranged(b"800-949")
        self.assertPart(outside, 800, 949, b"MISS")
        self.assertIn(b"fwd=partial", outside.header(b"cache-status"))
        self.assertEqual(self.origin.requests[-1].get(b"range"), b"bytes=800-949")
        self.assertEqual(len(self.origin.requests), 2)

    async def test_partsCombinedIntoComplete(self):
        """
        RFC 9111 section 3.4: two 206s with the same strong ETag that
        together cover the representation become a complete stored
        response: a plain GET is then a hit with every byte right.
        """
        await self.ranged(b"0-499")
        await self.ranged(b"500-999")
        whole = await self.get(b"/file")
        self.assertEqual(whole.status, 200)
        self.assertEqual(whole.header(b"x-cache"), b"HIT")
        self.assertEqual(hashlib.sha256(whole.body).hexdigest(),
                         hashlib.sha256(self.origin.body).hexdigest())
        self.assertEqual(whole.header(b"content-length"), b"%d" % SIZE)
        self.assertIsNone(whole.header(b"content-range"))
        self.assertEqual(len(self.origin.requests), 2)

    async def test_combinedPartsAnswerAcross(self):
        """
        RFC 9111 section 3.4: combined parts that touch answer a range
        spanning both, in one piece, and parts apart stay apart.
        """
        await self.ranged(b"100-199")
        await self.ranged(b"400-499")
        await self.ranged(b"200-299")
        across = await self.ranged(b"150-250")
        self.assertPart(across, 150, 250, b"HIT")
        gap = await self.ranged(b"250-450")
        self.assertPart(gap, 250, 450, b"MISS")
        self.assertEqual(len(self.origin.requests), 4)
        after = await self.ranged(b"120-480")
        self.assertPart(after, 120, 480, b"HIT")
        self.assertEqual(len(self.origin.requests), 4)

    async def test_truncatedPrefixStored(self):
        """
        RFC 9111 section 3.3: a 200 the origin cuts short after 300 of 1000
        declared bytes reaches the client as a break (no false end), and
        the 300 bytes are kept as an incomplete response: a range within
        them is a hit, a plain GET is a miss.
        """
        self.origin.cutAfter = 300
        client = await connectClient(self.port, self)
        client.transport.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % self.url(b"/file"))
        await client.closed
        self.assertEqual(client.finalResponses(), [])
        self.assertIn(self.origin.body[:300], client.raw)
        self.origin.cutAfter = None
        part = await self.ranged(b"0-99")
        self.assertPart(part, 0, 99, b"HIT")
        self.assertEqual(len(self.origin.requests), 1)
        outside = await self.ranged(b"250-349")
        self.assertPart(outside, 250, 349, b"MISS")
        whole = await self.get(b"/file")
        self.assertEqual(whole.status, 200)
        self.assertEqual(whole.header(b"x-cache"), b"MISS")
        self.assertEqual(whole.body, self.origin.body)
        self.assertEqual(len(self.origin.requests), 3)

    async def test_weakETagNotStored(self):
        """
        RFC 9111 section 3.3 and RFC 9110 section 8.8.1: a 206 with only a
        weak validator is not stored.
        """
        self.origin.etag = b'W/"v1"'
        first = await self.ranged(b"0-99")
        self.assertPart(first, 0, 99, b"MISS")
        self.assertNotIn(b"stored", first.header(b"cache-status"))
        second = await self.ranged(b"0-99")
        self.assertPart(second, 0, 99, b"MISS")
        self.assertEqual(len(self.origin.requests), 2)

    async def test_otherETagReplacesParts(self):
        """
        RFC 9111 section 3.4: a 206 whose strong validator differs from the
        stored part's is not combined with it; it replaces it.
        """
        await self.ranged(b"0-499")
        self.origin.body = random.Random(2).randbytes(SIZE)
        self.origin.etag = b'"v2"'
        await self.ranged(b"500-999")
        old = await self.ranged(b"0-99")
        self.assertPart(old, 0, 99, b"MISS")
        self.assertEqual(old.header(b"etag"), b'"v2"')
        new = await self.ranged(b"600-700")
        self.assertPart(new, 600, 700, b"HIT")
        self.assertEqual(new.header(b"etag"), b'"v2"')
        whole = await self.get(b"/file")
        self.assertEqual(whole.header(b"x-cache"), b"MISS")
        self.assertEqual(whole.body, self.origin.body)

    async def test_stalePartRevalidated(self):
        """
        RFC 9111 section 4.3: a stale incomplete response is validated with
        its ETag, asking for the range alone; a 304 makes it serve the
        range again.
        """
        await self.ranged(b"0-99")
        self.clock.advance(61)
        again = await self.ranged(b"10-20")
        self.assertPart(again, 10, 20, b"REVALIDATED")
        validation = self.origin.requests[-1]
        self.assertEqual(validation.get(b"if-none-match"), b'"v1"')
        self.assertEqual(validation.get(b"range"), b"bytes=10-20")
        self.assertEqual(len(self.origin.requests), 2)

    async def test_stalePartRefreshedInBackground(self):
        """
        RFC 5861 section 3 with RFC 9111 sections 3.3 and 3.4: within
        stale-while-revalidate the stale part answers at once, and the
        background validation asks for the range alone; the changed
        representation's new part replaces the old one.
        """
        self.origin.cacheControl = b"max-age=60, stale-while-revalidate=600"
        await self.ranged(b"0-99")
        self.clock.advance(61)
        oldBody = self.origin.body
        self.origin.body = random.Random(2).randbytes(SIZE)
        self.origin.etag = b'"v2"'
        stale = await self.ranged(b"10-20")
        self.assertEqual((stale.status, stale.header(b"x-cache")), (206, b"STALE"))
        self.assertEqual(stale.body, oldBody[10:21])
        await until(lambda: len(self.origin.requests) == 2 and not self.cache._refreshing)
        refresh = self.origin.requests[-1]
        self.assertEqual(refresh.get(b"if-none-match"), b'"v1"')
        self.assertEqual(refresh.get(b"range"), b"bytes=10-20")
        fresh = await self.ranged(b"12-18")
        self.assertPart(fresh, 12, 18, b"HIT")
        self.assertEqual(fresh.header(b"etag"), b'"v2"')
        self.assertEqual(len(self.origin.requests), 2)

    async def test_severalRangesAndWholeAnswers(self):
        """
        RFC 9111 section 3.3: several ranges are not answered from an
        incomplete response but go to the origin; its whole 200 (this
        origin ignores several ranges, as RFC 9110 section 14.2 allows) is
        stored as a complete response, which then answers plain GETs and
        ranges.
        """
        await self.ranged(b"0-99")
        several = await self.get(b"/file", b"Range: bytes=0-1,5-6\r\n")
        self.assertEqual((several.status, several.header(b"x-cache")), (200, b"MISS"))
        self.assertIn(b"fwd=partial", several.header(b"cache-status"))
        self.assertEqual(self.origin.requests[-1].get(b"range"), b"bytes=0-1,5-6")
        whole = await self.get(b"/file")
        self.assertEqual((whole.status, whole.header(b"x-cache")), (200, b"HIT"))
        self.assertEqual(whole.body, self.origin.body)
        ranged = await self.ranged(b"300-310")
        self.assertPart(ranged, 300, 310, b"HIT")
        self.assertEqual(len(self.origin.requests), 2)


class MemoryStorePartialTests(PartialContentTestsMixin, CacheTestCase):
    """
    Incomplete responses with the memory store.
    """


class DiskStorePartialTests(PartialContentTestsMixin, CacheTestCase):
    """
    Incomplete responses with the disk store (files renamed into place).
    """

    def setUp(self):
        super().setUp()
        store = DiskStore(temporaryPath(self, "cache"))
        self.addCleanup(store.close)
        self.cache.store = store
