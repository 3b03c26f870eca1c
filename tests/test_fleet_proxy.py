"""
The fleet tier end to end: real redis-server processes (tests/fleetredis.py),
real proxy processes (twistd), each with its own --cache-dir (one
"machine" each), and an origin that counts its requests.
"""

from __future__ import annotations

import json
import os
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from cachingproxy.cache.fleettier import TagIndex, parseTags

from .fleetredis import RedisCluster, RedisServer, needRedis
from .helpers import exchange, startTwistd, temporaryPath, until


class CountingOrigin(Resource):
    """
    Answers C{/NAME} with a body naming the path and its request count;
    C{fields[path]} gives a path's response fields (by default
    C{Cache-Control: max-age=300}, C{no-store} under C{/_warm}); C{counts[path]}
    counts requests.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.counts = {}
        self.fields = {}

    def render_GET(self, request):
        path = request.uri
        n = self.counts[path] = self.counts.get(path, 0) + 1
        default = [(b"Cache-Control", b"no-store" if path.startswith(b"/_warm") else b"max-age=300")]
        for name, value in self.fields.get(path, default):
            if callable(value):
                value = value(request)
            request.setHeader(name, value)
        size = int(request.args.get(b"size", [b"0"])[0])
        body = b"%s #%d\n" % (path, n)
        if size:
            body = (body * (size // len(body) + 1))[:size]
        delay = int(request.args.get(b"delay", [b"0"])[0])
        if not delay:
            return body

        def later():
            request.write(body)
            request.finish()

        call = reactor.callLater(delay / 1000.0, later)
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return NOT_DONE_YET


class FleetMixin:
    """
    A Redis, an origin, and proxies started against them.
    """

    timeout = 120

    def startOrigin(self):
        self.origin = CountingOrigin()
        site = Site(self.origin)
        site.log = lambda request: None
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.originPort = port.getHost().port

    async def proxy(self, *extra):
        """
        Start a proxy process with its own cache folder.

        @return: its port.
        """
        folder = temporaryPath(self, "cache")
        process, transport, port = await startTwistd(
            self, "--cache-dir", folder, "--no-access-log", *self.redisArgs,
            # room for a loaded test machine (the deadline's own tests set
            # theirs)
            "--fleet-deadline", "0.3", *extra)
        self.processes = getattr(self, "processes", {})
        self.processes[port] = process
        return port

    def url(self, path: bytes) -> bytes:
        return b"http://127.0.0.1:%d%s" % (self.originPort, path)

    async def get(self, port, path, headers=b""):
        _, [response] = await exchange(
            port, self, b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n"
            % (self.url(path), self.originPort, headers))
        return response

    async def purge(self, port, target, headers=b""):
        _, [response] = await exchange(
            port, self, b"PURGE %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n"
            % (target, self.originPort, headers))
        return response

    async def admin(self, port, name):
        _, [response] = await exchange(
            port, self, b"GET /_cachingproxy/%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
            % (name, port))
        self.assertEqual(response.status, 200)
        return response

    def storedEntries(self):
        """
        @return: the entry keys stored in Redis, on every node of a
            cluster.
        """
        cluster = getattr(self, "cluster", None)
        nodes = cluster.nodes if cluster is not None else [self.redis]
        return [key for node in nodes for key in node.command("KEYS", "cp:*:e")]

    async def waitForFleet(self, port):
        """
        Until the proxy's fleet tier answers (its first connection made).
        """
        async def answered():
            self.warmed = getattr(self, "warmed", 0) + 1
            response = await self.get(port, b"/_warm/%d" % self.warmed)
            return b"fleet-unavailable" not in (response.header(b"cache-status") or b"")

        deadline = time.monotonic() + 20
        while not await answered():
            if time.monotonic() > deadline:
                self.fail("the fleet tier never answered")
            await deferLater(reactor, 0.1, lambda: None)

    async def untilGone(self, port, path, purged, limit=10.0):
        """
        Until C{path} through C{port} is no longer the C{purged} body (the
        proxy followed the purge log; another proxy may have stored a new
        one meanwhile): bounded by C{limit} seconds.
        """
        deadline = time.monotonic() + limit
        while True:
            response = await self.get(port, path)
            if response.body != purged:
                return response
            if time.monotonic() > deadline:
                self.fail(f"{path!r} still the purged copy through {port}")
            await deferLater(reactor, 0.1, lambda: None)


class OneRedis(FleetMixin):
    """
    Proxies sharing one redis-server, started for each test.
    """

    skip = needRedis

    def setUp(self):
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.stop)
        self.redisArgs = ("--redis", self.redis.url)
        self.startOrigin()


class FleetProxyTests(OneRedis, TestCase):
    """
    Proxies sharing one redis-server.
    """

    async def test_hitAcrossProxies(self):
        """
        A response stored through A is a hit through B, which did not ask
        the origin: Cache-Status says the fleet answered. The body is the
        same, and B then answers it from its own tiers.
        """
        a = await self.proxy()
        b = await self.proxy()
        await self.waitForFleet(a)
        await self.waitForFleet(b)
        first = await self.get(a, b"/shared")
        self.assertEqual(first.header(b"x-cache"), b"MISS")
        self.assertEqual(self.origin.counts[b"/shared"], 1)
        # the write to the fleet is queued after the response
        await until(lambda: self.redis.command("KEYS", "cp:*:e"), 5)
        second = await self.get(b, b"/shared")
        self.assertEqual(second.header(b"x-cache"), b"HIT")
        self.assertIn(b"detail=fleet", second.header(b"cache-status"))
        self.assertEqual(second.body, first.body)
        self.assertIsNone(second.header(b"cachingproxy-fleet-object"))
        third = await self.get(b, b"/shared")
        self.assertEqual(third.header(b"x-cache"), b"HIT")
        self.assertNotIn(b"fleet", third.header(b"cache-status"))
        self.assertEqual(self.origin.counts[b"/shared"], 1)
        status = json.loads((await self.admin(b, b"status.json")).body)
        self.assertEqual(status["fleet"]["state"], "closed")
        self.assertEqual(status["fleet"]["hits"], 1)
        metrics = (await self.admin(b, b"metrics")).body
        self.assertIn(b'cachingproxy_fleet_events_total{event="hits"} 1.0', metrics)
        self.assertIn(b"cachingproxy_fleet_breaker_open 0.0", metrics)

    async def test_purgeEverywhere(self):
        """
        PURGE of a URL, of a prefix and of a tag through A: 200 once Redis
        confirmed; B and C (which held copies from the fleet) then miss.
        The tag field is not sent to clients.
        """
        a = await self.proxy()
        b = await self.proxy()
        c = await self.proxy()
        for port in (a, b, c):
            await self.waitForFleet(port)
        tagged = [(b"Cache-Control", b"max-age=300"), (b"Surrogate-Key", b"product-1 all")]
        self.origin.fields[b"/p/tagged"] = tagged
        paths = [b"/one", b"/p/x", b"/p/y", b"/p/tagged"]
        bodies = {}
        for path in paths:
            response = await self.get(a, path)
            self.assertIsNone(response.header(b"surrogate-key"))
            bodies[path] = response.body
        await until(lambda: len(self.storedEntries()) == len(paths), 5)
        for port in (b, c):
            for path in paths:
                response = await self.get(port, path)
                self.assertEqual(response.header(b"x-cache"), b"HIT", (port, path))
                self.assertIsNone(response.header(b"surrogate-key"))
        self.assertEqual({self.origin.counts[p] for p in paths}, {1})

        async def purged(target, headers, gone):
            response = await self.purge(a, target, headers)
            self.assertEqual(response.status, 200, response.body)
            for port in (a, b, c):
                for path in gone:
                    response = await self.untilGone(port, path, bodies[path])
                    self.assertEqual(response.status, 200)
                    self.assertNotIn(b"#1\n", response.body)

        await purged(self.url(b"/one"), b"", [b"/one"])
        # the tag: with the tag field, whatever the URL
        await purged(self.url(b"/anything"), b"Surrogate-Key: product-1\r\n", [b"/p/tagged"])
        await purged(self.url(b"/p/*"), b"", [b"/p/x", b"/p/y"])
        # each purged path fetched again by one, two or the three proxies
        # (a copy stored again reaches the others through the fleet)
        for path in paths:
            self.assertIn(self.origin.counts[path], (2, 3, 4), path)

    async def test_collapsedAcrossProxies(self):
        """
        Concurrent misses for one URL on three proxies reach the origin
        once: one proxy fetches holding the entry's lock in Redis, the
        others wait for its commit and answer from the fleet. An
        uncacheable answer sets a pass marker: the next misses go to the
        origin each on its own, without waiting.
        """
        ports = [await self.proxy("--fleet-wait", "5") for _ in range(3)]
        for port in ports:
            await self.waitForFleet(port)
        path = b"/slow?delay=500"
        responses = await gatherResults(
            [Deferred.fromCoroutine(self.get(port, path)) for port in ports])
        self.assertEqual(self.origin.counts[path], 1)
        self.assertEqual({r.body for r in responses}, {path + b" #1\n"})
        self.assertEqual(sorted(r.header(b"x-cache") for r in responses),
                         [b"HIT", b"HIT", b"MISS"])
        self.assertEqual(sum(b"detail=fleet" in r.header(b"cache-status") for r in responses), 2)

        path = b"/uncacheable?delay=300"
        self.origin.fields[path] = [(b"Cache-Control", b"no-store")]
        await self.get(ports[0], path)
        started = time.monotonic()
        responses = await gatherResults(
            [Deferred.fromCoroutine(self.get(port, path)) for port in ports])
        self.assertEqual(self.origin.counts[path], 4)
        # without waiting for a lock (--fleet-wait is 5 s)
        self.assertLess(time.monotonic() - started, 2.5)

    async def test_collapsedWithinAndAcrossProxies(self):
        """
        Several concurrent misses for one URL on each of two proxies: every
        client gets the one response the origin sent (the misses in one
        process share one fleet lookup, and each of them its result).
        """
        ports = [await self.proxy("--fleet-wait", "5") for _ in range(2)]
        for port in ports:
            await self.waitForFleet(port)
        path = b"/slow?delay=500"
        responses = await gatherResults(
            [Deferred.fromCoroutine(self.get(port, path)) for port in ports * 4])
        self.assertEqual([r.status for r in responses], [200] * 8)
        self.assertEqual({r.body for r in responses}, {path + b" #1\n"})
        self.assertEqual(self.origin.counts[path], 1)

    async def test_workers(self):
        """
        Worker processes build their own fleet tier: stored through a
        proxy with two workers, a hit through another proxy, and the other
        way round.
        """
        a = await self.proxy("--workers", "2")
        await until(lambda: self.processes[a].output.count(b") ready") >= 2, 20)
        b = await self.proxy()
        await self.waitForFleet(a)
        await self.waitForFleet(b)
        await self.get(a, b"/from-a")
        await self.get(b, b"/from-b")
        await until(lambda: len(self.redis.command("KEYS", "cp:*:e")) == 2, 5)
        for port, path in ((b, b"/from-a"), (a, b"/from-b")):
            response = await self.get(port, path)
            self.assertEqual(response.header(b"x-cache"), b"HIT")
            self.assertIn(b"detail=fleet", response.header(b"cache-status"))
        self.assertEqual(self.origin.counts[b"/from-a"], 1)
        self.assertEqual(self.origin.counts[b"/from-b"], 1)

    async def test_notShared(self):
        """
        A private response, one to a request with Authorization, and a
        variant selected by Vary for another request never come from the
        fleet.
        """
        a = await self.proxy()
        b = await self.proxy()
        await self.waitForFleet(a)
        await self.waitForFleet(b)
        self.origin.fields[b"/private"] = [(b"Cache-Control", b"private, max-age=300")]
        self.origin.fields[b"/auth"] = [(b"Cache-Control", b"public, max-age=300")]
        self.origin.fields[b"/vary"] = [
            (b"Cache-Control", b"max-age=300"), (b"Vary", b"Accept-Language"),
            (b"Content-Language", lambda r: r.getHeader(b"accept-language") or b"none")]
        await self.get(a, b"/private")
        await self.get(a, b"/auth", b"Authorization: Basic dTpw\r\n")
        fr = await self.get(a, b"/vary", b"Accept-Language: fr\r\n")
        self.assertEqual(fr.header(b"content-language"), b"fr")
        await until(lambda: len(self.redis.command("KEYS", "cp:*:e")) == 1, 5)
        private = await self.get(b, b"/private")
        self.assertEqual(private.header(b"x-cache"), b"MISS")
        auth = await self.get(b, b"/auth", b"Authorization: Basic dTpw\r\n")
        self.assertEqual(auth.header(b"x-cache"), b"MISS")
        de = await self.get(b, b"/vary", b"Accept-Language: de\r\n")
        self.assertEqual(de.header(b"x-cache"), b"MISS")
        self.assertEqual(de.header(b"content-language"), b"de")
        fr = await self.get(b, b"/vary", b"Accept-Language: fr\r\n")
        self.assertEqual(fr.header(b"x-cache"), b"HIT")
        self.assertEqual(fr.header(b"content-language"), b"fr")
        counts = {p: n for p, n in self.origin.counts.items() if not p.startswith(b"/_warm")}
        self.assertEqual(counts, {b"/private": 2, b"/auth": 2, b"/vary": 2})

    async def _redisDown(self, breakRedis):
        deadline = 0.05
        a = await self.proxy("--fleet-deadline", str(deadline))
        await self.waitForFleet(a)
        breakRedis()
        # until the breaker opens (five failures: timeouts, connections
        # refused), every request answered in time
        for i in range(30):
            started = time.monotonic()
            response = await self.get(a, b"/down%d" % i)
            took = time.monotonic() - started
            self.assertEqual(response.status, 200)
            self.assertEqual(response.header(b"x-cache"), b"MISS")
            self.assertIn(b"detail=fleet-unavailable", response.header(b"cache-status"))
            # the deadline plus the origin's time, with room for a loaded
            # machine; a stuck fleet would take the write timeout (1 s) or
            # the client's patience
            self.assertLess(took, deadline + 0.5)
            status = json.loads((await self.admin(a, b"status.json")).body)
            if status["fleet"]["state"] != "closed":
                break
        self.assertNotEqual(status["fleet"]["state"], "closed")
        # what was stored locally meanwhile is still served
        response = await self.get(a, b"/down0")
        self.assertEqual(response.header(b"x-cache"), b"HIT")
        self.assertEqual(self.origin.counts[b"/down0"], 1)
        # and a purge cannot be confirmed: 503
        response = await self.purge(a, self.url(b"/down0"))
        self.assertEqual(response.status, 503)
        self.assertIn(b"the fleet did not confirm", response.body)
        status = json.loads((await self.admin(a, b"status.json")).body)
        self.assertGreaterEqual(status["fleet"]["skipped"], i + 1)
        # one line for each change of the breaker's state, not one a request
        output = self.processes[a].output
        self.assertEqual(output.count(b"breaker closed -> open"), 1, output.decode()[-3000:])

    async def test_redisPaused(self):
        """
        Redis SIGSTOPped (its connections open and silent): requests are
        answered within the deadline plus the origin's time, Cache-Status
        says the fleet was skipped; a purge answers 503.
        """
        def pause():
            self.redis.pause()
            self.addCleanup(self.redis.resume)

        await self._redisDown(pause)

    async def test_redisKilled(self):
        """
        Redis killed: the same.
        """
        await self._redisDown(self.redis.kill)

    async def test_evictedChunk(self):
        """
        A chunk evicted by maxmemory (here: deleted as eviction would) makes
        the entry a miss, never a partial body.
        """
        a = await self.proxy()
        b = await self.proxy()
        await self.waitForFleet(a)
        await self.waitForFleet(b)
        path = b"/big?size=600000"
        first = await self.get(a, path)
        self.assertEqual(len(first.body), 600000)
        await until(lambda: self.redis.command("KEYS", "cp:*:e"), 5)
        chunks = sorted(self.redis.command("KEYS", "cp:*:c:*"))
        self.assertEqual(len(chunks), 3)
        self.redis.command("DEL", chunks[1])
        second = await self.get(b, path)
        self.assertEqual(second.header(b"x-cache"), b"MISS")
        self.assertEqual(len(second.body), 600000)
        self.assertEqual(self.origin.counts[path], 2)


class FleetMaxMemoryTests(FleetMixin, TestCase):
    """
    A redis-server with a small maxmemory and allkeys-lru: bodies written
    past it evict older chunks; what is read back is whole or a miss.
    """

    skip = needRedis

    def setUp(self):
        self.redis = RedisServer("--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru").start()
        self.addCleanup(self.redis.stop)
        self.redisArgs = ("--redis", self.redis.url)
        self.startOrigin()

    async def test_neverPartial(self):
        """
        Twelve 500 KB bodies through A (more than Redis may keep), then all
        through B: every body is whole (a hit or a miss), some are misses.
        """
        a = await self.proxy()
        b = await self.proxy()
        await self.waitForFleet(a)
        await self.waitForFleet(b)
        paths = [b"/m%d?size=500000" % i for i in range(12)]
        for path in paths:
            await self.get(a, path)
        status = {}

        async def settled():
            status.update(json.loads((await self.admin(a, b"status.json")).body)["fleet"])

        await settled()
        deadline = time.monotonic() + 10
        while status["pendingWrites"]:
            self.assertLess(time.monotonic(), deadline, "writes still queued")
            await deferLater(reactor, 0.05, lambda: None)
            await settled()
        self.assertEqual(status["offered"], len(paths))
        results = []
        for path in paths:
            response = await self.get(b, path)
            line = response.body.split(b"\n", 1)[0] + b"\n"
            self.assertTrue(line.startswith(path + b" #"), line)
            self.assertEqual(response.body, (line * (500000 // len(line) + 1))[:500000])
            results.append(response.header(b"x-cache"))
        self.assertIn(b"MISS", results)


class ThreeMasters(FleetMixin):
    """
    Proxies sharing a 3-master Redis Cluster, started for each test.
    """

    skip = needRedis

    def setUp(self):
        self.cluster = RedisCluster().start()
        self.addCleanup(self.cluster.stop)
        self.redisArgs = ("--redis", self.cluster.urls[0], "--redis-cluster")
        self.startOrigin()


class FleetClusterTests(ThreeMasters, TestCase):
    """
    Proxies sharing a 3-master Redis Cluster.
    """

    async def test_hitAcrossProxies(self):
        """
        Stored through A, a hit through B, for keys spread over the
        cluster's masters.
        """
        a = await self.proxy()
        b = await self.proxy()
        await self.waitForFleet(a)
        await self.waitForFleet(b)
        paths = [b"/c%d" % i for i in range(6)]
        for path in paths:
            await self.get(a, path)

        def stored():
            return sum(len(node.command("KEYS", "cp:*:e")) for node in self.cluster.nodes)

        await until(lambda: stored() == len(paths), 10)
        self.assertGreater(sum(1 for node in self.cluster.nodes
                               if node.command("KEYS", "cp:*:e")), 1)
        for path in paths:
            response = await self.get(b, path)
            self.assertEqual(response.header(b"x-cache"), b"HIT", path)
            self.assertIn(b"detail=fleet", response.header(b"cache-status"))
        self.assertEqual({self.origin.counts[p] for p in paths}, {1})

    # by URL, prefix and tag, over the cluster's masters
    test_purgeEverywhere = FleetProxyTests.test_purgeEverywhere


class TagIndexTests(TestCase):
    """
    L{TagIndex}: the local index of purge tags.
    """

    def test_sharedFolder(self):
        """
        Two indexes on one folder (two worker processes) see each other's
        records; a tag forgotten is gone for both.
        """
        folder = temporaryPath(self, "cache")
        one, two = TagIndex(folder), TagIndex(folder)
        one.add(b"k1", [b"a", b"b"], time.time() + 60)
        two.add(b"k2", [b"a"], time.time() + 60)
        self.assertEqual(sorted(two.keys(b"a")), [b"k1", b"k2"])
        self.assertEqual(one.keys(b"b"), [b"k1"])
        one.forget(b"a")
        self.assertEqual(two.keys(b"a"), [])
        self.assertEqual(two.keys(b"b"), [b"k1"])

    def test_expiry(self):
        """
        Records expire with their entries, on disk and in memory.
        """
        now = [1000.0]
        for index in (TagIndex(temporaryPath(self, "cache"), clock=lambda: now[0]),
                      TagIndex(None, clock=lambda: now[0])):
            index.add(b"short", [b"t"], 1010)
            index.add(b"long", [b"t"], 2000)
            self.assertEqual(sorted(index.keys(b"t")), [b"long", b"short"])
            now[0] = 1500.0
            self.assertEqual(index.keys(b"t"), [b"long"])
            now[0] = 1000.0

    def test_bounded(self):
        """
        A tag's file is compacted when it grows past its bound: expired and
        repeated records go, then the oldest; the memory index keeps at
        most its number of records.
        """
        folder = temporaryPath(self, "cache")
        index = TagIndex(folder, maxBytes=4096)
        for i in range(1000):
            index.add(b"key-%d" % i, [b"t"], time.time() + 60)
        path = index._path(b"t")
        self.assertLessEqual(os.path.getsize(path), 4096)
        keys = index.keys(b"t")
        self.assertIn(b"key-999", keys)
        self.assertNotIn(b"key-0", keys)
        memory = TagIndex(None, maxRecords=10)
        for i in range(100):
            memory.add(b"key-%d" % i, [b"t"], time.time() + 60)
        self.assertEqual(len(memory.keys(b"t")), 10)

    def test_parseTags(self):
        """
        Space-separated (Surrogate-Key) and comma-separated (Cache-Tag)
        lists, repeats dropped.
        """
        self.assertEqual(parseTags(b" a  b a "), [b"a", b"b"])
        self.assertEqual(parseTags(b"a, b,c"), [b"a", b"b", b"c"])
        self.assertEqual(parseTags(b""), [])


class TagPurgeWithoutRedisTests(FleetMixin, TestCase):
    """
    Purge by tag on a proxy without --redis, with two workers sharing the
    disk cache.
    """

    redisArgs = ("--workers", "2")

    def setUp(self):
        self.startOrigin()

    async def test_purgeByTag(self):
        """
        Responses carrying a tag are purged by PURGE with the tag field,
        whatever worker stored them; others stay; the field is not sent to
        clients; Cache-Tag style comma lists work with --tag-field.
        """
        port = await self.proxy("--tag-field", "Cache-Tag")
        await until(lambda: self.processes[port].output.count(b") ready") >= 2, 20)
        self.origin.fields[b"/t1"] = [(b"Cache-Control", b"max-age=300"), (b"Cache-Tag", b"x,y")]
        self.origin.fields[b"/t2"] = [(b"Cache-Control", b"max-age=300"), (b"Cache-Tag", b"y")]
        self.origin.fields[b"/t3"] = [(b"Cache-Control", b"max-age=300"), (b"Cache-Tag", b"z")]
        for path in (b"/t1", b"/t2", b"/t3"):
            # new connections: the workers take turns
            for _ in range(2):
                response = await self.get(port, path)
                self.assertIsNone(response.header(b"cache-tag"))
        self.assertEqual({self.origin.counts[p] for p in (b"/t1", b"/t2", b"/t3")}, {1})
        response = await self.purge(port, self.url(b"/"), b"Cache-Tag: y\r\n")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"purged 2\n")
        for path in (b"/t1", b"/t2"):
            self.assertEqual((await self.get(port, path)).header(b"x-cache"), b"MISS")
        self.assertEqual((await self.get(port, b"/t3")).header(b"x-cache"), b"HIT")
        response = await self.purge(port, self.url(b"/"), b"Cache-Tag: nothing\r\n")
        self.assertEqual(response.status, 404)
