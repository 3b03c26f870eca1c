# -*- test-case-name: tests.test_fleet_store -*-
"""
The fleet store: cache entries in Redis, shared by every proxy of a fleet.

It knows nothing of HTTP: it takes and returns bytes and ints, and a
response head already serialised by the caller. Every call returns a
Deferred.

Keys (C{P} is the prefix, C{h} a short hash of the primary key, used as the
hash tag so that all of an entry's keys live on one Redis Cluster slot)::

    P{h}:e                 hash: variant key -> metadata (the variant list)
    P{h}:c:<object id>:<i> body chunk i of one fill
    P{h}:lock              the fill lock (SET NX PX), value = fencing token
    P{h}:fence             counter the fencing tokens come from (the
                           entry's generation: a fill lock and a purge
                           advance it)
    P{h}:purged            the generation the last purge advanced it to
    P{h}:pass              the pass marker (an uncacheable answer)
    P{x:<host hash>}:idx   set of primary keys under one scheme://authority
    P{t:<tag hash>}:tag    set of primary keys carrying one tag
    P{log}:purge           the purge log (a capped stream)
    P{log}:epoch           a random id that changes when the log is recreated

Every key has a TTL; an entry's keys and the indexes it is in live at least
as long as its freshness, plus its longest stale window, plus a grace.

A body is stored in chunks under a fresh object id per fill and becomes
visible only when the fill commits: a Lua script that checks the fill's
token still holds the lock, checks every chunk is there, writes the
metadata, drops the lock and publishes a wake-up. A purge deletes the
metadata and the lock, so a fill that started before it cannot store;
it also advances the entry's generation and records it, so that a fill
that no longer held the lock (given up, or never taken) and takes it
again only to store may do so only if no purge came since the generation
it saw when it started (L{FleetStore.beginFill}'s C{generation}). A body
read back is checked against its length and SHA-256: a missing chunk or a
bad digest is a miss, never a partial body.

Purges are appended to the purge log once the entries are gone (a second
script, on the log's slot: in Redis Cluster one script cannot touch both an
entry's slot and the log's), and a purge succeeds only when both are
confirmed. A commit that replaces a stored object of the same variant (a
refetch after it went stale, a revalidation that found it changed) appends
a C{replaced} record naming the key and the new object id: within the
commit script on a single node, right after it in a cluster. Every process
follows the log with L{PurgeLogFollower}; a gap in what it could read (log
trimmed past its position, log recreated after a restart) is reported so
that the process drops everything its local tiers took from the fleet.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, DeferredList, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cachingproxy.fleet.breaker import WriteQueue
from cachingproxy.fleet.redis import FleetError, FleetTimeout, ReplyError, Script, Subscriber

__all__ = [
    "FleetStore",
    "FleetVariant",
    "Lookup",
    "Fill",
    "FillOutcome",
    "FillAttempt",
    "WaitOutcome",
    "PurgeLogFollower",
    "hashTag",
]

_log = Logger()


def hashTag(key: bytes) -> bytes:
    """
    The hash tag of an entry: 16 hex digits of the SHA-256 of its primary
    key.
    """
    return hashlib.sha256(key).hexdigest()[:16].encode("ascii")


def _authorityOf(key: bytes) -> bytes:
    """
    C{scheme://authority} of a primary key (after an optional method).
    """
    url = key.rsplit(b" ", 1)[-1]
    scheme, sep, rest = url.partition(b"://")
    if not sep:
        return url
    return scheme + b"://" + rest.split(b"/", 1)[0]


@dataclass(frozen=True)
class FleetVariant:
    """
    One stored variant of an entry.

    @ivar key: the primary key.
    @ivar variantKey: what tells it apart from the entry's other variants.
    @ivar objectId: the fill's object id, naming its chunks (local tiers
        keep it to notice a replacement).
    @ivar length: the body's length.
    @ivar chunks: how many chunks the body is in.
    @ivar chunkSize: the size of every chunk but the last.
    @ivar digest: the body's SHA-256, hex.
    @ivar head: the stored response head, serialised by the caller.
    @ivar expires: when the fleet drops it (seconds, the store's clock).
    """

    key: bytes
    variantKey: bytes
    objectId: bytes
    length: int
    chunks: int
    chunkSize: int
    digest: bytes
    head: bytes
    expires: float

    def encode(self) -> bytes:
        return json.dumps(
            {
                "k": self.key.decode("latin-1"),
                "v": self.variantKey.decode("latin-1"),
                "o": self.objectId.decode("latin-1"),
                "l": self.length,
                "n": self.chunks,
                "s": self.chunkSize,
                "d": self.digest.decode("latin-1"),
                "h": self.head.decode("latin-1"),
                "x": self.expires,
            },
            separators=(",", ":"),
        ).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> "FleetVariant":
        d = json.loads(data)
        return cls(
            key=d["k"].encode("latin-1"),
            variantKey=d["v"].encode("latin-1"),
            objectId=d["o"].encode("latin-1"),
            length=int(d["l"]),
            chunks=int(d["n"]),
            chunkSize=int(d["s"]),
            digest=d["d"].encode("latin-1"),
            head=d["h"].encode("latin-1"),
            expires=float(d["x"]),
        )


@dataclass(frozen=True)
class Lookup:
    """
    What the fleet holds for a primary key.

    @ivar variants: the live variants.
    @ivar passMarker: an uncacheable answer was seen lately: go upstream,
        do not wait for a fill.
    @ivar locked: a fill is in progress somewhere in the fleet.
    @ivar generation: the entry's generation (see L{FleetStore.beginFill}).
    @ivar bodies: the bodies of small variants (one chunk, up to the
        store's C{inlineBody} bytes in all), read with the variants, by
        object id; unchecked until L{FleetStore.readBody} is given them.
    """

    variants: Tuple[FleetVariant, ...]
    passMarker: bool
    locked: bool
    generation: bytes = b"0"
    bodies: Dict[bytes, bytes] = field(default_factory=dict)


class FillOutcome(enum.Enum):
    ACQUIRED = "acquired"  # this process fills
    LOCKED = "locked"  # another fill holds the lock: wait
    PASS = "pass"  # a pass marker is set: go upstream, do not wait
    PURGED = "purged"  # purged since the generation given: do not store


@dataclass(frozen=True)
class FillAttempt:
    outcome: FillOutcome
    fill: Optional["Fill"] = None
    remaining: float = 0.0  # seconds left on the lock or the pass marker


class WaitOutcome(enum.Enum):
    WOKEN = "woken"  # a wake-up message came (commit, abort, pass, purge)
    RELEASED = "released"  # the safety-net poll found the lock gone
    TIMEOUT = "timeout"  # the bounded wait ran out


# ---------------------------------------------------------------- scripts

_LOOKUP = Script(
    """
-- KEYS: entry[, pass, lock, fence]; ARGV: the entry's chunk key prefix,
-- most body bytes returned (bodies of one chunk only). The chunks are on
-- the entry's slot, but not declared: while the slot moves to another
-- node one may be there already, and reading it fails (pcall: then it is
-- read as usual, redirected). In a cluster the pass marker, the lock and
-- the fence are asked for apart (each redirected on its own while the
-- slot moves: a script declaring them all would be refused while some
-- are moved and others not).
local fields = redis.call('HGETALL', KEYS[1])
local bodies = {}
local budget = tonumber(ARGV[2])
if budget > 0 then
  for i = 2, #fields, 2 do
    local ok, meta = pcall(cjson.decode, fields[i])
    if ok and type(meta) == 'table' and meta.n == 1 and type(meta.o) == 'string'
        and type(meta.l) == 'number' and meta.l <= budget then
      local body = redis.pcall('GET', ARGV[1] .. meta.o .. ':0')
      if type(body) == 'string' then
        budget = budget - #body
        bodies[#bodies + 1] = meta.o
        bodies[#bodies + 1] = body
      end
    end
  end
end
if #KEYS == 1 then
  return {fields, bodies}
end
return {fields, bodies, redis.call('EXISTS', KEYS[2]), redis.call('EXISTS', KEYS[3]),
        redis.call('GET', KEYS[4])}
"""
)

_ACQUIRE = Script(
    """
-- KEYS: lock, pass, fence, purged; ARGV: lease ms, fence ttl ms, random,
-- generation the fill started at ('': any)
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'pass', redis.call('PTTL', KEYS[2])}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'locked', redis.call('PTTL', KEYS[1])}
end
if ARGV[4] ~= '' and tonumber(redis.call('GET', KEYS[4]) or '0') > tonumber(ARGV[4]) then
  return {'purged', 0}
end
local n = redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
local token = n .. ':' .. ARGV[3]
redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
return {'ok', token}
"""
)

_RENEW = Script(
    """
-- KEYS: lock; ARGV: token, lease ms
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
)

_RELEASE = Script(
    """
-- KEYS: lock, pass; ARGV: token, channel, message, pass ttl ms (0: none)
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""
)

_COMMIT = Script(
    """
-- KEYS: entry, lock, pass, [purge log, log epoch,] chunk...
-- ARGV: token, variant key, metadata, ttl ms, channel, message, whether the
-- log's keys are in KEYS (1 or 0), the replaced record, log maxlen, log ttl
-- ms, epoch candidate
local first = 4
if ARGV[7] == '1' then first = 6 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {-1, false, 0} end
for i = first, #KEYS do
  if redis.call('PEXPIRE', KEYS[i], ARGV[4]) == 0 then return {-2, false, 0} end
end
local old = redis.call('HGET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
redis.call('DEL', KEYS[2], KEYS[3])
local logged = 0
if old and first == 6 then
  redis.call('SET', KEYS[5], ARGV[11], 'NX')
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], '*', 'kind', 'replaced', 'value', ARGV[8])
  redis.call('PEXPIRE', KEYS[4], ARGV[10])
  redis.call('PEXPIRE', KEYS[5], ARGV[10])
  logged = 1
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {1, old, logged}
"""
)

_DROP_VARIANT = Script(
    """
-- KEYS: entry; ARGV: variant key, metadata it must still have
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
)

