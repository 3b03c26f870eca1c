# -*- test-case-name: tests.test_compress -*-
"""
Compression on the way out: which coding a client accepts (RFC 9110
section 12.5.3, weights honoured), whether a response may be compressed,
and streaming compressors that flush per chunk so a slow origin's bytes
reach the client as they come, in bounded memory.

Nothing here does I/O; L{cachingproxy.proxy} decides where it applies.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Optional, Tuple

try:
    import brotli
except ImportError:  # pragma: no cover - brotli is a dependency
    brotli = None

__all__ = ["CompressionSettings", "negotiate", "compressor", "weakenETag"]

#: Types compressed by default: text, and the structured text types.
DEFAULT_TYPES = (
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/manifest+json",
    "application/wasm",
    "image/svg+xml",
)


@dataclass(frozen=True)
class CompressionSettings:
    """
    @ivar types: media types compressed (C{text/*} covers a top level type).
    @ivar minSize: responses known to be smaller are left alone.
    @ivar codings: codings offered, preferred first when weights tie.
    @ivar gzipLevel: zlib level (1 fastest .. 9 smallest).
    @ivar brotliQuality: brotli quality (0 .. 11); low values stream fast.
    """

    types: Tuple[str, ...] = DEFAULT_TYPES
    minSize: int = 1024
    codings: Tuple[str, ...] = ("br", "gzip") if brotli is not None else ("gzip",)
    gzipLevel: int = 6
    brotliQuality: int = 4

    def compressibleType(self, contentType: Optional[bytes]) -> bool:
        """
        @return: whether a body of C{contentType} is worth compressing
            (remembered per value: responses repeat a handful of types).
        """
        if not contentType:
            return False
        return _compressible(contentType, self.types)


@functools.lru_cache(maxsize=1024)
def _compressible(contentType: bytes, types: Tuple[str, ...]) -> bool:
    media = contentType.split(b";", 1)[0].strip().lower().decode("latin-1")
    for pattern in types:
        if pattern.endswith("/*"):
            if media.startswith(pattern[:-1]):
                return True
        elif media == pattern:
            return True
    return False


@functools.lru_cache(maxsize=1024)
def negotiate(acceptEncoding: Optional[bytes], codings: Tuple[str, ...]) -> Optional[str]:
    """
    The coding to send, from a client's Accept-Encoding (RFC 9110 section
    12.5.3): the highest weight above 0 among C{codings} (C{*} counts for
    codings not named), earlier C{codings} winning ties; C{None} for
    identity.
    """
    if not acceptEncoding:
        return None
    weights = {}
    for member in acceptEncoding.split(b","):
        parts = member.strip().split(b";")
        name = parts[0].strip().lower().decode("latin-1", "replace")
        if not name:
            continue
        q = 1.0
        for parameter in parts[1:]:
            key, _, value = parameter.strip().partition(b"=")
            if key.strip().lower() == b"q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:
                    q = 0.0
        weights[name] = q
    best = None
    bestWeight = 0.0
    for coding in codings:
        weight = weights.get(coding, weights.get("x-gzip") if coding == "gzip" else None)
        if weight is None:
            weight = weights.get("*", 0.0)
        if weight > bestWeight:
            best, bestWeight = coding, weight
    return best


class _Gzip:
    def __init__(self, level: int) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class _Brotli:
    def __init__(self, quality: int) -> None:
        self._b = brotli.Compressor(quality=quality)

    def compress(self, data: bytes) -> bytes:
        return self._b.process(data) + self._b.flush()

    def finish(self) -> bytes:
        return self._b.finish()


def compressor(coding: str, settings: CompressionSettings):
    """
    @return: an object with C{compress(data) -> bytes} (flushed, so every
        chunk can be sent at once) and C{finish() -> bytes}.
    """
    if coding == "br":
        return _Brotli(settings.brotliQuality)
    return _Gzip(settings.gzipLevel)


def compressWhole(coding: str, data: bytes, settings: CompressionSettings) -> bytes:
    """
    @return: C{data} compressed in one piece.
    """
    c = compressor(coding, settings)
    return c.compress(data) + c.finish()


def weakenETag(value: bytes) -> bytes:
    """
    A compressed representation is not byte-identical to the identity one,
    so a strong entity tag becomes weak (RFC 9110 section 8.8.1).
    """
    value = value.strip()
    if value.startswith(b'"'):
        return b"W/" + value
    return value


@functools.lru_cache(maxsize=1024)
def noTransform(cacheControl: Optional[bytes]) -> bool:
    """
    @return: whether a Cache-Control value says C{no-transform} (RFC 9111
        section 5.2.2.6).
    """
    if not cacheControl:
        return False
    return any(
        member.strip().split(b"=", 1)[0].strip().lower() == b"no-transform"
        for member in cacheControl.split(b",")
    )


def compressionPlan(settings, fields: list, knownLength: bool,
                    acceptEncoding: Optional[bytes]) -> Tuple[list, Optional[str], bool]:
    """
    Whether a 200 response (to anything but HEAD) is compressed for a
    client: never with a Content-Encoding already, a Content-Range,
    C{no-transform} (RFC 9111 section 5.2.2.6), a type not listed or a
    known length under the minimum. A compressible response gets
    C{Vary: Accept-Encoding} whatever this client accepts, so caches
    further down keep the variants apart.

    @return: the fields (Vary added if compressible), the coding for
        this client (or C{None} for identity), and whether the response is
        compressible at all.
    """
    contentType = length = None
    for lower, _, value in fields:
        if lower == b"content-encoding" or lower == b"content-range":
            return fields, None, False
        if lower == b"cache-control" and noTransform(value):
            return fields, None, False
        if lower == b"content-type":
            contentType = value
        elif lower == b"content-length":
            length = value
    if not settings.compressibleType(contentType):
        return fields, None, False
    if knownLength and length is not None and length.strip().isdigit() \
            and int(length) < settings.minSize:
        return fields, None, False
    fields = _addVary(fields, b"Accept-Encoding")
    return fields, negotiate(acceptEncoding, settings.codings), True


def compressedFields(fields: list, coding: str) -> list:
    """
    @return: C{fields} for the compressed representation: no
        Content-Length (the framing says where it ends, or the caller sets
        it), C{Content-Encoding}, and a weak ETag (RFC 9110 section 8.8.1).
    """
    out = []
    for field in fields:
        if field[0] == b"content-length":
            continue
        if field[0] == b"etag":
            field = (field[0], field[1], weakenETag(field[2]))
        out.append(field)
    out.append((b"content-encoding", b"Content-Encoding", coding.encode("ascii")))
    return out


def _addVary(fields: list, name: bytes) -> list:
    lower = name.lower()
    for index, (fieldLower, fieldName, value) in enumerate(fields):
        if fieldLower == b"vary":
            members = [m.strip().lower() for m in value.split(b",")]
            if lower in members or b"*" in members:
                return fields
            fields = list(fields)
            fields[index] = (fieldLower, fieldName, value + b", " + name)
            return fields
    return fields + [(b"vary", b"Vary", name)]
