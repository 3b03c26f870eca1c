# -*- test-case-name: tests.test_admin,tests.test_metrics,tests.test_status_page -*-
"""
The proxy's own endpoints under C{/_cachingproxy/}: C{health} for load
balancers, C{metrics} for Prometheus, and a status page for people
(C{/_cachingproxy/} or C{status}, drawn by its own script from
C{status.json}). Only clients in the admin networks reach them; others get
403.

L{AdminResource.handle} answers an exchange with
C{exchange.serveStored(status, reason, fields, body, length)}.
"""

from __future__ import annotations

import json
import os
import time

from twisted.logger import Logger

from . import __version__

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
        if name == b"metrics":
            self._metrics(exchange)
            return
        if name in (b"", b"status", b"status.html"):
            self._serve(exchange, 200, _statusPage(), b"text/html; charset=utf-8")
            return
        if name == b"status.json":
            try:
                body = json.dumps(self.status()).encode() + b"\n"
            except Exception:
                self._log.failure("building the status report failed")
                self._serve(exchange, 503, b"status unavailable\n", b"text/plain; charset=utf-8")
                return
            self._serve(exchange, 200, body, b"application/json")
            return
        self._serve(exchange, 404, b"no such admin endpoint\n", b"text/plain; charset=utf-8")

    def _serve(self, exchange, status: int, body: bytes, contentType: bytes) -> None:
        exchange.serveStored(
            status,
            b"",
            [
                (b"content-type", b"Content-Type", contentType),
                (b"cache-control", b"Cache-Control", b"no-store"),
            ],
            body,
            len(body),
        )

    def _metrics(self, exchange) -> None:
        metrics = self.factory.metrics
        if metrics is None:
            self._serve(exchange, 404, b"metrics are not kept\n", b"text/plain; charset=utf-8")
            return
        try:
            body, contentType = metrics.render()
        except Exception:
            # e.g. the multiprocess folder is gone while shutting down
            self._log.failure("rendering metrics failed")
            self._serve(exchange, 503, b"metrics unavailable\n", b"text/plain; charset=utf-8")
            return
        self._serve(exchange, 200, body, contentType.encode("ascii"))

    def status(self) -> dict:
        """
        @return: the status page's figures: those of L{Metrics.status} (all
            workers) when metrics are kept, with this process's identity,
            cache store and connections.
        """
        factory = self.factory
        now = time.time()
        metrics = factory.metrics
        if metrics is not None:
            report = metrics.status()
            report["restarts"] = metrics.restarts()
        else:
            report = {
                "time": now,
                "started": self.started,
                "uptime": round(now - self.started, 1),
                "workers": [],
                "totals": None,
                "hitRatio": None,
                "byteHitRatio": None,
                "requestsPerSecond": None,
                "connections": {"clients": factory.openConnections,
                                "upstream": len(getattr(factory.pool, "_all", ()))},
                "bucketSeconds": None,
                "series": [],
                "topHosts": [],
                "restarts": None,
            }
        if not report["workers"]:
            report["workers"] = [{
                "pid": os.getpid(),
                "worker": self.workerId,
                "uptime": round(now - self.started, 1),
                "connections": factory.openConnections,
                "requests": None,
            }]
        for worker in report["workers"]:
            if worker.get("pid") == os.getpid():
                worker["worker"] = self.workerId
        report["pid"] = os.getpid()
        report["worker"] = self.workerId
        report["version"] = __version__
        report["draining"] = factory.draining
        cache = factory.cache
        report["cache"] = None
        if cache is not None:
            stats = cache.store.stats()
            report["cache"] = {
                "entries": stats.get("entries", 0),
                "bytes": stats.get("bytes", 0),
                "limit": stats.get("limit") or 0,
                "evictions": stats.get("evictions", 0),
            }
        return report

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


_page = None


def _statusPage() -> bytes:
    """
    @return: the status page (C{status.html} next to this module), read
        once.
    """
    global _page
    if _page is None:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "status.html"), "rb") as f:
            _page = f.read()
    return _page
