# -*- test-case-name: tests.test_states -*-
"""
The proxy's three state machines, each an enum and the table of the moves
it allows: what a client connection is reading (L{ReaderState}), where each
of its requests stands (L{ExchangeState}), and what a connection to an
origin is doing (L{UpstreamState}).

Each machine is a L{Machine}: its table maps every state to the states it
may move to. The object that owns a state keeps it in a private slot,
shows it through a read-only property, and writes it in exactly one
method, its mover, which checks the table::

    def _move(self, new):
        if new not in _EXCHANGE_MOVES[self._state]:
            raise EXCHANGE.illegalMove(self._state, new, self.protocol)
        self._state = new

A move the table forbids, or an event that makes no sense in the current
state, raises L{IllegalTransition}: a bug in the proxy, never the peer's
doing (what a peer may do wrong is handled as protocol errors). The
connections' event entry points catch it, log one line and abort the
connection (see L{refuse}); with L{strict} set, as the test suite sets it,
it propagates instead, so that a test meeting one fails.
"""

from __future__ import annotations

import enum
from typing import Dict, FrozenSet, Iterable, Mapping, Optional, Type

__all__ = [
    "EXCHANGE",
    "ExchangeState",
    "IllegalTransition",
    "Machine",
    "READER",
    "ReaderState",
    "UPSTREAM",
    "UpstreamState",
    "abortOther",
    "refuse",
    "strict",
]

#: When true, L{refuse} raises the L{IllegalTransition} it is given
#: instead of logging it and closing the connection. The test suite sets
#: it (in C{tests/__init__.py}) so that an illegal move fails the test
#: that makes it; a running proxy leaves it false.
strict = False


class IllegalTransition(Exception):
    """
    A state machine was asked to make a move its table forbids, or was
    given an event that makes no sense in its state.

    @ivar machine: the machine's name: C{"reader"}, C{"exchange"} or
        C{"upstream"}.
    @ivar current: the state it was in.
    @ivar new: the state it was asked to move to, or C{None} for an event.
    @ivar event: the event it was given, or C{None} for a move.
    @ivar connection: the protocol whose connection the machine belongs to
        (closed when the error is caught), or C{None}.
    """

    def __init__(self, machine: str, current: enum.Enum, new: Optional[enum.Enum] = None,
                 event: Optional[str] = None, connection: object = None) -> None:
        Exception.__init__(self, machine, current, new if new is not None else event)
        self.machine = machine
        self.current = current
        self.new = new
        self.event = event
        self.connection = connection

    def __str__(self) -> str:
        if self.new is not None:
            return (f"{self.machine} cannot move from {self.current.name} "
                    f"to {self.new.name}")
        return f"{self.machine} cannot handle {self.event} in {self.current.name}"


class Machine:
    """
    One state machine's description: its states, and for each state the
    states it may move to.

    @ivar name: the name L{IllegalTransition} gives.
    @ivar states: the enum of its states.
    @ivar moves: C{{state: frozenset(states it may move to)}}, one entry
        per state (a terminal state maps to the empty set).
    """

    def __init__(self, name: str, states: Type[enum.Enum],
                 moves: Mapping[enum.Enum, Iterable[enum.Enum]]) -> None:
        if set(moves) != set(states):
            raise ValueError(f"the {name} table must list every state once")
        self.name = name
        self.states = states
        self.moves: Dict[enum.Enum, FrozenSet[enum.Enum]] = {
            state: frozenset(moves[state]) for state in states
        }

    def allowed(self, current: enum.Enum, new: enum.Enum) -> bool:
        """
        @return: whether the table allows moving from C{current} to C{new}.
        """
        return new in self.moves[current]

    def illegalMove(self, current: enum.Enum, new: enum.Enum,
                    connection: object = None) -> IllegalTransition:
        """
        @return: the error for a move from C{current} to C{new}, which the
            table forbids.
        """
        return IllegalTransition(self.name, current, new=new, connection=connection)

    def illegalEvent(self, current: enum.Enum, event: str,
                     connection: object = None) -> IllegalTransition:
        """
        @return: the error for C{event}, which makes no sense in C{current}.
        """
        return IllegalTransition(self.name, current, event=event, connection=connection)


def refuse(log, error: IllegalTransition, what: str) -> None:
    """
    What a connection's event entry point does with an L{IllegalTransition}
    it caught: with L{strict}, raise it again; otherwise log it as one
    line. The caller then aborts the connection (and the one
    C{error.connection} names, if another: see L{abortOther}).

    @param log: the caller's L{twisted.logger.Logger}.
    @param what: the connection, for the log line (C{"client 10.0.0.1"}).
    """
    if strict:
        raise error
    log.error("{what}: {error}; closing the connection", what=what, error=str(error))


