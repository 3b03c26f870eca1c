# -*- test-case-name: tests.test_http -*-
"""
Header fields as they travel on the wire: ordered, repeatable, and looked up
without regard to case (RFC 9110 section 5).

Names and values are C{bytes} in ISO-8859-1, exactly as received; nothing in
this module does I/O or imports Twisted, and the clock is read only to place
the two-digit year of an obsolete RFC 850 date in its century.

Usage::

    h = Headers([(b"Host", b"example.com"), (b"Accept", b"*/*")])
    h.get(b"host")                      # b"example.com"
    h.add(b"Via", b"1.1 proxy")
    h.getList(b"cache-control")         # split on commas, quotes respected
"""

from __future__ import annotations

import calendar
import functools
import re
import time
from typing import Iterable, Iterator, List, Optional, Tuple

from .wire import fieldLines

__all__ = [
    "Headers",
    "HOP_BY_HOP",
    "NEVER_NOMINATED",
    "connectionOptions",
    "splitList",
    "parseHTTPDate",
    "formatHTTPDate",
]

#: Fields that describe one connection and never travel further
#: (RFC 9110 section 7.6.1), plus the historic Proxy-Connection and
#: Keep-Alive. Proxy-Authenticate and Proxy-Authorization are consumed by
#: the proxy that asked for them.
HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    ]
)


#: Fields that a Connection option may not nominate (RFC 9110 section
#: 7.6.1 lets a sender name more hop-by-hop fields, but these are the
#: framing of the message and the authority it is routed by). A proxy that
#: dropped a nominated Content-Length while forwarding its body would let
#: the body be read as a second request: such a nomination is ignored, and
#: the framing of every message sent is written from what was parsed.
NEVER_NOMINATED = frozenset([b"content-length", b"transfer-encoding", b"host"])


def connectionOptions(value: Optional[bytes]) -> frozenset:
    """
    The connection options of a (combined) Connection field value: the
    fields it nominates as hop-by-hop, lowercased, without the ones in
    L{NEVER_NOMINATED}.
    """
    if not value:
        return frozenset()
    return frozenset(t.lower() for t in splitList(value)) - NEVER_NOMINATED


_newObject = object.__new__


