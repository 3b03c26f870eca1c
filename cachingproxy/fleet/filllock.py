# -*- test-case-name: tests.test_fleet_filllock -*-
"""
The fill lock of a fleet (L{FleetFillLock}, an
L{cachingproxy.cache.collapse.IFillLock}): the cross-process step of
collapsed forwarding among every proxy sharing a
L{cachingproxy.fleet.store.FleetStore}, for a fleet tier to plug into its
L{cachingproxy.cache.layer.CacheLayer} (C{layer.fillLock}).

The lock is the store's fenced fill lock (L{FleetStore.beginFill}): a
lease that its holder renews while it fills, so a holder that dies or is
cut off loses it when the lease runs out. A waiter waits with
L{FleetStore.waitForFill} (woken by the commit's, abort's or pass
marker's message, or by its poll finding the lock gone), then looks the
key up: a pass marker means go upstream at once; variants other than
those there before the wait mean look the entry up again; neither means
the holder gave up (or died), and the waiter tries to take the lock
itself. The whole wait is bounded by C{maxWait}.

The lease's L{Fill} is its C{fill}: a fleet tier writes the body into it
and commits it (which drops the lock and wakes the waiters itself);
L{ILease.commit} of a fill nobody committed gives the lock up.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from cachingproxy.cache.collapse import NO_LEASE, Busy, IFillLock, ILease, Waited
from cachingproxy.fleet.store import Fill, FillOutcome, FleetStore, WaitOutcome

__all__ = ["FleetFillLock", "FleetLease"]


def _quiet(d) -> Deferred:
    """
    C{d} (or C{None}) as a Deferred that never fails.
    """
    if d is None:
        return succeed(None)
    return d.addErrback(lambda f: FleetFillLock._log.failure("fleet fill lock", f))


@implementer(ILease)
class FleetLease:
    """
    The fleet's fill lock of one key, held through C{fill}.

    @ivar fill: the store's L{Fill} holding the lock.
    """

    def __init__(self, fill: Fill) -> None:
        self.fill = fill
        self.key = fill.key
        self._ended = False

    def _end(self) -> bool:
        ended, self._ended = self._ended, True
        return not ended

    def commit(self) -> Deferred:
        # A fill committed (or being committed) drops the lock itself.
        if not self._end() or self.fill.closed:
            return succeed(None)
        return _quiet(self.fill.abort())

    def markPass(self) -> Deferred:
        if not self._end():
            return succeed(None)
        return _quiet(self.fill.markPass())

    def release(self) -> Deferred:
        if not self._end():
            return succeed(None)
        return _quiet(self.fill.abort())


@implementer(IFillLock)
class FleetFillLock:
    """
    An L{IFillLock} on a L{FleetStore} (see the module docstring); its
    waits are woken by the store's wake-up messages once
    L{FleetStore.start} subscribed to them, and by its polls meanwhile.

    @ivar store: the L{FleetStore}.
    @ivar waits: waits for another fill; C{timeouts}: those that ran out;
        C{takenOver}: locks taken after a holder gave up or died.
    """

    _log = Logger()

    def __init__(self, store: FleetStore) -> None:
        self.store = store
        self.waits = 0
        self.timeouts = 0
        self.takenOver = 0

    def acquire(self, key: bytes, maxWait: float) -> Deferred:
        d = Deferred.fromCoroutine(self._acquire(key, maxWait))

        def failed(reason):
            self._log.failure("fleet fill lock of {key} failed; collapsing stays within "
                              "the process", reason, key=key)
            return NO_LEASE

        return d.addErrback(failed)

    async def _acquire(self, key: bytes, maxWait: float):
        store = self.store
        clock = store._clock
        start = clock.seconds()
        deadline = start + maxWait
        before = None
        waited = False
        while True:
            attempt = await store.beginFill(key)
            if attempt.outcome is FillOutcome.ACQUIRED:
                if waited:
                    self.takenOver += 1
                return FleetLease(attempt.fill)
            if attempt.outcome is FillOutcome.PASS:
                return Busy(Waited.PASS, clock.seconds() - start)
            if before is None:
                if not waited:
                    self.waits += 1
                    waited = True
                found = await store.lookup(key)
                if found.passMarker:
                    return Busy(Waited.PASS, clock.seconds() - start)
                if not found.locked:
                    # The fill ended between the two calls.
                    if found.variants:
                        return Busy(Waited.STORED, clock.seconds() - start)
                    if clock.seconds() < deadline:
                        continue
                else:
                    before = frozenset(v.objectId for v in found.variants)
            remaining = deadline - clock.seconds()
            if remaining <= 0:
                self.timeouts += 1
                return Busy(Waited.TIMEOUT, clock.seconds() - start)
            if before is None:
                before = frozenset()
            outcome = await store.waitForFill(key, remaining)
            if outcome is WaitOutcome.TIMEOUT:
                self.timeouts += 1
                return Busy(Waited.TIMEOUT, clock.seconds() - start)
            found = await store.lookup(key)
            if found.passMarker:
                return Busy(Waited.PASS, clock.seconds() - start)
            if frozenset(v.objectId for v in found.variants) != before:
                return Busy(Waited.STORED, clock.seconds() - start)
            # The holder gave up, or its lease ran out: try to fill.
