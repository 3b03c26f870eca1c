"""
Worker processes on one listening socket (C{--workers N}): the supervisor
with a fake process reactor, the worker side with a memory reactor, one
real adoption in this process, and C{twistd cachingproxy --workers 2} end
to end.
"""

import json
import os
import re
import shutil
import signal
import socket
import sys
from typing import List
from unittest import SkipTest

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from cachingproxy.service import tap
from cachingproxy.service.config import StartupError
from cachingproxy.service.child import Worker, splitArguments
from cachingproxy.service.supervisor import WorkerSupervisor, WorkersService, childArguments, parseListener

from .helpers import (REPO, TWISTD, RawClient, isWorker, listenOrigin, stopWhenDone,
                      temporaryPath, until)
from .helpers import Twistd as _Twistd

HEALTH = b"GET /_cachingproxy/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


# -- a fake process reactor ---------------------------------------------------


@implementer(IProcessTransport)
class FakeProcess:
    """
    A spawned process that only records signals; the test ends it.
    """

    def __init__(self, proto, executable, args, env, childFDs, pid):
        self.proto = proto
        self.executable = executable
        self.args = args
        self.env = env
        self.childFDs = childFDs
        self.pid = pid
        self.signals: List[str] = []

    def signalProcess(self, signalID):
        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(signalID)

    def sayReady(self):
        """
        Write the readiness line as a worker does.
        """
        readyFD = [fd for fd, kind in self.childFDs.items() if kind == "r"][0]
        self.proto.childDataReceived(readyFD, b"cachingproxy-worker-ready 1 %d\n" % self.pid)

    def end(self, exitCode=0, signal=None):
        """
        Deliver the end of the process.
        """
        self.pid = None
        if exitCode == 0 and signal is None:
            reason = ProcessDone(0)
        else:
            reason = ProcessTerminated(exitCode if signal is None else None, signal)
        self.proto.processEnded(Failure(reason))


class ProcessReactor(MemoryReactorClock):
    """
    A memory reactor with a clock whose C{spawnProcess} records fake
    processes (like C{DummyProcessReactor} in Twisted's test_procmon).
    """

    def __init__(self):
        super().__init__()
        self.processes: List[FakeProcess] = []

    def spawnProcess(self, processProtocol, executable, args=(), env=None, path=None,
                     uid=None, gid=None, usePTY=0, childFDs=None):
        process = FakeProcess(processProtocol, executable, args, env, childFDs,
                              1000 + len(self.processes))
        self.processes.append(process)
        processProtocol.makeConnection(process)
        return process

    def alive(self, workerId=None):
        return [p for p in self.processes if p.pid is not None
                and workerId in (None, p.args[p.args.index("--worker-id") + 1])]


