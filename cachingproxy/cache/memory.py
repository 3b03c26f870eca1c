# -*- test-case-name: tests.test_cache_store -*-
"""
In-memory stores: L{MemoryStore}, a bounded LRU for one process, and
L{TieredStore}, a per-process memory tier in front of the shared
L{cachingproxy.cache.disk.DiskStore}.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from .store import IEntryWriter, IStore, StoreFull
from .disk import _NAME_LEN, BytesReader, DiskHandle, DiskStore

__all__ = ["MemoryStore", "TieredStore"]

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
    @ivar tag: what L{TieredStore} knows of the disk file this record
        mirrors: C{(path, header)}.
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
        return self._store._put(self._key, self._variantKey, entry, b"".join(chunks)) is not None

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


@implementer(IEntryWriter)
class _TieredWriter:
    def __init__(self, tiered: "TieredStore", key: bytes, variantKey: bytes) -> None:
        self._tiered = tiered
        self._key = key
        self._variantKey = variantKey
        self._disk = tiered.disk.writer(key, variantKey)
        self._chunks: Optional[List[bytes]] = []
        self._written = 0

    def write(self, data: bytes) -> None:
        try:
            self._disk.write(data)
        except StoreFull:
            # The disk writer aborted itself.
            self._chunks = None
            raise
        self._written += len(data)
        if self._chunks is not None:
            if self._written > self._tiered.writeThroughMaxBody:
                self._chunks = None
            else:
                self._chunks.append(bytes(data))

    def commit(self, entry) -> bool:
        if not self._disk.commit(entry):
            self._chunks = None
            return False
        chunks, self._chunks = self._chunks, None
        handle = self._disk.handle
        if chunks is not None and handle is not None:
            self._tiered._remember(dataclasses.replace(entry, id=handle, bodyLength=self._written),
                                   b"".join(chunks))
        return True

    def abort(self) -> None:
        self._chunks = None
        self._disk.abort()


@implementer(IStore)
class TieredStore:
    """
    A L{MemoryStore} in front of a L{DiskStore}: small bodies and their
    decoded metadata are served from memory, but only after checking that
    the disk still holds exactly that entry.

    The check: every lookup lists the key's folder on disk (as the disk
    store does), and for a variant held in memory reads the file's fixed
    header (36 bytes: both lengths and both CRC-32s, of the body and of
    the metadata, which holds the response time) and compares it with the
    header the memory copy was made from. A file that another process
    removed is not listed; one it replaced or updated (with
    C{os.replace}, always a new file) has a different header, except with
    a probability of about 2**-64. So a lookup costs a C{listdir} and one
    small read per variant, instead of decoding the metadata; and
    L{openBody} checks the header again before serving the body from
    memory, so an entry purged between lookup and read is not served
    either. Writes go to disk, and to memory as well when the body is no
    larger than C{writeThroughMaxBody} (a 64th of the memory); bodies up
    to C{memoryMaxBody} read whole from disk are copied into memory.

    Entries' C{id}s are the disk's L{DiskHandle}s.
    """

    def __init__(self, memory: MemoryStore, disk: DiskStore,
                 memoryMaxBody: int = 1 << 20) -> None:
        """
        @param memoryMaxBody: the largest body kept in memory (also bounded
            by the memory store's C{maxObjectSize}); a body read whole from
            disk is read in one piece to be copied, so this bounds that
            read too.
        """
        self.memory = memory
        self.disk = disk
        self.memoryMaxBody = min(memoryMaxBody, memory.maxObjectSize)
        #: The largest body copied into memory as it is stored: a 64th of
        #: the tier. A larger one enters memory when it is read whole from
        #: disk, that is when it is asked for again: a large body stored
        #: once and never read again (a one-off download) would push out
        #: dozens of small entries for nothing, and a run of them would
        #: turn the tier over to them. (Found by bench/soak.py: 1 MiB
        #: one-off bodies in a 16 MiB tier replaced its small entries when
        #: only large requests were left, and the heap the small bodies had
        #: used could not hold the large ones: 7 MiB more resident for the
        #: same 16 MiB of bodies.)
        self.writeThroughMaxBody = min(self.memoryMaxBody, memory.maxSize // 64)

    def _remember(self, entry, body: bytes) -> None:
        handle = entry.id
        self.memory._put(handle.key, handle.variantKey, entry, body,
                         tag=(handle.path, handle.header), keepId=True)

    def _current(self, handle: DiskHandle) -> Optional[_Record]:
        """
        @return: the memory record holding C{handle}'s content, if any.
        """
        variants = self.memory._byKey.get(handle.key)
        if variants is None:
            return None
        record = variants.get(handle.variantKey)
        if record is None or record.tag != (handle.path, handle.header):
            return None
        return record

    def entries(self, key: bytes) -> List[object]:
        variants = self.memory._byKey.get(key)
        if not variants:
            return self.disk.entries(key)
        disk = self.disk
        try:
            folder = disk._keyDir(key)
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                names = []
            byPath = {record.tag[0]: record for record in variants.values()}
            found = []
            for name in names:
                if len(name) != _NAME_LEN:
                    continue
                path = os.path.join(folder, name)
                record = byPath.pop(path, None)
                if record is not None:
                    if disk._peek(path) == record.tag[1]:
                        self.memory._used(record)
                        found.append(record.entry)
                        continue
                    self.memory._drop(record)
                entry = disk._load(path, key)
                if entry is not None:
                    found.append(entry)
            for record in byPath.values():
                # Removed on disk by another process.
                self.memory._drop(record)
            return found
        except Exception as e:
            disk._logError("lookup", e)
            return []

    def openBody(self, entry, start: int = 0, end: Optional[int] = None):
        handle = entry.id
        if not isinstance(handle, DiskHandle):
            return None
        disk = self.disk
        try:
            record = self._current(handle)
            if record is not None:
                if disk._peek(handle.path, touch=False) != handle.header:
                    self.memory._drop(record)
                    return None
                body = record.body
                if start == 0 and (end is None or end >= len(body)):
                    return BytesReader(body)
                return BytesReader(body[start:end])
            length = handle.bodyLength
            whole = start == 0 and (end is None or end >= length)
            reader = disk.openBody(entry, start, end)
            if reader is None or not whole or length > self.memoryMaxBody:
                return reader
            try:
                body = reader.read(length) if length else b""
            except OSError:
                return None
            finally:
                reader.close()
            if len(body) != length:
                return None
            self._remember(entry, body)
            return BytesReader(body)
        except Exception as e:
            disk._logError("read", e)
            return None

    def writer(self, key: bytes, variantKey: bytes) -> _TieredWriter:
        return _TieredWriter(self, key, variantKey)

    def stamp(self, key: bytes) -> object:
        """
        The disk's stamp (see L{DiskStore.stamp}): what is on disk is the
        truth for every process.
        """
        return self.disk.stamp(key)

    def stamper(self, key: bytes):
        """
        See L{DiskStore.stamper}.
        """
        return self.disk.stamper(key)

    def update(self, entry) -> bool:
        handle = entry.id
        if not isinstance(handle, DiskHandle):
            return False
        record = self._current(handle)
        ok = self.disk.update(entry)
        if record is not None:
            if ok:
                self.memory._setEntry(record, entry, tag=(handle.path, handle.header))
            else:
                self.memory._drop(record)
        return ok

    def remove(self, key: bytes) -> int:
        self.memory.remove(key)
        return self.disk.remove(key)

    def removePrefix(self, prefix: bytes) -> Deferred:
        self.memory.removePrefix(prefix)
        return self.disk.removePrefix(prefix)

    def rescan(self, limit: Optional[int] = None) -> bool:
        """
        See L{DiskStore.rescan}.
        """
        return self.disk.rescan(limit)

    def stats(self) -> dict:
        stats = self.disk.stats()
        stats["memory"] = self.memory.stats()
        return stats

    def close(self) -> None:
        self.memory.close()
        self.disk.close()
