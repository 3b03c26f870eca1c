"""
Faults, through real loopback sockets: origins that truncate, reset, stall,
lie about their length or frame their responses wrongly; clients that stall
or vanish; a cache folder removed or made unwritable while the proxy runs;
a worker killed with SIGKILL while it stores.

Each test runs the caching proxy (forward mode) with a L{DiskStore} on a
temporary folder in front of a scripted origin, and checks what the client
sees, what the origin sees, and what is left on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from cachingproxy.cache.disk import DiskStore
from cachingproxy.cache.layer import CacheLayer, CacheSettings
from cachingproxy.proxy.settings import ProxySettings
from cachingproxy.proxy.upstream import UpstreamSettings

from .helpers import (
    connectClient,
    exchange,
    listenOrigin,
    listenScripted,
    pattern,
    startProxy,
    temporaryPath,
    until,
)

def _head(n: int, extra: bytes = b"Cache-Control: max-age=60\r\n") -> bytes:
    """
    @return: a response head for C{n} bytes of body (cacheable unless
        C{extra} says otherwise).
    """
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (n, extra)


def _files(folder: str) -> list:
    """
    @return: every regular file under C{folder} (empty if it is missing).
    """
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            found.append(os.path.join(root, name))
    return sorted(found)


class _Counting(Resource):
    """
    An origin answering every path with C{path #n} (n counts requests for
    that path) and C{Cache-Control: max-age=60}.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict = {}

    def render(self, request):
        path = request.path
        self.counts[path] = self.counts.get(path, 0) + 1
        request.setHeader(b"Cache-Control", b"max-age=60")
        return b"%s #%d" % (path, self.counts[path])


class FaultTestCase(TestCase):
    """
    A caching proxy with a L{DiskStore} on a temporary folder.
    """

    timeout = 30

    def proxySettings(self) -> ProxySettings:
        return ProxySettings(viaName=b"test-proxy")

    def upstreamSettings(self) -> UpstreamSettings:
        return UpstreamSettings(connectTimeout=5, responseTimeout=5)

    def setUp(self):
        self.folder = temporaryPath(self, "cache")
        os.makedirs(self.folder)
        self.dataDir = os.path.join(self.folder, "data")
        self.tmpDir = os.path.join(self.folder, "tmp")
        self.store = DiskStore(self.folder, maxSize=1 << 30, maxObjectSize=1 << 26)
        self.factory, self.port, self.lines = startProxy(
            self, self.proxySettings(), self.upstreamSettings())
        self.cache = CacheLayer(self.store, reactor, self.factory.pool, CacheSettings())
        self.factory.cache = self.cache

    def request(self, originPort: int, path: bytes) -> bytes:
        return b"GET http://127.0.0.1:%d%s HTTP/1.1\r\nHost: x\r\n\r\n" % (originPort, path)

    def key(self, originPort: int, path: bytes) -> bytes:
        return b"http://127.0.0.1:%d%s" % (originPort, path)

    def assertNothingStored(self, originPort: int, path: bytes) -> None:
        """
        No entry for C{path}, no file in the data folder, no temporary file
        left.
        """
        self.assertEqual(self.store.entries(self.key(originPort, path)), [])
        self.assertEqual(_files(self.dataDir), [])
        self.assertEqual(_files(self.tmpDir), [])

    async def brokenOff(self, originPort: int, path: bytes):
        """
        Send a GET for C{path} and wait for the proxy to close the client
        connection.

        @return: the client.
        """
        client = await connectClient(self.port, self)
        client.transport.write(self.request(originPort, path))
        await client.closed
        return client


