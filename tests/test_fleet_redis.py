"""
Tests for L{cachingproxy.fleet.redis} and L{cachingproxy.fleet.breaker}
against real redis-server processes on loopback (see L{tests.fleetredis}),
plus the breaker and write queue on a L{Clock}.
"""

from __future__ import annotations

import os
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cachingproxy.cache.fleettier import _within
from cachingproxy.fleet.breaker import Breaker, BreakerState, WriteQueue
from cachingproxy.fleet.redis import (
    ClusterClient,
    FleetBusy,
    FleetConnectionLost,
    FleetTimeout,
    FleetUnavailable,
    RedisClient,
    RedisProtocol,
    ReplyError,
    Script,
    TooManyRedirects,
    Subscriber,
    keySlot,
    parseURL,
)
from tests.fleetredis import RedisCluster, RedisServer, freePort, needRedis


def _until(predicate, timeout=10.0, step=0.02):
    """
    Poll C{predicate()} on the reactor until true, failing after C{timeout}.
    """

    @inlineCallbacks
    def loop():
        waited = 0.0
        while not predicate():
            if waited > timeout:
                raise AssertionError("condition not reached in time")
            yield deferLater(reactor, step, lambda: None)
            waited += step

    return loop()


class PureTests(SynchronousTestCase):
    """
    Parsing, slots and the protocol's deadline on a Clock.
    """

    def test_parseURL(self):
        """
        redis:// and rediss:// URLs give host, port, db, user and password.
        """
        a = parseURL("rediss://bob:s%40cret@cache.example:6380/3")
        self.assertEqual((a.host, a.port, a.tls, a.db, a.username, a.password), ("cache.example", 6380, True, 3, "bob", "s@cret"))
        b = parseURL("redis://127.0.0.1")
        self.assertEqual((b.port, b.tls, b.db, b.password), (6379, False, 0, None))
        self.assertRaises(ValueError, parseURL, "http://x")

    def test_passwordFile(self):
        """
        A password file's first line wins over the URL's password.
        """
        fd, path = tempfile.mkstemp()
        os.write(fd, b"from-file\nignored\n")
        os.close(fd)
        self.addCleanup(os.unlink, path)
        self.assertEqual(parseURL("redis://:url@h", passwordFile=path).password, "from-file")

    def test_keySlot(self):
        """
        Slots match Redis's own (CLUSTER KEYSLOT values) and follow the
        hash tag rule.
        """
        self.assertEqual(keySlot(b"foo"), 12182)
        self.assertEqual(keySlot(b"123456789"), 12739)
        self.assertEqual(keySlot(b"{user1000}.following"), keySlot(b"{user1000}.followers"))
        self.assertEqual(keySlot(b"foo{}{bar}"), keySlot(b"foo{}{bar}"))
        self.assertNotEqual(keySlot(b"{}x"), keySlot(b"x"))
        self.assertEqual(keySlot(b"a{b}c"), keySlot(b"b"))

    def test_deadlineOnClock(self):
        """
        A command whose reply does not come within its deadline fails with
        FleetTimeout; the connection is aborted, every other waiting command
        fails too, and a reply arriving afterwards is never delivered.
        """
        clock = Clock()
        p = RedisProtocol(clock, timeout=0.05)
        t = StringTransport()
        p.makeConnection(t)
        d1 = p.execute([b"GET", b"a"])
        clock.advance(0.03)
        d2 = p.execute([b"GET", b"b"])
        clock.advance(0.019)
        self.assertNoResult(d1)
        clock.advance(0.002)
        self.failureResultOf(d1, FleetTimeout)
        self.failureResultOf(d2, FleetTimeout)
        self.assertTrue(t.disconnecting)
        p.dataReceived(b"$1\r\nA\r\n")
        self.failureResultOf(p.execute([b"GET", b"c"]), FleetConnectionLost)

    def test_replyWaitingAtDeadline(self):
        """
        The reactor runs its due timers before it reads: a reply that came
        by the deadline but is not read yet (the reactor was busy) is
        delivered, and the connection kept; a reply still missing after the
        next read is late.
        """
        clock = _TimersFirstClock()
        p = RedisProtocol(clock, timeout=0.05)
        t = StringTransport()
        p.makeConnection(t)
        d = p.execute([b"GET", b"a"])
        clock.advance(0.06)
        self.assertNoResult(d)
        p.dataReceived(b"$1\r\nA\r\n")
        self.assertEqual(self.successResultOf(d), b"A")
        clock.advance(0)
        self.assertFalse(t.disconnecting)
        d = p.execute([b"GET", b"b"])
        clock.advance(0.06)
        self.assertNoResult(d)
        clock.advance(0)
        self.failureResultOf(d, FleetTimeout)
        self.assertTrue(t.disconnecting)

    def test_withinReplyWaitingAtDeadline(self):
        """
        The fleet tier's deadline on a lookup gives the reactor the same
        last read.
        """
        clock = _TimersFirstClock()
        answer = Deferred()
        d = _within(answer, 0.05, clock)
        clock.advance(0.06)
        self.assertNoResult(d)
        answer.callback("found")
        self.assertEqual(self.successResultOf(d), "found")
        d = _within(Deferred(), 0.05, clock)
        clock.advance(0.06)
        self.assertNoResult(d)
        clock.advance(0)
        self.failureResultOf(d, FleetTimeout)

    def test_shorterDeadlineBehindLonger(self):
        """
        A command with a short deadline sent behind one with a long deadline
        still fails on time.
        """
        clock = Clock()
        p = RedisProtocol(clock, timeout=5.0)
        p.makeConnection(StringTransport())
        slow = p.execute([b"GET", b"a"])
        quick = p.execute([b"GET", b"b"], timeout=0.1)
        clock.advance(0.1)
        self.failureResultOf(quick, FleetTimeout)
        self.failureResultOf(slow, FleetTimeout)

    def test_writesCoalesced(self):
        """
        Commands sent by reply callbacks are written once, after the
        replies of one read are dispatched, in order.
        """
        clock = Clock()
        p = RedisProtocol(clock, timeout=1)
        t = StringTransport()
        p.makeConnection(t)
        d1, d2 = p.execute([b"GET", b"1"]), p.execute([b"GET", b"2"])
        t.clear()
        writes = []
        original = t.write
        t.write = lambda data: (writes.append(data), original(data))
        later = []
        d1.addCallback(lambda _: later.append(p.execute([b"GET", b"3"])))
        d2.addCallback(lambda _: later.append(p.execute([b"GET", b"4"])))
        p.dataReceived(b"$1\r\nA\r\n$1\r\nB\r\n")
        self.assertEqual(len(writes), 1)
        self.assertEqual(t.value(), b"*2\r\n$3\r\nGET\r\n$1\r\n3\r\n*2\r\n$3\r\nGET\r\n$1\r\n4\r\n")
        p.dataReceived(b":3\r\n:4\r\n")
        self.assertEqual([self.successResultOf(d) for d in later], [3, 4])

    def test_boundedInFlight(self):
        """
        Beyond maxInFlight commands waiting, a command fails at once with
        FleetBusy and nothing is written for it.
        """
        p = RedisProtocol(Clock(), timeout=1, maxInFlight=2)
        t = StringTransport()
        p.makeConnection(t)
        p.execute([b"GET", b"1"])
        p.execute([b"GET", b"2"])
        t.clear()
        self.failureResultOf(p.execute([b"GET", b"3"]), FleetBusy)
        self.assertEqual(t.value(), b"")

    def test_boundedBytesInFlight(self):
        """
        Beyond maxBytesInFlight bytes of commands waiting, a command fails
        at once with FleetBusy; a reply frees its bytes. A single command
        bigger than the bound still goes when nothing else waits.
        """
        p = RedisProtocol(Clock(), timeout=1, maxBytesInFlight=1000)
        p.makeConnection(StringTransport())
        first = p.execute([b"SET", b"a", b"x" * 600])
        self.failureResultOf(p.execute([b"SET", b"b", b"y" * 600]), FleetBusy)
        p.dataReceived(b"+OK\r\n")
        self.assertEqual(self.successResultOf(first), b"OK")
        p.execute([b"SET", b"b", b"y" * 2000])
        self.assertEqual(p.pending, 1)

    def test_repliesInOrder(self):
        """
        Pipelined replies go to their commands in order, also when split
        across reads; a cancelled command's reply is discarded by position.
        """
        clock = Clock()
        p = RedisProtocol(clock, timeout=1)
        p.makeConnection(StringTransport())
        d1, d2, d3 = (p.execute([b"GET", k]) for k in (b"1", b"2", b"3"))
        d2.cancel()
        self.failureResultOf(d2)
        for byte in b"$1\r\nA\r\n-ERR no\r\n:3\r\n":
            p.dataReceived(bytes([byte]))
        self.assertEqual(self.successResultOf(d1), b"A")
        self.assertEqual(self.successResultOf(d3), 3)


