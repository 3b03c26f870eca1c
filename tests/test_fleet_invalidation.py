"""
What an unsafe request invalidates, and what a newer fleet object replaces,
across a fleet: the fleet tier on its own (a real redis-server, a memory
store), then end to end through real proxy processes (twistd) sharing one
redis-server, each with its own cache folder.
"""

from __future__ import annotations

import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from cachingproxy.cache.fleettier import FLEET_OBJECT_FIELD, FleetTier
from cachingproxy.cache.memory import MemoryStore
from cachingproxy.cache.policy import DEFAULT_OPTIONS, StoredEntry
from cachingproxy.fleet.breaker import WriteQueue
from cachingproxy.fleet.redis import RedisClient, parseURL
from cachingproxy.fleet.store import FillOutcome, FleetStore, PurgeLogFollower
from cachingproxy.http.headers import Headers
from cachingproxy.http.message import RequestHead

from .fleetredis import RedisServer, needRedis
from .helpers import exchange, until
from .test_fleet_proxy import CountingOrigin, OneRedis

URL = b"http://example.com/x"


class _Layer:
    """
    What of a L{cachingproxy.cache.layer.CacheLayer} the fleet tier's
    purge-log handling uses: its store.
    """

    def __init__(self, store):
        self.store = store


def _storeLocally(store, key, body, fleetObject=None):
    """
    Commit C{body} as C{key}'s entry in C{store}, taken from the fleet
    object C{fleetObject} (or fetched from the origin: C{None}).
    """
    headers = Headers([(b"Cache-Control", b"max-age=300")])
    if fleetObject is not None:
        headers.set(FLEET_OBJECT_FIELD, fleetObject)
    now = time.time()
    writer = store.writer(key, b"")
    writer.write(body)
    assert writer.commit(StoredEntry(key, b"GET", Headers(), 200, headers, now, now, len(body)))


class FleetTierTests(TestCase):
    """
    L{FleetTier}: invalidations sent to the fleet, replacements followed.
    """

    skip = needRedis
    timeout = 60

    def setUp(self):
        self.server = RedisServer().start()
        self.addCleanup(self.server.stop)
        self.client = RedisClient(reactor, parseURL(self.server.url), timeout=2.0)
        self.addCleanup(self.client.close)
        self.queue = WriteQueue(concurrency=1, maxPending=1)
        self.fleet = FleetStore(self.client, reactor, timeout=2.0, writeQueue=self.queue)
        self.addCleanup(self.fleet.stop)
        self.tier = FleetTier(self.fleet, reactor, deadline=2.0, maxWait=0)
        self.store = MemoryStore()
        self.tier.layer = _Layer(self.store)

    @inlineCallbacks
    def fill(self, key=URL, body=b"stored"):
        attempt = yield self.fleet.beginFill(key)
        self.assertIs(attempt.outcome, FillOutcome.ACQUIRED)
        attempt.fill.write(body)
        self.assertTrue((yield attempt.fill.commit(b"", b"H", 60)))

    def test_replacedDropsCopiesOfOtherObjects(self):
        """
        A C{replaced} record drops the local copies of its key taken from
        another fleet object; a copy of the new object, and a copy fetched
        from the origin, stay.
        """
        _storeLocally(self.store, b"http://e/old", b"1", b"o1")
        _storeLocally(self.store, b"http://e/new", b"2", b"o2")
        _storeLocally(self.store, b"http://e/own", b"3")
        for key in (b"http://e/old", b"http://e/new", b"http://e/own", b"http://e/none"):
            self.tier._purged(b"replaced", b"o2 " + key)
        self.assertEqual(self.store.entries(b"http://e/old"), [])
        self.assertEqual(len(self.store.entries(b"http://e/new")), 1)
        self.assertEqual(len(self.store.entries(b"http://e/own")), 1)
        self.assertEqual((self.tier.replacements, self.tier.followed), (1, 0))

    @inlineCallbacks
    def test_followUntilCaughtUp(self):
        """
        A tick of the purge log's follower reads on while batches come
        back full, so it does not fall behind a busy log.
        """
        clock = Clock()
        tier = FleetTier(self.fleet, reactor, clock=clock, pollInterval=1.0)
        tier.layer = _Layer(self.store)
        tier.start()
        self.addCleanup(tier.stop)
        yield until(lambda: tier._followerStarted, 10)
        tier._follower.batch = 2
        for i in range(5):
            yield self.fleet.purgeKey(b"http://e/%d" % i)
        # one tick of the clock: three reads
        clock.advance(1.0)
        yield until(lambda: tier.followed == 5, 10)

    @inlineCallbacks
    def test_invalidateInTheBackground(self):
        """
        An invalidation returns at once; the fleet purges the URL, logs it,
        and counts it; until then the key is not looked up in the fleet
        (a miss that does not wait for the write queue).
        """
        yield self.fill()
        got = []
        follower = PurgeLogFollower(self.fleet, lambda k, v: got.append((k, v)), lambda: None)
        yield follower.start()
        # the queue's only slot busy with a write that waits
        blocker = Deferred()
        self.assertIsNotNone(self.queue.submit(lambda: blocker))
        self.tier.invalidate([URL])
        self.assertEqual(self.tier._invalidating, {URL: 1})
        request = RequestHead(b"GET", URL, headers=Headers([(b"Host", b"example.com")]))
        lookups = self.fleet.hits + self.fleet.misses
        filled, detail = yield self.tier.consult(URL, request, DEFAULT_OPTIONS)
        self.assertEqual((filled, detail), (False, None))
        self.assertEqual(self.fleet.hits + self.fleet.misses, lookups)
        self.assertEqual(len((yield self.fleet.lookup(URL)).variants), 1)
        blocker.callback(None)
        yield until(lambda: self.tier.invalidated == 1, 10)
        self.assertEqual(self.tier._invalidating, {})
        self.assertEqual((yield self.fleet.lookup(URL)).variants, ())
        self.assertEqual((yield follower.poll()), 1)
        self.assertEqual(got, [(b"key", URL)])
        self.assertEqual(self.tier.stats()["invalidated"], 1)

    @inlineCallbacks
    def test_invalidationDropped(self):
        """
        With the write queue full the invalidation is dropped, counted and
        logged; the key is looked up in the fleet again.
        """
        running, waiting = Deferred(), Deferred()
        self.assertIsNotNone(self.queue.submit(lambda: running))
        self.assertIsNotNone(self.queue.submit(lambda: waiting))
        self.tier.invalidate([URL])
        self.assertEqual(self.tier.failedInvalidations, 1)
        self.assertEqual(self.tier._invalidating, {})
        running.callback(None)
        waiting.callback(None)
        yield self.fill()
        self.assertEqual(len((yield self.fleet.lookup(URL)).variants), 1)

    @inlineCallbacks
    def test_invalidationFailed(self):
        """
        Invalidations Redis does not confirm are counted as failed and let
        their keys be looked up again; the first of a series is logged,
        and the first that succeeds after them.
        """
        events = []
        self.tier._log = Logger(observer=events.append)
        self.fleet.writeTimeout = 0.2
        self.server.pause()
        try:
            self.tier.invalidate([URL, URL + b"/list"])
            yield until(lambda: self.tier.failedInvalidations == 2, 10)
        finally:
            self.server.resume()
        self.assertEqual((self.tier.invalidated, self.tier._invalidating), (0, {}))
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn])
        self.assertEqual(events[0]["key"], URL)
        # the breaker lets a command through within its second
        deadline = time.monotonic() + 20
        while not self.tier.invalidated:
            self.assertLess(time.monotonic(), deadline)
            self.tier.invalidate([URL])
            yield until(lambda: not self.tier._invalidating, 10)
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(events[-1]["log_level"], LogLevel.info)
        self.assertIn("again", events[-1]["log_format"])
        self.assertEqual(len([e for e in events if e["log_level"] == LogLevel.warn]), 1)


