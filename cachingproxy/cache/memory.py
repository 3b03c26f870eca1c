# -*- test-case-name: tests.test_cache_store -*-
"""
L{MemoryStore}: entries in one process's memory, a bounded LRU (also the
memory of L{cachingproxy.cache.tiered.TieredStore}).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from .store import BytesReader, IEntryWriter, IStore, StoreFull

__all__ = ["MemoryStore"]

log = Logger()

#: What a record costs beyond its body and header bytes (objects, dicts).
_OVERHEAD = 256


def _metaSize(key: bytes, variantKey: bytes, entry) -> int:
    size = _OVERHEAD + len(key) + len(variantKey) + len(entry.requestMethod)
    for fields in (entry.requestHeaders, entry.responseHeaders):
        for name, value in fields.items():
            size += len(name) + len(value) + 16
    return size


class _Record:
    """
    One stored entry; it is also the entry's C{id} in a plain
    L{MemoryStore}.

    @ivar live: whether the record is still the stored one (C{False} once
        replaced, removed or evicted).
    @ivar tag: what a L{cachingproxy.cache.tiered.TieredStore} knows of
        the stored entry this record mirrors: its C{(slot, version)}.
    """

    __slots__ = ("key", "variantKey", "entry", "body", "size", "live", "tag")

    def __init__(self, key: bytes, variantKey: bytes, body: bytes, tag) -> None:
        self.key = key
        self.variantKey = variantKey
        self.entry = None
        self.body = body
        self.size = 0
        self.live = True
        self.tag = tag

    def __repr__(self) -> str:
        return f"<memory entry {self.key!r} {self.variantKey!r}>"


@implementer(IEntryWriter)
class _MemoryWriter:
    def __init__(self, store: "MemoryStore", key: bytes, variantKey: bytes) -> None:
        self._store = store
        self._key = key
        self._variantKey = variantKey
        self._chunks: Optional[List[bytes]] = []
        self._written = 0
        self.committedId: Optional[_Record] = None

    def write(self, data: bytes) -> None:
        if self._chunks is None:
            raise StoreFull("this writer was aborted or committed")
        self._written += len(data)
        if self._written > self._store.maxObjectSize:
            self.abort()
            raise StoreFull("body larger than %d bytes" % (self._store.maxObjectSize,))
        self._chunks.append(bytes(data))

    def commit(self, entry) -> bool:
        chunks, self._chunks = self._chunks, None
        if chunks is None:
            return False
        if entry.bodyLength is not None and entry.bodyLength != self._written:
            return False
        record = self._store._put(self._key, self._variantKey, entry, b"".join(chunks))
        self.committedId = record
        return record is not None

    def abort(self) -> None:
        self._chunks = None


@implementer(IStore)
class MemoryStore:
    """
    Entries in this process's memory, least recently used evicted first to
    keep bodies plus an estimate of their metadata under C{maxSize} bytes.
    Lookups (L{entries}) count as uses.
    """

    def __init__(self, maxSize: int = 64 << 20, maxObjectSize: int = 1 << 20) -> None:
        self.maxSize = maxSize
        self.maxObjectSize = min(maxObjectSize, maxSize)
        #: (key, variantKey) -> record, least recently used first.
        self._records: "OrderedDict[Tuple[bytes, bytes], _Record]" = OrderedDict()
        #: key -> {variantKey: record}
        self._byKey: Dict[bytes, Dict[bytes, _Record]] = {}
        self._bytes = 0
        self._evictions = 0
        #: key -> number of the last change to it (see L{stamp})
        self._stamps: Dict[bytes, int] = {}
        self._changes = 0
        self._epoch = 0

    def _changed(self, key: bytes) -> None:
        self._changes += 1
        if len(self._stamps) > 1000000:
            # Forget old stamps; the epoch makes every earlier stamp differ.
            self._stamps.clear()
            self._epoch += 1
        self._stamps[key] = self._changes

    def stamp(self, key: bytes) -> object:
        """
        A token that differs after any change to C{key}'s variants (store,
        replace, update, removal), for callers that remember what a lookup
        found (see L{cachingproxy.cache.store.IStore.stamp}).
        """
        return (self._epoch, self._stamps.get(key, 0))

    def stamper(self, key: bytes):
        """
        @return: a function returning L{stamp}C{(key)}.
        """
        return lambda: self.stamp(key)

    def rescan(self, limit: Optional[int] = None) -> bool:
        """
        Nothing to learn: this store is this process's alone.
        """
        return True

    # -- records (also used by TieredStore) -----------------------------------

    def _put(self, key: bytes, variantKey: bytes, entry, body: bytes, tag=None,
             keepId: bool = False) -> Optional[_Record]:
        """
        Store C{entry} with C{body}, replacing the same variant.

        @param keepId: keep C{entry.id} (else the record becomes the id).
        @return: the record, or C{None} if it does not fit.
        """
        record = _Record(key, variantKey, body, tag)
        # Copies of the fields, so that the writer's objects can change
        # afterwards; lookups hand out these same objects, read-only.
        entry = dataclasses.replace(
            entry,
            requestHeaders=entry.requestHeaders.copy(),
            responseHeaders=entry.responseHeaders.copy(),
            bodyLength=len(body),
            id=entry.id if keepId else record,
        )
        record.entry = entry
        record.size = len(body) + _metaSize(key, variantKey, entry)
        if len(body) > self.maxObjectSize or record.size > self.maxSize:
            return None
        old = self._records.pop((key, variantKey), None)
        if old is not None:
            self._drop(old, fromOrder=False)
        self._records[(key, variantKey)] = record
        self._byKey.setdefault(key, {})[variantKey] = record
        # After the old variant's removal: the key's last stamp is a new
        # one, and it stays while the key holds something.
        self._changed(key)
        self._bytes += record.size
        while self._bytes > self.maxSize:
            _, victim = self._records.popitem(last=False)
            self._drop(victim, fromOrder=False)
            self._evictions += 1
        return record

    def _drop(self, record: _Record, fromOrder: bool = True) -> None:
        if not record.live:
            return
        record.live = False
        self._changed(record.key)
        if fromOrder:
            self._records.pop((record.key, record.variantKey), None)
        variants = self._byKey.get(record.key)
        if variants is not None and variants.get(record.variantKey) is record:
            del variants[record.variantKey]
            if not variants:
                del self._byKey[record.key]
                # Nothing is stored under the key any more: its stamp reads
                # as (epoch, 0), unlike any stamp handed out while it held
                # something, so the table only holds stored keys.
                self._stamps.pop(record.key, None)
        self._bytes -= record.size

    def _used(self, record: _Record) -> None:
        self._records.move_to_end((record.key, record.variantKey))

    def _setEntry(self, record: _Record, entry, tag=None) -> None:
        self._changed(record.key)
        """
        Replace the metadata of a live record.
        """
        size = len(record.body) + _metaSize(record.key, record.variantKey, entry)
        self._bytes += size - record.size
        record.size = size
        record.entry = entry
        if tag is not None:
            record.tag = tag
        self._used(record)

    # -- IStore -----------------------------------------------------------------

    def entries(self, key: bytes) -> List[object]:
        variants = self._byKey.get(key)
        if not variants:
            return []
        found = []
        for record in variants.values():
            self._used(record)
            found.append(record.entry)
        return found

    def openBody(self, entry, start: int = 0, end: Optional[int] = None):
        record = entry.id
        if not isinstance(record, _Record) or not record.live:
            return None
        body = record.body
        if start == 0 and (end is None or end >= len(body)):
            return BytesReader(body)
        return BytesReader(body[start:end])

    def writer(self, key: bytes, variantKey: bytes) -> _MemoryWriter:
        return _MemoryWriter(self, key, variantKey)

    def versions(self, key: bytes) -> Dict[bytes, object]:
        """
        A slot is a variant key, a version the record holding it.
        """
        variants = self._byKey.get(key)
        if not variants:
            return {}
        for record in variants.values():
            self._used(record)
        return dict(variants)

    def load(self, key: bytes, slot: bytes):
        record = self._byKey.get(key, {}).get(slot)
        return None if record is None else record.entry

    def versionOf(self, entry) -> Optional[Tuple[bytes, object]]:
        record = entry.id
        if not isinstance(record, _Record):
            return None
        return record.variantKey, record

    def currentVersion(self, entry) -> Optional[object]:
        record = entry.id
        if not isinstance(record, _Record):
            return None
        return self._byKey.get(record.key, {}).get(record.variantKey)

    def update(self, entry) -> bool:
        record = entry.id
        if not isinstance(record, _Record) or not record.live:
            return False
        if entry.bodyLength != len(record.body):
            entry = dataclasses.replace(entry, bodyLength=len(record.body))
        self._setEntry(record, entry)
        return True

    def remove(self, key: bytes) -> int:
        variants = self._byKey.get(key)
        if not variants:
            return 0
        records = list(variants.values())
        for record in records:
            self._drop(record)
        return len(records)

    def removePrefix(self, prefix: bytes) -> Deferred:
        removed = 0
        for key in [k for k in self._byKey if k.startswith(prefix)]:
            removed += self.remove(key)
        return succeed(removed)

    def stats(self) -> dict:
        return {
            "entries": len(self._records),
            "bytes": self._bytes,
            "limit": self.maxSize,
            "evictions": self._evictions,
        }

    def close(self) -> None:
        for record in list(self._records.values()):
            self._drop(record)
