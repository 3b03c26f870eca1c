"""
L{cachingproxy.ops.metrics}: counting requests, Prometheus's multiprocess mode
across real processes, and C{/_cachingproxy/metrics} through a loopback
proxy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import timeit
from typing import Dict, Optional

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from cachingproxy.ops import metrics as metricsModule
from cachingproxy.ops.admin import AdminPages
from cachingproxy.ops.metrics import ENVIRONMENT, Metrics, MetricsService, countWorkerRestart, markProcessDead
from cachingproxy.proxy.settings import ProxySettings
from cachingproxy.proxy.upstream import Origin

from .helpers import exchange, listenOrigin, startProxy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeHead:
    def __init__(self, method: bytes, target: bytes) -> None:
        self.method = method
        self.target = target


class FakeExchange:
    """
    What L{Metrics.requestDone} reads of a finished exchange.
    """

    def __init__(self, method=b"GET", status=200, cache="MISS", sent=100, received=0,
                 upstream: Optional[float] = 0.02, host: Optional[str] = "example.com",
                 target=b"http://example.com/") -> None:
        self.head = FakeHead(method, target)
        self.status = status
        self.cacheResult = cache
        self.bytesSent = sent
        self.bytesReceived = received
        self.upstreamSeconds = upstream
        self.upstreamOrigin = Origin(b"http", host, 80) if host else None
        self.ownEndpoint = target.startswith(b"/_cachingproxy/")
        self.started = 0.0
        self.finished = 0.0


def samples(text: bytes) -> Dict[str, list]:
    """
    @return: metric sample name -> [(labels, value), ...] of a Prometheus
        text exposition.
    """
    found: Dict[str, list] = {}
    for family in text_string_to_metric_families(text.decode("utf-8")):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def total(found: Dict[str, list], name: str, **labels) -> float:
    return sum(
        value for sampleLabels, value in found.get(name, [])
        if all(sampleLabels.get(k) == v for k, v in labels.items())
    )


def multiprocessFolder(testCase) -> str:
    """
    A fresh multiprocess folder, with C{PROMETHEUS_MULTIPROC_DIR} put back
    as it was (and the folder removed) by the test's cleanup.
    """
    directory = tempfile.mkdtemp(prefix="cachingproxy-metrics-test-")
    old = os.environ.get(ENVIRONMENT)

    def restore():
        metricsModule._families.pop(os.path.abspath(directory), None)
        if old is None:
            os.environ.pop(ENVIRONMENT, None)
        else:
            os.environ[ENVIRONMENT] = old
        shutil.rmtree(directory, True)

    testCase.addCleanup(restore)
    return directory


class FakeStore:
    def __init__(self) -> None:
        self.figures = {"entries": 3, "bytes": 3000, "limit": 10000, "evictions": 0}

    def stats(self) -> dict:
        return dict(self.figures)


class FakeCacheStats:
    hits = misses = revalidated = stale = passed = stored = collapsed = purged = 0


class FakeCache:
    def __init__(self) -> None:
        self.store = FakeStore()
        self.stats = FakeCacheStats()


class FakePool:
    def __init__(self) -> None:
        self._all = {object(), object()}
        self.connectionsMade = 5

    def idleCount(self) -> int:
        return 1


class FakeFactory:
    def __init__(self) -> None:
        self.openConnections = 4
        self.pool = FakePool()
        self.cache = FakeCache()
        self.draining = False


class MetricsTests(TestCase):
    """
    L{Metrics} with fake exchanges, in this process.
    """

    def metrics(self, **kwargs) -> Metrics:
        directory = multiprocessFolder(self)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        kwargs.setdefault("clock", self.clock.seconds)
        metrics = Metrics(self.clock, directory=directory, **kwargs)
        self.addCleanup(metrics.stop)
        return metrics

    def test_requestsByLabels(self):
        """
        Requests are counted by method, status and cache result; bytes in
        and out, bytes from the cache, and the upstream latency histogram
        add up.
        """
        metrics = self.metrics()
        for _ in range(3):
            metrics.requestDone(FakeExchange(cache="MISS", sent=100, received=7, upstream=0.02))
        for _ in range(2):
            metrics.requestDone(FakeExchange(cache="HIT", sent=100, upstream=None))
        metrics.requestDone(FakeExchange(method=b"POST", status=502, cache="PASS", sent=10, received=50,
                                         upstream=3.0))
        metrics.requestDone(FakeExchange(method=b"BREW", status=400, cache="-", sent=5, upstream=None,
                                         host=None))
        body, contentType = metrics.render()
        self.assertTrue(contentType.startswith("text/plain"))
        found = samples(body)
        self.assertEqual(total(found, "cachingproxy_requests_total"), 7)
        self.assertEqual(total(found, "cachingproxy_requests_total", method="GET", status="200", cache="MISS"), 3)
        self.assertEqual(total(found, "cachingproxy_requests_total", method="GET", status="200", cache="HIT"), 2)
        self.assertEqual(total(found, "cachingproxy_requests_total", method="POST", status="502", cache="PASS"), 1)
        self.assertEqual(total(found, "cachingproxy_requests_total", method="OTHER", status="400", cache="-"), 1)
        self.assertEqual(total(found, "cachingproxy_response_bytes_total"), 515)
        self.assertEqual(total(found, "cachingproxy_request_bytes_total"), 71)
        self.assertEqual(total(found, "cachingproxy_cache_served_bytes_total"), 200)
        self.assertEqual(total(found, "cachingproxy_upstream_seconds_count"), 4)
        self.assertAlmostEqual(total(found, "cachingproxy_upstream_seconds_sum"), 3.06)
        self.assertEqual(total(found, "cachingproxy_upstream_seconds_bucket", le="0.025"), 3)
        self.assertEqual(total(found, "cachingproxy_upstream_seconds_bucket", le="2.5"), 3)
        self.assertEqual(total(found, "cachingproxy_upstream_seconds_bucket", le="5.0"), 4)
        self.assertEqual(total(found, "cachingproxy_upstream_seconds_bucket", le="+Inf"), 4)

    def test_histogramMatchesObserve(self):
        """
        The batched histogram agrees with C{observe} one value at a time,
        bounds included (a value equal to a bound is in that bucket).
        """
        from prometheus_client import CollectorRegistry, Histogram, generate_latest

        values = [0.0, 0.005, 0.0051, 0.1, 0.7, 60.0, 61.0, 1e9]
        metrics = self.metrics()
        from prometheus_client import values as valueClasses

        # A plain in-process histogram to compare with.
        multiprocessValue = valueClasses.ValueClass
        valueClasses.ValueClass = valueClasses.MutexValue
        try:
            reference = Histogram("reference_seconds", "x", buckets=metricsModule.LATENCY_BUCKETS,
                                  registry=CollectorRegistry())
        finally:
            valueClasses.ValueClass = multiprocessValue
        for value in values:
            reference.observe(value)
        for value in values:
            metrics.requestDone(FakeExchange(upstream=value))
        expected = {
            labels["le"]: value
            for labels, value in samples(generate_latest(_registryOf(reference)))["reference_seconds_bucket"]
        }
        found = samples(metrics.render()[0])
        got = {labels["le"]: value for labels, value in found["cachingproxy_upstream_seconds_bucket"]}
        self.assertEqual(got, expected)

    def test_gauges(self):
        """
        Connections, upstream connections and the cache store's figures are
        read from the factory at each flush; running counts (evictions,
        cache events, upstream connections made) become counters.
        """
        factory = FakeFactory()
        metrics = self.metrics(factory=factory)
        metrics.flush()
        factory.cache.store.figures["evictions"] = 4
        factory.cache.stats.hits = 9
        factory.pool.connectionsMade = 8
        found = samples(metrics.render()[0])
        self.assertEqual(total(found, "cachingproxy_client_connections"), 4)
        self.assertEqual(total(found, "cachingproxy_upstream_connections"), 2)
        self.assertEqual(total(found, "cachingproxy_upstream_idle_connections"), 1)
        self.assertEqual(total(found, "cachingproxy_cache_entries"), 3)
        self.assertEqual(total(found, "cachingproxy_cache_bytes"), 3000)
        self.assertEqual(total(found, "cachingproxy_cache_limit_bytes"), 10000)
        self.assertEqual(total(found, "cachingproxy_cache_evictions_total"), 4)
        self.assertEqual(total(found, "cachingproxy_cache_events_total", event="hits"), 9)
        self.assertEqual(total(found, "cachingproxy_upstream_connections_made_total"), 8)
        # Counted once, not again at the next flush.
        found = samples(metrics.render()[0])
        self.assertEqual(total(found, "cachingproxy_cache_evictions_total"), 4)

    def test_workerRestarts(self):
        """
        L{countWorkerRestart} counts in the folder of
        C{PROMETHEUS_MULTIPROC_DIR}.
        """
        metrics = self.metrics()
        countWorkerRestart()
        countWorkerRestart()
        found = samples(metrics.render()[0])
        self.assertEqual(total(found, "cachingproxy_worker_restarts_total"), 2)
        self.assertEqual(metrics.restarts(), 2)

    def test_fileBeingCreated(self):
        """
        A metric file another process has just created, not yet sized,
        does not fail the report: it is read again a moment later; one
        that stays too short fails it.
        """
        from cachingproxy.ops import metrics as module

        metrics = self.metrics()
        countWorkerRestart()
        path = os.path.join(metrics.directory, "counter_999999.db")
        open(path, "wb").close()
        pauses = []
        settled = [True]

        def pause():
            pauses.append(None)
            if settled[0]:
                # the other process gave its file a size meanwhile (here:
                # it is gone)
                os.unlink(path)

        self.patch(module, "_pause", pause)
        self.assertEqual(metrics.restarts(), 1)
        self.assertEqual(len(pauses), 1)
        open(path, "wb").close()
        self.assertIn(b"cachingproxy_worker_restarts_total", metrics.render()[0])
        self.assertEqual(len(pauses), 2)
        open(path, "wb").close()
        settled[0] = False
        self.assertRaises(Exception, metrics.restarts)
        self.assertEqual(len(pauses), 2 + module._READ_ATTEMPTS - 1)

    def test_status(self):
        """
        The status figures: totals, hit ratios, per-10-second buckets of
        the last ten minutes, requests per second and top hosts; the
        proxy's own endpoints are not counted there.
        """
        metrics = self.metrics()
        for _ in range(6):
            metrics.requestDone(FakeExchange(cache="MISS", sent=1000, host="a.example"))
        metrics.flush()
        self.clock.advance(10)
        for _ in range(3):
            metrics.requestDone(FakeExchange(cache="HIT", sent=1000, upstream=None, host="a.example"))
        metrics.requestDone(FakeExchange(cache="REVALIDATED", sent=500, host="b.example"))
        metrics.requestDone(FakeExchange(cache="-", sent=50, upstream=None, host=None,
                                         target=b"/_cachingproxy/status.json"))
        report = metrics.status()
        self.assertEqual(report["totals"]["requests"], 10)
        self.assertEqual(report["totals"]["hits"], 4)
        self.assertEqual(report["totals"]["lookups"], 10)
        self.assertEqual(report["totals"]["bytesOut"], 9500)
        self.assertEqual(report["totals"]["bytesSaved"], 3500)
        self.assertAlmostEqual(report["hitRatio"], 0.4)
        self.assertAlmostEqual(report["byteHitRatio"], 3500 / 9500)
        self.assertEqual(len(report["series"]), metricsModule.BUCKETS)
        self.assertEqual([b["requests"] for b in report["series"][-2:]], [6, 4])
        self.assertEqual([b["bytesSaved"] for b in report["series"][-2:]], [0, 3500])
        self.assertEqual(sum(b["requests"] for b in report["series"]), 10)
        self.assertGreater(report["requestsPerSecond"], 0)
        self.assertEqual(report["topHosts"], [{"host": "a.example", "requests": 9},
                                              {"host": "b.example", "requests": 1}])
        self.assertEqual([w["pid"] for w in report["workers"]], [os.getpid()])
        # The admin request is a request for Prometheus.
        found = samples(metrics.render()[0])
        self.assertEqual(total(found, "cachingproxy_requests_total"), 11)
        # Ten minutes later the buckets are gone, the totals are not.
        self.clock.advance(metricsModule.BUCKETS * metricsModule.BUCKET_SECONDS)
        report = metrics.status()
        self.assertEqual(sum(b["requests"] for b in report["series"]), 0)
        self.assertEqual(report["totals"]["requests"], 10)
        self.assertEqual(metrics._buckets, {})

    def test_hostsBounded(self):
        """
        Only the busiest hosts are remembered once there are many.
        """
        metrics = self.metrics()
        for i in range(metricsModule.HOSTS_KEPT + 10):
            metrics.requestDone(FakeExchange(host="h%d.example" % i))
        metrics.requestDone(FakeExchange(host="busy.example"))
        metrics.requestDone(FakeExchange(host="busy.example"))
        metrics.flush()
        self.assertLessEqual(len(metrics.hosts), metricsModule.HOSTS_KEPT)
        self.assertEqual(metrics.status()["topHosts"][0], {"host": "busy.example", "requests": 2})

    def test_loop(self):
        """
        L{Metrics.start} flushes every interval until L{Metrics.stop}, which
        flushes once more and marks the process's status file stopped: its
        counts stay in the totals, it is no longer a live worker.
        """
        metrics = self.metrics()
        metrics.start()
        self.assertTrue(os.path.exists(metrics.statusPath))
        metrics.requestDone(FakeExchange())
        self.clock.advance(1)
        self.assertEqual(metrics.totals["requests"], 1)
        metrics.requestDone(FakeExchange())
        metrics.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        report = metricsModule.statusReport(metrics.directory, self.clock.seconds())
        self.assertEqual(report["totals"]["requests"], 2)
        self.assertEqual(report["workers"], [])

    def test_service(self):
        """
        L{MetricsService} starts and stops its L{Metrics}.
        """
        metrics = self.metrics()
        service = MetricsService(metrics)
        service.startService()
        self.assertTrue(metrics._loop.running)
        service.stopService()
        self.assertIsNone(metrics._loop)

    def test_otherWorkers(self):
        """
        The status figures add up the status files of other processes in
        the folder; one not updated for a while is not a live worker, but
        its counts stay.
        """
        import json

        metrics = self.metrics()
        now = self.clock.seconds()
        bucket = int(now // 10) * 10
        for pid, updated in ((1001, now - 1), (1002, now - 60)):
            with open(os.path.join(metrics.directory, "status_%d.json" % pid), "w") as f:
                json.dump({"pid": pid, "worker": "w%d" % pid, "started": now - 100, "updated": updated,
                           "connections": 2, "upstream": 1,
                           "totals": {"requests": 10, "hits": 5, "lookups": 10, "bytesIn": 0,
                                      "bytesOut": 100, "bytesSaved": 50},
                           "buckets": {str(bucket): [10, 5, 100, 50]},
                           "hosts": {"x.example": 10}}, f)
        metrics.requestDone(FakeExchange(host="x.example"))
        report = metrics.status()
        self.assertEqual(sorted(w["pid"] for w in report["workers"]), sorted([1001, os.getpid()]))
        self.assertEqual(report["totals"]["requests"], 21)
        self.assertEqual(report["series"][-1]["requests"], 21)
        self.assertEqual(report["topHosts"], [{"host": "x.example", "requests": 21}])
        self.assertEqual(report["connections"]["clients"], 2)
        self.assertEqual(report["uptime"], 100)

    def test_createOwnFolder(self):
        """
        Without C{PROMETHEUS_MULTIPROC_DIR}, L{Metrics.create} makes a
        temporary folder, sets the variable, and L{Metrics.stop} removes both.
        """
        multiprocessFolder(self)  # restores the variable afterwards
        os.environ.pop(ENVIRONMENT, None)
        metrics = Metrics.create(Clock())
        directory = metrics.directory
        self.assertEqual(os.environ[ENVIRONMENT], directory)
        metrics.requestDone(FakeExchange())
        self.assertEqual(total(samples(metrics.render()[0]), "cachingproxy_requests_total"), 1)
        metrics.stop()
        self.assertFalse(os.path.exists(directory))
        self.assertNotIn(ENVIRONMENT, os.environ)

    def test_createUsesEnvironment(self):
        """
        With C{PROMETHEUS_MULTIPROC_DIR} set (by a supervisor),
        L{Metrics.create} uses that folder and leaves it alone.
        """
        directory = multiprocessFolder(self)
        os.environ[ENVIRONMENT] = directory
        metrics = Metrics.create(Clock())
        self.assertEqual(metrics.directory, os.path.abspath(directory))
        metrics.stop()
        self.assertTrue(os.path.isdir(directory))

    def test_noFolder(self):
        """
        L{Metrics} itself wants a folder.
        """
        multiprocessFolder(self)
        os.environ.pop(ENVIRONMENT, None)
        self.assertRaises(ValueError, Metrics, Clock())

    def test_cost(self):
        """
        L{Metrics.requestDone} is cheap: well under the ~10 microseconds a
        whole request costs (the limit here is generous, for slow CI
        machines; the measured figure is printed).
        """
        metrics = self.metrics()
        miss = FakeExchange()
        hit = FakeExchange(cache="HIT", upstream=None)
        n = 20000
        cost = min(timeit.repeat(lambda: (metrics.requestDone(miss), metrics.requestDone(hit)),
                                 number=n, repeat=5)) / (2 * n)
        print(f"\nMetrics.requestDone: {cost * 1e6:.3f} us per request")
        self.assertLess(cost, 5e-6)
        metrics.flush()
        self.assertEqual(metrics.totals["requests"], 2 * n * 5)


def _registryOf(metric):
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(metric)
    return registry


# One worker: records N requests (with an open connection, for a live
# gauge), flushes and exits.
WORKER = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {root!r})
    from twisted.internet.task import Clock
    from cachingproxy.ops.metrics import Metrics
    from cachingproxy.proxy.upstream import Origin

    class Head:
        method = b"GET"
        target = b"http://example.com/"

    class Exchange:
        head = Head()
        status = 200
        cacheResult = "MISS"
        bytesSent = 10
        bytesReceived = 0
        upstreamSeconds = 0.01
        upstreamOrigin = Origin(b"http", "example.com", 80)

    class Factory:
        openConnections = 1
        cache = None
        pool = None

    metrics = Metrics(Clock(), Factory())
    for _ in range(int(sys.argv[1])):
        metrics.requestDone(Exchange())
    metrics.flush()
    print(os.getpid())
    """
)


