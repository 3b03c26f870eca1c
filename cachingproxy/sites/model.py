# -*- test-case-name: tests.test_sites_parse -*-
"""
What routes and origin groups are made of: frozen dataclasses, built by
L{cachingproxy.sites.parse} and read by the rest of the package.

A L{Sites} holds named L{Group}s of L{Server}s and an ordered tuple of
L{Route}s. A route sends the requests it matches (by Host and path) to one
group, optionally with its own caching, header, compression, access and
rate settings; C{None} in one of those fields means "as configured for the
whole proxy".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import FrozenSet, Mapping, Optional, Tuple

from ..proxy.upstream import Origin

__all__ = [
    "BALANCE_METHODS",
    "HealthCheck",
    "PassiveCheck",
    "RateLimit",
    "Route",
    "Group",
    "Server",
    "Sites",
]

#: The values of a group's C{balance} key.
BALANCE_METHODS = ("round-robin", "least-outstanding", "consistent-hash")


@dataclass(frozen=True)
class Server:
    """
    One origin server of a group.

    @ivar url: the URL as configured, normalised (scheme and host
        lowercase, the port always given, no trailing slash): what health
        state, metrics and log lines know the server by.
    @ivar origin: where connections go.
    @ivar path: a path prefix put before request targets (C{b""} for none),
        as with C{--upstream http://host/prefix}.
    @ivar weight: a share of the requests relative to the other servers of
        its group (1 or more).
    """

    url: str
    origin: Origin
    path: bytes = b""
    weight: int = 1

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class HealthCheck:
    """
    Active checks: a C{GET path} to every server of the group every
    C{interval} seconds.

    @ivar path: the request target of the check.
    @ivar interval: seconds between the start of two checks of a server.
    @ivar timeout: seconds a check may take, connecting included.
    @ivar expect: response statuses that count as a success.
    @ivar fall: consecutive failures that mark an up server down.
    @ivar rise: consecutive successes that mark a down server up.
    @ivar host: the Host field of the check, or C{None} for the server's
        own authority.
    """

    path: bytes = b"/"
    interval: float = 5.0
    timeout: float = 2.0
    expect: FrozenSet[int] = frozenset(range(200, 400))
    fall: int = 3
    rise: int = 2
    host: Optional[bytes] = None


@dataclass(frozen=True)
class PassiveCheck:
    """
    Passive checks, from the requests the proxy sends anyway: C{failures}
    connection failures or 5xx responses within C{window} seconds mark a
    server down for C{cooldown} seconds; then it is probed (with the
    group's active check, or given requests again when there is none).

    @ivar failures: failures within the window that mark a server down.
    @ivar window: seconds over which failures are counted.
    @ivar cooldown: seconds a server stays down before it is probed.
    """

    failures: int = 5
    window: float = 10.0
    cooldown: float = 30.0


@dataclass(frozen=True)
class Group:
    """
    Servers that serve the same content, and how to spread requests over
    them.

    @ivar name: the group's name, as in C{[groups.NAME]}.
    @ivar servers: the servers, in configured order.
    @ivar balance: one of L{BALANCE_METHODS}.
    @ivar health: the active check, or C{None} for none.
    @ivar passive: the passive check, or C{None} for none.
    """

    name: str
    servers: Tuple[Server, ...]
    balance: str = "round-robin"
    health: Optional[HealthCheck] = None
    passive: Optional[PassiveCheck] = PassiveCheck()


@dataclass(frozen=True)
class RateLimit:
    """
    A token bucket per route and client address.

    @ivar perSecond: tokens added per second.
    @ivar burst: the bucket's size: requests allowed at once after a quiet
        spell.
    @ivar countHits: whether requests answered from the cache take a token
        too (when false, only those that go to an origin do).
    """

    perSecond: float
    burst: int
    countHits: bool = True


@dataclass(frozen=True)
class Route:
    """
    Requests for some hosts and a path prefix, and the group that serves
    them.

    @ivar hosts: lowercase host names without port, or C{*.domain} (any
        name with one or more labels before C{.domain}); empty for every
        host.
    @ivar path: a path prefix (see L{cachingproxy.sites.routes} for how it
        matches).
    @ivar group: the name of the group.
    @ivar name: how log lines and metrics call the route: its C{name} key,
        or C{routes[N]} (0-based), or C{default-route}.
    @ivar cache: whether responses are cached, or C{None}.
    @ivar minUses: C{--min-uses} for this route, or C{None}.
    @ivar maxObjectSize: C{--max-object-size} in bytes, or C{None}.
    @ivar refreshRules: L{cachingproxy.cache.policy.RefreshRule}s, or C{None}.
    @ivar requestHeaders: L{cachingproxy.rules.HeaderRules} for requests
        going upstream, or C{None}.
    @ivar responseHeaders: the same for responses to clients, or C{None}.
    @ivar compress: whether responses are compressed, or C{None}.
    @ivar preserveHost: whether the client's Host goes upstream, or
        C{None}.
    @ivar access: the client L{cachingproxy.access.Networks} allowed, or
        C{None}.
    @ivar rate: the L{RateLimit}, or C{None}.
    """

    hosts: Tuple[str, ...]
    path: bytes
    group: str
    name: str = ""
    cache: Optional[bool] = None
    minUses: Optional[int] = None
    maxObjectSize: Optional[int] = None
    refreshRules: Optional[Tuple[object, ...]] = None
    requestHeaders: Optional[object] = None
    responseHeaders: Optional[object] = None
    compress: Optional[bool] = None
    preserveHost: Optional[bool] = None
    access: Optional[object] = field(default=None, compare=False)
    rate: Optional[RateLimit] = None

    @property
    def matchesEverything(self) -> bool:
        """
        Whether every request matches this route (no hosts, path C{/}).
        """
        return not self.hosts and self.path == b"/"


@dataclass(frozen=True)
class Sites:
    """
    Everything parsed from C{[groups.*]}, C{[[routes]]} and
    C{default-route}.

    @ivar groups: C{{name: Group}}.
    @ivar routes: the routes in configured order, C{default-route} last
        when there is one. A request no route matches is answered 404.
    """

    groups: Mapping[str, Group]
    routes: Tuple[Route, ...]

    def servers(self) -> Tuple[Server, ...]:
        """
        @return: every server of every group, each URL once.
        """
        seen = {}
        for group in self.groups.values():
            for server in group.servers:
                seen.setdefault(server.url, server)
        return tuple(seen.values())
