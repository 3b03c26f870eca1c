"""
Tests for L{cachingproxy.sites.ratelimit}: token buckets per route and
client, driven by a L{Clock}.
"""

from __future__ import annotations

from hypothesis import given, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cachingproxy.sites.model import RateLimit
from cachingproxy.sites.ratelimit import RateLimiter, Verdict, clientKey


class RateLimiterTests(SynchronousTestCase):
    """
    L{RateLimiter.take}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = RateLimiter(self.clock)

    def test_burst(self) -> None:
        """
        A fresh bucket allows C{burst} requests at once, then refuses with
        the seconds until the next token.
        """
        rate = RateLimit(perSecond=1, burst=3)
        self.assertEqual([self.limiter.take("r", "1.2.3.4", rate).allowed for _ in range(3)],
                         [True, True, True])
        self.assertEqual(self.limiter.take("r", "1.2.3.4", rate), Verdict(False, 1))

    def test_refill(self) -> None:
        """
        Tokens come back at the rate, up to the burst.
        """
        rate = RateLimit(perSecond=2, burst=2)
        self.assertTrue(self.limiter.take("r", "c", rate).allowed)
        self.assertTrue(self.limiter.take("r", "c", rate).allowed)
        self.assertFalse(self.limiter.take("r", "c", rate).allowed)
        self.clock.advance(0.5)
        self.assertTrue(self.limiter.take("r", "c", rate).allowed)
        self.assertFalse(self.limiter.take("r", "c", rate).allowed)
        self.clock.advance(100)
        self.assertEqual([self.limiter.take("r", "c", rate).allowed for _ in range(3)], [True, True, False])

    def test_retryAfterRoundsUp(self) -> None:
        """
        The wait is rounded up to whole seconds, at least 1.
        """
        slow = RateLimit(perSecond=0.25, burst=1)
        self.assertTrue(self.limiter.take("r", "c", slow).allowed)
        self.assertEqual(self.limiter.take("r", "c", slow).retryAfter, 4)
        self.clock.advance(1.5)
        self.assertEqual(self.limiter.take("r", "c", slow).retryAfter, 3)  # 2.5s left
        fast = RateLimit(perSecond=100, burst=1)
        self.assertTrue(self.limiter.take("f", "c", fast).allowed)
        self.assertEqual(self.limiter.take("f", "c", fast).retryAfter, 1)

    def test_refusedTakesNothing(self) -> None:
        """
        A refused request takes no token: retrying after C{retryAfter}
        succeeds.
        """
        rate = RateLimit(perSecond=0.5, burst=1)
        self.assertTrue(self.limiter.take("r", "c", rate).allowed)
        for _ in range(5):
            verdict = self.limiter.take("r", "c", rate)
            self.assertFalse(verdict.allowed)
        self.clock.advance(verdict.retryAfter)
        self.assertTrue(self.limiter.take("r", "c", rate).allowed)

    def test_separateBuckets(self) -> None:
        """
        Each route and client has its own bucket.
        """
        rate = RateLimit(perSecond=1, burst=1)
        self.assertTrue(self.limiter.take("r", "a", rate).allowed)
        self.assertFalse(self.limiter.take("r", "a", rate).allowed)
        self.assertTrue(self.limiter.take("r", "b", rate).allowed)
        self.assertTrue(self.limiter.take("s", "a", rate).allowed)

    def test_idleBucketsEvicted(self) -> None:
        """
        Buckets idle long enough to be full again are dropped.
        """
        rate = RateLimit(perSecond=1, burst=5)
        for n in range(100):
            self.limiter.take("r", n, rate)
        self.assertEqual(len(self.limiter), 100)
        self.clock.advance(0.5)
        self.limiter.take("r", "new", rate)
        self.assertEqual(len(self.limiter), 101)
        self.clock.advance(0.5)  # the first hundred are full again
        self.limiter.take("r", "new", rate)
        self.assertEqual(len(self.limiter), 1)

    def test_cap(self) -> None:
        """
        Beyond the cap the least recently used bucket goes, even if it is
        not full.
        """
        limiter = RateLimiter(self.clock, maxBuckets=3)
        rate = RateLimit(perSecond=0.001, burst=1)
        for client in "abc":
            limiter.take("r", client, rate)
        limiter.take("r", "a", rate)  # a is now the most recent
        limiter.take("r", "d", rate)
        self.assertEqual(len(limiter), 3)
        self.assertFalse(limiter.take("r", "a", rate).allowed)  # kept
        self.assertTrue(limiter.take("r", "b", rate).allowed)  # dropped, fresh

    @given(st.floats(0.1, 50), st.integers(1, 20),
           st.lists(st.floats(0, 3), min_size=1, max_size=60))
    def test_neverMoreThanRateAllows(self, perSecond, burst, gaps) -> None:
        """
        Over any run, allowed requests never exceed C{burst} plus the
        tokens made meanwhile, and a refusal's C{retryAfter} is at least 1.
        """
        clock = Clock()
        limiter = RateLimiter(clock)
        rate = RateLimit(perSecond, burst)
        allowed = 0
        for gap in gaps:
            clock.advance(gap)
            verdict = limiter.take("r", "c", rate)
            if verdict.allowed:
                allowed += 1
            else:
                self.assertGreaterEqual(verdict.retryAfter, 1)
        self.assertLessEqual(allowed, burst + clock.seconds() * perSecond + 1e-6)


class ClientKeyTests(SynchronousTestCase):
    """
    L{clientKey}: what a client's bucket is kept by.
    """

    def test_ipv4(self) -> None:
        """
        An IPv4 address is its own key, mapped or not.
        """
        self.assertEqual(clientKey("192.0.2.7"), "192.0.2.7")
        self.assertEqual(clientKey("::ffff:192.0.2.7"), "192.0.2.7")

    def test_ipv6(self) -> None:
        """
        IPv6 addresses of one /64 share a key; another /64 has its own.
        """
        self.assertEqual(clientKey("2001:db8:1:2::1"), "2001:db8:1:2::/64")
        self.assertEqual(clientKey("2001:db8:1:2:ffff::9"), clientKey("2001:db8:1:2::1"))
        self.assertNotEqual(clientKey("2001:db8:1:3::1"), clientKey("2001:db8:1:2::1"))
        self.assertEqual(clientKey("fe80::1%eth0"), "fe80::/64")

    def test_other(self) -> None:
        """
        What is not an address is kept as it is.
        """
        self.assertEqual(clientKey("/run/proxy.sock"), "/run/proxy.sock")