class BreakerTests(SynchronousTestCase):
    """
    The breaker's transitions on a Clock, and the bounded write queue.
    """

    def test_transitions(self):
        """
        closed -> open after the threshold; open rejects until the cooldown;
        half-open lets one trial through; its failure reopens, its success
        closes.
        """
        clock = Clock()
        b = Breaker(clock, threshold=3, cooldown=1.0)
        for _ in range(2):
            self.assertTrue(b.allow())
            b.failure()
        self.assertIs(b.state, BreakerState.CLOSED)
        b.allow()
        b.failure()
        self.assertIs(b.state, BreakerState.OPEN)
        self.assertFalse(b.allow())
        clock.advance(1.0)
        self.assertTrue(b.allow())
        self.assertIs(b.state, BreakerState.HALF_OPEN)
        self.assertFalse(b.allow())
        b.failure()
        self.assertIs(b.state, BreakerState.OPEN)
        clock.advance(1.0)
        self.assertTrue(b.allow())
        b.success()
        self.assertIs(b.state, BreakerState.CLOSED)
        self.assertEqual((b.opened, b.rejected), (2, 2))

    def test_lostTrialReplaced(self):
        """
        A half-open trial whose outcome never comes does not keep the
        breaker shut for ever: after a cooldown another trial is allowed.
        """
        clock = Clock()
        b = Breaker(clock, threshold=1, cooldown=1.0)
        b.failure()
        clock.advance(1.0)
        self.assertTrue(b.allow())
        clock.advance(0.5)
        self.assertFalse(b.allow())
        clock.advance(0.5)
        self.assertTrue(b.allow())
        b.success()
        self.assertIs(b.state, BreakerState.CLOSED)

    def test_successResetsCount(self):
        """
        Failures must be in a row to open the breaker.
        """
        b = Breaker(Clock(), threshold=2)
        b.failure()
        b.success()
        b.failure()
        self.assertIs(b.state, BreakerState.CLOSED)

    def test_writeQueueDrops(self):
        """
        Beyond concurrency + maxPending, writes are dropped and counted;
        queued ones run as slots free up.
        """
        q = WriteQueue(concurrency=1, maxPending=2)
        gates = [Deferred() for _ in range(4)]
        results = [q.submit(lambda g=g: g) for g in gates]
        self.assertIsNone(results[3])
        self.assertEqual((q.dropped, q.pending), (1, 2))
        gates[0].callback("a")
        self.assertEqual(self.successResultOf(results[0]), "a")
        gates[1].errback(RuntimeError("boom"))
        self.assertIsNone(self.successResultOf(results[1]))
        gates[2].callback("c")
        self.assertEqual((q.done, q.failed, q.pending), (2, 1, 0))

    def test_writeQueueBytes(self):
        """
        Writes holding more than C{maxBytes} in all are dropped, whatever
        slots are free; the bytes are given back as writes end, and one
        write larger than the bound runs alone.
        """
        q = WriteQueue(concurrency=8, maxPending=8, maxBytes=100)
        gates = [Deferred() for _ in range(3)]
        first = q.submit(lambda: gates[0], 60)
        self.assertIsNone(q.submit(lambda: gates[1], 50))
        second = q.submit(lambda: gates[1], 40)
        self.assertIsNotNone(second)
        self.assertEqual((q.dropped, q.bytes), (1, 100))
        gates[0].callback("a")
        gates[1].errback(RuntimeError("boom"))
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), ("a", None))
        self.assertEqual(q.bytes, 0)
        large = q.submit(lambda: gates[2], 500)
        self.assertIsNone(q.submit(lambda: succeed("small"), 1))
        gates[2].callback("large")
        self.assertEqual(self.successResultOf(large), "large")
        self.assertEqual(self.successResultOf(q.submit(lambda: succeed("small"), 1)), "small")
        self.assertEqual((q.dropped, q.bytes, q.done, q.failed), (2, 0, 3, 1))


