"""
TLS fixtures for the loopback tests: a throwaway certificate authority and
server certificates made with C{cryptography} at test time (nothing is
committed to the tree), the Twisted objects built from them, a TLS origin,
plain TCP destinations for CONNECT tunnels, and clients that speak through
a tunnel.

Everything listens on 127.0.0.1 port 0 and is closed by the test's
cleanups, so trial's dirty-reactor check catches a leak.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from typing import Callable, List, Optional, Sequence, Tuple

import httptools
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.web.server import Site
from zope.interface import implementer

from .helpers import OriginResource, Response, _trackServerConnections

__all__ = [
    "makeCA",
    "makeServerCert",
    "serverContextFactory",
    "trustRoot",
    "writeCAFile",
    "certificatePEM",
    "listenTLSOrigin",
    "listenDestination",
    "connectTunnelClient",
    "connectPrefixedTLS",
    "parseResponse",
    "freePort",
]


# -- certificates -------------------------------------------------------------

_ONE_DAY = datetime.timedelta(days=1)


def _name(commonName: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cachingproxy tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, commonName),
        ]
    )


def makeCA(commonName: str = "cachingproxy test CA"):
    """
    Make a self-signed certificate authority that lives only in memory.

    @return: C{(caCertPEM, caKey)}: the CA certificate as PEM bytes and its
        private key (a C{cryptography} key object).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"{commonName} {x509.random_serial_number():x}")
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _ONE_DAY)
        .not_valid_after(now + 30 * _ONE_DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key


def makeServerCert(
    ca,
    hostnames: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1",),
    notAfter: Optional[datetime.datetime] = None,
) -> Tuple[bytes, bytes]:
    """
    Make a server certificate issued by C{ca}.

    @param ca: C{(caCertPEM, caKey)} as returned by L{makeCA}.
    @param hostnames: DNS names for the subjectAltName.
    @param ips: IP addresses for the subjectAltName.
    @param notAfter: when it expires (in 30 days unless given; a time in
        the past makes an expired certificate).

    @return: C{(certPEM, keyPEM)}, both PEM bytes (the key unencrypted).
    """
    caCertPEM, caKey = ca
    caCert = x509.load_pem_x509_certificate(caCertPEM)
    key = ec.generate_private_key(ec.SECP256R1())
    names: List[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    commonName = hostnames[0] if hostnames else (ips[0] if ips else "server")
    now = datetime.datetime.now(datetime.timezone.utc)
    if notAfter is None:
        notAfter = now + 30 * _ONE_DAY
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(commonName))
        .issuer_name(caCert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, notAfter) - _ONE_DAY)
        .not_valid_after(notAfter)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(caKey, hashes.SHA256())
    keyPEM = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), keyPEM


def serverContextFactory(certPEM: bytes, keyPEM: bytes):
    """
    @return: a Twisted server TLS context factory (L{CertificateOptions})
        presenting C{certPEM}.
    """
    return PrivateCertificate.loadPEM(certPEM + b"\n" + keyPEM).options()


def trustRoot(caCertPEM: bytes):
    """
    @return: an C{IOpenSSLTrustRoot} trusting exactly C{caCertPEM}.
    """
    return trustRootFromCertificates([Certificate.loadPEM(caCertPEM)])


