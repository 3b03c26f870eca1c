# -*- test-case-name: tests.test_sites_routes -*-
"""
Which route a request takes, from its Host and its path. No I/O.

Hosts: a route's host matches the request's Host case-insensitively, its
port (and a trailing dot) stripped. C{*.example} matches any name with one
or more labels before C{.example} (C{a.example}, C{a.b.example}), not
C{example} itself. A route without hosts matches every Host, a missing one
included.

Paths: a route's path is a prefix. A prefix that ends with C{/} matches
like nginx's C{location /api/}: any path that starts with it. A prefix
that does not end with C{/} matches on a segment boundary: C{/api} matches
C{/api}, C{/api/} and C{/api/v1} but not C{/apiary}. The query is not part
of the path.

The path is normalised before it is compared (L{normalizePath}), as
nginx does before it looks for a C{location}: percent-encoded unreserved
characters are decoded, other escapes keep their meaning (C{%2F} is not a
C{/}), C{.} and C{..} segments are removed and runs of C{/} are merged.
C{/%61dmin} and C{/static/../admin} therefore take the route of C{/admin}
and cannot slip past its access list.

The first route that matches wins, in configured order (the
C{default-route} is last); no match means the proxy answers 404.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

from .model import Route

__all__ = ["RouteTable", "hostOf", "normalizePath", "pathMatches"]

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_SLASHES = re.compile(rb"/{2,}")


def _unescape(match: "re.Match[bytes]") -> bytes:
    value = int(match.group(1), 16)
    if value in _UNRESERVED:
        return bytes((value,))
    return b"%" + match.group(1).upper()


def normalizePath(path: bytes) -> bytes:
    """
    @param path: a request path, without its query.
    @return: the path with unreserved characters decoded (RFC 3986 section
        6.2.2.2), other escapes in upper case, runs of C{/} merged and dot
        segments removed (section 5.2.4); always starting with C{/}.
    """
    if b"%" in path:
        path = _ESCAPE.sub(_unescape, path)
    if b"//" in path:
        path = _SLASHES.sub(b"/", path)
    if b"." not in path:
        return path if path.startswith(b"/") else b"/" + path
    out: List[bytes] = []
    segments = path.split(b"/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == b".":
            if last:
                out.append(b"")
        elif segment == b"..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append(b"")
        else:
            out.append(segment)
    result = b"/".join(out)
    return result if result.startswith(b"/") else b"/" + result


def hostOf(host: bytes) -> str:
    """
    @param host: a Host field value: C{Example.COM:8080}, C{[::1]:443}.
    @return: the host without its port or trailing dot, lowercase.
    """
    text = host.strip().decode("latin-1").lower()
    if text.startswith("["):
        end = text.find("]")
        return text[: end + 1] if end >= 0 else text
    name, _, _ = text.partition(":")
    return name.rstrip(".")


def pathMatches(prefix: bytes, path: bytes) -> bool:
    """
    @return: whether the route path C{prefix} matches the request path
        C{path} (without its query), as described in the module docstring.
    """
    if not path.startswith(prefix):
        return False
    if prefix.endswith(b"/") or len(path) == len(prefix):
        return True
    return path[len(prefix): len(prefix) + 1] == b"/"


class RouteTable:
    """
    Routes in order, with the exact host names indexed so that a lookup
    only tries the routes that can match.
    """

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes: Tuple[Route, ...] = tuple(routes)
        # host -> [(position, route)] for exact names; wildcards and
        # routes for every host are tried in order with them.
        self._exact: Dict[str, List[Tuple[int, Route]]] = {}
        self._others: List[Tuple[int, Route]] = []
        for position, route in enumerate(self.routes):
            exact = [h for h in route.hosts if not h.startswith("*.")]
            for host in exact:
                self._exact.setdefault(host, []).append((position, route))
            if not route.hosts or len(exact) < len(route.hosts):
                self._others.append((position, route))

    @staticmethod
    def _hostMatches(route: Route, host: str) -> bool:
        if not route.hosts:
            return True
        for pattern in route.hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif pattern == host:
                return True
        return False

    def match(self, host: Optional[bytes], path: bytes) -> Optional[Route]:
        """
        @param host: the request's Host field value, or C{None}.
        @param path: the request target's path (a query is ignored), as
            sent: it is normalised here.
        @return: the first route that matches, or C{None}.
        """
        name = hostOf(host) if host else ""
        path = normalizePath(path.split(b"?", 1)[0])
        candidates = self._exact.get(name, [])
        if candidates:
            candidates = sorted(dict(candidates + self._others).items())
        else:
            candidates = self._others
        for _, route in candidates:
            if pathMatches(route.path, path) and self._hostMatches(route, name):
                return route
        return None
