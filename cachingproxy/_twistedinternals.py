# -*- test-case-name: tests.test_twistedinternals -*-
"""
Every use of Twisted's private internals, in one place.

Two speed-ups reach below Twisted's public API:

  - writing without a round trip through the reactor (L{sendNow},
    L{writeNow}), letting go of what a closed connection could not send
    (L{discardUnsent}) and taking the queued connections of a port that
    stops listening (L{acceptQueued}): a TCP transport's send queue fields;
  - handing I/O events to connections without the legacy logging context
    (L{streamline}): the epoll reactor's poll step.

Writing without a round trip through the reactor, and letting go of what a
closed connection could not send.

Twisted's TCP transports queue every C{write} and send it on the reactor's
next turn, once epoll reports the socket writable: two C{epoll_ctl} calls
and one more dispatch per write. When nothing is queued ahead, sending at
once is equivalent and cheaper; whatever the kernel does not take is queued
the usual way, so ordering, flow control (producers are paused when the
queue grows) and error handling stay Twisted's.

The poll step:

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

from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.python import log
from twisted.internet.abstract import FileDescriptor

__all__ = [
    "PRIVATE",
    "sendNow",
    "writeNow",
    "discardUnsent",
    "acceptQueued",
    "streamline",
    "unstreamline",
    "missingInternals",
    "textLogStream",
]


#: Every attribute of Twisted's that this module reads or replaces beyond
#: the public API, as C{(owner, attribute)}: the epoll reactor's poll step
#: (L{streamline}), a TCP connection's send queue (L{sendNow},
#: L{discardUnsent}; C{tcp.Client} has the same ones, from the same
#: classes) and a listening port's accept step (L{acceptQueued}). A Twisted
#: release that renames one is found by L{missingInternals} on real
#: objects (C{tests/test_twistedinternals.py}). Also the text log
#: observer's stream (L{textLogStream}): the log publisher's observers, and
#: a C{FileLogObserver}'s file and encoding.
PRIVATE = (
    ("EPollReactor", "_poller"),
    ("EPollReactor", "_selectables"),
    ("EPollReactor", "_doReadOrWrite"),
    ("EPollReactor", "doIteration"),
    ("EPollReactor", "doPoll"),
    ("tcp.Server", "socket"),
    ("tcp.Server", "connected"),
    ("tcp.Server", "disconnecting"),
    ("tcp.Server", "disconnected"),
    ("tcp.Server", "_writeDisconnected"),
    ("tcp.Server", "dataBuffer"),
    ("tcp.Server", "offset"),
    ("tcp.Server", "_tempDataBuffer"),
    ("tcp.Server", "_tempDataLen"),
    ("tcp.Port", "doRead"),
    ("tcp.Port", "connected"),
    ("tcp.Port", "sessionno"),
    ("LogPublisher", "_observers"),
    ("FileLogObserver", "_outFile"),
    ("FileLogObserver", "_encoding"),
)


def missingInternals(objects) -> list:
    """
    Which of L{PRIVATE} a real object lacks.

    @param objects: C{{owner: an object of that kind}}, such as
        C{{"EPollReactor": EPollReactor(), "tcp.Server": transport,
        "tcp.Port": port}}; an owner not given is not checked.
    @return: C{"owner.attribute"} for each attribute missing, in the order
        of L{PRIVATE}.
    """
    return [f"{owner}.{attribute}" for owner, attribute in PRIVATE
            if owner in objects and not hasattr(objects[owner], attribute)]


_PLAIN_TCP = (tcp.Server, tcp.Client)


def sendNow(transport, data: bytes) -> bytes:
    """
    Send as much of C{data} as the kernel takes right now, when the
    transport is plain TCP with an empty send queue.

    @return: what is left to C{write} (all of C{data} for any other
        transport, or when something is queued ahead).
    """
    if (
        type(transport) in _PLAIN_TCP
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataBuffer
        and transport.offset == len(transport.dataBuffer)
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # EAGAIN, or a dead connection: let the transport find out in
            # its own way.
            return data
        return data[sent:] if sent < len(data) else b""
    return data


def writeNow(transport, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it at once when nothing is
    queued ahead (see L{sendNow}).
    """
    rest = sendNow(transport, data)
    if rest:
        transport.write(rest)


