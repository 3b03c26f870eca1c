# -*- test-case-name: tests.test_tls -*-
"""
TLS listeners (C{--port ssl:...} and C{--port tls:...}) whose certificate
can be read again while serving.

The certificate and key come from the endpoint description, read by
Twisted's own parsers: C{ssl:PORT:privateKey=KEY[:certKey=CERT]
[:extraCertChain=CHAIN][:dhParameters=DH]} (one certificate, built by
C{twisted.internet.endpoints._parseSSL} into a C{CertificateOptions}), or
C{tls:FOLDER[:port=PORT]} (a folder of PEM files, one certificate chosen
by the name the client asks for, as Twisted's C{tls:} endpoint does).

L{ServerTLS} is the connection creator of such a listener: a
C{TLSMemoryBIOFactory} around the proxy factory asks it for each new
connection's TLS state, and L{ServerTLS.reload} builds it again from the
files, so that a renewed certificate is served to new connections without
a restart (SIGHUP; with C{--workers} each new worker builds its own).
Connections already open keep the certificate they began with.

The same loading runs before the proxy starts (L{checkTLS}), so that an
unreadable key, a key that does not belong to its certificate or an
expired certificate ends the start with one line rather than failing
every handshake.
"""

from __future__ import annotations

import datetime
from typing import Dict, List, Optional, Tuple

from twisted.internet import endpoints
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from zope.interface import implementer

__all__ = ["CertificateError", "isTLS", "checkTLS", "loadTLS", "ServerTLS", "tcpEndpoint"]


class CertificateError(ValueError):
    """
    A TLS listener's certificate or key cannot be used; the message says
    why in one line.
    """

#: The endpoint types whose listeners speak TLS.
_TLS_KINDS = ("ssl", "tls")


def _parse(description: str) -> Tuple[str, List[str], Dict[str, str]]:
    """
    Split an endpoint string with Twisted's own parser (escapes and all).

    @return: the endpoint type, the positional and the keyword fields.
    """
    args, kwargs = endpoints._parse(description)
    return args[0], list(args[1:]), dict(kwargs)


def isTLS(description: str) -> bool:
    """
    @return: whether C{description} is a TLS listener (C{ssl:} or C{tls:}).
    """
    return description.split(":", 1)[0] in _TLS_KINDS


def tcpEndpoint(reactor, description: str):
    """
    The plain TCP server endpoint under a TLS listener: C{ssl:} listens on
    IPv4 (on every interface unless C{interface=} says otherwise),
    C{tls:} on C{::} by default, with the same defaults as Twisted's
    endpoints.
    """
    kind, args, kwargs = _parse(description)
    port, interface, backlog = _address(kind, args, kwargs)
    if kind == "ssl":
        return endpoints.TCP4ServerEndpoint(reactor, port, backlog, interface)
    return endpoints.TCP6ServerEndpoint(reactor, port, backlog, interface)


def _address(kind: str, args: List[str], kwargs: Dict[str, str]) -> Tuple[int, str, int]:
    """
    @return: the port, the interface and the backlog a TLS description
        names.
    """
    if kind == "ssl":
        port = kwargs.get("port", args[0] if args else "")
        interface = kwargs.get("interface", "")
    else:
        port = kwargs.get("port", args[1] if len(args) > 1 else "443")
        interface = kwargs.get("interface", "::")
    return int(port), interface, int(kwargs.get("backlog", "50"))


def listeningAddress(description: str) -> Tuple[str, int, int]:
    """
    @return: the interface, port and backlog to bind for a TLS listener
        (what the C{--workers} parent binds for it).
    @raise ValueError: for a port that is not a number.
    """
    kind, args, kwargs = _parse(description)
    port, interface, backlog = _address(kind, args, kwargs)
    return interface, port, backlog


def _checkOptions(options, where: str, keyWhere: str, now: datetime.datetime) -> None:
    """
    Check one certificate and its key as a server would use them.

    @param options: a C{CertificateOptions} with a certificate and a key.
    @param where: the file the certificate came from, for the message.
    @param keyWhere: the file the key came from.
    @raise CertificateError: the key does not belong to the certificate,
        or the certificate has expired.
    """
    from OpenSSL import SSL

    certificate = options.certificate.to_cryptography()
    notAfter = certificate.not_valid_after_utc
    if notAfter <= now:
        raise CertificateError(
            f"the certificate in {where} expired on {notAfter:%Y-%m-%d %H:%M:%S} UTC")
    try:
        # Builds the OpenSSL context, which checks that the key belongs to
        # the certificate (and caches it for the connections to come).
        options.getContext()
    except SSL.Error:
        raise CertificateError(f"the private key in {keyWhere} does not match the "
                               f"certificate in {where}")


