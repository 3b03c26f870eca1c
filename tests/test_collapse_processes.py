"""
Collapsed forwarding across processes, end to end: C{twistd cachingproxy
--workers 2} (and two separate proxies sharing one C{--cache-dir}) in
front of a slow origin in this process that counts what it receives.

Which worker answered a request is learnt on the same keep-alive
connection: after the request, the client asks the health endpoint, which
says its process id.
"""

import json
import os
import signal
import sys
import time
from collections import Counter

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .helpers import (REPO, TWISTD, Twistd, connectClient, listenOrigin, stopWhenDone,
                      temporaryPath, until)

HEALTH = b"GET /_cachingproxy/health HTTP/1.1\r\nHost: x\r\n\r\n"


def bodyOf(path: bytes) -> bytes:
    return path * 200


class CountingOrigin(Resource):
    """
    Paths:

      - C{/slow/...}: after C{delay} seconds, a cacheable body made of the
        path;
      - C{/nostore/...}: after C{delay} seconds, the same with
        C{Cache-Control: no-store};
      - C{/hang/...}: the first request is never answered; later ones at
        once, cacheable.

    @ivar counts: requests received, by path.
    """

    isLeaf = True

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.counts: Counter = Counter()

    def render(self, request):
        path = request.path
        self.counts[path] += 1
        kind = path.split(b"/")[1]
        if kind == b"hang" and self.counts[path] == 1:
            return NOT_DONE_YET
        request.setHeader(b"Cache-Control", b"no-store" if kind == b"nostore" else b"max-age=600")
        if kind == b"hang":
            return bodyOf(path)

        def later():
            request.write(bodyOf(path))
            request.finish()

        call = reactor.callLater(self.delay, later)
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return NOT_DONE_YET


class Proxy:
    """
    One C{twistd -n cachingproxy} process (a supervisor and its workers,
    or a single process).
    """

    def __init__(self, process: Twistd, transport, port: int) -> None:
        self.process = process
        self.transport = transport
        self.port = port


#: Bursts tried until one lands on both workers: the kernel hands the
#: connections of a burst to whichever worker wakes first, and a worker
#: that wakes first may accept all 40 before the other does (more often,
#: the faster the workers are).
_ATTEMPTS = 20