_PURGE_ENTRY = Script(
    """
-- KEYS: entry, lock, pass, fence, purged; ARGV: channel, message, fence
-- ttl ms
local metas = redis.call('HVALS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
local generation = redis.call('INCR', KEYS[4])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
redis.call('SET', KEYS[5], generation, 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return metas
"""
)

_INDEX_ADD = Script(
    """
-- KEYS: index set; ARGV: ttl ms, member
redis.call('SADD', KEYS[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
"""
)

_LOG_APPEND = Script(
    """
-- KEYS: stream, epoch; ARGV: maxlen, ttl ms, epoch candidate, kind, value
redis.call('SET', KEYS[2], ARGV[3], 'NX')
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'kind', ARGV[4], 'value', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return id
"""
)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


# ---------------------------------------------------------------- fill


class Fill:
    """
    A fill holding the entry's lock: write the body, then L{commit} (or
    L{abort}, or L{markPass}). The lease is renewed every third of it
    while the fill is open; L{lost} turns true when a renewal finds the lock
    gone (lease expired, purge), and then L{commit} fails.

    @ivar token: the fencing token.
    @ivar tooBig: the body went over the store's C{maxObjectSize}; the
        commit will refuse it.
    """

    def __init__(self, store: "FleetStore", key: bytes, token: bytes):
        self._store = store
        self.key = key
        self.token = token
        self.objectId = os.urandom(8).hex().encode("ascii")
        self._h = hashTag(key)
        self._buffer = bytearray()
        self._digest = hashlib.sha256()
        self._length = 0
        self._chunks = 0
        self._writes: List[Deferred] = []
        self._renewal = None
        self.lost = False
        self.closed = False
        self.tooBig = False
        #: the entry's generation when the lock was taken
        self.generation = token.split(b":", 1)[0]
        store._fills.add(self)
        self._scheduleRenewal()

    def _scheduleRenewal(self) -> None:
        self._renewal = self._store._clock.callLater(self._store.lease / 3.0, self._renew)

    def _renew(self) -> None:
        self._renewal = None
        if self.closed:
            return

        def renewed(ok):
            if not ok:
                self.lost = True
            elif not self.closed:
                self._scheduleRenewal()

        def failed(f):
            # a slow or unreachable node: try again; the lock may expire
            if not self.closed:
                self._scheduleRenewal()

        self.renew().addCallbacks(renewed, failed)

    def renew(self) -> Deferred:
        """
        Extend the lease now.

        @return: a Deferred firing with whether the lock is still ours.
        """
        s = self._store
        return _RENEW(s._client, [s._k(self._h, b"lock")], [self.token, _ms(s.lease)], timeout=s.timeout)

    def _stopRenewal(self) -> None:
        self.closed = True
        self._store._fills.discard(self)
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()
        self._renewal = None

    def write(self, data: bytes) -> None:
        """
        Add C{data} to the body; full chunks are sent at once.
        """
        if self.closed or self.tooBig:
            return
        self._length += len(data)
        if self._length > self._store.maxObjectSize:
            self.tooBig = True
            self._buffer = bytearray()
            return
        self._digest.update(data)
        self._buffer += data
        size = self._store.chunkSize
        while len(self._buffer) >= size:
            self._sendChunk(bytes(self._buffer[:size]))
            del self._buffer[:size]

    def _chunkKey(self, i: int) -> bytes:
        return self._store._k(self._h, b"c:" + self.objectId + b":%d" % i)

    def _sendChunk(self, data: bytes) -> None:
        s = self._store
        k = self._chunkKey(self._chunks)
        self._chunks += 1
        # until the commit gives them the entry's TTL, chunks live long
        # enough for the fill to finish, no longer
        d = s._client.execute(b"SET", k, data, b"PX", _ms(s.chunkHold), key=k, timeout=s.writeTimeout)
        self._writes.append(d)

    @inlineCallbacks
    def commit(self, variantKey: bytes, head: bytes, freshFor: float, staleFor: float = 0.0, tags: Sequence[bytes] = ()):
        """
        Make the body visible as C{variantKey}'s, with C{head} as its stored
        head; it lives C{freshFor + staleFor + grace} seconds.

        When it replaces a stored object of the same variant, the purge log
        gets a C{b"replaced"} record (C{new object id + b" " + key}), so
        that the other processes drop the local copies they took from the
        old one: in the commit script on a single node, right after it in
        a cluster (a failure then is logged and counted in
        C{unloggedReplacements}; the commit stands).

        @return: a Deferred firing with whether the entry is now visible
            (C{False}: the lock was lost, a purge came first, a chunk was
            evicted, the body was too big, or a write failed).
        """
        s = self._store
        if self.closed:
            return False
        if self.tooBig or self.lost:
            yield self.abort()
            return False
        self._stopRenewal()
        if self._buffer or self._chunks == 0:
            self._sendChunk(bytes(self._buffer))
            self._buffer = bytearray()
        ttl = max(0.0, freshFor) + max(0.0, staleFor) + s.grace
        try:
            # the chunks and the indexes, in parallel; both before the
            # commit: a visible entry is always reachable by purges
            yield gatherResults(self._writes + [s._index(self.key, ttl, tags)], consumeErrors=True)
            variant = FleetVariant(
                key=self.key,
                variantKey=variantKey,
                objectId=self.objectId,
                length=self._length,
                chunks=self._chunks,
                chunkSize=s.chunkSize,
                digest=self._digest.hexdigest().encode("ascii"),
                head=head,
                expires=s._clock.seconds() + ttl,
            )
            # A replaced object is logged by the commit itself, atomically,
            # where the log shares the entry's node; in a cluster it is on
            # another slot, which one script cannot touch: logged next.
            logHere = not s._client.isCluster
            keys = [s._k(self._h, b"e"), s._k(self._h, b"lock"), s._k(self._h, b"pass")]
            if logHere:
                keys += [s.logKey, s.epochKey]
            keys += [self._chunkKey(i) for i in range(self._chunks)]
            record = self.objectId + b" " + self.key
            status, old, logged = yield _COMMIT(
                s._client,
                keys,
                [self.token, variantKey, variant.encode(), _ms(ttl), s.channel, self._h,
                 b"1" if logHere else b"0", record, s.purgeLogMaxLen, _ms(s.purgeLogTTL),
                 os.urandom(8).hex()],
                timeout=s.writeTimeout,
            )
        except Exception as e:
            s._countFailure(e)
            s.failedCommits += 1
            yield self._dropChunks()
            return False
        if status != 1:
            s.failedCommits += 1
            self.lost = True
            yield self._dropChunks()
            return False
        s.commits += 1
        if old:
            s.replaced += 1
            if not logged:
                try:
                    yield s._appendLog(b"replaced", record)
                except Exception as e:
                    # The new object is visible; copies of the old one
                    # elsewhere live out their own freshness.
                    s._countFailure(e)
                    s.unloggedReplacements += 1
                    s._log.warn("fleet: the replacement of {key!r} was not logged: {error}",
                                key=self.key, error=e)
            yield s._dropChunksOf([FleetVariant.decode(old)])
        return True

    def _dropChunks(self) -> Deferred:
        if not self._chunks:
            return succeed(None)
        keys = [self._chunkKey(i) for i in range(self._chunks)]
        return self._store._client.execute(b"DEL", *keys, key=keys[0]).addErrback(lambda f: None)

    @inlineCallbacks
    def abort(self):
        """
        Give the lock up (waiters are woken and one of them takes over) and
        drop the chunks written.
        """
        if self.closed and not self.tooBig and not self.lost:
            return None
        self._stopRenewal()
        s = self._store
        try:
            yield _RELEASE(
                s._client,
                [s._k(self._h, b"lock"), s._k(self._h, b"pass")],
                [self.token, s.channel, self._h, 0],
                timeout=s.writeTimeout,
            )
        except Exception as e:
            s._countFailure(e)
        yield self._dropChunks()

    @inlineCallbacks
    def markPass(self, ttl: Optional[float] = None):
        """
        The answer was not storable: drop the lock, set the pass marker for
        C{ttl} seconds (the store's C{passTTL} by default) and wake the
        waiters, who then go upstream in parallel.

        @return: whether the lock was still ours.
        """
        self._stopRenewal()
        s = self._store
        ok = yield _RELEASE(
            s._client,
            [s._k(self._h, b"lock"), s._k(self._h, b"pass")],
            [self.token, s.channel, self._h, _ms(s.passTTL if ttl is None else ttl)],
            timeout=s.writeTimeout,
        )
        yield self._dropChunks()
        return bool(ok)


