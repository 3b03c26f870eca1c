# -*- test-case-name: tests.test_accesslog -*-
"""
The access log: one line per finished request, in Combined Log Format
(with the cache result, the origin's time and the total time appended) or
as JSON lines, to a file or to the twistd log.

Lines are written in batches: at the latest L{FLUSH_SECONDS} after they
were logged, at once when L{FLUSH_SIZE} characters are waiting, and before
the file is reopened or switched and when the reactor shuts down, so that a
clean stop loses nothing. To the twistd log a batch is written straight to
the stream twistd's text log observer writes to (stdout with C{twistd -n},
else C{twistd.log}), each line with the prefix that observer would have
given it: the per-line cost of the logging system's event formatting is
what made the twistd log the dearest destination.

A file is reopened on SIGUSR1, so that logrotate can move it away and
signal the proxy (every worker process listens for it).
"""

from __future__ import annotations

import json
import functools
import os
import re
import signal
import time
from typing import List, Optional

from twisted.logger import Logger, formatTime

from .._twistedinternals import textLogStream

__all__ = ["AccessLog", "FORMATS", "combinedLine", "FLUSH_SECONDS", "FLUSH_SIZE", "reopenOnSignal", "writeLogTo"]

#: The formats C{--access-log-format} accepts.
FORMATS = ("combined", "json")

#: The longest a logged line waits before it is written.
FLUSH_SECONDS = 1.0

#: The characters waiting that make a batch be written at once.
FLUSH_SIZE = 64 * 1024

#: The wall clock (a module global: read for every line to the twistd log).
_now = time.time

#: The most JSON line ends kept for the seconds they say.
_SECONDS_KEPT = 1024

#: The log system text of an access line in the twistd log.
_SYSTEM = "cachingproxy.access#info"

#: Where access lines for the twistd log go when the process set it up
#: itself (a worker): C{(stream, system)}, else C{None} (found from
#: twistd's observer).
_registered = None


def writeLogTo(stream, system: str) -> None:
    """
    Write the access lines meant for the twistd log to C{stream} (which
    the process's text log observer writes to), each with C{system} in its
    prefix as that observer would write it.
    """
    global _registered
    _registered = (stream, system)


def _logStream():
    """
    @return: C{(stream, system, encoding)} for access lines meant for the
        twistd log, or C{None} when no text file observer is known (a
        custom observer, syslog): then each line is logged as an event.
    """
    if _registered is not None:
        stream, system = _registered
        return stream, system, None if _isText(stream) else "utf-8"
    found = textLogStream()
    if found is None:
        return None
    stream, encoding = found
    return stream, _SYSTEM, encoding


def _isText(stream) -> bool:
    from twisted.python.compat import ioType

    return ioType(stream) is str


#: What C{json.dumps} would escape in a string (and DEL, left to it).
_JSON_ESCAPED_BYTES = re.compile(rb'[^\x20\x21\x23-\x5b\x5d-\x7e]')
_JSON_ESCAPED = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')


#: The JSON text of the usual cache results.
_JSON_CACHE = {r: '"%s"' % r for r in (
    "HIT", "MISS", "STALE", "REVALIDATED", "PASS", "PURGE", "ERROR", "-")}


def _jsonBytes(value: bytes) -> str:
    """
    @return: C{value} read as Latin-1, as a JSON string.
    """
    if _JSON_ESCAPED_BYTES.search(value) is None:
        return '"%s"' % value.decode("ascii")
    return json.dumps(value.decode("latin-1"))


def _jsonString(value) -> str:
    """
    @return: C{value} (a string or C{None}) in JSON.
    """
    if value.__class__ is str and _JSON_ESCAPED.search(value) is None:
        return '"%s"' % value
    return json.dumps(value)


def _jsonNumber(value) -> str:
    """
    @return: C{value} (a number or C{None}) in JSON.
    """
    if value.__class__ is int:
        return "%d" % value
    return json.dumps(value)


class _Clock:
    """
    Text that changes once a second, made once a second.
    """

    __slots__ = ("second", "text", "_make")

    def __init__(self, make) -> None:
        self.second = None
        self.text = ""
        self._make = make

    def __call__(self, when: float) -> str:
        second = int(when)
        if second != self.second:
            self.text = self._make(second)
            self.second = second
        return self.text


