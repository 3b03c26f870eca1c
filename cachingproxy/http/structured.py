# -*- test-case-name: tests.test_policy -*-
"""
Targeted cache-control fields such as CDN-Cache-Control (RFC 9213 section
2.1): Structured Field Dictionaries (RFC 9651, which replaced RFC 8941),
parsed by http-sfv, whose members are cache response directives.

Usage::

    parseTargetedDirectives(b"max-age=600, no-cache=\\"set-cookie\\"")
    # ((b"max-age", b"600"), (b"no-cache", b"set-cookie"))
    parseTargetedDirectives(b"max-age=\\"600\\"")   # None: ignore the field
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from http_sfv import Dictionary, InnerList
from http_sfv.item import ser_bare_item

__all__ = ["DIRECTIVE_TYPES", "parseTargetedDirectives"]

#: An Integer of zero or more: the delta-seconds of RFC 9111 section 1.2.2.
INTEGER = "integer"
#: Boolean true only: a directive without argument (RFC 9213 section 2.1:
#: "no-store ... always has a Boolean true value").
TRUE = "true"
#: Boolean true, or a String holding a comma-separated list of field names
#: (RFC 9213 section 2.1, for no-cache; RFC 9111 section 5.2.2.7 gives
#: private the same two forms).
TRUE_OR_STRING = "true or string"

#: The type each known response directive must have in a targeted field.
#: RFC 9213 section 2.1 infers them from RFC 9111 section 5.2 and says
#: values that violate them should not be consumed. Other directives
#: (extensions) may have any type.
DIRECTIVE_TYPES: Dict[bytes, str] = {
    b"max-age": INTEGER,
    b"s-maxage": INTEGER,
    b"stale-while-revalidate": INTEGER,  # RFC 5861 section 3
    b"stale-if-error": INTEGER,  # RFC 5861 section 4
    b"no-store": TRUE,
    b"no-transform": TRUE,
    b"must-revalidate": TRUE,
    b"proxy-revalidate": TRUE,
    b"must-understand": TRUE,
    b"public": TRUE,
    b"immutable": TRUE,  # RFC 8246
    b"no-cache": TRUE_OR_STRING,
    b"private": TRUE_OR_STRING,
}

Directives = Tuple[Tuple[bytes, Optional[bytes]], ...]


def _fits(kind: Optional[str], value: object) -> bool:
    """
    @return: whether C{value}, a parsed bare item, has the type C{kind}
        asks for (C{None}: any type). Booleans are C{int}s in Python, and
        Tokens are C{str}s, hence the exact type checks.
    """
    if kind is None:
        return True
    if kind == INTEGER:
        return type(value) is int and value >= 0  # type: ignore[operator]
    if kind == TRUE:
        return value is True
    return value is True or type(value) is str


def parseTargetedDirectives(value: bytes) -> Optional[Directives]:
    """
    Parse a targeted field value (every line of it, joined by commas) as
    RFC 9213 section 2.1 asks: strictly, as a Dictionary.

    Each member becomes a C{(name, argument)} pair as Cache-Control would
    give it: Boolean true is a directive without argument, an Integer its
    digits, a String, Token or Display String its text, other Items their
    serialised form; Boolean false leaves an extension directive out; an
    Inner List is an empty argument (only extensions may have one, and
    none is read). Parameters are ignored.

    @return: the pairs, in order, or C{None} when the field must be
        ignored as a whole: empty, not a valid Dictionary, or with a known
        directive of the wrong type (L{DIRECTIVE_TYPES}; e.g.
        C{max-age="60"}, C{max-age=1.5} or C{no-store=?0}).
    """
    value = value.strip(b" \t")
    if not value:
        return None
    members = Dictionary()
    try:
        members.parse(value)
    except ValueError:
        return None
    pairs = []
    # Dictionary is a UserDict: its documented .data is the plain dict,
    # several times quicker to walk than the Mapping views.
    for key, member in members.data.items():
        name = key.encode("ascii")
        kind = DIRECTIVE_TYPES.get(name)
        if isinstance(member, InnerList):
            if kind is not None:
                return None
            pairs.append((name, b""))
            continue
        item = member.value
        if not _fits(kind, item):
            return None
        if item is True:
            pairs.append((name, None))
        elif item is False:
            continue
        elif type(item) is int:
            pairs.append((name, b"%d" % item))
        elif isinstance(item, str):
            pairs.append((name, item.encode("utf-8")))
        else:
            pairs.append((name, ser_bare_item(item).encode("ascii")))
    return tuple(pairs)
