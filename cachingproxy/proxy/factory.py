# -*- test-case-name: tests.test_server -*-
"""
L{ProxyFactory}: what the client connections of one listening port share:
settings, the upstream pool, the cache, counts and draining. Where each
request goes is L{cachingproxy.proxy.routing}'s.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Callable, Dict, List, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import (
    BadRequest,
    LoopDetected,
    ProxyError,
    VersionNotSupported,
)
from ..http.headers import splitList
from ..ops.accesslog import combinedLine
from .upstream import UpstreamPool
from .connection import ProxyProtocol
from .exchange import Exchange
from ..ops.admin import ADMIN_PREFIX, LANDING_PATHS
from .routing import Routing, _parseAuthority, absoluteTarget
from .settings import ProxySettings

__all__ = ["ProxyFactory"]

#: What any target for the proxy's own endpoints holds (see
#: L{HotLane.absoluteOf}).
_OWN_MARK = ADMIN_PREFIX.rstrip(b"/")


class HotLane:
    """
    What a client connection needs to answer a hot hit on its own, as soon
    as the request head is read (L{ProxyProtocol._hotLane}), when the
    factory's configuration allows it: a cache keyed by the origin's own
    scheme and authority, no routes and no proxy authentication; as a
    reverse proxy to one origin (origin-form targets) or as a forward proxy
    (absolute-form targets). Whatever else a request needs (another
    method, a body, conditional or range fields, a second Host, Via,
    Upgrade, the proxy's own endpoints and pages) sends it the long way,
    through L{Exchange.start}.

    @ivar origin: the L{Origin} every request goes to in reverse mode;
        C{None} in forward mode.
    @ivar upstreamPath: the path prefix of C{--upstream}.
    @ivar cache: the L{cachingproxy.cache.layer.CacheLayer} (its
        C{hotAnswer}, C{passing} and C{forwardPassing}); C{hot} its table
        of remembered responses and C{passing} its table of remembered
        passes (only looked in: a key that is in neither goes the long
        way).
    @ivar access: the access policy whose verdicts on the client and on
        the origin a connection asks (once per connection in reverse mode,
        once per connection and origin in forward mode), or C{None}.
    @ivar keys: origin-form request target -> cache key (reverse mode),
        for the targets asked for lately (L{keyOf} fills it).
    @ivar targets: absolute-form request target -> C{(origin, cache key,
        path)}, or C{False} for one the lane leaves to the long way
        (forward mode; L{absoluteOf} fills it).
    """

    __slots__ = ("origin", "upstreamPath", "cache", "hot", "passing", "access", "keys",
                 "targets", "maxKeys", "_key")

    def __init__(self, origin, upstreamPath: bytes, cache, access) -> None:
        self.origin = origin
        self.upstreamPath = upstreamPath
        self.cache = cache
        self.hot = cache.hotTable
        self.passing = cache.passTable
        self.access = access
        self.keys: Dict[bytes, bytes] = {}
        self.targets: Dict[bytes, object] = {}
        #: how many targets L{keys} and L{targets} remember
        self.maxKeys = 4096
        self._key = None if origin is None else functools.partial(
            cache.primaryKey, origin.scheme, origin.authority())

    def keyOf(self, target: bytes) -> Optional[bytes]:
        """
        @return: the cache key of the origin-form C{target} (remembered in
            L{keys}, which starts again when full); C{None} in forward
            mode, where an origin-form target is for the proxy itself.
        """
        if self._key is None:
            return None
        key = self._key(self.upstreamPath + target if self.upstreamPath else target)
        keys = self.keys
        if len(keys) >= self.maxKeys:
            keys.clear()
        keys[target] = key
        return key

    def absoluteOf(self, target: bytes):
        """
        @return: C{(origin, cache key, path)} of the absolute-form GET
            C{target} in forward mode, as L{Routing.route} and the cache
            layer make them; or C{False} when the lane leaves it to the long way: in
            reverse mode, for a target that is not a valid http or https
            URI, and for any that may name the proxy's own pages (a path
            under C{/_cachingproxy} or a landing path, whatever the host).
            Remembered in L{targets}, which starts again when full.
        """
        if self._key is not None:
            return False
        found: object = False
        try:
            scheme, authority, path = absoluteTarget(target)
            origin = _parseAuthority(scheme, authority, requirePort=False)
        except ProxyError:
            pass
        else:
            path = path or b"/"
            if _OWN_MARK not in target and path.split(b"?", 1)[0] not in LANDING_PATHS:
                found = (origin, self.cache.primaryKey(origin.scheme, origin.authority(), path),
                         path)
        targets = self.targets
        if len(targets) >= self.maxKeys:
            targets.clear()
        targets[target] = found
        return found


#: The factory's attributes the hot lane depends on: setting any of them
#: (a reload sets settings and access) decides the lane again.
_LANE_INPUTS = frozenset(["settings", "cache", "access", "sites"])


@implementer(IProtocolNegotiationFactory)
class ProxyFactory(Routing, Factory):
    """
    What the client connections share: settings, the upstream pool, the
    access log and the connection count.

    @ivar pool: the L{UpstreamPool}.
    @ivar accessLog: called with one formatted line per finished request,
        or C{None}.
    @ivar port: the listening port, once known; used to stop accepting at
        the connection limit.
    """

    protocol = ProxyProtocol

    #: Where HTTP/2 is spoken (L{cachingproxy.proxy.h2}): C{"off"},
    #: C{"tls"} (offered by ALPN on TLS listeners) or C{"all"} (and by
    #: prior knowledge on plain ones).
    http2 = "off"

    def acceptableProtocols(self):
        """
        What a TLS listener offers in ALPN: C{h2} when HTTP/2 is on, and
        HTTP/1.1. Said outright because Twisted's C{tls:} listener fails
        the handshake of a client that offers ALPN (curl, browsers) when
        the factory names nothing.
        """
        if self.http2 != "off":
            return [b"h2", b"http/1.1"]
        return [b"http/1.1"]

    def buildProtocol(self, addr):
        """
        @return: the protocol of a new plain connection: HTTP/1.1, or one
            that also takes HTTP/2 with prior knowledge (C{http2 = "all"}).
        """
        if self.http2 == "all":
            from .h2 import choosingProtocol

            return choosingProtocol(self, tls=False)
        return Factory.buildProtocol(self, addr)

    def buildTLSProtocol(self, addr):
        """
        @return: the protocol of a new TLS connection: one that speaks
            what ALPN chose when HTTP/2 is on.
        """
        if self.http2 != "off":
            from .h2 import choosingProtocol

            return choosingProtocol(self, tls=True)
        return Factory.buildProtocol(self, addr)
    noisy = False
    _log = Logger()

    def __init__(
        self,
        reactor,
        settings: ProxySettings,
        pool: UpstreamPool,
        accessLog: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.pool = pool
        self.accessLog = accessLog
        #: the L{cachingproxy.cache.layer.CacheLayer}, or C{None} for a
        #: proxy that only forwards
        self.cache = None
        #: told about every finished request (C{requestDone(exchange)}), or
        #: C{None}
        self.metrics = None
        #: who may use the proxy and reach what
        #: (L{cachingproxy.access.AccessPolicy}), or C{None}: anyone, anywhere
        self.access = None
        #: the proxy's own endpoints (L{cachingproxy.ops.admin.AdminPages})
        self.admin = None
        #: routes and origin groups
        #: (L{cachingproxy.sites.wiring.SitesRouting}), or C{None}: every
        #: request goes to L{ProxySettings.upstream} (or its target in
        #: forward mode)
        self.sites = None
        self.port = None
        self.openConnections = 0
        self.protocols: set = set()
        self.draining = False
        self._drained: List[defer.Deferred] = []
        self._acceptingPaused = False

    #: the L{HotLane} of the current configuration, or C{None} when it has
    #: none (set by L{__setattr__})
    lane: Optional[HotLane] = None

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        if name == "accessLog":
            # (its record method, asked for once rather than per request)
            object.__setattr__(self, "_accessRecord", getattr(value, "record", None))
        elif name in _LANE_INPUTS:
            if name == "settings":
                self._settingsChanged(value)
            self.lane = self._decideLane()

    def _settingsChanged(self, settings: ProxySettings) -> None:
        """
        What is worked out of the settings once, whenever they are set
        (at start and by a reload).
        """
        self._viaName = settings.viaName.lower()
        #: whether what the origin is told of the request's scheme and host
        #: may differ from the origin's own: then the cache key is built
        #: from the request as it goes upstream (L{cacheTarget})
        self.keyFromHead = bool(
            settings.preserveHost or settings.xForwardedHost or settings.xForwardedProto
            or settings.trustedProxies is not None or settings.requestRules)

    def _decideLane(self) -> Optional[HotLane]:
        # (getattr, not the instance's __dict__: asking for that would turn
        # its attributes, read many times a request, into a dict's)
        settings = getattr(self, "settings", None)
        cache = getattr(self, "cache", None)
        access = getattr(self, "access", None)
        if (settings is None or self.keyFromHead
                or cache is None or getattr(cache, "hotAnswer", None) is None
                or getattr(cache, "hotTable", None) is None
                or getattr(self, "sites", None) is not None
                or (access is not None and access.authenticates)):
            return None
        return HotLane(settings.upstream, settings.upstreamPath, cache, access)

    def connectionOpened(self, protocol: ProxyProtocol) -> None:
        self.openConnections += 1
        self.protocols.add(protocol)
        if self.draining:
            protocol.drain()
        if self.openConnections >= self.settings.maxConnections:
            self._pauseAccepting()

    def connectionClosed(self, protocol: ProxyProtocol) -> None:
        self.openConnections -= 1
        self.protocols.discard(protocol)
        if self._acceptingPaused and self.openConnections < self.settings.maxConnections:
            self._resumeAccepting()
        if self.draining and not self.protocols:
            waiters, self._drained = self._drained, []
            for d in waiters:
                if not d.called:
                    d.callback(None)

    def isAdmin(self, clientHost: str) -> bool:
        """
        @return: whether C{clientHost} may use the proxy's own endpoints
            and methods (PURGE).
        """
        if self.access is not None:
            return self.access.isAdmin(clientHost)
        try:
            address = ipaddress.ip_address(clientHost)
        except ValueError:
            return False
        return any(address in network for network in self.settings.adminNetworks)

    def drain(self, grace: float) -> defer.Deferred:
        """
        Finish what is in flight: idle connections close now, busy ones
        after their current response; after C{grace} seconds whatever is
        left is cut off. (Stopping the listening port is the service's
        job.)

        @return: a L{Deferred} firing once no client connection is left.
        """
        self.draining = True
        self._log.info("draining {n} client connections (grace {grace}s)",
                       n=len(self.protocols), grace=grace)
        d = defer.Deferred()
        if not self.protocols:
            d.callback(None)
            return d
        self._drained.append(d)
        for protocol in list(self.protocols):
            protocol.drain()

        def cutOff():
            if not d.called:
                self._log.warn("{n} connections still busy after {grace}s: closing them",
                               n=len(self.protocols), grace=grace)
                for protocol in list(self.protocols):
                    if protocol.transport is not None:
                        protocol.transport.abortConnection()

        call = self.reactor.callLater(grace, cutOff)
        d.addBoth(lambda result: (call.active() and call.cancel(), result)[1])
        return d

    def _pauseAccepting(self) -> None:
        stop = getattr(self.port, "stopReading", None)
        if stop is not None and not self._acceptingPaused:
            self._acceptingPaused = True
            self._log.warn(
                "{n} client connections open (the limit): not accepting more for now",
                n=self.openConnections,
            )
            stop()

    def _resumeAccepting(self) -> None:
        self._acceptingPaused = False
        start = getattr(self.port, "startReading", None)
        if start is not None:
            start()

    # -- decisions about a request ------------------------------------------

    def checkRequest(self, exchange: Exchange) -> Optional[ProxyError]:
        """
        @return: the error a request gets before any forwarding, or C{None}
            (with the exchange's C{verdict} set when a password check is
            still under way).
        """
        facts = exchange.facts
        version = exchange.head.version
        if version != (1, 1) and version != (1, 0):
            # llhttp accepts any single-digit version; only HTTP/1.x is
            # spoken here (RFC 9110 section 15.6.6).
            return VersionNotSupported(f"HTTP/{version[0]}.{version[1]} is not supported")
        if version == (1, 0) and facts.chunked:
            # RFC 9112 section 6.1: Transfer-Encoding in an HTTP/1.0
            # message means faulty framing.
            return BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if facts.hosts > 1:
            return BadRequest("more than one Host field")
        if facts.hosts == 0 and exchange.head.version >= (1, 1):
            # RFC 9112 section 3.2.
            return BadRequest("no Host field")
        if facts.via is not None:
            for member in splitList(facts.via):
                parts = member.split()
                if len(parts) >= 2 and parts[1].lower() == self._viaName:
                    return LoopDetected("the request has already passed through this proxy")
        access = self.access
        if access is not None:
            refused = exchange.protocol.clientVerdict()
            if refused is None and access.authenticates and \
                    not self._ownTarget(exchange):
                refused = access.authenticate(exchange.head.headers,
                                              exchange.protocol.clientHost)
                if isinstance(refused, defer.Deferred):
                    # A password is being checked: the exchange waits for
                    # the verdict before it goes anywhere.
                    exchange.verdict = refused
                    refused = None
            if refused is not None:
                return refused
        return None

    def logAccess(self, exchange: Exchange, protocol: ProxyProtocol) -> None:
        """
        Count a finished request (L{metrics}) and write its access log line
        (L{accessLog}).
        """
        exchange.finished = self.reactor.seconds()
        if self.metrics is not None:
            try:
                self.metrics.requestDone(exchange)
            except Exception:
                self._log.failure("counting a request failed")
        accessLog = self.accessLog
        if accessLog is not None:
            record = self._accessRecord
            if record is not None:
                record(exchange, protocol)
            else:
                accessLog(combinedLine(exchange, protocol, exchange.finished))
