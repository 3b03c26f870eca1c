# -*- test-case-name: tests.test_server -*-
"""
Where each request goes, and what it looks like on the way (no I/O):
the origin and target of a request (forward, reverse, the proxy's own
pages), the head sent upstream (forwarding fields, Via, header rules, the
Host), the cache key's target, and the fields sent back to the client
(redirects rewritten, header rules). L{Routing} is a part of
L{cachingproxy.proxy.factory.ProxyFactory}, whose settings it reads.
"""

from __future__ import annotations

from typing import Optional, Tuple

from ..errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotImplementedScheme,
)
from ..http.headers import HOP_BY_HOP, Headers, splitList
from ..http.message import RequestHead
from .forwarding import FORWARDING_FIELDS, Disagreement, forwardedParameters, toldTarget
from ..access import isThisProxy
from ..ops.admin import ADMIN_PREFIX, LANDING_PATHS
from .upstream import Origin
from .exchange import Exchange, _framedFields

__all__ = ["Routing", "absoluteTarget"]


def absoluteTarget(target: bytes) -> Tuple[bytes, bytes, bytes]:
    """
    Split an absolute-form request target (RFC 9112 section 3.2.2).

    @return: C{(scheme, authority, path)}: the scheme lowered, the path
        with the query, empty when the target has neither.
    @raise BadRequest: if it is not C{scheme://authority...}.
    @raise NotImplementedScheme: for a scheme other than http and https.
    """
    scheme, sep, rest = target.partition(b"://")
    if not sep:
        raise BadRequest("invalid request target")
    scheme = scheme.lower()
    if scheme not in (b"http", b"https"):
        raise NotImplementedScheme(
            f"the {scheme.decode('ascii', 'replace')!r} scheme is not supported"
        )
    slash = rest.find(b"/")
    query = rest.find(b"?")
    cut = min(i for i in (slash, query, len(rest)) if i != -1)
    authority, path = rest[:cut], rest[cut:]
    if path.startswith(b"?"):
        path = b"/" + path
    return scheme, authority, path


