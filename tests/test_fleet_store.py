"""
Tests for L{cachingproxy.fleet.store} against real redis-server processes
(a single node, and a 3-master cluster for the key layout).
"""

from __future__ import annotations

import hashlib
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from cachingproxy.fleet.breaker import WriteQueue
from cachingproxy.fleet.redis import ClusterClient, RedisClient, keySlot, parseURL
from cachingproxy.fleet.store import FillOutcome, FleetStore, PurgeLogFollower, WaitOutcome, hashTag
from tests.fleetredis import RedisCluster, RedisServer, needRedis
from tests.test_fleet_redis import _until

URL = b"https://example.com/a?b=1"


class StoreMixin:
    """
    Helpers shared by the single-node and cluster tests.
    """

    @inlineCallbacks
    def fill(self, key=URL, variantKey=b"", body=b"hello", head=b"HTTP/1.1 200\r\n", freshFor=60.0, tags=(), staleFor=30.0):
        attempt = yield self.store.beginFill(key)
        self.assertIs(attempt.outcome, FillOutcome.ACQUIRED)
        f = attempt.fill
        for i in range(0, len(body), 7000):
            f.write(body[i : i + 7000])
        if not body:
            f.write(b"")
        ok = yield f.commit(variantKey, head, freshFor, staleFor=staleFor, tags=tags)
        return ok

    def allKeys(self, server):
        return sorted(server.command("KEYS", "*"))

    @inlineCallbacks
    def checkReplacementLogged(self):
        """
        A first commit of a variant logs nothing; committing it again logs
        one C{replaced} record naming the new object and the key; another
        variant's first commit logs nothing.
        """
        got, gaps = [], []
        follower = PurgeLogFollower(self.store, lambda k, v: got.append((k, v)), lambda: gaps.append(1))
        yield follower.start()
        self.assertTrue((yield self.fill(body=b"one")))
        self.assertEqual((yield follower.poll()), 0)
        self.assertTrue((yield self.fill(body=b"two")))
        new = (yield self.store.lookup(URL)).variants[0]
        self.assertEqual((yield follower.poll()), 1)
        self.assertEqual(got, [(b"replaced", new.objectId + b" " + URL)])
        self.assertTrue((yield self.fill(variantKey=b"accept-language: fr", body=b"trois")))
        self.assertEqual((yield follower.poll()), 0)
        self.assertEqual((self.store.replaced, self.store.unloggedReplacements, gaps), (1, 0, []))


    @inlineCallbacks
    def checkInlineBodies(self):
        """
        A lookup returns the bodies of one-chunk variants with them, within
        the store's C{inlineBody} budget, and L{FleetStore.readBody} takes
        them without another round trip; a larger body is not returned and
        is read from its chunks.
        """
        self.store.inlineBody = 100
        small = os.urandom(60)
        self.assertTrue((yield self.fill(variantKey=b"a", body=small)))
        self.assertTrue((yield self.fill(variantKey=b"b", body=os.urandom(50))))
        large = os.urandom(40000)
        self.assertTrue((yield self.fill(variantKey=b"c", body=large)))
        found = yield self.store.lookup(URL)
        byVariant = {v.variantKey: v for v in found.variants}
        # one of a and b fits the budget of 100 bytes, not both; c has
        # three chunks
        self.assertEqual(len(found.bodies), 1)
        self.assertNotIn(byVariant[b"c"].objectId, found.bodies)
        self.assertEqual(found.bodies.get(byVariant[b"a"].objectId, small), small)
        [(objectId, body)] = found.bodies.items()
        [variant] = [v for v in found.variants if v.objectId == objectId]
        calls = []
        self.patch(self.client, "execute", lambda *a, **kw: calls.append(a))
        self.assertEqual(self.successResultOf(self.store.readBody(variant, inline=body)), body)
        self.assertEqual(calls, [])

    @inlineCallbacks
    def checkInlineBodyChecked(self):
        """
        An inline body is checked like one read from its chunks: a bad one
        is a miss, and the variant is dropped.
        """
        self.assertTrue((yield self.fill(body=b"a" * 500)))
        v = (yield self.store.lookup(URL)).variants[0]
        k = self.store.chunkKeys(v)[0]
        self.server.command("SET", k, b"b" * 500, "KEEPTTL")
        found = yield self.store.lookup(URL)
        self.assertEqual(found.bodies, {v.objectId: b"b" * 500})
        self.assertIsNone((yield self.store.readBody(v, inline=found.bodies[v.objectId])))
        self.assertEqual(self.store.damaged, 1)
        self.assertEqual((yield self.store.lookup(URL)).variants, ())

        self.store.inlineBody = 0
        self.assertTrue((yield self.fill(body=b"c" * 500)))
        self.assertEqual((yield self.store.lookup(URL)).bodies, {})


