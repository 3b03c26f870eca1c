"""
TLS through the proxy, over real loopback sockets with a throwaway CA made
at test time (L{tests.tlshelpers}):

  - CONNECT tunnels to a TLS origin (end-to-end encrypted), their refusals
    and failures, early data and closing;
  - https origins the proxy itself connects to (reverse mode and
    absolute-form https targets), with certificate and host name checks;
  - the twistd plugin's C{--ca-file}.
"""

from twisted.internet import defer, reactor
from twisted.internet.ssl import optionsForClientTLS
from twisted.python import usage
from twisted.trial.unittest import TestCase

from cachingproxy.cache.layer import CacheLayer, CacheSettings
from cachingproxy.cache.memory import MemoryStore
from cachingproxy.service import tap
from cachingproxy.proxy.connection import ProxyProtocol
from cachingproxy.proxy.settings import ProxySettings
from cachingproxy.proxy.tunnel import TunnelPeer
from cachingproxy.proxy.upstream import Origin, UpstreamSettings

from .helpers import _trackServerConnections, exchange, pattern, startProxy, temporaryPath
from .tlshelpers import (
    certificatePEM,
    connectPrefixedTLS,
    connectTunnelClient,
    freePort,
    listenDestination,
    listenTLSOrigin,
    makeCA,
    makeServerCert,
    parseResponse,
    trustRoot,
    writeCAFile,
)

#: One CA and certificates for the whole module: making keys is the slow
#: part, and nothing here mutates them.
CA = makeCA()
CA_PEM = CA[0]
GOOD = makeServerCert(CA)
WRONG_NAME = makeServerCert(CA, hostnames=["wrong.example"], ips=[])
OTHER_CA = makeCA("another test CA")
OTHER_CA_PEM = OTHER_CA[0]
FOREIGN = makeServerCert(OTHER_CA)
DNS_ONLY = makeServerCert(CA, hostnames=["localhost"], ips=[])


def _connectHead(host: str, port: int) -> bytes:
    return b"CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (
        host.encode(), port, host.encode(), port,
    )


def _spyOnTunnel(testCase):
    """
    Record every byte the proxy reads from its clients and from tunnel
    destinations (the originals still run).

    @return: C{(fromClients, fromDestinations)}, two lists of bytes.
    """
    fromClients, fromDestinations = [], []
    clientData = ProxyProtocol.dataReceived
    destinationData = TunnelPeer.dataReceived

    def spyClient(self, data):
        fromClients.append(data)
        return clientData(self, data)

    def spyDestination(self, data):
        fromDestinations.append(data)
        return destinationData(self, data)

    testCase.patch(ProxyProtocol, "dataReceived", spyClient)
    testCase.patch(TunnelPeer, "dataReceived", spyDestination)
    return fromClients, fromDestinations


def _whenLogged(factory) -> defer.Deferred:
    """
    @return: a Deferred firing with the next access log line C{factory}
        writes (the line still goes to the original log).
    """
    d = defer.Deferred()
    original = factory.accessLog

    def accessLog(line):
        original(line)
        if not d.called:
            d.callback(line)

    factory.accessLog = accessLog
    return d


