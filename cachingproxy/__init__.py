"""
cachingproxy: a caching HTTP proxy built on Twisted, run as a twistd plugin.

Start it with C{twistd -n cachingproxy --port 20000}; see README.rst.
"""

import os as _os

__version__ = "0.1.0"

#: systemd's socket activation variables as they were when the package was
#: first imported. Importing C{twisted.internet.endpoints} (which C{tap}
#: does) deletes them from the environment, and Twisted keeps the
#: descriptors only when C{LISTEN_FDNAMES} is set too, which
#: C{systemd-socket-activate} leaves out; L{cachingproxy.service.systemd} reads
#: this copy.
_ACTIVATION = {
    name: _os.environ[name]
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
    if name in _os.environ
}

__all__ = ["__version__"]
