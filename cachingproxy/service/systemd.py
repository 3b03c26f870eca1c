# -*- test-case-name: tests.test_systemd -*-
"""
The two halves of systemd's service protocol, with the standard library
only (no libsystemd, no python-systemd):

  - L{notify}: C{sd_notify(3)}, a datagram such as C{READY=1} to the
    C{AF_UNIX} socket named by C{$NOTIFY_SOCKET}, for C{Type=notify}
    units.
  - L{listenFDs}: C{sd_listen_fds(3)}, the sockets systemd passes to a
    socket-activated service (C{LISTEN_FDS}, C{LISTEN_PID}, from fd 3 on).
    The proxy itself listens on them through Twisted's
    C{systemd:domain=INET:index=0} endpoint, which implements the same
    protocol; this is the reference the tests can use.
  - L{inheritedDescriptors}: the same for the process itself, also after
    Twisted has taken the variables out of the environment (which it does
    when C{twisted.internet.endpoints} is imported); the parent of
    C{--workers} takes its sockets from it.

See C{contrib/systemd/} for the units.
"""

from __future__ import annotations

import os
import socket
from typing import List, Mapping, Optional, Union

from twisted.logger import Logger

__all__ = ["notify", "listenFDs", "listenFDNames", "inheritedDescriptors",
           "SD_LISTEN_FDS_START"]

#: The first descriptor systemd passes (after stdin, stdout, stderr).
SD_LISTEN_FDS_START = 3

_log = Logger()


def _address(name: str) -> Optional[str]:
    """
    @return: the C{AF_UNIX} address for a C{$NOTIFY_SOCKET} value: a path,
        or C{@name} for the abstract namespace; C{None} for a form this
        module does not speak (C{vsock:...}).
    """
    if name.startswith("/"):
        return name
    if name.startswith("@") and len(name) > 1:
        return "\0" + name[1:]
    return None


def notify(state: Union[bytes, str], environ: Mapping[str, str] = os.environ) -> bool:
    """
    Tell the service manager about a state change, like C{sd_notify(0,
    state)}: C{b"READY=1"} once listening, C{b"STOPPING=1"} when a
    shutdown starts, C{b"STATUS=..."} for C{systemctl status}.

    Never raises: a failure is logged and reported as C{False}, since a
    proxy must not stop serving because its supervisor cannot be told.

    @param state: newline-separated C{KEY=VALUE} assignments.
    @param environ: where to find C{NOTIFY_SOCKET}.
    @return: C{True} if the datagram was sent; C{False} when
        C{NOTIFY_SOCKET} is unset (not run by systemd, or not
        C{Type=notify}) or the sending failed.
    """
    name = environ.get("NOTIFY_SOCKET")
    if not name:
        return False
    if isinstance(state, str):
        state = state.encode("utf-8")
    address = _address(name)
    if address is None:
        _log.warn("NOTIFY_SOCKET={name!r}: unsupported address; not notifying", name=name)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sent = sock.send(state)
    except OSError as e:
        _log.warn(
            "cannot notify systemd at {name!r}: {error}",
            name=name,
            error=e.strerror or str(e),
        )
        return False
    if sent != len(state):
        _log.warn("cannot notify systemd at {name!r}: short send", name=name)
        return False
    return True


def listenFDs(environ: Mapping[str, str] = os.environ, pid: Optional[int] = None) -> List[int]:
    """
    The descriptors systemd passed to this process, like
    C{sd_listen_fds(0)}: C{LISTEN_FDS} descriptors from 3 on, provided
    C{LISTEN_PID} names this process (so a child that inherited the
    environment does not take its parent's sockets).

    @param pid: the process id to compare C{LISTEN_PID} with; this
        process's by default.
    @return: the descriptor numbers, empty when none were passed or the
        variables are absent, malformed or meant for another process.

    Twisted's C{systemd:} endpoint is stricter: it also needs
    C{LISTEN_FDNAMES} with one name per descriptor, which systemd 227 and
    later always set.
    """
    try:
        listenPID = int(environ.get("LISTEN_PID", ""))
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if listenPID != (os.getpid() if pid is None else pid) or count <= 0:
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))


def listenFDNames(environ: Mapping[str, str] = os.environ, pid: Optional[int] = None) -> List[str]:
    """
    The names of the descriptors of L{listenFDs}, from C{LISTEN_FDNAMES}
    (C{FileDescriptorName=} in the socket unit; C{"unknown"} when absent).
    """
    fds = listenFDs(environ, pid)
    names = environ.get("LISTEN_FDNAMES", "").split(":") if environ.get("LISTEN_FDNAMES") else []
    if len(names) != len(fds):
        names = ["unknown"] * len(fds)
    return names


def inheritedDescriptors(environ: Mapping[str, str] = os.environ) -> List[int]:
    """
    The descriptors systemd passed to this process, also once Twisted has
    taken the variables out of the environment.

    Importing C{twisted.internet.endpoints} reads C{LISTEN_PID},
    C{LISTEN_FDS} and C{LISTEN_FDNAMES} into a C{ListenFDs} object for its
    C{systemd:} endpoint and deletes them from C{os.environ} (so that child
    processes do not take the sockets for theirs); that object keeps no
    descriptor when C{LISTEN_FDNAMES} is missing. So for the process's own
    environment this answers from the copy the package took when it was
    first imported, before any of that.

    @param environ: where to look; for C{os.environ} (the default), the
        package's copy is consulted when the variables are gone.
    @return: the descriptor numbers, empty when systemd passed none.
    """
    fds = listenFDs(environ)
    if fds or environ is not os.environ:
        return fds
    from .. import _ACTIVATION

    return listenFDs(_ACTIVATION)
