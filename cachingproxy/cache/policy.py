# -*- test-case-name: tests.test_policy -*-
"""
HTTP caching (RFC 9111) for a I{shared} cache, as pure functions and small
frozen values.

Nothing here does I/O, reads the clock or imports Twisted: every time is
passed in as float seconds since the epoch (C{now}, C{requestTime},
C{responseTime}), so the driver (C{resource.py}) supplies
C{reactor.seconds()} and tests supply plain numbers.

How a driver uses it, in the shape of hishel's state machine::

    decision = decide(request, store.lookup(key), now, options)
    if isinstance(decision, Fresh):            # serve, Age: ageHeaderValue(age)
    elif isinstance(decision, Stale):          # serve stale (max-stale)
    elif isinstance(decision, StaleWhileRevalidate):
        # serve now, send decision.conditionalHeaders upstream in background
    elif isinstance(decision, Revalidate):     # conditional request upstream
        outcome = afterRevalidation(request, decision.entry, response, ...)
    elif isinstance(decision, Miss):           # forward; then mayStore(...)
    elif isinstance(decision, OnlyIfCachedMiss):   # answer 504
    elif isinstance(decision, Pass):           # forward, never store,
        # then invalidate invalidatedURIs(...); only a POST response that
        # mayStorePostResponse(...) allows is then stored for GET

The field values it reads are parsed by L{cachingproxy.http.fields}
(Cache-Control, entity tags, Range, Content-Range); the parsed values it
names in C{__all__} are re-exported from there.

The section numbers in comments are RFC 9111 unless another document is
named: RFC 9110 (HTTP semantics), RFC 5861 (stale-while-revalidate and
stale-if-error), RFC 9211 (Cache-Status), RFC 9213 (targeted cache control)
and RFC 8941 (structured fields).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, replace
from typing import (
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)
from urllib.parse import urljoin, urlsplit

from ..http.fields import (
    DELTA_SECONDS_MAX,
    UNSATISFIABLE,
    CacheControl,
    ETag,
    RangeResult,
    contentRange,
    deltaSeconds,
    etagOf,
    normalizedFieldValue,
    parseCacheControl,
    parseETag,
    parseRange,
    parseTargetedCacheControl,
    requestCacheControl,
    sfString,
    sfTokenOrString,
    strongMatch,
    weakMatch,
)
from ..http.headers import HOP_BY_HOP, Headers, connectionOptions, parseHTTPDate
from ..http.message import RequestHead, ResponseHead

__all__ = [
    "CacheControl",
    "CacheOptions",
    "DEFAULT_OPTIONS",
    "DELTA_SECONDS_MAX",
    "Decision",
    "Forward",
    "Fresh",
    "Freshened",
    "HEURISTICALLY_CACHEABLE",
    "HeadUpdate",
    "Miss",
    "OnlyIfCachedMiss",
    "PRECONDITION_FIELDS",
    "Pass",
    "Refetch",
    "RefreshRule",
    "Revalidate",
    "RevalidationOutcome",
    "SAFE_METHODS",
    "Stale",
    "StaleWhileRevalidate",
    "StoredEntry",
    "UNSATISFIABLE",
    "afterRevalidation",
    "ageHeaderValue",
    "cacheStatus",
    "combinable",
    "conditionalHeaders",
    "contentRange",
    "coveredRange",
    "currentAge",
    "decide",
    "downstreamStripFields",
    "effectiveCacheControl",
    "effectiveRequestURI",
    "evaluatePreconditions",
    "freshenEntry",
    "freshenWith304",
    "freshenWithHead",
    "freshnessLifetime",
    "hasStrongValidator",
    "ifRangeAllows",
    "incompletePrefix",
    "isRangeRequest",
    "invalidatedURIs",
    "isCompleteResponse",
    "mayStore",
    "mergeRanges",
    "mayStorePostResponse",
    "normalizeURI",
    "notModifiedHeaders",
    "parseCacheControl",
    "parseRange",
    "parseTargetedCacheControl",
    "partialBodyOffset",
    "partialEntry",
    "primaryKey",
    "rangeForStoredResponse",
    "replacedEntry",
    "requestCacheControl",
    "sameStrongValidator",
    "secondaryKey",
    "selectForUpdate",
    "staleIfError",
    "staleOnError",
    "storableHeaders",
    "storablePart",
    "strongLastModified",
    "unsharedFields",
    "stripPreconditions",
    "targetedFieldsToStrip",
    "varyFieldNames",
    "varyMatches",
]


#: Methods that are safe (RFC 9110 section 9.2.1). Any other method, known
#: or not, invalidates what it targets (section 4.4).
SAFE_METHODS = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE"])

#: Status codes a cache may store and give a heuristic lifetime without
#: explicit freshness (RFC 9110 section 15.1, RFC 9111 section 4.2.2).
HEURISTICALLY_CACHEABLE = frozenset(
    [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501]
)

#: The status codes RFC 9110 defines; with C{must-understand} only these
#: may be stored (section 5.2.2.3).
_DEFINED_STATUSES = frozenset(
    [200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 304, 305, 307,
     308, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412,
     413, 414, 415, 416, 417, 421, 422, 426, 500, 501, 502, 503, 504, 505]
)

#: The upstream answers that count as an error for stale-if-error
#: (RFC 5861 section 4); a connection failure counts too.
_ERROR_STATUSES = frozenset([500, 502, 503, 504])

#: Request fields that make a request conditional or partial (RFC 9110
#: sections 13.1 and 14.2); see L{stripPreconditions}.
PRECONDITION_FIELDS = frozenset(
    [b"if-match", b"if-none-match", b"if-modified-since",
     b"if-unmodified-since", b"if-range", b"range"]
)

#: Proxy-specific fields that are never stored (section 3.1), besides the
#: hop-by-hop ones.
_PROXY_FIELDS = frozenset(
    [b"proxy-authenticate", b"proxy-authentication-info",
     b"proxy-authorization"]
)

#: Fields that set state in one user agent: never stored, never handed to
#: another client (section 7.3); C{Set-Cookie2} is RFC 2965's, obsolete.
_COOKIE_FIELDS = frozenset([b"set-cookie", b"set-cookie2"])

_DEFAULT_PORTS = {b"http": b"80", b"https": b"443"}

#: RFC 9211 section 2.2: the values the C{fwd} parameter may take.
_FWD_VALUES = frozenset(
    ["bypass", "method", "uri-miss", "vary-miss", "miss", "request",
     "stale", "partial"]
)


# ---------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class RefreshRule:
    """
    An operator's freshness rule, in the spirit of Squid's
    C{refresh_pattern}: for responses whose target URI matches C{pattern}
    (and whose media type is in C{mediaTypes}, when given), it replaces the
    default heuristic of section 4.2.2, which the RFC leaves to the cache::

        lifetime = min(maximum, max(minimum, percent% of (Date - Last-Modified)))

    or C{minimum} without Last-Modified. It applies to responses below 400
    only: an error (a 404 of a file a mirror does not have yet) keeps the
    default heuristic, as Squid (C{negative_ttl}) and nginx
    (C{proxy_cache_valid} without codes) do.

    Explicit freshness (max-age, s-maxage, Expires) wins unless
    C{override}, and then only the minimum applies over it: an explicit
    lifetime shorter than C{minimum} is raised to it. Nothing in a rule
    lets no-store, private or no-cache responses be stored or served
    without validation: those decisions come before freshness.

    @ivar pattern: a regular expression searched for in the target URI in
        its normalised absolute form (L{primaryKey}), e.g. C{\\.deb$}.
    @ivar minimum: seconds of freshness at least.
    @ivar percent: the percentage of the time since Last-Modified.
    @ivar maximum: seconds of freshness at most; not below C{minimum}.
    @ivar mediaTypes: lower-case media types (C{type/subtype}, or
        C{type/*}) of the responses it applies to; empty for any.
    @ivar ignoreCase: match C{pattern} without regard to case (Squid's
        C{-i}).
    @ivar override: the minimum applies over explicit freshness too (this
        departs from RFC 9111 section 4.2.1, at the operator's request).
    """

    pattern: str
    minimum: float = 0.0
    percent: float = 0.0
    maximum: float = 0.0
    mediaTypes: FrozenSet[bytes] = frozenset()
    ignoreCase: bool = False
    override: bool = False

    def __post_init__(self) -> None:
        for name in ("minimum", "percent", "maximum"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")
        if self.maximum < self.minimum:
            raise ValueError("maximum must not be below minimum")
        try:
            regex = re.compile(
                self.pattern.encode("utf-8"),
                re.IGNORECASE if self.ignoreCase else 0,
            )
        except re.error as e:
            raise ValueError(f"invalid regular expression {self.pattern!r}: {e}")
        object.__setattr__(self, "_regex", regex)
        object.__setattr__(
            self, "mediaTypes", frozenset(t.lower() for t in self.mediaTypes)
        )

    def matches(self, uri: bytes, mediaType: bytes) -> bool:
        """
        @param mediaType: the response's media type, lower case, without
            parameters; empty when it has none.
        """
        if self.mediaTypes and not (
            mediaType in self.mediaTypes
            or mediaType.partition(b"/")[0] + b"/*" in self.mediaTypes
        ):
            return False
        return self._regex.search(uri) is not None  # type: ignore[attr-defined]


def _firstRule(
    rules: Tuple[RefreshRule, ...], uri: bytes, mediaType: bytes
) -> Optional[RefreshRule]:
    for rule in rules:
        if rule.matches(uri, mediaType):
            return rule
    return None


@dataclass(frozen=True)
class CacheOptions:
    """
    What the operator may tune. Every field is something RFC 9111 leaves to
    the cache; none of them can make the cache break a MUST of the RFC.

    @ivar shared: always C{True}: this policy implements a I{shared} cache
        (section 1), so C{private} responses are not stored, C{s-maxage}
        wins and C{Authorization} is restricted. A private cache is not
        implemented and C{False} is refused.
    @ivar cacheableMethods: request methods whose responses may be stored
        (section 3, "the request method is understood by the cache"). HEAD
        is never in it: a HEAD response only updates stored GET responses
        (section 4.3.5) though HEAD requests are answered from them.
    @ivar heuristicFraction: the fraction of the time since Last-Modified
        used as a heuristic lifetime (section 4.2.2: "10%" is typical).
    @ivar maxHeuristic: the cap, in seconds, on a heuristic lifetime
        (section 4.2.2 lets the cache bound it; one day by default).
    @ivar defaultStaleWhileRevalidate: seconds a stale response may be
        served while it is revalidated in the background when the response
        carries no C{stale-while-revalidate} of its own: the out-of-band
        permission of section 4.2.4 (RFC 5861 section 3). C{0} disables it.
    @ivar defaultStaleIfError: the same for C{stale-if-error} (RFC 5861
        section 4): seconds of staleness that may be served when the origin
        fails. C{0} disables it.
    @ivar staleOnDisconnect: whether a stale response may be served, with
        no bound, when the origin cannot be reached at all (section 4.2.4
        allows it for a disconnected cache). Never overrides
        C{must-revalidate}, C{proxy-revalidate}, C{s-maxage} or
        C{no-cache}.
    @ivar targetedFields: RFC 9213 target list, in priority order, lower
        case: the first one present and valid replaces Cache-Control and
        Expires for this cache.
    @ivar consumedTargetedFields: the targeted fields meant for this cache
        alone, removed before a response goes downstream (RFC 9213
        section 2.2 says the others must be passed on; CDN-Cache-Control is
        removed only when configured, RFC 9213 section 3).
    @ivar understoodStatuses: status codes whose caching rules this cache
        implements, for C{must-understand} (section 5.2.2.3).
    @ivar refreshRules: the operator's L{RefreshRule}s, the first matching
        one applying; a response no rule matches gets the default
        heuristic (C{heuristicFraction}, C{maxHeuristic}).
    @ivar storeSetCookie: whether a response carrying C{Set-Cookie} may be
        stored. Section 7.3 warns that a shared cache can hand one user's
        state to another, and nothing obliges an origin to mark such a
        response C{private}: by default it is not stored. Either way the
        stored copy never carries C{Set-Cookie} (L{storableHeaders}).
    """

    shared: bool = True
    cacheableMethods: FrozenSet[bytes] = frozenset([b"GET"])
    heuristicFraction: float = 0.1
    maxHeuristic: float = 86400.0
    defaultStaleWhileRevalidate: float = 0.0
    defaultStaleIfError: float = 0.0
    staleOnDisconnect: bool = False
    targetedFields: Tuple[bytes, ...] = (
        b"cachingproxy-cache-control",
        b"cdn-cache-control",
    )
    consumedTargetedFields: FrozenSet[bytes] = frozenset(
        [b"cachingproxy-cache-control"]
    )
    understoodStatuses: FrozenSet[int] = _DEFINED_STATUSES
    refreshRules: Tuple[RefreshRule, ...] = ()
    storeSetCookie: bool = False

    def __post_init__(self) -> None:
        if not self.shared:
            raise ValueError("only a shared cache is implemented")
        if b"HEAD" in self.cacheableMethods:
            raise ValueError("HEAD responses never create entries (4.3.5)")
        for name in ("heuristicFraction", "maxHeuristic",
                     "defaultStaleWhileRevalidate", "defaultStaleIfError"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")
        object.__setattr__(
            self, "targetedFields",
            tuple(n.lower() for n in self.targetedFields),
        )
        object.__setattr__(
            self, "consumedTargetedFields",
            frozenset(n.lower() for n in self.consumedTargetedFields),
        )
        rules = tuple(self.refreshRules)
        object.__setattr__(self, "refreshRules", rules)
        # The same URLs come back again and again: each is matched against
        # the rules once, not at every lookup.
        object.__setattr__(
            self, "_ruleFor",
            functools.lru_cache(maxsize=8192)(functools.partial(_firstRule, rules)),
        )


DEFAULT_OPTIONS = CacheOptions()


# ---------------------------------------------------------------------------
# Cache-Control


def effectiveCacheControl(
    responseHeaders: Headers, options: CacheOptions = DEFAULT_OPTIONS
) -> Tuple[CacheControl, Optional[bytes]]:
    """
    The response directives this cache obeys: the first field of
    C{options.targetedFields} that is present and valid, else Cache-Control
    (RFC 9213 section 2.2). When a targeted field is used, Cache-Control
    and Expires are ignored for this cache.

    @return: C{(directives, name of the targeted field used or None)}.
    """
    names = options.targetedFields
    if names and responseHeaders.hasAny(_nameSet(names)):
        for name in names:
            targeted = parseTargetedCacheControl(responseHeaders, name)
            if targeted is not None:
                return targeted, name
    return parseCacheControl(responseHeaders), None


@functools.lru_cache(maxsize=64)
def _nameSet(names: Tuple[bytes, ...]) -> FrozenSet[bytes]:
    """
    C{names} as a set, for one scan of a head for any of them.
    """
    return frozenset(names)


def targetedFieldsToStrip(
    options: CacheOptions = DEFAULT_OPTIONS,
) -> FrozenSet[bytes]:
    """
    The targeted fields to remove before a response goes downstream: only
    the ones configured as this cache's own (RFC 9213 section 2.2: fields
    for other caches are passed through; section 3: a CDN may remove
    CDN-Cache-Control only when configured to).
    """
    return options.consumedTargetedFields


def downstreamStripFields(
    responseHeaders: Headers,
    options: CacheOptions = DEFAULT_OPTIONS,
    validated: bool = False,
) -> FrozenSet[bytes]:
    """
    The fields to remove from a stored response served downstream: this
    cache's own targeted fields, and, unless the response has just been
    validated, the fields named by a qualified C{no-cache="..."}
    (section 5.2.2.4: not sent without successful revalidation).
    """
    strip = targetedFieldsToStrip(options)
    if not validated:
        cc, _ = effectiveCacheControl(responseHeaders, options)
        strip = strip | cc.noCacheFields
    return strip


# ---------------------------------------------------------------------------
# Cache keys and Vary


_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"
)


def _normalizePercent(match: "re.Match[bytes]") -> bytes:
    """
    RFC 3986 section 6.2.2: decode percent-encoded unreserved characters,
    upper-case the hex digits of the others.
    """
    octet = int(match.group(1), 16)
    if octet in _UNRESERVED:
        return bytes((octet,))
    return b"%" + match.group(1).upper()


def _normalizeAuthority(scheme: bytes, authority: bytes) -> bytes:
    """
    Lower-case the host, drop userinfo and the scheme's default port
    (RFC 9110 section 4.2.3).
    """
    authority = authority.rpartition(b"@")[2]
    if authority.startswith(b"["):
        host, _, rest = authority.partition(b"]")
        host += b"]"
        port = rest[1:] if rest.startswith(b":") else b""
    else:
        host, _, port = authority.partition(b":")
    host = host.lower()
    if port.isdigit():
        port = b"%d" % int(port)
    if port == _DEFAULT_PORTS.get(scheme) or not port:
        return host
    return host + b":" + port


def primaryKey(
    scheme: bytes,
    authority: bytes,
    pathAndQuery: bytes,
    method: bytes = b"GET",
) -> bytes:
    """
    The primary cache key (section 2): the target URI, normalised as RFC
    9110 section 4.2.3 allows (scheme and host in lower case, default port
    removed, empty path as C{/}, percent-encoding normalised, fragment
    dropped). GET and HEAD share the key, since a stored GET response
    answers a HEAD (section 4); any other method prefixes the key.
    """
    scheme = scheme.lower()
    path = pathAndQuery.partition(b"#")[0] or b"/"
    path = _PERCENT.sub(_normalizePercent, path)
    key = scheme + b"://" + _normalizeAuthority(scheme, authority) + path
    if method not in (b"GET", b"HEAD"):
        key = method + b" " + key
    return key


def normalizeURI(uri: bytes) -> Optional[bytes]:
    """
    @return: an absolute URI in the form L{primaryKey} gives for GET, or
        C{None} if C{uri} is not absolute.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    path = parts.path + (b"?" + parts.query if parts.query else b"")
    return primaryKey(parts.scheme, parts.netloc, path)


def effectiveRequestURI(
    request: RequestHead, scheme: bytes = b"http"
) -> Optional[bytes]:
    """
    Rebuild the target URI of C{request} (RFC 9110 section 7.1) in
    L{primaryKey} form.

    @param scheme: the scheme the request arrived with, used for an
        origin-form target.
    @return: the URI, or C{None} for an authority-form or asterisk-form
        target, or an origin-form one without Host.
    """
    target = request.target
    if b"://" in target.partition(b"?")[0]:
        return normalizeURI(target)
    if not target.startswith(b"/"):
        return None
    host = request.headers.get(b"host")
    if not host:
        return None
    return primaryKey(scheme, host.strip(), target)


def varyFieldNames(responseHeaders: Headers) -> Optional[Tuple[bytes, ...]]:
    """
    @return: the lower-case, sorted, de-duplicated field names listed by
        Vary (section 4.1), or C{None} for C{Vary: *}, which never matches.
    """
    names = frozenset(m.lower() for m in responseHeaders.getList(b"vary"))
    if b"*" in names:
        return None
    return tuple(sorted(names))


def _normalizedField(headers: Headers, name: bytes) -> Optional[bytes]:
    """
    Normalise the C{name} fields of C{headers} as section 4.1 allows:
    repeated lines combined, whitespace around commas and at both ends
    removed, empty list members dropped; for the negotiation fields, case,
    whitespace, weights and order too (L{normalizedFieldValue}). Other
    values keep their case and order: which fields are case-insensitive,
    or ordered, is not known in general.

    @param name: a field name in lower case.
    @return: the normalised value, or C{None} if the field is absent.
    """
    values = headers.getAll(name)
    if not values:
        return None
    return normalizedFieldValue(name, values[0] if len(values) == 1 else b", ".join(values))


def varyMatches(
    storedRequestHeaders: Headers,
    storedResponseHeaders: Headers,
    newRequestHeaders: Headers,
) -> bool:
    """
    Whether a new request selects a stored response (section 4.1): every
    field named by the stored response's Vary must have the same
    normalised value in the new request as in the request that selected
    the stored response, absent matching only absent. C{Vary: *} never
    matches.
    """
    names = varyFieldNames(storedResponseHeaders)
    if names is None:
        return False
    return all(
        _normalizedField(storedRequestHeaders, name)
        == _normalizedField(newRequestHeaders, name)
        for name in names
    )


def secondaryKey(
    responseHeaders: Headers, requestHeaders: Headers
) -> Optional[bytes]:
    """
    A secondary key for a variant (section 4.1): one line per field named
    by Vary, C{name:value} or just C{name} when the request lacks it, in
    name order. Two requests get the same key exactly when L{varyMatches}
    holds.

    @return: the key (C{b""} without Vary), or C{None} for C{Vary: *}.
    """
    names = varyFieldNames(responseHeaders)
    if names is None:
        return None
    lines = []
    for name in names:
        value = _normalizedField(requestHeaders, name)
        lines.append(name if value is None else name + b":" + value)
    return b"\n".join(lines)


# ---------------------------------------------------------------------------
# Storing


def _explicitlyShareable(cc: CacheControl) -> bool:
    """
    Section 3.5: directives that let a shared cache store and reuse a
    response to a request with Authorization.
    """
    return cc.public or cc.sMaxAge is not None or cc.mustRevalidate


def mayStore(
    request: RequestHead,
    response: ResponseHead,
    options: CacheOptions = DEFAULT_OPTIONS,
    uri: Optional[bytes] = None,
) -> Tuple[bool, str]:
    """
    Whether a shared cache may store C{response} to C{request} (section 3).

    Choices: a HEAD response never creates an entry (it only updates
    stored GET responses, section 4.3.5); a 206 is stored only as an
    incomplete response that L{storablePart} accepts (one range of a
    representation of known length, with a strong validator, sections 3.3
    and 3.4); C{Vary: *} is not stored, as it could never be served
    (section 4.1); a response that sets a cookie is not stored unless
    C{options.storeSetCookie} (section 7.3), or unless
    C{private="Set-Cookie"} names it. Fields named by
    C{private="..."} are stored after all, without those fields: see
    L{storableHeaders}.

    Nor is a response stored that could never be used: without explicit
    freshness, with no heuristic lifetime (section 4.2.2, the operator's
    L{RefreshRule} included) and no validator to revalidate it with
    (section 4.3.1), every later request would go to the origin anyway. It
    could only be served stale when the origin fails; it is kept for that
    only when the response itself grants C{stale-if-error} or
    C{stale-while-revalidate} (RFC 5861), not for the operator's defaults
    of those: like nginx, which stores nothing without freshness, rather
    than filling the cache with entries every request goes past.

    @param uri: the target URI (a L{primaryKey}), for the refresh rules;
        by default rebuilt from C{request}.
    @return: C{(allowed, reason)}, the reason naming the rule.
    """
    if request.method == b"HEAD":
        return False, "HEAD responses only update stored responses (4.3.5)"
    if request.method not in options.cacheableMethods:
        return False, "method is not cacheable (3)"
    if requestCacheControl(request.headers).noStore:
        return False, "no-store request directive (5.2.1.5)"
    status = response.status
    if status < 200:
        return False, "not a final response (3)"
    if status == 206 and storablePart(response) is None:
        return False, ("partial content without one range of a known length and "
                       "a strong validator (3.3, 3.4)")
    if status == 304:
        return False, "a 304 only freshens stored responses (4.3.4)"
    headers = response.headers
    cc, targeted = effectiveCacheControl(headers, options)
    if cc.mustUnderstand:
        # 5.2.2.3: store only if the status code is understood, and then
        # no-store is ignored.
        if status not in options.understoodStatuses:
            return False, "must-understand with a status not understood (5.2.2.3)"
    elif cc.noStore:
        return False, "no-store response directive (5.2.2.5)"
    if cc.private:
        return False, "private response directive in a shared cache (5.2.2.7)"
    if b"authorization" in request.headers and not _explicitlyShareable(cc):
        return False, "Authorization without public, s-maxage or must-revalidate (3.5)"
    if not options.storeSetCookie and headers.hasAny(_COOKIE_FIELDS - cc.privateFields):
        return False, "Set-Cookie in a shared cache (7.3)"
    if varyFieldNames(headers) is None:
        return False, "Vary: * never matches (4.1)"
    if cc.sMaxAge is not None or cc.maxAge is not None:
        return True, "explicit max-age or s-maxage (3)"
    if targeted is None and b"expires" in headers:
        return True, "explicit Expires (3)"
    if not cc.public and status not in HEURISTICALLY_CACHEABLE:
        return False, "no explicit freshness and status not heuristically cacheable (3)"
    why = "public response directive (3)" if cc.public else (
        "heuristically cacheable status (3, 4.2.2)")
    if uri is None:
        uri = effectiveRequestURI(request)
    rule = _refreshRule(status, headers, options, uri)
    if _heuristicLifetime(status, headers, cc, _date(headers, None), options, rule) > 0:
        return True, why + " with heuristic freshness"
    if _validatable(headers):
        return True, why + " with a validator (4.3.1)"
    if cc.staleIfError or cc.staleWhileRevalidate:
        return True, why + " with stale-if-error or stale-while-revalidate (RFC 5861)"
    return False, ("never usable: no explicit or heuristic freshness (4.2.2) "
                   "and no validator (4.3.1)")


def mayStorePostResponse(
    request: RequestHead,
    response: ResponseHead,
    targetURI: bytes,
    options: CacheOptions = DEFAULT_OPTIONS,
) -> Tuple[bool, str]:
    """
    Whether a response to POST may be stored as the response to a GET of
    its target URI (RFC 9110 section 9.3.3): it has explicit freshness
    (C{s-maxage}, C{max-age} or Expires), a single Content-Location that
    resolves to the target URI (RFC 9110 section 8.7: the content is then a
    current representation of the target), and L{mayStore} allows it for
    a GET with the same fields, so C{no-store}, C{private},
    Authorization and C{Vary: *} count exactly as for GET.

    Choice: only 200 and 203, whose content is what a GET of the URI
    would carry; a 201 or a 204 tells of the action, not the resource.

    The driver stores it after removing what section 4.4 invalidates, so
    the response to the POST is what remains for the target URI.

    @param targetURI: the absolute target URI of the POST.
    @return: C{(allowed, reason)}, the reason naming the rule.
    """
    if request.method != b"POST":
        return False, "not a response to POST (RFC 9110 9.3.3)"
    if response.status not in (200, 203):
        return False, "status does not represent the target (RFC 9110 9.3.3)"
    target = normalizeURI(targetURI)
    locations = response.headers.getAll(b"content-location")
    if target is None or len(locations) != 1:
        return False, "no single Content-Location (RFC 9110 9.3.3)"
    try:
        location = normalizeURI(urljoin(target, locations[0].strip(b" \t")))
    except ValueError:
        location = None
    if location != target:
        return False, "Content-Location is not the target URI (RFC 9110 9.3.3)"
    cc, targeted = effectiveCacheControl(response.headers, options)
    if (cc.sMaxAge is None and cc.maxAge is None
            and (targeted is not None or b"expires" not in response.headers)):
        return False, "no explicit freshness (RFC 9110 9.3.3)"
    asGet = RequestHead(b"GET", request.target, request.version, request.headers)
    return mayStore(asGet, response, options)


def storableHeaders(
    responseHeaders: Headers, options: CacheOptions = DEFAULT_OPTIONS
) -> Headers:
    """
    The response fields to store (section 3.1): without Connection and the
    fields it nominates, the other hop-by-hop fields (RFC 9110 section
    7.6.1), the proxy-specific fields, and the L{unsharedFields}.

    @return: a new L{Headers}; C{responseHeaders} is not changed.
    """
    drop = set(HOP_BY_HOP | _PROXY_FIELDS)
    drop.update(connectionOptions(b",".join(responseHeaders.getList(b"connection"))))
    drop.update(unsharedFields(responseHeaders, options))
    stored = responseHeaders.copy()
    stored.removeMany(drop)  # type: ignore[arg-type]
    return stored


def unsharedFields(
    responseHeaders: Headers, options: CacheOptions = DEFAULT_OPTIONS
) -> FrozenSet[bytes]:
    """
    The fields of a response meant for the client whose request fetched
    it alone, which a shared cache neither stores nor hands to another
    client: those a qualified C{private="..."} names (section 5.2.2.7),
    and C{Set-Cookie} (section 7.3: a cookie set for one user agent would
    be set in every one served the copy).
    """
    cc, _ = effectiveCacheControl(responseHeaders, options)
    return _COOKIE_FIELDS | cc.privateFields


def isCompleteResponse(
    responseHeaders: Headers, bodyLength: int, framingComplete: bool = True
) -> bool:
    """
    Whether a received response is complete and may become visible as a
    stored response (section 3.3): its framing ended normally and, with a
    Content-Length, exactly that many octets arrived.

    @param framingComplete: C{False} when the message was cut short (a
        close before the last chunk, a timeout).
    """
    if not framingComplete:
        return False
    lengths = set(v.strip() for v in responseHeaders.getList(b"content-length"))
    if not lengths:
        return True
    if len(lengths) != 1:
        return False
    declared = lengths.pop()
    return declared.isdigit() and int(declared) == bodyLength


# ---------------------------------------------------------------------------
# Incomplete responses (sections 3.3 and 3.4)

def strongLastModified(headers: Headers) -> bool:
    """
    Whether the Last-Modified of a response may serve as a strong
    validator for a cache (RFC 9110 section 8.8.2.2): its Date is at least
    60 seconds later.
    """
    lastModified = parseHTTPDate(headers.get(b"last-modified"))
    stamped = parseHTTPDate(headers.get(b"date"))
    return lastModified is not None and stamped is not None and stamped - lastModified >= 60


def hasStrongValidator(headers: Headers) -> bool:
    """
    Whether a response carries a strong validator (RFC 9110 section 8.8.1):
    a strong entity tag, or, without any ETag, a strong Last-Modified
    (L{strongLastModified}).

    Choice: a weak or invalid ETag rules the response out even with a
    strong Last-Modified: the origin says its representations may differ
    octet by octet.
    """
    if b"etag" in headers:
        tag = etagOf(headers)
        return tag is not None and not tag.weak
    return strongLastModified(headers)


def sameStrongValidator(a: Headers, b: Headers) -> bool:
    """
    Whether two responses have the same strong validator (section 3.4,
    RFC 9110 section 8.8.3.2: strong comparison): the same strong entity
    tag, or, with no ETag on either, the same strong Last-Modified.
    """
    if not (hasStrongValidator(a) and hasStrongValidator(b)):
        return False
    if b"etag" in a or b"etag" in b:
        return strongMatch(etagOf(a), etagOf(b))
    return parseHTTPDate(a.get(b"last-modified")) == parseHTTPDate(b.get(b"last-modified"))


def storablePart(response: ResponseHead) -> Optional[Tuple[int, int, int]]:
    """
    Whether a 206 may be stored as an incomplete response (section 3.3):
    a single part (a Content-Range field, not multipart/byteranges) of a
    representation whose length it states, with a strong validator so that
    it can ever be combined (section 3.4) and its Content-Length, if any,
    the length of the part.

    @return: C{(start, end, completeLength)} as L{contentRange}, or C{None}.
    """
    if response.status != 206:
        return None
    headers = response.headers
    part = contentRange(headers)
    if part is None or not hasStrongValidator(headers):
        return None
    start, end, _ = part
    lengths = set(v.strip() for v in headers.getList(b"content-length"))
    if lengths and lengths != {b"%d" % (end - start)}:
        return None
    return part


def incompletePrefix(response: ResponseHead, received: int) -> Optional[int]:
    """
    Whether the first C{received} octets of a 200 cut short (section 3.3:
    fewer octets arrived than its Content-Length declared) may be stored
    as an incomplete response: only with a single valid Content-Length and
    a strong validator (without one it could never be combined or
    completed, section 3.4).

    @return: the complete length, or C{None}.
    """
    if response.status != 200 or received <= 0:
        return None
    headers = response.headers
    lengths = set(v.strip() for v in headers.getList(b"content-length"))
    if len(lengths) != 1:
        return None
    declared = lengths.pop()
    if not declared.isdigit() or int(declared) <= received:
        return None
    if not hasStrongValidator(headers):
        return None
    return int(declared)


def mergeRanges(ranges: Iterable[Tuple[int, int]]) -> Tuple[Tuple[int, int], ...]:
    """
    Half-open byte ranges sorted, with overlapping and adjacent ones
    joined and empty ones dropped.
    """
    merged: List[List[int]] = []
    for start, end in sorted(r for r in ranges if r[0] < r[1]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((start, end) for start, end in merged)


def replacedEntry(
    entries: Sequence[StoredEntry], request: RequestHead, response: ResponseHead
) -> Optional[StoredEntry]:
    """
    The stored response that storing C{response} to C{request} would
    replace: the one with the same secondary key (section 4.1).
    """
    variant = secondaryKey(response.headers, request.headers)
    if variant is None:
        return None
    for entry in entries:
        if secondaryKey(entry.responseHeaders, entry.requestHeaders) == variant:
            return entry
    return None


def combinable(
    stored: StoredEntry, response: ResponseHead, completeLength: int
) -> bool:
    """
    Section 3.4: whether a new response (a 206, or a 200 cut short) may be
    combined with the stored incomplete response C{stored}: they have the
    same strong validator, and describe a representation of the same
    length. Otherwise the new response replaces the stored parts.
    """
    return (
        stored.ranges is not None
        and stored.completeLength == completeLength
        and sameStrongValidator(stored.responseHeaders, response.headers)
    )


def partialEntry(
    entry: StoredEntry,
    ranges: Iterable[Tuple[int, int]],
    completeLength: int,
    previous: Optional[StoredEntry] = None,
    options: CacheOptions = DEFAULT_OPTIONS,
) -> StoredEntry:
    """
    The entry to store for an incomplete response (section 3.3).

    @param entry: built by L{StoredEntry.fromExchange} from the newest
        response (a 206, or a 200 cut short).
    @param ranges: the half-open ranges of the representation the stored
        body holds, in order (merged here).
    @param previous: the stored incomplete response the new one was
        combined with (L{combinable}), if any: section 3.4 says the fields
        of the newest response, aside from Content-Range, replace the
        stored fields of the same name.
    @return: an entry with C{ranges} and C{completeLength} (status 206,
        without Content-Range and Content-Length, which describe one part
        only); or, once the ranges cover the whole representation, a
        complete 200 entry with that Content-Length, answering any request.
    """
    fields = entry.responseHeaders
    if previous is not None:
        fields = freshenWith304(previous.responseHeaders, fields, options)
    else:
        fields = fields.copy()
    fields.remove(b"content-range")
    fields.remove(b"content-length")
    merged = mergeRanges(ranges)
    if merged == ((0, completeLength),):
        fields.add(b"Content-Length", b"%d" % completeLength)
        return replace(entry, status=200, responseHeaders=fields, bodyLength=completeLength,
                       ranges=None, completeLength=None)
    return replace(entry, status=206, responseHeaders=fields,
                   bodyLength=sum(end - start for start, end in merged),
                   ranges=merged, completeLength=completeLength)


def coveredRange(
    request: RequestHead, entry: StoredEntry
) -> Optional[Tuple[int, int]]:
    """
    Section 3.3: an incomplete stored response answers only a request for
    a range wholly within it: a GET with one range (RFC 9110 section
    14.1.2; open and suffix ranges resolved against the complete length),
    that If-Range allows (RFC 9110 section 13.1.5), inside one stored
    range.

    @return: the inclusive C{(first, last)} to send, or C{None}.
    """
    values = request.headers.getAll(b"range")
    if (request.method != b"GET" or len(values) != 1 or entry.ranges is None
            or entry.completeLength is None):
        return None
    if not ifRangeAllows(request.headers, entry.responseHeaders):
        return None
    parsed = parseRange(values[0], entry.completeLength)
    if not isinstance(parsed, list) or len(parsed) != 1:
        return None
    first, last = parsed[0]
    for start, end in entry.ranges:
        if start <= first and last < end:
            return first, last
    return None


def partialBodyOffset(entry: StoredEntry, position: int) -> int:
    """
    Where octet C{position} of the representation is in the stored body of
    an incomplete entry (its ranges one after the other).

    @raise ValueError: if the entry does not hold it.
    """
    offset = 0
    for start, end in entry.ranges or ():
        if start <= position < end:
            return offset + position - start
        offset += end - start
    raise ValueError("octet %d is not stored" % (position,))


# ---------------------------------------------------------------------------
# Freshness and age


def _date(headers: Headers, fallback: Optional[float]) -> Optional[float]:
    """
    The Date of a response, or C{fallback} (the time it was received) when
    absent or not a valid HTTP-date (RFC 9110 section 6.6.1: an invalid
    Date is ignored, as if absent).
    """
    date = parseHTTPDate(headers.get(b"date"))
    return fallback if date is None else date


def _expires(headers: Headers) -> Optional[float]:
    """
    The Expires time, or C{None} when it is invalid or repeated with
    different values; either means "already expired" (sections 5.3 and
    4.2.1).
    """
    values = set(v.strip() for v in headers.getAll(b"expires"))
    if len(values) != 1:
        return None
    return parseHTTPDate(values.pop())


def _refreshRule(
    status: int,
    headers: Headers,
    options: CacheOptions,
    uri: Optional[bytes],
) -> Optional[RefreshRule]:
    """
    The operator's rule for a response to C{uri}, if one applies (see
    L{RefreshRule}: the first that matches, for a status below 400).
    """
    if not options.refreshRules or uri is None or status >= 400:
        return None
    mediaType = headers.get(b"content-type", b"").partition(b";")[0].strip().lower()
    # A key of a method other than GET carries the method in front.
    return options._ruleFor(uri.rpartition(b" ")[2], mediaType)  # type: ignore[attr-defined]


def _explicitLifetime(
    headers: Headers,
    cc: CacheControl,
    targeted: Optional[bytes],
    responseTime: Optional[float],
) -> Optional[float]:
    """
    Section 4.2.1 without the heuristic: the explicit lifetime, or C{None}
    when the response has none.
    """
    if cc.sMaxAge is not None:
        # 5.2.2.10: in a shared cache s-maxage overrides max-age and Expires.
        return float(cc.sMaxAge)
    if cc.maxAge is not None:
        # 5.3: with max-age, Expires is ignored.
        return float(cc.maxAge)
    if targeted is None and b"expires" in headers:
        # 5.3: an invalid Expires (e.g. "0") is a time in the past.
        expires = _expires(headers)
        date = _date(headers, responseTime)
        if expires is None or date is None:
            return 0.0
        return max(0.0, expires - date)
    return None


def _lifetime(
    status: int,
    headers: Headers,
    cc: CacheControl,
    targeted: Optional[bytes],
    responseTime: Optional[float],
    options: CacheOptions,
    uri: Optional[bytes] = None,
) -> float:
    """
    Section 4.2.1, given the directives already parsed; the operator's
    rule for C{uri} supplies the heuristic (section 4.2.2), and its
    minimum overrides explicit freshness only when it says so.
    """
    rule = _refreshRule(status, headers, options, uri)
    explicit = _explicitLifetime(headers, cc, targeted, responseTime)
    if explicit is not None:
        if rule is not None and rule.override:
            return max(explicit, rule.minimum)
        return explicit
    return _heuristicLifetime(
        status, headers, cc, _date(headers, responseTime), options, rule
    )


def _heuristicLifetime(
    status: int,
    headers: Headers,
    cc: CacheControl,
    date: Optional[float],
    options: CacheOptions,
    rule: Optional[RefreshRule] = None,
) -> float:
    """
    Section 4.2.2: only without explicit expiry (the caller's duty), only
    for a heuristically cacheable status or a C{public} response. Without
    a C{rule}, only from a Last-Modified that is a valid HTTP-date: a
    fraction of the time since then, capped. With one, that rule's
    percentage of the time since a valid Last-Modified, within its minimum
    and maximum.
    """
    if status not in HEURISTICALLY_CACHEABLE and not cc.public:
        return 0.0
    lastModified = parseHTTPDate(headers.get(b"last-modified"))
    since = None
    if lastModified is not None and date is not None:
        since = max(0.0, date - lastModified)
    if rule is None:
        if since is None:
            return 0.0
        return min(since * options.heuristicFraction, options.maxHeuristic)
    fromLastModified = 0.0 if since is None else since * rule.percent / 100.0
    return min(rule.maximum, max(rule.minimum, fromLastModified))


def freshnessLifetime(
    response: ResponseHead,
    options: CacheOptions = DEFAULT_OPTIONS,
    responseTime: Optional[float] = None,
    uri: Optional[bytes] = None,
) -> float:
    """
    The freshness lifetime of C{response} for this shared cache, in
    seconds (section 4.2.1): C{s-maxage}, else C{max-age}, else Expires
    minus Date (an invalid Expires gives C{0}), else a heuristic (section
    4.2.2): the operator's L{RefreshRule} for C{uri}, or the default. A
    targeted field (RFC 9213) replaces Cache-Control and Expires.

    @param responseTime: when the response was received; stands in for a
        missing Date. Without either, Expires and the Last-Modified
        heuristic give C{0}.
    @param uri: the target URI (a L{primaryKey}), for the refresh rules.
    @return: a number of seconds, never negative.
    """
    cc, targeted = effectiveCacheControl(response.headers, options)
    return _lifetime(
        response.status, response.headers, cc, targeted, responseTime, options,
        uri,
    )


def _ageValue(headers: Headers) -> int:
    """
    age_value of section 4.2.3: the Age field (section 5.1) as a number,
    or 0 when absent or invalid.
    """
    members = headers.getList(b"age")
    if not members:
        return 0
    return deltaSeconds(members[0].strip()) or 0


def currentAge(
    responseHeaders: Headers,
    requestTime: float,
    responseTime: float,
    now: float,
) -> float:
    """
    The current age of a stored response (section 4.2.3)::

        apparent_age = max(0, response_time - date_value)
        response_delay = response_time - request_time
        corrected_age_value = age_value + response_delay
        corrected_initial_age = max(apparent_age, corrected_age_value)
        resident_time = now - response_time
        current_age = corrected_initial_age + resident_time

    A missing Date is taken as C{responseTime} (RFC 9110 section 6.6.1).
    Choice: C{response_delay} and C{resident_time} are floored at 0, so a
    clock that steps backwards never yields a negative age, and the age
    never decreases as C{now} grows.
    """
    dateValue = _date(responseHeaders, responseTime)
    assert dateValue is not None
    apparentAge = max(0.0, responseTime - dateValue)
    responseDelay = max(0.0, responseTime - requestTime)
    correctedAgeValue = _ageValue(responseHeaders) + responseDelay
    correctedInitialAge = max(apparentAge, correctedAgeValue)
    residentTime = max(0.0, now - responseTime)
    return correctedInitialAge + residentTime


def ageHeaderValue(age: float) -> bytes:
    """
    The Age field value for a response served from cache (section 5.1):
    whole seconds, rounded down, never negative, and 2147483648 when the
    age does not fit.
    """
    if not age >= 0:
        return b"0" if not math.isnan(age) else b"%d" % DELTA_SECONDS_MAX
    if age >= DELTA_SECONDS_MAX:
        return b"%d" % DELTA_SECONDS_MAX
    return b"%d" % math.floor(age)


# ---------------------------------------------------------------------------
# Stored entries and the decision


@dataclass(frozen=True)
class StoredEntry:
    """
    What L{decide} reads about one stored response. Stores keep more (the
    body); this is the part the RFC needs.

    @ivar key: the primary key (L{primaryKey}).
    @ivar requestMethod: the method of the request that was answered.
    @ivar requestHeaders: the selecting request's fields named by Vary
        (section 4.1); other fields may be present and are ignored.
    @ivar status: the stored response's status code.
    @ivar responseHeaders: the stored response's fields (L{storableHeaders}).
    @ivar requestTime: when the request that got this response was sent
        (or, after a 304, the revalidation request), section 4.2.3.
    @ivar responseTime: when that response was received.
    @ivar bodyLength: the stored body's length, if known.
    @ivar id: an opaque handle for the store.
    @ivar ranges: C{None} for a complete response; for an incomplete one
        (section 3.3), the byte ranges of the representation it holds, as
        sorted, disjoint, non-adjacent half-open C{(start, end)} pairs; the
        stored body is those ranges one after the other (see
        L{partialEntry}). Such an entry is used only to answer range
        requests that fall within one of them.
    @ivar completeLength: for an incomplete response, the length of the
        complete representation.
    """

    key: bytes
    requestMethod: bytes
    requestHeaders: Headers
    status: int
    responseHeaders: Headers
    requestTime: float
    responseTime: float
    bodyLength: Optional[int] = None
    id: object = None
    ranges: Optional[Tuple[Tuple[int, int], ...]] = None
    completeLength: Optional[int] = None

    @classmethod
    def fromExchange(
        cls,
        key: bytes,
        request: RequestHead,
        response: ResponseHead,
        requestTime: float,
        responseTime: float,
        bodyLength: Optional[int] = None,
        id: object = None,
        options: CacheOptions = DEFAULT_OPTIONS,
    ) -> "StoredEntry":
        """
        Build the entry for a response that L{mayStore} allowed: the
        request fields named by Vary, and the L{storableHeaders}.
        """
        selecting = Headers()
        for name in varyFieldNames(response.headers) or ():
            for value in request.headers.getAll(name):
                selecting.add(name, value)
        return cls(
            key=key,
            requestMethod=request.method,
            requestHeaders=selecting,
            status=response.status,
            responseHeaders=storableHeaders(response.headers, options),
            requestTime=requestTime,
            responseTime=responseTime,
            bodyLength=bodyLength,
            id=id,
        )

    @property
    def responseHead(self) -> ResponseHead:
        """
        The stored status and fields as a L{ResponseHead}.
        """
        return ResponseHead(self.status, headers=self.responseHeaders.copy())


@dataclass(frozen=True)
class Fresh:
    """
    Serve C{entry} from the cache, with Age set from C{age} (section 4),
    without the fields of L{downstreamStripFields}, and answering the
    client's preconditions and Range with L{evaluatePreconditions} and
    L{rangeForStoredResponse}.

    @ivar ttl: freshness left, in seconds (for Cache-Status).
    """

    entry: StoredEntry
    age: float
    ttl: float
    fwd: Optional[str] = None


@dataclass(frozen=True)
class Stale:
    """
    Serve C{entry} although it is stale, without contacting the origin: the
    client allowed it with C{max-stale} (section 5.2.1.2), or the origin
    failed and C{stale-if-error} allowed it (RFC 5861 section 4).

    @ivar ttl: negative: how stale it is.
    """

    entry: StoredEntry
    age: float
    ttl: float
    reason: str
    fwd: Optional[str] = None


@dataclass(frozen=True)
class StaleWhileRevalidate:
    """
    Serve stale C{entry} now and revalidate it in the background with
    C{conditionalHeaders} (RFC 5861 section 3); then apply
    L{afterRevalidation}. Empty C{conditionalHeaders} mean a plain refetch.
    """

    entry: StoredEntry
    age: float
    ttl: float
    conditionalHeaders: Headers
    fwd: Optional[str] = None


@dataclass(frozen=True)
class Revalidate:
    """
    Send the request upstream with C{conditionalHeaders} added (after
    L{stripPreconditions}), then apply L{afterRevalidation} (section 4.3).
    A HEAD request is best revalidated with GET, so that a 200 can replace
    the entry.

    @ivar fwd: RFC 9211 reason: C{"stale"}, or C{"request"} when the
        client's directives asked for validation.
    """

    entry: StoredEntry
    conditionalHeaders: Headers
    reason: str
    fwd: str = "stale"


@dataclass(frozen=True)
class Miss:
    """
    Forward the request; store the response if L{mayStore} allows.

    @ivar fwd: RFC 9211 reason: C{"uri-miss"}, C{"vary-miss"}, C{"stale"}
        (stale without a validator) or C{"request"}.
    """

    reason: str
    fwd: str = "miss"


@dataclass(frozen=True)
class OnlyIfCachedMiss:
    """
    The client sent C{only-if-cached} and nothing stored may be used:
    answer 504 without contacting the origin (section 5.2.1.7).
    """

    reason: str
    fwd: Optional[str] = None


@dataclass(frozen=True)
class Pass:
    """
    Forward the request and never store the response (an unsafe or
    unsupported method, section 4, or preconditions only the origin can
    evaluate, section 4.3.2). After a non-error answer, remove
    L{invalidatedURIs}; then a response to POST that
    L{mayStorePostResponse} allows is stored as the response to GET of its
    target (RFC 9110 section 9.3.3).
    """

    reason: str
    fwd: str = "method"


Decision = Union[
    Fresh, Stale, StaleWhileRevalidate, Revalidate, Miss, OnlyIfCachedMiss,
    Pass,
]


@dataclass(frozen=True)
class _Assessment:
    """
    One entry's directives, lifetime and age at C{now}.
    """

    cc: CacheControl
    lifetime: float
    age: float

    @property
    def ttl(self) -> float:
        return self.lifetime - self.age


def _assess(
    entry: StoredEntry, now: float, options: CacheOptions
) -> _Assessment:
    cc, targeted = effectiveCacheControl(entry.responseHeaders, options)
    lifetime = _lifetime(
        entry.status, entry.responseHeaders, cc, targeted,
        entry.responseTime, options, entry.key,
    )
    age = currentAge(
        entry.responseHeaders, entry.requestTime, entry.responseTime, now
    )
    return _Assessment(cc, lifetime, age)


def _mostRecent(entries: Sequence[StoredEntry]) -> StoredEntry:
    """
    Section 4.1 (and 4): of several suitable responses, the most recent by
    Date; ties go to the one received last, then to the later in order.
    """
    best = entries[0]
    for entry in entries[1:]:
        if _recency(entry) >= _recency(best):
            best = entry
    return best


def _recency(entry: StoredEntry) -> Tuple[float, float]:
    date = _date(entry.responseHeaders, entry.responseTime)
    assert date is not None
    return (date, entry.responseTime)


def _staleForbidden(cc: CacheControl) -> Optional[str]:
    """
    Section 4.2.4: directives that forbid serving this response stale in a
    shared cache, whatever the client or RFC 5861 allow.

    @return: why, or C{None} if stale may be served.
    """
    if cc.mustRevalidate:
        return "must-revalidate (5.2.2.2)"
    if cc.proxyRevalidate:
        return "proxy-revalidate (5.2.2.8)"
    if cc.sMaxAge is not None:
        return "s-maxage implies proxy-revalidate (5.2.2.10)"
    if cc.noCache:
        return "no-cache (5.2.2.4)"
    return None


def _selectable(
    request: RequestHead, entries: Sequence[StoredEntry], options: CacheOptions
) -> List[StoredEntry]:
    """
    Section 4: stored responses whose method allows their use for this
    request (a stored GET answers GET and HEAD) and whose Vary matches.
    Section 3.3: an incomplete response only for a range it holds
    (L{coveredRange}).
    """
    return [
        entry for entry in entries
        if entry.requestMethod in options.cacheableMethods
        and varyMatches(entry.requestHeaders, entry.responseHeaders,
                        request.headers)
        and (entry.ranges is None or coveredRange(request, entry) is not None)
    ]


def decide(
    request: RequestHead,
    entries: Sequence[StoredEntry],
    now: float,
    options: CacheOptions = DEFAULT_OPTIONS,
) -> Decision:
    """
    What to do with C{request}, given the stored responses for its primary
    key (section 4).

    Choice beyond the RFC: a request carrying Authorization is answered
    from a stored response only if that response is explicitly shareable
    (C{public}, C{s-maxage} or C{must-revalidate}, as section 3.5 asks of
    responses to such requests); otherwise it is a miss.

    @return: a L{Decision}.
    """
    reqCC = requestCacheControl(request.headers)

    def offline(decision: Union[Pass, Miss, Revalidate]) -> Decision:
        # 5.2.1.7: only-if-cached turns anything that would contact the
        # origin into a 504.
        if reqCC.onlyIfCached:
            return OnlyIfCachedMiss("only-if-cached; " + decision.reason)
        return decision

    if request.method not in options.cacheableMethods | {b"HEAD"}:
        # 4: unsafe methods (and any not understood) are written through.
        return offline(Pass("method is not served from cache (4)", "method"))
    if b"if-match" in request.headers or b"if-unmodified-since" in request.headers:
        # 4.3.2: If-Match and If-Unmodified-Since are not for a cache.
        return offline(Pass("precondition for the origin server (4.3.2)", "request"))
    if not entries:
        return offline(Miss("nothing stored for the URI", "uri-miss"))
    selectable = _selectable(request, entries, options)
    if not selectable:
        if any(e.ranges is not None for e in entries):
            return offline(Miss("the stored incomplete response does not hold "
                                "what is asked for (3.3)", "partial"))
        return offline(Miss("no stored response matches Vary (4.1)", "vary-miss"))
    entry = _mostRecent(selectable)
    found = _assess(entry, now, options)
    cc, age, ttl = found.cc, found.age, found.ttl

    def revalidate(reason: str, fwd: str) -> Decision:
        headers = validation()
        if not len(headers):
            return offline(Miss(reason + "; no validator to revalidate with", fwd))
        return offline(Revalidate(entry, headers, reason, fwd))

    def validation() -> Headers:
        headers = conditionalHeaders(entry)
        if entry.ranges is not None and len(headers):
            # 3.3: an incomplete response holds only part; ask for the
            # range alone, so that a changed representation costs no more
            # than the client wanted.
            for value in request.headers.getAll(b"range"):
                headers.add(b"Range", value)
        return headers

    if b"authorization" in request.headers and not _explicitlyShareable(cc):
        return offline(Miss("Authorization and the stored response is not "
                            "explicitly shareable (3.5)", "request"))
    if cc.noCache:
        return revalidate("no-cache response directive (5.2.2.4)", "stale")
    if reqCC.noCache:
        return revalidate("no-cache request directive (5.2.1.4)", "request")
    if reqCC.maxAge is not None and age > reqCC.maxAge:
        return revalidate("older than the request's max-age (5.2.1.1)",
                          "request" if ttl > 0 else "stale")
    if ttl > 0:
        if reqCC.minFresh is not None and ttl <= reqCC.minFresh:
            return revalidate("fresh for less than min-fresh (5.2.1.3)", "request")
        return Fresh(entry, age, ttl)
    # The entry is stale (4.2: fresh only while lifetime > age).
    staleness = -ttl
    if _staleForbidden(cc) is None and not reqCC.minFresh:
        if reqCC.maxStale is not None and staleness <= reqCC.maxStale:
            return Stale(entry, age, ttl, "max-stale request directive (5.2.1.2)")
        window = cc.staleWhileRevalidate
        if window is None:
            window = options.defaultStaleWhileRevalidate
        if window > 0 and staleness <= window:
            # RFC 5861 section 3.
            return StaleWhileRevalidate(entry, age, ttl, validation())
    return revalidate("stale (4.2)", "stale")


# ---------------------------------------------------------------------------
# Validation


def conditionalHeaders(
    entry: StoredEntry, others: Sequence[StoredEntry] = ()
) -> Headers:
    """
    The precondition fields to send upstream to validate C{entry} (section
    4.3.1): If-None-Match with the entity tags of C{entry} and C{others}
    (MUST), and If-Modified-Since with the stored Last-Modified when a
    single response is validated (SHOULD).

    Choice: the Date of the stored response is never used in place of a
    missing Last-Modified (RFC 9110 section 13.1.3 calls Last-Modified the
    most interoperable source).

    @return: new L{Headers}, empty when nothing can be validated.
    """
    conditional = Headers()
    tags: List[bytes] = []
    for candidate in (entry, *others):
        tag = candidate.responseHeaders.get(b"etag", b"").strip()
        if parseETag(tag) is not None and tag not in tags:
            tags.append(tag)
    if tags:
        conditional.add(b"If-None-Match", b", ".join(tags))
    lastModified = entry.responseHeaders.get(b"last-modified", b"").strip()
    if not others and parseHTTPDate(lastModified) is not None:
        conditional.add(b"If-Modified-Since", lastModified)
    return conditional


#: The precondition fields other than a range request's own (RFC 9110
#: sections 14.2 and 13.1.5).
_NOT_RANGE_FIELDS = PRECONDITION_FIELDS - frozenset([b"range", b"if-range"])


def isRangeRequest(requestHeaders: Headers) -> bool:
    """
    Whether a request is a range request (RFC 9110 section 14.2) with no
    other precondition than If-Range: its answer, a 206 or a whole 200,
    may be stored (section 3.3) where other conditional requests' answers
    are not.
    """
    return b"range" in requestHeaders and not requestHeaders.hasAny(_NOT_RANGE_FIELDS)


def stripPreconditions(requestHeaders: Headers) -> Headers:
    """
    A copy of C{requestHeaders} without the client's preconditions and
    Range (L{PRECONDITION_FIELDS}), so that the cache's own conditional
    request, or a fetch to fill the cache, gets a complete answer; the
    client's preconditions are then answered from the cache
    (L{evaluatePreconditions}).
    """
    stripped = requestHeaders.copy()
    stripped.removeMany(PRECONDITION_FIELDS)
    return stripped


def freshenWith304(
    storedResponseHeaders: Headers,
    notModifiedHeaders: Headers,
    options: CacheOptions = DEFAULT_OPTIONS,
) -> Headers:
    """
    Update stored fields from a 304 (sections 4.3.4 and 3.2): every field
    of the 304 replaces the stored fields of that name, except the fields
    never stored (section 3.1, see L{storableHeaders}) and Content-Length.
    Other stored fields are kept, in place.

    @return: new L{Headers}.
    """
    update = storableHeaders(notModifiedHeaders, options)
    update.remove(b"content-length")
    replacements: Dict[bytes, List[Tuple[bytes, bytes]]] = {}
    for name, value in update.items():
        replacements.setdefault(name.lower(), []).append((name, value))
    merged = Headers()
    for name, value in storedResponseHeaders.items():
        lower = name.lower()
        if lower not in replacements:
            merged.add(name, value)
        elif replacements[lower]:
            for newName, newValue in replacements[lower]:
                merged.add(newName, newValue)
            replacements[lower] = []  # the remaining stored lines go
    for fields in replacements.values():
        for newName, newValue in fields:
            merged.add(newName, newValue)
    return merged


def freshenEntry(
    entry: StoredEntry,
    notModifiedHeaders: Headers,
    requestTime: float,
    responseTime: float,
    options: CacheOptions = DEFAULT_OPTIONS,
) -> StoredEntry:
    """
    C{entry} updated by a 304 or HEAD response: merged fields
    (L{freshenWith304}) and the validation's times, from which its age is
    now computed (section 4.2.3).
    """
    return replace(
        entry,
        responseHeaders=freshenWith304(
            entry.responseHeaders, notModifiedHeaders, options
        ),
        requestTime=requestTime,
        responseTime=responseTime,
    )


def _validatable(headers: Headers) -> bool:
    """
    Whether a stored response with these fields could be revalidated: it
    has a valid entity tag or Last-Modified date (section 4.3.1), that is
    L{conditionalHeaders} would not be empty.
    """
    if etagOf(headers) is not None:
        return True
    return parseHTTPDate(headers.get(b"last-modified", b"").strip()) is not None


def _hasValidator(headers: Headers) -> bool:
    # A Last-Modified that is not a valid HTTP-date validates nothing
    # (RFC 9110 section 8.8.2).
    return (etagOf(headers) is not None
            or parseHTTPDate(headers.get(b"last-modified")) is not None)


def selectForUpdate(
    entries: Sequence[StoredEntry],
    notModifiedHeaders: Headers,
    validated: Sequence[StoredEntry] = (),
) -> List[StoredEntry]:
    """
    Which stored responses a 304 updates (section 4.3.4):

      - a strong ETag in the 304: every stored response with the same
        strong ETag, and none if there is none;
      - else a weak ETag, or a Last-Modified alone: the most recent stored
        response whose ETag compares weakly equal / whose Last-Modified is
        the same;
      - else (no validator at all), when the conditional request was built
        from the validators of one stored response (C{validated}): that
        response;
      - else the only stored response, if there is exactly one and it has
        no validator either.

    Choice: the third rule goes beyond the letter of section 4.3.4, which
    would select nothing when the stored response has a validator. Many
    origins answer a conditional request with a 304 that repeats no
    validator (RFC 9110 section 15.4.5 only asks for the fields a 200
    would carry, and e.g. Python's C{http.server} sends Date and Server
    alone); when the cache offered a single response, the 304 can only
    mean that one, and refetching would cost a second request each time.
    With several responses offered such a 304 is ambiguous, and the
    literal rule applies.

    @param validated: the stored responses whose validators the cache's
        own conditional request carried (L{conditionalHeaders}); empty when
        the request was not the cache's own.
    """
    tag = etagOf(notModifiedHeaders)
    if tag is not None and not tag.weak:
        return [e for e in entries if strongMatch(etagOf(e.responseHeaders), tag)]
    lastModified = parseHTTPDate(notModifiedHeaders.get(b"last-modified"))
    if tag is not None or lastModified is not None:
        if tag is not None:
            matching = [e for e in entries
                        if weakMatch(etagOf(e.responseHeaders), tag)]
        else:
            matching = [
                e for e in entries
                if parseHTTPDate(e.responseHeaders.get(b"last-modified"))
                == lastModified
            ]
        return [_mostRecent(matching)] if matching else []
    if len(validated) == 1:
        return [validated[0]]
    if len(entries) == 1 and not _hasValidator(entries[0].responseHeaders):
        return [entries[0]]
    return []


@dataclass(frozen=True)
class Freshened:
    """
    A 304 freshened stored responses: write back C{updated}, and answer
    the request with C{entry} (one of them) at C{age}.
    """

    updated: Tuple[StoredEntry, ...]
    entry: StoredEntry
    age: float
    fwd: str = "stale"


@dataclass(frozen=True)
class Refetch:
    """
    A 304 updated nothing this request may use (section 4.3.4): send the
    request again without the cache's preconditions.
    """

    reason: str
    fwd: str = "stale"


@dataclass(frozen=True)
class Forward:
    """
    Use the upstream response as it is: a full response that replaces the
    stored one if L{mayStore} allows (section 4.3.3), or an error that
    stale content may not hide. When the origin could not be reached at
    all, answer 504 (section 5.2.2.2 requires it for must-revalidate).
    """

    reason: str
    fwd: str = "stale"


RevalidationOutcome = Union[Freshened, Stale, Refetch, Forward]


def staleIfError(
    request: RequestHead,
    entry: StoredEntry,
    now: float,
    options: CacheOptions = DEFAULT_OPTIONS,
    disconnected: bool = False,
) -> Optional[Stale]:
    """
    Whether C{entry} may be served because the origin failed (section
    4.2.4 and RFC 5861 section 4): not if the response forbids stale
    content (must-revalidate, proxy-revalidate, s-maxage, no-cache);
    otherwise if its staleness is within C{stale-if-error} from the
    response (or C{options.defaultStaleIfError} when it has none) or from
    the request, or if C{disconnected} and C{options.staleOnDisconnect}.

    @return: a L{Stale} decision, or C{None} to pass the error on.
    """
    found = _assess(entry, now, options)
    if _staleForbidden(found.cc) is not None:
        return None
    staleness = -found.ttl
    window = found.cc.staleIfError
    if window is None:
        window = options.defaultStaleIfError
    requested = requestCacheControl(request.headers).staleIfError
    if requested is not None:
        window = max(window, requested)
    if window > 0 and staleness <= window:
        return Stale(entry, found.age, found.ttl, "stale-if-error (RFC 5861 4)")
    if disconnected and options.staleOnDisconnect:
        return Stale(entry, found.age, found.ttl, "disconnected (4.2.4)")
    return None


def staleOnError(
    request: RequestHead,
    entries: Sequence[StoredEntry],
    now: float,
    options: CacheOptions = DEFAULT_OPTIONS,
    disconnected: bool = False,
) -> Optional[Stale]:
    """
    After a miss that the origin answered with an error (or did not answer
    at all), whether a stored stale response for the request may be served
    instead (section 4.2.4, RFC 5861 section 4): the most recent response
    the request selects, under L{staleIfError}.

    @return: a L{Stale} decision, or C{None} to pass the error on.
    """
    usable = _selectable(request, entries, options)
    if not usable:
        return None
    return staleIfError(request, _mostRecent(usable), now, options, disconnected)


def afterRevalidation(
    request: RequestHead,
    entry: StoredEntry,
    response: Optional[ResponseHead],
    requestTime: float,
    responseTime: float,
    now: float,
    options: CacheOptions = DEFAULT_OPTIONS,
    entries: Optional[Sequence[StoredEntry]] = None,
    validated: Optional[Sequence[StoredEntry]] = None,
) -> RevalidationOutcome:
    """
    What to do with the answer to a revalidation of C{entry} (section
    4.3.3).

    @param response: the upstream response head, or C{None} if the origin
        could not be reached.
    @param entries: every stored response for the key (default: just
        C{entry}), since a 304 may update several (section 4.3.4).
    @param validated: the stored responses whose validators the
        conditional request carried (see L{selectForUpdate}); by default
        C{entry} alone when L{conditionalHeaders} finds a validator in it,
        as L{decide} builds its requests, else none.
    """
    if response is None or response.status in _ERROR_STATUSES:
        # 4.3.3: on a 5xx the cache may act as if the server did not answer
        # and serve stale where 4.2.4 allows.
        stale = staleIfError(request, entry, now, options, response is None)
        if stale is not None:
            return stale
        return Forward("origin error and stale content not allowed (4.2.4)")
    if response.status != 304:
        return Forward("full response (4.3.3)")
    if validated is None:
        validated = (entry,) if len(conditionalHeaders(entry)) else ()
    updated = [
        freshenEntry(e, response.headers, requestTime, responseTime, options)
        for e in selectForUpdate(entries or (entry,), response.headers, validated)
    ]
    usable = _selectable(request, updated, options)
    if not usable:
        return Refetch("304 selected no usable stored response (4.3.4)")
    chosen = _mostRecent(usable)
    age = currentAge(chosen.responseHeaders, requestTime, responseTime, now)
    return Freshened(tuple(updated), chosen, age)


@dataclass(frozen=True)
class HeadUpdate:
    """
    The effect of a 200 answer to HEAD on stored GET responses (section
    4.3.5): C{updated} to write back, C{invalidated} to drop.
    """

    updated: Tuple[StoredEntry, ...] = ()
    invalidated: Tuple[StoredEntry, ...] = ()


def freshenWithHead(
    entries: Sequence[StoredEntry],
    requestHeaders: Headers,
    headResponse: ResponseHead,
    requestTime: float,
    responseTime: float,
    options: CacheOptions = DEFAULT_OPTIONS,
) -> HeadUpdate:
    """
    Section 4.3.5: a 200 to HEAD updates each stored response the HEAD
    request could have selected, when the validators the HEAD response
    carries (ETag, Last-Modified) have the same values in the stored
    response and a Content-Length, if any, matches too; the others are
    stale now, and are dropped.

    Choice: a HEAD response with no validator at all confirms nothing, so
    it makes the selectable responses stale rather than fresher.
    """
    if headResponse.status != 200:
        return HeadUpdate()
    head = headResponse.headers
    validators = [n for n in (b"etag", b"last-modified") if n in head]
    updated = []
    invalidated = []
    for entry in entries:
        if not varyMatches(entry.requestHeaders, entry.responseHeaders,
                           requestHeaders):
            continue
        stored = entry.responseHeaders
        same = bool(validators)
        if b"etag" in head:
            same = same and etagOf(stored) == etagOf(head) is not None
        if b"last-modified" in head:
            same = same and (
                parseHTTPDate(stored.get(b"last-modified"))
                == parseHTTPDate(head.get(b"last-modified")) is not None
            )
        if b"content-length" in head:
            length = _normalizedField(head, b"content-length")
            storedLength = _normalizedField(stored, b"content-length")
            known = entry.bodyLength if entry.ranges is None else entry.completeLength
            if storedLength is None and known is not None:
                storedLength = b"%d" % known
            same = same and length == storedLength
        if same:
            updated.append(
                freshenEntry(entry, head, requestTime, responseTime, options)
            )
        else:
            invalidated.append(entry)
    return HeadUpdate(tuple(updated), tuple(invalidated))


# ---------------------------------------------------------------------------
# Client preconditions and ranges, answered from a stored response


def _modificationDate(
    requestHeaders: Headers, name: bytes
) -> Optional[float]:
    """
    Parse an If-Modified-Since / If-Unmodified-Since value: one HTTP-date,
    else C{None} (RFC 9110 sections 13.1.3 and 13.1.4 say to ignore an
    invalid date or a list of several).
    """
    values = requestHeaders.getAll(name)
    if len(values) != 1 or values[0].count(b",") > 1:
        return None
    return parseHTTPDate(values[0])


def _anyTag(
    members: Iterable[bytes],
    current: Optional[ETag],
    compare: Callable[[Optional[ETag], Optional[ETag]], bool],
) -> bool:
    return any(compare(parseETag(m), current) for m in members)


def evaluatePreconditions(
    requestHeaders: Headers,
    storedResponseHeaders: Headers,
    method: bytes,
    storedStatus: int = 200,
    responseTime: Optional[float] = None,
) -> Optional[int]:
    """
    Evaluate a client's preconditions against a stored response, in the
    order of RFC 9110 section 13.2.2:

      1. If-Match (strong comparison; C{*} is true): false gives 412;
      2. else If-Unmodified-Since (ignored if invalid or without a stored
         Last-Modified): modified since gives 412;
      3. If-None-Match (weak comparison; C{*} is false): false gives 304
         for GET and HEAD, else 412;
      4. else, for GET and HEAD only, If-Modified-Since (ignored if
         invalid): not modified since gives 304. Without a stored
         Last-Modified that is a valid HTTP-date the stored Date, else
         C{responseTime}, stands in (RFC 9111 section 4.3.2).

    Preconditions are ignored when the stored status is not 2xx (RFC 9110
    section 13.2.1). If-Range is separate: L{ifRangeAllows}.

    @return: C{None} to answer normally, C{304} or C{412}.
    """
    if not 200 <= storedStatus < 300:
        return None
    current = etagOf(storedResponseHeaders)
    lastModified = parseHTTPDate(storedResponseHeaders.get(b"last-modified"))
    if b"if-match" in requestHeaders:
        members = requestHeaders.getList(b"if-match")
        # 13.1.1: "*" is true when a current representation exists.
        if b"*" not in members and not _anyTag(members, current, strongMatch):
            return 412
    else:
        since = _modificationDate(requestHeaders, b"if-unmodified-since")
        if since is not None and lastModified is not None and lastModified > since:
            return 412
    if b"if-none-match" in requestHeaders:
        members = requestHeaders.getList(b"if-none-match")
        if b"*" in members or _anyTag(members, current, weakMatch):
            return 304 if method in (b"GET", b"HEAD") else 412
    elif method in (b"GET", b"HEAD"):
        since = _modificationDate(requestHeaders, b"if-modified-since")
        modified = lastModified
        if modified is None:
            modified = _date(storedResponseHeaders, responseTime)
        if since is not None and modified is not None and modified <= since:
            return 304
    return None


_NOT_MODIFIED_FIELDS = (
    b"cache-control", b"content-location", b"date", b"etag", b"expires",
    b"vary",
)


def notModifiedHeaders(storedResponseHeaders: Headers) -> Headers:
    """
    The fields of a 304 generated from a stored response (RFC 9110 section
    15.4.5): those a 200 would carry among Cache-Control,
    Content-Location, Date, ETag, Expires and Vary, plus Last-Modified when
    there is no ETag.
    """
    names = set(_NOT_MODIFIED_FIELDS)
    if b"etag" not in storedResponseHeaders:
        names.add(b"last-modified")
    return Headers(
        (n, v) for n, v in storedResponseHeaders.items() if n.lower() in names
    )


def ifRangeAllows(
    requestHeaders: Headers, storedResponseHeaders: Headers
) -> bool:
    """
    Evaluate If-Range (RFC 9110 section 13.1.5): true without it; with an
    entity tag, true on a strong match with the stored ETag; with a date,
    true only if it equals the stored Last-Modified and that date is strong
    (the stored Date at least 60 seconds later, RFC 9110 section 8.8.2.2).
    When false, the Range is ignored and the full response sent.
    """
    value = requestHeaders.get(b"if-range")
    if value is None:
        return True
    value = value.strip(b" \t")
    if value.startswith((b'"', b"W/")):
        return strongMatch(parseETag(value), etagOf(storedResponseHeaders))
    date = parseHTTPDate(value)
    lastModified = parseHTTPDate(storedResponseHeaders.get(b"last-modified"))
    stamped = parseHTTPDate(storedResponseHeaders.get(b"date"))
    return (
        date is not None
        and date == lastModified
        and stamped is not None
        and stamped - date >= 60
    )


def rangeForStoredResponse(
    request: RequestHead, entry: StoredEntry
) -> RangeResult:
    """
    How to answer a range request from a complete stored 200 (RFC 9110
    section 14.2): Range is honoured only for GET, only when If-Range
    allows, and only when the stored length is known; see L{parseRange}
    for the result. From an incomplete entry, only the range of
    L{coveredRange}, else C{None}.
    """
    if entry.ranges is not None:
        covered = coveredRange(request, entry)
        return [covered] if covered is not None else None
    ranges = request.headers.getAll(b"range")
    if request.method != b"GET" or len(ranges) != 1 or entry.status != 200:
        return None
    length = entry.bodyLength
    if length is None:
        declared = entry.responseHeaders.get(b"content-length", b"").strip()
        if not declared.isdigit():
            return None
        length = int(declared)
    if not ifRangeAllows(request.headers, entry.responseHeaders):
        return None
    return parseRange(ranges[0], length)


# ---------------------------------------------------------------------------
# Invalidation


def _origin(uri: bytes) -> Tuple[bytes, bytes]:
    scheme, _, rest = uri.partition(b"://")
    return scheme, rest.partition(b"/")[0]


def invalidatedURIs(
    requestMethod: bytes,
    requestEffectiveURI: bytes,
    responseStatus: int,
    responseHeaders: Headers,
) -> List[bytes]:
    """
    The URIs whose stored responses (every variant) must be dropped after
    a response to an unsafe request (section 4.4): on a non-error status
    (2xx or 3xx), the target URI, plus the Location and Content-Location
    URIs (resolved against the target) when they have the same origin.

    @return: URIs in L{primaryKey} form for GET, so they are primary keys.
    """
    if requestMethod in SAFE_METHODS or not 200 <= responseStatus < 400:
        return []
    target = normalizeURI(requestEffectiveURI)
    if target is None:
        return []
    uris = [target]
    for name in (b"location", b"content-location"):
        reference = responseHeaders.get(name)
        if not reference:
            continue
        try:
            resolved = urljoin(target, reference.strip())
        except ValueError:
            continue
        uri = normalizeURI(resolved)
        # 4.4: never invalidate another origin's URIs.
        if uri is not None and _origin(uri) == _origin(target) and uri not in uris:
            uris.append(uri)
    return uris


# ---------------------------------------------------------------------------
# Cache-Status (RFC 9211)


def cacheStatus(
    name: bytes = b"cachingproxy",
    hit: bool = False,
    fwd: Optional[str] = None,
    fwdStatus: Optional[int] = None,
    ttl: Optional[float] = None,
    stored: bool = False,
    collapsed: bool = False,
    key: Optional[bytes] = None,
    detail: Optional[bytes] = None,
) -> bytes:
    """
    This cache's member of the Cache-Status field (RFC 9211 section 2), to
    be appended after any members from caches closer to the origin.

    Typical uses: a L{Fresh} or L{Stale} answer is C{hit} with C{ttl}; a
    L{Miss}, L{Pass} or L{Revalidate} gives its C{fwd}, then
    C{fwdStatus} and C{stored} once the upstream answer is known.

    @param ttl: remaining freshness in seconds (negative when stale),
        rounded down.
    @raise ValueError: for a C{fwd} RFC 9211 does not define.
    """
    members = [sfTokenOrString(name)]
    if hit:
        members.append(b"hit")
    if fwd is not None:
        if fwd not in _FWD_VALUES:
            raise ValueError(f"unknown fwd value {fwd!r}")
        members.append(b"fwd=" + fwd.encode("ascii"))
    if fwdStatus is not None:
        members.append(b"fwd-status=%d" % fwdStatus)
    if ttl is not None:
        bounded = max(-DELTA_SECONDS_MAX, min(DELTA_SECONDS_MAX, ttl))
        members.append(b"ttl=%d" % math.floor(bounded))
    if stored:
        members.append(b"stored")
    if collapsed:
        members.append(b"collapsed")
    if key is not None:
        members.append(b"key=" + sfString(key))
    if detail is not None:
        members.append(b"detail=" + sfTokenOrString(detail))
    return b"; ".join(members)
