# -*- test-case-name: tests.test_sites_proxy -*-
"""
Routes and origin groups in the running proxy: what the proxy factory and
an exchange ask of L{SitesRouting}.

In reverse mode with C{[groups.*]} and C{[[routes]]} (or several
C{--upstream}), L{cachingproxy.proxy.factory.ProxyFactory.route} hands a
request to L{SitesRouting.route}: the first route matching its Host and
path is chosen (none: 404), the route's client networks are checked (403)
and its rate limit taken (429 with C{Retry-After}), before the cache. The
exchange then carries its route and the route's L{ProxySettings} (the
proxy's own, with what the route sets put over them), and its cache is the
route's view of the cache layer (L{cacheFor}).

Each time the exchange goes upstream, L{SitesRouting.attempt} picks a
server of the route's group (the cache key is the hash key of a
C{consistent-hash} group) and sends the request there through an
L{_Attempt}, which tells L{SitesService} how it went (passive health,
balancing, metrics) and, when the connection could not be made, sends an
idempotent request to another server of the group. When no server is up
the cache layer is told the group is unavailable, so that it may serve a
stale response (stale-if-error); otherwise the client is answered 503.

Nothing here is used when no group is configured: a single C{--upstream}
goes through the proxy as before.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Sequence, Tuple

from twisted.logger import Logger
from twisted.python.failure import Failure

from ..cache.layer import CacheLayer
from ..errors import Forbidden, ProxyError
from ..http.message import RequestHead
from ..proxy.upstream import Origin
from .model import Route, Server, Sites
from .routes import hostOf
from .service import ARRIVAL, UPSTREAM, SitesService

__all__ = [
    "GroupUnavailable",
    "RouteNotFound",
    "SitesRouting",
    "TooManyRequests",
]

#: How many (Host, path) pairs L{SitesRouting} remembers the route of.
_KNOWN_ROUTES = 4096

_UNKNOWN = object()

_IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"])


class RouteNotFound(ProxyError):
    """
    No route matches the request's Host and path.
    """

    status = 404


class TooManyRequests(ProxyError):
    """
    The client went over the rate limit of its route.
    """

    status = 429

    def __init__(self, message: str, retryAfter: int) -> None:
        super().__init__(message)
        self.headers = ((b"Retry-After", b"%d" % max(1, retryAfter)),)


class GroupUnavailable(ProxyError):
    """
    No server of the route's group is up (or every one failed to connect).
    """

    status = 503


class SitesRouting:
    """
    The proxy's side of L{SitesService}: routes requests, picks servers,
    keeps each route's settings and cache view.

    @ivar service: the L{SitesService}.
    """

    _log = Logger()

    def __init__(self, service: SitesService, factory) -> None:
        self.service = service
        self.factory = factory
        self._derivedFrom: Tuple[object, object] = (None, None)
        self._settings: Dict[str, object] = {}
        self._origins: Dict[str, Origin] = {}
        self._layers: Dict[str, object] = {}
        self._layerBase: Tuple[object, object, object] = (None, None, None)
        #: (Host, path) -> route (or None): the same URLs come again and
        #: again; emptied when full and on reload
        self._routes: Dict[Tuple[bytes, bytes], object] = {}

    def reload(self, sites: Sites) -> None:
        """
        Switch to new routes and groups; requests under way finish with
        what they started with.
        """
        self.service.reload(sites)
        self._derivedFrom = (None, None)
        self._layerBase = (None, None, None)

    def status(self) -> list:
        """
        @return: for the status page, each group with its balance method
            and its servers: URL, state (C{up}, C{down}, C{cooling},
            C{probing}) and requests outstanding.
        """
        service = self.service
        health = service.health
        groups = []
        for name, group in service.sites.groups.items():
            balancer = service._balancers.get(name)
            groups.append({
                "name": name,
                "balance": group.balance,
                "servers": [{
                    "url": server.url,
                    "state": health.state(server).value,
                    "outstanding": balancer.outstanding(server) if balancer is not None else 0,
                } for server in group.servers],
            })
        return groups

    # -- per route, derived once ------------------------------------------

    def _derive(self) -> None:
        factory = self.factory
        sites = self.service.sites
        base = factory.settings
        if self._derivedFrom[0] is sites and self._derivedFrom[1] is base:
            return
        from ..compress import CompressionSettings

        origins = {name: group.servers[0].origin for name, group in sites.groups.items()}
        settings = {}
        for route in sites.routes:
            changes = {"upstream": origins[route.group], "upstreamPath": b""}
            if route.preserveHost is not None:
                changes["preserveHost"] = route.preserveHost
            if route.requestHeaders is not None:
                changes["requestRules"] = route.requestHeaders
            if route.responseHeaders is not None:
                changes["responseRules"] = route.responseHeaders
            if route.compress is not None:
                changes["compression"] = (
                    (base.compression or CompressionSettings()) if route.compress else None)
            settings[route.name] = dataclasses.replace(base, **changes)
        self._origins = origins
        self._settings = settings
        self._routes = {}
        self._derivedFrom = (sites, base)

    def cacheFor(self, route: Route, cache):
        """
        @return: the cache layer requests of C{route} use: C{None} when the
            route says C{cache = false}, C{cache} itself when the route
            changes none of its settings, else a view of it with the
            route's settings.
        """
        if cache is None or route.cache is False:
            return None
        if route.minUses is None and route.refreshRules is None and route.maxObjectSize is None:
            return cache
        key = (self.service.sites, cache, cache.settings)
        if any(a is not b for a, b in zip(key, self._layerBase)):
            self._layers = {}
            self._layerBase = key
        view = self._layers.get(route.name)
        if view is None:
            settings = cache.settings
            changes: Dict[str, object] = {}
            if route.minUses is not None:
                changes["minUses"] = route.minUses
            if route.maxObjectSize is not None:
                changes["routeMaxObjectSize"] = route.maxObjectSize
            if route.refreshRules is not None:
                changes["options"] = dataclasses.replace(settings.options,
                                                         refreshRules=route.refreshRules)
            view = self._layers[route.name] = _RouteLayer(cache, dataclasses.replace(settings, **changes))
        return view

    # -- per request ---------------------------------------------------------

    def route(self, exchange, path: bytes) -> Tuple[Origin, bytes]:
        """
        Choose the route of C{exchange} (set on it with its settings).

        @return: the origin the request's head is built for (the first
            server of the group; L{attempt} puts the server picked in its
            place) and C{path}.
        @raise ProxyError: 404 without a route, 403 for a client outside
            the route's networks, 429 over its rate limit.
        """
        if self._derivedFrom[0] is not self.service.sites or \
                self._derivedFrom[1] is not self.factory.settings:
            self._derive()
        head = exchange.head
        host = head.headers.get(b"host")
        known = self._routes
        route = known.get((host, path), _UNKNOWN)
        if route is _UNKNOWN:
            route = self.service.route(host, path)
            if len(known) >= _KNOWN_ROUTES:
                known.clear()
            known[(host, path)] = route
        if route is None:
            shown = hostOf(host) if host else "(none)"
            raise RouteNotFound(f"no route for host {shown} and path "
                                f"{path.split(b'?', 1)[0].decode('latin-1')}")
        client = exchange.protocol.clientHost
        if route.access is not None and not route.access.hasHost(client):
            raise Forbidden(f"route {route.name} does not serve {client}")
        if route.rate is not None:
            verdict = self.service.limit(route, client, ARRIVAL)
            if not verdict.allowed:
                raise TooManyRequests(f"rate limit of route {route.name} reached",
                                      verdict.retryAfter)
        exchange.route = route
        exchange.routeSettings = self._settings[route.name]
        return self._origins[route.group], path

    def cacheTarget(self, exchange) -> Tuple[bytes, bytes]:
        """
        @return: the scheme and authority of a routed request's cache key:
            the site as its clients name it (their Host, lower case), so
            that two sites never share entries whichever servers serve
            them.
        """
        protocol = exchange.protocol
        host = exchange.head.headers.get(b"host")
        scheme = b"https" if protocol.isSecure() else b"http"
        if not host:
            return scheme, exchange.upstreamOrigin.authority()
        return scheme, host.strip().lower()

    def attempt(self, exchange, head: RequestHead, handler, tried: Sequence[Server] = ()):
        """
        Pick a server for one trip of C{exchange} upstream.

        @return: C{(origin, head, handler)} to send, or C{None} when the
            handler was told the request cannot go anywhere.
        """
        route = exchange.route
        service = self.service
        if not tried and route.rate is not None:
            verdict = service.limit(route, exchange.protocol.clientHost, UPSTREAM)
            if not verdict.allowed:
                handler.responseFailed(Failure(TooManyRequests(
                    f"rate limit of route {route.name} reached", verdict.retryAfter)), False)
                return None
        key = b""
        if service.group(route).balance == "consistent-hash":
            scheme, authority = self.cacheTarget(exchange)
            key = scheme + b"://" + authority + exchange.upstreamPath
        server = service.pick(route, key, tried)
        if server is None:
            group = route.group
            if tried:
                message = (f"no server of group {group!r} could be reached "
                           f"(tried {', '.join(s.url for s in tried)})")
            else:
                message = f"no server of group {group!r} is up"
            exchange._attempt = None
            handler.responseFailed(Failure(GroupUnavailable(message)), False)
            return None
        original = head
        if not exchange.routeSettings.preserveHost:
            # The server's own authority, set in place: the head is this
            # exchange's, and each trip sets it for its server.
            authority = server.origin.authority()
            headers = head.headers
            if headers.get(b"host") != authority:
                headers.set(b"Host", authority)
        if server.path and head.target.startswith(b"/"):
            head = RequestHead(head.method, server.path + head.target, head.version, head.headers)
        attempt = _Attempt(self, exchange, route, server, original, handler, tried)
        exchange._attempt = attempt
        service.started(route, server)
        return server.origin, head, attempt


class _Attempt:
    """
    One trip of a routed request to one server: tells the sites service
    how it went, and sends an idempotent request that could not connect to
    another server of the group.
    """

    def __init__(self, routing: SitesRouting, exchange, route: Route, server: Server,
                 head: RequestHead, handler, tried: Sequence[Server]) -> None:
        self.routing = routing
        self.exchange = exchange
        self.route = route
        self.server = server
        #: the head as the exchange gave it (before the server's Host and
        #: path prefix), for another server
        self.head = head
        self.handler = handler
        self.tried = tuple(tried) + (server,)
        self.sentAt = routing.service.reactor.seconds()
        self.done = False
        # The body and the end go straight through.
        self.responseInterim = handler.responseInterim
        self.responseBody = handler.responseBody
        self.responseEnd = handler.responseEnd
        self.requestBodyUnwanted = handler.requestBodyUnwanted

    def _finished(self, ok: bool) -> None:
        if not self.done:
            self.done = True
            service = self.routing.service
            service.finished(self.route, self.server, ok,
                             service.reactor.seconds() - self.sentAt)

    def abandon(self) -> None:
        """
        The exchange let go of this trip (its client left).
        """
        self._finished(True)

    def responseHead(self, head) -> None:
        self._finished(head.status < 500)
        self.handler.responseHead(head)

    def responseUpgraded(self, head, peer) -> None:
        self._finished(True)
        self.handler.responseUpgraded(head, peer)

    def responseFailed(self, reason: Failure, receivedAnything: bool) -> None:
        self._finished(False)
        exchange = self.exchange
        if (not receivedAnything and isinstance(reason.value, ProxyError) and reason.value.beforeSending
                and isinstance(reason.value, ProxyError)
                and exchange.head.method in _IDEMPOTENT
                and exchange._attempt is self):
            self.routing._log.info(
                "{server} of group {group}: {reason}; trying another server",
                server=self.server.url, group=self.route.group,
                reason=reason.getErrorMessage())
            exchange.upstream = None
            exchange.forward(None, self.head, self.handler, self.tried)
            return
        self.handler.responseFailed(reason, receivedAnything)


class _RouteLayer(CacheLayer):
    """
    A view of a cache layer with other settings: the same store, flights,
    remembered responses and counters.
    """

    def __init__(self, base: CacheLayer, settings) -> None:
        self.__dict__["_base"] = base
        self.__dict__["settings"] = settings

    def __getattr__(self, name):
        return getattr(self.__dict__["_base"], name)

    @property
    def _hotBytes(self):
        return self._base._hotBytes

    @_hotBytes.setter
    def _hotBytes(self, value):
        self._base._hotBytes = value