class AccessLog:
    """
    @ivar path: the file, or C{-} for the twistd log.
    @ivar format: one of L{FORMATS}.
    @ivar reactor: times the batches; C{None} writes each line at once.
    """

    _log = Logger(namespace="cachingproxy.access")

    def __init__(self, path: str, format: str = "combined", reactor=None,
                 flushSize: int = FLUSH_SIZE) -> None:
        if format not in FORMATS:
            raise ValueError(f"unknown access log format {format!r}")
        self.path = path
        self.format = format
        self.reactor = reactor
        self.flushSize = flushSize
        self._file = None
        self._pidText = ',"pid":%d}' % os.getpid()
        # Float to the end of a JSON line from it (see _newSecondsText).
        self._secondsText = {}
        self._lines: List[str] = []
        self._size = 0
        self._timer = None
        # The stream and prefix of the batch being gathered for the twistd
        # log (found when it starts).
        self._stream = None
        self._system = _SYSTEM
        self._encoding = None
        self._shutdownTrigger = None
        self._jsonTime = _Clock(
            lambda second: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)))
        # The twistd log's prefix of a line (its time and log system), and
        # the second it is for, as the floats it starts and ends at.
        self._prefix = ""
        self._prefixFrom = self._prefixTo = 0.0
        if path != "-":
            self._file = self._open(path)
        if reactor is not None:
            # Lines logged while connections are cut at shutdown come after
            # every service stopped.
            self._shutdownTrigger = reactor.addSystemEventTrigger(
                "after", "shutdown", self.flush)

    def _open(self, path: str):
        if self.reactor is None:
            return open(path, "a", buffering=1, encoding="utf-8")
        return open(path, "a", encoding="utf-8")

    def record(self, exchange, protocol) -> None:
        """
        Log one finished request.
        """
        if self.format == "json":
            line = self.jsonLine(exchange, protocol)
        else:
            line = combinedLine(exchange, protocol, exchange.finished)
        lines = self._lines
        if lines:
            # A batch is being gathered (nearly always, under load): add
            # the line to it; what starts a batch is in __call__.
            if self._file is None:
                now = _now()
                if not self._prefixFrom <= now < self._prefixTo:
                    self._newPrefix(now)
                line = self._prefix + line
            lines.append(line)
            self._size += len(line) + 1
            if self._size >= self.flushSize:
                self.flush()
            return
        self(line)

    def jsonLine(self, exchange, protocol) -> str:
        """
        @return: one JSON object describing a finished request: what
            C{json.dumps} makes of the fields, in order and compact (the
            times with six decimals), put together here since nearly every
            value needs no escaping.
        """
        seconds = (exchange.finished or exchange.started) - exchange.started
        read = exchange.headRead
        upstream = exchange.upstreamSeconds
        if read and upstream is None:
            # As for a combined line (see combinedLine): the text up to the
            # seconds taken is the connection's last line's when the head
            # came in the same read, in the same second, with the same
            # answer.
            kept = protocol._jsonKept
            if kept is not None and kept[2] <= exchange.wallStarted < kept[3] and \
                    kept[0] == (read, exchange.status, exchange.bytesSent,
                                exchange.bytesReceived, exchange.cacheResult):
                return kept[1] + (self._secondsText.get(seconds) or self._newSecondsText(seconds))
        head = exchange.head
        referer, agent = head.headers.firstOfTwo(b"referer", b"user-agent")
        wall = exchange.wallStarted
        # A connection's requests mostly come from one client program, many
        # a second: the JSON text of the time, the client and its fields
        # is kept from the connection's last line.
        said = protocol._jsonSaid
        if said is None or said[0] != referer or said[1] != agent or \
                not said[2] <= wall < said[5]:
            second = int(wall)
            said = protocol._jsonSaid = (
                referer, agent, float(second),
                '{"time":"%s","client":%s,"method":"' % (
                    self._jsonTime(second), _jsonString(protocol.clientHost)),
                ',"referer":%s,"user_agent":%s,"cache":' % (
                    _jsonBytes(referer) if referer else "null",
                    _jsonBytes(agent) if agent else "null"),
                second + 1.0)
        method = head.method
        target = head.target
        status = exchange.status
        sent = exchange.bytesSent
        received = exchange.bytesReceived
        cache = exchange.cacheResult
        start = '%s%s","target":"%s","version":"%s","status":%s,"bytes":%s,"bytes_in":%s%s%s,' \
            '"upstream_seconds":%s,"seconds":' % (
                said[3],
                _METHOD_TEXT.get(method) or _jsonBytes(method)[1:-1],
                target.decode("ascii") if _JSON_ESCAPED_BYTES.search(target) is None
                else _jsonBytes(target)[1:-1],
                _VERSION_TEXT.get(head.version) or "HTTP/%d.%d" % head.version,
                status if status.__class__ is int else _jsonNumber(status),
                sent if sent.__class__ is int else _jsonNumber(sent),
                received if received.__class__ is int else _jsonNumber(received),
                said[4],
                _JSON_CACHE.get(cache) or _jsonString(cache),
                "null" if upstream is None else "%.6f" % upstream,
            )
        if read and upstream is None:
            protocol._jsonKept = ((read, status, sent, received, cache), start,
                                  said[2], said[5])
        return start + (self._secondsText.get(seconds) or self._newSecondsText(seconds))

    def _newSecondsText(self, seconds: float) -> str:
        """
        @return: the end of a JSON line, from the seconds taken on; kept
            for the next line that took as long if under a millisecond.
            The clock's difference of two times is a multiple of its
            resolution at today's date (2**-22 seconds), so a hit's time
            is one of a few hundred, and found again far more cheaply
            than formatted. (A difference of two positive times is never
            -0.0, the only float that would find another's text.)
        """
        text = f'{seconds:.6f}{self._pidText}'
        if seconds < 0.001:
            kept = self._secondsText
            if len(kept) >= _SECONDS_KEPT:
                kept.clear()
            kept[seconds] = text
        return text

    def __call__(self, line: str) -> None:
        if self.reactor is None:
            self._writeNow(line)
            return
        if not self._lines:
            if self._file is None:
                found = _logStream()
                if found is None:
                    self._log.info("{line}", line=line)
                    return
                self._stream, system, self._encoding = found
                if system != self._system:
                    self._system = system
                    self._prefixTo = 0.0
            self._timer = self.reactor.callLater(FLUSH_SECONDS, self._timedFlush)
        if self._file is None:
            now = _now()
            if not self._prefixFrom <= now < self._prefixTo:
                self._newPrefix(now)
            line = self._prefix + line
        # (each line's newline is added as the batch is joined)
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= self.flushSize:
            self.flush()

    def _newPrefix(self, now: float) -> None:
        """
        Make the twistd log's prefix of a line logged at C{now}: the text
        twistd's observer gives an event logged in that second.
        """
        second = int(now)
        self._prefix = "%s [%s] " % (formatTime(float(second)), self._system)
        self._prefixFrom = float(second)
        self._prefixTo = second + 1.0

    def _writeNow(self, line: str) -> None:
        if self._file is None:
            self._log.info("{line}", line=line)
        else:
            self._file.write(line + "\n")

    def _timedFlush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """
        Write the lines waiting, in one write.
        """
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        lines = self._lines
        if not lines:
            return
        lines.append("")
        text = "\n".join(lines)
        self._lines = []
        self._size = 0
        out = self._file
        if out is None:
            out, self._stream = self._stream, None
            if self._encoding is not None:
                text = text.encode(self._encoding)
        try:
            out.write(text)
            out.flush()
        except Exception:
            self._log.failure("writing the access log failed")

    def reopen(self) -> None:
        """
        Close the file and open it again by name (after logrotate moved
        it), once what was logged before is written to the old one.
        """
        self.flush()
        if self._file is None:
            return
        self._file.close()
        self._file = self._open(self.path)
        self._log.info("reopened the access log {path}", path=self.path)

    def switch(self, path: str, format: str) -> None:
        """
        Write to C{path} in C{format} from now on (a configuration reload
        changed them). The new file is opened before the old one is
        closed, so a failure leaves the log as it was; what was logged
        before goes to the old one.
        """
        if format not in FORMATS:
            raise ValueError(f"unknown access log format {format!r}")
        new = None
        if path != "-":
            new = self._open(path)
        self.flush()
        old, self._file = self._file, new
        self.path = path
        self.format = format
        if old is not None:
            old.close()
        self._log.info("access log now {path} ({logFormat})", path=path, logFormat=format)

    def close(self) -> None:
        """
        Write what is waiting and close the file.
        """
        self.flush()
        if self._shutdownTrigger is not None:
            self.reactor.removeSystemEventTrigger(self._shutdownTrigger)
            self._shutdownTrigger = None
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