class Routing:
    """
    Where each request goes (a part of L{ProxyFactory}: it reads its
    C{settings}, C{sites} and C{cache}).
    """

    def route(self, exchange: Exchange) -> Tuple[Optional[Origin], bytes]:
        """
        Decide where an exchange's request goes: the origin (C{None} for
        the proxy's own endpoints) and the request target to send there
        (see L{upstreamHead} for the rest of the request).

        @raise ProxyError: when the request cannot be forwarded.
        """
        head = exchange.head
        protocol = exchange.protocol
        settings = self.settings
        method = head.method
        target = head.target
        if method == b"CONNECT":
            if settings.upstream is not None:
                raise MethodNotAllowed("CONNECT is not served by a reverse proxy")
            origin = _parseAuthority(b"https", target, requirePort=True)
            if origin.port not in settings.connectPorts:
                raise Forbidden(f"CONNECT to port {origin.port} is not allowed")
            return origin, target
        if self.admin is not None:
            own = self._ownTarget(exchange)
            if own is not None:
                if own.startswith(ADMIN_PREFIX) and not self.isAdmin(protocol.clientHost):
                    raise Forbidden("the proxy's own endpoints are for admin addresses only")
                return None, own
        if target.startswith(b"/"):
            if settings.upstream is None:
                raise BadRequest("this is a proxy: the request target must be an absolute URI")
            origin = settings.upstream
            path = settings.upstreamPath + target if settings.upstreamPath else target
        elif target == b"*":
            if method != b"OPTIONS":
                raise BadRequest("'*' is only a target for OPTIONS")
            if settings.upstream is None:
                raise BadRequest("this is a proxy: the request target must be an absolute URI")
            origin = settings.upstream
            path = b"*"
        else:
            scheme, authority, path = absoluteTarget(target)
            if settings.upstream is not None:
                origin = settings.upstream
                if settings.upstreamPath:
                    path = settings.upstreamPath + (path or b"/")
            else:
                origin = _parseAuthority(scheme, authority, requirePort=False)
            if not path:
                # RFC 9112 section 3.2.4: the last proxy turns an empty path
                # of an OPTIONS request into '*'.
                path = b"*" if method == b"OPTIONS" else b"/"
        if self.sites is not None:
            return self.sites.route(exchange, path)
        return origin, path

    def _ownTarget(self, exchange: Exchange) -> Optional[bytes]:
        """
        Whether a request is for the proxy itself rather than for an
        origin: the proxy's own endpoints (C{/_cachingproxy/...}), as an
        origin-form target or as an absolute-form one naming this proxy (a
        browser that sends even loopback traffic through its proxy asks
        that way), and in forward mode the page that tells a visitor this
        is a proxy (C{GET /}, and C{/_cachingproxy}, which redirects),
        asked for either way too.

        @return: the path to answer (in origin form), or C{None}.
        """
        head = exchange.head
        target = head.target
        if target.startswith(ADMIN_PREFIX):
            return target
        forward = self.settings.upstream is None
        if target.startswith(b"/"):
            if forward and head.method in (b"GET", b"HEAD") and \
                    target.split(b"?", 1)[0] in LANDING_PATHS:
                return target
            return None
        if not forward:
            # Reverse mode sends every absolute-form target upstream.
            return None
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            return None
        slash = rest.find(b"/")
        path = rest[slash:] if slash != -1 else b"/"
        if not path.startswith(ADMIN_PREFIX) and not (
                head.method in (b"GET", b"HEAD") and path.split(b"?", 1)[0] in LANDING_PATHS):
            return None
        try:
            origin = _parseAuthority(scheme.lower(), rest[:slash] if slash != -1 else rest,
                                     requirePort=False)
        except BadRequest:
            return None
        if not isThisProxy(origin, exchange.protocol.localAddress()):
            return None
        return path

    def upgradeAsked(self, head: RequestHead) -> Optional[bytes]:
        """
        Whether a request carrying C{Connection: upgrade} and Upgrade
        (RFC 9110 section 7.8) names a protocol this proxy carries
        (L{ProxySettings.upgradeProtocols}).

        @return: the Upgrade field value to send upstream, the protocols
            carried in the client's order, or C{None} when there is none
            (the request is then forwarded without the upgrade).
        """
        if not head.headers.hasToken(b"connection", b"upgrade"):
            return None
        allowed = self.settings.upgradeProtocols
        kept = [
            member
            for member in splitList(head.headers.getCombined(b"upgrade") or b"")
            if member.split(b"/", 1)[0].strip().lower() in allowed
        ]
        return b", ".join(kept) if kept else None

    def upstreamHead(self, exchange: Exchange, origin: Origin, path: bytes) -> RequestHead:
        """
        Build the request to send upstream: origin-form C{path}, the
        end-to-end fields in their order with Host set to C{origin}, and
        Via.
        """
        head = exchange.head
        protocol = exchange.protocol
        settings = exchange.routeSettings or self.settings
        facts = exchange.facts
        hopByHop = facts.hopByHop
        if facts.expect is not None and head.version < (1, 1):
            # RFC 9110 section 10.1.1: an HTTP/1.0 client's Expect is ignored.
            hopByHop = hopByHop | {b"expect"}
        # Host keeps its place, with the target's authority (RFC 9112
        # section 3.2.2: a proxy ignores the received Host for an
        # absolute-form target).
        authority = origin.authority()
        reverse = settings.upstream is not None
        # (the client's Host is looked up only when something needs it)
        clientHost = head.headers.get(b"host") if reverse and (
            settings.preserveHost or settings.xForwardedProto or settings.xForwardedHost
            or settings.forwarded) else None
        if settings.preserveHost and reverse and clientHost:
            authority = clientHost
        # Forwarding fields from a client that is not a trusted proxy are
        # its own claims about itself: an origin that believes them would
        # build links, redirects and cached pages for a host or scheme the
        # client chose. (None of them is framing, so they go with the
        # hop-by-hop fields.)
        trusted = protocol.forwardingTrusted()
        if not trusted:
            hopByHop = (_HOP_BY_HOP_AND_FORWARDING if hopByHop is HOP_BY_HOP
                        else hopByHop | FORWARDING_FIELDS)
        fields = _framedFields(head.headers.lowered(), hopByHop,
                               None if facts.chunked else facts.length)
        hosts = facts.hosts
        if hosts == 0:
            fields.insert(0, (b"host", b"Host", authority))
        else:
            # (in place: the list is new, and Host is nearly always first)
            for i, f in enumerate(fields):
                if f[0] == b"host":
                    fields[i] = (b"host", f[1], authority)
                    hosts -= 1
                    if not hosts:
                        break
        headers = Headers.fromLowered(fields)
        if facts.chunked:
            headers.add(b"Transfer-Encoding", b"chunked")
        if settings.xForwardedFor:
            _appendField(headers, b"X-Forwarded-For", protocol.clientHost.encode(), trusted)
        if settings.xForwardedProto or settings.xForwardedHost or settings.forwarded:
            if not reverse:
                # Forward mode: what the client asked for is the target URI
                # (its Host is ignored, RFC 9112 section 3.2.2).
                proto, toldHost = origin.scheme, origin.authority()
            else:
                proto = b"https" if protocol.isSecure() else b"http"
                toldHost = clientHost
            if trusted:
                # What a trusted proxy told stands: one story for the origin,
                # whichever of the fields it reads.
                told = _keptTarget(headers)
                proto = told[0] or proto
                toldHost = told[1] or toldHost
            if settings.xForwardedProto and b"x-forwarded-proto" not in headers:
                headers.set(b"X-Forwarded-Proto", proto)
            if settings.xForwardedHost and toldHost and b"x-forwarded-host" not in headers:
                headers.set(b"X-Forwarded-Host", toldHost)
            if settings.forwarded:
                client = protocol.clientHost
                node = f'"[{client}]"' if ":" in client else client
                element = f"for={node}".encode()
                if toldHost and settings.xForwardedHost:
                    element += b';host="' + toldHost.replace(b'"', b"").replace(b"\\", b"") + b'"'
                if settings.xForwardedProto:
                    element += b";proto=" + proto
                _appendField(headers, b"Forwarded", element, trusted)
        if exchange.upgrade is not None:
            # Hop-by-hop, but carried on purpose: the upgrade is asked of
            # the origin (RFC 9110 section 7.8).
            headers.add(b"Connection", b"Upgrade")
            headers.add(b"Upgrade", exchange.upgrade)
        rules = settings.requestRules
        if rules:
            headers = Headers.fromLowered(rules.apply(headers.lowered()))
        via = _VIA_VERSIONS.get(head.version)
        if via is None:
            via = b"%d.%d " % (head.version[0], head.version[1])
        headers.add(b"Via", via + settings.viaName)
        return RequestHead(head.method, path, (1, 1), headers)

    def cacheTarget(self, origin: Origin, head: RequestHead) -> Optional[Tuple[bytes, bytes]]:
        """
        The scheme and authority of a request's cache key (RFC 9111
        section 2): those of the target URI the origin builds from the
        request as it reaches it (RFC 9110 section 7.1), that is from the
        Host sent and the scheme and host the forwarding fields tell
        (L{cachingproxy.proxy.forwarding.toldTarget}). In forward mode the key
        is the target URI, and a request telling the origin of another
        one is not cached.

        @param head: the request as it goes upstream.
        @return: C{(scheme, authority)}, or C{None} when the request must
            not be answered from, nor stored in, the cache: the fields
            tell two different stories.
        """
        try:
            scheme, told = toldTarget(head.headers)
        except Disagreement:
            return None
        own = origin.authority()
        ownLower = own.lower()
        sent = head.headers.get(b"host")
        sent = ownLower if sent is None else sent.strip().lower()
        if self.settings.upstream is None:
            if (scheme not in (None, origin.scheme) or told not in (None, ownLower)
                    or sent != ownLower):
                return None
            return origin.scheme, own
        if told is not None and sent != ownLower and told != sent:
            # The origin could build its URI from either.
            return None
        return scheme or origin.scheme, told or sent

    def downstreamFields(self, exchange: Exchange, fields: list) -> list:
        """
        The response fields a client receives, after every caching
        decision: in reverse mode, C{Location} and C{Content-Location}
        naming the upstream are rewritten to the address the client used;
        then the operator's response rules.
        """
        settings = exchange.routeSettings or self.settings
        upstream = settings.upstream
        if upstream is not None and settings.rewriteRedirects:
            for field in fields:
                if field[0] in _LOCATIONS:
                    clientHost = exchange.head.headers.get(b"host")
                    if clientHost:
                        fields = _rewriteLocations(
                            fields, upstream, clientHost,
                            b"https" if exchange.protocol.isSecure() else b"http")
                    break
        rules = settings.responseRules
        if rules:
            fields = rules.apply(fields)
        return fields

    # -- logging -----------------------------------------------------------


