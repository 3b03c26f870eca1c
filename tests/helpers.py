"""
Shared fixtures for the loopback tests: a scripted origin (a twisted.web
resource that records what it receives), raw scripted origins for broken
behaviour, a proxy listening on a free port, and a raw client that counts
responses with a real parser.

Everything listens on 127.0.0.1 port 0 and is closed by the test's
cleanups, so trial's dirty-reactor check catches a leak.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import httptools
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from cachingproxy.proxy.factory import ProxyFactory
from cachingproxy.proxy.settings import ProxySettings
from cachingproxy.proxy.upstream import UpstreamPool, UpstreamSettings


class OriginResource(Resource):
    """
    A scripted origin. Paths:

      - C{/echo}: 200, the request body back, C{X-Method} and C{X-Body-Length}.
      - C{/size/N}: N bytes with a Content-Length.
      - C{/chunked/N}: N bytes in 8 KiB writes, no Content-Length (chunked).
      - C{/status/N}: that status with a short body.
      - C{/delay/MS}: answers after MS milliseconds.
      - C{/hop}: a response carrying hop-by-hop fields and a Connection-
        nominated field.
      - C{/headers}: the request's header fields as JSON.

    @ivar requests: one dict per request received: method, path, headers
        (list of pairs), body, connection (a number per TCP connection).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: List[Dict] = []
        self._connections: Dict[int, int] = {}

    def connectionCount(self) -> int:
        """
        @return: how many distinct TCP connections carried requests.
        """
        return len(self._connections)

    def render(self, request):
        channel = id(request.channel)
        number = self._connections.setdefault(channel, len(self._connections))
        body = request.content.read()
        headers = [(k, v) for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs]
        self.requests.append(
            dict(
                method=request.method,
                path=request.uri,
                headers=headers,
                body=body,
                connection=number,
            )
        )
        parts = request.uri.split(b"?")[0].split(b"/")
        kind = parts[1] if len(parts) > 1 else b""
        arg = parts[2] if len(parts) > 2 else b""
        if kind == b"echo":
            request.setHeader(b"X-Method", request.method)
            request.setHeader(b"X-Body-Length", b"%d" % len(body))
            request.setHeader(b"Content-Type", b"application/octet-stream")
            return body
        if kind == b"size":
            n = int(arg)
            request.setHeader(b"Content-Type", b"application/octet-stream")
            return pattern(n)
        if kind == b"chunked":
            n = int(arg)
            data = pattern(n)
            for i in range(0, n, 8192):
                request.write(data[i:i + 8192])
            request.finish()
            return NOT_DONE_YET
        if kind == b"status":
            request.setResponseCode(int(arg))
            return b"status %s\n" % arg
        if kind == b"delay":
            def later():
                request.write(b"delayed " + arg)
                request.finish()

            call = reactor.callLater(int(arg) / 1000.0, later)
            request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
            return NOT_DONE_YET
        if kind == b"hop":
            request.setHeader(b"Connection", b"X-Private-Hop")
            request.setHeader(b"X-Private-Hop", b"secret")
            request.setHeader(b"Keep-Alive", b"timeout=5")
            request.setHeader(b"Proxy-Connection", b"keep-alive")
            request.setHeader(b"Upgrade", b"h2c")
            request.setHeader(b"Trailer", b"X-Checksum")
            request.setHeader(b"X-End-To-End", b"kept")
            return b"hop"
        if kind == b"headers":
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps(
                [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]
            ).encode()
        request.setResponseCode(404)
        return b"no such path\n"


