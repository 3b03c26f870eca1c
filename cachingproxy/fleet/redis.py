# -*- test-case-name: tests.test_fleet_redis -*-
"""
A Redis client on Twisted, for the fleet tier.

  - L{RedisProtocol}: one connection. Commands are pipelined and replies
    parsed by C{hiredis.Reader}. Every command has a deadline; when one is
    missed the connection is closed and every command still on it fails
    with L{FleetTimeout}: a late reply can never be handed to another
    command. At most C{maxInFlight} commands, and C{maxBytesInFlight}
    bytes of them, wait on a connection.
  - L{NodePool}: a few connections to one node, with AUTH and SELECT on
    connect and a L{Breaker} in front.
  - L{RedisClient}: one node (C{redis://host:port/db}, C{rediss://} for
    TLS).
  - L{ClusterClient}: Redis Cluster: the slot of a key (CRC16 with the
    C{{hashtag}} rule) picks the node from the map C{CLUSTER SLOTS} gives;
    C{MOVED} updates the map and retries, C{ASK} retries once on the named
    node after C{ASKING}; redirections are bounded.
  - L{Script}: a Lua script run with EVALSHA, falling back to EVAL (which
    also loads it) on NOSCRIPT.
  - L{Subscriber}: a pub/sub connection that reconnects and resubscribes.

Both clients offer C{execute(*args, key=None)}: C{key} names the key whose
slot routes the command (by default C{args[1]}).
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple
from urllib.parse import unquote, urlsplit

import hiredis
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, DeferredList, fail, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from cachingproxy.fleet.breaker import Breaker, BreakerState

__all__ = [
    "FleetError",
    "FleetTimeout",
    "FleetConnectionLost",
    "FleetUnavailable",
    "FleetBusy",
    "ReplyError",
    "TooManyRedirects",
    "NodeAddress",
    "parseURL",
    "encodeCommand",
    "keySlot",
    "RedisProtocol",
    "NodePool",
    "RedisClient",
    "ClusterClient",
    "Script",
    "Subscriber",
    "connectClient",
]


class FleetError(Exception):
    """
    A fleet command did not get a usable reply.
    """


class FleetTimeout(FleetError):
    """
    The reply did not come before the command's deadline; the connection it
    was sent on has been closed.
    """


class FleetConnectionLost(FleetError):
    """
    The connection closed before the reply came.
    """


class FleetUnavailable(FleetError):
    """
    The node cannot be reached (connection refused, breaker open, no node
    serves the slot).
    """


class FleetBusy(FleetError):
    """
    Every connection to the node already has C{maxInFlight} commands (or
    C{maxBytesInFlight} bytes of commands) waiting.
    """


class TooManyRedirects(FleetError):
    """
    A cluster command was redirected (MOVED, ASK, TRYAGAIN) more than
    C{maxRedirects} times.
    """


class ReplyError(FleetError):
    """
    Redis answered with an error reply (C{-ERR ...}, C{-MOVED ...}).

    @ivar code: its first word (C{"ERR"}, C{"MOVED"}, C{"NOSCRIPT"}...).
    """

    @property
    def code(self) -> str:
        return str(self.args[0]).split(" ", 1)[0] if self.args else ""


# ---------------------------------------------------------------- addresses


@dataclass(frozen=True)
class NodeAddress:
    """
    Where a node is and how to log in.
    """

    host: str
    port: int = 6379
    tls: bool = False
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None

    @property
    def hostport(self) -> Tuple[str, int]:
        return (self.host, self.port)


def parseURL(url: str, passwordFile: Optional[str] = None) -> NodeAddress:
    """
    Parse C{redis://[[user]:password@]host[:port][/db]} (C{rediss://} for
    TLS). A password in C{passwordFile} (its first line) wins over the URL's.

    @raise ValueError: for another scheme or a bad port or db.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a redis:// or rediss:// URL: {url!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    path = parts.path.strip("/")
    db = int(path) if path else 0
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if passwordFile is not None:
        with open(passwordFile, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    return NodeAddress(
        host=parts.hostname,
        port=parts.port or 6379,
        tls=parts.scheme == "rediss",
        db=db,
        username=username,
        password=password,
    )


# ---------------------------------------------------------------- encoding


def _bytes(a) -> bytes:
    if isinstance(a, bytes):
        return a
    if isinstance(a, str):
        return a.encode("utf-8")
    if isinstance(a, (int, float)):
        return str(a).encode("ascii")
    if isinstance(a, (bytearray, memoryview)):
        return bytes(a)
    raise TypeError(f"cannot send {type(a).__name__} to Redis")


def encodeCommand(args: Sequence) -> bytes:
    """
    @return: C{args} as a RESP array of bulk strings.
    """
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if type(a) is bytes else _bytes(a)
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


# ---------------------------------------------------------------- slots


def _crc16Table() -> List[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16Table()


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc


def keySlot(key) -> int:
    """
    The Redis Cluster slot of C{key}: CRC16 (XMODEM) mod 16384 of the part
    between the first C{{} and the next C{}} when that part is not empty,
    else of the whole key.
    """
    key = _bytes(key)
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end != -1 and end != start + 1:
            key = key[start + 1 : end]
    return _crc16(key) % 16384


# ---------------------------------------------------------------- protocol


class RedisProtocol(Protocol):
    """
    One connection to Redis.

    States: open (commands accepted), closed (after a deadline miss, a
    protocol error or the connection's loss: commands fail at once with
    L{FleetConnectionLost}).

    @ivar pending: how many commands are waiting for their reply.
    """

    _log = Logger()

    def __init__(self, clock, timeout: float = 0.05, maxInFlight: int = 1024, maxBytesInFlight: int = 16 * 1024 * 1024):
        self._clock = clock
        self.timeout = timeout
        self.maxInFlight = maxInFlight
        self.maxBytesInFlight = maxBytesInFlight
        self._reader = hiredis.Reader(replyError=ReplyError)
        # (deferred, deadline, bytes sent), in the order the commands were sent
        self._pending: Deque[tuple] = deque()
        self._bytesInFlight = 0
        self._timer = None
        self._closed = False
        self._lostCallbacks: List[Callable[["RedisProtocol"], None]] = []
        self._closedCallbacks: List[Callable[["RedisProtocol"], None]] = []
        # called with True when replies come, False on a deadline miss or a
        # loss with commands waiting (the node's breaker listens)
        self.healthCallback: Callable[[bool], None] = lambda ok: None
        # while replies are dispatched, commands their callbacks send are
        # gathered here and written once at the end
        self._outgoing: Optional[List[bytes]] = None
        self.connected = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._closed

    def notifyLost(self, callback: Callable[["RedisProtocol"], None]) -> None:
        """
        Call C{callback(self)} once the connection is closed.
        """
        self._lostCallbacks.append(callback)

    def notifyClosed(self, callback: Callable[["RedisProtocol"], None]) -> None:
        """
        Call C{callback(self)} once the connection takes no more commands
        (aborted, or lost).
        """
        self._closedCallbacks.append(callback)

    def _runClosed(self) -> None:
        callbacks, self._closedCallbacks = self._closedCallbacks, []
        for cb in callbacks:
            cb(self)

    def connectionMade(self) -> None:
        self.connected = True
        # small pipelined commands and replies: Nagle's algorithm would
        # hold a command back until the previous one's ACK (a delayed ACK:
        # tens of milliseconds)
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            try:
                setNoDelay(True)
            except Exception:
                pass

    def execute(self, args: Sequence, timeout: Optional[float] = None) -> Deferred:
        """
        Send one command.

        @return: a Deferred firing with the reply (bytes, int, list,
            C{None}), or failing with L{ReplyError}, L{FleetTimeout},
            L{FleetConnectionLost} or L{FleetBusy}. Cancelling it discards
            the reply when it comes.
        """
        if self._closed:
            return fail(FleetConnectionLost("connection closed"))
        if len(self._pending) >= self.maxInFlight:
            return fail(FleetBusy(f"{self.maxInFlight} commands in flight"))
        data = encodeCommand(args)
        if self._bytesInFlight + len(data) > self.maxBytesInFlight and self._pending:
            return fail(FleetBusy(f"{self._bytesInFlight} bytes in flight"))
        d = Deferred()
        deadline = self._clock.seconds() + (self.timeout if timeout is None else timeout)
        self._pending.append((d, deadline, len(data)))
        self._bytesInFlight += len(data)
        self._send(data, deadline)
        return d

    def executeMany(self, commands: Sequence[Sequence], timeout: Optional[float] = None) -> List[Deferred]:
        """
        Send several commands back to back on this connection (C{ASKING}
        then the command, or a pipeline).
        """
        if self._closed:
            return [fail(FleetConnectionLost("connection closed")) for _ in commands]
        if len(self._pending) + len(commands) > self.maxInFlight:
            return [fail(FleetBusy(f"{self.maxInFlight} commands in flight")) for _ in commands]
        encoded = [encodeCommand(args) for args in commands]
        size = sum(len(e) for e in encoded)
        if self._bytesInFlight + size > self.maxBytesInFlight and self._pending:
            return [fail(FleetBusy(f"{self._bytesInFlight} bytes in flight")) for _ in commands]
        deadline = self._clock.seconds() + (self.timeout if timeout is None else timeout)
        ds = []
        for e in encoded:
            d = Deferred()
            self._pending.append((d, deadline, len(e)))
            ds.append(d)
        self._bytesInFlight += size
        self._send(b"".join(encoded), deadline)
        return ds

    def _send(self, data: bytes, deadline: float) -> None:
        if self._outgoing is not None:
            self._outgoing.append(data)
        else:
            self.transport.write(data)
        timer = self._timer
        if timer is None:
            self._timer = self._clock.callLater(max(0.0, deadline - self._clock.seconds()), self._checkDeadline)
        elif timer.getTime() > deadline:
            timer.reset(max(0.0, deadline - self._clock.seconds()))

    def _checkDeadline(self, graced: bool = False) -> None:
        # commands may have different deadlines: look at every one (this
        # runs about once per deadline, not per command)
        self._timer = None
        if not self._pending or self._closed:
            return
        now = self._clock.seconds()
        earliest = min(entry[1] for entry in self._pending)
        if now + 1e-9 >= earliest:
            if not graced:
                # The reactor runs its timers before it reads: a busy one
                # may have the reply waiting on the socket. Only a reply
                # still missing after its next read is late.
                self._timer = self._clock.callLater(0, self._checkDeadline, True)
                return
            self.healthCallback(False)
            self._abort(FleetTimeout("no reply within its deadline; connection closed"))
        else:
            self._timer = self._clock.callLater(earliest - now, self._checkDeadline)

    def _abort(self, reason: Exception) -> None:
        """
        Close the connection and fail every waiting command with C{reason}.
        """
        if self._closed:
            return
        self._closed = True
        self._runClosed()
        self._failPending(reason)
        if self.transport is not None:
            self.transport.abortConnection()

    def _failPending(self, reason: Exception) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pending, self._pending = self._pending, deque()
        self._bytesInFlight = 0
        for d, _, _ in pending:
            if not d.called:
                d.errback(Failure(reason))

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        self._outgoing = outgoing = []
        replied = False
        try:
            while True:
                try:
                    reply = reader.gets()
                except hiredis.ProtocolError as e:
                    self._abort(FleetConnectionLost(f"protocol error: {e}"))
                    return
                if reply is False:
                    return
                if not pending:
                    self._abort(FleetConnectionLost("a reply came with no command waiting"))
                    return
                replied = True
                d, _, size = pending.popleft()
                self._bytesInFlight -= size
                if d.called:  # cancelled: the reply is discarded by its position
                    continue
                if type(reply) is ReplyError:
                    d.errback(Failure(reply))
                else:
                    d.callback(reply)
                if self._closed:
                    return
        finally:
            self._outgoing = None
            if outgoing and not self._closed:
                self.transport.write(b"".join(outgoing))
            if replied:
                self.healthCallback(True)

    def close(self) -> None:
        """
        Close the connection; waiting commands fail with
        L{FleetConnectionLost}.
        """
        self._abort(FleetConnectionLost("connection closed by the client"))

    def connectionLost(self, reason=None) -> None:
        self.connected = False
        if self._pending and not self._closed:
            self.healthCallback(False)
        self._closed = True
        self._runClosed()
        self._failPending(FleetConnectionLost(f"connection lost: {reason.getErrorMessage() if reason else ''}"))
        callbacks, self._lostCallbacks = self._lostCallbacks, []
        for cb in callbacks:
            cb(self)


def _endpoint(reactor, address: NodeAddress, connectTimeout: float, tlsOptions=None):
    endpoint = HostnameEndpoint(reactor, address.host, address.port, timeout=connectTimeout)
    if address.tls:
        if tlsOptions is None:
            from twisted.internet.ssl import optionsForClientTLS

            tlsOptions = optionsForClientTLS(address.host)
        endpoint = wrapClientTLS(tlsOptions, endpoint)
    return endpoint


def _handshake(address: NodeAddress) -> List[List]:
    commands: List[List] = []
    if address.password is not None:
        if address.username:
            commands.append([b"AUTH", address.username, address.password])
        else:
            commands.append([b"AUTH", address.password])
    if address.db:
        commands.append([b"SELECT", address.db])
    return commands


# ---------------------------------------------------------------- pool


class NodePool:
    """
    Up to C{size} connections to one node, opened when needed; a command
    goes to the connection with the fewest commands waiting.

    @ivar breaker: the node's L{Breaker}.
    """

    _log = Logger()

    def __init__(
        self,
        reactor,
        address: NodeAddress,
        size: int = 2,
        timeout: float = 0.05,
        connectTimeout: float = 1.0,
        maxInFlight: int = 1024,
        maxBytesInFlight: int = 16 * 1024 * 1024,
        clock=None,
        breaker: Optional[Breaker] = None,
        tlsOptions=None,
    ):
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self.address = address
        self.size = size
        self.timeout = timeout
        self.connectTimeout = connectTimeout
        self.maxInFlight = maxInFlight
        self.maxBytesInFlight = maxBytesInFlight
        self._tlsOptions = tlsOptions
        self.breaker = breaker or Breaker(self._clock, name=f"{address.host}:{address.port}")
        self._connections: List[RedisProtocol] = []
        self._connecting: Optional[Deferred] = None
        self._waiters: List[Deferred] = []
        self._stopped = False
        self.connectionsOpened = 0

    def __repr__(self) -> str:
        return f"<NodePool {self.address.host}:{self.address.port} {len(self._connections)} connections>"

    def _pick(self) -> Optional[RedisProtocol]:
        best = None
        for c in self._connections:
            if not c.closed and (best is None or c.pending < best.pending):
                best = c
        if (
            (best is None or best.pending > 0)
            and len(self._connections) < self.size
            and self._connecting is None
            and not self._stopped
        ):
            self._connect()
        return best

    def _connect(self) -> Deferred:
        if self._connecting is not None:
            return self._connecting
        proto = RedisProtocol(self._clock, self.timeout, self.maxInFlight, self.maxBytesInFlight)
        endpoint = _endpoint(self._reactor, self.address, self.connectTimeout, self._tlsOptions)
        d = connectProtocol(endpoint, proto)
        self._connecting = d

        def connected(p):
            commands = _handshake(self.address)
            if not commands:
                return p
            ds = p.executeMany(commands, max(self.timeout, self.connectTimeout))

            def loginFailed(f):
                p.close()
                return f.value.subFailure if hasattr(f.value, "subFailure") else f

            return gatherResults(ds, consumeErrors=True).addCallbacks(lambda _: p, loginFailed)

        def ready(p):
            self._connecting = None
            self.connectionsOpened += 1
            if self._stopped:
                waiters, self._waiters = self._waiters, []

                def gone(_):
                    for w in waiters:
                        w.errback(Failure(FleetUnavailable("pool closed")))

                p.notifyLost(gone)
                p.close()
                return None
            self._connections.append(p)
            p.notifyClosed(self._lost)
            p.healthCallback = self._health
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.callback(p)
            return p

        def failed(f):
            self._connecting = None
            self.breaker.failure()
            if f.check(ierror.ConnectError):
                f = Failure(FleetUnavailable(f"{self.address.host}:{self.address.port}: {f.getErrorMessage()}"))
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.errback(f)
            return f

        d.addCallback(connected).addCallbacks(ready, failed)
        d.addErrback(lambda f: None)  # reported to the waiters
        return d

    def _lost(self, proto: RedisProtocol) -> None:
        if proto in self._connections:
            self._connections.remove(proto)

    def _connection(self) -> Deferred:
        proto = self._pick()
        if proto is not None:
            return succeed(proto)
        if self._stopped:
            return fail(FleetUnavailable("pool closed"))
        w = Deferred()
        self._waiters.append(w)
        if self._connecting is None:
            self._connect()
        return w

    def _health(self, ok: bool) -> None:
        if ok:
            self.breaker.success()
        else:
            self.breaker.failure()

    def execute(self, *args, timeout: Optional[float] = None) -> Deferred:
        """
        Send one command to this node.
        """
        if self.breaker.state is BreakerState.CLOSED:
            proto = self._pick()
            if proto is not None:
                return proto.execute(args, timeout)
        return self.executeMany([args], timeout)[0]

    def executeMany(self, commands: Sequence[Sequence], timeout: Optional[float] = None) -> List[Deferred]:
        """
        Send commands back to back on one connection.

        @return: one Deferred per command.
        """
        if not self.breaker.allow():
            e = FleetUnavailable(f"{self.address.host}:{self.address.port}: breaker open")
            return [fail(e) for _ in commands]
        proto = self._pick()
        if proto is not None:
            ds = proto.executeMany(commands, timeout)
        else:
            conn = self._connection()
            ds = [Deferred() for _ in commands]

            def send(p):
                for mine, theirs in zip(ds, p.executeMany(commands, timeout)):
                    theirs.chainDeferred(mine)

            def notSent(f):
                for mine in ds:
                    mine.errback(f)

            conn.addCallbacks(send, notSent)
        return ds

    def close(self) -> Deferred:
        """
        Close every connection.

        @return: a Deferred that fires once they are all closed.
        """
        self._stopped = True

        ds = []
        for c in list(self._connections):
            lost = Deferred()
            c.notifyLost(lambda _, lost=lost: lost.callback(None))
            c.close()
            ds.append(lost)
        self._connections = []
        if self._connecting is not None:
            # ready() closes it and fails the waiters once it is connected
            w = Deferred()
            self._waiters.append(w)
            ds.append(w.addErrback(lambda f: None))
        return DeferredList(ds)


# ---------------------------------------------------------------- clients


class RedisClient:
    """
    One Redis node.
    """

    isCluster = False

    def __init__(self, reactor, address: NodeAddress, **poolOptions):
        self.address = address
        self.pool = NodePool(reactor, address, **poolOptions)

    def execute(self, *args, key=None, timeout: Optional[float] = None) -> Deferred:
        return self.pool.execute(*args, timeout=timeout)

    def pipeline(self, commands: Sequence[Sequence], key=None, timeout: Optional[float] = None) -> List[Deferred]:
        """
        Send C{commands} back to back (they must all route like C{key}).
        """
        return self.pool.executeMany(commands, timeout)

    def pools(self) -> List[NodePool]:
        return [self.pool]

    def close(self) -> Deferred:
        return self.pool.close()


class ClusterClient:
    """
    A Redis Cluster: commands go to the node serving their key's slot.

    @ivar redirects: how many MOVED/ASK/TRYAGAIN replies were followed.
    @ivar refreshes: how many times the slot map was read.
    """

    isCluster = True
    _log = Logger()

    def __init__(self, reactor, seeds: Sequence[NodeAddress], maxRedirects: int = 5, **poolOptions):
        if not seeds:
            raise ValueError("a cluster needs at least one seed node")
        self._reactor = reactor
        self._seeds = list(seeds)
        self._template = seeds[0]
        self.maxRedirects = maxRedirects
        self._poolOptions = poolOptions
        self._pools: Dict[Tuple[str, int], NodePool] = {}
        self._slots: List[Optional[Tuple[str, int]]] = [None] * 16384
        self._refreshing: Optional[Deferred] = None
        self._ready = False
        self.redirects = 0
        self.refreshes = 0

    def _pool(self, hostport: Tuple[str, int]) -> NodePool:
        pool = self._pools.get(hostport)
        if pool is None:
            address = replace(self._template, host=hostport[0], port=hostport[1], db=0)
            pool = self._pools[hostport] = NodePool(self._reactor, address, **self._poolOptions)
        return pool

    def pools(self) -> List[NodePool]:
        """
        A pool per master node in the slot map.
        """
        return [self._pool(hp) for hp in sorted({s for s in self._slots if s is not None})]

    def slotOwner(self, key) -> Optional[Tuple[str, int]]:
        return self._slots[keySlot(key)]

    def refresh(self) -> Deferred:
        """
        Read the slot map (C{CLUSTER SLOTS}) from a known node.
        """
        if self._refreshing is not None:
            d = Deferred()
            self._refreshing.addBoth(lambda r: (d.callback(None), r)[1])
            return d
        candidates = [self._pool(hp) for hp in sorted({s for s in self._slots if s is not None})]
        candidates += [self._pool(s.hostport) for s in self._seeds]
        self._refreshing = d = self._tryRefresh(candidates, 0)

        def done(r):
            self._refreshing = None
            return r

        d.addBoth(done)
        return d

    def _tryRefresh(self, candidates: List[NodePool], i: int) -> Deferred:
        if i >= len(candidates):
            return fail(FleetUnavailable("no cluster node answered CLUSTER SLOTS"))
        pool = candidates[i]
        d = pool.execute(b"CLUSTER", b"SLOTS", timeout=max(pool.timeout, 0.5))

        def got(reply):
            slots: List[Optional[Tuple[str, int]]] = [None] * 16384
            for row in reply:
                start, end, master = row[0], row[1], row[2]
                host = master[0].decode() if master[0] else pool.address.host
                hp = (host, int(master[1]))
                for s in range(start, end + 1):
                    slots[s] = hp
            self._slots = slots
            self._ready = True
            self.refreshes += 1
            return None

        d.addCallback(got)
        d.addErrback(lambda f: self._tryRefresh(candidates, i + 1))
        return d

    def _parseRedirect(self, message: str, defaultHost: str) -> Tuple[int, Tuple[str, int]]:
        # "MOVED 3999 127.0.0.1:6381"
        _, slot, where = message.split(" ", 2)
        host, _, port = where.rpartition(":")
        return int(slot), (host or defaultHost, int(port))

    def execute(self, *args, key=None, timeout: Optional[float] = None) -> Deferred:
        """
        Send a command to the node serving C{key} (by default C{args[1]};
        any node for a command with no key).
        """
        if key is None and len(args) > 1:
            key = args[1]
        slot = keySlot(key) if key is not None else None
        return self._send([args], slot, timeout, 0, None)[-1]

    def pipeline(self, commands: Sequence[Sequence], key=None, timeout: Optional[float] = None) -> List[Deferred]:
        """
        Send C{commands} (all on C{key}'s slot) back to back on one
        connection; a redirected command is retried on its own.
        """
        slot = keySlot(key if key is not None else commands[0][1])
        ds = self._send(list(commands), slot, timeout, 0, None)
        return ds

    def _send(self, commands, slot, timeout, redirects, asking) -> List[Deferred]:
        if not self._ready:
            outs = [Deferred() for _ in commands]
            r = self.refresh()

            def again(_):
                for mine, theirs in zip(outs, self._send(commands, slot, timeout, redirects, asking)):
                    theirs.chainDeferred(mine)

            def refreshFailed(f):
                for mine in outs:
                    mine.errback(f)

            r.addCallbacks(again, refreshFailed)
            return outs
        if asking is not None:
            hp = asking
        elif slot is None:
            hp = next((s for s in self._slots if s is not None), None)
        else:
            hp = self._slots[slot]
        if hp is None:
            return [fail(FleetUnavailable(f"no node serves slot {slot}")) for _ in commands]
        pool = self._pool(hp)
        if asking is not None:
            ds = pool.executeMany([(b"ASKING",)] + list(commands), timeout)
            ds[0].addErrback(lambda f: None)
            ds = ds[1:]
        else:
            ds = pool.executeMany(commands, timeout)
        return [
            d.addErrback(self._redirected, args, slot, timeout, redirects, hp[0])
            for d, args in zip(ds, commands)
        ]

    def _redirected(self, f: Failure, args, slot, timeout, redirects, host) -> Deferred:
        f.trap(ReplyError)
        code = f.value.code
        if code not in ("MOVED", "ASK", "TRYAGAIN"):
            return f
        if redirects >= self.maxRedirects:
            return fail(TooManyRedirects(f"{args[0]!r}: {redirects} redirections, last {f.getErrorMessage()}"))
        self.redirects += 1
        if code == "TRYAGAIN":
            d = Deferred()
            self._reactor.callLater(0.01 * (redirects + 1), d.callback, None)
            d.addCallback(lambda _: self._send([args], slot, timeout, redirects + 1, None)[0])
            return d
        newSlot, hp = self._parseRedirect(str(f.value), host)
        if code == "MOVED":
            self._slots[newSlot] = hp
            if self._refreshing is None:
                self.refresh().addErrback(lambda f: None)
            return self._send([args], newSlot, timeout, redirects + 1, None)[0]
        return self._send([args], newSlot, timeout, redirects + 1, hp)[0]

    def close(self) -> Deferred:
        return DeferredList([p.close() for p in self._pools.values()])


def connectClient(reactor, urls: Sequence[str], cluster: bool = False, passwordFile: Optional[str] = None, **poolOptions):
    """
    Build a client from URLs: a L{ClusterClient} with them as seeds when
    C{cluster}, else a L{RedisClient} on the first.
    """
    addresses = [parseURL(u, passwordFile) for u in urls]
    if cluster:
        return ClusterClient(reactor, addresses, **poolOptions)
    return RedisClient(reactor, addresses[0], **poolOptions)


# ---------------------------------------------------------------- scripts


class Script:
    """
    A Lua script, run by its SHA1 (EVALSHA); on NOSCRIPT (a restarted node,
    a failover, SCRIPT FLUSH) it is sent whole with EVAL, which loads it.
    """

    def __init__(self, source: str):
        self.source = source.encode("utf-8")
        self.sha = hashlib.sha1(self.source).hexdigest().encode("ascii")
        self.evals = 0

    def __call__(self, client, keys: Sequence, args: Sequence = (), timeout: Optional[float] = None) -> Deferred:
        key = keys[0] if keys else None
        d = client.execute(b"EVALSHA", self.sha, len(keys), *keys, *args, key=key, timeout=timeout)

        def noscript(f):
            f.trap(ReplyError)
            if f.value.code != "NOSCRIPT":
                return f
            self.evals += 1
            return client.execute(b"EVAL", self.source, len(keys), *keys, *args, key=key, timeout=timeout)

        return d.addErrback(noscript)


# ---------------------------------------------------------------- pub/sub


class _SubscriberProtocol(Protocol):
    def __init__(self, onMessage, onLost):
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._onMessage = onMessage
        self._onLost = onLost
        self.subscribed: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError:
                self.transport.abortConnection()
                return
            if reply is False:
                return
            if isinstance(reply, ReplyError):
                if not self.subscribed.called:
                    self.subscribed.errback(Failure(reply))
                continue
            if not isinstance(reply, list) or not reply:
                continue
            kind = reply[0]
            if kind in (b"message", b"smessage"):
                self._onMessage(reply[1], reply[2])
            elif kind in (b"subscribe", b"ssubscribe") and not self.subscribed.called:
                self.subscribed.callback(None)

    def connectionLost(self, reason=None) -> None:
        if not self.subscribed.called:
            self.subscribed.errback(Failure(FleetConnectionLost("lost before subscribing")))
        self._onLost()


class Subscriber:
    """
    Receives pub/sub messages on C{channels} from one node, reconnecting
    (with a growing delay up to C{maxDelay}) and resubscribing when the
    connection drops. C{address} may be a list of nodes: each failed
    attempt moves to the next one. In Redis Cluster, PUBLISH reaches every
    node, so one node is enough.

    C{onMessage(channel, data)} gets each message; C{onReconnect()} is
    called after each resubscription, since messages sent meanwhile are
    lost (the callers then poll).

    @ivar connected: whether the subscription is live.
    """

    _log = Logger()

    def __init__(
        self,
        reactor,
        address: NodeAddress,
        channels: Sequence[bytes],
        onMessage: Callable[[bytes, bytes], None],
        onReconnect: Callable[[], None] = lambda: None,
        connectTimeout: float = 1.0,
        maxDelay: float = 2.0,
        tlsOptions=None,
    ):
        self._reactor = reactor
        self._addresses = list(address) if isinstance(address, (list, tuple)) else [address]
        self._next = 0
        self.address = self._addresses[0]
        self.channels = list(channels)
        self._onMessage = onMessage
        self._onReconnect = onReconnect
        self.connectTimeout = connectTimeout
        self.maxDelay = maxDelay
        self._tlsOptions = tlsOptions
        self._proto: Optional[_SubscriberProtocol] = None
        self._retry = None
        self._delay = 0.05
        self._stopped = True
        self._everConnected = False
        self.connected = False
        self._firstSubscribed: Deferred = Deferred()

    def start(self) -> Deferred:
        """
        Connect and subscribe.

        @return: a Deferred firing once the first subscription is live.
        """
        self._stopped = False
        self._attempt()
        return self._firstSubscribed

    def _attempt(self) -> None:
        self._retry = None
        if self._stopped:
            return
        proto = _SubscriberProtocol(self._onMessage, self._lost)
        self.address = self._addresses[self._next % len(self._addresses)]
        endpoint = _endpoint(self._reactor, self.address, self.connectTimeout, self._tlsOptions)
        d = connectProtocol(endpoint, proto)

        def connected(p):
            self._proto = p
            commands = _handshake(replace(self.address, db=0)) + [[b"SUBSCRIBE"] + self.channels]
            p.transport.write(b"".join(encodeCommand(c) for c in commands))
            return p.subscribed

        def subscribed(_):
            self.connected = True
            self._delay = 0.05
            if not self._firstSubscribed.called:
                self._firstSubscribed.callback(None)
            if self._everConnected:
                self._onReconnect()
            self._everConnected = True

        def failed(f):
            if self._proto is not None and self._proto.transport is not None:
                self._proto.transport.abortConnection()
            elif not self._stopped:
                self._scheduleRetry()

        d.addCallback(connected).addCallbacks(subscribed, failed)

    def _scheduleRetry(self) -> None:
        if self._stopped or self._retry is not None:
            return
        if not self.connected:
            self._next += 1
        self._retry = self._reactor.callLater(self._delay * (0.5 + random.random()), self._attempt)
        self._delay = min(self.maxDelay, self._delay * 2)

    def _lost(self) -> None:
        self._proto = None
        if self.connected:
            # a live subscription dropped: first try the same node again
            self.connected = False
            self._next -= 1
        self._scheduleRetry()

    def stop(self) -> Deferred:
        """
        Close the connection and stop reconnecting.
        """
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if not self._firstSubscribed.called:
            self._firstSubscribed.errback(Failure(FleetUnavailable("stopped")))
            self._firstSubscribed.addErrback(lambda f: None)
        if self._proto is not None and self._proto.transport is not None:
            d = Deferred()
            proto = self._proto
            original = proto._onLost

            def lost():
                original()
                d.callback(None)

            proto._onLost = lost
            proto.transport.loseConnection()
            return d
        return succeed(None)