# ---------------------------------------------------------------- store


class FleetStore:
    """
    Cache entries in Redis (see the module docstring).

    @param client: a L{cachingproxy.fleet.redis.RedisClient} or
        L{cachingproxy.fleet.redis.ClusterClient}.
    @param reactor: the reactor (connections of the wake-up subscriber).
    @param clock: L{IReactorTime} for leases, waits and expiry times (the
        reactor by default).
    @param inlineBody: a lookup also returns the bodies of the entry's
        one-chunk variants, up to this many bytes in all (0: none), so that
        a small hit takes one round trip. Kept small: a lookup has the
        shorter deadline (a larger body is read next, with a deadline that
        grows with its size) and most lookups are misses.

    @ivar hits: lookups that found a live variant.
    @ivar misses: lookups that found none, and bodies found damaged.
    @ivar damaged: bodies with a missing chunk or a bad digest.
    @ivar lockWaits: waits for another fill.
    @ivar timeouts: commands that missed their deadline.
    @ivar commits: fills made visible. C{failedCommits}: refused or failed.
    @ivar replaced: commits that replaced a stored object of the same
        variant (logged, see L{Fill.commit}); C{unloggedReplacements}: those
        whose log record failed.
    @ivar purged: variants removed by purges.
    """

    _log = Logger()

    def __init__(
        self,
        client,
        reactor,
        clock=None,
        prefix: bytes = b"cp:",
        chunkSize: int = 256 * 1024,
        maxObjectSize: int = 8 * 1024 * 1024,
        lease: float = 5.0,
        grace: float = 60.0,
        passTTL: float = 5.0,
        chunkHold: float = 120.0,
        timeout: float = 0.05,
        writeTimeout: float = 1.0,
        pollInterval: float = 0.5,
        purgeLogMaxLen: int = 10000,
        purgeLogTTL: float = 7 * 86400.0,
        fenceTTL: float = 600.0,
        writeQueue: Optional[WriteQueue] = None,
        inlineBody: int = 16 * 1024,
    ):
        self._client = client
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self.prefix = prefix
        self.chunkSize = chunkSize
        self.maxObjectSize = maxObjectSize
        self.lease = lease
        self.grace = grace
        self.passTTL = passTTL
        self.chunkHold = chunkHold
        self.timeout = timeout
        self.writeTimeout = writeTimeout
        self.pollInterval = pollInterval
        self.purgeLogMaxLen = purgeLogMaxLen
        self.purgeLogTTL = purgeLogTTL
        self.fenceTTL = fenceTTL
        self.inlineBody = inlineBody
        self.channel = prefix + b"wake"
        self.writes = writeQueue or WriteQueue()
        self._waiters: Dict[bytes, List[Deferred]] = {}
        self._fills: set = set()
        self._subscriber: Optional[Subscriber] = None
        self.hits = 0
        self.misses = 0
        self.damaged = 0
        self.lockWaits = 0
        self.timeouts = 0
        self.commits = 0
        self.failedCommits = 0
        self.replaced = 0
        self.unloggedReplacements = 0
        self.purged = 0

    # -- keys

    def _k(self, h: bytes, part: bytes) -> bytes:
        return self.prefix + b"{" + h + b"}:" + part

    def keysOf(self, key: bytes) -> Dict[str, bytes]:
        """
        The fixed keys of an entry (the chunk keys come from its variants).
        """
        h = hashTag(key)
        return {p: self._k(h, p.encode()) for p in ("e", "lock", "fence", "purged", "pass")}

    def chunkKeys(self, variant: FleetVariant) -> List[bytes]:
        h = hashTag(variant.key)
        return [self._k(h, b"c:" + variant.objectId + b":%d" % i) for i in range(variant.chunks)]

    def hostIndexKey(self, key: bytes) -> bytes:
        return self._k(b"x:" + hashTag(_authorityOf(key)), b"idx")

    def tagIndexKey(self, tag: bytes) -> bytes:
        return self._k(b"t:" + hashTag(tag), b"tag")

    @property
    def logKey(self) -> bytes:
        return self._k(b"log", b"purge")

    @property
    def epochKey(self) -> bytes:
        return self._k(b"log", b"epoch")

    # -- metrics

    @property
    def droppedWrites(self) -> int:
        return self.writes.dropped

    def breakerStates(self) -> Dict[str, str]:
        """
        Each node's breaker state, by C{host:port}.
        """
        return {f"{p.address.host}:{p.address.port}": p.breaker.state.value for p in self._client.pools()}

    def _countFailure(self, e) -> None:
        if isinstance(e, FleetTimeout):
            self.timeouts += 1

    def _counted(self, d: Deferred) -> Deferred:
        def failed(f):
            self._countFailure(f.value)
            return f

        return d.addErrback(failed)

    # -- wake-ups

    def start(self, address=None) -> Deferred:
        """
        Subscribe to wake-up messages (on C{address}, by default the nodes
        known, one at a time, moving on when one fails). Without it, waiters
        rely on their polls.
        """
        if address is None:
            if self._client.isCluster:
                address = list(self._client._seeds) + [p.address for p in self._client.pools()]
            else:
                address = self._client.pools()[0].address
        self._subscriber = Subscriber(self._reactor, address, [self.channel], self._message, self._resubscribed)
        return self._subscriber.start()

    def stop(self) -> Deferred:
        """
        Stop renewing the leases of open fills, end every wait (as
        TIMEOUT) and unsubscribe.
        """
        for f in list(self._fills):
            f._stopRenewal()
        for h in list(self._waiters):
            self._wake(h, WaitOutcome.TIMEOUT)
        if self._subscriber is not None:
            subscriber, self._subscriber = self._subscriber, None
            return subscriber.stop()
        return succeed(None)

    def _message(self, channel: bytes, h: bytes) -> None:
        self._wake(h, WaitOutcome.WOKEN)

    def _resubscribed(self) -> None:
        # messages sent while disconnected are lost: poll every waiter now
        for h in list(self._waiters):
            self._poll(h)

    def _wake(self, h: bytes, outcome: WaitOutcome) -> None:
        for d in self._waiters.pop(h, []):
            if not d.called:
                d.callback(outcome)

    def _poll(self, h: bytes) -> None:
        lock = self._k(h, b"lock")

        def checked(exists):
            if not exists:
                self._wake(h, WaitOutcome.RELEASED)

        self._client.execute(b"EXISTS", lock, timeout=self.timeout).addCallbacks(checked, lambda f: None)

    def waitForFill(self, key: bytes, maxWait: float) -> Deferred:
        """
        Wait for the fill in progress elsewhere to finish: woken by its
        message, or by a jittered poll finding the lock gone, or after
        C{maxWait} seconds.

        @return: a Deferred firing with a L{WaitOutcome}.
        """
        self.lockWaits += 1
        h = hashTag(key)
        d = Deferred()
        self._waiters.setdefault(h, []).append(d)
        timers = []

        def pollLater():
            delay = self.pollInterval * (0.5 + random.random())
            timers.append(self._clock.callLater(delay, pollNow))

        def pollNow():
            if d.called:
                return
            self._poll(h)
            pollLater()

        def timeout():
            if not d.called:
                waiters = self._waiters.get(h, [])
                if d in waiters:
                    waiters.remove(d)
                    if not waiters:
                        del self._waiters[h]
                d.callback(WaitOutcome.TIMEOUT)

        timers.append(self._clock.callLater(maxWait, timeout))
        pollLater()

        def cleanup(result):
            for t in timers:
                if t.active():
                    t.cancel()
            return result

        return d.addBoth(cleanup)

    # -- reading

    def lookup(self, key: bytes) -> Deferred:
        """
        One round trip: the variants, the pass marker, the lock, the
        generation, and the bodies of small variants (see L{Lookup}).

        @return: a Deferred firing with a L{Lookup}.
        """
        h = hashTag(key)
        prefix = self.prefix + b"{" + h + b"}:"
        if not self._client.isCluster:
            d = _LOOKUP(
                self._client,
                [prefix + b"e", prefix + b"pass", prefix + b"lock", prefix + b"fence"],
                [prefix + b"c:", self.inlineBody],
                timeout=self.timeout,
            )
        else:
            d = gatherResults(
                [_LOOKUP(self._client, [prefix + b"e"], [prefix + b"c:", self.inlineBody], timeout=self.timeout)]
                + self._client.pipeline(
                    [(b"EXISTS", prefix + b"pass"), (b"EXISTS", prefix + b"lock"), (b"GET", prefix + b"fence")],
                    key=prefix + b"e",
                    timeout=self.timeout,
                ),
                consumeErrors=True,
            )

            def flat(replies):
                return replies[0] + replies[1:]

            def first(f):
                return getattr(f.value, "subFailure", f)

            d.addCallbacks(flat, first)

        def got(replies):
            fields, inline, passMarker, locked, generation = replies
            now = self._clock.seconds()
            variants = []
            for i in range(1, len(fields), 2):
                try:
                    v = FleetVariant.decode(fields[i])
                except (ValueError, KeyError):
                    continue
                if v.key == key and v.expires > now:
                    variants.append(v)
            if variants:
                self.hits += 1
            else:
                self.misses += 1
            bodies = {inline[i]: inline[i + 1] for i in range(0, len(inline), 2)} if inline else {}
            return Lookup(tuple(variants), bool(passMarker), bool(locked), generation or b"0", bodies)

        return self._counted(d).addCallback(got)

    def readBody(self, variant: FleetVariant, batch: int = 8, inline: Optional[bytes] = None) -> Deferred:
        """
        Read a variant's whole body, checked against its length and digest.

        @param inline: the body a L{Lookup} returned with the variant, if
            any: checked, and read again from its chunks if it fails.
        @return: a Deferred firing with the body, or C{None} (a miss) if a
            chunk is missing or the digest does not match; the variant is
            then dropped.
        """
        if (inline is not None and len(inline) == variant.length
                and hashlib.sha256(inline).hexdigest().encode() == variant.digest):
            return succeed(inline)
        return self._readBody(variant, batch)

    @inlineCallbacks
    def _readBody(self, variant: FleetVariant, batch: int):
        keys = self.chunkKeys(variant)
        ds = [
            self._client.execute(b"MGET", *keys[i : i + batch], key=keys[i], timeout=self.writeTimeout)
            for i in range(0, len(keys), batch)
        ]
        try:
            replies = yield gatherResults(ds, consumeErrors=True)
        except Exception as e:
            self._countFailure(getattr(getattr(e, "subFailure", None), "value", e))
            raise getattr(getattr(e, "subFailure", None), "value", e)
        parts = [c for r in replies for c in r]
        body = None
        if all(p is not None for p in parts):
            body = b"".join(parts)
            if len(body) != variant.length or hashlib.sha256(body).hexdigest().encode() != variant.digest:
                body = None
        if body is None:
            self.damaged += 1
            self.misses += 1
            h = hashTag(variant.key)
            try:
                yield _DROP_VARIANT(self._client, [self._k(h, b"e")], [variant.variantKey, variant.encode()], timeout=self.writeTimeout)
            except FleetError:
                pass
            return None
        return body

    # -- filling

    @inlineCallbacks
    def beginFill(self, key: bytes, generation: Optional[bytes] = None):
        """
        Try to take the entry's fill lock.

        @param generation: the entry's generation when the response to be
            stored was asked for (a L{Lookup}'s, a given-up L{Fill}'s):
            if a purge came since, the lock is not taken
            (L{FillOutcome.PURGED}). C{None}: whatever came before.
        @return: a Deferred firing with a L{FillAttempt}.
        """
        k = self.keysOf(key)
        reply = yield self._counted(
            _ACQUIRE(
                self._client,
                [k["lock"], k["pass"], k["fence"], k["purged"]],
                [_ms(self.lease), _ms(self.fenceTTL), os.urandom(6).hex(), b"" if generation is None else generation],
                timeout=self.timeout,
            )
        )
        kind, value = reply
        if kind == b"ok":
            return FillAttempt(FillOutcome.ACQUIRED, Fill(self, key, value))
        if kind == b"purged":
            return FillAttempt(FillOutcome.PURGED)
        remaining = max(0, value) / 1000.0
        if kind == b"pass":
            return FillAttempt(FillOutcome.PASS, remaining=remaining)
        return FillAttempt(FillOutcome.LOCKED, remaining=remaining)

    def purgedSince(self, key: bytes, generation: bytes) -> Deferred:
        """
        @return: a Deferred firing with whether C{key} was purged since its
            generation was C{generation} (a L{Lookup}'s, a L{Fill}'s).
        """
        k = self.keysOf(key)
        d = self._counted(self._client.execute(b"GET", k["purged"], timeout=self.writeTimeout))
        return d.addCallback(lambda purged: int(purged or 0) > int(generation))

    def markPass(self, key: bytes, ttl: Optional[float] = None) -> Deferred:
        """
        Set the pass marker without holding the lock.
        """
        k = self.keysOf(key)
        return self._counted(
            self._client.execute(b"SET", k["pass"], b"1", b"PX", _ms(self.passTTL if ttl is None else ttl), timeout=self.writeTimeout)
        )

    def submitWrite(self, write: Callable[[], Deferred], size: int = 0) -> Optional[Deferred]:
        """
        Run a cache write through the bounded queue.

        @param size: the bytes it holds (its body) until it is done.
        @return: its Deferred, or C{None} if it was dropped (counted in
            L{droppedWrites}).
        """
        return self.writes.submit(write, size)

    def _index(self, key: bytes, ttl: float, tags: Sequence[bytes]) -> Deferred:
        ds = [_INDEX_ADD(self._client, [self.hostIndexKey(key)], [_ms(ttl), key], timeout=self.writeTimeout)]
        for tag in tags:
            ds.append(_INDEX_ADD(self._client, [self.tagIndexKey(tag)], [_ms(ttl), key], timeout=self.writeTimeout))
        return gatherResults(ds, consumeErrors=True)

    def _dropChunksOf(self, variants: Sequence[FleetVariant]) -> Deferred:
        ds = []
        for v in variants:
            keys = self.chunkKeys(v)
            if keys:
                ds.append(self._client.execute(b"DEL", *keys, key=keys[0], timeout=self.writeTimeout))
        return DeferredList(ds, consumeErrors=True)

    # -- purging

    @inlineCallbacks
    def _purgeEntry(self, key: bytes):
        k = self.keysOf(key)
        h = hashTag(key)
        metas = yield _PURGE_ENTRY(
            self._client,
            [k["e"], k["lock"], k["pass"], k["fence"], k["purged"]],
            [self.channel, h, _ms(self.fenceTTL)],
            timeout=self.writeTimeout,
        )
        variants = []
        for m in metas:
            try:
                variants.append(FleetVariant.decode(m))
            except (ValueError, KeyError):
                continue
        yield self._dropChunksOf(variants)
        self.purged += len(variants)
        return len(variants)

    def _appendLog(self, kind: bytes, value: bytes) -> Deferred:
        return _LOG_APPEND(
            self._client,
            [self.logKey, self.epochKey],
            [self.purgeLogMaxLen, _ms(self.purgeLogTTL), os.urandom(8).hex(), kind, value],
            timeout=self.writeTimeout,
        )

    @inlineCallbacks
    def purgeKey(self, key: bytes):
        """
        Remove every variant of C{key} and any fill in progress, then log
        the purge.

        @return: a Deferred firing with the number of variants removed once
            Redis has confirmed both; failing if either failed.
        """
        n = yield self._counted(self._purgeEntry(key))
        yield self._counted(self._appendLog(b"key", key))
        return n

    @inlineCallbacks
    def _purgeIndexed(self, index: bytes, match: Callable[[bytes], bool], dropIndex: bool):
        cursor = b"0"
        members: List[bytes] = []
        while True:
            cursor, batch = yield self._client.execute(b"SSCAN", index, cursor, b"COUNT", 1000, timeout=self.writeTimeout)
            members.extend(m for m in batch if match(m))
            if cursor == b"0":
                break
        total = 0
        for i in range(0, len(members), 64):
            counts = yield gatherResults([self._purgeEntry(m) for m in members[i : i + 64]], consumeErrors=True)
            total += sum(counts)
        if dropIndex:
            yield self._client.execute(b"DEL", index, timeout=self.writeTimeout)
        elif members:
            yield self._client.execute(b"SREM", index, *members, timeout=self.writeTimeout)
        return total

    @inlineCallbacks
    def purgePrefix(self, prefix: bytes):
        """
        Remove every entry whose primary key starts with C{prefix} (which
        must include C{scheme://authority}), found through the host index.

        @return: a Deferred firing with the number of variants removed.
        """
        n = yield self._counted(self._purgeIndexed(self.hostIndexKey(prefix), lambda m: m.startswith(prefix), False))
        yield self._counted(self._appendLog(b"prefix", prefix))
        return n

    @inlineCallbacks
    def purgeTag(self, tag: bytes):
        """
        Remove every entry committed with C{tag}.

        @return: a Deferred firing with the number of variants removed.
        """
        n = yield self._counted(self._purgeIndexed(self.tagIndexKey(tag), lambda m: True, True))
        yield self._counted(self._appendLog(b"tag", tag))
        return n