def temporaryPath(testCase, name: str = "file") -> str:
    """
    @return: a path in a fresh temporary directory removed by the test's
        cleanup (outside the checkout, whichever runner runs the test).
    """
    directory = tempfile.mkdtemp(prefix="cachingproxy-test-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, name)


async def until(condition: Callable[[], object], limit: float = 10.0) -> None:
    """
    Wait, turn by turn of the reactor, until C{condition()} holds: for work
    a test cannot observe through a Deferred (a background refresh, a
    request reaching an origin in another object). Fails after C{limit}
    seconds rather than hanging.
    """
    import time

    from twisted.internet import task

    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition never held")
        await task.deferLater(reactor, 0.005, lambda: None)


def pattern(n: int) -> bytes:
    """
    @return: C{n} bytes of a recognisable repeating pattern.
    """
    block = bytes(range(256)) * 32
    return (block * (n // len(block) + 1))[:n]


def listenOrigin(testCase, resource: Optional[OriginResource] = None) -> Tuple[OriginResource, int]:
    """
    Start the scripted origin on a free loopback port.

    @return: the resource and the port number.
    """
    resource = resource or OriginResource()
    site = Site(resource)
    site.noisy = False
    site.log = lambda request: None
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    _trackServerConnections(testCase, site)
    return resource, port.getHost().port


class ScriptedOrigin(Protocol):
    """
    A raw origin: waits for a request head, then writes C{script} pieces
    (bytes, or a number of seconds to wait as a float, or C{None} to close,
    or C{"abort"} to reset), then stays open.
    """

    def __init__(self, owner: "ScriptedOriginFactory") -> None:
        self.owner = owner
        self.received = b""
        self.started = False

    def connectionMade(self) -> None:
        self.owner.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.started and b"\r\n\r\n" in self.received:
            self.started = True
            self._run(list(self.owner.script))

    def _run(self, steps) -> None:
        while steps:
            step = steps.pop(0)
            if step is None:
                self.transport.loseConnection()
                return
            if step == "abort":
                self.transport.abortConnection()
                return
            if isinstance(step, float):
                self.owner.calls.append(reactor.callLater(step, self._run, steps))
                return
            self.transport.write(step)

    def connectionLost(self, reason=None) -> None:
        self.owner.lost.append(self)
        for d in self.owner.lostWaiters:
            if not d.called:
                d.callback(self)


class ScriptedOriginFactory(Factory):
    noisy = False

    def __init__(self, script: Sequence) -> None:
        self.script = script
        self.connections: List[ScriptedOrigin] = []
        self.lost: List[ScriptedOrigin] = []
        self.lostWaiters: List[defer.Deferred] = []
        self.calls: List = []

    def buildProtocol(self, addr):
        return ScriptedOrigin(self)

    def whenLost(self) -> defer.Deferred:
        """
        @return: a Deferred firing when an origin connection closes (at
            once if one already has).
        """
        if self.lost:
            return defer.succeed(self.lost[-1])
        d = defer.Deferred()
        self.lostWaiters.append(d)
        return d


def listenScripted(testCase, script: Sequence) -> Tuple[ScriptedOriginFactory, int]:
    """
    Start a L{ScriptedOrigin} on a free loopback port.
    """
    factory = ScriptedOriginFactory(script)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)

    def cleanup():
        for call in factory.calls:
            if call.active():
                call.cancel()
        waits = []
        for conn in factory.connections:
            if conn not in factory.lost and conn.transport is not None:
                d = defer.Deferred()
                factory.lostWaiters.append(d)
                conn.transport.abortConnection()
                waits.append(d)
        return defer.DeferredList(waits)

    testCase.addCleanup(cleanup)
    return factory, port.getHost().port


def _trackServerConnections(testCase, factory) -> None:
    """
    Make C{factory}'s connections closable by the test's cleanup, so no
    server-side socket outlives a test.
    """
    build = factory.buildProtocol
    live: List = []

    def buildProtocol(addr):
        protocol = build(addr)
        live.append(protocol)
        return protocol

    factory.buildProtocol = buildProtocol

    def cleanup():
        waits = []
        for protocol in live:
            transport = getattr(protocol, "transport", None)
            if transport is None or getattr(transport, "disconnected", False):
                continue
            d = defer.Deferred()
            lost = protocol.connectionLost

            def connectionLost(reason, lost=lost, d=d):
                try:
                    lost(reason)
                finally:
                    d.callback(None)

            protocol.connectionLost = connectionLost
            transport.abortConnection()
            waits.append(d)
        return defer.DeferredList(waits)

    testCase.addCleanup(cleanup)


def startProxy(testCase, settings: Optional[ProxySettings] = None,
               upstreamSettings: Optional[UpstreamSettings] = None) -> Tuple[ProxyFactory, int, List[str]]:
    """
    Start a proxy on a free loopback port.

    @return: the factory, the port number, and the list its access log
        lines are appended to.
    """
    lines: List[str] = []
    pool = UpstreamPool(reactor, upstreamSettings or UpstreamSettings(connectTimeout=5, responseTimeout=5))
    factory = ProxyFactory(reactor, settings or ProxySettings(viaName=b"test-proxy"), pool, lines.append)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    factory.port = port
    testCase.addCleanup(pool.closeCachedConnections)
    testCase.addCleanup(port.stopListening)
    _trackServerConnections(testCase, factory)
    return factory, port.getHost().port, lines


class Response:
    """
    One parsed response: status, headers (list of pairs, lowercase names),
    body bytes.
    """

    def __init__(self, status: int, headers: List[Tuple[bytes, bytes]], body: bytes, version: str):
        self.status = status
        self.headers = headers
        self.body = body
        self.version = version

    def header(self, name: bytes) -> Optional[bytes]:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def headerNames(self) -> List[bytes]:
        return [k for k, _ in self.headers]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers!r} {len(self.body)} bytes>"


class _StopAfterHead(Exception):
    pass


class RawClient(Protocol):
    """
    Sends raw bytes and parses what comes back with httptools.

    @ivar responses: the complete responses so far (interim ones included).
    @ivar raw: every byte received (after a 101, the only record).
    @ivar closed: fires with C{raw} when the connection closes.
    """

    def __init__(self, headResponses: Sequence[int] = ()) -> None:
        self.raw = b""
        self.responses: List[Response] = []
        self.closed = defer.Deferred()
        self._waiters: List[Tuple[int, defer.Deferred]] = []
        self._headResponses = set(headResponses)
        self._finalCount = 0
        self._conditions: List = []
        self._reset()
        self.chunkSizes: List[int] = []

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._headers: List[Tuple[bytes, bytes]] = []
        self._body = b""

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        if self._parser is None:
            # Switched protocols: only C{raw} keeps what follows.
            self._checkConditions()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if not isinstance(e.__context__, _StopAfterHead):
                raise
            self._reset()
        except httptools.HttpParserUpgrade:
            # After a 101 the bytes are no longer HTTP.
            self._parser = None
        self._checkConditions()

    def whenTrue(self, predicate: Callable[["RawClient"], bool]) -> defer.Deferred:
        """
        @return: a Deferred firing once C{predicate(self)} holds after some
            bytes arrived (at once if it already holds), or failing if the
            connection closes first.
        """
        if predicate(self):
            return defer.succeed(self)
        d = defer.Deferred()
        self._conditions.append((predicate, d))
        return d

    def _checkConditions(self) -> None:
        for predicate, d in list(self._conditions):
            if predicate(self):
                self._conditions.remove((predicate, d))
                d.callback(self)

    def on_message_begin(self) -> None:
        self._headers = []
        self._body = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status >= 200 and self._finalCount in self._headResponses:
            self._complete()
            raise _StopAfterHead()

    def on_body(self, data: bytes) -> None:
        self._body += data

    def on_message_complete(self) -> None:
        self._complete()

    def _complete(self) -> None:
        status = self._parser.get_status_code()
        self.responses.append(
            Response(status, self._headers, self._body, self._parser.get_http_version())
        )
        if status >= 200:
            self._finalCount += 1
        finals = self.finalResponses()
        for n, d in list(self._waiters):
            if len(finals) >= n and not d.called:
                self._waiters.remove((n, d))
                d.callback(finals)

    def finalResponses(self) -> List[Response]:
        return [r for r in self.responses if r.status >= 200]

    def waitFor(self, n: int) -> defer.Deferred:
        """
        @return: a Deferred firing with the final responses once C{n} have
            arrived (or once the connection closes, with what there is).
        """
        finals = self.finalResponses()
        if len(finals) >= n:
            return defer.succeed(finals)
        d = defer.Deferred()
        self._waiters.append((n, d))
        return d

    def connectionLost(self, reason=None) -> None:
        for _, d in self._waiters:
            if not d.called:
                d.callback(self.finalResponses())
        self._waiters = []
        conditions, self._conditions = self._conditions, []
        for _, d in conditions:
            d.errback(ConnectionError("closed before the condition held"))
        self.closed.callback(self.raw)


async def connectClient(port: int, testCase, headResponses: Sequence[int] = ()) -> RawClient:
    """
    Connect a L{RawClient} to 127.0.0.1:C{port}; the test's cleanup closes
    it.
    """
    client = RawClient(headResponses)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)

    def cleanup():
        if client.transport is not None and not client.closed.called:
            client.transport.abortConnection()
            return client.closed

    testCase.addCleanup(cleanup)
    return client


