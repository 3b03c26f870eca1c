"""
L{cachingproxy.access}: who may use the proxy, where it may take them, the
admin ranges and proxy authentication; each rule on its own, then through
a real proxy on loopback sockets.
"""

import base64
import json
import os
import threading

import bcrypt
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cachingproxy import access
from cachingproxy.access import (
    AccessPolicy,
    ProxyAuthenticationRequired,
    TooManyAttempts,
    parseDestinations,
    parseNetworks,
)
from cachingproxy.htpasswd import checkPassword, readPasswordFile, shaCrypt
from cachingproxy.ops.admin import AdminPages
from cachingproxy.service.config import fromOptions
from cachingproxy.errors import Forbidden
from cachingproxy.http.headers import Headers
from cachingproxy.proxy.settings import ProxySettings
from cachingproxy.proxy.upstream import Origin

from .helpers import RawClient, exchange, listenOrigin, startProxy, temporaryPath

#: a cheap bcrypt cost for tests (real files use 5 to 12)
COST = 4


def bcryptHash(password: bytes, prefix: bytes = b"$2b$") -> bytes:
    stored = bcrypt.hashpw(password, bcrypt.gensalt(COST))
    return prefix + stored[4:]


def basic(user: bytes, password: bytes) -> Headers:
    """
    @return: request headers carrying C{Proxy-Authorization: Basic}.
    """
    token = base64.b64encode(user + b":" + password)
    return Headers([(b"Host", b"example.com"), (b"Proxy-Authorization", b"Basic " + token)])


def writeFile(testCase, text: bytes, name: str = "htpasswd") -> str:
    path = temporaryPath(testCase, name)
    with open(path, "wb") as f:
        f.write(text)
    return path


def captureLog(testCase) -> list:
    """
    @return: a list the events logged by L{cachingproxy.access} (and the
        password file reader, L{cachingproxy.htpasswd}) are appended to
        while the test runs.
    """
    events = []

    def observer(event):
        if event.get("log_namespace") in ("cachingproxy.access", "cachingproxy.htpasswd"):
            events.append(event)

    globalLogPublisher.addObserver(observer)
    testCase.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


# -- the rules, one by one -------------------------------------------------------


class ClientRuleTests(SynchronousTestCase):
    """
    L{AccessPolicy.checkClient}: C{--allow}.
    """

    def test_defaultIsPrivateRanges(self):
        """
        By default loopback and private ranges are served, and nothing
        else: the proxy is not open.
        """
        policy = AccessPolicy(clock=Clock())
        for host in ["127.0.0.1", "127.9.9.9", "::1", "10.1.2.3", "172.16.0.1",
                     "172.31.255.254", "192.168.1.1", "fd00::1", "fe80::1"]:
            self.assertIsNone(policy.checkClient(host), host)
        for host in ["203.0.113.9", "8.8.8.8", "172.32.0.1", "192.169.0.1",
                     "2001:db8::1", "11.0.0.1"]:
            refused = policy.checkClient(host)
            self.assertIsInstance(refused, Forbidden, host)
            self.assertEqual(refused.status, 403)

    def test_refusalIsLogged(self):
        """
        A refused client gets a log line naming it and the rule.
        """
        events = captureLog(self)
        policy = AccessPolicy(clock=Clock())
        refused = policy.checkClient("203.0.113.9")
        self.assertIn("203.0.113.9", refused.message)
        [event] = events
        self.assertEqual(event["client"], "203.0.113.9")
        self.assertIn("--allow", event["log_format"])

    def test_ipv4Mapped(self):
        """
        An IPv4-mapped IPv6 client is judged as its IPv4 address.
        """
        policy = AccessPolicy(clock=Clock())
        self.assertIsNone(policy.checkClient("::ffff:10.1.2.3"))
        self.assertIsNone(policy.checkClient("::ffff:127.0.0.1"))
        self.assertIsInstance(policy.checkClient("::ffff:8.8.8.8"), Forbidden)
        only = AccessPolicy(allow=["192.0.2.0/24"], clock=Clock())
        self.assertIsNone(only.checkClient("::ffff:192.0.2.7"))

    def test_allowReplacesDefault(self):
        """
        C{--allow} replaces the default list: even loopback is refused when
        not listed; entries may be comma-separated.
        """
        policy = AccessPolicy(allow=["192.0.2.0/24, 2001:db8::/32"], clock=Clock())
        self.assertIsNone(policy.checkClient("192.0.2.200"))
        self.assertIsNone(policy.checkClient("2001:db8::5"))
        self.assertIsInstance(policy.checkClient("10.0.0.1"), Forbidden)
        self.assertIsInstance(policy.checkClient("127.0.0.1"), Forbidden)

    def test_allowAll(self):
        """
        C{--allow all} serves everyone; it has to be said.
        """
        policy = AccessPolicy(allow=["all"], clock=Clock())
        self.assertIsNone(policy.checkClient("8.8.8.8"))
        self.assertIsNone(policy.checkClient("2001:db8::1"))

    def test_keywordsCombine(self):
        """
        C{loopback} plus a range: both are served, private ranges are not.
        """
        policy = AccessPolicy(allow=["loopback", "198.51.100.0/24"], clock=Clock())
        self.assertIsNone(policy.checkClient("::1"))
        self.assertIsNone(policy.checkClient("198.51.100.1"))
        self.assertIsInstance(policy.checkClient("10.0.0.1"), Forbidden)

    def test_unixSocketPeer(self):
        """
        A client without an IP address (a UNIX socket peer, C{-}) is on
        this machine: judged as 127.0.0.1.
        """
        self.assertIsNone(AccessPolicy(clock=Clock()).checkClient("-"))
        self.assertIsInstance(
            AccessPolicy(allow=["10.0.0.0/8"], clock=Clock()).checkClient("-"), Forbidden)

    def test_badEntries(self):
        """
        A bad range is refused with a message naming it; a range with host
        bits set suggests the network meant.
        """
        e = self.assertRaises(ValueError, parseNetworks, ["10.0.0.0/33"])
        self.assertIn("'10.0.0.0/33'", str(e))
        e = self.assertRaises(ValueError, parseNetworks, ["everyone"])
        self.assertIn("'everyone'", str(e))
        e = self.assertRaises(ValueError, parseNetworks, ["10.1.2.3/8"])
        self.assertIn("did you mean 10.0.0.0/8", str(e))
        self.assertRaises(ValueError, parseNetworks, [])
        self.assertRaises(ValueError, AccessPolicy, allow=["nonsense"], clock=Clock())


