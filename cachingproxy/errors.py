# -*- test-case-name: tests.test_server -*-
"""
Named failures, each with the status code the client is told.

A limit or a protocol violation raises one of these; the connection turns it
into a short text response with that status, one log line, and (for
violations by the client) a closed connection.

L{upstreamError} is the one translation from a failure on the way to or
from an origin (connecting, the TLS handshake, the response) into what the
client is told; the forwarding path, the cache and CONNECT all use it.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

from twisted.internet import defer, error
from twisted.python.failure import Failure

__all__ = [
    "ProxyError",
    "BadRequest",
    "URITooLong",
    "ContentTooLarge",
    "HeaderFieldsTooLarge",
    "NotImplementedScheme",
    "Forbidden",
    "LoopDetected",
    "MethodNotAllowed",
    "RequestTimeout",
    "VersionNotSupported",
    "BadGateway",
    "GatewayTimeout",
    "UpstreamClosed",
    "upstreamError",
]


class ProxyError(Exception):
    """
    A failure that becomes an error response.

    @cvar status: the status code sent to the client.
    @cvar closeConnection: whether the client connection must be closed after
        the response (framing can no longer be trusted).
    @ivar headers: extra fields sent with the response, as C{(name, value)}
        pairs of bytes (C{Retry-After}, say); none by default.
    """

    status = 500
    closeConnection = False
    headers: Sequence[Tuple[bytes, bytes]] = ()
    #: whether nothing of the request reached the origin (a failed
    #: connection): an idempotent request may then go to another server
    beforeSending = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message or self.__class__.__doc__.strip().split("\n")[0]


class BadRequest(ProxyError):
    """
    The request is malformed.
    """

    status = 400
    closeConnection = True


class URITooLong(ProxyError):
    """
    The request line is longer than the configured limit.
    """

    status = 414
    closeConnection = True


class HeaderFieldsTooLarge(ProxyError):
    """
    The header section is larger than the configured limit.
    """

    status = 431
    closeConnection = True


class ContentTooLarge(ProxyError):
    """
    The request body is larger than the configured limit.
    """

    status = 413
    closeConnection = True


class RequestTimeout(ProxyError):
    """
    The request head did not arrive in time.
    """

    status = 408
    closeConnection = True


class NotImplementedScheme(ProxyError):
    """
    The request asks for a URI scheme this proxy does not speak.
    """

    status = 501


class Forbidden(ProxyError):
    """
    The request is not allowed.
    """

    status = 403


class MethodNotAllowed(ProxyError):
    """
    The method is not served here.
    """

    status = 405


class LoopDetected(ProxyError):
    """
    The request has already passed through this proxy (its Via names us).
    """

    status = 508


class VersionNotSupported(ProxyError):
    """
    The request's HTTP version is not 1.0 or 1.1.
    """

    status = 505
    closeConnection = True


class BadGateway(ProxyError):
    """
    The origin could not be reached or sent an invalid response.
    """

    status = 502


class GatewayTimeout(ProxyError):
    """
    The origin did not connect or answer in time.
    """

    status = 504


class UpstreamClosed(Exception):
    """
    The origin connection ended before the response was complete.

    @ivar receivedAnything: whether any byte of the response had arrived.
    """

    def __init__(self, receivedAnything: bool, reason: object = None) -> None:
        super().__init__(receivedAnything, reason)
        self.receivedAnything = receivedAnything
        self.reason = reason


try:
    from OpenSSL.SSL import Error as _TLSError
except ImportError:  # pragma: no cover
    _TLSError = None


def _tlsFailure(value: object) -> Optional[BaseException]:
    """
    @return: the TLS error behind C{value} (itself, or the reason an
        L{UpstreamClosed} carries), or C{None}.
    """
    if _TLSError is None:  # pragma: no cover
        return None
    if isinstance(value, UpstreamClosed):
        value = getattr(value.reason, "value", value.reason)
    return value if isinstance(value, _TLSError) else None


def upstreamError(
    reason: Union[Failure, BaseException], origin: Optional[object] = None
) -> BaseException:
    """
    Translate a failure on the way to or from an origin into the error the
    client is told.

    @param reason: what failed: the L{Failure} (or exception) of a connection
        attempt, or of an origin connection that ended (an L{UpstreamClosed}
        says whether any byte of the response had been received).
    @param origin: the origin being connected to (anything with C{host} and
        C{port}), when the failure is a connection attempt's; C{None} once
        connected.

    @return: a L{ProxyError}: C{reason} itself when it is one; a failed TLS
        handshake (an unverifiable certificate, most often) names the TLS
        error; a connection attempt that timed out is a L{GatewayTimeout};
        other failures a L{BadGateway}. A cancelled connection attempt is
        returned as it is: nobody waits for an answer.
    """
    value = reason.value if isinstance(reason, Failure) else reason
    if isinstance(value, ProxyError):
        return value
    if origin is not None and isinstance(
        value, (defer.CancelledError, error.ConnectingCancelledError)
    ):
        return value
    tls = _tlsFailure(value)
    if tls is not None:
        return BadGateway(f"TLS with the origin failed: {tls}")
    if isinstance(value, UpstreamClosed):
        return BadGateway("the origin closed the connection")
    if origin is None:
        return BadGateway("the origin failed")
    where = f"{origin.host}:{origin.port}"
    if isinstance(value, (error.TimeoutError, defer.TimeoutError)):
        return GatewayTimeout(f"connecting to {where} timed out")
    if isinstance(value, error.DNSLookupError):
        return BadGateway(f"cannot resolve {origin.host}")
    if isinstance(value, error.ConnectionRefusedError):
        return BadGateway(f"connection to {where} refused")
    message = reason.getErrorMessage() if isinstance(reason, Failure) else str(value)
    return BadGateway(f"cannot connect to {where}: {message}")
