# -*- test-case-name: tests.test_tap -*-
"""
Settings: one frozen L{Config}, built once from the command line, the
environment and a TOML configuration file, validated with one clear
one-line error per bad value.

Precedence, highest first: the command line, the environment, the
configuration file, the defaults.

Every setting C{--some-name} can also come from the environment variable
C{CACHINGPROXY_SOME_NAME} (C{LISTEN_PORT} is an alias for
C{CACHINGPROXY_PORT}, C{NUM_WORKERS} for C{CACHINGPROXY_WORKERS}) and from
the configuration file named by C{--config} or C{CACHINGPROXY_CONFIG}, under
the same name::

    port = ["tcp:3128", "tcp:3129:interface=127.0.0.1"]
    upstream-timeout = 5
    x-forwarded-for = true
    cache-size = "64G"
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import Dict, List, Mapping, NoReturn, Optional, Tuple
from urllib.parse import urlsplit

from twisted.python import usage

__all__ = [
    "Config",
    "SETTINGS",
    "Setting",
    "exitOnConfigError",
    "fromOptions",
    "readConfigFile",
    "settingsTable",
]


@dataclass(frozen=True)
class Setting:
    """
    One setting: its option name, its kind, its default and what it does.
    """

    name: str
    kind: str  # "str", "float", "int", "flag", "list", "size"
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
        "config",
        "str",
        None,
        "TOML configuration file: every setting under its option name "
        "(upstream-timeout = 5). The command line and the environment win "
        "over it.",
    ),
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
        "max-header-fields",
        "int",
        100,
        "Most header fields accepted in a request (431 beyond).",
    ),
    Setting(
        "max-body-size",
        "size",
        "1G",
        "Largest request body accepted (K, M, G suffixes; 413 beyond).",
    ),
    Setting(
        "body-timeout",
        "float",
        300.0,
        "Seconds a client has to send a whole request body (408 beyond).",
    ),
    Setting(
        "max-pipeline",
        "int",
        16,
        "Requests queued on one client connection behind the one being "
        "answered; beyond it the proxy stops reading that connection.",
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
        "allow",
        "list",
        ("private",),
        "Client address ranges served (403 otherwise): CIDRs such as "
        "10.0.0.0/8 or ::1, private (loopback and private ranges: "
        "127.0.0.0/8 ::1 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fc00::/7 "
        "fe80::/10), loopback, or all for everyone. Repeatable or "
        "comma-separated; replaces the default.",
    ),
    Setting(
        "deny-dest",
        "list",
        None,
        "Destinations refused (403): a host (example.com), *.example.com "
        "(names under it), .example.com (it and names under it), an address "
        "or a CIDR. Repeatable or comma-separated. Names are not resolved: "
        "list here the names that resolve to addresses to protect.",
    ),
    Setting(
        "allow-dest",
        "list",
        None,
        "Destinations exempt from the default refusal of loopback, "
        "link-local and localhost destinations to clients not on this "
        "machine (same forms as deny-dest, which still wins). Repeatable or "
        "comma-separated.",
    ),
    Setting(
        "admin-allow",
        "list",
        ("loopback",),
        "Client address ranges allowed the proxy's own endpoints "
        "(/_cachingproxy/...) and PURGE: CIDRs, loopback (127.0.0.0/8 ::1), "
        "private, all or none. Repeatable or comma-separated.",
    ),
    Setting(
        "auth-file",
        "str",
        None,
        "htpasswd file (bcrypt from htpasswd -B, or SHA-256/512 crypt) of "
        "the users who may use the proxy, with Proxy-Authorization Basic "
        "credentials (407 otherwise; 429 after 10 failures in 60 s from one "
        "address). Read again when it changes.",
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
    Setting("forwarded", "flag", False,
            "Add an RFC 7239 Forwarded element (for=, and host= and proto= with the "
            "options below)."),
    Setting("x-forwarded-proto", "flag", False,
            "Add X-Forwarded-Proto (the scheme the client used)."),
    Setting("x-forwarded-host", "flag", False,
            "Add X-Forwarded-Host (the Host the client asked for)."),
    Setting("preserve-host", "flag", False,
            "Reverse mode: send the client's Host upstream instead of the upstream's."),
    Setting("no-rewrite-redirects", "flag", False,
            "Reverse mode: leave Location and Content-Location naming the upstream as "
            "they are (by default they are rewritten to the proxy's own address)."),
    Setting("compress", "str", "auto",
            "Compress responses on the fly for clients that accept gzip or br: on, off, "
            "or auto (on in reverse mode, off in forward mode)."),
    Setting("compress-types", "str", "",
            "Comma-separated media types to compress (text/* for a whole type); empty "
            "for the built-in list of text types."),
    Setting("compress-min-size", "size", "1K",
            "Responses known to be smaller are not compressed."),
    Setting("add-request-header", "list", (),
            "'Name: value' appended to requests going upstream. Repeatable."),
    Setting("set-request-header", "list", (),
            "'Name: value' replacing that field on requests going upstream. Repeatable."),
    Setting("remove-request-header", "list", (),
            "A field removed from requests going upstream. Repeatable."),
    Setting("add-response-header", "list", (),
            "'Name: value' appended to responses to clients (never stored). Repeatable."),
    Setting("set-response-header", "list", (),
            "'Name: value' replacing that field on responses to clients. Repeatable."),
    Setting("remove-response-header", "list", (),
            "A field removed from responses to clients. Repeatable."),
    Setting(
        "access-log",
        "str",
        "-",
        "Access log file (Combined Log Format plus seconds taken); '-' writes "
        "to the twistd log.",
    ),
    Setting("no-access-log", "flag", False, "Write no access log."),
    Setting(
        "access-log-format",
        "str",
        "combined",
        "combined (Combined Log Format with cache result, origin seconds and "
        "seconds appended) or json (one JSON object a line).",
    ),
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
    Setting(
        "workers",
        "str",
        "1",
        "Processes serving clients: a number, or 'auto' for one per CPU.",
        aliases=("NUM_WORKERS",),
    ),
    Setting(
        "shutdown-grace",
        "float",
        10.0,
        "Seconds open requests get to finish after SIGTERM before their "
        "connections are closed.",
    ),
    Setting(
        "drain-idle-timeout",
        "float",
        2.0,
        "Seconds an idle keep-alive connection stays open once the proxy "
        "drains (SIGHUP reload, SIGTERM): a request that arrives meanwhile is "
        "answered with Connection: close. At most the shutdown grace.",
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
    accessLogFormat: str = "combined"
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
    workers: int = 1
    shutdownGrace: float = 10.0
    drainIdleTimeout: float = 2.0
    configFile: Optional[str] = None
    allow: Tuple[str, ...] = ("private",)
    denyDest: Tuple[str, ...] = ()
    allowDest: Tuple[str, ...] = ()
    adminAllow: Tuple[str, ...] = ("loopback",)
    authFile: Optional[str] = None
    maxBodySize: int = 1024**3
    maxHeaderFields: int = 100
    bodyTimeout: float = 300.0
    maxPipeline: int = 16
    xForwardedProto: bool = False
    xForwardedHost: bool = False
    preserveHost: bool = False
    rewriteRedirects: bool = True
    requestRules: object = None
    responseRules: object = None
    compression: object = None


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
                    separators = None if setting.name == "port" else r"[\s,]+"
                    if setting.name.endswith("-header"):
                        # Header rules hold spaces and commas: one a line.
                        separators = r"\n+"
                    value: object = tuple(
                        p for p in (re.split(separators, raw) if separators else raw.split()) if p
                    )
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


#: What a TOML value is called in an error message.
_TOML_TYPES = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
)


def _describe(value: object) -> str:
    kind = next((name for t, name in _TOML_TYPES if isinstance(value, t)), "a date or time")
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"


def _isNumber(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fileValue(setting: Setting, value: object, where: str) -> object:
    """
    Check the TOML type of a value from the configuration file and turn it
    into what the command line would have given.

    @raise usage.UsageError: naming C{where}.
    """
    kind = setting.kind
    if kind == "flag":
        if isinstance(value, bool):
            return value
        expected = "true or false"
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "an integer"
    elif kind == "float":
        if _isNumber(value):
            return value
        expected = "a number"
    elif kind == "size":
        if _isNumber(value) or isinstance(value, str):
            return value
        expected = 'a size such as "512M" or a number of bytes'
    elif kind == "list":
        items = value if isinstance(value, list) else [value]
        if setting.name != "port" and items == []:
            return ()
        if items and all(
            isinstance(item, str) or (isinstance(item, int) and not isinstance(item, bool))
            for item in items
        ):
            return tuple(str(item) for item in items)
        if setting.name == "port":
            expected = 'a port or endpoint string ("tcp:3128"), or an array of them'
        else:
            expected = 'a string such as "10.0.0.0/8", or an array of them'
    elif setting.name == "workers":
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return str(value)
        expected = 'a number of processes or "auto"'
    elif setting.name == "connect-ports":
        items = value if isinstance(value, list) else [value]
        if items and all(
            isinstance(item, str) or (isinstance(item, int) and not isinstance(item, bool))
            for item in items
        ):
            return ",".join(str(item) for item in items)
        expected = 'a port number, an array of them, or a string such as "443,8443"'
    else:
        if isinstance(value, str):
            return value
        expected = "a string"
    raise usage.UsageError(f"{where}: expected {expected}, got {_describe(value)}")


def _lineOf(text: str, key: str, table: bool) -> Optional[int]:
    """
    Find where C{key} is set in a TOML text (C{tomllib} gives no line
    numbers): its first C{key = ...} line, or its first C{[key]} header when
    C{table}.

    @return: a 1-based line number, or C{None} when no line matches.
    """
    name = "(?:%s|\"%s\"|'%s')" % ((re.escape(key),) * 3)
    assignment = re.compile(r"^[ \t]*%s[ \t]*[=.]" % name, re.MULTILINE)
    header = re.compile(r"^[ \t]*\[\[?[ \t]*%s[ \t]*[\].]" % name, re.MULTILINE)
    for pattern in (header, assignment) if table else (assignment, header):
        match = pattern.search(text)
        if match:
            return text.count("\n", 0, match.start()) + 1
    return None


def _oneLine(text: str) -> str:
    return " ".join(str(text).split())


def readConfigFile(path: str, where: str = "--config") -> Dict[str, Tuple[object, str]]:
    """
    Read a TOML configuration file.

    @param where: what named the file (C{--config}, an environment
        variable), for the error when it cannot be read.
    @return: C{{setting name: (value, where it came from)}}, each value
        type-checked and shaped as the command line gives it; C{where} is
        C{"FILE:LINE: key"}.
    @raise usage.UsageError: one line naming the file, and the key and its
        line where there is one.
    """
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise usage.UsageError(
                f"{where}: reading a configuration file needs Python 3.11 or the tomli package"
            )
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise usage.UsageError(f"{where}: no such file {path!r}")
    except OSError as e:
        raise usage.UsageError(f"{where}: cannot read {path!r}: {e.strerror or e}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise usage.UsageError(f"{path}:{line}: not UTF-8 text")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise usage.UsageError(f"{path}: invalid TOML: {_oneLine(e)}")

    found: Dict[str, Tuple[object, str]] = {}
    for key, value in document.items():
        line = _lineOf(text, key, isinstance(value, dict))
        at = f"{path}:{line}" if line else path
        setting = _BY_NAME.get(key)
        if setting is None or setting.name == "config":
            known = [s.name for s in SETTINGS if s.name != "config"]
            close = difflib.get_close_matches(key.replace("_", "-"), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if key == "config":
                hint = " (a configuration file cannot name another)"
            raise usage.UsageError(f"{at}: unknown setting {key!r}{hint}")
        keyWhere = f"{at}: {key}"
        found[key] = (_fileValue(setting, value, keyWhere), keyWhere)
    return found


def _workers(raw: object, where: str) -> int:
    text = str(raw).strip().lower()
    if text == "auto":
        return os.cpu_count() or 1
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise usage.UsageError(f"{where}: expected a number of processes (1 or more) or 'auto', got {raw!r}")


def _compression(values, reverse: bool):
    """
    @return: the L{CompressionSettings}, or C{None} when compression is off.
    @raise usage.UsageError: for a bad value.
    """
    from .compress import DEFAULT_TYPES, CompressionSettings

    mode, where = values["compress"]
    mode = str(mode).strip().lower()
    if mode in _TRUE:
        mode = "on"
    elif mode in _FALSE - {""}:
        mode = "off"
    if mode not in ("auto", "on", "off"):
        raise usage.UsageError(f"{where}: expected on, off or auto, got {mode!r}")
    if mode == "off" or (mode == "auto" and not reverse):
        return None
    types, where = values["compress-types"]
    listed = tuple(t.strip().lower() for t in str(types or "").split(",") if t.strip())
    for t in listed:
        if "/" not in t:
            raise usage.UsageError(f"{where}: {t!r} is not a media type")
    return CompressionSettings(types=listed or DEFAULT_TYPES,
                               minSize=int(values["compress-min-size"][0]))


def _rules(values, direction: str):
    """
    @return: the L{HeaderRules} for C{direction} ("request" or "response").
    @raise usage.UsageError: naming the rule that is malformed.
    """
    from .rules import HeaderRules

    parts = {}
    for verb in ("add", "set", "remove"):
        raw, where = values[f"{verb}-{direction}-header"]
        try:
            parts[verb] = HeaderRules.parse(**{verb: list(raw or ())})
        except ValueError as e:
            raise usage.UsageError(f"{where}: {e}")
    return HeaderRules(add=parts["add"].add, set=parts["set"].set,
                       remove=parts["remove"].remove)


def fromOptions(
    given: Mapping[str, object],
    environ: Mapping[str, str] = os.environ,
    configFile: Optional[str] = None,
) -> Config:
    """
    Build the L{Config} from parsed command-line values (C{{setting name:
    value}} for the settings given on the command line only), the
    environment and the configuration file, in that order of precedence.

    The configuration file is the one named by C{given["config"]}, else by
    C{CACHINGPROXY_CONFIG} in C{environ}, else C{configFile} (a default
    path for callers that have one); none is read when none is named.

    @raise usage.UsageError: one line naming the setting and where the bad
        value came from (option, environment variable, or file and line).
    """
    environment = _fromEnvironment(environ)
    configPath: Optional[str] = None
    pathWhere = "--config"
    if given.get("config") is not None:
        configPath = str(given["config"])
    elif "config" in environment:
        configPath, var = environment["config"]
        pathWhere = f"{var} (environment)"
    elif configFile is not None:
        configPath = configFile
    if configPath == "":
        configPath = None

    # setting name: (value, where it came from); None for the default.
    merged: Dict[str, Tuple[object, Optional[str]]] = {
        s.name: (s.default, None) for s in SETTINGS
    }
    if configPath is not None:
        merged.update(readConfigFile(configPath, pathWhere))
    for name, (value, var) in environment.items():
        merged[name] = (value, f"{var} (environment)")
    for name, value in given.items():
        merged[name] = (value, f"--{name}")

    values: Dict[str, Tuple[object, str]] = {}
    for setting in SETTINGS:
        raw, source = merged[setting.name]
        where = source or f"--{setting.name}"
        if setting.kind in ("int", "float") and source is not None:
            raw = _number(setting, raw, where)
        if setting.kind == "size":
            raw = parseSize(raw, where)
        if setting.kind == "list" and setting.name == "port":
            raw = tuple(_portDescription(str(p), where) for p in raw)
            if not raw:
                raise usage.UsageError(f"{where}: at least one port is needed")
        elif setting.kind == "list" and setting.name.endswith("-header"):
            # Header rules: each value is one rule.
            raw = tuple(str(p) for p in raw or () if str(p).strip())
        elif setting.kind == "list":
            # Address ranges and host patterns: repeatable and
            # comma-separated.
            raw = tuple(t for p in raw or () for t in re.split(r"[\s,]+", str(p)) if t)
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

    from . import access

    for name, parse in (
        ("allow", access.parseNetworks),
        ("admin-allow", access.parseNetworks),
        ("deny-dest", access.parseDestinations),
        ("allow-dest", access.parseDestinations),
    ):
        items, where = values[name]
        try:
            parse(items)
        except ValueError as e:
            raise usage.UsageError(f"{where}: {_oneLine(e)}")

    authFile, where = values["auth-file"]
    authFile = str(authFile) if authFile else None
    if authFile is not None:
        if not os.path.isfile(authFile):
            raise usage.UsageError(f"{where}: no such file {authFile!r}")
        if upstream:
            raise usage.UsageError(
                f"{where}: proxy authentication is for forward mode; a reverse "
                f"proxy's clients do not send Proxy-Authorization"
            )
        try:
            access.readPasswordFile(authFile, strict=True)
        except OSError as e:
            raise usage.UsageError(f"{where}: cannot read {authFile!r}: {e.strerror or e}")
        except ValueError as e:
            raise usage.UsageError(f"{where}: {_oneLine(e)}")

    accessLog = values["access-log"][0]
    if values["no-access-log"][0]:
        accessLog = None
    accessLogFormat, where = values["access-log-format"]
    if accessLogFormat not in ("combined", "json"):
        raise usage.UsageError(f"{where}: expected combined or json, got {accessLogFormat!r}")

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
        xForwardedProto=bool(values["x-forwarded-proto"][0]),
        xForwardedHost=bool(values["x-forwarded-host"][0]),
        preserveHost=bool(values["preserve-host"][0]),
        rewriteRedirects=not values["no-rewrite-redirects"][0],
        requestRules=_rules(values, "request"),
        responseRules=_rules(values, "response"),
        compression=_compression(values, bool(upstream)),
        accessLog=str(accessLog) if accessLog else None,
        accessLogFormat=str(accessLogFormat),
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
        workers=_workers(*values["workers"]),
        shutdownGrace=float(values["shutdown-grace"][0]),
        drainIdleTimeout=float(values["drain-idle-timeout"][0]),
        configFile=configPath,
        allow=values["allow"][0],
        denyDest=values["deny-dest"][0],
        allowDest=values["allow-dest"][0],
        adminAllow=values["admin-allow"][0],
        authFile=authFile,
        maxBodySize=int(values["max-body-size"][0]),
        maxHeaderFields=int(values["max-header-fields"][0]),
        bodyTimeout=float(values["body-timeout"][0]),
        maxPipeline=int(values["max-pipeline"][0]),
    )


def exitOnConfigError(error: usage.UsageError) -> NoReturn:
    """
    End the process for a configuration error the way an operator wants
    it: C{cachingproxy: <message>} on one line of standard error, exit
    status 2, no traceback and no usage text.

    twistd prints the whole C{--help} text for a L{usage.UsageError} and
    exits 1; L{tap.Options.postOptions} calls this instead.
    """
    print(f"cachingproxy: {_oneLine(error)}", file=sys.stderr)
    sys.stderr.flush()
    raise SystemExit(2)


def _formatDefault(setting: Setting) -> str:
    default = setting.default
    if default is None or default == () or default == "":
        return ""
    if setting.kind == "flag":
        return "off" if not default else "on"
    if isinstance(default, tuple):
        text = " ".join(str(d) for d in default)
    elif isinstance(default, float) and default.is_integer():
        text = str(int(default))
    else:
        text = str(default)
    return f"``{text}``"


def _rstText(text: str) -> str:
    """
    Escape inline markup characters so C{text} renders as written.
    """
    text = text.replace("\\", "\\\\")
    text = re.sub(r"([*`|])", r"\\\1", text)
    # name_ followed by a non-word character is a reference in RST.
    return re.sub(r"(\w)_(?=\W|$)", r"\1\\_", text)


def settingsTable() -> str:
    """
    Render every setting as an reStructuredText C{list-table}: option and
    configuration file key, environment variables, default, meaning; the
    one source for the README's table and C{--help}.
    """
    lines: List[str] = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 22 30 12 36",
        "",
        "   * - Option / file key",
        "     - Environment",
        "     - Default",
        "     - Meaning",
    ]
    for setting in SETTINGS:
        variables = ", ".join(f"``{v}``" for v in (setting.envName,) + setting.aliases)
        lines += [
            f"   * - ``--{setting.name}``",
            f"     - {variables}",
            f"     - {_formatDefault(setting)}".rstrip(),
            f"     - {_rstText(setting.help)}",
        ]
    return "\n".join(lines) + "\n"
