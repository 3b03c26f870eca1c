"""
Tests for L{cachingproxy.proxy.states}: the three state machines' tables,
driven pair by pair through the real movers of a L{ProxyProtocol}, an
L{Exchange} and an L{UpstreamProtocol} built on Twisted's test doubles
(L{StringTransport}, L{MemoryReactorClock}); and what the connections'
event entry points do with a wrong event, in tests (it propagates) and in
production (one log line, the connection aborted).

To drive a move from a given state, each test places the object in that
state by writing its private slot, as a test setting up a bug would: the
moves themselves only ever go through the mover.
"""

from __future__ import annotations

from itertools import product
from typing import List

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cachingproxy.http.headers import Headers
from cachingproxy.http.message import RequestHead
from cachingproxy.proxy import states
from cachingproxy.proxy.exchange import Exchange
from cachingproxy.proxy.states import (
    EXCHANGE,
    READER,
    UPSTREAM,
    ExchangeState,
    IllegalTransition,
    Machine,
    ReaderState,
    UpstreamState,
)
from cachingproxy.proxy.upstream import (
    Origin,
    UpstreamPool,
    UpstreamProtocol,
    UpstreamRequest,
)

from .test_server import GET_1, ProxyHarness

ORIGIN = Origin(b"http", "10.0.0.1", 8080)


def pairs(machine: Machine):
    """
    @return: C{(legal, illegal)}: every (from, to) pair of C{machine}'s
        states, split by its table.
    """
    legal, illegal = [], []
    for current, new in product(machine.states, repeat=2):
        (legal if new in machine.moves[current] else illegal).append((current, new))
    return legal, illegal


def upstreamProtocol() -> UpstreamProtocol:
    """
    @return: an L{UpstreamProtocol} connected to a L{StringTransport}, its
        pool on a L{MemoryReactorClock}.
    """
    protocol = UpstreamProtocol(UpstreamPool(MemoryReactorClock()), ORIGIN)
    protocol.makeConnection(StringTransport())
    return protocol


class _Collector:
    """
    Collects the log events of error level while a test runs.
    """

    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self)
        testCase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict) -> None:
        if event.get("log_level") is LogLevel.error:
            self.events.append(event)

    def lines(self) -> List[str]:
        return [formatEvent(event) for event in self.events]


class TableTests(SynchronousTestCase):
    """
    The tables themselves.
    """

    def test_everyStateListed(self) -> None:
        """
        A table that leaves out a state is refused when the machine is
        built.
        """
        self.assertRaises(ValueError, Machine, "partial", UpstreamState,
                          {UpstreamState.IDLE: set()})

    def test_both(self) -> None:
        """
        Each machine's table allows some moves and forbids others, and its
        terminal state allows none.
        """
        for machine, terminal in ((READER, ReaderState.CLOSED),
                                  (EXCHANGE, ExchangeState.DONE),
                                  (UPSTREAM, UpstreamState.CLOSED)):
            legal, illegal = pairs(machine)
            self.assertTrue(legal and illegal, machine.name)
            self.assertEqual(machine.moves[terminal], frozenset())

    def test_message(self) -> None:
        """
        L{IllegalTransition} names the machine, the state and the move or
        the event.
        """
        self.assertEqual(
            str(READER.illegalMove(ReaderState.HEAD, ReaderState.TUNNEL)),
            "reader cannot move from HEAD to TUNNEL")
        self.assertEqual(
            str(EXCHANGE.illegalEvent(ExchangeState.QUEUED, "response body")),
            "exchange cannot handle response body in QUEUED")


class ReaderMoverTests(SynchronousTestCase):
    """
    L{ProxyProtocol._moveReader} against L{READER}'s table.
    """

    def test_illegal(self) -> None:
        """
        Every move the table forbids raises L{IllegalTransition} and
        leaves the reader where it was.
        """
        proto = ProxyHarness().proto
        for current, new in pairs(READER)[1]:
            proto._reader = current
            with self.assertRaises(IllegalTransition) as caught:
                proto._moveReader(new)
            error = caught.exception
            self.assertEqual((error.machine, error.current, error.new, error.connection),
                             ("reader", current, new, proto))
            self.assertIs(proto.reader, current)

    def test_legal(self) -> None:
        """
        Every move the table allows is made.
        """
        proto = ProxyHarness().proto
        for current, new in pairs(READER)[0]:
            proto._reader = current
            proto._moveReader(new)
            self.assertIs(proto.reader, new)

    def test_readOnly(self) -> None:
        """
        The reader cannot be written from outside the mover.
        """
        proto = ProxyHarness().proto
        with self.assertRaises(AttributeError):
            proto.reader = ReaderState.CLOSED
        self.assertIs(proto.reader, ReaderState.IDLE)


