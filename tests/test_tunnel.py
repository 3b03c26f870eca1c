"""
Tests for L{cachingproxy.proxy.tunnel}: the byte pipe of CONNECT tunnels and
upgraded connections, with L{StringTransport}s at both ends (a
L{StringTransport} records the producer registered on it, and is itself a
producer whose C{producerState} says whether it was paused).
"""

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cachingproxy.proxy.tunnel import TunnelPeer, joinTunnel

from .test_server import ProxyHarness


class FakeClient(Protocol):
    """
    The client side of a tunnel: counts C{tunnelClosed} calls.
    """

    def __init__(self):
        self.closed = 0

    def tunnelClosed(self):
        self.closed += 1


def pipe():
    """
    @return: a client and a destination, each connected to a
        L{StringTransport}, not joined yet.
    """
    client = FakeClient()
    client.makeConnection(StringTransport())
    peer = TunnelPeer()
    peer.makeConnection(StringTransport())
    return client, peer


class TunnelPeerTests(SynchronousTestCase):
    """
    L{TunnelPeer} and L{joinTunnel} on their own.
    """

    def test_bytesBeforeAndAfterJoining(self):
        """
        What the destination sends before the tunnel is joined waits and
        reaches the client first, in order, when it is; after that, bytes go
        straight through. Every byte is counted and every read reported as
        activity.
        """
        client, peer = pipe()
        activity = []
        peer.onActivity = lambda: activity.append(True)
        peer.dataReceived(b"one ")
        peer.dataReceived(b"two ")
        self.assertEqual(client.transport.value(), b"")
        joinTunnel(client, peer)
        self.assertEqual(client.transport.value(), b"one two ")
        peer.dataReceived(b"three")
        self.assertEqual(client.transport.value(), b"one two three")
        self.assertEqual(peer.bytesFromDestination, len(b"one two three"))
        self.assertEqual(len(activity), 3)

    def test_eachTransportProducesForTheOther(self):
        """
        Joining registers each side's transport as the streaming producer
        of the other's.
        """
        client, peer = pipe()
        joinTunnel(client, peer)
        self.assertIs(client.transport.producer, peer.transport)
        self.assertIs(peer.transport.producer, client.transport)
        self.assertTrue(client.transport.streaming)
        self.assertTrue(peer.transport.streaming)

    def test_slowClientPausesDestination(self):
        """
        A client that does not keep up (its transport's buffer fills, so it
        pauses its producer) pauses reading from the destination, until it
        catches up.
        """
        client, peer = pipe()
        joinTunnel(client, peer)
        client.transport.producer.pauseProducing()
        self.assertEqual(peer.transport.producerState, "paused")
        self.assertEqual(client.transport.producerState, "producing")
        client.transport.producer.resumeProducing()
        self.assertEqual(peer.transport.producerState, "producing")

    def test_slowDestinationPausesClient(self):
        """
        A destination that does not keep up pauses reading from the client,
        until it catches up.
        """
        client, peer = pipe()
        joinTunnel(client, peer)
        peer.transport.producer.pauseProducing()
        self.assertEqual(client.transport.producerState, "paused")
        self.assertEqual(peer.transport.producerState, "producing")
        peer.transport.producer.resumeProducing()
        self.assertEqual(client.transport.producerState, "producing")

    def test_destinationCloseReachesClient(self):
        """
        The destination closing tells the client side once, and the peer
        lets go of it.
        """
        client, peer = pipe()
        joinTunnel(client, peer)
        peer.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(client.closed, 1)
        self.assertIsNone(peer.client)
        peer.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(client.closed, 1)

    def test_closeBeforeJoining(self):
        """
        A destination that closes before the tunnel is joined tells nobody
        (no client is attached yet).
        """
        client, peer = pipe()
        peer.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(client.closed, 0)


class ProxyTunnelTests(SynchronousTestCase):
    """
    The tunnel as the proxy's client connection joins it, after a CONNECT.
    """

    def connect(self):
        h = ProxyHarness()
        h.send(b"CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\n\r\n")
        peer = h.reactor.tcpClients[-1][2].buildProtocol(None)
        peerTransport = StringTransport()
        peer.makeConnection(peerTransport)
        self.assertEqual(h.received(), b"HTTP/1.1 200 Connection Established\r\n\r\n")
        return h, peer, peerTransport

    def test_flowControlBothWays(self):
        """
        After the 200, a slow client pauses the destination and a slow
        destination pauses the client connection; each resumes the other.
        """
        h, peer, peerTransport = self.connect()
        self.assertIs(h.transport.producer, peerTransport)
        self.assertIs(peerTransport.producer, h.transport)
        self.assertEqual(h.transport.producerState, "producing")
        h.transport.producer.pauseProducing()
        self.assertEqual(peerTransport.producerState, "paused")
        h.transport.producer.resumeProducing()
        self.assertEqual(peerTransport.producerState, "producing")
        peerTransport.producer.pauseProducing()
        self.assertEqual(h.transport.producerState, "paused")
        peerTransport.producer.resumeProducing()
        self.assertEqual(h.transport.producerState, "producing")

    def test_closeBothWays(self):
        """
        The destination closing closes the client connection; the client
        closing closes the destination connection.
        """
        h, peer, peerTransport = self.connect()
        peer.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(h.transport.disconnecting)
        h, peer, peerTransport = self.connect()
        h.proto.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(peerTransport.disconnecting)
