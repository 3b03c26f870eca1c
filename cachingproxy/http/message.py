# -*- test-case-name: tests.test_http -*-
"""
The heads of HTTP messages as the proxy passes them from one side to the
other. Bodies are never part of these objects: they stream separately.

Nothing here does I/O or imports Twisted.
"""

from __future__ import annotations

from typing import Optional, Tuple

from .headers import Headers
from .wire import REASONS, requestHead, responseHead

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
        return requestHead(self.method, self.target, self.version, self.headers._fields)


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
        return responseHead(self.status, self.reason, self.headers._fields)