class AdminTests(SynchronousTestCase):
    """
    L{AccessPolicy.isAdmin}: C{--admin-allow}.
    """

    def test_defaultLoopback(self):
        """
        By default only loopback clients are admins, not private ones.
        """
        policy = AccessPolicy(clock=Clock())
        for host in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"]:
            self.assertTrue(policy.isAdmin(host), host)
        for host in ["10.0.0.1", "192.168.1.1", "203.0.113.9", "fe80::1"]:
            self.assertFalse(policy.isAdmin(host), host)

    def test_configured(self):
        """
        C{--admin-allow} replaces the default; C{none} allows nobody.
        """
        policy = AccessPolicy(adminAllow=["10.0.0.0/8"], clock=Clock())
        self.assertTrue(policy.isAdmin("10.9.9.9"))
        self.assertFalse(policy.isAdmin("127.0.0.1"))
        nobody = AccessPolicy(adminAllow=["none"], clock=Clock())
        self.assertFalse(nobody.isAdmin("127.0.0.1"))


def http(host: str, port: int = 80) -> Origin:
    return Origin(b"http", host, port)


class DestinationTests(SynchronousTestCase):
    """
    L{AccessPolicy.checkDestination}: C{--deny-dest}, C{--allow-dest}, the
    default refusal of internal destinations and loops.
    """

    LOCAL = ("10.0.0.5", 3128)
    REMOTE_CLIENT = "10.0.0.99"

    def test_internalRefusedForRemoteClients(self):
        """
        A client not on this machine may not reach loopback, unspecified or
        link-local destinations, in any literal form, nor C{localhost}.
        """
        policy = AccessPolicy(clock=Clock())
        for host in ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "0.0.0.0", "::",
                     "169.254.169.254", "fe80::1", "::ffff:127.0.0.1", "127.1",
                     "2130706433", "0x7f000001", "0177.0.0.1", "localhost",
                     "LOCALHOST.", "app.localhost", "ip6-localhost"]:
            refused = policy.checkDestination(self.REMOTE_CLIENT, http(host), self.LOCAL)
            self.assertIsInstance(refused, Forbidden, host)
            self.assertIn("internal address", refused.message)

    def test_publicAllowed(self):
        """
        Ordinary destinations are reached, names are not resolved.
        """
        policy = AccessPolicy(clock=Clock())
        for host in ["example.com", "93.184.216.34", "2001:db8::1", "10.0.0.7",
                     "localhost.example.com", "127.0.0.1.nip.io"]:
            self.assertIsNone(
                policy.checkDestination(self.REMOTE_CLIENT, http(host), self.LOCAL), host)

    def test_localClientMayReachInternal(self):
        """
        A client on this machine (loopback, a UNIX socket, or connecting
        from the address it connected to) may reach loopback destinations.
        """
        policy = AccessPolicy(clock=Clock())
        for client in ["127.0.0.1", "::1", "-", "10.0.0.5"]:
            self.assertIsNone(
                policy.checkDestination(client, http("127.0.0.1", 8080), self.LOCAL), client)
            self.assertIsNone(
                policy.checkDestination(client, http("localhost", 8080), self.LOCAL), client)

    def test_refusalIsLogged(self):
        """
        A refused destination gets a log line naming it and the client.
        """
        events = captureLog(self)
        policy = AccessPolicy(clock=Clock())
        policy.checkDestination(self.REMOTE_CLIENT, http("169.254.169.254"), self.LOCAL)
        [event] = events
        self.assertEqual(event["destination"], "169.254.169.254:80")
        self.assertEqual(event["client"], self.REMOTE_CLIENT)

    def test_allowDestLiftsDefault(self):
        """
        C{--allow-dest} lets remote clients reach the internal destinations
        it names, and only those.
        """
        policy = AccessPolicy(allowDest=["127.0.0.0/8", "dev.localhost"], clock=Clock())
        self.assertIsNone(policy.checkDestination(self.REMOTE_CLIENT, http("127.0.0.1"), self.LOCAL))
        self.assertIsNone(policy.checkDestination(self.REMOTE_CLIENT, http("dev.localhost"), self.LOCAL))
        self.assertIsInstance(
            policy.checkDestination(self.REMOTE_CLIENT, http("169.254.169.254"), self.LOCAL),
            Forbidden)
        self.assertIsInstance(
            policy.checkDestination(self.REMOTE_CLIENT, http("localhost"), self.LOCAL), Forbidden)

    def test_denyDest(self):
        """
        C{--deny-dest}: exact names, C{*.domain} (names under it only),
        C{.domain} (it and names under it), addresses and ranges; for every
        client, local ones included; case and a trailing dot do not matter.
        """
        policy = AccessPolicy(
            denyDest=["blocked.test", "*.ads.test", ".tracker.test, 192.0.2.0/24", "2001:db8::1"],
            clock=Clock())
        refused = ["blocked.test", "BLOCKED.TEST.", "x.ads.test", "a.b.ads.test",
                   "tracker.test", "www.tracker.test", "192.0.2.9", "::ffff:192.0.2.9",
                   "2001:db8::1", "[2001:db8::1]"]
        for host in refused:
            for client in ["127.0.0.1", self.REMOTE_CLIENT]:
                result = policy.checkDestination(client, http(host), self.LOCAL)
                self.assertIsInstance(result, Forbidden, (host, client))
                self.assertIn("refused destination", result.message)
        for host in ["ads.test", "notblocked.test", "blocked.test.example", "192.0.3.1",
                     "xtracker.test"]:
            self.assertIsNone(policy.checkDestination("127.0.0.1", http(host), self.LOCAL), host)

    def test_denyWinsOverAllow(self):
        """
        A destination both allowed and denied is denied.
        """
        policy = AccessPolicy(allowDest=["169.254.169.254"], denyDest=["169.254.0.0/16"],
                              clock=Clock())
        self.assertIsInstance(
            policy.checkDestination(self.REMOTE_CLIENT, http("169.254.169.254"), self.LOCAL),
            Forbidden)

    def test_loop(self):
        """
        The proxy's own listening address is refused to every client, even
        when C{--allow-dest} names it: the address it was reached on, a
        loopback or unspecified address or C{localhost} on that port.
        """
        policy = AccessPolicy(allowDest=["127.0.0.0/8", "localhost"], clock=Clock())
        for client in ["127.0.0.1", self.REMOTE_CLIENT]:
            for host in ["10.0.0.5", "127.0.0.1", "localhost", "0.0.0.0", "::1", "::ffff:10.0.0.5"]:
                refused = policy.checkDestination(client, http(host, 3128), self.LOCAL)
                self.assertIsInstance(refused, Forbidden, (client, host))
                self.assertIn("loop", refused.message)
        # Another port, or another host on that port, is not a loop.
        self.assertIsNone(policy.checkDestination("127.0.0.1", http("10.0.0.5", 3129), self.LOCAL))
        self.assertIsNone(policy.checkDestination("127.0.0.1", http("10.0.0.6", 3128), self.LOCAL))
        self.assertIsNone(policy.checkDestination("127.0.0.1", http("example.com", 3128), self.LOCAL))
        # Without a local address there is nothing to compare.
        self.assertIsNone(policy.checkDestination("127.0.0.1", http("127.0.0.1", 3128), None))

    def test_reverseUpstreamAllowed(self):
        """
        Reverse mode's configured upstream is reachable by remote clients
        even on loopback; C{--deny-dest} still applies.
        """
        upstream = http("127.0.0.1", 8080)
        policy = AccessPolicy(upstream=upstream, clock=Clock())
        self.assertIsNone(policy.checkDestination(self.REMOTE_CLIENT, upstream, self.LOCAL))
        self.assertIsInstance(
            policy.checkDestination(self.REMOTE_CLIENT, http("127.0.0.1", 8081), self.LOCAL),
            Forbidden)
        denied = AccessPolicy(upstream=upstream, denyDest=["127.0.0.1"], clock=Clock())
        self.assertIsInstance(
            denied.checkDestination(self.REMOTE_CLIENT, upstream, self.LOCAL), Forbidden)

    def test_badPatterns(self):
        """
        Bad patterns are refused with a message naming them.
        """
        for bad in ["ex@mple.com", "a.*.com", "*", "-bad.com", "10.0.0.1/33", "*.",
                    "1.2.3.4.5", "exämple.com", "http://example.com"]:
            e = self.assertRaises(ValueError, parseDestinations, [bad])
            self.assertIn(repr(bad), str(e))
        e = self.assertRaises(ValueError, parseDestinations, ["10.0.0.1/8"])
        self.assertIn("did you mean 10.0.0.0/8", str(e))
        self.assertFalse(parseDestinations([]))


class PasswordTests(SynchronousTestCase):
    """
    Password hashes: bcrypt through the bcrypt package, SHA crypt in pure
    Python, and the password file.
    """

    def test_shaCryptVectors(self):
        """
        L{shaCrypt} gives the results of Drepper's specification (and
        glibc's C{crypt}).
        """
        vectors = [
            (b"$5$saltstring", b"Hello world!",
             b"$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
            (b"$5$rounds=10000$saltstringsaltstring", b"Hello world!",
             b"$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA"),
            (b"$5$rounds=5000$toolongsaltstring", b"This is just a test",
             b"$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5"),
            (b"$6$saltstring", b"Hello world!",
             b"$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLi"
             b"BFdcbYEdFCoEOfaS35inz1"),
            (b"$6$rounds=10000$saltstringsaltstring", b"Hello world!",
             b"$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/Urj"
             b"mM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."),
        ]
        for setting, password, expected in vectors:
            self.assertEqual(shaCrypt(password, setting), expected)
            self.assertTrue(checkPassword(password, expected))
            self.assertFalse(checkPassword(password + b"!", expected))

    def test_bcrypt(self):
        """
        bcrypt hashes in their C{$2b$}, C{$2a$} and C{$2y$} (htpasswd -B)
        forms check; a password longer than 72 bytes is checked on its
        first 72 bytes, as bcrypt always did.
        """
        for prefix in (b"$2b$", b"$2a$", b"$2y$"):
            stored = bcryptHash(b"s3cret", prefix)
            self.assertTrue(stored.startswith(prefix))
            self.assertTrue(checkPassword(b"s3cret", stored))
            self.assertFalse(checkPassword(b"s3cret ", stored))
        long = b"x" * 72
        stored = bcryptHash(long)
        self.assertTrue(checkPassword(long + b"tail", stored))
        self.assertFalse(checkPassword(b"\x00", stored))

    def test_unknownSchemesNeverMatch(self):
        """
        Plain text and unsupported schemes never match.
        """
        self.assertFalse(checkPassword(b"plain", b"plain"))
        self.assertFalse(checkPassword(b"pw", b"$apr1$abc$def"))

    def test_readFile(self):
        """
        C{user:hash} lines are read; comments and blank lines skipped; the
        first line for a user counts.
        """
        first, second = bcryptHash(b"a"), bcryptHash(b"b")
        sha = shaCrypt(b"c", b"$6$salt")
        path = writeFile(self, b"# users\n\nalice:" + first + b"\r\nalice:" + second
                         + b"\n  bob:" + sha + b"  \n")
        self.assertEqual(readPasswordFile(path), {b"alice": first, b"bob": sha})

    def test_badFile(self):
        """
        At start-up a bad line is an error naming the file and line; on a
        reload it is skipped.
        """
        good = b"alice:" + bcryptHash(b"a") + b"\n"
        cases = [
            (b"bob:$apr1$xyz$abc\n", "$apr1$ hash scheme is not supported"),
            (b"bob:plaintext\n", "not supported"),
            (b"no colon here\n", "expected user:hash"),
            (b"bob:$6$rounds=900000$salt$" + b"a" * 86 + b"\n", "too slow"),
            (b"bob:$6$salt$short\n", "malformed"),
        ]
        for line, message in cases:
            path = writeFile(self, good + line)
            e = self.assertRaises(ValueError, readPasswordFile, path)
            self.assertIn(f"{path}:2: ", str(e))
            self.assertIn(message, str(e))
            self.assertEqual(list(readPasswordFile(path, strict=False)), [b"alice"])
        empty = writeFile(self, b"# nobody\n")
        e = self.assertRaises(ValueError, readPasswordFile, empty)
        self.assertIn("no user:hash line", str(e))


class AuthenticationTests(SynchronousTestCase):
    """
    L{AccessPolicy.authenticate}: C{--auth-file}.
    """

    def setUp(self):
        self.clock = Clock()
        self.path = writeFile(self, b"alice:" + bcryptHash(b"wonderland") + b"\n"
                              + b"bob:" + shaCrypt(b"builder", b"$5$pepper") + b"\n")
        self.policy = AccessPolicy(authFile=self.path, clock=self.clock)
        self.checks = []
        real = access.checkPassword

        def counting(password, stored):
            self.checks.append(password)
            return real(password, stored)

        self.patch(access, "checkPassword", counting)

    def test_noAuthFile(self):
        """
        Without C{--auth-file} nothing is asked.
        """
        self.assertIsNone(AccessPolicy(clock=self.clock).authenticate(Headers(), "10.0.0.1"))

    def test_missingCredentials(self):
        """
        No C{Proxy-Authorization}: 407 with C{Proxy-Authenticate: Basic}.
        """
        refused = self.policy.authenticate(Headers([(b"Host", b"x")]), "10.0.0.1")
        self.assertIsInstance(refused, ProxyAuthenticationRequired)
        self.assertEqual(refused.status, 407)
        self.assertEqual(refused.headers, [(b"Proxy-Authenticate", b'Basic realm="cachingproxy"')])

    def test_rightCredentials(self):
        """
        The right user and password, bcrypt or SHA crypt, pass; the scheme
        name is case-insensitive.
        """
        self.assertIsNone(self.policy.authenticate(basic(b"alice", b"wonderland"), "10.0.0.1"))
        self.assertIsNone(self.policy.authenticate(basic(b"bob", b"builder"), "10.0.0.1"))
        token = base64.b64encode(b"alice:wonderland")
        self.assertIsNone(self.policy.authenticate(
            Headers([(b"proxy-authorization", b"bAsIc  " + token)]), "10.0.0.1"))

    def test_wrongCredentials(self):
        """
        A wrong password, an unknown user, another scheme, bad base64 or no
        colon: 407.
        """
        for headers in [
            basic(b"alice", b"Wonderland"),
            basic(b"bob", b"wonderland"),
            basic(b"mallory", b"wonderland"),
            Headers([(b"Proxy-Authorization", b"Bearer abc")]),
            Headers([(b"Proxy-Authorization", b"Basic !!!notbase64")]),
            Headers([(b"Proxy-Authorization", b"Basic " + base64.b64encode(b"alice"))]),
        ]:
            refused = self.policy.authenticate(headers, "10.0.0.1")
            self.assertIsInstance(refused, ProxyAuthenticationRequired, headers)

    def test_successCached(self):
        """
        A successful check is remembered: the next request with the same
        credentials costs no hash check until the cache time is over; other
        credentials are checked.
        """
        headers = basic(b"alice", b"wonderland")
        self.assertIsNone(self.policy.authenticate(headers, "10.0.0.1"))
        self.assertEqual(len(self.checks), 1)
        for _ in range(5):
            self.assertIsNone(self.policy.authenticate(headers, "10.0.0.2"))
        self.assertEqual(len(self.checks), 1)
        self.assertIsInstance(
            self.policy.authenticate(basic(b"alice", b"wonderlan"), "10.0.0.1"),
            ProxyAuthenticationRequired)
        self.assertEqual(len(self.checks), 2)
        self.clock.advance(self.policy.cacheSeconds + 1)
        self.assertIsNone(self.policy.authenticate(headers, "10.0.0.1"))
        self.assertEqual(len(self.checks), 3)

    def test_fileReloaded(self):
        """
        The file is read again when it changes: a changed password takes
        effect at once, even for cached credentials, and a new user is
        known; a bad line in the new file is skipped.
        """
        self.assertIsNone(self.policy.authenticate(basic(b"alice", b"wonderland"), "10.0.0.1"))
        with open(self.path, "wb") as f:
            f.write(b"alice:" + bcryptHash(b"looking-glass") + b"\n"
                    + b"carol:" + shaCrypt(b"singer", b"$6$x") + b"\n"
                    + b"dave:$apr1$not$supported\n")
        stat = os.stat(self.path)
        os.utime(self.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        self.assertIsInstance(
            self.policy.authenticate(basic(b"alice", b"wonderland"), "10.0.0.1"),
            ProxyAuthenticationRequired)
        self.assertIsNone(self.policy.authenticate(basic(b"alice", b"looking-glass"), "10.0.0.1"))
        self.assertIsNone(self.policy.authenticate(basic(b"carol", b"singer"), "10.0.0.1"))
        self.assertIsInstance(
            self.policy.authenticate(basic(b"bob", b"builder"), "10.0.0.1"),
            ProxyAuthenticationRequired)

    def test_unreadableFileKeepsUsers(self):
        """
        A file that disappears keeps the users read before.
        """
        os.remove(self.path)
        self.assertIsNone(self.policy.authenticate(basic(b"bob", b"builder"), "10.0.0.1"))

    def test_rateLimited(self):
        """
        After 10 failures within 60 seconds that address gets 429, with
        C{Retry-After}, even with the right password, until the window is
        over; other addresses are not affected; an IPv6 client's whole /64
        counts as one.
        """
        for i in range(10):
            self.clock.advance(1)
            refused = self.policy.authenticate(basic(b"alice", b"guess%d" % i), "10.0.0.1")
            self.assertIsInstance(refused, ProxyAuthenticationRequired)
        checks = len(self.checks)
        locked = self.policy.authenticate(basic(b"alice", b"wonderland"), "10.0.0.1")
        self.assertIsInstance(locked, TooManyAttempts)
        self.assertEqual(locked.status, 429)
        self.assertEqual(locked.headers, [(b"Retry-After", b"51")])
        self.assertEqual(len(self.checks), checks, "no hash check while locked out")
        self.assertIsNone(self.policy.authenticate(basic(b"alice", b"wonderland"), "10.0.0.2"))
        self.clock.advance(50.5)
        self.assertIsInstance(
            self.policy.authenticate(basic(b"alice", b"wonderland"), "10.0.0.1"), TooManyAttempts)
        self.clock.advance(0.5)
        self.assertIsNone(self.policy.authenticate(basic(b"alice", b"wonderland"), "10.0.0.1"))

        for i in range(10):
            self.policy.authenticate(basic(b"alice", b"x"), "2001:db8:1:2::%x" % (i + 1))
        self.assertIsInstance(
            self.policy.authenticate(basic(b"alice", b"wonderland"), "2001:db8:1:2::ffff"),
            TooManyAttempts)
        self.assertIsNone(
            self.policy.authenticate(basic(b"alice", b"wonderland"), "2001:db8:1:3::1"))

    def test_slowFailuresNotLimited(self):
        """
        Failures spread over more than the window never lock an address
        out.
        """
        for i in range(30):
            self.clock.advance(7)
            self.assertIsInstance(
                self.policy.authenticate(basic(b"alice", b"nope"), "10.0.0.1"),
                ProxyAuthenticationRequired)

    def test_unknownUserCostsACheck(self):
        """
        An unknown user costs a hash check as a known one does, so timing
        does not tell which users exist.
        """
        self.policy.authenticate(basic(b"mallory", b"x"), "10.0.0.1")
        self.assertEqual(self.checks, [b"x"])


class ThreadedCheckTests(SynchronousTestCase):
    """
    L{AccessPolicy.authenticate} with password checks run off the reactor
    thread: each check a L{Deferred} the test fires.
    """

    def setUp(self):
        self.clock = Clock()
        self.path = writeFile(self, b"alice:" + shaCrypt(b"wonderland", b"$5$pepper") + b"\n")
        self.running = []

        def runInThread(f, *args):
            d = Deferred()
            self.running.append((d, f, args))
            return d

        self.policy = AccessPolicy(authFile=self.path, clock=self.clock,
                                   runInThread=runInThread)

    def finish(self, index=0):
        """
        Run the check under way at C{index} and fire its Deferred.
        """
        d, f, args = self.running.pop(index)
        d.callback(f(*args))

    def test_rightPasswordOnce(self):
        """
        A password is checked in a thread, the verdict arriving later; the
        same credentials arriving meanwhile wait for that one check, and a
        successful check is remembered: later requests are answered at once.
        """
        first = self.policy.authenticate(basic(b"alice", b"wonderland"), "10.0.0.1")
        second = self.policy.authenticate(basic(b"alice", b"wonderland"), "10.0.0.2")
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.assertEqual(len(self.running), 1)
        self.finish()
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(second))
        self.assertIsNone(self.policy.authenticate(basic(b"alice", b"wonderland"), "10.0.0.1"))
        self.assertEqual(self.running, [])

    def test_wrongPasswordEachTime(self):
        """
        A wrong password is checked again each time (in a thread), and
        each attempt counts as a failure.
        """
        for attempt in range(3):
            d = self.policy.authenticate(basic(b"alice", b"guess"), "10.0.0.1")
            self.assertEqual(len(self.running), 1)
            self.finish()
            self.assertIsInstance(self.successResultOf(d), ProxyAuthenticationRequired)
        self.assertEqual(self.policy._failures["10.0.0.1"][1], 3)

    def test_limitCountsChecksUnderWay(self):
        """
        Guesses under way count toward the failure limit: with 10 checks
        running, the 11th attempt waits for them and, once they all fail,
        gets 429 without a check of its own.
        """
        attempts = [self.policy.authenticate(basic(b"alice", b"guess%d" % i), "10.0.0.1")
                    for i in range(11)]
        self.assertEqual(len(self.running), 10)
        for d in attempts:
            self.assertNoResult(d)
        while self.running:
            self.finish()
        verdicts = [type(self.successResultOf(d)) for d in attempts]
        self.assertEqual(verdicts, [ProxyAuthenticationRequired] * 10 + [TooManyAttempts])

    def test_burstOfRightCredentials(self):
        """
        Many requests with the same new, right credentials (a browser
        opening a page) cost one check and are all served, however many
        arrive before it ends: they are not taken for guesses.
        """
        attempts = [self.policy.authenticate(basic(b"alice", b"wonderland"), "10.0.0.1")
                    for i in range(30)]
        self.assertEqual(len(self.running), 1)
        self.finish()
        self.assertEqual([self.successResultOf(d) for d in attempts], [None] * 30)
        self.assertEqual(self.running, [])

    def test_checkFailure(self):
        """
        A check that fails (an error in the thread) refuses the attempt
        and is logged.
        """
        d = self.policy.authenticate(basic(b"alice", b"wonderland"), "10.0.0.1")
        self.running.pop()[0].errback(RuntimeError("boom"))
        self.assertIsInstance(self.successResultOf(d), ProxyAuthenticationRequired)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class PendingVerdictTests(SynchronousTestCase):
    """
    A request waits, in a proxy connection, for a password check under way.
    """

    def setUp(self):
        from .test_server import ProxyHarness

        self.running = []

        def runInThread(f, *args):
            d = Deferred()
            self.running.append((d, f(*args)))
            return d

        path = writeFile(self, b"alice:" + shaCrypt(b"wonderland", b"$5$pepper") + b"\n")
        self.h = ProxyHarness()
        self.h.factory.access = AccessPolicy(authFile=path, clock=self.h.reactor,
                                             runInThread=runInThread)

    def request(self, password: bytes) -> bytes:
        credentials = base64.b64encode(b"alice:" + password)
        return (b"GET http://10.0.0.1/ HTTP/1.1\r\nHost: 10.0.0.1\r\n"
                b"Proxy-Authorization: Basic %s\r\n\r\n" % credentials)

    def finish(self):
        d, result = self.running.pop(0)
        d.callback(result)

    def test_forwardedOnceChecked(self):
        """
        Nothing goes upstream while the password is being checked; once it
        is right, the request is forwarded.
        """
        self.h.send(self.request(b"wonderland"))
        self.assertEqual(len(self.running), 1)
        self.assertEqual(self.h.reactor.tcpClients, [])
        self.assertEqual(self.h.received(), b"")
        self.finish()
        self.assertEqual(len(self.h.reactor.tcpClients), 1)

    def test_refusedOnceChecked(self):
        """
        A wrong password gets its 407 once checked, and nothing goes
        upstream.
        """
        self.h.send(self.request(b"guess"))
        self.assertEqual(self.h.received(), b"")
        self.finish()
        self.assertTrue(self.h.received().startswith(b"HTTP/1.1 407 "))
        self.assertEqual(self.h.reactor.tcpClients, [])

    def test_clientGoneBeforeVerdict(self):
        """
        A client that leaves while its password is checked is forgotten:
        the verdict arriving later sends nothing anywhere.
        """
        self.h.send(self.request(b"wonderland"))
        self.h.clientClosed()
        self.finish()
        self.assertEqual(self.h.reactor.tcpClients, [])
        self.assertEqual(self.h.received(), b"")


class ReactorThreadTests(TestCase):
    """
    With the reactor as clock, password checks run in its thread pool.
    """

    async def test_checkedOffTheReactorThread(self):
        """
        A bcrypt check runs in a thread of the reactor's pool, not in the
        reactor thread; the verdict comes back as a Deferred.
        """
        path = writeFile(self, b"alice:" + bcryptHash(b"wonderland") + b"\n")
        policy = AccessPolicy(authFile=path, clock=reactor)
        threads = []
        real = access.checkPassword

        def recording(password, stored):
            threads.append(threading.get_ident())
            return real(password, stored)

        self.patch(access, "checkPassword", recording)
        verdict = policy.authenticate(basic(b"alice", b"wonderland"), "10.0.0.1")
        self.assertIsInstance(verdict, Deferred)
        self.assertIsNone(await verdict)
        wrong = await policy.authenticate(basic(b"alice", b"guess"), "10.0.0.1")
        self.assertIsInstance(wrong, ProxyAuthenticationRequired)
        self.assertEqual(len(threads), 2)
        self.assertNotIn(threading.get_ident(), threads)


class ConfigTests(SynchronousTestCase):
    """
    The settings in L{cachingproxy.service.config}, validated at start-up, and
    L{AccessPolicy.fromConfig}.
    """

    def test_defaults(self):
        """
        By default: private clients, no destination lists, loopback
        admins, no authentication, and the request limits.
        """
        config = fromOptions({}, environ={})
        self.assertEqual(config.allow, ("private",))
        self.assertEqual((config.denyDest, config.allowDest), ((), ()))
        self.assertEqual(config.adminAllow, ("loopback",))
        self.assertIsNone(config.authFile)
        self.assertEqual(config.maxBodySize, 1024**3)
        self.assertEqual(config.maxHeaderFields, 100)
        self.assertEqual(config.bodyTimeout, 300.0)
        self.assertEqual(config.maxPipeline, 16)
        policy = AccessPolicy.fromConfig(config, Clock())
        self.assertIsInstance(policy.checkClient("8.8.8.8"), Forbidden)
        self.assertIsNone(policy.checkClient("192.168.0.10"))

    def test_sources(self):
        """
        Lists come from repeated options, comma-separated values and the
        environment (comma- or space-separated); the limits parse.
        """
        path = writeFile(self, b"alice:" + bcryptHash(b"a") + b"\n")
        config = fromOptions(
            {"allow": ("10.0.0.0/8,192.168.0.0/16", "::1"), "deny-dest": ("*.ads.test",),
             "max-body-size": "10M", "body-timeout": "2.5", "max-pipeline": "4"},
            environ={"CACHINGPROXY_ALLOW_DEST": "127.0.0.1, localhost",
                     "CACHINGPROXY_ADMIN_ALLOW": "10.1.0.0/16 ::1",
                     "CACHINGPROXY_AUTH_FILE": path,
                     "CACHINGPROXY_MAX_HEADER_FIELDS": "50"},
        )
        self.assertEqual(config.allow, ("10.0.0.0/8", "192.168.0.0/16", "::1"))
        self.assertEqual(config.denyDest, ("*.ads.test",))
        self.assertEqual(config.allowDest, ("127.0.0.1", "localhost"))
        self.assertEqual(config.adminAllow, ("10.1.0.0/16", "::1"))
        self.assertEqual(config.authFile, path)
        self.assertEqual((config.maxBodySize, config.bodyTimeout, config.maxPipeline,
                          config.maxHeaderFields), (10 * 1024**2, 2.5, 4, 50))
        policy = AccessPolicy.fromConfig(config, Clock())
        self.assertTrue(policy.isAdmin("10.1.2.3"))
        self.assertIsInstance(policy.authenticate(Headers(), "10.0.0.1"), ProxyAuthenticationRequired)

    def test_configFile(self):
        """
        The configuration file takes a string or an array.
        """
        toml = writeFile(self, b'allow = "10.0.0.0/8, 127.0.0.1"\ndeny-dest = ["a.test", "10.9.0.0/16"]\n'
                         b"allow-dest = []\n", "proxy.toml")
        config = fromOptions({"config": toml}, environ={})
        self.assertEqual(config.allow, ("10.0.0.0/8", "127.0.0.1"))
        self.assertEqual(config.denyDest, ("a.test", "10.9.0.0/16"))
        self.assertEqual(config.allowDest, ())

    def test_errors(self):
        """
        A bad range, pattern or password file stops start-up with one line
        naming the setting and where it came from.
        """
        bad = writeFile(self, b"alice:$apr1$x$y\n")
        cases = [
            ({"allow": ("10.0.0.0/33",)}, {}, "--allow: '10.0.0.0/33' is not an address range"),
            ({"allow": ("",)}, {}, "--allow: expected address ranges"),
            ({}, {"CACHINGPROXY_ADMIN_ALLOW": "10.1.2.3/8"},
             "CACHINGPROXY_ADMIN_ALLOW (environment): '10.1.2.3/8' has host bits set"),
            ({"deny-dest": ("a.*.test",)}, {}, "--deny-dest: 'a.*.test' is not a host name"),
            ({"allow-dest": ("ok.test, bad!.test",)}, {},
             "--allow-dest: 'bad!.test' is not a host name"),
            ({"auth-file": "/nonexistent/htpasswd"}, {}, "--auth-file: no such file"),
            ({"auth-file": bad}, {}, f"--auth-file: {bad}:1: the $apr1$ hash scheme"),
            ({"auth-file": bad, "upstream": "http://127.0.0.1:8080"}, {},
             "--auth-file: proxy authentication is for forward mode"),
            ({"max-pipeline": "0"}, {}, "--max-pipeline: must be greater than 0"),
            ({"max-body-size": "lots"}, {}, "--max-body-size: expected a size"),
        ]
        for given, environ, message in cases:
            e = self.assertRaises(usage.UsageError, fromOptions, given, environ)
            self.assertTrue(str(e).startswith(message), (str(e), message))
            self.assertNotIn("\n", str(e))

    def test_fromConfigReverseUpstream(self):
        """
        In reverse mode the configured upstream is reachable even on
        loopback by clients not on this machine.
        """
        config = fromOptions({"upstream": "http://127.0.0.1:8080"}, environ={})
        policy = AccessPolicy.fromConfig(config, Clock())
        self.assertIsNone(policy.checkDestination(
            "10.0.0.99", Origin(b"http", "127.0.0.1", 8080), ("10.0.0.5", 3128)))
        self.assertIsInstance(policy.checkDestination(
            "10.0.0.99", Origin(b"http", "127.0.0.1", 22), ("10.0.0.5", 3128)), Forbidden)


# -- through a real proxy --------------------------------------------------------


async def connectFrom(testCase, port: int, bindHost: str) -> RawClient:
    """
    Connect a L{RawClient} to 127.0.0.1:C{port} from C{bindHost} (another
    loopback address); the test's cleanup closes it.
    """
    client = RawClient()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(bindHost, 0))
    await connectProtocol(endpoint, client)

    def cleanup():
        if client.transport is not None and not client.closed.called:
            client.transport.abortConnection()
            return client.closed

    testCase.addCleanup(cleanup)
    return client


async def exchangeFrom(testCase, port: int, bindHost: str, data: bytes):
    client = await connectFrom(testCase, port, bindHost)
    client.transport.write(data)
    [response] = await client.waitFor(1)
    return response


def seenAs(factory, clientHost: str) -> None:
    """
    Make the proxy see every client as C{clientHost}: a stand-in for a
    client on another machine, which loopback tests cannot have.
    """
    build = factory.buildProtocol

    def buildProtocol(addr):
        protocol = build(addr)
        made = protocol.connectionMade

        def connectionMade():
            made()
            protocol.clientHost = clientHost

        protocol.connectionMade = connectionMade
        return protocol

    factory.buildProtocol = buildProtocol


class LoopbackTests(TestCase):
    """
    The policy in a real proxy on loopback sockets.
    """

    def setUpProxy(self, policy=None, **settings):
        self.origin, self.originPort = listenOrigin(self)
        settings.setdefault("viaName", b"test-proxy")
        self.factory, self.port, self.lines = startProxy(self, ProxySettings(**settings))
        self.factory.access = policy if policy is not None else AccessPolicy(clock=reactor)
        self.factory.admin = AdminPages(self.factory, "w1")

    def get(self, path: bytes, headers: bytes = b"", host: str = "127.0.0.1", port=None) -> bytes:
        port = self.originPort if port is None else port
        return b"GET http://%s:%d%s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n" % (
            host.encode(), port, path, host.encode(), port, headers)

    async def test_clientNotAllowed(self):
        """
        With C{--allow 127.0.0.1/32} a client connecting from 127.0.0.2 gets
        403 and never reaches the origin; one from 127.0.0.1 is served.
        """
        self.setUpProxy(AccessPolicy(allow=["127.0.0.1/32"], clock=reactor))
        events = captureLog(self)
        refused = await exchangeFrom(self, self.port, "127.0.0.2", self.get(b"/size/10"))
        self.assertEqual(refused.status, 403)
        self.assertIn(b"does not serve 127.0.0.2", refused.body)
        self.assertEqual(self.origin.requests, [])
        self.assertTrue(any(e.get("client") == "127.0.0.2" for e in events))

        served = await exchangeFrom(self, self.port, "127.0.0.1", self.get(b"/size/10"))
        self.assertEqual(served.status, 200)
        self.assertEqual(len(self.origin.requests), 1)

    async def test_defaultServesLoopback(self):
        """
        The default policy serves loopback clients (127.0.0.2 too).
        """
        self.setUpProxy()
        response = await exchangeFrom(self, self.port, "127.0.0.2", self.get(b"/size/10"))
        self.assertEqual(response.status, 200)

    async def test_connectPortStillEnforced(self):
        """
        With the policy on, CONNECT to port 22 is still refused (403,
        C{connectPorts}), and CONNECT to the proxy's own port is refused as
        a loop even where C{connectPorts} allows it.
        """
        self.setUpProxy()
        _, [response] = await exchange(
            self.port, self, b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n")
        self.assertEqual(response.status, 403)
        self.assertIn(b"port 22", response.body)

        self.factory.settings = ProxySettings(viaName=b"test-proxy",
                                              connectPorts=frozenset([self.port]))
        _, [response] = await exchange(
            self.port, self,
            b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (self.port, self.port))
        self.assertEqual(response.status, 403)
        self.assertIn(b"loop", response.body)

    async def test_adminRefused(self):
        """
        With C{--admin-allow 127.0.0.1/32} the health endpoint answers 403
        to a client from 127.0.0.2 and 200 to one from 127.0.0.1.
        """
        self.setUpProxy(AccessPolicy(adminAllow=["127.0.0.1/32"], clock=reactor))
        request = b"GET /_cachingproxy/health HTTP/1.1\r\nHost: x\r\n\r\n"
        refused = await exchangeFrom(self, self.port, "127.0.0.2", request)
        self.assertEqual(refused.status, 403)
        served = await exchangeFrom(self, self.port, "127.0.0.1", request)
        self.assertEqual(served.status, 200)
        self.assertEqual(json.loads(served.body)["status"], "ok")

    async def test_ownPortRefused(self):
        """
        A request for the proxy's own listening address is refused as a
        loop (403), by address and by C{localhost}.
        """
        self.setUpProxy()
        for host in ("127.0.0.1", "localhost"):
            _, [response] = await exchange(
                self.port, self, self.get(b"/size/10", host=host, port=self.port))
            self.assertEqual(response.status, 403)
            self.assertIn(b"a loop", response.body)
        self.assertEqual(self.origin.requests, [])

    async def test_loopbackDestination(self):
        """
        A loopback origin is reached by a local client, and refused (403) to
        a client on another machine; C{--allow-dest} lets it through.
        """
        self.setUpProxy()
        _, [local] = await exchange(self.port, self, self.get(b"/size/10"))
        self.assertEqual(local.status, 200)
        self.assertEqual(len(self.origin.requests), 1)

        self.factory.access = AccessPolicy(allow=["all"], clock=reactor)
        seenAs(self.factory, "203.0.113.9")
        _, [remote] = await exchange(self.port, self, self.get(b"/size/10"))
        self.assertEqual(remote.status, 403)
        self.assertIn(b"internal address", remote.body)
        self.assertEqual(len(self.origin.requests), 1)

        self.factory.access = AccessPolicy(allow=["all"], allowDest=["127.0.0.1"], clock=reactor)
        _, [allowed] = await exchange(self.port, self, self.get(b"/size/10"))
        self.assertEqual(allowed.status, 200)
        self.assertEqual(len(self.origin.requests), 2)

    async def test_remoteClientNotInAllow(self):
        """
        Through the proxy, a client from a public address is refused by the
        default policy.
        """
        self.setUpProxy()
        seenAs(self.factory, "203.0.113.9")
        _, [response] = await exchange(self.port, self, self.get(b"/size/10"))
        self.assertEqual(response.status, 403)
        self.assertEqual(self.origin.requests, [])

    async def test_proxyAuthentication(self):
        """
        With C{--auth-file}: no credentials get 407 with
        C{Proxy-Authenticate}; the right ones are served and the origin
        never sees C{Proxy-Authorization}; the admin endpoints need none;
        after 10 wrong passwords the client gets 429.
        """
        path = writeFile(self, b"alice:" + bcryptHash(b"wonderland", b"$2y$") + b"\n")
        self.setUpProxy(AccessPolicy(authFile=path, clock=reactor))

        _, [challenge] = await exchange(self.port, self, self.get(b"/headers"))
        self.assertEqual(challenge.status, 407)
        self.assertEqual(challenge.header(b"proxy-authenticate"), b'Basic realm="cachingproxy"')
        self.assertEqual(self.origin.requests, [])

        credentials = b"Proxy-Authorization: Basic %s\r\n" % base64.b64encode(b"alice:wonderland")
        client, [first, second] = await exchange(
            self.port, self, self.get(b"/headers", credentials) * 2, count=2)
        self.assertEqual((first.status, second.status), (200, 200))
        self.assertEqual(len(self.origin.requests), 2)
        for request in self.origin.requests:
            names = [name.lower() for name, _ in request["headers"]]
            self.assertNotIn(b"proxy-authorization", names)
        echoed = [name.lower() for name, _ in json.loads(first.body)]
        self.assertIn("host", echoed)
        self.assertNotIn("proxy-authorization", echoed)

        _, [health] = await exchange(
            self.port, self, b"GET /_cachingproxy/health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(health.status, 200)

        wrong = b"Proxy-Authorization: Basic %s\r\n" % base64.b64encode(b"alice:guess")
        _, responses = await exchange(
            self.port, self, self.get(b"/headers", wrong) * 11, count=11)
        self.assertEqual([r.status for r in responses], [407] * 10 + [429])
        self.assertIsNotNone(responses[-1].header(b"retry-after"))
        _, [locked] = await exchange(self.port, self, self.get(b"/headers", credentials))
        self.assertEqual(locked.status, 429)
        self.assertEqual(len(self.origin.requests), 2)

    async def test_ownEndpointsAbsoluteForm(self):
        """
        A browser sending even loopback traffic through its proxy asks for
        the status page in absolute form, naming the proxy itself (by
        address or as C{localhost}): that is answered as the proxy's own
        endpoints, by the same admin rule and without proxy credentials, and
        so are its landing page and redirect; any other path at the
        proxy's address is still a loop (403), and
        C{/_cachingproxy/} at another port goes to that origin.
        """
        path = writeFile(self, b"alice:" + bcryptHash(b"wonderland", b"$2y$") + b"\n")
        self.setUpProxy(AccessPolicy(adminAllow=["127.0.0.1/32"], authFile=path, clock=reactor))
        for host in ("127.0.0.1", "localhost", "LOCALHOST."):
            _, [health] = await exchange(
                self.port, self, self.get(b"/_cachingproxy/health", host=host, port=self.port))
            self.assertEqual(health.status, 200, health.body)
            self.assertEqual(json.loads(health.body)["worker"], "w1")
        _, [page] = await exchange(
            self.port, self, self.get(b"/_cachingproxy/", port=self.port))
        self.assertEqual(page.status, 200)
        self.assertEqual(page.header(b"content-type"), b"text/html; charset=utf-8")
        self.assertIn(b"status.json", page.body)

        refused = await exchangeFrom(
            self, self.port, "127.0.0.2", self.get(b"/_cachingproxy/health", port=self.port))
        self.assertEqual(refused.status, 403)
        self.assertIn(b"admin addresses only", refused.body)

        credentials = b"Proxy-Authorization: Basic %s\r\n" % base64.b64encode(b"alice:wonderland")
        for other in (b"/size/10", b"/x/_cachingproxy/health", b"/_cachingproxyx"):
            _, [loop] = await exchange(self.port, self, self.get(other, credentials, port=self.port))
            self.assertEqual(loop.status, 403, other)
        # The landing page and its redirect, asked for the same way.
        for landing, status in ((b"/", 200), (b"/_cachingproxy", 301)):
            _, [page] = await exchange(self.port, self, self.get(landing, credentials, port=self.port))
            self.assertEqual(page.status, status, landing)
            self.assertIn(b"a loop", loop.body)

        _, [forwarded] = await exchange(
            self.port, self, self.get(b"/_cachingproxy/health", credentials))
        self.assertEqual(forwarded.status, 404)
        self.assertEqual([r["path"] for r in self.origin.requests], [b"/_cachingproxy/health"])
