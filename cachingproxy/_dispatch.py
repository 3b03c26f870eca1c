# -*- test-case-name: tests.test_dispatch -*-
"""
Handing I/O events to connections without the legacy logging context.

Twisted's epoll reactor passes every ready descriptor through
C{twisted.python.log.callWithLogger}, which copies a context dictionary
and pushes it on a thread-local stack so that messages logged with the
old C{log.msg} API carry the connection's log prefix. That costs about
1.6 microseconds per event, a few per cent of a proxied request, and this
project logs through C{twisted.logger}, whose messages name their source
themselves. L{streamline} gives an epoll reactor a poll step that calls
the reactor's own C{_doReadOrWrite} directly; what that step does with
exceptions stays Twisted's (logged, and the connection dropped), and an
exception escaping it (from a C{connectionLost}, say) is still logged
with the connection's log prefix, as before.
"""

from __future__ import annotations

import errno

from twisted.internet.epollreactor import EPollReactor
from twisted.python import log

__all__ = ["streamline"]


def streamline(reactor) -> bool:
    """
    Give C{reactor} the direct poll step when it is Twisted's epoll reactor
    itself (a subclass may have reasons of its own, so it is left alone).

    @return: whether the reactor was changed.
    """
    if type(reactor) is not EPollReactor or getattr(reactor, "_streamlined", False):
        return False
    poller = reactor._poller
    selectables = reactor._selectables
    doReadOrWrite = reactor._doReadOrWrite

    def doPoll(timeout):
        if timeout is None:
            timeout = -1
        try:
            events = poller.poll(timeout, len(selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                doReadOrWrite(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                try:
                    prefix = selectable.logPrefix()
                except BaseException:
                    prefix = "(buggy logPrefix method)"
                log.err(system=prefix)

    reactor.doIteration = reactor.doPoll = doPoll
    reactor._streamlined = True
    return True
