"""
Addresses as log lines and messages show them.
"""

from __future__ import annotations

__all__ = ["describeAddress"]

def describeAddress(address) -> str:
    """
    @return: a listening or peer address as a log line shows it:
        C{127.0.0.1:3128}, C{[::1]:3128}, or the path of a UNIX socket.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        return "unix:" + (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name))
    return str(address)
