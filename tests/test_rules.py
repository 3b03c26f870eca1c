"""
Header rules, forwarding fields and reverse-mode rewriting.
"""

import json

from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from cachingproxy.access import parseNetworks
from cachingproxy.cache.memory import MemoryStore
from cachingproxy.cache.layer import CacheLayer
from cachingproxy.rules import HeaderRules
from cachingproxy.proxy.settings import ProxySettings
from cachingproxy.proxy.upstream import Origin

from .helpers import exchange, listenOrigin, startProxy


class HeaderRulesTests(SynchronousTestCase):
    """
    L{HeaderRules} on field lists.
    """

    def test_apply(self):
        """
        Removals, then set fields replacing every field of their name, then
        additions; other fields keep their order.
        """
        rules = HeaderRules.parse(add=["X-Add: 1", "X-Add: 2"], set=["Server: proxy"],
                                  remove=["Cookie"])
        fields = [(b"server", b"Server", b"origin"), (b"cookie", b"Cookie", b"a=1"),
                  (b"x-keep", b"X-Keep", b"k"), (b"server", b"Server", b"again")]
        self.assertEqual(
            [(n, v) for _, n, v in rules.apply(fields)],
            [(b"X-Keep", b"k"), (b"Server", b"proxy"), (b"X-Add", b"1"), (b"X-Add", b"2")],
        )

    def test_malformed(self):
        """
        A rule without a colon, a name that is not a token, or a control
        character in the value is refused.
        """
        for bad in [dict(add=["NoColon"]), dict(set=["Bad Name: x"]),
                    dict(add=["X-A: a\x01b"]), dict(remove=["Bad Name"])]:
            self.assertRaises(ValueError, HeaderRules.parse, **bad)


class _Redirecting(Resource):
    isLeaf = True

    def __init__(self, port_holder):
        super().__init__()
        self.port = port_holder

    def render(self, request):
        request.setResponseCode(302)
        request.setHeader(b"Location", b"http://127.0.0.1:%d/next?x=1" % self.port[0])
        request.setHeader(b"Content-Location", b"http://elsewhere.example/keep")
        return b""


class RulesEndToEndTests(TestCase):
    """
    Through real sockets.
    """

    async def test_requestRules(self):
        """
        Request rules add, set and remove fields before forwarding.
        """
        origin, originPort = listenOrigin(self)
        rules = HeaderRules.parse(add=["X-Added: yes"], set=["User-Agent: proxy-set"],
                                  remove=["Cookie"])
        _, port, _ = startProxy(self, ProxySettings(viaName=b"p", requestRules=rules))
        _, [response] = await exchange(
            port, self, b"GET http://127.0.0.1:%d/headers HTTP/1.1\r\nHost: x\r\n"
            b"User-Agent: curl\r\nCookie: secret\r\n\r\n" % originPort)
        received = [(k.lower(), v) for k, v in json.loads(response.body)]
        self.assertIn(("x-added", "yes"), received)
        self.assertIn(("user-agent", "proxy-set"), received)
        self.assertNotIn("cookie", dict(received))

    async def test_responseRulesNotStored(self):
        """
        Response rules change what clients get, from the origin and from
        the cache (the hot path too), never what is stored.
        """
        from .test_cache_end_to_end import CountingOrigin
        from twisted.internet.task import Clock
        import time

        clock = Clock()
        clock.advance(time.time())
        origin = CountingOrigin(clock)
        _, originPort = listenOrigin(self, origin)
        rules = HeaderRules.parse(add=["X-Frame-Options: DENY"], set=["ETag: \"masked\""],
                                  remove=["Cache-Control"])
        factory, port, _ = startProxy(self, ProxySettings(viaName=b"p", responseRules=rules))
        store = MemoryStore(1 << 20, 1 << 20)
        factory.cache = CacheLayer(store, clock, factory.pool)
        request = b"GET http://127.0.0.1:%d/max-age/60/r HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        responses = []
        for _ in range(3):
            _, [response] = await exchange(port, self, request)
            responses.append(response)
        for response in responses:
            self.assertEqual(response.header(b"x-frame-options"), b"DENY")
            self.assertEqual(response.header(b"etag"), b'"masked"')
            self.assertIsNone(response.header(b"cache-control"))
        self.assertEqual([r.header(b"x-cache") for r in responses], [b"MISS", b"HIT", b"HIT"])
        [entry] = store.entries(b"http://127.0.0.1:%d/max-age/60/r" % originPort)
        self.assertEqual(entry.responseHeaders.get(b"etag"), b'"v1"')
        self.assertEqual(entry.responseHeaders.get(b"cache-control"), b"max-age=60")
        self.assertNotIn(b"x-frame-options", entry.responseHeaders)

    async def test_redirectsRewritten(self):
        """
        In reverse mode a Location naming the upstream points at the
        address the client used; other locations are left alone.
        """
        holder = [0]
        _, originPort = listenOrigin(self, _Redirecting(holder))
        holder[0] = originPort
        _, port, _ = startProxy(self, ProxySettings(
            viaName=b"p", upstream=Origin(b"http", "127.0.0.1", originPort)))
        _, [response] = await exchange(
            port, self, b"GET /go HTTP/1.1\r\nHost: public.example\r\n\r\n")
        self.assertEqual(response.status, 302)
        self.assertEqual(response.header(b"location"), b"http://public.example/next?x=1")
        self.assertEqual(response.header(b"content-location"), b"http://elsewhere.example/keep")

    async def test_chainOfTwoProxies(self):
        """
        Through two reverse proxies (the first keeping the client's Host,
        the second trusting the first),
        X-Forwarded-For lists both hops, Forwarded has one element per
        hop, X-Forwarded-Host and -Proto name what the client asked for.
        """
        origin, originPort = listenOrigin(self)
        _, second, _ = startProxy(self, ProxySettings(
            viaName=b"second", upstream=Origin(b"http", "127.0.0.1", originPort),
            xForwardedFor=True, forwarded=True, xForwardedHost=True, xForwardedProto=True,
            trustedProxies=parseNetworks(["127.0.0.1"])))
        _, first, _ = startProxy(self, ProxySettings(
            viaName=b"first", upstream=Origin(b"http", "127.0.0.1", second), preserveHost=True,
            xForwardedFor=True, forwarded=True, xForwardedHost=True, xForwardedProto=True))
        _, [response] = await exchange(
            first, self, b"GET /headers HTTP/1.1\r\nHost: public.example\r\n\r\n")
        fields = [(k.lower(), v) for k, v in json.loads(response.body)]
        received = dict(fields)
        self.assertEqual(received["x-forwarded-for"], "127.0.0.1, 127.0.0.1")
        self.assertEqual(received["x-forwarded-host"], "public.example")
        self.assertEqual(received["x-forwarded-proto"], "http")
        self.assertEqual(
            received["forwarded"],
            'for=127.0.0.1;host="public.example";proto=http, '
            'for=127.0.0.1;host="public.example";proto=http')
        self.assertEqual([v for k, v in fields if k == "via"], ["1.1 first", "1.1 second"])
        self.assertEqual(received["host"], "127.0.0.1:%d" % originPort)