class SupervisorTests(SynchronousTestCase):
    """
    L{WorkerSupervisor}: spawning, restarting, stopping, reloading.
    """

    def setUp(self):
        self.reactor = ProcessReactor()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.supervisor = WorkerSupervisor(
            self.reactor, 2, [5], ["--cache-dir=none"], grace=3.0,
            environ={"LISTEN_FDS": "1", "LISTEN_PID": "1", "PYTHONPATH": "/elsewhere",
                     "CACHINGPROXY_X": "y"},
            executable="/usr/bin/python3")

    def logged(self):
        return [formatEvent(e) for e in self.events]

    def test_spawnArguments(self):
        """
        Starting spawns one worker per slot: C{-m cachingproxy.service.child} with
        the listening descriptor inherited at its number, the worker id, a
        readiness pipe on a free descriptor, and the child arguments; the
        environment is the parent's minus systemd's variables, with this
        checkout first on PYTHONPATH.
        """
        self.supervisor.startService()
        first, second = self.reactor.processes
        self.assertEqual(first.executable, "/usr/bin/python3")
        args = [a for a in first.args if a != "-P"]
        self.assertEqual(
            args,
            ["/usr/bin/python3", "-m", "cachingproxy.service.child", "--inherit-fd", "5",
             "--worker-id", "1", "--ready-fd", "6", "--cache-dir=none"])
        self.assertIn("2", second.args[second.args.index("--worker-id") + 1])
        self.assertEqual(first.childFDs, {0: "w", 1: 1, 2: 2, 5: 5, 6: "r"})
        self.assertNotIn("LISTEN_FDS", first.env)
        self.assertNotIn("LISTEN_PID", first.env)
        self.assertEqual(first.env["CACHINGPROXY_X"], "y")
        self.assertEqual(first.env["PYTHONPATH"].split(os.pathsep), [REPO, "/elsewhere"])

    def test_restartWithBackoff(self):
        """
        A worker that dies is restarted after the minimum delay; while it
        keeps dying within a second of its start the delay doubles up to
        the maximum; one that lived longer is restarted after the minimum
        again. Each death is logged with the status or signal.
        """
        self.supervisor.startService()
        delays = []
        for _ in range(7):
            [victim] = self.reactor.alive("1")
            victim.end(1)
            before = len(self.reactor.processes)
            [restart] = self.reactor.getDelayedCalls()
            delay = restart.getTime() - self.reactor.seconds()
            self.reactor.advance(delay)
            self.assertEqual(len(self.reactor.processes), before + 1)
            delays.append(round(delay, 3))
        self.assertEqual(delays, [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])

        self.reactor.advance(2)
        self.reactor.alive("1")[0].end(signal=signal.SIGKILL)
        self.reactor.advance(0.2)
        self.assertEqual(len(self.reactor.alive()), 2)
        self.assertTrue(any("killed by signal 9 (SIGKILL) unexpectedly" in line
                            for line in self.logged()), self.logged())
        self.assertTrue(any("exited with status 1 unexpectedly" in line for line in self.logged()))

    def test_stopTermThenKill(self):
        """
        Stopping sends SIGTERM to every worker and SIGKILL to one still
        alive after the grace plus a margin; the stop fires only once all
        have ended, and none is restarted.
        """
        self.supervisor.startService()
        first, second = self.reactor.processes
        stopped = self.supervisor.stopService()
        self.assertEqual((first.signals, second.signals), (["TERM"], ["TERM"]))
        first.end(0)
        self.reactor.advance(self.supervisor.killTime - 0.1)
        self.assertEqual(second.signals, ["TERM"])
        self.assertNoResult(stopped)
        self.reactor.advance(0.1)
        self.assertEqual(second.signals, ["TERM", "KILL"])
        self.assertNoResult(stopped)
        second.end(signal=signal.SIGKILL)
        self.successResultOf(stopped)
        self.reactor.advance(10)
        self.assertEqual(len(self.reactor.processes), 2)

    def test_stopCancelsRestart(self):
        """
        A restart pending when the service stops does not happen.
        """
        self.supervisor.startService()
        self.reactor.processes[0].end(1)
        stopped = self.supervisor.stopService()
        self.reactor.processes[1].end(0)
        self.successResultOf(stopped)
        self.reactor.advance(10)
        self.assertEqual(len(self.reactor.processes), 2)

    def test_allReady(self):
        """
        C{allReady} fires once every worker has said it is ready.
        """
        self.supervisor.startService()
        first, second = self.reactor.processes
        first.sayReady()
        self.assertNoResult(self.supervisor.allReady)
        second.sayReady()
        self.successResultOf(self.supervisor.allReady)

    def test_rollingReload(self):
        """
        A reload replaces the workers one at a time: each replacement is
        spawned, the old worker gets SIGTERM only once its replacement is
        ready, and only then is the next replacement spawned.
        """
        self.supervisor.startService()
        old1, old2 = self.reactor.processes
        reloaded = self.supervisor.reload()
        self.assertEqual(len(self.reactor.processes), 3)
        new1 = self.reactor.processes[2]
        self.assertIn("1", new1.args[new1.args.index("--worker-id") + 1])
        self.reactor.advance(5)
        self.assertEqual((old1.signals, old2.signals), ([], []))

        new1.sayReady()
        self.assertEqual((old1.signals, old2.signals), (["TERM"], []))
        self.assertEqual(len(self.reactor.processes), 4)
        new2 = self.reactor.processes[3]
        self.assertEqual(new2.args[new2.args.index("--worker-id") + 1], "2")
        old1.end(0)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.processes), 4, "a retired worker is not restarted")
        self.assertNoResult(reloaded)

        new2.sayReady()
        self.assertEqual(old2.signals, ["TERM"])
        self.successResultOf(reloaded)
        self.assertEqual([w.pid for w in self.supervisor.workers()], [new1.pid, new2.pid])
        self.assertEqual(new1.signals + new2.signals, [])

    def test_reloadStopsWhenReplacementFails(self):
        """
        A replacement that dies before it is ready stops the reload: the
        old workers keep serving, untouched.
        """
        self.supervisor.startService()
        old1, old2 = self.reactor.processes
        reloaded = self.supervisor.reload()
        self.reactor.processes[2].end(2)
        self.successResultOf(reloaded)
        self.assertEqual((old1.signals, old2.signals), ([], []))
        self.assertEqual([w.pid for w in self.supervisor.workers()], [old1.pid, old2.pid])
        self.assertTrue(any("reload stopped" in line for line in self.logged()))

    def test_reloadTimesOut(self):
        """
        A replacement that never says ready is killed after the readiness
        timeout and the old workers keep serving.
        """
        self.supervisor.startService()
        old1, old2 = self.reactor.processes
        reloaded = self.supervisor.reload()
        new = self.reactor.processes[2]
        self.reactor.advance(self.supervisor.readyTimeout)
        self.successResultOf(reloaded)
        self.assertEqual(new.signals, ["TERM"])
        self.assertEqual((old1.signals, old2.signals), ([], []))

    def test_oldWorkerDiesDuringReload(self):
        """
        An old worker that dies while its replacement starts is not
        restarted: the replacement takes its place.
        """
        self.supervisor.startService()
        old1, old2 = self.reactor.processes
        reloaded = self.supervisor.reload()
        new1 = self.reactor.processes[2]
        old1.end(signal=signal.SIGKILL)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.processes), 3)
        new1.sayReady()
        self.reactor.processes[3].sayReady()
        self.successResultOf(reloaded)
        self.assertEqual(len(self.supervisor.workers()), 2)

    def test_reloadDuringReloadRunsAgain(self):
        """
        A reload asked for during one runs again after it.
        """
        self.supervisor.startService()
        first = self.supervisor.reload()
        second = self.supervisor.reload()
        for index in range(2, 6):
            self.reactor.processes[index].sayReady()
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(len(self.reactor.processes), 6)


