"""
Tests for L{cachingproxy.sites.routes}: which route a Host and a path
take.
"""

from __future__ import annotations

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cachingproxy.sites.model import Route
from cachingproxy.sites.routes import RouteTable, hostOf, normalizePath, pathMatches


def route(name: str, hosts=(), path: bytes = b"/", group: str = "g") -> Route:
    return Route(hosts=tuple(hosts), path=path, group=group, name=name)


class HostOfTests(SynchronousTestCase):
    """
    L{hostOf} normalises a Host field value.
    """

    def test_port(self) -> None:
        """
        The port and a trailing dot are dropped, the case is folded.
        """
        self.assertEqual(hostOf(b"API.Example:8080"), "api.example")
        self.assertEqual(hostOf(b"api.example."), "api.example")
        self.assertEqual(hostOf(b"api.example.:443"), "api.example")

    def test_ipv6(self) -> None:
        """
        An IPv6 literal keeps its brackets and loses its port.
        """
        self.assertEqual(hostOf(b"[::1]:8080"), "[::1]")
        self.assertEqual(hostOf(b"[2001:DB8::1]"), "[2001:db8::1]")


class NormalizePathTests(SynchronousTestCase):
    """
    L{normalizePath}: what routes compare.
    """

    def test_unreserved(self) -> None:
        """
        Escapes of unreserved characters are decoded; others are kept, in
        upper case.
        """
        self.assertEqual(normalizePath(b"/%61dmin/%7euser"), b"/admin/~user")
        self.assertEqual(normalizePath(b"/a%2fb%3f"), b"/a%2Fb%3F")

    def test_dotSegments(self) -> None:
        """
        C{.} and C{..} segments are removed, never above the root; encoded
        dots too.
        """
        self.assertEqual(normalizePath(b"/static/../admin"), b"/admin")
        self.assertEqual(normalizePath(b"/a/%2e%2E/b"), b"/b")
        self.assertEqual(normalizePath(b"/../../etc"), b"/etc")
        self.assertEqual(normalizePath(b"/a/./b/."), b"/a/b/")
        self.assertEqual(normalizePath(b"/a/..b"), b"/a/..b")

    def test_slashes(self) -> None:
        """
        Runs of slashes are merged; an empty path is C{/}.
        """
        self.assertEqual(normalizePath(b"//admin///x"), b"/admin/x")
        self.assertEqual(normalizePath(b""), b"/")

    @given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "%2e", "%61", "%2F"]), max_size=8))
    def test_idempotent(self, segments) -> None:
        """
        Normalising twice changes nothing, and the result has no dot
        segment and no empty segment but a trailing one.
        """
        once = normalizePath(("/" + "/".join(segments)).encode())
        self.assertEqual(normalizePath(once), once)
        parts = once.split(b"/")[1:]
        self.assertNotIn(b".", parts)
        self.assertNotIn(b"..", parts)
        self.assertNotIn(b"", parts[:-1])


class PathMatchesTests(SynchronousTestCase):
    """
    L{pathMatches}: plain prefix when the route path ends with C{/},
    segment boundary otherwise.
    """

    def test_slash(self) -> None:
        """
        C{/api/} is a plain prefix, as nginx's C{location /api/}.
        """
        self.assertTrue(pathMatches(b"/api/", b"/api/"))
        self.assertTrue(pathMatches(b"/api/", b"/api/v1"))
        self.assertFalse(pathMatches(b"/api/", b"/api"))
        self.assertFalse(pathMatches(b"/api/", b"/apiary"))

    def test_segment(self) -> None:
        """
        C{/api} matches itself and what is below it, not C{/apiary}.
        """
        self.assertTrue(pathMatches(b"/api", b"/api"))
        self.assertTrue(pathMatches(b"/api", b"/api/"))
        self.assertTrue(pathMatches(b"/api", b"/api/v1"))
        self.assertFalse(pathMatches(b"/api", b"/apiary"))
        self.assertFalse(pathMatches(b"/api", b"/ap"))

    def test_root(self) -> None:
        """
        C{/} matches every path.
        """
        self.assertTrue(pathMatches(b"/", b"/"))
        self.assertTrue(pathMatches(b"/", b"/anything/at/all"))

    @given(st.lists(st.sampled_from(["a", "b", "ab", "x"]), min_size=1, max_size=4),
           st.lists(st.sampled_from(["a", "b", "ab", "x", ""]), max_size=4))
    def test_segmentProperty(self, prefix, rest) -> None:
        """
        A prefix without a trailing slash matches a path exactly when the
        path's segments start with the prefix's segments.
        """
        prefixPath = ("/" + "/".join(prefix)).encode()
        path = ("/" + "/".join(rest)).encode()
        segments = path.split(b"/")[1:]
        expected = segments[: len(prefix)] == [p.encode() for p in prefix]
        self.assertEqual(pathMatches(prefixPath, path), expected)


