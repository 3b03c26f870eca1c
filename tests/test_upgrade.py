"""
Upgrades through the proxy (RFC 9110 section 7.8): a request asking for a
protocol the proxy carries is forwarded with C{Connection: Upgrade} and
its Upgrade field, a 101 turns both connections into a tunnel, and any
other answer leaves the client connection speaking HTTP.

The WebSocket origin and client are built on wsproto (RFC 6455, sans-IO),
over real loopback sockets.
"""

import re
from typing import List

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Request,
    TextMessage,
)

from cachingproxy.proxy.settings import ProxySettings
from cachingproxy.proxy.upstream import Origin

from .helpers import (
    _trackServerConnections,
    connectClient,
    exchange,
    listenOrigin,
    listenScripted,
    startProxy,
    until,
)

#: what the WebSocket origin says first, once the handshake is done
WELCOME = "welcome"


class _EventQueue:
    """
    The wsproto events one side received, handed out in order to whoever
    awaits them.
    """

    def __init__(self) -> None:
        self.events: List = []
        self._waiters: List[defer.Deferred] = []

    def push(self, event) -> None:
        if self._waiters:
            self._waiters.pop(0).callback(event)
        else:
            self.events.append(event)

    def next(self) -> defer.Deferred:
        if self.events:
            return defer.succeed(self.events.pop(0))
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def fail(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(ConnectionError("closed before the event"))


class WebSocketOrigin(Protocol):
    """
    A WebSocket server: accepts the handshake and says L{WELCOME}, echoes
    each text message, answers a close and then closes the connection
    (RFC 6455 section 7.1.1: the server closes first).

    @ivar head: the handshake request as received, up to its blank line.
    """

    def __init__(self, owner: "WebSocketOriginFactory") -> None:
        self.owner = owner
        self.ws = WSConnection(ConnectionType.SERVER)
        self.head = b""
        self.received: List[str] = []
        self.sentAfterHandshake = 0

    def connectionMade(self) -> None:
        self.owner.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        if not self.head:
            self.head = data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, Request):
                self.transport.write(self.ws.send(AcceptConnection()))
                self._send(self.ws.send(Message(data=WELCOME)))
            elif isinstance(event, TextMessage):
                self.received.append(event.data)
                self._send(self.ws.send(Message(data=event.data)))
            elif isinstance(event, CloseConnection):
                self._send(self.ws.send(event.response()))
                self.transport.loseConnection()

    def _send(self, data: bytes) -> None:
        self.sentAfterHandshake += len(data)
        self.transport.write(data)

    def connectionLost(self, reason=None) -> None:
        self.owner.lost.callback(self) if not self.owner.lost.called else None


class WebSocketOriginFactory(Factory):
    noisy = False

    def __init__(self) -> None:
        self.connections: List[WebSocketOrigin] = []
        self.lost = defer.Deferred()

    def buildProtocol(self, addr):
        return WebSocketOrigin(self)


def listenWebSocket(testCase):
    """
    Start a L{WebSocketOrigin} on a free loopback port.

    @return: the factory and the port number.
    """
    factory = WebSocketOriginFactory()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    _trackServerConnections(testCase, factory)
    return factory, port.getHost().port


class WebSocketClient(Protocol):
    """
    A WebSocket client that sends its handshake for C{target} on connecting
    and queues what it receives.

    @ivar headLength: the length of the handshake response head, once it
        arrived.
    """

    def __init__(self, host: str, target: str) -> None:
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.host = host
        self.target = target
        self.queue = _EventQueue()
        self.raw = b""
        self.headLength = None
        self.sentAfterHandshake = 0
        self.closed = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.ws.send(Request(host=self.host, target=self.target)))

    def send(self, event) -> None:
        data = self.ws.send(event)
        self.sentAfterHandshake += len(data)
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        if self.headLength is None and b"\r\n\r\n" in self.raw:
            self.headLength = self.raw.index(b"\r\n\r\n") + 4
        self.ws.receive_data(data)
        for event in self.ws.events():
            self.queue.push(event)

    def connectionLost(self, reason=None) -> None:
        self.queue.fail()
        self.closed.callback(None)


