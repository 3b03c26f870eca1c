"""
The configuration: command line > environment > TOML file > defaults, the
aliases, the file's errors (each one line, naming the file and line), the
exit on a configuration error, and the settings table.
"""

import dataclasses
import io
import json
import os
import re
import sys
from contextlib import redirect_stderr

from twisted.internet import reactor
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cachingproxy.cache import policy
from cachingproxy.cache.layer import CacheSettings
from cachingproxy.proxy.settings import ProxySettings
from cachingproxy.proxy.upstream import UpstreamSettings
from cachingproxy.service import tap
from cachingproxy.service.config import (
    _BY_NAME,
    SETTINGS,
    Config,
    exitOnConfigError,
    fromOptions,
    parseDuration,
    settingsFor,
    settingsTable,
)

from .helpers import temporaryPath
from .helpers import REPO, TWISTD, Twistd as _Twistd


def writeConfig(testCase, text, name="cachingproxy.toml"):
    """
    @return: the path of a fresh file holding C{text}.
    """
    path = temporaryPath(testCase, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


class PrecedenceTests(SynchronousTestCase):
    """
    Each source wins over the ones below it: command line, environment,
    file, defaults.
    """

    def test_fileOverDefault(self):
        """
        A value in the file replaces the default; what the file does not
        set keeps its default.
        """
        path = writeConfig(self, "upstream-timeout = 5\n")
        result = fromOptions({"config": path}, {})
        self.assertEqual(result.upstreamTimeout, 5.0)
        self.assertEqual(result.connectTimeout, 10.0)
        self.assertEqual(result.configFile, path)

    def test_environmentOverFile(self):
        """
        A CACHINGPROXY_* variable wins over the file.
        """
        path = writeConfig(self, "upstream-timeout = 5\nidle-timeout = 7\n")
        result = fromOptions({"config": path}, {"CACHINGPROXY_UPSTREAM_TIMEOUT": "6"})
        self.assertEqual(result.upstreamTimeout, 6.0)
        self.assertEqual(result.idleTimeout, 7.0)

    def test_commandLineOverFile(self):
        """
        A command-line value wins over the file.
        """
        path = writeConfig(self, 'port = "3129"\nmin-uses = 3\n')
        result = fromOptions({"config": path, "port": ("4000",)}, {})
        self.assertEqual(result.port, ("tcp:4000",))
        self.assertEqual(result.minUses, 3)

    def test_commandLineOverEnvironment(self):
        """
        A command-line value wins over the environment, which wins over the
        file, for one setting given by all three.
        """
        path = writeConfig(self, "connect-timeout = 1\n")
        environ = {"CACHINGPROXY_CONNECT_TIMEOUT": "2"}
        self.assertEqual(fromOptions({"config": path}, environ).connectTimeout, 2.0)
        result = fromOptions({"config": path, "connect-timeout": "3"}, environ)
        self.assertEqual(result.connectTimeout, 3.0)

    def test_environmentOverDefault(self):
        """
        Without a file, the environment replaces the default.
        """
        result = fromOptions({}, {"CACHINGPROXY_HEADER_TIMEOUT": "4"})
        self.assertEqual(result.headerTimeout, 4.0)
        self.assertIsNone(result.configFile)

    def test_environmentFlagOverFile(self):
        """
        A flag set in the file can be turned off by the environment.
        """
        path = writeConfig(self, "x-forwarded-for = true\nforwarded = true\n")
        result = fromOptions({"config": path}, {"CACHINGPROXY_X_FORWARDED_FOR": "0"})
        self.assertFalse(result.xForwardedFor)
        self.assertTrue(result.forwarded)

    def test_fileNamedByEnvironment(self):
        """
        CACHINGPROXY_CONFIG names the file when --config does not; --config
        wins over it; the C{configFile} argument is the last resort.
        """
        fromEnv = writeConfig(self, "min-uses = 2\n")
        fromCli = writeConfig(self, "min-uses = 3\n")
        fallback = writeConfig(self, "min-uses = 4\n")
        environ = {"CACHINGPROXY_CONFIG": fromEnv}
        self.assertEqual(fromOptions({}, environ, fallback).minUses, 2)
        self.assertEqual(fromOptions({"config": fromCli}, environ, fallback).minUses, 3)
        self.assertEqual(fromOptions({}, {}, fallback).minUses, 4)
        self.assertEqual(fromOptions({}, {}).minUses, 1)

    def test_throughOptions(self):
        """
        C{twistd cachingproxy --config FILE} reads the file through
        L{tap.Options}, and the command line still wins over it.
        """
        path = writeConfig(self, "upstream-timeout = 5\nconnect-timeout = 4\n")
        options = tap.Options()
        original = os.environ.copy()
        try:
            os.environ.clear()
            options.parseOptions(["--config", path, "--connect-timeout", "2"])
        finally:
            os.environ.clear()
            os.environ.update(original)
        self.assertEqual(options.config.upstreamTimeout, 5.0)
        self.assertEqual(options.config.connectTimeout, 2.0)


class AliasTests(SynchronousTestCase):
    """
    LISTEN_PORT and NUM_WORKERS, and the workers setting.
    """

    def test_listenPort(self):
        """
        LISTEN_PORT sets the port, over the file; CACHINGPROXY_PORT wins
        over LISTEN_PORT.
        """
        path = writeConfig(self, 'port = ["tcp:1"]\n')
        result = fromOptions({"config": path}, {"LISTEN_PORT": "3129"})
        self.assertEqual(result.port, ("tcp:3129",))
        result = fromOptions({}, {"LISTEN_PORT": "3129", "CACHINGPROXY_PORT": "3130"})
        self.assertEqual(result.port, ("tcp:3130",))

    def test_numWorkers(self):
        """
        NUM_WORKERS sets the workers, over the file; CACHINGPROXY_WORKERS
        wins over NUM_WORKERS; the command line over both.
        """
        path = writeConfig(self, "workers = 2\n")
        self.assertEqual(fromOptions({"config": path}, {}).workers, 2)
        self.assertEqual(fromOptions({"config": path}, {"NUM_WORKERS": "3"}).workers, 3)
        environ = {"NUM_WORKERS": "3", "CACHINGPROXY_WORKERS": "4"}
        self.assertEqual(fromOptions({}, environ).workers, 4)
        self.assertEqual(fromOptions({"workers": "5"}, environ).workers, 5)

    def test_workersDefault(self):
        """
        One worker by default.
        """
        self.assertEqual(fromOptions({}, {}).workers, 1)

    def test_workersAuto(self):
        """
        C{workers = "auto"} (any case, from any source) is one per CPU.
        """
        path = writeConfig(self, 'workers = "auto"\n')
        expected = os.cpu_count() or 1
        self.assertEqual(fromOptions({"config": path}, {}).workers, expected)
        self.assertEqual(fromOptions({}, {"NUM_WORKERS": "AUTO"}).workers, expected)
        self.assertEqual(fromOptions({"workers": "auto"}, {}).workers, expected)

    def test_workersInvalid(self):
        """
        Zero, negative or non-numeric workers are refused, naming the source.
        """
        for given, environ, name in [
            ({"workers": "0"}, {}, "--workers"),
            ({"workers": "many"}, {}, "--workers"),
            ({}, {"NUM_WORKERS": "-2"}, "NUM_WORKERS (environment)"),
        ]:
            error = self.assertRaises(usage.UsageError, fromOptions, given, environ)
            self.assertTrue(str(error).startswith(name + ": "), str(error))
            self.assertIn("'auto'", str(error))

    def test_shutdownGrace(self):
        """
        shutdown-grace is 10 seconds by default and takes fractions.
        """
        self.assertEqual(fromOptions({}, {}).shutdownGrace, 10.0)
        path = writeConfig(self, "shutdown-grace = 2.5\n")
        self.assertEqual(fromOptions({"config": path}, {}).shutdownGrace, 2.5)
        self.assertEqual(
            fromOptions({}, {"CACHINGPROXY_SHUTDOWN_GRACE": "30"}).shutdownGrace, 30.0
        )


class FileValueTests(SynchronousTestCase):
    """
    The shapes of values the file accepts.
    """

    def load(self, text):
        return fromOptions({"config": writeConfig(self, text)}, {})

    def test_ports(self):
        """
        port takes a string, a number or an array of either.
        """
        self.assertEqual(self.load('port = "3128"').port, ("tcp:3128",))
        self.assertEqual(self.load("port = 3128").port, ("tcp:3128",))
        self.assertEqual(
            self.load('port = ["tcp:1:interface=127.0.0.1", 2]').port,
            ("tcp:1:interface=127.0.0.1", "tcp:2"),
        )

    def test_sizes(self):
        """
        Sizes are suffixed strings or numbers of bytes.
        """
        result = self.load('cache-size = "64M"\ncache-memory = 1048576\n')
        self.assertEqual(result.cacheSize, 64 * 1024**2)
        self.assertEqual(result.cacheMemory, 1024**2)

    def test_flagsAndStrings(self):
        """
        Flags are booleans; strings are strings; connect-ports also takes an
        array of ports.
        """
        result = self.load(
            'x-forwarded-for = true\nno-x-cache = true\nvia-name = "edge1"\n'
            "connect-ports = [443, 8443]\n"
            'upstream = "http://127.0.0.1:8080/base"\n'
        )
        self.assertTrue(result.xForwardedFor)
        self.assertFalse(result.xCache)
        self.assertEqual(result.viaName, "edge1")
        self.assertEqual(result.connectPorts, frozenset([443, 8443]))
        self.assertEqual(result.upstreamPath, b"/base")

    def test_numbers(self):
        """
        Float settings take integers or floats; integer settings integers.
        """
        result = self.load("upstream-timeout = 2\nidle-timeout = 1.5\nmax-connections = 10\n")
        self.assertEqual(
            (result.upstreamTimeout, result.idleTimeout, result.maxConnections), (2.0, 1.5, 10)
        )

    def test_emptyFile(self):
        """
        An empty file (or one of comments) changes nothing.
        """
        self.assertEqual(self.load("# nothing\n").port, ("tcp:3128",))

    def test_example(self):
        """
        contrib/cachingproxy.toml.example, with every setting uncommented,
        names every setting but config and loads.
        """
        with open(os.path.join(REPO, "contrib", "cachingproxy.toml.example")) as f:
            text = f.read()
        uncommented = re.sub(r"(?m)^# ([a-z][a-z0-9-]* = )", r"\1", text)
        import tomllib

        keys = set(tomllib.loads(uncommented))
        self.assertEqual(keys, {s.name for s in SETTINGS} - {"config"})
        result = self.load(uncommented)
        self.assertEqual(result.viaName, "proxy1")
        self.assertEqual(result.workers, 1)


class RefreshRuleTests(SynchronousTestCase):
    """
    refresh-rule: the same rules from the command line, the environment
    and the file (strings or tables); durations with unit suffixes.
    """

    def test_commandLine(self):
        """
        --refresh-rule is repeatable and keeps its order; -i, type= and
        override set their fields.
        """
        options = tap.Options()
        options.parseOptions([
            "--refresh-rule", r"\.deb$ 1d 0 30d",
            "--refresh-rule", "-i /dists/ 90 20% 15m type=text/plain,application/* override",
        ])
        deb, dists = options.config.refreshRules
        self.assertEqual((deb.pattern, deb.minimum, deb.percent, deb.maximum),
                         (r"\.deb$", 86400.0, 0.0, 30 * 86400.0))
        self.assertEqual((deb.ignoreCase, deb.override, deb.mediaTypes),
                         (False, False, frozenset()))
        self.assertEqual((dists.pattern, dists.minimum, dists.percent, dists.maximum),
                         ("/dists/", 90.0, 20.0, 900.0))
        self.assertEqual((dists.ignoreCase, dists.override, dists.mediaTypes),
                         (True, True, frozenset([b"text/plain", b"application/*"])))

    def test_environment(self):
        """
        CACHINGPROXY_REFRESH_RULE holds one rule a line.
        """
        result = fromOptions({}, {"CACHINGPROXY_REFRESH_RULE": "\\.deb$ 1d 0 1d\n\n/x 0 10 2h\n"})
        self.assertEqual([r.pattern for r in result.refreshRules], [r"\.deb$", "/x"])
        self.assertEqual(result.refreshRules[1].maximum, 7200.0)

    def test_fileStringsAndTables(self):
        """
        The file takes an array of rule strings, an array of tables
        ([[refresh-rule]]), or both mixed with inline tables; a table's
        durations may be numbers of seconds.
        """
        strings = fromOptions({"config": writeConfig(
            self, "refresh-rule = ['\\.deb$ 1d 0 30d', '/x 0 0 0']\n")}, {})
        self.assertEqual([r.pattern for r in strings.refreshRules], [r"\.deb$", "/x"])
        tables = fromOptions({"config": writeConfig(self, (
            "[[refresh-rule]]\npattern = '\\.deb$'\nmin = \"1d\"\npercent = 20\nmax = 2592000\n"
            "types = [\"application/vnd.debian.binary-package\"]\n"
            "ignore-case = true\noverride = true\n"
            "[[refresh-rule]]\npattern = '.'\nmin = 0\npercent = \"10%\"\nmax = \"1h\"\n"))}, {})
        deb, anything = tables.refreshRules
        self.assertEqual(deb, policy.RefreshRule(
            r"\.deb$", 86400.0, 20.0, 2592000.0,
            frozenset([b"application/vnd.debian.binary-package"]), True, True))
        self.assertEqual((anything.percent, anything.maximum), (10.0, 3600.0))
        mixed = fromOptions({"config": writeConfig(self, (
            "refresh-rule = ['/a 0 0 0', {pattern = '/b', min = 1, percent = 0, max = 1}]\n"))}, {})
        self.assertEqual([r.pattern for r in mixed.refreshRules], ["/a", "/b"])

    def test_durations(self):
        """
        Durations are seconds, or numbers with s, m, h, d or w.
        """
        for text, seconds in (("90", 90), ("1.5", 1.5), ("90s", 90), ("15m", 900),
                              ("12h", 43200), ("1d", 86400), ("2W", 1209600), (30, 30)):
            self.assertEqual(parseDuration(text), seconds)
        for bad in ("-1", "1y", "d", "", "1 d x", True):
            self.assertRaises(ValueError, parseDuration, bad)

    def test_errors(self):
        """
        A malformed rule stops start-up with one line naming where it came
        from and what is wrong.
        """
        for rule, why in (
            ("/x 1d", "expected '[-i] REGEX MIN PERCENT MAX"),
            ("/x 1y 0 1d", "expected a duration"),
            ("/x 1d 0 1h", "maximum must not be below minimum"),
            ("( 0 0 0", "invalid regular expression"),
            ("/x 0 0 0 often", "unknown option 'often'"),
            ("/x 0 many 0", "expected a percentage"),
            ("/x 0 0 0 type=deb", "'deb' is not a media type"),
        ):
            error = self.assertRaises(usage.UsageError, fromOptions, {"refresh-rule": (rule,)}, {})
            self.assertTrue(str(error).startswith(f"--refresh-rule: {rule!r}: "), str(error))
            self.assertIn(why, str(error))
        path = writeConfig(self, "port = 1\n[[refresh-rule]]\npattern = '/x'\nmin = 0\nmax = 0\n")
        error = self.assertRaises(usage.UsageError, fromOptions, {"config": path}, {})
        self.assertEqual(str(error), f"{path}:2: refresh-rule: rule 1: percent is missing")
        path = writeConfig(self, "refresh-rule = [{pattern = '/x', min = 0, percent = 0, "
                                 "max = 0, often = true}]\n")
        error = self.assertRaises(usage.UsageError, fromOptions, {"config": path}, {})
        self.assertIn(f"{path}:1: refresh-rule: rule 1: unknown key 'often'", str(error))
        path = writeConfig(self, "refresh-rule = 5\n")
        error = self.assertRaises(usage.UsageError, fromOptions, {"config": path}, {})
        self.assertEqual(str(error), f"{path}:1: refresh-rule: expected a rule string, a table, "
                                     "or an array of them, got an integer 5")

    def test_reachesTheCache(self):
        """
        The rules become the cache's options.
        """
        options = tap.Options()
        options.parseOptions(["--cache-dir", "none", "--cache-memory", "1M",
                              "--refresh-rule", r"\.deb$ 1d 0 1d"])
        cache = tap.buildCache(None, options.config, None)
        self.assertEqual(cache.settings.options.refreshRules, options.config.refreshRules)


class FileErrorTests(SynchronousTestCase):
    """
    Every error is one line naming the file, and the line and key when
    there is one.
    """

    def error(self, text=None, given=None, environ=None):
        if text is not None:
            path = writeConfig(self, text)
            given = dict(given or {}, config=path)
        error = self.assertRaises(usage.UsageError, fromOptions, given or {}, environ or {})
        message = str(error)
        self.assertNotIn("\n", message)
        return message, (given or {}).get("config")

    def test_unknownKey(self):
        """
        An unknown key is named with its file and line, and the nearest
        setting is suggested.
        """
        message, path = self.error("# comment\nport = 3128\n\nupstream-timout = 5\n")
        self.assertEqual(
            message,
            f"{path}:4: unknown setting 'upstream-timout' (did you mean 'upstream-timeout'?)",
        )

    def test_unknownUnderscoreKey(self):
        """
        The underscore spelling of a setting is unknown, with the dashed
        one suggested.
        """
        message, path = self.error("  max_connections = 5\n")
        self.assertEqual(
            message, f"{path}:1: unknown setting 'max_connections' (did you mean 'max-connections'?)"
        )

    def test_unknownTable(self):
        """
        A table is an unknown key at its header's line.
        """
        message, path = self.error('via-name = "a"\n\n[server]\nport = 1\n')
        self.assertTrue(message.startswith(f"{path}:3: unknown setting 'server'"), message)

    def test_configKey(self):
        """
        A file cannot name another configuration file.
        """
        message, path = self.error('config = "other.toml"\n')
        self.assertTrue(message.startswith(f"{path}:1: unknown setting 'config'"), message)

    def test_wrongType(self):
        """
        A value of the wrong TOML type names the file, line, key, what was
        expected and what was found.
        """
        cases = [
            ('\nupstream-timeout = "soon"\n', 2, "upstream-timeout: expected a number, got a string 'soon'"),
            ("x-forwarded-for = 1\n", 1, "x-forwarded-for: expected true or false, got an integer 1"),
            ("max-connections = 1.5\n", 1, "max-connections: expected an integer, got a float 1.5"),
            ("min-uses = true\n", 1, "min-uses: expected an integer, got a boolean True"),
            ("via-name = 3\n", 1, "via-name: expected a string, got an integer 3"),
            ("port = []\n", 1, "port: expected a port or endpoint string"),
            ("cache-size = [1]\n", 1, "cache-size: expected a size such as"),
            ('"workers" = false\n', 1, 'workers: expected a number of processes or "auto"'),
        ]
        for text, line, expected in cases:
            message, path = self.error(text)
            self.assertTrue(message.startswith(f"{path}:{line}: {expected}"), message)

    def test_tableValue(self):
        """
        An inline table where a string belongs is a type error at its line.
        """
        message, path = self.error("\n\nupstream = { url = 'x' }\n")
        self.assertEqual(message, f"{path}:3: upstream: expected an origin URL (\"http://10.0.0.1:8080\"), "
                         f"or an array of them, got a table {{'url': 'x'}}")

    def test_badValue(self):
        """
        A value of the right type but out of range names the file, line and
        key through the same checks as the command line.
        """
        for text, line, expected in [
            ("idle-timeout = -1\n", 1, "idle-timeout: must be greater than 0"),
            ('\n\nport = "notaport"\n', 3, "port: expected a port number or an endpoint"),
            ('cache-size = "lots"\n', 1, "cache-size: expected a size"),
            ("workers = 0\n", 1, "workers: expected a number of processes"),
            ('upstream = "ftp://x"\n', 1, "upstream: expected http://"),
            ('connect-ports = [443, 70000]\n', 1, "connect-ports: '70000' is not a port"),
        ]:
            message, path = self.error(text)
            self.assertTrue(message.startswith(f"{path}:{line}: {expected}"), message)

    def test_syntaxError(self):
        """
        A TOML syntax error names the file and tomllib's line and column.
        """
        message, path = self.error('via-name = "a"\nport 3128\n')
        self.assertTrue(message.startswith(f"{path}: invalid TOML: "), message)
        self.assertIn("line 2, column", message)

    def test_duplicateKey(self):
        """
        A key set twice is a TOML error.
        """
        message, path = self.error("min-uses = 1\nmin-uses = 2\n")
        self.assertTrue(message.startswith(f"{path}: invalid TOML: "), message)
        self.assertIn("line 2", message)

    def test_missingFile(self):
        """
        A missing file is named along with what named it.
        """
        message, _ = self.error(given={"config": "/nonexistent/cachingproxy.toml"})
        self.assertEqual(message, "--config: no such file '/nonexistent/cachingproxy.toml'")
        message, _ = self.error(environ={"CACHINGPROXY_CONFIG": "/nonexistent/c.toml"})
        self.assertEqual(
            message, "CACHINGPROXY_CONFIG (environment): no such file '/nonexistent/c.toml'"
        )

    def test_unreadableFile(self):
        """
        A directory given as the file cannot be read.
        """
        directory = os.path.dirname(writeConfig(self, ""))
        message, _ = self.error(given={"config": directory})
        self.assertTrue(message.startswith(f"--config: cannot read {directory!r}: "), message)

    def test_notUTF8(self):
        """
        A file that is not UTF-8 is named with the line of the first bad
        byte.
        """
        path = temporaryPath(self, "latin1.toml")
        with open(path, "wb") as f:
            f.write(b'via-name = "a"\nvia-name = "caf\xe9"\n')
        message, _ = self.error(given={"config": path})
        self.assertEqual(message, f"{path}:2: not UTF-8 text")


class ExitTests(SynchronousTestCase):
    """
    L{exitOnConfigError}.
    """

    def test_exit(self):
        """
        It writes C{cachingproxy: <message>} as one line to standard error
        and exits with status 2.
        """
        stderr = io.StringIO()
        with redirect_stderr(stderr):
            exit = self.assertRaises(
                SystemExit, exitOnConfigError,
                usage.UsageError("--port: port 99999 is out of range (0 to 65535)")
            )
        self.assertEqual(exit.code, 2)
        self.assertEqual(stderr.getvalue(),
                         "cachingproxy: --port: port 99999 is out of range (0 to 65535)\n")


class SettingsTableTests(SynchronousTestCase):
    """
    L{settingsTable}, the README's table of settings.
    """

    def test_everySetting(self):
        """
        Every setting has a row with its option, its variables and help.
        """
        table = settingsTable()
        self.assertTrue(table.startswith(".. list-table::\n"))
        for setting in SETTINGS:
            self.assertIn(f"   * - ``--{setting.name}``\n", table)
            self.assertIn(f"``{setting.envName}``", table)
        self.assertIn("``CACHINGPROXY_PORT``, ``LISTEN_PORT``", table)
        self.assertIn("``CACHINGPROXY_WORKERS``, ``NUM_WORKERS``", table)
        self.assertEqual(table.count("   * - "), len(SETTINGS) + 1)

    def test_validRST(self):
        """
        docutils renders the table without a warning, when it is installed.
        """
        try:
            from docutils.core import publish_doctree
        except ImportError:
            raise self.skipTest("docutils is not installed")
        warnings = io.StringIO()
        tree = publish_doctree(
            settingsTable(), settings_overrides={"warning_stream": warnings, "report_level": 1}
        )
        self.assertEqual(warnings.getvalue(), "")
        find = getattr(tree, "findall", tree.traverse)
        rows = list(find(lambda n: n.tagname == "row"))
        self.assertEqual(len(rows), len(SETTINGS) + 1)


class ReadmeTests(SynchronousTestCase):
    """
    README.rst documents the settings as they are.
    """

    def _readme(self) -> str:
        import os

        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "README.rst")
        with open(path, encoding="utf-8") as f:
            return f.read()

    def test_tableCurrent(self):
        """
        The table between the README's SETTINGS markers is exactly
        L{settingsTable}'s output.
        """
        text = self._readme()
        begin = text.index(".. BEGIN SETTINGS")
        begin = text.index("\n\n", begin) + 2
        end = text.index("\n\n.. END SETTINGS")
        self.assertEqual(text[begin:end], settingsTable())

    def test_validRST(self):
        """
        The whole README renders without a warning.
        """
        try:
            from docutils.core import publish_doctree
        except ImportError:
            raise self.skipTest("docutils is not installed")
        warnings = io.StringIO()
        publish_doctree(self._readme(),
                        settings_overrides={"warning_stream": warnings, "report_level": 2})
        self.assertEqual(warnings.getvalue(), "")


