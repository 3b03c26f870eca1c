# -*- test-case-name: tests.test_fleet_proxy -*-
"""
The fleet tier: the local tiers (memory, disk) in front of a
L{cachingproxy.fleet.store.FleetStore} shared by every proxy of a fleet.

Why a hook in the cache layer's miss path rather than another L{IStore}
around the local stores: L{IStore} is synchronous (memory and disk answer
within the reactor turn), and a fleet lookup is a network round trip that
must not block. So L{CacheLayer} asks the fleet only after the local tiers
missed, and carries on when the answer (or the deadline) comes:

  - a fleet variant that L{policy.decide} finds fresh for the request
    (the same code that selects local variants: Vary, Authorization and
    the request's own directives apply) has its body read whole and
    checked (length and SHA-256; a missing chunk or a mismatch is a miss)
    and is written into the local tiers, which then answer it as a hit;
  - a miss that finds nothing usable takes the entry's fill lock in the
    fleet while this process fetches (given up after C{maxWait}); other
    processes that find it locked wait for the commit, at most C{maxWait}
    in all, and one of them takes the lock over if the fill ends without
    a usable commit (its holder died, its lease ran out, it aborted);
    an answer that may not be stored sets the pass marker instead;
  - what the layer stores after an origin fetch is offered to the fleet
    (L{FleetTee}), through the store's bounded write queue, when it is
    complete, fits C{maxObjectSize}, is fresh, and the request carried no
    Authorization;
  - purges (by URL, prefix and tag) are applied here and in Redis; every
    process follows the purge log and applies what others purged; a gap in
    the log drops every local copy this process took from the fleet;
  - what a response to an unsafe request invalidates (RFC 9111 section
    4.4: the target URI, Location and Content-Location of the same origin)
    is removed from the local tiers at once and purged in Redis as by a
    PURGE of each URL, so that every process drops it too: through the
    bounded write queue, after the response (failures, a full queue
    included, are counted, and logged on the first of a series); until
    Redis confirmed, this process does not copy those URLs from the fleet;
  - a commit that replaces the fleet object of a variant logs it
    (L{cachingproxy.fleet.store.Fill.commit}); a process following the log
    drops its local copies of that key taken from another fleet object
    (the local stores remove every variant of a key at once), and keeps
    those it fetched from the origin itself.

A local copy taken from the fleet carries the fleet object id it came from
in the field L{FLEET_OBJECT_FIELD} of its stored head (never sent to
clients).

L{TagIndex} is the local index of purge tags (surrogate keys), kept with
or without a fleet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from . import policy
from .disk import _decodeFields, _encodeFields
from .store import IEntryWriter
from ..fleet.store import FillOutcome

__all__ = ["FleetTier", "FleetTee", "TagIndex", "FLEET_OBJECT_FIELD", "encodeEntry", "decodeEntry",
           "parseTags"]

#: The stored-head field naming the fleet object a local copy came from.
FLEET_OBJECT_FIELD = b"Cachingproxy-Fleet-Object"

#: Cache-Status details (RFC 9211 section 2.8).
DETAIL_FLEET_HIT = b"fleet"
DETAIL_FLEET_UNAVAILABLE = b"fleet-unavailable"

#: How long tag index records outlive their entry's freshness and stale
#: windows: a stored response revalidated with a 304 lives on.
_TAG_GRACE = 86400.0

_log = Logger()


def parseTags(value: Optional[bytes]) -> List[bytes]:
    """
    Purge tags from a field value: space-separated (Surrogate-Key,
    xkey) or comma-separated (Cache-Tag).
    """
    if not value:
        return []
    seen = []
    for tag in re.split(rb"[\s,]+", value.strip()):
        if tag and tag not in seen:
            seen.append(tag)
    return seen


def encodeEntry(entry, variantKey: bytes) -> bytes:
    """
    A stored entry's metadata as the fleet keeps it (the body apart).
    """
    return json.dumps(
        [
            1,
            entry.key.decode("latin-1"),
            variantKey.decode("latin-1"),
            entry.requestMethod.decode("latin-1"),
            int(entry.status),
            float(entry.requestTime),
            float(entry.responseTime),
            _encodeFields(entry.requestHeaders),
            _encodeFields(entry.responseHeaders),
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")


def decodeEntry(variant) -> Optional[policy.StoredEntry]:
    """
    @return: the L{policy.StoredEntry} of a L{FleetVariant} (its C{id} is
        the variant), or C{None} if its metadata is not of this format.
    """
    try:
        meta = json.loads(variant.head)
        if meta[0] != 1 or meta[1].encode("latin-1") != variant.key:
            return None
        return policy.StoredEntry(
            key=variant.key,
            requestMethod=meta[3].encode("latin-1"),
            requestHeaders=_decodeFields(meta[7]),
            status=int(meta[4]),
            responseHeaders=_decodeFields(meta[8]),
            requestTime=float(meta[5]),
            responseTime=float(meta[6]),
            bodyLength=variant.length,
            id=variant,
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def _lifetimes(entry, options, now: float) -> Tuple[float, float]:
    """
    @return: C{(fresh for, stale window)} of a stored entry at C{now}.
    """
    lifetime = policy.freshnessLifetime(entry.responseHead, options, entry.responseTime, entry.key)
    age = policy.currentAge(entry.responseHeaders, entry.requestTime, entry.responseTime, now)
    cc, _ = policy.effectiveCacheControl(entry.responseHeaders, options)
    stale = max(cc.staleWhileRevalidate or 0, cc.staleIfError or 0,
                options.defaultStaleWhileRevalidate or 0, options.defaultStaleIfError or 0)
    return lifetime - age, float(stale)


class TagIndex:
    """
    Which primary keys carry which purge tag, for this machine's local
    tiers.

    With a folder (the disk cache's), one file per tag under
    C{folder/tags/}, lines C{expiry key} appended by any worker process,
    so a purge through any of them finds what all of them stored; without
    one, in memory. Records expire with their entries (freshness, stale
    windows and a day's grace); a tag's file is compacted (expired and
    repeated records dropped, then the oldest) when it grows past
    C{maxBytes}, and the memory index keeps at most C{maxRecords}.
    """

    def __init__(self, folder: Optional[str] = None, maxBytes: int = 1 << 20, maxRecords: int = 200000,
                 clock=time.time):
        self.folder = os.path.join(folder, "tags") if folder is not None else None
        self.maxBytes = maxBytes
        self.maxRecords = maxRecords
        self._clock = clock
        self._memory: "OrderedDict[Tuple[bytes, bytes], float]" = OrderedDict()
        if self.folder is not None:
            os.makedirs(self.folder, exist_ok=True)

    def _path(self, tag: bytes) -> str:
        return os.path.join(self.folder, hashlib.sha256(tag).hexdigest()[:32])

    def add(self, key: bytes, tags: Iterable[bytes], expires: float) -> None:
        for tag in tags:
            if self.folder is None:
                self._memory.pop((tag, key), None)
                self._memory[(tag, key)] = expires
                while len(self._memory) > self.maxRecords:
                    self._memory.popitem(last=False)
                continue
            path = self._path(tag)
            line = b"%d %s\n" % (int(expires), key)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                try:
                    size = os.fstat(fd).st_size
                    os.write(fd, line)
                finally:
                    os.close(fd)
                if size + len(line) > self.maxBytes:
                    self._compact(path)
            except OSError as e:
                _log.warn("tag index {path}: {error}", path=path, error=e)

    def _records(self, path: str) -> "OrderedDict[bytes, float]":
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return OrderedDict()
        now = self._clock()
        records: "OrderedDict[bytes, float]" = OrderedDict()
        for line in data.split(b"\n"):
            expires, _, key = line.partition(b" ")
            if not key or not expires.isdigit() or int(expires) < now:
                continue
            records.pop(key, None)
            records[key] = float(expires)
        return records

    def _compact(self, path: str) -> None:
        records = self._records(path)
        lines = [b"%d %s\n" % (int(e), k) for k, e in records.items()]
        while lines and sum(map(len, lines)) > self.maxBytes // 2:
            lines.pop(0)
        temporary = path + ".%d.tmp" % os.getpid()
        with open(temporary, "wb") as f:
            f.write(b"".join(lines))
        os.replace(temporary, path)

    def keys(self, tag: bytes) -> List[bytes]:
        """
        @return: the live keys carrying C{tag}.
        """
        if self.folder is None:
            now = self._clock()
            return [k for (t, k), e in self._memory.items() if t == tag and e >= now]
        return list(self._records(self._path(tag)))

    def forget(self, tag: bytes) -> None:
        """
        Drop C{tag}'s records (after its entries were purged).
        """
        if self.folder is None:
            for record in [r for r in self._memory if r[0] == tag]:
                del self._memory[record]
            return
        try:
            os.unlink(self._path(tag))
        except FileNotFoundError:
            pass


@implementer(IEntryWriter)
class FleetTee:
    """
    A local store's writer that also keeps the body (up to the fleet's
    object size limit), to offer what it commits to the fleet.
    """

    def __init__(self, tier: "FleetTier", inner, key: bytes, variantKey: bytes, request) -> None:
        self._tier = tier
        self._inner = inner
        self._key = key
        self._variantKey = variantKey
        self._request = request
        self._chunks: Optional[List[bytes]] = []
        self._length = 0

    @property
    def committedId(self):
        return self._inner.committedId

    def write(self, data: bytes) -> None:
        self._inner.write(data)
        if self._chunks is not None:
            self._length += len(data)
            if self._length > self._tier.maxObjectSize:
                self._chunks = None
            else:
                self._chunks.append(bytes(data))

    def commit(self, entry) -> bool:
        try:
            ok = self._inner.commit(entry)
        except Exception:
            self._tier.release(self._key)
            raise
        chunks, self._chunks = self._chunks, None
        if ok and chunks is not None and entry.ranges is None and entry.bodyLength == self._length:
            self._tier.offer(self._key, self._variantKey, entry, b"".join(chunks))
        else:
            self._tier.release(self._key)
        return ok

    def abort(self) -> None:
        self._chunks = None
        self._tier.release(self._key)
        self._inner.abort()


#: Request fields that make a miss not collapsed (as in the layer).
_NOT_COLLAPSED = frozenset([b"authorization", b"range", b"if-match", b"if-none-match",
                            b"if-modified-since", b"if-unmodified-since", b"if-range"])


def _collapsible(request) -> bool:
    """
    Whether other proxies' misses may wait for this request's response: a
    GET whose answer may be stored for everyone.
    """
    return request.method == b"GET" and not request.headers.hasAny(_NOT_COLLAPSED)


def _within(d: Deferred, seconds: float, clock) -> Deferred:
    """
    C{d}'s result, or a L{FleetTimeout} failure after C{seconds}; a late
    result is dropped (the fleet client bounds the command itself).

    The reactor runs its timers before it reads: when the time is up, a
    busy one may have the answer waiting on the socket; it is late only if
    it is still missing after the reactor's next read.
    """
    from ..fleet.redis import FleetTimeout

    out: Deferred = Deferred()

    def expired():
        if not out.called:
            out.errback(FleetTimeout(f"no answer within {seconds:.3f}s"))

    def late():
        if not out.called:
            clock.callLater(0, expired)

    timer = clock.callLater(seconds, late)

    def done(result):
        if timer.active():
            timer.cancel()
        if not out.called:
            out.callback(result)

    def failed(f):
        if timer.active():
            timer.cancel()
        if not out.called:
            out.errback(f)

    d.addCallbacks(done, failed)
    return out


class FleetTier:
    """
    The fleet behind a L{CacheLayer}'s local store (see the module
    docstring).

    @ivar fleet: the L{FleetStore}.
    @ivar deadline: seconds a lookup may add to a request.
    @ivar maxWait: seconds a lookup that finds a fill in progress waits for
        it.
    @ivar hits, misses, skipped, damaged, fills, offered, dropped: counters
        (C{skipped}: lookups given up, Redis slow or gone).
    @ivar invalidated: URLs an unsafe request invalidated here and Redis
        confirmed purged; C{failedInvalidations}: those it did not (failed,
        or dropped with the write queue full).
    @ivar replacements: replacements followed that dropped local copies.
    """

    _log = Logger()

    def __init__(self, fleet, reactor, deadline: float = 0.05, maxWait: float = 0.5,
                 pollInterval: float = 1.0, clock=None, maxTracked: int = 100000) -> None:
        self.fleet = fleet
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.deadline = deadline
        self.maxWait = maxWait
        self.pollInterval = pollInterval
        self.maxObjectSize = fleet.maxObjectSize
        self.layer = None
        self.hits = 0
        self.misses = 0
        self.skipped = 0
        self.offered = 0
        self.finishedWrites = 0
        self.failedWrites = 0
        self.followed = 0
        self.gaps = 0
        self.invalidated = 0
        self.failedInvalidations = 0
        self.replacements = 0
        #: key -> fleet purges queued for it by invalidations, not yet done
        self._invalidating: Dict[bytes, int] = {}
        self._invalidationsFailing = False
        #: keys whose local copies came from the fleet (least recent first)
        self._fromFleet: "OrderedDict[bytes, None]" = OrderedDict()
        self._overflowed = False
        self.maxTracked = maxTracked
        self._lookups: Dict[bytes, Deferred] = {}
        #: key -> (fill, expiry timer): locks held while this process fetches
        self._held: Dict[bytes, tuple] = {}
        #: key -> the entry's generation when this process started to fetch
        #: it without holding its lock (least recent first)
        self._generations: "OrderedDict[bytes, bytes]" = OrderedDict()
        self._follower = None
        self._followerStarted = False
        self._followerFailing = False
        self._loop: Optional[LoopingCall] = None

    # -- service ----------------------------------------------------------------

    def start(self) -> None:
        """
        Subscribe to wake-ups and follow the purge log.
        """
        from ..fleet.store import PurgeLogFollower

        self.fleet.start().addErrback(lambda f: None)
        self._follower = PurgeLogFollower(self.fleet, self._purged, self._gap)
        self._loop = LoopingCall(self._follow)
        self._loop.clock = self.clock
        self._loop.start(self.pollInterval, now=True)

    def stop(self) -> Deferred:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        d = self.fleet.stop()
        return d.addBoth(lambda _: self.fleet._client.close()).addBoth(lambda _: None)

    def _follow(self) -> Deferred:
        follower = self._follower
        d = follower.poll() if self._followerStarted else follower.start()

        def done(result):
            if not self._followerStarted:
                self._followerStarted = True
                self._log.info("fleet purge log: following")
            elif result is not None and result >= follower.batch:
                # more waiting: read on now rather than fall behind
                return self._follow()
            if self._followerFailing:
                self._followerFailing = False
                self._log.info("fleet purge log: reachable again")

        def failed(f):
            if not self._followerFailing:
                self._followerFailing = True
                self._log.warn("fleet purge log unreachable: {error}", error=f.getErrorMessage())

        return d.addCallbacks(done, failed)

    # -- looking up ------------------------------------------------------------

    def state(self) -> str:
        """
        C{closed} when every node's breaker is, C{open} when one is open,
        else C{half-open}.
        """
        states = set(self.fleet.breakerStates().values())
        if not states or states == {"closed"}:
            return "closed"
        return "open" if "open" in states else "half-open"

    def consult(self, key: bytes, request, options) -> Deferred:
        """
        After a local miss: look C{key} up in the fleet and, if a variant
        is fresh for C{request}, copy it into the local tiers. Concurrent
        consultations for one key share one lookup.

        @return: a Deferred firing with C{(filled, detail)}: whether the
            local tiers now hold a copy, and a Cache-Status detail (or
            C{None}); it never fails.
        """
        if key in self._invalidating:
            # Invalidated here, and maybe not yet purged in Redis.
            return succeed((False, None))
        running = self._lookups.get(key)
        if running is None:
            running = self._lookups[key] = self._consult(key, request, options)

            def done(result):
                self._lookups.pop(key, None)
                return result

            def failed(f):
                self._log.failure("fleet lookup of {key!r} failed", f, key=key)
                return (False, None)

            running.addErrback(failed).addBoth(done)
        # each caller its own Deferred: what one caller's callbacks return
        # is not what the next one gets
        mine: Deferred = Deferred()
        running.addCallback(lambda result: (mine.callback(result), result)[1])
        return mine

    @inlineCallbacks
    def _consult(self, key: bytes, request, options):
        fleet = self.fleet
        waitUntil = None
        while True:
            try:
                found = yield _within(fleet.lookup(key), self.deadline, self.clock)
            except Exception:
                self.skipped += 1
                return (False, DETAIL_FLEET_UNAVAILABLE)
            now = self.reactor.seconds()
            entries = [e for e in map(decodeEntry, found.variants) if e is not None]
            decision = policy.decide(request, entries, now, options)
            if type(decision) is policy.Fresh or found.passMarker or self.maxWait <= 0:
                break
            locked = found.locked
            if not locked and _collapsible(request):
                # Nothing usable: fetch it for the fleet, holding the
                # entry's lock, so that the others' misses wait for it
                # (bounded by maxWait) instead of going to the origin too;
                # after a wait for a fill that ended without storing
                # anything usable (its holder gone, its lease over), this
                # takes it over.
                try:
                    attempt = yield _within(fleet.beginFill(key), self.deadline, self.clock)
                except Exception:
                    attempt = None
                if attempt is not None and attempt.outcome is FillOutcome.ACQUIRED:
                    self._hold(key, attempt.fill)
                    self.misses += 1
                    return (False, None)
                locked = attempt is not None and attempt.outcome is FillOutcome.LOCKED
            if waitUntil is None:
                waitUntil = self.clock.seconds() + self.maxWait
            left = waitUntil - self.clock.seconds()
            if not locked or left <= 0:
                break
            # Being stored elsewhere right now: wait for it, bounded (in
            # all, whatever the wake-ups), then look again.
            yield fleet.waitForFill(key, left)
        if type(decision) is not policy.Fresh:
            if self._held.get(key) is None:
                # what this process fetches now may be stored in the fleet
                # only if nothing was purged meanwhile
                self._started(key, found.generation)
            self.misses += 1
            return (False, None)
        variant = decision.entry.id
        try:
            # a small body came with the lookup (checked here); a larger
            # one is read now, its read time growing with its size
            d = fleet.readBody(variant, inline=found.bodies.get(variant.objectId))
            if not d.called:
                d = _within(d, self.deadline * 2 + variant.length / 50e6, self.clock)
            body = yield d
        except Exception:
            self.skipped += 1
            return (False, DETAIL_FLEET_UNAVAILABLE)
        if body is None:
            self.misses += 1
            return (False, None)
        if not self._fillLocal(key, variant, decision.entry, body):
            self.misses += 1
            return (False, None)
        self.hits += 1
        return (True, DETAIL_FLEET_HIT)

    def _fillLocal(self, key: bytes, variant, entry, body: bytes) -> bool:
        layer = self.layer
        headers = entry.responseHeaders.copy()
        headers.set(FLEET_OBJECT_FIELD, variant.objectId)
        local = dataclasses.replace(entry, responseHeaders=headers, id=None)
        try:
            writer = layer.store.writer(key, variant.variantKey)
            writer.write(body)
            ok = writer.commit(local)
        except Exception:
            self._log.failure("copying {key!r} from the fleet failed", key=key)
            return False
        if ok:
            self._track(key)
            tags = layer.tagsOf(headers)
            if tags and layer.tagIndex is not None:
                fresh, stale = _lifetimes(local, layer.settings.options, self.reactor.seconds())
                layer.tagIndex.add(key, tags, time.time() + max(0.0, fresh) + stale + _TAG_GRACE)
        return ok

    # -- fill locks held while this process fetches ----------------------------

    def _hold(self, key: bytes, fill) -> None:
        """
        Keep C{fill}'s lock while this process fetches C{key}; others wait
        for it at most C{maxWait}, so it is given up after that.
        """
        self.release(key)
        timer = self.clock.callLater(self.maxWait, self._expire, key, fill)
        self._held[key] = (fill, timer)

    def _expire(self, key: bytes, fill) -> None:
        held = self._held.get(key)
        if held is not None and held[0] is fill:
            del self._held[key]
            # stored later only if nothing was purged meanwhile
            self._started(key, fill.generation)
            fill.abort().addErrback(lambda f: None)

    def _started(self, key: bytes, generation: bytes) -> None:
        """
        This process fetches C{key} without holding its lock; the entry's
        generation was C{generation}.
        """
        generations = self._generations
        generations.pop(key, None)
        generations[key] = generation
        if len(generations) > self.maxTracked:
            generations.popitem(last=False)

    def _take(self, key: bytes):
        """
        @return: the fill held for C{key} (no longer held), or C{None}.
        """
        held = self._held.pop(key, None)
        if held is None:
            return None
        fill, timer = held
        if timer.active():
            timer.cancel()
        return fill

    def release(self, key: bytes, passMarker: bool = False) -> None:
        """
        This process will not store C{key} in the fleet: give its lock up
        (waking the waiters), with a pass marker if the response was not
        storable (the waiters then go to the origin at once, in parallel).
        """
        self._generations.pop(key, None)
        fill = self._take(key)
        if fill is None:
            return
        d = fill.markPass() if passMarker else fill.abort()
        d.addErrback(lambda f: None)

    def _track(self, key: bytes) -> None:
        tracked = self._fromFleet
        tracked.pop(key, None)
        tracked[key] = None
        if len(tracked) > self.maxTracked:
            tracked.popitem(last=False)
            self._overflowed = True

    # -- storing --------------------------------------------------------------

    def wrap(self, writer, key: bytes, variantKey: bytes, request):
        """
        @return: C{writer}, teed to the fleet when C{request}'s response
            may go there.
        """
        if request.headers.get(b"authorization") is not None:
            # Storable for this cache perhaps, but not sent where other
            # machines answer from it.
            return writer
        return FleetTee(self, writer, key, variantKey, request)

    def offer(self, key: bytes, variantKey: bytes, entry, body: bytes) -> None:
        """
        Queue a committed local entry for the fleet.
        """
        layer = self.layer
        options = layer.settings.options
        fresh, stale = _lifetimes(entry, options, self.reactor.seconds())
        if not options.shared or fresh <= 0 or len(body) > self.maxObjectSize:
            self.release(key)
            return
        tags = layer.tagsOf(entry.responseHeaders)
        head = encodeEntry(entry, variantKey)

        def write():
            return self._write(key, variantKey, head, body, fresh, stale, tags)

        if self.fleet.submitWrite(write, len(body)) is not None:
            self.offered += 1
        else:
            self.release(key)

    def _write(self, key, variantKey, head, body, fresh, stale, tags) -> Deferred:
        d = self._tryWrite(key, variantKey, head, body, fresh, stale, tags)

        def finished(result):
            self.finishedWrites += 1
            return result

        return d.addBoth(finished)

    @inlineCallbacks
    def _tryWrite(self, key, variantKey, head, body, fresh, stale, tags):
        try:
            fill = self._take(key)
            generation = self._generations.pop(key, None)
            if fill is not None and (fill.lost or fill.closed):
                # the lock was taken away while this process fetched (a
                # purge, the lease's end): taken again below unless a
                # purge came since
                generation = fill.generation
                yield fill.abort()
                fill = None
            if fill is None:
                attempt = yield self.fleet.beginFill(key, generation)
                if attempt.outcome is FillOutcome.PURGED:
                    self.failedWrites += 1
                    self._dropLocal(key)
                    return False
                if attempt.outcome is not FillOutcome.ACQUIRED:
                    return False
                fill = attempt.fill
            fill.write(body)
            ok = yield fill.commit(variantKey, head, fresh, staleFor=stale, tags=tags)
        except Exception:
            # counted by the store (timeouts) and here; the breaker logs
            # the node's state changes
            self.failedWrites += 1
            return False
        if not ok:
            self.failedWrites += 1
            try:
                purged = fill.lost and (yield self.fleet.purgedSince(key, fill.generation))
            except Exception:
                purged = False
            if purged:
                # fenced out by a purge
                self._dropLocal(key)
        return ok

    def _dropLocal(self, key: bytes) -> None:
        """
        What this process fetched for C{key} was purged in the fleet while
        it was fetching (it may predate the purge): the local copy it made
        goes too.
        """
        try:
            self.layer.store.remove(key)
        except Exception:
            self._log.failure("dropping {key!r} failed", key=key)

    # -- purging ----------------------------------------------------------------

    def invalidate(self, keys: Sequence[bytes]) -> None:
        """
        A response to an unsafe request invalidated C{keys} (primary keys)
        in the local tiers: purge them in Redis and its purge log too, for
        every other process (see the module docstring). Not waited for.
        """
        for key in keys:
            self._invalidating[key] = self._invalidating.get(key, 0) + 1
            d = self.fleet.submitWrite(lambda key=key: self._invalidateInFleet(key))
            if d is None:
                self._doneInvalidating(key)
                self._invalidationFailed(key, "the write queue is full")
            else:
                d.addBoth(lambda _, key=key: self._doneInvalidating(key))

    def _invalidateInFleet(self, key: bytes) -> Deferred:
        def purged(n):
            self.invalidated += 1
            if self._invalidationsFailing:
                self._invalidationsFailing = False
                self._log.info("invalidations reach the fleet again ({n} failed in all)",
                               n=self.failedInvalidations)
            return n

        def failed(f):
            self._invalidationFailed(key, f.getErrorMessage())

        return self.fleet.purgeKey(key).addCallbacks(purged, failed)

    def _invalidationFailed(self, key: bytes, error: str) -> None:
        """
        Count an invalidation the fleet did not get; log the first of a
        series (one line, not one a request, while Redis is down).
        """
        self.failedInvalidations += 1
        if not self._invalidationsFailing:
            self._invalidationsFailing = True
            self._log.warn("invalidation of {key!r} in the fleet failed: {error}; other proxies "
                           "may serve it until it is stale (further failures are only counted)",
                           key=key, error=error)

    def _doneInvalidating(self, key: bytes) -> None:
        n = self._invalidating.pop(key, 0) - 1
        if n > 0:
            self._invalidating[key] = n

    def purge(self, kind: bytes, value: bytes) -> Deferred:
        """
        Purge in the fleet (C{kind}: C{b"key"}, C{b"prefix"} or C{b"tag"}).

        @return: a Deferred firing with the variants removed there once
            Redis confirmed (the purge log included), failing otherwise.
        """
        fleet = self.fleet
        method = {b"key": fleet.purgeKey, b"prefix": fleet.purgePrefix, b"tag": fleet.purgeTag}[kind]
        return method(value)

    def _purged(self, kind: bytes, value: bytes) -> None:
        """
        The purge log says C{kind} C{value} was purged (here or elsewhere).
        """
        self._log.debug("fleet purge log: {kind} {value!r}", kind=kind, value=value)
        if kind == b"replaced":
            objectId, _, key = value.partition(b" ")
            self._replaced(key, objectId)
            return
        self.followed += 1
        layer = self.layer
        if kind == b"key":
            layer.store.remove(value)
            self._fromFleet.pop(value, None)
        elif kind == b"prefix":
            layer.store.removePrefix(value).addErrback(
                lambda f: self._log.failure("purging {prefix!r} failed", f, prefix=value))
        elif kind == b"tag":
            layer.purgeTagLocally(value)

    def _replaced(self, key: bytes, objectId: bytes) -> None:
        """
        The fleet now holds C{objectId} for a variant of C{key}: drop the
        local copies of C{key} if one came from another fleet object.
        """
        layer = self.layer
        try:
            entries = layer.store.entries(key)
        except Exception:
            self._log.failure("looking up {key!r} after its replacement failed", key=key)
            return
        for entry in entries:
            came = entry.responseHeaders.get(FLEET_OBJECT_FIELD)
            if came is not None and came != objectId:
                break
        else:
            return
        self.replacements += 1
        self._fromFleet.pop(key, None)
        try:
            layer.store.remove(key)
        except Exception:
            self._log.failure("dropping {key!r} after its replacement failed", key=key)

    def _gap(self) -> None:
        """
        Purges may have been missed: drop every local copy taken from the
        fleet.
        """
        self.gaps += 1
        layer = self.layer
        keys, self._fromFleet = list(self._fromFleet), OrderedDict()
        self._log.warn("fleet purge log: gap; dropping {n} local copies taken from the fleet",
                       n=len(keys))
        for key in keys:
            try:
                layer.store.remove(key)
            except Exception:
                self._log.failure("dropping {key!r} failed", key=key)
        if self._overflowed:
            self._overflowed = False
            self._log.warn("fleet purge log: more copies were taken than tracked; dropping the local cache")
            layer.store.removePrefix(b"").addErrback(lambda f: None)

    # -- reports ------------------------------------------------------------------

    def stats(self) -> dict:
        fleet = self.fleet
        return {
            "state": self.state(),
            "hits": self.hits,
            "misses": self.misses,
            "skipped": self.skipped,
            "timeouts": fleet.timeouts,
            "offered": self.offered,
            "pendingWrites": self.offered - self.finishedWrites,
            "stored": fleet.commits,
            "failedWrites": self.failedWrites,
            "droppedWrites": fleet.droppedWrites,
            "damaged": fleet.damaged,
            "purges": self.followed,
            "gaps": self.gaps,
            "invalidated": self.invalidated,
            "failedInvalidations": self.failedInvalidations,
            "replacements": self.replacements,
        }