async def connectWebSocket(testCase, port: int, host: str, target: str) -> WebSocketClient:
    """
    Connect a L{WebSocketClient} to the proxy; the test's cleanup closes it.
    """
    client = WebSocketClient(host, target)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)

    def cleanup():
        if not client.closed.called:
            client.transport.abortConnection()
            return client.closed

    testCase.addCleanup(cleanup)
    return client


def _logFields(line: str):
    """
    @return: the status, the bytes to the client and the bytes from the
        client of a combined access log line.
    """
    match = re.search(r'" (\d{3}) (\d+) ".*" ".*" \S+ \S+ [\d.]+ (\d+)$', line)
    assert match is not None, line
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


class _WebSocketMixin:
    """
    A real WebSocket conversation through the proxy.
    """

    reverse = False

    def setUpProxy(self, originPort: int, **kwargs):
        if self.reverse:
            kwargs["upstream"] = Origin(b"http", "127.0.0.1", originPort)
        kwargs.setdefault("viaName", b"test-proxy")
        self.factory, self.port, self.lines = startProxy(self, ProxySettings(**kwargs))

    def target(self, originPort: int, path: str) -> str:
        if self.reverse:
            return path
        return "http://127.0.0.1:%d%s" % (originPort, path)

    async def test_webSocketConversation(self):
        """
        RFC 9110 section 7.8 and RFC 6455 section 4: the handshake reaches
        the origin with C{Connection: Upgrade} and C{Upgrade: websocket},
        its 101 reaches the client, a text message goes each way, and a
        close handshake ends both connections; the access log line counts
        the tunnel bytes each way.
        """
        origins, originPort = listenWebSocket(self)
        self.setUpProxy(originPort)
        client = await connectWebSocket(self, self.port, "127.0.0.1:%d" % originPort,
                                        self.target(originPort, "/chat"))
        accepted = await client.queue.next()
        self.assertIsInstance(accepted, AcceptConnection)
        head = client.raw[:client.headLength]
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        self.assertIn(b"\r\nVia: 1.1 test-proxy\r\n", head)

        welcome = await client.queue.next()
        self.assertEqual((type(welcome), welcome.data), (TextMessage, WELCOME))
        client.send(Message(data="hello through the proxy"))
        echoed = await client.queue.next()
        self.assertEqual(echoed.data, "hello through the proxy")
        [origin] = origins.connections
        self.assertEqual(origin.received, ["hello through the proxy"])
        forwarded = origin.head.lower()
        self.assertTrue(forwarded.startswith(b"get /chat http/1.1\r\n"), forwarded)
        self.assertIn(b"\r\nconnection: upgrade\r\n", forwarded)
        self.assertIn(b"\r\nupgrade: websocket\r\n", forwarded)

        client.send(CloseConnection(code=1000, reason="done"))
        closing = await client.queue.next()
        self.assertIsInstance(closing, CloseConnection)
        self.assertEqual(closing.code, 1000)
        await client.closed
        await origins.lost
        await until(lambda: self.lines)
        [line] = self.lines
        self.assertEqual(
            _logFields(line),
            (101, len(client.raw) - client.headLength, client.sentAfterHandshake),
        )
        self.assertEqual(origin.sentAfterHandshake, len(client.raw) - client.headLength)

    async def test_idleTimeout(self):
        """
        An upgraded connection that carries no byte either way for
        C{upgradeIdleTimeout} seconds is closed, on both sides.
        """
        origins, originPort = listenWebSocket(self)
        self.setUpProxy(originPort, upgradeIdleTimeout=0.3)
        client = await connectWebSocket(self, self.port, "127.0.0.1:%d" % originPort,
                                        self.target(originPort, "/idle"))
        self.assertIsInstance(await client.queue.next(), AcceptConnection)
        self.assertEqual((await client.queue.next()).data, WELCOME)
        quietSince = reactor.seconds()
        await client.closed
        self.assertGreaterEqual(reactor.seconds() - quietSince, 0.25)
        await origins.lost
        await until(lambda: self.lines)
        self.assertEqual(_logFields(self.lines[0])[0], 101)


    async def test_totalTimeout(self):
        """
        An upgraded connection is closed once it has lasted
        C{upgradeTimeout} seconds, however busy or quiet.
        """
        origins, originPort = listenWebSocket(self)
        self.setUpProxy(originPort, upgradeTimeout=0.3)
        client = await connectWebSocket(self, self.port, "127.0.0.1:%d" % originPort,
                                        self.target(originPort, "/total"))
        self.assertIsInstance(await client.queue.next(), AcceptConnection)
        upgradedAt = reactor.seconds()
        await client.closed
        self.assertGreaterEqual(reactor.seconds() - upgradedAt, 0.25)
        await origins.lost