async def exchange(port: int, testCase, data: bytes, count: int = 1,
                   headResponses: Sequence[int] = ()) -> Tuple[RawClient, List[Response]]:
    """
    Send C{data} on a new connection and wait for C{count} final responses.
    """
    client = await connectClient(port, testCase, headResponses)
    client.transport.write(data)
    responses = await client.waitFor(count)
    return client, responses


#: Runs twistd as its console script does, so the plugin is found through
#: PYTHONPATH from this checkout.
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Twistd(ProcessProtocol):
    """
    Runs twistd and fires C{listening} with the port from its log.
    """

    def __init__(self):
        self.output = b""
        self.errors = b""
        self.listening = defer.Deferred()
        self.ended = defer.Deferred()
        self._waiting = []

    def waitForOutput(self, text):
        """
        @return: a Deferred firing once C{text} has appeared in the output.
        """
        d = defer.Deferred()
        self._waiting.append((text, d))
        self._check()
        return d

    def _check(self):
        for text, d in list(self._waiting):
            if text in self.output:
                self._waiting.remove((text, d))
                d.callback(text)

    def outReceived(self, data):
        self.output += data
        self._check()
        match = re.search(rb"listening on 127\.0\.0\.1:(\d+)",
                          self.output)
        if match and not self.listening.called:
            self.listening.callback(int(match.group(1)))

    def errReceived(self, data):
        self.errors += data
        self.outReceived(data)

    def processEnded(self, reason):
        if not self.listening.called:
            self.listening.errback(RuntimeError(self.output.decode(errors="replace")))
        self.ended.callback(reason.value.exitCode if reason.value.signal is None else -reason.value.signal)


