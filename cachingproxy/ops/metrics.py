# -*- test-case-name: tests.test_metrics -*-
"""
Counting what the proxy does, for Prometheus and for the status page.

Prometheus figures are kept with C{prometheus_client} in its multiprocess
mode: every process writes its own memory-mapped files into the folder
named by C{PROMETHEUS_MULTIPROC_DIR}, and whichever worker is scraped adds
them all up (L{Metrics.render}). The supervisor of several workers sets
that variable to a fresh folder before it starts them (and removes the
folder when it stops); a single process gets one from L{Metrics.create}.

The hot path, L{Metrics.requestDone}, only adds to plain Python ints and
dicts. A L{LoopingCall} (L{Metrics.start}) moves what was counted into the
Prometheus metrics once a second (L{Metrics.flush}), reads the gauges
(connections, cache size), keeps per-10-second buckets of the last ten
minutes for the status page and writes this process's share of those to
C{status_<pid>.json} in the same folder, so that the status page of any
worker shows all of them (L{statusReport}).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import struct
import tempfile
import time
from bisect import bisect_left
from typing import Dict, List, Optional, Tuple

from twisted.application import service
from twisted.logger import Logger

__all__ = [
    "ENVIRONMENT",
    "Metrics",
    "MetricsService",
    "countWorkerRestart",
    "markProcessDead",
    "statusReport",
]

#: The variable C{prometheus_client} reads to find the multiprocess folder.
ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"

#: Seconds per bucket of the status page's time series, and how many.
BUCKET_SECONDS = 10
BUCKETS = 60

#: Upper bounds of the upstream latency histogram, in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Cache results whose bytes did not come from the origin.
SAVED_RESULTS = frozenset(("HIT", "STALE", "REVALIDATED"))

#: Methods that get their own label value; anything else is C{OTHER}.
METHODS = frozenset(
    (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"CONNECT", b"TRACE", b"PURGE")
)

#: Counters kept by L{cachingproxy.cache.layer.CacheLayer.stats}.
CACHE_EVENTS = ("hits", "misses", "revalidated", "stale", "passed", "stored", "collapsed", "purged")

#: The fleet tier's counters: label, key of L{FleetTier.stats}.
FLEET_EVENTS = (("hits", "hits"), ("misses", "misses"), ("skipped", "skipped"),
                ("timeouts", "timeouts"), ("offered", "offered"),
                ("failed_writes", "failedWrites"), ("dropped_writes", "droppedWrites"),
                ("purges", "purges"), ("gaps", "gaps"), ("invalidated", "invalidated"),
                ("failed_invalidations", "failedInvalidations"), ("replacements", "replacements"))

#: A worker's status file counts as live while it is younger than this.
LIVE_SECONDS = 5.0

#: How many hosts a process remembers, and how many it reports.
HOSTS_KEPT = 1000
HOSTS_REPORTED = 100

_log = Logger()

# prometheus_client's multiprocess value class: the folder it was made for.
_valueClassFolder: Optional[str] = None
# folder -> _Families, so that all metrics of a process share one set of
# Prometheus objects per folder (two sets with the same names would write
# over each other's values in the same files).
_families: Dict[str, "_Families"] = {}


def _useFolder(directory: str) -> None:
    """
    Point C{prometheus_client}'s multiprocess mode at C{directory}: set the
    environment variable and, if C{prometheus_client} was imported before
    it was set (or for another folder), give it a new multiprocess value
    class (what its documentation does for a custom process identifier).
    """
    global _valueClassFolder
    os.environ[ENVIRONMENT] = directory
    from prometheus_client import values

    if _valueClassFolder != directory:
        if _valueClassFolder is not None or not getattr(values.ValueClass, "_multiprocess", False):
            values.ValueClass = values.MultiProcessValue()
        _valueClassFolder = directory


class _Families:
    """
    The Prometheus metrics of one process for one multiprocess folder.
    """

    def __init__(self, directory: str) -> None:
        _useFolder(directory)
        from prometheus_client import Counter, Gauge, Histogram

        self.directory = directory
        self.requests = Counter(
            "cachingproxy_requests_total",
            "Finished requests by method, status and cache result.",
            ("method", "status", "cache"),
            registry=None,
        )
        self.bytesIn = Counter(
            "cachingproxy_request_bytes_total", "Request body bytes received from clients.", registry=None
        )
        self.bytesOut = Counter(
            "cachingproxy_response_bytes_total",
            "Response body bytes sent to clients (not counting the proxy's own endpoints).",
            registry=None,
        )
        self.bytesSaved = Counter(
            "cachingproxy_cache_served_bytes_total",
            "Response body bytes sent from the cache (hit, stale or revalidated).",
            registry=None,
        )
        self.upstreamSeconds = Histogram(
            "cachingproxy_upstream_seconds",
            "Seconds the origin took to answer, for requests sent upstream.",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.clientConnections = Gauge(
            "cachingproxy_client_connections", "Open client connections.",
            multiprocess_mode="livesum", registry=None,
        )
        self.upstreamConnections = Gauge(
            "cachingproxy_upstream_connections", "Open upstream connections.",
            multiprocess_mode="livesum", registry=None,
        )
        self.upstreamIdle = Gauge(
            "cachingproxy_upstream_idle_connections", "Idle upstream connections kept for reuse.",
            multiprocess_mode="livesum", registry=None,
        )
        self.upstreamMade = Counter(
            "cachingproxy_upstream_connections_made_total", "Upstream connections made.", registry=None
        )
        # The disk store is shared by the workers: its figures are the
        # same everywhere, so the largest one reported is taken.
        self.cacheEntries = Gauge(
            "cachingproxy_cache_entries", "Entries in the cache store.",
            multiprocess_mode="livemax", registry=None,
        )
        self.cacheBytes = Gauge(
            "cachingproxy_cache_bytes", "Bytes in the cache store.",
            multiprocess_mode="livemax", registry=None,
        )
        self.cacheLimit = Gauge(
            "cachingproxy_cache_limit_bytes", "Size limit of the cache store.",
            multiprocess_mode="livemax", registry=None,
        )
        self.evictions = Counter(
            "cachingproxy_cache_evictions_total", "Entries evicted from the cache store.", registry=None
        )
        self.cacheEvents = Counter(
            "cachingproxy_cache_events_total",
            "What the cache did: hits, misses, revalidated, stale, passed, stored, collapsed, purged.",
            ("event",),
            registry=None,
        )
        self.restarts = Counter(
            "cachingproxy_worker_restarts_total", "Worker processes restarted by the supervisor.", registry=None
        )
        # the fleet tier (--redis)
        self.fleetEvents = Counter(
            "cachingproxy_fleet_events_total",
            "What the fleet tier did: hits, misses, skipped (Redis slow or gone), timeouts, "
            "offered, failed_writes, dropped_writes (write queue full), purges followed, gaps, "
            "invalidated (by unsafe methods), failed_invalidations, replacements followed.",
            ("event",),
            registry=None,
        )
        self.fleetBreakerOpen = Gauge(
            "cachingproxy_fleet_breaker_open",
            "1 while a Redis node's circuit breaker is open or half-open, else 0.",
            multiprocess_mode="livemax", registry=None,
        )


def _familiesFor(directory: str) -> _Families:
    directory = os.path.abspath(directory)
    families = _families.get(directory)
    if families is None:
        families = _families[directory] = _Families(directory)
    else:
        _useFolder(directory)
    return families


def countWorkerRestart(directory: Optional[str] = None) -> None:
    """
    Count one worker restart (the supervisor calls this, with
    C{PROMETHEUS_MULTIPROC_DIR} set to the workers' folder).
    """
    directory = directory or os.environ.get(ENVIRONMENT)
    if not directory:
        return
    _familiesFor(directory).restarts.inc()


def markProcessDead(pid: int, directory: Optional[str] = None) -> None:
    """
    A worker is gone: drop its share of the live gauges (connections,
    cache size). Its counters stay, so the totals never go backwards.
    """
    directory = directory or os.environ.get(ENVIRONMENT)
    if not directory:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)


class Metrics:
    """
    Counts finished requests (L{requestDone}, for every request) and reports
    them with the proxy's state (L{render}, L{status}).

    @ivar factory: the L{cachingproxy.proxy.factory.ProxyFactory} whose connections,
        upstream pool and cache are reported, or C{None}.
    @ivar directory: the multiprocess folder.
    """

    def __init__(self, reactor=None, factory=None, directory: Optional[str] = None,
                 interval: float = 1.0, clock=time.time, workerId: str = "") -> None:
        """
        @param directory: the multiprocess folder; by default
            C{PROMETHEUS_MULTIPROC_DIR}, which must then be set (see
            L{create}).
        @param clock: wall-clock time, for the status page's buckets.
        """
        directory = directory or os.environ.get(ENVIRONMENT)
        if not directory:
            raise ValueError(f"no multiprocess folder: set {ENVIRONMENT} or use Metrics.create()")
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.factory = factory
        self.directory = os.path.abspath(directory)
        self.interval = interval
        self.clock = clock
        self.pid = os.getpid()
        self.workerId = workerId or str(self.pid)
        self.started = clock()
        self._families = _familiesFor(self.directory)
        self._ownsDirectory = False
        self._loop = None
        self._stopped = False
        # -- what requestDone adds to, emptied by flush --
        self._counts: Dict[Tuple[bytes, int, str], int] = {}
        self._bytesIn = 0
        self._bytesOut = 0
        self._saved = 0
        self._latencies: List[float] = []
        self._hosts: Dict[object, int] = {}
        self._adminRequests = 0
        self._adminBytes = 0
        # -- flush's state --
        self._children: Dict[Tuple[bytes, int, str], object] = {}
        self._eventChildren: Dict[str, object] = {}
        self._last: Dict[str, int] = {}
        self._buckets: Dict[int, List[int]] = {}
        self.totals = {"requests": 0, "hits": 0, "lookups": 0, "bytesIn": 0, "bytesOut": 0, "bytesSaved": 0}
        self.hosts: Dict[str, int] = {}
        self.statusPath = os.path.join(self.directory, "status_%d.json" % self.pid)

    @classmethod
    def create(cls, reactor=None, factory=None, directory: Optional[str] = None, **kwargs) -> "Metrics":
        """
        L{Metrics} for a process that may be on its own: use C{directory},
        or C{PROMETHEUS_MULTIPROC_DIR} if set, or else a new temporary
        folder, which L{stop} removes.
        """
        owned = False
        if directory is None:
            directory = os.environ.get(ENVIRONMENT)
            if not directory:
                directory = tempfile.mkdtemp(prefix="cachingproxy-metrics-")
                owned = True
        metrics = cls(reactor, factory, directory, **kwargs)
        metrics._ownsDirectory = owned
        return metrics

    # -- the hot path ----------------------------------------------------------

    def requestDone(self, exchange) -> None:
        """
        Count one finished request: cheap, it only adds to Python ints and
        dicts (see L{flush}).
        """
        cache = exchange.cacheResult
        key = (exchange.head.method, exchange.status, cache)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        sent = exchange.bytesSent
        self._bytesOut += sent
        self._bytesIn += exchange.bytesReceived
        if cache in SAVED_RESULTS:
            self._saved += sent
        upstream = exchange.upstreamSeconds
        if upstream is not None:
            self._latencies.append(upstream)
        origin = exchange.upstreamOrigin
        if origin is not None:
            host = origin.host
            hosts = self._hosts
            hosts[host] = hosts.get(host, 0) + 1
        elif exchange.ownEndpoint:
            # The proxy's own endpoints (the status page polling, Prometheus
            # scraping): counted as requests for Prometheus, not on the
            # status page, and their bytes in neither (both report the one
            # figure of bytes sent).
            self._adminRequests += 1
            self._adminBytes += sent

    # -- once a second -----------------------------------------------------------

    def start(self) -> None:
        """
        Flush every L{interval} seconds until L{stop}.
        """
        if self._loop is not None:
            return
        from twisted.internet.task import LoopingCall

        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        """
        Stop flushing, flush once more and mark this process's status file
        stopped (its counts stay in the totals, like its Prometheus
        counters); remove the folder if L{create} made it.
        """
        if self._loop is not None:
            if self._loop.running:
                self._loop.stop()
            self._loop = None
        self._stopped = True
        try:
            self.flush()
        except Exception:
            _log.failure("flushing metrics failed")
        if self._ownsDirectory:
            _families.pop(self.directory, None)
            shutil.rmtree(self.directory, True)
            if os.environ.get(ENVIRONMENT) == self.directory:
                del os.environ[ENVIRONMENT]
            self._ownsDirectory = False

    def _tick(self) -> None:
        try:
            self.flush()
        except Exception:
            _log.failure("flushing metrics failed")

    def flush(self, writeStatus: bool = True) -> None:
        """
        Move what L{requestDone} counted into the Prometheus metrics and the
        status page's buckets, read the gauges, and write this process's
        status file.
        """
        families = self._families
        counts, self._counts = self._counts, {}
        bytesIn, self._bytesIn = self._bytesIn, 0
        bytesOut, self._bytesOut = self._bytesOut, 0
        saved, self._saved = self._saved, 0
        latencies, self._latencies = self._latencies, []
        hosts, self._hosts = self._hosts, {}
        admin, self._adminRequests = self._adminRequests, 0
        adminBytes, self._adminBytes = self._adminBytes, 0

        requests = hits = lookups = 0
        children = self._children
        for key, n in counts.items():
            child = children.get(key)
            if child is None:
                method, status, cache = key
                if method not in METHODS:
                    method = b"OTHER"
                child = children[key] = families.requests.labels(
                    method.decode("ascii"), str(status), cache or "-"
                )
            child.inc(n)
            requests += n
            cache = key[2]
            if cache in SAVED_RESULTS:
                hits += n
            if cache != "-":
                lookups += n
        requests -= admin
        bytesOut -= adminBytes
        if bytesIn:
            families.bytesIn.inc(bytesIn)
        if bytesOut:
            families.bytesOut.inc(bytesOut)
        if saved:
            families.bytesSaved.inc(saved)
        if latencies:
            self._observe(latencies)

        totals = self.totals
        totals["requests"] += requests
        totals["hits"] += hits
        totals["lookups"] += lookups
        totals["bytesIn"] += bytesIn
        totals["bytesOut"] += bytesOut
        totals["bytesSaved"] += saved

        now = self.clock()
        start = int(now // BUCKET_SECONDS) * BUCKET_SECONDS
        buckets = self._buckets
        if requests or bytesOut:
            bucket = buckets.get(start)
            if bucket is None:
                bucket = buckets[start] = [0, 0, 0, 0]
            bucket[0] += requests
            bucket[1] += hits
            bucket[2] += bytesOut
            bucket[3] += saved
        oldest = start - (BUCKETS - 1) * BUCKET_SECONDS
        for old in [t for t in buckets if t < oldest]:
            del buckets[old]

        if hosts:
            kept = self.hosts
            for host, n in hosts.items():
                if not isinstance(host, str):
                    host = host.decode("latin-1")
                kept[host] = kept.get(host, 0) + n
            if len(kept) > HOSTS_KEPT:
                top = sorted(kept.items(), key=lambda item: -item[1])[: HOSTS_KEPT // 2]
                self.hosts = dict(top)

        self._gauges()
        if writeStatus:
            self._writeStatus(now)

    def _observe(self, latencies: List[float]) -> None:
        """
        Add a batch of upstream latencies to the histogram: one write per
        bucket rather than per value.
        """
        histogram = self._families.upstreamSeconds
        buckets = getattr(histogram, "_buckets", None)
        total = getattr(histogram, "_sum", None)
        bounds = getattr(histogram, "_upper_bounds", None)
        if buckets is None or total is None or bounds is None or len(buckets) != len(bounds):
            for value in latencies:
                histogram.observe(value)
            return
        counts = [0] * len(bounds)
        for value in latencies:
            counts[bisect_left(bounds, value)] += 1
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
        total.inc(sum(latencies))

    def _gauges(self) -> None:
        factory = self.factory
        if factory is None:
            return
        families = self._families
        families.clientConnections.set(factory.openConnections)
        pool = getattr(factory, "pool", None)
        if pool is not None:
            families.upstreamConnections.set(len(getattr(pool, "_all", ())))
            families.upstreamIdle.set(pool.idleCount())
            self._counterFrom(families.upstreamMade, "connectionsMade", getattr(pool, "connectionsMade", 0))
        cache = getattr(factory, "cache", None)
        if cache is not None:
            stats = cache.store.stats()
            families.cacheEntries.set(stats.get("entries", 0))
            families.cacheBytes.set(stats.get("bytes", 0))
            families.cacheLimit.set(stats.get("limit", 0) or 0)
            self._counterFrom(families.evictions, "evictions", stats.get("evictions", 0))
            cacheStats = cache.stats
            children = self._eventChildren
            for event in CACHE_EVENTS:
                child = children.get(event)
                if child is None:
                    child = children[event] = families.cacheEvents.labels(event)
                self._counterFrom(child, "event:" + event, getattr(cacheStats, event, 0))
            fleet = getattr(cache, "fleet", None)
            if fleet is not None:
                self._fleetGauges(fleet)

    def _fleetGauges(self, fleet) -> None:
        families = self._families
        stats = fleet.stats()
        families.fleetBreakerOpen.set(0 if stats["state"] == "closed" else 1)
        for event, name in FLEET_EVENTS:
            child = self._eventChildren.get("fleet:" + event)
            if child is None:
                child = self._eventChildren["fleet:" + event] = families.fleetEvents.labels(event)
            self._counterFrom(child, "fleet:" + event, stats.get(name, 0))

    def _counterFrom(self, counter, name: str, value: int) -> None:
        """
        Add to C{counter} what the running count C{value} grew by since the
        last look.
        """
        last = self._last.get(name, 0)
        if value > last:
            counter.inc(value - last)
        self._last[name] = value

    # -- reports -------------------------------------------------------------------

    def render(self) -> Tuple[bytes, str]:
        """
        @return: the Prometheus text format for all processes sharing the
            folder, and its content type.
        """
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST
        from prometheus_client.multiprocess import MultiProcessCollector

        self.flush()

        def render():
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.directory)
            return generate_latest(registry)

        return _readingFiles(render), CONTENT_TYPE_LATEST

    def localStatus(self, now: float) -> dict:
        """
        @return: this process's share of the status page: what it writes to
            its status file.
        """
        factory = self.factory
        connections = upstream = 0
        if factory is not None:
            connections = factory.openConnections
            pool = getattr(factory, "pool", None)
            if pool is not None:
                upstream = len(getattr(pool, "_all", ()))
        hosts = sorted(self.hosts.items(), key=lambda item: -item[1])[:HOSTS_REPORTED]
        return {
            "pid": self.pid,
            "worker": self.workerId,
            "started": self.started,
            "updated": now,
            "stopped": self._stopped,
            "connections": connections,
            "upstream": upstream,
            "totals": dict(self.totals),
            "buckets": {str(t): b for t, b in self._buckets.items()},
            "hosts": dict(hosts),
        }

    def _writeStatus(self, now: float) -> None:
        temporary = self.statusPath + ".tmp"
        try:
            with open(temporary, "w") as f:
                json.dump(self.localStatus(now), f, separators=(",", ":"))
            os.replace(temporary, self.statusPath)
        except FileNotFoundError:
            # The folder is gone: the supervisor cleaned up before us.
            if os.path.isdir(self.directory):
                raise

    def status(self) -> dict:
        """
        @return: the status page's figures, for all processes sharing the
            folder (see L{statusReport}).
        """
        self.flush()
        return statusReport(self.directory, self.clock(), self.pid)

    def restarts(self) -> int:
        """
        @return: worker restarts counted in the folder.
        """
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        def count():
            collector = MultiProcessCollector(CollectorRegistry(), path=self.directory)
            total = 0
            for family in collector.collect():
                if family.name == "cachingproxy_worker_restarts":
                    total += sum(s.value for s in family.samples if s.name.endswith("_total"))
            return int(total)

        return _readingFiles(count)


#: How often L{_readingFiles} tries.
_READ_ATTEMPTS = 5


def _pause() -> None:
    time.sleep(0.002)


def _readingFiles(read):
    """
    Run C{read}, which reads every process's metric files: a process that
    is starting (a worker, during a reload) creates its file and only then
    gives it its size, and a file read in between is too short to parse
    (C{struct.error}); so try again, a few times, a moment apart.
    """
    for attempt in range(_READ_ATTEMPTS):
        try:
            return read()
        except (struct.error, ValueError):
            if attempt == _READ_ATTEMPTS - 1:
                raise
            _pause()


def statusReport(directory: str, now: float, pid: Optional[int] = None) -> dict:
    """
    Add up the status files of the processes sharing C{directory}.

    @return: C{uptime}, C{workers} (one dict per live process), C{totals},
        C{hitRatio}, C{byteHitRatio}, C{requestsPerSecond} (over the last
        minute), C{connections}, C{series} (per-bucket figures, oldest
        first, for the last ten minutes) and C{topHosts}.
    """
    reports = []
    for path in glob.glob(os.path.join(directory, "status_*.json")):
        try:
            with open(path) as f:
                reports.append(json.load(f))
        except (OSError, ValueError):
            continue
    totals = {"requests": 0, "hits": 0, "lookups": 0, "bytesIn": 0, "bytesOut": 0, "bytesSaved": 0}
    end = int(now // BUCKET_SECONDS) * BUCKET_SECONDS
    first = end - (BUCKETS - 1) * BUCKET_SECONDS
    series = {t: [0, 0, 0, 0] for t in range(first, end + 1, BUCKET_SECONDS)}
    hosts: Dict[str, int] = {}
    workers = []
    connections = upstream = 0
    started = None
    for report in reports:
        for name in totals:
            totals[name] += report.get("totals", {}).get(name, 0)
        for t, values in report.get("buckets", {}).items():
            bucket = series.get(int(t))
            if bucket is not None:
                for i in range(4):
                    bucket[i] += values[i]
        for host, n in report.get("hosts", {}).items():
            hosts[host] = hosts.get(host, 0) + n
        if started is None or report.get("started", now) < started:
            started = report.get("started", now)
        live = not report.get("stopped") and (
            now - report.get("updated", 0) < LIVE_SECONDS or report.get("pid") == pid
        )
        if live:
            connections += report.get("connections", 0)
            upstream += report.get("upstream", 0)
            workers.append(
                {
                    "pid": report.get("pid"),
                    "worker": report.get("worker"),
                    "uptime": round(now - report.get("started", now), 1),
                    "connections": report.get("connections", 0),
                    "requests": report.get("totals", {}).get("requests", 0),
                }
            )
    workers.sort(key=lambda w: w["pid"] or 0)
    # The last minute or so: the bucket under way and the five before it.
    windowStart = end - 5 * BUCKET_SECONDS
    recent = sum(series[t][0] for t in range(windowStart, end + 1, BUCKET_SECONDS))
    if started is not None:
        windowStart = max(windowStart, started)
    rate = recent / max(now - windowStart, 1.0)
    top = sorted(hosts.items(), key=lambda item: (-item[1], item[0]))[:10]
    return {
        "time": now,
        "started": started if started is not None else now,
        "uptime": round(now - started, 1) if started is not None else 0.0,
        "workers": workers,
        "totals": totals,
        "hitRatio": totals["hits"] / totals["lookups"] if totals["lookups"] else None,
        "byteHitRatio": totals["bytesSaved"] / totals["bytesOut"] if totals["bytesOut"] else None,
        "requestsPerSecond": rate,
        "connections": {"clients": connections, "upstream": upstream},
        "bucketSeconds": BUCKET_SECONDS,
        "series": [
            {"t": t, "requests": b[0], "hits": b[1], "bytesOut": b[2], "bytesSaved": b[3]}
            for t, b in sorted(series.items())
        ],
        "topHosts": [{"host": h, "requests": n} for h, n in top],
    }


class MetricsService(service.Service):
    """
    Starts and stops a L{Metrics} with a service tree (C{setServiceParent}).
    """

    name = "cachingproxy-metrics"

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def startService(self) -> None:
        super().startService()
        self.metrics.start()

    def stopService(self) -> None:
        super().stopService()
        self.metrics.stop()
