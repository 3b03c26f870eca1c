"""
L{cachingproxy._twistedinternals.streamline} on a private epoll reactor (never the
one the tests run on), with a real socket pair as the ready descriptor.
"""

from __future__ import annotations

import socket
from typing import List

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import MemoryReactorClock
from twisted.python import log
from twisted.trial.unittest import SynchronousTestCase

from cachingproxy._twistedinternals import streamline


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
        self.reactor.removeAll()
        self.reactor._poller.close()
        self.reactor.waker.connectionLost(None)

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
            self.assertNotIn("doIteration", vars(custom))
        finally:
            custom._poller.close()
            custom.waker.connectionLost(None)

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