_LOCATIONS = frozenset([b"location", b"content-location"])

#: The protocol part of the Via value (RFC 9110 section 7.6.3) for the
#: versions nearly every request has.
_VIA_VERSIONS = {(1, 1): b"1.1 ", (1, 0): b"1.0 "}

#: What an untrusted client's request loses on its way upstream when its
#: Connection field nominates nothing more.
_HOP_BY_HOP_AND_FORWARDING = HOP_BY_HOP | FORWARDING_FIELDS


def _rewriteLocations(fields: list, upstream: Origin, clientHost: bytes, scheme: bytes) -> list:
    """
    @return: C{fields} with C{Location} and C{Content-Location} values that
        name C{upstream} pointed at C{scheme://clientHost} instead.
    """
    prefixes = [upstream.scheme + b"://" + upstream.authority()]
    if upstream.scheme == b"http" and upstream.port == 80 or (
            upstream.scheme == b"https" and upstream.port == 443):
        prefixes.append(prefixes[0] + b":%d" % upstream.port)
    out = []
    for field in fields:
        if field[0] in (b"location", b"content-location"):
            value = field[2]
            for prefix in prefixes:
                if value.lower().startswith(prefix.lower()) and (
                        len(value) == len(prefix) or value[len(prefix):len(prefix) + 1] in b"/?#"):
                    field = (field[0], field[1], scheme + b"://" + clientHost + value[len(prefix):])
                    break
        out.append(field)
    return out