def writeCAFile(testCase, *pems: bytes) -> str:
    """
    Write PEM blocks (one CA, or a bundle) to a temporary file that the
    test's cleanup removes.

    @return: the file's path.
    """
    fd, path = tempfile.mkstemp(prefix="cachingproxy-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(b"".join(pem if pem.endswith(b"\n") else pem + b"\n" for pem in pems))
    testCase.addCleanup(os.remove, path)
    return path


def certificatePEM(x509Certificate) -> bytes:
    """
    @return: the PEM of a pyOpenSSL C{X509} (as C{getPeerCertificate}
        returns).
    """
    return x509Certificate.to_cryptography().public_bytes(serialization.Encoding.PEM)


# -- servers ------------------------------------------------------------------


def listenTLSOrigin(
    testCase, certPEM: bytes, keyPEM: bytes, resource: Optional[OriginResource] = None
) -> Tuple[OriginResource, int]:
    """
    Start the scripted origin over TLS on a free loopback port, presenting
    C{certPEM}.

    @return: the resource and the port number.
    """
    resource = resource or OriginResource()
    site = Site(resource)
    site.noisy = False
    site.log = lambda request: None
    port = reactor.listenSSL(
        0, site, serverContextFactory(certPEM, keyPEM), interface="127.0.0.1"
    )
    testCase.addCleanup(port.stopListening)
    _trackServerConnections(testCase, site)
    return resource, port.getHost().port


class Destination(Protocol):
    """
    A plain TCP CONNECT destination: writes its factory's C{banner} (if
    any) at once, echoes what it receives, and closes its side when the data
    it receives contains C{b"close"}.
    """

    def __init__(self, owner: "DestinationFactory") -> None:
        self.owner = owner
        self.received = b""
        self.lost = defer.Deferred()

    def connectionMade(self) -> None:
        self.owner.connections.append(self)
        if self.owner.banner:
            self.transport.write(self.owner.banner)
        for d in self.owner._connectWaiters:
            d.callback(self)
        self.owner._connectWaiters = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.transport.write(data)
        if b"close" in self.received:
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self.lost.callback(None)


class DestinationFactory(Factory):
    noisy = False

    def __init__(self, banner: bytes = b"") -> None:
        self.banner = banner
        self.connections: List[Destination] = []
        self._connectWaiters: List[defer.Deferred] = []

    def buildProtocol(self, addr):
        return Destination(self)

    def whenConnected(self) -> defer.Deferred:
        """
        @return: a Deferred firing with the first connection (at once if
            there already is one).
        """
        if self.connections:
            return defer.succeed(self.connections[0])
        d = defer.Deferred()
        self._connectWaiters.append(d)
        return d


def listenDestination(testCase, banner: bytes = b"") -> Tuple[DestinationFactory, int]:
    """
    Start a L{Destination} echo server on a free loopback port.

    @param banner: bytes each connection writes as soon as it is made.

    @return: its factory and port number.
    """
    factory = DestinationFactory(banner)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)

    def cleanup():
        waits = []
        for conn in factory.connections:
            if not conn.lost.called:
                conn.transport.abortConnection()
                waits.append(conn.lost)
        return defer.DeferredList(waits)

    testCase.addCleanup(cleanup)
    return factory, port.getHost().port


async def freePort() -> int:
    """
    @return: a loopback port number nothing listens on (it was bound and
        released).
    """
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    number = port.getHost().port
    await port.stopListening()
    return number


# -- clients ------------------------------------------------------------------


@implementer(IHandshakeListener)
class TunnelClient(Protocol):
    """
    A client that reads one response head (to its CONNECT), then treats
    everything else as tunnel bytes (decrypted, once TLS is started on its
    transport).

    @ivar head: fires with C{(status, headBytes)} when the response head to
        the CONNECT has arrived (or with C{(None, rawSoFar)} if the
        connection closes first).
    @ivar data: the tunnel bytes received after the head.
    @ivar handshake: fires when a TLS handshake started on this connection
        completes.
    @ivar closed: fires with C{data} when the connection closes.
    """

    def __init__(self) -> None:
        self._headBuffer = b""
        self.headBytes: Optional[bytes] = None
        self.status: Optional[int] = None
        self.data = b""
        self.head = defer.Deferred()
        self.handshake = defer.Deferred()
        self.closed = defer.Deferred()
        self.closeReason = None
        self._waiters: List[Tuple[Callable[[bytes], bool], defer.Deferred]] = []

    def dataReceived(self, data: bytes) -> None:
        if self.headBytes is None:
            self._headBuffer += data
            end = self._headBuffer.find(b"\r\n\r\n")
            if end == -1:
                return
            self.headBytes = self._headBuffer[: end + 4]
            rest = self._headBuffer[end + 4:]
            self._headBuffer = b""
            self.status = int(self.headBytes.split(b" ", 2)[1])
            self.data += rest
            self.head.callback((self.status, self.headBytes))
        else:
            self.data += data
        self._check()

    def _check(self) -> None:
        for predicate, d in list(self._waiters):
            if predicate(self.data):
                self._waiters.remove((predicate, d))
                d.callback(self.data)

    def waitUntil(self, predicate: Callable[[bytes], bool]) -> defer.Deferred:
        """
        @return: a Deferred firing with the tunnel bytes once
            C{predicate(data)} holds, or once the connection closes.
        """
        if predicate(self.data):
            return defer.succeed(self.data)
        d = defer.Deferred()
        self._waiters.append((predicate, d))
        return d

    def handshakeCompleted(self) -> None:
        self.handshake.callback(None)

    def connectionLost(self, reason=None) -> None:
        self.closeReason = reason
        if not self.head.called:
            self.head.callback((None, self._headBuffer))
        waiters, self._waiters = self._waiters, []
        for _, d in waiters:
            d.callback(self.data)
        if not self.handshake.called:
            self.handshake.errback(reason)
            self.handshake.addErrback(lambda _: None)
        self.closed.callback(self.data)


