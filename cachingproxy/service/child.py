# -*- test-case-name: tests.test_workers -*-
"""
One worker process of C{--workers N}, started by
L{cachingproxy.service.supervisor.WorkerSupervisor}::

    python -m cachingproxy.service.child --inherit-fd FD [--inherit-fd FD ...]
        [--tls-port FD=DESCRIPTION ...] --worker-id I [--ready-fd R]
        [cachingproxy options]

The worker parses the cachingproxy options itself (with the environment and
any configuration file, so a replacement picks up changed settings), builds
the same service as the proxy on its own
(L{cachingproxy.service.tap.serveConfig}) listening on each inherited
descriptor through Twisted's C{AdoptedStreamServerEndpoint} (non-blocking,
adopt, close its own copy), writes C{cachingproxy-worker-ready I PID} on the
readiness pipe, and serves. A descriptor named by C{--tls-port} serves TLS:
the worker reads the certificate and key its C{ssl:}/C{tls:} description
names (L{cachingproxy.service.tlsport.ServerTLS}) before it adopts anything,
so a replacement started by a reload serves a renewed certificate, and one
that cannot use it never says it is ready.

On SIGTERM (or SIGINT, or when its parent goes away) it stops the service
as the proxy on its own does (L{cachingproxy.service.tap.TopService}): it
accepts what the kernel has queued and stops accepting (C{stopListening} on
an adopted port closes the descriptor without shutting the shared socket
down, so the other workers keep accepting), drains its connections within
the shutdown grace (idle keep-alive ones after the drain idle timeout, see
L{cachingproxy.proxy.connection.ProxyProtocol.drain}), closes its upstream
pool and exits with status 0.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from twisted.internet import defer, fdesc
from twisted.internet.error import ConnectionDone, ConnectionLost, ReactorNotRunning
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

__all__ = ["Worker", "splitArguments", "splitTLSArguments", "main"]


def splitTLSArguments(argv: Sequence[str]) -> Tuple[Dict[int, str], List[str]]:
    """
    Take the C{--tls-port FD=DESCRIPTION} options out of C{argv}.

    @return: the TLS listeners (descriptor to C{--port} description) and
        the remaining arguments.
    @raise usage.UsageError: for a malformed value.
    """
    tls: Dict[int, str] = {}
    rest: List[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        name, equals, value = items[i].partition("=")
        if name == "--tls-port":
            if not equals:
                if i + 1 >= len(items):
                    raise usage.UsageError(f"{name}: a value is needed")
                i += 1
                value = items[i]
            fd, _, description = value.partition("=")
            if not fd.isdigit() or not description:
                raise usage.UsageError(f"{name}: expected FD=DESCRIPTION, got {value!r}")
            tls[int(fd)] = description
        else:
            rest.append(items[i])
        i += 1
    return tls, rest


def splitArguments(argv: Sequence[str]) -> Tuple[List[int], str, Optional[int], List[str]]:
    """
    Take the worker's own options out of C{argv}.

    @return: the inherited descriptors, the worker id, the readiness
        descriptor (or C{None}) and the remaining cachingproxy options.
    @raise usage.UsageError: for a missing or malformed value.
    """
    fds: List[int] = []
    workerId = ""
    readyFD: Optional[int] = None
    rest: List[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        name, equals, value = item.partition("=")
        if name in ("--inherit-fd", "--worker-id", "--ready-fd"):
            if not equals:
                if i + 1 >= len(items):
                    raise usage.UsageError(f"{name}: a value is needed")
                i += 1
                value = items[i]
            if name == "--worker-id":
                workerId = value
            else:
                if not value.isdigit():
                    raise usage.UsageError(f"{name}: expected a descriptor number, got {value!r}")
                if name == "--inherit-fd":
                    fds.append(int(value))
                else:
                    readyFD = int(value)
        else:
            rest.append(item)
        i += 1
    if not fds:
        raise usage.UsageError("--inherit-fd: at least one listening descriptor is needed")
    return fds, workerId, readyFD, rest


class Worker:
    """
    Serves the inherited listening descriptors: the same service as the
    proxy on its own (L{cachingproxy.service.tap.serveConfig}), listening
    on the descriptors (adopted by Twisted's C{AdoptedStreamServerEndpoint})
    rather than on the C{--port} descriptions.

    @ivar settle: seconds between no longer accepting and draining, so a
        connection accepted just before the stop gets its request read
        (rather than closed as idle) and answered.
    @ivar tls: the descriptors among C{fds} that serve TLS, with their
        C{--port} descriptions.
    @ivar service: the L{cachingproxy.service.tap.TopService} once started.
    @ivar exitCode: what the process should exit with.
    """

    settle = 0.2
    _log = Logger()

    def __init__(self, reactor, config, workerId: str, fds: Sequence[int],
                 readyFD: Optional[int] = None,
                 tls: Optional[Mapping[int, str]] = None) -> None:
        self._reactor = reactor
        self.config = config
        self.workerId = workerId
        self.fds = list(fds)
        self.tls = dict(tls or {})
        self.readyFD = readyFD
        self.service = None
        self.exitCode = 0
        self._stopping: Optional[defer.Deferred] = None

    @property
    def factory(self):
        """
        The L{cachingproxy.proxy.factory.ProxyFactory} serving, once started.
        """
        proxies = self.proxyServices()
        return proxies[0].factory if proxies else None

    @property
    def ports(self) -> List:
        """
        The adopted listening ports (none once stopping).
        """
        return [p.port for p in self.proxyServices() if p.port is not None]

    def proxyServices(self) -> List:
        """
        @return: the L{cachingproxy.service.tap.ProxyService}s once started.
        """
        return [] if self.service is None else self.service.proxyServices()

    def start(self) -> None:
        """
        Build the service, adopt the descriptors, say ready.

        @raise Exception: the worker cannot serve (a certificate that
            cannot be used, a descriptor that cannot be adopted).
        """
        from twisted.internet.endpoints import AdoptedStreamServerEndpoint

        from .tap import ServedPort, serveConfig
        from .tlsport import ServerTLS

        # Every certificate is read before any descriptor is adopted: a
        # worker that cannot serve one of them serves none.
        servers = {fd: ServerTLS(description) for fd, description in self.tls.items()}
        ports = []
        for fd in self.fds:
            probe = socket.socket(fileno=fd)
            family = probe.family
            probe.detach()
            ports.append(ServedPort(self.tls.get(fd, f"fd:{fd}"),
                                      AdoptedStreamServerEndpoint(self._reactor, fd, family),
                                      servers.get(fd)))
        self.service = serveConfig(self._reactor, self.config, ports,
                                   workerId=self.workerId)
        self.service.notifies = False
        self.service.settle = self.settle
        # Adopting happens at once (the port holds its own duplicate of
        # each descriptor, and the endpoint closes ours).
        self.service.privilegedStartService()
        self.service.startService()
        self.fds = []
        if self.readyFD is not None:
            os.write(self.readyFD, b"cachingproxy-worker-ready %s %d\n"
                     % (self.workerId.encode(), os.getpid()))
            os.close(self.readyFD)
            self.readyFD = None

    def stop(self) -> defer.Deferred:
        """
        Stop accepting, drain within the grace, close the upstream pool (as
        the proxy on its own does, L{cachingproxy.service.tap.TopService}).

        @return: a Deferred firing when the worker may exit.
        """
        if self._stopping is not None:
            return self._stopping
        if self.service is None or not self.service.running:
            self._stopping = defer.succeed(None)
            return self._stopping
        self._stopping = self.service.stopService()
        # Said once it is true: the ports close in a later reactor turn,
        # and until then the kernel may still queue a connection on this
        # process's descriptor of the shared socket.
        self.service.notAccepting.addCallback(
            lambda _: self._log.info("worker {worker} (pid {pid}) stopping: no longer accepting",
                                     worker=self.workerId, pid=os.getpid()))
        return self._stopping


@implementer(IReadDescriptor)
class _ParentWatch:
    """
    Reads the standard input pipe the parent holds open and never writes
    to: end of file means the parent is gone, so stop (gracefully).
    """

    _log = Logger()

    def __init__(self, reactor, fd: int = 0) -> None:
        self._reactor = reactor
        self.fd = fd
        self.watching = True

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "parent-watch"

    def doRead(self):
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            return ConnectionLost()
        if not data:
            return ConnectionDone()
        return None

    def stopWatching(self) -> None:
        """
        The worker is stopping anyway: let go of the pipe.
        """
        if self.watching:
            self.watching = False
            self._reactor.removeReader(self)

    def connectionLost(self, reason) -> None:
        # epoll reports the writer's end as a hang-up, without a read.
        if not self.watching:
            return
        self.watching = False
        self._log.warn("the parent process is gone: stopping")
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass


def _watchParent(reactor, fd: int = 0) -> None:
    try:
        isPipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return
    if isPipe:
        fdesc.setNonBlocking(fd)
        watch = _ParentWatch(reactor, fd)
        reactor.addReader(watch)
        reactor.addSystemEventTrigger("before", "shutdown", watch.stopWatching)


def _startLogging(workerId: str, out=None) -> None:
    """
    Log to stdout (the parent's), each line's system naming this worker.
    """
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from ..ops.accesslog import writeLogTo

    out = out or sys.stdout
    observer = textFileLogObserver(out)
    prefix = f"worker {workerId} pid {os.getpid()}"
    # Access lines skip the observer, but not its stream or its prefix.
    writeLogTo(out, f"{prefix}|cachingproxy.access#info")

    def tagged(event):
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level else '-'}"
        observer(dict(event, log_system=f"{prefix}|{system}"))

    globalLogBeginner.beginLoggingTo([tagged], redirectStandardIO=False)


def _stopOnSignals(reactor) -> None:
    """
    Replace the reactor's SIGTERM and SIGINT handlers with ones that stop
    once: the worker may get both the parent's SIGTERM and a terminal's
    SIGINT (they share the process group), and a second C{reactor.stop}
    would only log an error. SIGHUP is the parent's business (a reload):
    the worker ignores it rather than dying of it.
    """
    stopping = []

    def stop(signalNumber: int) -> None:
        if stopping:
            return
        stopping.append(signalNumber)
        Worker._log.info("received {signal}: stopping",
                         signal=signal.Signals(signalNumber).name)
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass

    def handler(signalNumber, frame) -> None:
        reactor.callFromThread(stop, signalNumber)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def main(argv: Optional[Sequence[str]] = None, reactor=None) -> int:
    """
    Run one worker until it is told to stop.

    @return: the exit status.
    """
    from .tap import Options

    argv = sys.argv[1:] if argv is None else argv
    try:
        tls, argv = splitTLSArguments(argv)
        fds, workerId, readyFD, rest = splitArguments(argv)
        options = Options()
        options.parseOptions(rest)
    except usage.UsageError as e:
        print(f"cachingproxy worker: {e}", file=sys.stderr)
        return 2
    if reactor is None:
        from twisted.internet import reactor
    workerId = workerId or str(os.getpid())
    _startLogging(workerId)
    worker = Worker(reactor, options.config, workerId, fds, readyFD, tls=tls)

    def start():
        from .tlsport import CertificateError

        try:
            worker.start()
        except CertificateError as e:
            # A renewal that went wrong: one line, the old workers serve on.
            Worker._log.error("worker {worker} cannot start: {why}", worker=workerId, why=str(e))
            worker.exitCode = 1
            reactor.stop()
        except Exception:
            Worker._log.failure("worker {worker} cannot start", worker=workerId)
            worker.exitCode = 1
            reactor.stop()

    reactor.callWhenRunning(start)
    reactor.callWhenRunning(_stopOnSignals, reactor)
    reactor.addSystemEventTrigger("before", "shutdown", worker.stop)
    _watchParent(reactor)
    reactor.run()
    # Stopped and drained: a late SIGTERM (the parent's, after a SIGINT)
    # must not turn a clean exit into a death by signal.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return worker.exitCode


if __name__ == "__main__":
    # Run the module's own copy, so log namespaces read
    # cachingproxy.service.child rather than __main__.
    from cachingproxy.service.child import main as _main

    sys.exit(_main())
