# -*- test-case-name: tests.test_sites_health -*-
"""
Prometheus figures per group and per server of the groups.

Usage::

    figures = SitesMetrics(registry)              # or registry=None, as
    figures.watch(health, sites.groups.values())  # cachingproxy.ops.metrics does
    ...
    figures.requestDone(group, server, ok=True, latency=0.012)

The families (all labelled with C{group} and C{server}, the server's URL):

  - C{cachingproxy_group_requests_total}: requests sent to a server;
  - C{cachingproxy_group_failures_total}: those that failed to connect or
    were answered 5xx;
  - C{cachingproxy_group_upstream_seconds}: how long they took (the buckets
    of L{cachingproxy.ops.metrics.LATENCY_BUCKETS});
  - C{cachingproxy_group_server_state}: one series per state
    (C{state="up"}, C{"down"}, C{"cooling"}, C{"probing"}), 1 for the
    server's current state and 0 for the others. In multiprocess mode the
    largest value of the live processes is taken, so a server counts as
    down when any worker sees it down.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

from ..ops.metrics import LATENCY_BUCKETS
from .health import Health, ServerState
from .model import Group, Server

__all__ = ["SitesMetrics"]


class SitesMetrics:
    """
    The Prometheus families of routes and groups, registered in one
    registry.
    """

    def __init__(self, registry=None) -> None:
        """
        @param registry: a L{prometheus_client.CollectorRegistry}, or
            C{None} for none (multiprocess mode collects from files).
        """
        from prometheus_client import Counter, Gauge, Histogram

        labels = ("group", "server")
        self.requests = Counter(
            "cachingproxy_group_requests_total", "Requests sent to a server of a group.",
            labels, registry=registry,
        )
        self.failures = Counter(
            "cachingproxy_group_failures_total",
            "Requests to a server of a group that failed to connect or were answered 5xx.",
            labels, registry=registry,
        )
        self.latency = Histogram(
            "cachingproxy_group_upstream_seconds", "Seconds a server of a group took to answer.",
            labels, buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.state = Gauge(
            "cachingproxy_group_server_state",
            "1 for the state a server of a group is in (up, down, cooling, probing), else 0.",
            labels + ("state",), multiprocess_mode="livemax", registry=registry,
        )
        self._groupsOf: Dict[str, List[str]] = {}
        self._watching: Optional[Health] = None
        #: (group, server URL) -> the labelled requests counter and
        #: latency histogram (looking the labels up costs more than
        #: counting)
        self._children: Dict[tuple, tuple] = {}
        #: with L{start}: (group, server URL) -> [requests, failures,
        #: latencies] counted since the last L{flush}; C{None}: every
        #: request is written at once
        self._pending: Optional[Dict[tuple, list]] = None
        self._loop = None

    def start(self, clock, interval: float = 1.0) -> None:
        """
        Count requests in Python ints and lists, and write them to the
        families every C{interval} seconds (in multiprocess mode each
        write is a write to a shared file), as
        L{cachingproxy.ops.metrics.Metrics} does.
        """
        if self._loop is not None:
            return
        from twisted.internet.task import LoopingCall

        self._pending = {}
        self._loop = LoopingCall(self.flush)
        self._loop.clock = clock
        self._loop.start(interval, now=False)

    def stop(self) -> None:
        """
        Write what was counted, and write every request at once again.
        """
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        self.flush()
        self._pending = None

    def flush(self) -> None:
        """
        Write the requests counted since the last flush.
        """
        pending = self._pending
        if not pending:
            return
        self._pending = {}
        for key, (requests, failures, latencies) in pending.items():
            children = self._childrenOf(key)
            children[0].inc(requests)
            if failures:
                self.failures.labels(*key).inc(failures)
            for latency in latencies:
                children[1].observe(latency)

    def _childrenOf(self, key: tuple) -> tuple:
        children = self._children.get(key)
        if children is None:
            if len(self._children) > 10000:
                self._children.clear()
            children = self._children[key] = (self.requests.labels(*key), self.latency.labels(*key))
        return children

    def requestDone(self, group: Group, server: Server, ok: bool, latency: Optional[float]) -> None:
        """
        Count a request sent to C{server} of C{group}.

        @param latency: seconds until the response head, or C{None} when
            there was none.
        """
        key = (group.name, server.url)
        pending = self._pending
        if pending is not None:
            counts = pending.get(key)
            if counts is None:
                counts = pending[key] = [0, 0, []]
            counts[0] += 1
            if not ok:
                counts[1] += 1
            if latency is not None:
                counts[2].append(latency)
            return
        children = self._childrenOf(key)
        children[0].inc()
        if not ok:
            self.failures.labels(*key).inc()
        if latency is not None:
            children[1].observe(latency)

    def watch(self, health: Health, groups: Iterable[Group]) -> None:
        """
        Show the states of the servers of C{groups}, now and as L{Health}
        changes them. Call again with the new groups after a reload.
        """
        groupsOf: Dict[str, List[str]] = {}
        for group in groups:
            for server in group.servers:
                groupsOf.setdefault(server.url, []).append(group.name)
                self._show(group.name, server.url, health.state(server))
        self._groupsOf = groupsOf
        if self._watching is not health:
            self._watching = health
            health.subscribe(self._changed)

    def _changed(self, server: Server, old: ServerState, new: ServerState) -> None:
        for name in self._groupsOf.get(server.url, ()):
            self._show(name, server.url, new)

    def _show(self, group: str, url: str, current: ServerState) -> None:
        for state in ServerState:
            self.state.labels(group, url, state.value).set(1 if state is current else 0)
