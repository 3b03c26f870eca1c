# -*- test-case-name: tests.test_server -*-
"""
What every client connection of one listening port shares: L{ProxySettings}.

A field that a setting gives takes its default from that setting
(L{cachingproxy.service.config.SETTINGS}), and
L{cachingproxy.service.config.settingsFor} fills it from a configuration.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import FrozenSet, Optional, Tuple

from ..service.config import fromSetting
from .upstream import Origin

__all__ = ["ProxySettings"]


def _protocolNames(names: Tuple[str, ...]) -> FrozenSet[bytes]:
    """
    @return: the C{--upgrade-protocols} as the proxy compares them.
    """
    return frozenset(name.lower().encode("ascii") for name in names)


@dataclass(frozen=True)
class ProxySettings:
    """
    What every client connection of one listening port shares.

    @ivar upstream: in reverse mode, the origin every request goes to;
        C{None} in forward mode.
    @ivar upstreamPath: in reverse mode, the path prefix of the upstream URL.
    @ivar viaName: the received-by name this proxy puts in C{Via} and looks
        for to detect loops (C{--via-name}, whose default is the host name,
        known only where the proxy runs).
    @ivar connectPorts: ports CONNECT may reach.
    @ivar idleTimeout: seconds a kept-alive client connection may wait for
        its next request.
    @ivar drainIdleTimeout: once the proxy drains, seconds an idle
        kept-alive connection stays open for a request already on its way
        (answered with C{Connection: close}); at most the shutdown grace.
    @ivar headerTimeout: seconds from the first byte of a request head to
        its end.
    @ivar maxRequestLine: longest request target accepted (414 beyond).
    @ivar maxHeaderSize: largest header section accepted (431 beyond).
    @ivar maxConnections: client connections served at once; beyond it the
        proxy stops accepting until one closes.
    @ivar maxHeaderFields: most header fields in a request (431 beyond).
    @ivar maxBodySize: largest request body (413 beyond).
    @ivar bodyTimeout: seconds to receive a whole request body (408 beyond).
    @ivar maxPipeline: requests held behind the one being answered before
        the connection stops reading.
    @ivar xForwardedFor: add the client address to C{X-Forwarded-For}.
    @ivar forwarded: add an RFC 7239 C{Forwarded} element.
    @ivar xForwardedProto: add C{X-Forwarded-Proto}.
    @ivar xForwardedHost: add C{X-Forwarded-Host}.
    @ivar preserveHost: in reverse mode, send the client's Host upstream.
    @ivar trustedProxies: the clients (a L{cachingproxy.access.Networks})
        whose forwarding fields (L{FORWARDING_FIELDS}) are passed on and
        extended; from any other client they are dropped. C{None}: no
        client is trusted.
    @ivar rewriteRedirects: in reverse mode, rewrite C{Location} and
        C{Content-Location} naming the upstream to the client's Host.
    @ivar requestRules: L{cachingproxy.rules.HeaderRules} for requests
        going upstream, or C{None}.
    @ivar responseRules: the same for responses going to clients.
    @ivar compression: L{cachingproxy.compress.CompressionSettings} to
        compress responses on the fly, or C{None}.
    @ivar upgradeProtocols: the protocol names (lower case, without
        version) a request may ask to upgrade to; such a request is
        forwarded with its C{Upgrade} field, and a 101 turns the connection
        into a tunnel (RFC 9110 section 7.8).
    @ivar upgradeIdleTimeout: seconds an upgraded connection may carry no
        byte either way before it is closed; 0 for no limit.
    @ivar upgradeTimeout: seconds an upgraded connection may last in all;
        0 for no limit.
    """

    upstream: Optional[Origin] = None
    upstreamPath: bytes = b""
    viaName: bytes = b"cachingproxy"
    connectPorts: FrozenSet[int] = fromSetting("connect-ports")
    idleTimeout: float = fromSetting("idle-timeout")
    drainIdleTimeout: float = fromSetting("drain-idle-timeout")
    headerTimeout: float = fromSetting("header-timeout")
    maxRequestLine: int = fromSetting("max-request-line")
    maxHeaderSize: int = fromSetting("max-header-size")
    maxConnections: int = fromSetting("max-connections")
    maxHeaderFields: int = fromSetting("max-header-fields")
    maxBodySize: int = fromSetting("max-body-size")
    bodyTimeout: float = fromSetting("body-timeout")
    maxPipeline: int = fromSetting("max-pipeline")
    compression: object = None
    upgradeProtocols: FrozenSet[bytes] = fromSetting("upgrade-protocols", _protocolNames)
    upgradeIdleTimeout: float = fromSetting("upgrade-idle-timeout")
    upgradeTimeout: float = fromSetting("upgrade-timeout")
    adminNetworks: Tuple = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    xForwardedFor: bool = fromSetting("x-forwarded-for")
    forwarded: bool = fromSetting("forwarded")
    xForwardedProto: bool = fromSetting("x-forwarded-proto")
    xForwardedHost: bool = fromSetting("x-forwarded-host")
    preserveHost: bool = fromSetting("preserve-host")
    rewriteRedirects: bool = fromSetting("no-rewrite-redirects")
    requestRules: object = None
    responseRules: object = None
    trustedProxies: object = None