class _TimersFirstClock(Clock):
    """
    A L{Clock} that runs, on each advance, only the calls due when it
    began (a reactor's turn: calls made meanwhile wait for the next one,
    after its read).
    """

    def advance(self, amount):
        self.rightNow += amount
        self._sortCalls()
        due = [c for c in self.calls if c.getTime() <= self.seconds()]
        for call in due:
            self.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


class SingleNodeTests(TestCase):
    """
    The client against one real redis-server.
    """

    skip = needRedis
    timeout = 60

    def setUp(self):
        self.server = RedisServer().start()
        self.addCleanup(self.server.stop)
        self.client = RedisClient(reactor, parseURL(self.server.url), timeout=2.0, size=2)
        self.addCleanup(self.client.close)

    @inlineCallbacks
    def test_basics(self):
        """
        SET/GET/DEL round trip, nil replies, integer replies, error replies.
        """
        self.assertEqual((yield self.client.execute(b"SET", b"k", b"v" * 1024)), b"OK")
        self.assertEqual((yield self.client.execute(b"GET", b"k")), b"v" * 1024)
        self.assertIsNone((yield self.client.execute(b"GET", b"missing")))
        self.assertEqual((yield self.client.execute(b"INCR", b"n")), 1)
        e = yield self.assertFailure(self.client.execute(b"LPUSH", b"k", b"x"), ReplyError)
        self.assertEqual(e.code, "WRONGTYPE")

    @inlineCallbacks
    def test_pipeliningOrder(self):
        """
        Hundreds of commands in flight each get their own reply.
        """
        yield gatherResults([self.client.execute(b"SET", b"k%d" % i, b"v%d" % i) for i in range(500)])
        replies = yield gatherResults([self.client.execute(b"GET", b"k%d" % i) for i in range(500)])
        self.assertEqual(replies, [b"v%d" % i for i in range(500)])
        self.assertLessEqual(self.client.pool.connectionsOpened, 2)

    @inlineCallbacks
    def test_stoppedServer(self):
        """
        SIGSTOP: a command fails with FleetTimeout within its deadline and
        its connection is dropped; after SIGCONT a new command works and
        gets its own reply, never the late one.
        """
        yield self.client.execute(b"SET", b"a", b"old")
        yield self.client.execute(b"SET", b"b", b"new")
        self.server.pause()
        try:
            start = reactor.seconds()
            yield self.assertFailure(self.client.execute(b"GET", b"a", timeout=0.2), FleetTimeout)
            elapsed = reactor.seconds() - start
            self.assertLess(elapsed, 0.6)
            self.assertTrue(all(not c.closed for c in self.client.pool._connections))
            self.assertLessEqual(len(self.client.pool._connections), 1)
        finally:
            self.server.resume()
        self.assertEqual((yield self.client.execute(b"GET", b"b")), b"new")
        self.assertEqual((yield self.client.execute(b"GET", b"a")), b"old")

    @inlineCallbacks
    def test_killAndRestart(self):
        """
        kill -9: commands fail (connection lost or refused, never hang);
        once the server is back on the same port, commands work again.
        """
        yield self.client.execute(b"SET", b"a", b"1")
        self.server.kill()
        yield self.assertFailure(self.client.execute(b"GET", b"a"), FleetConnectionLost, FleetUnavailable, FleetTimeout)
        self.server.start()
        # the breaker may be open for a moment: poll until a command succeeds
        result = []

        @inlineCallbacks
        def attempt():
            try:
                result.append((yield self.client.execute(b"PING")))
            except Exception:
                pass

        yield _until(lambda: (attempt(), bool(result))[1])
        self.assertEqual(result[0], b"PONG")

    @inlineCallbacks
    def test_clientPause(self):
        """
        CLIENT PAUSE longer than the deadline: the command times out; after
        the pause the client recovers.
        """
        yield self.client.execute(b"SET", b"a", b"1")
        self.server.command("CLIENT", "PAUSE", "600", "ALL")
        yield self.assertFailure(self.client.execute(b"GET", b"a", timeout=0.1), FleetTimeout)
        yield deferLater(reactor, 0.6, lambda: None)
        self.assertEqual((yield self.client.execute(b"GET", b"a")), b"1")

    @inlineCallbacks
    def test_script(self):
        """
        EVALSHA falls back to EVAL on NOSCRIPT (also after SCRIPT FLUSH).
        """
        s = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        self.assertEqual((yield s(self.client, [b"c"], [5])), 5)
        self.assertEqual(s.evals, 1)
        self.assertEqual((yield s(self.client, [b"c"], [5])), 10)
        self.assertEqual(s.evals, 1)
        self.server.command("SCRIPT", "FLUSH")
        self.assertEqual((yield s(self.client, [b"c"], [1])), 11)
        self.assertEqual(s.evals, 2)

    @inlineCallbacks
    def test_subscriber(self):
        """
        Published messages reach the subscriber; after the server restarts,
        it resubscribes and says so.
        """
        got = []
        reconnects = []
        sub = Subscriber(reactor, parseURL(self.server.url), [b"wake"], lambda c, m: got.append((c, m)), lambda: reconnects.append(1))
        self.addCleanup(sub.stop)
        yield sub.start()
        yield self.client.execute(b"PUBLISH", b"wake", b"x")
        yield _until(lambda: got)
        self.assertEqual(got, [(b"wake", b"x")])
        self.server.kill()
        self.server.start()
        yield _until(lambda: reconnects)
        yield _until(lambda: sub.connected)
        yield self.client_retry(b"PUBLISH", b"wake", b"y")
        yield _until(lambda: len(got) == 2)
        self.assertEqual(got[1], (b"wake", b"y"))

    @inlineCallbacks
    def client_retry(self, *args):
        for _ in range(200):
            try:
                r = yield self.client.execute(*args)
                return r
            except Exception:
                yield deferLater(reactor, 0.02, lambda: None)
        raise AssertionError("never succeeded")