class Headers:
    """
    An ordered multi-map of header fields.

    @ivar _fields: C{[(lowercase name, name, value), ...]} in wire order.
    """

    __slots__ = ("_fields", "_index", "_scans")

    def __init__(self, fields: Iterable[Tuple[bytes, bytes]] = ()) -> None:
        self._fields: List[Tuple[bytes, bytes, bytes]] = [
            (name.lower(), name, value) for name, value in fields
        ]
        #: lowercase name -> values, built by the first lookup and dropped
        #: by any change (stored heads are looked up many times, rarely
        #: changed)
        self._index: Optional[dict] = None
        self._scans = 0

    def _values(self, lower: bytes) -> List[bytes]:
        index = self._index
        if index is None:
            # A head looked at only a few times is scanned; one looked at
            # again and again (a stored response) gets an index.
            scans = self._scans
            if scans < 4:
                self._scans = scans + 1
                return [f[2] for f in self._fields if f[0] == lower]
            index = {}
            for name, _, value in self._fields:
                found = index.get(name)
                if found is None:
                    index[name] = [value]
                else:
                    found.append(value)
            self._index = index
        return index.get(lower, _NONE)

    @classmethod
    def fromLowered(cls, fields: List[Tuple[bytes, bytes, bytes]]) -> "Headers":
        """
        Adopt C{[(lowercase name, name, value), ...]} as it is (the parser
        lowers each name once as it reads it).
        """
        new = _newObject(cls)
        new._fields = fields
        new._index = None
        new._scans = 0
        return new

    def lowered(self) -> List[Tuple[bytes, bytes, bytes]]:
        """
        @return: the C{(lowercase name, name, value)} triples, in order: the
            list itself, which the caller may extend.
        """
        self._index = None
        return self._fields

    def __repr__(self) -> str:
        return f"Headers({[(n, v) for _, n, v in self._fields]!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return list(self.items()) == list(other.items())

    def __len__(self) -> int:
        return len(self._fields)

    def __contains__(self, name: bytes) -> bool:
        if self._index is None and self._scans < 4:
            # (a few looks at a head: a scan, as in _values, without a list)
            self._scans += 1
            lower = name.lower()
            for field in self._fields:
                if field[0] == lower:
                    return True
            return False
        return bool(self._values(name.lower()))

    def __iter__(self) -> Iterator[Tuple[bytes, bytes]]:
        return self.items()

    def items(self) -> Iterator[Tuple[bytes, bytes]]:
        """
        @return: C{(name, value)} pairs in wire order, repeats included.
        """
        for _, name, value in self._fields:
            yield name, value

    def copy(self) -> "Headers":
        new = Headers()
        new._fields = list(self._fields)
        return new

    def add(self, name: bytes, value: bytes) -> None:
        """
        Append a field, keeping any existing field of the same name.
        """
        self._fields.append((name.lower(), name, value))
        self._index = None

    def set(self, name: bytes, value: bytes) -> None:
        """
        Replace every field called C{name} with one field, kept at the
        position of the first one it replaces (or appended).
        """
        lower = name.lower()
        out = []
        placed = False
        for field in self._fields:
            if field[0] == lower:
                if not placed:
                    out.append((lower, name, value))
                    placed = True
            else:
                out.append(field)
        if not placed:
            out.append((lower, name, value))
        self._fields = out
        self._index = None

    def remove(self, name: bytes) -> bool:
        """
        Remove every field called C{name}.

        @return: whether anything was removed.
        """
        lower = name.lower()
        before = len(self._fields)
        self._fields = [f for f in self._fields if f[0] != lower]
        self._index = None
        return len(self._fields) != before

    def removeMany(self, names: "frozenset[bytes] | set[bytes]") -> None:
        """
        Remove every field whose lowercase name is in C{names}.
        """
        self._fields = [f for f in self._fields if f[0] not in names]
        self._index = None

    def hasAny(self, names: "frozenset[bytes]") -> bool:
        """
        @return: whether any field's lowercase name is in C{names}.
        """
        for field in self._fields:
            if field[0] in names:
                return True
        return False

    def get(self, name: bytes, default: Optional[bytes] = None) -> Optional[bytes]:
        """
        @return: the value of the first field called C{name}, or C{default}.
        """
        if self._index is None and self._scans < 4:
            # (a few looks at a head: a scan, as in _values, without a list)
            self._scans += 1
            lower = name.lower()
            for field in self._fields:
                if field[0] == lower:
                    return field[2]
            return default
        values = self._values(name.lower())
        return values[0] if values else default

    def firstOfTwo(self, first: bytes, second: bytes) -> Tuple[Optional[bytes], Optional[bytes]]:
        """
        The first values of two fields in one pass (the access log's
        Referer and User-Agent, read for every request).

        @param first: a lowercase field name.
        @param second: another lowercase field name.
        @return: C{(value of first or None, value of second or None)}.
        """
        one = two = None
        for lower, _, value in self._fields:
            if lower == first:
                if one is None:
                    one = value
            elif lower == second:
                if two is None:
                    two = value
        return one, two

    def getAll(self, name: bytes) -> List[bytes]:
        """
        @return: the values of every field called C{name}, in order.
        """
        return list(self._values(name.lower()))

    def getCombined(self, name: bytes) -> Optional[bytes]:
        """
        @return: every field called C{name} joined by C{b", "} as RFC 9110
            section 5.3 allows for list-based fields, or C{None} if absent.
        """
        values = self._values(name.lower())
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        return b", ".join(values)

    def getList(self, name: bytes) -> List[bytes]:
        """
        @return: the members of a list-based field (RFC 9110 section 5.6.1)
            across every field line called C{name}, empty members dropped.
        """
        out: List[bytes] = []
        for value in self._values(name.lower()):
            out.extend(splitList(value))
        return out

    def hasToken(self, name: bytes, token: bytes) -> bool:
        """
        @return: whether the list-based field C{name} contains C{token},
            compared without regard to case.
        """
        token = token.lower()
        return any(m.lower() == token for m in self.getList(name))

    def toWire(self) -> bytes:
        """
        @return: the field lines, each ended by CRLF (no final blank line).
        """
        return fieldLines(self._fields)


_NONE: List[bytes] = []


def splitList(value: bytes) -> List[bytes]:
    """
    Split one list-based field value on commas that are outside quoted
    strings (RFC 9110 section 5.6.1), trimming optional whitespace and
    dropping empty members.
    """
    if b'"' not in value:
        return [m for m in (p.strip(b" \t") for p in value.split(b",")) if m]
    members: List[bytes] = []
    current = bytearray()
    quoted = False
    escaped = False
    for byte in value:
        ch = bytes((byte,))
        if quoted:
            current += ch
            if escaped:
                escaped = False
            elif ch == b"\\":
                escaped = True
            elif ch == b'"':
                quoted = False
        elif ch == b'"':
            quoted = True
            current += ch
        elif ch == b",":
            member = bytes(current).strip(b" \t")
            if member:
                members.append(member)
            current = bytearray()
        else:
            current += ch
    member = bytes(current).strip(b" \t")
    if member:
        members.append(member)
    return members


