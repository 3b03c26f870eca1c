# -*- test-case-name: tests.test_cache_end_to_end -*-
"""
The cache in front of the upstream: L{CacheLayer} asks
L{cachingproxy.cache.policy} what to do with each request and does it with the
store and the upstream pool.

For every request the connection hands over (L{CacheLayer.handle}):

  - PURGE removes stored responses (admin clients only);
  - GET and HEAD are looked up; L{policy.decide} answers with a decision,
    and one small method here carries each decision out: serve a stored
    response (L{Fresh}, L{Stale}), serve it and refresh it in the background
    (L{StaleWhileRevalidate}), validate it upstream (L{Revalidate}), or
    fetch and maybe store (L{Miss});
  - anything else is forwarded (L{Pass}), and a successful unsafe request
    invalidates what it may have changed (RFC 9111 section 4.4).

Concurrent misses for one key make one upstream request (collapsed
forwarding, L{cachingproxy.cache.collapse}).

The layer sees an exchange only through
L{cachingproxy.proxy.interfaces.ICacheExchange}.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import policy
from .collapse import Busy, Flight, Waited
from .store import ABSENT, IStore, StoreFull
from ..errors import BadGateway, GatewayTimeout, ProxyError, upstreamError
from ..http import wire
from ..http.message import RequestHead, ResponseHead, logText
from ..compress import compressWhole, negotiate
from ..proxy.interfaces import ICacheExchange
from ..proxy.states import X_FORWARDING, X_RESPONDING
from ..compress import compressedFields, compressionPlan
from ..proxy.upstream import Origin
from ..service.config import fromSetting

__all__ = ["CacheLayer", "CacheSettings", "NOT_PLAIN"]

#: Bodies up to this size are read whole and sent with their head (and are
#: what the hot path remembers, each coding compressed once).
_SMALL_BODY = 256 * 1024

#: Request fields that take a request off the hot path (their meaning is
#: for the policy to work out).
NOT_PLAIN = frozenset(
    [
        b"cache-control",
        b"pragma",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
        b"range",
        b"authorization",
    ]
)

#: Fields that change from one hit to the next.
_PER_HIT = frozenset([b"age", b"cache-status", b"x-cache"])

#: Bounds of the hot path's memory.
_HOT_ENTRIES = 10000
_HOT_BYTES = 32 * 1024 * 1024

#: How many keys are remembered as answered with responses not stored.
_UNSTORED_KEYS = 10000

_CACHE_CONTROL = frozenset([b"cache-control"])

#: L{policy.decide} for a plain GET with nothing stored.
_ABSENT_MISS = policy.Miss("nothing stored for the URI", "uri-miss")


@dataclass(frozen=True)
class _Passing:
    """
    A key whose plain GET found nothing stored and whose response the
    policy refused to store, for a reason that its status and
    Cache-Control alone decide (C{no-store}, or C{private} in this shared
    cache): its next plain GETs go upstream without a lookup, a fill or
    the storing policy while the store's stamp for the key is unchanged
    (nothing was stored or removed meanwhile, by any process), and as
    long as the origin answers with that same status and Cache-Control:
    a response that says something else goes through the usual miss path
    (Varnish's hit-for-miss, checked on every request and response).
    """

    #: the store's stamp for the key when it was found empty
    stamp: object
    status: int
    cacheControl: bytes
    #: the refusal, for Cache-Status
    detail: bytes
    #: Cache-Status's fwd parameter
    fwd: str
    #: the Cache-Status and X-Cache fields of such a response (lowered
    #: triples)
    fields: tuple
    #: the names a response's fields are looked through for: Cache-Control
    #: and those taken out before it goes downstream
    watched: frozenset


class _Hot:
    """
    A fresh stored response remembered for plain GETs: its head without
    Age and Cache-Status, its body, and the bytes last sent (rebuilt once a
    second, as Age changes).
    """

    __slots__ = ("stamp", "check", "freshUntil", "ageBase", "lifetime", "codings", "variants",
                 "size")


class _HotVariant:
    """
    One representation of a remembered response (identity, or a
    compressed coding): its head without the per-hit fields, its body, and
    the bytes last sent.
    """

    __slots__ = ("prefix", "body", "age", "wire")

    def __init__(self, prefix: bytes, body: bytes) -> None:
        self.prefix = prefix
        self.body = body
        self.age = None
        self.wire = b""


def _hotPrefix(fields, length: int, via: bytes) -> bytes:
    return wire.headPrefix(200, b"", [
        *fields,
        (b"content-length", b"Content-Length", b"%d" % length),
        (b"via", b"Via", b"1.1 " + via),
    ])


@functools.lru_cache(maxsize=8192)
def _primaryKey(scheme: bytes, authority: bytes, target: bytes) -> bytes:
    """
    L{policy.primaryKey}, remembered: the same URLs are asked for again
    and again.
    """
    return policy.primaryKey(scheme, authority, target)


#: L{negotiate}, remembered: clients send few Accept-Encoding values.
_negotiated = functools.lru_cache(maxsize=1024)(negotiate)


@functools.lru_cache(maxsize=1024)
def _missStatus(*args) -> bytes:
    """
    L{policy.cacheStatus} without a C{ttl} (a miss or a pass), remembered:
    few combinations recur.
    """
    return policy.cacheStatus(*args)


@dataclass(frozen=True)
class CacheSettings:
    """
    @ivar options: the L{policy.CacheOptions}.
    @ivar minUses: store an object only from its Nth request on.
    @ivar cacheStatus: add a C{Cache-Status} field (RFC 9211).
    @ivar xCache: add an C{X-Cache} field (HIT, MISS, ...).
    @ivar name: this cache's name in Cache-Status.
    @ivar collapse: collapsed forwarding of concurrent misses.
    @ivar collapseWait: at most how many seconds a miss waits for the fill
        of its key by another process (see L{CacheLayer.fillLock}).
    """

    options: policy.CacheOptions = policy.DEFAULT_OPTIONS
    minUses: int = fromSetting("min-uses")
    cacheStatus: bool = True
    xCache: bool = fromSetting("no-x-cache")
    name: bytes = b"cachingproxy"
    collapse: bool = fromSetting("no-collapse")
    collapseWait: float = fromSetting("collapse-wait")
    #: the largest body stored (a route's C{max-object-size}), or C{None}
    #: for the store's own limit
    routeMaxObjectSize: Optional[int] = None


class _Stats:
    """
    Counters for the status page and metrics.
    """

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.revalidated = 0
        self.stale = 0
        self.passed = 0
        self.stored = 0
        self.collapsed = 0
        self.purged = 0


class CacheLayer:
    """
    Composes the policy, a store and the upstream pool.

    @ivar store: the L{IStore}.
    @ivar stats: counters.
    @ivar housekeeping: the store's housekeeping (a
        L{twisted.internet.task.LoopingCall} of L{IStore.rescan}) that the
        service starts and stops with the listening port, or C{None}.
    @ivar fillLock: the cross-process step of collapsed forwarding (an
        L{cachingproxy.cache.collapse.IFillLock} shared with the other
        processes of the store), or C{None} to collapse within this
        process only.
    """

    _log = Logger()
    housekeeping: Optional[LoopingCall] = None
    fillLock = None
    #: the fleet tier (L{cachingproxy.cache.fleettier.FleetTier}) behind
    #: the local store, or C{None}
    fleet = None
    #: the local L{cachingproxy.cache.fleettier.TagIndex}, or C{None}
    tagIndex = None
    #: the response field carrying purge tags (lower case), or C{None}
    tagField: Optional[bytes] = None
    #: stored fields never sent to clients (lower case)
    hiddenFields: frozenset = frozenset([b"cachingproxy-fleet-object"])

    def __init__(self, store: IStore, reactor, pool, settings: CacheSettings = CacheSettings()):
        self.store = store
        self.reactor = reactor
        self.pool = pool
        self.settings = settings
        # (see _downstreamWatched)
        self._watched: Optional[tuple] = None
        self.stats = _Stats()
        self._flights: Dict[bytes, Flight] = {}
        self._refreshing: set = set()
        self._uses: "OrderedDict[bytes, int]" = OrderedDict()
        #: key -> L{_Hot}: fresh responses remembered for plain GETs
        self._hot: "OrderedDict[bytes, _Hot]" = OrderedDict()
        self._hotBytes = 0
        self._plainMiss = b"GET" in settings.options.cacheableMethods
        #: keys whose latest response was not stored (least recent first):
        #: their misses go upstream at once, not collapsed
        self._unstored: "OrderedDict[bytes, None]" = OrderedDict()
        #: key -> L{_Passing} (least recent first)
        self._passing: "OrderedDict[bytes, _Passing]" = OrderedDict()

    #: the primary key of a target at a scheme and authority, remembered
    #: (C{primaryKey(scheme, authority, target)})
    primaryKey = staticmethod(_primaryKey)

    @property
    def hotTable(self) -> "OrderedDict[bytes, _Hot]":
        """
        The fresh responses remembered for plain GETs, by key: to be looked
        in only (L{hotAnswer} answers from it).
        """
        return self._hot

    @property
    def passTable(self) -> "OrderedDict[bytes, _Passing]":
        """
        The keys whose plain GETs go upstream without a lookup, with what
        was remembered of each: to be looked in only (L{passing} and
        L{forwardPassing} act on what is found in it).
        """
        return self._passing

    # -- entry point ---------------------------------------------------------

    def handle(self, exchange: ICacheExchange, origin: Origin, path: bytes) -> None:
        """
        Answer C{exchange}, whose request goes to C{origin} for C{path}
        (C{exchange.upstreamHead()} builds the whole request when needed).
        """
        method = exchange.head.method
        target = exchange.cacheTarget(origin)
        if target is None:
            # Another target URI than the origin's own, which the key
            # cannot name (RFC 9110 section 7.1).
            head = exchange.upstreamHead()
            key = _primaryKey(origin.scheme, origin.authority(), path)
            if method in (b"GET", b"HEAD"):
                self._pass(exchange, origin, head, key, b"forwarding fields disagree")
                return
        else:
            head = None
            key = _primaryKey(target[0], target[1], path)
        if exchange.hasBody and method in (b"GET", b"HEAD"):
            # The key says nothing of content, which the origin may answer
            # differently (RFC 9110 sections 9.3.1 and 9.3.2 give it no
            # meaning): neither served from nor stored in the cache.
            self._pass(exchange, origin, head or exchange.upstreamHead(), key,
                       b"request content")
            return
        if method == b"GET":
            if key in self._hot and self._serveHot(exchange, exchange.head, key):
                return
            passing = self._passing.get(key)
            if passing is not None and exchange.plainKeepAlive() \
                    and not exchange.head.headers.hasAny(NOT_PLAIN) \
                    and self.passing(key, passing):
                self.forwardPassing(exchange, origin, key, passing)
                return
        if head is None:
            head = exchange.upstreamHead()
        if method == b"PURGE":
            self._purge(exchange, key)
            return
        exchange.cacheOrigin = origin
        exchange.cacheHead = head
        if method not in (b"GET", b"HEAD"):
            self.stats.passed += 1
            exchange.forward(origin, head, _Invalidator(self, exchange, head, key))
            return
        stamp = exchange.cacheStamp = self._stampFor(exchange, head, key)
        if stamp is ABSENT:
            # The store said, just now, that nothing is stored for the key.
            entries = []
        else:
            try:
                entries = self.store.entries(key)
            except Exception:
                self._log.failure("cache lookup failed for {key}", key=logText(key))
                entries = []
        exchange.cacheEntries = entries
        now = self.reactor.seconds()
        if stamp is ABSENT and self._plainMiss:
            # A plain GET (see L{_stampFor}) and nothing stored: what the
            # policy would say.
            decision = _ABSENT_MISS
        else:
            decision = policy.decide(head, entries, now, self.settings.options)
        kind = type(decision)
        if kind is policy.Fresh:
            self.stats.hits += 1
            self._serve(exchange, head, decision.entry, decision.age, decision.ttl, hit=True,
                        xcache=b"HIT")
        elif kind is policy.Stale:
            self.stats.stale += 1
            self._serve(exchange, head, decision.entry, decision.age, decision.ttl, hit=True,
                        xcache=b"STALE")
        elif kind is policy.StaleWhileRevalidate:
            self.stats.stale += 1
            self._serve(exchange, head, decision.entry, decision.age, decision.ttl, hit=True,
                        xcache=b"STALE")
            self._refreshInBackground(origin, head, key, decision, entries)
        elif kind is policy.Revalidate:
            self._revalidate(exchange, origin, head, key, decision, entries)
        elif kind is policy.Miss:
            if self.fleet is not None:
                self._consultFleet(exchange, origin, head, key, decision)
                return
            self.stats.misses += 1
            self._fetch(exchange, origin, head, key, decision.fwd)
        elif kind is policy.OnlyIfCachedMiss:
            self.stats.misses += 1
            exchange.respondError(GatewayTimeout("only-if-cached and nothing usable is stored"))
        else:
            self.stats.passed += 1
            exchange.forward(origin, head, _Invalidator(self, exchange, head, key))

    def passing(self, key: bytes, passing: _Passing) -> bool:
        """
        Whether C{passing}, found in L{passTable} for C{key}, still holds:
        the store's stamp for the key is the one read when nothing was
        found stored for it (nothing was stored or removed since, by any
        process).
        """
        return self.store.stamp(key) == passing.stamp

    def forwardPassing(self, exchange: ICacheExchange, origin: Origin, key: bytes,
                       passing: _Passing) -> None:
        """
        Forward a plain GET (see L{_stampFor}) for C{key}, remembered as
        C{passing} and found to hold still (L{passing}), without a lookup:
        its response goes through a L{_KnownPass}. The client connection
        calls it directly for a request it can tell is plain as soon as its
        head is read (L{cachingproxy.proxy.connection}'s lane), and
        L{handle} for one that came the long way.
        """
        self.stats.misses += 1
        head = exchange.cacheHead = exchange.upstreamHead()
        exchange.cacheOrigin = origin
        exchange.forward(origin, head, _KnownPass(self, exchange, head, key, passing))

    def _pass(self, exchange: ICacheExchange, origin: Origin, head: RequestHead, key: bytes,
              detail: bytes) -> None:
        """
        Forward a GET or HEAD the cache must not answer and whose response
        it must not store; Cache-Status says why (RFC 9211 section 2.9).
        """
        self.stats.passed += 1
        exchange.cacheOrigin = origin
        exchange.cacheHead = head
        exchange.forward(origin, head, _Invalidator(self, exchange, head, key, detail))

    # -- the hot path -----------------------------------------------------

    def _stampFor(self, exchange: ICacheExchange, head: RequestHead, key: bytes) -> object:
        """
        Before a lookup: the store's stamp for C{key} if what the lookup
        finds may be remembered for the hot path (a plain GET on a
        kept-alive HTTP/1.1 connection), else C{None}.
        """
        if (
            head.method != b"GET"
            or not exchange.plainKeepAlive()
            or head.headers.hasAny(NOT_PLAIN)
        ):
            return None
        return self.store.stamp(key)

    def _serveHot(self, exchange: ICacheExchange, head: RequestHead, key: bytes) -> bool:
        """
        Answer a plain GET from a remembered fresh response without asking
        the policy again (see L{hotAnswer}).

        @return: whether it answered.
        """
        if not exchange.plainKeepAlive() or head.headers.hasAny(NOT_PLAIN):
            return False
        variant = self.hotAnswer(key, head.headers)
        if variant is None:
            return False
        exchange.cacheResult = "HIT"
        exchange.serveBytes(200, variant.wire, len(variant.body))
        return True

    def hotAnswer(self, key: bytes, headers) -> Optional[_HotVariant]:
        """
        The answer to a plain GET for C{key} (an HTTP/1.1 keep-alive
        request without a body, without any of the fields L{NOT_PLAIN}
        names) from a remembered fresh response, counted as a hit: valid
        while the store's stamp for the key is the one read before the
        lookup that found it, and while it is fresh (for such a request,
        L{policy.decide} would say L{policy.Fresh}). The client connection
        calls it directly for a request it can tell is plain as soon as
        its head is read (L{cachingproxy.proxy.connection}'s hot lane).

        @param headers: the request's L{Headers} (for Accept-Encoding).
        @return: the variant whose C{wire} bytes (C{len(body)} bytes of
            body) answer, or C{None} when nothing is remembered for
            C{key} or it may no longer be used.
        """
        hot = self._hot.get(key)
        if hot is None:
            return None
        now = self.reactor.seconds()
        if now >= hot.freshUntil or hot.check() != hot.stamp:
            del self._hot[key]
            return None
        age = int(hot.ageBase + now)
        if hot.codings:
            variant = hot.variants[_negotiated(headers.get(b"accept-encoding"), hot.codings)]
        else:
            variant = hot.variants[None]
        if age != variant.age:
            variant.age = age
            tail = self._statusFields([(b"age", b"Age", b"%d" % age)], True, None, None,
                                      hot.lifetime - age, b"HIT")
            variant.wire = wire.finishHead(variant.prefix, tail, variant.body)
        self.stats.hits += 1
        return variant

    def _remember(self, exchange: ICacheExchange, entry: policy.StoredEntry, fields,
                  body: bytes) -> None:
        """
        After serving a fresh hit the slow way: remember it for the hot
        path when that is sound (see L{_stampFor}; no Vary, a 200).
        """
        stamp = exchange.cacheStamp
        if stamp is None or entry.status != 200 or b"vary" in entry.responseHeaders:
            return
        options = self.settings.options
        lifetime = policy.freshnessLifetime(entry.responseHead, options, entry.responseTime,
                                            entry.key)
        initial = policy.currentAge(entry.responseHeaders, entry.requestTime,
                                    entry.responseTime, entry.responseTime)
        ageBase = initial - entry.responseTime
        hot = _Hot()
        hot.stamp = stamp
        hot.check = self.store.stamper(entry.key)
        hot.freshUntil = lifetime - ageBase
        hot.ageBase = ageBase
        hot.lifetime = lifetime
        fields = exchange.sharedFields(fields)
        if fields is None:
            # Rewritten to the Host of the client served: a head for that
            # client only.
            return
        via, compression = exchange.hotFacts()
        hot.codings = ()
        if compression is not None:
            fields, _, compressible = compressionPlan(compression, fields, True, None)
            if compressible:
                hot.codings = compression.codings
        hot.variants = {None: _HotVariant(_hotPrefix(fields, len(body), via), body)}
        for coding in hot.codings:
            # Compressed once here: a hit on a compressed variant costs no
            # compression.
            packed = compressWhole(coding, body, compression)
            hot.variants[coding] = _HotVariant(
                _hotPrefix(compressedFields(fields, coding), len(packed), via), packed)
        hot.size = sum(len(v.prefix) + len(v.body) + 256 for v in hot.variants.values())
        hot_ = self._hot
        old = hot_.pop(entry.key, None)
        if old is not None:
            self._hotBytes -= old.size
        hot_[entry.key] = hot
        self._hotBytes += hot.size
        while hot_ and (self._hotBytes > _HOT_BYTES or len(hot_) > _HOT_ENTRIES):
            _, dropped = hot_.popitem(last=False)
            self._hotBytes -= dropped.size

    # -- serving stored responses ---------------------------------------------

    def _serve(self, exchange: ICacheExchange, request: RequestHead, entry: policy.StoredEntry,
               age: float, ttl: float, hit: bool, xcache: bytes,
               fwd: Optional[str] = None, fwdStatus: Optional[int] = None,
               detail: Optional[bytes] = None) -> None:
        """
        Answer from C{entry}: the client's own preconditions (RFC 9110
        section 13) and Range are answered here, Age is set (RFC 9111
        section 5.1).
        """
        exchange.cacheResult = xcache.decode("ascii")
        stored = entry.responseHeaders
        precondition = policy.evaluatePreconditions(
            request.headers, stored, request.method, entry.status, entry.responseTime
        )
        strip = policy.downstreamStripFields(stored, self.settings.options,
                                             validated=fwdStatus == 304) | self.hiddenFields
        status = entry.status
        start, end = 0, entry.bodyLength or 0
        extra: List[Tuple[bytes, bytes, bytes]] = []
        if precondition == 304:
            status = 304
            fields = [(n.lower(), n, v) for n, v in policy.notModifiedHeaders(stored).items()]
        elif precondition == 412:
            self._log.info("412 from cache for {target}", target=logText(request.target))
            exchange.respondWithBody(412, b"", self._statusFields([], hit, fwd, fwdStatus, ttl,
                                                                 b"HIT"), b"", 0)
            return
        else:
            fields = [
                (n.lower(), n, v)
                for n, v in stored.items()
                if n.lower() not in strip and n.lower() != b"content-length"
                and n.lower() != b"age"
            ]
            ranges = policy.rangeForStoredResponse(request, entry)
            if ranges == policy.UNSATISFIABLE:
                length = entry.bodyLength or 0
                exchange.respondWithBody(
                    416, b"",
                    self._statusFields([(b"content-range", b"Content-Range",
                                         b"bytes */%d" % length)], hit, fwd, fwdStatus, ttl,
                                       xcache),
                    b"", 0,
                )
                return
            if ranges and len(ranges) == 1:
                first, last = ranges[0]
                status = 206
                start, end = first, last + 1
                total = entry.bodyLength
                if entry.ranges is not None:
                    # An incomplete entry: its body holds only its ranges.
                    total = entry.completeLength
                    start = policy.partialBodyOffset(entry, first)
                    end = start + last + 1 - first
                extra.append((b"content-range", b"Content-Range",
                              b"bytes %d-%d/%d" % (first, last, total)))
            elif entry.ranges is not None:
                # Never served as a complete response (RFC 9111 section
                # 3.3); the policy selects it only for a range it holds.
                self._fetchAgain(exchange, entry.key)
                return
            elif ranges:
                self._serveMultipart(exchange, entry, fields, ranges, age, hit, fwd, fwdStatus,
                                     ttl, xcache)
                return
        fields.append((b"age", b"Age", policy.ageHeaderValue(age)))
        fields.extend(extra)
        fields = self._statusFields(fields, hit, fwd, fwdStatus, ttl, xcache, detail=detail)
        if status == 304 or request.method == b"HEAD":
            exchange.respondWithBody(status, b"", fields, None, end - start)
            return
        length = end - start
        reader = self.store.openBody(entry, start, end)
        if reader is None:
            # Gone or damaged since the lookup: fetch it.
            self._log.info("stored body for {key} unreadable; fetching", key=logText(entry.key))
            self._fetchAgain(exchange, entry.key)
            return
        if length <= _SMALL_BODY:
            try:
                body = reader.read(length) if length else b""
            except OSError:
                body = None
            reader.close()
            if body is None or len(body) != length:
                self._log.warn("stored body for {key} is short; removing it", key=logText(entry.key))
                self.store.remove(entry.key)
                self._fetchAgain(exchange, entry.key)
                return
            if status == 200 and hit and fwd is None and request.method == b"GET":
                self._remember(exchange, entry, [f for f in fields if f[0] not in _PER_HIT],
                               body)
            exchange.respondWithBody(status, b"", fields, body, length)
        else:
            exchange.respondWithBody(status, b"", fields, reader, length)

    def _serveMultipart(self, exchange: ICacheExchange, entry, fields, ranges, age, hit, fwd,
                        fwdStatus, ttl, xcache) -> None:
        """
        Several ranges: a multipart/byteranges body (RFC 9110 section
        14.6), built in memory (ranges of one stored body, bounded in
        number by the policy).
        """
        boundary = b"cachingproxy-%x" % (id(exchange) ^ int(self.reactor.seconds() * 1000))
        contentType = entry.responseHeaders.get(b"content-type")
        parts = []
        total = entry.bodyLength
        for first, last in ranges:
            reader = self.store.openBody(entry, first, last + 1)
            if reader is None:
                self._fetchAgain(exchange, entry.key)
                return
            data = reader.read(last + 1 - first)
            reader.close()
            part = [b"--" + boundary]
            if contentType:
                part.append(b"Content-Type: " + contentType)
            part.append(b"Content-Range: bytes %d-%d/%d" % (first, last, total))
            parts.append(b"\r\n".join(part) + b"\r\n\r\n" + data + b"\r\n")
        body = b"".join(parts) + b"--" + boundary + b"--\r\n"
        fields = [f for f in fields if f[0] != b"content-type"]
        fields.append((b"content-type", b"Content-Type",
                       b"multipart/byteranges; boundary=" + boundary))
        fields.append((b"age", b"Age", policy.ageHeaderValue(age)))
        fields = self._statusFields(fields, hit, fwd, fwdStatus, ttl, xcache)
        exchange.respondWithBody(206, b"", fields, body, len(body))

    def _statusFields(self, fields, hit: bool, fwd: Optional[str], fwdStatus: Optional[int],
                      ttl: Optional[float], xcache: bytes, stored: bool = False,
                      collapsed: bool = False, detail: Optional[bytes] = None):
        settings = self.settings
        if settings.cacheStatus:
            if ttl is None:
                value = _missStatus(settings.name, hit, fwd, fwdStatus, None, stored,
                                    collapsed, None, detail)
            else:
                value = policy.cacheStatus(settings.name, hit=hit, fwd=fwd,
                                           fwdStatus=fwdStatus, ttl=ttl, stored=stored,
                                           collapsed=collapsed, detail=detail)
            fields.append((b"cache-status", b"Cache-Status", value))
        if settings.xCache:
            fields.append((b"x-cache", b"X-Cache", xcache))
        return fields

    def _fetchAgain(self, exchange: ICacheExchange, key: bytes) -> None:
        """
        A stored body vanished or was damaged between lookup and read:
        answer as a miss.
        """
        self.stats.misses += 1
        self._fetch(exchange, exchange.cacheOrigin, exchange.cacheHead, key, "miss")

    # -- fetching and storing ---------------------------------------------

    def _countUse(self, key: bytes) -> bool:
        """
        @return: whether this request reaches the admission threshold.
        """
        need = self.settings.minUses
        if need <= 1:
            return True
        uses = self._uses.pop(key, 0) + 1
        self._uses[key] = uses
        while len(self._uses) > 100000:
            self._uses.popitem(last=False)
        return uses >= need

    def _fetch(self, exchange: ICacheExchange, origin: Origin, head: RequestHead, key: bytes,
               fwd: str, detail: Optional[bytes] = None) -> None:
        """
        A miss: fetch, and store what may be stored. Concurrent misses for
        the same key wait for the first one.
        """
        admitted = self._countUse(key)
        conditional = head.headers.hasAny(policy.PRECONDITION_FIELDS)
        if conditional or not admitted or head.method != b"GET" \
                or not self.settings.collapse or key in self._unstored:
            # A range request's answer is stored too: a 206 as an
            # incomplete response, a 200 as a complete one (RFC 9111
            # section 3.3). A key whose last response was not stored is
            # not collapsed (the waiters would each go upstream after its
            # head anyway), and what it answers now is still stored if
            # the policy allows.
            store = admitted and head.method == b"GET" and (
                not conditional or policy.isRangeRequest(head.headers))
            handler = _Fill(self, exchange, head, key, fwd, store=store)
            handler.detail = detail
            exchange.forward(origin, head, handler)
            return
        flight = self._flights.get(key)
        if flight is not None and flight.accepts(head):
            self.stats.collapsed += 1
            flight.join(exchange)
            return
        flight = Flight(self, key, head)
        self._flights[key] = flight
        if self.fillLock is not None:
            flight.waitForLock(exchange, fwd, detail)
            return
        handler = _Fill(self, exchange, head, key, fwd, store=True, flight=flight)
        handler.detail = detail
        exchange.forward(origin, head, handler)

    def _lead(self, exchange: ICacheExchange, flight: Flight, lease) -> None:
        """
        C{flight} holds its key's fill lock (C{lease}): C{exchange} fetches
        for it, and ends the lease once it knows whether the response is
        stored.
        """
        head = exchange.cacheHead
        handler = _Fill(self, exchange, head, flight.key, flight.fwd, store=True,
                        flight=flight, lease=lease)
        handler.detail = flight.detail
        exchange.forward(exchange.cacheOrigin, head, handler)

    def _afterWait(self, exchange: ICacheExchange, key: bytes, busy: Busy) -> None:
        """
        A miss waited for another process's fill of C{key}: after a
        change, look the key up again through the policy (what was stored
        may not be usable for this request) and go upstream if nothing
        usable is there; after a pass marker, go upstream at once; after
        the wait ran out, go upstream and store nothing.
        """
        if exchange.state is not X_FORWARDING:
            return
        origin, head = exchange.cacheOrigin, exchange.cacheHead
        if busy.outcome is Waited.STORED:
            decision = self._decideAgain(exchange, head, key)
            kind = type(decision)
            if kind in (policy.Fresh, policy.Stale, policy.StaleWhileRevalidate):
                self._serve(exchange, head, decision.entry, decision.age, decision.ttl,
                            hit=True, xcache=b"HIT" if kind is policy.Fresh else b"STALE")
                return
            if kind is policy.Revalidate:
                self._revalidate(exchange, origin, head, key, decision, exchange.cacheEntries)
                return
        handler = _Fill(self, exchange, head, key, "miss",
                        store=busy.outcome is not Waited.TIMEOUT)
        exchange.forward(origin, head, handler)

    def _decideAgain(self, exchange: ICacheExchange, head: RequestHead, key: bytes):
        """
        Look C{key} up again once another fill may have stored it (another
        process's, the fleet's): the exchange's stamp and entries are
        renewed, and the policy decides anew for this request.
        """
        exchange.cacheStamp = self._stampFor(exchange, head, key)
        try:
            entries = self.store.entries(key)
        except Exception:
            self._log.failure("cache lookup failed for {key}", key=logText(key))
            entries = []
        exchange.cacheEntries = entries
        return policy.decide(head, entries, self.reactor.seconds(), self.settings.options)

    def _fetchUnshared(self, exchange: ICacheExchange, key: bytes) -> None:
        """
        A waiter of a collapsed fetch whose response is not shared: fetch
        on its own, storing nothing.
        """
        handler = _Fill(self, exchange, exchange.cacheHead, key, "miss", store=False)
        exchange.forward(exchange.cacheOrigin, exchange.cacheHead, handler)

    def _revalidate(self, exchange: ICacheExchange, origin: Origin, head: RequestHead, key: bytes,
                    decision: policy.Revalidate, entries) -> None:
        """
        Validate the stored response upstream (RFC 9111 section 4.3).
        """
        conditional = policy.stripPreconditions(head.headers)
        for name, value in decision.conditionalHeaders.items():
            conditional.add(name, value)
        upstreamHead = RequestHead(b"GET", head.target, head.version, conditional)
        handler = _Revalidator(self, exchange, head, key, decision, entries)
        exchange.forward(origin, upstreamHead, handler)

    def _refreshInBackground(self, origin: Origin, head: RequestHead, key: bytes,
                             decision: policy.StaleWhileRevalidate, entries) -> None:
        """
        RFC 5861 section 3: revalidate once in the background.
        """
        if key in self._refreshing:
            return
        self._refreshing.add(key)
        entry = decision.entry
        headers = policy.stripPreconditions(head.headers)
        for name, value in decision.conditionalHeaders.items():
            headers.add(name, value)
        upstreamHead = RequestHead(b"GET", head.target, (1, 1), headers)
        handler = _BackgroundRefresh(self, head, key, entry, entries)
        requestTime = self.reactor.seconds()
        handler.requestTime = requestTime
        d = self.pool.request(origin, upstreamHead, handler, False)

        def ready(upstream):
            upstream.finish()

        def failed(reason):
            self._refreshing.discard(key)
            self._log.info("background revalidation of {key} failed: {reason}",
                           key=logText(key), reason=reason.getErrorMessage())

        d.addCallbacks(ready, failed)

    # -- invalidation and purge -----------------------------------------------

    def invalidate(self, uris: Sequence[bytes]) -> None:
        """
        Remove what is stored for C{uris} (primary keys), after a response
        to an unsafe request (RFC 9111 section 4.4); with a fleet, also in
        Redis and every other proxy, without waiting for it.
        """
        for uri in uris:
            try:
                removed = self.store.remove(uri)
            except Exception:
                self._log.failure("invalidating {uri} failed", uri=logText(uri))
                continue
            if removed:
                self._log.debug("invalidated {uri}", uri=logText(uri))
        if self.fleet is not None and uris:
            try:
                self.fleet.invalidate(uris)
            except Exception:
                self._log.failure("invalidating {uris} in the fleet failed",
                                  uris=[logText(u) for u in uris])

    def _purge(self, exchange: ICacheExchange, key: bytes) -> None:
        # Who is an admin is the connection's (and the access policy's)
        # business: one answer for PURGE and the admin endpoints.
        if not exchange.fromAdmin():
            from ..errors import MethodNotAllowed

            exchange.respondError(MethodNotAllowed("PURGE is for admin addresses only"))
            return
        tags = self.tagsOf(exchange.head.headers)
        if tags:
            # PURGE with the tag field (Surrogate-Key: a b): every entry
            # carrying one of the tags, whatever its URL.
            kind, values = b"tag", tags
            d = succeed(sum(self.purgeTagLocally(tag) for tag in tags))
        elif key.endswith(b"*"):
            # A walk of the whole store, in steps: answered when done.
            kind, values = b"prefix", [key[:-1]]
            d = self.store.removePrefix(key[:-1])
        else:
            kind, values = b"key", [key]
            d = succeed(self.store.remove(key))
        if kind == b"tag":
            key = b"tag " + b" ".join(tags)

        def purged(removed: int) -> None:
            self.stats.purged += removed
            self._log.info("purged {n} entries for {key}", n=removed, key=logText(key))
            body = b"purged %d\n" % removed
            status = 200 if removed else 404
            exchange.respondWithBody(status, b"", [(b"content-type", b"Content-Type",
                                                    b"text/plain")], body, len(body))

        def failed(reason: Failure) -> None:
            self._log.failure("purging {key} failed", reason, key=logText(key))
            exchange.respondError(ProxyError("the purge failed"))

        if self.fleet is None:
            d.addCallbacks(purged, failed)
            return

        def everywhere(local: int):
            # Answered once Redis confirms, in the fleet and in its purge
            # log (which every other process follows).
            from twisted.internet.defer import gatherResults

            fleet = gatherResults([self.fleet.purge(kind, v) for v in values], consumeErrors=True)

            def confirmed(counts) -> None:
                purged(local + sum(counts))

            def unconfirmed(reason: Failure) -> None:
                error = getattr(reason.value, "subFailure", reason).getErrorMessage()
                self._log.warn("purge of {key}: the fleet did not confirm: {error}",
                               key=logText(key), error=error)
                self.stats.purged += local
                body = (b"purged %d here; the fleet did not confirm the purge (%s): "
                        b"other proxies may still serve it; try again\n"
                        % (local, error.encode("utf-8", "replace")))
                exchange.respondWithBody(503, b"", [(b"content-type", b"Content-Type",
                                                     b"text/plain")], body, len(body))

            fleet.addCallbacks(confirmed, unconfirmed)

        d.addCallbacks(everywhere, failed)

    # -- storing --------------------------------------------------------------

    def openWriter(self, key: bytes, request: RequestHead, response: ResponseHead):
        """
        @return: a writer for C{response} if it may be stored, else C{None}.
        """
        return self.writerOrDetail(key, request, response)[0]

    def writerOrDetail(self, key: bytes, request: RequestHead, response: ResponseHead):
        """
        @return: C{(writer, None)} if C{response} may be stored, C{(None,
            detail)} with the policy's reason for Cache-Status if not, or
            C{(None, None)} if the store declined.
        """
        allowed, why = policy.mayStore(request, response, self.settings.options, key)
        if not allowed:
            return None, why.encode("ascii", "replace")
        return self._openWriter(key, request, response), None

    def _openWriter(self, key: bytes, request: RequestHead, response: ResponseHead):
        try:
            variant = policy.secondaryKey(response.headers, request.headers)
        except Exception:
            return None
        if variant is None:
            return None
        try:
            writer = self.store.writer(key, variant)
        except Exception:
            self._log.failure("cannot start storing {key}", key=logText(key))
            return None
        if self.fleet is not None:
            writer = self.fleet.wrap(writer, key, variant, request)
        return writer

    def commit(self, writer, key: bytes, request: RequestHead, response: ResponseHead,
               requestTime: float, responseTime: float, length: Optional[int],
               ranges=None, completeLength: Optional[int] = None,
               previous: Optional[policy.StoredEntry] = None) -> bool:
        """
        Make what C{writer} wrote visible as the entry for C{response}.

        @param ranges: for an incomplete response (RFC 9111 section 3.3),
            the ranges of the representation written, in order; see
            L{policy.partialEntry} (with C{completeLength} and the
            C{previous} entry it was combined with).
        """
        options = self.settings.options
        entry = policy.StoredEntry.fromExchange(
            key, request, response, requestTime, responseTime, length,
            options=options,
        )
        if ranges is not None:
            entry = policy.partialEntry(entry, ranges, completeLength, previous, options)
        try:
            ok = writer.commit(entry)
        except Exception:
            self._log.failure("storing {key} failed", key=logText(key))
            ok = False
        if ok:
            self.stats.stored += 1
            self._unstored.pop(key, None)
            if self.tagIndex is not None:
                self._indexTags(entry)
        return ok

    def notStored(self, key: bytes) -> None:
        """
        The response just fetched for C{key} is not being stored: its next
        misses are not collapsed (see L{_fetch}).
        """
        unstored = self._unstored
        unstored[key] = None
        unstored.move_to_end(key)
        if len(unstored) > _UNSTORED_KEYS:
            unstored.popitem(last=False)
        if self.fleet is not None:
            # Other proxies waiting for it go to the origin at once.
            self.fleet.release(key, passMarker=True)

    def rememberPass(self, key: bytes, stamp: object, head: ResponseHead, detail: bytes,
                     fwd: str) -> None:
        """
        A plain GET of C{key} found nothing stored (the store's stamp for
        the key was C{stamp}), and its response C{head} may not be stored
        (C{detail} says why): remember it as an L{_Passing} if its status
        and Cache-Control alone decide that.
        """
        cacheControl = head.headers.getCombined(b"cache-control")
        if cacheControl is None or head.headers.hasAny(
                self.settings.options.consumedTargetedFields):
            # (a targeted field meant for this cache decides, not
            # Cache-Control: RFC 9213 section 2.2)
            return
        lowered = cacheControl.lower()
        if b"must-understand" in lowered or (
                b"no-store" not in lowered and b"private" not in lowered):
            return
        fields = tuple(self._statusFields([], False, fwd, head.status, None, b"MISS",
                                          detail=detail))
        passing = self._passing
        passing[key] = _Passing(stamp, head.status, cacheControl, detail, fwd, fields,
                                self._downstreamWatched())
        passing.move_to_end(key)
        if len(passing) > _UNSTORED_KEYS:
            passing.popitem(last=False)

    # -- the fleet tier and purge tags ------------------------------------------

    def _consultFleet(self, exchange: ICacheExchange, origin: Origin, head: RequestHead,
                      key: bytes, decision: policy.Miss) -> None:
        """
        A local miss: ask the fleet tier (bounded by its deadline); what it
        copies into the local tiers is served as a hit, else fetch.
        """

        def consulted(result) -> None:
            filled, detail = result
            if exchange.state is not X_FORWARDING:
                # The client left meanwhile.
                return
            if filled:
                local = self._decideAgain(exchange, head, key)
                if type(local) is policy.Fresh:
                    self.stats.hits += 1
                    self._serve(exchange, head, local.entry, local.age, local.ttl, hit=True,
                                xcache=b"HIT", detail=detail)
                    return
                detail = None
            self.stats.misses += 1
            self._fetch(exchange, origin, head, key, decision.fwd, detail=detail)

        def failed(reason: Failure) -> None:
            self._log.failure("after the fleet lookup of {key}", reason, key=logText(key))
            if exchange.state is X_FORWARDING:
                exchange.respondError(ProxyError("the cache failed"))

        self.fleet.consult(key, head, self.settings.options).addCallback(consulted).addErrback(
            failed)

    def _downstreamWatched(self) -> frozenset:
        """
        @return: the names a remembered pass looks for in its response
            (L{_KnownPass.responseHead}): Cache-Control, the targeted
            fields meant for this cache and the fields hidden from
            clients; made again only when those change.
        """
        strip = self.settings.options.consumedTargetedFields
        hidden = self.hiddenFields
        made = self._watched
        if made is None or made[0] is not strip or made[1] is not hidden:
            made = self._watched = (strip, hidden, strip | hidden | _CACHE_CONTROL)
        return made[2]

    def hideFields(self, head: ResponseHead) -> None:
        """
        Remove the stored fields not meant for clients (the purge tags,
        unless kept) from a response going downstream.
        """
        if head.headers.hasAny(self.hiddenFields):
            head.headers.removeMany(self.hiddenFields)

    def tagsOf(self, headers) -> List[bytes]:
        """
        @return: the purge tags a stored response carries.
        """
        if self.tagField is None:
            return []
        from .fleettier import parseTags

        return [t for v in headers.getAll(self.tagField) for t in parseTags(v)]

    def _indexTags(self, entry: policy.StoredEntry) -> None:
        tags = self.tagsOf(entry.responseHeaders)
        if not tags:
            return
        from .fleettier import _TAG_GRACE, _lifetimes

        fresh, stale = _lifetimes(entry, self.settings.options, self.reactor.seconds())
        import time

        try:
            self.tagIndex.add(entry.key, tags, time.time() + max(0.0, fresh) + stale + _TAG_GRACE)
        except Exception:
            self._log.failure("indexing the tags of {key} failed", key=logText(entry.key))

    def purgeTagLocally(self, tag: bytes) -> int:
        """
        Remove every local entry carrying C{tag}.

        @return: how many entries were removed.
        """
        if self.tagIndex is None:
            return 0
        removed = 0
        for key in self.tagIndex.keys(tag):
            removed += self.store.remove(key)
        self.tagIndex.forget(tag)
        return removed


def _stripTargeted(head: ResponseHead, options: policy.CacheOptions) -> None:
    """
    Remove the targeted Cache-Control fields meant for this cache alone
    (RFC 9213 section 2.2) from a response going downstream.
    """
    names = policy.targetedFieldsToStrip(options)
    if names and head.headers.hasAny(names):
        head.headers.removeMany(names)


class _Fill:
    """
    Passes an upstream response to the client and, when the policy allows,
    tees its body into the store. Leads a flight of collapsed waiters.
    """

    _log = Logger()
    #: a Cache-Status detail for the miss (the fleet tier was skipped)
    detail: Optional[bytes] = None

    def __init__(self, layer: CacheLayer, exchange: ICacheExchange, request: RequestHead,
                 key: bytes, fwd: str, store: bool, flight: Optional[Flight] = None,
                 lease=None) -> None:
        #: the key's fill lock, held while other processes may wait for
        #: this fill (see L{_endLease})
        self.lease = lease
        self.layer = layer
        self.exchange = exchange
        self.request = request
        self.key = key
        self.fwd = fwd
        self.store = store
        self.flight = flight
        self.writer = None
        self.length = 0
        self.requestTime = layer.reactor.seconds()
        self.response: Optional[ResponseHead] = None
        self._discard = False
        #: the declared body length, when the response has one
        self.expected: Optional[int] = None
        #: for a 206 being stored: C{(start, end, completeLength)} of its
        #: part (see L{policy.storablePart})
        self.part: Optional[Tuple[int, int, int]] = None
        #: the stored response this one would replace
        self.replaced: Optional[policy.StoredEntry] = None
        #: the stored incomplete response this one is combined with (RFC
        #: 9111 section 3.4), and the ranges of it written so far
        self.previous: Optional[policy.StoredEntry] = None
        self.copied: List[Tuple[int, int]] = []
        exchange.onClientGone = self.clientGone

    def responseInterim(self, head: ResponseHead) -> None:
        self.exchange.responseInterim(head)

    def _servedStale(self, status: Optional[int]) -> bool:
        """
        The origin failed (C{status} 5xx, or C{None}: unreachable): serve a
        stored stale response instead where stale-if-error allows.
        """
        entries = self.exchange.cacheEntries
        if not entries or self.flight is not None and self.flight.streaming:
            return False
        layer = self.layer
        stale = policy.staleOnError(self.request, entries, layer.reactor.seconds(),
                                    layer.settings.options, disconnected=status is None)
        if stale is None:
            return False
        layer.stats.stale += 1
        self._discard = True
        self._endLease("markPass")
        if self.flight is not None:
            self.flight.failed(Failure(BadGateway("origin error")), False)
            self.flight = None
        layer._serve(self.exchange, self.request, stale.entry, stale.age, stale.ttl,
                        hit=True, xcache=b"STALE", fwd=self.fwd, fwdStatus=status)
        return True

    def _freshenWithHead(self, head: ResponseHead) -> None:
        """
        RFC 9111 section 4.3.5: a HEAD response updates the stored GET
        responses it matches; those it contradicts are dropped.
        """
        entries = self.exchange.cacheEntries
        if not entries:
            return
        layer = self.layer
        update = policy.freshenWithHead(entries, self.request.headers, head, self.requestTime,
                                        self.responseTime, layer.settings.options)
        for entry in update.updated:
            layer.store.update(entry)
        if update.invalidated:
            layer.store.remove(self.key)

    def responseHead(self, head: ResponseHead) -> None:
        layer = self.layer
        self.responseTime = layer.reactor.seconds()
        if head.status in (500, 502, 503, 504) and self._servedStale(head.status):
            return
        if self.request.method == b"HEAD":
            self._freshenWithHead(head)
        detail = None
        if self.store and self.exchange.head.method != b"HEAD":
            self.writer, detail = layer.writerOrDetail(self.key, self.request, head)
            if self.writer is None:
                layer.notStored(self.key)
                exchange = self.exchange
                if detail is not None and exchange.cacheStamp is not None \
                        and not exchange.cacheEntries:
                    # A plain GET, and nothing was stored for it.
                    layer.rememberPass(self.key, exchange.cacheStamp, head, detail, self.fwd)
        if detail is None:
            detail = self.detail
        if self.writer is None:
            # Nothing of it is stored: no copy, no framing to work out.
            stored = self.response = head
        else:
            # What is stored is the response as the origin sent it.
            stored = ResponseHead(head.status, head.reason, head.version, head.headers.copy())
            self.response = stored
            length = stored.headers.get(b"content-length")
            if (length is not None and length.strip().isdigit()
                    and not stored.headers.hasToken(b"transfer-encoding", b"chunked")):
                self.expected = int(length.strip())
            self._prepareParts(stored)
            if self.expected == 0 and self.writer is not None:
                self._commit()
        if self.writer is None:
            # Not stored (or already committed): nobody waits for it.
            self._endLease("markPass")
        if self.flight is not None:
            self.flight.headArrived(self, stored, self.writer is not None)
        _stripTargeted(head, layer.settings.options)
        layer.hideFields(head)
        self.exchange.cacheResult = "MISS"
        self.exchange.responseHead(head, layer._statusFields(
            [], False, self.fwd, head.status, None, b"MISS",
            stored=self.writer is not None, detail=detail))

    def responseBody(self, data: bytes) -> None:
        if self._discard:
            return
        writer = self.writer
        if writer is not None:
            limit = self.layer.settings.routeMaxObjectSize
            if limit is not None and self.length + len(data) > limit:
                self._log.info("not storing {key}: larger than {limit} bytes",
                               key=logText(self.key), limit=limit)
                self._abortWriter()
                writer = None
        if writer is not None:
            try:
                writer.write(data)
            except StoreFull:
                self._log.info("not storing {key}: too large or no space", key=logText(self.key))
                self.writer = None
            except Exception:
                self._log.failure("storing {key} failed", key=logText(self.key))
                self._abortWriter()
            if self.writer is None:
                self._endLease("markPass")
        self.length += len(data)
        if self.length == self.expected and self.writer is not None:
            # The declared length is complete: make the entry visible before
            # the client sees the last byte, so that a request it sends next,
            # to any worker, finds it.
            self._commit()
        if self.flight is not None:
            self.flight.bodyArrived(data)
        self.exchange.responseBody(data)

    def _commit(self) -> None:
        writer, self.writer = self.writer, None
        if writer is None:
            return
        part = self.part
        if part is None:
            ok = self.layer.commit(writer, self.key, self.request, self.response,
                                      self.requestTime, self.responseTime, self.length)
            self._endLease("commit" if ok else "release")
            return
        start, end, total = part
        if self.length > end - start:
            writer.abort()
            self._endLease("release")
            return
        self._commitParts(writer, start, start + self.length, total)
        self._endLease("commit")

    def _endLease(self, how: str) -> None:
        """
        End the key's fill lock, if this fill holds it: C{"commit"} (stored),
        C{"markPass"} (not storable), C{"release"} (given up).
        """
        lease, self.lease = self.lease, None
        if lease is not None:
            getattr(lease, how)()

    # -- incomplete responses (RFC 9111 sections 3.3 and 3.4) -----------------

    def _prepareParts(self, response: ResponseHead) -> None:
        """
        Before the body of a response being stored: note the stored
        response it replaces and, if it is an incomplete one with the same
        strong validator, combine with it (section 3.4): its bytes before
        the new part are written now, those after it when the new part
        ends. A 206 never replaces a complete stored response.
        """
        entries = self.exchange.cacheEntries
        replaced = self.replaced = policy.replacedEntry(entries, self.request, response)
        if response.status == 206:
            self.part = policy.storablePart(response)
            if self.part is None or replaced is not None and replaced.ranges is None:
                self._abortWriter()
                return
            total = self.part[2]
            if self.expected is not None and self.expected != self.part[1] - self.part[0]:
                self._abortWriter()
                return
        else:
            total = self.expected
        if replaced is None or total is None or not policy.combinable(replaced, response,
                                                                      total):
            return
        self.previous = replaced
        if self.part is not None and self.part[0] > 0:
            if not self._copyPrevious(self.writer, 0, self.part[0]):
                self.writer = None

    def _copyPrevious(self, writer, start: int, end: int) -> bool:
        """
        Write the bytes of the combined stored response between C{start}
        and C{end} of the representation into C{writer}, noting the ranges
        written. A stored body gone since the lookup stops the copy there
        (what was written is still consistent).

        @return: whether C{writer} is still usable (else it was aborted).
        """
        previous = self.previous
        store = self.layer.store
        for first, last in previous.ranges:
            first, last = max(first, start), min(last, end)
            if first >= last:
                continue
            offset = policy.partialBodyOffset(previous, first)
            reader = store.openBody(previous, offset, offset + last - first)
            if reader is None:
                self.previous = None
                return True
            try:
                left = last - first
                while left:
                    data = reader.read(min(left, 1 << 16))
                    if not data:
                        raise IOError("stored part shorter than its entry says")
                    writer.write(data)
                    left -= len(data)
            except Exception:
                self._log.failure("combining with the stored parts of {key} failed",
                                  key=self.key)
                writer.abort()
                return False
            finally:
                reader.close()
            self.copied.append((first, last))
        return True

    def _commitParts(self, writer, start: int, end: int, total: int) -> None:
        """
        Store the new part C{start}-C{end} (exclusive) of a representation
        of C{total} bytes as an incomplete response, after the combined
        stored bytes that come after it; it becomes a complete entry if
        together they cover the whole representation.
        """
        if self.previous is not None and not self._copyPrevious(writer, end, total):
            return
        self.layer.commit(writer, self.key, self.request, self.response,
                             self.requestTime, self.responseTime, None,
                             ranges=self.copied + [(start, end)], completeLength=total,
                             previous=self.previous)

    def _storeIncomplete(self) -> None:
        """
        The origin broke off the response being stored: keep what arrived
        as an incomplete response when section 3.3 allows (a 206's part so
        far; a 200's prefix, with a Content-Length and a strong validator),
        never in place of a complete stored response. The client still
        sees the break.
        """
        writer, self.writer = self.writer, None
        received = self.length
        if self.part is not None:
            start, end, total = self.part
        else:
            total = policy.incompletePrefix(self.response, received)
            start, end = 0, total
            if total is None or self.replaced is not None and self.replaced.ranges is None:
                writer.abort()
                return
        if received <= 0 or received > end - start:
            writer.abort()
            return
        self._commitParts(writer, start, start + received, total)

    def responseEnd(self) -> None:
        if self._discard:
            return
        self._commit()
        self._endLease("release")
        # The flight and this storer point at each other: the ended fetch
        # lets go of both.
        flight, self.flight = self.flight, None
        if flight is not None:
            flight.ended()
        self.exchange.onClientGone = None
        self.exchange.responseEnd()

    def responseFailed(self, reason: Failure, receivedAnything: bool) -> None:
        if self.writer is not None and not self._discard:
            try:
                self._storeIncomplete()
            except Exception:
                self._log.failure("storing the part of {key} received failed", key=self.key)
        self._abortWriter()
        self._endLease("release")
        if self._discard:
            return
        if self.response is None and self._servedStale(None):
            return
        flight, self.flight = self.flight, None
        if flight is not None:
            flight.failed(reason, self.response is not None)
        self.exchange.onClientGone = None
        self._failExchange(reason)

    def _failExchange(self, reason: Failure) -> None:
        exchange = self.exchange
        if exchange.state is X_RESPONDING:
            exchange.responseFailed(reason, True)
            return
        exchange.respondError(upstreamError(reason))

    def requestBodyUnwanted(self) -> None:
        self.exchange.requestBodyUnwanted()

    def _abortWriter(self) -> None:
        _discardWriter(self)

    def clientGone(self) -> bool:
        """
        The client left. If other clients are streaming this same fetch,
        it goes on for them (and is stored); otherwise nothing
        half-written stays and waiters fetch on their own.

        @return: whether the upstream fetch must go on.
        """
        flight = self.flight
        if flight is not None and flight.leaderDetached():
            return True
        self._abortWriter()
        self._endLease("release")
        self.flight = None
        if flight is not None:
            flight.leaderGone()
        return False


def _discardWriter(handler) -> None:
    """
    Discard the half-written entry of C{handler} (its C{writer}), if any.
    """
    writer, handler.writer = handler.writer, None
    if writer is not None:
        try:
            writer.abort()
        except Exception:
            handler._log.failure("aborting a store write failed")


class _Invalidator:
    """
    Forwards a response to an unsafe (or uncacheable) request and removes
    what it invalidates (RFC 9111 section 4.4). A response to POST that
    represents its target URI (L{policy.mayStorePostResponse}) is then
    stored as the response to a GET of that URI (RFC 9110 section 9.3.3).
    """

    _log = Logger()

    def __init__(self, layer: CacheLayer, exchange: ICacheExchange, request: RequestHead,
                 key: bytes, detail: Optional[bytes] = None) -> None:
        self.layer = layer
        self.exchange = exchange
        self.request = request
        self.key = key
        #: why a GET or HEAD is passed, for Cache-Status
        self.detail = detail
        self.requestTime = layer.reactor.seconds()
        self.writer = None
        self.length = 0
        self.watching = False

    def responseInterim(self, head: ResponseHead) -> None:
        self.exchange.responseInterim(head)

    def responseHead(self, head: ResponseHead) -> None:
        method = self.request.method
        if method not in policy.SAFE_METHODS:
            uri = self.key.split(b" ", 1)[-1]
            uris = policy.invalidatedURIs(method, uri, head.status, head.headers)
            self.layer.invalidate(uris)
            if method == b"POST":
                # After the invalidation: what remains for the URI is this
                # response.
                self._storeAsGet(uri, head)
        _stripTargeted(head, self.layer.settings.options)
        self.layer.hideFields(head)
        self.exchange.cacheResult = "PASS"
        self.exchange.responseHead(head, self.layer._statusFields(
            [], False, "method" if method not in (b"GET", b"HEAD") else "request",
            head.status, None, b"PASS", stored=self.writer is not None, detail=self.detail))

    def _storeAsGet(self, uri: bytes, head: ResponseHead) -> None:
        """
        Start storing C{head} and its body under the GET key C{uri}, if the
        policy allows it.
        """
        layer = self.layer
        allowed, _ = policy.mayStorePostResponse(self.request, head, uri,
                                                 layer.settings.options)
        if not allowed:
            return
        request = self.request
        self.asGet = RequestHead(b"GET", request.target, request.version, request.headers)
        # What is stored is the response as the origin sent it.
        self.response = ResponseHead(head.status, head.reason, head.version,
                                     head.headers.copy())
        self.responseTime = layer.reactor.seconds()
        self.storeKey = uri
        self.writer = layer.openWriter(uri, self.asGet, self.response)
        if self.writer is not None:
            # A client that leaves mid-body leaves nothing half-written.
            self.exchange.onClientGone = self._abortWriter
            self.watching = True

    def responseBody(self, data: bytes) -> None:
        writer = self.writer
        if writer is not None:
            try:
                writer.write(data)
                self.length += len(data)
            except StoreFull:
                self._log.info("not storing {key}: too large or no space", key=self.storeKey)
                self.writer = None
            except Exception:
                self._log.failure("storing {key} failed", key=self.storeKey)
                self._abortWriter()
        self.exchange.responseBody(data)

    def responseEnd(self) -> None:
        self._unwatch()
        writer, self.writer = self.writer, None
        if writer is not None:
            self.layer.commit(writer, self.storeKey, self.asGet, self.response,
                                 self.requestTime, self.responseTime, self.length)
        self.exchange.responseEnd()

    def responseFailed(self, reason: Failure, receivedAnything: bool) -> None:
        self._unwatch()
        self._abortWriter()
        _Fill._failExchange(self, reason)

    def _unwatch(self) -> None:
        # The exchange and this handler point at each other: an ended
        # response lets go.
        if self.watching:
            self.watching = False
            self.exchange.onClientGone = None

    def _abortWriter(self) -> bool:
        """
        Discard a half-written entry.

        @return: C{False}: the upstream fetch need not go on (as an
            C{onClientGone} answer).
        """
        _discardWriter(self)
        return False

    def requestBodyUnwanted(self) -> None:
        self.exchange.requestBodyUnwanted()


class _KnownPass(_Invalidator):
    """
    Forwards a plain GET of a key remembered as L{_Passing}, and checks
    that the response still says what made it one; if not, the key is
    forgotten and the response goes through a L{_Fill}, as any miss of a
    key whose last response was not stored: stored if it may be.
    """

    # (what L{_Invalidator}'s failure path reads: nothing is being stored,
    # and the exchange is not watched for the client leaving)
    writer = None
    watching = False

    def __init__(self, layer: CacheLayer, exchange: ICacheExchange, request: RequestHead,
                 key: bytes, passing: _Passing) -> None:
        self.layer = layer
        self.exchange = exchange
        self.request = request
        self.key = key
        self.passing = passing
        self.requestTime = layer.reactor.seconds()
        # Nothing is stored: the body and its end go straight on.
        self.responseBody = exchange.responseBody
        self.responseEnd = exchange.responseEnd

    def responseHead(self, head: ResponseHead) -> None:
        layer = self.layer
        passing = self.passing
        # One pass over the fields: Cache-Control (joined as getCombined
        # joins it), whether any is to be hidden from the client
        # (hideFields), and whether a targeted field meant for this cache
        # decides instead of Cache-Control (then the answer changed).
        watched = passing.watched
        hidden = layer.hiddenFields
        cacheControl = None
        hide = targeted = False
        for field in head.headers.lowered():
            if field[0] in watched:
                name = field[0]
                if name == b"cache-control":
                    cacheControl = field[2] if cacheControl is None \
                        else cacheControl + b", " + field[2]
                elif name in hidden:
                    hide = True
                else:
                    targeted = True
        if head.status != passing.status or cacheControl != passing.cacheControl or targeted:
            if layer._passing.get(self.key) is passing:
                del layer._passing[self.key]
            fill = _Fill(layer, self.exchange, self.request, self.key, passing.fwd, store=True)
            fill.requestTime = self.requestTime
            self.responseBody = fill.responseBody
            self.responseEnd = fill.responseEnd
            self.responseFailed = fill.responseFailed
            # (the head as the origin sent it: what is stored)
            fill.responseHead(head)
            return
        if hide:
            head.headers.removeMany(hidden)
        self.exchange.cacheResult = "MISS"
        self.exchange.responseHead(head, passing.fields)


class _Revalidator:
    """
    Receives the answer to a conditional request and applies
    L{policy.afterRevalidation}: serve the freshened stored response, serve
    stale, refetch, or pass the new response through (storing it).
    """

    _log = Logger()

    def __init__(self, layer: CacheLayer, exchange: ICacheExchange, request: RequestHead,
                 key: bytes, decision: policy.Revalidate, entries) -> None:
        self.layer = layer
        self.exchange = exchange
        self.request = request
        self.key = key
        self.decision = decision
        self.entries = entries
        self.requestTime = layer.reactor.seconds()
        self.passThrough: Optional[_Fill] = None
        self.discard = False

    def responseInterim(self, head: ResponseHead) -> None:
        pass

    def _outcome(self, response: Optional[ResponseHead]):
        layer = self.layer
        now = layer.reactor.seconds()
        return policy.afterRevalidation(
            self.request, self.decision.entry, response, self.requestTime, now, now,
            layer.settings.options, self.entries,
        )

    def responseHead(self, head: ResponseHead) -> None:
        layer = self.layer
        outcome = self._outcome(head)
        kind = type(outcome)
        if kind is policy.Freshened:
            layer.stats.revalidated += 1
            for entry in outcome.updated:
                try:
                    layer.store.update(entry)
                except Exception:
                    layer._log.failure("updating {key} failed", key=logText(self.key))
            self.discard = True
            layer._serve(self.exchange, self.request, outcome.entry, outcome.age,
                            _ttl(outcome.entry, outcome.age, layer), hit=True,
                            xcache=b"REVALIDATED", fwd=self.decision.fwd, fwdStatus=304)
        elif kind is policy.Stale:
            layer.stats.stale += 1
            self.discard = True
            layer._serve(self.exchange, self.request, outcome.entry, outcome.age,
                            outcome.ttl, hit=True, xcache=b"STALE",
                            fwd=self.decision.fwd, fwdStatus=head.status)
        elif kind is policy.Refetch:
            self.discard = True
            layer._fetch(self.exchange, self.exchange.cacheOrigin, self.request, self.key,
                            "stale")
        else:
            self.passThrough = _Fill(layer, self.exchange, self.request, self.key,
                                       self.decision.fwd, store=head.status != 304)
            self.passThrough.requestTime = self.requestTime
            self.passThrough.responseHead(head)

    def responseBody(self, data: bytes) -> None:
        if self.passThrough is not None:
            self.passThrough.responseBody(data)

    def responseEnd(self) -> None:
        if self.passThrough is not None:
            self.passThrough.responseEnd()

    def responseFailed(self, reason: Failure, receivedAnything: bool) -> None:
        if self.passThrough is not None:
            self.passThrough.responseFailed(reason, receivedAnything)
            return
        if self.discard:
            return
        outcome = self._outcome(None)
        if type(outcome) is policy.Stale:
            self.layer.stats.stale += 1
            self.discard = True
            self.layer._serve(self.exchange, self.request, outcome.entry, outcome.age,
                                 outcome.ttl, hit=True, xcache=b"STALE",
                                 fwd=self.decision.fwd)
            return
        _Fill._failExchange(self, reason)

    def requestBodyUnwanted(self) -> None:
        pass


class _BackgroundRefresh:
    """
    The background revalidation of stale-while-revalidate: updates or
    replaces the stored response; nobody waits for it.
    """

    _log = Logger()

    def __init__(self, layer: CacheLayer, request: RequestHead, key: bytes,
                 entry: policy.StoredEntry, entries) -> None:
        self.layer = layer
        self.request = request
        self.key = key
        self.entry = entry
        self.entries = entries
        self.writer = None
        self.length = 0
        self.requestTime = 0.0
        self.response = None
        self.part: Optional[Tuple[int, int, int]] = None

    def responseInterim(self, head: ResponseHead) -> None:
        pass

    def responseHead(self, head: ResponseHead) -> None:
        layer = self.layer
        now = layer.reactor.seconds()
        self.responseTime = now
        outcome = policy.afterRevalidation(self.request, self.entry, head, self.requestTime,
                                           now, now, layer.settings.options, self.entries)
        if type(outcome) is policy.Freshened:
            layer.stats.revalidated += 1
            for entry in outcome.updated:
                layer.store.update(entry)
        elif head.status == 200 or head.status == 206 and self.entry.ranges is not None:
            # An incomplete entry is refreshed for the client's range: a
            # 206 is a new part of a changed representation (RFC 9111
            # section 3.4: it replaces the old parts).
            self.response = ResponseHead(head.status, head.reason, head.version,
                                         head.headers.copy())
            self.writer = layer.openWriter(self.key, self.request, self.response)
            if head.status == 206:
                self.part = policy.storablePart(self.response)

    def responseBody(self, data: bytes) -> None:
        if self.writer is not None:
            try:
                self.writer.write(data)
                self.length += len(data)
            except Exception:
                self.writer = None

    def responseEnd(self) -> None:
        self.layer._refreshing.discard(self.key)
        writer, self.writer = self.writer, None
        if writer is None:
            return
        part = self.part
        if part is None:
            self.layer.commit(writer, self.key, self.request, self.response,
                                 self.requestTime, self.responseTime, self.length)
        elif self.length == part[1] - part[0]:
            self.layer.commit(writer, self.key, self.request, self.response,
                                 self.requestTime, self.responseTime, None,
                                 ranges=[part[:2]], completeLength=part[2])
        else:
            writer.abort()

    def responseFailed(self, reason: Failure, receivedAnything: bool) -> None:
        self.layer._refreshing.discard(self.key)
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.abort()

    def requestBodyUnwanted(self) -> None:
        pass


def _ttl(entry: policy.StoredEntry, age: float, layer: CacheLayer) -> float:
    lifetime = policy.freshnessLifetime(entry.responseHead, layer.settings.options,
                                        entry.responseTime, entry.key)
    return lifetime - age