class AuthTests(TestCase):
    """
    AUTH and SELECT on connect.
    """

    skip = needRedis
    timeout = 30

    def setUp(self):
        self.server = RedisServer(password="s3cret").start()
        self.addCleanup(self.server.stop)

    @inlineCallbacks
    def test_passwordFile(self):
        """
        The password from a file logs in, and /2 selects db 2.
        """
        fd, path = tempfile.mkstemp()
        os.write(fd, b"s3cret\n")
        os.close(fd)
        self.addCleanup(os.unlink, path)
        client = RedisClient(reactor, parseURL(self.server.url + "/2", passwordFile=path), timeout=1)
        self.addCleanup(client.close)
        yield client.execute(b"SET", b"k", b"v")
        self.assertEqual(self.server.command("SELECT", "2"), b"OK")
        self.assertEqual((yield client.execute(b"CLIENT", b"INFO")).split(b" db=")[1][:1], b"2")

    @inlineCallbacks
    def test_wrongPassword(self):
        """
        A wrong password fails the command with the server's error.
        """
        client = RedisClient(reactor, parseURL(self.server.url.replace("redis://", "redis://:wrong@")), timeout=1)
        self.addCleanup(client.close)
        e = yield self.assertFailure(client.execute(b"GET", b"k"), ReplyError)
        self.assertIn(e.code, ("WRONGPASS", "ERR"))


