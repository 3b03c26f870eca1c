# -*- test-case-name: tests.test_http -*-
"""
The heads of HTTP messages as the proxy passes them from one side to the
other. Bodies are never part of these objects: they stream separately.

Nothing here does I/O or imports Twisted.
"""

from __future__ import annotations

from typing import Optional, Tuple

from .headers import Headers

__all__ = ["RequestHead", "ResponseHead", "REASONS", "logText"]


def logText(value: bytes) -> str:
    """
    @return: C{value} (a method, target, cache key...) as a log line shows
        it: the bytes as text, with anything unprintable escaped, never a
        Python C{b'...'} repr.
    """
    text = value.decode("latin-1")
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")


class RequestHead:
    """
    A request line and its header fields.

    @ivar method: the method token, e.g. C{b"GET"} (case-sensitive).
    @ivar target: the request target exactly as it appeared on the request
        line (origin-form, absolute-form, authority-form or C{b"*"}).
    @ivar version: C{(major, minor)}.
    @ivar headers: the L{Headers}.
    """

    __slots__ = ("method", "target", "version", "headers")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: Tuple[int, int] = (1, 1),
        headers: Optional[Headers] = None,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers if headers is not None else Headers()

    def __repr__(self) -> str:
        return (
            f"RequestHead({self.method!r}, {self.target!r}, "
            f"{self.version!r}, {self.headers!r})"
        )

    def toWire(self) -> bytes:
        """
        @return: the request line, the fields and the blank line.
        """
        return b"%s %s HTTP/%d.%d\r\n%s\r\n" % (
            self.method,
            self.target,
            self.version[0],
            self.version[1],
            self.headers.toWire(),
        )


class ResponseHead:
    """
    A status line and its header fields.

    @ivar version: C{(major, minor)} as received.
    @ivar status: the three-digit status code.
    @ivar reason: the reason phrase (informational only).
    @ivar headers: the L{Headers}.
    """

    __slots__ = ("version", "status", "reason", "headers")

    def __init__(
        self,
        status: int,
        reason: bytes = b"",
        version: Tuple[int, int] = (1, 1),
        headers: Optional[Headers] = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers if headers is not None else Headers()

    def __repr__(self) -> str:
        return (
            f"ResponseHead({self.status!r}, {self.reason!r}, "
            f"{self.version!r}, {self.headers!r})"
        )

    def toWire(self) -> bytes:
        """
        @return: an HTTP/1.1 status line, the fields and the blank line.
        """
        reason = self.reason or REASONS.get(self.status, b"Unknown")
        return b"HTTP/1.1 %d %s\r\n%s\r\n" % (
            self.status,
            reason,
            self.headers.toWire(),
        )


#: Reason phrases for the status codes the proxy itself produces or relays
#: without one.
REASONS = {
    100: b"Continue",
    101: b"Switching Protocols",
    103: b"Early Hints",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    203: b"Non-Authoritative Information",
    204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    407: b"Proxy Authentication Required",
    408: b"Request Timeout",
    409: b"Conflict",
    410: b"Gone",
    411: b"Length Required",
    412: b"Precondition Failed",
    413: b"Content Too Large",
    414: b"URI Too Long",
    416: b"Range Not Satisfiable",
    417: b"Expectation Failed",
    421: b"Misdirected Request",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
    508: b"Loop Detected",
}