class SingleNodeStoreTests(StoreMixin, TestCase):
    """
    The store on one redis-server.
    """

    skip = needRedis
    timeout = 60

    def setUp(self):
        self.server = RedisServer().start()
        self.addCleanup(self.server.stop)
        self.client = RedisClient(reactor, parseURL(self.server.url), timeout=2.0)
        self.addCleanup(self.client.close)
        self.store = FleetStore(self.client, reactor, chunkSize=16 * 1024, timeout=2.0, grace=10.0)
        self.addCleanup(self.store.stop)

    def test_inlineBodies(self):
        return self.checkInlineBodies()

    def test_inlineBodyChecked(self):
        return self.checkInlineBodyChecked()

    @inlineCallbacks
    def test_roundtripVariants(self):
        """
        Two variants of one URL (Vary) are stored and read back, each with
        its head and body; another URL stays a miss.
        """
        self.assertTrue((yield self.fill(variantKey=b"accept-encoding: gzip", body=b"zipped", head=b"H1")))
        self.assertTrue((yield self.fill(variantKey=b"accept-encoding: br", body=b"brotli", head=b"H2")))
        found = yield self.store.lookup(URL)
        self.assertFalse(found.locked or found.passMarker)
        byVariant = {v.variantKey: v for v in found.variants}
        self.assertEqual(set(byVariant), {b"accept-encoding: gzip", b"accept-encoding: br"})
        self.assertEqual(byVariant[b"accept-encoding: br"].head, b"H2")
        self.assertEqual((yield self.store.readBody(byVariant[b"accept-encoding: gzip"])), b"zipped")
        self.assertEqual((yield self.store.readBody(byVariant[b"accept-encoding: br"])), b"brotli")
        self.assertEqual((yield self.store.lookup(b"https://example.com/other")).variants, ())
        self.assertEqual((self.store.hits, self.store.misses), (1, 1))

    @inlineCallbacks
    def test_replaceDropsOldChunks(self):
        """
        Storing the same variant again replaces it with a new object id and
        removes the old chunks.
        """
        yield self.fill(body=b"one")
        old = (yield self.store.lookup(URL)).variants[0]
        yield self.fill(body=b"two")
        new = (yield self.store.lookup(URL)).variants[0]
        self.assertNotEqual(old.objectId, new.objectId)
        self.assertEqual((yield self.store.readBody(new)), b"two")
        self.assertEqual(self.server.command("EXISTS", *self.store.chunkKeys(old)), 0)

    def test_replacementLogged(self):
        """
        A commit that replaces a stored object is logged for the followers
        (here by the commit script itself).
        """
        return self.checkReplacementLogged()

    @inlineCallbacks
    def test_replacementLogAtomic(self):
        """
        On one node the C{replaced} record is written by the commit script:
        a commit refused (its lock lost to a purge) logs nothing, and the
        log is not written apart from the script.
        """
        yield self.fill(body=b"one")
        follower = PurgeLogFollower(self.store, lambda k, v: None, lambda: None)
        yield follower.start()
        appended = []
        self.patch(self.store, "_appendLog", lambda kind, value: appended.append(kind))
        self.assertTrue((yield self.fill(body=b"two")))
        f = (yield self.store.beginFill(URL)).fill
        f.write(b"three")
        self.server.command("DEL", self.store.keysOf(URL)["lock"])
        self.assertFalse((yield f.commit(b"", b"H", 60)))
        self.assertEqual(appended, [])
        self.assertEqual((yield follower.poll()), 1)
        self.assertEqual(self.store.replaced, 1)

    @inlineCallbacks
    def test_bigBodyChunked(self):
        """
        A 1 MiB body is stored in 64 chunks of 16 KiB and read back intact.
        """
        body = os.urandom(1024 * 1024)
        yield self.fill(body=body)
        v = (yield self.store.lookup(URL)).variants[0]
        self.assertEqual((v.chunks, v.length), (64, len(body)))
        self.assertEqual(v.digest, hashlib.sha256(body).hexdigest().encode())
        self.assertEqual((yield self.store.readBody(v)), body)

    @inlineCallbacks
    def test_missingChunk(self):
        """
        A missing chunk makes the body a miss (never a partial body) and
        drops the variant.
        """
        yield self.fill(body=os.urandom(40000))
        v = (yield self.store.lookup(URL)).variants[0]
        self.server.command("DEL", self.store.chunkKeys(v)[1])
        self.assertIsNone((yield self.store.readBody(v)))
        self.assertEqual(self.store.damaged, 1)
        self.assertEqual((yield self.store.lookup(URL)).variants, ())

    @inlineCallbacks
    def test_corruptChunk(self):
        """
        A chunk of the right length but other bytes fails the digest: a
        miss.
        """
        yield self.fill(body=b"a" * 40000)
        v = (yield self.store.lookup(URL)).variants[0]
        k = self.store.chunkKeys(v)[0]
        data = self.server.command("GET", k)
        self.server.command("SET", k, b"b" + data[1:], "KEEPTTL")
        self.assertIsNone((yield self.store.readBody(v)))
        self.assertEqual(self.store.damaged, 1)

    @inlineCallbacks
    def test_evictedChunks(self):
        """
        With a tiny maxmemory (volatile-lru), storing many bodies evicts
        chunks or metadata of earlier ones: each read is either the exact
        body or a miss, and at least one miss happens.
        """
        self.server.command("CONFIG", "SET", "maxmemory-policy", "volatile-lru")
        info = self.server.command("INFO", "memory").decode()
        used = int(info.split("used_memory:")[1].split()[0])
        self.server.command("CONFIG", "SET", "maxmemory", str(used + 2_500_000))
        bodies = {}
        for i in range(12):
            key = b"https://example.com/big/%d" % i
            bodies[key] = os.urandom(300 * 1024)
            try:
                yield self.fill(key=key, body=bodies[key])
            except Exception:
                pass
        results = {}
        for key, body in bodies.items():
            found = yield self.store.lookup(key)
            if not found.variants:
                results[key] = None
                continue
            got = yield self.store.readBody(found.variants[0])
            if got is not None:
                self.assertEqual(got, body)
            results[key] = got
        self.assertIn(None, results.values())
        # with the pressure gone, the store works again
        self.server.command("CONFIG", "SET", "maxmemory", "0")
        yield self.fill(key=b"https://example.com/after", body=b"ok")
        after = yield self.store.lookup(b"https://example.com/after")
        self.assertEqual((yield self.store.readBody(after.variants[0])), b"ok")

    @inlineCallbacks
    def test_everyKeyHasTTL(self):
        """
        Every key the store writes has a TTL, indexes and log included; the
        entry lives freshness + stale window + grace.
        """
        yield self.fill(body=os.urandom(50000), freshFor=100.0, tags=[b"t1"])
        yield self.store.purgeKey(b"https://example.com/x")
        yield self.store.markPass(b"https://example.com/p")
        keys = self.allKeys(self.server)
        self.assertGreater(len(keys), 6)
        for k in keys:
            self.assertGreater(self.server.command("PTTL", k), 0, k)
        ttl = self.server.command("PTTL", self.store.keysOf(URL)["e"])
        self.assertTrue(135000 < ttl <= 140000, ttl)

    @inlineCallbacks
    def test_lockAndWait(self):
        """
        While one fill holds the lock another gets LOCKED; its waiter is
        woken by the commit's message and then finds the entry.
        """
        yield self.store.start()
        first = yield self.store.beginFill(URL)
        second = yield self.store.beginFill(URL)
        self.assertIs(second.outcome, FillOutcome.LOCKED)
        self.assertTrue(0 < second.remaining <= self.store.lease)
        self.assertTrue((yield self.store.lookup(URL)).locked)
        self.store.pollInterval = 30.0  # only the message can wake it in time
        waiting = self.store.waitForFill(URL, maxWait=10.0)
        first.fill.write(b"body")
        self.assertTrue((yield first.fill.commit(b"", b"H", 60)))
        self.assertIs((yield waiting), WaitOutcome.WOKEN)
        self.assertEqual(self.store.lockWaits, 1)
        self.assertEqual([v.head for v in (yield self.store.lookup(URL)).variants], [b"H"])

    @inlineCallbacks
    def test_pollSafetyNet(self):
        """
        Without the subscription, a waiter still notices the lock is gone,
        through its poll.
        """
        first = yield self.store.beginFill(URL)
        self.store.pollInterval = 0.05
        waiting = self.store.waitForFill(URL, maxWait=10.0)
        yield first.fill.abort()
        self.assertIs((yield waiting), WaitOutcome.RELEASED)
        self.assertIs((yield self.store.beginFill(URL)).outcome, FillOutcome.ACQUIRED)

    @inlineCallbacks
    def test_waitTimesOut(self):
        """
        A wait is bounded (on the store's clock), and its poll timers are
        gone once it has ended.
        """
        clock = Clock()
        store = FleetStore(self.client, reactor, clock=clock, pollInterval=0.5)
        self.addCleanup(store.stop)
        yield store.beginFill(URL)
        waiting = store.waitForFill(URL, maxWait=3.0)
        clock.advance(2.9)
        self.assertNoResult(waiting)
        clock.advance(0.1)
        self.assertIs(self.successResultOf(waiting), WaitOutcome.TIMEOUT)
        self.assertEqual([c for c in clock.getDelayedCalls() if "Fill" not in repr(c.func)], [])
        self.assertEqual(store._waiters, {})

    @inlineCallbacks
    def test_renewalOnClock(self):
        """
        The lease is renewed every third of it on the store's clock: after a
        renewal the lock's TTL is back to the full lease; after the commit
        nothing is scheduled any more.
        """
        clock = Clock()
        store = FleetStore(self.client, reactor, clock=clock, lease=30.0)
        self.addCleanup(store.stop)
        f = (yield store.beginFill(URL)).fill
        lock = store.keysOf(URL)["lock"]
        self.server.command("PEXPIRE", lock, 5000)
        clock.advance(10.0)
        yield _until(lambda: self.server.command("PTTL", lock) > 20000)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        f.write(b"x")
        self.assertTrue((yield f.commit(b"", b"H", 60)))
        self.assertEqual(clock.getDelayedCalls(), [])

    @inlineCallbacks
    def test_writeQueue(self):
        """
        Writes beyond the bounded queue are dropped and counted.
        """
        store = FleetStore(self.client, reactor, writeQueue=WriteQueue(concurrency=1, maxPending=1))
        gate = Deferred()
        first = store.submitWrite(lambda: gate)
        second = store.submitWrite(lambda: self.client.execute(b"SET", b"w", b"2"))
        self.assertIsNone(store.submitWrite(lambda: self.client.execute(b"SET", b"w", b"3")))
        self.assertEqual(store.droppedWrites, 1)
        gate.callback(None)
        yield first
        yield second
        self.assertEqual(self.server.command("GET", "w"), b"2")

    @inlineCallbacks
    def test_expiredLeaseCannotCommit(self):
        """
        A fill whose lease expired and whose lock was taken by another fill
        cannot commit; the other one can.
        """
        self.store.lease = 0.2
        first = (yield self.store.beginFill(URL)).fill
        first._stopRenewal()  # a stalled holder: no renewals
        first.closed = False
        first.write(b"stale")
        yield deferLater(reactor, 0.3, lambda: None)
        second = yield self.store.beginFill(URL)
        self.assertIs(second.outcome, FillOutcome.ACQUIRED)
        self.assertFalse((yield first.commit(b"", b"old", 60)))
        second.fill.write(b"fresh")
        self.assertTrue((yield second.fill.commit(b"", b"new", 60)))
        v = (yield self.store.lookup(URL)).variants
        self.assertEqual([x.head for x in v], [b"new"])
        self.assertEqual((yield self.store.readBody(v[0])), b"fresh")
        self.assertEqual(self.store.failedCommits, 1)

    @inlineCallbacks
    def test_leaseRenewed(self):
        """
        While a fill is open its lease is renewed, so a slow fill keeps its
        lock past the first lease.
        """
        self.store.lease = 0.3
        f = (yield self.store.beginFill(URL)).fill
        yield deferLater(reactor, 0.8, lambda: None)
        self.assertIs((yield self.store.beginFill(URL)).outcome, FillOutcome.LOCKED)
        f.write(b"x")
        self.assertTrue((yield f.commit(b"", b"H", 60)))

    @inlineCallbacks
    def test_purgeDuringFill(self):
        """
        A purge during a fill removes the lock: the fill's commit fails and
        nothing becomes visible.
        """
        yield self.fill(body=b"old")
        f = (yield self.store.beginFill(URL)).fill
        f.write(b"new body")
        self.assertEqual((yield self.store.purgeKey(URL)), 1)
        self.assertFalse((yield f.commit(b"", b"H", 60)))
        self.assertEqual((yield self.store.lookup(URL)).variants, ())

    @inlineCallbacks
    def test_purgeAdvancesGeneration(self):
        """
        A fill that takes the lock only to store, with the generation it
        saw when it started, gets it unless a purge came since (then
        PURGED, and the lock is not taken); another fill that came since
        does not stop it once its lock is gone.
        """
        started = (yield self.store.lookup(URL)).generation
        self.assertEqual(started, b"0")
        self.assertFalse((yield self.store.purgedSince(URL, started)))
        attempt = yield self.store.beginFill(URL, started)
        self.assertIs(attempt.outcome, FillOutcome.ACQUIRED)
        self.assertEqual(attempt.fill.generation, b"1")
        yield attempt.fill.abort()
        self.assertIs((yield self.store.beginFill(URL, started)).outcome, FillOutcome.ACQUIRED)
        self.server.command("DEL", self.store.keysOf(URL)["lock"])
        started = (yield self.store.lookup(URL)).generation
        self.assertEqual(started, b"2")
        self.assertEqual((yield self.store.purgeKey(URL)), 0)
        self.assertEqual((yield self.store.lookup(URL)).generation, b"3")
        self.assertIs((yield self.store.beginFill(URL, started)).outcome, FillOutcome.PURGED)
        self.assertFalse((yield self.store.lookup(URL)).locked)
        self.assertTrue((yield self.store.purgedSince(URL, started)))
        self.assertFalse((yield self.store.purgedSince(URL, b"3")))
        # started after the purge
        attempt = yield self.store.beginFill(URL, b"3")
        self.assertIs(attempt.outcome, FillOutcome.ACQUIRED)
        self.assertIs((yield self.store.beginFill(URL, b"3")).outcome, FillOutcome.LOCKED)

    @inlineCallbacks
    def test_passMarker(self):
        """
        An uncacheable answer sets the pass marker: the next fill attempt
        says PASS (go upstream, no waiting), waiters are woken, and the
        marker expires.
        """
        yield self.store.start()
        f = (yield self.store.beginFill(URL)).fill
        self.store.pollInterval = 30.0
        waiting = self.store.waitForFill(URL, maxWait=10.0)
        self.assertTrue((yield f.markPass(0.3)))
        self.assertIs((yield waiting), WaitOutcome.WOKEN)
        attempt = yield self.store.beginFill(URL)
        self.assertIs(attempt.outcome, FillOutcome.PASS)
        self.assertTrue((yield self.store.lookup(URL)).passMarker)
        yield deferLater(reactor, 0.4, lambda: None)
        self.assertIs((yield self.store.beginFill(URL)).outcome, FillOutcome.ACQUIRED)

    @inlineCallbacks
    def test_purgeKeyAllVariants(self):
        """
        Purging a URL removes every variant and its chunks.
        """
        yield self.fill(variantKey=b"a", body=os.urandom(40000))
        yield self.fill(variantKey=b"b", body=b"b")
        variants = (yield self.store.lookup(URL)).variants
        self.assertEqual((yield self.store.purgeKey(URL)), 2)
        self.assertEqual((yield self.store.lookup(URL)).variants, ())
        for v in variants:
            self.assertEqual(self.server.command("EXISTS", *self.store.chunkKeys(v)), 0)

    @inlineCallbacks
    def test_purgePrefix(self):
        """
        Purging a prefix removes the entries under it (all variants) and
        only those, through the host index.
        """
        for path, vk in [(b"/img/1", b""), (b"/img/2", b"a"), (b"/img/2", b"b"), (b"/css/1", b"")]:
            yield self.fill(key=b"https://example.com" + path, variantKey=vk)
        yield self.fill(key=b"https://other.example/img/1")
        self.assertEqual((yield self.store.purgePrefix(b"https://example.com/img/")), 3)
        for key, left in [
            (b"https://example.com/img/1", 0),
            (b"https://example.com/img/2", 0),
            (b"https://example.com/css/1", 1),
            (b"https://other.example/img/1", 1),
        ]:
            self.assertEqual(len((yield self.store.lookup(key)).variants), left, key)

    @inlineCallbacks
    def test_purgeTag(self):
        """
        Purging a tag removes every entry carrying it, all variants, and
        the tag's index; the tag index is a set with a TTL.
        """
        yield self.fill(key=b"https://example.com/1", variantKey=b"a", tags=[b"product-7"])
        yield self.fill(key=b"https://example.com/1", variantKey=b"b", tags=[b"product-7"])
        yield self.fill(key=b"https://example.com/2", tags=[b"product-7", b"home"])
        yield self.fill(key=b"https://example.com/3", tags=[b"home"])
        index = self.store.tagIndexKey(b"product-7")
        self.assertEqual(self.server.command("TYPE", index), b"set")
        self.assertGreater(self.server.command("PTTL", index), 0)
        self.assertEqual((yield self.store.purgeTag(b"product-7")), 3)
        self.assertEqual((yield self.store.lookup(b"https://example.com/1")).variants, ())
        self.assertEqual((yield self.store.lookup(b"https://example.com/2")).variants, ())
        self.assertEqual(len((yield self.store.lookup(b"https://example.com/3")).variants), 1)
        self.assertEqual(self.server.command("EXISTS", index), 0)

    @inlineCallbacks
    def test_tagIndexExpires(self):
        """
        A tag index lives as long as its longest-lived entry, then goes,
        with the entries.
        """
        self.store.grace = 0.0
        yield self.fill(key=b"https://example.com/1", freshFor=0.3, staleFor=0.0, tags=[b"t"])
        yield self.fill(key=b"https://example.com/2", freshFor=0.6, staleFor=0.0, tags=[b"t"])
        yield self.fill(key=b"https://example.com/3", freshFor=0.1, staleFor=0.0, tags=[b"t"])
        index = self.store.tagIndexKey(b"t")
        ttl = self.server.command("PTTL", index)
        self.assertTrue(400 < ttl <= 600, ttl)
        yield deferLater(reactor, 0.7, lambda: None)
        self.assertEqual(self.server.command("EXISTS", index, self.store.hostIndexKey(URL)), 0)
        # only the fencing counters are left, and they expire too
        left = self.allKeys(self.server)
        self.assertEqual([k for k in left if not k.endswith(b":fence")], [])
        for k in left:
            self.assertLessEqual(self.server.command("PTTL", k), self.store.fenceTTL * 1000)

    @inlineCallbacks
    def test_purgeLog(self):
        """
        A follower started before purges receives each of them, in order,
        and nothing twice.
        """
        got = []
        gaps = []
        follower = PurgeLogFollower(self.store, lambda k, v: got.append((k, v)), lambda: gaps.append(1))
        yield follower.start()
        yield self.store.purgeKey(URL)
        yield self.store.purgePrefix(b"https://example.com/img/")
        yield self.store.purgeTag(b"home")
        self.assertEqual((yield follower.poll()), 3)
        self.assertEqual(got, [(b"key", URL), (b"prefix", b"https://example.com/img/"), (b"tag", b"home")])
        self.assertEqual((yield follower.poll()), 0)
        self.assertEqual(gaps, [])

    @inlineCallbacks
    def test_purgeLogRun(self):
        """
        A running follower polls on its clock and hands each purge over.
        """
        clock = Clock()
        got = []
        follower = PurgeLogFollower(self.store, lambda k, v: got.append(v), lambda: None)
        yield follower.start()
        follower.run(1.0, clock)
        self.addCleanup(follower.stop)
        yield self.store.purgeKey(URL)
        clock.advance(1.0)
        yield _until(lambda: got)
        self.assertEqual(got, [URL])
        self.assertEqual(follower.errors, 0)

    @inlineCallbacks
    def test_purgeLogTrimmedGap(self):
        """
        When the log is trimmed past the follower's position, the follower
        reports a gap instead of silently skipping purges, then carries on
        from the end.
        """
        self.store.purgeLogMaxLen = 10
        got, gaps = [], []
        follower = PurgeLogFollower(self.store, lambda k, v: got.append(v), lambda: gaps.append(1))
        yield follower.start()
        yield self.store.purgeKey(b"https://example.com/first")
        self.assertEqual((yield follower.poll()), 1)
        for i in range(300):
            yield self.store._appendLog(b"key", b"k%d" % i)
        self.assertEqual((yield follower.poll()), -1)
        self.assertEqual(gaps, [1])
        yield self.store.purgeKey(b"https://example.com/after")
        self.assertEqual((yield follower.poll()), 1)
        self.assertEqual(got[-1], b"https://example.com/after")

    @inlineCallbacks
    def test_purgeLogRestartGap(self):
        """
        A Redis restart (the log is gone, then recreated) is a gap.
        """
        gaps = []
        follower = PurgeLogFollower(self.store, lambda k, v: None, lambda: gaps.append(1))
        yield self.store.purgeKey(URL)
        yield follower.start()
        self.assertIsNotNone(follower.epoch)
        self.server.kill()
        self.server.start()
        yield self.retry(lambda: self.store.purgeKey(b"https://example.com/new"))
        self.assertEqual((yield self.retry(follower.poll)), -1)
        self.assertEqual(gaps, [1])
        self.assertEqual((yield follower.poll()), 0)

    @inlineCallbacks
    def test_purgeLogGoneGap(self):
        """
        A log that vanished (restart with no purge since, eviction) is a
        gap too.
        """
        gaps = []
        follower = PurgeLogFollower(self.store, lambda k, v: None, lambda: gaps.append(1))
        yield self.store.purgeKey(URL)
        yield follower.start()
        self.server.command("FLUSHALL")
        self.assertEqual((yield follower.poll()), -1)
        self.assertEqual(gaps, [1])

    @inlineCallbacks
    def retry(self, call):
        for _ in range(300):
            try:
                result = yield call()
                return result
            except Exception:
                yield deferLater(reactor, 0.02, lambda: None)
        raise AssertionError("never succeeded")

    @inlineCallbacks
    def test_metricsAndTimeouts(self):
        """
        A stopped Redis makes lookups fail within their deadline, counted
        as timeouts, and the breaker opens after repeated failures.
        """
        self.store.timeout = 0.1
        yield self.fill()
        self.server.pause()
        try:
            for _ in range(6):
                try:
                    yield self.store.lookup(URL)
                except Exception:
                    pass
        finally:
            self.server.resume()
        self.assertGreaterEqual(self.store.timeouts, 5)
        self.assertEqual(list(self.store.breakerStates().values()), ["open"])


