# -*- test-case-name: tests.test_forwarding -*-
"""
Forwarding fields: what proxies in front tell an origin about the client
and the request it made (C{X-Forwarded-For}, C{X-Forwarded-Host},
C{X-Forwarded-Proto}, C{X-Forwarded-Port}, C{X-Forwarded-Server},
C{X-Real-IP}, and RFC 7239 C{Forwarded}).

An origin that trusts them builds the target URI of a request from them
rather than from Host and its own scheme (RFC 9110 section 7.1 leaves the
scheme and authority to what the server was told), so a shared cache
keys its responses on the scheme and host the origin is told
(L{toldTarget}), and refuses to cache when the fields tell two different
stories. Pure functions over L{Headers}: no I/O.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

from ..http.headers import Headers, splitList

__all__ = ["FORWARDING_FIELDS", "Disagreement", "forwardedParameters", "toldTarget"]

#: Fields a client outside the trusted proxies may not send upstream: each
#: describes the client or what it asked for, as a proxy in front saw it.
FORWARDING_FIELDS = frozenset(
    [
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"x-forwarded-server",
        b"x-real-ip",
    ]
)

#: RFC 7239 section 4: forwarded-pair = token "=" value, value a token or
#: a quoted-string.
_PAIR = re.compile(rb'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_QUOTED_PAIR = re.compile(rb"\\(.)")
_SCHEME = re.compile(rb"^[a-z][a-z0-9+.-]*$")


class Disagreement(ValueError):
    """
    The forwarding fields name two different hosts or schemes for one
    request: no single target URI can be built from them.
    """


def forwardedParameters(value: bytes) -> dict:
    """
    @param value: the combined value of the C{Forwarded} fields.
    @return: the parameters of its first element (the one nearest the
        client, RFC 7239 section 4), names in lower case, quoted values
        unquoted.
    """
    elements = splitList(value)
    if not elements:
        return {}
    parameters = {}
    for match in _PAIR.finditer(elements[0]):
        name, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith(b'"') and raw.endswith(b'"') and len(raw) >= 2:
            raw = _QUOTED_PAIR.sub(rb"\1", raw[1:-1])
        parameters.setdefault(name, raw)
    return parameters


def _first(headers: Headers, name: bytes) -> Optional[bytes]:
    members = headers.getList(name)
    return members[0] if members else None


def _lower(value: Optional[bytes]) -> Optional[bytes]:
    return None if value is None else value.strip().lower()


def _agree(a: Optional[bytes], b: Optional[bytes], what: str) -> Optional[bytes]:
    if a is None:
        return b
    if b is not None and a != b:
        raise Disagreement(f"the forwarding fields name two {what}s")
    return a


def toldTarget(headers: Headers) -> Tuple[Optional[bytes], Optional[bytes]]:
    """
    The scheme and host an origin is told by the forwarding fields of a
    request going to it: the first member of C{X-Forwarded-Proto} and
    C{X-Forwarded-Host}, or the C{proto} and C{host} of the first
    C{Forwarded} element.

    @param headers: the fields of the request as it goes upstream.
    @return: C{(scheme, host)}, in lower case, each C{None} when not told.
    @raise Disagreement: when X-Forwarded-* and Forwarded name different
        ones, or the scheme is not a URI scheme.
    """
    scheme = _lower(_first(headers, b"x-forwarded-proto"))
    host = _lower(_first(headers, b"x-forwarded-host"))
    forwarded = headers.getCombined(b"forwarded")
    if forwarded:
        parameters = forwardedParameters(forwarded)
        scheme = _agree(scheme, _lower(parameters.get(b"proto")), "scheme")
        host = _agree(host, _lower(parameters.get(b"host")), "host")
    if scheme is not None and not _SCHEME.match(scheme):
        raise Disagreement("the forwarded scheme is not a URI scheme")
    return scheme, host
