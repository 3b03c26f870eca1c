"""
Compression on the fly: negotiation by weight, what is never touched, and
how it sits with the cache.
"""

import gzip
import time

import brotli
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from cachingproxy.cache.memory import MemoryStore
from cachingproxy.compress import CompressionSettings, negotiate, weakenETag
from cachingproxy.cache.layer import CacheLayer
from cachingproxy.proxy.settings import ProxySettings
from cachingproxy.proxy.upstream import Origin

from .helpers import exchange, listenOrigin, startProxy

TEXT = b"".join(b"line %d of some compressible text\n" % i for i in range(3000))


class NegotiationTests(SynchronousTestCase):
    """
    Accept-Encoding weights (RFC 9110 section 12.5.3).
    """

    def test_weights(self):
        """
        The highest weight above zero wins; ties go to the preferred
        coding; q=0 refuses; * stands for the codings not named.
        """
        codings = ("br", "gzip")
        cases = [
            (None, None),
            (b"", None),
            (b"gzip", "gzip"),
            (b"gzip;q=0", None),
            (b"gzip, br", "br"),
            (b"br;q=0.5, gzip", "gzip"),
            (b"gzip;q=0.8, br;q=0.9", "br"),
            (b"*", "br"),
            (b"*;q=0, gzip", "gzip"),
            (b"identity", None),
            (b"x-gzip", "gzip"),
            (b"GZIP ; Q=1.0", "gzip"),
            (b"gzip;q=2", None),
        ]
        for header, expected in cases:
            self.assertEqual(negotiate(header, codings), expected, header)

    def test_weakETag(self):
        """
        A strong ETag becomes weak; a weak one stays (RFC 9110 8.8.1).
        """
        self.assertEqual(weakenETag(b'"abc"'), b'W/"abc"')
        self.assertEqual(weakenETag(b'W/"abc"'), b'W/"abc"')

    def test_types(self):
        """
        text/* and listed types compress; others do not.
        """
        settings = CompressionSettings()
        self.assertTrue(settings.compressibleType(b"text/html; charset=utf-8"))
        self.assertTrue(settings.compressibleType(b"application/json"))
        self.assertFalse(settings.compressibleType(b"image/png"))
        self.assertFalse(settings.compressibleType(None))


class _Text(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.count = 0

    def render(self, request):
        self.count += 1
        path = request.path
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"ETag", b'"text-v1"')
        if path == b"/no-transform":
            request.setHeader(b"Cache-Control", b"max-age=60, no-transform")
        else:
            request.setHeader(b"Cache-Control", b"max-age=60")
        if path == b"/small":
            return b"tiny"
        if path == b"/encoded":
            request.setHeader(b"Content-Encoding", b"gzip")
            return gzip.compress(TEXT)
        if path == b"/big":
            return TEXT * 20
        return TEXT


