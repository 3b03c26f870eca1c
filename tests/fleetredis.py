"""
Real redis-server processes for the fleet tests: a single node, or a
3-master Redis Cluster, each on free loopback ports in a temporary folder,
waited for by polling (PING, CLUSTER INFO) with a bounded deadline, and
stopped (SIGCONT, then SIGKILL, then reaped) by the test's cleanup.

L{RedisServer.command} is a blocking client (a socket and hiredis) for the
tests' own setup and checks, independent of the client under test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import List, Optional

import hiredis

from cachingproxy.fleet.redis import encodeCommand

__all__ = ["RedisServer", "RedisCluster", "freePort", "needRedis", "CommandError"]

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
needRedis = None if REDIS_SERVER and REDIS_CLI else "redis-server and redis-cli are not installed"

_START_DEADLINE = 15.0


class CommandError(Exception):
    pass


def freePort(clusterBus: bool = False) -> int:
    """
    A TCP port free on 127.0.0.1 (and, for a cluster node, its bus port
    C{port + 10000} too).
    """
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not clusterBus:
            return port
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def _poll(predicate, what: str, deadline: float = _START_DEADLINE):
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        try:
            result = predicate()
            if result:
                return result
        except (OSError, CommandError) as e:
            last = e
        time.sleep(0.02)
    raise RuntimeError(f"{what} not ready after {deadline}s (last error: {last!r})")


class RedisServer:
    """
    One redis-server process.
    """

    def __init__(self, *extra: str, password: Optional[str] = None, port: Optional[int] = None, cluster: bool = False):
        self.extra = list(extra)
        self.password = password
        self.cluster = cluster
        self.port = port or freePort(clusterBus=cluster)
        self.dir = tempfile.mkdtemp(prefix="fleet-redis-")
        self.process: Optional[subprocess.Popen] = None
        self._started = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> "RedisServer":
        args = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir,
            "--logfile", os.path.join(self.dir, "redis.log"),
        ]
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", os.path.join(self.dir, "nodes.conf"),
                "--cluster-node-timeout", "2000",
                # the slots of a dead master fail, the others keep working
                "--cluster-require-full-coverage", "no",
            ]
        args += self.extra
        # a port found free may be taken before redis binds it (other tests
        # run on this machine): the first start then moves to another port;
        # a restart keeps its port
        for attempt in range(5):
            portArgs = list(args)
            portArgs[portArgs.index("--port") + 1] = str(self.port)
            self.process = subprocess.Popen(
                portArgs, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )

            def up():
                if self.process.poll() is not None:
                    return "exited"
                return self.command("PING") == b"PONG"

            try:
                started = _poll(up, f"redis-server on {self.port}")
            except BaseException:
                self.kill()
                raise
            if started is True:
                self._started = True
                return self
            self.process.wait()
            self.process = None
            if self._started:
                break
            self.port = freePort(clusterBus=self.cluster)
        raise RuntimeError(f"redis-server did not start (see {self.dir}/redis.log)")

    def command(self, *args, timeout: float = 5.0):
        """
        Send one command and return its reply (blocking); an error reply
        raises L{CommandError}.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            reader = hiredis.Reader(replyError=CommandError)
            payload = b""
            if self.password is not None:
                payload += encodeCommand(["AUTH", self.password])
            payload += encodeCommand(args)
            s.sendall(payload)
            replies = []
            want = 2 if self.password is not None else 1
            while len(replies) < want:
                data = s.recv(65536)
                if not data:
                    raise OSError("connection closed")
                reader.feed(data)
                while True:
                    r = reader.gets()
                    if r is False:
                        break
                    replies.append(r)
            if isinstance(replies[-1], CommandError):
                raise replies[-1]
            return replies[-1]

    def pause(self) -> None:
        """
        SIGSTOP: connections stay open and silent.
        """
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """
        SIGKILL and reap; the port is free again.
        """
        if self.process is None:
            return
        try:
            os.kill(self.process.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster:
    """
    Three masters, no replicas, all 16384 slots assigned.
    """

    def __init__(self, size: int = 3):
        self.nodes: List[RedisServer] = [RedisServer(cluster=True) for _ in range(size)]

    @property
    def urls(self) -> List[str]:
        return [n.url for n in self.nodes]

    def start(self) -> "RedisCluster":
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> "RedisCluster":
        for n in self.nodes:
            n.start()
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes], "--cluster-yes"],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

        def ready():
            for n in self.nodes:
                info = n.command("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info or "cluster_slots_assigned:16384" not in info:
                    return False
            return True

        _poll(ready, "cluster")
        return self

    def nodeFor(self, slot: int) -> RedisServer:
        for n in self.nodes:
            for row in n.command("CLUSTER", "SLOTS"):
                if row[0] <= slot <= row[1] and row[2][1] == n.port:
                    return n
        raise LookupError(slot)

    def nodeId(self, node: RedisServer) -> str:
        return node.command("CLUSTER", "MYID").decode()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
