# -*- test-case-name: tests.test_access -*-
"""
Who may use the proxy, and where it may take them: L{AccessPolicy}.

Not an open proxy by default
============================

With no setting given the proxy serves clients from loopback and private
address ranges only (C{--allow private}: 127.0.0.0/8, ::1, 10.0.0.0/8,
172.16.0.0/12, 192.168.0.0/16, fc00::/7, fe80::/10, Squid's C{localnet});
anyone else gets 403. C{--allow} replaces that list; C{--allow all} must be
said to serve everyone. An IPv4-mapped IPv6 client (C{::ffff:a.b.c.d}) is
judged as its IPv4 address. A client without an IP address (a UNIX socket
peer, shown as C{-}) is on this machine and is judged as 127.0.0.1.

Destinations
============

C{--deny-dest} refuses destinations: a host name (C{example.com}), every
name under a domain (C{*.example.com}; C{.example.com} is the domain and
every name under it) or an address range (C{10.0.0.0/8}, C{192.0.2.7}).

By default a client that is not on this machine may not reach loopback,
unspecified (0.0.0.0, ::) or link-local addresses (169.254.0.0/16, which
holds cloud metadata services, and fe80::/10), nor the names C{localhost}
and C{*.localhost}. C{--allow-dest} entries lift that default refusal (not
C{--deny-dest}). These rules judge what the request names: a literal
address (in any form C{getaddrinfo} accepts: C{127.1}, C{2130706433} and
C{0x7f.1} are 127.0.0.1) or a name. No DNS look-up is made here (it would
block the reactor), so a name that I{resolves} to a refused address is not
caught: list such names in C{--deny-dest}. Reverse mode's configured
upstream is always allowed (C{--deny-dest} still applies).

Whoever the client, a request to the proxy's own listening address (the
port the request came in on, on that address, a loopback or unspecified
address, or C{localhost}) is refused as a loop; C{--allow-dest} does not
lift that.

Admin
=====

The proxy's own endpoints (C{/_cachingproxy/...}) and C{PURGE} are for the
C{--admin-allow} ranges only (default: loopback).

Proxy authentication
====================

With C{--auth-file} (an htpasswd file: C{user:hash} lines; bcrypt hashes
from C{htpasswd -B}, C{$2y$}/C{$2b$}/C{$2a$}, through the C{bcrypt} package,
or SHA-256/SHA-512 crypt, C{$5$}/C{$6$}, from C{mkpasswd -m sha-512}),
every request but the proxy's own endpoints needs
C{Proxy-Authorization: Basic} credentials from that file; without them the
answer is 407 with C{Proxy-Authenticate: Basic realm="cachingproxy"}. The
file is read again when it changes (a file that cannot be read keeps the
users last read).

After 10 failed attempts within 60 seconds a client address (an IPv6
client's /64) gets 429 until those 60 seconds are over, whatever it sends.
Each worker process counts on its own.

A password check (L{cachingproxy.htpasswd}) is slow on purpose: a bcrypt
check takes from a few milliseconds (C{htpasswd -B}'s cost 5) to a few
hundred (cost 12 and up), a SHA crypt check about half a microsecond a
round (2.5 ms for the default 5000; hashes of more than 500,000 rounds are
refused). So it runs in the reactor's thread pool, never in the reactor
thread, and a successful check is remembered for 5 minutes, keyed by a
salted hash of the credentials: a browser's every request does not pay it
again. Only a new user, a new password or a wrong guess (limited as above)
is checked; the same credentials arriving while their check runs wait for
that one check. L{AccessPolicy.authenticate} answers at once when no check
is needed, else with a L{Deferred}.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import math
import os
import re
import secrets
import socket
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from .errors import Forbidden, ProxyError
from .htpasswd import checkPassword, readPasswordFile, unmatchableHash

__all__ = [
    "AccessPolicy",
    "DestinationRules",
    "LOOPBACK_NETWORKS",
    "Networks",
    "PRIVATE_NETWORKS",
    "ProxyAuthenticationRequired",
    "TooManyAttempts",
    "isThisProxy",
    "parseDestinations",
    "parseNetworks",
]

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_log = Logger(namespace="cachingproxy.access")

#: C{--allow private}: loopback and private ranges (Squid's localnet).
PRIVATE_NETWORKS = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
    "fe80::/10",
)

#: C{loopback}: this machine.
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")

_KEYWORDS = {
    "private": PRIVATE_NETWORKS,
    "loopback": LOOPBACK_NETWORKS,
    "none": (),
}

#: destinations refused by default to clients not on this machine
_INTERNAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "0.0.0.0/8",
        "169.254.0.0/16",
        "::1/128",
        "::/128",
        "fe80::/10",
    )
)

#: names that are this machine, whatever the resolver (RFC 6761 and
#: Debian's /etc/hosts)
_LOCAL_NAMES = frozenset(
    ["localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"]
)


class ProxyAuthenticationRequired(ProxyError):
    """
    Proxy authentication is required.
    """

    status = 407
    headers = [(b"Proxy-Authenticate", b'Basic realm="cachingproxy"')]


class TooManyAttempts(ProxyError):
    """
    Too many failed proxy authentication attempts: try again later.
    """

    status = 429

    def __init__(self, message: str = "", retryAfter: float = 0.0) -> None:
        super().__init__(message)
        self.headers = [(b"Retry-After", b"%d" % max(1, math.ceil(retryAfter)))]


# -- addresses and ranges ------------------------------------------------------


def _address(host: str) -> Optional[Address]:
    """
    @return: C{host} as an IP address (an IPv4-mapped IPv6 address as its
        IPv4 address), or C{None} when it is not one.
    """
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _literalAddress(host: str) -> Optional[Address]:
    """
    @return: the address a destination host names literally, in any form
        the resolver takes as an address (C{127.1}, C{2130706433},
        C{0x7f000001}: C{inet_aton}'s forms), or C{None} for a name.
    """
    address = _address(host)
    if address is not None:
        return address
    if host[:1].isdigit() and all(c in "0123456789abcdefx." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return None
    return None


def _network(token: str) -> Network:
    """
    @raise ValueError: when C{token} is not an address or address range.
    """
    text = token[1:-1] if token.startswith("[") and token.endswith("]") else token
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise e
        raise ValueError(f"{token!r} has host bits set (did you mean {loose}?)")
    if network.version == 6 and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network


class Networks:
    """
    A set of client address ranges: C{all}, or some networks.

    @ivar everyone: whether every address is in it (C{all}).
    @ivar networks: the ranges, when not C{everyone}.
    @ivar names: what was configured, for messages.
    """

    def __init__(self, everyone: bool, networks: Tuple[Network, ...], names: Tuple[str, ...]) -> None:
        self.everyone = everyone
        self.networks = networks
        self.names = names

    def __contains__(self, address: Optional[Address]) -> bool:
        if self.everyone:
            return True
        if address is None:
            return False
        return any(address in network for network in self.networks)

    def hasHost(self, host: str) -> bool:
        """
        @param host: a peer's host as the transport gives it.
        @return: whether it is an address in these ranges (a peer without
            an IP address, such as a UNIX socket's, is in C{all} only).
        """
        return self.everyone or _address(host) in self

    def __repr__(self) -> str:
        return f"<Networks {' '.join(self.names)}>"


def _tokens(items: Iterable[str]) -> List[str]:
    """
    @return: the entries of C{items}, each possibly a comma- or
        space-separated list, stripped, empty ones dropped.
    """
    return [t for item in items for t in re.split(r"[\s,]+", str(item)) if t]


def parseNetworks(items: Iterable[str]) -> Networks:
    """
    Parse client address ranges: CIDRs (C{10.0.0.0/8}, C{::1}), C{all},
    C{private} (L{PRIVATE_NETWORKS}), C{loopback} (L{LOOPBACK_NETWORKS}),
    C{none}; entries may be comma-separated.

    @raise ValueError: with a message naming the bad entry.
    """
    everyone = False
    networks: List[Network] = []
    names = []
    tokens = _tokens(items)
    if not tokens:
        raise ValueError("expected address ranges such as 10.0.0.0/8, or all, private, loopback or none")
    for token in tokens:
        lowered = token.lower()
        names.append(lowered)
        if lowered == "all":
            everyone = True
        elif lowered in _KEYWORDS:
            networks.extend(ipaddress.ip_network(n) for n in _KEYWORDS[lowered])
        else:
            try:
                networks.append(_network(token))
            except ValueError as e:
                if "host bits" in str(e):
                    raise
                raise ValueError(
                    f"{token!r} is not an address range such as 10.0.0.0/8, "
                    f"nor all, private, loopback or none"
                )
    return Networks(everyone, tuple(networks), tuple(names))


_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


class DestinationRules:
    """
    Destination patterns: host names, C{*.domain} (names under it),
    C{.domain} (it and names under it), addresses and ranges.
    """

    def __init__(self, names: frozenset, suffixes: Tuple[str, ...],
                 networks: Tuple[Network, ...], entries: Tuple[str, ...]) -> None:
        self.names = names
        self.suffixes = suffixes
        self.networks = networks
        self.entries = entries

    def __bool__(self) -> bool:
        return bool(self.entries)

    def matches(self, host: str, address: Optional[Address]) -> bool:
        """
        @param host: the normalised destination host (lowercase, no
            trailing dot, no brackets).
        @param address: the address C{host} names literally, or C{None}.
        """
        if address is not None:
            return any(address in network for network in self.networks)
        if host in self.names:
            return True
        return any(host.endswith(suffix) for suffix in self.suffixes)

    def __repr__(self) -> str:
        return f"<DestinationRules {' '.join(self.entries)}>"


def parseDestinations(items: Iterable[str]) -> DestinationRules:
    """
    Parse destination patterns: C{example.com}, C{*.example.com},
    C{.example.com}, C{192.0.2.7}, C{10.0.0.0/8}, C{[::1]}; entries may be
    comma-separated. Names are ASCII (international names in their
    C{xn--} form).

    @raise ValueError: with a message naming the bad entry.
    """
    names = set()
    suffixes: List[str] = []
    networks: List[Network] = []
    entries = []
    for token in _tokens(items):
        entries.append(token)
        try:
            networks.append(_network(token))
            continue
        except ValueError as e:
            if "host bits" in str(e):
                raise
        name = token.lower().rstrip(".")
        wildcard = False
        if name.startswith("*."):
            wildcard, name = True, name[2:]
        elif name.startswith("."):
            names.add(name[1:])
            wildcard, name = True, name[1:]
        labels = name.split(".")
        if not name or not all(_LABEL.match(label) for label in labels):
            raise ValueError(
                f"{token!r} is not a host name, *.domain, .domain, address or "
                f"address range"
            )
        if all(label.isdigit() for label in labels):
            raise ValueError(f"{token!r} is not a valid address")
        if wildcard:
            suffixes.append("." + name)
        else:
            names.add(name)
    return DestinationRules(frozenset(names), tuple(suffixes), tuple(networks), tuple(entries))


def _normalHost(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".")


def _isLocalName(host: str) -> bool:
    return host in _LOCAL_NAMES or host.endswith(".localhost")


def isThisProxy(origin, localAddress: Optional[Tuple[str, int]]) -> bool:
    """
    Whether C{origin} names this proxy: the port the request came in on, on
    that address, a loopback or unspecified address, or C{localhost}. A
    request forwarded there would come back to the proxy (a loop); one for
    the proxy's own endpoints there is for the proxy itself.

    @param origin: where a request goes (an L{Origin}).
    @param localAddress: the C{(host, port)} the client connected to, or
        C{None} (then nothing is known to be this proxy).
    """
    if localAddress is None or localAddress[1] != origin.port:
        return False
    host = _normalHost(origin.host)
    address = _literalAddress(host)
    if address is None:
        return _isLocalName(host)
    return (address.is_loopback or address.is_unspecified
            or address == _address(str(localAddress[0])))


def _isInternal(address: Address) -> bool:
    return any(address in network for network in _INTERNAL_NETWORKS if network.version == address.version)


# -- the policy ------------------------------------------------------------------


class AccessPolicy:
    """
    Who may use the proxy and reach what: the hooks L{ProxyFactory} calls
    (C{checkClient}, C{authenticate}, C{checkDestination}, C{isAdmin}).

    The settings are fixed at construction; the state is the password
    file's content, the cache of successful checks and the failure counts.

    @param allow: client ranges served (L{parseNetworks} entries).
    @param denyDest: destinations refused (L{parseDestinations} entries).
    @param allowDest: destinations exempt from the default refusals.
    @param adminAllow: client ranges allowed the proxy's own endpoints.
    @param authFile: an htpasswd file, or C{None} for no authentication.
    @param clock: C{seconds()} gives the time (the reactor).
    @param upstream: reverse mode's upstream L{Origin}, always reachable
        but for C{denyDest}.
    @param maxFailures: failed authentications allowed per client address
        per C{failureWindow} seconds.
    @param cacheSeconds: how long a successful password check is trusted.
    @param runInThread: C{runInThread(f, *args)} runs C{f(*args)} off the
        reactor thread and returns a L{Deferred} of its result; by default
        the clock's thread pool when it is a reactor (C{getThreadPool}),
        else (a test's L{Clock}) checks run inline.
    @raise ValueError: for a bad entry or password file.
    """

    #: bound on the remembered successful checks and counted addresses
    maxCacheEntries = 4096
    maxTrackedAddresses = 100_000

    def __init__(
        self,
        allow: Iterable[str] = ("private",),
        denyDest: Iterable[str] = (),
        allowDest: Iterable[str] = (),
        adminAllow: Iterable[str] = ("loopback",),
        authFile: Optional[str] = None,
        clock=None,
        upstream=None,
        maxFailures: int = 10,
        failureWindow: float = 60.0,
        cacheSeconds: float = 300.0,
        runInThread: Optional[Callable[..., Deferred]] = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        if runInThread is None and hasattr(clock, "getThreadPool"):
            def runInThread(f, *args):
                return deferToThreadPool(clock, clock.getThreadPool(), f, *args)
        self._runInThread = runInThread
        self.allow = parseNetworks(allow)
        self.denyDest = parseDestinations(denyDest)
        self.allowDest = parseDestinations(allowDest)
        self.adminAllow = parseNetworks(adminAllow)
        self.upstream = (
            None if upstream is None else (_normalHost(upstream.host), upstream.port)
        )
        self.authFile = authFile
        self.maxFailures = maxFailures
        self.failureWindow = failureWindow
        self.cacheSeconds = cacheSeconds
        self._users: Dict[bytes, bytes] = {}
        self._fileSignature: Optional[Tuple[int, int, int]] = None
        self._fileProblem = False
        if authFile is not None:
            self._users = readPasswordFile(authFile, strict=True)
            self._fileSignature = self._signature()
        # credentials digest -> (expiry, user, hash checked against)
        self._cache: "OrderedDict[bytes, Tuple[float, bytes, bytes]]" = OrderedDict()
        self._secret = secrets.token_bytes(32)
        # credentials digest -> the attempts waiting for its check under
        # way: (Deferred of the result, client key)
        self._checking: Dict[bytes, List[Tuple[Deferred, str]]] = {}
        # client key -> its attempts waiting for a check
        self._pendingOf: Dict[str, int] = {}
        # client key -> attempts decided once its checks under way are
        # (over the failure limit if those all fail)
        self._held: Dict[str, List[Tuple[Deferred, object, str]]] = {}
        # client key -> [window start, failures]
        self._failures: Dict[str, List[float]] = {}
        self._dummyHash: Optional[bytes] = None

    @classmethod
    def fromConfig(cls, config, reactor) -> "AccessPolicy":
        """
        @param config: a L{cachingproxy.service.config.Config}.
        @param reactor: the clock for failure windows and the cache.
        """
        upstream = None
        if getattr(config, "upstream", None):
            from .proxy.upstream import Origin

            upstream = Origin(config.upstreamScheme, config.upstreamHost, config.upstreamPort)
        return cls(
            allow=config.allow,
            denyDest=config.denyDest,
            allowDest=config.allowDest,
            adminAllow=config.adminAllow,
            authFile=config.authFile,
            clock=reactor,
            upstream=upstream,
        )

    # -- clients ------------------------------------------------------------

    @staticmethod
    def _clientAddress(clientHost: str) -> Address:
        address = _address(clientHost)
        if address is None:
            # No IP address: a UNIX socket peer, on this machine.
            return ipaddress.IPv4Address("127.0.0.1")
        return address

    def checkClient(self, clientHost: str) -> Optional[ProxyError]:
        """
        @return: a 403 for a client outside C{--allow}, else C{None}.
        """
        if self._clientAddress(clientHost) in self.allow:
            return None
        _log.info("refused client {client}: not in --allow ({allow})",
                  client=clientHost, allow=" ".join(self.allow.names))
        return Forbidden(f"this proxy does not serve {clientHost}")

    def isAdmin(self, clientHost: str) -> bool:
        """
        @return: whether C{clientHost} is in C{--admin-allow}.
        """
        return self._clientAddress(clientHost) in self.adminAllow

    # -- destinations ---------------------------------------------------------

    def checkDestination(self, clientHost: str, origin, localAddress: Optional[Tuple[str, int]]
                         ) -> Optional[ProxyError]:
        """
        @param origin: where the request goes (an L{Origin}).
        @param localAddress: the C{(host, port)} the client connected to,
            or C{None}.
        @return: a 403 for a refused destination, else C{None}.
        """
        host = _normalHost(origin.host)
        address = _literalAddress(host)
        where = f"{host}:{origin.port}"
        if self.denyDest.matches(host, address):
            return self._refuseDestination(clientHost, where, "--deny-dest",
                                           f"{where} is a refused destination")
        internal = _isLocalName(host) if address is None else _isInternal(address)
        if isThisProxy(origin, localAddress):
            return self._refuseDestination(clientHost, where, "loop",
                                           f"{where} is this proxy: a loop")
        if not internal or (host, origin.port) == self.upstream:
            return None
        client = self._clientAddress(clientHost)
        if client.is_loopback or (
            localAddress is not None and client == _address(str(localAddress[0]))
        ):
            # A client on this machine may reach it.
            return None
        if self.allowDest.matches(host, address):
            return None
        return self._refuseDestination(
            clientHost, where, "internal address",
            f"{where} is an internal address, not reachable through this proxy")

    @staticmethod
    def _refuseDestination(clientHost: str, where: str, rule: str, message: str) -> ProxyError:
        _log.info("refused destination {destination} for {client}: {rule}",
                  destination=where, client=clientHost, rule=rule)
        return Forbidden(message)

    # -- authentication -------------------------------------------------------

    @staticmethod
    def _failureKey(clientHost: str) -> str:
        address = _address(clientHost)
        if address is not None and address.version == 6:
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        return str(address) if address is not None else clientHost

    @property
    def authenticates(self) -> bool:
        """
        Whether requests must carry proxy credentials.
        """
        return self.authFile is not None

    def authenticate(
        self, requestHeaders, clientHost: str
    ) -> Union[Optional[ProxyError], "Deferred[Optional[ProxyError]]"]:
        """
        Check C{Proxy-Authorization} against C{--auth-file}.

        @param requestHeaders: the request's L{Headers}.
        @return: C{None} when no authentication is configured or the
            credentials are right; a 429 for a client over the failure
            limit (counting the checks under way for it); else a 407. When
            a password must be checked, and checks run in a thread, a
            L{Deferred} that fires with one of those (and never fails).
        """
        if self.authFile is None:
            return None
        now = self.clock.seconds()
        key = self._failureKey(clientHost)
        state = self._failures.get(key)
        if state is not None and now - state[0] >= self.failureWindow:
            del self._failures[key]
            state = None
        pending = self._pendingOf.get(key, 0)
        attempts = (0 if state is None else state[1]) + pending
        if attempts >= self.maxFailures and pending:
            # Whether this one is over the limit depends on the checks
            # under way: decide once they are.
            held: Deferred = Deferred()
            self._held.setdefault(key, []).append((held, requestHeaders, clientHost))
            return held
        if attempts >= self.maxFailures:
            start = now if state is None else state[0]
            return TooManyAttempts(
                "too many failed proxy authentication attempts: try again later",
                retryAfter=start + self.failureWindow - now,
            )
        values = [v for k, v in requestHeaders.items() if k.lower() == b"proxy-authorization"]
        if not values:
            return ProxyAuthenticationRequired("proxy authentication required")
        credentials = _basicCredentials(values[0]) if len(values) == 1 else None
        if credentials is None:
            self._failed(key, now, clientHost, None)
            return ProxyAuthenticationRequired("malformed Proxy-Authorization: expected Basic credentials")
        user, password = credentials
        checked = self._checkCredentials(user, password, now, key)
        if isinstance(checked, bool):
            return self._verdict(checked, key, clientHost, user)
        return checked.addCallback(self._verdict, key, clientHost, user)

    def _verdict(self, right: bool, key: str, clientHost: str, user: bytes
                 ) -> Optional[ProxyError]:
        if right:
            return None
        self._failed(key, self.clock.seconds(), clientHost, user)
        return ProxyAuthenticationRequired("wrong proxy user name or password")

    def _currentUsers(self) -> Dict[bytes, bytes]:
        """
        @return: the users of the password file, read again when it changed.
        """
        signature = self._signature()
        if signature is None:
            if not self._fileProblem:
                self._fileProblem = True
                _log.error("cannot read --auth-file {path}: keeping the {n} users read before",
                           path=self.authFile, n=len(self._users))
            return self._users
        if signature != self._fileSignature:
            try:
                users = readPasswordFile(self.authFile, strict=False)
            except OSError as e:
                _log.error("cannot read --auth-file {path}: {error}", path=self.authFile, error=e)
                return self._users
            self._users = users
            self._fileSignature = signature
            self._fileProblem = False
            _log.info("read {n} users from {path}", n=len(users), path=self.authFile)
        return self._users

    def _signature(self) -> Optional[Tuple[int, int, int]]:
        try:
            st = os.stat(self.authFile)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _checkCredentials(self, user: bytes, password: bytes, now: float, key: str
                          ) -> Union[bool, "Deferred[bool]"]:
        """
        @return: whether C{password} is C{user}'s: at once when remembered
            (or when checks run inline), else a L{Deferred}.
        """
        users = self._currentUsers()
        stored = users.get(user)
        digest = hashlib.sha256(
            self._secret + b"%d:" % len(user) + user + b":" + password
        ).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            expiry, cachedUser, cachedHash = cached
            if expiry > now and cachedUser == user and cachedHash == stored:
                return True
            del self._cache[digest]
        # An unknown user's check does the same work as a known user's:
        # no timing tells whether the user exists.
        against = self._dummy() if stored is None else stored
        if self._runInThread is None:
            return self._checked(checkPassword(password, against), digest, user, stored)
        result: Deferred = Deferred()
        self._pendingOf[key] = self._pendingOf.get(key, 0) + 1
        waiting = self._checking.get(digest)
        if waiting is not None:
            # The same credentials are being checked: wait for that check.
            waiting.append((result, key))
            return result
        self._checking[digest] = waiting = [(result, key)]
        try:
            running = self._runInThread(checkPassword, password, against)
        except Exception:
            _log.failure("cannot start a password check")
            running = succeed(False)

        def failed(reason) -> bool:
            _log.failure("password check failed", failure=reason)
            return False

        def done(right: bool) -> None:
            del self._checking[digest]
            right = self._checked(right, digest, user, stored)
            for d, k in waiting:
                left = self._pendingOf.pop(k) - 1
                if left:
                    self._pendingOf[k] = left
                d.callback(right)
            for k in dict.fromkeys(k for _, k in waiting):
                if k not in self._pendingOf:
                    self._decideHeld(k)

        running.addErrback(failed).addCallback(done)
        return result

    def _decideHeld(self, key: str) -> None:
        """
        Decide the attempts held back while the checks of C{key} ran.
        """
        for held, requestHeaders, clientHost in self._held.pop(key, ()):
            verdict = self.authenticate(requestHeaders, clientHost)
            if isinstance(verdict, Deferred):
                verdict.chainDeferred(held)
            else:
                held.callback(verdict)

    def _checked(self, right: bool, digest: bytes, user: bytes, stored: Optional[bytes]
                 ) -> bool:
        """
        Remember a successful check of a known user's credentials.

        @return: whether the credentials are right.
        """
        if not right or stored is None:
            return False
        if self._users.get(user) == stored:
            self._cache[digest] = (self.clock.seconds() + self.cacheSeconds, user, stored)
            while len(self._cache) > self.maxCacheEntries:
                self._cache.popitem(last=False)
        return True

    def _dummy(self) -> bytes:
        """
        @return: a hash no password matches, as costly to check as the
            file's first one (made once).
        """
        if self._dummyHash is None:
            first = next(iter(self._users.values()), b"")
            if not first:
                return b""
            self._dummyHash = unmatchableHash(first)
        return self._dummyHash

    def _failed(self, key: str, now: float, clientHost: str, user: Optional[bytes]) -> None:
        state = self._failures.get(key)
        if state is None or now - state[0] >= self.failureWindow:
            state = self._failures[key] = [now, 0]
        state[1] += 1
        _log.info("proxy authentication failed for {user} from {client}",
                  user=user.decode("utf-8", "replace") if user is not None else "(malformed)",
                  client=clientHost)
        if state[1] == self.maxFailures:
            _log.warn("{n} failed proxy authentications from {key}: refused (429) for "
                      "{seconds:.0f} s", n=state[1], key=key,
                      seconds=state[0] + self.failureWindow - now)
        if len(self._failures) > self.maxTrackedAddresses:
            for k in [k for k, s in self._failures.items() if now - s[0] >= self.failureWindow]:
                del self._failures[k]
            while len(self._failures) > self.maxTrackedAddresses:
                del self._failures[next(iter(self._failures))]


def _basicCredentials(value: bytes) -> Optional[Tuple[bytes, bytes]]:
    """
    @return: C{(user, password)} from a C{Basic} credentials value, or
        C{None} when it is not one.
    """
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (ValueError, TypeError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user, password