class BrokenOriginTests(FaultTestCase):
    """
    An origin that breaks off a cacheable response: the client's
    connection ends without a complete message (never a false end), nothing
    is stored, and the next request goes upstream again.
    """

    async def _brokenTwice(self, script):
        origin, originPort = listenScripted(self, script)
        first = await self.brokenOff(originPort, b"/broken")
        self.assertEqual(first.finalResponses(), [])
        self.assertIn(b"HTTP/1.1 200 ", first.raw)
        self.assertNothingStored(originPort, b"/broken")
        second = await self.brokenOff(originPort, b"/broken")
        self.assertEqual(second.finalResponses(), [])
        self.assertNothingStored(originPort, b"/broken")
        self.assertEqual(len(origin.connections), 2)
        self.assertEqual([c.received.count(b"GET /broken ") for c in origin.connections],
                         [1, 1])
        self.assertEqual(self.cache.stats.stored, 0)
        self.assertEqual(self.factory.pool.idleCount(), 0)

    async def test_truncated(self):
        """
        The origin closes after 400 of 1000 declared bytes.
        """
        await self._brokenTwice([_head(1000) + pattern(400), 0.05, None])

    async def test_resetMidBody(self):
        """
        The origin resets the connection (RST) after 400 of 1000 declared
        bytes.
        """
        await self._brokenTwice([_head(1000) + pattern(400), 0.05, "abort"])

    async def test_truncatedChunked(self):
        """
        A chunked body closed before its last chunk is broken off too.
        """
        await self._brokenTwice([
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            b"Cache-Control: max-age=60\r\n\r\n10\r\n0123456789abcdef\r\n",
            0.05, None])


class StalledOriginTests(FaultTestCase):
    """
    An origin that sends a head and part of the body, then nothing.
    """

    def upstreamSettings(self) -> UpstreamSettings:
        return UpstreamSettings(connectTimeout=5, responseTimeout=0.5)

    async def test_stalledBody(self):
        """
        After the upstream timeout the client connection closes without a
        complete response, the upstream connection is closed, and nothing
        is stored.
        """
        origin, originPort = listenScripted(self, [_head(1000) + pattern(300)])
        started = time.monotonic()
        client = await self.brokenOff(originPort, b"/stall")
        took = time.monotonic() - started
        self.assertEqual(client.finalResponses(), [])
        self.assertIn(pattern(300), client.raw)
        self.assertGreaterEqual(took, 0.4)
        self.assertLess(took, 5)
        await origin.whenLost()
        self.assertNothingStored(originPort, b"/stall")
        self.assertEqual(self.factory.pool.idleCount(), 0)

    async def test_stalledHead(self):
        """
        An origin that accepts the request and says nothing is a 504 after
        the upstream timeout.
        """
        origin, originPort = listenScripted(self, [])
        _, [response] = await exchange(self.port, self, self.request(originPort, b"/silent"))
        self.assertEqual(response.status, 504)
        self.assertNothingStored(originPort, b"/silent")


class LyingOriginTests(FaultTestCase):
    """
    An origin that sends more bytes than its Content-Length.
    """

    async def _lies(self, script):
        origin, originPort = listenScripted(self, script)
        client = await connectClient(self.port, self)
        client.transport.write(self.request(originPort, b"/lie/1"))
        [first] = await client.waitFor(1)
        self.assertEqual(first.status, 200)
        self.assertEqual(first.body, b"0123456789")
        # The extra bytes make the proxy drop the upstream connection.
        await origin.whenLost()
        self.assertEqual(self.factory.pool.idleCount(), 0)
        client.transport.write(self.request(originPort, b"/lie/2"))
        [_, second] = await client.waitFor(2)
        self.assertEqual(second.status, 200)
        self.assertEqual(second.body, b"0123456789")
        # Nothing extra reached the client, and its connection still works.
        self.assertEqual(client.raw.count(b"EXTRA"), 0)
        self.assertEqual(len(origin.connections), 2)
        self.assertEqual([c.received.count(b"GET /lie/") for c in origin.connections], [1, 1])

    async def test_extraInSameWrite(self):
        """
        The extra bytes arrive with the body: the client gets exactly
        Content-Length bytes, and the connection is not reused.
        """
        await self._lies([_head(10, b"Cache-Control: no-store\r\n") + b"0123456789"
                          + b"EXTRA-EXTRA-EXTRA"])

    async def test_extraLater(self):
        """
        The extra bytes arrive after the response ended: the connection,
        idle in the pool by then, is closed, never reused.
        """
        await self._lies([_head(10, b"Cache-Control: no-store\r\n") + b"0123456789", 0.1,
                          b"EXTRA-EXTRA-EXTRA"])