class CompressionTests(TestCase):
    """
    Through real sockets, in reverse mode with a cache.
    """

    def setUp(self):
        self.origin = _Text()
        _, originPort = listenOrigin(self, self.origin)
        self.factory, self.port, _ = startProxy(self, ProxySettings(
            viaName=b"p", upstream=Origin(b"http", "127.0.0.1", originPort),
            compression=CompressionSettings()))
        clock = Clock()
        clock.advance(time.time())
        self.store = MemoryStore(64 << 20, 16 << 20)
        self.factory.cache = CacheLayer(self.store, clock, self.factory.pool)

    async def get(self, path=b"/text", headers=b"", method=b"GET"):
        _, [response] = await exchange(
            self.port, self, b"%s %s HTTP/1.1\r\nHost: site\r\n%s\r\n" % (method, path, headers),
            headResponses=[0] if method == b"HEAD" else ())
        return response

    async def test_gzip(self):
        """
        A client accepting gzip gets a gzip body that inflates to the
        original, Vary: Accept-Encoding and a weak ETag.
        """
        response = await self.get(headers=b"Accept-Encoding: gzip\r\n")
        self.assertEqual(response.header(b"content-encoding"), b"gzip")
        self.assertEqual(gzip.decompress(response.body), TEXT)
        self.assertIn(b"Accept-Encoding", response.header(b"vary"))
        self.assertEqual(response.header(b"etag"), b'W/"text-v1"')
        self.assertLess(len(response.body), len(TEXT) // 3)

    async def test_brotliByWeight(self):
        """
        br is chosen when it weighs more; q=0 refuses a coding.
        """
        response = await self.get(headers=b"Accept-Encoding: gzip;q=0.5, br\r\n")
        self.assertEqual(response.header(b"content-encoding"), b"br")
        self.assertEqual(brotli.decompress(response.body), TEXT)
        refused = await self.get(headers=b"Accept-Encoding: gzip;q=0, br;q=0\r\n")
        self.assertIsNone(refused.header(b"content-encoding"))
        self.assertEqual(refused.body, TEXT)
        self.assertIn(b"Accept-Encoding", refused.header(b"vary"))

    async def test_identityAfterGzipFromCache(self):
        """
        After a gzip client filled the cache, a client without gzip gets
        identity bytes from the cache, and a later gzip client a gzip hit
        (from the hot path, compressed once).
        """
        first = await self.get(headers=b"Accept-Encoding: gzip\r\n")
        plain = await self.get()
        again = await self.get(headers=b"Accept-Encoding: gzip\r\n")
        third = await self.get(headers=b"Accept-Encoding: gzip\r\n")
        self.assertEqual(first.header(b"x-cache"), b"MISS")
        self.assertEqual(plain.header(b"x-cache"), b"HIT")
        self.assertIsNone(plain.header(b"content-encoding"))
        self.assertEqual(plain.body, TEXT)
        self.assertEqual(plain.header(b"etag"), b'"text-v1"')
        for hit in (again, third):
            self.assertEqual(hit.header(b"x-cache"), b"HIT")
            self.assertEqual(gzip.decompress(hit.body), TEXT)
            self.assertEqual(hit.header(b"content-encoding"), b"gzip")
        self.assertEqual(self.origin.count, 1)
        [entry] = self.store.entries(b"http://127.0.0.1:%d/text" % self.factory.settings.upstream.port)
        self.assertIsNone(entry.responseHeaders.get(b"content-encoding"))

    async def test_conditionalOnCompressed(self):
        """
        The weak ETag of the compressed variant validates: 304 from the
        cache.
        """
        first = await self.get(headers=b"Accept-Encoding: gzip\r\n")
        response = await self.get(
            headers=b"Accept-Encoding: gzip\r\nIf-None-Match: " + first.header(b"etag") + b"\r\n")
        self.assertEqual(response.status, 304)

    async def test_untouched(self):
        """
        no-transform, an already encoded body, a small body, a range and a
        HEAD request are never compressed.
        """
        accept = b"Accept-Encoding: gzip, br\r\n"
        noTransform = await self.get(b"/no-transform", accept)
        self.assertIsNone(noTransform.header(b"content-encoding"))
        self.assertEqual(noTransform.body, TEXT)
        encoded = await self.get(b"/encoded", accept)
        self.assertEqual(encoded.header(b"content-encoding"), b"gzip")
        self.assertEqual(gzip.decompress(encoded.body), TEXT)
        small = await self.get(b"/small", accept)
        self.assertIsNone(small.header(b"content-encoding"))
        await self.get(b"/text", accept)
        ranged = await self.get(b"/text", accept + b"Range: bytes=0-9\r\n")
        self.assertEqual((ranged.status, ranged.body), (206, TEXT[:10]))
        self.assertIsNone(ranged.header(b"content-encoding"))
        head = await self.get(b"/text", accept, method=b"HEAD")
        self.assertIsNone(head.header(b"content-encoding"))

    async def test_streamedHit(self):
        """
        A stored body too large for one read is compressed as it streams
        out of the store.
        """
        await self.get(b"/big")
        hit = await self.get(b"/big", b"Accept-Encoding: gzip\r\n")
        self.assertEqual(hit.header(b"x-cache"), b"HIT")
        self.assertEqual(hit.header(b"transfer-encoding"), b"chunked")
        self.assertEqual(gzip.decompress(hit.body), TEXT * 20)
