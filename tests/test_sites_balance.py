"""
Tests for L{cachingproxy.sites.balance}: smooth weighted round robin,
least outstanding requests and consistent hashing.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence, Set

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cachingproxy.sites.balance import (
    ConsistentHash,
    LeastOutstanding,
    SmoothWeightedRoundRobin,
    makeBalancer,
)
from cachingproxy.sites.model import Group, Server
from cachingproxy.proxy.upstream import Origin


def group(weights: Sequence[int], balance: str = "round-robin") -> Group:
    servers = tuple(
        Server(f"http://10.0.0.{i}:80", Origin(b"http", f"10.0.0.{i}", 80), b"", w)
        for i, w in enumerate(weights, 1)
    )
    return Group("g", servers, balance)


class Down:
    """
    An C{available} predicate with a settable set of servers down.
    """

    def __init__(self) -> None:
        self.down: Set[str] = set()

    def __call__(self, server: Server) -> bool:
        return server.url not in self.down


class MakeBalancerTests(SynchronousTestCase):
    """
    L{makeBalancer} picks the class for the group's method.
    """

    def test_classes(self) -> None:
        """
        Each C{balance} value has its class.
        """
        self.assertIsInstance(makeBalancer(group([1])), SmoothWeightedRoundRobin)
        self.assertIsInstance(makeBalancer(group([1], "least-outstanding")), LeastOutstanding)
        self.assertIsInstance(makeBalancer(group([1], "consistent-hash")), ConsistentHash)

    def test_takeOver(self) -> None:
        """
        Outstanding counts carry over to the balancer of a new
        configuration for the servers that stay.
        """
        old = makeBalancer(group([1, 1]))
        old.started(old.servers[1])
        old.started(old.servers[1])
        new = makeBalancer(group([1, 1, 1], "least-outstanding"), previous=old)
        self.assertEqual([new.outstanding(s) for s in new.servers], [0, 2, 0])


class RoundRobinTests(SynchronousTestCase):
    """
    nginx's smooth weighted round robin.
    """

    def test_nginxSequence(self) -> None:
        """
        Weights 5, 1, 1 give nginx's documented sequence a a b a c a a.
        """
        balancer = makeBalancer(group([5, 1, 1]))
        names = "".join("abc"[balancer.servers.index(balancer.pick())] for _ in range(14))
        self.assertEqual(names, "aabacaa" * 2)

    @given(st.lists(st.integers(1, 10), min_size=1, max_size=6), st.integers(1, 3))
    def test_exactPerCycle(self, weights, cycles) -> None:
        """
        Over each cycle of C{sum(weights)} picks each server is chosen
        exactly C{weight} times.
        """
        balancer = makeBalancer(group(weights))
        total = sum(weights)
        for _ in range(cycles):
            counts = Counter(balancer.pick().url for _ in range(total))
            self.assertEqual([counts[s.url] for s in balancer.servers], list(weights))

    def test_downAndExclude(self) -> None:
        """
        Servers down or excluded are not chosen; none left gives C{None}.
        """
        available = Down()
        balancer = makeBalancer(group([1, 1, 1]), available)
        a, b, c = balancer.servers
        available.down.add(b.url)
        self.assertEqual({balancer.pick().url for _ in range(6)}, {a.url, c.url})
        self.assertEqual({balancer.pick(exclude=[a]).url for _ in range(3)}, {c.url})
        self.assertEqual({balancer.pick(exclude=[c.url]).url for _ in range(3)}, {a.url})
        self.assertIsNone(balancer.pick(exclude=[a, c]))


class LeastOutstandingTests(SynchronousTestCase):
    """
    The fewest outstanding requests per unit of weight; ties round robin.
    """

    def test_ties(self) -> None:
        """
        With nothing outstanding, picks rotate over the servers.
        """
        balancer = makeBalancer(group([1, 1, 1], "least-outstanding"))
        self.assertEqual([balancer.servers.index(balancer.pick()) for _ in range(6)], [0, 1, 2, 0, 1, 2])

    def test_fewest(self) -> None:
        """
        The server with the fewest requests started and not finished wins.
        """
        balancer = makeBalancer(group([1, 1, 1], "least-outstanding"))
        a, b, c = balancer.servers
        for server in (a, a, b, c):
            balancer.started(server)
        balancer.finished(c, ok=True, latency=0.1)
        self.assertEqual(balancer.outstanding(a), 2)
        self.assertIs(balancer.pick(), c)
        balancer.started(c)
        balancer.started(c)
        self.assertIs(balancer.pick(), b)
        # a and c tie at 2: round robin from after b.
        self.assertIs(balancer.pick(exclude=[b]), c)
        self.assertIs(balancer.pick(exclude=[b]), a)

    def test_weights(self) -> None:
        """
        A server of weight 2 takes twice the outstanding requests.
        """
        balancer = makeBalancer(group([2, 1], "least-outstanding"))
        a, b = balancer.servers
        picks = []
        for _ in range(6):
            server = balancer.pick()
            balancer.started(server)
            picks.append(server)
        self.assertEqual((balancer.outstanding(a), balancer.outstanding(b)), (4, 2))

    def test_finishedNeverNegative(self) -> None:
        """
        A finish without a start does not count below zero.
        """
        balancer = makeBalancer(group([1], "least-outstanding"))
        balancer.finished(balancer.servers[0], ok=False, latency=0.0)
        self.assertEqual(balancer.outstanding(balancer.servers[0]), 0)


keys = st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=50, unique=True)


class ConsistentHashTests(SynchronousTestCase):
    """
    A ring of virtual nodes hashed from the server URLs.
    """

    @given(keys)
    @settings(max_examples=30)
    def test_stable(self, sample) -> None:
        """
        The same key goes to the same server, in another balancer built
        from the same group too.
        """
        one = makeBalancer(group([1, 2, 1], "consistent-hash"))
        two = makeBalancer(group([1, 2, 1], "consistent-hash"))
        for key in sample:
            self.assertEqual(one.pick(key), one.pick(key))
            self.assertEqual(one.pick(key), two.pick(key))

    @given(keys, st.integers(0, 3))
    @settings(max_examples=30)
    def test_minimalRemap(self, sample, down) -> None:
        """
        A server going down moves only its own keys; when it is back they
        return.
        """
        available = Down()
        balancer = makeBalancer(group([1, 1, 1, 1], "consistent-hash"), available)
        before = {key: balancer.pick(key) for key in sample}
        gone = balancer.servers[down]
        available.down.add(gone.url)
        for key in sample:
            after = balancer.pick(key)
            self.assertNotEqual(after, gone)
            if before[key] != gone:
                self.assertEqual(after, before[key])
        available.down.clear()
        self.assertEqual({key: balancer.pick(key) for key in sample}, before)

    def test_nextOnRing(self) -> None:
        """
        An excluded server's key goes to the next server on the ring, the
        same one it goes to when that server is down.
        """
        available = Down()
        balancer = makeBalancer(group([1, 1, 1], "consistent-hash"), available)
        for n in range(100):
            key = b"/object/%d" % n
            first = balancer.pick(key)
            retry = balancer.pick(key, exclude=[first])
            self.assertNotEqual(retry, first)
            available.down = {first.url}
            self.assertEqual(balancer.pick(key), retry)
            available.down = set()

    def test_weights(self) -> None:
        """
        Keys spread roughly by weight.
        """
        balancer = makeBalancer(group([1, 3], "consistent-hash"))
        counts = Counter(balancer.pick(b"key-%d" % n).url for n in range(8000))
        share = counts[balancer.servers[1].url] / 8000
        self.assertTrue(0.65 < share < 0.85, share)

    def test_allDown(self) -> None:
        """
        No server up: C{None}.
        """
        available = Down()
        balancer = makeBalancer(group([1, 1], "consistent-hash"), available)
        available.down = {s.url for s in balancer.servers}
        self.assertIsNone(balancer.pick(b"k"))