class InvalidFramingTests(FaultTestCase):
    """
    A response whose framing cannot be trusted is a 502, never stored.
    """

    async def _badGateway(self, script):
        origin, originPort = listenScripted(self, script)
        client, responses = await exchange(self.port, self,
                                           self.request(originPort, b"/framing"))
        self.assertEqual([r.status for r in responses], [502], client.raw)
        self.assertNothingStored(originPort, b"/framing")
        await origin.whenLost()
        self.assertEqual(self.factory.pool.idleCount(), 0)

    async def test_contentLengthAndChunked(self):
        """
        Content-Length together with Transfer-Encoding: chunked.
        """
        await self._badGateway([
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
            b"Cache-Control: max-age=60\r\n\r\n5\r\nhello\r\n0\r\n\r\n"])

    async def test_garbageStatus(self):
        """
        A status line that is not HTTP.
        """
        await self._badGateway([b"HTPP/1.1 2OO OK\r\nCache-Control: max-age=60\r\n\r\nbody"])

    async def test_conflictingContentLengths(self):
        """
        Two different Content-Length values.
        """
        await self._badGateway([
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n"
            b"Cache-Control: max-age=60\r\n\r\nhello!!"])

    async def test_badChunkSize(self):
        """
        A chunk size that is not hexadecimal: the head went out already, so
        the client connection is closed without a complete response.
        """
        origin, originPort = listenScripted(self, [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            b"Cache-Control: max-age=60\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"])
        client = await self.brokenOff(originPort, b"/framing")
        statuses = [r.status for r in client.finalResponses()]
        self.assertIn(statuses, ([], [502]))
        self.assertNothingStored(originPort, b"/framing")


class StalledClientTests(FaultTestCase):
    """
    A client that sends half a request head and stops.
    """

    def proxySettings(self) -> ProxySettings:
        return ProxySettings(viaName=b"test-proxy", headerTimeout=0.5)

    async def test_halfHead(self):
        """
        The header timeout closes the connection (with a 408), and the
        origin is never asked.
        """
        origin, originPort = listenOrigin(self)
        client = await connectClient(self.port, self)
        started = time.monotonic()
        client.transport.write(b"GET http://127.0.0.1:%d/size/10 HTTP/1.1\r\nHo" % originPort)
        await client.closed
        took = time.monotonic() - started
        self.assertGreaterEqual(took, 0.4)
        self.assertLess(took, 5)
        self.assertIn([r.status for r in client.finalResponses()], ([], [408]))
        self.assertEqual(origin.requests, [])
        await until(lambda: self.factory.openConnections == 0)


class VanishingClientTests(FaultTestCase):
    """
    A client that closes during a large cacheable response from a slow
    origin.
    """

    async def test_vanishMidResponse(self):
        """
        Nothing is left in the tmp folder, nothing is stored, and the
        upstream connection is closed, not pooled.
        """
        size = 8 * 1024 * 1024
        origin, originPort = listenScripted(
            self, [_head(size) + pattern(1024 * 1024), 20.0, pattern(size - 1024 * 1024)])
        client = await connectClient(self.port, self)
        client.transport.write(self.request(originPort, b"/big"))
        await client.whenTrue(lambda c: len(c.raw) > 512 * 1024)
        # The body is being written to a temporary file.
        await until(lambda: len(_files(self.tmpDir)) == 1)
        client.transport.abortConnection()
        await client.closed
        await origin.whenLost()
        await until(lambda: not _files(self.tmpDir))
        self.assertNothingStored(originPort, b"/big")
        self.assertEqual(self.factory.pool.idleCount(), 0)
        self.assertEqual(self.cache._flights, {})