def _closeOnCleanup(testCase, client, transport) -> None:
    def cleanup():
        if transport is not None and not client.closed.called:
            transport.abortConnection()
            return client.closed

    testCase.addCleanup(cleanup)


async def connectTunnelClient(port: int, testCase) -> TunnelClient:
    """
    Connect a L{TunnelClient} to 127.0.0.1:C{port}; the test's cleanup
    closes it.
    """
    client = TunnelClient()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    _closeOnCleanup(testCase, client, client.transport)
    return client


class _PrefixTransport:
    """
    Stands between a TLS layer and a TCP transport: the first write is
    preceded by C{prefix} in the same C{write} call.

    @ivar writes: the bytes of each C{write} to the TCP transport.
    """

    def __init__(self, transport, prefix: bytes) -> None:
        self._transport = transport
        self._prefix = prefix
        self.writes: List[bytes] = []

    def write(self, data: bytes) -> None:
        prefix, self._prefix = self._prefix, b""
        self.writes.append(prefix + data)
        self._transport.write(prefix + data)

    def writeSequence(self, seq) -> None:
        self.write(b"".join(seq))

    def __getattr__(self, name):
        return getattr(self._transport, name)


class PrefixedTLSClient(Protocol):
    """
    Writes a CONNECT head and the TLS ClientHello in a single write (as
    clients that do not wait for the 200 do), strips the response head to
    the CONNECT, and feeds the rest to a client TLS layer carrying
    C{app} (a L{TunnelClient} whose head phase is skipped).

    @ivar head: fires with C{(status, headBytes)}.
    @ivar prefixed: the L{_PrefixTransport}; its C{writes} show what each
        write to the socket carried.
    """

    def __init__(self, connectHead: bytes, tlsOptions, app: TunnelClient) -> None:
        self._connectHead = connectHead
        self._options = tlsOptions
        self.app = app
        app.headBytes = b""
        self.head = defer.Deferred()
        self.closed = defer.Deferred()
        self._buffer = b""
        self._headDone = False
        self.tls: Optional[TLSMemoryBIOProtocol] = None
        self.prefixed: Optional[_PrefixTransport] = None

    def connectionMade(self) -> None:
        self.prefixed = _PrefixTransport(self.transport, self._connectHead)
        factory = TLSMemoryBIOFactory(self._options, True, Factory())
        self.tls = TLSMemoryBIOProtocol(factory, self.app)
        self.tls.makeConnection(self.prefixed)

    def dataReceived(self, data: bytes) -> None:
        if self._headDone:
            self.tls.dataReceived(data)
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end == -1:
            return
        self._headDone = True
        headBytes, rest = self._buffer[: end + 4], self._buffer[end + 4:]
        self._buffer = b""
        status = int(headBytes.split(b" ", 2)[1])
        self.head.callback((status, headBytes))
        if status == 200:
            if rest:
                self.tls.dataReceived(rest)
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        if not self.head.called:
            self.head.callback((None, self._buffer))
        if self.tls is not None:
            self.tls.connectionLost(reason)
        self.closed.callback(None)


async def connectPrefixedTLS(
    port: int, testCase, connectHead: bytes, tlsOptions
) -> PrefixedTLSClient:
    """
    Connect a L{PrefixedTLSClient} to 127.0.0.1:C{port}; the test's
    cleanup closes it.
    """
    client = PrefixedTLSClient(connectHead, tlsOptions, TunnelClient())
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)

    def cleanup():
        if client.transport is not None and not client.closed.called:
            client.transport.abortConnection()
            return client.closed

    testCase.addCleanup(cleanup)
    return client


def parseResponse(raw: bytes) -> List[Response]:
    """
    Parse the complete responses in C{raw} with httptools.

    @return: the responses (L{tests.helpers.Response}), interim ones
        included.
    """
    responses: List[Response] = []

    class Callbacks:
        headers: List[Tuple[bytes, bytes]] = []
        body = b""

        def on_message_begin(self):
            self.headers = []
            self.body = b""

        def on_header(self, name, value):
            self.headers.append((name.lower(), value))

        def on_body(self, data):
            self.body += data

        def on_message_complete(self):
            responses.append(
                Response(
                    parser.get_status_code(),
                    self.headers,
                    self.body,
                    parser.get_http_version(),
                )
            )

    parser = httptools.HttpResponseParser(Callbacks())
    parser.feed_data(raw)
    return responses
