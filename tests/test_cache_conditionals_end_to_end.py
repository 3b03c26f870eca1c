"""
Revalidation against origins that answer 304 without validators (a
scripted one, and Python's own C{http.server}), client conditionals
without Last-Modified, responses to POST reused for GET, and variants of
Accept-* fields normalised: through real loopback sockets, counting what
the origin is asked.
"""

import os
import re
import signal
import sys
import time

from twisted.internet import reactor

from . import test_cache_end_to_end as cached
from .helpers import Twistd, connectClient, exchange, listenScripted, temporaryPath
from cachingproxy.http.headers import formatHTTPDate


class NotModifiedWithoutValidatorsTests(cached.CacheTestCase):
    """
    RFC 9111 section 4.3.4: a 304 that repeats no validator answers the
    cache's own conditional request for one stored response.
    """

    async def test_oneRequestPerRevalidation(self):
        """
        RFC 9111 sections 4.3.4 and 3.2: the stale entry is revalidated
        with one conditional request; the 304 without ETag or Last-Modified
        updates it (its max-age replaces the stored one) and the stored
        body is served, marked as revalidated in Cache-Status (RFC 9211).
        """
        first = await self.get(b"/bare304/a")
        second = await self.get(b"/bare304/a")
        self.assertEqual(self.origin.counts[b"/bare304/a"], 2)
        self.assertEqual(self.origin.requests[1][2].get(b"if-none-match"), b'"fixed"')
        self.assertEqual((first.status, first.body), (200, b"bare304 body"))
        self.assertEqual((second.status, second.body), (200, b"bare304 body"))
        self.assertEqual(second.header(b"x-cache"), b"REVALIDATED")
        status = second.header(b"cache-status")
        self.assertTrue(status.startswith(b"cachingproxy; hit; fwd=stale; fwd-status=304"),
                        status)
        self.assertEqual(second.header(b"x-revalidated"), b"2")
        self.assertEqual(second.header(b"etag"), b'"fixed"')
        third = await self.get(b"/bare304/a")
        self.assertEqual((third.body, third.header(b"x-cache")), (b"bare304 body", b"HIT"))
        self.assertEqual(self.origin.counts[b"/bare304/a"], 2)


class PythonHttpServerTests(cached.CacheTestCase):
    """
    Against a real C{python -m http.server}, whose 304 carries only Server
    and Date.
    """

    timeout = 60

    async def startHttpServer(self, directory: str, log: str) -> int:
        """
        Run C{python -m http.server} on a free loopback port, serving
        C{directory}, its request log (stderr) written to C{log}.

        @return: the port.
        """
        process = Twistd()
        # The protocol waits for twistd's own line, which never comes.
        process.listening.addErrback(lambda _: None)
        logFile = open(log, "wb")
        self.addCleanup(logFile.close)
        transport = reactor.spawnProcess(
            process, sys.executable,
            [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
             "--directory", directory],
            env=dict(os.environ), childFDs={0: "w", 1: "r", 2: logFile.fileno()},
        )

        def stop():
            if not process.ended.called:
                transport.signalProcess(signal.SIGTERM)
            return process.ended

        self.addCleanup(stop)
        await process.waitForOutput(b"Serving HTTP on")
        return int(re.search(rb"port (\d+)", process.output).group(1))

    def requestLines(self, log: str):
        """
        @return: the request lines the server has logged. Each is written
            before the response it logs is sent, so once the proxy has
            answered they are all there.
        """
        with open(log, "rb") as f:
            return [line for line in f.read().splitlines() if b'"GET ' in line]

    async def test_revalidationCostsOneRequest(self):
        """
        RFC 9111 sections 4.2.2, 4.3.1 and 4.3.4: a file fresh for a
        heuristic second (a tenth of the ten seconds since its
        modification) goes stale; each revalidation is one If-Modified-Since
        request answered 304 without validators, and the client gets the
        stored 200.
        """
        directory = os.path.dirname(temporaryPath(self))
        log = temporaryPath(self, "requests.log")
        path = os.path.join(directory, "page.txt")
        with open(path, "wb") as f:
            f.write(b"served by http.server\n")
        modified = int(time.time()) - 10
        os.utime(path, (modified, modified))
        port = await self.startHttpServer(directory, log)
        url = b"http://127.0.0.1:%d/page.txt" % port
        request = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % url

        _, [first] = await exchange(self.port, self, request)
        self.assertEqual((first.status, first.body), (200, b"served by http.server\n"))
        self.assertIn(b"stored", first.header(b"cache-status"))
        self.assertEqual(len(self.requestLines(log)), 1)
        for revalidation in (1, 2):
            self.clock.advance(5)
            _, [again] = await exchange(self.port, self, request)
            self.assertEqual((again.status, again.body), (200, b"served by http.server\n"))
            self.assertEqual(again.header(b"x-cache"), b"REVALIDATED")
            self.assertIn(b"fwd-status=304", again.header(b"cache-status"))
            lines = self.requestLines(log)
            self.assertEqual(len(lines), 1 + revalidation, lines)
            self.assertIn(b'" 304 ', lines[-1])


