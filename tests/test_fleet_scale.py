"""
The fleet tier end to end, at scale and under faults: a burst of 200
concurrent requests over three proxies (one Redis, then a Redis Cluster), a
cluster slot migrated while proxies use it, a purge during a slow fill, a
proxy killed while it holds a fill lock, and what must never be shared, on
the cluster.

Real redis-server processes (tests/fleetredis.py), real proxy processes
(twistd), each with its own --cache-dir (one "machine" each), and the
counting origin of tests/test_fleet_proxy.py.
"""

from __future__ import annotations

import binascii
import json
import signal
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from cachingproxy.cache import policy
from cachingproxy.fleet.store import hashTag

from .fleetredis import RedisCluster, RedisServer
from .helpers import until
from . import test_fleet_proxy
from .test_fleet_proxy import FleetMixin, OneRedis, ThreeMasters

#: Concurrent requests of a burst.
BURST = 200


def pause(seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


class ClusterKeys:
    """
    C{command("KEYS", pattern)} over every master of a L{RedisCluster}, as
    one node would answer it for the whole key space.
    """

    def __init__(self, cluster: RedisCluster):
        self.cluster = cluster

    def command(self, *args):
        if args[0].upper() != "KEYS":
            raise ValueError(f"{args[0]} is not spread over the cluster")
        return [k for node in self.cluster.nodes for k in node.command(*args)]


class ScaleMixin(FleetMixin):
    """
    What the tests on one Redis and on the cluster share; C{self.redis}
    answers C{KEYS} for the whole fleet store.
    """

    timeout = 180

    def keys(self, pattern: str):
        return self.redis.command("KEYS", pattern)

    def entryKey(self, path: bytes, part: bytes = b"e") -> bytes:
        """
        The key of C{path}'s entry (through the origin), or of another
        C{part} of it, as the store names it.
        """
        key = policy.primaryKey(b"http", b"127.0.0.1:%d" % self.originPort, path)
        return b"cp:{%s}:%s" % (hashTag(key), part)

    async def fleetStatus(self, port) -> dict:
        return json.loads((await self.admin(port, b"status.json")).body)["fleet"]

    async def settled(self, port, offered: int) -> dict:
        """
        Until C{port}'s fleet tier has offered C{offered} writes and
        finished them all.

        @return: its fleet status then.
        """
        deadline = time.monotonic() + 15
        while True:
            status = await self.fleetStatus(port)
            if status["offered"] >= offered and not status["pendingWrites"]:
                self.assertEqual(status["offered"], offered)
                return status
            self.assertLess(time.monotonic(), deadline, f"writes not settled: {status}")
            await pause(0.05)

    async def burst(self, ports, path: bytes, n: int = BURST):
        """
        C{n} requests for C{path}, each on its own connection, all opened
        at once, spread round-robin over C{ports}.

        @return: the responses, in the order of the requests.
        """
        return await gatherResults(
            [Deferred.fromCoroutine(self.get(ports[i % len(ports)], path)) for i in range(n)])

    async def _burstOnce(self):
        """
        A burst for one missing slow URL over three proxies reaches the
        origin once; every answer is the same body.
        """
        ports = [await self.proxy("--fleet-wait", "5", "--fleet-deadline", "2") for _ in range(3)]
        for port in ports:
            await self.waitForFleet(port)
        path = b"/burst?delay=500"
        started = time.monotonic()
        responses = await self.burst(ports, path)
        took = time.monotonic() - started
        self.assertEqual(len(responses), BURST)
        self.assertEqual(self.origin.counts[path], 1)
        self.assertEqual({r.status for r in responses}, {200})
        self.assertEqual({r.body for r in responses}, {path + b" #1\n"})
        # the proxies that did not fetch copied it from the fleet (the one
        # that did may have too: its own misses that came while it held
        # the lock waited for its commit)
        fleetHits = [(await self.fleetStatus(port))["hits"] for port in ports]
        self.assertGreaterEqual(sum(1 for h in fleetHits if h), 2, fleetHits)
        self.assertGreaterEqual(sum(b"detail=fleet" in r.header(b"cache-status") for r in responses), 2)
        self.assertEqual(len(self.keys("cp:*:e")), 1)
        # all within the fleet wait, not after it
        self.assertLess(took, 5)


class FleetScaleTests(ScaleMixin, OneRedis, TestCase):
    """
    Proxies sharing one redis-server.
    """

    async def test_burst(self):
        """
        200 concurrent requests for one missing URL, round-robin over three
        proxies, reach the origin once, and all get its body.
        """
        await self._burstOnce()

    async def test_purgeDuringFill(self):
        """
        PURGE through B while A fetches the URL, holding its fill lock
        until the response is complete (--fleet-wait longer than the
        fetch): the fill that was purged meanwhile cannot store in the
        fleet (its commit is fenced out), and A drops the copy it took
        too, so the pre-purge body is served by no proxy afterwards; the
        next fetch stores normally and is shared.
        """
        await self._purgeDuringFill("--fleet-wait", "5")

    async def test_purgeDuringFillGivenUp(self):
        """
        The same when A gave the lock up before its response was complete
        (--fleet-wait, 0.5 s, shorter than the fetch): taking it again to
        store is refused, the entry's generation having moved since A
        started.
        """
        await self._purgeDuringFill()

    async def _purgeDuringFill(self, *args):
        a, b, c = [await self.proxy(*args) for _ in range(3)]
        for port in (a, b, c):
            await self.waitForFleet(port)
        path = b"/purged?delay=1000"
        lock = self.entryKey(path, b"lock")
        filling = Deferred.fromCoroutine(self.get(a, path))
        await until(lambda: self.origin.counts.get(path), 10)
        self.assertIn(lock, self.keys("cp:*:lock"))
        response = await self.purge(b, self.url(path))
        # nothing was stored yet: confirmed by Redis, none removed
        self.assertEqual((response.status, response.body), (404, b"purged 0\n"))
        self.assertNotIn(lock, self.keys("cp:*:lock"))
        self.assertEqual(self.keys("cp:*:e"), [])
        first = await filling
        self.assertEqual(first.body, path + b" #1\n")
        self.assertEqual(first.header(b"x-cache"), b"MISS")
        status = await self.settled(a, 1)
        self.assertEqual((status["stored"], status["failedWrites"]), (0, 1))
        self.assertEqual(self.keys("cp:*:e"), [])
        # not the pre-purge body, through any proxy
        second = await self.get(b, path)
        self.assertEqual(second.header(b"x-cache"), b"MISS")
        self.assertNotIn(b"detail=fleet", second.header(b"cache-status"))
        self.assertEqual(second.body, path + b" #2\n")
        await until(lambda: self.keys("cp:*:e"), 10)
        for port in (c, a):
            response = await self.get(port, path)
            self.assertEqual(response.header(b"x-cache"), b"HIT")
            self.assertIn(b"detail=fleet", response.header(b"cache-status"))
            self.assertEqual(response.body, path + b" #2\n")
        self.assertEqual(self.origin.counts[path], 2)

    async def test_holderKilled(self):
        """
        A proxy killed (SIGKILL) while it holds a fill lock blocks the
        others no longer than the lock's lease: B and C then get the body,
        one of them fetching it (taking the lock over) and the other
        waiting for its commit; it is then stored, a hit everywhere.
        """
        lease = 1.5
        args = ("--fleet-lock-lease", str(lease), "--fleet-wait", "5")
        a, b, c, d = [await self.proxy(*args) for _ in range(4)]
        for port in (a, b, c, d):
            await self.waitForFleet(port)
        path = b"/killed?delay=1000"
        filling = Deferred.fromCoroutine(self.get(a, path))
        filling.addErrback(lambda f: None)
        lock = self.entryKey(path, b"lock")
        await until(lambda: self.origin.counts.get(path), 10)
        self.assertIn(lock, self.keys("cp:*:lock"))
        holder = self.processes[a]
        holder.transport.signalProcess(signal.SIGKILL)
        self.assertEqual(await holder.ended, -signal.SIGKILL)
        self.assertIn(lock, self.keys("cp:*:lock"))
        killed = time.monotonic()
        responses = await gatherResults(
            [Deferred.fromCoroutine(self.get(port, path)) for port in (b, c)])
        took = time.monotonic() - killed
        self.assertEqual([r.status for r in responses], [200, 200])
        self.assertEqual({r.body for r in responses}, {path + b" #2\n"})
        # the lease, a poll of the lock (0.5 s, jittered) and the origin's
        # second, with room for a loaded machine
        self.assertLess(took, lease + 0.75 + 1.0 + 2.5)
        self.assertEqual(sorted(b"detail=fleet" in r.header(b"cache-status") for r in responses),
                         [False, True])
        self.assertEqual(self.origin.counts[path], 2)
        await until(lambda: self.keys("cp:*:e"), 10)
        for port in (b, c, d):
            response = await self.get(port, path)
            self.assertEqual(response.header(b"x-cache"), b"HIT")
            self.assertEqual(response.body, path + b" #2\n")
        self.assertIn(b"detail=fleet", response.header(b"cache-status"))
        self.assertEqual(self.origin.counts[path], 2)


class FleetClusterScaleTests(ScaleMixin, ThreeMasters, TestCase):
    """
    Proxies sharing a 3-master Redis Cluster.
    """

    def setUp(self):
        super().setUp()
        self.redis = ClusterKeys(self.cluster)

    async def test_burst(self):
        """
        200 concurrent requests for one missing URL, round-robin over three
        proxies, reach the origin once, and all get its body.
        """
        await self._burstOnce()

    test_notShared = test_fleet_proxy.FleetProxyTests.test_notShared

    def slotOf(self, path: bytes) -> int:
        """
        The cluster slot of C{path}'s entry (CRC16 of its hash tag).
        """
        tag = self.entryKey(path).split(b"{")[1].split(b"}")[0]
        return binascii.crc_hqx(tag, 0) % 16384

    def pathsInSlot(self, slot: int, n: int, prefix: bytes):
        paths = []
        i = 0
        while len(paths) < n:
            i += 1
            path = b"%s%d" % (prefix, i)
            if self.slotOf(path) == slot:
                paths.append(path)
        return paths

    async def migrate(self, slot: int, source: RedisServer, target: RedisServer, step):
        """
        Move C{slot} from C{source} to C{target} as redis-cli --cluster
        reshard does, one key at a time, awaiting C{step()} between keys
        (and before the first one); then assign it to C{target} on every
        master.
        """
        sourceId, targetId = self.cluster.nodeId(source), self.cluster.nodeId(target)
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", sourceId)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", targetId)
        await step()
        while True:
            keys = source.command("CLUSTER", "GETKEYSINSLOT", slot, 2)
            if not keys:
                break
            source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "REPLACE", "KEYS", *keys)
            await step()
        # the target first, so that it never sends a MOVED back to the source
        target.command("CLUSTER", "SETSLOT", slot, "NODE", targetId)
        for node in self.cluster.nodes:
            if node is not target:
                node.command("CLUSTER", "SETSLOT", slot, "NODE", targetId)

        def agreed():
            return all(row[2][1] == target.port
                       for node in self.cluster.nodes
                       for row in node.command("CLUSTER", "SLOTS") if row[0] <= slot <= row[1])

        await until(agreed, 10)

    async def test_slotMigration(self):
        """
        The slot of the entries the proxies use is migrated to another
        master while they serve its URLs: every answer is right during and
        after the move (ASK followed while it moves, MOVED after), and then
        a response stored through one proxy is a fleet hit through another.
        """
        ports = [await self.proxy("--fleet-deadline", "1") for _ in range(3)]
        for port in ports:
            await self.waitForFleet(port)
        first = b"/moving"
        response = await self.get(ports[0], first)
        self.assertEqual(response.body, first + b" #1\n")
        await until(lambda: self.keys("cp:*:e"), 10)
        [entry] = self.keys("cp:*:e")
        self.assertEqual(entry, self.entryKey(first))
        slot = self.slotOf(first)
        source = self.cluster.nodeFor(slot)
        self.assertEqual(source.command("CLUSTER", "KEYSLOT", entry), slot)
        self.assertEqual(source.command("KEYS", "cp:*:e"), [entry])
        target = next(n for n in self.cluster.nodes if n is not source)
        paths = self.pathsInSlot(slot, 12, b"/moving/")
        before = self.pathsInSlot(slot, 3, b"/stored/")
        for path in before:
            await self.get(ports[1], path)
        await until(lambda: len(source.command("KEYS", "cp:*:e")) == 1 + len(before), 10)

        answers = []
        served = [0]

        async def ask(port, path):
            response = await self.get(port, path)
            answers.append((path, response))
            served[0] += 1

        async def traffic(stop):
            # each path through each proxy in turn: the first fetches and
            # stores, the others read what is stored (or miss)
            i = 0
            while not stop:
                path = paths[(i // 3) % len(paths)]
                await gatherResults([
                    Deferred.fromCoroutine(ask(ports[i % 3], path)),
                    Deferred.fromCoroutine(ask(ports[(i + 1) % 3], first)),
                    Deferred.fromCoroutine(ask(ports[(i + 2) % 3], before[i % len(before)]))])
                i += 1

        async def step():
            # some requests served between two steps of the move
            mark = served[0]
            await until(lambda: served[0] >= mark + 3, 20)

        stop = []
        running = Deferred.fromCoroutine(traffic(stop))
        await self.migrate(slot, source, target, step)
        await step()
        stop.append(True)
        await running

        self.assertEqual(source.command("CLUSTER", "COUNTKEYSINSLOT", slot), 0)
        self.assertGreaterEqual(target.command("CLUSTER", "COUNTKEYSINSLOT", slot), 1 + len(before))
        self.assertGreater(len(answers), 20)
        for path, response in answers:
            self.assertEqual(response.status, 200, path)
            number = response.body[len(path) + 2:-1]
            self.assertEqual(response.body, path + b" #" + number + b"\n")
            self.assertTrue(1 <= int(number) <= self.origin.counts[path], response.body)
        # the entries stored before the move were moved with it
        for path in before:
            self.assertEqual(self.origin.counts[path], 1)

        after = self.pathsInSlot(slot, 1, b"/after/")[0]
        stored = await self.get(ports[2], after)
        await until(lambda: target.command("EXISTS", self.entryKey(after)), 10)
        for port in ports[:2]:
            response = await self.get(port, after)
            self.assertEqual(response.header(b"x-cache"), b"HIT")
            self.assertIn(b"detail=fleet", response.header(b"cache-status"))
            self.assertEqual(response.body, stored.body)
        self.assertEqual(self.origin.counts[after], 1)
        # the source redirected the proxies while the slot moved, and after
        errors = source.command("INFO", "errorstats").decode()
        self.assertIn("errorstat_ASK:", errors)
        self.assertIn("errorstat_MOVED:", errors)
