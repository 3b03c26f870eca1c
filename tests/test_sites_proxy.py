"""
Routes and origin groups in the running proxy, through real loopback
sockets: balancing over three origins, retries on another server, health
taking a server out and back, two sites kept apart in the cache, rate
limits, 404 and 503, and a SIGHUP adding a server under load (twistd).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Dict, List

from twisted.internet import defer, reactor
from twisted.python import usage
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from cachingproxy.service.config import fromOptions
from cachingproxy.service.tap import buildFactory
from cachingproxy.sites.health import ServerState

from .helpers import (
    REPO,
    TWISTD,
    Twistd,
    _trackServerConnections,
    connectClient,
    exchange,
    temporaryPath,
)


class NamedOrigin(Resource):
    """
    An origin that answers every path with its name and the path,
    cacheable for a minute, and counts the requests per path (health
    checks, C{/health}, apart).
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.paths: List[bytes] = []
        self.hosts: set = set()
        self.checks = 0

    def render(self, request):
        if request.path == b"/health":
            self.checks += 1
            return b"ok"
        self.paths.append(request.uri)
        self.hosts.add(request.getHeader(b"host"))
        request.setHeader(b"Cache-Control", b"max-age=60")
        request.setHeader(b"X-Origin", self.name.encode())
        return b"%s %s" % (self.name.encode(), request.uri)


class Origins:
    """
    Origins on loopback ports that a test can stop (the port closed and
    every connection cut, as when the process dies) and start again on the
    same port.
    """

    def __init__(self, testCase, count: int) -> None:
        self.testCase = testCase
        self.resources = [NamedOrigin(f"o{i}") for i in range(count)]
        self.ports: List[int] = []
        self._listening: Dict[int, object] = {}
        self._sites: Dict[int, Site] = {}
        for i in range(count):
            self.start(i)
        testCase.addCleanup(self.stopAll)

    def start(self, i: int) -> None:
        site = Site(self.resources[i])
        site.noisy = False
        site.log = lambda request: None
        port = reactor.listenTCP(self.ports[i] if i < len(self.ports) else 0, site,
                                 interface="127.0.0.1")
        if i >= len(self.ports):
            self.ports.append(port.getHost().port)
        _trackServerConnections(self.testCase, site)
        site.live = []
        build = site.buildProtocol

        def buildProtocol(addr):
            protocol = build(addr)
            site.live.append(protocol)
            return protocol

        site.buildProtocol = buildProtocol
        self._listening[i] = port
        self._sites[i] = site

    def stop(self, i: int) -> defer.Deferred:
        port = self._listening.pop(i)
        for protocol in self._sites[i].live:
            channel = getattr(protocol, "_channel", protocol)
            transport = getattr(channel, "transport", None)
            if transport is not None and not getattr(transport, "disconnected", False):
                transport.abortConnection()
        return defer.maybeDeferred(port.stopListening)

    def stopAll(self) -> defer.Deferred:
        return defer.gatherResults([self.stop(i) for i in list(self._listening)])

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"


def sitesProxy(testCase, text: str, *arguments):
    """
    Start a proxy in this process from a TOML configuration C{text} (as
    twistd builds it), health checks running.

    @return: the factory, its port and its access log lines.
    """
    path = temporaryPath(testCase, "sites.toml")
    with open(path, "w") as f:
        f.write(text)
    given = {"config": path, "cache-dir": "none"}
    given.update(arguments)
    config = fromOptions(given, {})
    lines: List[str] = []
    factory = buildFactory(reactor, config, lines.append)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    factory.port = port
    testCase.addCleanup(factory.pool.closeCachedConnections)
    testCase.addCleanup(port.stopListening)
    _trackServerConnections(testCase, factory)
    service = factory.sites.service
    service.startService()
    testCase.addCleanup(service.stopService)
    return factory, port.getHost().port, lines


def get(path: bytes, host: bytes = b"www.example", method: bytes = b"GET") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (method, path, host)


