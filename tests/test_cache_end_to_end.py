"""
The cache through real loopback sockets: a scripted origin that counts what
it is asked, the caching proxy in front of it, a raw client. Time, for the
cache's freshness decisions, is a L{Clock} the test advances; the sockets
run on the real reactor.
"""

import time

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from cachingproxy.cache.memory import MemoryStore
from cachingproxy.http.headers import formatHTTPDate
from cachingproxy.cache.policy import CacheOptions, RefreshRule
from cachingproxy.cache.layer import CacheLayer, CacheSettings
from cachingproxy.proxy.settings import ProxySettings
from cachingproxy.proxy.upstream import Origin

from .helpers import (
    connectClient,
    listenOrigin,
    exchange,
    pattern,
    startProxy,
    until,
)


class CountingOrigin(Resource):
    """
    An origin whose answers say how often each path was asked for. The
    path picks the caching behaviour:

      - C{/max-age/N/...}: C{Cache-Control: max-age=N} and an ETag.
      - C{/etag/...}: C{max-age=0}, an ETag; answers If-None-Match with 304.
      - C{/lm/...}: C{max-age=0}, Last-Modified; answers If-Modified-Since.
      - C{/bare304/...}: C{max-age=0}, an ETag; answers If-None-Match with
        a 304 that repeats no validator and says C{max-age=60}.
      - C{/vary/...}: C{Vary: Accept-Language}; the body names the language.
      - C{/vary-encoding/...}: the same with C{Vary: Accept-Encoding}.
      - C{/post/MODE/...}: max-age=60; a POST is answered with a body that
        says so and, by MODE: C{same} a Content-Location of the path,
        C{absolute} the same as an absolute URI, C{other} another path,
        C{none} none, C{no-fresh} the path and no Cache-Control.
      - C{/private/...}, C{/no-store/...}: those directives, max-age=60.
      - C{/nominates/...}: no-store, and an X-Cache and a Cache-Status of
        the origin's own, which its Connection field nominates.
      - C{/switch/...}: the Cache-Control L{cacheControl} holds (no-store
        until a test changes it).
      - C{/auth/...}: max-age=60 and nothing that allows sharing under
        Authorization; C{/auth-public/...} adds C{public}.
      - C{/swr/...}: max-age=1, stale-while-revalidate=60.
      - C{/sie/...}: max-age=1, stale-if-error=60; C{fail} makes it 500.
      - C{/big/N}: N bytes, max-age=60.
      - C{/status/N}: that status, max-age=60.
      - C{/missing/...}: 404 with neither freshness nor a validator.
      - C{/mirror/...}: what a plain repository mirror sends: 200 with a
        Content-Type and no Cache-Control, Expires, Last-Modified or ETag.
      - C{/_cachingproxy/...}: as the rest of the path.
    """

    isLeaf = True

    def __init__(self, clock) -> None:
        super().__init__()
        self.clock = clock
        self.counts = {}
        self.requests = []
        self.fail = False
        #: what C{/switch/...} answers say
        self.cacheControl = b"no-store"
        #: while True, answers are held until L{release}
        self.holding = False
        self.held = []

    def release(self):
        """
        Send the held answers.
        """
        held, self.held = self.held, []
        for request, body in held:
            request.write(body)
            request.finish()

    def render(self, request):
        path = request.path
        self.counts[path] = self.counts.get(path, 0) + 1
        self.requests.append((request.method, path, dict(
            (k.lower(), v[0]) for k, v in request.requestHeaders.getAllRawHeaders())))
        n = self.counts[path]
        parts = path.split(b"/")
        if parts[1] == b"_cachingproxy":
            # (a path under the proxy's own prefix, sent on when the proxy
            # has no own endpoints: as the rest of the path says)
            del parts[1]
        kind = parts[1]
        request.setHeader(b"Date", formatHTTPDate(self.clock.seconds()))
        body = b"%s #%d" % (path, n)
        if kind == b"max-age":
            request.setHeader(b"Cache-Control", b"max-age=" + parts[2])
            request.setHeader(b"ETag", b'"v%d"' % n)
        elif kind == b"etag":
            request.setHeader(b"Cache-Control", b"max-age=0")
            request.setHeader(b"ETag", b'"fixed"')
            if request.getHeader(b"if-none-match") == b'"fixed"':
                request.setResponseCode(304)
                request.setHeader(b"X-Revalidated", b"%d" % n)
                return b""
            body = b"etag body"
        elif kind == b"lm":
            request.setHeader(b"Cache-Control", b"max-age=0")
            lastModified = b"Mon, 02 Nov 2026 10:00:00 GMT"
            request.setHeader(b"Last-Modified", lastModified)
            if request.getHeader(b"if-modified-since") == lastModified:
                request.setResponseCode(304)
                return b""
            body = b"lm body"
        elif kind == b"bare304":
            request.setHeader(b"Cache-Control", b"max-age=0")
            if request.getHeader(b"if-none-match") == b'"fixed"':
                request.setResponseCode(304)
                request.setHeader(b"Cache-Control", b"max-age=60")
                request.setHeader(b"X-Revalidated", b"%d" % n)
                return b""
            request.setHeader(b"ETag", b'"fixed"')
            body = b"bare304 body"
        elif kind == b"vary":
            request.setHeader(b"Cache-Control", b"max-age=60")
            request.setHeader(b"Vary", b"Accept-Language")
            body = b"lang=%s #%d" % (request.getHeader(b"accept-language") or b"-", n)
        elif kind == b"vary-encoding":
            request.setHeader(b"Cache-Control", b"max-age=60")
            request.setHeader(b"Vary", b"Accept-Encoding")
            body = b"encoding=%s #%d" % (request.getHeader(b"accept-encoding") or b"-", n)
        elif kind == b"post":
            request.setHeader(b"Cache-Control", b"max-age=60")
            if request.method == b"POST":
                mode = parts[2]
                body = b"posted %s #%d" % (path, n)
                if mode in (b"same", b"no-fresh"):
                    request.setHeader(b"Content-Location", path)
                elif mode == b"absolute":
                    request.setHeader(b"Content-Location", b"http://127.0.0.1:%d%s" % (
                        request.getHost().port, path))
                elif mode == b"other":
                    request.setHeader(b"Content-Location", path + b"/result")
                if mode == b"no-fresh":
                    request.responseHeaders.removeHeader(b"Cache-Control")
        elif kind == b"private":
            request.setHeader(b"Cache-Control", b"private, max-age=60")
        elif kind == b"no-store":
            request.setHeader(b"Cache-Control", b"no-store, max-age=60")
        elif kind == b"switch":
            request.setHeader(b"Cache-Control", self.cacheControl)
        elif kind == b"nominates":
            request.setHeader(b"Cache-Control", b"no-store")
            request.setHeader(b"Connection", b"X-Cache, Cache-Status")
            request.setHeader(b"X-Cache", b"origin")
            request.setHeader(b"Cache-Status", b"origin; hit")
        elif kind == b"auth":
            request.setHeader(b"Cache-Control", b"max-age=60")
        elif kind == b"auth-public":
            request.setHeader(b"Cache-Control", b"public, max-age=60")
        elif kind == b"swr":
            request.setHeader(b"Cache-Control", b"max-age=1, stale-while-revalidate=60")
            if self.holding:
                from twisted.web.server import NOT_DONE_YET

                self.held.append((request, body))
                return NOT_DONE_YET
        elif kind == b"sie":
            if self.fail:
                request.setResponseCode(500)
                return b"broken"
            request.setHeader(b"Cache-Control", b"max-age=1, stale-if-error=60")
        elif kind == b"big":
            request.setHeader(b"Cache-Control", b"max-age=60")
            return pattern(int(parts[2]))
        elif kind == b"status":
            request.setResponseCode(int(parts[2]))
            request.setHeader(b"Cache-Control", b"max-age=60")
        elif kind == b"missing":
            request.setResponseCode(404)
        elif kind == b"mirror":
            request.setHeader(b"Content-Type", b"application/vnd.debian.binary-package")
        return body


class CacheTestCase(TestCase):
    """
    Sets up the origin, a memory store and the caching proxy in forward
    mode.
    """

    #: in front of the origin as a reverse proxy, rather than forward
    reverse = False

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(time.time())
        self.origin = CountingOrigin(self.clock)
        _, self.originPort = listenOrigin(self, self.origin)
        self.store = MemoryStore(64 * 1024 * 1024, 16 * 1024 * 1024)
        upstream = Origin(b"http", "127.0.0.1", self.originPort) if self.reverse else None
        self.factory, self.port, self.lines = startProxy(
            self, ProxySettings(viaName=b"test-proxy", upstream=upstream))
        self.cache = CacheLayer(self.store, self.clock, self.factory.pool, self.settings())
        self.factory.cache = self.cache

    def settings(self):
        return CacheSettings()

    def url(self, path: bytes) -> bytes:
        return b"http://127.0.0.1:%d%s" % (self.originPort, path)

    async def get(self, path: bytes, headers: bytes = b"", method: bytes = b"GET"):
        _, [response] = await exchange(
            self.port, self,
            b"%s %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (method, self.url(path), headers),
            headResponses=[0] if method == b"HEAD" else (),
        )
        return response