class TwistdConfigErrorTests(TestCase):
    """
    twistd with a bad configuration file.
    """

    timeout = 30

    async def test_badConfigFile(self):
        """
        C{twistd -n cachingproxy --config BAD.toml} exits with status 2 and
        one line, C{cachingproxy: FILE:LINE: ...}, without a traceback or
        the usage text.
        """
        path = writeConfig(self, "upstream-timeout = 5\nno-such-setting = 1\n", "BAD.toml")
        process = _Twistd()
        reactor.spawnProcess(
            process,
            sys.executable,
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "cachingproxy", "--config", path],
            env=dict(os.environ, PYTHONPATH=REPO),
            path=REPO,
        )
        process.listening.addErrback(lambda _: None)
        code = await process.ended
        output = process.output.decode(errors="replace")
        self.assertEqual(
            output, f"cachingproxy: {path}:2: unknown setting 'no-such-setting'\n"
        )
        self.assertEqual(code, 2, output)


#: Set in the same source under each example: compress-types and
#: compress-min-size change nothing while compression is off (the default
#: in forward mode).
_BASE = {"compress": "on"}


class EverySettingTests(SynchronousTestCase):
    """
    Every setting of L{SETTINGS} can be set from the command line, the
    environment and the configuration file, to its C{example}, and the
    three give the same L{Config}.
    """

    def setUp(self):
        # The examples that name files name these, made in a fresh folder.
        from .test_access import bcryptHash

        self.folder = os.path.dirname(temporaryPath(self))
        self.files = {
            "other.toml": b"",
            "users.htpasswd": b"user:" + bcryptHash(b"secret") + b"\n",
            "ca.pem": b"",
        }

    def example(self, setting):
        """
        @return: C{setting}'s example, a file it names made in the folder.
        """
        example = setting.example
        if isinstance(example, str) and example in self.files:
            path = os.path.join(self.folder, example)
            with open(path, "wb") as f:
                f.write(self.files[example])
            return path
        return example

    def parse(self, argv, environ):
        from .test_tap import OptionsTests

        return OptionsTests("parse").parse(argv, environ)

    def fromCommandLine(self, values):
        argv = []
        for name, value in values.items():
            kind = _BY_NAME[name].kind
            if kind == "flag":
                argv.append(f"--{name}")
            elif kind == "list":
                for item in value:
                    argv += [f"--{name}", item]
            else:
                argv += [f"--{name}", value]
        return self.parse(argv, {})

    def fromEnvironment(self, values):
        environ = {}
        for name, value in values.items():
            kind = _BY_NAME[name].kind
            if kind == "flag":
                value = "1"
            elif kind == "list":
                value = "\n".join(value)
            environ[_BY_NAME[name].envName] = value
        return self.parse([], environ)

    def fromFile(self, values):
        lines = []
        for name, value in values.items():
            kind = _BY_NAME[name].kind
            if kind == "flag":
                text = "true"
            elif kind == "int":
                text = str(int(value))
            elif kind == "float":
                text = repr(float(value))
            else:
                text = json.dumps(list(value) if kind == "list" else value)
            lines.append(f"{name} = {text}\n")
        config = self.parse(["--config", writeConfig(self, "".join(lines))], {})
        # Compared with the other sources, which read no file.
        return dataclasses.replace(config, configFile=None)

    def test_everySettingHasAnExample(self):
        """
        Each setting gives an example value of its kind, different from its
        default, for the tests below.
        """
        for setting in SETTINGS:
            example = setting.example
            self.assertIsNotNone(example, f"{setting.name} gives no example")
            if setting.kind == "flag":
                self.assertIs(example, True, setting.name)
            elif setting.kind == "list":
                self.assertIsInstance(example, tuple, setting.name)
                self.assertTrue(example, setting.name)
            else:
                self.assertIsInstance(example, str, setting.name)
            self.assertNotEqual(example, setting.default, setting.name)

    def test_everySettingFromEachSource(self):
        """
        Each setting set to its example on the command line, in the
        environment or in the configuration file changes the L{Config}
        (the field of its name, when there is one), and the same way from
        each source.
        """
        fields = {f.name for f in dataclasses.fields(Config)}
        sources = [self.fromCommandLine, self.fromEnvironment, self.fromFile]
        for setting in SETTINGS:
            if setting.example is None:
                self.fail(f"{setting.name} gives no example")
            values = dict(_BASE)
            values[setting.name] = self.example(setting)
            configs = []
            for source in sources:
                if source == self.fromFile and setting.name == "config":
                    # The file cannot name another file.
                    continue
                baseline = source(_BASE)
                try:
                    config = source(values)
                except usage.UsageError as e:
                    self.fail(f"{setting.name} through {source.__name__}: {e}")
                self.assertNotEqual(config, baseline, f"{setting.name} through {source.__name__}")
                if setting.attribute in fields:
                    self.assertNotEqual(getattr(config, setting.attribute),
                                        getattr(baseline, setting.attribute),
                                        f"{setting.name} through {source.__name__}")
                configs.append(config)
            if setting.name != "config":
                self.assertEqual(len(configs), len(sources))
            for config in configs[1:]:
                self.assertEqual(config, configs[0], setting.name)

    def test_examplesReachTheirFields(self):
        """
        A few examples, checked against the value the L{Config} holds.
        """
        examples = {s.name: self.example(s) for s in SETTINGS}
        config = self.fromCommandLine({name: examples[name] for name in (
            "port", "max-body-size", "upstream-timeout", "add-response-header",
            "no-cache", "workers")})
        self.assertEqual(config.port, ("tcp:20000", "unix:/run/cachingproxy.sock"))
        self.assertEqual(config.maxBodySize, 10 * 1024**2)
        self.assertEqual(config.upstreamTimeout, 7.5)
        self.assertEqual(config.responseRules.add, ((b"X-Served-By", b"edge1"),))
        self.assertFalse(config.cache)
        self.assertEqual(config.workers, 2)