def stateReached(factory, url: str, state: ServerState, leave: bool = False) -> defer.Deferred:
    """
    @return: a Deferred firing once the server C{url} is in C{state} (with
        C{leave}, in another state).
    """
    d = defer.Deferred()
    health = factory.sites.service.health
    for server in factory.sites.service.sites.servers():
        if server.url == url and (health.state(server) is state) != leave:
            d.callback(None)
            return d

    def listener(server, old, new):
        if server.url == url and (new is state) != leave and not d.called:
            d.callback(None)

    health.subscribe(listener)
    return d


class BalancingTests(TestCase):
    """
    One group of three origins.
    """

    async def test_roundRobinSpreadsEvenly(self):
        """
        Round robin sends each origin a third of the requests.
        """
        origins = Origins(self, 3)
        factory, port, _ = sitesProxy(self, f"""
[groups.www]
servers = ["{origins.url(0)}", "{origins.url(1)}", "{origins.url(2)}"]

[[routes]]
hosts = ["www.example"]
group = "www"
cache = false
""")
        client = await connectClient(port, self)
        for n in range(30):
            client.transport.write(get(b"/r/%d" % n))
            await client.waitFor(n + 1)
        self.assertEqual([r.status for r in client.finalResponses()], [200] * 30)
        self.assertEqual([len(o.paths) for o in origins.resources], [10, 10, 10])
        # Each server is told its own authority.
        self.assertEqual([o.hosts for o in origins.resources],
                         [{b"127.0.0.1:%d" % p} for p in origins.ports])

    async def test_consistentHashing(self):
        """
        With consistent hashing each URL always reaches the same origin,
        and the URLs are spread over more than one.
        """
        origins = Origins(self, 3)
        factory, port, _ = sitesProxy(self, f"""
[groups.www]
servers = ["{origins.url(0)}", "{origins.url(1)}", "{origins.url(2)}"]
balance = "consistent-hash"

[[routes]]
group = "www"
cache = false
""")
        client = await connectClient(port, self)
        count = 0
        for _ in range(3):
            for n in range(20):
                client.transport.write(get(b"/u/%d" % n))
                count += 1
                await client.waitFor(count)
        seen: Dict[bytes, set] = {}
        for origin in origins.resources:
            for path in origin.paths:
                seen.setdefault(path, set()).add(origin.name)
        self.assertEqual(len(seen), 20)
        self.assertTrue(all(len(names) == 1 for names in seen.values()), seen)
        self.assertGreater(len({n for names in seen.values() for n in names}), 1)

    async def test_downThenBack(self):
        """
        A stopped origin is taken out by its active check within its
        interval while no request fails (an idempotent request that cannot
        connect goes to another server); started again, it comes back, and
        the status report shows the states.
        """
        origins = Origins(self, 3)
        factory, port, _ = sitesProxy(self, f"""
[groups.www]
servers = ["{origins.url(0)}", "{origins.url(1)}", "{origins.url(2)}"]
health = {{path = "/health", interval = "0.2s", timeout = "0.2s", fall = 1, rise = 1}}
passive = false

[[routes]]
group = "www"
cache = false
""")
        url = origins.url(1)
        client = await connectClient(port, self)
        await origins.stop(1)
        stopped = reactor.seconds()
        down = stateReached(factory, url, ServerState.UP, leave=True)
        down.addCallback(lambda _: reactor.seconds() - stopped)
        before = len(origins.resources[1].paths)
        sent = 0
        while not down.called:
            client.transport.write(get(b"/d/%d" % sent))
            sent += 1
            await client.waitFor(sent)
        statuses = [r.status for r in client.finalResponses()]
        self.assertEqual(statuses, [200] * sent)
        self.assertEqual(len(origins.resources[1].paths), before)
        # Within one check interval and its timeout (and some slack for a
        # busy machine).
        self.assertLess(down.result, 0.2 + 0.2 + 1.0)
        client.transport.write(get(b"/_cachingproxy/status.json"))
        sent += 1
        report = json.loads((await client.waitFor(sent))[-1].body)
        self.assertEqual(
            [(s["url"], s["state"] == "up") for s in report["groups"][0]["servers"]],
            [(origins.url(0), True), (url, False), (origins.url(2), True)])
        for n in range(6):
            client.transport.write(get(b"/e/%d" % n))
            sent += 1
            await client.waitFor(sent)
        self.assertEqual(len(origins.resources[1].paths), before)

        up = stateReached(factory, url, ServerState.UP)
        origins.start(1)
        await up
        for n in range(6):
            client.transport.write(get(b"/f/%d" % n))
            sent += 1
            await client.waitFor(sent)
        self.assertEqual([r.status for r in client.finalResponses()], [200] * sent)
        self.assertEqual(len(origins.resources[1].paths), before + 2)

    async def test_allDown503(self):
        """
        When no server of a group can be reached the client is answered
        503 naming the group; with a stored response that allows it, that
        is served instead (stale-if-error).
        """
        origins = Origins(self, 1)
        factory, port, _ = sitesProxy(self, f"""
[groups.www]
servers = ["{origins.url(0)}"]

[[routes]]
group = "www"
""", ("cache-memory", "1M"), ("stale-if-error", "3600"))
        _, responses = await exchange(port, self, get(b"/kept"))
        self.assertEqual(responses[0].status, 200)
        await origins.stop(0)
        factory.cache.reactor = _Later(reactor, 120)
        _, responses = await exchange(port, self, get(b"/kept") + get(b"/never"), 2)
        self.assertEqual(responses[0].status, 200)
        self.assertEqual(responses[0].body, b"o0 /kept")
        self.assertEqual((responses[1].status, origins.resources[0].paths), (503, [b"/kept"]), responses[1].body)
        self.assertIn(b"group 'www'", responses[1].body)