class ForwardWebSocketTests(_WebSocketMixin, TestCase):
    """
    WebSocket through the proxy in forward mode (absolute-form target).
    """


class ReverseWebSocketTests(_WebSocketMixin, TestCase):
    """
    WebSocket through the proxy in reverse mode.
    """

    reverse = True


UPGRADE = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"


class UpgradeAnsweredPlainTests(TestCase):
    """
    Answers other than 101 to a request asking to upgrade, and upgrades
    the proxy does not carry: the client connection stays HTTP.
    """

    def setUp(self):
        self.origin, originPort = listenOrigin(self)
        self.factory, self.port, self.lines = startProxy(self, ProxySettings(
            viaName=b"test-proxy", upstream=Origin(b"http", "127.0.0.1", originPort)))

    def get(self, path: bytes, headers: bytes = b"") -> bytes:
        return b"GET %s HTTP/1.1\r\nHost: example\r\n%s\r\n" % (path, headers)

    async def test_refusedUpgrade(self):
        """
        RFC 9110 section 7.8: an origin that does not switch (426, then
        400) answers in plain HTTP; the client connection keeps working,
        for a request pipelined behind the upgrade request in the same
        write and for one sent afterwards.
        """
        for status in (b"426", b"400"):
            client, responses = await exchange(
                self.port, self,
                self.get(b"/status/" + status, UPGRADE) + self.get(b"/size/5"), count=2)
            self.assertEqual([r.status for r in responses], [int(status), 200])
            self.assertEqual(responses[0].body, b"status %s\n" % status)
            self.assertEqual(responses[1].body, b"\x00\x01\x02\x03\x04")
            client.transport.write(self.get(b"/size/3"))
            [_, _, third] = await client.waitFor(3)
            self.assertEqual(third.body, b"\x00\x01\x02")
        upgradeRequest = self.origin.requests[0]
        names = [name.lower() for name, _ in upgradeRequest["headers"]]
        self.assertIn(b"upgrade", names)

    async def test_upgradeAnswered200(self):
        """
        RFC 9110 section 7.8: a server may ignore Upgrade; a 200 with a
        body goes to the client as it is, and the next request on the
        connection is served.
        """
        client, [response] = await exchange(self.port, self, self.get(b"/size/10", UPGRADE))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, bytes(range(10)))
        self.assertIsNone(response.header(b"upgrade"))
        client.transport.write(self.get(b"/size/4"))
        [_, second] = await client.waitFor(2)
        self.assertEqual(second.body, b"\x00\x01\x02\x03")

    async def test_protocolNotCarried(self):
        """
        RFC 9110 section 7.6.1: an upgrade to a protocol not in
        C{upgradeProtocols} is forwarded without Upgrade and without the
        Connection field that nominates it.
        """
        client, [response] = await exchange(
            self.port, self, self.get(b"/size/2", b"Connection: Upgrade\r\nUpgrade: h2c\r\n"))
        self.assertEqual(response.status, 200)
        names = [name.lower() for name, _ in self.origin.requests[0]["headers"]]
        self.assertNotIn(b"upgrade", names)
        self.assertNotIn(b"connection", names)

    async def test_onlyCarriedProtocolsForwarded(self):
        """
        RFC 9110 section 7.8: of the protocols a client lists, the origin
        is offered those the proxy carries.
        """
        await exchange(self.port, self, self.get(
            b"/size/2", b"Connection: keep-alive, Upgrade\r\nUpgrade: h2c, websocket\r\n"))
        fields = [(name.lower(), value) for name, value in self.origin.requests[0]["headers"]]
        self.assertIn((b"upgrade", b"websocket"), fields)
        self.assertIn((b"connection", b"Upgrade"), fields)


