"""
L{cachingproxy.fleet.filllock.FleetFillLock} against a real redis-server:
two stores, each with its own client, stand for two proxies of a fleet.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from cachingproxy.cache.collapse import NO_LEASE, Busy, IFillLock, ILease, Waited
from cachingproxy.fleet.filllock import FleetFillLock, FleetLease
from cachingproxy.fleet.redis import RedisClient, parseURL
from cachingproxy.fleet.store import FleetStore
from tests.fleetredis import RedisServer, freePort, needRedis

URL = b"https://example.com/a?b=1"


class FleetFillLockTests(TestCase):
    """
    The fleet's fill lock as an L{IFillLock}.
    """

    skip = needRedis
    timeout = 60

    def setUp(self):
        self.server = RedisServer().start()
        self.addCleanup(self.server.stop)
        self.a = self.proxy()
        self.b = self.proxy()

    def proxy(self, **kwargs) -> FleetFillLock:
        client = RedisClient(reactor, parseURL(self.server.url), timeout=2.0)
        self.addCleanup(client.close)
        store = FleetStore(client, reactor, timeout=2.0, grace=10.0, **kwargs)
        self.addCleanup(store.stop)
        return FleetFillLock(store)

    @inlineCallbacks
    def test_interfaces(self):
        """
        The lock provides L{IFillLock}, its lease L{ILease}.
        """
        self.assertTrue(verifyObject(IFillLock, self.a))
        lease = yield self.a.acquire(URL, 1.0)
        self.assertIsInstance(lease, FleetLease)
        self.assertTrue(verifyObject(ILease, lease))
        yield lease.release()

    @inlineCallbacks
    def test_waiterWokenByCommit(self):
        """
        While one proxy fills, another's acquire waits; the fill's commit
        (through the lease's L{Fill}) wakes it by message, with STORED; a
        later C{commit} of the lease changes nothing.
        """
        yield self.b.store.start()
        self.b.store.pollInterval = 30.0  # only the message can wake it in time
        lease = yield self.a.acquire(URL, 1.0)
        waiting = self.b.acquire(URL, 10.0)
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertNoResult(waiting)
        lease.fill.write(b"body")
        self.assertTrue((yield lease.fill.commit(b"", b"H", 60)))
        yield lease.commit()
        result = yield waiting
        self.assertEqual(result.outcome, Waited.STORED)
        self.assertLess(result.waited, 5.0)
        self.assertEqual(self.b.waits, 1)
        self.assertEqual([v.head for v in (yield self.b.store.lookup(URL)).variants], [b"H"])

    @inlineCallbacks
    def test_passMarker(self):
        """
        A lease ended with C{markPass}: the waiter goes upstream at once
        (PASS), and so does the next acquire, without waiting.
        """
        yield self.b.store.start()
        lease = yield self.a.acquire(URL, 1.0)
        waiting = self.b.acquire(URL, 10.0)
        yield deferLater(reactor, 0.1, lambda: None)
        yield lease.markPass()
        self.assertEqual((yield waiting).outcome, Waited.PASS)
        self.assertEqual((yield self.b.acquire(URL, 10.0)).outcome, Waited.PASS)

    @inlineCallbacks
    def test_releasedTakenOver(self):
        """
        A lease given up (the fetch failed; or a commit without a fleet
        commit) hands the lock to the waiter, which fills.
        """
        yield self.b.store.start()
        lease = yield self.a.acquire(URL, 1.0)
        waiting = self.b.acquire(URL, 10.0)
        yield deferLater(reactor, 0.1, lambda: None)
        yield lease.commit()
        taken = yield waiting
        self.assertIsInstance(taken, FleetLease)
        self.assertEqual(self.b.takenOver, 1)
        self.assertIsInstance((yield self.a.acquire(URL, 0.2)), Busy)
        yield taken.release()

    @inlineCallbacks
    def test_deadHolderLeaseExpires(self):
        """
        A holder that dies (its lease no longer renewed) does not wedge
        the waiter: the lease runs out, the waiter's poll sees the lock
        gone and takes it.
        """
        a = self.proxy(lease=0.3)
        b = self.proxy(pollInterval=0.05)
        lease = yield a.acquire(URL, 1.0)
        lease.fill._stopRenewal()
        result = yield b.acquire(URL, 10.0)
        self.assertIsInstance(result, FleetLease)
        yield result.release()

    @inlineCallbacks
    def test_waitBounded(self):
        """
        The wait ends at C{maxWait}: TIMEOUT.
        """
        lease = yield self.a.acquire(URL, 1.0)
        result = yield self.b.acquire(URL, 0.3)
        self.assertEqual(result.outcome, Waited.TIMEOUT)
        self.assertGreaterEqual(result.waited, 0.3)
        self.assertEqual(self.b.timeouts, 1)
        yield lease.release()

    @inlineCallbacks
    def test_fleetUnreachable(self):
        """
        A fleet that cannot be reached gives a lease that holds nothing:
        the collapsing stays within the process.
        """
        client = RedisClient(reactor, parseURL("redis://127.0.0.1:%d" % freePort()), timeout=0.5)
        self.addCleanup(client.close)
        store = FleetStore(client, reactor, timeout=0.5)
        self.addCleanup(store.stop)
        self.assertIs((yield FleetFillLock(store).acquire(URL, 1.0)), NO_LEASE)
        self.flushLoggedErrors()