class FreshnessTests(CacheTestCase):
    """
    Fresh responses are served without the origin (RFC 9111 section 4.2).
    """

    async def test_freshHit(self):
        """
        A second request within max-age is a hit: the origin's counter
        stays still, Age and Cache-Status are set.
        """
        first = await self.get(b"/max-age/60/a")
        self.clock.advance(5)
        second = await self.get(b"/max-age/60/a")
        self.assertEqual(first.body, b"/max-age/60/a #1")
        self.assertEqual(second.body, b"/max-age/60/a #1")
        self.assertEqual(self.origin.counts[b"/max-age/60/a"], 1)
        self.assertEqual(second.header(b"x-cache"), b"HIT")
        self.assertTrue(second.header(b"cache-status").startswith(b"cachingproxy; hit"))
        self.assertEqual(int(second.header(b"age")), 5)
        self.assertIn(b"fwd=uri-miss", first.header(b"cache-status"))
        self.assertIn(b"stored", first.header(b"cache-status"))

    async def test_staleRefetched(self):
        """
        Past max-age, without a validator match, the response is fetched
        again and replaces the stored one.
        """
        await self.get(b"/max-age/10/b")
        self.clock.advance(11)
        second = await self.get(b"/max-age/10/b")
        self.assertEqual(second.body, b"/max-age/10/b #2")
        third = await self.get(b"/max-age/10/b")
        self.assertEqual(third.body, b"/max-age/10/b #2")
        self.assertEqual(self.origin.counts[b"/max-age/10/b"], 2)

    async def test_headFromStoredGet(self):
        """
        A HEAD request is answered from a stored GET response, without a
        body (RFC 9111 section 4).
        """
        await self.get(b"/max-age/60/h")
        head = await self.get(b"/max-age/60/h", method=b"HEAD")
        self.assertEqual(head.status, 200)
        self.assertEqual(head.body, b"")
        self.assertEqual(head.header(b"content-length"), b"%d" % len(b"/max-age/60/h #1"))
        self.assertEqual(self.origin.counts[b"/max-age/60/h"], 1)

    async def test_largeBodyHit(self):
        """
        A body larger than one read streams back intact from the store.
        """
        first = await self.get(b"/big/3000000")
        second = await self.get(b"/big/3000000")
        self.assertEqual(first.body, pattern(3000000))
        self.assertEqual(second.body, pattern(3000000))
        self.assertEqual(second.header(b"x-cache"), b"HIT")
        self.assertEqual(self.origin.counts[b"/big/3000000"], 1)

    async def test_onlyIfCached(self):
        """
        only-if-cached with nothing stored is a 504, without the origin
        (RFC 9111 section 5.2.1.7).
        """
        response = await self.get(b"/max-age/60/oic", b"Cache-Control: only-if-cached\r\n")
        self.assertEqual(response.status, 504)
        self.assertNotIn(b"/max-age/60/oic", self.origin.counts)


class ValidationTests(CacheTestCase):
    """
    Stale entries are validated (RFC 9111 section 4.3).
    """

    async def test_revalidatedWithETag(self):
        """
        A stale entry with an ETag is revalidated with If-None-Match; the
        304 is merged and the stored body served.
        """
        first = await self.get(b"/etag/x")
        second = await self.get(b"/etag/x")
        self.assertEqual(first.body, b"etag body")
        self.assertEqual(second.body, b"etag body")
        self.assertEqual(second.status, 200)
        self.assertEqual(second.header(b"x-cache"), b"REVALIDATED")
        self.assertEqual(second.header(b"x-revalidated"), b"2")
        # The access line says how long the origin took to answer the
        # revalidation.
        self.assertRegex(self.lines[-1], r'"GET \S+ HTTP/1.1" 200 \d+ .* REVALIDATED '
                                         r'\d+\.\d{4} \d+\.\d{4} 0$')
        method, path, headers = self.origin.requests[1]
        self.assertEqual(headers.get(b"if-none-match"), b'"fixed"')

    async def test_revalidatedWithLastModified(self):
        """
        A stale entry with only Last-Modified is revalidated with
        If-Modified-Since.
        """
        await self.get(b"/lm/y")
        second = await self.get(b"/lm/y")
        self.assertEqual((second.status, second.body), (200, b"lm body"))
        self.assertEqual(self.origin.requests[1][2].get(b"if-modified-since"),
                         b"Mon, 02 Nov 2026 10:00:00 GMT")

    async def test_clientConditionalFromCache(self):
        """
        A client's If-None-Match matching a fresh stored entry gets 304 from
        the cache (RFC 9110 section 13.1.2).
        """
        first = await self.get(b"/max-age/60/c")
        etag = first.header(b"etag")
        response = await self.get(b"/max-age/60/c", b"If-None-Match: W/" + etag + b"\r\n")
        self.assertEqual(response.status, 304)
        self.assertEqual(response.body, b"")
        self.assertEqual(response.header(b"etag"), etag)
        self.assertEqual(self.origin.counts[b"/max-age/60/c"], 1)

    async def test_clientIfModifiedSince(self):
        """
        If-Modified-Since later than the stored Last-Modified gets 304.
        """
        await self.get(b"/lm/z")
        response = await self.get(
            b"/lm/z", b"Cache-Control: max-stale=100\r\nIf-Modified-Since: Tue, 03 Nov 2026 10:00:00 GMT\r\n"
        )
        self.assertEqual(response.status, 304)


class VaryTests(CacheTestCase):
    """
    Variants are kept apart (RFC 9111 section 4.1).
    """

    async def test_variants(self):
        """
        Two Accept-Language values give two stored variants, each a hit for
        its own requests.
        """
        en = await self.get(b"/vary/v", b"Accept-Language: en\r\n")
        fr = await self.get(b"/vary/v", b"Accept-Language: fr\r\n")
        en2 = await self.get(b"/vary/v", b"Accept-Language: en\r\n")
        fr2 = await self.get(b"/vary/v", b"Accept-Language: fr\r\n")
        self.assertEqual(en.body, b"lang=en #1")
        self.assertEqual(fr.body, b"lang=fr #2")
        self.assertEqual(en2.body, b"lang=en #1")
        self.assertEqual(fr2.body, b"lang=fr #2")
        self.assertEqual(self.origin.counts[b"/vary/v"], 2)


class SharingTests(CacheTestCase):
    """
    What a shared cache must not share (RFC 9111 section 3).
    """

    async def test_privateNotStored(self):
        """
        A private response is never served to another request.
        """
        await self.get(b"/private/p")
        second = await self.get(b"/private/p")
        self.assertEqual(second.body, b"/private/p #2")

    async def test_noStoreNotStored(self):
        """
        A no-store response is never stored.
        """
        await self.get(b"/no-store/n")
        second = await self.get(b"/no-store/n")
        self.assertEqual(second.body, b"/no-store/n #2")
        self.assertEqual(self.store.entries(b"http://127.0.0.1:%d/no-store/n" % self.originPort), [])

    async def test_authorizationNotShared(self):
        """
        A response to a request with Authorization is not served to another
        client unless it says it may be (section 3.5).
        """
        await self.get(b"/auth/a", b"Authorization: Basic dXNlcjpwdw==\r\n")
        second = await self.get(b"/auth/a")
        self.assertEqual(second.body, b"/auth/a #2")
        await self.get(b"/auth-public/a", b"Authorization: Basic dXNlcjpwdw==\r\n")
        shared = await self.get(b"/auth-public/a")
        self.assertEqual(shared.body, b"/auth-public/a #1")


class NeverUsableTests(CacheTestCase):
    """
    What could never be used is not stored (RFC 9111 sections 4.2.2 and
    4.3.1).
    """

    async def test_notFoundWithoutFreshnessOrValidator(self):
        """
        A 404 with no freshness and no validator is not stored: its
        Cache-Status has no C{stored}, and the next request is a plain
        miss (C{fwd=uri-miss}), not C{fwd=stale} past a useless entry.
        """
        first = await self.get(b"/missing/x")
        second = await self.get(b"/missing/x")
        self.assertEqual((first.status, second.status), (404, 404))
        for response in (first, second):
            status = response.header(b"cache-status")
            self.assertTrue(status.startswith(b"cachingproxy; fwd=uri-miss; fwd-status=404; "
                                              b'detail="never usable'), status)
            self.assertNotIn(b"stored", status)
        self.assertEqual(second.header(b"x-cache"), b"MISS")
        self.assertEqual(second.body, b"/missing/x #2")
        self.assertEqual(self.store.entries(self.url(b"/missing/x")), [])


#: A package, and an index file, in the layout of a Debian mirror.
DEB = b"/mirror/debian/pool/main/h/hello/hello_2.10-3_amd64.deb"
INRELEASE = b"/mirror/debian/dists/bookworm/InRelease"

DAY = 86400