#: The Combined Log Format time of a second, made once a second.
_clfTime = _Clock(lambda second: time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second)))

#: The access log text of the usual methods and versions.
_METHOD_TEXT = {m: m.decode("ascii") for m in (
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE")}
_VERSION_TEXT = {(1, 0): "HTTP/1.0", (1, 1): "HTTP/1.1"}

#: A byte an access log line shows escaped.
_UNPRINTABLE = re.compile(rb'[^\x20\x21\x23-\x7e]')


def _printable(value: bytes) -> str:
    if _UNPRINTABLE.search(value) is None:
        # Nearly every value: nothing to escape.
        return value.decode("ascii")
    text = value.decode("latin-1")
    return "".join(c if 32 <= ord(c) < 127 and c != '"' else "\\x%02x" % ord(c) for c in text)


#: L{_printable} of request targets up to 256 bytes long, remembered: the
#: same ones are asked for again and again.
_shortTargetText = functools.lru_cache(maxsize=2048)(_printable)


#: Seconds below it are "0.0000" to four places (no double lies between
#: the one nearest 0.00005 and 0.00005 itself, so any below it rounds
#: down).
_UNDER_TEN_THOUSANDTH = 0.00005


def combinedLine(exchange, protocol, now: float) -> str:
    """
    One Combined Log Format line for a finished request, with the cache
    result, the seconds the origin took to answer (C{-} if it was not
    asked), the seconds taken in all and the bytes received from the
    client (the request body, or what went up a CONNECT tunnel)
    appended.
    """
    seconds = (exchange.finished or now) - exchange.started
    read = exchange.headRead
    upstream = exchange.upstreamSeconds
    if read and upstream is None:
        # A request not sent upstream (a hit, mostly) whose head came in a
        # read the same as the connection's last such request's, in the
        # same second, with the same answer (a client asking for the same
        # object again): everything up to the seconds taken is that
        # line's; and the whole line for the usual end of a hit's, no body
        # and under 50 microseconds ("0.0000 0").
        kept = protocol._combinedKept
        if kept is not None and kept[3] <= exchange.wallStarted < kept[4] and \
                kept[0] == (read, exchange.status, exchange.bytesSent, exchange.cacheResult):
            if 0.0 <= seconds < _UNDER_TEN_THOUSANDTH and not exchange.bytesReceived:
                return kept[2]
            return f'{kept[1]}{seconds:.4f} {exchange.bytesReceived}'
    head = exchange.head
    referer, agent = head.headers.firstOfTwo(b"referer", b"user-agent")
    wall = exchange.wallStarted
    # A connection's requests mostly come from one client program, many a
    # second: the text of the client, the time and the client's Referer
    # and User-Agent is kept from the connection's last line (with the
    # second as the floats it starts and ends at: two comparisons cost
    # less than int()).
    said = protocol._combinedSaid
    if said is None or said[0] != referer or said[1] != agent or \
            not said[2] <= wall < said[5]:
        second = int(wall)
        said = protocol._combinedSaid = (
            referer, agent, float(second),
            '%s - - [%s] "' % (protocol.clientHost, _clfTime(second)),
            '"%s" "%s"' % (_printable(b"-" if referer is None else referer),
                           _printable(b"-" if agent is None else agent)),
            second + 1.0)
    method = head.method
    target = head.target
    if upstream is not None:
        # (an f-string: a tenth cheaper than the same line made with %)
        return (f'{said[3]}{_METHOD_TEXT.get(method) or _printable(method)} '
                f'{_shortTargetText(target) if len(target) <= 256 else _printable(target)} '
                f'{_VERSION_TEXT.get(head.version) or "HTTP/%d.%d" % head.version}" '
                f'{exchange.status} {exchange.bytesSent} {said[4]} {exchange.cacheResult} '
                f'{upstream:.4f} {seconds:.4f} {exchange.bytesReceived}')
    # Not sent upstream, and not known by its read (a head in parts, the
    # second of a pipelined read, HTTP/2): everything up to the seconds
    # taken is kept from the connection's last such line when it says the
    # same.
    status = exchange.status
    if read:
        key = (read, status, exchange.bytesSent, exchange.cacheResult)
    else:
        key = (said, method, target, head.version, status, exchange.bytesSent,
               exchange.cacheResult)
        kept = protocol._combinedKept
        if kept is not None and kept[0] == key:
            if 0.0 <= seconds < _UNDER_TEN_THOUSANDTH and not exchange.bytesReceived:
                return kept[2]
            return f'{kept[1]}{seconds:.4f} {exchange.bytesReceived}'
    start = (f'{said[3]}{_METHOD_TEXT.get(method) or _printable(method)} '
             f'{_shortTargetText(target) if len(target) <= 256 else _printable(target)} '
             f'{_VERSION_TEXT.get(head.version) or "HTTP/%d.%d" % head.version}" '
             f'{status} {exchange.bytesSent} {said[4]} {exchange.cacheResult} - ')
    protocol._combinedKept = (key, start, start + "0.0000 0", said[2], said[5])
    return f'{start}{seconds:.4f} {exchange.bytesReceived}'