class ConnectTunnelTests(TestCase):
    """
    CONNECT through the forward proxy.
    """

    async def test_tlsThroughTunnel(self):
        """
        After a 200 to CONNECT, the client starts TLS on the same connection
        and talks HTTPS to the origin: the origin's certificate (for
        C{localhost}, from the test CA) is the one the client verifies, the
        body arrives intact, the origin sees the request, and the proxy
        relays only ciphertext.
        """
        fromClients, fromDestinations = _spyOnTunnel(self)
        origin, originPort = listenTLSOrigin(self, *GOOD)
        factory, port, lines = startProxy(
            self,
            ProxySettings(viaName=b"test-proxy", connectPorts=frozenset([originPort])),
        )
        logged = _whenLogged(factory)
        client = await connectTunnelClient(port, self)
        head = _connectHead("localhost", originPort)
        client.transport.write(head)
        status, headBytes = await client.head
        self.assertEqual(status, 200)
        self.assertTrue(headBytes.startswith(b"HTTP/1.1 200 "))
        self.assertEqual(client.data, b"")

        client.transport.startTLS(optionsForClientTLS("localhost", trustRoot=trustRoot(CA_PEM)))
        client.transport.write(
            b"GET /size/20000 HTTP/1.1\r\nHost: localhost:%d\r\n"
            b"Connection: close\r\n\r\n" % originPort
        )
        await client.handshake
        self.assertEqual(certificatePEM(client.transport.getPeerCertificate()), GOOD[0])
        raw = await client.closed

        [response] = parseResponse(raw)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, pattern(20000))
        # The proxy does not touch what is inside the tunnel.
        self.assertIsNone(response.header(b"via"))
        self.assertEqual(len(origin.requests), 1)
        self.assertEqual(origin.requests[0]["path"], b"/size/20000")
        self.assertEqual(origin.requests[0]["method"], b"GET")

        # What the proxy read: the CONNECT head in clear, then TLS records
        # only (handshake record first); nothing of the request or the body.
        clientBytes = b"".join(fromClients)
        self.assertTrue(clientBytes.startswith(head))
        tunnelled = clientBytes[len(head):]
        self.assertEqual(tunnelled[:2], b"\x16\x03")
        self.assertNotIn(b"/size/20000", tunnelled)
        self.assertNotIn(b"Host:", tunnelled)
        destinationBytes = b"".join(fromDestinations)
        self.assertEqual(destinationBytes[:2], b"\x16\x03")
        self.assertNotIn(b"HTTP/1.1 200", destinationBytes)
        self.assertNotIn(pattern(20000)[:64], destinationBytes)
        self.assertGreater(len(destinationBytes), 20000)

        # The client ends its side on the origin's close_notify, possibly
        # before the proxy has seen either connection close: wait for the
        # proxy's access log line, written once the tunnel ends.
        line = await logged
        self.assertIn('"CONNECT localhost:%d HTTP/1.1" 200' % originPort, line)
        self.assertEqual(lines, [line])
        # The line counts the tunnel's bytes each way: down to the client
        # in the bytes field, up from it in the last field.
        fields = line.split()
        self.assertEqual(int(fields[9]), len(b"".join(fromDestinations)))
        self.assertEqual(int(fields[-1]), len(b"".join(fromClients)) - len(head))

    async def test_connectPortNotAllowed(self):
        """
        CONNECT to a port not in C{connectPorts} gets 403 and the connection
        closes; the destination is never contacted.
        """
        destination, destinationPort = listenDestination(self)
        _, port, _ = startProxy(
            self,
            ProxySettings(viaName=b"test-proxy", connectPorts=frozenset([destinationPort + 1])),
        )
        client, [response] = await exchange(
            port, self, _connectHead("127.0.0.1", destinationPort)
        )
        self.assertEqual(response.status, 403)
        self.assertEqual(response.header(b"connection"), b"close")
        await client.closed
        self.assertEqual(destination.connections, [])

    async def test_connectRefused(self):
        """
        CONNECT to an allowed port where nothing listens gets 502 and the
        connection closes.
        """
        closedPort = await freePort()
        _, port, _ = startProxy(
            self,
            ProxySettings(viaName=b"test-proxy", connectPorts=frozenset([closedPort])),
        )
        client, [response] = await exchange(
            port, self, _connectHead("127.0.0.1", closedPort)
        )
        self.assertEqual(response.status, 502)
        await client.closed

    async def test_dataBeforeEstablished(self):
        """
        Bytes sent in the same write as the CONNECT head, before the 200,
        reach the destination once the tunnel is up; the echo comes back
        after the 200 head.
        """
        destination, destinationPort = listenDestination(self)
        _, port, _ = startProxy(
            self,
            ProxySettings(viaName=b"test-proxy", connectPorts=frozenset([destinationPort])),
        )
        client = await connectTunnelClient(port, self)
        client.transport.write(_connectHead("127.0.0.1", destinationPort) + b"hello")
        status, headBytes = await client.head
        self.assertEqual(status, 200)
        data = await client.waitUntil(lambda data: len(data) >= 5)
        self.assertEqual(data, b"hello")
        self.assertEqual(destination.connections[0].received, b"hello")
        # More bytes go through the established tunnel.
        client.transport.write(b" world")
        data = await client.waitUntil(lambda data: len(data) >= 11)
        self.assertEqual(data, b"hello world")

    async def test_destinationSpeaksFirst(self):
        """
        A destination that writes as soon as it is connected (a banner):
        its bytes reach the client after the 200 head, not before or
        inside it.
        """
        destination, destinationPort = listenDestination(self, banner=b"220 ready\r\n")
        _, port, _ = startProxy(
            self,
            ProxySettings(viaName=b"test-proxy", connectPorts=frozenset([destinationPort])),
        )
        client = await connectTunnelClient(port, self)
        client.transport.write(_connectHead("127.0.0.1", destinationPort))
        status, headBytes = await client.head
        self.assertEqual(headBytes, b"HTTP/1.1 200 Connection Established\r\n\r\n")
        data = await client.waitUntil(lambda data: data.endswith(b"\r\n"))
        self.assertEqual(data, b"220 ready\r\n")

    async def test_clientHelloWithConnect(self):
        """
        A client that sends its TLS ClientHello in the same write as the
        CONNECT head (without waiting for the 200) still gets a working,
        verified TLS session with the origin.
        """
        origin, originPort = listenTLSOrigin(self, *GOOD)
        _, port, _ = startProxy(
            self,
            ProxySettings(viaName=b"test-proxy", connectPorts=frozenset([originPort])),
        )
        head = _connectHead("localhost", originPort)
        client = await connectPrefixedTLS(
            port, self, head, optionsForClientTLS("localhost", trustRoot=trustRoot(CA_PEM))
        )
        first = client.prefixed.writes[0]
        self.assertTrue(first.startswith(head))
        self.assertEqual(first[len(head):len(head) + 2], b"\x16\x03")

        app = client.app
        app.transport.write(
            b"GET /size/3000 HTTP/1.1\r\nHost: localhost:%d\r\n"
            b"Connection: close\r\n\r\n" % originPort
        )
        status, _ = await client.head
        self.assertEqual(status, 200)
        await app.handshake
        self.assertEqual(certificatePEM(app.transport.getPeerCertificate()), GOOD[0])
        raw = await app.closed
        [response] = parseResponse(raw)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, pattern(3000))
        self.assertEqual(origin.requests[0]["path"], b"/size/3000")

    async def test_destinationCloses(self):
        """
        When the destination closes its connection, the proxy closes the
        client's, after relaying what the destination sent.
        """
        destination, destinationPort = listenDestination(self)
        _, port, lines = startProxy(
            self,
            ProxySettings(viaName=b"test-proxy", connectPorts=frozenset([destinationPort])),
        )
        client = await connectTunnelClient(port, self)
        client.transport.write(_connectHead("127.0.0.1", destinationPort))
        status, _ = await client.head
        self.assertEqual(status, 200)
        client.transport.write(b"please close")
        data = await client.closed
        self.assertEqual(data, b"please close")
        await destination.connections[0].lost
        self.assertEqual(len(lines), 1)
        self.assertIn('"CONNECT 127.0.0.1:%d HTTP/1.1" 200' % destinationPort, lines[0])

    async def test_clientCloses(self):
        """
        When the client closes its connection, the proxy closes the one to
        the destination.
        """
        destination, destinationPort = listenDestination(self)
        _, port, lines = startProxy(
            self,
            ProxySettings(viaName=b"test-proxy", connectPorts=frozenset([destinationPort])),
        )
        client = await connectTunnelClient(port, self)
        client.transport.write(_connectHead("127.0.0.1", destinationPort))
        status, _ = await client.head
        self.assertEqual(status, 200)
        client.transport.write(b"ping")
        await client.waitUntil(lambda data: data == b"ping")
        conn = await destination.whenConnected()
        client.transport.loseConnection()
        await conn.lost
        await client.closed
        self.assertEqual(conn.received, b"ping")
        self.assertEqual(len(lines), 1)
        self.assertIn('"CONNECT 127.0.0.1:%d HTTP/1.1" 200' % destinationPort, lines[0])