class ExchangeMoverTests(SynchronousTestCase):
    """
    L{Exchange._move} against L{EXCHANGE}'s table.
    """

    def exchange(self) -> Exchange:
        return Exchange(ProxyHarness().proto, RequestHead(b"GET", b"/", (1, 1)), True)

    def test_illegal(self) -> None:
        """
        Every move the table forbids raises L{IllegalTransition} and
        leaves the exchange where it was.
        """
        exchange = self.exchange()
        for current, new in pairs(EXCHANGE)[1]:
            exchange._state = current
            with self.assertRaises(IllegalTransition) as caught:
                exchange._move(new)
            error = caught.exception
            self.assertEqual((error.machine, error.current, error.new, error.connection),
                             ("exchange", current, new, exchange.protocol))
            self.assertIs(exchange.state, current)

    def test_legal(self) -> None:
        """
        Every move the table allows is made.
        """
        exchange = self.exchange()
        for current, new in pairs(EXCHANGE)[0]:
            exchange._state = current
            exchange._move(new)
            self.assertIs(exchange.state, new)

    def test_readOnly(self) -> None:
        """
        The state cannot be written from outside the mover.
        """
        exchange = self.exchange()
        with self.assertRaises(AttributeError):
            exchange.state = ExchangeState.DONE
        self.assertIs(exchange.state, ExchangeState.QUEUED)


class ExchangeLayoutTests(SynchronousTestCase):
    """
    An exchange keeps its attributes in the slots its class names, set
    when it is made: it has no dict of its own, and a name its class does
    not list cannot be set on it.
    """

    def test_slotsOnly(self) -> None:
        exchange = Exchange(ProxyHarness().proto, RequestHead(b"GET", b"/", (1, 1)), True)
        self.assertFalse(hasattr(exchange, "__dict__"))
        for name in Exchange.__slots__:
            getattr(exchange, name)
        with self.assertRaises(AttributeError):
            exchange.unlisted = True


class UpstreamMoverTests(SynchronousTestCase):
    """
    L{UpstreamProtocol._move} against L{UPSTREAM}'s table.
    """

    def test_illegal(self) -> None:
        """
        Every move the table forbids raises L{IllegalTransition} and
        leaves the connection where it was.
        """
        protocol = upstreamProtocol()
        for current, new in pairs(UPSTREAM)[1]:
            protocol._state = current
            with self.assertRaises(IllegalTransition) as caught:
                protocol._move(new)
            error = caught.exception
            self.assertEqual((error.machine, error.current, error.new, error.connection),
                             ("upstream", current, new, protocol))
            self.assertIs(protocol.state, current)

    def test_legal(self) -> None:
        """
        Every move the table allows is made.
        """
        protocol = upstreamProtocol()
        for current, new in pairs(UPSTREAM)[0]:
            protocol._state = current
            protocol._move(new)
            self.assertIs(protocol.state, new)

    def test_readOnly(self) -> None:
        """
        The state cannot be written from outside the mover; the pool asks
        the connection to close instead.
        """
        protocol = upstreamProtocol()
        with self.assertRaises(AttributeError):
            protocol.state = UpstreamState.CLOSED
        protocol.close()
        self.assertIs(protocol.state, UpstreamState.CLOSED)
        self.assertTrue(protocol.transport.disconnecting)
        protocol.close()
        self.assertIs(protocol.state, UpstreamState.CLOSED)


class _Reuser:
    """
    A broken response handler: it sends a second request on the connection
    whose response it is being told about.
    """

    def __init__(self, protocol: UpstreamProtocol) -> None:
        self.protocol = protocol

    def responseHead(self, head) -> None:
        request = UpstreamRequest(self.protocol._pool, ORIGIN, _HEAD, self, False)
        self.protocol.sendRequest(_HEAD, self, request)

    def responseInterim(self, head) -> None:
        pass

    def responseBody(self, data) -> None:
        pass

    def responseEnd(self) -> None:
        pass

    def responseFailed(self, reason, receivedAnything) -> None:
        pass


