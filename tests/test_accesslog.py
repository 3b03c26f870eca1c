"""
The access log: Combined Log Format or JSON lines, reopened on SIGUSR1.
"""

import io
import json
import os
import re
import signal

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher, textFileLogObserver
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cachingproxy.ops import accesslog
from cachingproxy.ops.accesslog import FLUSH_SECONDS, FLUSH_SIZE, AccessLog, writeLogTo
from cachingproxy.proxy.settings import ProxySettings

from .helpers import exchange, listenOrigin, startProxy, startTwistd, temporaryPath, until

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


class _TriggerClock(Clock):
    """
    A L{Clock} that also keeps system event triggers, to fire by hand.
    """

    def __init__(self):
        super().__init__()
        self.triggers = {}

    def addSystemEventTrigger(self, phase, eventType, callable, *args, **kw):
        key = object()
        self.triggers[key] = (phase, eventType, callable, args, kw)
        return key

    def removeSystemEventTrigger(self, key):
        del self.triggers[key]

    def fire(self, phase, eventType):
        for when, event, callable, args, kw in list(self.triggers.values()):
            if (when, event) == (phase, eventType):
                callable(*args, **kw)


class BatchTests(SynchronousTestCase):
    """
    Lines are written in batches: within a second, at once when the batch
    is full, and before a reopen, a close or the end of the reactor.
    """

    def setUp(self):
        self.clock = _TriggerClock()
        self.path = temporaryPath(self, "access.log")

    def _log(self, **kw):
        log = AccessLog(self.path, "combined", self.clock, **kw)
        self.addCleanup(log.close)
        return log

    def _written(self, path=None):
        with open(path or self.path) as f:
            return f.read().splitlines()

    def test_timer(self):
        """
        A line is not written at once, and is written when the timer fires,
        L{FLUSH_SECONDS} (at most a second) later.
        """
        log = self._log()
        log("one")
        self.clock.advance(0.5)
        log("two")
        self.assertEqual(self._written(), [])
        self.assertLessEqual(FLUSH_SECONDS, 1.0)
        self.clock.advance(FLUSH_SECONDS - 0.5)
        self.assertEqual(self._written(), ["one", "two"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_full(self):
        """
        The line that fills the batch has it written at once, without the
        timer.
        """
        log = self._log(flushSize=100)
        for i in range(9):
            log("%09d" % i)
        self.assertEqual(self._written(), [])
        log("%09d" % 9)
        self.assertEqual(self._written(), ["%09d" % i for i in range(10)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_defaultSize(self):
        """
        By default a batch is written once L{FLUSH_SIZE} characters wait.
        """
        log = self._log()
        line = "x" * 1023
        for _ in range(FLUSH_SIZE // 1024 - 1):
            log(line)
        self.assertEqual(self._written(), [])
        log(line)
        self.assertEqual(len(self._written()), FLUSH_SIZE // 1024)

    def test_shutdown(self):
        """
        What waits is written after the reactor's shutdown (once every
        service stopped and every connection was cut).
        """
        log = self._log()
        log("last")
        self.clock.fire("before", "shutdown")
        self.assertEqual(self._written(), [])
        self.clock.fire("after", "shutdown")
        self.assertEqual(self._written(), ["last"])

    def test_reopen(self):
        """
        Lines logged before a reopen go to the file as it was (moved away),
        those after to the new one.
        """
        log = self._log()
        log("before")
        os.rename(self.path, self.path + ".1")
        log.reopen()
        log("after")
        log.close()
        self.assertEqual(self._written(self.path + ".1"), ["before"])
        self.assertEqual(self._written(), ["after"])

    def test_switch(self):
        """
        Lines logged before a reload switches the file go to the old one.
        """
        log = self._log()
        other = temporaryPath(self, "other.log")
        log("before")
        log.switch(other, "json")
        log("after")
        self.clock.advance(FLUSH_SECONDS)
        self.assertEqual(self._written(), ["before"])
        self.assertEqual(self._written(other), ["after"])

    def test_close(self):
        """
        Closing writes what waits, and leaves no timer or trigger behind.
        """
        log = AccessLog(self.path, "combined", self.clock)
        log("only")
        log.close()
        self.assertEqual(self._written(), ["only"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.clock.triggers, {})

    def test_twistdLog(self):
        """
        To the twistd log, a batch goes to the stream its text observer
        writes to, each line prefixed as that observer would, in one write.
        """
        stream = io.StringIO()
        writes = []
        write = stream.write
        stream.write = lambda text: (writes.append(text), write(text))[1]
        self.patch(accesslog, "_registered", None)
        writeLogTo(stream, "worker 1 pid 7|cachingproxy.access#info")
        log = AccessLog("-", "combined", self.clock)
        log("one")
        log("two")
        self.assertEqual(stream.getvalue(), "")
        self.clock.advance(FLUSH_SECONDS)
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(writes), 1)
        self.assertEqual([line.split("] ", 1)[1] for line in lines], ["one", "two"])
        for line in lines:
            self.assertRegex(
                line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} "
                      r"\[worker 1 pid 7\|cachingproxy\.access#info\] ")

    def test_twistdLogObserver(self):
        """
        Without a stream set up by the process, the stream of twistd's text
        file observer is found among the global log observers.
        """
        stream = io.StringIO()
        observer = textFileLogObserver(stream)
        self.patch(accesslog, "_registered", None)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        log = AccessLog("-", "combined", self.clock)
        log("line")
        self.clock.advance(FLUSH_SECONDS)
        self.assertIn(" [cachingproxy.access#info] line\n", stream.getvalue())
        self.assertEqual(stream.getvalue().count("line"), 1)


#: A request to the test origin for C{/size/N}.
_REQUEST = b"GET http://127.0.0.1:%d/size/%d HTTP/1.1\r\nHost: x\r\n\r\n"


def _accessLines(text):
    """
    @return: the access lines in C{text}, a file's or twistd's output (then
        without the twistd log prefix), parsed.
    """
    found = []
    for line in text.splitlines():
        if "cachingproxy.access#info] " in line:
            line = line.split("cachingproxy.access#info] ", 1)[1]
        match = COMBINED.match(line)
        if match is not None:
            found.append(match)
    return found


class LossTests(TestCase):
    """
    Through twistd: a clean stop, and a logrotate reopen, lose no line.
    """

    timeout = 90

    async def _serve(self, port, originPort, sizes, perConnection=5):
        """
        Request C{/size/N} for every N of C{sizes}, C{perConnection}
        pipelined on each connection, each connection closed once
        answered.
        """
        sizes = list(sizes)
        for start in range(0, len(sizes), perConnection):
            chunk = sizes[start:start + perConnection]
            client, responses = await exchange(
                port, self, b"".join(_REQUEST % (originPort, n) for n in chunk), len(chunk))
            self.assertEqual([r.status for r in responses], [200] * len(chunk))
            # Closed by the client, so that the proxy stops at once rather
            # than after waiting for idle clients to go: the last lines
            # are then written by the stop, not by the timer.
            client.transport.loseConnection()
            await client.closed

    async def _stopLosesNothing(self, toFile, *args):
        origin, originPort = listenOrigin(self)
        path = temporaryPath(self, "access.log")
        process, transport, port = await startTwistd(
            self, "--access-log", path if toFile else "-", *args)
        if "--workers" in args:
            await until(lambda: process.output.count(b") ready") >= 2, 20)
        sizes = range(100, 160)
        await self._serve(port, originPort, sizes)
        transport.signalProcess(signal.SIGTERM)
        await process.ended
        if toFile:
            with open(path) as f:
                text = f.read()
        else:
            text = process.output.decode()
        targets = sorted(match["target"] for match in _accessLines(text))
        self.assertEqual(targets, sorted("http://127.0.0.1:%d/size/%d" % (originPort, n)
                                         for n in sizes))

    async def test_stopFile(self):
        """
        SIGTERM right after the last response: every request has its line
        in the file.
        """
        await self._stopLosesNothing(True)

    async def test_stopTwistdLog(self):
        """
        SIGTERM right after the last response: every request has its line
        in the twistd log (stdout).
        """
        await self._stopLosesNothing(False)

    async def test_stopFileWorkers(self):
        """
        With two worker processes, SIGTERM to the parent right after the
        last response: every request has its line in the file.
        """
        await self._stopLosesNothing(True, "--workers", "2")

    async def test_stopTwistdLogWorkers(self):
        """
        With two worker processes, SIGTERM to the parent right after the
        last response: every request has its line on stdout.
        """
        await self._stopLosesNothing(False, "--workers", "2")

    async def test_workersToTwistdLogFile(self):
        """
        With two worker processes and C{twistd --logfile FILE}, the
        workers' log, access lines included, goes to that file (relayed by
        the parent), not to twistd's stdout, and a clean stop loses no
        line.
        """
        origin, originPort = listenOrigin(self)
        logfile = temporaryPath(self, "twistd.log")
        process, transport, port = await startTwistd(self, "--workers", "2", logfile=logfile)

        def text():
            with open(logfile) as f:
                return f.read()

        await until(lambda: text().count(") ready") >= 2, 20)
        sizes = range(100, 140)
        await self._serve(port, originPort, sizes)
        transport.signalProcess(signal.SIGTERM)
        await process.ended
        logged = text()
        targets = sorted(match["target"] for match in _accessLines(logged))
        self.assertEqual(targets, sorted("http://127.0.0.1:%d/size/%d" % (originPort, n)
                                         for n in sizes))
        self.assertIn("[worker 1 pid", logged)
        self.assertIn("[worker 2 pid", logged)
        self.assertNotIn(b"cachingproxy.access", process.output)

    async def test_rotate(self):
        """
        logrotate's way: the file is renamed, SIGUSR1, more requests. The
        renamed file holds every line logged before the signal, the new
        one every line after, and none is lost.
        """
        origin, originPort = listenOrigin(self)
        path = temporaryPath(self, "access.log")
        process, transport, port = await startTwistd(self, "--access-log", path)
        await self._serve(port, originPort, range(100, 130))
        os.rename(path, path + ".1")
        transport.signalProcess(signal.SIGUSR1)
        await process.waitForOutput(b"reopened the access log")
        await self._serve(port, originPort, range(200, 230))
        transport.signalProcess(signal.SIGTERM)
        await process.ended
        with open(path + ".1") as f:
            old = [match["target"] for match in _accessLines(f.read())]
        with open(path) as f:
            new = [match["target"] for match in _accessLines(f.read())]
        self.assertEqual(sorted(old), sorted("http://127.0.0.1:%d/size/%d" % (originPort, n)
                                             for n in range(100, 130)))
        self.assertEqual(sorted(new), sorted("http://127.0.0.1:%d/size/%d" % (originPort, n)
                                             for n in range(200, 230)))


class JSONEscapingTests(SynchronousTestCase):
    """
    JSON lines are put together by hand: values that need escaping are
    escaped as C{json.dumps} would.
    """

    def test_escaped(self):
        """
        Quotes, backslashes, control and non-ASCII bytes in the target and
        the fields come back exactly from C{json.loads}, as do missing
        fields and times.
        """
        from types import SimpleNamespace

        from cachingproxy.http.headers import Headers

        headers = Headers()
        headers.add(b"user-agent", b'a"b\\c\t\x01\x7f\xe9')
        exchange = SimpleNamespace(
            head=SimpleNamespace(method=b"GET", target=b'/x"\\\xff\x00', version=(1, 1),
                                 headers=headers),
            started=100.0, finished=100.25, upstreamSeconds=None, wallStarted=0.5,
            status=499, bytesSent=0, bytesReceived=7, cacheResult="-", headRead=b"")
        line = AccessLog(os.devnull, "json").jsonLine(
            exchange, SimpleNamespace(clientHost="::1", _jsonSaid=None, _jsonKept=None))
        self.assertNotIn("\n", line)
        self.assertEqual(json.loads(line), {
            "time": "1970-01-01T00:00:00Z", "client": "::1", "method": "GET",
            "target": '/x"\\\xff\x00', "version": "HTTP/1.1", "status": 499, "bytes": 0,
            "bytes_in": 7, "referer": None, "user_agent": 'a"b\\c\t\x01\x7f\xe9', "cache": "-",
            "upstream_seconds": None, "seconds": 0.25, "pid": os.getpid()})


class CombinedKeptTests(SynchronousTestCase):
    """
    L{accesslog.combinedLine} and L{AccessLog.jsonLine} keep the start of a
    connection's last line for a request not sent upstream, and use it
    only for a line that says the same up to the seconds taken: found by
    what the line says, or by the read the request's head came in
    (L{Exchange.headRead <cachingproxy.proxy.exchange.Exchange.headRead>}).
    """

    @staticmethod
    def made(target=b"/a", method=b"GET", version=(1, 1), status=200, sent=10,
             cache="HIT", agent=b"one", wall=1000.5, seconds=0.25, upstream=None,
             received=0, started=100.0, read=False):
        """
        @param read: whether the head came whole in one read (its bytes
            made from the head, as a client would send them).
        @return: a finished exchange as the access log reads it.
        """
        from types import SimpleNamespace

        from cachingproxy.http.headers import Headers

        headers = Headers()
        headers.add(b"user-agent", agent)
        headRead = b""
        if read:
            headRead = b"%s %s HTTP/%d.%d\r\nUser-Agent: %s\r\n\r\n" % (
                (method, bytes(target)) + version + (agent,))
        return SimpleNamespace(
            head=SimpleNamespace(method=method, target=bytes(target), version=version,
                                 headers=headers),
            started=started, finished=started + seconds, upstreamSeconds=upstream,
            wallStarted=wall, status=status, bytesSent=sent, bytesReceived=received,
            cacheResult=cache, headRead=headRead)

    @staticmethod
    def fresh():
        """
        @return: a connection as the access log reads it, nothing kept.
        """
        from types import SimpleNamespace

        return SimpleNamespace(clientHost="192.0.2.1", _combinedSaid=None,
                               _combinedKept=None, _jsonSaid=None, _jsonKept=None)

    def line(self, format, exchange, protocol, log=None):
        """
        @param log: the L{AccessLog} that makes a JSON line (a new one
            if C{None}).
        @return: the line in C{format} for C{exchange} on C{protocol}.
        """
        if format == "json":
            return (log or AccessLog(os.devnull, "json")).jsonLine(exchange, protocol)
        return accesslog.combinedLine(exchange, protocol, exchange.finished)

    def eachLineItsOwn(self, format, read):
        """
        Every line is the one a connection without anything kept gets:
        through repeats, and changes of each fact in turn.
        """
        made, fresh = self.made, self.fresh
        kept = fresh()
        changes = [
            dict(seconds=0.5), dict(target=b"/b"), dict(method=b"HEAD"),
            dict(version=(1, 0)), dict(status=304), dict(sent=0), dict(cache="STALE"),
            dict(agent=b"two"), dict(wall=1001.2), dict(received=3),
            dict(upstream=0.125), dict(target=b"/a?" + b"x" * 300),
        ]
        # Each change right after the same first request, and after a
        # repeat of it.
        cases = [{}]
        for change in changes:
            cases += [change, {}, {}]
        lines = []
        log = AccessLog(os.devnull, "json")
        for case in cases:
            exchange = made(read=read, **case)
            line = self.line(format, exchange, kept, log)
            self.assertEqual(line, self.line(format, exchange, fresh()), case)
            if format == "json":
                json.loads(line)
            else:
                self.assertIsNotNone(COMBINED.match(line), line)
            lines.append(line)
        self.assertEqual(set(lines[::3]), {lines[0]})
        self.assertEqual(len(set(lines)), len(changes) + 1)
        if format == "json":
            self.assertEqual(json.loads(lines[1])["seconds"], 0.5)
            self.assertEqual(json.loads(lines[31])["upstream_seconds"], 0.125)
        else:
            self.assertTrue(lines[1].endswith(" HIT - 0.5000 0"), lines[1])
            self.assertTrue(lines[31].endswith(" HIT 0.1250 0.2500 0"), lines[31])
        return kept

    def test_eachLineItsOwn(self):
        """
        Combined lines, kept by what they say.
        """
        kept = self.eachLineItsOwn("combined", False)
        self.assertEqual(kept._combinedKept[0][0], kept._combinedSaid)

    def test_eachLineItsOwnByRead(self):
        """
        Combined lines, kept by the read.
        """
        kept = self.eachLineItsOwn("combined", True)
        self.assertEqual(kept._combinedKept[0][0], self.made(read=True).headRead)

    def test_eachJSONLineItsOwn(self):
        """
        JSON lines (kept only by the read).
        """
        kept = self.eachLineItsOwn("json", False)
        self.assertIsNone(kept._jsonKept)

    def test_eachJSONLineItsOwnByRead(self):
        """
        JSON lines, kept by the read.
        """
        kept = self.eachLineItsOwn("json", True)
        self.assertEqual(kept._jsonKept[0][0], self.made(read=True).headRead)

    def test_secondsTextKept(self):
        """
        A JSON line's seconds are the float's own to six places when its
        text is kept for the next line that took as long: times under a
        millisecond are kept, at most L{accesslog._SECONDS_KEPT} of them.
        """
        log = AccessLog(os.devnull, "json")
        kept, fresh = self.fresh(), self.fresh
        # Multiples of the clock's resolution, twice each, then others.
        times = [n * 2.0 ** -22 for n in range(0, 5000, 3)] * 2 + [
            0.000499999, 0.0009999995, 0.001, 0.25, -0.00001, 1e-7]
        for seconds in times:
            # (started at 0.0: the seconds taken are these exactly)
            exchange = self.made(seconds=seconds, started=0.0, read=True)
            line = log.jsonLine(exchange, kept)
            self.assertEqual(line, self.line("json", exchange, fresh()))
            self.assertEqual(line.rsplit(",", 2)[1], '"seconds":%.6f' % seconds)
            self.assertLessEqual(len(log._secondsText), accesslog._SECONDS_KEPT)
            self.assertEqual(seconds in log._secondsText, seconds < 0.001, seconds)
        self.assertGreater(len(log._secondsText), accesslog._SECONDS_KEPT // 2)

    def wholeLineKept(self, read):
        """
        A repeat that took under 50 microseconds and sent no body gets
        the kept whole line, which is the line a fresh connection gets;
        at 50 microseconds and above, with a body, or with a clock that
        went back, the seconds are written out again.
        """
        made, fresh = self.made, self.fresh
        kept = fresh()
        first = made(seconds=0.25, read=read)
        accesslog.combinedLine(first, kept, first.finished)
        lines = []
        # (started at 1.0, where these sums are exact to the digits shown)
        for seconds, received in [(0.0, 0), (0.00001, 0), (0.000049999, 0), (0.00005, 0),
                                  (0.00012, 0), (0.00001, 5), (-0.00001, 0), (0.0, 0)]:
            exchange = made(seconds=seconds, received=received, started=1.0, read=read)
            line = accesslog.combinedLine(exchange, kept, exchange.finished)
            self.assertEqual(line, accesslog.combinedLine(exchange, fresh(), exchange.finished),
                             (seconds, received))
            lines.append(line)
        self.assertEqual([line.rsplit(" ", 2)[1:] for line in lines],
                         [["0.0000", "0"], ["0.0000", "0"], ["0.0000", "0"], ["0.0001", "0"],
                          ["0.0001", "0"], ["0.0000", "5"], ["-0.0000", "0"],
                          ["0.0000", "0"]])
        self.assertIs(lines[1], kept._combinedKept[2])

    def test_wholeLineKept(self):
        """
        The whole line, kept by what it says.
        """
        self.wholeLineKept(False)

    def test_wholeLineKeptByRead(self):
        """
        The whole line, kept by the read.
        """
        self.wholeLineKept(True)
