# -*- test-case-name: tests.test_sites_ratelimit -*-
"""
Rate limits per route and client address: a token bucket each.

Usage::

    limiter = RateLimiter(reactor)
    verdict = limiter.take(route.name, clientKey(clientAddress), route.rate)
    if not verdict.allowed:
        # answer 429 with Retry-After: verdict.retryAfter

A bucket holds up to C{burst} tokens and gains C{perSecond} of them a
second; a request takes one, or is refused with the whole seconds until
the next token (at least 1). Time comes from the injected
L{IReactorTime}.

Memory is bounded: buckets are kept in least recently used order, a bucket
idle long enough to be full again is dropped (a new one would be the same),
and beyond C{maxBuckets} the least recently used is dropped even if it is
not full (its client starts again with a full bucket). When a route's
C{count-hits} is false the caller takes a token only for requests that go
to an origin.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, List

from .model import RateLimit

__all__ = ["MAX_BUCKETS", "RateLimiter", "Verdict", "clientKey"]

#: Buckets kept at most, by default.
MAX_BUCKETS = 100_000


@dataclass(frozen=True)
class Verdict:
    """
    @ivar allowed: whether the request may go on.
    @ivar retryAfter: when refused, whole seconds until a token is there
        (1 or more), for C{Retry-After}; 0 when allowed.
    """

    allowed: bool
    retryAfter: int = 0


_ALLOWED = Verdict(True)


def clientKey(host: str) -> str:
    """
    @param host: a client's address as the transport gives it.
    @return: what its bucket is kept by: an IPv4 address as it is (an
        IPv4-mapped IPv6 address as its IPv4 form), an IPv6 address as its
        /64 network (one subscriber usually has a whole /64 to rotate
        through), anything else (a UNIX socket's peer) as it is.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class RateLimiter:
    """
    Token buckets keyed by C{(route, client)}.
    """

    def __init__(self, clock, maxBuckets: int = MAX_BUCKETS) -> None:
        """
        @param clock: an L{IReactorTime}.
        @param maxBuckets: how many buckets are kept at most.
        """
        self._clock = clock
        self.maxBuckets = maxBuckets
        # key -> [tokens, last update, time when full again]
        self._buckets: "OrderedDict[Hashable, List[float]]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, route: Hashable, client: Hashable, rate: RateLimit) -> Verdict:
        """
        Take a token from the bucket of C{(route, client)}.

        @return: whether the request is allowed and, if not, when to retry.
        """
        now = self._clock.seconds()
        key = (route, client)
        bucket = self._buckets.get(key)
        if bucket is None:
            tokens = float(rate.burst)
        else:
            tokens = min(float(rate.burst), bucket[0] + (now - bucket[1]) * rate.perSecond)
            self._buckets.move_to_end(key)
        if tokens >= 1.0:
            tokens -= 1.0
            verdict = _ALLOWED
        else:
            wait = (1.0 - tokens) / rate.perSecond
            # Whole seconds, rounded up; 1e-9 absorbs float noise so that
            # an exact 2.0 is not read as 2.0000000001 and made 3.
            verdict = Verdict(False, max(1, math.ceil(wait - 1e-9)))
        fullAt = now + (rate.burst - tokens) / rate.perSecond
        if bucket is None:
            self._buckets[key] = [tokens, now, fullAt]
        else:
            bucket[:] = [tokens, now, fullAt]
        self._evict(now)
        return verdict

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            key, oldest = next(iter(buckets.items()))
            if oldest[2] <= now or len(buckets) > self.maxBuckets:
                del buckets[key]
            else:
                break
