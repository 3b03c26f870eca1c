"""
The HTTP message model: heads, header fields, dates and the hop-by-hop rules
(L{headers}, L{message}); the field values caching reads (L{fields},
L{structured}); heads written as bytes (L{wire}). Pure: no I/O and no
Twisted.
"""

from .headers import (
    HOP_BY_HOP,
    NEVER_NOMINATED,
    Headers,
    connectionOptions,
    formatHTTPDate,
    parseHTTPDate,
    splitList,
)
from .message import REASONS, RequestHead, ResponseHead

__all__ = [
    "HOP_BY_HOP",
    "NEVER_NOMINATED",
    "Headers",
    "connectionOptions",
    "REASONS",
    "RequestHead",
    "ResponseHead",
    "formatHTTPDate",
    "parseHTTPDate",
    "splitList",
]
