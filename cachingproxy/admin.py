# -*- test-case-name: tests.test_admin -*-
"""
The proxy's own endpoints under C{/_cachingproxy/}: health for load
balancers (and, as other pieces land, metrics and a status page). Only
clients in the admin networks reach them; others get 403.

L{AdminResource.handle} answers an exchange with
C{exchange.serveStored(status, reason, fields, body, length)}.
"""

from __future__ import annotations

import json
import os
import time

from twisted.logger import Logger

__all__ = ["ADMIN_PREFIX", "AdminResource"]

#: Paths under this prefix are the proxy's own.
ADMIN_PREFIX = b"/_cachingproxy/"


class AdminResource:
    """
    @ivar factory: the L{cachingproxy.server.ProxyFactory} being reported on.
    @ivar started: when this process started serving (wall clock).
    """

    _log = Logger()

    def __init__(self, factory, workerId: str = "") -> None:
        self.factory = factory
        self.started = time.time()
        self.workerId = workerId or str(os.getpid())

    def handle(self, exchange, path: bytes) -> None:
        """
        Answer a request for C{path} (with the prefix).
        """
        name = path[len(ADMIN_PREFIX):].split(b"?", 1)[0]
        if name == b"health":
            self._health(exchange)
            return
        body = b"no such admin endpoint\n"
        exchange.serveStored(404, b"", [(b"content-type", b"Content-Type",
                                         b"text/plain; charset=utf-8")], body, len(body))

    def _health(self, exchange) -> None:
        draining = self.factory.draining
        body = json.dumps(
            {
                "status": "draining" if draining else "ok",
                "pid": os.getpid(),
                "worker": self.workerId,
                "uptime": round(time.time() - self.started, 3),
                "connections": self.factory.openConnections,
            }
        ).encode() + b"\n"
        exchange.serveStored(
            503 if draining else 200,
            b"",
            [
                (b"content-type", b"Content-Type", b"application/json"),
                (b"cache-control", b"Cache-Control", b"no-store"),
            ],
            body,
            len(body),
        )
