"""
L{cachingproxy.cache.filllock.LocalFillLock}, the cross-process step of
collapsed forwarding on one machine: two locks (and two disk stores) on one
folder stand for two processes (C{flock} locks belong to open files, so
they exclude each other within a process too); time is a L{Clock}. Then the
cache layer with it, through the fake exchange of L{tests.test_layer}.
"""

import os
import time
from unittest import SkipTest

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from cachingproxy.cache import policy
from cachingproxy.cache.collapse import NO_LEASE, Busy, IFillLock, ILease, Waited
from cachingproxy.cache.disk import DiskStore
from cachingproxy.cache.filllock import LocalFillLock, _name
from cachingproxy.cache.layer import CacheLayer, CacheSettings
from cachingproxy.http.headers import Headers
from cachingproxy.http.message import RequestHead, ResponseHead

from .helpers import temporaryPath
from .test_layer import KEY, ORIGIN, FakeExchange, respond

CACHEABLE = [(b"Cache-Control", b"max-age=60")]


class Process:
    """
    What one process has: a disk store on the shared folder and a fill
    lock on its C{locks} folder.
    """

    def __init__(self, folder: str, clock: Clock, maxWait: float = 2.0) -> None:
        self.store = DiskStore(os.path.join(folder, "cache"))
        self.lock = LocalFillLock(os.path.join(folder, "cache", "locks"), self.store, clock,
                                  pollInterval=0.05, passFor=3.0, random=lambda: 0.5)
        self.layer = CacheLayer(self.store, clock, None, CacheSettings(collapseWait=maxWait))
        self.layer.fillLock = self.lock

    def request(self, fields=()) -> FakeExchange:
        exchange = FakeExchange(fields=fields)
        self.layer.handle(exchange, ORIGIN, exchange.head.target)
        return exchange

    def store_(self, key: bytes = KEY, body: bytes = b"hello") -> None:
        """
        Commit a response for C{key} directly.
        """
        request = RequestHead(b"GET", b"/a", (1, 1), Headers([(b"Host", b"origin.example")]))
        response = ResponseHead(200, b"OK", (1, 1), Headers(CACHEABLE))
        writer = self.store.writer(key, b"")
        writer.write(body)
        writer.commit(policy.StoredEntry.fromExchange(key, request, response, 0.0, 0.0,
                                                      len(body)))


