"""
Tests for L{cachingproxy.sites.parse}: groups and routes read from TOML,
and the one-line errors that name the file, the line and the key.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import tomllib

from twisted.trial.unittest import SynchronousTestCase

from cachingproxy.access import Networks
from cachingproxy.cache.policy import RefreshRule
from cachingproxy.rules import HeaderRules
from cachingproxy.sites.model import HealthCheck, PassiveCheck, RateLimit
from cachingproxy.sites.parse import SitesError, implicitGroup, parseSites, readSites
from cachingproxy.proxy.upstream import Origin

FULL = """\
# routes and groups
default-route = "web"

[groups.web]
servers = ["http://10.0.0.1:8080", {url = "http://10.0.0.2:8080/base/", weight = 3}]
balance = "least-outstanding"
passive = {failures = 2, window = "20s", cooldown = "1m"}

[groups.web.health]
path = "/healthz"
interval = "10s"
timeout = 3
expect = [200, "3xx", "404-405"]
fall = 2
rise = 4
host = "www.example:8080"

[groups.static]
servers = ["https://Static.Example"]
balance = "consistent-hash"
health = true
passive = false

[[routes]]
name = "api"
hosts = ["API.example", "*.api.example"]
path = "/v1/"
group = "web"
cache = false
min-uses = 2
max-object-size = "16M"
refresh-rule = ["\\\\.jpg$ 1h 20 1d", {pattern = "\\\\.css$", min = "1m", percent = 10, max = "1h"}]
add-request-header = ["X-Route: api"]
remove-response-header = "Server"
compress = true
preserve-host = true
access = ["10.0.0.0/8", "loopback"]
rate = {per-second = 2.5, burst = 10, count-hits = false}