class UpgradeNotCachedTests(TestCase):
    """
    Requests asking to upgrade and the cache.
    """

    async def test_neitherLookedUpNorStored(self):
        """
        RFC 9110 section 7.8: what answers an upgrade request belongs to
        one connection; a fresh stored response is not served for it, and
        a cacheable answer to it is not stored.
        """
        from cachingproxy.cache.memory import MemoryStore
        from cachingproxy.cache.layer import CacheLayer, CacheSettings

        origins, originPort = listenScripted(self, [
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\nok", None])
        factory, port, lines = startProxy(self, ProxySettings(
            viaName=b"test-proxy", upstream=Origin(b"http", "127.0.0.1", originPort)))
        factory.cache = CacheLayer(MemoryStore(1 << 20, 1 << 20), reactor, factory.pool,
                                      CacheSettings())

        async def get(path: bytes, headers: bytes = b"") -> None:
            client, [response] = await exchange(
                port, self, b"GET %s HTTP/1.1\r\nHost: example\r\n%s\r\n" % (path, headers))
            self.assertEqual(response.body, b"ok")

        await get(b"/a")
        await get(b"/a")
        self.assertEqual(len(origins.connections), 1)
        await get(b"/a", UPGRADE)
        self.assertEqual(len(origins.connections), 2)
        self.assertIn(b"\r\nUpgrade: websocket\r\n", origins.connections[1].received)
        await get(b"/b", UPGRADE)
        await get(b"/b")
        self.assertEqual(len(origins.connections), 4)
        self.assertEqual([re.search(r'" (\S+) \S+ [\d.]+ \d+$', line).group(1) for line in lines],
                         ["MISS", "HIT", "PASS", "PASS", "MISS"])


class PipelinedBehindUpgradeTests(TestCase):
    """
    Bytes a client sends right behind a request asking to upgrade.
    """

    async def test_bytesAfter101AreTunnelData(self):
        """
        RFC 9110 section 7.8: after the 101, what follows the request is
        the new protocol; bytes the client sent behind its request (even
        in the same write, and looking like a request) reach the origin
        as tunnel data, not as a request the proxy answers.
        """
        switch = (b"HTTP/1.1 101 Switching Protocols\r\n"
                  b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\nfrom origin")
        origins, originPort = listenScripted(self, [switch])
        factory, port, lines = startProxy(self, ProxySettings(
            viaName=b"test-proxy", upstream=Origin(b"http", "127.0.0.1", originPort)))
        behind = b"GET /next HTTP/1.1\r\nHost: example\r\n\r\nand more"
        client = await connectClient(port, self)
        client.transport.write(
            b"GET /ws HTTP/1.1\r\nHost: example\r\n" + UPGRADE + b"\r\n" + behind)
        await client.whenTrue(lambda c: c.raw.endswith(b"from origin"))
        self.assertTrue(client.raw.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertEqual(client.raw.count(b"HTTP/1.1"), 1)
        await until(lambda: origins.connections and origins.connections[0].received.endswith(
            b"and more"))
        [origin] = origins.connections
        self.assertEqual(origin.received.split(b"\r\n\r\n", 1)[1], behind)
        client.transport.write(b"later")
        await until(lambda: origin.received.endswith(b"and morelater"))
        client.transport.loseConnection()
        await client.closed
        await until(lambda: lines)
        self.assertEqual(_logFields(lines[0]), (101, len(b"from origin"),
                                                len(behind) + len(b"later")))
        self.assertEqual(factory.pool.idleCount(), 0)
