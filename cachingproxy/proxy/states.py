# -*- test-case-name: tests.test_server -*-
"""
The client connection's two state machines: what the connection is reading
(L{ReaderState}) and where each request stands (L{ExchangeState}), each with
its table of the moves it allows.
"""

from __future__ import annotations

import enum

__all__ = ["ExchangeState", "ReaderState"]


class ReaderState(enum.Enum):
    """
    What the client connection is reading.

    @cvar IDLE: between requests; the idle timeout runs.
    @cvar HEAD: part of a request head has arrived; the header timeout
        runs.
    @cvar BODY: a head was parsed and its body is arriving.
    @cvar UPGRADE: a request asking to upgrade was read; what follows it
        waits for its answer: tunnel bytes after a 101, the next request
        after any other.
    @cvar TUNNEL: the bytes are no longer HTTP (after CONNECT or a 101).
    @cvar CLOSED: nothing more is read (the connection is closing, or a
        request asked for the connection to end).
    """

    IDLE = "IDLE"
    HEAD = "HEAD"
    BODY = "BODY"
    UPGRADE = "UPGRADE"
    TUNNEL = "TUNNEL"
    CLOSED = "CLOSED"

    # Members are singletons: hash by identity (C speed) rather than by
    # name, as the transition tables are consulted on every request.
    __hash__ = object.__hash__


_READER_MOVES = {
    ReaderState.IDLE: {ReaderState.HEAD, ReaderState.CLOSED},
    ReaderState.HEAD: {ReaderState.BODY, ReaderState.CLOSED},
    ReaderState.BODY: {
        ReaderState.IDLE,
        ReaderState.UPGRADE,
        ReaderState.TUNNEL,
        ReaderState.CLOSED,
    },
    ReaderState.UPGRADE: {ReaderState.IDLE, ReaderState.TUNNEL, ReaderState.CLOSED},
    ReaderState.TUNNEL: {ReaderState.CLOSED},
    ReaderState.CLOSED: set(),
}


class ExchangeState(enum.Enum):
    """
    Where one request stands.

    @cvar QUEUED: parsed, waiting behind an earlier request.
    @cvar FORWARDING: being forwarded; no response head sent to the client.
    @cvar RESPONDING: the response head was sent; the body is streaming.
    @cvar TUNNEL: CONNECT succeeded, or the origin switched protocols; the
        connection is a byte pipe.
    @cvar DONE: the response is complete (or the exchange was abandoned).
    """

    QUEUED = "QUEUED"
    FORWARDING = "FORWARDING"
    RESPONDING = "RESPONDING"
    TUNNEL = "TUNNEL"
    DONE = "DONE"

    __hash__ = object.__hash__


_EXCHANGE_MOVES = {
    ExchangeState.QUEUED: {ExchangeState.FORWARDING, ExchangeState.DONE},
    ExchangeState.FORWARDING: {
        ExchangeState.RESPONDING,
        ExchangeState.TUNNEL,
        ExchangeState.DONE,
    },
    ExchangeState.RESPONDING: {ExchangeState.DONE},
    ExchangeState.TUNNEL: {ExchangeState.DONE},
    ExchangeState.DONE: set(),
}
