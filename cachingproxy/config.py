# -*- test-case-name: tests.test_tap -*-
"""
Settings: one frozen L{Config}, built once from the command line and the
environment (the command line wins), validated with one clear error per bad
value.

Every setting C{--some-name} can also come from the environment variable
C{CACHINGPROXY_SOME_NAME}; C{LISTEN_PORT} is an alias for
C{CACHINGPROXY_PORT}.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from twisted.python import usage

__all__ = ["Config", "SETTINGS", "Setting", "fromOptions"]


@dataclass(frozen=True)
class Setting:
    """
    One setting: its option name, its kind, its default and what it does.
    """

    name: str
    kind: str  # "str", "float", "int", "flag", "list"
    default: object
    help: str
    aliases: Tuple[str, ...] = ()

    @property
    def attribute(self) -> str:
        head, *rest = self.name.split("-")
        return head + "".join(p.capitalize() for p in rest)

    @property
    def envName(self) -> str:
        return "CACHINGPROXY_" + self.name.upper().replace("-", "_")


#: Every setting, in the order --help shows them.
SETTINGS = (
    Setting(
        "port",
        "list",
        ("tcp:3128",),
        "Where to listen: a port number or a Twisted server endpoint string "
        "(tcp:3128:interface=127.0.0.1, ssl:..., unix:..., "
        "systemd:domain=INET:index=0). Repeatable.",
        aliases=("LISTEN_PORT",),
    ),
    Setting(
        "upstream",
        "str",
        None,
        "Reverse proxy mode: send every request to this origin URL "
        "(http://host:port[/prefix] or https://...).",
    ),
    Setting("connect-timeout", "float", 10.0, "Seconds to connect to an origin."),
    Setting(
        "upstream-timeout",
        "float",
        10.0,
        "Seconds of silence tolerated from an origin while its response is awaited "
        "or streaming.",
    ),
    Setting(
        "idle-timeout",
        "float",
        60.0,
        "Seconds a kept-alive client connection may wait for its next request.",
    ),
    Setting(
        "header-timeout",
        "float",
        30.0,
        "Seconds from the first byte of a request head to its end (408 beyond).",
    ),
    Setting(
        "max-request-line",
        "int",
        8192,
        "Longest request target accepted, in bytes (414 beyond).",
    ),
    Setting(
        "max-header-size",
        "int",
        65536,
        "Largest request header section accepted, in bytes (431 beyond).",
    ),
    Setting(
        "max-connections",
        "int",
        10000,
        "Client connections served at once; beyond it no new connection is "
        "accepted until one closes.",
    ),
    Setting(
        "connect-ports",
        "str",
        "443",
        "Comma-separated ports that CONNECT may reach (403 otherwise).",
    ),
    Setting(
        "upstream-max-idle",
        "int",
        64,
        "Idle keep-alive connections kept per origin.",
    ),
    Setting(
        "upstream-idle-timeout",
        "float",
        60.0,
        "Seconds an idle upstream connection is kept.",
    ),
    Setting(
        "ca-file",
        "str",
        None,
        "PEM file of CA certificates trusted for https origins (default: the "
        "system's trust store).",
    ),
    Setting(
        "via-name",
        "str",
        None,
        "The name this proxy gives itself in Via (default: the host name); "
        "a request whose Via already names it is refused as a loop.",
    ),
    Setting("x-forwarded-for", "flag", False, "Append the client address to X-Forwarded-For."),
    Setting("forwarded", "flag", False, "Add an RFC 7239 Forwarded: for=... element."),
    Setting(
        "access-log",
        "str",
        "-",
        "Access log file (Combined Log Format plus seconds taken); '-' writes "
        "to the twistd log.",
    ),
    Setting("no-access-log", "flag", False, "Write no access log."),
    Setting(
        "cache-dir",
        "str",
        "cache",
        "Folder of the shared disk cache (created if missing; every worker "
        "process shares it); 'none' for no disk cache.",
    ),
    Setting("cache-size", "size", "1G", "Disk cache limit (K, M, G suffixes); LRU beyond it."),
    Setting(
        "cache-memory",
        "size",
        "0",
        "Memory cache size: a hot tier in front of the disk cache, or the "
        "whole cache with --cache-dir none. 0 for none.",
    ),
    Setting("max-object-size", "size", "256M", "Largest response body stored."),
    Setting("no-cache", "flag", False, "Do not cache at all: forward only."),
    Setting(
        "min-uses",
        "int",
        1,
        "Store an object only from its Nth request on (2 keeps one-off "
        "objects off the disk).",
    ),
    Setting(
        "stale-while-revalidate",
        "float",
        0.0,
        "Seconds a stale response may be served while it is revalidated in "
        "the background, when the response does not say (RFC 5861). 0: off.",
    ),
    Setting(
        "stale-if-error",
        "float",
        0.0,
        "Seconds of staleness served when the origin fails, when the "
        "response does not say (RFC 5861). 0: off.",
    ),
    Setting("no-x-cache", "flag", False, "Do not add X-Cache (Cache-Status stays)."),
    Setting(
        "no-collapse",
        "flag",
        False,
        "Send concurrent misses for one URL upstream separately.",
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    """
    The validated settings; see L{SETTINGS} for what each one means.
    """

    port: Tuple[str, ...]
    upstream: Optional[str]
    upstreamScheme: Optional[bytes]
    upstreamHost: Optional[str]
    upstreamPort: Optional[int]
    upstreamPath: bytes
    connectTimeout: float
    upstreamTimeout: float
    idleTimeout: float
    headerTimeout: float
    maxRequestLine: int
    maxHeaderSize: int
    maxConnections: int
    connectPorts: frozenset
    upstreamMaxIdle: int
    upstreamIdleTimeout: float
    caFile: Optional[str]
    viaName: str
    xForwardedFor: bool
    forwarded: bool
    accessLog: Optional[str]
    cacheDir: Optional[str] = None
    cacheSize: int = 1024**3
    cacheMemory: int = 0
    maxObjectSize: int = 256 * 1024**2
    cache: bool = True
    minUses: int = 1
    staleWhileRevalidate: float = 0.0
    staleIfError: float = 0.0
    xCache: bool = True
    collapse: bool = True


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _fromEnvironment(environ: Mapping[str, str]) -> Dict[str, Tuple[object, str]]:
    """
    @return: C{{setting name: (raw value, where it came from)}} for every
        setting given in C{environ}.
    """
    found: Dict[str, Tuple[object, str]] = {}
    for setting in SETTINGS:
        for var in (setting.envName,) + setting.aliases:
            if var in environ:
                raw = environ[var]
                if setting.kind == "list":
                    value: object = tuple(p for p in raw.split() if p)
                elif setting.kind == "flag":
                    lowered = raw.strip().lower()
                    if lowered not in _TRUE | _FALSE:
                        raise usage.UsageError(
                            f"{var}: expected one of 1/0, true/false, yes/no, on/off; got {raw!r}"
                        )
                    value = lowered in _TRUE
                else:
                    value = raw
                found[setting.name] = (value, var)
                break
    return found


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parseSize(raw: object, where: str) -> int:
    """
    @return: a byte count from C{512}, C{64K}, C{1.5G} and the like.
    @raise usage.UsageError: naming C{where}.
    """
    text = str(raw).strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in "KMGT" and text else ""
    number = text[: len(text) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        raise usage.UsageError(f"{where}: expected a size such as 512M or 2G, got {raw!r}")
    if value < 0:
        raise usage.UsageError(f"{where}: must not be negative, got {raw!r}")
    return int(value * _SIZE_UNITS[unit])


def _number(setting: Setting, raw: object, where: str) -> object:
    try:
        value = float(raw) if setting.kind == "float" else int(str(raw), 10)
    except (TypeError, ValueError):
        raise usage.UsageError(f"{where}: expected a number, got {raw!r}")
    if value < 0 or (value == 0 and setting.default not in (0, 0.0)):
        raise usage.UsageError(f"{where}: must be greater than 0, got {raw!r}")
    return value


def _portDescription(raw: str, where: str) -> str:
    raw = raw.strip()
    if raw.isdigit():
        if not 0 <= int(raw) < 65536:
            raise usage.UsageError(f"{where}: no such port {raw!r}")
        return f"tcp:{raw}"
    if ":" not in raw:
        raise usage.UsageError(
            f"{where}: expected a port number or an endpoint string such as "
            f"tcp:3128:interface=127.0.0.1, got {raw!r}"
        )
    return raw


def fromOptions(given: Mapping[str, object], environ: Mapping[str, str] = os.environ) -> Config:
    """
    Build the L{Config} from parsed command-line values (C{{setting name:
    value}} for the settings given on the command line only) and the
    environment.

    @raise usage.UsageError: naming the setting and where the bad value
        came from.
    """
    merged: Dict[str, Tuple[object, str]] = {
        s.name: (s.default, "default") for s in SETTINGS
    }
    merged.update(_fromEnvironment(environ))
    for name, value in given.items():
        merged[name] = (value, f"--{name}")

    values: Dict[str, object] = {}
    for setting in SETTINGS:
        raw, source = merged[setting.name]
        where = source if source != "default" else f"--{setting.name}"
        if source.startswith("CACHINGPROXY_") or source in setting.aliases:
            where = f"{source} (environment)"
        if setting.kind in ("int", "float") and source != "default":
            raw = _number(setting, raw, where)
        if setting.kind == "size":
            raw = parseSize(raw, where)
        if setting.kind == "list":
            raw = tuple(_portDescription(str(p), where) for p in raw)
            if not raw:
                raise usage.UsageError(f"{where}: at least one port is needed")
        values[setting.name] = (raw, where)

    upstream, where = values["upstream"]
    scheme = host = port = None
    path = b""
    if upstream:
        parts = urlsplit(str(upstream))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise usage.UsageError(
                f"{where}: expected http://host[:port][/prefix] or https://..., got {upstream!r}"
            )
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise usage.UsageError(f"{where}: invalid port in {upstream!r}")
        if parts.query or parts.fragment or parts.username:
            raise usage.UsageError(
                f"{where}: the upstream URL takes no query, fragment or user, got {upstream!r}"
            )
        scheme = parts.scheme.encode("ascii")
        host = parts.hostname
        path = parts.path.rstrip("/").encode("ascii")

    connectPortsRaw, where = values["connect-ports"]
    connectPorts = set()
    for item in str(connectPortsRaw).split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or not 0 < int(item) < 65536:
            raise usage.UsageError(f"{where}: {item!r} is not a port number")
        connectPorts.add(int(item))

    caFile, where = values["ca-file"]
    if caFile is not None and not os.path.isfile(str(caFile)):
        raise usage.UsageError(f"{where}: no such file {caFile!r}")

    viaName = values["via-name"][0] or socket.gethostname() or "cachingproxy"
    if any(c.isspace() or c in ",()" for c in str(viaName)):
        raise usage.UsageError(f"{values['via-name'][1]}: must be one token, got {viaName!r}")

    accessLog = values["access-log"][0]
    if values["no-access-log"][0]:
        accessLog = None

    return Config(
        port=values["port"][0],
        upstream=upstream or None,
        upstreamScheme=scheme,
        upstreamHost=host,
        upstreamPort=port,
        upstreamPath=path,
        connectTimeout=float(values["connect-timeout"][0]),
        upstreamTimeout=float(values["upstream-timeout"][0]),
        idleTimeout=float(values["idle-timeout"][0]),
        headerTimeout=float(values["header-timeout"][0]),
        maxRequestLine=int(values["max-request-line"][0]),
        maxHeaderSize=int(values["max-header-size"][0]),
        maxConnections=int(values["max-connections"][0]),
        connectPorts=frozenset(connectPorts),
        upstreamMaxIdle=int(values["upstream-max-idle"][0]),
        upstreamIdleTimeout=float(values["upstream-idle-timeout"][0]),
        caFile=str(caFile) if caFile else None,
        viaName=str(viaName),
        xForwardedFor=bool(values["x-forwarded-for"][0]),
        forwarded=bool(values["forwarded"][0]),
        accessLog=str(accessLog) if accessLog else None,
        cacheDir=None if str(values["cache-dir"][0]).lower() == "none" else str(values["cache-dir"][0]),
        cacheSize=int(values["cache-size"][0]),
        cacheMemory=int(values["cache-memory"][0]),
        maxObjectSize=int(values["max-object-size"][0]),
        cache=not values["no-cache"][0],
        minUses=max(1, int(values["min-uses"][0])),
        staleWhileRevalidate=float(values["stale-while-revalidate"][0]),
        staleIfError=float(values["stale-if-error"][0]),
        xCache=not values["no-x-cache"][0],
        collapse=not values["no-collapse"][0],
    )