class MultiprocessTests(TestCase):
    """
    Several processes sharing a folder add up.
    """

    def test_twoProcesses(self):
        """
        Two processes that each count N requests and exit, then a third
        rendering the folder: 2N requests.
        """
        directory = multiprocessFolder(self)
        n = 250
        script = WORKER.format(root=ROOT)
        env = dict(os.environ)
        env[ENVIRONMENT] = directory
        pids = []
        for _ in range(2):
            done = subprocess.run([sys.executable, "-c", script, str(n)], env=env, capture_output=True,
                                  timeout=60, check=False)
            self.assertEqual(done.returncode, 0, done.stderr.decode())
            pids.append(int(done.stdout))
        self.assertNotEqual(pids[0], pids[1])
        metrics = Metrics(Clock(), directory=directory)
        self.addCleanup(metrics.stop)
        found = samples(metrics.render()[0])
        self.assertEqual(total(found, "cachingproxy_requests_total"), 2 * n)
        self.assertEqual(total(found, "cachingproxy_response_bytes_total"), 2 * n * 10)
        self.assertEqual(total(found, "cachingproxy_upstream_seconds_count"), 2 * n)
        # Both still count as connected until the supervisor says they died.
        self.assertEqual(total(found, "cachingproxy_client_connections"), 2)
        for pid in pids:
            markProcessDead(pid, directory)
        found = samples(metrics.render()[0])
        self.assertEqual(total(found, "cachingproxy_client_connections"), 0)
        self.assertEqual(total(found, "cachingproxy_requests_total"), 2 * n)
        # The status figures add up the processes' status files too.
        self.assertEqual(metrics.status()["totals"]["requests"], 2 * n)


