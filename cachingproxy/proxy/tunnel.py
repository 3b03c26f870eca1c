# -*- test-case-name: tests.test_tunnel -*-
"""
CONNECT tunnels: after the proxy answers 200 to a CONNECT request, the
client connection and the connection to the requested authority become one
byte pipe, with flow control both ways (the shape of Twisted's
C{twisted.protocols.portforward}). The same pipe carries a connection
upgraded by a 101 (RFC 9110 section 7.8).
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.logger import Logger

__all__ = ["TunnelPeer", "joinTunnel"]


class TunnelPeer(Protocol):
    """
    The far end of a tunnel: bytes from the destination go to the client.

    @ivar client: the client-side protocol, which provides
        C{tunnelDataReceived}-free plain forwarding through its transport and
        C{tunnelClosed()}.
    """

    _log = Logger()

    def __init__(self) -> None:
        self.client = None
        self._pending = []
        self.bytesFromDestination = 0
        #: called with no argument whenever bytes pass (either way), for
        #: an idle timeout; C{None} when nobody watches
        self.onActivity = None

    def dataReceived(self, data: bytes) -> None:
        self.bytesFromDestination += len(data)
        if self.client is None:
            self._pending.append(data)
        else:
            self.client.transport.write(data)
        if self.onActivity is not None:
            self.onActivity()

    def connectionLost(self, reason=None) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.tunnelClosed()


def joinTunnel(client, peer: TunnelPeer) -> None:
    """
    Join the client protocol and the destination protocol: each transport
    becomes the producer of the other, so a slow reader on one side pauses
    reading on the other.
    """
    peer.client = client
    client.transport.registerProducer(peer.transport, True)
    peer.transport.registerProducer(client.transport, True)
    pending, peer._pending = peer._pending, []
    for data in pending:
        client.transport.write(data)