class TLSTests(TestCase):
    """
    rediss:// through Twisted's TLS, verifying the server's certificate.
    """

    skip = needRedis
    timeout = 30

    def setUp(self):
        from tests.tlshelpers import makeCA, makeServerCert

        self.ca = makeCA()
        cert, key = makeServerCert(self.ca, hostnames=["localhost"])
        self.tmp = tempfile.mkdtemp()
        paths = {}
        for name, pem in [("cert", cert), ("key", key), ("ca", self.ca[0])]:
            paths[name] = os.path.join(self.tmp, name + ".pem")
            with open(paths[name], "wb") as f:
                f.write(pem)
        self.tlsPort = freePort()
        self.server = RedisServer(
            "--tls-port", str(self.tlsPort),
            "--tls-cert-file", paths["cert"],
            "--tls-key-file", paths["key"],
            "--tls-ca-cert-file", paths["ca"],
            "--tls-auth-clients", "no",
        ).start()
        self.addCleanup(self.server.stop)

    @inlineCallbacks
    def test_verified(self):
        """
        With the CA trusted, commands go over TLS (the server counts a TLS
        client).
        """
        from twisted.internet.ssl import optionsForClientTLS

        from tests.tlshelpers import trustRoot

        address = parseURL(f"rediss://localhost:{self.tlsPort}")
        client = RedisClient(reactor, address, timeout=2.0, tlsOptions=optionsForClientTLS("localhost", trustRoot(self.ca[0])))
        self.addCleanup(client.close)
        yield client.execute(b"SET", b"k", b"over tls")
        self.assertEqual(self.server.command("GET", "k"), b"over tls")
        clients = yield client.execute(b"CLIENT", b"LIST")
        self.assertIn(b"laddr=127.0.0.1:%d" % self.tlsPort, clients)

    @inlineCallbacks
    def test_untrusted(self):
        """
        A certificate from an unknown CA is refused: the command fails, no
        data is exchanged.
        """
        address = parseURL(f"rediss://localhost:{self.tlsPort}")
        client = RedisClient(reactor, address, timeout=2.0)
        self.addCleanup(client.close)
        yield self.assertFailure(client.execute(b"SET", b"k", b"v"), FleetConnectionLost, FleetUnavailable)
        self.assertIsNone(self.server.command("GET", "k"))