class ClientConditionalTests(cached.CacheTestCase):
    """
    A client's conditional request answered from a stored response without
    Last-Modified.
    """

    async def test_ifModifiedSinceAgainstDate(self):
        """
        RFC 9110 section 13.1.3, RFC 9111 section 4.3.2: without a stored
        Last-Modified, If-Modified-Since is compared with the stored Date;
        If-None-Match, when present, decides instead.
        """
        first = await self.get(b"/max-age/60/ims")
        self.assertIsNone(first.header(b"last-modified"))
        stamped = first.header(b"date")
        later = formatHTTPDate(self.clock.seconds() + 10)
        earlier = formatHTTPDate(self.clock.seconds() - 10)
        notModified = await self.get(b"/max-age/60/ims", b"If-Modified-Since: %s\r\n" % stamped)
        self.assertEqual((notModified.status, notModified.body), (304, b""))
        self.assertEqual(notModified.header(b"etag"), b'"v1"')
        notModified = await self.get(b"/max-age/60/ims", b"If-Modified-Since: %s\r\n" % later)
        self.assertEqual(notModified.status, 304)
        modified = await self.get(b"/max-age/60/ims", b"If-Modified-Since: %s\r\n" % earlier)
        self.assertEqual((modified.status, modified.body), (200, b"/max-age/60/ims #1"))
        otherTag = await self.get(
            b"/max-age/60/ims", b'If-None-Match: "v0"\r\nIf-Modified-Since: %s\r\n' % later)
        self.assertEqual(otherTag.status, 200)
        sameTag = await self.get(
            b"/max-age/60/ims", b'If-None-Match: "v1"\r\nIf-Modified-Since: %s\r\n' % earlier)
        self.assertEqual(sameTag.status, 304)
        self.assertEqual(self.origin.counts[b"/max-age/60/ims"], 1)


class PostReuseTests(cached.CacheTestCase):
    """
    RFC 9110 section 9.3.3: a response to POST with explicit freshness and
    its target as Content-Location answers later GET and HEAD requests.
    """

    async def test_postThenGet(self):
        """
        RFC 9110 section 9.3.3, RFC 9111 section 4.4: the POST is forwarded
        and its response stored, after the invalidation it causes, in place
        of what was stored for the URI: the following GET and HEAD are hits
        with the POST's body and fields.
        """
        for mode in (b"same", b"absolute"):
            path = b"/post/%s/a" % mode
            before = await self.get(path)
            self.assertEqual(before.body, path + b" #1")
            posted = await self.get(path, method=b"POST")
            self.assertEqual(posted.body, b"posted %s #2" % path)
            self.assertEqual(posted.header(b"x-cache"), b"PASS")
            self.assertIn(b"stored", posted.header(b"cache-status"))
            hit = await self.get(path)
            self.assertEqual((hit.status, hit.body), (200, b"posted %s #2" % path))
            self.assertEqual(hit.header(b"x-cache"), b"HIT")
            self.assertIsNotNone(hit.header(b"content-location"))
            head = await self.get(path, method=b"HEAD")
            self.assertEqual((head.status, head.header(b"x-cache")), (200, b"HIT"))
            self.assertEqual(self.origin.counts[path], 2)
            again = await self.get(path, method=b"POST")
            self.assertEqual(again.body, b"posted %s #3" % path)
            self.assertEqual(self.origin.counts[path], 3)

    async def test_notStored(self):
        """
        RFC 9110 section 9.3.3: without Content-Location, with another one,
        or without explicit freshness, the POST response is not stored (and
        the stored GET response is still invalidated, RFC 9111 section
        4.4).
        """
        for mode in (b"none", b"other", b"no-fresh"):
            path = b"/post/%s/b" % mode
            await self.get(path)
            posted = await self.get(path, method=b"POST")
            self.assertEqual(posted.body, b"posted %s #2" % path)
            self.assertNotIn(b"stored", posted.header(b"cache-status"))
            after = await self.get(path)
            self.assertEqual((after.body, after.header(b"x-cache")), (path + b" #3", b"MISS"))


    async def test_truncatedNotStored(self):
        """
        RFC 9111 section 3.3: a storable response to POST that the origin
        cuts short is not stored; the same response whole is.
        """
        head = (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
                b"Content-Location: /form\r\nContent-Length: 10\r\n\r\n")
        for body, stored in ((b"0123", False), (b"0123456789", True)):
            _, port = listenScripted(self, [head + body, None])
            uri = b"http://127.0.0.1:%d/form" % port
            client = await connectClient(self.port, self)
            client.transport.write(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                                   % uri)
            # The whole response, or the close that follows the cut.
            responses = await client.waitFor(1)
            self.assertEqual(len(responses), 1 if stored else 0)
            self.assertEqual(len(self.store.entries(uri)), 1 if stored else 0, body)


class VaryNormalisationTests(cached.CacheTestCase):
    """
    RFC 9111 section 4.1: Accept-Encoding values that mean the same select
    the same stored variant.
    """

    async def test_sameEncodingsShareAVariant(self):
        """
        RFC 9111 section 4.1, RFC 9110 section 12.5.3: C{gzip, br} and
        C{BR,gzip} share one stored variant (one upstream request); C{gzip}
        alone is another.
        """
        one = await self.get(b"/vary-encoding/e", b"Accept-Encoding: gzip, br\r\n")
        two = await self.get(b"/vary-encoding/e", b"Accept-Encoding: BR,gzip\r\n")
        self.assertEqual(one.body, b"encoding=gzip, br #1")
        self.assertEqual((two.body, two.header(b"x-cache")), (b"encoding=gzip, br #1", b"HIT"))
        self.assertEqual(self.origin.counts[b"/vary-encoding/e"], 1)
        other = await self.get(b"/vary-encoding/e", b"Accept-Encoding: gzip\r\n")
        self.assertEqual(other.body, b"encoding=gzip #2")
        self.assertEqual(self.origin.counts[b"/vary-encoding/e"], 2)
