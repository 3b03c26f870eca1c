"""
L{cachingproxy._twistedinternals}: the attributes of Twisted's it relies on,
checked on real objects of the installed Twisted; and L{streamline} on a
private epoll reactor (never the one the tests run on), with a real socket
pair as the ready descriptor.
"""

from __future__ import annotations

import io
import socket
from typing import List

from twisted.internet import defer, reactor, tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogPublisher, jsonFileLogObserver, textFileLogObserver
from twisted.python import log
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cachingproxy._twistedinternals import (
    PRIVATE,
    missingInternals,
    textLogStream,
    streamline,
    unstreamline,
)


class Reader:
    """
    A minimal readable selectable over one end of a socket pair; what
    C{doRead} does is up to the test.
    """

    def __init__(self, sock: socket.socket, onRead) -> None:
        self.sock = sock
        self.onRead = onRead
        self.lost: List[BaseException] = []
        self.loseRaises = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "TestReader"

    def doRead(self):
        return self.onRead(self.sock.recv(100))

    def connectionLost(self, reason) -> None:
        self.lost.append(reason.value)
        if self.loseRaises:
            raise RuntimeError("connectionLost went wrong")


def pollSystem(reactor, ours, theirs) -> str:
    """
    @return: the legacy log system a selectable's C{doRead} runs under
        when C{reactor} (an epoll reactor, not running) polls it: its log
        prefix with Twisted's own poll step, C{-} with the streamlined one.
    """
    systems = []
    reader = Reader(ours, lambda data: systems.append(
        log.context.get(log.ILogContext)["system"]))
    reactor.addReader(reader)
    try:
        theirs.send(b"?")
        reactor.doIteration(1)
    finally:
        reactor.removeReader(reader)
    return systems[0]


def closeReactor(reactor) -> None:
    """
    Let go of what an L{EPollReactor} that never ran holds.
    """
    reactor.removeAll()
    reactor._poller.close()
    reactor.waker.connectionLost(None)