class ClusterTests(TestCase):
    """
    Slot routing and redirections on a real 3-master cluster.
    """

    skip = needRedis
    timeout = 120

    def setUp(self):
        self.cluster = RedisCluster().start()
        self.addCleanup(self.cluster.stop)
        self.client = ClusterClient(reactor, [parseURL(self.cluster.urls[0])], timeout=1)
        self.addCleanup(self.client.close)

    @inlineCallbacks
    def test_routing(self):
        """
        Keys land on the node owning their slot, with no redirection, and
        keys sharing a hash tag land together.
        """
        keys = [b"key:%d" % i for i in range(60)]
        yield gatherResults([self.client.execute(b"SET", k, k) for k in keys])
        self.assertEqual(self.client.redirects, 0)
        for k in keys:
            node = self.cluster.nodeFor(keySlot(k))
            self.assertEqual(node.command("GET", k), k)
        self.assertEqual(len(self.client.pools()), 3)
        yield self.client.execute(b"MSET", b"{t}a", b"1", b"{t}b", b"2")
        self.assertEqual((yield self.client.execute(b"MGET", b"{t}a", b"{t}b")), [b"1", b"2"])

    @inlineCallbacks
    def test_movedAndAsk(self):
        """
        During a slot migration by hand (MIGRATING/IMPORTING, MIGRATE), a
        key already moved is reached through ASK; after the slot is
        reassigned, MOVED updates the map and later commands go straight
        to the new owner.
        """
        stay, moved = b"{m}stay", b"{m}moved"
        slot = keySlot(stay)
        yield self.client.execute(b"SET", stay, b"s")
        yield self.client.execute(b"SET", moved, b"m")
        source = self.cluster.nodeFor(slot)
        target = next(n for n in self.cluster.nodes if n is not source)
        sid, tid = self.cluster.nodeId(source), self.cluster.nodeId(target)
        target.command("CLUSTER", "SETSLOT", str(slot), "IMPORTING", sid)
        source.command("CLUSTER", "SETSLOT", str(slot), "MIGRATING", tid)
        source.command("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", moved)
        self.assertEqual((yield self.client.execute(b"GET", moved)), b"m")
        self.assertEqual((yield self.client.execute(b"GET", stay)), b"s")
        self.assertEqual(self.client.redirects, 1)
        source.command("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", stay)
        for n in self.cluster.nodes:
            n.command("CLUSTER", "SETSLOT", str(slot), "NODE", tid)
        self.assertEqual((yield self.client.execute(b"GET", stay)), b"s")
        self.assertEqual(self.client.redirects, 2)
        self.assertEqual(self.client.slotOwner(stay), ("127.0.0.1", target.port))
        self.assertEqual((yield self.client.execute(b"GET", moved)), b"m")
        self.assertEqual(self.client.redirects, 2)

    @inlineCallbacks
    def test_redirectsBounded(self):
        """
        A slot left MIGRATING on its owner with no node IMPORTING it sends
        the client back and forth (ASK, then MOVED): it gives up after
        maxRedirects with TooManyRedirects instead of looping.
        """
        key = b"{loop}k"
        slot = keySlot(key)
        yield self.client.execute(b"PING", key=key)
        source = self.cluster.nodeFor(slot)
        target = next(n for n in self.cluster.nodes if n is not source)
        source.command("CLUSTER", "SETSLOT", str(slot), "MIGRATING", self.cluster.nodeId(target))
        yield self.assertFailure(self.client.execute(b"GET", key), TooManyRedirects)
        self.assertEqual(self.client.redirects, self.client.maxRedirects)

    @inlineCallbacks
    def test_nodeDown(self):
        """
        kill -9 of one master: commands for its slots fail within their
        deadline; the other masters' slots keep working.
        """
        keys = [b"down:%d" % i for i in range(40)]
        yield gatherResults([self.client.execute(b"SET", k, k) for k in keys])
        dead = self.cluster.nodes[1]
        dead.kill()
        onDead = [k for k in keys if self.client.slotOwner(k)[1] == dead.port]
        alive = [k for k in keys if k not in onDead]
        self.assertTrue(onDead and alive)
        for k in alive:
            self.assertEqual((yield self.client.execute(b"GET", k, timeout=0.5)), k)
        start = reactor.seconds()
        for k in onDead[:3]:
            yield self.assertFailure(
                self.client.execute(b"GET", k, timeout=0.5), FleetConnectionLost, FleetUnavailable, FleetTimeout
            )
        self.assertLess(reactor.seconds() - start, 3 * 1.0)