_DAY = rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTH = rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = rb"([0-9]{2}):([0-9]{2}):([0-9]{2})"

#: The three forms of RFC 9110 section 5.6.7, exactly: case-sensitive
#: names, single spaces (asctime pads a one-digit day with a second one),
#: GMT and no other zone. Groups: day, month, year, hour, minute, second.
_IMF_FIXDATE = re.compile(
    _DAY + rb", ([0-9]{2}) " + _MONTH + rb" ([0-9]{4}) " + _TIME + rb" GMT"
)
_RFC850_DATE = re.compile(
    rb"(Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
    rb"([0-9]{2})-" + _MONTH + rb"-([0-9]{2}) " + _TIME + rb" GMT"
)
#: Groups: month, day, hour, minute, second, year.
_ASCTIME_DATE = re.compile(
    _DAY + rb" " + _MONTH + rb" ([0-9]{2}| [0-9]) " + _TIME + rb" ([0-9]{4})"
)

_MONTH_NUMBERS = {
    name: number for number, name in enumerate(
        [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
         b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"], 1)
}


def parseHTTPDate(
    value: Optional[bytes], now: Optional[float] = None
) -> Optional[float]:
    """
    Parse an HTTP-date (see L{_parseHTTPDate}).

    @param now: the time at which the two-digit year of an RFC 850 date is
        placed in a century; when not given, the clock's, and the result
        is remembered, as the dates of stored responses are read again on
        every hit.
    """
    if not value:
        return None
    if now is not None:
        return _parseHTTPDate(value, now)
    return _rememberedHTTPDate(value)


@functools.lru_cache(maxsize=4096)
def _rememberedHTTPDate(value: bytes) -> Optional[float]:
    """
    L{_parseHTTPDate} at the clock's time (which matters only to the
    century of an RFC 850 year), remembered.
    """
    return _parseHTTPDate(value, time.time())


def _parseHTTPDate(value: bytes, now: float) -> Optional[float]:
    """
    Parse an HTTP-date (RFC 9110 section 5.6.7): IMF-fixdate, and the
    obsolete RFC 850 and asctime forms a recipient must accept, exactly as
    the grammar has them. Anything else is invalid: another zone than GMT,
    a two-digit year outside the RFC 850 form, a missing comma, extra
    spaces, other separators, names in another case or spelling, fields
    out of range (a leap second, C{60}, is allowed). The day name is not
    compared with the date: the grammar does not ask for it.

    @param now: see L{parseHTTPDate}.
    @return: seconds since the epoch, or C{None} if C{value} is not a
        valid date.
    """
    # Whitespace around a field value is not part of it (RFC 9110 5.5).
    value = value.strip(b" \t")
    if value[3:4] == b",":
        match = _IMF_FIXDATE.fullmatch(value)
        if match is None:
            return None
        _, day, month, year, hour, minute, second = match.groups()
        yearNumber = int(year)
    elif value[3:4] == b" ":
        match = _ASCTIME_DATE.fullmatch(value)
        if match is None:
            return None
        _, month, day, hour, minute, second, year = match.groups()
        yearNumber = int(year)
    else:
        match = _RFC850_DATE.fullmatch(value)
        if match is None:
            return None
        _, day, month, year, hour, minute, second = match.groups()
        # RFC 9110 5.6.7: a year more than 50 years in the future is the
        # most recent past year with the same last two digits; so the
        # year is the one with those digits in the hundred years that end
        # fifty years from now.
        thisYear = time.gmtime(now).tm_year
        yearNumber = thisYear - thisYear % 100 + int(year)
        if yearNumber > thisYear + 50:
            yearNumber -= 100
        elif yearNumber <= thisYear - 50:
            yearNumber += 100
    monthNumber = _MONTH_NUMBERS[month]
    dayNumber = int(day)
    hourNumber = int(hour)
    minuteNumber = int(minute)
    secondNumber = int(second)
    if (
        yearNumber < 1
        or not 1 <= dayNumber <= calendar.monthrange(yearNumber, monthNumber)[1]
        or hourNumber > 23
        or minuteNumber > 59
        or secondNumber > 60
    ):
        return None
    return float(calendar.timegm(
        (yearNumber, monthNumber, dayNumber,
         hourNumber, minuteNumber, secondNumber)
    ))


_WEEKDAYS = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"]
_MONTHS = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
    b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
]


def formatHTTPDate(when: float) -> bytes:
    """
    @return: C{when} (seconds since the epoch) as an IMF-fixdate.
    """
    t = time.gmtime(when)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _WEEKDAYS[t.tm_wday],
        t.tm_mday,
        _MONTHS[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )
