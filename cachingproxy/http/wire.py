# -*- test-case-name: tests.test_wire -*-
"""
Message heads as bytes: the one place a status line, a request line and
field lines are written (RFC 9112 sections 3, 4 and 5). Pure: no I/O, no
Twisted.

Fields are C{(lowercased name, name as sent, value)} triples, the form
L{cachingproxy.http.headers.Headers} keeps and the proxy passes around.
The proxy always answers as HTTP/1.1, whatever version the origin spoke.

Usage::

    responseHead(200, b"", fields, firstBody)   # head and the first body bytes
    responseHead(404, b"", fields)              # a head alone
    prefix = headPrefix(200, b"", fields)       # a head to finish later...
    finishHead(prefix, perRequestFields, body)  # ...with fields of its own
    requestHead(b"GET", b"/", (1, 1), fields)   # towards an origin
"""

from __future__ import annotations

from typing import Iterable, Tuple

__all__ = [
    "CONNECTION_ESTABLISHED",
    "CONTINUE",
    "Field",
    "REASONS",
    "fieldLines",
    "finishHead",
    "headPrefix",
    "requestHead",
    "responseHead",
]

#: One field: lowercased name, name as sent, value.
Field = Tuple[bytes, bytes, bytes]

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

_reasonOf = REASONS.get


def fieldLines(fields: Iterable[Field]) -> bytes:
    """
    @return: each field as C{Name: value}, each line ended by CRLF (no
        final blank line).
    """
    return b"".join([name + b": " + value + b"\r\n" for _, name, value in fields])


def responseHead(status: int, reason: bytes, fields: Iterable[Field],
                 firstBody: bytes = b"") -> bytes:
    """
    @param reason: the reason phrase, or C{b""} for the usual one of
        C{status} (L{REASONS}; C{Unknown} for a code not listed).
    @param firstBody: bytes that follow the head in the same write.
    @return: the HTTP/1.1 status line, the field lines, the blank line and
        C{firstBody}.
    """
    # (fieldLines inline: this runs for every response forwarded)
    return b"HTTP/1.1 %d %s\r\n%s\r\n%s" % (
        status, reason or _reasonOf(status, b"Unknown"),
        b"".join([name + b": " + value + b"\r\n" for _, name, value in fields]), firstBody)


def headPrefix(status: int, reason: bytes, fields: Iterable[Field]) -> bytes:
    """
    @return: the status line and field lines of a head, without the blank
        line that ends it: L{finishHead} adds fields that change from one
        response to the next (C{Age}), so that a stored response's head is
        not rebuilt for each.
    """
    return b"HTTP/1.1 %d %s\r\n%s" % (
        status, reason or _reasonOf(status, b"Unknown"), fieldLines(fields))


def finishHead(prefix: bytes, fields: Iterable[Field], body: bytes = b"") -> bytes:
    """
    @param prefix: from L{headPrefix}.
    @return: C{prefix}, C{fields}, the blank line and C{body}.
    """
    return b"".join([prefix, fieldLines(fields), b"\r\n", body])


def requestHead(method: bytes, target: bytes, version: Tuple[int, int],
                fields: Iterable[Field]) -> bytes:
    """
    @return: the request line, the field lines and the blank line.
    """
    # (a join rather than a format, and fieldLines inline: this runs for
    # every request forwarded)
    return b"".join((
        method, b" ", target,
        _REQUEST_VERSIONS.get(version) or b" HTTP/%d.%d\r\n" % (version[0], version[1]),
        b"".join([name + b": " + value + b"\r\n" for _, name, value in fields]),
        b"\r\n"))


#: The end of the request line for the versions nearly every request has.
_REQUEST_VERSIONS = {(1, 1): b" HTTP/1.1\r\n", (1, 0): b" HTTP/1.0\r\n"}


#: The interim response to C{Expect: 100-continue} (RFC 9110 section 10.1.1).
CONTINUE = responseHead(100, b"", ())

#: The answer to a CONNECT whose tunnel is open (RFC 9110 section 9.3.6).
CONNECTION_ESTABLISHED = responseHead(200, b"Connection Established", ())