def discardUnsent(transport) -> None:
    """
    Drop the send queue of a transport whose connection is lost (and of
    the TCP connection under it, for TLS).

    Twisted keeps a transport's queue after the connection is gone, for as
    long as the transport object lives; a protocol that holds it in
    reference cycles (with its parser, its exchanges) lives until the
    cyclic garbage collector gets to it, and that counts objects, not
    bytes. A client that leaves in the middle of a large response would
    otherwise leave up to a write buffer of it (64 KiB and more) in memory
    until then, and many such clients, many megabytes. Nothing is ever
    sent on a lost connection, so nothing is lost.
    """
    for _ in range(4):
        if isinstance(transport, FileDescriptor):
            if transport.disconnected:
                transport.dataBuffer = b""
                transport.offset = 0
                transport._tempDataBuffer = []
                transport._tempDataLen = 0
            return
        # A protocol wrapper (TLS): the connection it writes to.
        transport = getattr(transport, "transport", None)
        if transport is None:
            return


def acceptQueued(port) -> int:
    """
    Accept every connection the kernel has queued on a listening C{port}
    (a C{tcp.Port}), before it stops listening.

    When the last descriptor of a listening socket closes, the kernel
    resets the connections still waiting in its accept queue: clients that
    connected in time would see C{Connection reset by peer}. Taken now,
    they are served like any other (a draining proxy answers their request
    with C{Connection: close}).

    @return: how many were accepted.
    """
    doRead = getattr(port, "doRead", None)
    if (doRead is None or not getattr(port, "connected", False)
            or not isinstance(getattr(port, "sessionno", None), int)):
        # Not a listening port of Twisted's (a wrapped one, or gone).
        return 0
    accepted = 0
    # Each call accepts up to the port's current batch size, until the
    # queue is empty; stop once a call takes nothing.
    for _ in range(1000):
        before = port.sessionno
        doRead()
        if port.sessionno == before:
            break
        accepted += port.sessionno - before
    return accepted


def streamline(reactor) -> bool:
    """
    Give C{reactor} the direct poll step when it is Twisted's epoll reactor
    itself (a subclass may have reasons of its own, so it is left alone).

    @return: whether the reactor was changed.
    """
    if type(reactor) is not EPollReactor or _streamlined(reactor):
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

    doPoll.direct = True
    reactor.doIteration = reactor.doPoll = doPoll
    return True


def _streamlined(reactor) -> bool:
    """
    Whether L{streamline} gave C{reactor} its poll step. (Told by a mark
    on the step rather than by looking in the reactor's C{__dict__}:
    asking for that would make every attribute of the reactor slower to
    read from then on, twice as slow in CPython 3.11.)
    """
    return getattr(reactor.doPoll, "direct", False)


def unstreamline(reactor) -> bool:
    """
    Give C{reactor} its own poll step back (from the next iteration on),
    after L{streamline}.

    @return: whether the reactor was changed.
    """
    if not _streamlined(reactor):
        return False
    del reactor.doIteration
    del reactor.doPoll
    return True


def textLogStream(publisher=None):
    """
    Find the stream twistd's text log observer writes to, so that lines
    meant for the twistd log (the access log's) can be written to it in
    batches instead of each going through the event formatting machinery.

    @param publisher: the log publisher to look in (the global one by
        default).
    @return: C{(stream, encoding)} of the first observer made by
        C{textFileLogObserver} (a JSON observer is a C{FileLogObserver}
        too, and is left alone), or C{None} when there is none (a custom
        observer, syslog).
    """
    from twisted.logger import FileLogObserver, globalLogPublisher

    if publisher is None:
        publisher = globalLogPublisher
    for observer in getattr(publisher, "_observers", ()):
        if (isinstance(observer, FileLogObserver)
                and getattr(observer.formatEvent, "__qualname__", "").startswith(
                    "textFileLogObserver.")):
            return observer._outFile, observer._encoding
    return None