class _Later:
    """
    A reactor whose clock runs C{ahead} seconds ahead (what is stored
    turns stale).
    """

    def __init__(self, reactor, ahead: float) -> None:
        self._reactor = reactor
        self._ahead = ahead

    def seconds(self) -> float:
        return self._reactor.seconds() + self._ahead

    def __getattr__(self, name):
        return getattr(self._reactor, name)


class RoutingTests(TestCase):
    """
    Routes by Host and path.
    """

    def twoSites(self, origins, extra: str = ""):
        return sitesProxy(self, f"""
[groups.a]
servers = ["{origins.url(0)}"]

[groups.b]
servers = ["{origins.url(1)}"]

[[routes]]
hosts = ["a.example"]
group = "a"
{extra}

[[routes]]
hosts = ["b.example"]
group = "b"
""", ("cache-memory", "1M"))

    async def test_twoSitesCachedApart(self):
        """
        Two Hosts routed to two groups: the same path is fetched from each
        group, cached under each site, and a PURGE of one site's entry
        leaves the other's.
        """
        origins = Origins(self, 2)
        factory, port, _ = self.twoSites(origins)
        client = await connectClient(port, self)
        for host in (b"a.example", b"b.example", b"a.example", b"b.example"):
            client.transport.write(get(b"/page", host))
        responses = await client.waitFor(4)
        self.assertEqual([r.body for r in responses],
                         [b"o0 /page", b"o1 /page", b"o0 /page", b"o1 /page"])
        self.assertEqual([r.header(b"x-cache") for r in responses],
                         [b"MISS", b"MISS", b"HIT", b"HIT"])
        client.transport.write(get(b"/page", b"a.example", b"PURGE"))
        client.transport.write(get(b"/page", b"a.example"))
        client.transport.write(get(b"/page", b"b.example"))
        responses = await client.waitFor(7)
        self.assertEqual(responses[4].status, 200)
        self.assertEqual(responses[5].header(b"x-cache"), b"MISS")
        self.assertEqual(responses[6].header(b"x-cache"), b"HIT")
        self.assertEqual(responses[6].body, b"o1 /page")
        self.assertEqual([len(o.paths) for o in origins.resources], [2, 1])

    async def test_noRoute404(self):
        """
        A request no route matches is answered 404 saying so.
        """
        origins = Origins(self, 2)
        factory, port, lines = self.twoSites(origins)
        _, responses = await exchange(port, self, get(b"/page", b"c.example"))
        self.assertEqual(responses[0].status, 404)
        self.assertIn(b"no route for host c.example", responses[0].body)
        self.assertEqual([len(o.paths) for o in origins.resources], [0, 0])

    async def test_rateLimit(self):
        """
        Beyond its burst a client is answered 429 with Retry-After on the
        limited route, hits included, and the access log shows it; the
        other route is not limited.
        """
        origins = Origins(self, 2)
        factory, port, lines = self.twoSites(
            origins, "rate = {per-second = 0.5, burst = 3}")
        client = await connectClient(port, self)
        for n in range(5):
            client.transport.write(get(b"/same", b"a.example"))
        for n in range(5):
            client.transport.write(get(b"/same", b"b.example"))
        responses = await client.waitFor(10)
        self.assertEqual([r.status for r in responses],
                         [200, 200, 200, 429, 429] + [200] * 5)
        self.assertEqual(responses[3].header(b"retry-after"), b"2")
        self.assertEqual(len(origins.resources[0].paths), 1)
        self.assertEqual(sum(' 429 ' in line for line in lines), 2)

    async def test_routeSettings(self):
        """
        A route's own settings win over the proxy's: cache off, a request
        header rule, and its client networks.
        """
        origins = Origins(self, 2)
        factory, port, _ = sitesProxy(self, f"""
[groups.a]
servers = ["{origins.url(0)}"]

[groups.b]
servers = ["{origins.url(1)}"]

[[routes]]
hosts = ["a.example"]
group = "a"
cache = false
set-response-header = ["X-Site: a"]

[[routes]]
hosts = ["b.example"]
group = "b"
access = ["10.0.0.0/8"]
""", ("cache-memory", "1M"))
        client = await connectClient(port, self)
        client.transport.write(get(b"/x", b"a.example") + get(b"/x", b"a.example")
                               + get(b"/x", b"b.example"))
        responses = await client.waitFor(3)
        self.assertEqual([r.status for r in responses], [200, 200, 403])
        self.assertEqual([r.header(b"x-site") for r in responses[:2]], [b"a", b"a"])
        self.assertEqual(len(origins.resources[0].paths), 2)
        self.assertEqual(len(origins.resources[1].paths), 0)


    async def test_routeCacheSettings(self):
        """
        A route's min-uses and max-object-size win over the proxy's: an
        object is stored from its second request on, and a body larger
        than the route's limit is never stored.
        """
        origins = Origins(self, 2)
        factory, port, _ = sitesProxy(self, f"""
[groups.a]
servers = ["{origins.url(0)}"]

[groups.b]
servers = ["{origins.url(1)}"]

[[routes]]
hosts = ["a.example"]
group = "a"
min-uses = 2

[[routes]]
hosts = ["b.example"]
group = "b"
max-object-size = 10
""", ("cache-memory", "1M"))
        client = await connectClient(port, self)
        for _ in range(3):
            client.transport.write(get(b"/x", b"a.example"))
        for path in (b"/y", b"/y", b"/a-long-path", b"/a-long-path"):
            client.transport.write(get(path, b"b.example"))
        responses = await client.waitFor(7)
        self.assertEqual([r.header(b"x-cache") for r in responses],
                         [b"MISS", b"MISS", b"HIT", b"MISS", b"HIT", b"MISS", b"MISS"])