class ClusterStoreTests(StoreMixin, TestCase):
    """
    The store on a 3-master cluster.
    """

    skip = needRedis
    timeout = 120

    def setUp(self):
        self.cluster = RedisCluster().start()
        self.addCleanup(self.cluster.stop)
        self.client = ClusterClient(reactor, [parseURL(self.cluster.urls[0])], timeout=2.0)
        self.addCleanup(self.client.close)
        self.store = FleetStore(self.client, reactor, chunkSize=16 * 1024, timeout=2.0)
        self.addCleanup(self.store.stop)

    def test_inlineBodies(self):
        return self.checkInlineBodies()

    @inlineCallbacks
    def test_entryOnOneSlot(self):
        """
        All of an entry's keys (metadata, chunks, lock, fence) are on one
        slot, different entries spread over the nodes, and everything works
        with no redirection.
        """
        keys = [b"https://example.com/%d" % i for i in range(30)]
        bodies = {k: os.urandom(40000) for k in keys}
        yield gatherResults([self.fill(key=k, body=bodies[k], tags=[b"all"]) for k in keys])
        owners = set()
        for k in keys:
            slot = keySlot(b"{" + hashTag(k) + b"}")
            node = self.cluster.nodeFor(slot)
            owners.add(node.port)
            stored = node.command("CLUSTER", "GETKEYSINSLOT", str(slot), "100")
            v = (yield self.store.lookup(k)).variants[0]
            expected = {self.store.keysOf(k)["e"], self.store.keysOf(k)["fence"], *self.store.chunkKeys(v)}
            self.assertTrue(expected <= set(stored), (expected, stored))
            self.assertEqual((yield self.store.readBody(v)), bodies[k])
        self.assertEqual(len(owners), 3)
        self.assertEqual(self.client.redirects, 0)

    @inlineCallbacks
    def test_purgesAndLog(self):
        """
        Purges by tag and prefix work across shards and are logged.
        """
        got = []
        follower = PurgeLogFollower(self.store, lambda k, v: got.append((k, v)), lambda: None)
        yield follower.start()
        keys = [b"https://example.com/%d" % i for i in range(12)]
        for k in keys:
            yield self.fill(key=k, tags=[b"even" if int(k.rsplit(b"/", 1)[1]) % 2 == 0 else b"odd"])
        self.assertEqual((yield self.store.purgeTag(b"even")), 6)
        # 1 and 11 (10 went with "even")
        self.assertEqual((yield self.store.purgePrefix(b"https://example.com/1")), 2)
        left = []
        for k in keys:
            if (yield self.store.lookup(k)).variants:
                left.append(k)
        self.assertEqual(sorted(left), sorted([b"https://example.com/%d" % i for i in (3, 5, 7, 9)]))
        self.assertEqual((yield follower.poll()), 2)
        self.assertEqual([k for k, v in got], [b"tag", b"prefix"])

    def test_replacementLogged(self):
        """
        A commit that replaces a stored object is logged for the followers
        (in a cluster right after the commit: the log is on another slot).
        """
        return self.checkReplacementLogged()

    @inlineCallbacks
    def test_wakeUpAcrossNodes(self):
        """
        The commit's wake-up, published on the entry's node, reaches a
        subscriber connected to another node.
        """
        yield self.store.start()
        yield self.client.refresh()
        key = next(
            b"https://example.com/w%d" % i
            for i in range(100)
            if self.client.slotOwner(b"{" + hashTag(b"https://example.com/w%d" % i) + b"}")[1] != self.cluster.nodes[0].port
        )
        f = (yield self.store.beginFill(key)).fill
        self.store.pollInterval = 30.0
        waiting = self.store.waitForFill(key, maxWait=10.0)
        f.write(b"x")
        yield f.commit(b"", b"H", 60)
        self.assertIs((yield waiting), WaitOutcome.WOKEN)

    @inlineCallbacks
    def test_wakeUpAfterSubscriberNodeDies(self):
        """
        When the node the wake-up subscription is on dies, the subscriber
        moves to another node and wake-ups still arrive.
        """
        yield self.client.refresh()
        yield self.store.start()
        first = self.cluster.nodes[0]
        self.assertEqual(self.store._subscriber.address.port, first.port)
        first.kill()
        yield _until(lambda: self.store._subscriber.connected and self.store._subscriber.address.port != first.port)
        # the entry and its host index both on live nodes
        key = next(
            k
            for k in (b"https://h%d.example/s" % i for i in range(200))
            if self.client.slotOwner(b"{" + hashTag(k) + b"}")[1] != first.port
            and self.client.slotOwner(self.store.hostIndexKey(k))[1] != first.port
        )
        f = (yield self.store.beginFill(key)).fill
        self.store.pollInterval = 30.0
        waiting = self.store.waitForFill(key, maxWait=10.0)
        f.write(b"x")
        self.assertTrue((yield f.commit(b"", b"H", 60)))
        self.assertIs((yield waiting), WaitOutcome.WOKEN)
