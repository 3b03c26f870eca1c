"""
systemd: the notify and socket-activation protocols of
L{cachingproxy.service.systemd}, the unit files of C{contrib/systemd}, and a real
C{twistd -n cachingproxy} taking its listening socket from "systemd".
"""

import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cachingproxy.service import systemd
from cachingproxy.service.config import SETTINGS

from .helpers import exchange, listenOrigin, pattern, temporaryPath
from .helpers import REPO, TWISTD, Twistd as _Twistd

UNITS = os.path.join(REPO, "contrib", "systemd")

#: What systemd does between fork and exec: set LISTEN_PID to the pid that
#: will run the service (exec keeps it), then exec the real command line.
ACTIVATE = (
    "import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); "
    "os.execv(sys.executable, [sys.executable] + sys.argv[1:])"
)

#: Variables of an outer systemd that must not leak into the child.
_SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def _unitSettings(name):
    """
    @return: C{{key: [values]}} of a unit file in C{contrib/systemd}.
    """
    settings = {}
    with open(os.path.join(UNITS, name)) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", ";", "[")) and "=" in line:
                key, value = line.split("=", 1)
                settings.setdefault(key.strip(), []).append(value.strip())
    return settings


class NotifyTests(SynchronousTestCase):
    """
    L{systemd.notify} sends C{sd_notify} datagrams.
    """

    def receiver(self, address):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(address)
        sock.settimeout(5)
        return sock

    def test_path(self):
        """
        With C{NOTIFY_SOCKET} a path, the state arrives there as one
        datagram.
        """
        path = temporaryPath(self, "notify")
        sock = self.receiver(path)
        self.assertTrue(systemd.notify(b"READY=1", {"NOTIFY_SOCKET": path}))
        self.assertEqual(sock.recv(4096), b"READY=1")
        self.assertTrue(systemd.notify("STATUS=serving\nREADY=1", {"NOTIFY_SOCKET": path}))
        self.assertEqual(sock.recv(4096), b"STATUS=serving\nREADY=1")

    def test_abstract(self):
        """
        C{@name} is a socket in the abstract namespace.
        """
        if not sys.platform.startswith("linux"):
            raise self.skipTest("the abstract socket namespace is Linux only")
        name = f"cachingproxy-test-{uuid.uuid4().hex}"
        sock = self.receiver("\0" + name)
        self.assertTrue(systemd.notify(b"READY=1", {"NOTIFY_SOCKET": "@" + name}))
        self.assertEqual(sock.recv(4096), b"READY=1")

    def test_unset(self):
        """
        Without C{NOTIFY_SOCKET} nothing is sent and C{False} returned.
        """
        self.assertFalse(systemd.notify(b"READY=1", {}))
        self.assertFalse(systemd.notify(b"READY=1", {"NOTIFY_SOCKET": ""}))

    def test_failureLogged(self):
        """
        A socket that is not there, or an address form not spoken, is
        logged and reported as C{False}, never raised.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        missing = temporaryPath(self, "absent")
        self.assertFalse(systemd.notify(b"READY=1", {"NOTIFY_SOCKET": missing}))
        self.assertFalse(systemd.notify(b"READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}))
        self.assertFalse(systemd.notify(b"READY=1", {"NOTIFY_SOCKET": "@"}))
        self.assertEqual(len(events), 3)
        self.assertEqual(events[0]["name"], missing)
        self.assertEqual(events[0]["log_level"].name, "warn")


class ListenFDsTests(SynchronousTestCase):
    """
    L{systemd.listenFDs}: C{sd_listen_fds}.
    """

    def test_passed(self):
        """
        C{LISTEN_FDS} descriptors from 3 on, when C{LISTEN_PID} is this
        process.
        """
        environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2"}
        self.assertEqual(systemd.listenFDs(environ), [3, 4])
        self.assertEqual(systemd.listenFDNames(environ), ["unknown", "unknown"])
        environ["LISTEN_FDNAMES"] = "http:admin"
        self.assertEqual(systemd.listenFDNames(environ), ["http", "admin"])

    def test_otherProcess(self):
        """
        Descriptors meant for another process (an inherited environment)
        are not taken; C{pid} says which process is asking.
        """
        environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
        self.assertEqual(systemd.listenFDs(environ), [])
        self.assertEqual(systemd.listenFDs(environ, pid=1), [3])

    def test_absentOrMalformed(self):
        """
        Absent, empty or malformed variables mean no descriptors.
        """
        pid = str(os.getpid())
        for environ in [
            {},
            {"LISTEN_PID": pid},
            {"LISTEN_FDS": "1"},
            {"LISTEN_PID": pid, "LISTEN_FDS": "x"},
            {"LISTEN_PID": pid, "LISTEN_FDS": "0"},
            {"LISTEN_PID": pid, "LISTEN_FDS": "-1"},
            {"LISTEN_PID": "me", "LISTEN_FDS": "1"},
        ]:
            self.assertEqual(systemd.listenFDs(environ), [], environ)


class UnitFileTests(SynchronousTestCase):
    """
    contrib/systemd/cachingproxy.service and cachingproxy.socket.
    """

    def test_verify(self):
        """
        The README's install steps, followed with C{/opt} and C{/etc} moved
        under a temporary folder, give a virtual environment whose
        C{bin/twistd} runs the proxy and a README copy where the units'
        C{Documentation=} points; C{systemd-analyze verify} accepts the
        units copied as the steps copy them, without a warning about them
        (it requires ExecStart's executable to exist: it is the
        environment's twistd).
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise self.skipTest(
                "systemd-analyze is not installed (Debian: apt-get install -y systemd)"
            )
        root = os.path.dirname(temporaryPath(self))
        units = followInstallSteps(self, root)
        service = _unitSettings("cachingproxy.service")
        [execStart] = service["ExecStart"]
        self.assertTrue(os.access(root + execStart.split()[0], os.X_OK), execStart)
        for name in ("cachingproxy.service", "cachingproxy.socket"):
            for documentation in _unitSettings(name)["Documentation"]:
                if documentation.startswith("file://"):
                    self.assertTrue(os.path.isfile(root + documentation[len("file://"):]), documentation)
            # The units as verify sees them: where the steps put them, with
            # their paths moved to where the steps were followed.
            path = os.path.join(units, name)
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(text.replace(INSTALL_PREFIX, root + INSTALL_PREFIX))
        result = subprocess.run(
            [analyze, "verify", "--man=no", "./cachingproxy.socket", "./cachingproxy.service"],
            cwd=units,
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER=""),
        )
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        about = [line for line in output.splitlines() if "cachingproxy" in line]
        self.assertEqual(about, [], output)

    def test_installSteps(self):
        """
        The README's steps make the virtual environment the service runs:
        python3-venv installed first, the environment made at the place
        ExecStart names, the proxy installed with that environment's pip,
        the README copied where C{Documentation=} points, then the units
        copied and the socket enabled; no step installs into the system
        Python.
        """
        steps = readmeInstallSteps()
        [execStart] = _unitSettings("cachingproxy.service")["ExecStart"]
        self.assertEqual(execStart.split()[0], INSTALL_PREFIX + "/bin/twistd")
        expected = [
            "apt-get install -y python3-venv",
            "python3 -m venv " + INSTALL_PREFIX,
            INSTALL_PREFIX + "/bin/pip install .",
            "install -m 644 README.rst " + INSTALL_PREFIX + "/README.rst",
            INSTALL_PREFIX + "/bin/twistd --help > /dev/null",
            "cp contrib/systemd/cachingproxy.* /etc/systemd/system/",
            "systemctl daemon-reload",
            "systemctl enable --now cachingproxy.socket",
        ]
        self.assertEqual(steps, expected)
        for name in ("cachingproxy.service", "cachingproxy.socket"):
            self.assertIn("file://" + INSTALL_PREFIX + "/README.rst",
                          _unitSettings(name)["Documentation"])

    def test_serviceShape(self):
        """
        The service is Type=notify, takes the socket's first descriptor,
        has no twistd pid file, and waits longer for a stop than the
        default shutdown grace.
        """
        service = _unitSettings("cachingproxy.service")
        self.assertEqual(service["Type"], ["notify"])
        [execStart] = service["ExecStart"]
        self.assertIn(" --nodaemon --pidfile= cachingproxy ", execStart)
        self.assertIn("--port systemd:domain=INET:index=0", execStart)
        [grace] = [s.default for s in SETTINGS if s.name == "shutdown-grace"]
        self.assertGreater(float(service["TimeoutStopSec"][0]), grace)
        self.assertEqual(service["StateDirectory"], ["cachingproxy"])
        self.assertIn("AF_UNIX", service["RestrictAddressFamilies"][0])
        self.assertNotIn("MemoryDenyWriteExecute", service)
        self.assertEqual(service["RestartPreventExitStatus"], ["2"])

    def test_socketShape(self):
        """
        The socket listens on one stream address, on loopback by default.
        """
        sockets = _unitSettings("cachingproxy.socket")
        self.assertEqual(sockets["ListenStream"], ["127.0.0.1:3128"])


#: Where the README's steps install the proxy.
INSTALL_PREFIX = "/opt/cachingproxy"


def readmeInstallSteps():
    """
    @return: the commands of the README's install steps for systemd (the
        literal block of C{sudo} lines in "Running it as a service"),
        without C{sudo}.
    """
    with open(os.path.join(REPO, "README.rst")) as f:
        text = f.read()
    section = text.split("\nRunning it as a service\n", 1)[1].split("\nObservability\n", 1)[0]
    return [line.strip()[len("sudo "):] for line in section.splitlines()
            if line.startswith("    sudo ")]


def followInstallSteps(testCase, root):
    """
    Follow the README's install steps with every path under C{root}: the
    commands that change this machine's packages or services (apt-get,
    systemctl) are left out, and the environment gets this checkout and
    the dependencies this test runs with instead of a download from PyPI
    (C{pip install .} with no network), its twistd written as pip writes a
    console script, from Twisted's own entry point.

    @return: the folder the units were copied to.
    """
    from importlib.metadata import entry_points

    environment = root + INSTALL_PREFIX
    units = root + "/etc/systemd/system"
    os.makedirs(units)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    for step in readmeInstallSteps():
        command = step.replace(INSTALL_PREFIX, environment).replace("/etc/systemd/system", units)
        if step.startswith(("apt-get ", "systemctl ")):
            continue
        if step.startswith("python3 -m venv "):
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", environment],
                           check=True, timeout=120, env=env)
        elif step.startswith(INSTALL_PREFIX + "/bin/pip install "):
            [purelib] = subprocess.run(
                [os.path.join(environment, "bin", "python"), "-c",
                 "import sysconfig; print(sysconfig.get_path('purelib'))"],
                check=True, timeout=60, capture_output=True, text=True, env=env,
            ).stdout.split()
            dependencies = os.path.dirname(os.path.dirname(inspect.getfile(defer)))
            with open(os.path.join(purelib, "cachingproxy-test.pth"), "w") as f:
                f.write(REPO + "\n" + os.path.dirname(dependencies) + "\n")
            [twistd] = entry_points(group="console_scripts", name="twistd")
            module, function = twistd.value.split(":")
            script = os.path.join(environment, "bin", "twistd")
            with open(script, "w") as f:
                f.write(f"#!{environment}/bin/python\nimport sys\nfrom {module} import {function}\n"
                        f"sys.exit({function}())\n")
            os.chmod(script, 0o755)
        else:
            done = subprocess.run(command, shell=True, cwd=REPO, timeout=120, env=env,
                                  capture_output=True, text=True)
            testCase.assertEqual(done.returncode, 0, f"{command}: {done.stdout}{done.stderr}")
            if "twistd --help" in step:
                listed = subprocess.run(
                    [os.path.join(environment, "bin", "twistd"), "--help"], cwd=root,
                    timeout=120, env=env, capture_output=True, text=True,
                )
                testCase.assertIn("cachingproxy", listed.stdout, listed.stderr)
    return units


