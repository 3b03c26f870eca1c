# -*- test-case-name: tests.test_admin,tests.test_metrics,tests.test_status_page -*-
"""
The proxy's own endpoints under C{/_cachingproxy/}: C{health} for load
balancers, C{metrics} for Prometheus, and a status page for people
(C{/_cachingproxy/} or C{status}, drawn by its own script from
C{status.json}). Only clients in the admin networks reach them; others get
403. They answer origin-form targets (C{GET /_cachingproxy/ HTTP/1.1}) and
absolute-form ones naming the proxy itself
(C{GET http://127.0.0.1:3128/_cachingproxy/ HTTP/1.1}, what a browser
sends when even loopback traffic goes through its proxy).

A forward proxy also answers C{GET /}, a page telling whoever opens the
proxy's address in a browser what it is and how to use it (for every
client the proxy serves), and C{/_cachingproxy}, a redirect to the status
page.

L{AdminPages.handle} answers an exchange with
C{exchange.respondWithBody(status, reason, fields, body, length)}.
"""

from __future__ import annotations

import html
import json
import os
import re
import time

from twisted.logger import Logger

from .. import __version__

__all__ = ["ADMIN_PREFIX", "AdminPages", "LANDING_PATHS"]

#: Paths under this prefix are the proxy's own.
ADMIN_PREFIX = b"/_cachingproxy/"

#: Origin-form paths a forward proxy answers with its landing page (C{/})
#: or a redirect to the status page (C{/_cachingproxy}), rather than 400.
LANDING_PATHS = frozenset((b"/", ADMIN_PREFIX.rstrip(b"/")))

#: A Host field value that may be shown back on the landing page.
_AUTHORITY = re.compile(rb"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class AdminPages:
    """
    @ivar factory: the L{cachingproxy.proxy.factory.ProxyFactory} being reported on.
    @ivar started: when this process started serving (wall clock).
    """

    _log = Logger()

    def __init__(self, factory, workerId: str = "") -> None:
        self.factory = factory
        self.started = time.time()
        self.workerId = workerId or str(os.getpid())
        #: whether this process is one of several workers (C{--workers})
        self.isWorker = bool(workerId)

    def handle(self, exchange, path: bytes) -> None:
        """
        Answer a request for C{path} (with the prefix, or one of
        L{LANDING_PATHS}).
        """
        if not path.startswith(ADMIN_PREFIX):
            self._landing(exchange, path.split(b"?", 1)[0] == b"/")
            return
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
        exchange.respondWithBody(
            status,
            b"",
            [
                (b"content-type", b"Content-Type", contentType),
                (b"cache-control", b"Cache-Control", b"no-store"),
            ],
            body,
            len(body),
        )

    def _landing(self, exchange, root: bool) -> None:
        """
        The page at C{/} (200), or the redirect from C{/_cachingproxy} to
        the status page (301, with the same page for a client that does not
        follow it).
        """
        host = exchange.head.headers.get(b"host") or b""
        if not _AUTHORITY.match(host):
            local = exchange.protocol.localAddress()
            host = b"127.0.0.1:3128" if local is None else (
                "%s:%d" % ((f"[{local[0]}]" if ":" in str(local[0]) else local[0]), local[1])
            ).encode()
        body = _LANDING % {b"proxy": html.escape(host.decode("ascii")).encode("ascii")}
        fields = [
            (b"content-type", b"Content-Type", b"text/html; charset=utf-8"),
            (b"cache-control", b"Cache-Control", b"no-store"),
        ]
        if not root:
            fields.append((b"location", b"Location", ADMIN_PREFIX))
        exchange.respondWithBody(200 if root else 301, b"", fields, body, len(body))

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
            workers) when metrics are kept, with this process's identity
            (C{servedBy}: C{worker}, or C{None} for a single process, and
            C{pid}), cache store and connections.
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
        # Which process answered this very request: with several workers,
        # each request may land on another one.
        report["servedBy"] = {"worker": self.workerId if self.isWorker else None,
                              "pid": os.getpid()}
        report["version"] = __version__
        report["draining"] = factory.draining
        sites = getattr(factory, "sites", None)
        report["groups"] = sites.status() if sites is not None else []
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
        fleet = getattr(cache, "fleet", None)
        report["fleet"] = fleet.stats() if fleet is not None else None
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
        exchange.respondWithBody(
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


_LANDING = b"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cachingproxy</title>
<link rel="icon" href="data:,">
<style>
  body { margin: 2em auto; max-width: 42em; padding: 0 1em; color: #1d2330;
         font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
  code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
  pre { background: #f4f5f7; padding: .6em .8em; border-radius: 6px; overflow-x: auto; }
</style>
</head>
<body>
<h1>cachingproxy</h1>
<p id="what">This address is <strong>cachingproxy</strong>, a caching forward HTTP proxy: not a web
site, but something to send requests through.</p>
<h2>Using it</h2>
<p>Point a client at it as its HTTP proxy, for example</p>
<pre id="usage">curl -x http://%(proxy)s http://example.org/
export http_proxy=http://%(proxy)s https_proxy=http://%(proxy)s</pre>
<p>or set <code>%(proxy)s</code> as the HTTP and HTTPS proxy in a browser's
network settings. <code>https://</code> addresses go through it as CONNECT
tunnels.</p>
<h2>Status</h2>
<p>The <a id="status-link" href="/_cachingproxy/">status page</a> shows
what the proxy is doing (from admin addresses only).</p>
</body>
</html>
"""
