# -*- test-case-name: tests.test_filllock -*-
"""
The fill lock of the processes sharing one cache folder
(L{LocalFillLock}, an L{cachingproxy.cache.collapse.IFillLock}): the
cross-process step of collapsed forwarding on one machine.

Layout under the cache folder::

    locks/<K>.lock    the fill lock of one key, held with flock
    locks/<K>.pass    a pass marker: its text is when it expires
    locks/<K>.<pid>.<random>.tmp   a pass marker being written

C{K} is the first 128 bits of SHA-256 of the primary key in hex, as in the
disk store.

The lock is C{flock(LOCK_EX | LOCK_NB)} on the key's lock file: the kernel
releases it when the holder's process dies, however it dies. The holder
removes the file when it is done (while it still holds the lock), so lock
files exist only for fills in progress and for holders that died; a process
that takes a lock checks that the file it locked is still the one at the
path (not one just removed by its previous holder). L{LocalFillLock.sweep},
run with the store's housekeeping, removes lock files nobody holds, expired
pass markers and abandoned temporary files.

A waiter is a timer per key and process (only one request per process
waits, the others wait in its L{cachingproxy.cache.collapse.Flight}). With
L{LocalFillLock.watchRemovals} (Linux's inotify), the removal of the
key's lock file (its holder committed, marked a pass or gave up) runs the
checks at once; while any wait is on, the process watches the lock folder
for removals. Otherwise, and as the safety net (a holder that died
removes nothing), the timer
fires every C{pollInterval} (jittered, half to one and a half times) and
checks, cheapest first: the store's change stamp for the key (for the
disk store, a memory read while nothing is stored under the key, else a
C{stat} of its folder: a commit by any process changes it), then what
the store holds (only when the stamp moved, to tell this key's change
from another's), the pass marker, and the lock itself (free when its
holder gave up or died: the waiter takes it over). The wait ends at
C{maxWait} in any case.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import random
import time
from typing import Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from .collapse import NO_LEASE, Busy, IFillLock, ILease, Waited

__all__ = ["LocalFillLock"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NAME_LEN = 32


def _name(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:_NAME_LEN]


def _sameFile(fd: int, path: str) -> bool:
    """
    Whether C{path} still names the file open as C{fd}.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _lockFile(path: str, create: bool = True) -> Optional[int]:
    """
    Take the lock on the file at C{path}.

    @return: the descriptor holding it, or C{None} if another holds it
        (or, with C{create} false, there is no such file).
    @raise OSError: if the folder cannot be used.
    """
    flags = os.O_RDWR | _O_CLOEXEC | (os.O_CREAT if create else 0)
    for _ in range(3):
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            if not create:
                return None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if _sameFile(fd, path):
            return fd
        # Its holder removed it just before we locked it: try the new one.
        os.close(fd)
        if not create:
            return None
    return None


def _unlock(fd: int, path: str) -> None:
    """
    Remove the lock file (while still holding it), then let go.
    """
    try:
        os.unlink(path)
    except OSError:
        pass
    os.close(fd)


@implementer(ILease)
class _LocalLease:
    """
    The fill lock of one key, held with C{flock} on its lock file.
    """

    _log = Logger()

    def __init__(self, owner: "LocalFillLock", key: bytes, fd: int, name: str) -> None:
        self._owner = owner
        self.key = key
        self._fd: Optional[int] = fd
        self._name = name

    def _end(self) -> bool:
        fd, self._fd = self._fd, None
        if fd is None:
            return False
        self._owner.held -= 1
        _unlock(fd, self._owner._path(self._name, ".lock"))
        return True

    def commit(self) -> Deferred:
        if self._fd is not None:
            try:
                os.unlink(self._owner._path(self._name, ".pass"))
            except OSError:
                pass
        self._end()
        return succeed(None)

    def markPass(self) -> Deferred:
        if self._fd is not None:
            owner = self._owner
            try:
                owner._writePass(self._name)
            except OSError as e:
                owner._logError("write a pass marker", e)
        self._end()
        return succeed(None)

    def release(self) -> Deferred:
        self._end()
        return succeed(None)