class HTTPSUpstreamTests(TestCase):
    """
    The proxy originating TLS to https origins.
    """

    def _reverse(self, originPort, trusted=CA_PEM):
        settings = ProxySettings(
            viaName=b"test-proxy", upstream=Origin(b"https", "localhost", originPort)
        )
        return startProxy(
            self,
            settings,
            upstreamSettings=UpstreamSettings(
                trustRoot=trustRoot(trusted), connectTimeout=5, responseTimeout=5
            ),
        )

    async def test_reverse(self):
        """
        In reverse mode with an https upstream, a plain HTTP request to the
        proxy is forwarded over TLS (certificate verified against the test
        CA) and the origin's body comes back; the pooled TLS connection is
        reused for the next request.
        """
        origin, originPort = listenTLSOrigin(self, *GOOD)
        factory, port, _ = self._reverse(originPort)
        _, responses = await exchange(
            port, self,
            b"GET /size/5000 HTTP/1.1\r\nHost: proxy.example\r\n\r\n"
            b"GET /echo HTTP/1.1\r\nHost: proxy.example\r\nContent-Length: 3\r\n\r\nabc",
            count=2,
        )
        self.assertEqual([r.status for r in responses], [200, 200])
        self.assertEqual(responses[0].body, pattern(5000))
        self.assertEqual(responses[0].header(b"via"), b"1.1 test-proxy")
        self.assertEqual(responses[1].body, b"abc")
        self.assertEqual([r["path"] for r in origin.requests], [b"/size/5000", b"/echo"])
        host = [v for k, v in origin.requests[0]["headers"] if k.lower() == b"host"]
        self.assertEqual(host, [b"localhost:%d" % originPort])
        self.assertEqual(origin.connectionCount(), 1)
        self.assertEqual(factory.pool.connectionsMade, 1)

    async def test_reverseLargeBodies(self):
        """
        Large bodies both ways over the TLS upstream connection arrive
        intact: a 2 MB request body echoed back, and a chunked response.
        """
        origin, originPort = listenTLSOrigin(self, *GOOD)
        _, port, _ = self._reverse(originPort)
        body = pattern(2_000_000)
        _, responses = await exchange(
            port, self,
            b"POST /echo HTTP/1.1\r\nHost: proxy.example\r\nContent-Length: %d\r\n\r\n%s"
            b"GET /chunked/300000 HTTP/1.1\r\nHost: proxy.example\r\n\r\n" % (len(body), body),
            count=2,
        )
        self.assertEqual([r.status for r in responses], [200, 200])
        self.assertEqual(responses[0].body, body)
        self.assertEqual(responses[1].body, pattern(300000))
        self.assertEqual(origin.requests[0]["body"], body)

    async def test_reverseWrongHostname(self):
        """
        An origin whose certificate (from the trusted CA) names another host
        is refused: 502, and the origin never receives the request.
        """
        origin, originPort = listenTLSOrigin(self, *WRONG_NAME)
        _, port, _ = self._reverse(originPort)
        _, [response] = await exchange(
            port, self, b"GET /size/10 HTTP/1.1\r\nHost: proxy.example\r\n\r\n"
        )
        self.assertEqual(response.status, 502)
        self.assertEqual(origin.requests, [])

    async def test_reverseUntrustedIssuer(self):
        """
        An origin whose certificate is for the right name but issued by a CA
        outside the trust root is refused: 502, and the origin never
        receives the request.
        """
        origin, originPort = listenTLSOrigin(self, *FOREIGN)
        _, port, _ = self._reverse(originPort)
        _, [response] = await exchange(
            port, self, b"GET /size/10 HTTP/1.1\r\nHost: proxy.example\r\n\r\n"
        )
        self.assertEqual(response.status, 502)
        self.assertEqual(origin.requests, [])

    async def test_forwardAbsoluteHTTPS(self):
        """
        In forward mode, an absolute-form C{https://} target makes the proxy
        connect to the origin with TLS, verified against the trust root.
        """
        origin, originPort = listenTLSOrigin(self, *GOOD)
        _, port, _ = startProxy(
            self,
            ProxySettings(viaName=b"test-proxy"),
            upstreamSettings=UpstreamSettings(
                trustRoot=trustRoot(CA_PEM), connectTimeout=5, responseTimeout=5
            ),
        )
        _, [response] = await exchange(
            port, self,
            b"GET https://localhost:%d/size/7000?x=1 HTTP/1.1\r\n"
            b"Host: localhost:%d\r\n\r\n" % (originPort, originPort),
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, pattern(7000))
        self.assertEqual(origin.requests[0]["path"], b"/size/7000?x=1")

    async def test_forwardAbsoluteHTTPSUntrusted(self):
        """
        In forward mode, an absolute-form C{https://} target whose origin
        certificate is not trusted gets 502; the origin receives nothing.
        """
        origin, originPort = listenTLSOrigin(self, *GOOD)
        _, port, _ = startProxy(
            self,
            ProxySettings(viaName=b"test-proxy"),
            upstreamSettings=UpstreamSettings(
                trustRoot=trustRoot(OTHER_CA_PEM), connectTimeout=5, responseTimeout=5
            ),
        )
        _, [response] = await exchange(
            port, self,
            b"GET https://localhost:%d/size/10 HTTP/1.1\r\n"
            b"Host: localhost:%d\r\n\r\n" % (originPort, originPort),
        )
        self.assertEqual(response.status, 502)
        self.assertEqual(origin.requests, [])


    async def test_forwardHTTPSAddress(self):
        """
        An C{https://} target naming an IP address is verified against the
        certificate's IP address entries: accepted when the certificate
        lists 127.0.0.1, refused (502, nothing reaches the origin) when it
        only names C{localhost}.
        """
        good, goodPort = listenTLSOrigin(self, *GOOD)
        dnsOnly, dnsOnlyPort = listenTLSOrigin(self, *DNS_ONLY)
        _, port, _ = startProxy(
            self,
            ProxySettings(viaName=b"test-proxy"),
            upstreamSettings=UpstreamSettings(
                trustRoot=trustRoot(CA_PEM), connectTimeout=5, responseTimeout=5
            ),
        )
        _, [accepted] = await exchange(
            port, self,
            b"GET https://127.0.0.1:%d/size/10 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % goodPort,
        )
        _, [refused] = await exchange(
            port, self,
            b"GET https://127.0.0.1:%d/size/10 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % dnsOnlyPort,
        )
        self.assertEqual(accepted.status, 200)
        self.assertEqual(accepted.body, pattern(10))
        self.assertEqual(len(good.requests), 1)
        self.assertEqual(refused.status, 502)
        self.assertEqual(dnsOnly.requests, [])

    async def test_untrustedOriginToldAlikeWithAndWithoutCache(self):
        """
        An https origin whose certificate is not trusted gets the same 502
        naming the failed TLS verification, whether the request goes
        through the cache or straight through; the origin receives nothing.
        """
        origin, originPort = listenTLSOrigin(self, *GOOD)
        request = (b"GET https://localhost:%d/size/10 HTTP/1.1\r\n"
                   b"Host: localhost:%d\r\n\r\n" % (originPort, originPort))
        bodies = []
        for cached in (False, True):
            factory, port, _ = startProxy(
                self,
                ProxySettings(viaName=b"test-proxy"),
                upstreamSettings=UpstreamSettings(
                    trustRoot=trustRoot(OTHER_CA_PEM), connectTimeout=5, responseTimeout=5
                ),
            )
            if cached:
                factory.cache = CacheLayer(
                    MemoryStore(1 << 20, 1 << 16), reactor, factory.pool, CacheSettings()
                )
            _, [response] = await exchange(port, self, request)
            self.assertEqual(response.status, 502)
            bodies.append(response.body)
        self.assertTrue(bodies[1].startswith(b"TLS with the origin failed: "), bodies[1])
        self.assertIn(b"certificate verify failed", bodies[1])
        self.assertEqual(bodies[0], bodies[1])
        self.assertEqual(origin.requests, [])