class ConfigurationTests(TestCase):
    """
    Groups and routes in the configuration file, several --upstream.
    """

    def test_errorNamesFileAndLine(self):
        """
        A route naming an unknown group is refused with the file, line and
        key.
        """
        path = temporaryPath(self, "sites.toml")
        with open(path, "w") as f:
            f.write('[groups.a]\nservers = ["http://127.0.0.1:1"]\n\n[[routes]]\ngroup = "b"\n')
        with self.assertRaises(usage.UsageError) as caught:
            fromOptions({"config": path}, {})
        self.assertIn(f"{path}:5: routes[0].group: no group named 'b'", str(caught.exception))

    def test_severalUpstreams(self):
        """
        Several --upstream make one round-robin group with health checks,
        the default route; one --upstream keeps the proxy without routes.
        """
        config = fromOptions({"upstream": ("http://127.0.0.1:1", "http://127.0.0.1:2/p")}, {})
        group = config.sites.groups["upstream"]
        self.assertEqual([s.url for s in group.servers],
                         ["http://127.0.0.1:1", "http://127.0.0.1:2/p"])
        self.assertIsNotNone(group.health)
        self.assertEqual(config.upstreamPath, b"")
        single = fromOptions({"upstream": ("http://127.0.0.1:1/p",), "cache-dir": "none"}, {})
        self.assertIsNone(single.sites)
        self.assertEqual(single.upstreamPath, b"/p")
        factory = buildFactory(reactor, single)
        self.assertIsNone(factory.sites)

    def test_upstreamAndRoutes(self):
        """
        --upstream and routes in the file cannot be combined.
        """
        path = temporaryPath(self, "sites.toml")
        with open(path, "w") as f:
            f.write('default-route = "a"\n[groups.a]\nservers = ["http://127.0.0.1:1"]\n')
        with self.assertRaises(usage.UsageError) as caught:
            fromOptions({"config": path, "upstream": ("http://127.0.0.1:2",)}, {})
        self.assertIn("cannot be combined", str(caught.exception))