class _AptMirror:
    """
    apt through the proxy against a mirror that sends no Cache-Control,
    Expires, Last-Modified or ETag: refresh rules give such responses the
    freshness RFC 9111 section 4.2.2 leaves to the cache.
    """

    def settings(self):
        return CacheSettings(options=CacheOptions(refreshRules=(
            RefreshRule(r"\.deb$", minimum=DAY, maximum=DAY),
            RefreshRule(r"/dists/", minimum=DAY, maximum=DAY),
        )))

    async def apt(self, path: bytes, index: bool = False):
        """
        Fetch C{path} with the request apt 2.6 sends (methods/http.cc):
        through a proxy the absolute URI, Host, its User-Agent; no Accept,
        as the file name has an extension; C{Cache-Control: max-age=0} for
        index files only.
        """
        target = path if self.reverse else self.url(path)
        host = b"127.0.0.1:%d" % (self.port if self.reverse else self.originPort)
        cacheControl = b"Cache-Control: max-age=0\r\n" if index else b""
        _, [response] = await exchange(
            self.port, self,
            b"GET %s HTTP/1.1\r\nHost: %s\r\n%sUser-Agent: Debian APT-HTTP/1.3 (2.6.1)\r\n\r\n"
            % (target, host, cacheControl),
        )
        return response

    async def test_debServedFromCache(self):
        """
        RFC 9111 section 4.2.2: with a rule giving .deb files a day, the
        second download of a package is a hit and the origin sees one
        request; a third, on the remembered hot path, too; after the day it
        is fetched again.
        """
        first = await self.apt(DEB)
        self.clock.advance(3600)
        second = await self.apt(DEB)
        self.assertIn(self.url(DEB), self.cache._hot)
        third = await self.apt(DEB)
        self.assertEqual(first.header(b"x-cache"), b"MISS")
        self.assertEqual(first.header(b"cache-status"),
                         b"cachingproxy; fwd=uri-miss; fwd-status=200; stored")
        for hit in (second, third):
            self.assertEqual(hit.header(b"x-cache"), b"HIT")
            # A day less the hour: the test clock is not on a whole second,
            # Date is.
            self.assertIn(hit.header(b"cache-status"),
                          (b"cachingproxy; hit; ttl=82799", b"cachingproxy; hit; ttl=82800"))
            self.assertEqual(hit.body, first.body)
        self.assertEqual(self.origin.counts[DEB], 1)
        [(method, path, fields)] = self.origin.requests
        self.assertEqual(fields[b"user-agent"], b"Debian APT-HTTP/1.3 (2.6.1)")
        self.clock.advance(DAY)
        later = await self.apt(DEB)
        self.assertEqual(later.header(b"x-cache"), b"MISS")
        self.assertEqual(self.origin.counts[DEB], 2)

    async def test_withoutRuleMissTwice(self):
        """
        RFC 9111 sections 4.2.2 and 4.3.1: without a rule the package has
        neither freshness nor a validator, so it is not stored and both
        downloads reach the origin.
        """
        self.factory.cache = CacheLayer(self.store, self.clock, self.factory.pool,
                                           CacheSettings())
        first = await self.apt(DEB)
        second = await self.apt(DEB)
        self.assertEqual([r.header(b"x-cache") for r in (first, second)], [b"MISS", b"MISS"])
        self.assertNotIn(b"stored", first.header(b"cache-status"))
        self.assertEqual(self.origin.counts[DEB], 2)

    async def test_indexFilesRefetched(self):
        """
        RFC 9111 section 5.2.1.1: apt asks for index files with
        C{max-age=0}, so a rule that covers them does not keep apt from
        the origin's current index.
        """
        await self.apt(INRELEASE, index=True)
        self.clock.advance(1)
        second = await self.apt(INRELEASE, index=True)
        self.assertEqual(second.header(b"x-cache"), b"MISS")
        self.assertEqual(self.origin.counts[INRELEASE], 2)


class AptForwardTests(_AptMirror, CacheTestCase):
    __doc__ = _AptMirror.__doc__ + "\n    Forward mode.\n"


class AptReverseTests(_AptMirror, CacheTestCase):
    __doc__ = _AptMirror.__doc__ + "\n    Reverse mode.\n"

    reverse = True


class InvalidationTests(CacheTestCase):
    """
    Unsafe methods invalidate (RFC 9111 section 4.4).
    """

    async def test_postInvalidates(self):
        """
        A successful POST to a URL removes its stored response.
        """
        await self.get(b"/max-age/60/i")
        await self.get(b"/max-age/60/i", method=b"POST")
        third = await self.get(b"/max-age/60/i")
        self.assertEqual(third.body, b"/max-age/60/i #3")

    async def test_errorDoesNotInvalidate(self):
        """
        An error answer to an unsafe method invalidates nothing.
        """
        await self.get(b"/status/200/e")
        await self.get(b"/status/200/e")
        self.assertEqual(self.origin.counts[b"/status/200/e"], 1)


class StaleTests(CacheTestCase):
    """
    Serving stale content (RFC 9111 section 4.2.4, RFC 5861).
    """

    async def test_staleIfError(self):
        """
        With stale-if-error, a stale entry is served while the origin
        answers 500.
        """
        await self.get(b"/sie/s")
        self.clock.advance(5)
        self.origin.fail = True
        response = await self.get(b"/sie/s")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"/sie/s #1")
        self.assertEqual(response.header(b"x-cache"), b"STALE")

    async def test_staleIfErrorOriginDown(self):
        """
        With stale-if-error, a stale entry is served when the origin cannot
        be reached at all.
        """
        store = MemoryStore(1 << 20, 1 << 20)
        cache = CacheLayer(store, self.clock, self.factory.pool, CacheSettings())
        self.factory.cache = cache
        await self.get(b"/sie/down")
        self.clock.advance(5)
        await self.factory.pool.closeCachedConnections()
        for port in list(self._originPorts()):
            await port.stopListening()
        response = await self.get(b"/sie/down")
        self.assertEqual((response.status, response.body), (200, b"/sie/down #1"))

    def _originPorts(self):
        from twisted.internet.tcp import Port

        for reader in reactor.getReaders():
            if isinstance(reader, Port) and reader.getHost().port == self.originPort:
                yield reader

    async def test_staleWhileRevalidate(self):
        """
        Within stale-while-revalidate, the stale entry is answered at once
        and refreshed in the background, once.
        """
        await self.get(b"/swr/w")
        self.clock.advance(5)
        self.origin.holding = True
        stale = await self.get(b"/swr/w")
        await until(lambda: self.origin.held)
        stale2 = await self.get(b"/swr/w")
        self.assertEqual(stale.body, b"/swr/w #1")
        self.assertEqual(stale.header(b"x-cache"), b"STALE")
        self.assertEqual(stale2.body, b"/swr/w #1")
        self.assertEqual(self.origin.counts[b"/swr/w"], 2)
        self.origin.holding = False
        self.origin.release()
        await until(lambda: not self.cache._refreshing)
        self.assertEqual(self.origin.counts[b"/swr/w"], 2)
        fresh = await self.get(b"/swr/w")
        self.assertEqual(fresh.body, b"/swr/w #2")


class RangeTests(CacheTestCase):
    """
    Ranges from a complete stored response (RFC 9110 section 14).
    """

    async def test_singleRange(self):
        """
        A single range is a 206 with Content-Range, from the cache.
        """
        await self.get(b"/big/1000")
        response = await self.get(b"/big/1000", b"Range: bytes=10-19\r\n")
        self.assertEqual(response.status, 206)
        self.assertEqual(response.body, pattern(1000)[10:20])
        self.assertEqual(response.header(b"content-range"), b"bytes 10-19/1000")
        self.assertEqual(self.origin.counts[b"/big/1000"], 1)

    async def test_multipleRanges(self):
        """
        Several ranges are a multipart/byteranges 206.
        """
        await self.get(b"/big/1000")
        response = await self.get(b"/big/1000", b"Range: bytes=0-1,-2\r\n")
        self.assertEqual(response.status, 206)
        self.assertTrue(response.header(b"content-type").startswith(b"multipart/byteranges"))
        data = pattern(1000)
        self.assertIn(b"Content-Range: bytes 0-1/1000\r\n\r\n" + data[:2], response.body)
        self.assertIn(b"Content-Range: bytes 998-999/1000\r\n\r\n" + data[-2:], response.body)

    async def test_unsatisfiable(self):
        """
        A range past the end is a 416.
        """
        await self.get(b"/big/1000")
        response = await self.get(b"/big/1000", b"Range: bytes=5000-\r\n")
        self.assertEqual(response.status, 416)
        self.assertEqual(response.header(b"content-range"), b"bytes */1000")


class PurgeTests(CacheTestCase):
    """
    PURGE removes stored responses.
    """

    async def test_purge(self):
        """
        PURGE from a loopback client removes every variant; the next
        request is a miss.
        """
        await self.get(b"/vary/p", b"Accept-Language: en\r\n")
        await self.get(b"/vary/p", b"Accept-Language: fr\r\n")
        purged = await self.get(b"/vary/p", method=b"PURGE")
        self.assertEqual((purged.status, purged.body), (200, b"purged 2\n"))
        again = await self.get(b"/vary/p", b"Accept-Language: en\r\n")
        self.assertEqual(again.body, b"lang=en #3")
        missing = await self.get(b"/vary/p-none", method=b"PURGE")
        self.assertEqual(missing.status, 404)

    async def test_purgePrefix(self):
        """
        PURGE of a URL ending in * removes every URL under it.
        """
        await self.get(b"/max-age/60/dir/a")
        await self.get(b"/max-age/60/dir/b")
        purged = await self.get(b"/max-age/60/dir/*", method=b"PURGE")
        self.assertEqual(purged.body, b"purged 2\n")

    async def test_purgeRefusedForOthers(self):
        """
        PURGE from an address outside the admin networks is a 405.
        """
        import dataclasses

        self.factory.settings = dataclasses.replace(self.factory.settings, adminNetworks=())
        response = await self.get(b"/max-age/60/q", method=b"PURGE")
        self.assertEqual(response.status, 405)


class CollapsedForwardingTests(CacheTestCase):
    """
    Concurrent misses share one upstream request.
    """

    async def test_collapsed(self):
        """
        Three concurrent requests for a slow cacheable object make one
        upstream request and all get its body.
        """
        slow = _SlowCacheable()
        _, originPort = listenOrigin(self, slow)
        request = b"GET http://127.0.0.1:%d/slow HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        clients = []
        for _ in range(3):
            client = await connectClient(self.port, self)
            client.transport.write(request)
            clients.append(client)
        await slow.requested
        key = b"http://127.0.0.1:%d/slow" % originPort
        await until(lambda: len(self.cache._flights[key].waiters) == 2)
        slow.finish()
        bodies = []
        for client in clients:
            [response] = await client.waitFor(1)
            bodies.append(response.body)
        self.assertEqual(bodies, [b"slow body"] * 3)
        self.assertEqual(slow.count, 1)
        self.assertEqual(self.cache.stats.collapsed, 2)