class CacheFolderTests(FaultTestCase):
    """
    The cache folder disappears or cannot be written while the proxy runs:
    requests keep being answered (uncached), and caching resumes once the
    folder is usable.
    """

    def setUp(self):
        super().setUp()
        self.origin = _Counting()
        _, self.originPort = listenOrigin(self, self.origin)

    async def get(self, path: bytes):
        _, [response] = await exchange(self.port, self, self.request(self.originPort, path))
        return response

    async def assertCaching(self, path: bytes) -> None:
        """
        A request for a new C{path} is a stored MISS, the next a HIT.
        """
        before = self.origin.counts.get(path, 0)
        miss = await self.get(path)
        hit = await self.get(path)
        self.assertEqual((miss.status, miss.header(b"x-cache")), (200, b"MISS"))
        self.assertEqual((hit.status, hit.header(b"x-cache")), (200, b"HIT"))
        self.assertEqual(hit.body, miss.body)
        self.assertEqual(self.origin.counts[path], before + 1)

    async def assertUncached(self, path: bytes) -> None:
        """
        Two requests for C{path} are both 200 MISS from the origin.
        """
        before = self.origin.counts.get(path, 0)
        for n in (1, 2):
            response = await self.get(path)
            self.assertEqual((response.status, response.header(b"x-cache")), (200, b"MISS"))
            self.assertEqual(response.body, b"%s #%d" % (path, before + n))
        self.assertEqual(self.origin.counts[path], before + 2)

    async def test_folderRemoved(self):
        """
        The whole cache folder is removed between requests: what was
        stored is gone (a MISS, served), the store recreates its folders,
        and caching works again.
        """
        await self.assertCaching(b"/a")
        shutil.rmtree(self.folder)
        response = await self.get(b"/a")
        self.assertEqual((response.status, response.header(b"x-cache")), (200, b"MISS"))
        self.assertEqual(response.body, b"/a #2")
        await self.assertCaching(b"/b")
        again = await self.get(b"/a")
        self.assertEqual((again.status, again.header(b"x-cache"), again.body),
                         (200, b"HIT", b"/a #2"))
        self.assertEqual(_files(self.tmpDir), [])

    async def test_dataFolderIsAFile(self):
        """
        The data folder is replaced by a regular file, so every store fails
        (ENOTDIR): requests are served uncached, no temporary file is left;
        once the folder is back, caching resumes.
        """
        await self.assertCaching(b"/a")
        shutil.rmtree(self.dataDir)
        with open(self.dataDir, "wb") as f:
            f.write(b"not a folder")
        await self.assertUncached(b"/a")
        await self.assertUncached(b"/b")
        self.assertEqual(_files(self.tmpDir), [])
        with open(self.dataDir, "rb") as f:
            self.assertEqual(f.read(), b"not a folder")
        os.unlink(self.dataDir)
        os.mkdir(self.dataDir)
        await self.assertCaching(b"/c")
        await self.assertCaching(b"/b")

    async def test_cacheFolderIsAFile(self):
        """
        The whole cache folder is replaced by a regular file, so not even a
        temporary file can be opened: requests are served uncached; once
        the folder is back (the store recreates what it needs), caching
        resumes.
        """
        await self.assertCaching(b"/a")
        shutil.rmtree(self.folder)
        with open(self.folder, "wb") as f:
            f.write(b"not a folder")
        await self.assertUncached(b"/a")
        await self.assertUncached(b"/big")
        os.unlink(self.folder)
        os.mkdir(self.folder)
        await self.assertCaching(b"/b")
        await self.assertCaching(b"/a")


# -- a worker killed while it stores -----------------------------------------


