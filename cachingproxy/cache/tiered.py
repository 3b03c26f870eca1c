# -*- test-case-name: tests.test_cache_store -*-
"""
L{TieredStore}: a per-process L{MemoryStore} in front of a store shared by
every process (the L{cachingproxy.cache.disk.DiskStore}), used only
through L{IStore}.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from .memory import MemoryStore, _Record
from .store import BytesReader, IEntryWriter, IStore, StoreFull

__all__ = ["TieredStore"]


@implementer(IEntryWriter)
class _TieredWriter:
    def __init__(self, tiered: "TieredStore", key: bytes, variantKey: bytes) -> None:
        self._tiered = tiered
        self._key = key
        self._variantKey = variantKey
        self._shared = tiered.shared.writer(key, variantKey)
        self._chunks: Optional[List[bytes]] = []
        self._written = 0
        self.committedId = None

    def write(self, data: bytes) -> None:
        try:
            self._shared.write(data)
        except StoreFull:
            # The shared store's writer aborted itself.
            self._chunks = None
            raise
        self._written += len(data)
        if self._chunks is not None:
            if self._written > self._tiered.writeThroughMaxBody:
                self._chunks = None
            else:
                self._chunks.append(bytes(data))

    def commit(self, entry) -> bool:
        if not self._shared.commit(entry):
            self._chunks = None
            return False
        chunks, self._chunks = self._chunks, None
        committed = self.committedId = self._shared.committedId
        if chunks is not None and committed is not None:
            self._tiered._remember(
                dataclasses.replace(entry, id=committed, bodyLength=self._written),
                b"".join(chunks))
        return True

    def abort(self) -> None:
        self._chunks = None
        self._shared.abort()


@implementer(IStore)
class TieredStore:
    """
    A L{MemoryStore} in front of a shared store: small bodies and their
    decoded metadata are served from memory, but only after checking that
    the shared store still holds exactly that entry.

    The check: every lookup asks the shared store for the versions of the
    key's variants (L{IStore.versions}: for the disk store, a C{listdir}
    and one small read of each file's fixed header, instead of decoding
    the metadata) and compares each with the version the memory copy was
    made from. A variant another process removed is not listed; one it
    replaced or updated has another version. L{openBody} checks the
    version again (L{IStore.currentVersion}) before serving the body from
    memory, so an entry purged between lookup and read is not served
    either. Writes go to the shared store, and to memory as well when the
    body is no larger than C{writeThroughMaxBody} (a 64th of the memory);
    bodies up to C{memoryMaxBody} read whole from the shared store are
    copied into memory.

    Entries' C{id}s are the shared store's. Memory records are kept by
    slot (L{IStore.versionOf}) rather than by variant key.

    @ivar memory: the L{MemoryStore}.
    @ivar shared: the shared L{IStore}.
    """

    _log = Logger()

    def __init__(self, memory: MemoryStore, shared: IStore,
                 memoryMaxBody: int = 1 << 20) -> None:
        """
        @param memoryMaxBody: the largest body kept in memory (also bounded
            by the memory store's C{maxObjectSize}); a body read whole from
            the shared store is read in one piece to be copied, so this
            bounds that read too.
        """
        self.memory = memory
        self.shared = shared
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

    @property
    def disk(self) -> IStore:
        """
        The shared store, by the name the service's reload uses to reach
        the disk store's size limits.
        """
        return self.shared

    def _remember(self, entry, body: bytes) -> None:
        version = self.shared.versionOf(entry)
        if version is not None:
            self.memory._put(entry.key, version[0], entry, body, tag=version, keepId=True)

    def _current(self, entry) -> Optional[_Record]:
        """
        @return: the memory record holding C{entry}'s content, if any.
        """
        version = self.shared.versionOf(entry)
        if version is None:
            return None
        record = self.memory._byKey.get(entry.key, {}).get(version[0])
        if record is None or record.tag != version:
            return None
        return record

    def entries(self, key: bytes) -> List[object]:
        memory = self.memory
        variants = memory._byKey.get(key)
        if not variants:
            return self.shared.entries(key)
        try:
            bySlot = dict(variants)
            found = []
            for slot, version in self.shared.versions(key).items():
                record = bySlot.pop(slot, None)
                if record is not None:
                    if record.tag == (slot, version):
                        memory._used(record)
                        found.append(record.entry)
                        continue
                    memory._drop(record)
                entry = self.shared.load(key, slot)
                if entry is not None:
                    found.append(entry)
            for record in bySlot.values():
                # Removed from the shared store by another process.
                memory._drop(record)
            return found
        except Exception:
            self._log.failure("lookup of {key!r} failed", key=key)
            return []

    def openBody(self, entry, start: int = 0, end: Optional[int] = None):
        shared = self.shared
        try:
            version = shared.versionOf(entry)
            if version is None:
                return None
            record = self._current(entry)
            if record is not None:
                if shared.currentVersion(entry) != version[1]:
                    self.memory._drop(record)
                    return None
                body = record.body
                if start == 0 and (end is None or end >= len(body)):
                    return BytesReader(body)
                return BytesReader(body[start:end])
            length = entry.bodyLength
            whole = start == 0 and (end is None or end >= length)
            reader = shared.openBody(entry, start, end)
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
        except Exception:
            self._log.failure("reading {key!r} failed", key=entry.key)
            return None

    def writer(self, key: bytes, variantKey: bytes) -> _TieredWriter:
        return _TieredWriter(self, key, variantKey)

    def versions(self, key: bytes):
        return self.shared.versions(key)

    def load(self, key: bytes, slot: bytes):
        return self.shared.load(key, slot)

    def versionOf(self, entry):
        return self.shared.versionOf(entry)

    def currentVersion(self, entry):
        return self.shared.currentVersion(entry)

    def stamp(self, key: bytes) -> object:
        """
        The shared store's stamp: what it holds is the truth for every
        process.
        """
        return self.shared.stamp(key)

    def stamper(self, key: bytes):
        """
        The shared store's (see L{stamp}).
        """
        return self.shared.stamper(key)

    def update(self, entry) -> bool:
        record = self._current(entry)
        ok = self.shared.update(entry)
        if record is not None:
            if ok:
                self.memory._setEntry(record, entry, tag=self.shared.versionOf(entry))
            else:
                self.memory._drop(record)
        return ok

    def remove(self, key: bytes) -> int:
        self.memory.remove(key)
        return self.shared.remove(key)

    def removePrefix(self, prefix: bytes) -> Deferred:
        self.memory.removePrefix(prefix)
        return self.shared.removePrefix(prefix)

    def rescan(self, limit: Optional[int] = None) -> bool:
        """
        The shared store's.
        """
        return self.shared.rescan(limit)

    def stats(self) -> dict:
        stats = self.shared.stats()
        stats["memory"] = self.memory.stats()
        return stats

    def close(self) -> None:
        self.memory.close()
        self.shared.close()