[[routes]]
hosts = "static.example"
group = "static"
"""


def parse(text: str, source: str = "sites.toml"):
    return parseSites(tomllib.loads(text), text, source)


class ParseGroupsTests(SynchronousTestCase):
    """
    C{[groups.NAME]} tables.
    """

    def setUp(self) -> None:
        self.sites = parse(FULL)

    def test_servers(self) -> None:
        """
        Servers are URLs or tables with a weight; the URL is normalised
        (scheme and host lowercase, port given, no trailing slash) and its
        path becomes the prefix.
        """
        web = self.sites.groups["web"]
        self.assertEqual([s.url for s in web.servers],
                         ["http://10.0.0.1:8080", "http://10.0.0.2:8080/base"])
        self.assertEqual([s.weight for s in web.servers], [1, 3])
        self.assertEqual(web.servers[1].origin, Origin(b"http", "10.0.0.2", 8080))
        self.assertEqual(web.servers[1].path, b"/base")
        static = self.sites.groups["static"].servers[0]
        self.assertEqual(static.url, "https://static.example:443")
        self.assertEqual(static.origin, Origin(b"https", "static.example", 443))

    def test_balance(self) -> None:
        """
        C{balance} is kept as given; round robin is the default.
        """
        self.assertEqual(self.sites.groups["web"].balance, "least-outstanding")
        self.assertEqual(self.sites.groups["static"].balance, "consistent-hash")
        sites = parse('[groups.a]\nservers = ["http://a"]\n')
        self.assertEqual(sites.groups["a"].balance, "round-robin")

    def test_health(self) -> None:
        """
        The health table with durations, statuses as numbers, classes
        (C{3xx}) and ranges; C{true} gives the defaults; no key, no checks.
        """
        health = self.sites.groups["web"].health
        self.assertEqual(health.path, b"/healthz")
        self.assertEqual((health.interval, health.timeout, health.fall, health.rise), (10.0, 3.0, 2, 4))
        self.assertEqual(health.host, b"www.example:8080")
        self.assertEqual(health.expect, frozenset([200, 404, 405, *range(300, 400)]))
        self.assertEqual(self.sites.groups["static"].health, HealthCheck())
        self.assertIsNone(parse('[groups.a]\nservers = ["http://a"]\n').groups["a"].health)

    def test_passive(self) -> None:
        """
        The passive table; C{false} turns passive checks off; they are on
        with defaults when not given.
        """
        self.assertEqual(self.sites.groups["web"].passive, PassiveCheck(2, 20.0, 60.0))
        self.assertIsNone(self.sites.groups["static"].passive)
        self.assertEqual(parse('[groups.a]\nservers = ["http://a"]\n').groups["a"].passive, PassiveCheck())


class ParseRoutesTests(SynchronousTestCase):
    """
    C{[[routes]]} and C{default-route}.
    """

    def setUp(self) -> None:
        self.sites = parse(FULL)

    def test_order(self) -> None:
        """
        Routes keep their order; C{default-route} comes last and matches
        everything.
        """
        self.assertEqual([r.name for r in self.sites.routes], ["api", "routes[1]", "default-route"])
        self.assertEqual(self.sites.routes[1].hosts, ("static.example",))
        default = self.sites.routes[-1]
        self.assertEqual((default.group, default.hosts, default.path), ("web", (), b"/"))
        self.assertTrue(default.matchesEverything)
        self.assertFalse(self.sites.routes[0].matchesEverything)

    def test_overrides(self) -> None:
        """
        Per-route settings are parsed with the proxy's own parsers.
        """
        api = self.sites.routes[0]
        self.assertEqual(api.hosts, ("api.example", "*.api.example"))
        self.assertEqual(api.path, b"/v1/")
        self.assertEqual((api.cache, api.minUses, api.maxObjectSize), (False, 2, 16 * 1024**2))
        self.assertEqual(len(api.refreshRules), 2)
        self.assertIsInstance(api.refreshRules[0], RefreshRule)
        self.assertEqual(api.refreshRules[0].maximum, 86400.0)
        self.assertEqual(api.refreshRules[1].minimum, 60.0)
        self.assertEqual(api.requestHeaders, HeaderRules(add=((b"X-Route", b"api"),)))
        self.assertEqual(api.responseHeaders, HeaderRules(remove=(b"server",)))
        self.assertEqual((api.compress, api.preserveHost), (True, True))
        self.assertIsInstance(api.access, Networks)
        self.assertIn(__import__("ipaddress").ip_address("10.1.2.3"), api.access)
        self.assertNotIn(__import__("ipaddress").ip_address("192.168.1.1"), api.access)
        self.assertEqual(api.rate, RateLimit(2.5, 10, False))

    def test_unset(self) -> None:
        """
        What a route does not set is C{None}: the proxy's setting applies.
        """
        route = self.sites.routes[1]
        for attribute in ("cache", "minUses", "maxObjectSize", "refreshRules", "requestHeaders",
                          "responseHeaders", "compress", "preserveHost", "access", "rate"):
            self.assertIsNone(getattr(route, attribute), attribute)

    def test_rateDefaults(self) -> None:
        """
        The burst defaults to the rate rounded up, and hits count.
        """
        sites = parse('[groups.a]\nservers = ["http://a"]\n[[routes]]\ngroup = "a"\n'
                      'rate = {per-second = 2.5}\n')
        self.assertEqual(sites.routes[0].rate, RateLimit(2.5, 3, True))

    def test_starHost(self) -> None:
        """
        C{hosts = ["*"]} is every host.
        """
        sites = parse('[groups.a]\nservers = ["http://a"]\n[[routes]]\nhosts = ["*"]\ngroup = "a"\n')
        self.assertEqual(sites.routes[0].hosts, ())

    def test_normalised(self) -> None:
        """
        Paths are normalised as request paths are; international host
        names become their ASCII form.
        """
        sites = parse('[groups.a]\nservers = ["http://a"]\n[[routes]]\ngroup = "a"\n'
                      'hosts = ["B\u00fccher.example", "*.b\u00fccher.example"]\npath = "/x/./%61//"\n')
        self.assertEqual(sites.routes[0].path, b"/x/a/")
        self.assertEqual(sites.routes[0].hosts, ("xn--bcher-kva.example", "*.xn--bcher-kva.example"))

    def test_defaultRouteTable(self) -> None:
        """
        C{default-route} may be a table with per-route settings.
        """
        sites = parse('default-route = {group = "a", cache = false}\n[groups.a]\nservers = ["http://a"]\n')
        self.assertEqual((sites.routes[0].group, sites.routes[0].cache), ("a", False))

    def test_empty(self) -> None:
        """
        A document with neither groups nor routes gives none.
        """
        sites = parseSites({"port": ["3128"]})
        self.assertEqual((dict(sites.groups), sites.routes), ({}, ()))

    def test_servers(self) -> None:
        """
        L{Sites.servers} lists each URL once.
        """
        text = '[groups.a]\nservers = ["http://a", "http://b"]\n[groups.b]\nservers = ["http://b"]\n'
        self.assertEqual([s.url for s in parse(text).servers()], ["http://a:80", "http://b:80"])


class ErrorTests(SynchronousTestCase):
    """
    Each mistake is one line naming the file, the line and the key.
    """

    def assertError(self, text: str, expected: str) -> None:
        with self.assertRaises(SitesError) as raised:
            parse(text)
        message = str(raised.exception)
        self.assertNotIn("\n", message)
        self.assertEqual(message, expected)

    def test_unknownGroupKey(self) -> None:
        """
        An unknown key is named, with the closest known one.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\nbalanec = "round-robin"\n',
            "sites.toml:3: groups.a: unknown key 'balanec' (did you mean 'balance'?)",
        )

    def test_badBalance(self) -> None:
        """
        An unknown balance method lists the known ones.
        """
        self.assertError(
            '\n[groups.a]\nservers = ["http://a"]\nbalance = "random"\n',
            "sites.toml:4: groups.a.balance: expected one of round-robin, least-outstanding, "
            "consistent-hash, got 'random'",
        )

    def test_badServer(self) -> None:
        """
        A server that is not an http or https URL.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a", "ftp://b"]\n',
            "sites.toml:2: groups.a.servers[1]: expected http://host[:port][/prefix] or https://..., "
            "got 'ftp://b'",
        )

    def test_duplicateServer(self) -> None:
        """
        The same server twice in a group (after normalisation).
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a", "http://A:80/"]\n',
            "sites.toml:2: groups.a.servers[1]: http://a:80 is listed twice",
        )

    def test_badWeight(self) -> None:
        """
        A weight below 1.
        """
        self.assertError(
            '[groups.a]\nservers = [{url = "http://a", weight = 0}]\n',
            "sites.toml:2: groups.a.servers[0].weight: must be 1 or more, got 0",
        )

    def test_noServers(self) -> None:
        """
        A group needs servers.
        """
        self.assertError('[groups.a]\nbalance = "round-robin"\n', "sites.toml:1: groups.a: servers is missing")
        self.assertError(
            "[groups.a]\nservers = []\n",
            "sites.toml:2: groups.a.servers: expected a non-empty array of origin URLs, got an array []",
        )

    def test_healthSubTable(self) -> None:
        """
        A key of a C{[groups.NAME.health]} table is found on its line.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\n\n[groups.a.health]\npath = "/"\nfall = 0\n',
            "sites.toml:6: groups.a.health.fall: must be 1 or more, got 0",
        )
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\n[groups.a.health]\nexpect = ["6xx"]\n',
            "sites.toml:4: groups.a.health.expect: expected statuses such as 200, \"2xx\" or "
            "\"200-399\", or an array of them, got a string '6xx'",
        )

    def test_healthHost(self) -> None:
        """
        The Host of active checks must be a host, with a port or not.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\nhealth = {host = "*.example"}\n',
            'sites.toml:3: groups.a.health.host: expected a Host value such as "api.example" or '
            '"api.example:8080", got a string \'*.example\'',
        )

    def test_healthTimeout(self) -> None:
        """
        A check's timeout may not be longer than its interval.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\nhealth = {interval = 2, timeout = "5s"}\n',
            "sites.toml:3: groups.a.health.timeout: must not be longer than the interval (2s), got 5s",
        )

    def test_badDuration(self) -> None:
        """
        A duration that is not one.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\npassive = {window = "soon"}\n',
            "sites.toml:3: groups.a.passive.window: expected a duration such as 90, 15m or 1d, got 'soon'",
        )

    def test_unknownGroup(self) -> None:
        """
        A route naming a group that does not exist, in the second route.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\n[[routes]]\ngroup = "a"\n[[routes]]\n'
            'path = "/x"\ngroup = "b"\n',
            "sites.toml:7: routes[1].group: no group named 'b' (groups: a)",
        )

    def test_routeWithoutGroup(self) -> None:
        """
        A route needs a group.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\n\n[[routes]]\npath = "/x"\n',
            "sites.toml:4: routes[0]: group is missing",
        )

    def test_badHost(self) -> None:
        """
        A host with a port, and a wildcard not at the start.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\n[[routes]]\ngroup = "a"\nhosts = ["a.example:80"]\n',
            "sites.toml:5: routes[0].hosts: 'a.example:80': a host takes no port "
            "(the port of Host is not compared)",
        )
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\n[[routes]]\ngroup = "a"\nhosts = ["a.*.example"]\n',
            "sites.toml:5: routes[0].hosts: expected a host name such as api.example or *.example, "
            "got 'a.*.example'",
        )

    def test_badPath(self) -> None:
        """
        A path that does not start with a slash.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\n[[routes]]\ngroup = "a"\npath = "api"\n',
            "sites.toml:5: routes[0].path: expected a path prefix such as \"/api/\", got a string 'api'",
        )

    def test_badRefreshRule(self) -> None:
        """
        Refresh rules fail with the message of the proxy's own parser.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\n[[routes]]\ngroup = "a"\nrefresh-rule = ["x 1h"]\n',
            "sites.toml:5: routes[0].refresh-rule: 'x 1h': expected "
            "'[-i] REGEX MIN PERCENT MAX [type=TYPE,...] [override]', got 'x 1h'",
        )

    def test_badHeaderRule(self) -> None:
        """
        Header rules fail with the message of L{HeaderRules.parse}.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\n[[routes]]\ngroup = "a"\nset-response-header = ["Nope"]\n',
            "sites.toml:5: routes[0].set-response-header: expected 'Name: value', got 'Nope'",
        )

    def test_badAccess(self) -> None:
        """
        Access lists fail with the message of L{parseNetworks}.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\n[[routes]]\ngroup = "a"\naccess = ["10.0.0.0/33"]\n',
            "sites.toml:5: routes[0].access: '10.0.0.0/33' is not an address range such as 10.0.0.0/8, "
            "nor all, private, loopback or none",
        )

    def test_badRate(self) -> None:
        """
        A rate needs a positive per-second.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\n[[routes]]\ngroup = "a"\n\n[routes.rate]\nper-second = 0\n',
            "sites.toml:7: routes[0].rate.per-second: must be greater than 0, got 0",
        )
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\n[[routes]]\ngroup = "a"\nrate = {burst = 3}\n',
            "sites.toml:5: routes[0].rate: per-second is missing",
        )

    def test_badCache(self) -> None:
        """
        A boolean setting given a string.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\n[[routes]]\ngroup = "a"\ncache = "no"\n',
            "sites.toml:5: routes[0].cache: expected true or false, got a string 'no'",
        )

    def test_defaultRoute(self) -> None:
        """
        C{default-route} naming no group, or given hosts.
        """
        self.assertError(
            'default-route = "x"\n[groups.a]\nservers = ["http://a"]\n',
            "sites.toml:1: default-route.group: no group named 'x' (groups: a)",
        )
        self.assertError(
            'default-route = {group = "a", hosts = ["a"]}\n[groups.a]\nservers = ["http://a"]\n',
            "sites.toml:1: default-route: unknown key 'hosts' (expected name, group, cache, min-uses, "
            "max-object-size, refresh-rule, add-request-header, set-request-header, "
            "remove-request-header, add-response-header, set-response-header, "
            "remove-response-header, compress, preserve-host, access, rate)",
        )

    def test_unreachable(self) -> None:
        """
        A route after one that matches every request is an error, the
        default route included.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\n[[routes]]\ngroup = "a"\n[[routes]]\nhosts = ["b"]\ngroup = "a"\n',
            "sites.toml:5: routes[1]: never used: routes[0] before it matches every request",
        )
        self.assertError(
            'default-route = "a"\n[groups.a]\nservers = ["http://a"]\n[[routes]]\nhosts = ["*"]\ngroup = "a"\n',
            "sites.toml:1: default-route: never used: routes[0] before it matches every request",
        )

    def test_sameName(self) -> None:
        """
        Two routes may not have the same name.
        """
        self.assertError(
            '[groups.a]\nservers = ["http://a"]\n[[routes]]\nname = "x"\nhosts = ["a"]\ngroup = "a"\n'
            '[[routes]]\nname = "x"\nhosts = ["b"]\ngroup = "a"\n',
            "sites.toml:8: routes[1].name: 'x' names an earlier route too",
        )

    def test_weightLimit(self) -> None:
        """
        Weights are capped.
        """
        self.assertError(
            '[groups.a]\nservers = [{url = "http://a", weight = 101}]\n',
            "sites.toml:2: groups.a.servers[0].weight: must be 100 or less, got 101",
        )

    def test_routesWithoutGroups(self) -> None:
        """
        Routes without any group.
        """
        self.assertError('[[routes]]\ngroup = "a"\n', "sites.toml:2: routes[0].group: no group named 'a' "
                         "(groups: none are defined)")

    def test_withoutText(self) -> None:
        """
        Without the text, the message names the source and the key.
        """
        with self.assertRaises(SitesError) as raised:
            parseSites({"groups": {"a": {"servers": ["http://a"], "balance": 3}}}, source="x.toml")
        self.assertEqual(str(raised.exception),
                         "x.toml: groups.a.balance: expected one of round-robin, least-outstanding, "
                         "consistent-hash, got 3")

    def test_readSites(self) -> None:
        """
        L{readSites} reads a file and names it in errors.
        """
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        path = os.path.join(folder, "sites.toml")
        with open(path, "w") as f:
            f.write('[groups.a]\nservers = ["http://a"]\n[[routes]]\ngroup = "a"\ncompress = 1\n')
        with self.assertRaises(SitesError) as raised:
            readSites(path)
        self.assertEqual(str(raised.exception), f"{path}:5: routes[0].compress: expected true or false, "
                         "got an integer 1")
        with open(path, "w") as f:
            f.write("[groups.a\n")
        with self.assertRaises(SitesError) as raised:
            readSites(path)
        self.assertTrue(str(raised.exception).startswith(f"{path}: invalid TOML: "))


class ImplicitGroupTests(SynchronousTestCase):
    """
    Several C{--upstream} URLs as one group.
    """

    def test_group(self) -> None:
        """
        A round-robin group with default active and passive checks.
        """
        group = implicitGroup(["http://10.0.0.1:8080", "https://b.example"])
        self.assertEqual(group.name, "upstream")
        self.assertEqual(group.balance, "round-robin")
        self.assertEqual(group.health, HealthCheck())
        self.assertEqual(group.passive, PassiveCheck())
        self.assertEqual([s.url for s in group.servers], ["http://10.0.0.1:8080", "https://b.example:443"])

    def test_errors(self) -> None:
        """
        A bad URL or the same one twice.
        """
        with self.assertRaises(SitesError) as raised:
            implicitGroup(["http://a", "a:80"])
        self.assertEqual(str(raised.exception),
                         "--upstream: expected http://host[:port][/prefix] or https://..., got 'a:80'")
        with self.assertRaises(SitesError) as raised:
            implicitGroup(["http://a", "http://a:80"])
        self.assertEqual(str(raised.exception), "--upstream: http://a:80 is given twice")
        with self.assertRaises(SitesError):
            implicitGroup([])
