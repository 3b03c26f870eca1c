# -*- test-case-name: tests.test_fields -*-
"""
Parsers (and two serialisers) of the field values HTTP caching reads:
Cache-Control and its targeted variants, delta-seconds, entity tags,
Range and Content-Range, the list values Vary compares, and Structured
Fields strings for Cache-Status. Pure: no I/O, no clock, no Twisted.

Each parser is lenient where the RFC asks for it and never raises: what
cannot be read comes back as C{None} (or an empty L{CacheControl}), and the
caller (L{cachingproxy.cache.policy}) decides what that means. Usage::

    cc = parseCacheControl(response.headers)     # CacheControl(maxAge=60, ...)
    cc.noStore, cc.get(b"community")             # flags, extensions
    parseRange(b"bytes=0-99", 1000)              # [(0, 99)]
    strongMatch(parseETag(b'"a"'), etagOf(stored.headers))

Section numbers are RFC 9111's unless another document is named.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple, Union

from .headers import Headers, splitList
from .structured import Directives, parseTargetedDirectives

__all__ = [
    "CacheControl",
    "DELTA_SECONDS_MAX",
    "Directives",
    "ETag",
    "RangeResult",
    "UNSATISFIABLE",
    "contentRange",
    "deltaSeconds",
    "etagOf",
    "normalizedFieldValue",
    "parseCacheControl",
    "parseETag",
    "parseRange",
    "parseTargetedCacheControl",
    "requestCacheControl",
    "sfString",
    "sfTokenOrString",
    "strongMatch",
    "weakMatch",
]


#: The largest delta-seconds value kept: a bigger one, or an overflow, is
#: taken as 2^31 (section 1.2.2), and Age is capped at it (section 5.1).
DELTA_SECONDS_MAX = 2**31


# ---------------------------------------------------------------------------
# Cache-Control (section 5.2) and targeted cache-control fields (RFC 9213)


@dataclass(frozen=True)
class CacheControl:
    """
    The cache directives of one message (section 5.2), request or response.

    Delta-seconds directives are C{None} when absent. Choices where the RFC
    leaves room (section 4.2.1 lets a cache use the first occurrence or
    treat the response as stale, and asks to honour the most restrictive of
    conflicting directives):

      - an invalid or missing delta-seconds argument counts as C{0}
        (section 4.2.1 encourages treating invalid freshness as stale);
      - a repeated delta-seconds directive keeps its most restrictive value:
        the smallest, except C{min-fresh} where the largest;
      - a value over 2^31 is taken as 2^31 (section 1.2.2);
      - C{no-cache} and C{private} with a field-name list set
        L{noCacheFields} / L{privateFields}; without an argument, or with
        an empty one, they set L{noCache} / L{private} (the unqualified
        form is the more restrictive and wins when both appear).

    @ivar directives: every C{(name, argument)} in order, names in lower
        case, quoted arguments unquoted; extensions are read from here.
    @ivar maxStale: C{math.inf} for C{max-stale} without an argument
        (section 5.2.1.2).
    """

    directives: Directives = ()
    maxAge: Optional[int] = None
    sMaxAge: Optional[int] = None
    maxStale: Optional[float] = None
    minFresh: Optional[int] = None
    staleWhileRevalidate: Optional[int] = None
    staleIfError: Optional[int] = None
    noCache: bool = False
    noCacheFields: FrozenSet[bytes] = frozenset()
    noStore: bool = False
    noTransform: bool = False
    onlyIfCached: bool = False
    mustRevalidate: bool = False
    proxyRevalidate: bool = False
    mustUnderstand: bool = False
    public: bool = False
    private: bool = False
    privateFields: FrozenSet[bytes] = frozenset()

    def __contains__(self, name: bytes) -> bool:
        name = name.lower()
        return any(n == name for n, _ in self.directives)

    def get(self, name: bytes) -> Optional[bytes]:
        """
        @return: the argument of the first directive called C{name} (e.g.
            an extension), or C{None} if it is absent or has no argument.
        """
        name = name.lower()
        for n, value in self.directives:
            if n == name:
                return value
        return None


#: delta-seconds directives: attribute name and how repeats combine.
_DELTA_DIRECTIVES: Dict[bytes, Tuple[str, Callable[[float, float], float]]] = {
    b"max-age": ("maxAge", min),
    b"s-maxage": ("sMaxAge", min),
    b"max-stale": ("maxStale", min),
    b"min-fresh": ("minFresh", max),
    b"stale-while-revalidate": ("staleWhileRevalidate", min),
    b"stale-if-error": ("staleIfError", min),
}

_FLAG_DIRECTIVES = {
    b"no-store": "noStore",
    b"no-transform": "noTransform",
    b"only-if-cached": "onlyIfCached",
    b"must-revalidate": "mustRevalidate",
    b"proxy-revalidate": "proxyRevalidate",
    b"must-understand": "mustUnderstand",
    b"public": "public",
}

_LIST_DIRECTIVES = {
    b"no-cache": ("noCache", "noCacheFields"),
    b"private": ("private", "privateFields"),
}


def deltaSeconds(value: Optional[bytes]) -> Optional[int]:
    """
    Parse delta-seconds (section 1.2.2): one or more digits, capped at
    L{DELTA_SECONDS_MAX}.

    @return: the number, or C{None} if C{value} is not delta-seconds.
    """
    if not value or not value.isdigit():
        return None
    if len(value) > 10:
        return DELTA_SECONDS_MAX
    return min(int(value), DELTA_SECONDS_MAX)


def _buildCacheControl(directives: Directives) -> CacheControl:
    """
    Give meaning to parsed C{(name, argument)} pairs; see L{CacheControl}
    for the choices made.
    """
    values: Dict[str, object] = {}
    for name, argument in directives:
        if name in _DELTA_DIRECTIVES:
            attribute, combine = _DELTA_DIRECTIVES[name]
            seconds: float
            if name == b"max-stale" and argument is None:
                # 5.2.1.2: without a value, a stale response of any age.
                seconds = math.inf
            else:
                seconds = deltaSeconds(argument) or 0
            if attribute in values:
                seconds = combine(values[attribute], seconds)  # type: ignore
            values[attribute] = seconds
        elif name in _FLAG_DIRECTIVES:
            values[_FLAG_DIRECTIVES[name]] = True
        elif name in _LIST_DIRECTIVES:
            flag, fieldsAttribute = _LIST_DIRECTIVES[name]
            names = frozenset(
                m.lower() for m in splitList(argument or b"")
            )
            if names:
                values[fieldsAttribute] = (
                    values.get(fieldsAttribute, frozenset()) | names  # type: ignore
                )
            else:
                values[flag] = True
    return CacheControl(directives=directives, **values)  # type: ignore


def _unquote(value: bytes) -> bytes:
    """
    Undo a quoted-string (RFC 9110 section 5.6.4), leniently: a missing
    closing quote takes the rest of the value.
    """
    out = bytearray()
    escaped = False
    for byte in value[1:]:
        if escaped:
            out.append(byte)
            escaped = False
        elif byte == 0x5C:  # backslash
            escaped = True
        elif byte == 0x22:  # closing quote
            break
        else:
            out.append(byte)
    return bytes(out)


def _parseDirectives(value: bytes) -> Directives:
    """
    Split a Cache-Control value into C{(name, argument)} pairs (section
    5.2): names compared case-insensitively, arguments as token or
    quoted-string, odd whitespace around C{=} tolerated, empty members
    skipped. Never raises.
    """
    pairs = []
    for member in splitList(value):
        name, equals, argument = member.partition(b"=")
        name = name.strip(b" \t").lower()
        if not name:
            continue
        if not equals:
            pairs.append((name, None))
            continue
        argument = argument.strip(b" \t")
        if argument.startswith(b'"'):
            argument = _unquote(argument)
        pairs.append((name, argument))
    return tuple(pairs)


_EMPTY_CACHE_CONTROL = CacheControl()


def parseCacheControl(
    headers: Headers, fieldName: bytes = b"cache-control"
) -> CacheControl:
    """
    Parse every C{fieldName} line of C{headers} as Cache-Control syntax
    (sections 5.2 and 4.2.1), leniently: this never raises.

    @return: the L{CacheControl}; an empty one if the field is absent.
    """
    combined = headers.getCombined(fieldName)
    if combined is None:
        return _EMPTY_CACHE_CONTROL
    return _cacheControlOf(combined)


@functools.lru_cache(maxsize=4096)
def _cacheControlOf(value: bytes) -> CacheControl:
    """
    The (frozen) parse of one combined Cache-Control value, remembered:
    a stored response's value is parsed again on every hit otherwise.
    """
    return _buildCacheControl(_parseDirectives(value))


def requestCacheControl(requestHeaders: Headers) -> CacheControl:
    """
    The request directives (section 5.2.1), with C{Pragma: no-cache} taken
    as C{Cache-Control: no-cache} only when Cache-Control is absent
    (section 5.4).
    """
    if b"cache-control" in requestHeaders:
        return parseCacheControl(requestHeaders)
    if b"pragma" in requestHeaders and requestHeaders.hasToken(b"pragma", b"no-cache"):
        return CacheControl(directives=((b"no-cache", None),), noCache=True)
    return _EMPTY_CACHE_CONTROL


def parseTargetedCacheControl(
    headers: Headers, fieldName: bytes
) -> Optional[CacheControl]:
    """
    Parse a targeted cache-control field such as CDN-Cache-Control (RFC
    9213 section 2.1) strictly, as a Structured Fields Dictionary whose
    known directives have the types section 2.1 infers (see
    L{cachingproxy.http.structured.parseTargetedDirectives}).

    @return: the L{CacheControl}, or C{None} when the field is absent,
        empty, does not parse or has a directive of the wrong type (RFC
        9213 section 2.1: such a field is ignored, as if absent).
    """
    combined = headers.getCombined(fieldName)
    if combined is None:
        return None
    return _targetedCacheControlOf(combined)


@functools.lru_cache(maxsize=4096)
def _targetedCacheControlOf(value: bytes) -> Optional[CacheControl]:
    """
    The parse of one combined targeted field value, remembered like
    L{_cacheControlOf}: a stored response's value is read on every hit.
    """
    directives = parseTargetedDirectives(value)
    if directives is None:
        return None
    return _buildCacheControl(directives)


# ---------------------------------------------------------------------------
# List-based field values, as Vary compares them (section 4.1)


#: Request fields whose values are lists of case-insensitive tokens, each
#: with parameters and an optional weight (RFC 9110 sections 12.5.1 to
#: 12.5.4): L{normalizedFieldValue} normalises them further, so that requests
#: the origin cannot tell apart select the same variant (section 4.1).
_NEGOTIATION_FIELDS = frozenset(
    [b"accept", b"accept-charset", b"accept-encoding", b"accept-language"]
)

#: qvalue (RFC 9110 section 12.4.2).
_QVALUE = re.compile(rb"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\Z")


def _normalizedWeight(value: bytes) -> Optional[bytes]:
    """
    A qvalue in its shortest form (C{0.500} is C{0.5}, C{1.0} is C{1}),
    or C{None} if C{value} is not a qvalue.
    """
    if not _QVALUE.match(value):
        return None
    if b"." in value:
        value = value.rstrip(b"0").rstrip(b".")
    return value


def _normalizedMember(member: bytes) -> bytes:
    """
    One member of a negotiation field in a canonical form: the value and
    the parameter names in lower case (RFC 9110 sections 8.3.1, 8.3.2,
    8.4.1 and RFC 4647 section 2 make them case-insensitive, and so is a
    C{charset} value), no whitespace around C{;} and C{=}, the weight in
    its shortest form and left out when it is 1, the default (RFC 9110
    section 12.4.2). Parameters keep their order; a member with a quoted
    string, or an invalid weight, keeps its text.
    """
    if b'"' in member:
        return member
    pieces = member.split(b";")
    out = [pieces[0].strip(b" \t").lower()]
    for piece in pieces[1:]:
        name, equals, value = piece.partition(b"=")
        name = name.strip(b" \t").lower()
        value = value.strip(b" \t")
        if not name:
            continue
        if name == b"q" and equals:
            weight = _normalizedWeight(value)
            if weight == b"1":
                continue
            if weight is not None:
                value = weight
        elif name == b"charset":
            value = value.lower()
        out.append(name + equals + value)
    return b";".join(out)


@functools.lru_cache(maxsize=4096)
def normalizedFieldValue(name: bytes, value: bytes) -> bytes:
    """
    The normalised form of the combined value of field C{name}, remembered
    per raw value: it is worked out for every stored variant a request is
    compared with.

    Every list-based field loses the whitespace around commas and its
    empty members (section 4.1). The negotiation fields
    (L{_NEGOTIATION_FIELDS}) go further: their members are normalised by
    L{_normalizedMember} and sorted, since their order carries no meaning
    (preference is said by weights, RFC 9110 section 12.4.2), each weight
    staying with its member.
    """
    members = splitList(value)
    if name in _NEGOTIATION_FIELDS:
        members = sorted(_normalizedMember(m) for m in members)
    return b", ".join(members)


# ---------------------------------------------------------------------------
# Content-Range and Range (RFC 9110 section 14)


#: A Content-Range for one part (RFC 9110 section 14.4): the unit is
#: case-insensitive, the complete length must be known here.
_CONTENT_RANGE = re.compile(rb"[ \t]*bytes[ \t]+(\d+)-(\d+)/(\d+)[ \t]*\Z", re.IGNORECASE)


def contentRange(headers: Headers) -> Optional[Tuple[int, int, int]]:
    """
    Parse a Content-Range that describes one part of a representation of
    known length (RFC 9110 section 14.4).

    @return: C{(start, end, completeLength)}, C{end} exclusive, or C{None}
        when the field is absent, repeated, unsatisfied (C{*/length}), of
        unknown length (C{/*}), invalid (last before first, or past the
        complete length), or for another unit.
    """
    values = headers.getAll(b"content-range")
    if len(values) != 1:
        return None
    match = _CONTENT_RANGE.match(values[0])
    if match is None:
        return None
    first, last, complete = (int(g) for g in match.groups())
    if first > last or last >= complete:
        return None
    return first, last + 1, complete


#: The value L{parseRange} returns when no range overlaps the
#: representation: answer 416 (RFC 9110 section 15.5.17).
UNSATISFIABLE = "unsatisfiable"

RangeResult = Union[None, str, List[Tuple[int, int]]]


def parseRange(value: bytes, length: int, maxRanges: int = 16) -> RangeResult:
    """
    Parse a Range field (RFC 9110 section 14.1.2) for a representation of
    C{length} octets.

    @return: C{None} to ignore the field and send everything (a unit other
        than bytes, invalid syntax, more than C{maxRanges} ranges, or
        C{length} 0), L{UNSATISFIABLE} when no range overlaps (answer
        416), else the satisfiable ranges as inclusive C{(first, last)}
        pairs clipped to the representation, in request order.
    """
    unit, equals, specs = value.partition(b"=")
    if not equals or unit.strip(b" \t").lower() != b"bytes" or length <= 0:
        return None
    members = splitList(specs)
    if not members or len(members) > maxRanges:
        return None
    ranges = []
    for member in members:
        first, dash, last = member.partition(b"-")
        if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
            return None
        if not first:
            if not last:
                return None
            suffix = int(last)
            if suffix > 0:  # a zero suffix-length is unsatisfiable
                ranges.append((max(0, length - suffix), length - 1))
            continue
        start = int(first)
        if last and int(last) < start:
            return None  # invalid: the whole field is ignored
        if start < length:
            end = int(last) if last else length - 1
            ranges.append((start, min(end, length - 1)))
    if not ranges:
        return UNSATISFIABLE
    return ranges


# ---------------------------------------------------------------------------
# Entity tags (RFC 9110 section 8.8.3)


@dataclass(frozen=True)
class ETag:
    """
    One entity-tag: C{opaque} is the text between the quotes.
    """

    weak: bool
    opaque: bytes


def parseETag(value: Optional[bytes]) -> Optional[ETag]:
    """
    Parse an entity-tag (RFC 9110 section 8.8.3), or C{None}.
    """
    if value is None:
        return None
    value = value.strip(b" \t")
    weak = value.startswith(b"W/")
    if weak:
        value = value[2:]
    if len(value) < 2 or value[:1] != b'"' or value[-1:] != b'"':
        return None
    opaque = value[1:-1]
    if b'"' in opaque:
        return None
    return ETag(weak, opaque)


def strongMatch(a: Optional[ETag], b: Optional[ETag]) -> bool:
    """
    Strong comparison (RFC 9110 section 8.8.3.2): neither weak, same tag.
    """
    return (a is not None and b is not None and not a.weak and not b.weak
            and a.opaque == b.opaque)


def weakMatch(a: Optional[ETag], b: Optional[ETag]) -> bool:
    """
    Weak comparison (RFC 9110 section 8.8.3.2): same tag, weak or not.
    """
    return a is not None and b is not None and a.opaque == b.opaque


def etagOf(headers: Headers) -> Optional[ETag]:
    """
    The ETag of a response, or C{None} when absent or invalid.
    """
    return parseETag(headers.get(b"etag"))


# ---------------------------------------------------------------------------
# Structured Fields serialisation (RFC 8941), for Cache-Status (RFC 9211)


_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                   b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def sfString(value: bytes) -> bytes:
    """
    Serialise a Structured Fields String (RFC 8941 section 4.1.6),
    dropping characters it cannot hold.
    """
    cleaned = bytes(c for c in value if 0x20 <= c <= 0x7E)
    return b'"' + cleaned.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def sfTokenOrString(value: bytes) -> bytes:
    """
    Serialise C{value} as a Structured Fields Token when it is one (RFC
    8941 section 4.1.7), else as a String.
    """
    if value and (value[:1].isalpha() or value[:1] == b"*") and all(
        c in _TCHAR or c in b":/" for c in value
    ):
        return value
    return sfString(value)