_HEAD = RequestHead(b"GET", b"/", (1, 1), Headers())


class WrongEventTests(SynchronousTestCase):
    """
    An event in a state where it makes no sense, arriving through a
    connection's event entry point: it propagates in tests
    (L{states.strict}, set by the suite); in production it is logged as one
    line and the connection is aborted.
    """

    def production(self) -> _Collector:
        self.patch(states, "strict", False)
        return _Collector(self)

    def readerWrong(self) -> ProxyHarness:
        h = ProxyHarness()
        # A bug: the reader thinks a request body is arriving.
        h.proto._reader = ReaderState.BODY
        return h

    def test_readerStrict(self) -> None:
        """
        A request head beginning while the reader is in C{BODY} raises
        out of C{dataReceived} in tests.
        """
        h = self.readerWrong()
        self.assertRaises(IllegalTransition, h.send, GET_1)

    def test_readerProduction(self) -> None:
        """
        In production, the same logs one line and aborts the client
        connection.
        """
        log = self.production()
        h = self.readerWrong()
        h.send(GET_1)
        self.assertTrue(h.transport.disconnected)
        self.assertIs(h.proto.reader, ReaderState.CLOSED)
        self.assertEqual(log.lines(), [
            "client 127.0.0.1: reader cannot move from BODY to HEAD; closing the connection"])
        # What still arrives is dropped, without another line.
        h.send(GET_1)
        self.assertEqual(len(log.lines()), 1)

    def test_readerAfterLost(self) -> None:
        """
        Bytes reported after the connection was lost are logged in
        production.
        """
        log = self.production()
        h = ProxyHarness()
        h.proto.connectionLost(Failure(ConnectionDone()))
        h.send(GET_1)
        self.assertEqual(log.lines(), [
            "client 127.0.0.1: reader cannot handle data after the connection was lost"
            " in CLOSED; closing the connection"])

    def exchangeWrong(self) -> ProxyHarness:
        h = ProxyHarness()
        h.send(GET_1)
        h.origin_ = origin = h.origin()
        origin.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        exchange = h.proto._queue[0]
        self.assertIs(exchange.state, ExchangeState.RESPONDING)
        # A bug: the exchange is back to forwarding when its body arrives.
        exchange._state = ExchangeState.FORWARDING
        return h

    def test_exchangeStrict(self) -> None:
        """
        A response body arriving while no exchange is C{RESPONDING} raises
        out of the upstream connection's C{dataReceived} in tests.
        """
        h = self.exchangeWrong()
        self.assertRaises(IllegalTransition, h.origin_.send, b"body")

    def test_exchangeProduction(self) -> None:
        """
        In production, the same logs one line and aborts both the upstream
        connection it arrived on and the client connection.
        """
        log = self.production()
        h = self.exchangeWrong()
        h.origin_.send(b"body")
        self.assertTrue(h.transport.disconnected)
        self.assertTrue(h.origin_.transport.disconnected)
        self.assertIs(h.origin_.protocol.state, UpstreamState.CLOSED)
        self.assertEqual(log.lines(), [
            "upstream http://10.0.0.1:8080: exchange cannot handle response body in"
            " FORWARDING; closing the connection"])

    def upstreamWrong(self) -> UpstreamProtocol:
        protocol = upstreamProtocol()
        handler = _Reuser(protocol)
        request = UpstreamRequest(protocol._pool, ORIGIN, _HEAD, handler, False)
        protocol.sendRequest(_HEAD, handler, request)
        request.finish()
        return protocol

    def test_upstreamStrict(self) -> None:
        """
        A second request on a busy upstream connection raises out of its
        C{dataReceived} in tests.
        """
        protocol = self.upstreamWrong()
        self.assertRaises(IllegalTransition, protocol.dataReceived,
                          b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def test_upstreamProduction(self) -> None:
        """
        In production, the same logs one line and aborts the upstream
        connection, which is never pooled.
        """
        log = self.production()
        protocol = self.upstreamWrong()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(protocol.transport.disconnected)
        self.assertIs(protocol.state, UpstreamState.CLOSED)
        self.assertEqual(protocol._pool.idleCount(), 0)
        self.assertEqual(log.lines(), [
            "upstream http://10.0.0.1:8080: upstream cannot move from BUSY to BUSY;"
            " closing the connection"])
