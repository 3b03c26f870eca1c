"""
Tests for the cache stores (L{cachingproxy.cache.memory},
L{cachingproxy.cache.disk}): the rules of L{cachingproxy.cache.store} checked
against every backend through one mixin, then what is particular to the
disk (several processes on one folder, damaged files, temporary files,
failing folders, a writer killed mid-body) and to the memory tier in front
of it (never serving what another process purged or replaced).
"""

from __future__ import annotations

import dataclasses
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Cooperator
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cachingproxy.cache import disk
from cachingproxy.cache.store import ABSENT, IBodyReader, IEntryWriter, IStore, StoreFull
from cachingproxy.cache.disk import DiskHandle, DiskStore, _HSIZE
from cachingproxy.cache.memory import MemoryStore
from cachingproxy.cache.tiered import TieredStore
from cachingproxy.http.headers import Headers
from cachingproxy.cache.policy import StoredEntry

KEY = b"http://example.com/a"
T0 = 1_700_000_000.0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def makeEntry(key: bytes = KEY, body: bytes = b"", status: int = 200, tag: bytes = b"1",
              requestHeaders=(), responseTime: float = T0) -> StoredEntry:
    """
    An entry as the policy would build it for C{body}.
    """
    return StoredEntry(
        key=key,
        requestMethod=b"GET",
        requestHeaders=Headers(list(requestHeaders)),
        status=status,
        responseHeaders=Headers([
            (b"Content-Type", b"text/plain"),
            (b"ETag", b'"' + tag + b'"'),
            (b"X-Latin", b"caf\xe9"),
            (b"Set-Thing", b"a"),
            (b"set-thing", b"b"),
        ]),
        requestTime=responseTime - 0.5,
        responseTime=responseTime,
        bodyLength=len(body),
    )


def readAll(reader, chunk: int = 1 << 16) -> bytes:
    """
    Everything C{reader} returns, read in C{chunk}s until C{b""}.
    """
    parts = []
    while True:
        data = reader.read(chunk)
        if not data:
            break
        parts.append(data)
    reader.close()
    return b"".join(parts)


def syncCooperator() -> Cooperator:
    """
    A cooperator that runs every step at once: a store's walks finish
    before the call that starts them returns.
    """
    return Cooperator(terminationPredicateFactory=lambda: lambda: False,
                      scheduler=lambda step: step())