class RouteTableTests(SynchronousTestCase):
    """
    L{RouteTable.match}: host exact or C{*.domain}, path prefix, first
    match wins.
    """

    def setUp(self) -> None:
        self.table = RouteTable([
            route("api-v1", ["api.example"], b"/v1/"),
            route("wild", ["*.example"], b"/static"),
            route("api", ["api.example", "other.example"]),
            route("ip", ["[::1]", "127.0.0.1"]),
            route("any-admin", [], b"/admin"),
        ])

    def name(self, host, path: bytes):
        found = self.table.match(host, path)
        return found.name if found is not None else None

    def test_exactHost(self) -> None:
        """
        An exact host matches case-insensitively, without its port.
        """
        self.assertEqual(self.name(b"API.example:8443", b"/v1/users"), "api-v1")
        self.assertEqual(self.name(b"api.example", b"/v2/users"), "api")
        self.assertEqual(self.name(b"other.example", b"/"), "api")

    def test_firstMatchWins(self) -> None:
        """
        A request two routes match takes the first: a wildcard route
        listed before an exact one wins over it.
        """
        self.assertEqual(self.name(b"api.example", b"/static/x.css"), "wild")

    def test_wildcard(self) -> None:
        """
        C{*.example} matches one or more labels before C{.example}, not
        C{example} itself nor a name that merely ends the same.
        """
        self.assertEqual(self.name(b"a.example", b"/static/x"), "wild")
        self.assertEqual(self.name(b"a.b.example", b"/static"), "wild")
        self.assertIsNone(self.name(b"example", b"/static/x"))
        self.assertIsNone(self.name(b"badexample", b"/static/x"))

    def test_anyHost(self) -> None:
        """
        A route without hosts matches any Host, and a missing one.
        """
        self.assertEqual(self.name(b"whatever.test", b"/admin/x"), "any-admin")
        self.assertEqual(self.name(None, b"/admin"), "any-admin")

    def test_addresses(self) -> None:
        """
        IP literals match as hosts, IPv6 in brackets.
        """
        self.assertEqual(self.name(b"[::1]:3128", b"/"), "ip")
        self.assertEqual(self.name(b"127.0.0.1:80", b"/x"), "ip")

    def test_query(self) -> None:
        """
        The query is not part of the path.
        """
        self.assertEqual(self.name(b"api.example", b"/v1/?a=b"), "api-v1")
        self.assertIsNone(self.name(b"x.test", b"/adminx?/admin"))
        self.assertEqual(self.name(b"x.test", b"/admin?x=1"), "any-admin")

    def test_normalised(self) -> None:
        """
        Encoded and dotted paths take the route of the path they mean.
        """
        self.assertEqual(self.name(b"x.test", b"/%61dmin/users"), "any-admin")
        self.assertEqual(self.name(b"x.test", b"/public/../admin"), "any-admin")
        self.assertEqual(self.name(b"x.test", b"//admin"), "any-admin")
        self.assertEqual(self.name(b"api.example", b"/v1/../v2"), "api")

    def test_noMatch(self) -> None:
        """
        No route matches: C{None} (the proxy answers 404).
        """
        self.assertIsNone(self.name(b"unknown.test", b"/"))

    def test_catchAll(self) -> None:
        """
        A route that matches everything catches what the others do not.
        """
        table = RouteTable([route("a", ["a.test"]), route("default")])
        self.assertEqual(table.match(b"a.test", b"/").name, "a")
        self.assertEqual(table.match(b"b.test", b"/x").name, "default")

    @given(st.lists(st.tuples(st.sampled_from(["a.test", "b.test", "*.test", "*.a.test", ""]),
                              st.sampled_from(["/", "/x", "/x/", "/y"])), min_size=1, max_size=6),
           st.sampled_from(["a.test", "B.TEST:80", "c.a.test", "test", "z.other"]),
           st.sampled_from(["/", "/x", "/x/1", "/xy", "/y/z"]))
    def test_indexAgreesWithScan(self, specs, host, path) -> None:
        """
        The indexed lookup gives what trying every route in order gives.
        """
        routes = [route(str(i), [h] if h else [], p.encode()) for i, (h, p) in enumerate(specs)]
        table = RouteTable(routes)
        found = table.match(host.encode(), path.encode())
        expected = None
        name = hostOf(host.encode())
        for r in routes:
            hostOk = not r.hosts or any(
                name == h or (h.startswith("*.") and name.endswith(h[1:])) for h in r.hosts
            )
            if hostOk and pathMatches(r.path, path.encode()):
                expected = r
                break
        self.assertIs(found, expected)
