# -*- test-case-name: tests.test_layer,tests.test_cache_end_to_end -*-
"""
Collapsed forwarding: concurrent misses for one key make one upstream
request (L{Flight}), led by the first miss's L{cachingproxy.cache.layer}
handler; the others wait for its response head, then stream the same body
as it arrives when it turns out storable, or each go upstream on their own
at once when it does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from . import policy
from ..errors import BadGateway
from ..http.message import RequestHead, ResponseHead
from ..proxy.interfaces import ICacheExchange
from ..proxy.states import ExchangeState

if TYPE_CHECKING:
    from .layer import CacheLayer, _Fill

__all__ = ["Flight"]


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

    def __init__(self, layer: "CacheLayer", key: bytes, request: RequestHead) -> None:
        self.layer = layer
        self.key = key
        self.request = request
        self.waiters: List = []
        self.streaming: List = []
        self.head: Optional[ResponseHead] = None
        self.leader: Optional["_Fill"] = None
        self._paused: set = set()

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
            fields = copy.headers.lowered()
            self.layer._statusFields(fields, False, "miss", head.status, None, b"MISS",
                                        collapsed=True)
            exchange.cacheResult = "MISS"
            self.streaming.append(exchange)
            exchange.producer = WaiterPauser(self, exchange)
            exchange.responseHead(copy)

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