def _keptTarget(headers: Headers) -> Tuple[Optional[bytes], Optional[bytes]]:
    """
    @return: the scheme and host a trusted proxy's forwarding fields (kept
        in C{headers}) tell, each C{None} when untold: X-Forwarded-Proto
        and -Host, else the first Forwarded element's proto and host.
    """
    proto = headers.getList(b"x-forwarded-proto")[:1]
    host = headers.getList(b"x-forwarded-host")[:1]
    if not (proto and host):
        forwarded = headers.getCombined(b"forwarded")
        if forwarded:
            parameters = forwardedParameters(forwarded)
            proto = proto or [parameters.get(b"proto")]
            host = host or [parameters.get(b"host")]
    return (proto[0] if proto else None), (host[0] if host else None)


def _appendField(headers: Headers, name: bytes, value: bytes, mayExist: bool = True) -> None:
    """
    Add C{value} as the last member of the list-based field C{name}: its
    fields are combined into one, in the place of the first.

    @param mayExist: C{False} when C{headers} is known to have no field
        called C{name} (a forwarding field of an untrusted client, dropped).
    """
    existing = headers.getCombined(name) if mayExist else None
    if existing is None:
        # (what set does for a field not there, without a pass over all)
        headers.add(name, value)
        return
    headers.set(name, existing + b", " + value if existing else value)


def _parseAuthority(scheme: bytes, authority: bytes, requirePort: bool) -> Origin:
    """
    Parse C{host[:port]} (RFC 9110 section 4.2): IPv6 literals in brackets,
    no user information.

    @raise BadRequest: if C{authority} is not a valid authority.
    """
    if not authority or b"@" in authority:
        raise BadRequest("invalid authority in the request target")
    if authority.startswith(b"["):
        end = authority.find(b"]")
        if end == -1:
            raise BadRequest("invalid IPv6 literal in the request target")
        host = authority[1:end]
        rest = authority[end + 1:]
        if rest and not rest.startswith(b":"):
            raise BadRequest("invalid authority in the request target")
        portText = rest[1:] if rest else b""
    else:
        host, _, portText = authority.partition(b":")
    if requirePort and not portText:
        raise BadRequest("CONNECT needs host:port")
    if portText:
        if not portText.isdigit() or not 0 < int(portText) < 65536:
            raise BadRequest("invalid port in the request target")
        port = int(portText)
    else:
        port = 443 if scheme == b"https" else 80
    try:
        hostText = host.decode("ascii").lower()
    except UnicodeDecodeError:
        raise BadRequest("invalid host in the request target")
    if not hostText or any(c in hostText for c in " \t/\\?#%"):
        raise BadRequest("invalid host in the request target")
    return Origin(scheme, hostText, port)
