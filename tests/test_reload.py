"""
SIGHUP in a single-process proxy: L{cachingproxy.service.reload}.
"""

import dataclasses
import os
import signal

from twisted.internet import reactor
from twisted.logger import LogLevel, capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cachingproxy.service import tap
from cachingproxy.service.config import fromOptions
from cachingproxy.service.reload import ConfigReloader, changedFields, settingNames

from .helpers import exchange, listenOrigin, startTwistd, temporaryPath


def _config(**given):
    given.setdefault("cache-dir", "none")
    return fromOptions(given, {})


class ConfigReloaderTests(SynchronousTestCase):
    """
    L{ConfigReloader} swaps what can change on a running factory.
    """

    def setUp(self):
        self.config = _config(**{"idle-timeout": "60"})
        self.factory = tap.buildFactory(reactor, self.config)
        self.next = self.config
        self.reloader = ConfigReloader(reactor, lambda: self.readConfig(), self.config,
                                       self.factory)

    def readConfig(self):
        if isinstance(self.next, Exception):
            raise self.next
        return self.next

    def test_changedFields(self):
        """
        L{changedFields} names the differing L{Config} fields, and
        L{settingNames} the options behind them.
        """
        new = _config(**{"idle-timeout": "5", "add-response-header": ("X-A: 1",),
                         "workers": "3"})
        fields = changedFields(self.config, new)
        self.assertEqual(fields, ["idleTimeout", "workers", "responseRules"])
        self.assertEqual(settingNames(fields),
                         ["idle-timeout", "workers", "response header rules"])

    def test_liveSettingsSwapped(self):
        """
        Timeouts, header rules, upstream timeouts and the access policy are
        replaced by new objects (the old ones, which requests in flight
        hold, are left as they were).
        """
        oldSettings, oldAccess = self.factory.settings, self.factory.access
        oldPool = self.factory.pool.settings
        self.next = _config(**{"idle-timeout": "5", "add-response-header": ("X-A: 1",),
                               "upstream-timeout": "3", "allow": ("loopback",)})
        with capturedLogs() as events:
            self.assertTrue(self.reloader.reload())
        self.assertEqual(self.factory.settings.idleTimeout, 5.0)
        self.assertNotEqual(self.factory.settings.responseRules, oldSettings.responseRules)
        self.assertEqual(oldSettings.idleTimeout, 60.0)
        self.assertEqual(self.factory.pool.settings.responseTimeout, 3.0)
        self.assertEqual(oldPool.responseTimeout, 10.0)
        self.assertIsNot(self.factory.access, oldAccess)
        self.assertIsNone(oldAccess.checkClient("10.1.2.3"))
        self.assertIsNotNone(self.factory.access.checkClient("10.1.2.3"))
        [line] = [e for e in events if "configuration reloaded" in e["log_format"]]
        self.assertIn("idle-timeout", line["what"])

    def test_restartNeeded(self):
        """
        A changed setting that needs a restart is logged, one warning line
        each, and left as it runs; the others still apply.
        """
        self.next = _config(**{"workers": "3", "port": ("tcp:9999",), "idle-timeout": "7"})
        with capturedLogs() as events:
            self.assertTrue(self.reloader.reload())
        warnings = [e["name"] for e in events if e["log_level"] is LogLevel.warn]
        self.assertEqual(sorted(warnings), ["port", "workers"])
        self.assertEqual(self.factory.settings.idleTimeout, 7.0)
        self.assertEqual(self.reloader.config.workers, 1)
        self.assertEqual(self.reloader.config.port, self.config.port)

    def test_badConfigurationKept(self):
        """
        A configuration that does not validate is one error line, and the
        running settings stay.
        """
        settings = self.factory.settings
        self.next = usage.UsageError("c.toml:1: idle-timeout: expected a number")
        with capturedLogs() as events:
            self.assertFalse(self.reloader.reload())
        [error] = [e for e in events if e["log_level"] is LogLevel.error]
        self.assertIn("idle-timeout: expected a number", error["reason"])
        self.assertIs(self.factory.settings, settings)
        self.assertIs(self.reloader.config, self.config)

    def test_accessLogSwitched(self):
        """
        A new access log path is opened and written from then on; the same
        path is reopened (as after logrotate).
        """
        first, second = temporaryPath(self, "first.log"), temporaryPath(self, "second.log")
        config = _config(**{"access-log": first})
        accessLog = tap.AccessLogFile(first)
        self.addCleanup(accessLog.close)
        factory = tap.buildFactory(reactor, config, accessLog)
        new = dataclasses.replace(config, accessLog=second, accessLogFormat="json")
        reloader = ConfigReloader(reactor, lambda: new, config, factory)
        self.assertTrue(reloader.reload())
        self.assertIs(factory.accessLog, accessLog)
        accessLog("a line")
        with open(second) as f:
            self.assertEqual(f.read(), "a line\n")
        self.assertEqual(accessLog.format, "json")
        os.rename(second, second + ".1")
        self.assertTrue(reloader.reload())
        accessLog("after rotation")
        with open(second) as f:
            self.assertEqual(f.read(), "after rotation\n")


class SighupEndToEndTests(TestCase):
    """
    C{twistd -n cachingproxy --config FILE} (one process) and C{kill -HUP}.
    """

    timeout = 60

    async def test_sighupRereadsConfiguration(self):
        """
        After the configuration file changes a response header rule and a
        refused destination, SIGHUP makes them apply: the process keeps
        serving (it is not killed by the signal), logs the reload, and logs
        that a changed --workers needs a restart. A broken file then is one
        log line, and the previous settings stay.
        """
        origin, originPort = listenOrigin(self)
        path = temporaryPath(self, "cachingproxy.toml")
        with open(path, "w") as f:
            f.write('add-response-header = ["X-Reload: one"]\n')
        process, transport, port = await startTwistd(
            self, "--config", path, "--no-access-log", "--allow", "loopback")
        get = b"GET http://127.0.0.1:%d/size/10 HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        _, [response] = await exchange(port, self, get)
        self.assertEqual(response.header(b"x-reload"), b"one")

        with open(path, "w") as f:
            f.write('add-response-header = ["X-Reload: two"]\n'
                    'deny-dest = ["127.0.0.2"]\nworkers = 2\n')
        reloaded = process.waitForOutput(b"SIGHUP: configuration reloaded")
        transport.signalProcess(signal.SIGHUP)
        await reloaded
        _, [response] = await exchange(port, self, get)
        self.assertEqual((response.status, response.header(b"x-reload")), (200, b"two"))
        _, [refused] = await exchange(
            port, self, b"GET http://127.0.0.2:%d/size/10 HTTP/1.1\r\nHost: x\r\n\r\n" % originPort)
        self.assertEqual(refused.status, 403)
        self.assertIn(b"SIGHUP: --workers changed; it takes effect only after a restart",
                      process.output)

        with open(path, "w") as f:
            f.write('idle-timeout = "soon"\n')
        kept = process.waitForOutput(b"configuration not reloaded, keeping the running one")
        transport.signalProcess(signal.SIGHUP)
        await kept
        self.assertIn(b"idle-timeout", process.output.split(b"keeping the running one")[-1])
        _, [response] = await exchange(port, self, get)
        self.assertEqual(response.header(b"x-reload"), b"two")
        self.assertFalse(process.ended.called)
