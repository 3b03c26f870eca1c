# -*- test-case-name: tests.test_rules -*-
"""
Header rules an operator sets: fields added, set or removed on requests
going upstream and on responses going to clients (nginx's C{add_header} and
C{proxy_set_header}, Varnish's header edits).

Request rules apply before a request is forwarded (and before the cache
looks it up, so a field a rule adds takes part in Vary matching); response
rules apply after every caching decision, to what the client receives, and
never to what is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

__all__ = ["HeaderRules", "parseField"]

_TCHAR = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def parseField(text: str) -> Tuple[bytes, bytes]:
    """
    Parse C{"Name: value"}.

    @raise ValueError: if the name is not a token or the value holds
        control characters.
    """
    name, colon, value = text.partition(":")
    raw = name.strip().encode("latin-1", "replace")
    if not colon or not raw or not all(b in _TCHAR for b in raw):
        raise ValueError(f"expected 'Name: value', got {text!r}")
    data = value.strip().encode("latin-1", "replace")
    if any(b < 0x20 and b != 0x09 or b == 0x7F for b in data):
        raise ValueError(f"control character in the value of {text!r}")
    return raw, data


def parseName(text: str) -> bytes:
    """
    Parse a field name.

    @raise ValueError: if it is not a token.
    """
    raw = text.strip().encode("latin-1", "replace")
    if not raw or not all(b in _TCHAR for b in raw):
        raise ValueError(f"expected a field name, got {text!r}")
    return raw


@dataclass(frozen=True)
class HeaderRules:
    """
    @ivar add: fields appended (after any of the same name).
    @ivar set: fields that replace every field of their name.
    @ivar remove: lowercase names of fields removed.
    """

    add: Tuple[Tuple[bytes, bytes], ...] = ()
    set: Tuple[Tuple[bytes, bytes], ...] = ()
    remove: Tuple[bytes, ...] = ()

    @classmethod
    def parse(cls, add: Sequence[str] = (), set: Sequence[str] = (),
              remove: Sequence[str] = ()) -> "HeaderRules":
        """
        @raise ValueError: for a malformed rule.
        """
        return cls(
            add=tuple(parseField(t) for t in add),
            set=tuple(parseField(t) for t in set),
            remove=tuple(parseName(t).lower() for t in remove),
        )

    def __bool__(self) -> bool:
        return bool(self.add or self.set or self.remove)

    def apply(self, fields: List[Tuple[bytes, bytes, bytes]]) -> List[Tuple[bytes, bytes, bytes]]:
        """
        @param fields: C{(lowercase name, name, value)} triples.
        @return: the fields with the rules applied: removals first, then
            the set fields (replacing every field of their name, at the
            end), then the added ones.
        """
        drop = set(self.remove) | {name.lower() for name, _ in self.set}
        out = [f for f in fields if f[0] not in drop]
        for name, value in self.set:
            out.append((name.lower(), name, value))
        for name, value in self.add:
            out.append((name.lower(), name, value))
        return out
