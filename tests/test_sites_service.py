"""
Tests for L{cachingproxy.sites.service}: the object the proxy calls for
routes, servers, rate limits and reloads.
"""

from __future__ import annotations

import tomllib

from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cachingproxy.sites.health import ServerState
from cachingproxy.sites.metrics import SitesMetrics
from cachingproxy.sites.parse import parseSites
from cachingproxy.sites.service import ARRIVAL, UPSTREAM, SitesService

CONFIG = """\
[groups.web]
servers = ["http://10.0.0.1", "http://10.0.0.2"]
passive = {failures = 2, window = 10, cooldown = 30}

[groups.api]
servers = ["http://10.0.1.1", {url = "http://10.0.1.2", weight = 2}]
balance = "least-outstanding"
health = {path = "/ping", interval = 5, timeout = 1, fall = 1, rise = 1}

[[routes]]
hosts = ["api.example"]
group = "api"
rate = {per-second = 1, burst = 2}

[[routes]]
hosts = ["www.example"]
group = "web"
rate = {per-second = 1, burst = 1, count-hits = false}
"""


def load(text: str):
    return parseSites(tomllib.loads(text), text, "sites.toml")


class Checker:
    def __init__(self) -> None:
        self.status = {}

    def __call__(self, server, check):
        return defer.succeed(self.status.get(server.url, 200))


class SitesServiceTests(SynchronousTestCase):
    """
    L{SitesService}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.checker = Checker()
        self.registry = CollectorRegistry()
        self.sites = SitesService(self.clock, load(CONFIG), checker=self.checker,
                                  metrics=SitesMetrics(self.registry))
        self.sites.startService()
        self.addCleanup(self.sites.stopService)

    def test_routeAndPick(self) -> None:
        """
        A request is routed by Host, and gets a server of its group;
        an unknown Host gets no route.
        """
        route = self.sites.route(b"www.example", b"/")
        self.assertEqual(route.group, "web")
        picked = {self.sites.pick(route).url for _ in range(4)}
        self.assertEqual(picked, {"http://10.0.0.1:80", "http://10.0.0.2:80"})
        self.assertIsNone(self.sites.route(b"other.example", b"/"))

    def test_exclude(self) -> None:
        """
        A retry excludes the server that failed.
        """
        route = self.sites.route(b"www.example", b"/")
        first = self.sites.pick(route)
        self.assertNotEqual(self.sites.pick(route, exclude=[first]), first)
        self.assertIsNone(self.sites.pick(route, exclude=self.sites.group(route).servers))

    def test_passiveFailures(self) -> None:
        """
        Failures reported by C{finished} take a server out, and are
        counted in the metrics.
        """
        route = self.sites.route(b"www.example", b"/")
        bad = self.sites.group(route).servers[0]
        for _ in range(2):
            self.sites.started(route, bad)
            self.sites.finished(route, bad, ok=False, latency=None)
        self.assertIs(self.sites.health.state(bad), ServerState.COOLING)
        self.assertEqual({self.sites.pick(route).url for _ in range(4)}, {"http://10.0.0.2:80"})
        labels = {"group": "web", "server": bad.url}
        self.assertEqual(self.registry.get_sample_value("cachingproxy_group_failures_total", labels), 2.0)

    def test_activeChecks(self) -> None:
        """
        The service runs the active checks of its groups.
        """
        self.checker.status["http://10.0.1.1:80"] = 503
        self.clock.advance(0)
        route = self.sites.route(b"api.example", b"/")
        self.assertEqual({self.sites.pick(route).url for _ in range(4)}, {"http://10.0.1.2:80"})

    def test_limitCountHits(self) -> None:
        """
        With C{count-hits} the token is taken on arrival; without it, only
        on the way upstream.
        """
        api = self.sites.route(b"api.example", b"/")
        self.assertEqual([self.sites.limit(api, "c", ARRIVAL).allowed for _ in range(3)], [True, True, False])
        self.assertTrue(self.sites.limit(api, "c", UPSTREAM).allowed)
        www = self.sites.route(b"www.example", b"/")
        self.assertTrue(all(self.sites.limit(www, "c", ARRIVAL).allowed for _ in range(5)))
        self.assertTrue(self.sites.limit(www, "c", UPSTREAM).allowed)
        verdict = self.sites.limit(www, "c", UPSTREAM)
        self.assertEqual((verdict.allowed, verdict.retryAfter), (False, 1))

    def test_reload(self) -> None:
        """
        After a reload, a server that stays keeps its state and its
        outstanding requests; routes follow the new configuration.
        """
        route = self.sites.route(b"www.example", b"/")
        bad, good = self.sites.group(route).servers
        self.sites.finished(route, bad, ok=False, latency=None)
        self.sites.finished(route, bad, ok=False, latency=None)
        self.sites.started(route, good)
        new = CONFIG.replace('hosts = ["www.example"]', 'hosts = ["www.example", "web.example"]')
        new = new.replace('balance = "least-outstanding"\n', "")
        new = new.replace('[groups.web]\nservers = ["http://10.0.0.1", "http://10.0.0.2"]',
                          '[groups.web]\nservers = ["http://10.0.0.1", "http://10.0.0.2", "http://10.0.0.3"]\n'
                          'balance = "least-outstanding"')
        self.sites.reload(load(new))
        route = self.sites.route(b"web.example", b"/")
        self.assertEqual(route.group, "web")
        self.assertIs(self.sites.health.state(bad), ServerState.COOLING)
        self.assertEqual(self.sites._balancers["web"].outstanding(good), 1)
        # least outstanding: the new server, with nothing outstanding.
        self.assertEqual(self.sites.pick(route).url, "http://10.0.0.3:80")