class LocalFillLockTests(SynchronousTestCase):
    """
    The lock, the waits and the pass markers.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.folder = os.path.dirname(temporaryPath(self))
        self.a = Process(self.folder, self.clock)
        self.b = Process(self.folder, self.clock)
        self.locks = os.path.join(self.folder, "cache", "locks")

    def lockFiles(self):
        return sorted(os.listdir(self.locks))

    def test_interfaces(self) -> None:
        """
        The lock provides L{IFillLock}, its lease L{ILease}.
        """
        self.assertTrue(verifyObject(IFillLock, self.a.lock))
        lease = self.successResultOf(self.a.lock.acquire(KEY, 1.0))
        self.assertTrue(verifyObject(ILease, lease))
        self.assertTrue(verifyObject(ILease, NO_LEASE))

    def test_freeLockTakenAtOnce(self) -> None:
        """
        A key nobody fills gives a lease at once; its lock file exists
        while it is held and is removed when it ends.
        """
        lease = self.successResultOf(self.a.lock.acquire(KEY, 1.0))
        self.assertEqual(self.lockFiles(), [_name(KEY) + ".lock"])
        self.assertEqual(self.a.lock.held, 1)
        lease.commit()
        self.assertEqual(self.lockFiles(), [])
        self.assertEqual(self.a.lock.held, 0)
        lease.release()
        self.assertEqual(self.a.lock.held, 0)

    def test_otherKeysIndependent(self) -> None:
        """
        A fill of one key does not hold up another's.
        """
        self.successResultOf(self.a.lock.acquire(KEY, 1.0))
        self.assertTrue(ILease.providedBy(
            self.successResultOf(self.b.lock.acquire(KEY + b"x", 1.0))))

    def test_waiterWokenByStore(self) -> None:
        """
        While one process holds the lock another waits; the commit of the
        entry (seen through the store's change stamp) ends its wait with
        STORED at its next check, before the lock is even released.
        """
        self.successResultOf(self.a.lock.acquire(KEY, 1.0))
        waiting = self.b.lock.acquire(KEY, 2.0)
        self.clock.advance(0.5)
        self.assertNoResult(waiting)
        self.a.store_()
        self.clock.advance(0.05)
        result = self.successResultOf(waiting)
        self.assertEqual(result.outcome, Waited.STORED)
        self.assertAlmostEqual(result.waited, 0.55, places=5)

    def test_otherKeyChangeDoesNotWake(self) -> None:
        """
        A change to another key (which may share the change stamp) does
        not end the wait: what is stored under the key is the judge.
        """
        self.successResultOf(self.a.lock.acquire(KEY, 1.0))
        waiting = self.b.lock.acquire(KEY, 2.0)
        self.a.store_(key=KEY + b"other")
        self.clock.advance(0.3)
        self.assertNoResult(waiting)

    def test_passMarker(self) -> None:
        """
        An answer not storable leaves a pass marker: the waiter goes
        upstream at once (PASS), and so does every acquire until the
        marker expires; then the lock is taken again.
        """
        lease = self.successResultOf(self.a.lock.acquire(KEY, 1.0))
        waiting = self.b.lock.acquire(KEY, 2.0)
        lease.markPass()
        self.assertEqual(self.lockFiles(), [_name(KEY) + ".pass"])
        self.clock.advance(0.05)
        self.assertEqual(self.successResultOf(waiting).outcome, Waited.PASS)
        self.assertEqual(self.successResultOf(self.b.lock.acquire(KEY, 2.0)),
                         Busy(Waited.PASS))
        self.clock.advance(3.0)
        lease = self.successResultOf(self.b.lock.acquire(KEY, 2.0))
        self.assertTrue(ILease.providedBy(lease))
        # A later commit removes the marker at once.
        lease.commit()
        self.assertEqual(self.lockFiles(), [])

    def test_releasedTakenOver(self) -> None:
        """
        A holder that gives up (the fetch failed) hands the lock to a
        waiter, which fills in its place.
        """
        lease = self.successResultOf(self.a.lock.acquire(KEY, 1.0))
        waiting = self.b.lock.acquire(KEY, 2.0)
        lease.release()
        self.clock.advance(0.05)
        taken = self.successResultOf(waiting)
        self.assertTrue(ILease.providedBy(taken))
        self.assertEqual(self.b.lock.takenOver, 1)
        self.assertNoResult(self.a.lock.acquire(KEY, 1.0))

    def test_deadHolderTakenOver(self) -> None:
        """
        A holder that dies (its descriptor closed by the kernel, its lock
        file left behind) does not wedge the waiter: it takes the lock.
        """
        lease = self.successResultOf(self.a.lock.acquire(KEY, 1.0))
        waiting = self.b.lock.acquire(KEY, 2.0)
        os.close(lease._fd)
        lease._fd = None
        self.assertEqual(self.lockFiles(), [_name(KEY) + ".lock"])
        self.clock.advance(0.05)
        self.assertTrue(ILease.providedBy(self.successResultOf(waiting)))

    def test_waitBounded(self) -> None:
        """
        A wait ends at C{maxWait} (TIMEOUT); meanwhile one timer per wait,
        each at least half the poll interval away (no busy loop); none
        left after.
        """
        self.successResultOf(self.a.lock.acquire(KEY, 1.0))
        waiting = self.b.lock.acquire(KEY, 1.0)
        ticks = 0
        while not waiting.called:
            [call] = self.clock.getDelayedCalls()
            self.assertGreaterEqual(call.getTime() - self.clock.seconds(), 0.025 - 1e-9)
            self.clock.advance(call.getTime() - self.clock.seconds())
            ticks += 1
        self.assertEqual(self.successResultOf(waiting).outcome, Waited.TIMEOUT)
        self.assertEqual(ticks, 20)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.b.lock.timeouts, 1)

    def test_jitter(self) -> None:
        """
        The checks are spread from half to one and a half poll intervals.
        """
        self.successResultOf(self.a.lock.acquire(KEY, 1.0))
        for draw, delay in ((0.0, 0.025), (0.999, 0.07495)):
            self.b.lock.random = lambda: draw
            waiting = self.b.lock.acquire(KEY, 1.0)
            [call] = self.clock.getDelayedCalls()
            self.assertAlmostEqual(call.getTime() - self.clock.seconds(), delay)
            waiting.cancel()
            self.failureResultOf(waiting)
            self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopEndsWaits(self) -> None:
        """
        L{LocalFillLock.stop} ends every wait (as TIMEOUT).
        """
        self.successResultOf(self.a.lock.acquire(KEY, 1.0))
        waiting = self.b.lock.acquire(KEY, 5.0)
        self.b.lock.stop()
        self.assertEqual(self.successResultOf(waiting).outcome, Waited.TIMEOUT)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sweep(self) -> None:
        """
        Housekeeping removes lock files nobody holds and expired pass
        markers; held locks and live markers stay.
        """
        held = self.successResultOf(self.a.lock.acquire(KEY, 1.0))
        dead = self.successResultOf(self.a.lock.acquire(b"dead", 1.0))
        os.close(dead._fd)
        dead._fd = None
        passing = self.successResultOf(self.a.lock.acquire(b"pass", 1.0))
        passing.markPass()
        expired = self.successResultOf(self.a.lock.acquire(b"expired", 1.0))
        self.clock.advance(-4.0)
        expired.markPass()
        self.clock.advance(4.0)
        self.assertEqual(self.b.lock.sweep(), 2)
        self.assertEqual(self.lockFiles(),
                         sorted([_name(KEY) + ".lock", _name(b"pass") + ".pass"]))
        held.release()

    def test_unusableFolder(self) -> None:
        """
        A lock folder that cannot be used gives a lease that holds nothing:
        the collapsing stays within the process.
        """
        path = temporaryPath(self, "notafolder")
        with open(path, "w"):
            pass
        lock = LocalFillLock(path, self.a.store, self.clock)
        self.assertIs(self.successResultOf(lock.acquire(KEY, 1.0)), NO_LEASE)

    def test_folderRemovedByHand(self) -> None:
        """
        The lock folder is made again when it was removed.
        """
        os.rmdir(self.locks)
        self.assertTrue(ILease.providedBy(self.successResultOf(self.a.lock.acquire(KEY, 1.0))))


class LayerAcrossProcessesTests(SynchronousTestCase):
    """
    Two cache layers on one disk folder, as two workers: one request per
    process takes part in the cross-process step.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        folder = os.path.dirname(temporaryPath(self))
        self.a = Process(folder, self.clock)
        self.b = Process(folder, self.clock)

    def test_oneLockPerProcess(self) -> None:
        """
        Concurrent misses in one process take the lock once: one goes
        upstream, the others stream its response, the lock is released
        when the entry is committed.
        """
        leader = self.a.request()
        others = [self.a.request() for _ in range(4)]
        self.assertEqual(self.a.lock.held, 1)
        self.assertEqual([len(e.forwarded) for e in [leader] + others], [1, 0, 0, 0, 0])
        respond(leader, fields=CACHEABLE)
        for exchange in [leader] + others:
            self.assertEqual((exchange.status, exchange.body, exchange.ended), (200, b"hello", True))
        self.assertEqual(self.a.lock.held, 0)
        self.assertEqual(len(self.a.store.entries(KEY)), 1)

    def test_otherProcessServedFromStore(self) -> None:
        """
        Misses in another process wait for the fill, then are answered
        from the store through the policy: nothing more goes upstream.
        """
        leader = self.a.request()
        waiters = [self.b.request() for _ in range(3)]
        self.assertEqual([len(w.forwarded) for w in waiters], [0, 0, 0])
        self.assertEqual(self.b.lock.waits, 1)
        respond(leader, fields=CACHEABLE)
        self.clock.advance(0.05)
        for waiter in waiters:
            self.assertEqual((waiter.status, waiter.body, waiter.forwarded), (200, b"hello", []))
            self.assertEqual(waiter.cacheResult, "HIT")
            self.assertIn(b"hit", waiter.fields[b"cache-status"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_storedNotUsableGoesUpstream(self) -> None:
        """
        What the other process stored is looked up through the policy: a
        variant for other request fields (Vary) is not served; the waiter
        goes upstream itself, and stores its own variant.
        """
        english = self.a.request(fields=[(b"Accept-Language", b"en")])
        french = self.b.request(fields=[(b"Accept-Language", b"fr")])
        self.assertEqual(french.forwarded, [])
        respond(english, fields=CACHEABLE + [(b"Vary", b"Accept-Language")], body=b"hello")
        self.clock.advance(0.05)
        self.assertEqual(len(french.forwarded), 1)
        respond(french, fields=CACHEABLE + [(b"Vary", b"Accept-Language")], body=b"bonjour")
        self.assertEqual(french.body, b"bonjour")
        self.assertEqual(len(self.b.store.entries(KEY)), 2)

    def test_passGoesUpstreamInParallel(self) -> None:
        """
        An answer that may not be stored (private) ends the waits at once
        with PASS: every waiter of the other process goes upstream at the
        same time, and a later miss there does not wait at all.
        """
        leader = self.a.request()
        waiters = [self.b.request() for _ in range(3)]
        respond(leader, fields=[(b"Cache-Control", b"private")])
        self.clock.advance(0.05)
        self.assertEqual([len(w.forwarded) for w in waiters], [1, 1, 1])
        for waiter in waiters:
            respond(waiter, fields=[(b"Cache-Control", b"private")], body=b"own")
            self.assertEqual(waiter.body, b"own")
        later = Process(os.path.dirname(self.a.store.directory), self.clock).request()
        self.assertEqual(len(later.forwarded), 1)
        self.assertEqual(self.b.store.entries(KEY), [])

    def test_timeoutGoesUpstreamWithoutStoring(self) -> None:
        """
        A fill that takes longer than C{collapseWait}: the waiters go
        upstream and store nothing.
        """
        self.a.request()
        waiter = self.b.request()
        self.clock.advance(1.9)
        self.assertEqual(waiter.forwarded, [])
        self.clock.advance(0.1)
        self.assertEqual(len(waiter.forwarded), 1)
        respond(waiter, fields=CACHEABLE, body=b"own")
        self.assertEqual(waiter.body, b"own")
        self.assertEqual(self.b.store.entries(KEY), [])

    def test_leaderGoneHandsOver(self) -> None:
        """
        The filling client leaves before the head: the lock is released,
        and the other process fills instead (one upstream request there).
        """
        leader = self.a.request()
        waiters = [self.b.request() for _ in range(2)]
        leader.onClientGone()
        self.clock.advance(0.05)
        self.assertEqual([len(w.forwarded) for w in waiters], [1, 0])
        respond(waiters[0], fields=CACHEABLE)
        self.assertEqual([w.body for w in waiters], [b"hello", b"hello"])
        self.assertEqual(self.b.lock.held, 0)

    def test_waitersLeftBeforeLock(self) -> None:
        """
        When every client of a process left while it waited for the lock,
        a lock it then gets is released at once.
        """
        leader = self.a.request()
        waiter = self.b.request()
        waiter.onClientGone()
        waiter.state = waiter.state.DONE
        leader.onClientGone()
        self.clock.advance(0.05)
        self.assertEqual(waiter.forwarded, [])
        self.assertEqual((self.a.lock.held, self.b.lock.held), (0, 0))
        self.assertTrue(ILease.providedBy(self.successResultOf(self.a.lock.acquire(KEY, 1.0))))


class WiringTests(SynchronousTestCase):
    """
    L{cachingproxy.service.tap.buildCache} gives a cache with a disk store
    the fill lock under its folder, swept with the store's housekeeping.
    """

    def build(self, **given):
        from cachingproxy.service.config import fromOptions
        from cachingproxy.service.tap import buildCache

        config = fromOptions(dict(given), {})
        return buildCache(Clock(), config, None)

    def test_diskCache(self) -> None:
        """
        With a disk cache (the default) the lock lives in C{CACHE_DIR/locks},
        waits at most C{--collapse-wait}, and the housekeeping sweeps it.
        """
        folder = temporaryPath(self, "cache")
        cache = self.build(**{"cache-dir": folder, "collapse-wait": "2.5"})
        self.assertIsInstance(cache.fillLock, LocalFillLock)
        self.assertEqual(cache.fillLock.directory, os.path.join(folder, "locks"))
        self.assertEqual(cache.settings.collapseWait, 2.5)
        with open(os.path.join(folder, "locks", "left.lock"), "w"):
            pass
        cache.housekeeping.f()
        self.assertEqual(os.listdir(os.path.join(folder, "locks")), [])

    def test_withinProcessOnly(self) -> None:
        """
        Without a disk cache, or with --no-collapse, there is no fill lock.
        """
        self.assertIsNone(self.build(**{"cache-dir": "none", "cache-memory": "1M"}).fillLock)
        folder = temporaryPath(self, "cache")
        self.assertIsNone(self.build(**{"cache-dir": folder, "no-collapse": True}).fillLock)


class RemovalWakeUpTests(TestCase):
    """
    With inotify, a waiter is woken by the removal of its key's lock
    file, not by its poll (here 30 seconds away).
    """

    timeout = 20

    def setUp(self) -> None:
        from twisted.internet import reactor

        if not LocalFillLock(temporaryPath(self), None, reactor).watchRemovals(reactor):
            raise SkipTest("no inotify here")
        folder = os.path.dirname(temporaryPath(self))
        self.a = Process(folder, reactor)
        self.b = Process(folder, reactor)
        for process in (self.a, self.b):
            process.lock.pollInterval = 30.0
            process.lock.watchRemovals(reactor)
            self.addCleanup(process.lock.stop)

    async def test_wokenByCommit(self) -> None:
        """
        The commit of the entry, then of the lease, ends the other
        process's wait with STORED at once; the folder is no longer
        watched after.
        """
        lease = await self.a.lock.acquire(KEY, 10.0)
        waiting = self.b.lock.acquire(KEY, 10.0)
        self.assertTrue(self.b.lock._watch.watching)
        self.a.store_()
        lease.commit()
        started = time.monotonic()
        result = await waiting
        self.assertEqual(result.outcome, Waited.STORED)
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertFalse(self.b.lock._watch.watching)

    async def test_wokenByRelease(self) -> None:
        """
        A lease given up hands the lock over at once.
        """
        lease = await self.a.lock.acquire(KEY, 10.0)
        waiting = self.b.lock.acquire(KEY, 10.0)
        lease.release()
        taken = await waiting
        self.assertTrue(ILease.providedBy(taken))
        taken.release()