async def twistdOutcome(*arguments: str, env: Optional[Dict[str, Optional[str]]] = None,
                        path: str = REPO) -> Tuple[int, str, str]:
    """
    Run C{twistd ARGUMENTS} from this checkout until it ends on its own (a
    start-up that must fail, C{--help}).

    @param env: variables set (or, with C{None}, removed) in this process's
        environment for it.
    @param path: the working directory (where twistd writes its pid file).
    @return: the exit status (minus the signal number if a signal ended
        it), everything it wrote to standard output and error, and what it
        wrote to standard error alone.
    """
    import sys

    environ = dict(os.environ, PYTHONPATH=REPO)
    for name, value in (env or {}).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    process = Twistd()
    process.listening.addErrback(lambda _: None)
    reactor.spawnProcess(process, sys.executable, [sys.executable, "-c", TWISTD, *arguments],
                         env=environ, path=path)
    code = await process.ended
    return (code, process.output.decode(errors="replace"),
            process.errors.decode(errors="replace"))


async def startTwistd(testCase, *args, env: Optional[Dict[str, str]] = None,
                      logfile: Optional[str] = None):
    """
    Run C{twistd -n cachingproxy --port tcp:0:interface=127.0.0.1
    --cache-dir none ARGS} from the checkout; the test's cleanup sends it
    SIGTERM and waits for it to end.

    @param logfile: twistd's C{--logfile}: the log, and the port it
        names, are read from that file (C{process.output} then holds only
        what was written to stdout and stderr).

    @return: the L{Twistd}, its process transport and the port it listens
        on.
    """
    import signal
    import sys

    process = Twistd()
    twistdArgs = [] if logfile is None else ["--logfile", logfile]
    transport = reactor.spawnProcess(
        process,
        sys.executable,
        [sys.executable, "-c", TWISTD, "-n", "--pidfile=", *twistdArgs,
         "cachingproxy", "--port", "tcp:0:interface=127.0.0.1", "--cache-dir", "none", *args],
        env=dict(os.environ if env is None else env, PYTHONPATH=REPO),
        path=REPO,
    )

    def stop():
        if not process.ended.called:
            transport.signalProcess(signal.SIGTERM)
        return process.ended

    testCase.addCleanup(stop)
    if logfile is not None:
        # Nothing says "listening" on stdout: that end is not awaited.
        process.listening.addErrback(lambda failure: None)

        def listening():
            try:
                with open(logfile, "rb") as f:
                    found = re.search(rb"listening on 127\.0\.0\.1:(\d+)", f.read())
            except FileNotFoundError:
                return None
            if process.ended.called:
                raise AssertionError("twistd ended: " + process.output.decode(errors="replace"))
            return found and int(found.group(1))

        await until(listening, 30)
        return process, transport, listening()
    port = await process.listening
    return process, transport, port


def isWorker(pid: int) -> bool:
    """
    @return: whether C{pid} is a live cachingproxy worker process.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"cachingproxy.service.child" in f.read()
    except OSError:
        return False


def stopWhenDone(testCase, process, transport, pids) -> None:
    """
    At the end of C{testCase}, stop the twistd C{process} with SIGTERM and,
    whatever went wrong, kill any worker among C{pids} (a set the test
    fills as it meets them) that is still running.
    """
    import signal

    async def stop():
        if not process.ended.called:
            transport.signalProcess(signal.SIGTERM)
        await process.ended
        for pid in pids:
            if isWorker(pid):
                os.kill(pid, signal.SIGKILL)

    testCase.addCleanup(lambda: defer.Deferred.fromCoroutine(stop()))
