"""
The twistd plugin, its options and the environment, and the real
C{twistd -n cachingproxy} process.
"""

import json
import os
import signal
import socket
import sys

from twisted.application.service import IServiceMaker
from twisted.internet import reactor
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cachingproxy.service import tap
from cachingproxy.service.config import SETTINGS, fromOptions

from .helpers import (
    REPO,
    startTwistd,
    exchange,
    listenOrigin,
    pattern,
    temporaryPath,
    twistdOutcome,
)



class PluginTests(SynchronousTestCase):
    """
    twistd finds the plugin.
    """

    def test_discovered(self):
        """
        C{getPlugins(IServiceMaker)} yields a maker called cachingproxy that
        points at L{cachingproxy.service.tap}.
        """
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "cachingproxy"]
        self.assertTrue(makers)
        self.assertEqual(makers[0].module, "cachingproxy.service.tap")


class OptionsTests(SynchronousTestCase):
    """
    Options, the environment, and the service they build.
    """

    def parse(self, argv, environ=None):
        options = tap.Options()
        original = os.environ.copy()
        try:
            os.environ.clear()
            os.environ.update(environ or {})
            options.parseOptions(argv)
        finally:
            os.environ.clear()
            os.environ.update(original)
        return options.config

    def test_defaults(self):
        """
        With nothing given the proxy listens on tcp:3128 in forward mode,
        with a 10 second upstream timeout.
        """
        config = self.parse([])
        self.assertEqual(config.port, ("tcp:3128",))
        self.assertIsNone(config.upstream)
        self.assertEqual(config.upstreamTimeout, 10.0)
        self.assertEqual(config.connectPorts, frozenset([443]))

    def test_portNumberAndEndpoint(self):
        """
        A bare port number becomes a tcp: endpoint; endpoint strings pass
        through; --port repeats.
        """
        config = self.parse(["--port", "20000", "--port", "unix:/tmp/p.sock"])
        self.assertEqual(config.port, ("tcp:20000", "unix:/tmp/p.sock"))

    def test_upstream(self):
        """
        --upstream sets the reverse mode origin and path prefix.
        """
        config = self.parse(["--upstream", "https://example.com:8443/base/"])
        self.assertEqual(
            (config.upstreamScheme, config.upstreamHost, config.upstreamPort, config.upstreamPath),
            (b"https", "example.com", 8443, b"/base"),
        )

    def test_environment(self):
        """
        CACHINGPROXY_* variables and LISTEN_PORT are read; the command line
        wins over them.
        """
        config = self.parse(
            ["--connect-timeout", "3"],
            {
                "LISTEN_PORT": "3129",
                "CACHINGPROXY_UPSTREAM_TIMEOUT": "7.5",
                "CACHINGPROXY_CONNECT_TIMEOUT": "9",
                "CACHINGPROXY_X_FORWARDED_FOR": "yes",
            },
        )
        self.assertEqual(config.port, ("tcp:3129",))
        self.assertEqual(config.upstreamTimeout, 7.5)
        self.assertEqual(config.connectTimeout, 3.0)
        self.assertTrue(config.xForwardedFor)

    def test_badValues(self):
        """
        A bad value ends with a one-line error naming the option or the
        variable it came from.
        """
        cases = [
            (["--upstream-timeout", "soon"], {}, "--upstream-timeout"),
            (["--max-connections", "-1"], {}, "--max-connections"),
            (["--upstream", "ftp://x"], {}, "--upstream"),
            (["--port", "notaport"], {}, "--port"),
            (["--connect-ports", "443,http"], {}, "--connect-ports"),
            ([], {"CACHINGPROXY_IDLE_TIMEOUT": "x"}, "CACHINGPROXY_IDLE_TIMEOUT"),
            ([], {"CACHINGPROXY_FORWARDED": "maybe"}, "CACHINGPROXY_FORWARDED"),
            (["--ca-file", "/nonexistent/ca.pem"], {}, "--ca-file"),
        ]
        for argv, environ, name in cases:
            error = self.assertRaises(usage.UsageError, self.parse, argv, environ)
            self.assertIn(name, str(error))
            self.assertNotIn("\n", str(error))

    def test_makeService(self):
        """
        makeService builds one listening service per --port (beside the
        metrics service), not started.
        """
        from cachingproxy.ops.metrics import MetricsService

        options = tap.Options()
        options.parseOptions(["--port", "tcp:0", "--port", "tcp:0:interface=127.0.0.1",
                              "--no-access-log", "--no-cache"])
        service = tap.makeService(options)
        services = [s for s in service if isinstance(s, tap.ProxyService)]
        self.assertEqual(len([s for s in service if isinstance(s, MetricsService)]), 1)
        self.assertEqual([s.description for s in services], ["tcp:0", "tcp:0:interface=127.0.0.1"])
        self.assertIs(services[0].factory, services[1].factory)
        self.assertIsNone(services[0].factory.accessLog)
        self.assertFalse(service.running)

    def test_pollStepWhileServing(self):
        """
        Building the service leaves the reactor's poll step alone; the
        service gives the reactor the streamlined one
        (L{cachingproxy._twistedinternals.streamline}) while it runs, and
        Twisted's own back when it stops.
        """
        from twisted.internet.epollreactor import EPollReactor

        from .test_twistedinternals import closeReactor, pollSystem

        epoll = EPollReactor()
        self.addCleanup(closeReactor, epoll)
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        options = tap.Options()
        options.parseOptions(["--port", "tcp:0:interface=127.0.0.1", "--no-access-log",
                              "--no-cache", "--shutdown-grace", "0.01"])
        service = tap.makeService(options, epoll)
        self.assertEqual(pollSystem(epoll, ours, theirs), "TestReader")
        service.startService()
        self.assertEqual(pollSystem(epoll, ours, theirs), "-")
        service.stopService()
        self.assertEqual(pollSystem(epoll, ours, theirs), "TestReader")

    def test_poisoningSettings(self):
        """
        --trusted-proxies (repeatable, comma-separated, or from the
        environment) and --cache-set-cookie reach the proxy and its cache:
        the trusted client is decided by address, and the cache options
        allow storing Set-Cookie.
        """
        options = tap.Options()
        options.parseOptions(["--port", "tcp:0", "--no-access-log", "--cache-dir", "none",
                              "--cache-memory", "1M", "--trusted-proxies", "10.0.0.0/8,::1",
                              "--trusted-proxies", "192.0.2.7", "--cache-set-cookie"])
        self.assertEqual(options.config.trustedProxies, ("10.0.0.0/8", "::1", "192.0.2.7"))
        factory = tap.buildFactory(reactor, options.config)
        trusted = factory.settings.trustedProxies
        self.assertEqual([trusted.hasHost(h) for h in ("10.1.2.3", "::1", "192.0.2.7",
                                                       "192.0.2.8", "/run/socket")],
                         [True, True, True, False, False])
        self.assertTrue(factory.cache.settings.options.storeSetCookie)
        self.assertTrue(factory.keyFromHead)
        config = self.parse([], {"CACHINGPROXY_TRUSTED_PROXIES": "loopback"})
        self.assertEqual(config.trustedProxies, ("loopback",))
        self.assertFalse(config.cacheSetCookie)
        plain = tap.buildFactory(reactor, self.parse(["--no-cache"]))
        self.assertIsNone(plain.settings.trustedProxies)
        self.assertFalse(plain.keyFromHead)

    def test_badTrustedProxies(self):
        """
        A --trusted-proxies entry that is no address range is refused,
        naming the setting.
        """
        error = self.assertRaises(usage.UsageError, self.parse,
                                  ["--trusted-proxies", "proxy.example"])
        self.assertIn("--trusted-proxies", str(error))
        self.assertIn("proxy.example", str(error))

    def test_fromOptionsDirect(self):
        """
        L{fromOptions} takes values already parsed (as the TOML file and
        tests do) with the same validation.
        """
        config = fromOptions({"max-header-size": "1024"}, {})
        self.assertEqual(config.maxHeaderSize, 1024)


