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

A password check runs synchronously, in the reactor thread: a bcrypt check
takes from a few milliseconds (C{htpasswd -B}'s cost 5) to a few hundred
(cost 12 and up), a SHA crypt check about half a microsecond a round
(2.5 ms for the default 5000; hashes of more than 500,000 rounds are
refused). So a
successful check is remembered for 5 minutes, keyed by a salted hash of the
credentials, and a browser's every request does not pay it again; only a
cache miss (a new user, a new password, a wrong guess, limited as above)
blocks the reactor.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import ipaddress
import math
import os
import re
import secrets
import socket
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Tuple, Union

from twisted.logger import Logger

from .errors import Forbidden, ProxyError

__all__ = [
    "AccessPolicy",
    "DestinationRules",
    "LOOPBACK_NETWORKS",
    "Networks",
    "PRIVATE_NETWORKS",
    "ProxyAuthenticationRequired",
    "TooManyAttempts",
    "checkPassword",
    "isThisProxy",
    "parseDestinations",
    "parseNetworks",
    "readPasswordFile",
    "shaCrypt",
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


# -- passwords -------------------------------------------------------------------

_CRYPT64 = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

_SHA256_ORDER = (
    (0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14),
    (15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29),
)
_SHA512_ORDER = (
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4),
    (47, 5, 26), (6, 27, 48), (28, 49, 7), (50, 8, 29), (9, 30, 51),
    (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13), (56, 14, 35),
    (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19),
    (62, 20, 41),
)

#: most SHA crypt rounds a hash in the password file may ask for: the check
#: runs in pure Python, in the reactor thread
MAX_SHA_ROUNDS = 500_000

_SHA_CRYPT = re.compile(
    rb"^\$(?P<kind>[56])\$(?:rounds=(?P<rounds>[0-9]{1,9})\$)?(?P<salt>[^$:\n]{0,16})\$"
    rb"(?P<hash>[./0-9A-Za-z]+)$"
)
_BCRYPT = re.compile(rb"^\$2[aby]\$(?P<cost>[0-9]{2})\$[./0-9A-Za-z]{53}$")


def _crypt64(data: bytes, order: Tuple[Tuple[int, int, int], ...], tail: Tuple[int, ...]) -> bytes:
    out = bytearray()

    def emit(b2: int, b1: int, b0: int, n: int) -> None:
        w = (b2 << 16) | (b1 << 8) | b0
        for _ in range(n):
            out.append(_CRYPT64[w & 0x3F])
            w >>= 6

    for a, b, c in order:
        emit(data[a], data[b], data[c], 4)
    if len(tail) == 2:  # SHA-256: bytes 31, 30
        emit(0, data[tail[0]], data[tail[1]], 3)
    else:  # SHA-512: byte 63
        emit(0, 0, data[tail[0]], 2)
    return bytes(out)


def shaCrypt(password: bytes, setting: bytes) -> bytes:
    """
    SHA-256 or SHA-512 crypt (Ulrich Drepper's specification, glibc's
    C{$5$} and C{$6$}), in pure Python: the C{crypt} module is deprecated
    and gone from Python 3.13.

    @param setting: C{$5$salt}, C{$6$rounds=N$salt} or a whole hash (its
        salt and rounds are used).
    @return: the whole hash string.
    @raise ValueError: when C{setting} is not a SHA crypt setting.
    """
    match = re.match(rb"^\$([56])\$(?:rounds=([0-9]{1,9})\$)?([^$]*)", setting)
    if match is None:
        raise ValueError("not a SHA crypt setting")
    kind, roundsText, salt = match.groups()
    salt = salt[:16]
    rounds = 5000
    if roundsText is not None:
        rounds = min(max(int(roundsText), 1000), 999_999_999)
    if kind == b"5":
        new, size, order, tail = hashlib.sha256, 32, _SHA256_ORDER, (31, 30)
    else:
        new, size, order, tail = hashlib.sha512, 64, _SHA512_ORDER, (63,)
    p = password
    b = new(p + salt + p).digest()
    a = new(p + salt)
    a.update(b * (len(p) // size) + b[: len(p) % size])
    i = len(p)
    while i:
        a.update(b if i & 1 else p)
        i >>= 1
    c = a.digest()
    dp = new(p * len(p)).digest()
    pBytes = dp * (len(p) // size) + dp[: len(p) % size]
    ds = new(salt * (16 + c[0])).digest()
    sBytes = ds * (len(salt) // size) + ds[: len(salt) % size]
    for r in range(rounds):
        h = new(pBytes if r & 1 else c)
        if r % 3:
            h.update(sBytes)
        if r % 7:
            h.update(pBytes)
        h.update(c if r & 1 else pBytes)
        c = h.digest()
    prefix = b"$" + kind + b"$"
    if roundsText is not None:
        prefix += b"rounds=%d$" % rounds
    return prefix + salt + b"$" + _crypt64(c, order, tail)


def _hashProblem(stored: bytes) -> Optional[str]:
    """
    @return: why C{stored} cannot be used to check a password, or C{None}.
    """
    if _BCRYPT.match(stored):
        if importlib.util.find_spec("bcrypt") is None:
            return "a bcrypt hash needs the bcrypt package (pip install bcrypt)"
        return None
    match = _SHA_CRYPT.match(stored)
    if match:
        expected = 43 if match.group("kind") == b"5" else 86
        if len(match.group("hash")) != expected:
            return "malformed SHA crypt hash"
        rounds = match.group("rounds")
        if rounds is not None and int(rounds) > MAX_SHA_ROUNDS:
            return f"SHA crypt hash of more than {MAX_SHA_ROUNDS} rounds (too slow to check)"
        return None
    scheme = stored.split(b"$")[1].decode("ascii", "replace") if stored.startswith(b"$") else ""
    what = f"the ${scheme}$ hash scheme" if scheme else "this hash scheme (or plain text)"
    return (
        f"{what} is not supported: use bcrypt (htpasswd -B) or SHA-256/512 "
        f"crypt (mkpasswd -m sha-512)"
    )


def checkPassword(password: bytes, stored: bytes) -> bool:
    """
    @return: whether C{password} matches C{stored}, a bcrypt or SHA crypt
        hash (anything else never matches). Synchronous and slow: a bcrypt
        check costs milliseconds to hundreds of milliseconds.
    """
    if _BCRYPT.match(stored):
        import bcrypt

        if stored.startswith(b"$2y$"):
            # $2y$ (PHP, htpasswd) is the same algorithm as $2b$.
            stored = b"$2b$" + stored[4:]
        try:
            # bcrypt uses the first 72 bytes; the bcrypt package refuses
            # longer passwords since 5.0 instead of cutting them.
            return bcrypt.checkpw(password[:72], stored)
        except ValueError:
            return False
    if _SHA_CRYPT.match(stored) and _hashProblem(stored) is None:
        try:
            computed = shaCrypt(password, stored)
        except ValueError:
            return False
        return hmac.compare_digest(computed.rpartition(b"$")[2], stored.rpartition(b"$")[2])
    return False


def readPasswordFile(path: str, strict: bool = True) -> Dict[bytes, bytes]:
    """
    Read an htpasswd file: C{user:hash} lines; blank lines and C{#}
    comments are skipped; the first line for a user counts.

    @param strict: raise for a bad line (at start-up) rather than log it
        and skip it (on a reload).
    @return: C{{user: hash}}.
    @raise OSError: when the file cannot be read.
    @raise ValueError: C{"PATH:LINE: problem"}, when C{strict}.
    """
    with open(path, "rb") as f:
        data = f.read()
    users: Dict[bytes, bytes] = {}
    for number, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        user, sep, stored = line.partition(b":")
        problem = None
        if not sep or not user:
            problem = "expected user:hash"
        else:
            problem = _hashProblem(stored.strip())
        if problem is not None:
            if strict:
                raise ValueError(f"{path}:{number}: {problem}")
            _log.error("{path}:{line}: {problem}; line skipped", path=path, line=number, problem=problem)
            continue
        users.setdefault(user, stored.strip())
    if strict and not users:
        raise ValueError(f"{path}: no user:hash line")
    return users


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
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
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

    def authenticate(self, requestHeaders, clientHost: str) -> Optional[ProxyError]:
        """
        Check C{Proxy-Authorization} against C{--auth-file}.

        @param requestHeaders: the request's L{Headers}.
        @return: C{None} when no authentication is configured or the
            credentials are right; a 429 for a client over the failure
            limit; else a 407.
        """
        if self.authFile is None:
            return None
        now = self.clock.seconds()
        key = self._failureKey(clientHost)
        state = self._failures.get(key)
        if state is not None:
            if now - state[0] >= self.failureWindow:
                del self._failures[key]
            elif state[1] >= self.maxFailures:
                return TooManyAttempts(
                    "too many failed proxy authentication attempts: try again later",
                    retryAfter=state[0] + self.failureWindow - now,
                )
        values = [v for k, v in requestHeaders.items() if k.lower() == b"proxy-authorization"]
        if not values:
            return ProxyAuthenticationRequired("proxy authentication required")
        credentials = _basicCredentials(values[0]) if len(values) == 1 else None
        if credentials is None:
            self._failed(key, now, clientHost, None)
            return ProxyAuthenticationRequired("malformed Proxy-Authorization: expected Basic credentials")
        user, password = credentials
        if self._checkCredentials(user, password, now):
            return None
        self._failed(key, now, clientHost, user)
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

    def _checkCredentials(self, user: bytes, password: bytes, now: float) -> bool:
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
        if stored is None:
            # The same work as for a known user: no timing tells whether
            # the user exists.
            checkPassword(password, self._dummy())
            return False
        if not checkPassword(password, stored):
            return False
        self._cache[digest] = (now + self.cacheSeconds, user, stored)
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
            match = _BCRYPT.match(first)
            if match:
                import bcrypt

                cost = max(4, min(int(match.group("cost")), 31))
                self._dummyHash = bcrypt.hashpw(secrets.token_hex(16).encode(), bcrypt.gensalt(cost))
            elif first:
                # A SHA crypt hash of the same rounds, of an unguessable
                # password.
                self._dummyHash = shaCrypt(secrets.token_bytes(32), first)
            else:
                return b""
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