#: The fields of the settings objects that no one setting gives: worked out
#: from several settings, of another type than the setting's, or known
#: only where the proxy runs (the host name C{--via-name} defaults to).
_WORKED_OUT = {
    ProxySettings: {"upstream", "upstreamPath", "viaName", "requestRules", "responseRules",
                    "compression", "trustedProxies", "adminNetworks"},
    UpstreamSettings: {"trustRoot"},
    CacheSettings: {"options", "cacheStatus", "name", "routeMaxObjectSize"},
}


class OneDefaultTests(SynchronousTestCase):
    """
    A setting's default lives in L{SETTINGS} only: the settings objects
    built from a L{Config} have it as their own default.
    """

    def test_defaultsAgree(self):
        """
        Every field of L{ProxySettings}, L{UpstreamSettings} and
        L{CacheSettings} that a setting gives defaults to what the
        L{Config} of no source at all holds for that setting.
        """
        defaults = fromOptions({}, {})
        for cls, exempt in _WORKED_OUT.items():
            built = settingsFor(cls, defaults)
            for field in dataclasses.fields(cls):
                if field.name in exempt:
                    continue
                name = field.metadata.get("setting")
                self.assertIsNotNone(
                    name, f"{cls.__name__}.{field.name} has a default of its own")
                self.assertEqual(field.default, getattr(built, field.name),
                                 f"{cls.__name__}.{field.name} (--{name})")

    def test_noLiteralForASetting(self):
        """
        A field named like a L{Config} field that a setting fills takes its
        default from that setting, unless it is one of the few worked out
        elsewhere.
        """
        filled = {s.configField for s in SETTINGS}
        for cls, exempt in _WORKED_OUT.items():
            for field in dataclasses.fields(cls):
                if field.name in filled and field.name not in exempt:
                    self.assertIn("setting", field.metadata, f"{cls.__name__}.{field.name}")

    def test_tapAgrees(self):
        """
        The L{ProxySettings} the service builds for the defaults are
        L{ProxySettings}' own defaults, but for the name in C{Via}.
        """
        built = tap.proxySettings(fromOptions({}, {}), None)
        self.assertEqual(dataclasses.replace(built, viaName=b"cachingproxy",
                                             requestRules=None, responseRules=None),
                         ProxySettings())
