# -*- test-case-name: tests.test_workers -*-
"""
Several worker processes serving one listening socket: C{--workers N}.

The parent process (C{twistd cachingproxy --workers N}) owns the listening
sockets and never accepts on them: L{WorkersService} binds each C{--port}
(or takes it from systemd socket activation), logs where it listens, and
hands the descriptors to L{WorkerSupervisor}, which spawns N copies of
C{python -m cachingproxy.service.child} with the descriptors inherited at the same
numbers. Each worker adopts them with C{reactor.adoptStreamPort} (see
L{cachingproxy.service.child}); the kernel spreads new connections over the
processes that accept.

Supervision has the shape of Twisted's C{runner/procmon.py}
C{ProcessMonitor}, with the reactor injected:

  - a worker that dies is restarted after C{minRestartDelay}, with the
    delay doubling (up to C{maxRestartDelay}) while it keeps dying within
    C{threshold} seconds of its start;
  - stopping closes the parent's copy of the listening sockets at once and
    sends SIGTERM to every worker (each takes what the kernel queued, stops
    accepting, drains its connections within the shutdown grace and
    exits), so new clients are refused rather than queued where nobody
    accepts; SIGKILL goes to any worker still alive C{killTime} seconds
    later; L{WorkerSupervisor.stopService} fires once all have ended;
  - L{WorkerSupervisor.reload} (SIGHUP to the parent) replaces the workers
    one at a time: spawn the replacement, wait until it says it is ready
    (one line, C{cachingproxy-worker-ready <id> <pid>}, on a pipe of its
    own), then SIGTERM the old one, which drains. A replacement parses the
    options, the environment and any configuration file afresh, so a
    reload picks up changed settings.

A worker that loses its parent (SIGKILL to the parent) sees end of file on
its standard input pipe and stops gracefully, so no orphan keeps serving.

Only C{tcp:}, C{tcp6:}, C{ssl:}, C{tls:} and C{systemd:domain=INET|INET6}
listeners can be shared: Twisted's adopted UNIX ports unlink their path
when one worker stops. For a TLS listener (C{ssl:}, C{tls:}) the parent
binds the TCP port and checks the certificate and key; each worker reads
them itself and sets TLS up on the adopted socket
(L{cachingproxy.service.tlsport}), so the workers a reload starts serve a renewed
certificate.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import sys
import tempfile
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python import usage

from .. import __version__
from .config import SETTINGS, cannotListen
from ..ops.metrics import ENVIRONMENT as METRICS_ENVIRONMENT
from ..ops.metrics import countWorkerRestart, markProcessDead
from .._twistedinternals import textLogStream
from .addresses import describeAddress

__all__ = [
    "READY_MARKER",
    "Listener",
    "parseListener",
    "childArguments",
    "workerEnvironment",
    "WorkerSupervisor",
    "WorkersService",
]

#: The line a worker writes on its readiness pipe once it accepts.
READY_MARKER = b"cachingproxy-worker-ready"

#: Options that only the parent reads (the workers get their descriptors
#: instead).
_PARENT_ONLY = frozenset(["port", "workers"])

_NOT_INSTALLED = object()

#: systemd's socket activation and notification, meant for the parent only.
_SYSTEMD_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET")


# -- listening sockets -----------------------------------------------------


def _splitDescription(description: str) -> Tuple[str, List[str], Dict[str, str]]:
    """
    Split an endpoint string the way Twisted's parser does: C{:} separates
    fields, C{=} a keyword from its value, and a backslash escapes the next
    character (as in C{interface=\\:\\:1}).

    @return: the endpoint type, the positional and the keyword fields.
    """
    fields: List[Tuple[str, Optional[str]]] = []
    key: Optional[str] = None
    current = ""
    escaped = False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append((key, current) if key is not None else (current, None))
            key, current = None, ""
        elif char == "=" and key is None:
            key, current = current, ""
        else:
            current += char
    fields.append((key, current) if key is not None else (current, None))
    kind = fields[0][0]
    args = [name for name, value in fields[1:] if value is None]
    kwargs = {name: value for name, value in fields[1:] if value is not None}
    return kind, args, kwargs


class Listener:
    """
    One listening socket owned by the parent.

    @ivar description: the C{--port} endpoint string it came from.
    @ivar socket: the bound, listening, non-blocking socket (C{None} once
        closed).
    @ivar fileno: its descriptor, which the workers inherit at the same
        number.
    @ivar family: C{AF_INET} or C{AF_INET6}.
    @ivar address: where it listens, as an L{IPv4Address} or L{IPv6Address}.
    @ivar tls: whether it is a TLS listener (C{ssl:} or C{tls:}).
    """

    def __init__(self, description: str, sock: socket.socket) -> None:
        from .tlsport import isTLS

        self.description = description
        #: whether the workers set TLS up on it
        self.tls = isTLS(description)
        self.socket: Optional[socket.socket] = sock
        self.fileno = sock.fileno()
        self.family = sock.family
        host, port = sock.getsockname()[:2]
        if self.family == socket.AF_INET6:
            self.address = IPv6Address("TCP", host, port)
        else:
            self.address = IPv4Address("TCP", host, port)

    def close(self) -> None:
        """
        Close the parent's copy (the workers must be gone: it is the last).
        """
        if self.socket is not None:
            self.socket.close()
            self.socket = None


def _checkDescription(description: str) -> Tuple[str, List[str], Dict[str, str]]:
    kind, args, kwargs = _splitDescription(description)
    if kind not in ("tcp", "tcp6", "ssl", "tls", "systemd"):
        raise usage.UsageError(
            f"--port: with --workers above 1 only tcp:, tcp6:, ssl:, tls: and "
            f"systemd:domain=INET listeners can be shared by the workers, "
            f"got {description!r}"
        )
    if kind in ("ssl", "tls"):
        from .tlsport import listeningAddress

        try:
            listeningAddress(description)
        except (ValueError, IndexError):
            raise usage.UsageError(
                f"--port: expected ssl:PORT:privateKey=... or tls:FOLDER:port=PORT, "
                f"got {description!r}")
        return kind, args, kwargs
    if kind == "systemd":
        if kwargs.get("domain", "INET") not in ("INET", "INET6"):
            raise usage.UsageError(
                f"--port: with --workers above 1 a systemd listener must be "
                f"domain=INET or domain=INET6, got {description!r}"
            )
        if "index" not in kwargs or not kwargs["index"].isdigit():
            raise usage.UsageError(
                f"--port: expected systemd:domain=INET:index=N, got {description!r}"
            )
    elif not args or not args[0].isdigit():
        raise usage.UsageError(f"--port: expected {kind}:PORT[:interface=...], got {description!r}")
    return kind, args, kwargs


def _systemdDescriptors(environ: Mapping[str, str]) -> List[int]:
    """
    The descriptors systemd passed (3, 4, ...: C{LISTEN_FDS} of them, when
    C{LISTEN_PID} is this process), also once Twisted has taken the
    variables out of C{os.environ} (L{cachingproxy.service.systemd.inheritedDescriptors}).
    The workers get an environment without these variables.
    """
    from .systemd import inheritedDescriptors

    return inheritedDescriptors(environ)


def parseListener(description: str, environ: Mapping[str, str] = os.environ) -> Listener:
    """
    Bind (or, for C{systemd:}, take over) the listening socket that
    C{description} names: C{tcp:PORT[:interface=ADDR][:backlog=N]},
    C{tcp6:...}, the TCP port of C{ssl:PORT:...} or C{tls:FOLDER:port=PORT}
    (the workers set TLS up), or C{systemd:domain=INET:index=N} (descriptor
    3+N of C{LISTEN_FDS}).

    @raise usage.UsageError: for a listener that cannot be shared.
    @raise OSError: if it cannot be bound.
    """
    kind, args, kwargs = _checkDescription(description)
    if kind == "systemd":
        index = int(kwargs["index"])
        inherited = _systemdDescriptors(environ)
        if index >= len(inherited):
            raise usage.UsageError(
                f"--port: {description!r}: systemd passed {len(inherited)} descriptors"
            )
        family = socket.AF_INET6 if kwargs.get("domain") == "INET6" else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, fileno=inherited[index])
        sock.setblocking(False)
        return Listener(description, sock)
    interface = kwargs.get("interface", "::" if kind == "tcp6" else "")
    if kind in ("ssl", "tls"):
        # The TCP socket under it, where Twisted's endpoint would listen
        # (ssl: on IPv4, tls: on :: unless interface= says otherwise).
        from .tlsport import listeningAddress

        interface, port, backlog = listeningAddress(description)
    else:
        port, backlog = int(args[0]), int(kwargs.get("backlog", 50))
    family = socket.AF_INET
    if kind == "tcp6":
        family = socket.AF_INET6
    else:
        try:
            if isinstance(ipaddress.ip_address(interface), ipaddress.IPv6Address):
                family = socket.AF_INET6
        except ValueError:
            pass
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As Twisted's tcp.Port does on POSIX: a restart may bind again at
        # once, without waiting for TIME_WAIT connections to expire.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((interface, port))
        sock.listen(backlog)
        # Non-blocking is a property of the open file, which every worker
        # shares: an accept that loses the race to another worker must not
        # block.
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return Listener(description, sock)


# -- what a worker is started with -----------------------------------------


def childArguments(options) -> List[str]:
    """
    The cachingproxy command line a worker gets: every option the parent
    was given, except C{--port} and C{--workers}.

    It is rebuilt from the parsed L{cachingproxy.service.tap.Options} (its
    C{optFlags} and C{optParameters}) rather than read from C{sys.argv}:
    C{makeService} may be called without any command line (tests, other
    entry points), and the parsed values are exactly what the parent
    validated. The environment is inherited as a whole, so settings that
    come from it keep their place below the command line.

    @param options: parsed L{cachingproxy.service.tap.Options}.
    """
    arguments: List[str] = []
    for flag in options.optFlags:
        name = flag[0]
        if name not in _PARENT_ONLY and options.get(name):
            arguments.append(f"--{name}")
    for parameter in options.optParameters:
        name = parameter[0]
        value = options.get(name)
        if name not in _PARENT_ONLY and value is not None:
            arguments.append(f"--{name}={value}")
    for setting in SETTINGS:
        # Repeatable options (--allow, --refresh-rule, ...): once a value.
        if setting.kind == "list" and setting.name not in _PARENT_ONLY:
            for value in options.get(setting.name) or ():
                arguments.append(f"--{setting.name}={value}")
    return arguments


def _packageRoot() -> str:
    import cachingproxy

    return os.path.dirname(os.path.dirname(os.path.abspath(cachingproxy.__file__)))


def workerEnvironment(environ: Mapping[str, str]) -> Dict[str, str]:
    """
    The parent's environment for a worker: the same settings, the folder
    this package was imported from first on C{PYTHONPATH} (so the worker
    runs the same code), and no systemd activation variables (those were
    meant for the parent).
    """
    env = {k: v for k, v in environ.items() if k not in _SYSTEMD_VARIABLES}
    root = _packageRoot()
    if root in _sitePackages():
        # Installed: the same interpreter finds it without help, and a
        # site-packages folder on PYTHONPATH would come before the
        # standard library.
        return env
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join([root] + paths)
    return env


def _sitePackages() -> List[str]:
    import site

    folders = list(getattr(site, "getsitepackages", lambda: [])())
    user = getattr(site, "getusersitepackages", lambda: None)()
    if user:
        folders.append(user)
    return [os.path.abspath(f) for f in folders]


def _notify(state: str) -> None:
    """
    Tell systemd (C{Type=notify} units) about the parent's state; nothing
    when not run by systemd.
    """
    try:
        from .systemd import notify
    except ImportError:
        return
    notify(state)


def _describeEnd(reason) -> str:
    value = reason.value
    signalNumber = getattr(value, "signal", None)
    if signalNumber:
        try:
            name = signal.Signals(signalNumber).name
        except ValueError:
            name = str(signalNumber)
        return f"killed by signal {signalNumber} ({name})"
    return f"exited with status {getattr(value, 'exitCode', None)}"


# -- supervision -------------------------------------------------------------


class _WorkerProcess(ProcessProtocol):
    """
    One worker process and what the supervisor knows about it.

    @ivar workerId: the slot it serves (1..N); a replacement keeps the id.
    @ivar pid: its process id once spawned.
    @ivar started: when it was spawned (the supervisor's clock).
    @ivar ready: whether it said it accepts.
    @ivar terminating: whether it was sent SIGTERM.
    @ivar ended: fires with the reason once the process has ended.
    """

    def __init__(self, supervisor: "WorkerSupervisor", workerId: int, started: float) -> None:
        self.supervisor = supervisor
        self.workerId = workerId
        self.started = started
        self.pid: Optional[int] = None
        self.ready = False
        self.terminating = False
        self.killCall = None
        self.ended: defer.Deferred = defer.Deferred()
        self._readyWaiters: List[defer.Deferred] = []
        self._readyBuffer = b""
        #: the start of a log line not yet relayed, per descriptor
        self._partial: Dict[int, bytes] = {}

    def __repr__(self) -> str:
        return f"<worker {self.workerId} pid {self.pid}>"

    @property
    def alive(self) -> bool:
        return not self.ended.called

    def whenReady(self) -> defer.Deferred:
        """
        @return: a Deferred firing once the worker accepts, or failing if
            it ends first.
        """
        if self.ready:
            return defer.succeed(self)
        if not self.alive:
            return defer.fail(RuntimeError(f"worker {self.workerId} ended before it was ready"))
        d = defer.Deferred()
        self._readyWaiters.append(d)
        return d

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD in (1, 2):
            self._relay(childFD, data)
            return
        if childFD != self.supervisor.readyFD or self.ready:
            return
        self._readyBuffer += data
        if b"\n" in self._readyBuffer:
            line = self._readyBuffer.split(b"\n", 1)[0]
            if line.startswith(READY_MARKER):
                self.ready = True
                self.supervisor._workerReady(self)
                waiters, self._readyWaiters = self._readyWaiters, []
                for d in waiters:
                    d.callback(self)

    def _relay(self, childFD: int, data: bytes) -> None:
        """
        Pass what the worker wrote to its stdout or stderr on to the log
        file, whole lines at a time (two workers' lines never mix).
        """
        data = self._partial.pop(childFD, b"") + data
        end = data.rfind(b"\n") + 1
        if end < len(data):
            self._partial[childFD] = data[end:]
        if end:
            self.supervisor.logSink(data[:end])

    def processEnded(self, reason) -> None:
        for childFD in sorted(self._partial):
            self.supervisor.logSink(self._partial.pop(childFD) + b"\n")
        self.supervisor._workerEnded(self, reason)
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            d.errback(RuntimeError(
                f"worker {self.workerId} {_describeEnd(reason)} before it was ready"))
        self.endReason = reason
        self.ended.callback(None)


def _fileLogSink() -> Optional[Callable[[bytes], None]]:
    """
    @return: a function writing the bytes given to the file twistd logs to
        (C{--logfile}), or C{None} when the log goes to this process's
        stdout or stderr (the journal, a terminal), which the workers
        inherit.
    """
    found = textLogStream()
    if found is None:
        return None
    stream, encoding = found
    try:
        if stream.fileno() in (1, 2):
            return None
    except (AttributeError, OSError, ValueError):
        pass

    def write(data: bytes) -> None:
        try:
            stream.write(data if encoding is not None else data.decode("utf-8", "replace"))
            stream.flush()
        except Exception:
            WorkerSupervisor._log.failure("writing a worker's log lines failed")

    return write


class _Slot:
    """
    One of the N places a worker serves in.

    @ivar current: the worker serving it, or C{None} while one is awaited.
    @ivar replacement: the worker starting to take over during a reload.
    @ivar delay: the restart delay after the next quick death.
    @ivar restartCall: the pending restart, if any.
    """

    def __init__(self, workerId: int, delay: float) -> None:
        self.workerId = workerId
        self.current: Optional[_WorkerProcess] = None
        self.replacement: Optional[_WorkerProcess] = None
        self.delay = delay
        self.restartCall = None


class WorkerSupervisor(service.Service):
    """
    Spawns C{count} workers on the inherited listening descriptors and
    keeps them running (the shape of C{twisted.runner.procmon}'s
    C{ProcessMonitor}).

    @ivar threshold: a worker that dies within this many seconds of its
        start died "quickly": its next restart waits twice as long.
    @ivar minRestartDelay: the restart delay after a death that was not
        quick, and the first one after a quick death.
    @ivar maxRestartDelay: the longest restart delay.
    @ivar killTime: seconds between SIGTERM and SIGKILL.
    @ivar readyTimeout: how long a reload waits for a replacement to be
        ready before giving up (the old workers keep serving).
    @ivar readyFD: the worker's descriptor of its readiness pipe.
    @ivar tlsListeners: the TLS listeners among C{listeningFDs}: their
        descriptor and C{--port} description, from which each worker reads
        the certificate and key.
    """

    threshold = 1.0
    minRestartDelay = 0.2
    maxRestartDelay = 5.0
    readyTimeout = 30.0

    _log = Logger()

    def __init__(
        self,
        reactor,
        count: int,
        listeningFDs: Sequence[int],
        childArgs: Sequence[str] = (),
        grace: float = 10.0,
        environ: Optional[Mapping[str, str]] = None,
        executable: str = sys.executable,
        tlsListeners: Optional[Mapping[int, str]] = None,
    ) -> None:
        self._reactor = reactor
        self.count = count
        self.listeningFDs = list(listeningFDs)
        self.tlsListeners = dict(tlsListeners or {})
        self.childArgs = list(childArgs)
        #: the worker has C{grace} to drain, then time to close its pool
        #: and exit
        self.killTime = grace + 5.0
        self.environ = dict(os.environ if environ is None else environ)
        self.executable = executable
        self.readyFD = max([2] + self.listeningFDs) + 1
        self._slots = [_Slot(i + 1, self.minRestartDelay) for i in range(count)]
        self._live: List[_WorkerProcess] = []
        self._reloading: Optional[defer.Deferred] = None
        self._reloadAgain = False
        #: fires the first time every slot has a worker that is ready
        self.allReady: defer.Deferred = defer.Deferred()
        #: where the workers' log lines are written when the parent logs to
        #: a file of its own (L{_fileLogSink}); C{None}: they inherit its
        #: stdout and stderr
        self.logSink: Optional[Callable[[bytes], None]] = None

    # -- what to run --------------------------------------------------------

    def workerArguments(self, workerId: int) -> List[str]:
        """
        @return: the argv of worker C{workerId}.
        """
        argv = [self.executable]
        if sys.version_info >= (3, 11):
            # Not the working directory first on sys.path: the worker
            # imports the package from where the parent did (PYTHONPATH).
            argv.append("-P")
        argv += ["-m", "cachingproxy.service.child"]
        for fd in self.listeningFDs:
            argv += ["--inherit-fd", str(fd)]
            if fd in self.tlsListeners:
                argv += ["--tls-port", f"{fd}={self.tlsListeners[fd]}"]
        argv += ["--worker-id", str(workerId), "--ready-fd", str(self.readyFD)]
        return argv + self.childArgs

    def _childFDs(self) -> Dict[int, object]:
        # stdin is a pipe the parent never writes to: the worker sees end
        # of file when the parent is gone. stdout and stderr are the
        # parent's, so the worker logs go where the parent's go, unless
        # the parent logs to a file of its own (twistd --logfile): then
        # they are pipes, relayed to that file (which twistd rotates).
        out: object = 1
        err: object = 2
        if self.logSink is not None:
            out = err = "r"
        fds: Dict[int, object] = {0: "w", 1: out, 2: err, self.readyFD: "r"}
        for fd in self.listeningFDs:
            fds[fd] = fd
        return fds

    # -- the service --------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.logSink = _fileLogSink()
        # One folder where every worker's metrics add up (prometheus-client
        # multiprocess mode), unless the operator chose one.
        self.metricsFolder = None
        if not self.environ.get(METRICS_ENVIRONMENT):
            self.metricsFolder = tempfile.mkdtemp(prefix="cachingproxy-metrics-")
            self.environ[METRICS_ENVIRONMENT] = self.metricsFolder
        for slot in self._slots:
            if slot.current is None:
                slot.current = self._spawn(slot.workerId)

    def stopService(self) -> defer.Deferred:
        """
        SIGTERM every worker, SIGKILL those still alive after C{killTime}.

        @return: a Deferred firing once every worker has ended.
        """
        super().stopService()
        for slot in self._slots:
            if slot.restartCall is not None and slot.restartCall.active():
                slot.restartCall.cancel()
            slot.restartCall = None
        live = list(self._live)
        self._log.info("stopping {n} worker processes", n=len(live))
        for worker in live:
            self._terminate(worker)
        d = defer.DeferredList([w.ended for w in live], consumeErrors=True)

        def cleanup(_):
            folder, self.metricsFolder = getattr(self, "metricsFolder", None), None
            if folder:
                shutil.rmtree(folder, ignore_errors=True)

        return d.addCallback(cleanup)

    def workers(self) -> List[_WorkerProcess]:
        """
        @return: the workers currently serving their slots, in slot order.
        """
        return [slot.current for slot in self._slots if slot.current is not None]

    # -- spawning, ending, restarting ---------------------------------------

    def _spawn(self, workerId: int) -> _WorkerProcess:
        worker = _WorkerProcess(self, workerId, self._reactor.seconds())
        self._live.append(worker)
        try:
            self._reactor.spawnProcess(
                worker,
                self.executable,
                self.workerArguments(workerId),
                env=workerEnvironment(self.environ),
                childFDs=self._childFDs(),
            )
        except OSError:
            from twisted.python.failure import Failure

            self._log.failure("cannot start worker {worker}", Failure(), worker=workerId)
            self._reactor.callLater(0, worker.processEnded,
                                    Failure(error.ProcessTerminated(exitCode=127)))
            return worker
        self._log.info("worker {worker} started (pid {pid})", worker=workerId, pid=worker.pid)
        return worker

    def _workerReady(self, worker: _WorkerProcess) -> None:
        self._log.info("worker {worker} (pid {pid}) ready", worker=worker.workerId, pid=worker.pid)
        if not self.allReady.called and all(
            slot.current is not None and slot.current.ready for slot in self._slots
        ):
            self.allReady.callback(None)

    def _workerEnded(self, worker: _WorkerProcess, reason) -> None:
        if worker in self._live:
            self._live.remove(worker)
        folder = self.environ.get(METRICS_ENVIRONMENT)
        if worker.pid is not None and folder:
            markProcessDead(worker.pid, folder)
        if worker.killCall is not None and worker.killCall.active():
            worker.killCall.cancel()
        how = _describeEnd(reason)
        slot = self._slots[worker.workerId - 1]
        if worker.terminating:
            self._log.info("worker {worker} (pid {pid}) {how}",
                           worker=worker.workerId, pid=worker.pid, how=how)
        else:
            self._log.warn("worker {worker} (pid {pid}) {how} unexpectedly",
                           worker=worker.workerId, pid=worker.pid, how=how)
        if slot.current is not worker:
            return
        slot.current = None
        if not self.running or slot.replacement is not None:
            # Stopping, or a reload is bringing its successor up already.
            return
        self._scheduleRestart(slot, self._reactor.seconds() - worker.started)

    def _scheduleRestart(self, slot: _Slot, lived: float) -> None:
        if lived < self.threshold:
            delay = slot.delay
            slot.delay = min(slot.delay * 2, self.maxRestartDelay)
        else:
            delay = slot.delay = self.minRestartDelay
        self._log.info("restarting worker {worker} in {delay}s", worker=slot.workerId, delay=delay)
        slot.restartCall = self._reactor.callLater(delay, self._restart, slot)

    def _restart(self, slot: _Slot) -> None:
        slot.restartCall = None
        if self.running and slot.current is None and slot.replacement is None:
            folder = self.environ.get(METRICS_ENVIRONMENT)
            if folder:
                countWorkerRestart(folder)
            slot.current = self._spawn(slot.workerId)

    def _terminate(self, worker: _WorkerProcess) -> None:
        """
        SIGTERM C{worker} (it stops accepting and drains), SIGKILL it if it
        is still alive C{killTime} seconds later.
        """
        if worker.terminating or not worker.alive:
            return
        worker.terminating = True
        try:
            worker.transport.signalProcess("TERM")
        except (error.ProcessExitedAlready, AttributeError):
            return
        worker.killCall = self._reactor.callLater(self.killTime, self._kill, worker)

    def _kill(self, worker: _WorkerProcess) -> None:
        worker.killCall = None
        self._log.warn("worker {worker} (pid {pid}) still running {seconds}s after SIGTERM: "
                       "killing it", worker=worker.workerId, pid=worker.pid,
                       seconds=self.killTime)
        try:
            worker.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    # -- reloading ----------------------------------------------------------

    def reload(self) -> defer.Deferred:
        """
        Replace every worker, one at a time, each only once its successor
        accepts (SIGHUP). A reload asked for during one runs again after
        it, so the last request is always honoured.

        @return: a Deferred firing when the replacement is over.
        """
        if not self.running:
            return defer.succeed(None)
        if self._reloading is not None:
            self._reloadAgain = True
            d = defer.Deferred()
            self._reloading.addBoth(lambda r: (d.callback(None), r)[1])
            return d
        self._reloading = defer.Deferred.fromCoroutine(self._rollingReload())

        def done(result):
            self._reloading = None
            if self._reloadAgain and self.running:
                self._reloadAgain = False
                return self.reload()
            return result

        self._reloading.addBoth(done)
        return self._reloading

    async def _rollingReload(self) -> None:
        self._log.info("reloading: replacing {n} workers one at a time", n=len(self._slots))
        for slot in self._slots:
            if not self.running:
                return
            if slot.restartCall is not None and slot.restartCall.active():
                slot.restartCall.cancel()
            slot.restartCall = None
            old = slot.current
            new = slot.replacement = self._spawn(slot.workerId)
            try:
                await new.whenReady().addTimeout(self.readyTimeout, self._reactor)
            except Exception as e:
                slot.replacement = None
                if not self.running:
                    return
                self._log.error(
                    "reload stopped: the new worker {worker} did not get ready ({why}); "
                    "the others keep serving", worker=slot.workerId, why=str(e) or repr(e))
                self._terminate(new)
                if slot.current is None:
                    self._scheduleRestart(slot, self._reactor.seconds() - new.started)
                return
            slot.replacement = None
            if not self.running:
                return
            slot.current = new
            if old is not None and old.alive:
                self._terminate(old)
        self._log.info("reload complete: {n} new workers", n=len(self._slots))


class WorkersService(service.MultiService):
    """
    The parent process of C{--workers N}: owns the listening sockets,
    supervises the workers (a L{WorkerSupervisor} child), reloads them on
    SIGHUP, and closes the sockets once every worker has ended.

    @ivar listeners: the L{Listener}s once bound.
    """

    _log = Logger()

    def __init__(
        self,
        reactor,
        descriptions: Sequence[str],
        count: int,
        childArgs: Sequence[str] = (),
        grace: float = 10.0,
        environ: Optional[Mapping[str, str]] = None,
        installSignalHandlers: bool = True,
        listen: Callable[[str], Listener] = parseListener,
    ) -> None:
        super().__init__()
        for description in descriptions:
            _checkDescription(description)
        self._reactor = reactor
        self.descriptions = list(descriptions)
        self.count = count
        self.childArgs = list(childArgs)
        self.grace = grace
        self.environ = environ
        self.installSignalHandlers = installSignalHandlers
        self._listen = listen
        self.listeners: List[Listener] = []
        self.supervisor: Optional[WorkerSupervisor] = None
        self._previousHandler: object = _NOT_INSTALLED

    def _bind(self) -> None:
        if self.listeners:
            return
        for description in self.descriptions:
            try:
                listener = self._listen(description)
            except Exception as e:
                for bound in self.listeners:
                    bound.close()
                self.listeners = []
                # An exception (not SystemExit) from privilegedStartService
                # makes twistd remove its pid file before it ends.
                raise cannotListen(description, e)
            self.listeners.append(listener)
            self._log.info(
                "cachingproxy {version} listening on {address} with {n} worker processes",
                version=__version__, address=describeAddress(listener.address), n=self.count)
        self.supervisor = WorkerSupervisor(
            self._reactor, self.count, [listener.fileno for listener in self.listeners],
            self.childArgs, self.grace, self.environ,
            tlsListeners={listener.fileno: listener.description
                          for listener in self.listeners if listener.tls})
        self.supervisor.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """
        Bind before twistd sheds its privileges (ports below 1024).
        """
        self._bind()
        super().privilegedStartService()

    def startService(self) -> None:
        self._bind()
        super().startService()
        self.supervisor.allReady.addCallback(
            lambda _: _notify(f"READY=1\nSTATUS=serving with {self.count} worker processes"))
        if self.installSignalHandlers:
            reactor = self._reactor
            self._previousHandler = signal.signal(
                signal.SIGHUP, lambda *a: reactor.callFromThread(self._reloadOnSignal))

    def _reloadOnSignal(self) -> None:
        self._log.info("SIGHUP: reloading the workers")
        _notify("STATUS=replacing the worker processes")
        d = self.reload()
        d.addErrback(lambda f: self._log.failure("reload failed", f))
        d.addCallback(lambda _: _notify(f"STATUS=serving with {self.count} worker processes"))

    def reload(self) -> defer.Deferred:
        """
        Replace the workers one by one (what SIGHUP does).
        """
        if self.supervisor is None:
            return defer.succeed(None)
        return self.supervisor.reload()

    def stopService(self) -> defer.Deferred:
        """
        Stop the workers (each stops accepting at once, then drains) and
        close the parent's copy of the listening sockets right away, so
        that new clients are refused as soon as the workers have let go
        of theirs, rather than queued on a socket nobody accepts on any
        more (and reset when it finally closes).
        """
        if self._previousHandler is not _NOT_INSTALLED:
            previous, self._previousHandler = self._previousHandler, _NOT_INSTALLED
            signal.signal(signal.SIGHUP, signal.SIG_DFL if previous is None else previous)
        _notify("STOPPING=1\nSTATUS=stopping the worker processes")
        d = defer.maybeDeferred(super().stopService)
        # The workers have their own descriptors, and no worker is spawned
        # any more.
        for listener in self.listeners:
            listener.close()

        def ended(result):
            self._log.info("all worker processes ended")
            return None

        return d.addBoth(ended)