class CAFileTests(TestCase):
    """
    The twistd plugin's C{--ca-file}, through L{tap.Options} and
    L{tap.buildFactory}.
    """

    def _listen(self, arguments):
        options = tap.Options()
        options.parseOptions(list(arguments) + ["--no-cache"])
        factory = tap.buildFactory(reactor, options.config)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        factory.port = port
        self.addCleanup(factory.pool.closeCachedConnections)
        self.addCleanup(port.stopListening)
        _trackServerConnections(self, factory)
        return factory, port.getHost().port

    def _arguments(self, originPort):
        return [
            "--port", "tcp:0:interface=127.0.0.1",
            "--upstream", f"https://localhost:{originPort}",
            "--via-name", "tap-proxy",
        ]

    async def test_caFileTrusted(self):
        """
        With C{--ca-file} naming the test CA, the https upstream's
        certificate is accepted and the origin's body comes back.
        """
        origin, originPort = listenTLSOrigin(self, *GOOD)
        path = writeCAFile(self, CA_PEM)
        factory, port = self._listen(self._arguments(originPort) + ["--ca-file", path])
        self.assertEqual(factory.settings.upstream, Origin(b"https", "localhost", originPort))
        _, [response] = await exchange(
            port, self, b"GET /size/4000 HTTP/1.1\r\nHost: proxy.example\r\n\r\n"
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, pattern(4000))
        self.assertEqual(response.header(b"via"), b"1.1 tap-proxy")
        self.assertEqual(origin.requests[0]["path"], b"/size/4000")

    async def test_caFileBundle(self):
        """
        A C{--ca-file} holding several certificates trusts each of them,
        not only the first.
        """
        origin, originPort = listenTLSOrigin(self, *GOOD)
        path = writeCAFile(self, OTHER_CA_PEM, CA_PEM)
        _, port = self._listen(self._arguments(originPort) + ["--ca-file", path])
        _, [response] = await exchange(
            port, self, b"GET /size/10 HTTP/1.1\r\nHost: proxy.example\r\n\r\n"
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, pattern(10))

    async def test_caFileOtherCA(self):
        """
        With C{--ca-file} naming a CA that did not issue the origin's
        certificate, the proxy refuses the origin: 502, no request reaches
        it.
        """
        origin, originPort = listenTLSOrigin(self, *GOOD)
        path = writeCAFile(self, OTHER_CA_PEM)
        _, port = self._listen(self._arguments(originPort) + ["--ca-file", path])
        _, [response] = await exchange(
            port, self, b"GET /size/10 HTTP/1.1\r\nHost: proxy.example\r\n\r\n"
        )
        self.assertEqual(response.status, 502)
        self.assertEqual(origin.requests, [])

    async def test_noCAFile(self):
        """
        Without C{--ca-file} the platform's trust store is used, which does
        not know the test CA: 502. (So the CA file is what makes the
        trusted case work.)
        """
        origin, originPort = listenTLSOrigin(self, *GOOD)
        _, port = self._listen(self._arguments(originPort))
        _, [response] = await exchange(
            port, self, b"GET /size/10 HTTP/1.1\r\nHost: proxy.example\r\n\r\n"
        )
        self.assertEqual(response.status, 502)
        self.assertEqual(origin.requests, [])

    def test_caFileMissing(self):
        """
        A C{--ca-file} that does not exist is a usage error naming the
        option.
        """
        missing = temporaryPath(self)
        options = tap.Options()
        error = self.assertRaises(
            usage.UsageError,
            options.parseOptions,
            ["--upstream", "https://localhost:1", "--ca-file", missing],
        )
        self.assertIn("--ca-file", str(error))