class KilledWorkerTests(TestCase):
    """
    C{twistd cachingproxy --workers 2 --cache-dir DIR}: a worker killed
    with SIGKILL while it stores a large body leaves nothing visible to the
    other worker.
    """

    timeout = 90

    async def _startTwistd(self, folder):
        import sys

        from .helpers import REPO, TWISTD, Twistd as _Twistd, stopWhenDone

        process = _Twistd()
        self.pidsSeen: set = set()
        transport = reactor.spawnProcess(
            process,
            sys.executable,
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=",
             "cachingproxy", "--port", "tcp:0:interface=127.0.0.1", "--workers", "2",
             "--cache-dir", folder, "--no-access-log", "--shutdown-grace", "5"],
            env=dict(os.environ, PYTHONPATH=REPO),
            path=REPO,
        )

        stopWhenDone(self, process, transport, self.pidsSeen)
        port = await process.listening
        await until(lambda: process.output.count(b") ready") >= 2 or process.ended.called, 20)
        return process, transport, port

    async def _clientOn(self, port, wanted=None, exclude=(), attempts=200):
        """
        @return: C{(client, pid)}: a kept-alive connection whose worker
            answered a health request, the worker being C{wanted} (if given)
            and not in C{exclude}.
        """
        for _ in range(attempts):
            client = await connectClient(port, self)
            client.transport.write(b"GET /_cachingproxy/health HTTP/1.1\r\nHost: x\r\n\r\n")
            [health] = await client.waitFor(1)
            pid = json.loads(health.body)["pid"]
            self.pidsSeen.add(pid)
            if pid not in exclude and (wanted is None or pid == wanted) \
                    and health.header(b"connection") != b"close":
                return client, pid
            client.transport.loseConnection()
            await client.closed
        self.fail(f"no connection to a worker other than {exclude}")

    async def test_killedWhileStoring(self):
        """
        The large cacheable body is half through one worker when that
        worker is killed: the client connection closes; through the other
        worker the request is a MISS with the whole body; the proxy keeps
        serving, and the next request is a HIT. The dead worker's temporary
        file does not outlive the next store opened on the folder.
        """
        from .test_cache_end_to_end import _StreamingOrigin

        origin = _StreamingOrigin()
        _, originPort = listenOrigin(self, origin)
        url = b"http://127.0.0.1:%d/big" % originPort
        get = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % url
        folder = temporaryPath(self, "cache")
        process, transport, port = await self._startTwistd(folder)

        client, victim = await self._clientOn(port)
        client.transport.write(get)
        await origin.started
        await client.whenTrue(lambda c: len(c.raw) > 1024 * 1024)
        tmpDir = os.path.join(folder, "tmp")
        self.assertEqual(len(_files(tmpDir)), 1)
        self.assertEqual(_files(os.path.join(folder, "data")), [])
        os.kill(victim, signal.SIGKILL)
        await client.closed
        self.assertEqual(client.finalResponses()[1:], [])
        for request, rest in origin.held:
            request.loseConnection()
        origin.held = []
        origin.holding = False

        other, survivor = await self._clientOn(port, exclude=(victim,))
        other.transport.write(get)
        [_, miss] = await other.waitFor(2)
        self.assertEqual((miss.status, miss.header(b"x-cache")), (200, b"MISS"))
        self.assertEqual(miss.body, pattern(origin.size))
        self.assertEqual(origin.count, 2)
        other.transport.write(get)
        [_, _, hit] = await other.waitFor(3)
        self.assertEqual((hit.status, hit.header(b"x-cache")), (200, b"HIT"))
        self.assertEqual(hit.body, pattern(origin.size))
        self.assertEqual(origin.count, 2)
        await process.waitForOutput(b"killed by signal 9 (SIGKILL) unexpectedly")
        # The replacement worker opens the store, which collects the
        # temporary files of dead processes.
        await until(lambda: not _files(tmpDir), 20)


# -- churn while the disk store's rescan pass is open ---------------------------


class ChurnDuringRescanTests(FaultTestCase):
    """
    Found by bench/soak.py: the disk store's bookkeeping while a rescan
    pass is open stays as small as the cache, however many entries are
    evicted during the pass.
    """

    def setUp(self):
        super().setUp()
        # Room for about 20 entries of 2000 bytes.
        self.store.maxSize = 20 * 2400

    async def test_evictionsDuringPass(self):
        """
        With a pass open (as the proxy's once-a-minute housekeeping leaves
        it), 300 stored misses evict about 280 entries; what the store
        keeps for the pass stays proportional to the files on disk.
        """
        origin = _Counting()
        origin.render = lambda request: (
            request.setHeader(b"Cache-Control", b"max-age=60") or b"x" * 2000)
        _, originPort = listenOrigin(self, origin)
        for i in range(30):
            await exchange(self.port, self, self.request(originPort, b"/fill/%d" % i))
        self.assertFalse(self.store.rescan(1))
        for i in range(300):
            _, [response] = await exchange(self.port, self,
                                           self.request(originPort, b"/churn/%d" % i))
            self.assertEqual(response.status, 200)
        onDisk = len(_files(self.dataDir))
        self.assertLessEqual(onDisk, 25)
        self.assertGreater(self.store.stats()["evictions"], 250)
        kept = len(self.store._index) + len(self.store._scanForeign)
        self.assertLessEqual(kept, onDisk + 10, "%d paths kept for the pass" % kept)
