# -*- test-case-name: tests.test_layer,tests.test_cache_end_to_end -*-
"""
Collapsed forwarding: concurrent misses for one key make one upstream
request (L{Flight}), led by the first miss's L{cachingproxy.cache.layer}
handler; the others wait for its response head, then stream the same body
as it arrives when it turns out storable, or each go upstream on their own
at once when it does not.

Across processes (workers sharing a disk store, proxies sharing a fleet
store) the collapsing has a second level: before its one upstream request,
a process's flight takes the key's fill lock (L{IFillLock}). Only one
request per process takes part in that step; the others wait in the flight
as before. The lock's answer is an L{ILease} (this process fetches, and says
when the entry is stored or not storable) or, after a bounded wait for the
fill another process holds, a L{Busy}: look the entry up again (through
the policy: it may not be usable for this request), go upstream in
parallel (the answer was not storable), or go upstream without storing
(the wait ran out).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from . import policy
from ..errors import BadGateway
from ..http.message import RequestHead, ResponseHead
from ..proxy.interfaces import ICacheExchange
from ..proxy.states import ExchangeState

if TYPE_CHECKING:
    from .layer import CacheLayer, _Fill

__all__ = ["Busy", "Flight", "IFillLock", "ILease", "NO_LEASE", "Waited"]


class Waited(enum.Enum):
    """
    How a wait for another process's fill of a key ended.
    """

    #: what is stored under the key changed: look it up again
    STORED = "stored"
    #: the answer was not storable (a pass marker): go upstream at once,
    #: in parallel, no queueing
    PASS = "pass"
    #: the wait ran out: go upstream, and do not store
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class Busy:
    """
    L{IFillLock.acquire}'s answer when another process was filling the
    key.

    @ivar outcome: a L{Waited}.
    @ivar waited: seconds spent waiting.
    """

    outcome: Waited
    waited: float = 0.0


class ILease(Interface):
    """
    The fill lock of one key, held by this process: it fetches the
    response and stores it if it may. Exactly one of L{commit},
    L{markPass} or L{release} ends it; later calls do nothing. Each
    returns a L{Deferred} (callers need not wait for it) that never fails.
    """

    key = Attribute("The primary key.")

    def commit() -> Deferred:
        """
        The entry is stored: release the lock; waiters look it up.
        """

    def markPass() -> Deferred:
        """
        The answer is not storable: release the lock and leave a pass
        marker for a short while, so that waiters, and misses that come
        meanwhile, go upstream in parallel instead of queueing.
        """

    def release() -> Deferred:
        """
        Give the lock up without storing (the fetch failed or was
        abandoned): one waiter takes it over.
        """


class IFillLock(Interface):
    """
    The cross-process step of collapsed forwarding: one fill of a key at a
    time among the processes sharing a store.

    A holder that dies must not wedge the others: its lock is released by
    the operating system, or expires.
    """

    def acquire(key: bytes, maxWait: float) -> Deferred:
        """
        Take C{key}'s fill lock, waiting up to C{maxWait} seconds while
        another process holds it.

        @return: a L{Deferred} that never fails, firing with an L{ILease}
            (this process fills) or a L{Busy} (see L{Waited}).
        """


@implementer(ILease)
class _NoLease:
    """
    A lease that is no lock: what a fill lock answers when it cannot work
    (a folder it cannot write, a fleet it cannot reach), so that the
    collapsing stays within the process.
    """

    key = b""

    def commit(self) -> Deferred:
        return succeed(None)

    def markPass(self) -> Deferred:
        return succeed(None)

    def release(self) -> Deferred:
        return succeed(None)


#: The L{ILease} that holds nothing.
NO_LEASE = _NoLease()


@implementer(IPushProducer)
class Flight:
    """
    One upstream fetch that several clients wait on (collapsed forwarding).

    Waiters joined before the response head arrives. At the head:

      - if the response is being stored, every waiter gets the same head
        and the body chunks as they arrive; the upstream is paused while
        any waiter's connection is full (a slow waiter slows the fetch, as
        the leader's own connection does);
      - otherwise each waiter goes upstream on its own at once: nobody gets
        a response that was not meant to be shared.

    Waiters are woken by the head itself: no polling, no queue behind an
    uncacheable object (only requests that arrive I{during} one fetch wait,
    and only until its head).
    """

    _log = Logger()

    def __init__(self, layer: "CacheLayer", key: bytes, request: RequestHead) -> None:
        self.layer = layer
        self.key = key
        self.request = request
        self.waiters: List = []
        self.streaming: List = []
        self.head: Optional[ResponseHead] = None
        self.leader: Optional["_Fill"] = None
        self._paused: set = set()
        self.fwd = "miss"
        #: the Cache-Status detail of the fetch, or None
        self.detail: Optional[bytes] = None

    # the cross-process step

    def waitForLock(self, exchange: ICacheExchange, fwd: str,
                    detail: Optional[bytes] = None) -> None:
        """
        The flight's first miss: take the key's fill lock (the layer's
        L{IFillLock}) before anyone goes upstream. Meanwhile C{exchange}
        waits like the misses that join; when the lock is ours the first of
        them still there leads the fetch.

        @param detail: the C{Cache-Status} detail of the fetch (why a tier
            was skipped), or C{None}.
        """
        self.fwd = fwd
        self.detail = detail
        self.join(exchange)
        d = self.layer.fillLock.acquire(self.key, self.layer.settings.collapseWait)
        d.addErrback(self._lockFailed)
        d.addCallback(self._lockAnswered)

    def _lockFailed(self, reason: Failure):
        self._log.failure("fill lock of {key} failed", reason, key=self.key)
        return NO_LEASE

    def _lockAnswered(self, result) -> None:
        if isinstance(result, Busy):
            # Another process filled (or tried): each waiter finds out on
            # its own what to do.
            self._done()
            waiters, self.waiters = self.waiters, []
            for exchange in waiters:
                exchange.onClientGone = None
                self.layer._afterWait(exchange, self.key, result)
            return
        while self.waiters:
            exchange = self.waiters.pop(0)
            exchange.onClientGone = None
            if exchange.state is ExchangeState.FORWARDING:
                self.layer._lead(exchange, self, result)
                return
        # Everyone left while the lock was being taken.
        self._done()
        result.release()

    def accepts(self, request: RequestHead) -> bool:
        """
        Whether C{request} may share this fetch: still before the head, and
        asking for the same thing (the same Vary-relevant fields are
        unknown yet, so only requests with identical fields are joined).
        """
        return self.head is None and list(request.headers.items()) == list(
            self.request.headers.items()
        ) and request.method == self.request.method

    def join(self, exchange: ICacheExchange) -> None:
        self.waiters.append(exchange)
        exchange.onClientGone = lambda: self._waiterGone(exchange)

    def _waiterGone(self, exchange: ICacheExchange) -> None:
        if exchange in self.waiters:
            self.waiters.remove(exchange)
        if exchange in self.streaming:
            self.streaming.remove(exchange)
            self._paused.discard(exchange)
            self._maybeResume()

    def _done(self) -> None:
        if self.layer._flights.get(self.key) is self:
            del self.layer._flights[self.key]

    def headArrived(self, leader: "_Fill", head: ResponseHead, storing: bool) -> None:
        self.leader = leader
        self.head = head
        self._done()
        waiters, self.waiters = self.waiters, []
        if not storing:
            for exchange in waiters:
                exchange.onClientGone = None
                self._goAlone(exchange)
            return
        if waiters:
            # From now on the fetch runs at the pace of its slowest reader,
            # the leader included.
            self.streaming.append(leader.exchange)
            leader.exchange.producer = WaiterPauser(self, leader.exchange)
        # The waiters get what a hit would give them: not the fields meant
        # for the leader's client alone (its cookie).
        unshared = policy.unsharedFields(head.headers, self.layer.settings.options)
        for exchange in waiters:
            if exchange.state is not ExchangeState.FORWARDING:
                continue
            copy = ResponseHead(head.status, head.reason, head.version, head.headers.copy())
            copy.headers.removeMany(unshared)
            self.layer.hideFields(copy)
            exchange.cacheResult = "MISS"
            self.streaming.append(exchange)
            exchange.producer = WaiterPauser(self, exchange)
            exchange.responseHead(copy, self.layer._statusFields(
                [], False, "miss", head.status, None, b"MISS", collapsed=True))

    def _goAlone(self, exchange: ICacheExchange) -> None:
        if exchange.state is not ExchangeState.FORWARDING:
            return
        self.layer._fetchUnshared(exchange, self.key)

    def bodyArrived(self, data: bytes) -> None:
        leader = self.leader.exchange
        for exchange in list(self.streaming):
            if exchange is not leader:
                exchange.responseBody(data)

    def ended(self) -> None:
        streaming, self.streaming = self.streaming, []
        leader, self.leader = self.leader, None
        for exchange in streaming:
            if exchange is leader.exchange:
                continue
            exchange.onClientGone = None
            exchange.responseEnd()

    def failed(self, reason: Failure, headSent: bool) -> None:
        self._done()
        waiters, self.waiters = self.waiters, []
        for exchange in waiters:
            exchange.onClientGone = None
            self._goAlone(exchange)
        streaming, self.streaming = self.streaming, []
        leader, self.leader = self.leader, None
        for exchange in streaming:
            if leader is not None and exchange is leader.exchange:
                continue
            exchange.onClientGone = None
            exchange.responseFailed(reason, True)

    def leaderDetached(self) -> bool:
        """
        The leading client left while others stream the fetch: drop it
        from the readers that pace the fetch.

        @return: whether others are streaming (so the fetch goes on).
        """
        leader = self.leader.exchange if self.leader is not None else None
        others = [e for e in self.streaming if e is not leader]
        if not others:
            return False
        if leader in self.streaming:
            self.streaming.remove(leader)
        self._paused.discard(leader)
        self._maybeResume()
        return True

    def leaderGone(self) -> None:
        """
        The leading client left: before the head, the waiters fetch on
        their own; after it, the streaming waiters lose their source and
        are closed (the leader's upstream request is abandoned).
        """
        self.failed(Failure(BadGateway("the shared fetch was abandoned")), True)

    # flow control across waiters

    def waiterPaused(self, exchange: ICacheExchange) -> None:
        if not self._paused and self.leader is not None:
            producer = self.leader.exchange.upstream
            if producer is not None:
                producer.pauseProducing()
        self._paused.add(exchange)

    def waiterResumed(self, exchange: ICacheExchange) -> None:
        self._paused.discard(exchange)
        self._maybeResume()

    def _maybeResume(self) -> None:
        if not self._paused and self.leader is not None:
            producer = self.leader.exchange.upstream
            if producer is not None:
                producer.resumeProducing()


@implementer(IPushProducer)
class WaiterPauser:
    """
    A waiter's connection, full or drained, pauses or resumes the shared
    fetch.
    """

    def __init__(self, flight: Flight, exchange: ICacheExchange) -> None:
        self._flight = flight
        self._exchange = exchange

    def pauseProducing(self) -> None:
        self._flight.waiterPaused(self._exchange)

    def resumeProducing(self) -> None:
        self._flight.waiterResumed(self._exchange)

    def stopProducing(self) -> None:
        self._flight._waiterGone(self._exchange)