class ServiceTests(SynchronousTestCase):
    """
    L{WorkersService}, L{parseListener}, L{childArguments} and makeService.
    """

    def options(self, *argv):
        options = tap.Options()
        options.parseOptions(list(argv))
        return options

    def test_makeServiceWithWorkers(self):
        """
        With --workers 2 makeService builds the parent (not started); the
        workers get every option but --port and --workers.
        """
        options = self.options("--port", "tcp:0:interface=127.0.0.1", "--workers", "2",
                               "--cache-dir", "none", "--x-forwarded-for")
        top = tap.makeService(options)
        [parent] = list(top)
        self.assertIsInstance(parent, WorkersService)
        self.assertEqual(parent.count, 2)
        self.assertEqual(parent.descriptions, ["tcp:0:interface=127.0.0.1"])
        self.assertEqual(sorted(parent.childArgs), ["--cache-dir=none", "--x-forwarded-for"])
        self.assertFalse(parent.running)

    def test_repeatableOptionsPassedOn(self):
        """
        Repeatable options reach the workers once a value, in order, and
        parse there to the same settings.
        """
        options = self.options("--workers", "2", "--cache-dir", "none",
                               "--allow", "10.0.0.0/8", "--allow", "loopback",
                               "--refresh-rule", r"\.deb$ 1d 0 30d",
                               "--refresh-rule", "-i /dists/ 0 10 1h override")
        arguments = childArguments(options)
        self.assertEqual(arguments, [
            "--cache-dir=none", "--allow=10.0.0.0/8", "--allow=loopback",
            r"--refresh-rule=\.deb$ 1d 0 30d", "--refresh-rule=-i /dists/ 0 10 1h override",
        ])
        worker = self.options(*arguments)
        self.assertEqual(worker.config.refreshRules, options.config.refreshRules)
        self.assertEqual(worker.config.allow, options.config.allow)

    def test_makeServiceOneWorker(self):
        """
        With one worker (the default) the proxy runs in the twistd process.
        """
        services = list(tap.makeService(self.options("--port", "tcp:0", "--no-cache")))
        [proxy] = [s for s in services if isinstance(s, tap.ProxyService)]
        self.assertEqual(proxy.description, "tcp:0")

    def test_unsharableListener(self):
        """
        Listeners the workers cannot share are refused with the option
        named.
        """
        for description in ["unix:/tmp/x.sock", "ssl:https", "tls:/etc/certs:port=x",
                            "systemd:domain=UNIX:index=0"]:
            error = self.assertRaises(
                usage.UsageError, WorkersService, None, [description], 2)
            self.assertIn("--port", str(error))

    def test_serviceStartStop(self):
        """
        The parent service binds, hands the descriptor to the supervisor's
        workers, installs a SIGHUP handler, and on stop restores the handler
        and closes its copy of the socket at once (new clients are refused
        once the workers let go of theirs), firing once the workers have
        ended.
        """
        processes = ProcessReactor()
        before = signal.getsignal(signal.SIGHUP)
        parent = WorkersService(processes, ["tcp:0:interface=127.0.0.1"], 2, ["--no-cache"],
                                grace=1.0)
        parent.privilegedStartService()
        parent.startService()
        self.addCleanup(lambda: [listener.close() for listener in parent.listeners])
        [listener] = parent.listeners
        self.assertIsNot(signal.getsignal(signal.SIGHUP), before)
        first, second = processes.processes
        self.assertEqual(first.childFDs[listener.fileno], listener.fileno)
        self.assertEqual(first.args[-1], "--no-cache")

        stopped = parent.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)
        self.assertIsNone(listener.socket)
        first.end(0)
        self.assertNoResult(stopped)
        second.end(0)
        self.successResultOf(stopped)

    def test_systemdNotify(self):
        """
        Under systemd (C{NOTIFY_SOCKET}) the parent says READY=1 once every
        worker is ready and STOPPING=1 when it stops; the workers do not
        get the variable.
        """
        path = temporaryPath(self, "notify")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(path)
        receiver.setblocking(False)
        self.addCleanup(receiver.close)
        previous = os.environ.get("NOTIFY_SOCKET")
        os.environ["NOTIFY_SOCKET"] = path
        self.addCleanup(lambda: os.environ.pop("NOTIFY_SOCKET") if previous is None
                        else os.environ.update(NOTIFY_SOCKET=previous))
        processes = ProcessReactor()
        parent = WorkersService(processes, ["tcp:0:interface=127.0.0.1"], 2,
                                installSignalHandlers=False)
        parent.startService()
        self.addCleanup(lambda: [listener.close() for listener in parent.listeners])
        first, second = processes.processes
        self.assertNotIn("NOTIFY_SOCKET", first.env)
        first.sayReady()
        self.assertRaises(BlockingIOError, receiver.recv, 1000)
        second.sayReady()
        self.assertTrue(receiver.recv(1000).startswith(b"READY=1\n"))
        stopped = parent.stopService()
        self.assertTrue(receiver.recv(1000).startswith(b"STOPPING=1\n"))
        first.end(0)
        second.end(0)
        self.successResultOf(stopped)

    def test_cannotListen(self):
        """
        A port that cannot be bound stops the parent's start with a
        L{StartupError} naming it (twistd then removes its pid file and
        ends) before any worker is spawned; what was bound is closed.
        """
        processes = ProcessReactor()
        first = parseListener("tcp:0:interface=127.0.0.1")
        self.addCleanup(first.close)
        busy = f"tcp:{first.address.port}:interface=127.0.0.1"
        bound = []

        def listen(description):
            bound.append(parseListener(description))
            return bound[-1]

        parent = WorkersService(processes, ["tcp:0:interface=127.0.0.1", busy], 2,
                                installSignalHandlers=False, listen=listen)
        error = self.assertRaises(StartupError, parent.privilegedStartService)
        self.assertEqual(str(error), f"cannot listen on {busy}: address already in use")
        self.assertEqual(processes.processes, [])
        self.assertIsNone(bound[0].socket)

    def test_parseListener(self):
        """
        tcp: binds a listening, non-blocking socket on the interface, with
        the address the proxy logs.
        """
        listener = parseListener("tcp:0:interface=127.0.0.1")
        self.addCleanup(listener.close)
        self.assertEqual(listener.family, socket.AF_INET)
        self.assertEqual(listener.address.host, "127.0.0.1")
        self.assertNotEqual(listener.address.port, 0)
        self.assertFalse(listener.socket.getblocking())
        self.assertTrue(listener.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))

    def test_parseListenerIPv6(self):
        """
        An IPv6 interface (escaped colons, as Twisted's parser takes them)
        makes an IPv6 socket.
        """
        try:
            listener = parseListener("tcp6:0:interface=\\:\\:1")
        except OSError as e:
            raise self.skipTest(f"no IPv6 loopback: {e}")
        self.addCleanup(listener.close)
        self.assertEqual((listener.family, listener.address.host), (socket.AF_INET6, "::1"))

    def test_systemdListener(self):
        """
        systemd:domain=INET:index=N takes descriptor 3+N from LISTEN_FDS
        instead of binding.
        """
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        self.addCleanup(sock.close)
        fd = sock.fileno()
        environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": str(fd - 2)}
        listener = parseListener(f"systemd:domain=INET:index={fd - 3}", environ)
        self.assertEqual(listener.fileno, fd)
        self.assertEqual(listener.address.port, sock.getsockname()[1])
        listener.socket.detach()

    def test_splitArguments(self):
        """
        The worker takes its own options out and leaves the cachingproxy
        ones.
        """
        self.assertEqual(
            splitArguments(["--inherit-fd", "5", "--worker-id", "2", "--ready-fd=6",
                            "--cache-dir=none", "--inherit-fd=7"]),
            ([5, 7], "2", 6, ["--cache-dir=none"]))
        self.assertRaises(usage.UsageError, splitArguments, ["--worker-id", "1"])
        self.assertRaises(usage.UsageError, splitArguments, ["--inherit-fd", "x"])


class WorkerSideTests(SynchronousTestCase):
    """
    L{cachingproxy.service.child.Worker} with a memory reactor.
    """

    def inherited(self) -> int:
        """
        @return: a descriptor of a listening loopback socket, as a worker
            inherits it from its parent.
        """
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        self.addCleanup(sock.close)
        return os.dup(sock.fileno())

    def test_adoptAndStop(self):
        """
        The worker adopts the inherited descriptor with its family, closes
        its own copy, names itself in the health report, writes the
        readiness line, and on stop stops listening and drains.
        """
        memory = MemoryReactorClock()
        fd = self.inherited()
        readRead, readyWrite = os.pipe()
        self.addCleanup(os.close, readRead)
        config = tap.Options()
        config.parseOptions(["--cache-dir", "none", "--no-access-log"])
        worker = Worker(memory, config.config, "3", [fd], readyWrite)
        worker.start()
        [(adopted, family, factory)] = memory.adoptedPorts
        self.assertEqual((adopted, family), (fd, socket.AF_INET))
        self.assertRaises(OSError, os.fstat, fd)
        self.assertIs(factory, worker.factory)
        self.assertIs(factory.port, worker.ports[0])
        self.assertEqual(factory.admin.workerId, "3")
        self.assertEqual(os.read(readRead, 100), b"cachingproxy-worker-ready 3 %d\n" % os.getpid())
        stopped = worker.stop()
        self.successResultOf(stopped)
        self.assertTrue(factory.draining)
        self.assertEqual(worker.ports, [])

    def test_saysNoLongerAcceptingOnceClosed(self):
        """
        The worker says it no longer accepts once its listening port is
        closed, not when it tells it to close (a port closes in a later
        reactor turn, and until then a connection may still be queued on
        the shared socket through it): a client that reads the line and
        connects is refused, not reset.
        """
        memory = MemoryReactorClock()
        config = tap.Options()
        config.parseOptions(["--cache-dir", "none", "--no-access-log"])
        worker = Worker(memory, config.config, "2", [self.inherited()])
        worker.start()
        closing = defer.Deferred()
        worker.ports[0].stopListening = lambda: closing
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

        def said():
            return [formatEvent(e) for e in events
                    if "no longer accepting" in (e.get("log_format") or "")]

        stopped = worker.stop()
        self.assertEqual(said(), [])
        closing.callback(None)
        self.assertEqual(said(), ["worker 2 (pid %d) stopping: no longer accepting" % os.getpid()])
        self.successResultOf(stopped)

    def test_sameServiceAsAlone(self):
        """
        A worker serves with the service the proxy on its own builds (the
        same services, stopped and drained the same way); only its
        listening sockets differ.
        """
        memory = MemoryReactorClock()
        options = tap.Options()
        options.parseOptions(["--port", "tcp:0", "--cache-dir", "none", "--no-access-log"])
        worker = Worker(memory, options.config, "1", [self.inherited()])
        worker.start()
        alone = tap.makeService(options, memory)
        self.assertIsInstance(worker.service, tap.TopService)
        self.assertEqual([type(s) for s in worker.service], [type(s) for s in alone])
        self.successResultOf(worker.stop())
        self.assertFalse(worker.service.running)


# -- one real adoption in this process --------------------------------------


async def request(port: int, data: bytes = HEALTH, timeout: float = 10.0):
    """
    One request on a new connection.

    @return: the response.
    @raise Exception: if it fails (refused, closed without a response).
    """
    client = RawClient()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout)
    await connectProtocol(endpoint, client)
    client.transport.write(data)
    call = reactor.callLater(timeout, client.transport.abortConnection)
    try:
        responses = await client.waitFor(1)
        await client.closed
    finally:
        if call.active():
            call.cancel()
    if not responses:
        raise ConnectionError(f"closed without a response: {client.raw!r}")
    return responses[0]


class AdoptionTests(TestCase):
    """
    Two workers adopting one real listening socket in this process.
    """

    timeout = 30

    def startWorker(self, sock, workerId):
        options = tap.Options()
        options.parseOptions(["--cache-dir", "none", "--no-access-log"])
        worker = Worker(reactor, options.config, workerId, [os.dup(sock.fileno())])
        worker.start()
        self.addCleanup(worker.stop)
        return worker

    async def test_stopOnlyCloses(self):
        """
        Stopping one adopter closes its copy without shutting the shared
        socket down: the other keeps accepting every new connection.
        """
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(50)
        sock.setblocking(False)
        self.addCleanup(sock.close)
        port = sock.getsockname()[1]
        first = self.startWorker(sock, "a")
        second = self.startWorker(sock, "b")
        response = await request(port)
        self.assertEqual(response.status, 200)
        self.assertIn(json.loads(response.body)["worker"], ("a", "b"))

        await first.stop()
        workersSeen = set()
        for _ in range(20):
            response = await request(port)
            self.assertEqual(response.status, 200)
            workersSeen.add(json.loads(response.body)["worker"])
        self.assertEqual(workersSeen, {"b"})
        await second.stop()


    async def test_acceptQueued(self):
        """
        L{acceptQueued} takes every connection waiting in the kernel's queue
        (which closing the listening socket would reset), so that they are
        served: here a port that has stopped reading has three queued, and
        after L{acceptQueued} and C{stopListening} each of them still gets
        its response, while a new connection is refused.
        """
        from twisted.internet.error import ConnectionRefusedError

        from cachingproxy._twistedinternals import acceptQueued
        from .helpers import startProxy

        factory, port, _ = startProxy(self)
        listening = factory.port
        listening.stopReading()
        clients = []
        for _ in range(3):
            client = socket.create_connection(("127.0.0.1", port))
            client.sendall(HEALTH)
            self.addCleanup(client.close)
            clients.append(client)
        self.assertEqual(acceptQueued(listening), 3)
        self.assertEqual(acceptQueued(listening), 0)
        await listening.stopListening()
        with self.assertRaises(ConnectionRefusedError):
            await request(port, timeout=2.0)
        for client in clients:
            client.setblocking(False)
        received = {id(c): b"" for c in clients}

        def answered():
            for client in clients:
                try:
                    received[id(client)] += client.recv(65536)
                except BlockingIOError:
                    pass
            return all(data.startswith(b"HTTP/1.1 ") for data in received.values())

        await until(answered, 10)


# -- twistd --workers 2 end to end --------------------------------------------


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class WorkersEndToEndTests(TestCase):
    """
    C{twistd -n cachingproxy --workers 2} as an operator runs it.
    """

    timeout = 90

    def _stopWhenDone(self, process, transport) -> None:
        stopWhenDone(self, process, transport, self.pidsSeen)

    async def startTwistd(self, *args):
        process = _Twistd()
        self.pidsSeen = set()
        transport = reactor.spawnProcess(
            process,
            sys.executable,
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=",
             "cachingproxy", "--port", "tcp:0:interface=127.0.0.1", "--workers", "2",
             "--cache-dir", "none", "--no-access-log", "--shutdown-grace", "5", *args],
            env=dict(os.environ, PYTHONPATH=REPO),
            path=REPO,
        )

        self._stopWhenDone(process, transport)
        port = await process.listening
        # Connections made earlier would wait in the backlog until a
        # worker accepts; waiting for both lets both take some.
        await until(lambda: process.output.count(b") ready") >= 2 or process.ended.called, 20)
        return process, transport, port

    async def health(self, port):
        response = await request(port)
        self.assertEqual(response.status, 200, response.body)
        pid = json.loads(response.body)["pid"]
        self.pidsSeen.add(pid)
        return pid

    async def workerPids(self, port, exclude=(), attempts=200):
        """
        @return: the two worker pids, from health requests on new
            connections (a few at a time, so both workers accept some).
        """
        pids = set()
        for _ in range(attempts // 4):
            found = await defer.gatherResults([
                defer.Deferred.fromCoroutine(self.health(port)) for _ in range(4)])
            pids.update(p for p in found if p not in exclude)
            if len(pids) >= 2:
                return pids
        self.fail(f"only saw worker pids {pids} in {attempts} requests")

    async def test_spreadOverWorkers(self):
        """
        New connections land on both workers; the parent never serves.
        """
        process, transport, port = await self.startTwistd()
        pids = await self.workerPids(port)
        self.assertEqual(len(pids), 2)
        self.assertNotIn(transport.pid, pids)

    async def test_metricsAddUp(self):
        """
        Requests answered by both workers add up in the metrics endpoint,
        whichever worker serves it.
        """
        from .helpers import exchange, listenOrigin

        origin, originPort = listenOrigin(self)
        process, transport, port = await self.startTwistd()
        await self.workerPids(port)
        # Each worker has its own upstream connection: go on until both
        # have forwarded some (bounded).
        count = 0
        while count < 400 and (count < 40 or len({r["connection"] for r in origin.requests}) < 2):
            await exchange(port, self, b"PUT http://127.0.0.1:%d/echo HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Length: 1\r\nConnection: close\r\n\r\nx" % originPort)
            count += 1
        self.assertEqual(len(origin.requests), count)
        self.assertGreaterEqual(len({r["connection"] for r in origin.requests}), 2)

        async def counted():
            response = await exchange(
                port, self, b"GET /_cachingproxy/metrics HTTP/1.1\r\nHost: x\r\n"
                b"Connection: close\r\n\r\n")
            total = 0.0
            for line in response[1][0].body.decode().splitlines():
                if line.startswith("cachingproxy_requests_total{") and 'method="PUT"' in line:
                    total += float(line.rsplit(" ", 1)[1])
            return total

        totals = []

        async def poll():
            totals.append(await counted())
            return totals[-1] == count

        # Counts reach the shared folder once a second from each worker.
        for _ in range(100):
            if await poll():
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(totals[-1], count, totals)

    async def test_statusServedBy(self):
        """
        C{status.json} says which worker and process answered it: asked on
        new connections, both workers answer in turn, each naming itself as
        its health endpoint does, and each lists both workers.
        """
        process, transport, port = await self.startTwistd()
        pids = await self.workerPids(port)
        seen = {}
        for _ in range(100):
            response = await request(
                port, b"GET /_cachingproxy/status.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            self.assertEqual(response.status, 200, response.body)
            report = json.loads(response.body)
            served = report["servedBy"]
            self.assertIn(served["pid"], pids)
            self.assertIn(served["worker"], ("1", "2"))
            seen[served["pid"]] = served["worker"]
            if len(seen) == 2 and len(report["workers"]) == 2:
                break
        self.assertEqual(set(seen), pids)
        self.assertEqual(sorted(seen.values()), ["1", "2"])
        self.assertEqual({w["pid"]: w["worker"] for w in report["workers"]}, seen)

    async def test_killedWorkerRestarted(self):
        """
        A worker killed with SIGKILL is replaced by a new process, while
        requests keep succeeding (the supervisor restarts it at once; the
        bound leaves room for a slow start on a loaded machine).
        """
        process, transport, port = await self.startTwistd()
        before = await self.workerPids(port)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        killedAt = reactor.seconds()
        seen = set()
        requests = 0
        while not seen - before:
            self.assertLess(reactor.seconds() - killedAt, 15.0,
                            f"no new worker; saw {seen}\n" + process.output.decode(errors="replace"))
            self.assertLess(requests, 5000)
            seen.add(await self.health(port))
            requests += 1
            await task.deferLater(reactor, 0.02, lambda: None)
        self.assertNotIn(victim, seen)
        await process.waitForOutput(b"killed by signal 9 (SIGKILL) unexpectedly")

    async def test_reloadOnSighup(self):
        """
        SIGHUP replaces every worker one at a time while several clients
        keep sending requests on new connections: not one fails, and
        afterwards every worker pid is new and the old processes are gone.
        """
        process, transport, port = await self.startTwistd()
        old = await self.workerPids(port)
        reloaded = process.waitForOutput(b"reload complete")
        failures: List[str] = []
        counts = []

        async def client():
            done = 0
            while done < 50 or (not reloaded.called and done < 400):
                try:
                    response = await request(port)
                    if response.status != 200:
                        failures.append(f"status {response.status}")
                    else:
                        self.pidsSeen.add(json.loads(response.body)["pid"])
                except Exception as e:
                    failures.append(repr(e))
                done += 1
                await task.deferLater(reactor, 0.01, lambda: None)
            counts.append(done)

        clients = [defer.Deferred.fromCoroutine(client()) for _ in range(6)]
        await task.deferLater(reactor, 0.1, lambda: None)
        transport.signalProcess(signal.SIGHUP)
        await defer.gatherResults(clients)
        self.assertTrue(reloaded.called, process.output.decode(errors="replace"))
        self.assertEqual(failures, [])
        self.assertGreaterEqual(sum(counts), 300)

        new = await self.workerPids(port)
        self.assertEqual(new & old, set())
        await until(lambda: all(_gone(pid) for pid in old), 10)

    async def test_sigtermDrains(self):
        """
        SIGTERM to the parent with a slow request in flight: the request
        completes with 200, then the parent ends by SIGTERM after shutting
        down, and no worker process remains.
        """
        origin, originPort = listenOrigin(self)
        process, transport, port = await self.startTwistd()
        pids = await self.workerPids(port)
        slow = defer.Deferred.fromCoroutine(request(
            port, b"GET http://127.0.0.1:%d/delay/500 HTTP/1.1\r\nHost: x\r\n\r\n" % originPort))
        await until(lambda: any(r["path"] == b"/delay/500" for r in origin.requests))
        transport.signalProcess(signal.SIGTERM)
        response = await slow
        self.assertEqual((response.status, response.body), (200, b"delayed 500"))
        code = await process.ended
        output = process.output.decode(errors="replace")
        self.assertEqual(code, -signal.SIGTERM, output)
        self.assertIn("Server Shut Down.", output)
        self.assertLess(output.index("all worker processes ended"),
                        output.index("Server Shut Down."))
        for pid in pids:
            self.assertTrue(_gone(pid), f"worker {pid} still running")

    async def test_parentKilled(self):
        """
        Workers whose parent is killed outright (SIGKILL, no chance to stop
        them) see their stdin pipe close and exit instead of serving on as
        orphans.
        """
        process, transport, port = await self.startTwistd()
        pids = await self.workerPids(port)
        transport.signalProcess(signal.SIGKILL)
        self.assertEqual(await process.ended, -signal.SIGKILL)
        await until(lambda: all(not isWorker(pid) for pid in pids), 10)

    async def test_sigtermRefusesNewClients(self):
        """
        After SIGTERM the listening socket is closed at once, by the parent
        and every worker, while a request in flight is still being served:
        each connection attempted from then on is either refused or fully
        served, never left hanging or reset, and once both workers have
        stopped accepting a new client is refused at once.
        """
        from twisted.internet.error import ConnectionRefusedError

        origin, originPort = listenOrigin(self)
        process, transport, port = await self.startTwistd()
        await self.workerPids(port)
        slow = defer.Deferred.fromCoroutine(request(
            port, b"GET http://127.0.0.1:%d/delay/3000 HTTP/1.1\r\nHost: x\r\n\r\n" % originPort))
        await until(lambda: any(r["path"] == b"/delay/3000" for r in origin.requests))
        transport.signalProcess(signal.SIGTERM)
        outcomes: List[str] = []
        while not slow.called:
            try:
                response = await request(port, timeout=2.0)
            except ConnectionRefusedError:
                outcomes.append("refused")
            except Exception as e:
                self.fail(f"a client connecting after SIGTERM got {e!r} after {outcomes}")
            else:
                self.assertEqual(response.status, 200)
                outcomes.append("served")
            if process.output.count(b"stopping: no longer accepting") >= 2:
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        await until(lambda: process.output.count(b"stopping: no longer accepting") >= 2, 10)
        started = reactor.seconds()
        with self.assertRaises(ConnectionRefusedError):
            await request(port, timeout=2.0)
        self.assertLess(reactor.seconds() - started, 1.0)
        self.assertFalse(slow.called, "the slow request should still be in flight")
        response = await slow
        self.assertEqual((response.status, response.body), (200, b"delayed 3000"))
        self.assertEqual(await process.ended, -signal.SIGTERM)

    async def _socketActivated(self, *arguments: str):
        """
        Start C{twistd -n cachingproxy --port systemd:domain=INET:index=0
        ARGUMENTS} under C{systemd-socket-activate}, which passes descriptor
        3 with C{LISTEN_FDS} and C{LISTEN_PID} but no C{LISTEN_FDNAMES}, and
        make the first request (the service starts on the first
        connection, which waits in the socket's queue meanwhile).

        @return: the process, its transport, the port and the pid that
            answered the first request.
        """
        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            raise SkipTest("systemd-socket-activate is not installed (Debian's systemd)")
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        env = {k: v for k, v in os.environ.items()
               if k not in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET")}
        env["PYTHONPATH"] = REPO
        process = _Twistd()
        self.pidsSeen = set()
        transport = reactor.spawnProcess(
            process, activate,
            [activate, "-l", f"127.0.0.1:{port}", sys.executable, "-c", TWISTD, "-n",
             "--pidfile=", "cachingproxy", "--port", "systemd:domain=INET:index=0",
             "--cache-dir", "none", "--no-access-log", *arguments],
            env=env, path=REPO)

        self._stopWhenDone(process, transport)
        await process.waitForOutput(b"Listening on 127.0.0.1")
        first = await self.health(port)
        self.assertEqual(await process.listening, port, process.output.decode(errors="replace"))
        return process, transport, port, first

    async def test_socketActivatedWorkers(self):
        """
        Under systemd's socket activation, C{--port
        systemd:domain=INET:index=0 --workers 2} starts, and requests are
        served by both workers, neither of which is the parent.
        """
        process, transport, port, first = await self._socketActivated("--workers", "2")
        # The first request was answered by whichever worker was ready
        # first; on a loaded machine the other may still be starting.
        await until(lambda: process.output.count(b") ready") >= 2 or process.ended.called, 20)
        pids = await self.workerPids(port)
        self.assertEqual(len(pids), 2)
        self.assertIn(first, pids)
        self.assertNotIn(transport.pid, pids)
        self.assertNotIn(b"systemd passed 0 descriptors", process.output)

    async def test_socketActivatedSingleProcess(self):
        """
        Under systemd's socket activation without C{LISTEN_FDNAMES},
        C{--port systemd:domain=INET:index=0} in one process serves on the
        descriptor systemd passed (Twisted's own C{systemd:} endpoint finds
        none without the names).
        """
        process, transport, port, first = await self._socketActivated()
        self.assertEqual(first, transport.pid)
        self.assertNotIn(b"systemd passed no listening socket", process.output)

    async def test_keepAliveLoadThroughReloads(self):
        """
        C{ab -k} and C{wrk}, 20 keep-alive connections each, load the proxy
        while its parent gets 10 SIGHUPs, 1.5 s apart: not one request
        fails (no connection closed under a request, no short read, no
        error status), and every worker was replaced.
        """
        ab, wrk = shutil.which("ab"), shutil.which("wrk")
        if ab is None or wrk is None:
            raise SkipTest("ab (Debian's apache2-utils) and wrk are needed")
        from twisted.internet.utils import getProcessOutputAndValue

        process, transport, port = await self.startTwistd()
        old = await self.workerPids(port)
        url = f"http://127.0.0.1:{port}/_cachingproxy/status.html"
        seconds = 20
        # At the lowest priority, so that the load leaves the starting
        # workers a share of the two cores (a reload waits for them).
        nice = shutil.which("nice") or "/usr/bin/nice"
        abRun = getProcessOutputAndValue(
            nice, ["-n", "19", ab, "-k", "-c", "20", "-t", str(seconds), "-n", "100000000", url])
        wrkRun = getProcessOutputAndValue(
            nice, ["-n", "19", wrk, "-t", "1", "-c", "20", "-d", f"{seconds}s", url])
        await task.deferLater(reactor, 1.0, lambda: None)
        for _ in range(10):
            transport.signalProcess(signal.SIGHUP)
            await task.deferLater(reactor, 1.5, lambda: None)
        (abOut, abErr, abCode), (wrkOut, wrkErr, wrkCode) = await defer.gatherResults(
            [abRun, wrkRun])
        abText, wrkText = abOut.decode() + abErr.decode(), wrkOut.decode() + wrkErr.decode()
        self.assertEqual(abCode, 0, abText)
        self.assertEqual(wrkCode, 0, wrkText)

        def field(name):
            found = re.search(rf"^{name}:\s+(\d+)", abText, re.M)
            self.assertIsNotNone(found, abText)
            return int(found.group(1))

        self.assertGreater(field("Complete requests"), 1000, abText)
        self.assertGreater(field("Keep-Alive requests"), 1000, abText)
        self.assertEqual(field("Failed requests"), 0, abText)
        self.assertNotIn("Non-2xx responses", abText)
        self.assertRegex(wrkText, r"\d+ requests in ")
        self.assertNotIn("Socket errors", wrkText)
        self.assertNotIn("Non-2xx", wrkText)
        # A reload asked for during one runs once after it: how many full
        # replacements fit depends on how fast workers start on this
        # machine; at least one did, under the load.
        self.assertGreaterEqual(process.output.count(b"reload complete"), 1,
                                process.output.decode(errors="replace"))
        new = await self.workerPids(port, exclude=old)
        self.assertEqual(new & old, set())


# -- TLS listeners shared by the workers --------------------------------------


#: A draining worker's health check says 503 (for load balancers); its
#: status page is served as any request is.
KEEP_ALIVE_STATUS = b"GET /_cachingproxy/status.json HTTP/1.1\r\nHost: x\r\n\r\n"


class TLSWorkersTests(TestCase):
    """
    C{twistd -n cachingproxy --workers 2} with an C{ssl:} listener: the
    parent binds the port, each worker sets TLS up with the certificate
    and key it reads, a reload serves a renewed certificate, and a
    certificate that cannot be served stops the start.
    """

    timeout = 90

    _stopWhenDone = WorkersEndToEndTests._stopWhenDone

    @classmethod
    def setUpClass(cls):
        from .tlshelpers import makeCA

        cls.ca = makeCA()

    def certificateFiles(self, certPEM: bytes, keyPEM: bytes, folder: str = None):
        """
        Write a certificate and its key where an C{ssl:} listener reads
        them (atomically, as a renewal tool does).

        @return: the folder, the certificate's and the key's paths.
        """
        if folder is None:
            folder = temporaryPath(self)
            os.mkdir(folder)
        paths = []
        for name, pem in (("cert.pem", certPEM), ("key.pem", keyPEM)):
            path = os.path.join(folder, name)
            with open(path + ".new", "wb") as f:
                f.write(pem)
            os.replace(path + ".new", path)
            paths.append(path)
        return folder, paths[0], paths[1]

    async def startTLS(self, certPath: str, keyPath: str, description: str = None):
        """
        Start the proxy with a plain and a TLS listener (C{ssl:} with
        C{certPath} and C{keyPath}, unless C{description} is given).

        @return: the L{_Twistd}, its transport and the TLS port.
        """
        if description is None:
            description = f"ssl:0:interface=127.0.0.1:privateKey={keyPath}:certKey={certPath}"
        process, transport, _ = await WorkersEndToEndTests.startTwistd(
            self, "--port", description)
        ports = re.findall(rb"listening on 127\.0\.0\.1:(\d+)", process.output)
        # One line per --port, in their order: the plain one, then TLS.
        self.assertEqual(len(ports), 2, process.output.decode(errors="replace"))
        return process, transport, int(ports[1])

    async def connect(self, port: int) -> RawClient:
        """
        @return: a client on a new TLS connection that trusts only the
            test CA, checks the name C{localhost} and offers ALPN as a
            browser does (HTTP/1.1 only: it speaks HTTP/1.1, and the
            proxy chooses C{h2} when it is offered).
        """
        from twisted.internet.endpoints import wrapClientTLS
        from twisted.internet.ssl import optionsForClientTLS

        from .tlshelpers import trustRoot

        client = RawClient()
        options = optionsForClientTLS("localhost", trustRoot(self.ca[0]),
                                      acceptableProtocols=[b"http/1.1"])
        endpoint = wrapClientTLS(options,
                                 TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10))
        await connectProtocol(endpoint, client)

        def close():
            if not client.closed.called:
                client.transport.abortConnection()
            return client.closed

        self.addCleanup(close)
        return client

    async def ask(self, client: RawClient, data: bytes = KEEP_ALIVE_STATUS):
        """
        Send one request for the health or status of the worker on
        C{client}'s connection.

        @return: the response, and the PEM of the certificate the server
            presented.
        @raise ConnectionError: the connection closed without a response.
        """
        from .tlshelpers import certificatePEM

        before = len(client.finalResponses())
        client.transport.write(data)
        call = reactor.callLater(10, client.transport.abortConnection)
        try:
            finals = await client.waitFor(before + 1)
        finally:
            if call.active():
                call.cancel()
        if len(finals) <= before:
            raise ConnectionError(f"closed without a response: {client.raw[-200:]!r}")
        response = finals[before]
        self.assertEqual(response.status, 200, response.body)
        report = json.loads(response.body)
        self.pidsSeen.add(report["servedBy"]["pid"] if "servedBy" in report else report["pid"])
        return response, certificatePEM(client.transport.getPeerCertificate())

    async def workerPids(self, port: int, expectedCertificate: bytes):
        """
        @return: both worker pids, from health requests on new TLS
            connections, each of which presented C{expectedCertificate}.
        """
        pids = set()
        for _ in range(200):
            client = await self.connect(port)
            response, certificate = await self.ask(client, HEALTH)
            self.assertEqual(certificate, expectedCertificate)
            pids.add(json.loads(response.body)["pid"])
            if len(pids) == 2:
                return pids
        self.fail(f"only saw worker pids {pids}")

    async def test_tlsServedByBothWorkers(self):
        """
        With C{--workers 2} and an C{ssl:} listener, HTTPS requests on new
        connections are answered by both workers, each presenting the
        configured certificate; the parent serves none.
        """
        from .tlshelpers import makeServerCert

        certPEM, keyPEM = makeServerCert(self.ca)
        folder, certPath, keyPath = self.certificateFiles(certPEM, keyPEM)
        process, transport, port = await self.startTLS(certPath, keyPath)
        pids = await self.workerPids(port, certPEM)
        self.assertEqual(len(pids), 2)
        self.assertNotIn(transport.pid, pids)

    async def test_tlsFolderServedByBothWorkers(self):
        """
        A C{tls:FOLDER} listener (a PEM file holding a certificate and its
        key) is shared by both workers too, and answers a client that
        offers ALPN.
        """
        from .tlshelpers import makeServerCert

        certPEM, keyPEM = makeServerCert(self.ca)
        folder = temporaryPath(self)
        os.mkdir(folder)
        with open(os.path.join(folder, "localhost.pem"), "wb") as f:
            f.write(certPEM + keyPEM)
        process, transport, port = await self.startTLS(
            None, None, f"tls:{folder}:port=0:interface=127.0.0.1")
        pids = await self.workerPids(port, certPEM)
        self.assertEqual(len(pids), 2)
        self.assertNotIn(transport.pid, pids)

    async def test_tlsCertificateRenewedOnReload(self):
        """
        The certificate files are replaced by a new certificate (same CA,
        new key and serial), then the parent gets SIGHUP while clients
        keep sending HTTPS requests on keep-alive connections (a new
        connection whenever the server closes one after a response): not
        one request fails, and once the reload is over new connections
        see the new certificate from both new workers.
        """
        from .tlshelpers import makeServerCert

        oldPEM, oldKey = makeServerCert(self.ca)
        newPEM, newKey = makeServerCert(self.ca)
        self.assertNotEqual(oldPEM, newPEM)
        folder, certPath, keyPath = self.certificateFiles(oldPEM, oldKey)
        process, transport, port = await self.startTLS(certPath, keyPath)
        old = await self.workerPids(port, oldPEM)
        reloaded = process.waitForOutput(b"reload complete")
        failures: List[str] = []
        counts = []
        certificates = set()

        async def client():
            done = 0
            connection = None
            while done < 30 or (not reloaded.called and done < 2000):
                try:
                    if connection is None or connection.closed.called:
                        connection = await self.connect(port)
                    response, certificate = await self.ask(connection)
                    certificates.add(certificate)
                    if (b"connection", b"close") in [
                            (name, value.lower()) for name, value in response.headers]:
                        # The draining worker said so: the next request
                        # goes on a new connection.
                        await connection.closed
                        connection = None
                except Exception as e:
                    failures.append(repr(e))
                    connection = None
                done += 1
                await task.deferLater(reactor, 0.01, lambda: None)
            counts.append(done)

        clients = [defer.Deferred.fromCoroutine(client()) for _ in range(3)]
        await task.deferLater(reactor, 0.2, lambda: None)
        self.certificateFiles(newPEM, newKey, folder)
        transport.signalProcess(signal.SIGHUP)
        await defer.gatherResults(clients)
        self.assertTrue(reloaded.called, process.output.decode(errors="replace"))
        self.assertEqual(failures, [])
        self.assertGreaterEqual(sum(counts), 90)
        self.assertIn(oldPEM, certificates)

        new = await self.workerPids(port, newPEM)
        self.assertEqual(new & old, set())
        await until(lambda: all(_gone(pid) for pid in old), 10)

    async def test_tlsStartErrors(self):
        """
        A key file that cannot be read, a key that is not the
        certificate's and an expired certificate each end the start with
        one line naming the file and the problem, and exit status 2, in
        one process and with C{--workers 2} (checked by the parent, before
        any worker starts).
        """
        import datetime

        from .helpers import twistdOutcome
        from .tlshelpers import makeServerCert

        certPEM, keyPEM = makeServerCert(self.ca)
        otherPEM, otherKey = makeServerCert(self.ca)
        expiredPEM, expiredKey = makeServerCert(
            self.ca, notAfter=datetime.datetime.now(datetime.timezone.utc)
            - datetime.timedelta(days=1))
        folder, certPath, keyPath = self.certificateFiles(certPEM, keyPEM)
        _, expiredPath, expiredKeyPath = self.certificateFiles(expiredPEM, expiredKey)
        _, _, otherKeyPath = self.certificateFiles(otherPEM, otherKey)
        missing = os.path.join(folder, "missing.pem")
        cases = [
            (missing, certPath, f"cannot read {missing}: no such file or directory"),
            (otherKeyPath, certPath,
             f"the private key in {otherKeyPath} does not match the certificate in {certPath}"),
            (expiredKeyPath, expiredPath, f"the certificate in {expiredPath} expired on "),
        ]
        for key, cert, problem in cases:
            description = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
            for workers in ("1", "2"):
                code, output, errors = await twistdOutcome(
                    "-n", "--pidfile=", "cachingproxy", "--port", description,
                    "--workers", workers, "--cache-dir", "none")
                self.assertEqual(code, 2, output)
                lines = errors.strip().splitlines()
                self.assertEqual(len(lines), 1, errors)
                self.assertTrue(lines[0].startswith(f"cachingproxy: --port {description}: "),
                                errors)
                self.assertIn(problem.lower(), lines[0].lower())
                self.assertNotIn("worker", output)
                self.assertNotIn("listening on", output)

    async def test_tlsCertificateRenewedSingleProcess(self):
        """
        In one process, SIGHUP after the certificate files were replaced
        reads them again: a keep-alive connection opened before goes on
        with the old certificate, new connections get the new one. Files
        that cannot be used (a key of another certificate) are logged on
        one line and the running certificate stays.
        """
        from .helpers import startTwistd
        from .tlshelpers import makeServerCert

        oldPEM, oldKey = makeServerCert(self.ca)
        newPEM, newKey = makeServerCert(self.ca)
        otherPEM, otherKey = makeServerCert(self.ca)
        folder, certPath, keyPath = self.certificateFiles(oldPEM, oldKey)
        self.pidsSeen = set()
        process, transport, _ = await startTwistd(
            self, "--no-access-log",
            "--port", f"ssl:0:interface=127.0.0.1:privateKey={keyPath}:certKey={certPath}")
        pattern = rb"listening on 127\.0\.0\.1:(\d+)"
        await until(lambda: len(re.findall(pattern, process.output)) == 2, 20)
        port = int(re.findall(pattern, process.output)[1])
        before = await self.connect(port)
        response, certificate = await self.ask(before)
        self.assertEqual(certificate, oldPEM)

        self.certificateFiles(newPEM, newKey, folder)
        reloaded = process.waitForOutput(b"SIGHUP: configuration reloaded")
        transport.signalProcess(signal.SIGHUP)
        await reloaded
        response, certificate = await self.ask(before)
        self.assertEqual(certificate, oldPEM)
        response, certificate = await self.ask(await self.connect(port))
        self.assertEqual(certificate, newPEM)

        # A new certificate with the old key: refused, the new one stays.
        self.certificateFiles(otherPEM, newKey, folder)
        refused = process.waitForOutput(b"configuration not reloaded")
        transport.signalProcess(signal.SIGHUP)
        await refused
        await process.waitForOutput(b"does not match the certificate")
        response, certificate = await self.ask(await self.connect(port))
        self.assertEqual(certificate, newPEM)