class CollapseAcrossProcessesTests(TestCase):
    """
    Concurrent misses for one URL in several processes sharing a disk
    cache folder.
    """

    timeout = 120

    def setUp(self) -> None:
        self.origin = CountingOrigin(0.5)
        _, self.originPort = listenOrigin(self, self.origin)
        self.cacheDir = temporaryPath(self, "cache")
        self.pidsSeen: set = set()

    async def startProxy(self, *args: str, workers: int = 2) -> Proxy:
        process = Twistd()
        transport = reactor.spawnProcess(
            process,
            sys.executable,
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=",
             "cachingproxy", "--port", "tcp:0:interface=127.0.0.1", "--workers", str(workers),
             "--cache-dir", self.cacheDir, "--no-access-log", "--shutdown-grace", "2", *args],
            env=dict(os.environ, PYTHONPATH=REPO),
            path=REPO,
        )
        stopWhenDone(self, process, transport, self.pidsSeen)
        port = await process.listening
        if workers > 1:
            # Both workers must be accepting before the burst, or the
            # first connections all wait in the backlog for one of them.
            await until(lambda: process.output.count(b") ready") >= workers
                        or process.ended.called, 30)
        return Proxy(process, transport, port)

    def get(self, path: bytes) -> bytes:
        return b"GET http://127.0.0.1:%d%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (
            self.originPort, path, self.originPort)

    async def fetchAndWho(self, port: int, path: bytes):
        """
        GET C{path} through the proxy on C{port}, then ask the health
        endpoint on the same connection.

        @return: the response and the pid of the process that served it.
        """
        client = await connectClient(port, self)
        client.transport.write(self.get(path) + HEALTH)
        responses = await client.waitFor(2)
        client.transport.loseConnection()
        self.assertEqual(len(responses), 2, client.raw[:500])
        pid = json.loads(responses[1].body)["pid"]
        self.pidsSeen.add(pid)
        return responses[0], pid

    async def burst(self, ports, path: bytes, n: int = 40):
        """
        C{n} concurrent requests for C{path}, spread over C{ports}.

        @return: C{[(response, pid)]}.
        """
        return await defer.gatherResults([
            defer.Deferred.fromCoroutine(self.fetchAndWho(ports[i % len(ports)], path))
            for i in range(n)])

    async def test_workersFetchOnce(self):
        """
        40 concurrent misses for one URL, answered by both workers, reach
        the origin once, and every client gets the whole body.
        """
        proxy = await self.startProxy()
        for attempt in range(_ATTEMPTS):
            path = b"/slow/%d" % attempt
            answers = await self.burst([proxy.port], path)
            for response, _ in answers:
                self.assertEqual((response.status, response.body), (200, bodyOf(path)))
            self.assertEqual(self.origin.counts[path], 1)
            if len({pid for _, pid in answers}) == 2:
                break
        else:
            self.fail("the 40 requests never landed on both workers")

    async def test_notStorableInParallel(self):
        """
        An answer that may not be stored: 40 concurrent requests are all
        answered, in about one origin delay rather than one after the
        other (the other worker's first miss learns from the pass marker).
        """
        self.origin.delay = 1.0
        proxy = await self.startProxy()
        for attempt in range(_ATTEMPTS):
            path = b"/nostore/%d" % attempt
            started = time.monotonic()
            answers = await self.burst([proxy.port], path)
            elapsed = time.monotonic() - started
            for response, _ in answers:
                self.assertEqual((response.status, response.body), (200, bodyOf(path)))
            self.assertEqual(self.origin.counts[path], 40)
            self.assertLess(elapsed, 40 * self.origin.delay / 4)
            if len({pid for _, pid in answers}) == 2:
                break
        else:
            self.fail("the 40 requests never landed on both workers")

    async def connectionTo(self, port: int, pid: int, keep: list):
        """
        @return: a kept-alive client connection served by worker C{pid}
            (connections to the other worker are kept in C{keep} so that
            the next one may land elsewhere).
        """
        for _ in range(100):
            client = await connectClient(port, self)
            client.transport.write(HEALTH)
            [response] = await client.waitFor(1)
            found = json.loads(response.body)["pid"]
            self.pidsSeen.add(found)
            if pid is None or found == pid:
                return client, found
            keep.append(client)
        self.fail(f"no connection reached worker {pid}")

    async def test_killedHolderDoesNotWedge(self):
        """
        A worker SIGKILLed while it holds a fill lock (its origin request
        hangs) does not wedge the other: the kernel releases the lock, and
        the waiting worker fetches and answers its clients, well within
        the wait cap.
        """
        proxy = await self.startProxy("--collapse-wait", "20")
        keep: list = []
        holder, holderPid = await self.connectionTo(proxy.port, None, keep)
        waiters = []
        while len(waiters) < 3:
            client, pid = await self.connectionTo(proxy.port, None, keep)
            if pid != holderPid:
                waiters.append(client)
            else:
                keep.append(client)
        path = b"/hang/1"
        holder.transport.write(self.get(path))
        await until(lambda: self.origin.counts[path] == 1, 10)
        for client in waiters:
            client.transport.write(self.get(path))
        # The other worker's misses wait for the lock (a worker on its
        # own would have had its answer from the origin by now).
        await task.deferLater(reactor, 1.0, lambda: None)
        self.assertEqual(self.origin.counts[path], 1)
        self.assertEqual([len(c.finalResponses()) for c in waiters], [1, 1, 1])
        killed = time.monotonic()
        os.kill(holderPid, signal.SIGKILL)
        for client in waiters:
            responses = await client.waitFor(2)
            self.assertEqual((responses[1].status, responses[1].body), (200, bodyOf(path)))
        self.assertLess(time.monotonic() - killed, 10)
        self.assertEqual(self.origin.counts[path], 2)

    async def test_twoProxiesShareCacheFolder(self):
        """
        Two separate proxies given the same --cache-dir: 40 concurrent
        misses for one URL, half through each, reach the origin once.
        """
        first = await self.startProxy(workers=1)
        second = await self.startProxy(workers=1)
        path = b"/slow/shared"
        answers = await self.burst([first.port, second.port], path)
        for response, _ in answers:
            self.assertEqual((response.status, response.body), (200, bodyOf(path)))
        self.assertEqual(len({pid for _, pid in answers}), 2)
        self.assertEqual(self.origin.counts[path], 1)