class FakeClock:
    """
    A clock the test moves.
    """

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StoreTestsMixin:
    """
    The behaviour every L{IStore} backend shares. Subclasses define
    C{makeStore(maxSize, maxObjectSize)}.
    """

    def setUp(self) -> None:
        self.clock = FakeClock()
        self.store = self.makeStore()

    def put(self, body: bytes, key: bytes = KEY, variant: bytes = b"", store=None,
            chunk: int = 4096, **kw) -> StoredEntry:
        """
        Store C{body} under C{key} and C{variant}, written in C{chunk}s, and
        return the entry the lookup gives for it.
        """
        store = store or self.store
        writer = store.writer(key, variant)
        for i in range(0, len(body), chunk):
            writer.write(body[i:i + chunk])
        entry = makeEntry(key, body, requestHeaders=[(b"X-V", variant)] if variant else (),
                          **kw)
        self.assertTrue(writer.commit(entry))
        return self.lookup(key, variant, store)

    def lookup(self, key: bytes = KEY, variant: bytes = b"", store=None):
        """
        @return: the entry for C{variant} of C{key}, or C{None}.
        """
        for entry in (store or self.store).entries(key):
            if entry.requestHeaders.get(b"x-v", b"") == variant:
                return entry
        return None

    def body(self, entry, start: int = 0, end=None, store=None) -> bytes:
        reader = (store or self.store).openBody(entry, start, end)
        self.assertIsNotNone(reader)
        return readAll(reader)

    # -- visibility -------------------------------------------------------------

    def test_interfaces(self) -> None:
        """
        The store, its writers and readers provide the interfaces.
        """
        self.assertTrue(verifyObject(IStore, self.store))
        writer = self.store.writer(KEY, b"")
        self.assertTrue(verifyObject(IEntryWriter, writer))
        writer.abort()
        entry = self.put(b"x" * 10)
        self.assertTrue(verifyObject(IBodyReader, self.store.openBody(entry)))

    def test_uncommittedInvisible(self) -> None:
        """
        A body being written is not visible until C{commit}; then it is,
        with the metadata given and exactly the body written.
        """
        body = bytes(range(256)) * 40
        writer = self.store.writer(KEY, b"")
        writer.write(body[:5000])
        self.assertEqual(self.store.entries(KEY), [])
        writer.write(body[5000:])
        self.assertEqual(self.store.entries(KEY), [])
        entry = makeEntry(KEY, body, status=203)
        self.assertTrue(writer.commit(entry))
        [found] = self.store.entries(KEY)
        self.assertEqual(found.key, KEY)
        self.assertEqual(found.status, 203)
        self.assertEqual(found.requestMethod, b"GET")
        self.assertEqual(found.responseHeaders, entry.responseHeaders)
        self.assertEqual(found.requestHeaders, entry.requestHeaders)
        self.assertEqual(found.requestTime, entry.requestTime)
        self.assertEqual(found.responseTime, entry.responseTime)
        self.assertEqual(found.bodyLength, len(body))
        self.assertEqual(self.body(found), body)

    def test_abortLeavesNothing(self) -> None:
        """
        An aborted writer leaves nothing visible, and cannot commit after.
        """
        writer = self.store.writer(KEY, b"")
        writer.write(b"abc")
        writer.abort()
        self.assertEqual(self.store.entries(KEY), [])
        self.assertFalse(writer.commit(makeEntry(KEY, b"abc")))
        self.assertEqual(self.store.entries(KEY), [])
        self.assertRaises(StoreFull, writer.write, b"more")

    def test_commitTwice(self) -> None:
        """
        A writer commits once.
        """
        writer = self.store.writer(KEY, b"")
        writer.write(b"abc")
        self.assertTrue(writer.commit(makeEntry(KEY, b"abc")))
        self.assertFalse(writer.commit(makeEntry(KEY, b"abc")))
        self.assertEqual(len(self.store.entries(KEY)), 1)

    def test_lengthMismatch(self) -> None:
        """
        An entry whose C{bodyLength} is not what was written is not stored.
        """
        writer = self.store.writer(KEY, b"")
        writer.write(b"abc")
        self.assertFalse(writer.commit(makeEntry(KEY, b"abcd")))
        self.assertEqual(self.store.entries(KEY), [])

    def test_emptyBody(self) -> None:
        """
        An entry without a body (nothing written) is stored and reads back
        empty.
        """
        entry = self.put(b"", status=204)
        self.assertEqual(entry.status, 204)
        self.assertEqual(entry.bodyLength, 0)
        self.assertEqual(self.body(entry), b"")

    def test_replaceSameVariant(self) -> None:
        """
        Storing the same key and variant again replaces the entry; the old
        entry's body can no longer be opened.
        """
        old = self.put(b"old body", tag=b"old")
        new = self.put(b"the new body", tag=b"new")
        [found] = self.store.entries(KEY)
        self.assertEqual(found.responseHeaders.get(b"etag"), b'"new"')
        self.assertEqual(self.body(found), b"the new body")
        self.assertEqual(self.body(new), b"the new body")
        self.assertIsNone(self.store.openBody(old))

    def test_replaceWhileReading(self) -> None:
        """
        A reader opened before a replacement goes on returning the old body
        (readers see the old entry or the new one, never a mix).
        """
        oldBody = os.urandom(200_000)
        old = self.put(oldBody)
        reader = self.store.openBody(old)
        first = reader.read(1000)
        self.put(b"n" * 200_000, tag=b"2")
        self.assertEqual(first + readAll(reader), oldBody)

    def test_severalVariants(self) -> None:
        """
        Variants of one key are stored side by side, each with its body.
        """
        variants = [b"", b"accept-encoding:gzip", b"accept-encoding:br"]
        for v in variants:
            self.put(b"body of " + v, variant=v)
        found = self.store.entries(KEY)
        self.assertEqual(len(found), 3)
        for entry in found:
            v = entry.requestHeaders.get(b"x-v", b"")
            self.assertEqual(self.body(entry), b"body of " + v)
        self.assertEqual(self.store.entries(KEY + b"x"), [])

    def test_remove(self) -> None:
        """
        C{remove} removes every variant of one key and nothing else.
        """
        a = self.put(b"1", variant=b"a")
        self.put(b"2", variant=b"b")
        self.put(b"3", key=KEY + b"/other")
        self.assertEqual(self.store.remove(KEY), 2)
        self.assertEqual(self.store.entries(KEY), [])
        self.assertIsNone(self.store.openBody(a))
        self.assertFalse(self.store.update(a))
        self.assertEqual(len(self.store.entries(KEY + b"/other")), 1)
        self.assertEqual(self.store.remove(KEY), 0)

    def test_removePrefix(self) -> None:
        """
        C{removePrefix} removes the keys that start with the prefix.
        """
        keys = [b"http://a.example/x", b"http://a.example/y?q", b"http://b.example/x",
                b"http://a.example"]
        for key in keys:
            self.put(b"body", key=key)
        self.put(b"body", key=keys[0], variant=b"v2")
        self.assertEqual(self.successResultOf(self.store.removePrefix(b"http://a.example/")), 3)
        self.assertEqual(self.store.entries(keys[0]), [])
        self.assertEqual(self.store.entries(keys[1]), [])
        self.assertEqual(len(self.store.entries(keys[2])), 1)
        self.assertEqual(len(self.store.entries(keys[3])), 1)

    def test_ranges(self) -> None:
        """
        C{openBody} returns the bytes from C{start} to C{end} (exclusive),
        with an C{end} past the body clamped, for small and large bodies.
        """
        for size in (1000, 300_000):
            body = random.Random(size).randbytes(size)
            entry = self.put(body, key=KEY + b"%d" % size)
            for start, end in [(0, None), (0, 10), (10, None), (size - 10, size),
                               (500, 500), (size // 2, size + 100), (0, size)]:
                reader = self.store.openBody(entry, start, end)
                expected = body[start:end]
                self.assertEqual(reader.length, len(expected), (size, start, end))
                self.assertEqual(readAll(reader, 7000), expected, (size, start, end))

    def test_readInPieces(self) -> None:
        """
        A reader returns at most the size asked, then C{b""} at the end.
        """
        body = b"0123456789" * 10
        entry = self.put(body)
        reader = self.store.openBody(entry)
        self.assertEqual(reader.length, 100)
        pieces = []
        while True:
            piece = reader.read(7)
            self.assertLessEqual(len(piece), 7)
            if not piece:
                break
            pieces.append(piece)
        self.assertEqual(b"".join(pieces), body)
        self.assertEqual(reader.read(7), b"")
        reader.close()

    def test_maxObjectSize(self) -> None:
        """
        A body past C{maxObjectSize} makes C{write} raise L{StoreFull} and
        aborts the writer; a body of exactly that size is stored.
        """
        store = self.makeStore(maxSize=1 << 20, maxObjectSize=10_000)
        writer = store.writer(KEY, b"")
        writer.write(b"x" * 6000)
        self.assertRaises(StoreFull, writer.write, b"x" * 6000)
        self.assertFalse(writer.commit(makeEntry(KEY, b"x" * 12000)))
        self.assertEqual(store.entries(KEY), [])
        entry = self.put(b"y" * 10_000, store=store)
        self.assertEqual(self.body(entry, store=store), b"y" * 10_000)

    def test_lruEviction(self) -> None:
        """
        Over C{maxSize}, the least recently used entries go first, and a
        lookup counts as a use.
        """
        store = self.makeStore(maxSize=35_000, maxObjectSize=12_000)
        for name in b"abc":
            self.put(bytes([name]) * 10_000, key=KEY + bytes([name]), store=store)
            self.clock.advance(1)
        self.assertEqual(len(store.entries(KEY + b"a")), 1)
        self.clock.advance(1)
        self.put(b"d" * 10_000, key=KEY + b"d", store=store)
        self.assertEqual(store.entries(KEY + b"b"), [])
        for name in b"acd":
            [entry] = store.entries(KEY + bytes([name]))
            self.assertEqual(self.body(entry, store=store), bytes([name]) * 10_000)
        stats = store.stats()
        self.assertEqual(stats["evictions"], 1)
        self.assertEqual(stats["entries"], 3)
        self.assertEqual(stats["limit"], 35_000)
        self.assertTrue(30_000 < stats["bytes"] <= 35_000, stats)

    def test_updateKeepsBody(self) -> None:
        """
        C{update} replaces the metadata and keeps the body; the updated
        entry's body can be opened.
        """
        body = os.urandom(100_000)
        entry = self.put(body)
        fresher = dataclasses.replace(
            entry,
            responseHeaders=Headers([(b"ETag", b'"1"'), (b"X-New", b"yes")]),
            responseTime=T0 + 100,
            requestTime=T0 + 99,
        )
        self.assertTrue(self.store.update(fresher))
        [found] = self.store.entries(KEY)
        self.assertEqual(found.responseHeaders, fresher.responseHeaders)
        self.assertEqual(found.responseTime, T0 + 100)
        self.assertEqual(found.bodyLength, len(body))
        self.assertEqual(self.body(found), body)
        self.assertEqual(self.body(fresher), body)
        self.assertEqual(self.body(found, 10, 20), body[10:20])

    def test_incompleteEntry(self) -> None:
        """
        An incomplete response (RFC 9111 section 3.3) is an entry like any
        other, visible only once committed: its ranges and complete length
        come back from a lookup, after an update too, its body is its
        ranges one after the other, and a complete entry of the same
        variant replaces it.
        """
        for size in (1000, 300_000):
            key = KEY + b"%d" % size
            body = os.urandom(size)
            ranges = ((0, size // 4), (size // 2, size // 2 + size // 4))
            writer = self.store.writer(key, b"")
            for start, end in ranges:
                writer.write(body[start:end])
            self.assertEqual(self.store.entries(key), [])
            part = dataclasses.replace(
                makeEntry(key, b"x" * (2 * (size // 4)), status=206),
                ranges=ranges, completeLength=size)
            self.assertTrue(writer.commit(part))
            [found] = self.store.entries(key)
            self.assertEqual((found.status, found.ranges, found.completeLength,
                              found.bodyLength), (206, ranges, size, 2 * (size // 4)))
            second = ranges[1]
            offset = size // 4
            self.assertEqual(self.body(found, offset, offset + 10),
                             body[second[0]:second[0] + 10])
            self.assertEqual(self.body(found), body[:size // 4] + body[second[0]:second[1]])
            self.assertTrue(self.store.update(dataclasses.replace(found, responseTime=T0 + 9)))
            [updated] = self.store.entries(key)
            self.assertEqual((updated.ranges, updated.completeLength, updated.responseTime),
                             (ranges, size, T0 + 9))
            complete = self.put(body, key=key)
            self.assertEqual((complete.ranges, complete.completeLength), (None, None))
            self.assertEqual(len(self.store.entries(key)), 1)

    def test_stats(self) -> None:
        """
        C{stats} counts entries and bytes.
        """
        self.put(b"x" * 1000)
        self.put(b"x" * 1000, variant=b"v")
        stats = self.store.stats()
        self.assertEqual(stats["entries"], 2)
        self.assertTrue(stats["bytes"] >= 2000, stats)
        self.assertEqual(stats["evictions"], 0)
        self.store.remove(KEY)
        self.assertEqual(self.store.stats()["entries"], 0)
        self.assertEqual(self.store.stats()["bytes"], 0)


def anyBodyAnyRange():
    """
    The property test for one backend (a function of its own per class:
    hypothesis wants one executor per test function).
    """

    @settings(max_examples=60, deadline=None, database=None)
    @given(data=st.data(), size=st.integers(0, 150_000), seed=st.integers(0, 1000),
           chunk=st.integers(1, 70_000))
    def test_anyBodyAnyRange(self, data, size, seed, chunk) -> None:
        """
        Any body, written in any chunk size, reads back identically, whole
        and in any range.
        """
        self.examples = getattr(self, "examples", 0) + 1
        key = KEY + b"/%d" % self.examples
        body = random.Random(seed).randbytes(size)
        entry = self.put(body, key=key, chunk=chunk)
        self.assertEqual(self.body(entry), body)
        start = data.draw(st.integers(0, size))
        end = data.draw(st.one_of(st.none(), st.integers(start, size + 10)))
        self.assertEqual(self.body(entry, start, end), body[start:end])
        self.store.remove(key)

    return test_anyBodyAnyRange


def _tempDir(testCase) -> str:
    path = tempfile.mkdtemp(prefix="cachingproxy-store-")
    testCase.addCleanup(shutil.rmtree, path, True)
    return path


class MemoryStoreTests(StoreTestsMixin, SynchronousTestCase):
    """
    L{MemoryStore}.
    """

    test_anyBodyAnyRange = anyBodyAnyRange()

    def makeStore(self, maxSize: int = 1 << 22, maxObjectSize: int = 1 << 20):
        return MemoryStore(maxSize, maxObjectSize)


class TieredOverMemoryTests(StoreTestsMixin, SynchronousTestCase):
    """
    L{TieredStore} in front of any L{IStore} (here a L{MemoryStore}): it
    needs nothing of the shared store but the interface.
    """

    test_anyBodyAnyRange = anyBodyAnyRange()

    def makeStore(self, maxSize: int = 1 << 22, maxObjectSize: int = 1 << 20):
        return TieredStore(MemoryStore(1 << 22, 1 << 17), MemoryStore(maxSize, maxObjectSize))


class DiskStoreTestsMixin(StoreTestsMixin):
    """
    Helpers for a store on a temporary folder.
    """

    def makeDisk(self, directory=None, maxSize: int = 1 << 22,
                 maxObjectSize: int = 1 << 20, **kw) -> DiskStore:
        if directory is None:
            directory = getattr(self, "directory", None) or _tempDir(self)
        self.directory = directory
        kw.setdefault("cooperator", syncCooperator())
        return DiskStore(directory, maxSize=maxSize, maxObjectSize=maxObjectSize,
                         clock=self.clock, **kw)

    def setUp(self) -> None:
        self.directory = None
        super().setUp()

    def files(self):
        """
        @return: every entry file under the store's folder.
        """
        out = []
        for root, _, names in os.walk(os.path.join(self.directory, "data")):
            out.extend(os.path.join(root, n) for n in names)
        return sorted(out)

    def tempFiles(self):
        return sorted(os.listdir(os.path.join(self.directory, "tmp")))


class DiskStoreTests(DiskStoreTestsMixin, SynchronousTestCase):
    """
    L{DiskStore}: the shared behaviour, then what is particular to files.
    """

    test_anyBodyAnyRange = anyBodyAnyRange()

    def makeStore(self, maxSize: int = 1 << 22, maxObjectSize: int = 1 << 20):
        # Each store on a folder of its own.
        return self.makeDisk(_tempDir(self), maxSize, maxObjectSize)

    def test_oneFilePerEntry(self) -> None:
        """
        An entry is one file holding header, body and metadata, named by
        hashes of the keys; no temporary file stays behind.
        """
        entry = self.put(b"x" * 1000)
        [path] = self.files()
        self.assertEqual(entry.id.path, path)
        size = os.path.getsize(path)
        self.assertTrue(_HSIZE + 1000 < size < _HSIZE + 1000 + 1000, size)
        with open(path, "rb") as f:
            self.assertEqual(f.read(8), b"CPXCACHE")
        self.assertEqual(self.tempFiles(), [])

    def test_bodyReadableAfterAnotherFreshened(self) -> None:
        """
        An entry looked up before another lookup of it was freshened by a
        304 (RFC 9111 section 4.3.4; here through a second store on the
        same folder, as another worker process would) still opens its body,
        small or large: only the metadata around it changed. A body
        replaced by another response's is not opened.
        """
        for size in (1000, 200_000):
            body = os.urandom(size)
            key = KEY + b"%d" % size
            entry = self.put(body, key=key)
            other = self.makeDisk(self.directory)
            [seen] = other.entries(key)
            fresher = dataclasses.replace(
                seen, responseHeaders=Headers([(b"ETag", b'"1"'), (b"X-Freshened", b"a longer field")]),
                responseTime=T0 + 100)
            self.assertTrue(other.update(fresher))
            self.assertEqual(self.body(entry), body)
            self.assertEqual(self.body(entry, 10, 20), body[10:20])
            # An update of the old handle finds the file changed: no write.
            self.assertFalse(self.store.update(entry))
            self.put(os.urandom(size), key=key, store=other)
            self.assertIsNone(self.store.openBody(entry))

    def test_abortRemovesTemporary(self) -> None:
        """
        A writer's temporary file is removed by C{abort}, and by exceeding
        C{maxObjectSize}.
        """
        writer = self.store.writer(KEY, b"")
        writer.write(b"x" * 100_000)
        self.assertEqual(len(self.tempFiles()), 1)
        writer.abort()
        self.assertEqual(self.tempFiles(), [])
        store = self.makeDisk(self.directory, maxObjectSize=1000)
        writer = store.writer(KEY, b"")
        writer.write(b"x" * 1000)
        self.assertRaises(StoreFull, writer.write, b"x")
        self.assertEqual(self.tempFiles(), [])
        self.assertEqual(self.files(), [])

    def test_twoProcessesSeeEachOther(self) -> None:
        """
        Two stores on one folder, as two worker processes have: each sees
        the other's commits, updates, replacements and removals at its next
        lookup.
        """
        a = self.store
        b = self.makeDisk(self.directory)
        self.put(b"from a", store=a)
        [seen] = b.entries(KEY)
        self.assertEqual(self.body(seen, store=b), b"from a")

        fresher = dataclasses.replace(seen, responseHeaders=Headers([(b"X-Up", b"1")]))
        self.assertTrue(b.update(fresher))
        [seenByA] = a.entries(KEY)
        self.assertEqual(seenByA.responseHeaders.get(b"x-up"), b"1")
        self.assertEqual(self.body(seenByA, store=a), b"from a")

        self.put(b"replaced by b", store=b, tag=b"b")
        # A's entry from before the replacement is not read with the new body.
        self.assertIsNone(a.openBody(seenByA))
        self.assertFalse(a.update(seenByA))
        [now] = a.entries(KEY)
        self.assertEqual(self.body(now, store=a), b"replaced by b")

        self.assertEqual(b.remove(KEY), 1)
        self.assertEqual(a.entries(KEY), [])
        self.assertIsNone(a.openBody(now))

        self.put(b"p", key=b"http://p.example/1", store=a)
        self.assertEqual(self.successResultOf(b.removePrefix(b"http://p.example/")), 1)
        self.assertEqual(a.entries(b"http://p.example/1"), [])

    def corrupt(self, path: str, offset: int, length: int = 1) -> None:
        with open(path, "r+b") as f:
            f.seek(offset)
            data = f.read(length)
            f.seek(offset)
            f.write(bytes(b ^ 0xFF for b in data))

    def test_damagedMetadata(self) -> None:
        """
        A file whose metadata fails its checksum is a miss, and is removed.
        """
        self.put(b"x" * 1000)
        [path] = self.files()
        self.corrupt(path, os.path.getsize(path) - 20)
        self.assertEqual(self.store.entries(KEY), [])
        self.assertEqual(self.files(), [])
        # Damage that still decodes: a changed letter in a header value.
        self.put(b"x" * 1000)
        [path] = self.files()
        with open(path, "rb") as f:
            data = f.read()
        at = data.rindex(b"text/plain")
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(b"TEXT")
        self.assertEqual(self.store.entries(KEY), [])
        self.assertEqual(self.files(), [])

    def test_incompleteEntryRangesChecked(self) -> None:
        """
        An incomplete entry whose ranges do not add up to its body length
        is damage: a miss, and the file is removed.
        """
        writer = self.store.writer(KEY, b"")
        writer.write(b"y" * 100)
        part = dataclasses.replace(makeEntry(body=b"y" * 100, status=206),
                                   ranges=((0, 50), (60, 100)), completeLength=1000)
        self.assertTrue(writer.commit(part))
        self.assertEqual(self.store.entries(KEY), [])
        self.assertEqual(self.files(), [])

    def test_damagedHeader(self) -> None:
        """
        A file whose fixed header is damaged (magic, lengths) is a miss, and
        is removed.
        """
        for offset in (0, 8, 12, 16, 30):
            self.put(b"x" * 1000)
            [path] = self.files()
            self.corrupt(path, offset)
            self.assertEqual(self.store.entries(KEY), [], offset)
            self.assertEqual(self.files(), [], offset)

    def test_truncated(self) -> None:
        """
        A file cut short (inside the body or the metadata) is a miss, and is
        removed.
        """
        for size in (500, 1000 + _HSIZE + 5):
            self.put(b"x" * 1000)
            [path] = self.files()
            os.truncate(path, size)
            self.assertEqual(self.store.entries(KEY), [])
            self.assertEqual(self.files(), [])

    def test_truncatedAfterLookup(self) -> None:
        """
        A file truncated between lookup and read gives no reader (small
        body) or an C{IOError} (large body), and is removed.
        """
        entry = self.put(b"x" * 1000)
        os.truncate(entry.id.path, 700)
        self.assertIsNone(self.store.openBody(entry))
        self.assertEqual(self.files(), [])
        entry = self.put(b"x" * 300_000)
        reader = self.store.openBody(entry)
        reader.read(1000)
        os.truncate(entry.id.path, 200_000)
        self.assertRaises(IOError, readAll, reader)
        self.assertEqual(self.files(), [])

    def test_damagedSmallBody(self) -> None:
        """
        A small body that fails its checksum is never returned: C{openBody}
        gives C{None} and the entry is removed.
        """
        entry = self.put(b"x" * 1000)
        self.corrupt(entry.id.path, _HSIZE + 500)
        self.assertIsNone(self.store.openBody(entry, 0, 10))
        self.assertEqual(self.files(), [])

    def test_damagedLargeBody(self) -> None:
        """
        A large body read whole is checked: the damage raises C{IOError}
        before the last bytes are returned, and the entry is removed.
        """
        body = os.urandom(300_000)
        entry = self.put(body)
        self.corrupt(entry.id.path, _HSIZE + 123_456)
        reader = self.store.openBody(entry)
        got = []
        with self.assertRaises(IOError):
            while True:
                data = reader.read(65536)
                if not data:
                    break
                got.append(data)
        self.assertLess(len(b"".join(got)), len(body))
        self.assertEqual(self.files(), [])
        self.assertEqual(self.store.entries(KEY), [])

    def test_foreignFile(self) -> None:
        """
        A file that is not an entry at all, where an entry would be, is a
        miss and is removed; the store goes on working.
        """
        entry = self.put(b"x")
        path = entry.id.path
        os.unlink(path)
        with open(path, "wb") as f:
            f.write(b"GARBAGE" * 10)
        self.assertEqual(self.store.entries(KEY), [])
        self.assertEqual(self.files(), [])
        self.put(b"again")
        self.assertEqual(len(self.store.entries(KEY)), 1)

    def test_staleTemporaryFiles(self) -> None:
        """
        Opening a store removes temporary files of dead processes and old
        ones, and keeps a live process's recent one.
        """
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        tmp = os.path.join(self.directory, "tmp")
        mine = os.getpid()
        names = {
            "%d.dead.tmp" % dead.pid: False,
            "%d.old.tmp" % mine: False,
            "%d.live.tmp" % mine: True,
        }
        for name in names:
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(b"partial")
        old = time.time() - 7200
        os.utime(os.path.join(tmp, "%d.old.tmp" % mine), (old, old))
        self.makeDisk(self.directory)
        self.assertEqual(self.tempFiles(), sorted(n for n, keep in names.items() if keep))

    def test_folderRemovedWhileWriting(self) -> None:
        """
        The whole folder removed under a writer: C{commit} returns C{False};
        the next writes recreate the folders and work.
        """
        writer = self.store.writer(KEY, b"")
        writer.write(b"x" * 100_000)
        shutil.rmtree(self.directory)
        self.assertFalse(writer.commit(makeEntry(KEY, b"x" * 100_000)))
        self.assertEqual(self.store.entries(KEY), [])
        entry = self.put(b"back")
        self.assertEqual(self.body(entry), b"back")

    def test_keyFolderRemovedBeforeCommit(self) -> None:
        """
        Another process removing the key's folder (the last variant purged)
        just before a commit does not make the commit fail.
        """
        self.put(b"first", variant=b"a")
        writer = self.store.writer(KEY, b"b")
        writer.write(b"second")
        other = self.makeDisk(self.directory)
        self.assertEqual(other.remove(KEY), 1)
        self.assertTrue(writer.commit(makeEntry(KEY, b"second",
                                                requestHeaders=[(b"X-V", b"b")])))
        self.assertEqual(self.body(self.lookup(variant=b"b")), b"second")

    def test_noSpace(self) -> None:
        """
        A write that fails for lack of space (the kernel's ENOSPC, from
        /dev/full) raises L{StoreFull}, a commit that fails that way returns
        C{False}; neither leaves anything behind and the next entry is
        stored.
        """
        if not os.path.exists("/dev/full"):
            raise self.skipTest("no /dev/full")

        def full(writer):
            original = writer._open

            def _open():
                original()
                os.unlink(writer._tmpPath)
                writer._file.close()
                writer._file = open("/dev/full", "wb", buffering=1 << 16)
            writer._open = _open

        writer = self.store.writer(KEY, b"")
        full(writer)
        self.assertRaises(StoreFull, writer.write, b"x" * 200_000)
        writer = self.store.writer(KEY, b"")
        full(writer)
        writer.write(b"x" * 1000)
        self.assertFalse(writer.commit(makeEntry(KEY, b"x" * 1000)))
        self.assertEqual(self.store.entries(KEY), [])
        self.assertEqual(self.tempFiles(), [])
        self.assertEqual(self.body(self.put(b"fits")), b"fits")

    def test_readOnlyFolder(self) -> None:
        """
        A folder the process may not write to: writes raise L{StoreFull} or
        commits return C{False}; lookups are misses, not errors; once
        writable again, the store works.
        """
        if os.geteuid() == 0:
            raise self.skipTest("root ignores permissions")
        entry = self.put(b"kept")
        tmp = os.path.join(self.directory, "tmp")
        keyDir = os.path.dirname(entry.id.path)
        os.chmod(tmp, 0o500)
        self.addCleanup(os.chmod, tmp, 0o700)
        writer = self.store.writer(KEY, b"v")
        self.assertRaises(StoreFull, writer.write, b"x")
        os.chmod(tmp, 0o700)
        os.chmod(keyDir, 0o500)
        self.addCleanup(os.chmod, keyDir, 0o700)
        writer = self.store.writer(KEY, b"v")
        writer.write(b"x")
        self.assertFalse(writer.commit(makeEntry(KEY, b"x")))
        self.assertEqual(len(self.store.entries(KEY)), 1)
        os.chmod(keyDir, 0o000)
        self.assertEqual(self.store.entries(KEY), [])
        os.chmod(keyDir, 0o700)
        self.put(b"y", variant=b"v")
        self.assertEqual(len(self.store.entries(KEY)), 2)

    def test_recencySharedThroughMtime(self) -> None:
        """
        A lookup in one process refreshes the file's mtime (at most once per
        C{touchInterval}), so another process evicting by recency keeps it.
        """
        a = self.makeDisk(self.directory, maxSize=35_000, maxObjectSize=12_000)
        b = self.makeDisk(self.directory, maxSize=35_000, maxObjectSize=12_000)
        for name in b"abc":
            self.put(bytes([name]) * 10_000, key=KEY + bytes([name]), store=b)
            self.clock.advance(1)
        self.clock.advance(120)
        [entry] = a.entries(KEY + b"a")
        self.assertEqual(os.stat(entry.id.path).st_mtime, self.clock.now)
        self.put(b"d" * 10_000, key=KEY + b"d", store=b)
        self.assertEqual(b.entries(KEY + b"b"), [])
        self.assertEqual(len(b.entries(KEY + b"a")), 1)

    def test_rescan(self) -> None:
        """
        C{rescan} learns the files other processes stored, in mtime order,
        and evicts down to the limit; it can advance in bounded steps.
        """
        writer = self.makeDisk(self.directory)
        for i in range(6):
            self.put(b"x" * 10_000, key=KEY + b"%d" % i, store=writer)
            self.clock.advance(1)
        store = self.makeDisk(self.directory, maxSize=35_000, maxObjectSize=12_000)
        self.assertEqual(store.stats()["entries"], 0)
        steps = 1
        while not store.rescan(2):
            steps += 1
        self.assertEqual(steps, 4)
        self.assertEqual(store.stats()["entries"], 3)
        self.assertEqual(store.stats()["evictions"], 3)
        for i in range(6):
            self.assertEqual(len(store.entries(KEY + b"%d" % i)), 1 if i >= 3 else 0)

    def test_firstCommitsScan(self) -> None:
        """
        A process that never called C{rescan} still learns what is on disk
        from its first commits (a bounded piece each), and keeps the limit.
        """
        writer = self.makeDisk(self.directory)
        for i in range(6):
            self.put(b"x" * 10_000, key=KEY + b"%d" % i, store=writer)
            self.clock.advance(1)
        store = self.makeDisk(self.directory, maxSize=35_000, maxObjectSize=12_000,
                              scanStep=4)
        self.put(b"y" * 10_000, key=KEY + b"new", store=store)
        self.assertFalse(store.stats()["scanned"])
        self.put(b"z" * 10_000, key=KEY + b"new2", store=store)
        self.assertTrue(store.stats()["scanned"])
        self.assertEqual(len(self.files()), 3)
        self.assertEqual(len(store.entries(KEY + b"new")), 1)
        self.assertEqual(len(store.entries(KEY + b"new2")), 1)
        self.assertEqual(len(store.entries(KEY + b"5")), 1)

    def test_passKeepsUseOrder(self) -> None:
        """
        At the end of a pass, the files this process used during it are the
        most recent, in the order it used them; the others follow their
        mtimes. So eviction takes the files found but not used, oldest
        first.
        """
        writer = self.makeDisk(self.directory)
        for i in range(6):
            self.put(b"x" * 10_000, key=KEY + b"%d" % i, store=writer)
            self.clock.advance(1)
        store = self.makeDisk(self.directory, maxSize=1 << 22, maxObjectSize=12_000)
        self.assertFalse(store.rescan(3))
        self.lookup(KEY + b"4", store=store)
        self.lookup(KEY + b"0", store=store)
        self.assertTrue(store.rescan())
        self.assertEqual(store.stats()["entries"], 6)
        store.maxSize = 35_000
        self.put(b"y" * 10_000, key=KEY + b"new", store=store)
        self.assertEqual(store.stats()["evictions"], 4)
        kept = [i for i in range(6) if store.entries(KEY + b"%d" % i)]
        self.assertEqual(kept, [0, 4])

    def test_passForgetsRemovedFiles(self) -> None:
        """
        A pass does not bring back a file this process removed after the
        walk had found it, and forgets a file another process removed
        before the walk reached it.
        """
        writer = self.makeDisk(self.directory)
        for i in range(6):
            self.put(b"x" * 10_000, key=KEY + b"%d" % i, store=writer)
            self.clock.advance(1)
        store = self.makeDisk(self.directory)
        self.assertTrue(store.rescan())
        self.assertEqual(store.stats()["entries"], 6)
        size = store.stats()["bytes"] // 6
        self.assertFalse(store.rescan(6))
        self.assertEqual(store.remove(KEY + b"2"), 1)
        self.assertTrue(store.rescan())
        self.assertEqual(store.stats()["entries"], 5)
        self.assertEqual(writer.remove(KEY + b"3"), 1)
        self.assertTrue(store.rescan())
        self.assertEqual(store.stats()["entries"], 4)
        self.assertEqual(store.stats()["bytes"], 4 * size)
        self.assertEqual(len(self.files()), 4)

    def test_passKeepsNoCopyOfTheIndex(self) -> None:
        """
        A pass in progress, with every entry used during it, keeps no
        second table of the entries: it costs a few bytes per entry where
        the index itself costs hundreds (found in the soak: such a copy
        doubled the index for the minutes a pass takes).
        """
        import gc
        import tracemalloc

        keys = [KEY + b"/%d" % i for i in range(1000)]
        for key in keys:
            self.put(b"x" * 100, key=key)
        self.assertTrue(self.store.rescan())
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        for key in keys:
            self.assertEqual(len(self.store.entries(key)), 1)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        self.assertFalse(self.store.rescan(500))
        for key in keys:
            self.assertEqual(len(self.store.entries(key)), 1)
        gc.collect()
        cost = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        self.assertLess(cost, 32 * len(keys), "a pass costs %d bytes" % (cost,))
        self.assertTrue(self.store.rescan())
        self.assertEqual(self.store.stats()["entries"], 1000)

    def test_hashCollision(self) -> None:
        """
        An entry whose stored primary key is not the key looked up (as after
        a hash collision) is not returned.
        """
        entry = self.put(b"x")
        otherKey = KEY + b"-other"
        folder = os.path.dirname(self.store._keyDir(otherKey) + "/")
        os.makedirs(folder, exist_ok=True)
        shutil.copy(entry.id.path, os.path.join(folder, os.path.basename(entry.id.path)))
        self.assertEqual(self.store.entries(otherKey), [])
        self.assertEqual(len(self.store.entries(KEY)), 1)

    def test_killedWriter(self) -> None:
        """
        A process killed (SIGKILL) while writing a body leaves no visible
        entry; what it committed before stays; a store opened afterwards
        removes its temporary file.
        """
        script = textwrap.dedent("""
            import sys, time
            from cachingproxy.cache.disk import DiskStore
            from cachingproxy.http.headers import Headers
            from cachingproxy.cache.policy import StoredEntry
            store = DiskStore(sys.argv[1])
            w = store.writer(b"http://done/", b"")
            w.write(b"d" * 1000)
            assert w.commit(StoredEntry(b"http://done/", b"GET", Headers(), 200,
                                        Headers(), 1.0, 2.0, 1000))
            w = store.writer(b"http://crash/", b"")
            w.write(b"x" * 1_000_000)
            print("writing", flush=True)
            while True:
                w.write(b"y" * 65536)
                time.sleep(0.005)
        """)
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        child = subprocess.Popen([sys.executable, "-c", script, self.directory],
                                 stdout=subprocess.PIPE, env=env)
        self.addCleanup(child.stdout.close)
        try:
            ready, _, _ = select.select([child.stdout], [], [], 30)
            self.assertTrue(ready, "the child did not start writing in time")
            self.assertEqual(child.stdout.readline(), b"writing\n")
            time.sleep(0.05)
            [temp] = self.tempFiles()
            self.assertGreater(os.path.getsize(os.path.join(self.directory, "tmp", temp)),
                               1_000_000)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        self.assertEqual(child.returncode, -signal.SIGKILL)
        fresh = self.makeDisk(self.directory)
        self.assertEqual(fresh.entries(b"http://crash/"), [])
        [done] = fresh.entries(b"http://done/")
        self.assertEqual(self.body(done, store=fresh), b"d" * 1000)
        self.assertEqual(self.tempFiles(), [])
        self.assertEqual(len(self.files()), 1)


class TieredStoreTests(DiskStoreTestsMixin, SynchronousTestCase):
    """
    L{TieredStore}: the shared behaviour, and never serving from memory
    what another process purged or replaced on disk.
    """

    test_anyBodyAnyRange = anyBodyAnyRange()

    def makeStore(self, maxSize: int = 1 << 22, maxObjectSize: int = 1 << 20):
        return self.makeTiered(_tempDir(self), maxSize, maxObjectSize)

    def makeTiered(self, directory=None, maxSize: int = 1 << 22,
                   maxObjectSize: int = 1 << 20) -> TieredStore:
        return TieredStore(MemoryStore(1 << 22, 1 << 17),
                           self.makeDisk(directory, maxSize, maxObjectSize))

    def test_servedFromMemory(self) -> None:
        """
        A small body stored through the tier is served from memory: damage
        to the body bytes on disk (the header intact) does not reach the
        reader.
        """
        entry = self.put(b"x" * 1000)
        self.assertIsInstance(entry.id, DiskHandle)
        with open(entry.id.path, "r+b") as f:
            f.seek(_HSIZE)
            f.write(b"DAMAGE")
        [found] = self.store.entries(KEY)
        self.assertEqual(self.body(found), b"x" * 1000)

    def test_largeBodiesNotInMemory(self) -> None:
        """
        Bodies over the memory's C{maxObjectSize} stay on disk only.
        """
        self.put(b"x" * 200_000)
        self.assertEqual(self.store.memory.stats()["entries"], 0)
        self.put(b"x" * 1000, variant=b"small")
        self.assertEqual(self.store.memory.stats()["entries"], 1)

    def test_largerBodiesEnterMemoryWhenRead(self) -> None:
        """
        A body over a 64th of the memory tier (64 KiB of these 4 MiB) is
        not copied into memory as it is stored, only when it is read whole
        from disk (asked for again): a large body stored once would push
        out dozens of small entries for nothing.
        """
        self.assertEqual(self.store.writeThroughMaxBody, 64 * 1024)
        entry = self.put(b"x" * 100_000)
        self.assertEqual(self.store.memory.stats()["entries"], 0)
        self.assertEqual(self.body(entry), b"x" * 100_000)
        self.assertEqual(self.store.memory.stats()["entries"], 1)
        self.put(b"x" * 60_000, variant=b"small")
        self.assertEqual(self.store.memory.stats()["entries"], 2)

    def test_otherProcessRemoves(self) -> None:
        """
        An entry purged by another process is not served from memory, at
        the next lookup or between lookup and read.
        """
        a = self.store
        b = self.makeTiered(self.directory)
        self.put(b"x" * 1000, store=a)
        self.assertEqual(b.remove(KEY), 1)
        self.assertEqual(a.entries(KEY), [])
        self.assertEqual(a.memory.stats()["entries"], 0)

        entry = self.put(b"y" * 1000, store=a)
        self.successResultOf(b.removePrefix(b"http://"))
        self.assertIsNone(a.openBody(entry))

    def test_otherProcessReplaces(self) -> None:
        """
        An entry replaced by another process is read from disk, headers and
        body, even when the new body has the same length.
        """
        a = self.store
        b = self.makeTiered(self.directory)
        old = self.put(b"1" * 1000, store=a, tag=b"old")
        self.put(b"2" * 1000, store=b, tag=b"new", responseTime=T0 + 1)
        self.assertIsNone(a.openBody(old))
        [now] = a.entries(KEY)
        self.assertEqual(now.responseHeaders.get(b"etag"), b'"new"')
        self.assertEqual(self.body(now, store=a), b"2" * 1000)

    def test_otherProcessUpdates(self) -> None:
        """
        Another process's C{update} is seen by the memory tier; this
        process's own update keeps the memory copy.
        """
        a = self.store
        b = self.makeTiered(self.directory)
        self.put(b"1" * 1000, store=a)
        [seen] = b.entries(KEY)
        self.assertTrue(b.update(dataclasses.replace(
            seen, responseHeaders=Headers([(b"X-Up", b"b")]))))
        [now] = a.entries(KEY)
        self.assertEqual(now.responseHeaders.get(b"x-up"), b"b")
        self.assertEqual(self.body(now, store=a), b"1" * 1000)
        self.assertTrue(a.update(dataclasses.replace(
            now, responseHeaders=Headers([(b"X-Up", b"a")]))))
        [again] = a.entries(KEY)
        self.assertEqual(again.responseHeaders.get(b"x-up"), b"a")
        self.assertEqual(a.memory.stats()["entries"], 1)
        [fromB] = b.entries(KEY)
        self.assertEqual(fromB.responseHeaders.get(b"x-up"), b"a")

    def test_promotedOnRead(self) -> None:
        """
        An entry another process stored is copied into memory when its body
        is read whole.
        """
        a = self.store
        b = self.makeTiered(self.directory)
        self.put(b"z" * 1000, store=b)
        [entry] = a.entries(KEY)
        self.assertEqual(a.memory.stats()["entries"], 0)
        self.assertEqual(self.body(entry, 0, 10, store=a), b"z" * 10)
        self.assertEqual(a.memory.stats()["entries"], 0)
        self.assertEqual(self.body(entry, store=a), b"z" * 1000)
        self.assertEqual(a.memory.stats()["entries"], 1)
        [entry] = a.entries(KEY)
        self.assertEqual(self.body(entry, store=a), b"z" * 1000)


class MemoryStampTests(SynchronousTestCase):
    """
    L{MemoryStore.stamp}: differs after every change, and remembers only
    stored keys.
    """

    def test_everyChangeSeen(self):
        """
        Storing, replacing and removing each give a stamp not seen before
        for the key; a removed key keeps no stamp in the table.
        """
        from cachingproxy.cache.memory import MemoryStore

        store = MemoryStore(1 << 20, 1 << 20)
        seen = [store.stamp(b"k")]
        for body in (b"one", b"two"):
            writer = store.writer(b"k", b"")
            writer.write(body)
            self.assertTrue(writer.commit(makeEntry(b"k", body)))
            seen.append(store.stamp(b"k"))
        store.remove(b"k")
        seen.append(store.stamp(b"k"))
        writer = store.writer(b"k", b"")
        writer.write(b"three")
        self.assertTrue(writer.commit(makeEntry(b"k", b"three")))
        seen.append(store.stamp(b"k"))
        self.assertEqual(len(set(seen[1:])), len(seen) - 1, seen)
        self.assertNotEqual(seen[-1], seen[0])
        store.remove(b"k")
        self.assertNotIn(b"k", store._stamps)


class DiskStampTests(SynchronousTestCase):
    """
    L{DiskStore.stamp} and L{DiskStore.stamper}: a change made through any
    store on the folder (another process's, here a second L{DiskStore} on
    the same folder) is seen at once through the shared change tokens, with
    no system call; a change made by hand is seen once the folder's time is
    read again, at most a C{recheckInterval} later.
    """

    def setUp(self) -> None:
        self.directory = _tempDir(self)
        self.monotonic = FakeClock(100.0)
        self.ours = self.store()
        self.theirs = self.store()
        self.folderReads = 0
        real = disk._folderTime

        def counting(folder):
            self.folderReads += 1
            return real(folder)

        self.patch(disk, "_folderTime", counting)

    def store(self, **kw) -> DiskStore:
        return DiskStore(self.directory, maxSize=1 << 20, maxObjectSize=1 << 16,
                         monotonic=self.monotonic, **kw)

    def put(self, store: DiskStore, key: bytes, body: bytes) -> None:
        writer = store.writer(key, b"")
        writer.write(body)
        self.assertTrue(writer.commit(makeEntry(key, body)))
        # Out of the 50 ms window in which a folder's time is not trusted;
        # every change below leaves the folder's time the same, as a coarse
        # file system clock could.
        os.utime(store._keyDir(key), ns=(1_000_000_000, 1_000_000_000))

    def test_changeByAnotherProcessSeenAtOnce(self):
        """
        A replacement, then a removal, through the other store: the
        remembered stamp no longer matches at the next check, though the
        folder's time reads the same and the interval has not passed.
        """
        self.put(self.theirs, b"k", b"one")
        stamp = self.ours.stamp(b"k")
        self.assertIsNotNone(stamp)
        check = self.ours.stamper(b"k")
        self.assertEqual(check(), stamp)
        self.put(self.theirs, b"k", b"two")
        self.assertNotEqual(check(), stamp)
        self.put(self.theirs, b"k", b"three")
        stamp = self.ours.stamp(b"k")
        check = self.ours.stamper(b"k")
        self.assertEqual(check(), stamp)
        self.theirs.remove(b"k")
        self.assertNotEqual(check(), stamp)

    def test_checksAreMemoryReads(self):
        """
        Checking a remembered stamp again and again reads the folder's time
        once per C{recheckInterval}, not once per check.
        """
        self.put(self.theirs, b"k", b"one")
        stamp = self.ours.stamp(b"k")
        check = self.ours.stamper(b"k")
        before = self.folderReads
        for _ in range(100):
            self.assertEqual(check(), stamp)
        self.assertEqual(self.folderReads - before, 1)
        self.monotonic.advance(self.ours.recheckInterval)
        self.assertEqual(check(), stamp)
        self.assertEqual(self.folderReads - before, 2)

    def test_changeByHandSeenAfterInterval(self):
        """
        A file removed by hand (no token changes) is seen once the
        interval has passed.
        """
        self.put(self.theirs, b"k", b"one")
        stamp = self.ours.stamp(b"k")
        check = self.ours.stamper(b"k")
        self.assertEqual(check(), stamp)
        shutil.rmtree(self.ours._keyDir(b"k"))
        self.assertEqual(check(), stamp)
        self.monotonic.advance(self.ours.recheckInterval)
        self.assertEqual(check(), ABSENT)

    def test_evictionChangesToken(self):
        """
        An entry evicted by another store's commit changes its key's token.
        """
        small = self.store()
        small.maxSize = 3000
        self.put(small, b"a", b"x" * 1000)
        stamp = self.ours.stamp(b"a")
        check = self.ours.stamper(b"a")
        self.put(small, b"b", b"y" * 1000)
        self.put(small, b"c", b"z" * 1000)
        self.assertEqual(self.ours.entries(b"a"), [])
        self.assertNotEqual(check(), stamp)

    def test_tokensFileReplacedByHand(self):
        """
        The tokens file removed by hand: the next stamp after the interval
        maps a new one, and every stamp remembered against the old one
        stops matching.
        """
        self.put(self.theirs, b"k", b"one")
        stamp = self.ours.stamp(b"k")
        check = self.ours.stamper(b"k")
        os.unlink(os.path.join(self.directory, "tokens"))
        self.monotonic.advance(self.ours.recheckInterval)
        self.ours.stamp(b"other")
        self.assertTrue(os.path.exists(os.path.join(self.directory, "tokens")))
        self.assertNotEqual(check(), stamp)

    def test_absentRemembered(self):
        """
        A key with nothing stored asked for again and again: the folder is
        looked at once, the answer remembered while its token holds, and
        again once a C{recheckInterval} has passed.
        """
        before = self.folderReads
        for _ in range(100):
            self.assertEqual(self.ours.stamp(b"k"), ABSENT)
        self.assertEqual(self.folderReads - before, 1)
        self.monotonic.advance(self.ours.recheckInterval)
        self.assertEqual(self.ours.stamp(b"k"), ABSENT)
        self.assertEqual(self.folderReads - before, 2)

    def test_absentForgottenWhenAnotherProcessStores(self):
        """
        A key remembered as having nothing stored, then stored through the
        other store: the next stamp sees it at once, and a lookup finds the
        entry; removed again, the key is absent again.
        """
        self.assertEqual(self.ours.stamp(b"k"), ABSENT)
        self.assertEqual(self.ours.stamp(b"k"), ABSENT)
        self.put(self.theirs, b"k", b"one")
        stamp = self.ours.stamp(b"k")
        self.assertNotIn(stamp, (ABSENT, None))
        self.assertEqual([e.bodyLength for e in self.ours.entries(b"k")], [3])
        self.theirs.remove(b"k")
        self.assertEqual(self.ours.stamp(b"k"), ABSENT)

    def test_absentForgottenWhenThisProcessStores(self):
        """
        The store's own commits change the token too.
        """
        self.assertEqual(self.ours.stamp(b"k"), ABSENT)
        self.put(self.ours, b"k", b"one")
        self.assertNotIn(self.ours.stamp(b"k"), (ABSENT, None))

    def test_absentMemoBounded(self):
        """
        The keys remembered as absent are bounded, least recent dropped.
        """
        self.patch(disk, "_ABSENT_MEMO", 3)
        for i in range(5):
            self.ours.stamp(b"k%d" % i)
        self.assertEqual(list(self.ours._absent), [b"k2", b"k3", b"k4"])

    def test_withoutTokens(self):
        """
        When the tokens file cannot be made, stamps are the folder's time,
        read on every check.
        """
        self.patch(disk, "_Tokens", lambda path: (_ for _ in ()).throw(OSError("no")))
        store = self.store()
        self.put(store, b"k", b"one")
        stamp = store.stamp(b"k")
        self.assertEqual(stamp, 1_000_000_000)
        check = store.stamper(b"k")
        before = self.folderReads
        self.assertEqual([check(), check()], [stamp, stamp])
        self.assertEqual(self.folderReads - before, 2)
