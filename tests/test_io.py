"""
Tests for the write helpers of L{cachingproxy._twistedinternals}:
L{sendNow}, L{writeNow} and L{discardUnsent}, on a real TCP transport
(Twisted's C{tcp.Server} over one end of a socket pair, its reactor a
L{MemoryReactor}: nothing is sent but by the helpers or by an explicit
C{doWrite}).
"""

import socket

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cachingproxy._twistedinternals import discardUnsent, sendNow, writeNow


class TCPTestCase(SynchronousTestCase):
    """
    A C{tcp.Server} transport (C{self.transport}) whose peer socket is
    C{self.peer}.
    """

    def setUp(self):
        ours, self.peer = socket.socketpair()
        ours.setblocking(False)
        self.peer.setblocking(False)
        self.addCleanup(self.peer.close)
        self.addCleanup(ours.close)
        self.protocol = Protocol()
        self.transport = tcp.Server(ours, self.protocol, ("127.0.0.1", 5555), None, 1,
                                    MemoryReactor())
        self.protocol.makeConnection(self.transport)

    def received(self) -> bytes:
        """
        @return: what the peer socket can read now.
        """
        chunks = []
        while True:
            try:
                data = self.peer.recv(1 << 20)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def fillSocket(self) -> int:
        """
        Send until the kernel takes no more.

        @return: how many bytes were sent.
        """
        total = 0
        while True:
            try:
                total += self.transport.socket.send(b"x" * 65536)
            except BlockingIOError:
                return total


class SendNowTests(TCPTestCase):
    """
    L{sendNow}.
    """

    def test_sentAtOnce(self):
        """
        With nothing queued, the bytes go to the socket at once and nothing
        is left.
        """
        self.assertEqual(sendNow(self.transport, b"hello"), b"")
        self.assertEqual(self.received(), b"hello")

    def test_queuedAhead(self):
        """
        With bytes queued in the transport, nothing is sent: all of it is
        left, to be written after them.
        """
        self.transport.write(b"first")
        self.assertEqual(sendNow(self.transport, b"second"), b"second")
        self.assertEqual(self.received(), b"")

    def test_partOfIt(self):
        """
        What the kernel does not take is returned, the rest sent.
        """
        self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = bytes(range(256)) * 4096
        rest = sendNow(self.transport, data)
        self.assertTrue(0 < len(rest) < len(data))
        self.assertEqual(self.received(), data[: len(data) - len(rest)])

    def test_socketFull(self):
        """
        A socket that takes nothing (EAGAIN) leaves all of it.
        """
        self.fillSocket()
        self.assertEqual(sendNow(self.transport, b"more"), b"more")

    def test_disconnecting(self):
        """
        A transport that is closing gets nothing sent.
        """
        self.transport.loseConnection()
        self.assertEqual(sendNow(self.transport, b"late"), b"late")
        self.assertEqual(self.received(), b"")

    def test_otherTransports(self):
        """
        Any transport but plain TCP (TLS, a test double) gets nothing sent.
        """
        transport = StringTransport()
        self.assertEqual(sendNow(transport, b"data"), b"data")
        self.assertEqual(transport.value(), b"")


class WriteNowTests(TCPTestCase):
    """
    L{writeNow}.
    """

    def test_sentAtOnce(self):
        """
        With nothing queued, the bytes go at once and nothing is queued.
        """
        writeNow(self.transport, b"hello")
        self.assertEqual(self.received(), b"hello")
        self.assertEqual(self.transport._tempDataBuffer, [])

    def test_orderKept(self):
        """
        Behind queued bytes, the bytes are queued after them: they leave in
        order when the transport writes.
        """
        self.transport.write(b"first ")
        writeNow(self.transport, b"second")
        self.assertEqual(self.received(), b"")
        self.transport.doWrite()
        self.assertEqual(self.received(), b"first second")

    def test_restQueued(self):
        """
        What the kernel does not take is queued in the transport (where
        its flow control sees it) and follows in order.
        """
        self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = bytes(range(256)) * 4096
        writeNow(self.transport, data)
        got = self.received()
        self.assertTrue(0 < len(got) < len(data))
        self.assertEqual(self.transport._tempDataLen, len(data) - len(got))
        while len(got) < len(data):
            self.transport.doWrite()
            got += self.received()
        self.assertEqual(got, data)

    def test_otherTransports(self):
        """
        Any other transport is simply written to.
        """
        transport = StringTransport()
        writeNow(transport, b"data")
        self.assertEqual(transport.value(), b"data")


class DiscardUnsentTests(TCPTestCase):
    """
    L{discardUnsent}.
    """

    def queue(self):
        self.fillSocket()
        self.transport.write(b"x" * 100_000)
        self.transport.doWrite()
        self.assertTrue(self.transport.dataBuffer or self.transport._tempDataBuffer)

    def assertEmpty(self, transport):
        self.assertEqual(transport.dataBuffer, b"")
        self.assertEqual(transport.offset, 0)
        self.assertEqual(transport._tempDataBuffer, [])
        self.assertEqual(transport._tempDataLen, 0)

    def test_lostConnection(self):
        """
        A lost connection's send queue is dropped.
        """
        self.queue()
        self.transport.connectionLost(Failure(ConnectionDone()))
        discardUnsent(self.transport)
        self.assertEmpty(self.transport)

    def test_liveConnection(self):
        """
        A live connection's send queue is kept: it is still to be sent.
        """
        self.queue()
        queued = (self.transport.dataBuffer, self.transport._tempDataLen)
        discardUnsent(self.transport)
        self.assertEqual((self.transport.dataBuffer, self.transport._tempDataLen), queued)

    def test_throughWrapper(self):
        """
        Through a protocol wrapper (TLS), the TCP connection under it is
        reached.
        """

        class Wrapper:
            def __init__(self, transport):
                self.transport = transport

        self.queue()
        self.transport.connectionLost(Failure(ConnectionDone()))
        discardUnsent(Wrapper(Wrapper(self.transport)))
        self.assertEmpty(self.transport)

    def test_otherTransports(self):
        """
        A transport with no TCP connection under it is left alone.
        """
        transport = StringTransport()
        transport.write(b"data")
        discardUnsent(transport)
        self.assertEqual(transport.value(), b"data")