def _streamId(value) -> Tuple[int, int]:
    ms, _, seq = value.partition(b"-") if isinstance(value, bytes) else value.encode().partition(b"-")
    return (int(ms), int(seq or 0))


class PurgeLogFollower:
    """
    Follows the purge log from a remembered position.

    C{onPurge(kind, value)} gets each purge (kind C{b"key"}, C{b"prefix"} or
    C{b"tag"}) and each replacement (kind C{b"replaced"}, value C{object id
    + b" " + key}: the object now stored for a variant of the key);
    C{onGap()} is called when purges may have been missed (the
    log was trimmed past the position, or it was recreated: a Redis restart,
    an eviction): the process must then drop everything its local tiers took
    from the fleet.

    @ivar position: the last log id read, as C{(ms, seq)}.
    @ivar gaps: how many gaps were reported.
    """

    def __init__(self, store: FleetStore, onPurge: Callable[[bytes, bytes], None], onGap: Callable[[], None], batch: int = 500):
        self._store = store
        self._onPurge = onPurge
        self._onGap = onGap
        self.batch = batch
        self.position: Tuple[int, int] = (0, 0)
        self.epoch: Optional[bytes] = None
        # the log's entries-added count when it was at self.position
        self._added = 0
        self.gaps = 0
        self.errors = 0
        self._loop = None

    def _read(self, withEntries: bool) -> Deferred:
        s = self._store
        commands = []
        if withEntries:
            pos = b"%d-%d" % self.position
            commands.append((b"XREAD", b"COUNT", self.batch, b"STREAMS", s.logKey, pos))
        commands += [(b"XINFO", b"STREAM", s.logKey), (b"GET", s.epochKey)]
        ds = s._client.pipeline(commands, key=s.logKey, timeout=s.writeTimeout)
        return DeferredList(ds, consumeErrors=True)

    @staticmethod
    def _info(result) -> Optional[Dict[bytes, object]]:
        ok, value = result
        if not ok:
            if value.check(ReplyError) and b"no such key" in str(value.value).encode():
                return None
            value.raiseException()
        return {value[i]: value[i + 1] for i in range(0, len(value), 2)}

    @inlineCallbacks
    def start(self):
        """
        Take the log's current end as the position (the local tiers hold
        nothing from the fleet yet).
        """
        info, epoch = yield self._read(False)
        info = self._info(info)
        if info is None:
            self.position, self.epoch, self._added = (0, 0), None, 0
        else:
            self.position = _streamId(info[b"last-generated-id"])
            self.epoch = epoch[1] if epoch[0] else None
            self._added = int(info[b"entries-added"])

    @inlineCallbacks
    def poll(self):
        """
        Read what was logged since the position.

        @return: a Deferred firing with the number of purges handed to
            C{onPurge}, or C{-1} after a gap.
        """
        entries, info, epoch = yield self._read(True)
        if not entries[0]:
            entries[1].raiseException()
        info = self._info(info)
        epoch = epoch[1] if epoch[0] else None
        gap = False
        if info is None:
            gap = self.epoch is not None or self.position != (0, 0)
            newPosition, newEpoch, newAdded = (0, 0), None, 0
        else:
            newPosition = _streamId(info[b"last-generated-id"])
            newEpoch = epoch
            newAdded = int(info[b"entries-added"])
            firstKept = _streamId(info.get(b"recorded-first-entry-id") or b"0-0")
            if self.epoch is not None and epoch != self.epoch:
                gap = True  # recreated
            elif newPosition < self.position or newAdded < self._added:
                gap = True  # recreated
            elif firstKept > self.position and newAdded - self._added > int(info[b"length"]):
                # everything kept is past the position, and fewer entries
                # are kept than were added since: some were trimmed unread
                gap = True
        if gap:
            self.gaps += 1
            self.position, self.epoch, self._added = newPosition, newEpoch, newAdded
            self._onGap()
            return -1
        n = 0
        for _, items in entries[1] or []:
            for entryId, fields in items:
                f = {fields[i]: fields[i + 1] for i in range(0, len(fields), 2)}
                self._onPurge(f.get(b"kind", b""), f.get(b"value", b""))
                self.position = _streamId(entryId)
                self._added += 1
                n += 1
        if newEpoch is not None:
            self.epoch = newEpoch
        return n

    def run(self, interval: float = 1.0, clock=None) -> None:
        """
        Poll every C{interval} seconds (on C{clock}, the store's by default)
        until L{stop}; a failed poll is counted in C{errors} and retried at
        the next tick.
        """
        def tick():
            return self.poll().addErrback(failed)

        def failed(f):
            self.errors += 1
            _log.warn("fleet purge log: {error}", error=f.getErrorMessage())

        self._loop = LoopingCall(tick)
        self._loop.clock = clock if clock is not None else self._store._clock
        self._loop.start(interval, now=True)

    def stop(self) -> None:
        """
        Stop polling.
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