class UnsafeOrigin(CountingOrigin):
    """
    A L{CountingOrigin} that also answers POST, PUT and DELETE: 500 under
    C{/fail}, else 201 with C{Location: /NAME/list} for POST and 200
    otherwise; C{unsafe[path]} counts them.
    """

    def __init__(self):
        super().__init__()
        self.unsafe = {}

    def render_POST(self, request):
        path = request.uri
        self.unsafe[path] = self.unsafe.get(path, 0) + 1
        if path.startswith(b"/fail"):
            request.setResponseCode(500)
        elif request.method == b"POST":
            request.setResponseCode(201)
            request.setHeader(b"Location", path + b"/list")
        request.setHeader(b"Cache-Control", b"no-store")
        return b"done\n"

    render_PUT = render_DELETE = render_POST


class FleetInvalidationTests(OneRedis, TestCase):
    """
    Proxies sharing one redis-server.
    """

    def startOrigin(self):
        self.origin = UnsafeOrigin()
        site = Site(self.origin)
        site.log = lambda request: None
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.originPort = port.getHost().port

    async def unsafe(self, port, method, path):
        _, [response] = await exchange(
            port, self, b"%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 4\r\n\r\ndata"
            % (method, self.url(path), self.originPort))
        return response

    def fleetEntries(self):
        return len(self.redis.command("KEYS", "cp:*:e"))

    async def shared(self, a, b, paths):
        """
        C{paths} stored through C{a}, then copied from the fleet by C{b}.

        @return: the bodies.
        """
        bodies = {}
        for path in paths:
            response = await self.get(a, path)
            self.assertEqual(response.header(b"x-cache"), b"MISS")
            bodies[path] = response.body
        await until(lambda: self.fleetEntries() == len(paths), 10)
        for path in paths:
            response = await self.get(b, path)
            self.assertEqual(response.header(b"x-cache"), b"HIT", path)
            self.assertIn(b"detail=fleet", response.header(b"cache-status"))
            self.assertEqual(response.body, bodies[path])
        return bodies

    async def test_postInvalidatesEverywhere(self):
        """
        A successful POST through B invalidates its target URI and its
        Location in Redis and on A too (RFC 9111 section 4.4): A's next
        GETs miss and reach the origin, B then copies A's new responses
        from the fleet; a POST answered with an error invalidates nothing.
        """
        a = await self.proxy()
        b = await self.proxy()
        await self.waitForFleet(a)
        await self.waitForFleet(b)
        paths = [b"/x", b"/x/list", b"/fail"]
        bodies = await self.shared(a, b, paths)
        response = await self.unsafe(b, b"POST", b"/fail")
        self.assertEqual(response.status, 500)
        response = await self.unsafe(b, b"POST", b"/x")
        self.assertEqual(response.status, 201)
        self.assertEqual(self.origin.unsafe, {b"/fail": 1, b"/x": 1})
        # gone from Redis (after the response: not waited for)
        await until(lambda: self.fleetEntries() == 1, 10)
        for path in (b"/x", b"/x/list"):
            # A drops its copies once it followed the purge log
            response = await self.untilGone(a, path, bodies[path])
            self.assertEqual(response.header(b"x-cache"), b"MISS", path)
            self.assertEqual(self.origin.counts[path], 2)
            self.assertEqual(response.body, path + b" #2\n")
        # the purge log is read in order: the failed POST's URL stayed
        response = await self.get(a, b"/fail")
        self.assertEqual(response.header(b"x-cache"), b"HIT")
        self.assertEqual(response.body, bodies[b"/fail"])
        await until(lambda: self.fleetEntries() == 3, 10)
        for path in (b"/x", b"/x/list"):
            response = await self.get(b, path)
            self.assertEqual(response.header(b"x-cache"), b"HIT", path)
            self.assertIn(b"detail=fleet", response.header(b"cache-status"))
            self.assertEqual(response.body, path + b" #2\n")
        self.assertEqual({p: self.origin.counts[p] for p in paths}, {b"/x": 2, b"/x/list": 2, b"/fail": 1})
        status = await self.admin(b, b"metrics")
        self.assertIn(b'cachingproxy_fleet_events_total{event="invalidated"} 2.0', status.body)

    async def test_putAndDeleteAtOnce(self):
        """
        A GET through the proxy that forwarded a successful PUT or DELETE,
        sent as soon as that response came, is a miss: never the copy the
        fleet held before.
        """
        a = await self.proxy()
        b = await self.proxy()
        await self.waitForFleet(a)
        await self.waitForFleet(b)
        paths = [b"/put", b"/delete"]
        bodies = await self.shared(a, b, paths)
        for method, path in ((b"PUT", b"/put"), (b"DELETE", b"/delete")):
            response = await self.unsafe(b, method, path)
            self.assertEqual(response.status, 200)
            response = await self.get(b, path)
            self.assertEqual(response.header(b"x-cache"), b"MISS", path)
            self.assertNotEqual(response.body, bodies[path])
            self.assertEqual(self.origin.counts[path], 2)
        for path in paths:
            response = await self.untilGone(a, path, bodies[path])
            self.assertIn(response.body, (path + b" #2\n", path + b" #3\n"))

    async def test_replacementDropsCopies(self):
        """
        C stores /y, B copies it from the fleet; A refetches it (a request
        with no-cache) and commits a new body to the fleet. B, once it
        followed the purge log, drops its copy of the old object and
        copies the new one from the fleet; C keeps the copy it fetched from
        the origin itself.
        """
        a = await self.proxy()
        b = await self.proxy()
        c = await self.proxy()
        for port in (a, b, c):
            await self.waitForFleet(port)
        old = (await self.shared(c, b, [b"/y"]))[b"/y"]
        await self.get(c, b"/z")
        refetched = await self.get(a, b"/y", b"Cache-Control: no-cache\r\n")
        self.assertEqual(refetched.body, b"/y #2\n")
        self.assertEqual(self.origin.counts[b"/y"], 2)
        response = await self.untilGone(b, b"/y", old)
        self.assertEqual(response.header(b"x-cache"), b"HIT")
        self.assertIn(b"detail=fleet", response.header(b"cache-status"))
        self.assertEqual(response.body, b"/y #2\n")
        # C follows the log in order: once the later purge of /z is
        # applied, so was the replacement
        purge = await self.purge(a, self.url(b"/z"))
        self.assertEqual(purge.status, 200)
        await self.untilGone(c, b"/z", b"/z #1\n")
        response = await self.get(c, b"/y")
        self.assertEqual(response.header(b"x-cache"), b"HIT")
        self.assertEqual(response.body, old)
        self.assertEqual(self.origin.counts[b"/y"], 2)
        metrics = (await self.admin(b, b"metrics")).body
        self.assertIn(b'cachingproxy_fleet_events_total{event="replacements"} 1.0', metrics)
