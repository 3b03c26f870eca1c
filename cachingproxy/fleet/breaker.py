# -*- test-case-name: tests.test_fleet_redis -*-
"""
Keeping a slow or dead Redis node from slowing the proxy down.

L{Breaker} is a circuit breaker for one node: after C{threshold} failures
in a row (timeouts, lost connections) it opens and every command fails at
once for C{cooldown} seconds; then it lets one trial command through
(half-open), and that command's outcome closes or reopens it. Time comes
from an injected L{IReactorTime}.

L{WriteQueue} runs cache writes many at a time; when C{maxPending} are
already waiting, or the writes hold C{maxBytes}, a new write is dropped and
counted, never queued without bound.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Callable, Deque, Optional, Tuple

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

__all__ = ["Breaker", "BreakerState", "WriteQueue"]


class BreakerState(enum.Enum):
    """
    CLOSED: commands go through; failures in a row are counted.
    OPEN: commands fail at once until the cooldown has passed.
    HALF_OPEN: one trial command is in flight; others fail at once.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class _Event(enum.Enum):
    TRIPPED = "tripped"  # threshold of failures in a row reached
    COOLED = "cooled"  # cooldown elapsed, a trial is let through
    SUCCEEDED = "succeeded"  # the trial succeeded
    FAILED = "failed"  # the trial failed


# (the states as globals, for the checks made for every command: reading
# a member off its class costs ten times a global in CPython 3.11; see
# cachingproxy.proxy.states)
_CLOSED, _OPEN, _HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


_TRANSITIONS = {
    (BreakerState.CLOSED, _Event.TRIPPED): BreakerState.OPEN,
    (BreakerState.OPEN, _Event.COOLED): BreakerState.HALF_OPEN,
    (BreakerState.HALF_OPEN, _Event.SUCCEEDED): BreakerState.CLOSED,
    (BreakerState.HALF_OPEN, _Event.FAILED): BreakerState.OPEN,
}


class Breaker:
    """
    A circuit breaker for one node.

    @ivar state: the current L{BreakerState}.
    @ivar opened: how many times it has opened.
    @ivar rejected: how many commands it failed at once.
    """

    _log = Logger()

    def __init__(self, clock, name: str = "", threshold: int = 5, cooldown: float = 1.0):
        self._clock = clock
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._openedAt = 0.0
        self._trialInFlight = False
        self._trialAt = 0.0
        self.opened = 0
        self.rejected = 0

    def _transition(self, event: _Event) -> None:
        try:
            new = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise RuntimeError(f"breaker {self.name!r} has no transition for {event} in state {self.state}")
        self._log.info(
            "fleet node {node} breaker {old} -> {new}", node=self.name, old=self.state.value, new=new.value
        )
        self.state = new
        if new is BreakerState.OPEN:
            self.opened += 1
            self._openedAt = self._clock.seconds()
            self._trialInFlight = False
        elif new is BreakerState.CLOSED:
            self._failures = 0
            self._trialInFlight = False

    def allow(self) -> bool:
        """
        @return: whether a command may be sent now; if C{True} the caller
            must report its outcome with L{success} or L{failure}.
        """
        if self.state is _CLOSED:
            return True
        if self.state is _OPEN:
            if self._clock.seconds() - self._openedAt >= self.cooldown:
                self._transition(_Event.COOLED)
                self._trialInFlight = True
                self._trialAt = self._clock.seconds()
                return True
            self.rejected += 1
            return False
        # HALF_OPEN: one trial at a time; a trial whose outcome never came
        # (it was refused before being sent) is replaced after a cooldown
        if not self._trialInFlight or self._clock.seconds() - self._trialAt >= self.cooldown:
            self._trialInFlight = True
            self._trialAt = self._clock.seconds()
            return True
        self.rejected += 1
        return False

    def success(self) -> None:
        """
        A command got its reply in time.
        """
        if self.state is _HALF_OPEN:
            self._transition(_Event.SUCCEEDED)
        else:
            self._failures = 0

    def failure(self) -> None:
        """
        A command timed out or its connection failed.
        """
        if self.state is _HALF_OPEN:
            self._transition(_Event.FAILED)
        elif self.state is _CLOSED:
            self._failures += 1
            if self._failures >= self.threshold:
                self._transition(_Event.TRIPPED)


class WriteQueue:
    """
    Cache writes, at most C{concurrency} at a time and C{maxPending}
    waiting, holding at most C{maxBytes} (the sizes given to L{submit}, of
    the writes running and waiting); beyond that a write is dropped and
    counted.

    A write of a small object takes a few round trips of well under a
    millisecond: many run at once, so that a proxy storing a thousand
    misses a second keeps up; the queue fills, and drops, when Redis is
    slow or gone (its commands then wait for their deadline, or the
    node's breaker fails them at once).

    @ivar dropped: writes dropped because the queue was full.
    @ivar failed: writes whose Deferred failed.
    @ivar done: writes that succeeded.
    """

    _log = Logger()

    def __init__(self, concurrency: int = 32, maxPending: int = 256, maxBytes: int = 64 * 1024 * 1024):
        self.concurrency = concurrency
        self.maxPending = maxPending
        self.maxBytes = maxBytes
        self._running = 0
        self._waiting: Deque[Tuple[Callable, Deferred, int]] = deque()
        #: the sizes of the writes running and waiting
        self.bytes = 0
        self.dropped = 0
        self.failed = 0
        self.done = 0

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def submit(self, write: Callable[[], Deferred], size: int = 0) -> Optional[Deferred]:
        """
        Run C{write()} (which returns a Deferred) when a slot is free.

        @param size: the bytes the write holds until it is done (one larger
            than C{maxBytes} runs alone).
        @return: a Deferred that fires with the write's result (failures
            are counted and logged, and fire it with C{None}), or C{None}
            when the write was dropped.
        """
        if self.bytes and self.bytes + size > self.maxBytes:
            self.dropped += 1
            return None
        done: Deferred = Deferred()
        if self._running < self.concurrency:
            self.bytes += size
            self._start(write, done, size)
        elif len(self._waiting) < self.maxPending:
            self.bytes += size
            self._waiting.append((write, done, size))
        else:
            self.dropped += 1
            return None
        return done

    def _start(self, write, done: Deferred, size: int) -> None:
        self._running += 1
        d = maybeDeferred(write)

        def finished(result):
            self._running -= 1
            self.bytes -= size
            self.done += 1
            self._next()
            done.callback(result)

        def failed(f):
            self._running -= 1
            self.bytes -= size
            self.failed += 1
            self._log.warn("fleet write failed: {error}", error=f.getErrorMessage())
            self._next()
            done.callback(None)

        d.addCallbacks(finished, failed)

    def _next(self) -> None:
        while self._waiting and self._running < self.concurrency:
            write, done, size = self._waiting.popleft()
            self._start(write, done, size)
