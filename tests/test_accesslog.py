"""
The access log: Combined Log Format or JSON lines, reopened on SIGUSR1.
"""

import json
import os
import re
import signal

from twisted.trial.unittest import TestCase

from cachingproxy.accesslog import AccessLog
from cachingproxy.server import ProxySettings

from .helpers import exchange, listenOrigin, startProxy, temporaryPath, until

#: Combined Log Format, then the cache result, the origin's seconds (or -),
#: the seconds taken and the bytes received from the client.
COMBINED = re.compile(
    r'^(?P<client>\S+) - - \[(?P<time>\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} \+0000)\] '
    r'"(?P<method>\S+) (?P<target>\S+) (?P<version>HTTP/\d\.\d)" (?P<status>\d{3}) '
    r'(?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)" '
    r'(?P<cache>\S+) (?P<upstream>-|\d+\.\d+) (?P<seconds>\d+\.\d+) (?P<bytesIn>\d+)$'
)


class FormatTests(TestCase):
    """
    Lines as log readers expect them.
    """

    async def _lines(self, format):
        origin, originPort = listenOrigin(self)
        factory, port, _ = startProxy(self, ProxySettings(viaName=b"test-proxy"))
        path = temporaryPath(self, "access.log")
        factory.accessLog = AccessLog(path, format)
        self.addCleanup(factory.accessLog.close)
        await exchange(port, self, b"GET http://127.0.0.1:%d/size/123 HTTP/1.1\r\nHost: x\r\n"
                       b"User-Agent: tester/1.0\r\nReferer: http://r/\r\n\r\n" % originPort)
        with open(path) as f:
            return f.read().splitlines(), originPort

    async def test_combined(self):
        """
        Combined Log Format, with the cache result and times appended.
        """
        [line], originPort = await self._lines("combined")
        match = COMBINED.match(line)
        self.assertIsNotNone(match, line)
        self.assertEqual(
            (match["client"], match["method"], match["status"], match["bytes"],
             match["referer"], match["agent"], match["cache"]),
            ("127.0.0.1", "GET", "200", "123", "http://r/", "tester/1.0", "-"),
        )
        self.assertEqual(match["target"], "http://127.0.0.1:%d/size/123" % originPort)
        self.assertNotEqual(match["upstream"], "-")

    async def test_json(self):
        """
        One JSON object a line with the same facts.
        """
        [line], _ = await self._lines("json")
        record = json.loads(line)
        self.assertEqual(
            (record["method"], record["status"], record["bytes"], record["user_agent"],
             record["pid"]),
            ("GET", 200, 123, "tester/1.0", os.getpid()),
        )
        self.assertGreaterEqual(record["seconds"], record["upstream_seconds"])


class ReopenTests(TestCase):
    """
    SIGUSR1 reopens the file, for logrotate.
    """

    timeout = 60

    async def test_sigusr1(self):
        """
        After the log is moved away and the proxy gets SIGUSR1, new lines go
        to a new file of the original name.
        """
        from .test_tap import TwistdTests

        origin, originPort = listenOrigin(self)
        path = temporaryPath(self, "access.log")
        runner = TwistdTests("runTwistd")
        runner.addCleanup = self.addCleanup
        process, transport, port = await runner.runTwistd("--access-log", path)
        request = b"GET http://127.0.0.1:%d/size/%%d HTTP/1.1\r\nHost: x\r\n\r\n" % originPort
        await exchange(port, self, request % 1)
        await until(lambda: os.path.exists(path) and os.path.getsize(path) > 0)
        os.rename(path, path + ".1")
        transport.signalProcess(signal.SIGUSR1)
        await process.waitForOutput(b"reopened the access log")
        await exchange(port, self, request % 2)
        await until(lambda: os.path.exists(path) and os.path.getsize(path) > 0)
        with open(path + ".1") as f:
            old = f.read()
        with open(path) as f:
            new = f.read()
        self.assertIn("/size/1 ", old)
        self.assertNotIn("/size/2 ", old)
        self.assertIn("/size/2 ", new)