class _NotifyReceiver(DatagramProtocol):
    """
    Collects the datagrams sent to a fake C{NOTIFY_SOCKET}.
    """

    def __init__(self):
        self.states = []
        self._waiting = []

    def datagramReceived(self, data, address=None):
        self.states.append(data)
        for d in list(self._waiting):
            if self.ready():
                self._waiting.remove(d)
                d.callback(data)

    def ready(self):
        return any(b"READY=1" in state.split(b"\n") for state in self.states)

    def whenReady(self):
        if self.ready():
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.append(d)
        return d


class SocketActivationTests(TestCase):
    """
    C{twistd -n cachingproxy --port systemd:domain=INET:index=0} started
    the way systemd starts the service.
    """

    timeout = 60

    def activate(self, environ=None):
        """
        Bind and listen on 127.0.0.1, then start the proxy with that socket
        as descriptor 3, C{LISTEN_FDS=1}, C{LISTEN_FDNAMES} and
        C{LISTEN_PID} its own pid.

        @return: the L{_Twistd} and the port number bound.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARIABLES}
        # systemd 227 and later always name the descriptors (by default
        # after the socket unit); Twisted's endpoint takes none without it.
        env.update(PYTHONPATH=REPO, LISTEN_FDS="1", LISTEN_FDNAMES="cachingproxy.socket",
                   **(environ or {}))
        process = _Twistd()
        try:
            transport = reactor.spawnProcess(
                process,
                sys.executable,
                [sys.executable, "-c", ACTIVATE, "-c", TWISTD, "-n", "--pidfile=",
                 "cachingproxy", "--port", "systemd:domain=INET:index=0",
                 "--cache-dir", "none"],
                env=env,
                path=REPO,
                childFDs={0: "w", 1: "r", 2: "r", 3: listener.fileno()},
            )
        finally:
            # The child has its own copy; systemd keeps one, we need not.
            listener.close()

        def stop():
            if not process.ended.called:
                transport.signalProcess(signal.SIGTERM)
            return process.ended

        self.addCleanup(stop)
        return process, port

    async def test_requestThroughActivatedSocket(self):
        """
        The proxy serves on the socket it was given: it logs that address,
        and a forward-proxy GET through it reaches the origin.
        """
        _, originPort = listenOrigin(self)
        process, port = self.activate()
        listening = await process.listening
        self.assertEqual(listening, port)
        _, [response] = await exchange(
            port, self,
            b"GET http://127.0.0.1:%d/size/1000 HTTP/1.1\r\nHost: x\r\n\r\n" % originPort,
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, pattern(1000))

    async def test_readyNotified(self):
        """
        With C{NOTIFY_SOCKET} set, the proxy sends C{READY=1} once it is
        listening (Type=notify in cachingproxy.service relies on it).
        """
        path = temporaryPath(self, "notify")
        receiver = _NotifyReceiver()
        notifyPort = reactor.listenUNIXDatagram(path, receiver)
        self.addCleanup(notifyPort.stopListening)
        process, port = self.activate({"NOTIFY_SOCKET": path})
        await process.listening
        ready = receiver.whenReady()
        ready.addTimeout(5, reactor)
        try:
            await ready
        except defer.TimeoutError:
            self.fail(
                f"no READY=1 within 5 s of listening; received {receiver.states!r}; "
                + process.output.decode(errors="replace")
            )