def _loadSSL(description: str, args: List[str], kwargs: Dict[str, str], now):
    """
    @return: the C{CertificateOptions} of an C{ssl:} description, as
        Twisted's C{ssl:} endpoint builds them, checked.
    """
    privateKey = kwargs.get("privateKey", "server.pem")
    certKey = kwargs.get("certKey", privateKey)
    try:
        (_, _, options), _ = endpoints._parseSSL(None, *args, **kwargs)
    except OSError as e:
        raise CertificateError(f"cannot read {e.filename or privateKey}: {e.strerror or e}")
    except Exception as e:
        if "not match" in str(e) or "mismatch" in str(e):
            raise CertificateError(f"the private key in {privateKey} does not match the "
                             f"certificate in {certKey}")
        raise CertificateError(f"cannot load the certificate in {certKey} and the private key "
                         f"in {privateKey}: {e}")
    _checkOptions(options, certKey, privateKey, now)
    return options


def _loadFolder(folder: str, now):
    """
    @return: Twisted's C{tls:} connection creator for the PEM files in
        C{folder} (a certificate chosen by server name), once every
        certificate there has been checked.
    """
    import os

    from twisted.protocols._sni import (
        PEMObjects,
        SNIConnectionCreator,
        autoReloadingDirectoryOfPEMs,
    )
    from twisted.python.filepath import FilePath

    if not os.path.isdir(folder) or not os.access(folder, os.R_OK | os.X_OK):
        raise CertificateError(f"cannot read the folder {folder}")
    try:
        mapping = PEMObjects.fromDirectory(FilePath(folder)).inferDomainMapping()
    except OSError as e:
        raise CertificateError(f"cannot read {e.filename or folder}: {e.strerror or e}")
    if not mapping:
        raise CertificateError(f"no certificate with its private key in {folder}")
    for name, options in mapping.items():
        _checkOptions(options, f"{folder} (for {name})", folder, now)
    return SNIConnectionCreator(autoReloadingDirectoryOfPEMs(FilePath(folder)))


def loadTLS(description: str, now: Optional[datetime.datetime] = None):
    """
    Read the certificate(s) and key(s) a TLS description names.

    @return: a server connection creator (C{IOpenSSLServerConnectionCreator}).
    @raise CertificateError: one line saying what is wrong with them.
    """
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    kind, args, kwargs = _parse(description)
    if kind == "ssl":
        return _loadSSL(description, args, kwargs, now)
    if not args:
        raise CertificateError("expected tls:FOLDER[:port=PORT]")
    return _loadFolder(args[0], now)


def checkTLS(description: str) -> None:
    """
    Check the certificate and key of a TLS listener before the proxy
    starts (in the C{--workers} parent, before any worker does).

    @raise usage.UsageError: one line naming the C{--port} and the problem.
    """
    try:
        loadTLS(description)
    except (ValueError, TypeError) as e:
        raise usage.UsageError(f"--port {description}: {' '.join(str(e).split())}")


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The TLS side of one listener: hands each new connection the
    certificate read last.

    @ivar description: the C{--port} it serves.
    @ivar current: the connection creator built from the files.
    """

    def __init__(self, description: str) -> None:
        """
        @raise CertificateError: the certificate or key cannot be used.
        """
        self.description = description
        self.current = loadTLS(description)

    def reload(self) -> None:
        """
        Read the certificate and key again; new connections get them, and
        nothing changes if they cannot be used.

        @raise CertificateError: they cannot be used (the old ones stay).
        """
        self.current = loadTLS(self.description)

    def serverConnectionForTLS(self, protocol):
        """
        @return: an OpenSSL connection for C{protocol} with the current
            certificate.
        """
        return self.current.serverConnectionForTLS(protocol)

    def wrap(self, factory) -> TLSMemoryBIOFactory:
        """
        @return: C{factory} behind TLS with this certificate, for a
            listening port.
        """
        return _TLSFactory(self, False, factory)


class _TLSFactory(TLSMemoryBIOFactory):
    """
    A TLS listener's factory: a wrapped factory that knows its
    connections are TLS (C{buildTLSProtocol}: the proxy's, which then
    speaks what ALPN chose) is asked through it. The same for every
    listener, with or without C{--workers}.
    """

    def buildProtocol(self, addr):
        build = getattr(self.wrappedFactory, "buildTLSProtocol", None)
        if build is None:
            return super().buildProtocol(addr)
        return self.protocol(self, build(addr))