class LoopbackTests(TestCase):
    """
    C{/_cachingproxy/metrics} of a proxy that served requests.
    """

    async def test_metricsEndpoint(self):
        """
        After N requests through the proxy, the metrics endpoint reports N
        requests, their bytes and their upstream latencies.
        """
        directory = multiprocessFolder(self)
        origin, originPort = listenOrigin(self)
        factory, port, _ = startProxy(self, ProxySettings(viaName=b"test-proxy"))
        factory.metrics = Metrics(reactor, factory, directory=directory)
        self.addCleanup(factory.metrics.stop)
        factory.admin = AdminPages(factory)
        n = 12
        for i in range(n):
            _, [response] = await exchange(
                port, self, b"GET http://127.0.0.1:%d/size/%d HTTP/1.1\r\nHost: x\r\n\r\n" % (originPort, 100 + i)
            )
            self.assertEqual(response.status, 200)
        _, [response] = await exchange(port, self, b"GET /_cachingproxy/metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(response.status, 200)
        self.assertTrue(response.header(b"content-type").startswith(b"text/plain; version="))
        found = samples(response.body)
        self.assertEqual(total(found, "cachingproxy_requests_total"), n)
        self.assertEqual(total(found, "cachingproxy_requests_total", method="GET", status="200"), n)
        self.assertEqual(total(found, "cachingproxy_response_bytes_total"), sum(100 + i for i in range(n)))
        self.assertEqual(total(found, "cachingproxy_upstream_seconds_count"), n)
        self.assertGreater(total(found, "cachingproxy_upstream_connections_made_total"), 0)
        # The scrape itself is counted afterwards, as an admin request.
        _, [again] = await exchange(port, self, b"GET /_cachingproxy/metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(total(samples(again.body), "cachingproxy_requests_total"), n + 1)

    async def test_metricsOff(self):
        """
        Without metrics the endpoint is a 404.
        """
        factory, port, _ = startProxy(self, ProxySettings(viaName=b"test-proxy"))
        factory.admin = AdminPages(factory)
        _, [response] = await exchange(port, self, b"GET /_cachingproxy/metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(response.status, 404)
