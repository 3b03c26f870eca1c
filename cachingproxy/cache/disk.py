# -*- test-case-name: tests.test_cache_store -*-
"""
The disk store: the cache every worker process shares, and that survives
restarts.

Layout under C{directory}::

    data/<kk>/<K>/<V>       one file per entry
    tmp/<pid>.<random>.tmp  entries being written

C{K} is the first 128 bits of SHA-256 of the primary key in hex, C{kk} its
first two digits (256 fan-out folders), C{V} the same for the variant key.
So L{DiskStore.entries} is one C{listdir} and L{DiskStore.remove} one
folder. The primary and variant keys are kept in each file, so a hash
collision is seen (and treated as a miss), never served.

An entry file is::

    [fixed header, 36 bytes][body][metadata]

The fixed header (L{_HEADER}, little endian): magic C{b"CPXCACHE"}, format
version (u16), flags (u16, 0), metadata length (u32), body length (u64),
CRC-32 of the metadata, CRC-32 of the body, CRC-32 of the 32 bytes before
it. The metadata is UTF-8 JSON: a list of the format version, the primary
and variant keys, the request method, the status, the request and response
times, and the request and response fields, each as one string of names and
values separated by NUL (or a list of strings when a field holds a NUL),
every byte string carried as a latin-1 decoded string. An incomplete
response (RFC 9111 section 3.3) adds two items: the byte ranges of the
representation it holds, as C{[start, end]} pairs (end exclusive), and the
complete length; its body is those ranges one after the other. Such a file
is as complete and checked as any other: it is the stored description of
part of a representation, written and renamed into place the same way.

Writing streams the body into a temporary file after a zeroed header; at
commit the metadata is appended, the header is written in place (seek 0),
the file flushed and C{os.replace}d onto its final name: readers see the
old entry or the new one, never a part. The body is never rewritten or
buffered in memory. No fsync: a killed process loses nothing visible
(the kernel has the data once flushed), and after a power loss a file
whose content did not reach the disk fails its size or CRC checks and is
dropped.

Reading checks the magic, version, header CRC, that the file size is
exactly header + body + metadata, and the metadata CRC; anything else is a
damaged file, which is removed and skipped (a miss, never an error). A body
read whole (every read of a body up to L{_SMALL}, and a streamed read of
the full range of a larger one) is checked against the body CRC; a
mismatch removes the entry and raises C{IOError} before the last bytes are
returned, so a client never gets a complete-looking wrong body.

Identity: an entry's C{id} is a L{DiskHandle} holding the path and the 36
header bytes seen at lookup. The header is a fingerprint of the content
(both lengths and both CRCs): L{DiskStore.openBody} and L{DiskStore.update}
compare it with the file's current header, so an entry replaced by another
process in between is not read with the old metadata (C{openBody} returns
C{None}, C{update} returns C{False}). C{update} copies the body into a new
file (C{copy_file_range}: in the kernel, and free on filesystems that share
extents) and moves the handle to the new file, so an C{openBody} of the
updated entry still works.

Change tokens: C{tokens} is a shared memory map (L{_Tokens}) of 65,536
eight-byte slots, one per group of key folders (chosen by the folder
name). Every change a process makes to a key folder (a commit, update,
removal or eviction) writes a new value, unique to that process and
change, into the folder's slot once the change is in place. A process that
remembers what a lookup found (the cache's hot path) reads the slot before
the lookup and again on each use: a changed value means look again. This
costs a memory read, where asking the file system (the folder's mtime)
costs a system call; the folder's mtime is still compared at most once a
L{DiskStore.recheckInterval} (a second), which catches files changed by
hand (use PURGE for an immediate effect).

Sharing across processes: the files are the truth. Every lookup lists the
key's folder, so any process sees another's commit, update or removal at
its next lookup. Size accounting and recency order are per process: each
process keeps an index of the files it knows (path, size, mtime) in least
recently used order, fed by its own commits and lookups and by
L{DiskStore.rescan}, an incremental walk of the tree that the caller runs
from time to time (say every minute) and that a process's first commits
advance by a bounded number of files each. A lookup sets a file's mtime to
now when it is older than C{touchInterval}, so other processes see the
recency too; before evicting its least recent file a process C{stat}s it,
and keeps it (moved to the recent end) when another process touched it
since. Between rescans, the disk may exceed C{maxSize} by what other
processes stored; a process only ever evicts to keep its own view under
the limit.

Errors: a full disk, a read-only or removed folder, or a permission problem
makes L{DiskEntryWriter.write} raise L{StoreFull} or C{commit} return
C{False}; lookups treat anything unexpected as a miss. Each kind of error is
logged once (again after the store has worked since). Folders are
recreated as needed, so the store works again once the cause is gone.

Temporary files of dead processes (same host and pid namespace), and any
older than C{staleTempAge} by mtime, are removed when a store opens and on
each rescan.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import mmap
import os
import struct
import time
import zlib
from collections import OrderedDict
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.task import Cooperator, coiterate
from twisted.logger import Logger
from zope.interface import implementer

from ..http.headers import Headers
from .policy import StoredEntry as _StoredEntry
from .store import ABSENT, BytesReader, IBodyReader, IEntryWriter, IStore, StoreFull

__all__ = ["DiskStore", "DiskHandle", "DiskEntryWriter", "FORMAT_VERSION"]

log = Logger()

FORMAT_VERSION = 1
_MAGIC = b"CPXCACHE"
#: magic, version, flags, metadata length, body length, metadata CRC,
#: body CRC, header CRC (of the 32 bytes before it).
_HEADER = struct.Struct("<8sHHIQIII")
_HSIZE = _HEADER.size
_HPREFIX = _HSIZE - 4
#: Metadata larger than this is damage, not an entry.
_MAX_META = 1 << 24
#: Bodies up to this size are read in one piece at openBody, CRC checked.
_SMALL = 1 << 16
_NAME_LEN = 32
#: How many keys L{DiskStore.stamp} remembers as having nothing stored.
_ABSENT_MEMO = 10000
_HEXDIGITS = frozenset("0123456789abcdef")

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_READ = os.O_RDONLY | _O_CLOEXEC
_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC

@functools.lru_cache(maxsize=8192)
def _hashName(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_NAME_LEN]


def _isName(name: str) -> bool:
    return len(name) == _NAME_LEN and _HEXDIGITS.issuperset(name)


def _encodeFields(fields: Headers):
    """
    Header fields as one latin-1 string, names and values separated by NUL
    (a byte no field may hold), or as a list of strings if one does.
    """
    flat = []
    for name, value in fields.items():
        flat.append(name)
        flat.append(value)
    if not flat:
        return ""
    joined = b"\0".join(flat)
    if joined.count(b"\0") == len(flat) - 1:
        return joined.decode("latin-1")
    return [item.decode("latin-1") for item in flat]


def _decodeFields(encoded) -> Headers:
    if isinstance(encoded, str):
        if not encoded:
            return Headers()
        flat = encoded.encode("latin-1").split(b"\0")
    else:
        flat = [item.encode("latin-1") for item in encoded]
    if len(flat) % 2:
        raise ValueError("odd field list")
    names = flat[0::2]
    return Headers.fromLowered(
        [(name.lower(), name, value) for name, value in zip(names, flat[1::2])]
    )


def _encodeMeta(key: bytes, variantKey: bytes, entry) -> bytes:
    meta = [
        FORMAT_VERSION,
        key.decode("latin-1"),
        variantKey.decode("latin-1"),
        entry.requestMethod.decode("latin-1"),
        int(entry.status),
        float(entry.requestTime),
        float(entry.responseTime),
        _encodeFields(entry.requestHeaders),
        _encodeFields(entry.responseHeaders),
    ]
    if entry.ranges is not None:
        meta.append([[start, end] for start, end in entry.ranges])
        meta.append(int(entry.completeLength))
    return json.dumps(
        meta,
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")


def _makeHeader(metaLength: int, bodyLength: int, metaCRC: int, bodyCRC: int) -> bytes:
    prefix = _HEADER.pack(_MAGIC, FORMAT_VERSION, 0, metaLength, bodyLength,
                          metaCRC, bodyCRC, 0)[:_HPREFIX]
    return prefix + struct.pack("<I", zlib.crc32(prefix))


def _parseHeader(header: bytes) -> Optional[Tuple[int, int, int, int]]:
    """
    @return: C{(metaLength, bodyLength, metaCRC, bodyCRC)}, or C{None} if
        C{header} is not a valid header of this format version.
    """
    if len(header) != _HSIZE:
        return None
    magic, version, flags, metaLength, bodyLength, metaCRC, bodyCRC, headCRC = \
        _HEADER.unpack(header)
    if (
        magic != _MAGIC
        or version != FORMAT_VERSION
        or flags != 0
        or headCRC != zlib.crc32(header[:_HPREFIX])
        or metaLength > _MAX_META
    ):
        return None
    return metaLength, bodyLength, metaCRC, bodyCRC


def _sizeIfSameBody(found: bytes, handle: "DiskHandle") -> Optional[int]:
    """
    Whether the file whose header is C{found} still holds the body that
    C{handle} saw: the same file, or one rewritten since with new metadata
    around the same body (a 304 freshened the entry, RFC 9111 section
    4.3.4, in this or another process).

    @return: the file's size as C{found} gives it, or C{None} when the
        file is another response's (or damaged).
    """
    if found == handle.header:
        return handle.size
    parsed = _parseHeader(found)
    wanted = _parseHeader(handle.header)
    if parsed is None or wanted is None or (parsed[1], parsed[3]) != (wanted[1], wanted[3]):
        return None
    return _HSIZE + parsed[0] + parsed[1]


class DiskHandle:
    """
    The C{id} of an entry read from a L{DiskStore}.

    @ivar path: the entry's file.
    @ivar key: the primary key.
    @ivar variantKey: the variant key.
    @ivar header: the file's fixed header when it was read (or last
        updated through this handle): a fingerprint of its content.
    @ivar size: the file's size then.
    """

    __slots__ = ("path", "key", "variantKey", "header", "size")

    def __init__(self, path: str, key: bytes, variantKey: bytes, header: bytes,
                 size: int) -> None:
        self.path = path
        self.key = key
        self.variantKey = variantKey
        self.header = header
        self.size = size

    @property
    def bodyLength(self) -> int:
        return _HEADER.unpack(self.header)[4]

    def __repr__(self) -> str:
        return f"<DiskHandle {self.path!r}>"


class _Damaged(Exception):
    """
    A stored file failed a check.
    """


@implementer(IBodyReader)
class _FileReader:
    """
    A range of a large body, read from an open file with C{pread}; the
    CRC is checked when the range is the whole body.
    """

    def __init__(self, store: "DiskStore", handle: DiskHandle, fd: int, offset: int,
                 length: int, bodyCRC: Optional[int]) -> None:
        self._store = store
        self._handle = handle
        self._fd = fd
        self._pos = offset
        self._left = length
        self._expected = bodyCRC
        self._crc = 0
        self.length = length

    def read(self, size: int) -> bytes:
        if self._left <= 0 or self._fd < 0:
            self.close()
            return b""
        wanted = min(size, self._left)
        try:
            data = os.pread(self._fd, wanted, self._pos)
        except OSError as e:
            self._fail("reading a stored body failed: %s" % (e,))
        if len(data) != wanted:
            self._fail("stored body is truncated")
        self._pos += wanted
        self._left -= wanted
        if self._expected is not None:
            self._crc = zlib.crc32(data, self._crc)
            if self._left == 0 and self._crc != self._expected:
                self._fail("stored body fails its checksum")
        return data

    def _fail(self, why: str):
        fd = self._fd
        try:
            self._store._removeDamaged(self._handle.path, fd, why)
        finally:
            self.close()
        raise IOError(why)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        self._left = 0
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()


@implementer(IEntryWriter)
class DiskEntryWriter:
    """
    Streams one body into a temporary file; L{commit} renames it into place.
    """

    def __init__(self, store: "DiskStore", key: bytes, variantKey: bytes) -> None:
        self._store = store
        self._key = key
        self._variantKey = variantKey
        self._file = None
        self._tmpPath: Optional[str] = None
        self._written = 0
        self._crc = 0
        self._done = False
        #: the handle of the committed entry
        self.committedId: Optional[DiskHandle] = None

    def _open(self) -> None:
        store = self._store
        path = os.path.join(store._tmpDir, "%d.%s.tmp" % (os.getpid(), os.urandom(8).hex()))
        try:
            fd = os.open(path, _O_CREATE, 0o644)
        except FileNotFoundError:
            os.makedirs(store._tmpDir, exist_ok=True)
            fd = os.open(path, _O_CREATE, 0o644)
        self._tmpPath = path
        self._file = open(fd, "wb", buffering=1 << 16)
        self._file.write(b"\0" * _HSIZE)

    def write(self, data: bytes) -> None:
        if self._done:
            raise StoreFull("this writer was aborted or committed")
        size = len(data)
        if self._written + size > self._store.maxObjectSize:
            self.abort()
            raise StoreFull("body larger than %d bytes" % (self._store.maxObjectSize,))
        if not size:
            return
        try:
            if self._file is None:
                self._open()
            self._file.write(data)
        except OSError as e:
            self._store._logError("write", e)
            self.abort()
            raise StoreFull("cannot write to the store: %s" % (e,)) from e
        self._crc = zlib.crc32(data, self._crc)
        self._written += size

    def commit(self, entry) -> bool:
        if self._done:
            return False
        store = self._store
        written = self._written
        if entry.bodyLength is not None and entry.bodyLength != written:
            log.warn("not storing {key!r}: {written} body bytes written, entry says {length}",
                     key=self._key, written=written, length=entry.bodyLength)
            self.abort()
            return False
        try:
            meta = _encodeMeta(self._key, self._variantKey, entry)
            header = _makeHeader(len(meta), written, zlib.crc32(meta), self._crc)
            if self._file is None:
                self._open()
            f = self._file
            f.write(meta)
            f.seek(0)
            f.write(header)
            f.flush()
            now = store._clock()
            os.utime(f.fileno(), ns=(int(now * 1e9),) * 2)
            size = _HSIZE + written + len(meta)
            self._file = None
            f.close()
            final = store._place(self._tmpPath, self._key, self._variantKey)
        except OSError as e:
            store._logError("commit", e)
            self.abort()
            return False
        except Exception:
            log.failure("storing {key!r} failed", key=self._key)
            self.abort()
            return False
        self._done = True
        self._tmpPath = None
        self.committedId = DiskHandle(final, self._key, self._variantKey, header, size)
        store._stored(final, size, now)
        return True

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self.abort()

    def abort(self) -> None:
        self._done = True
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass
        path, self._tmpPath = self._tmpPath, None
        if path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass


class _Tokens:
    """
    The change tokens of one cache folder (see the module docstring): a
    file of L{SLOTS} little-endian 64-bit values, mapped shared by every
    process that opens the folder.
    """

    SLOTS = 1 << 16
    _SLOT = struct.Struct("<Q")

    def __init__(self, path: str) -> None:
        size = self.SLOTS * 8
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o600)
        try:
            st = os.fstat(fd)
            if st.st_size < size:
                os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.path = path
        self.inode = (st.st_dev, st.st_ino)
        # Values unique to this process (with overwhelming likelihood) and
        # to each change it makes: a random high half, a count below.
        self._prefix = int.from_bytes(os.urandom(4), "little") << 32
        self._changes = 0

    def offset(self, folderName: str) -> int:
        return (int(folderName[:8], 16) & (self.SLOTS - 1)) * 8

    def read(self, folderName: str) -> bytes:
        return self.reader(folderName)()

    def reader(self, folderName: str) -> Callable[[], bytes]:
        """
        @return: a function reading C{folderName}'s slot.
        """
        offset = self.offset(folderName)
        return functools.partial(self.map.__getitem__, slice(offset, offset + 8))

    def bump(self, folderName: str) -> None:
        self._changes = (self._changes + 1) & 0xFFFFFFFF
        self._SLOT.pack_into(self.map, self.offset(folderName), self._prefix | self._changes)

    def moved(self) -> bool:
        """
        Whether the file at L{path} is no longer the one mapped (removed, or
        replaced, by hand).
        """
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self.inode

    def retire(self) -> None:
        """
        This map is being replaced: change every slot, so that whatever
        was remembered against it is looked up again.
        """
        self.map[:] = os.urandom(len(self.map))


@implementer(IStore)
class DiskStore:
    """
    Entries as files under C{directory}, shared by every process that opens
    the same folder. See the module docstring for the layout and rules.

    @ivar maxSize: the byte limit on the files (per process view).
    @ivar maxObjectSize: the largest body accepted.
    """

    def __init__(
        self,
        directory: str,
        maxSize: int = 1 << 30,
        maxObjectSize: int = 1 << 27,
        clock: Callable[[], float] = time.time,
        touchInterval: float = 60.0,
        staleTempAge: float = 3600.0,
        scanStep: int = 2000,
        recheckInterval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        cooperator: Optional[Cooperator] = None,
    ) -> None:
        """
        @param clock: the time used for mtimes (recency); temporary files
            are aged by the real time.
        @param touchInterval: a lookup refreshes a file's mtime when it is
            older than this.
        @param staleTempAge: temporary files older than this are removed.
        @param scanStep: how many files a commit scans while this process
            has not yet scanned the whole tree once.
        @param recheckInterval: a L{stamper}'s function, while the change
            tokens are usable, asks the file system at most this often.
        @param monotonic: the clock for C{recheckInterval}.
        @param cooperator: runs long walks (L{removePrefix}) a step at a
            time; by default Twisted's global one, on the reactor.
        """
        self._coiterate = cooperator.coiterate if cooperator is not None else coiterate
        self.directory = os.path.abspath(directory)
        self.maxSize = maxSize
        self.maxObjectSize = min(maxObjectSize, maxSize)
        self.touchInterval = touchInterval
        self.staleTempAge = staleTempAge
        self.scanStep = scanStep
        self._clock = clock
        self._dataDir = os.path.join(self.directory, "data")
        self._tmpDir = os.path.join(self.directory, "tmp")
        #: path -> [size, mtime, mark], least recently used first; the
        #: mark says what the rescan pass in progress knows of the file
        #: (see L{rescan}).
        self._index: "OrderedDict[str, List]" = OrderedDict()
        self._bytes = 0
        self._evictions = 0
        self._scan: Optional[Iterator[None]] = None
        #: the number of the latest rescan pass
        self._pass = 0
        #: path -> [size, mtime, mark]: files the pass in progress found
        #: that are not in the index (another process stored them)
        self._scanForeign: Dict[str, List] = {}
        self._scanned = False
        self._logged: Dict[tuple, float] = {}
        self.recheckInterval = recheckInterval
        self._monotonic = monotonic
        for folder in (self._dataDir, self._tmpDir):
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as e:
                self._logError("open", e)
        self._tokensPath = os.path.join(self.directory, "tokens")
        #: key -> (token reader, token, monotonic time): keys L{stamp}
        #: found nothing stored for (see there), least recent first
        self._absent: "OrderedDict[bytes, tuple]" = OrderedDict()
        self._tokens: Optional[_Tokens] = None
        self._tokensChecked = monotonic()
        self._openTokens()
        self.collectTemporary()

    def _openTokens(self) -> None:
        try:
            tokens = _Tokens(self._tokensPath)
        except (OSError, ValueError) as e:
            self._logError("open the change tokens", e)
            return
        old, self._tokens = self._tokens, tokens
        self._absent.clear()
        if old is not None:
            old.retire()

    def _checkTokens(self) -> None:
        """
        At most once a L{recheckInterval}: map the tokens file again if it
        was removed or replaced (the cache folder removed by hand, say).
        """
        now = self._monotonic()
        if now - self._tokensChecked < self.recheckInterval:
            return
        self._tokensChecked = now
        if self._tokens is None or self._tokens.moved():
            self._openTokens()

    def _changed(self, folder: str) -> None:
        """
        A key folder's content changed: give it a new token.
        """
        tokens = self._tokens
        if tokens is not None:
            tokens.bump(os.path.basename(folder))

    # -- paths ----------------------------------------------------------------

    def _keyDir(self, key: bytes) -> str:
        h = _hashName(key)
        return os.path.join(self._dataDir, h[:2], h)

    def stamp(self, key: bytes) -> object:
        """
        A token that differs after any change to C{key}'s variants: the
        folder's change token (read first) with the modification time of
        the key's folder, which every store, replacement, update and
        removal of a file in it changes (all are renames or unlinks in
        that folder), whoever made it.

        The kernel stamps times with a coarse clock, so two changes within
        one tick could share a time: a folder changed in the last 50 ms
        gives C{None} (no stamp to trust yet), so that a later change can
        never carry the stamp a caller remembered.

        An L{ABSENT} answer is remembered (L{_ABSENT_MEMO} keys at most)
        with the token read before it: while the folder's token is the
        same, and for at most a L{recheckInterval}, the answer is given
        again without asking the file system (a key asked for again and
        again whose responses are never stored, say). Any change through a
        store, in any process, changes the token.

        @return: the stamp, L{ABSENT} if nothing is stored, or C{None}.
        """
        # (_checkTokens, with the clock read once for both checks)
        now = self._monotonic()
        interval = self.recheckInterval
        if now - self._tokensChecked >= interval:
            self._checkTokens()
        tokens = self._tokens
        absent = self._absent
        if tokens is not None:
            known = absent.get(key)
            if known is not None:
                read, token, checked = known
                if read() == token and now - checked < interval:
                    return ABSENT
                del absent[key]
        folder = self._keyDir(key)
        if tokens is None:
            return _folderTime(folder)
        read = tokens.reader(os.path.basename(folder))
        token = read()
        mtime = _folderTime(folder)
        if mtime is ABSENT:
            absent[key] = (read, token, self._monotonic())
            if len(absent) > _ABSENT_MEMO:
                absent.popitem(last=False)
            return mtime
        if mtime is None:
            return mtime
        return (token, mtime)

    def stamper(self, key: bytes):
        """
        @return: a function returning what L{stamp}C{(key)} would, for
            callers that check it on every hit: with change tokens, it
            reads the token each time (a memory read) and the folder's time
            at most once a L{recheckInterval}.
        """
        folder = self._keyDir(key)
        tokens = self._tokens
        if tokens is None:
            return functools.partial(_folderTime, folder)
        read = tokens.reader(os.path.basename(folder))
        monotonic = self._monotonic
        interval = self.recheckInterval
        last = [None, None]

        def stamp() -> object:
            token = read()
            now = monotonic()
            checked = last[1]
            if checked is None or now - checked >= interval:
                last[0] = _folderTime(folder)
                last[1] = now
            mtime = last[0]
            if mtime is None or mtime is ABSENT:
                return mtime
            return (token, mtime)

        return stamp

    def _place(self, tmpPath: str, key: bytes, variantKey: bytes) -> str:
        """
        Rename C{tmpPath} into place, recreating the key's folder if it is
        missing (or was removed by another process meanwhile).
        """
        folder = self._keyDir(key)
        final = os.path.join(folder, _hashName(variantKey))
        for attempt in range(3):
            try:
                os.replace(tmpPath, final)
                self._changed(folder)
                return final
            except FileNotFoundError:
                if not os.path.exists(tmpPath) or attempt == 2:
                    raise
                os.makedirs(folder, exist_ok=True)
        raise AssertionError("unreachable")

    # -- errors ---------------------------------------------------------------

    #: Seconds between two log lines about the same kind of failure (a full
    #: disk would otherwise log on every request).
    logInterval = 60.0

    def _logError(self, what: str, error: BaseException) -> None:
        kind = (what, getattr(error, "errno", None) or type(error).__name__)
        now = time.monotonic()
        last = self._logged.get(kind)
        if last is not None and now - last < self.logInterval:
            return
        self._logged[kind] = now
        log.warn("disk cache {directory}: {what} failed: {error} (the proxy serves "
                 "uncached meanwhile)", directory=self.directory, what=what, error=error)

    def _removeDamaged(self, path: str, fd: Optional[int], why: str) -> None:
        """
        Remove the damaged file at C{path}, if C{path} still names the file
        open as C{fd} (not a replacement stored meanwhile).
        """
        log.warn("disk cache: removing damaged {path}: {why}", path=path, why=why)
        try:
            if fd is not None and fd >= 0:
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    return
            os.unlink(path)
        except OSError:
            return
        self._changed(os.path.dirname(path))
        self._forget(path)

    # -- index ----------------------------------------------------------------

    def _stored(self, path: str, size: int, mtime: float) -> None:
        if self._logged:
            self._logged.clear()
            log.info("disk cache {directory}: storing again", directory=self.directory)
        self._know(path, size, mtime)
        if not self._scanned:
            self.rescan(self.scanStep)
        self._evict(keep=path)

    def _know(self, path: str, size: int, mtime: float) -> None:
        index = self._index
        old = index.get(path)
        # Used by this process (during the pass in progress, if any).
        mark = -self._pass
        if old is None:
            index[path] = [size, mtime, mark]
            self._bytes += size
            if self._scanForeign:
                self._scanForeign.pop(path, None)
        else:
            self._bytes += size - old[0]
            old[0] = size
            old[1] = mtime
            old[2] = mark
            index.move_to_end(path)

    def _forget(self, path: str) -> None:
        old = self._index.pop(path, None)
        if old is not None:
            self._bytes -= old[0]
        if self._scanForeign:
            self._scanForeign.pop(path, None)

    def _evict(self, keep: Optional[str] = None) -> None:
        """
        Remove least recently used files until this process's view is
        under C{maxSize}. A file another process touched since this one
        last saw it is kept and moved to the recent end.
        """
        index = self._index
        budget = len(index) * 2 + 1
        while self._bytes > self.maxSize and index and budget > 0:
            budget -= 1
            path, known = next(iter(index.items()))
            mtime = known[1]
            if path == keep and len(index) > 1:
                index.move_to_end(path)
                continue
            try:
                st = os.stat(path)
            except OSError:
                self._forget(path)
                continue
            if st.st_mtime > mtime + 1e-6 and path != keep:
                self._know(path, st.st_size, st.st_mtime)
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                self._logError("evict", e)
                index.move_to_end(path)
                continue
            else:
                self._evictions += 1
                self._changed(os.path.dirname(path))
            self._forget(path)
            try:
                os.rmdir(os.path.dirname(path))
            except OSError:
                pass

    def rescan(self, limit: Optional[int] = None) -> bool:
        """
        Advance the walk of the tree that rebuilds this process's index
        (sizes and recency by mtime) and so reconciles it with what other
        processes stored and removed; then evict if over the limit.

        A pass keeps no second copy of the index: each index entry carries
        a mark, C{P} once the walk of pass C{P} found the file, C{-P} once
        this process used it (stored or looked it up) during the pass; only
        the files of other processes the walk finds wait in a table of
        their own until the pass ends. At the end, the files found and not
        used come first, least recent mtime first, then those used, in the
        order they were used; files neither found nor used (removed by
        another process) are forgotten.

        @param limit: how many files to look at in this call (C{None}: all).
        @return: whether a full pass has just completed.
        """
        if self._scan is None:
            self._pass += 1
            self._scanForeign = {}
            self._scan = self._walk(self._pass)
        scan = self._scan
        count = 0
        try:
            while limit is None or count < limit:
                next(scan)
                count += 1
        except StopIteration:
            pass
        else:
            return False
        self._scan = None
        self._endPass(self._pass)
        self._scanned = True
        self.collectTemporary()
        self._evict()
        return True

    def _endPass(self, mark: int) -> None:
        index = self._index
        foreign, self._scanForeign = self._scanForeign, {}
        found = [path for path, known in index.items() if known[2] == mark]
        used = [path for path, known in index.items() if known[2] == -mark]
        found.extend(foreign)
        found.sort(key=lambda path: (index.get(path) or foreign[path])[1])
        for path in found:
            if path in index:
                index.move_to_end(path)
            else:
                index[path] = foreign[path]
        for path in used:
            index.move_to_end(path)
        # What is left in front was neither on disk for the walk nor used.
        for _ in range(len(index) - len(found) - len(used)):
            index.popitem(last=False)
        self._bytes = sum(known[0] for known in index.values())

    def _walk(self, mark: int) -> Iterator[None]:
        index = self._index
        foreign = self._scanForeign
        try:
            fans = sorted(os.listdir(self._dataDir))
        except OSError as e:
            self._logError("scan", e)
            return
        for fan in fans:
            fanDir = os.path.join(self._dataDir, fan)
            try:
                keys = os.listdir(fanDir)
            except OSError:
                continue
            for keyName in keys:
                keyDir = os.path.join(fanDir, keyName)
                try:
                    scanner = os.scandir(keyDir)
                except OSError:
                    continue
                empty = True
                with scanner:
                    for item in scanner:
                        empty = False
                        if not _isName(item.name):
                            continue
                        try:
                            st = item.stat()
                        except OSError:
                            continue
                        path = item.path
                        known = index.get(path)
                        if known is None:
                            foreign[path] = [st.st_size, st.st_mtime, mark]
                        elif known[2] != -mark:
                            # Not used here since the pass began: what the
                            # disk says (another process may have touched it).
                            self._bytes += st.st_size - known[0]
                            known[0] = st.st_size
                            known[1] = st.st_mtime
                            known[2] = mark
                        yield None
                if empty:
                    # Left by a removal that raced with a commit; a
                    # commit that loses this race recreates it.
                    try:
                        os.rmdir(keyDir)
                    except OSError:
                        pass

    def collectTemporary(self) -> int:
        """
        Remove temporary files left by dead processes, or older than
        C{staleTempAge}.

        @return: how many were removed.
        """
        removed = 0
        try:
            names = os.listdir(self._tmpDir)
        except OSError:
            return 0
        now = time.time()
        me = os.getpid()
        for name in names:
            path = os.path.join(self._tmpDir, name)
            pid = name.partition(".")[0]
            try:
                stale = os.stat(path).st_mtime < now - self.staleTempAge
                if not stale and pid.isdigit() and int(pid) != me:
                    stale = not _alive(int(pid))
                if stale:
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue
        return removed

    # -- IStore -----------------------------------------------------------------

    def entries(self, key: bytes) -> List[object]:
        try:
            folder = self._keyDir(key)
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                return []
            found = []
            for name in names:
                if len(name) != _NAME_LEN:
                    continue
                entry = self._load(os.path.join(folder, name), key)
                if entry is not None:
                    found.append(entry)
            return found
        except Exception as e:
            self._logError("lookup", e)
            return []

    def versions(self, key: bytes) -> Dict[bytes, object]:
        """
        A slot is an entry file's name, a version its fixed header (both
        lengths and both CRC-32s, of the body and of the metadata, which
        holds the response time): a file replaced or updated (with
        C{os.replace}, always a new file) has another header, except with a
        probability of about 2**-64.
        """
        try:
            folder = self._keyDir(key)
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                return {}
            found = {}
            for name in names:
                if len(name) != _NAME_LEN:
                    continue
                header = self._peek(os.path.join(folder, name))
                if header is not None:
                    found[name.encode("ascii")] = header
            return found
        except Exception as e:
            self._logError("lookup", e)
            return {}

    def load(self, key: bytes, slot: bytes):
        try:
            return self._load(os.path.join(self._keyDir(key), slot.decode("ascii")), key)
        except Exception as e:
            self._logError("lookup", e)
            return None

    def versionOf(self, entry) -> Optional[Tuple[bytes, object]]:
        handle = entry.id
        if not isinstance(handle, DiskHandle):
            return None
        return os.path.basename(handle.path).encode("ascii"), handle.header

    def currentVersion(self, entry) -> Optional[object]:
        handle = entry.id
        if not isinstance(handle, DiskHandle):
            return None
        try:
            return self._peek(handle.path, touch=False)
        except Exception as e:
            self._logError("read", e)
            return None

    def _load(self, path: str, key: Optional[bytes]):
        """
        @return: the entry stored at C{path} (refreshing its recency), or
            C{None} if it is gone, damaged (then removed), or stored under
            another primary key than C{key}.
        """
        try:
            fd = os.open(path, _O_READ)
        except FileNotFoundError:
            self._forget(path)
            return None
        try:
            st = os.fstat(fd)
            size = st.st_size
            try:
                if size <= _SMALL:
                    data = os.pread(fd, size, 0)
                    header = data[:_HSIZE]
                else:
                    data = None
                    header = os.pread(fd, _HSIZE, 0)
                parsed = _parseHeader(header)
                if parsed is None:
                    raise _Damaged("bad header")
                metaLength, bodyLength, metaCRC, bodyCRC = parsed
                metaStart = _HSIZE + bodyLength
                if size != metaStart + metaLength:
                    raise _Damaged("size %d, header says %d" % (size, metaStart + metaLength))
                if data is not None:
                    meta = data[metaStart:]
                else:
                    meta = os.pread(fd, metaLength, metaStart)
                if len(meta) != metaLength or zlib.crc32(meta) != metaCRC:
                    raise _Damaged("metadata checksum")
                try:
                    decoded = json.loads(meta)
                    ranges = completeLength = None
                    if len(decoded) == 11:
                        ranges = tuple((int(a), int(b)) for a, b in decoded[9])
                        completeLength = int(decoded[10])
                        if sum(b - a for a, b in ranges) != bodyLength:
                            raise ValueError("ranges and body length disagree")
                        del decoded[9:]
                    (version, storedKey, variant, method, status, requestTime,
                     responseTime, request, response) = decoded
                    storedKey = storedKey.encode("latin-1")
                    if version != FORMAT_VERSION:
                        raise ValueError("metadata version")
                    if key is not None and storedKey != key:
                        return None
                    handle = DiskHandle(path, storedKey, variant.encode("latin-1"), header,
                                        size)
                    entry = _StoredEntry(
                        key=storedKey,
                        requestMethod=method.encode("latin-1"),
                        requestHeaders=_decodeFields(request),
                        status=status,
                        responseHeaders=_decodeFields(response),
                        requestTime=requestTime,
                        responseTime=responseTime,
                        bodyLength=bodyLength,
                        id=handle,
                        ranges=ranges,
                        completeLength=completeLength,
                    )
                except Exception as e:
                    raise _Damaged("metadata undecodable: %s" % (e,))
            except _Damaged as e:
                self._removeDamaged(path, fd, str(e))
                return None
            now = self._clock()
            mtime = st.st_mtime
            if now - mtime > self.touchInterval:
                try:
                    os.utime(fd, ns=(int(now * 1e9),) * 2)
                    mtime = now
                except OSError:
                    pass
            self._know(path, size, mtime)
            return entry
        finally:
            os.close(fd)

    def _peek(self, path: str, touch: bool = True) -> Optional[bytes]:
        """
        @return: the fixed header of the file at C{path} (refreshing its
            recency if C{touch}), or C{None} if there is no file.
        """
        try:
            fd = os.open(path, _O_READ)
        except FileNotFoundError:
            self._forget(path)
            return None
        try:
            header = os.pread(fd, _HSIZE, 0)
            if touch:
                st = os.fstat(fd)
                now = self._clock()
                mtime = st.st_mtime
                if now - mtime > self.touchInterval:
                    try:
                        os.utime(fd, ns=(int(now * 1e9),) * 2)
                        mtime = now
                    except OSError:
                        pass
                self._know(path, st.st_size, mtime)
            return header
        finally:
            os.close(fd)

    def _openChecked(self, handle: DiskHandle) -> Optional[int]:
        """
        @return: a descriptor of C{handle}'s file if it is still the file
            the handle saw, else C{None}.
        """
        try:
            fd = os.open(handle.path, _O_READ)
        except FileNotFoundError:
            self._forget(handle.path)
            return None
        try:
            size = _sizeIfSameBody(os.pread(fd, _HSIZE, 0), handle)
            if size is None:
                os.close(fd)
                return None
            if os.fstat(fd).st_size != size:
                self._removeDamaged(handle.path, fd, "size changed")
                os.close(fd)
                return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def openBody(self, entry, start: int = 0, end: Optional[int] = None):
        try:
            handle = entry.id
            if not isinstance(handle, DiskHandle):
                return None
            metaLength, bodyLength, metaCRC, bodyCRC = _HEADER.unpack(handle.header)[3:7]
            if end is None or end > bodyLength:
                end = bodyLength
            start = max(0, min(start, end))
            if bodyLength <= _SMALL:
                try:
                    fd = os.open(handle.path, _O_READ)
                except FileNotFoundError:
                    self._forget(handle.path)
                    return None
                try:
                    data = os.pread(fd, _HSIZE + bodyLength, 0)
                    if _sizeIfSameBody(data[:_HSIZE], handle) is None:
                        return None
                    body = data[_HSIZE:]
                    if len(body) != bodyLength or zlib.crc32(body) != bodyCRC:
                        self._removeDamaged(handle.path, fd, "body checksum or length")
                        return None
                finally:
                    os.close(fd)
                if start == 0 and end == bodyLength:
                    return BytesReader(body)
                return BytesReader(body[start:end])
            fd = self._openChecked(handle)
            if fd is None:
                return None
            whole = start == 0 and end == bodyLength
            return _FileReader(self, handle, fd, _HSIZE + start, end - start,
                               bodyCRC if whole else None)
        except Exception as e:
            self._logError("read", e)
            return None

    def writer(self, key: bytes, variantKey: bytes) -> DiskEntryWriter:
        return DiskEntryWriter(self, key, variantKey)

    def update(self, entry) -> bool:
        handle = entry.id
        if not isinstance(handle, DiskHandle):
            return False
        try:
            fd = self._openChecked(handle)
        except OSError as e:
            self._logError("update", e)
            return False
        if fd is None:
            return False
        writer = DiskEntryWriter(self, handle.key, handle.variantKey)
        try:
            bodyLength, _, bodyCRC = _HEADER.unpack(handle.header)[4:7]
            try:
                writer._open()
                f = writer._file
                f.flush()
                _copyRange(fd, f.fileno(), _HSIZE, bodyLength)
                f.seek(_HSIZE + bodyLength)
                meta = _encodeMeta(handle.key, handle.variantKey, entry)
                header = _makeHeader(len(meta), bodyLength, zlib.crc32(meta), bodyCRC)
                f.write(meta)
                f.seek(0)
                f.write(header)
                f.flush()
                now = self._clock()
                os.utime(f.fileno(), ns=(int(now * 1e9),) * 2)
                writer._file = None
                f.close()
                # Another process may have replaced or removed it meanwhile.
                if _readHeader(handle.path) != handle.header:
                    writer.abort()
                    return False
                final = self._place(writer._tmpPath, handle.key, handle.variantKey)
            except OSError as e:
                self._logError("update", e)
                writer.abort()
                return False
        finally:
            os.close(fd)
        writer._tmpPath = None
        writer._done = True
        size = _HSIZE + bodyLength + len(meta)
        handle.header = header
        handle.size = size
        self._stored(final, size, now)
        return True

    def remove(self, key: bytes) -> int:
        return self._removeFolder(self._keyDir(key))

    def _removeFolder(self, folder: str) -> int:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return 0
        except OSError as e:
            self._logError("remove", e)
            return 0
        removed = 0
        for name in names:
            path = os.path.join(folder, name)
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                self._logError("remove", e)
                continue
            self._forget(path)
            if _isName(name):
                removed += 1
        if names:
            self._changed(folder)
        try:
            os.rmdir(folder)
        except OSError:
            pass
        return removed

    def removePrefix(self, prefix: bytes) -> Deferred:
        """
        Walk every key folder and read one entry's primary key from it (the
        folders are named by hash): proportional to the number of keys
        stored, meant for administration. The walk goes one key folder a
        step, with the store's cooperator, so that the reactor serves other
        requests meanwhile.
        """
        removed = [0]
        d = self._coiterate(self._prefixWalk(prefix, removed))
        d.addCallback(lambda _: removed[0])
        return d

    def _prefixWalk(self, prefix: bytes, removed: List[int]) -> Iterator[None]:
        """
        The steps of L{removePrefix}: each one a key folder, counting the
        entries removed into C{removed[0]}.
        """
        try:
            fans = os.listdir(self._dataDir)
        except OSError as e:
            self._logError("remove", e)
            return
        for fan in fans:
            fanDir = os.path.join(self._dataDir, fan)
            try:
                keyNames = os.listdir(fanDir)
            except OSError:
                continue
            for keyName in keyNames:
                keyDir = os.path.join(fanDir, keyName)
                key = self._folderKey(keyDir)
                if key is not None and key.startswith(prefix):
                    removed[0] += self._removeFolder(keyDir)
                yield None

    def _folderKey(self, keyDir: str) -> Optional[bytes]:
        try:
            names = os.listdir(keyDir)
        except OSError:
            return None
        for name in names:
            if not _isName(name):
                continue
            entry = self._load(os.path.join(keyDir, name), None)
            if entry is not None:
                return entry.key
        return None

    def stats(self) -> dict:
        return {
            "entries": len(self._index),
            "bytes": self._bytes,
            "limit": self.maxSize,
            "evictions": self._evictions,
            "scanned": self._scanned,
        }

    def close(self) -> None:
        self._scan = None
        self._scanForeign = {}
        self._index = OrderedDict()
        self._bytes = 0


def _folderTime(folder: str) -> object:
    """
    A key folder's modification time in ns; L{ABSENT} if there is no
    such folder, C{None} if it cannot be read or changed in the last 50 ms
    (see L{DiskStore.stamp}).
    """
    try:
        mtime = os.stat(folder).st_mtime_ns
    except FileNotFoundError:
        return ABSENT
    except OSError:
        return None
    if time.time_ns() - mtime < 50_000_000:
        return None
    return mtime


def _readHeader(path: str) -> Optional[bytes]:
    try:
        fd = os.open(path, _O_READ)
    except OSError:
        return None
    try:
        return os.pread(fd, _HSIZE, 0)
    finally:
        os.close(fd)


def _copyRange(src: int, dst: int, offset: int, count: int) -> None:
    """
    Copy C{count} bytes of C{src} from C{offset} to the current position of
    C{dst}, in the kernel when it can.
    """
    copy = getattr(os, "copy_file_range", None)
    while count > 0:
        n = 0
        if copy is not None:
            try:
                n = copy(src, dst, min(count, 1 << 30), offset)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                copy = None
                continue
        else:
            data = os.pread(src, min(count, 1 << 20), offset)
            n = len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view):]
        if n == 0:
            raise OSError(errno.EIO, "stored body shorter than its header says")
        offset += n
        count -= n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


