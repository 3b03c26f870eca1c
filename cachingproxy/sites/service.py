# -*- test-case-name: tests.test_sites_service -*-
"""
The one object the proxy holds for routes and groups: it ties the route
table, a balancer per group, the health checks, the rate limiter and the
metrics together, and swaps them on reload.

Usage, per request::

    route = sites.route(host, path)
    if route is None:
        ...                                     # 404
    verdict = sites.limit(route, clientAddress, ARRIVAL)
    ...                                         # 429 unless verdict.allowed
    # on a cache miss, before going upstream:
    verdict = sites.limit(route, clientAddress, UPSTREAM)
    server = sites.pick(route, cacheKey)        # None: 502, no server up
    sites.started(route, server)
    ...
    sites.finished(route, server, ok=status < 500, latency=seconds)
    # an idempotent request that failed may try another server:
    server = sites.pick(route, cacheKey, exclude=[server])

and on reload::

    sites.reload(parseSites(...))
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

from twisted.application import service

from .balance import Balancer, makeBalancer
from .health import Checker, Health
from .metrics import SitesMetrics
from .model import Group, Route, Server, Sites
from .ratelimit import MAX_BUCKETS, RateLimiter, Verdict, clientKey
from .routes import RouteTable

__all__ = ["ARRIVAL", "SitesService", "UPSTREAM"]

#: L{SitesService.limit} stages: when a request arrives, and when it is
#: about to go to an origin (a cache miss).
ARRIVAL = "arrival"
UPSTREAM = "upstream"

_ALLOWED = Verdict(True)


class SitesService(service.Service):
    """
    Routes, balancers, health, rate limits and metrics of one
    configuration, replaced by L{reload}.

    @ivar sites: the current L{Sites}.
    @ivar health: the L{Health} of every server.
    """

    def __init__(self, reactor, sites: Sites, checker: Optional[Checker] = None,
                 metrics: Optional[SitesMetrics] = None, maxBuckets: int = MAX_BUCKETS) -> None:
        """
        @param reactor: an L{IReactorTime} (and L{IReactorTCP} for the
            default checker).
        @param checker: how active checks are made (L{health.agentChecker}
            by default).
        @param metrics: where to count, or C{None}.
        """
        self.reactor = reactor
        self.health = Health(reactor, sites.groups.values(), checker=checker)
        self.limiter = RateLimiter(reactor, maxBuckets)
        self.metrics = metrics
        self._balancers: Dict[str, Balancer] = {}
        self._install(sites)

    def _install(self, sites: Sites) -> None:
        self.sites = sites
        self.table = RouteTable(sites.routes)
        previous = self._balancers
        self._balancers = {
            name: makeBalancer(group, self.health.isUp, previous.get(name))
            for name, group in sites.groups.items()
        }
        if self.metrics is not None:
            self.metrics.watch(self.health, sites.groups.values())

    def reload(self, sites: Sites) -> None:
        """
        Switch to a new configuration: servers that stay keep their health
        state and their count of outstanding requests (per group name).
        """
        self.health.reconfigure(sites.groups.values())
        self._install(sites)

    def startService(self) -> None:
        super().startService()
        self.health.startService()

    def stopService(self) -> None:
        super().stopService()
        self.health.stopService()

    def route(self, host: Optional[bytes], path: bytes) -> Optional[Route]:
        """
        @return: the route of a request, or C{None} (answer 404).
        """
        return self.table.match(host, path)

    def group(self, route: Route) -> Group:
        """
        @return: the group of C{route}.
        """
        return self.sites.groups[route.group]

    def limit(self, route: Route, client: str, stage: str) -> Verdict:
        """
        Take a token from the bucket of C{route} and C{client} at the stage
        the route's C{count-hits} says: at L{ARRIVAL} when hits count, at
        L{UPSTREAM} when they do not. Call it at both stages; the other one
        is always allowed.

        @param client: the client's address (IPv6 addresses share the
            bucket of their /64, L{clientKey}).
        """
        rate = route.rate
        if rate is None or (stage == ARRIVAL) != rate.countHits:
            return _ALLOWED
        return self.limiter.take(route.name, clientKey(client), rate)

    def pick(self, route: Route, key: bytes = b"", exclude: Iterable[Server] = ()) -> Optional[Server]:
        """
        @return: a server of the route's group that is up and not
            excluded, or C{None} (answer 502).
        """
        balancer = self._balancers.get(route.group)
        return balancer.pick(key, exclude) if balancer is not None else None

    def started(self, route: Route, server: Server) -> None:
        """
        A request of C{route} was sent to C{server}.
        """
        balancer = self._balancers.get(route.group)
        if balancer is not None:
            balancer.started(server)

    def finished(self, route: Route, server: Server, ok: bool, latency: Optional[float]) -> None:
        """
        A request of C{route} sent to C{server} is over: answered below 500
        (C{ok}), or it failed to connect or was answered 5xx.

        @param latency: seconds until the response head, or C{None}.
        """
        balancer = self._balancers.get(route.group)
        if balancer is not None:
            balancer.finished(server, ok, latency or 0.0)
        self.health.requestFinished(server, ok)
        group = self.sites.groups.get(route.group)
        if self.metrics is not None and group is not None:
            self.metrics.requestDone(group, server, ok, latency)