class _Wait:
    """
    One process's wait for another's fill of C{key} (see the module
    docstring).
    """

    def __init__(self, owner: "LocalFillLock", key: bytes, name: str, maxWait: float) -> None:
        self._owner = owner
        self.key = key
        self._name = name
        self._start = owner.clock.seconds()
        self._deadline = self._start + maxWait
        self._call = None
        self.result = Deferred(lambda d: self._cancel())
        store = owner.store
        self._lastStamp = store.stamp(key)
        self._versions = store.versions(key)

    def start(self) -> Deferred:
        self._schedule()
        return self.result

    def _schedule(self) -> None:
        owner = self._owner
        remaining = self._deadline - owner.clock.seconds()
        delay = owner.pollInterval * (0.5 + owner.random())
        self._call = owner.clock.callLater(max(0.0, min(delay, remaining)), self._tick)

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._owner._ended(self)

    def _finish(self, result) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._owner._ended(self)
        self.result.callback(result)

    def wake(self) -> None:
        """
        The key's lock file was removed: check now.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
            self._tick()

    def _waited(self) -> float:
        return self._owner.clock.seconds() - self._start

    def _changed(self) -> bool:
        """
        Whether what is stored under the key changed since the wait began:
        the stamp first (cheap), then, when it moved, the variants (the
        stamp may be shared with other keys).
        """
        stamp = self._owner.store.stamp(self.key)
        if stamp is not None and stamp == self._lastStamp:
            return False
        self._lastStamp = stamp
        return self._owner.store.versions(self.key) != self._versions

    def _tick(self) -> None:
        self._call = None
        owner = self._owner
        try:
            if self._changed():
                self._finish(Busy(Waited.STORED, self._waited()))
                return
            if owner._passActive(self._name):
                self._finish(Busy(Waited.PASS, self._waited()))
                return
            fd = _lockFile(owner._path(self._name, ".lock"))
        except OSError as e:
            owner._logError("wait for a fill", e)
            self._finish(NO_LEASE)
            return
        if fd is not None:
            # Its holder gave up, or died: this process fills.
            owner.held += 1
            owner.takenOver += 1
            self._finish(_LocalLease(owner, self.key, fd, self._name))
            return
        if owner.clock.seconds() >= self._deadline:
            owner.timeouts += 1
            self._finish(Busy(Waited.TIMEOUT, self._waited()))
            return
        self._schedule()


class _Removals:
    """
    Files removed from a folder, through inotify, while started.
    """

    def __init__(self, reactor, directory: str, removed: Callable[[str], None]) -> None:
        self._reactor = reactor
        self._path = directory.encode("utf-8")
        self._removed = removed
        self._notifier = None
        self.watching = False

    def start(self) -> None:
        if self.watching:
            return
        from twisted.internet import inotify
        from twisted.python.filepath import FilePath

        if self._notifier is None:
            self._notifier = inotify.INotify(self._reactor)
        self._notifier.watch(FilePath(self._path), mask=inotify.IN_DELETE | inotify.IN_MOVED_FROM,
                             callbacks=[self._event])
        self._notifier.startReading()
        self.watching = True

    def _event(self, ignored, path, mask) -> None:
        name = path.basename()
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        self._removed(name)

    def stop(self) -> None:
        if not self.watching:
            return
        from twisted.python.filepath import FilePath

        self.watching = False
        self._notifier.stopReading()
        try:
            self._notifier.ignore(FilePath(self._path))
        except (KeyError, OSError):
            pass


@implementer(IFillLock)
class LocalFillLock:
    """
    The fill lock of the processes sharing one cache folder (see the
    module docstring).

    @ivar directory: the folder of the lock files.
    @ivar store: the L{cachingproxy.cache.store.IStore} the fills go to
        (its stamps wake the waiters).
    @ivar clock: an L{IReactorTime}; its C{seconds()} is also the time of
        the pass markers, so every process must share it (the reactor's
        is the wall clock).
    @ivar pollInterval: the mean time between a waiter's checks.
    @ivar passFor: how long a pass marker lasts.
    @ivar held: how many locks this process holds now.
    @ivar waits: how many waits began; C{timeouts}: how many ran out;
        C{takenOver}: locks taken from a holder that gave up or died.
    """

    _log = Logger()

    def __init__(self, directory: str, store, clock, pollInterval: float = 0.05,
                 passFor: float = 5.0, random: Callable[[], float] = random.random,
                 staleTempAge: float = 60.0) -> None:
        self.directory = os.path.abspath(directory)
        self.store = store
        self.clock = clock
        self.pollInterval = pollInterval
        self.passFor = passFor
        self.random = random
        self.staleTempAge = staleTempAge
        self.held = 0
        self.waits = 0
        self.timeouts = 0
        self.takenOver = 0
        #: lock file name -> the waits for its key
        self._waits: dict = {}
        self._logged: dict = {}
        self._watch = None
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as e:
            self._logError("create the lock folder", e)

    def watchRemovals(self, reactor) -> bool:
        """
        Wake waiters as soon as their key's lock file is removed, through
        inotify (Linux): the lock folder is watched (with C{reactor}) while
        any wait is on.

        @return: whether it is available.
        """
        try:
            from twisted.internet import inotify
        except ImportError:
            return False
        del inotify
        self._watch = _Removals(reactor, self.directory, self._removed)
        return True

    def _removed(self, name: str) -> None:
        if name.endswith(".lock"):
            for wait in list(self._waits.get(name[:-5], ())):
                wait.wake()

    def _began(self, wait: "_Wait") -> None:
        self._waits.setdefault(wait._name, set()).add(wait)
        if self._watch is not None:
            try:
                self._watch.start()
            except Exception as e:
                self._watch = None
                self._logError("watch the lock folder", e)

    def _ended(self, wait: "_Wait") -> None:
        waits = self._waits.get(wait._name)
        if waits is not None:
            waits.discard(wait)
            if not waits:
                del self._waits[wait._name]
        if self._watch is not None and not self._waits:
            self._watch.stop()

    def _path(self, name: str, suffix: str) -> str:
        return os.path.join(self.directory, name + suffix)

    def _logError(self, what: str, error: BaseException) -> None:
        """
        Log a kind of error once a minute at most: the collapsing goes on
        within the process meanwhile.
        """
        kind = (what, getattr(error, "errno", None))
        now = time.monotonic()
        if now - self._logged.get(kind, -1e9) < 60.0:
            return
        self._logged[kind] = now
        self._log.warn("cannot {what} in {directory}: {error}; collapsing stays within "
                       "the process", what=what, directory=self.directory, error=error)

    def _passActive(self, name: str) -> bool:
        path = self._path(name, ".pass")
        try:
            with open(path, "rb") as f:
                text = f.read(64)
        except FileNotFoundError:
            return False
        try:
            expires = float(text)
        except ValueError:
            expires = 0.0
        return expires > self.clock.seconds()

    def _writePass(self, name: str) -> None:
        path = self._path(name, ".pass")
        temporary = self._path(name, ".%d.%s.tmp" % (os.getpid(), os.urandom(4).hex()))
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
        try:
            os.write(fd, repr(self.clock.seconds() + self.passFor).encode("ascii"))
        finally:
            os.close(fd)
        os.replace(temporary, path)

    def acquire(self, key: bytes, maxWait: float) -> Deferred:
        name = _name(key)
        try:
            if self._passActive(name):
                return succeed(Busy(Waited.PASS))
            try:
                fd = _lockFile(self._path(name, ".lock"))
            except FileNotFoundError:
                # The folder was removed (by hand): make it again.
                os.makedirs(self.directory, exist_ok=True)
                fd = _lockFile(self._path(name, ".lock"))
        except OSError as e:
            self._logError("take a fill lock", e)
            return succeed(NO_LEASE)
        if fd is not None:
            self.held += 1
            return succeed(_LocalLease(self, key, fd, name))
        self.waits += 1
        try:
            wait = _Wait(self, key, name, maxWait)
        except OSError as e:
            self._logError("wait for a fill", e)
            return succeed(NO_LEASE)
        self._began(wait)
        return wait.start()

    def stop(self) -> None:
        """
        End every wait now (as if it ran out).
        """
        for waits in list(self._waits.values()):
            for wait in list(waits):
                wait._finish(Busy(Waited.TIMEOUT, wait._waited()))

    def sweep(self) -> int:
        """
        Housekeeping: remove the lock files nobody holds (left by holders
        that died), expired pass markers and abandoned temporary files.

        @return: how many files were removed.
        """
        try:
            names = os.listdir(self.directory)
        except OSError:
            return 0
        removed = 0
        wall = time.time()
        for fileName in names:
            path = os.path.join(self.directory, fileName)
            try:
                if fileName.endswith(".lock"):
                    fd = _lockFile(path, create=False)
                    if fd is not None:
                        _unlock(fd, path)
                        removed += 1
                elif fileName.endswith(".pass"):
                    if not self._passActive(fileName[:-5]):
                        os.unlink(path)
                        removed += 1
                elif fileName.endswith(".tmp"):
                    if os.stat(path).st_mtime < wall - self.staleTempAge:
                        os.unlink(path)
                        removed += 1
            except OSError as e:
                if e.errno != errno.ENOENT:
                    self._logError("clean the lock folder", e)
        return removed
