# -*- test-case-name: tests.test_sites_balance -*-
"""
Choosing a server of a group for a request. No I/O, no clock.

Usage::

    balancer = makeBalancer(group, available=health.isUp)
    server = balancer.pick(cacheKey)            # None: no server is up
    balancer.started(server)
    ...
    balancer.finished(server, ok=True, latency=0.012)

C{pick(key, exclude=(...))} leaves out the servers already tried, so that
an idempotent request that failed on one server can be sent to another.
A server is a candidate when C{available(server)} is true and it is not
excluded; when none is, C{pick} returns C{None} and the caller answers 502
(it does not fall back to servers that are down).

The methods, by the group's C{balance} key:

  - C{round-robin} (L{SmoothWeightedRoundRobin}): nginx's smooth weighted
    round robin. Over a cycle of C{sum(weights)} picks each server is
    chosen exactly C{weight} times, interleaved rather than in runs.
  - C{least-outstanding} (L{LeastOutstanding}): the server with the
    fewest requests started and not finished, relative to its weight;
    ties are broken round robin.
  - C{consistent-hash} (L{ConsistentHash}): a ring of virtual nodes
    (L{VIRTUAL_NODES} per unit of weight) hashed from the server URLs; a
    key goes to the first node clockwise from its hash whose server is a
    candidate. A server going down moves only its own keys, each to the
    next server on the ring; when it comes back they return.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

from .model import Group, Server

__all__ = [
    "Balancer",
    "ConsistentHash",
    "LeastOutstanding",
    "SmoothWeightedRoundRobin",
    "VIRTUAL_NODES",
    "makeBalancer",
]

#: Points on the hash ring per unit of a server's weight.
VIRTUAL_NODES = 160

_ServerRef = Union[Server, str]


def _always(server: Server) -> bool:
    return True


def _url(server: _ServerRef) -> str:
    return server if isinstance(server, str) else server.url


class Balancer:
    """
    The common part: the servers, which are candidates, and the count of
    outstanding requests per server.

    @ivar group: the L{Group}.
    """

    def __init__(self, group: Group, available: Callable[[Server], bool] = _always) -> None:
        self.group = group
        self.servers: Tuple[Server, ...] = group.servers
        self._available = available
        self._outstanding: Dict[str, int] = {s.url: 0 for s in self.servers}

    def _candidates(self, exclude: Iterable[_ServerRef]) -> List[int]:
        """
        @return: the positions of the servers that are up and not excluded.
        """
        excluded = {_url(s) for s in exclude}
        return [
            i for i, s in enumerate(self.servers)
            if s.url not in excluded and self._available(s)
        ]

    def pick(self, key: bytes = b"", exclude: Iterable[_ServerRef] = ()) -> Optional[Server]:
        """
        @param key: the request's cache key (only consistent hashing reads
            it).
        @param exclude: servers (or their URLs) not to choose.
        @return: a server that is up and not excluded, or C{None}.
        """
        raise NotImplementedError()

    def started(self, server: _ServerRef) -> None:
        """
        A request was sent to C{server}.
        """
        url = _url(server)
        if url in self._outstanding:
            self._outstanding[url] += 1

    def finished(self, server: _ServerRef, ok: bool = True, latency: float = 0.0) -> None:
        """
        A request sent to C{server} is over (answered, or failed when not
        C{ok}) after C{latency} seconds.
        """
        url = _url(server)
        if self._outstanding.get(url, 0) > 0:
            self._outstanding[url] -= 1

    def outstanding(self, server: _ServerRef) -> int:
        """
        @return: the requests started on C{server} and not finished.
        """
        return self._outstanding.get(_url(server), 0)

    def takeOver(self, previous: "Balancer") -> None:
        """
        Carry the outstanding counts of the servers that stay from the
        balancer of the configuration before a reload.
        """
        for url in self._outstanding:
            self._outstanding[url] = previous._outstanding.get(url, 0)


class SmoothWeightedRoundRobin(Balancer):
    """
    nginx's smooth weighted round robin (C{ngx_http_upstream_get_peer}):
    every pick adds each candidate's weight to its current weight, chooses
    the candidate with the largest current weight and takes the sum of the
    candidates' weights off it.
    """

    def __init__(self, group: Group, available: Callable[[Server], bool] = _always) -> None:
        super().__init__(group, available)
        self._current = [0] * len(self.servers)

    def pick(self, key: bytes = b"", exclude: Iterable[_ServerRef] = ()) -> Optional[Server]:
        best = None
        total = 0
        for i in self._candidates(exclude):
            weight = self.servers[i].weight
            self._current[i] += weight
            total += weight
            if best is None or self._current[i] > self._current[best]:
                best = i
        if best is None:
            return None
        self._current[best] -= total
        return self.servers[best]


class LeastOutstanding(Balancer):
    """
    The candidate with the fewest outstanding requests per unit of weight;
    among equals, the first after the one chosen last.
    """

    def __init__(self, group: Group, available: Callable[[Server], bool] = _always) -> None:
        super().__init__(group, available)
        self._next = 0

    def pick(self, key: bytes = b"", exclude: Iterable[_ServerRef] = ()) -> Optional[Server]:
        candidates = self._candidates(exclude)
        if not candidates:
            return None
        count = len(self.servers)
        # Rotate so that ties go to the first candidate from _next on.
        candidates.sort(key=lambda i: (i - self._next) % count)
        best = min(
            candidates,
            key=lambda i: self._outstanding[self.servers[i].url] / self.servers[i].weight,
        )
        self._next = (best + 1) % count
        return self.servers[best]


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class ConsistentHash(Balancer):
    """
    A hash ring of L{VIRTUAL_NODES} points per unit of weight for each
    server, built from the server URLs (so two processes with the same
    configuration agree, and a server keeps its points when others are
    added or removed).
    """

    def __init__(self, group: Group, available: Callable[[Server], bool] = _always) -> None:
        super().__init__(group, available)
        ring = []
        for i, server in enumerate(self.servers):
            for n in range(VIRTUAL_NODES * server.weight):
                ring.append((_hash(f"{server.url}#{n}".encode()), i))
        ring.sort()
        self._points = [point for point, _ in ring]
        self._owners = [owner for _, owner in ring]

    def pick(self, key: bytes = b"", exclude: Iterable[_ServerRef] = ()) -> Optional[Server]:
        candidates = set(self._candidates(exclude))
        if not candidates:
            return None
        size = len(self._points)
        start = bisect_left(self._points, _hash(key))
        for step in range(size):
            owner = self._owners[(start + step) % size]
            if owner in candidates:
                return self.servers[owner]
        return None  # pragma: no cover (every server has points)


_METHODS = {
    "round-robin": SmoothWeightedRoundRobin,
    "least-outstanding": LeastOutstanding,
    "consistent-hash": ConsistentHash,
}


def makeBalancer(group: Group, available: Callable[[Server], bool] = _always,
                 previous: Optional[Balancer] = None) -> Balancer:
    """
    @param available: whether a server is up (L{Health.isUp}).
    @param previous: the group's balancer before a reload, whose
        outstanding counts carry over.
    @return: the L{Balancer} for the group's C{balance} method.
    """
    balancer = _METHODS[group.balance](group, available)
    if previous is not None:
        balancer.takeOver(previous)
    return balancer
