# -*- test-case-name: tests.test_server -*-
"""
Named failures, each with the status code the client is told.

A limit or a protocol violation raises one of these; the connection turns it
into a short text response with that status, one log line, and (for
violations by the client) a closed connection.
"""

from __future__ import annotations

from typing import Sequence, Tuple

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
