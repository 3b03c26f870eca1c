"""
What a shared cache must not let one client do to another, through real
loopback sockets: choose the page stored for another Host or scheme, make
the origin believe forwarding fields of its own making, receive another
client's cookie, or have a GET with content answered from, or stored in,
the cache.
"""

import json

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from cachingproxy.cache import policy
from cachingproxy.access import parseNetworks
from cachingproxy.cache.memory import MemoryStore
from cachingproxy.cache.layer import CacheLayer, CacheSettings
from cachingproxy.proxy.settings import ProxySettings
from cachingproxy.proxy.upstream import Origin

from .helpers import (
    RawClient,
    _trackServerConnections,
    connectClient,
    exchange,
    listenOrigin,
    startProxy,
    until,
)
from .tlshelpers import makeCA, makeServerCert, serverContextFactory, trustRoot

#: the fields the echo origin reports
_ECHOED = (b"host", b"x-forwarded-host", b"x-forwarded-proto", b"forwarded",
           b"x-forwarded-for", b"x-real-ip", b"x-forwarded-port", b"x-forwarded-server")

CA = makeCA()
CERT = makeServerCert(CA)


class EchoOrigin(Resource):
    """
    A cacheable origin (C{max-age=60}) whose body reports the request's
    Host, forwarding fields and content, and how often the path was
    asked for. Paths:

      - C{/cookie}: also sets a cookie numbered by that count.
      - C{/private-cookie}: the same with C{private="Set-Cookie"}.
      - C{/moved}: names the upstream in Content-Location.
      - C{/held}: answers only when L{release} is called.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.counts = {}
        self.bodies = []
        self.held = []
        self.port = 0

    def release(self):
        """
        Answer the held requests.
        """
        held, self.held = self.held, []
        for request, body in held:
            request.write(body)
            request.finish()

    def render(self, request):
        path = request.path
        n = self.counts[path] = self.counts.get(path, 0) + 1
        content = request.content.read()
        self.bodies.append(content)
        told = {name.decode(): (request.getHeader(name) or b"").decode() for name in _ECHOED}
        told.update(n=n, content=content.decode("latin-1"))
        body = json.dumps(told).encode()
        request.setHeader(b"Cache-Control", b"max-age=60")
        request.setHeader(b"Content-Type", b"application/json")
        if path in (b"/cookie", b"/held"):
            request.setHeader(b"Set-Cookie", b"id=%d" % n)
        elif path == b"/private-cookie":
            request.setHeader(b"Cache-Control", b'max-age=60, private="Set-Cookie"')
            request.setHeader(b"Set-Cookie", b"id=%d" % n)
        elif path == b"/moved":
            request.setHeader(b"Content-Location", b"http://127.0.0.1:%d/moved" % self.port)
        if path == b"/held":
            self.held.append((request, body))
            return NOT_DONE_YET
        return body


class PoisoningTestCase(TestCase):
    """
    The echo origin, and a caching proxy in front of it with a memory
    store.
    """

    def setUpProxy(self, reverse=True, options=policy.DEFAULT_OPTIONS, **kwargs):
        self.origin = EchoOrigin()
        _, self.originPort = listenOrigin(self, self.origin)
        self.origin.port = self.originPort
        if reverse:
            kwargs["upstream"] = Origin(b"http", "127.0.0.1", self.originPort)
        kwargs.setdefault("viaName", b"test-proxy")
        self.factory, self.port, _ = startProxy(self, ProxySettings(**kwargs))
        self.factory.cache = CacheLayer(MemoryStore(1 << 24, 1 << 20), reactor,
                                           self.factory.pool, CacheSettings(options=options))
        self.reverse = reverse

    async def get(self, path=b"/page", host=b"a.example", fields=b"", port=None, body=b""):
        """
        @return: the response to a GET of C{path} with C{Host: host}.
        """
        target = path if self.reverse else b"http://127.0.0.1:%d%s" % (self.originPort, path)
        _, [response] = await exchange(
            port or self.port, self,
            b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n%s" % (target, host, fields, body))
        return response

    def told(self, response):
        """
        @return: what the origin reported, for a response it gave.
        """
        return json.loads(response.body)


class CacheKeyTests(PoisoningTestCase):
    """
    The cache key is the target URI as the origin builds it (RFC 9110
    section 7.1, RFC 9111 section 2).
    """

    async def test_preserveHost(self):
        """
        RFC 9110 section 7.1, RFC 9111 section 2: with the client's Host
        sent upstream, two Hosts make two entries, each served its own.
        """
        self.setUpProxy(preserveHost=True)
        a = await self.get(host=b"a.example")
        b = await self.get(host=b"b.example")
        again = await self.get(host=b"a.example")
        self.assertEqual(self.told(a)["host"], "a.example")
        self.assertEqual(self.told(b)["host"], "b.example")
        self.assertEqual(self.told(again)["host"], "a.example")
        self.assertEqual(again.header(b"x-cache"), b"HIT")
        self.assertEqual(self.origin.counts[b"/page"], 2)

    async def test_upstreamHostShared(self):
        """
        RFC 9111 section 2: without anything of the client's Host reaching
        the origin, every Host shares one entry.
        """
        self.setUpProxy()
        await self.get(host=b"a.example")
        b = await self.get(host=b"b.example")
        self.assertEqual(b.header(b"x-cache"), b"HIT")
        self.assertEqual(self.told(b)["host"], "127.0.0.1:%d" % self.originPort)

    async def test_forwardedHost(self):
        """
        RFC 9110 section 7.1: with X-Forwarded-Host and Forwarded host=
        telling the origin the client's Host, two Hosts make two entries.
        """
        self.setUpProxy(xForwardedHost=True, forwarded=True)
        a = await self.get(host=b"a.example")
        b = await self.get(host=b"b.example")
        again = await self.get(host=b"b.example")
        self.assertEqual(self.told(a)["x-forwarded-host"], "a.example")
        self.assertEqual(self.told(b)["x-forwarded-host"], "b.example")
        self.assertEqual(self.told(again)["x-forwarded-host"], "b.example")
        self.assertEqual(again.header(b"x-cache"), b"HIT")
        self.assertEqual(self.origin.counts[b"/page"], 2)

    async def test_trustedForwardedHost(self):
        """
        RFC 9110 section 7.1: a trusted proxy's X-Forwarded-Host reaches
        the origin, so it is in the key.
        """
        self.setUpProxy(trustedProxies=parseNetworks(["127.0.0.1"]))
        a = await self.get(fields=b"X-Forwarded-Host: a.example\r\n")
        b = await self.get(fields=b"X-Forwarded-Host: b.example\r\n")
        self.assertEqual(self.told(a)["x-forwarded-host"], "a.example")
        self.assertEqual(self.told(b)["x-forwarded-host"], "b.example")
        self.assertEqual(self.origin.counts[b"/page"], 2)

    async def test_scheme(self):
        """
        RFC 9110 section 7.1: one cache behind an http and an https
        listener, telling the origin X-Forwarded-Proto, keeps an entry per
        scheme and serves each its own.
        """
        self.setUpProxy(xForwardedProto=True)
        tls = reactor.listenSSL(0, self.factory, serverContextFactory(*CERT),
                                interface="127.0.0.1")
        self.addCleanup(tls.stopListening)
        _trackServerConnections(self, self.factory)
        plain = await self.get()
        secure = await self._getTLS(tls.getHost().port)
        plainAgain = await self.get()
        secureAgain = await self._getTLS(tls.getHost().port)
        self.assertEqual(self.told(plain)["x-forwarded-proto"], "http")
        self.assertEqual(self.told(secure)["x-forwarded-proto"], "https")
        self.assertEqual(self.told(plainAgain)["x-forwarded-proto"], "http")
        self.assertEqual(self.told(secureAgain)["x-forwarded-proto"], "https")
        self.assertEqual([plainAgain.header(b"x-cache"), secureAgain.header(b"x-cache")],
                         [b"HIT", b"HIT"])
        self.assertEqual(self.origin.counts[b"/page"], 2)

    async def _getTLS(self, port):
        client = RawClient()
        endpoint = wrapClientTLS(optionsForClientTLS("localhost", trustRoot=trustRoot(CA[0])),
                                 TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        await connectProtocol(endpoint, client)
        self.addCleanup(lambda: client.closed.called or (
            client.transport.abortConnection(), client.closed)[1])
        client.transport.write(b"GET /page HTTP/1.1\r\nHost: a.example\r\n\r\n")
        [response] = await client.waitFor(1)
        return response

    async def test_disagreementPassed(self):
        """
        RFC 9110 section 7.1: forwarding fields naming two hosts leave the
        origin's URI unknown: neither served from nor stored in the cache,
        and Cache-Status says why (RFC 9211 section 2.9).
        """
        self.setUpProxy(trustedProxies=parseNetworks(["127.0.0.1"]))
        fields = b"X-Forwarded-Host: a.example\r\nForwarded: host=b.example\r\n"
        first = await self.get(fields=fields)
        second = await self.get(fields=fields)
        self.assertEqual(self.told(second)["n"], 2)
        self.assertEqual(first.header(b"x-cache"), b"PASS")
        self.assertIn(b'detail="forwarding fields disagree"', first.header(b"cache-status"))
        self.assertIn(b"fwd=request", first.header(b"cache-status"))

    async def test_forwardModeOtherOrigin(self):
        """
        RFC 9111 section 2: in forward mode the key is the target URI; a
        trusted proxy's X-Forwarded-Host naming another origin is passed,
        never stored under the target's key.
        """
        self.setUpProxy(reverse=False, trustedProxies=parseNetworks(["127.0.0.1"]))
        first = await self.get(fields=b"X-Forwarded-Host: other.example\r\n")
        plain = await self.get()
        self.assertEqual(first.header(b"x-cache"), b"PASS")
        self.assertEqual(self.told(plain)["x-forwarded-host"], "")
        self.assertEqual(plain.header(b"x-cache"), b"MISS")

    async def test_rewrittenLocationNotShared(self):
        """
        RFC 9111 section 2: a Content-Location rewritten to one client's
        Host is not remembered for others: each gets its own.
        """
        self.setUpProxy()
        await self.get(b"/moved", host=b"a.example")
        await self.get(b"/moved", host=b"a.example")
        b = await self.get(b"/moved", host=b"b.example")
        self.assertEqual(b.header(b"x-cache"), b"HIT")
        self.assertEqual(b.header(b"content-location"), b"http://b.example/moved")


class ForwardingFieldTests(PoisoningTestCase):
    """
    Forwarding fields reach the origin from trusted proxies only.
    """

    _ALL = (b"X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Host: evil.example\r\n"
            b"X-Forwarded-Proto: https\r\nForwarded: for=192.0.2.1;host=evil.example\r\n"
            b"X-Real-IP: 192.0.2.1\r\nX-Forwarded-Port: 443\r\n"
            b"X-Forwarded-Server: evil\r\n")

    async def test_untrustedReplaced(self):
        """
        A client outside the trusted proxies cannot choose what the origin
        is told: its fields are dropped and the proxy's own sent.
        """
        self.setUpProxy(xForwardedFor=True, xForwardedHost=True, xForwardedProto=True,
                        forwarded=True)
        told = self.told(await self.get(fields=self._ALL))
        self.assertEqual(told["x-forwarded-for"], "127.0.0.1")
        self.assertEqual(told["x-forwarded-host"], "a.example")
        self.assertEqual(told["x-forwarded-proto"], "http")
        self.assertEqual(told["forwarded"], 'for=127.0.0.1;host="a.example";proto=http')
        self.assertEqual([told["x-real-ip"], told["x-forwarded-port"],
                          told["x-forwarded-server"]], ["", "", ""])

    async def test_untrustedDroppedForwardMode(self):
        """
        In forward mode too, with nothing added by the proxy, none of an
        untrusted client's forwarding fields reaches the origin.
        """
        self.setUpProxy(reverse=False)
        told = self.told(await self.get(fields=self._ALL))
        self.assertEqual([told[n.decode()] for n in _ECHOED[1:]], [""] * (len(_ECHOED) - 1))

    async def test_trustedExtended(self):
        """
        From a trusted proxy, X-Forwarded-For and Forwarded are appended
        to, the others kept as it set them.
        """
        self.setUpProxy(xForwardedFor=True, xForwardedHost=True, xForwardedProto=True,
                        forwarded=True, trustedProxies=parseNetworks(["127.0.0.1"]))
        told = self.told(await self.get(fields=self._ALL.replace(
            b"for=192.0.2.1;host=evil.example", b'for=192.0.2.1;host="evil.example";proto=https')))
        self.assertEqual(told["x-forwarded-for"], "192.0.2.1, 127.0.0.1")
        self.assertEqual(told["x-forwarded-host"], "evil.example")
        self.assertEqual(told["x-forwarded-proto"], "https")
        self.assertEqual(
            told["forwarded"],
            'for=192.0.2.1;host="evil.example";proto=https, '
            'for=127.0.0.1;host="evil.example";proto=https')
        self.assertEqual([told["x-real-ip"], told["x-forwarded-port"],
                          told["x-forwarded-server"]], ["192.0.2.1", "443", "evil"])


class SetCookieTests(PoisoningTestCase):
    """
    One client's cookie never reaches another (RFC 9111 section 7.3).
    """

    async def test_notStoredByDefault(self):
        """
        RFC 9111 section 7.3: a response that sets a cookie is not stored;
        each client gets its own cookie, and Cache-Status says why.
        """
        self.setUpProxy()
        first = await self.get(b"/cookie")
        second = await self.get(b"/cookie")
        self.assertEqual(first.header(b"set-cookie"), b"id=1")
        self.assertEqual(second.header(b"set-cookie"), b"id=2")
        self.assertNotIn(b"stored", first.header(b"cache-status").split(b"; "))
        self.assertIn(b"Set-Cookie", first.header(b"cache-status"))

    async def test_storedWithoutCookie(self):
        """
        RFC 9111 section 7.3: when storing them is allowed, the cookie goes
        to the client whose request fetched the response only; the hit has
        no Set-Cookie.
        """
        self.setUpProxy(options=policy.CacheOptions(storeSetCookie=True))
        first = await self.get(b"/cookie")
        second = await self.get(b"/cookie")
        self.assertEqual(first.header(b"set-cookie"), b"id=1")
        self.assertIn(b"stored", first.header(b"cache-status"))
        self.assertEqual(second.header(b"x-cache"), b"HIT")
        self.assertIsNone(second.header(b"set-cookie"))
        self.assertEqual(self.origin.counts[b"/cookie"], 1)

    async def test_privateSetCookie(self):
        """
        RFC 9111 section 5.2.2.7: C{private="Set-Cookie"} is stored by
        default, without the cookie.
        """
        self.setUpProxy()
        first = await self.get(b"/private-cookie")
        second = await self.get(b"/private-cookie")
        self.assertEqual(first.header(b"set-cookie"), b"id=1")
        self.assertEqual(second.header(b"x-cache"), b"HIT")
        self.assertIsNone(second.header(b"set-cookie"))

    async def test_collapsedWaiterWithoutCookie(self):
        """
        RFC 9111 section 7.3: a client waiting on another's fetch of a
        response stored with its cookie gets the response without it.
        """
        self.setUpProxy(options=policy.CacheOptions(storeSetCookie=True))
        leader = await connectClient(self.port, self)
        leader.transport.write(b"GET /held HTTP/1.1\r\nHost: a\r\n\r\n")
        await until(lambda: self.origin.held)
        waiter = await connectClient(self.port, self)
        waiter.transport.write(b"GET /held HTTP/1.1\r\nHost: b\r\n\r\n")
        flights = self.factory.cache._flights
        await until(lambda: any(f.waiters for f in flights.values()))
        self.origin.release()
        [first] = await leader.waitFor(1)
        [second] = await waiter.waitFor(1)
        self.assertEqual(first.header(b"set-cookie"), b"id=1")
        self.assertIn(b"collapsed", second.header(b"cache-status"))
        self.assertIsNone(second.header(b"set-cookie"))
        self.assertEqual(self.origin.counts[b"/held"], 1)


class RequestContentTests(PoisoningTestCase):
    """
    A GET or HEAD with content is passed to the origin (RFC 9110 sections
    9.3.1 and 9.3.2: content has no defined meaning there, and the key
    does not include it).
    """

    async def test_storedNotServed(self):
        """
        RFC 9110 section 9.3.1: a stored fresh entry is not served to a GET
        with content; the origin receives the content, framed as sent.
        """
        self.setUpProxy()
        await self.get()
        withLength = await self.get(fields=b"Content-Length: 5\r\n", body=b"hello")
        chunked = await self.get(fields=b"Transfer-Encoding: chunked\r\n",
                                 body=b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        self.assertEqual(self.told(withLength)["content"], "hello")
        self.assertEqual(self.told(chunked)["content"], "abcde")
        self.assertEqual(self.origin.counts[b"/page"], 3)
        self.assertEqual(withLength.header(b"x-cache"), b"PASS")
        status = withLength.header(b"cache-status")
        self.assertIn(b"fwd=request", status)
        self.assertIn(b'detail="request content"', status)

    async def test_responseNotStored(self):
        """
        RFC 9110 section 9.3.1: the response to a GET with content is not
        stored: the next plain GET goes to the origin.
        """
        self.setUpProxy()
        await self.get(fields=b"Content-Length: 3\r\n", body=b"abc")
        plain = await self.get()
        self.assertEqual(plain.header(b"x-cache"), b"MISS")
        self.assertEqual(self.told(plain)["n"], 2)
        self.assertEqual(self.origin.bodies, [b"abc", b""])

    async def test_emptyContentCached(self):
        """
        RFC 9110 section 8.6: Content-Length: 0 is no content: the request
        is answered from the cache.
        """
        self.setUpProxy()
        await self.get()
        second = await self.get(fields=b"Content-Length: 0\r\n")
        self.assertEqual(second.header(b"x-cache"), b"HIT")