def abortOther(error: IllegalTransition, protocol: object) -> None:
    """
    Abort the connection C{error} belongs to, if it is not C{protocol}'s
    own (an upstream read can break a client connection's machines).
    """
    other = error.connection
    if other is not None and other is not protocol:
        transport = getattr(other, "transport", None)
        if transport is not None:
            transport.abortConnection()


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
    @cvar CLOSED: nothing more is read as HTTP: the connection is closing,
        or a request asked for the connection to end. Bytes the client
        still sends are dropped (RFC 9112 section 9.6); bytes after the
        connection was lost are an L{IllegalTransition}.
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


READER = Machine("reader", ReaderState, {
    ReaderState.IDLE: {ReaderState.HEAD, ReaderState.CLOSED},
    ReaderState.HEAD: {
        ReaderState.BODY,
        ReaderState.CLOSED,
        # A head abandoned before any of it was used: llhttp stopped at an
        # extension method pipelined behind complete requests in one read,
        # and that request is parsed again from its start
        # (ProxyProtocol._resumeAtUnknownMethod).
        ReaderState.IDLE,
    },
    ReaderState.BODY: {
        ReaderState.IDLE,
        ReaderState.UPGRADE,
        ReaderState.TUNNEL,
        ReaderState.CLOSED,
    },
    ReaderState.UPGRADE: {ReaderState.IDLE, ReaderState.TUNNEL, ReaderState.CLOSED},
    ReaderState.TUNNEL: {ReaderState.CLOSED},
    ReaderState.CLOSED: set(),
})
_READER_MOVES = READER.moves


class ExchangeState(enum.Enum):
    """
    Where one request stands.

    @cvar QUEUED: parsed, waiting behind an earlier request.
    @cvar FORWARDING: being forwarded; no response head sent to the client.
    @cvar RESPONDING: the response head was sent; the body is streaming.
    @cvar TUNNEL: CONNECT succeeded, or the origin switched protocols; the
        connection is a byte pipe.
    @cvar DONE: the response is complete (or the exchange was abandoned).
        Response events that still arrive are dropped: a cache layer may
        keep a fetch going for other clients after this one left.
    """

    QUEUED = "QUEUED"
    FORWARDING = "FORWARDING"
    RESPONDING = "RESPONDING"
    TUNNEL = "TUNNEL"
    DONE = "DONE"

    __hash__ = object.__hash__


EXCHANGE = Machine("exchange", ExchangeState, {
    ExchangeState.QUEUED: {ExchangeState.FORWARDING, ExchangeState.DONE},
    ExchangeState.FORWARDING: {
        ExchangeState.RESPONDING,
        ExchangeState.TUNNEL,
        ExchangeState.DONE,
    },
    ExchangeState.RESPONDING: {ExchangeState.DONE},
    ExchangeState.TUNNEL: {ExchangeState.DONE},
    ExchangeState.DONE: set(),
})
_EXCHANGE_MOVES = EXCHANGE.moves


class UpstreamState(enum.Enum):
    """
    The states of an L{cachingproxy.proxy.upstream.UpstreamProtocol}.

    @cvar IDLE: connected, no request; waiting in the pool.
    @cvar BUSY: a request was sent (its body may still be streaming) and its
        response has not ended.
    @cvar CLOSED: the connection is gone or going; it is never reused.
    """

    IDLE = "IDLE"
    BUSY = "BUSY"
    CLOSED = "CLOSED"

    __hash__ = object.__hash__


UPSTREAM = Machine("upstream", UpstreamState, {
    UpstreamState.IDLE: {UpstreamState.BUSY, UpstreamState.CLOSED},
    UpstreamState.BUSY: {UpstreamState.IDLE, UpstreamState.CLOSED},
    UpstreamState.CLOSED: set(),
})
_UPSTREAM_MOVES = UPSTREAM.moves


# The members again, as module globals, for the code that runs for every
# request (the client connection, the exchange, the upstream connection):
# in CPython 3.11, reading a member off its class (ReaderState.IDLE) goes
# through the attribute hook of EnumType.__getattr__, about 1,000
# instructions against some 90 for a global, and a cache hit read some
# thirty of them. (Python 3.12 dropped that hook.)
R_IDLE, R_HEAD, R_BODY, R_UPGRADE, R_TUNNEL, R_CLOSED = (
    ReaderState.IDLE, ReaderState.HEAD, ReaderState.BODY, ReaderState.UPGRADE,
    ReaderState.TUNNEL, ReaderState.CLOSED)
X_QUEUED, X_FORWARDING, X_RESPONDING, X_TUNNEL, X_DONE = (
    ExchangeState.QUEUED, ExchangeState.FORWARDING, ExchangeState.RESPONDING,
    ExchangeState.TUNNEL, ExchangeState.DONE)
U_IDLE, U_BUSY, U_CLOSED = UpstreamState.IDLE, UpstreamState.BUSY, UpstreamState.CLOSED