class _SlowCacheable(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        from twisted.internet.defer import Deferred

        self.count = 0
        self.requested = Deferred()
        self.pending = []

    def render(self, request):
        from twisted.web.server import NOT_DONE_YET

        self.count += 1
        request.setHeader(b"Cache-Control", b"max-age=60")
        self.pending.append(request)
        if not self.requested.called:
            self.requested.callback(None)
        return NOT_DONE_YET

    def finish(self):
        for request in self.pending:
            request.write(b"slow body")
            request.finish()


class SharedDiskCacheTests(TestCase):
    """
    Two proxy processes (as two workers would be) share one cache folder.
    """

    timeout = 60

    async def test_twoProcessesShareTheCache(self):
        """
        A response stored through one process is a hit through the other;
        a purge through one is a miss through the other.
        """
        from .helpers import temporaryPath
        from .test_tap import TwistdTests

        clock = Clock()
        clock.advance(time.time())
        origin = CountingOrigin(clock)
        _, originPort = listenOrigin(self, origin)
        url = b"http://127.0.0.1:%d/max-age/600/shared" % originPort
        folder = temporaryPath(self, "cache")
        runner = TwistdTests("runTwistd")
        runner.addCleanup = self.addCleanup
        _, _, first = await runner.runTwistd("--cache-dir", folder)
        _, _, second = await runner.runTwistd("--cache-dir", folder)

        async def get(proxyPort, method=b"GET"):
            _, [response] = await exchange(
                proxyPort, self, b"%s %s HTTP/1.1\r\nHost: x\r\n\r\n" % (method, url)
            )
            return response

        stored = await get(first)
        hit = await get(second)
        self.assertEqual(stored.header(b"x-cache"), b"MISS")
        self.assertEqual(hit.header(b"x-cache"), b"HIT")
        self.assertEqual(hit.body, stored.body)
        self.assertEqual(origin.counts[b"/max-age/600/shared"], 1)
        purged = await get(first, b"PURGE")
        self.assertEqual(purged.status, 200)
        again = await get(second)
        self.assertEqual(again.header(b"x-cache"), b"MISS")
        self.assertEqual(origin.counts[b"/max-age/600/shared"], 2)


class _StreamingOrigin(Resource):
    """
    Sends a declared 8 MiB cacheable body in pieces, the rest held until
    L{release}; counts requests.
    """

    isLeaf = True
    size = 8 * 1024 * 1024

    def __init__(self):
        super().__init__()
        from twisted.internet.defer import Deferred

        self.count = 0
        self.started = Deferred()
        self.held = []
        self.holding = True

    def render(self, request):
        from twisted.web.server import NOT_DONE_YET

        self.count += 1
        body = pattern(self.size)
        request.setHeader(b"Cache-Control", b"max-age=600")
        request.setHeader(b"Content-Length", b"%d" % self.size)
        if not self.holding:
            return body
        request.write(body[: self.size // 2])
        self.held.append((request, body[self.size // 2:]))
        if not self.started.called:
            self.started.callback(None)
        return NOT_DONE_YET


class CrashTests(TestCase):
    """
    Nothing half-written is ever served (RFC 9111 section 3.3).
    """

    timeout = 60

    def _origin(self, resource):
        return listenOrigin(self, resource)[1]

    async def test_killedWhileStoring(self):
        """
        A proxy killed with SIGKILL while it stores a large body leaves no
        entry: after a restart on the same folder the request is a miss
        and the body comes whole from the origin.
        """
        import signal

        from .helpers import temporaryPath
        from .test_tap import TwistdTests

        origin = _StreamingOrigin()
        originPort = self._origin(origin)
        url = b"http://127.0.0.1:%d/big" % originPort
        folder = temporaryPath(self, "cache")
        runner = TwistdTests("runTwistd")
        runner.addCleanup = self.addCleanup
        process, transport, proxyPort = await runner.runTwistd("--cache-dir", folder)
        client = await connectClient(proxyPort, self)
        client.transport.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % url)
        await origin.started
        await client.whenTrue(lambda c: len(c.raw) > 1024 * 1024)
        transport.signalProcess(signal.SIGKILL)
        await process.ended
        await client.closed
        for request, rest in origin.held:
            request.loseConnection()
        origin.held = []
        origin.holding = False

        _, _, restarted = await runner.runTwistd("--cache-dir", folder)
        _, [response] = await exchange(restarted, self, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % url)
        self.assertEqual(response.header(b"x-cache"), b"MISS")
        self.assertEqual(response.body, pattern(origin.size))
        self.assertEqual(origin.count, 2)
        _, [hit] = await exchange(restarted, self, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % url)
        self.assertEqual(hit.header(b"x-cache"), b"HIT")
        self.assertEqual(hit.body, pattern(origin.size))


class CorruptEntryTests(TestCase):
    """
    A damaged file on disk is a miss, never an error or a wrong body.
    """

    async def test_corruptedFileIsAMiss(self):
        """
        Flipping bytes in a stored file makes the next request a miss that
        gets the right body (and stores it again).
        """
        import os

        from cachingproxy.cache.disk import DiskStore

        from .helpers import temporaryPath

        clock = Clock()
        clock.advance(time.time())
        origin = CountingOrigin(clock)
        _, originPort = listenOrigin(self, origin)
        folder = temporaryPath(self, "cache")
        os.makedirs(folder)
        store = DiskStore(folder, maxSize=1 << 30, maxObjectSize=1 << 26)
        factory, proxyPort, _ = startProxy(self, ProxySettings(viaName=b"test-proxy"))
        factory.cache = CacheLayer(store, clock, factory.pool, CacheSettings())
        request = b"GET http://127.0.0.1:%d/big/20000 HTTP/1.1\r\nHost: x\r\n\r\n" % (
            originPort)
        await exchange(proxyPort, self, request)
        damaged = 0
        for root, _, files in os.walk(os.path.join(folder, "data")):
            for name in files:
                path = os.path.join(root, name)
                if os.path.getsize(path) > 20000:
                    with open(path, "r+b") as f:
                        f.seek(os.path.getsize(path) - 100)
                        f.write(b"\xff" * 50)
                    damaged += 1
        self.assertEqual(damaged, 1)
        _, [response] = await exchange(proxyPort, self, request)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, pattern(20000))
        self.assertEqual(response.header(b"x-cache"), b"MISS")
        self.assertEqual(origin.counts[b"/big/20000"], 2)


class TargetedCacheControlTests(CacheTestCase):
    """
    Targeted Cache-Control fields (RFC 9213).
    """

    async def test_ownFieldWinsAndIsConsumed(self):
        """
        Cachingproxy-Cache-Control overrides Cache-Control for this cache
        and never reaches the client; CDN-Cache-Control is passed on.
        """
        root = Resource()

        class Targeted(Resource):
            isLeaf = True
            count = 0

            def render(inner, request):
                Targeted.count += 1
                request.setHeader(b"Cache-Control", b"no-store")
                request.setHeader(b"Cachingproxy-Cache-Control", b"max-age=60")
                request.setHeader(b"CDN-Cache-Control", b"max-age=5")
                return b"targeted #%d" % Targeted.count

        root.putChild(b"t", Targeted())
        _, originPort = listenOrigin(self, root)
        request = b"GET http://127.0.0.1:%d/t HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        _, [first] = await exchange(self.port, self, request)
        _, [second] = await exchange(self.port, self, request)
        self.assertEqual(second.body, b"targeted #1")
        self.assertIsNone(first.header(b"cachingproxy-cache-control"))
        self.assertIsNone(second.header(b"cachingproxy-cache-control"))
        self.assertEqual(second.header(b"cdn-cache-control"), b"max-age=5")


class AdmissionTests(CacheTestCase):
    """
    --min-uses keeps one-off objects out of the store.
    """

    def settings(self):
        return CacheSettings(minUses=2)

    async def test_storedFromSecondUse(self):
        """
        With min-uses 2 the first response is not stored, the second is,
        and the third is a hit.
        """
        first = await self.get(b"/max-age/60/m")
        second = await self.get(b"/max-age/60/m")
        third = await self.get(b"/max-age/60/m")
        self.assertNotIn(b"stored", first.header(b"cache-status"))
        self.assertIn(b"stored", second.header(b"cache-status"))
        self.assertEqual(third.header(b"x-cache"), b"HIT")
        self.assertEqual(self.origin.counts[b"/max-age/60/m"], 2)


class HotPathTests(CacheTestCase):
    """
    Plain GETs for a remembered fresh response are answered without asking
    the policy again, and exactly as the policy would answer them.
    """

    async def test_sameAnswer(self):
        """
        A hit answered from the hot path has the same fields as one
        answered the long way, with Age advancing.
        """
        await self.get(b"/max-age/60/hot")
        slow = await self.get(b"/max-age/60/hot")
        self.assertIn(self.url(b"/max-age/60/hot"), self.cache._hot)
        self.clock.advance(3)
        hot = await self.get(b"/max-age/60/hot")
        self.assertEqual(hot.body, slow.body)
        self.assertEqual(int(hot.header(b"age")), int(slow.header(b"age")) + 3)
        self.assertEqual(sorted(slow.headerNames()), sorted(hot.headerNames()))
        for name in slow.headerNames():
            if name not in (b"age", b"cache-status"):
                self.assertEqual(hot.header(name), slow.header(name), name)
        self.assertIn(b"ttl=", hot.header(b"cache-status"))
        self.assertEqual(self.origin.counts[b"/max-age/60/hot"], 1)

    async def test_expires(self):
        """
        Once the remembered response is stale, the hot path steps aside.
        """
        await self.get(b"/max-age/10/exp")
        await self.get(b"/max-age/10/exp")
        self.clock.advance(11)
        again = await self.get(b"/max-age/10/exp")
        self.assertEqual(again.body, b"/max-age/10/exp #2")

    async def test_purgeSeen(self):
        """
        A purge drops the remembered response.
        """
        await self.get(b"/max-age/60/hp")
        await self.get(b"/max-age/60/hp")
        await self.get(b"/max-age/60/hp", method=b"PURGE")
        again = await self.get(b"/max-age/60/hp")
        self.assertEqual(again.body, b"/max-age/60/hp #2")

    async def test_otherProcessRemovalSeen(self):
        """
        With the disk store, a removal by another process (another store
        object on the same folder) drops the remembered response.
        """
        import os

        from cachingproxy.cache.disk import DiskStore

        from .helpers import temporaryPath

        folder = temporaryPath(self, "cache")
        os.makedirs(folder)
        self.cache.store = DiskStore(folder, maxSize=1 << 30, maxObjectSize=1 << 26)
        await self.get(b"/max-age/60/xp")
        # Let the folder's time fall out of the kernel's coarse tick.
        for root, dirs, _ in os.walk(folder):
            for name in dirs:
                os.utime(os.path.join(root, name), (time.time() - 5, time.time() - 5))
        await self.get(b"/max-age/60/xp")
        key = b"http://127.0.0.1:%d/max-age/60/xp" % self.originPort
        self.assertIn(key, self.cache._hot)
        hot = await self.get(b"/max-age/60/xp")
        self.assertEqual(hot.header(b"x-cache"), b"HIT")
        other = DiskStore(folder, maxSize=1 << 30, maxObjectSize=1 << 26)
        self.assertEqual(other.remove(key), 1)
        again = await self.get(b"/max-age/60/xp")
        self.assertEqual(again.header(b"x-cache"), b"MISS")
        self.assertEqual(again.body, b"/max-age/60/xp #2")


class _TwoStepOrigin(Resource):
    """
    Holds a cacheable 4 MiB answer: L{first} sends the head and half the
    body, L{rest} the other half.
    """

    isLeaf = True
    size = 4 * 1024 * 1024

    def __init__(self):
        super().__init__()
        from twisted.internet.defer import Deferred

        self.count = 0
        self.requested = Deferred()
        self.request = None

    def render(self, request):
        from twisted.web.server import NOT_DONE_YET

        self.count += 1
        self.request = request
        if not self.requested.called:
            self.requested.callback(None)
        return NOT_DONE_YET

    def first(self):
        self.request.setHeader(b"Cache-Control", b"max-age=600")
        self.request.setHeader(b"Content-Length", b"%d" % self.size)
        self.request.write(pattern(self.size)[: self.size // 2])

    def rest(self):
        self.request.write(pattern(self.size)[self.size // 2:])
        self.request.finish()


class LeaderLeavesTests(CacheTestCase):
    """
    The first client of a collapsed fetch leaving does not cut off the
    others.
    """

    async def test_othersKeepStreaming(self):
        """
        Two clients share one fetch; the first leaves in the middle of the
        body; the second still gets all of it, and it is stored.
        """
        origin = _TwoStepOrigin()
        _, originPort = listenOrigin(self, origin)
        request = b"GET http://127.0.0.1:%d/big HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        key = b"http://127.0.0.1:%d/big" % originPort
        leader = await connectClient(self.port, self)
        leader.transport.write(request)
        await origin.requested
        follower = await connectClient(self.port, self)
        follower.transport.write(request)
        await until(lambda: len(self.cache._flights[key].waiters) == 1)
        origin.first()
        await leader.whenTrue(lambda c: len(c.raw) > 1024 * 1024)
        await follower.whenTrue(lambda c: len(c.raw) > 1024 * 1024)
        leader.transport.abortConnection()
        await leader.closed
        await until(lambda: self.factory.openConnections == 1)
        origin.rest()
        [response] = await follower.waitFor(1)
        self.assertEqual(response.body, pattern(origin.size))
        self.assertEqual(origin.count, 1)
        self.assertEqual(len(self.store.entries(key)), 1)
        self.assertEqual(self.cache.stats.collapsed, 1)


class _FieldsOrigin(Resource):
    """
    An origin answering each path with the fields C{fields[path]} gives
    for the clock's time, and counting requests per path.
    """

    isLeaf = True

    def __init__(self, clock, fields) -> None:
        super().__init__()
        self.clock = clock
        self.fields = fields
        self.counts = {}
        self.requestHeaders = []

    def render(self, request):
        self.counts[request.path] = self.counts.get(request.path, 0) + 1
        self.requestHeaders.append(request.requestHeaders)
        now = self.clock.seconds()
        request.setHeader(b"Date", formatHTTPDate(now))
        for name, value in self.fields[request.path](now):
            request.setHeader(name, value)
        return b"%s #%d" % (request.path, self.counts[request.path])


def _offZone(when: float) -> bytes:
    """
    C{when} as an IMF-fixdate but with a numeric zone, which is not an
    HTTP-date (RFC 9110 section 5.6.7).
    """
    return formatHTTPDate(when)[:-3] + b"+0000"


class StrictFieldTests(CacheTestCase):
    """
    Dates and targeted fields that are not valid are not obeyed, through
    the whole proxy.
    """

    async def twice(self, fields) -> tuple:
        """
        Ask for each path of C{fields} twice, a second apart.

        @return: the origin, and the two responses for each path.
        """
        origin = _FieldsOrigin(self.clock, fields)
        _, originPort = listenOrigin(self, origin)
        answers = {}
        for path in fields:
            request = b"GET http://127.0.0.1:%d%s HTTP/1.1\r\nHost: x\r\n\r\n" % (
                originPort, path)
            _, [first] = await exchange(self.port, self, request)
            self.clock.advance(1)
            _, [second] = await exchange(self.port, self, request)
            answers[path] = (first, second)
        return origin, answers

    async def test_invalidExpiresIsExpired(self):
        """
        RFC 9111 section 5.3: an Expires that is not an HTTP-date, C{0} or
        a date in another zone than GMT, means already expired: the second
        request goes to the origin, where a valid one an hour ahead gives a
        hit.
        """
        origin, answers = await self.twice({
            b"/valid": lambda now: [(b"Expires", formatHTTPDate(now + 3600))],
            b"/zone": lambda now: [(b"Expires", _offZone(now + 3600))],
            b"/zero": lambda now: [(b"Expires", b"0")],
        })
        self.assertEqual(answers[b"/valid"][1].header(b"x-cache"), b"HIT")
        self.assertEqual(origin.counts,
                         {b"/valid": 1, b"/zone": 2, b"/zero": 2})
        self.assertEqual(answers[b"/zone"][1].body, b"/zone #2")

    async def test_invalidLastModified(self):
        """
        RFC 9111 sections 4.2.2 and 4.3.1: a Last-Modified that is not an
        HTTP-date gives no heuristic freshness and is not sent back as
        If-Modified-Since; a valid one a day old makes a hit.
        """
        origin, answers = await self.twice({
            b"/valid": lambda now: [
                (b"Last-Modified", formatHTTPDate(now - 86400))],
            b"/zone": lambda now: [(b"Last-Modified", _offZone(now - 86400))],
        })
        self.assertEqual(answers[b"/valid"][1].header(b"x-cache"), b"HIT")
        self.assertEqual(origin.counts, {b"/valid": 1, b"/zone": 2})
        self.assertEqual(
            [h.getRawHeaders(b"if-modified-since") for h in origin.requestHeaders],
            [None, None, None])

    async def test_wrongTypeTargetedFieldIgnored(self):
        """
        RFC 9213 section 2.1: a CDN-Cache-Control whose max-age is a String
        or a Decimal is ignored and Cache-Control's no-store obeyed; a
        valid one wins over it.
        """
        origin, answers = await self.twice({
            b"/valid": lambda now: [(b"Cache-Control", b"no-store"),
                                    (b"CDN-Cache-Control", b"max-age=600")],
            b"/string": lambda now: [(b"Cache-Control", b"no-store"),
                                     (b"CDN-Cache-Control", b'max-age="600"')],
            b"/decimal": lambda now: [(b"Cache-Control", b"no-store"),
                                      (b"CDN-Cache-Control", b"max-age=600.0")],
        })
        self.assertEqual(answers[b"/valid"][1].header(b"x-cache"), b"HIT")
        self.assertEqual(origin.counts,
                         {b"/valid": 1, b"/string": 2, b"/decimal": 2})
        self.assertEqual(answers[b"/string"][1].header(b"cdn-cache-control"),
                         b'max-age="600"')


class _SlowUnstored(_SlowCacheable):
    """
    Holds its answers until L{finish}; they say C{Cache-Control: no-store}
    while L{cacheControl} is unchanged.
    """

    cacheControl = b"no-store"

    def render(self, request):
        from twisted.web.server import NOT_DONE_YET

        self.count += 1
        request.setHeader(b"Cache-Control", self.cacheControl)
        self.pending.append(request)
        if not self.requested.called:
            self.requested.callback(None)
        return NOT_DONE_YET


def _storeFresh(testCase: CacheTestCase, store, path: bytes, body: bytes) -> None:
    """
    Store a fresh response with C{body} for C{path} of C{testCase}'s
    origin through C{store}, as the cache would.
    """
    from cachingproxy.http.headers import Headers
    from cachingproxy.cache.policy import StoredEntry

    now = testCase.clock.seconds()
    entry = StoredEntry(
        key=testCase.url(path), requestMethod=b"GET", requestHeaders=Headers(), status=200,
        responseHeaders=Headers([(b"Cache-Control", b"max-age=600"),
                                 (b"Date", formatHTTPDate(now))]),
        requestTime=now, responseTime=now, bodyLength=len(body),
    )
    writer = store.writer(testCase.url(path), b"")
    writer.write(body)
    testCase.assertTrue(writer.commit(entry))


class UnstoredMissTests(CacheTestCase):
    """
    Misses for keys whose responses are not stored, with the disk store:
    the store remembers that nothing is stored for the key and the cache
    stops collapsing its misses, and neither changes what is served.
    """

    def setUp(self):
        super().setUp()
        import os

        from cachingproxy.cache.disk import DiskStore

        from .helpers import temporaryPath

        self.folder = temporaryPath(self, "cache")
        os.makedirs(self.folder)
        self.store = self.cache.store = DiskStore(self.folder, maxSize=1 << 30,
                                                  maxObjectSize=1 << 26)

    def other(self):
        """
        @return: another store on the same folder, as another worker
            process has.
        """
        from cachingproxy.cache.disk import DiskStore

        return DiskStore(self.folder, maxSize=1 << 30, maxObjectSize=1 << 26)

    async def test_storedByAnotherProcessFoundAtOnce(self):
        """
        A key remembered as having nothing stored, then stored by another
        process: the next request is a hit on what that process stored.
        """
        first = await self.get(b"/no-store/a")
        second = await self.get(b"/no-store/a")
        self.assertEqual((first.header(b"x-cache"), second.header(b"x-cache")),
                         (b"MISS", b"MISS"))
        self.assertIn(self.url(b"/no-store/a"), self.store._absent)
        _storeFresh(self, self.other(), b"/no-store/a", b"stored elsewhere")
        hit = await self.get(b"/no-store/a")
        self.assertEqual((hit.header(b"x-cache"), hit.body), (b"HIT", b"stored elsewhere"))
        self.assertEqual(self.origin.counts[b"/no-store/a"], 2)

    async def test_purgeHonoured(self):
        """
        After misses for a key, an entry stored by another process and
        purged through this one: the next request goes to the origin, and
        is not answered with the purged entry.
        """
        await self.get(b"/no-store/p")
        await self.get(b"/no-store/p")
        _storeFresh(self, self.other(), b"/no-store/p", b"to be purged")
        hit = await self.get(b"/no-store/p")
        self.assertEqual(hit.body, b"to be purged")
        purged = await self.get(b"/no-store/p", method=b"PURGE")
        self.assertEqual(purged.status, 200)
        again = await self.get(b"/no-store/p")
        self.assertEqual((again.header(b"x-cache"), again.body),
                         (b"MISS", b"/no-store/p #3"))

    async def test_sameAnswerAsWithoutMemo(self):
        """
        A miss answered after the key was remembered as having nothing
        stored carries the same fields as the first one.
        """
        first = await self.get(b"/no-store/same")
        second = await self.get(b"/no-store/same")
        self.assertEqual(sorted(first.headerNames()), sorted(second.headerNames()))
        for name in first.headerNames():
            if name != b"date":
                self.assertEqual(first.header(name), second.header(name), name)
        self.assertIn(b"detail=", second.header(b"cache-status"))

    async def test_ownFieldsNotNominated(self):
        """
        The origin's Connection field nominates X-Cache and Cache-Status:
        its own fields of those names go, the cache's stay, on the first
        miss, on the misses of the key remembered as a pass, and on a
        POST passed through.
        """
        responses = [await self.get(b"/nominates/a") for _ in range(3)]
        self.assertIsNotNone(self.cache._passing.get(self.url(b"/nominates/a")))
        responses.append(await self.get(b"/nominates/a", method=b"POST"))
        for response, result in zip(responses, [b"MISS", b"MISS", b"MISS", b"PASS"]):
            self.assertEqual([(name.lower(), value) for name, value in response.headers
                              if name.lower() in (b"x-cache", b"cache-status", b"connection")],
                             [(b"cache-status", response.header(b"cache-status")),
                              (b"x-cache", result)])
            self.assertTrue(response.header(b"cache-status").startswith(b"cachingproxy; fwd="),
                            response.header(b"cache-status"))
        self.assertEqual(self.origin.counts[b"/nominates/a"], 4)

    async def _concurrent(self, origin, originPort, n):
        """
        Send C{n} requests for C{/slow} at once, each on its own connection.

        @return: the clients.
        """
        request = b"GET http://127.0.0.1:%d/slow HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        clients = []
        for _ in range(n):
            client = await connectClient(self.port, self)
            client.transport.write(request)
            clients.append(client)
        return clients

    async def test_notCollapsedOnceNotStored(self):
        """
        Once a key's response was not stored, concurrent misses for it go
        upstream at once, each on its own (no waiting for one head), and
        each gets its own answer.
        """
        slow = _SlowUnstored()
        _, originPort = listenOrigin(self, slow)
        [client] = await self._concurrent(slow, originPort, 1)
        await slow.requested
        slow.finish()
        [response] = await client.waitFor(1)
        self.assertEqual(response.header(b"x-cache"), b"MISS")
        slow.pending = []
        clients = await self._concurrent(slow, originPort, 3)
        await until(lambda: slow.count == 4)
        self.assertEqual(self.cache.stats.collapsed, 0)
        slow.finish()
        for client in clients:
            [response] = await client.waitFor(1)
            self.assertEqual(response.body, b"slow body")

    async def test_storedWhenCacheableAgain(self):
        """
        A key whose response was not stored is stored again once the
        origin allows it, and its misses are collapsed again.
        """
        slow = _SlowUnstored()
        _, originPort = listenOrigin(self, slow)
        key = b"http://127.0.0.1:%d/slow" % originPort
        [client] = await self._concurrent(slow, originPort, 1)
        await slow.requested
        slow.finish()
        await client.waitFor(1)
        self.assertIn(key, self.cache._unstored)
        slow.pending = []
        slow.cacheControl = b"max-age=600"
        [client] = await self._concurrent(slow, originPort, 1)
        await until(lambda: slow.count == 2)
        slow.finish()
        [response] = await client.waitFor(1)
        self.assertEqual(response.header(b"x-cache"), b"MISS")
        self.assertNotIn(key, self.cache._unstored)
        [client] = await self._concurrent(slow, originPort, 1)
        [hit] = await client.waitFor(1)
        self.assertEqual((hit.header(b"x-cache"), hit.body), (b"HIT", b"slow body"))
        self.assertEqual(slow.count, 2)


def _withoutTimes(line: str) -> list:
    """
    @return: the parts of access log line C{line} but its times: the time
        of the request, the seconds the origin took (only whether it was
        asked is kept) and the seconds taken in all (the last parts but
        one).
    """
    parts = line.split(" ")
    return parts[:3] + parts[5:-3] + [parts[-3] == "-", parts[-1]]


def _notForTheLane(etag: bytes, stored: bool) -> list:
    """
    @param etag: the validator a conditional request names.
    @param stored: whether a fresh response with C{etag} is stored (the
        conditional request is then answered 304, the range request 206).
    @return: C{(keyword arguments of a test's send, the status the long way
        answers with or C{None})} for each kind of request the connection's
        lane leaves to the long way: conditional and range fields, a
        request for a fresh answer, credentials, a second or no Host, Via
        naming this proxy, a body, Expect, Upgrade, another method or
        version, a connection to close.
    """
    return [
        (dict(fields=b"Host: x\r\nIf-None-Match: %s\r\n" % etag), 304 if stored else 200),
        (dict(fields=b"Host: x\r\nRange: bytes=0-3\r\n"), 206 if stored else 200),
        (dict(fields=b"Host: x\r\nCache-Control: max-age=0\r\n"), 200),
        (dict(fields=b"Host: x\r\nPragma: no-cache\r\n"), 200),
        (dict(fields=b"Host: x\r\nAuthorization: Basic YTpi\r\n"), 200),
        (dict(fields=b"Host: x\r\nHost: y\r\n"), 400),
        (dict(fields=b""), 400),
        (dict(fields=b"Host: x\r\nVia: 1.1 test-proxy\r\n"), 508),
        (dict(fields=b"Host: x\r\nContent-Length: 0\r\n"), 200),
        (dict(fields=b"Host: x\r\nContent-Length: 2\r\n", body=b"ab"), 200),
        (dict(fields=b"Host: x\r\nExpect: 100-continue\r\n"), 200),
        (dict(fields=b"Host: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"), None),
        (dict(method=b"HEAD"), 200),
        (dict(version=b"HTTP/1.0"), 200),
        (dict(fields=b"Host: x\r\nConnection: close\r\n"), 200),
    ]


class HotLaneTests(CacheTestCase):
    """
    In front of one origin, a plain GET for a remembered fresh response is
    answered by its client connection as soon as the head is read (the hot
    lane), with the same bytes, log line and counts as the long way;
    every other request takes the long way.
    """

    reverse = True

    def setUp(self):
        super().setUp()
        from cachingproxy.proxy.exchange import Exchange

        #: the hits the lane answered
        self.laneHits = []
        made = Exchange.answeredHot.__func__

        def answeredHot(cls, protocol, head, origin, bodyLength, headRead=b""):
            exchange = made(cls, protocol, head, origin, bodyLength, headRead)
            self.laneHits.append(exchange)
            return exchange

        self.patch(Exchange, "answeredHot", classmethod(answeredHot))

    async def send(self, path: bytes, fields: bytes = b"Host: x\r\n", method: bytes = b"GET",
                   version: bytes = b"HTTP/1.1", body: bytes = b""):
        _, [response] = await exchange(
            self.port, self, b"%s %s %s\r\n%s\r\n%s" % (method, path, version, fields, body),
            headResponses=[0] if method == b"HEAD" else (),
        )
        return response

    async def warm(self, path: bytes):
        """
        A miss, then a hit the long way, which remembers the response.
        """
        await self.send(path)
        await self.send(path)
        self.assertIn(self.url(path), self.cache._hot)
        self.assertEqual(self.laneHits, [])

    async def test_sameAnswerAndLine(self):
        """
        A lane hit has the status, fields and body of a hit answered the
        long way at the same moment, and the same access log line but for
        its times.
        """
        path = b"/max-age/60/lane"
        await self.warm(path)
        lane = await self.send(path, b"Host: x\r\nUser-Agent: lane/1\r\nReferer: http://r/\r\n")
        self.assertEqual(len(self.laneHits), 1)
        self.factory.lane = None
        slow = await self.send(path, b"Host: x\r\nUser-Agent: lane/1\r\nReferer: http://r/\r\n")
        self.assertEqual(len(self.laneHits), 1)
        self.assertEqual((lane.status, lane.version, lane.headers, lane.body),
                         (slow.status, slow.version, slow.headers, slow.body))
        self.assertEqual(lane.header(b"x-cache"), b"HIT")
        self.assertEqual(self.origin.counts[path], 1)
        slowLine, laneLine = self.lines[-1], self.lines[-2]
        self.assertEqual(_withoutTimes(laneLine), _withoutTimes(slowLine))
        target = path if self.reverse else self.url(path)
        self.assertIn('"GET %s HTTP/1.1" 200 ' % target.decode(), laneLine)
        self.assertIn('"http://r/" "lane/1" HIT - ', laneLine)

    async def test_counted(self):
        """
        The metrics see a lane hit as they see a hit answered the long
        way.
        """
        seen = []

        class Counting:
            def requestDone(self, exchange):
                seen.append((exchange.head.method, exchange.status, exchange.cacheResult,
                             exchange.bytesSent, exchange.bytesReceived,
                             exchange.upstreamOrigin, exchange.upstreamSeconds,
                             exchange.ownEndpoint))

        path = b"/max-age/60/count"
        await self.warm(path)
        self.factory.metrics = Counting()
        await self.send(path)
        self.assertEqual(len(self.laneHits), 1)
        self.factory.lane = None
        await self.send(path)
        self.assertEqual(len(self.laneHits), 1)
        self.assertEqual(seen[0], seen[1])
        self.assertEqual(seen[0][:3], (b"GET", 200, "HIT"))
        self.assertEqual(self.cache.stats.hits, 3)

    async def test_pipelined(self):
        """
        Plain GETs pipelined in one write are each answered by the lane,
        in order; one that is not, between them, the long way in its turn.
        """
        await self.warm(b"/max-age/60/p1")
        await self.warm(b"/max-age/60/p2")
        _, responses = await exchange(
            self.port, self,
            b"GET /max-age/60/p1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /max-age/60/p2 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"nothing\"\r\n\r\n"
            b"GET /max-age/60/p2 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /max-age/60/p1 HTTP/1.1\r\nHost: x\r\n\r\n",
            count=4,
        )
        self.assertEqual([r.body for r in responses],
                         [b"/max-age/60/p1 #1", b"/max-age/60/p2 #1",
                          b"/max-age/60/p2 #1", b"/max-age/60/p1 #1"])
        self.assertEqual([r.header(b"x-cache") for r in responses], [b"HIT"] * 4)
        self.assertEqual([e.head.target for e in self.laneHits],
                         [b"/max-age/60/p1", b"/max-age/60/p2", b"/max-age/60/p1"])

    async def test_otherRequestsTheLongWay(self):
        """
        Whatever a request has that the long way would look at sends it
        the long way, which answers as it always did (see
        L{_notForTheLane}), and so does an absolute-form target in reverse
        mode.
        """
        path = b"/max-age/60/other"
        await self.warm(path)
        etag = (await self.send(path)).header(b"etag")
        self.assertEqual(len(self.laneHits), 1)
        cases = _notForTheLane(etag, stored=True)
        if self.reverse:
            # (in forward mode, the lane's own kind of target)
            cases.append((dict(absolute=True), 200))
        for kwargs, status in cases:
            # Each case is tried right after the lane answered a plain GET
            # (a case that refreshed the stored response is followed by a
            # miss and a hit the long way first).
            for _ in range(3):
                hits = len(self.laneHits)
                await self.send(path)
                if len(self.laneHits) == hits + 1:
                    break
            else:
                self.fail(f"the lane does not answer before {kwargs}")
            hits = len(self.laneHits)
            if kwargs.pop("absolute", False):
                response = await self.send(self.url(path))
            else:
                response = await self.send(path, **kwargs)
            self.assertEqual(len(self.laneHits), hits, kwargs)
            if status is not None:
                self.assertEqual(response.status, status, kwargs)
        # And the lane still answers a plain one.
        await self.send(path)
        self.assertEqual(len(self.laneHits), hits + 1)

    async def test_ownEndpointsTheLongWay(self):
        """
        A target under the proxy's own prefix never takes the lane (here,
        with no own endpoints, it is the origin's, and a hit the long
        way).
        """
        path = b"/_cachingproxy/max-age/60/own"
        await self.send(path)
        await self.send(path)
        third = await self.send(path)
        self.assertEqual(third.header(b"x-cache"), b"HIT")
        self.assertEqual(self.laneHits, [])

    async def test_staleTheLongWay(self):
        """
        Once the remembered response is stale, the lane steps aside and
        the long way fetches it again.
        """
        path = b"/max-age/10/stale"
        await self.warm(path)
        self.clock.advance(11)
        again = await self.send(path)
        self.assertEqual(again.body, path + b" #2")
        self.assertEqual(self.laneHits, [])

    async def test_refusedClient(self):
        """
        A client the access policy refuses is refused, hot response or
        not, and one it allows takes the lane.
        """
        from cachingproxy.access import AccessPolicy

        path = b"/max-age/60/acl"
        await self.warm(path)
        self.factory.access = AccessPolicy(allow=["192.0.2.0/24"], clock=self.clock)
        self.assertIsNotNone(self.factory.lane)
        refused = await self.send(path)
        self.assertEqual(refused.status, 403)
        self.factory.access = AccessPolicy(allow=["loopback"], clock=self.clock)
        allowed = await self.send(path)
        self.assertEqual(allowed.header(b"x-cache"), b"HIT")
        self.assertEqual(len(self.laneHits), 1)

    async def test_authenticatingNoLane(self):
        """
        With proxy authentication there is no lane: every request is
        checked the long way.
        """
        from cachingproxy.access import AccessPolicy

        from .helpers import temporaryPath

        path = b"/max-age/60/auth"
        await self.warm(path)
        from cachingproxy.htpasswd import shaCrypt

        users = temporaryPath(self, "users")
        with open(users, "wb") as f:
            f.write(b"alice:" + shaCrypt(b"secret", b"$5$salt") + b"\n")
        self.factory.access = AccessPolicy(authFile=users, clock=self.clock)
        self.assertIsNone(self.factory.lane)
        response = await self.send(path)
        self.assertEqual(response.status, 407)
        self.assertEqual(self.laneHits, [])


class ForwardHotLaneTests(HotLaneTests):
    """
    In forward mode the hot lane answers plain GETs with absolute-form
    targets, each with its own origin and the access verdicts on it; an
    origin-form target (the proxy's own pages there) takes the long way.
    """

    reverse = False

    async def send(self, path: bytes, fields: bytes = b"Host: x\r\n", method: bytes = b"GET",
                   version: bytes = b"HTTP/1.1", body: bytes = b"", authority: bytes = b""):
        target = path if path.startswith(b"http") else (
            b"http://%s%s" % (authority, path) if authority else self.url(path))
        return await super().send(target, fields, method, version, body)

    async def test_pipelined(self):
        """
        Plain GETs pipelined in one write are each answered by the lane,
        in order, whatever their origin; one that is not, between them,
        the long way in its turn.
        """
        other = b"localhost:%d" % self.originPort
        await self.warm(b"/max-age/60/p1")
        # The same path at another authority is another key: the origin
        # answers it again.
        await self.send(b"/max-age/60/p1", authority=other)
        await self.send(b"/max-age/60/p1", authority=other)
        self.assertEqual(self.laneHits, [])
        first, second = self.url(b"/max-age/60/p1"), b"http://%s/max-age/60/p1" % other
        _, responses = await exchange(
            self.port, self,
            b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET %s HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"nothing\"\r\n\r\n"
            b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % (first, second, second, first),
            count=4,
        )
        self.assertEqual([r.body for r in responses],
                         [b"/max-age/60/p1 #1", b"/max-age/60/p1 #2",
                          b"/max-age/60/p1 #2", b"/max-age/60/p1 #1"])
        self.assertEqual([r.header(b"x-cache") for r in responses], [b"HIT"] * 4)
        self.assertEqual([(e.head.target, e.upstreamOrigin.host) for e in self.laneHits],
                         [(first, "127.0.0.1"), (second, "localhost"), (first, "127.0.0.1")])
        self.assertEqual(self.origin.counts[b"/max-age/60/p1"], 2)

    async def test_otherRequestsTheLongWay(self):
        """
        As in reverse mode, and an origin-form target: for the proxy
        itself (without its own pages, as here, refused).
        """
        await HotLaneTests.test_otherRequestsTheLongWay(self)
        hits = len(self.laneHits)
        _, [own] = await exchange(self.port, self,
                                  b"GET /max-age/60/other HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(own.status, 400)
        self.assertEqual(len(self.laneHits), hits)

    async def test_ownEndpointsTheLongWay(self):
        """
        A target that may name the proxy's own endpoints never takes the
        lane, whatever its host (here they are the origin's, and hits the
        long way; the landing paths are left too: see
        L{tests.test_server.HotLaneDecisionTests.test_forward}).
        """
        await HotLaneTests.test_ownEndpointsTheLongWay(self)

    async def test_refusedDestination(self):
        """
        A destination the access policy refuses is refused, hot response
        or not, even on a connection whose other destination took the
        lane.
        """
        from cachingproxy.access import AccessPolicy

        other = b"localhost:%d" % self.originPort
        path = b"/max-age/60/dest"
        await self.warm(path)
        await self.send(path, authority=other)
        await self.send(path, authority=other)
        self.factory.access = AccessPolicy(allow=["loopback"], denyDest=["localhost"],
                                           clock=self.clock)
        _, responses = await exchange(
            self.port, self,
            b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET http://%s%s HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % (self.url(path), other, path, self.url(path)),
            count=3,
        )
        self.assertEqual([r.status for r in responses], [200, 403, 200])
        self.assertEqual([e.head.target for e in self.laneHits], [self.url(path)] * 2)


class PassLaneTests(CacheTestCase):
    """
    In front of one origin, a plain GET for a key remembered as passing
    (its last response was not stored, for a reason its status and
    Cache-Control alone decide) is forwarded by its client connection as
    soon as the head is read, through the cache layer's remembered pass:
    the origin gets the request the long way sends, the client the answer
    and the log line the long way gives; every other request takes the
    long way.
    """

    reverse = True

    def setUp(self):
        super().setUp()
        from cachingproxy.proxy.exchange import Exchange

        #: the requests the lane forwarded
        self.lanePasses = []
        startKnown = Exchange.startKnown

        def recorded(exchange, origin, path):
            self.lanePasses.append(exchange)
            startKnown(exchange, origin, path)

        self.patch(Exchange, "startKnown", recorded)

    async def send(self, path: bytes, fields: bytes = b"Host: x\r\n", method: bytes = b"GET",
                   version: bytes = b"HTTP/1.1", body: bytes = b""):
        target = path if self.reverse or path.startswith(b"http") else self.url(path)
        _, [response] = await exchange(
            self.port, self, b"%s %s %s\r\n%s\r\n%s" % (method, target, version, fields, body),
            headResponses=[0] if method == b"HEAD" else (),
        )
        return response

    async def remember(self, path: bytes):
        """
        A miss whose response is not stored: its key is then remembered as
        passing.
        """
        first = await self.send(path)
        self.assertEqual(first.header(b"x-cache"), b"MISS")
        self.assertIn(self.url(path), self.cache._passing)
        self.assertEqual(self.lanePasses, [])

    async def test_sameRequestAndAnswer(self):
        """
        The lane sends the origin what the long way sends (Host, Via, and
        without the fields the client's Connection names), and the client
        gets the same status, fields and log line but for its times.
        """
        path = b"/no-store/lane"
        fields = (b"Host: x\r\nUser-Agent: lane/1\r\nReferer: http://r/\r\n"
                  b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nAccept: */*\r\n")
        await self.remember(path)
        lane = await self.send(path, fields)
        self.assertEqual(len(self.lanePasses), 1)
        self.factory.lane = None
        slow = await self.send(path, fields)
        self.assertEqual(len(self.lanePasses), 1)
        laneSent, slowSent = self.origin.requests[-2:]
        self.assertEqual(laneSent, slowSent)
        self.assertNotIn(b"x-hop", laneSent[2])
        self.assertEqual((laneSent[2][b"via"], laneSent[2][b"user-agent"]),
                         (b"1.1 test-proxy", b"lane/1"))
        self.assertEqual((lane.status, lane.version, lane.headers),
                         (slow.status, slow.version, slow.headers))
        self.assertEqual((lane.body, slow.body), (path + b" #2", path + b" #3"))
        self.assertEqual(lane.header(b"x-cache"), b"MISS")
        self.assertIn(b"detail=", lane.header(b"cache-status"))
        slowLine, laneLine = self.lines[-1], self.lines[-2]
        self.assertEqual(_withoutTimes(laneLine), _withoutTimes(slowLine))
        target = path if self.reverse else self.url(path)
        self.assertIn('"GET %s HTTP/1.1" 200 ' % target.decode(), laneLine)
        self.assertIn('"http://r/" "lane/1" MISS ', laneLine)
        self.assertEqual(self.cache.stats.misses, 3)

    async def test_counted(self):
        """
        The metrics see a request the lane forwarded as they see one the
        long way.
        """
        seen = []

        class Counting:
            def requestDone(self, exchange):
                seen.append((exchange.head.method, exchange.status, exchange.cacheResult,
                             exchange.bytesSent, exchange.bytesReceived,
                             exchange.upstreamOrigin, exchange.ownEndpoint,
                             exchange.upstreamSeconds is not None))

        path = b"/no-store/count"
        await self.remember(path)
        self.factory.metrics = Counting()
        await self.send(path)
        self.assertEqual(len(self.lanePasses), 1)
        self.factory.lane = None
        await self.send(path)
        self.assertEqual(len(self.lanePasses), 1)
        self.assertEqual(seen[0], seen[1])
        self.assertEqual(seen[0][:3], (b"GET", 200, "MISS"))

    async def test_otherRequestsTheLongWay(self):
        """
        Whatever the lane does not look into takes the long way, which
        answers as it always did (see L{_notForTheLane}), and so does an
        absolute-form target in reverse mode.
        """
        path = b"/no-store/other"
        await self.remember(path)
        cases = _notForTheLane(b'"v1"', stored=False)
        if self.reverse:
            # (in forward mode, the lane's own kind of target)
            cases.append((dict(path=self.url(path)), 200))
        for kwargs, status in cases:
            passes = len(self.lanePasses)
            await self.send(path)
            self.assertEqual(len(self.lanePasses), passes + 1, kwargs)
            response = await self.send(kwargs.pop("path", path), **kwargs)
            self.assertEqual(len(self.lanePasses), passes + 1, kwargs)
            if status is not None:
                self.assertEqual(response.status, status, kwargs)
            self.assertIn(self.url(path), self.cache._passing, kwargs)
        await self.send(path)
        self.assertEqual(len(self.lanePasses), passes + 2)

    async def test_pipelined(self):
        """
        Plain GETs pipelined in one write: the first, read with nothing
        before it, takes the lane; those behind it the long way, each
        answered in its turn.
        """
        path = b"/no-store/pipelined"
        await self.remember(path)
        request = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % (
            path if self.reverse else self.url(path))
        _, responses = await exchange(self.port, self, request * 3, count=3)
        self.assertEqual([r.body for r in responses],
                         [path + b" #2", path + b" #3", path + b" #4"])
        self.assertEqual([r.header(b"x-cache") for r in responses], [b"MISS"] * 3)
        self.assertEqual(len(self.lanePasses), 1)

    async def test_storedMeanwhile(self):
        """
        Once something is stored for the key (the store's stamp changed),
        the lane steps aside and the long way answers from the store.
        """
        path = b"/no-store/meanwhile"
        await self.remember(path)
        await self.send(path)
        self.assertEqual(len(self.lanePasses), 1)
        _storeFresh(self, self.store, path, b"stored meanwhile")
        hit = await self.send(path)
        self.assertEqual((hit.header(b"x-cache"), hit.body), (b"HIT", b"stored meanwhile"))
        self.assertEqual(len(self.lanePasses), 1)
        self.assertEqual(self.origin.counts[path], 2)

    async def test_answerChanged(self):
        """
        When the origin's answer to a request the lane forwarded says
        something else (here, that it may be stored), the key is no longer
        a pass: the response is stored, and the next request is a hit.
        """
        path = b"/switch/changed"
        await self.remember(path)
        await self.send(path)
        self.origin.cacheControl = b"max-age=60"
        changed = await self.send(path)
        self.assertEqual(len(self.lanePasses), 2)
        self.assertEqual(changed.header(b"x-cache"), b"MISS")
        self.assertIn(b"stored", changed.header(b"cache-status"))
        self.assertNotIn(self.url(path), self.cache._passing)
        hit = await self.send(path)
        self.assertEqual((hit.header(b"x-cache"), hit.body), (b"HIT", path + b" #3"))
        self.assertEqual(len(self.lanePasses), 2)

    async def test_refusedClient(self):
        """
        A client the access policy refuses is refused, remembered pass or
        not, and one it allows takes the lane.
        """
        from cachingproxy.access import AccessPolicy

        path = b"/no-store/acl"
        await self.remember(path)
        self.factory.access = AccessPolicy(allow=["192.0.2.0/24"], clock=self.clock)
        self.assertIsNotNone(self.factory.lane)
        refused = await self.send(path)
        self.assertEqual(refused.status, 403)
        self.assertEqual(self.lanePasses, [])
        self.factory.access = AccessPolicy(allow=["loopback"], clock=self.clock)
        allowed = await self.send(path)
        self.assertEqual((allowed.status, allowed.header(b"x-cache")), (200, b"MISS"))
        self.assertEqual(len(self.lanePasses), 1)
        self.assertEqual(self.origin.counts[path], 2)


class ForwardPassLaneTests(PassLaneTests):
    """
    In forward mode the lane forwards plain GETs with absolute-form
    targets of keys remembered as passing, each to its own origin.
    """

    reverse = False

    async def test_otherOrigin(self):
        """
        The same path at another authority is another key, which is not
        a pass until its own response says so; the lane then sends each
        to its own origin.
        """
        path = b"/no-store/origins"
        other = b"http://localhost:%d%s" % (self.originPort, path)
        await self.remember(path)
        first = await self.send(other)
        self.assertEqual(first.body, path + b" #2")
        self.assertEqual(self.lanePasses, [])
        await self.send(path)
        await self.send(other)
        self.assertEqual([(e.head.target, e.upstreamOrigin.host, e.upstreamPath)
                          for e in self.lanePasses],
                         [(self.url(path), "127.0.0.1", path), (other, "localhost", path)])
        self.assertEqual(self.origin.requests[-1][2][b"host"], b"localhost:%d" % self.originPort)