class ReloadTests(TestCase):
    """
    SIGHUP to a twistd process serving routes.
    """

    async def test_addServerUnderLoad(self):
        """
        A SIGHUP adding a server to a group while a client keeps sending
        requests on a kept-alive connection loses none, and the new server
        gets requests.
        """
        origins = Origins(self, 2)
        path = temporaryPath(self, "sites.toml")
        template = """
[groups.www]
servers = [{servers}]

[[routes]]
group = "www"
cache = false
"""
        with open(path, "w") as f:
            f.write(template.format(servers=f'"{origins.url(0)}"'))
        process = Twistd()
        transport = reactor.spawnProcess(
            process, sys.executable,
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "cachingproxy",
             "--port", "tcp:0:interface=127.0.0.1", "--cache-dir", "none", "--config", path],
            env=dict(os.environ, PYTHONPATH=REPO), path=REPO)

        def stop():
            if not process.ended.called:
                transport.signalProcess(signal.SIGTERM)
            return process.ended

        self.addCleanup(stop)
        port = await process.listening
        client = await connectClient(port, self)
        sent = 0
        reloaded = False
        while not origins.resources[1].paths:
            client.transport.write(get(b"/load/%d" % sent))
            sent += 1
            await client.waitFor(sent)
            if sent == 20 and not reloaded:
                with open(path, "w") as f:
                    f.write(template.format(servers=f'"{origins.url(0)}", "{origins.url(1)}"'))
                transport.signalProcess(signal.SIGHUP)
                reloaded = True
            if sent > 2000:
                break
        for _ in range(20):
            client.transport.write(get(b"/load/%d" % sent))
            sent += 1
            await client.waitFor(sent)
        self.assertEqual([r.status for r in client.finalResponses()], [200] * sent)
        self.assertFalse(client.closed.called)
        self.assertGreater(len(origins.resources[1].paths), 5)
        self.assertIn(b"configuration reloaded", process.output)



class MetricsTests(TestCase):
    """
    Per-group figures are counted in Python and written once a second.
    """

    def test_batched(self):
        """
        Once started, requests are written at the next tick, and stopping
        writes what is left.
        """
        from prometheus_client import CollectorRegistry
        from twisted.internet.task import Clock

        from cachingproxy.sites.metrics import SitesMetrics
        from cachingproxy.sites.parse import implicitGroup

        registry = CollectorRegistry()
        metrics = SitesMetrics(registry)
        group = implicitGroup(["http://127.0.0.1:1", "http://127.0.0.1:2"])
        server = group.servers[0]
        labels = {"group": "upstream", "server": server.url}
        clock = Clock()
        metrics.start(clock)
        metrics.requestDone(group, server, True, 0.01)
        metrics.requestDone(group, server, False, None)

        def value(name):
            return registry.get_sample_value(name, labels) or 0

        self.assertEqual(value("cachingproxy_group_requests_total"), 0)
        clock.advance(1)
        self.assertEqual(value("cachingproxy_group_requests_total"), 2)
        self.assertEqual(value("cachingproxy_group_failures_total"), 1)
        self.assertEqual(value("cachingproxy_group_upstream_seconds_count"), 1)
        metrics.requestDone(group, server, True, 0.02)
        metrics.stop()
        self.assertEqual(value("cachingproxy_group_requests_total"), 3)
        self.assertEqual(clock.getDelayedCalls(), [])
