# -*- test-case-name: tests.test_accesslog -*-
"""
The access log: one line per finished request, in Combined Log Format
(with the cache result, the origin's time and the total time appended) or
as JSON lines, to a file or to the twistd log.

A file is reopened on SIGUSR1, so that logrotate can move it away and
signal the proxy (every worker process listens for it).
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import List, Optional

from twisted.logger import Logger

__all__ = ["AccessLog", "FORMATS", "reopenOnSignal"]

#: The formats C{--access-log-format} accepts.
FORMATS = ("combined", "json")


class AccessLog:
    """
    @ivar path: the file, or C{-} for the twistd log.
    @ivar format: one of L{FORMATS}.
    """

    _log = Logger(namespace="cachingproxy.access")

    def __init__(self, path: str, format: str = "combined") -> None:
        if format not in FORMATS:
            raise ValueError(f"unknown access log format {format!r}")
        self.path = path
        self.format = format
        self._file = None
        self._pid = os.getpid()
        if path != "-":
            self._file = open(path, "a", buffering=1, encoding="utf-8")

    def record(self, exchange, protocol) -> None:
        """
        Log one finished request.
        """
        if self.format == "json":
            line = self.jsonLine(exchange, protocol)
        else:
            line = protocol.factory.accessLine(exchange, protocol)
        self(line)

    def jsonLine(self, exchange, protocol) -> str:
        """
        @return: one JSON object describing a finished request.
        """
        head = exchange.head
        finished = exchange.finished or exchange.started
        upstream = exchange.upstreamSeconds
        return json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exchange.wallStarted)),
                "client": protocol.clientHost,
                "method": head.method.decode("latin-1"),
                "target": head.target.decode("latin-1"),
                "version": "HTTP/%d.%d" % head.version,
                "status": exchange.status,
                "bytes": exchange.bytesSent,
                "bytes_in": exchange.bytesReceived,
                "referer": (head.headers.get(b"referer") or b"").decode("latin-1") or None,
                "user_agent": (head.headers.get(b"user-agent") or b"").decode("latin-1") or None,
                "cache": exchange.cacheResult,
                "upstream_seconds": None if upstream is None else round(upstream, 6),
                "seconds": round(finished - exchange.started, 6),
                "pid": self._pid,
            },
            separators=(",", ":"),
        )

    def __call__(self, line: str) -> None:
        if self._file is None:
            self._log.info("{line}", line=line)
        else:
            self._file.write(line + "\n")

    def reopen(self) -> None:
        """
        Close the file and open it again by name (after logrotate moved
        it).
        """
        if self._file is None:
            return
        self._file.close()
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")
        self._log.info("reopened the access log {path}", path=self.path)

    def switch(self, path: str, format: str) -> None:
        """
        Write to C{path} in C{format} from now on (a configuration reload
        changed them). The new file is opened before the old one is
        closed, so a failure leaves the log as it was.
        """
        if format not in FORMATS:
            raise ValueError(f"unknown access log format {format!r}")
        new = None
        if path != "-":
            new = open(path, "a", buffering=1, encoding="utf-8")
        old, self._file = self._file, new
        self.path = path
        self.format = format
        if old is not None:
            old.close()
        self._log.info("access log now {path} ({logFormat})", path=path, logFormat=format)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def reopenOnSignal(reactor, logs: List[Optional[AccessLog]]) -> None:
    """
    Reopen C{logs} when the process receives SIGUSR1 (handled on the
    reactor thread).
    """
    live = [log for log in logs if log is not None]
    if not live:
        return

    def reopen() -> None:
        for log in live:
            log.reopen()

    signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(reopen))