class PrivateInternalsTests(TestCase):
    timeout = 30
    """
    Every attribute of L{PRIVATE} exists on real objects of the installed
    Twisted: a failure names the one a Twisted release took away.
    """

    def assertNoneMissing(self, objects) -> None:
        missing = missingInternals(objects)
        self.assertEqual(missing, [], "Twisted's private internals changed: "
                         + ", ".join(missing) + " no longer exist")

    def test_everyOwnerChecked(self) -> None:
        """
        Every owner named in L{PRIVATE} is one these tests build a real
        object of.
        """
        self.assertEqual({owner for owner, _ in PRIVATE},
                         {"EPollReactor", "tcp.Server", "tcp.Port",
                          "LogPublisher", "FileLogObserver"})

    def test_missingNamesTheAttribute(self) -> None:
        """
        An object without an attribute of L{PRIVATE} is reported by owner
        and attribute name; an owner not given is not checked.
        """
        class Port:
            doRead = connected = None

        self.assertEqual(missingInternals({"tcp.Port": Port()}), ["tcp.Port.sessionno"])
        self.assertEqual(missingInternals({}), [])

    def test_logObservers(self) -> None:
        """
        A real L{LogPublisher} and the observer C{textFileLogObserver} makes
        have the attributes L{textLogStream} reads, and it finds that
        observer's stream (and not a JSON observer's).
        """
        stream, other = io.StringIO(), io.StringIO()
        publisher = LogPublisher(jsonFileLogObserver(other), textFileLogObserver(stream))
        observer = textFileLogObserver(stream)
        self.assertNoneMissing({"LogPublisher": publisher, "FileLogObserver": observer})
        found = textLogStream(publisher)
        self.assertIsNotNone(found)
        self.assertIs(found[0], stream)
        self.assertIsNone(textLogStream(LogPublisher(jsonFileLogObserver(other))))

    def test_epollReactor(self) -> None:
        """
        A real L{EPollReactor} has the poll step's attributes.
        """
        epoll = EPollReactor()
        self.addCleanup(closeReactor, epoll)
        self.assertNoneMissing({"EPollReactor": epoll})

    async def test_tcpServerAndPort(self) -> None:
        """
        A real listening C{tcp.Port} and the real C{tcp.Server} of a
        loopback connection to it have the send queue's and the accept
        step's attributes.
        """
        accepted: defer.Deferred = defer.Deferred()
        closed: defer.Deferred = defer.Deferred()

        class Accepting(Protocol):
            def connectionMade(self):
                accepted.callback(self.transport)

            def connectionLost(self, reason):
                closed.callback(None)

        port = reactor.listenTCP(0, ServerFactory.forProtocol(Accepting), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = reactor.connectTCP("127.0.0.1", port.getHost().port,
                                    ClientFactory.forProtocol(Protocol))
        server = await accepted
        try:
            self.assertIsInstance(port, tcp.Port)
            self.assertIsInstance(server, tcp.Server)
            self.assertNoneMissing({"tcp.Server": server, "tcp.Port": port})
        finally:
            client.disconnect()
            server.loseConnection()
            await closed


class StreamlineTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.addCleanup(self.ours.close)
        self.addCleanup(self.theirs.close)
        # Cleanups run last first: the reactor lets go before the sockets
        # close.
        self.reactor = EPollReactor()
        self.addCleanup(self._closeReactor)

    def _closeReactor(self) -> None:
        closeReactor(self.reactor)

    def test_onlyTheEpollReactorItself(self) -> None:
        """
        The poll step is replaced once, on Twisted's epoll reactor only.
        """
        self.assertTrue(streamline(self.reactor))
        self.assertFalse(streamline(self.reactor))
        self.assertFalse(streamline(MemoryReactorClock()))

        class Custom(EPollReactor):
            pass

        custom = Custom()
        try:
            self.assertFalse(streamline(custom))
            self.assertEqual(pollSystem(custom, self.ours, self.theirs), "TestReader")
        finally:
            closeReactor(custom)

    def test_readEventReachesTheSelectable(self) -> None:
        """
        A readable descriptor's C{doRead} is called by the new poll step,
        with no logging context around it.
        """
        got = []
        systems = []

        def onRead(data):
            got.append(data)
            systems.append(log.context.get(log.ILogContext)["system"])

        streamline(self.reactor)
        reader = Reader(self.ours, onRead)
        self.reactor.addReader(reader)
        self.theirs.send(b"ping")
        self.reactor.doIteration(1)
        self.assertEqual(got, [b"ping"])
        self.assertEqual(systems, ["-"])
        self.assertEqual(reader.lost, [])

    def test_doReadFailureIsLoggedAndDisconnects(self) -> None:
        """
        An exception from C{doRead} is logged and the selectable is
        disconnected with it, as Twisted's own poll step does.
        """

        def onRead(data):
            raise ValueError("bad bytes " + data.decode())

        streamline(self.reactor)
        reader = Reader(self.ours, onRead)
        self.reactor.addReader(reader)
        self.theirs.send(b"x")
        self.reactor.doIteration(1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(reader.lost), 1)
        self.assertIsInstance(reader.lost[0], ValueError)
        self.assertNotIn(reader, self.reactor.getReaders())

    def test_escapingFailureIsLoggedWithPrefix(self) -> None:
        """
        An exception escaping the reactor's handling (here from
        C{connectionLost}) is logged under the selectable's log prefix, and
        the loop goes on with the next event.
        """
        events = []
        log.addObserver(events.append)
        self.addCleanup(log.removeObserver, events.append)

        def onRead(data):
            raise ValueError("first")

        streamline(self.reactor)
        reader = Reader(self.ours, onRead)
        reader.loseRaises = True
        self.reactor.addReader(reader)
        self.theirs.send(b"x")
        self.reactor.doIteration(1)
        self.flushLoggedErrors(ValueError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        failures = [e for e in events if e.get("isError") and "failure" in e
                    and e["failure"].check(RuntimeError)]
        self.assertEqual([e["system"] for e in failures], ["TestReader"])

    def test_undone(self) -> None:
        """
        L{unstreamline} gives the reactor its own poll step back (the
        legacy log context is there again); it changes nothing on a
        reactor that was not streamlined.
        """
        self.assertEqual(pollSystem(self.reactor, self.ours, self.theirs), "TestReader")
        streamline(self.reactor)
        self.assertEqual(pollSystem(self.reactor, self.ours, self.theirs), "-")
        self.assertTrue(unstreamline(self.reactor))
        self.assertEqual(pollSystem(self.reactor, self.ours, self.theirs), "TestReader")
        self.assertFalse(unstreamline(self.reactor))
        self.assertTrue(streamline(self.reactor))
