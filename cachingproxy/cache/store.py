# -*- test-case-name: tests.test_cache_store -*-
"""
What a cache store is: a small key-based interface with no HTTP rules in it.

An entry is one stored response (one variant of one URL): the
L{cachingproxy.cache.policy.StoredEntry} the policy reads (its C{id} is the
store's handle), plus the body.

An entry may be an incomplete response (RFC 9111 section 3.3): its
C{ranges} and C{completeLength} say which bytes of the representation it
holds, and its body is those ranges one after the other. A store keeps it
like any other entry (the same visibility and replacement rules) and
returns both attributes as they were committed or updated; what it may
answer is the policy's business.

Entries are grouped by primary key (the URL, L{cachingproxy.cache.policy.primaryKey})
and told apart by variant key (L{cachingproxy.cache.policy.secondaryKey}: C{b""}
when the response has no Vary).

The rules every backend keeps:

  - an entry becomes visible only when L{IEntryWriter.commit} succeeds; a
    writer that is aborted, or whose process dies, leaves nothing visible;
  - a body read back is exactly the body that was committed, or the entry is
    treated as missing (and removed);
  - storing an entry with the same (primary key, variant key) replaces the
    old one, atomically for readers;
  - every process sharing a store sees the others' commits, updates and
    removals on its next lookup.

The calls are synchronous: local disk and memory are fast enough to be used
from the reactor thread in bounded pieces (bodies are read in chunks by a
producer), as C{twisted.web.static.File} does. The one call whose work
grows with the whole store, L{IStore.removePrefix}, returns a L{Deferred}.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Tuple

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface, implementer

__all__ = ["ABSENT", "Absent", "BytesReader", "IStore", "IEntryWriter", "IBodyReader", "StoreFull"]


class Absent:
    """
    The type of L{ABSENT}, the stamp of a key with nothing stored under
    it (see L{IStore.stamp}). There is one instance; it compares by
    identity.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"

    def __reduce__(self) -> str:
        return "ABSENT"


#: L{IStore.stamp} for a key with nothing stored.
ABSENT = Absent()


class StoreFull(Exception):
    """
    The store cannot take this body (over the object size limit, or no
    space left); the response is still served, uncached.
    """


class IBodyReader(Interface):
    """
    A stored body being read.
    """

    length = Attribute("The number of bytes this reader will return in all.")

    def read(size: int) -> bytes:
        """
        @return: up to C{size} next bytes; C{b""} at the end.
        @raise IOError: if the stored body turns out damaged (the entry is
            then removed by the store).
        """

    def close() -> None:
        """
        Release the file or buffer behind the reader.
        """


class IEntryWriter(Interface):
    """
    A new entry being written while its body streams to the client.
    """

    def write(data: bytes) -> None:
        """
        Add C{data} to the body.

        @raise StoreFull: when the body grows past what the store accepts;
            the writer is then aborted.
        """

    def commit(entry) -> bool:
        """
        Make the entry visible, with C{entry} (a
        L{cachingproxy.cache.policy.StoredEntry} whose C{bodyLength} must equal
        the bytes written) as its metadata.

        @return: whether it is now visible.
        """

    def abort() -> None:
        """
        Discard what was written; nothing becomes visible.
        """

    committedId = Attribute(
        "After a successful L{commit}: the C{id} the entry has in the store "
        "(what L{IStore.entries} would give it); C{None} before.")


class IStore(Interface):
    """
    Entries by primary key and variant key.
    """

    def entries(key: bytes) -> List[object]:
        """
        @return: the L{cachingproxy.cache.policy.StoredEntry} of every committed
            variant stored under primary key C{key} (any order).
        """

    def openBody(entry, start: int = 0, end: Optional[int] = None) -> Optional[IBodyReader]:
        """
        Read bytes C{start} to C{end} (exclusive; C{None} for the end) of
        C{entry}'s body.

        @return: a reader, or C{None} if the entry is gone or damaged (a
            damaged entry is removed).
        """

    def writer(key: bytes, variantKey: bytes) -> IEntryWriter:
        """
        Start writing a new entry.
        """

    def versions(key: bytes) -> Dict[bytes, object]:
        """
        What is stored under C{key}, cheaply: without decoding any
        metadata, C{{slot: version}} for each committed variant. A slot
        names the place of one variant key under C{key}; a version is a
        token that differs after the variant is replaced or updated (by any
        process sharing the store). A lookup: it counts as a use.
        """

    def load(key: bytes, slot: bytes) -> Optional[object]:
        """
        @return: the entry in C{slot} under C{key} (see L{versions}),
            decoded, or C{None} if it is gone or damaged.
        """

    def versionOf(entry) -> Optional[Tuple[bytes, object]]:
        """
        @return: C{(slot, version)} of C{entry} as it was read (from its
            C{id}, without I/O), or C{None} if C{entry} is not of this store.
        """

    def currentVersion(entry) -> Optional[object]:
        """
        @return: the version stored now in C{entry}'s slot, or C{None} if
            nothing is; not a use.
        """

    def update(entry) -> bool:
        """
        Replace the metadata of the stored entry C{entry.id} (after a 304 or
        a HEAD), keeping its body.

        @return: whether the entry still existed.
        """

    def remove(key: bytes) -> int:
        """
        Remove every variant stored under C{key}.

        @return: how many entries were removed.
        """

    def removePrefix(prefix: bytes) -> Deferred:
        """
        Remove every entry whose primary key starts with C{prefix}. A store
        that must walk much to find them does so in steps, off the
        reactor's way (other requests are served meanwhile).

        @return: a L{Deferred} firing with how many entries were removed.
        """

    def stamp(key: bytes) -> object:
        """
        A cheap token that differs after any change to C{key}'s variants
        made by any process sharing the store. A caller that remembers what
        a lookup found may use it again while the stamp read I{before} that
        lookup is unchanged.

        @return: the token; L{ABSENT} when nothing is stored under C{key}
            (a store that cannot tell cheaply returns a token instead); or
            C{None} when no token can be trusted now.
        """

    def stamper(key: bytes) -> Callable[[], object]:
        """
        @return: a function of no argument returning what L{stamp}C{(key)}
            would, for callers that check it on every hit (a store may
            make the repeated checks cheaper than L{stamp}).
        """

    def rescan(limit: Optional[int] = None) -> bool:
        """
        Housekeeping, called about once a minute: learn a bounded part
        (C{limit} entries; C{None} for all) of what other processes stored
        and bring the size accounting back under the limit. A store with
        nothing to learn returns C{True} at once.

        @return: whether a whole pass is complete.
        """

    def stats() -> dict:
        """
        @return: C{{"entries": n, "bytes": n, "limit": n, "evictions": n}}
            as far as this process knows.
        """

    def close() -> None:
        """
        Release everything (files, timers).
        """


@implementer(IBodyReader)
class BytesReader:
    """
    A body (or a range of it) already in memory.
    """

    __slots__ = ("_data", "_pos", "length")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self.length = len(data)

    def read(self, size: int) -> bytes:
        pos = self._pos
        if pos == 0 and size >= self.length:
            self._pos = self.length
            return self._data
        chunk = self._data[pos:pos + size]
        self._pos = pos + len(chunk)
        return chunk

    def close(self) -> None:
        self._data = b""
        self._pos = self.length


def variantsOf(store: IStore, keys: Iterable[bytes]) -> List[object]:
    """
    @return: the entries of every key in C{keys}.
    """
    found: List[object] = []
    for key in keys:
        found.extend(store.entries(key))
    return found