class AccessLogFileTests(SynchronousTestCase):
    """
    The access log file.
    """

    def test_appendsLines(self):
        """
        Each call appends one line, kept across reopening the file.
        """
        path = temporaryPath(self)
        log = tap.AccessLogFile(path)
        log("first")
        log.close()
        log = tap.AccessLogFile(path)
        log("second")
        log.close()
        with open(path) as f:
            self.assertEqual(f.read(), "first\nsecond\n")


class TwistdTests(TestCase):
    """
    C{twistd -n cachingproxy} as an operator runs it.
    """

    timeout = 60

    def runTwistd(self, *args):
        return startTwistd(self, *args)

    async def test_forwardAndReverse(self):
        """
        The twistd process forwards an absolute-form GET in forward mode,
        and an origin-form GET with --upstream; it logs an access line and
        shuts down cleanly on SIGTERM.
        """
        origin, originPort = listenOrigin(self)
        process, transport, port = await self.runTwistd()
        _, [response] = await exchange(
            port, self, b"GET http://127.0.0.1:%d/size/100 HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        )
        self.assertEqual(response.body, pattern(100))

        reverse, reverseTransport, reversePort = await self.runTwistd(
            "--upstream", "http://127.0.0.1:%d" % originPort
        )
        _, [response] = await exchange(
            reversePort, self, b"GET /size/200 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        self.assertEqual(response.body, pattern(200))
        await reverse.waitForOutput(b'"GET /size/200 HTTP/1.1" 200 200')

        transport.signalProcess(signal.SIGTERM)
        code = await process.ended
        # twistd shuts down cleanly, then ends by the signal that stopped
        # it (so supervisors see why it ended).
        self.assertEqual(code, -signal.SIGTERM, process.output.decode(errors="replace"))
        self.assertIn(b"Server Shut Down.", process.output)

    async def test_refreshRule(self):
        """
        RFC 9111 section 4.2.2: C{--refresh-rule} reaches the cache of the
        twistd process: a response with no freshness and no validator,
        fetched twice the way apt fetches a package, comes from the origin
        once.
        """
        origin, originPort = listenOrigin(self)
        process, transport, port = await self.runTwistd(
            "--upstream", "http://127.0.0.1:%d" % originPort, "--cache-memory", "1M",
            "--refresh-rule", r"^http://127\.0\.0\.1:\d+/size/ 1d 0 30d",
        )
        request = (b"GET /size/300 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                   b"User-Agent: Debian APT-HTTP/1.3 (2.6.1)\r\n\r\n" % port)
        _, [first] = await exchange(port, self, request)
        _, [second] = await exchange(port, self, request)
        self.assertEqual((first.header(b"x-cache"), second.header(b"x-cache")), (b"MISS", b"HIT"))
        self.assertEqual(second.body, pattern(300))
        self.assertEqual(len(origin.requests), 1)

    async def test_badOption(self):
        """
        A bad option value ends twistd with the option named, without a
        traceback.
        """
        code, output, _ = await twistdOutcome("-n", "--pidfile=", "cachingproxy",
                                              "--upstream-timeout", "soon")
        self.assertNotEqual(code, 0)
        self.assertIn("--upstream-timeout: expected a number", output)
        self.assertNotIn("Traceback", output)

    async def test_everyOptionRecognised(self):
        """
        twistd takes every setting of L{SETTINGS} as an option: all of them
        at once, set to their examples, are accepted up to C{--help}.
        """
        argv = []
        for setting in SETTINGS:
            if setting.kind == "flag":
                argv.append(f"--{setting.name}")
            elif setting.kind == "list":
                for item in setting.example:
                    argv += [f"--{setting.name}", item]
            else:
                argv.append(f"--{setting.name}={setting.example}")
        code, output, _ = await twistdOutcome("-n", "--pidfile=", "cachingproxy", *argv, "--help")
        self.assertEqual(code, 0, output)
        self.assertTrue(output.startswith("Usage: twistd [options] cachingproxy [options]"), output)

    async def test_headerRulesFromCommandLine(self):
        """
        The six header rule options work on twistd's command line: what
        reaches the origin and what reaches the client is changed by them.
        """
        origin, originPort = listenOrigin(self)
        process, transport, port = await self.runTwistd(
            "--add-request-header", "X-Tenant: a",
            "--add-request-header", "X-Tenant: b",
            "--set-request-header", "User-Agent: cachingproxy",
            "--remove-request-header", "Cookie",
            "--add-response-header", "X-Served-By: edge1",
            "--set-response-header", "Server: cachingproxy",
            "--remove-response-header", "Content-Type",
        )
        _, [response] = await exchange(
            port, self,
            b"GET http://127.0.0.1:%d/headers HTTP/1.1\r\nHost: x\r\n"
            b"User-Agent: curl\r\nCookie: a=1\r\n\r\n" % originPort)
        received = [(k.lower(), v) for k, v in json.loads(response.body)]
        self.assertEqual([v for k, v in received if k == "x-tenant"], ["a", "b"])
        self.assertEqual([v for k, v in received if k == "user-agent"], ["cachingproxy"])
        self.assertNotIn("cookie", [k for k, v in received])
        self.assertEqual([v for k, v in response.headers if k == b"x-served-by"], [b"edge1"])
        self.assertEqual([v for k, v in response.headers if k == b"server"], [b"cachingproxy"])
        self.assertNotIn(b"content-type", response.headerNames())


class StartupErrorTests(TestCase):
    """
    A start-up that cannot succeed ends twistd with one line on standard
    error, a non-zero status and no pid file left behind.
    """

    timeout = 30

    def busyPort(self):
        """
        @return: the number of a loopback port something else listens on.
        """
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        return busy.getsockname()[1]

    async def assertFailsToListen(self, *options):
        """
        twistd in a fresh folder, with its default pid file, on a busy port
        and C{options}: exit status 1, one line, no pid file.
        """
        folder = os.path.dirname(temporaryPath(self))
        description = "tcp:%d:interface=127.0.0.1" % self.busyPort()
        code, output, errors = await twistdOutcome(
            "-n", "cachingproxy", "--port", description, "--cache-dir", "none", *options,
            path=folder)
        self.assertEqual(
            errors, f"cachingproxy: cannot listen on {description}: address already in use\n",
            output)
        self.assertEqual(code, 1, output)
        self.assertNotIn("Traceback", output)
        self.assertEqual(os.listdir(folder), [])

    async def test_busyPort(self):
        """
        In one process, a port already in use ends twistd (it used to go on
        listening on nothing).
        """
        await self.assertFailsToListen()

    async def test_busyPortWorkers(self):
        """
        With workers, a port already in use ends the parent before any
        worker starts, and its pid file is removed.
        """
        await self.assertFailsToListen("--workers", "2")

    async def test_unknownOption(self):
        """
        An unknown option is one line pointing to --help, with a suggestion
        when it is close to a real one, and exit status 2.
        """
        code, output, errors = await twistdOutcome(
            "-n", "--pidfile=", "cachingproxy", "--add-respons-header", "X-A: 1")
        self.assertEqual(
            errors,
            "cachingproxy: option --add-respons-header not recognized (did you mean "
            "--add-response-header? twistd cachingproxy --help lists the options)\n")
        self.assertEqual(code, 2, output)
        self.assertNotIn("Usage:", output)

    async def test_portOutOfRange(self):
        """
        A port number above 65535, bare or in an endpoint string, is one
        line and exit status 2.
        """
        for port in ("99999", "tcp:99999:interface=127.0.0.1"):
            code, output, errors = await twistdOutcome(
                "-n", "--pidfile=", "cachingproxy", "--port", port)
            self.assertEqual(errors,
                             "cachingproxy: --port: port 99999 is out of range (0 to 65535)\n")
            self.assertEqual(code, 2, output)

    async def test_systemdWithoutSocket(self):
        """
        A systemd: port when systemd passed no socket is one line saying so
        and exit status 2, not an IndexError.
        """
        code, output, errors = await twistdOutcome(
            "-n", "--pidfile=", "cachingproxy", "--cache-dir", "none",
            "--port", "systemd:domain=INET:index=0",
            env={"LISTEN_FDS": None, "LISTEN_PID": None, "LISTEN_FDNAMES": None})
        self.assertEqual(
            errors,
            "cachingproxy: --port systemd:domain=INET:index=0: systemd passed no listening "
            "socket (LISTEN_FDS is not set): start it through its .socket unit, or give a "
            "port such as --port 3128\n")
        self.assertEqual(code, 2, output)
        self.assertNotIn("IndexError", output)


class MainTests(SynchronousTestCase):
    """
    C{python -m cachingproxy}.
    """

    def test_withoutTwisted(self):
        """
        Run from the checkout's root by a Python without Twisted (simulated
        with C{-S}: no site-packages), it says in one line what to do
        instead of failing on C{twisted.scripts}, which the checkout's
        C{twisted/plugins} folder hides.
        """
        import subprocess

        result = subprocess.run([sys.executable, "-S", "-m", "cachingproxy", "--help"],
                                cwd=REPO, capture_output=True, text=True, timeout=60,
                                env=dict(os.environ, PYTHONPATH=""))
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(
            result.stderr,
            f"cachingproxy: Twisted is not installed for {sys.executable}: run ./run-proxy, "
            "which installs the project into .venv, or use .venv/bin/python -m cachingproxy\n")
        self.assertEqual(result.stdout, "")
