# -*- test-case-name: tests.test_io -*-
"""
Writing without a round trip through the reactor, and letting go of what a
closed connection could not send.

Twisted's TCP transports queue every C{write} and send it on the reactor's
next turn, once epoll reports the socket writable: two C{epoll_ctl} calls
and one more dispatch per write. When nothing is queued ahead, sending at
once is equivalent and cheaper; whatever the kernel does not take is queued
the usual way, so ordering, flow control (producers are paused when the
queue grows) and error handling stay Twisted's.
"""

from __future__ import annotations

from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor

__all__ = ["sendNow", "writeNow", "discardUnsent", "acceptQueued", "describeAddress"]


def describeAddress(address) -> str:
    """
    @return: a listening or peer address as a log line shows it:
        C{127.0.0.1:3128}, C{[::1]:3128}, or the path of a UNIX socket.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        return "unix:" + (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name))
    return str(address)

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
