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

import dataclasses
import difflib
import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, NoReturn, Optional, Tuple
from urllib.parse import urlsplit

from twisted.python import usage

__all__ = [
    "Config",
    "SETTINGS",
    "Setting",
    "StartupError",
    "cannotListen",
    "exitOnConfigError",
    "fromOptions",
    "fromSetting",
    "parseDuration",
    "parseRefreshRule",
    "readConfigFile",
    "settingValues",
    "settingsFor",
    "settingsTable",
]


@dataclass(frozen=True)
class Setting:
    """
    One setting: its option name, its kind, its default, what it does, and
    how a value of it is read.

    The command line (L{cachingproxy.service.tap.Options}), the environment and the
    configuration file are all derived from this, so a setting added to
    L{SETTINGS} exists in the three at once; the default here is the only
    one (the settings objects built from a L{Config} take theirs from it,
    see L{fromSetting}).

    @ivar example: a value other than the default, as the command line
        takes it (a string, a tuple of strings for a C{list}, C{True} for a
        C{flag}); the tests set every setting to it from each source.
    @ivar parse: checks and turns the value its kind gives (a number, a
        byte count, a tuple of strings, a boolean, a string or C{None})
        into what L{Config} holds, as C{parse(value, where)}; it raises
        L{usage.UsageError} naming C{where}. C{None}: the kind's value as
        it is.
    @ivar field: the L{Config} field the value lands in, when it is not
        the setting's L{attribute}.
    """

    name: str
    kind: str  # "str", "float", "int", "flag", "list", "size"
    default: object
    help: str
    aliases: Tuple[str, ...] = ()
    example: object = None
    parse: Optional[Callable[[object, str], object]] = None
    field: Optional[str] = None

    @property
    def attribute(self) -> str:
        head, *rest = self.name.split("-")
        return head + "".join(p.capitalize() for p in rest)

    @property
    def configField(self) -> str:
        """
        The name of the L{Config} field this setting fills, if it has one.
        """
        return self.field or self.attribute

    @property
    def envName(self) -> str:
        return "CACHINGPROXY_" + self.name.upper().replace("-", "_")

    @property
    def defaultText(self) -> str:
        """
        The default as an operator would write it; empty when there is none.
        """
        default = self.default
        if default is None or default == () or default == "":
            return ""
        if self.kind == "flag":
            return "on" if default else "off"
        if isinstance(default, tuple):
            return " ".join(str(d) for d in default)
        if isinstance(default, float) and default.is_integer():
            return str(int(default))
        return str(default)

    def read(self, raw: object, where: str) -> object:
        """
        @param raw: the default, or the value one source gave (a string
            from the command line or the environment, a TOML value
            checked by L{_fileValue}, a tuple for a C{list}).
        @return: the value as L{Config} holds it.
        @raise usage.UsageError: naming C{where}.
        """
        value = _byKind(self, raw, where)
        return value if self.parse is None else self.parse(value, where)


def _byKind(setting: Setting, raw: object, where: str) -> object:
    """
    @return: C{raw} as the kind of C{setting} gives it: a checked number,
        a byte count, a tuple of items, a boolean, or a string (C{None}
        left as it is).
    @raise usage.UsageError: naming C{where}.
    """
    kind = setting.kind
    if kind in ("int", "float"):
        return _number(setting, raw, where)
    if kind == "size":
        return parseSize(raw, where)
    if kind == "flag":
        return bool(raw)
    if kind == "list" and isinstance(raw, str):
        # One value given where several may be (a TOML string).
        raw = (raw,)
    if kind == "list" and setting.name == "port":
        return tuple(str(p) for p in raw or ())
    if kind == "list" and _wholeItems(setting):
        # Rules: each value is one rule (a refresh rule may be a table).
        return tuple(p if isinstance(p, dict) else str(p)
                     for p in raw or () if isinstance(p, dict) or str(p).strip())
    if kind == "list":
        # Address ranges and host patterns: repeatable and
        # comma-separated.
        return tuple(t for p in raw or () for t in re.split(r"[\s,]+", str(p)) if t)
    return None if raw is None else str(raw)


def _ports(values: Tuple[str, ...], where: str) -> Tuple[str, ...]:
    ports = tuple(_portDescription(p, where) for p in values)
    if not ports:
        raise usage.UsageError(f"{where}: at least one port is needed")
    return ports


def _upstreamURL(url: Optional[str], where: str) -> Optional[str]:
    """
    @return: the reverse proxy's origin URL, checked, or C{None}.
    """
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise usage.UsageError(
            f"{where}: expected http://host[:port][/prefix] or https://..., got {url!r}"
        )
    try:
        parts.port
    except ValueError:
        raise usage.UsageError(f"{where}: invalid port in {url!r}")
    if parts.query or parts.fragment or parts.username:
        raise usage.UsageError(
            f"{where}: the upstream URL takes no query, fragment or user, got {url!r}"
        )
    return url


def _upstreamURLs(urls: Tuple[str, ...], where: str) -> Tuple[str, ...]:
    """
    @return: the reverse proxy's origin URLs, each checked.
    """
    return tuple(_upstreamURL(url, where) for url in urls)


def _upstreamParts(url: Optional[str], grouped: bool = False) -> Dict[str, object]:
    """
    @return: the L{Config} fields of a checked upstream URL (or of none);
        with origin groups (C{grouped}), each server's own prefix is put
        before the target, so there is no common one.
    """
    if url is None:
        return dict(upstreamScheme=None, upstreamHost=None, upstreamPort=None,
                    upstreamPath=b"")
    parts = urlsplit(url)
    return dict(
        upstreamScheme=parts.scheme.encode("ascii"),
        upstreamHost=parts.hostname,
        upstreamPort=parts.port or (443 if parts.scheme == "https" else 80),
        upstreamPath=b"" if grouped else parts.path.rstrip("/").encode("ascii"),
    )


def _connectPorts(text: str, where: str) -> frozenset:
    ports = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or not 0 < int(item) < 65536:
            raise usage.UsageError(f"{where}: {item!r} is not a port number")
        ports.add(int(item))
    return frozenset(ports)


def _protocols(names: Tuple[str, ...], where: str) -> Tuple[str, ...]:
    for name in names:
        if not name or not all(c in _TOKEN for c in name):
            raise usage.UsageError(f"{where}: {name!r} is not a protocol name")
    return names


def _existingFile(path: Optional[str], where: str) -> Optional[str]:
    if path is not None and not os.path.isfile(path):
        raise usage.UsageError(f"{where}: no such file {path!r}")
    return path


def _viaName(name: Optional[str], where: str) -> str:
    name = name or socket.gethostname() or "cachingproxy"
    if any(c.isspace() or c in ",()" for c in name):
        raise usage.UsageError(f"{where}: must be one token, got {name!r}")
    return name


def _networks(items: Tuple[str, ...], where: str) -> Tuple[str, ...]:
    from ..access import parseNetworks

    return _checked(parseNetworks, items, where)


def _destinations(items: Tuple[str, ...], where: str) -> Tuple[str, ...]:
    from ..access import parseDestinations

    return _checked(parseDestinations, items, where)


def _trustedProxies(items: Tuple[str, ...], where: str) -> Tuple[str, ...]:
    return _networks(items, where) if items else items


def _checked(parse, items: Tuple[str, ...], where: str) -> Tuple[str, ...]:
    try:
        parse(items)
    except ValueError as e:
        raise usage.UsageError(f"{where}: {_oneLine(e)}")
    return items


def _authFile(path: Optional[str], where: str) -> Optional[str]:
    """
    @return: the path of an existing password file, or C{None}.
    """
    return _existingFile(path or None, where)


def _checkPasswordFile(path: str, where: str) -> None:
    """
    @raise usage.UsageError: C{path} cannot be read as a password file.
    """
    from .. import access

    try:
        access.readPasswordFile(path, strict=True)
    except OSError as e:
        raise usage.UsageError(f"{where}: cannot read {path!r}: {e.strerror or e}")
    except ValueError as e:
        raise usage.UsageError(f"{where}: {_oneLine(e)}")


def _oneOf(*choices: str) -> Callable[[object, str], str]:
    def parse(value: object, where: str) -> str:
        if value not in choices:
            expected = ", ".join(choices[:-1]) + " or " + choices[-1]
            raise usage.UsageError(f"{where}: expected {expected}, got {value!r}")
        return str(value)

    return parse


def _http2Mode(value: object, where: str) -> str:
    mode = str(value).strip().lower()
    if mode in _TRUE:
        mode = "tls"
    elif mode in _FALSE - {""}:
        mode = "off"
    return _oneOf("off", "tls", "all")(mode, where)


def _folder(path: str, where: str) -> Optional[str]:
    return None if path.lower() == "none" else path


def _negated(flag: bool, where: str) -> bool:
    return not flag


def _atLeastOne(count: int, where: str) -> int:
    return max(1, count)


def _workers(raw: object, where: str) -> int:
    text = str(raw).strip().lower()
    if text == "auto":
        return os.cpu_count() or 1
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise usage.UsageError(f"{where}: expected a number of processes (1 or more) or 'auto', got {raw!r}")


def _compressMode(mode: str, where: str) -> str:
    mode = mode.strip().lower()
    if mode in _TRUE:
        mode = "on"
    elif mode in _FALSE - {""}:
        mode = "off"
    if mode not in ("auto", "on", "off"):
        raise usage.UsageError(f"{where}: expected on, off or auto, got {mode!r}")
    return mode


def _compressTypes(text: Optional[str], where: str) -> Tuple[str, ...]:
    listed = tuple(t.strip().lower() for t in (text or "").split(",") if t.strip())
    for t in listed:
        if "/" not in t:
            raise usage.UsageError(f"{where}: {t!r} is not a media type")
    return listed


def _refreshRules(raw: object, where: str) -> Tuple[object, ...]:
    """
    @return: the L{cachingproxy.cache.policy.RefreshRule}s of the setting, in
        order.
    @raise usage.UsageError: naming the rule that is malformed.
    """
    rules = []
    for number, item in enumerate(raw or (), 1):
        try:
            if isinstance(item, dict):
                rules.append(_refreshRuleFromTable(item))
            else:
                rules.append(parseRefreshRule(str(item)))
        except ValueError as e:
            what = f"rule {number}" if isinstance(item, dict) else repr(str(item))
            raise usage.UsageError(f"{where}: {what}: {_oneLine(e)}")
    return tuple(rules)


def _headerRules(verb: str) -> Callable[[object, str], object]:
    """
    @return: the parse of the C{VERB-request-header} and
        C{VERB-response-header} settings: a L{HeaderRules} with only
        C{verb} filled in.
    """

    def parse(items: Tuple[str, ...], where: str):
        from ..rules import HeaderRules

        try:
            return HeaderRules.parse(**{verb: list(items)})
        except ValueError as e:
            raise usage.UsageError(f"{where}: {e}")

    return parse


#: Every setting, in the order --help shows them.
SETTINGS = (
    Setting(
        "config",
        "str",
        None,
        "TOML configuration file: every setting under its option name "
        "(upstream-timeout = 5). The command line and the environment win "
        "over it.",
        example="other.toml",
    ),
    Setting(
        "port",
        "list",
        ("tcp:3128",),
        "Where to listen: a port number or a Twisted server endpoint string "
        "(tcp:3128:interface=127.0.0.1, ssl:..., unix:..., "
        "systemd:domain=INET:index=0). Repeatable.",
        aliases=("LISTEN_PORT",),
        example=("20000", "unix:/run/cachingproxy.sock"),
        parse=_ports,
    ),
    Setting(
        "http2",
        "str",
        "tls",
        "Where clients may speak HTTP/2: tls (offered by ALPN on TLS "
        "listeners), all (and by prior knowledge, h2c, on plain ones) or off.",
        example="all",
        parse=_http2Mode,
    ),
    Setting(
        "upstream",
        "list",
        (),
        "Reverse proxy mode: send every request to this origin URL "
        "(http://host:port[/prefix] or https://...). Repeatable: several "
        "origins make one round-robin group with health checks.",
        example=("http://127.0.0.1:9000/base",),
        parse=_upstreamURLs,
    ),
    Setting("connect-timeout", "float", 10.0, "Seconds to connect to an origin.", example="3"),
    Setting(
        "upstream-timeout",
        "float",
        10.0,
        "Seconds of silence tolerated from an origin while its response is awaited "
        "or streaming.",
        example="7.5",
    ),
    Setting(
        "idle-timeout",
        "float",
        60.0,
        "Seconds a kept-alive client connection may wait for its next request.",
        example="30",
    ),
    Setting(
        "header-timeout",
        "float",
        10.0,
        "Seconds from the first byte of a request head to its end (408 beyond); "
        "a client sending its head slowly cannot extend it.",
        example="5",
    ),
    Setting(
        "max-request-line",
        "int",
        8192,
        "Longest request target accepted, in bytes (414 beyond).",
        example="4096",
    ),
    Setting(
        "max-header-size",
        "int",
        65536,
        "Largest request header section accepted, in bytes (431 beyond).",
        example="16384",
    ),
    Setting(
        "max-header-fields",
        "int",
        100,
        "Most header fields accepted in a request (431 beyond).",
        example="50",
    ),
    Setting(
        "max-body-size",
        "size",
        "1G",
        "Largest request body accepted (K, M, G suffixes; 413 beyond).",
        example="10M",
    ),
    Setting(
        "body-timeout",
        "float",
        300.0,
        "Seconds a client has to send a whole request body (408 beyond).",
        example="60",
    ),
    Setting(
        "max-pipeline",
        "int",
        16,
        "Requests queued on one client connection behind the one being "
        "answered; beyond it the proxy stops reading that connection.",
        example="4",
    ),
    Setting(
        "max-connections",
        "int",
        10000,
        "Client connections served at once; beyond it no new connection is "
        "accepted until one closes.",
        example="500",
    ),
    Setting(
        "connect-ports",
        "str",
        "443",
        "Comma-separated ports that CONNECT may reach (403 otherwise).",
        example="443,8443",
        parse=_connectPorts,
    ),
    Setting(
        "upgrade-protocols",
        "list",
        ("websocket",),
        "Protocols a request may ask to upgrade to (Connection: Upgrade): such "
        "a request is forwarded with its Upgrade field and never cached, and a "
        "101 from the origin turns both connections into a tunnel. A request "
        "asking only for others is forwarded without the upgrade. Repeatable.",
        example=("websocket", "h2c"),
        parse=_protocols,
    ),
    Setting(
        "upgrade-idle-timeout",
        "float",
        300.0,
        "Seconds an upgraded connection (a WebSocket) may pass no byte either "
        "way before it is closed.",
        example="60",
    ),
    Setting(
        "upgrade-timeout",
        "float",
        0.0,
        "Seconds an upgraded connection may last in all; 0 for no limit.",
        example="3600",
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
        example=("10.0.0.0/8", "192.168.0.0/16"),
        parse=_networks,
    ),
    Setting(
        "deny-dest",
        "list",
        None,
        "Destinations refused (403): a host (example.com), *.example.com "
        "(names under it), .example.com (it and names under it), an address "
        "or a CIDR. Repeatable or comma-separated. Names are not resolved: "
        "list here the names that resolve to addresses to protect.",
        example=("example.com", "*.internal"),
        parse=_destinations,
    ),
    Setting(
        "allow-dest",
        "list",
        None,
        "Destinations exempt from the default refusal of loopback, "
        "link-local and localhost destinations to clients not on this "
        "machine (same forms as deny-dest, which still wins). Repeatable or "
        "comma-separated.",
        example=("localhost",),
        parse=_destinations,
    ),
    Setting(
        "admin-allow",
        "list",
        ("loopback",),
        "Client address ranges allowed the proxy's own endpoints "
        "(/_cachingproxy/...) and PURGE: CIDRs, loopback (127.0.0.0/8 ::1), "
        "private, all or none. Repeatable or comma-separated.",
        example=("private",),
        parse=_networks,
    ),
    Setting(
        "auth-file",
        "str",
        None,
        "htpasswd file (bcrypt from htpasswd -B, or SHA-256/512 crypt) of "
        "the users who may use the proxy, with Proxy-Authorization Basic "
        "credentials (407 otherwise; 429 after 10 failures in 60 s from one "
        "address). Read again when it changes.",
        example="users.htpasswd",
        parse=_authFile,
    ),
    Setting(
        "upstream-max-idle",
        "int",
        64,
        "Idle keep-alive connections kept per origin.",
        example="8",
    ),
    Setting(
        "upstream-idle-timeout",
        "float",
        60.0,
        "Seconds an idle upstream connection is kept.",
        example="30",
    ),
    Setting(
        "ca-file",
        "str",
        None,
        "PEM file of CA certificates trusted for https origins (default: the "
        "system's trust store).",
        example="ca.pem",
        parse=_existingFile,
    ),
    Setting(
        "via-name",
        "str",
        None,
        "The name this proxy gives itself in Via (default: the host name); "
        "a request whose Via already names it is refused as a loop.",
        example="edge1",
        parse=_viaName,
    ),
    Setting("x-forwarded-for", "flag", False, "Append the client address to X-Forwarded-For.",
            example=True),
    Setting("forwarded", "flag", False,
            "Add an RFC 7239 Forwarded element (for=, and host= and proto= with the "
            "options below).", example=True),
    Setting("x-forwarded-proto", "flag", False,
            "Add X-Forwarded-Proto (the scheme the client used).", example=True),
    Setting("x-forwarded-host", "flag", False,
            "Add X-Forwarded-Host (the Host the client asked for).", example=True),
    Setting("preserve-host", "flag", False,
            "Reverse mode: send the client's Host upstream instead of the upstream's "
            "(the cache then keys responses on it).",
            example=True),
    Setting(
        "trusted-proxies",
        "list",
        None,
        "Proxies in front of this one (CIDRs, loopback, private, all) whose "
        "X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto, X-Forwarded-Port, "
        "X-Forwarded-Server, X-Real-IP and Forwarded are passed upstream (and "
        "extended); from any other client they are dropped. Repeatable or "
        "comma-separated.",
        example=("10.0.0.0/8", "192.168.1.5"),
        parse=_trustedProxies,
    ),
    Setting("no-rewrite-redirects", "flag", False,
            "Reverse mode: leave Location and Content-Location naming the upstream as "
            "they are (by default they are rewritten to the proxy's own address).",
            example=True, parse=_negated, field="rewriteRedirects"),
    Setting("compress", "str", "auto",
            "Compress responses on the fly for clients that accept gzip or br: on, off, "
            "or auto (on in reverse mode, off in forward mode).",
            example="off", parse=_compressMode),
    Setting("compress-types", "str", "",
            "Comma-separated media types to compress (text/* for a whole type); empty "
            "for the built-in list of text types.",
            example="text/html,application/json", parse=_compressTypes),
    Setting("compress-min-size", "size", "1K",
            "Responses known to be smaller are not compressed.", example="2K"),
    Setting("add-request-header", "list", (),
            "'Name: value' appended to requests going upstream. Repeatable.",
            example=("X-Tenant: a", "X-Tenant: b"), parse=_headerRules("add")),
    Setting("set-request-header", "list", (),
            "'Name: value' replacing that field on requests going upstream. Repeatable.",
            example=("User-Agent: cachingproxy",), parse=_headerRules("set")),
    Setting("remove-request-header", "list", (),
            "A field removed from requests going upstream. Repeatable.",
            example=("Cookie",), parse=_headerRules("remove")),
    Setting("add-response-header", "list", (),
            "'Name: value' appended to responses to clients (never stored). Repeatable.",
            example=("X-Served-By: edge1",), parse=_headerRules("add")),
    Setting("set-response-header", "list", (),
            "'Name: value' replacing that field on responses to clients. Repeatable.",
            example=("Server: cachingproxy",), parse=_headerRules("set")),
    Setting("remove-response-header", "list", (),
            "A field removed from responses to clients. Repeatable.",
            example=("X-Powered-By",), parse=_headerRules("remove")),
    Setting(
        "access-log",
        "str",
        "-",
        "Access log file (Combined Log Format with fields appended, see below); "
        "'-' writes to the twistd log.",
        example="/var/log/cachingproxy/access.log",
    ),
    Setting("no-access-log", "flag", False, "Write no access log.", example=True),
    Setting(
        "access-log-format",
        "str",
        "combined",
        "combined (Combined Log Format with cache result, origin seconds, "
        "seconds and bytes received appended) or json (one JSON object a line).",
        example="json",
        parse=_oneOf("combined", "json"),
    ),
    Setting(
        "cache-dir",
        "str",
        "cache",
        "Folder of the shared disk cache (created if missing; every worker "
        "process shares it); 'none' for no disk cache.",
        example="/var/cache/cachingproxy",
        parse=_folder,
    ),
    Setting("cache-size", "size", "1G", "Disk cache limit (K, M, G suffixes); LRU beyond it.",
            example="10G"),
    Setting(
        "cache-memory",
        "size",
        "0",
        "Memory cache size: a hot tier in front of the disk cache, or the "
        "whole cache with --cache-dir none. 0 for none.",
        example="64M",
    ),
    Setting("max-object-size", "size", "256M", "Largest response body stored.", example="16M"),
    Setting("no-cache", "flag", False, "Do not cache at all: forward only.", example=True,
            parse=_negated, field="cache"),
    Setting(
        "cache-set-cookie",
        "flag",
        False,
        "Store responses that carry Set-Cookie, without it: the cookie goes "
        "only to the client whose request fetched the response. Off: such "
        "responses are not stored.",
        example=True,
    ),
    Setting(
        "min-uses",
        "int",
        1,
        "Store an object only from its Nth request on (2 keeps one-off "
        "objects off the disk).",
        example="2",
        parse=_atLeastOne,
    ),
    Setting(
        "stale-while-revalidate",
        "float",
        0.0,
        "Seconds a stale response may be served while it is revalidated in "
        "the background, when the response does not say (RFC 5861). 0: off.",
        example="30",
    ),
    Setting(
        "stale-if-error",
        "float",
        0.0,
        "Seconds of staleness served when the origin fails, when the "
        "response does not say (RFC 5861). 0: off.",
        example="600",
    ),
    Setting(
        "refresh-rule",
        "list",
        (),
        "Freshness for responses that carry none (no max-age, s-maxage or "
        "Expires), like Squid's refresh_pattern: '[-i] REGEX MIN PERCENT MAX "
        "[type=TYPE,...] [override]'. REGEX is searched for in the target "
        "URL (-i: ignoring case); the lifetime is PERCENT of the time since "
        "Last-Modified (MIN without one), at least MIN, at "
        "most MAX; durations in seconds or with s, m, h, d, w. type= limits "
        "the rule to those media types; override makes MIN apply over "
        "shorter explicit freshness too. The first matching rule wins. "
        "Repeatable; one a line in the environment; in the file, strings or "
        "tables (pattern, min, percent, max, types, ignore-case, override).",
        example=(r"\.deb$ 1d 20 7d", r"-i \.iso$ 1h 10 1d"),
        parse=_refreshRules, field="refreshRules",
    ),
    Setting("no-x-cache", "flag", False, "Do not add X-Cache (Cache-Status stays).", example=True,
            parse=_negated, field="xCache"),
    Setting(
        "no-collapse",
        "flag",
        False,
        "Send concurrent misses for one URL upstream separately.",
        example=True,
        parse=_negated, field="collapse",
    ),
    Setting(
        "workers",
        "str",
        "1",
        "Processes serving clients: a number, or 'auto' for one per CPU.",
        aliases=("NUM_WORKERS",),
        example="2",
        parse=_workers,
    ),
    Setting(
        "shutdown-grace",
        "float",
        10.0,
        "Seconds open requests get to finish after SIGTERM before their "
        "connections are closed.",
        example="2.5",
    ),
    Setting(
        "drain-idle-timeout",
        "float",
        2.0,
        "Seconds an idle keep-alive connection stays open once the proxy "
        "drains (SIGHUP reload, SIGTERM): a request that arrives meanwhile is "
        "answered with Connection: close. At most the shutdown grace.",
        example="1.5",
    ),
    # -- collapsed forwarding across processes
    Setting(
        "collapse-wait",
        "float",
        5.0,
        "At most how many seconds a miss waits for another worker (or "
        "proxy sharing the cache folder) that is fetching the same URL; "
        "after that it goes to the origin itself, storing nothing.",
        example="2.5",
    ),
    # -- the fleet tier (README "Running a fleet")
    Setting(
        "redis",
        "str",
        None,
        "Share the cache with other proxies through Redis (or Valkey): "
        "redis://[:password@]host:port[/db], rediss:// for TLS. A local miss "
        "asks it; what is stored goes to it; PURGE applies to it.",
        example="redis://127.0.0.1:6379/0",
    ),
    Setting(
        "redis-password-file",
        "str",
        None,
        "File whose first line is the Redis password (wins over the URL's).",
        example="redis.password",
    ),
    Setting(
        "redis-cluster",
        "flag",
        False,
        "The --redis URL is a seed node of a Redis Cluster.",
        example=True,
    ),
    Setting(
        "fleet-max-object-size",
        "size",
        "8M",
        "Largest body shared through Redis; larger ones stay in the local tiers.",
        example="1M",
    ),
    Setting(
        "fleet-deadline",
        "float",
        0.05,
        "Most seconds the fleet tier adds to a request: a lookup Redis has "
        "not answered by then is a miss (answered from the origin). A command "
        "itself gets 4 times this (at least 0.25) before its connection is "
        "closed.",
        example="0.1",
    ),
    Setting(
        "fleet-lock-lease",
        "float",
        5.0,
        "Seconds a fill lock in Redis lasts unless renewed (a proxy that "
        "dies holding one blocks no one longer).",
        example="10",
    ),
    Setting(
        "fleet-wait",
        "float",
        0.5,
        "Most seconds a request waits for a fill in progress on another proxy.",
        example="1",
    ),
    Setting(
        "tag-field",
        "str",
        "Surrogate-Key",
        "Response field carrying purge tags (space- or comma-separated); "
        "PURGE with this field purges every response carrying one of its tags.",
        example="Cache-Tag",
    ),
    Setting(
        "keep-tag-field",
        "flag",
        False,
        "Send the tag field on to clients (it is removed by default).",
        example=True,
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    """
    The validated settings; see L{SETTINGS} for what each one means and its
    default.

    A setting whose L{Setting.configField} (C{upstream-timeout}:
    C{upstreamTimeout}) is a field here is filled in by L{fromOptions} as
    L{Setting.read} gives it; the other fields are worked out from several
    settings.
    """

    port: Tuple[str, ...]
    http2: str
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
    upgradeProtocols: Tuple[str, ...]
    upgradeIdleTimeout: float
    upgradeTimeout: float
    upstreamMaxIdle: int
    upstreamIdleTimeout: float
    caFile: Optional[str]
    viaName: str
    xForwardedFor: bool
    forwarded: bool
    accessLog: Optional[str]
    accessLogFormat: str
    cacheDir: Optional[str]
    cacheSize: int
    cacheMemory: int
    maxObjectSize: int
    cache: bool
    minUses: int
    staleWhileRevalidate: float
    staleIfError: float
    xCache: bool
    collapse: bool
    workers: int
    shutdownGrace: float
    drainIdleTimeout: float
    configFile: Optional[str]
    allow: Tuple[str, ...]
    denyDest: Tuple[str, ...]
    allowDest: Tuple[str, ...]
    adminAllow: Tuple[str, ...]
    authFile: Optional[str]
    maxBodySize: int
    maxHeaderFields: int
    bodyTimeout: float
    maxPipeline: int
    xForwardedProto: bool
    xForwardedHost: bool
    preserveHost: bool
    rewriteRedirects: bool
    requestRules: object
    responseRules: object
    compression: object
    refreshRules: Tuple[object, ...]
    trustedProxies: Tuple[str, ...]
    cacheSetCookie: bool
    collapseWait: float
    # the fleet tier
    redis: Optional[str]
    redisPasswordFile: Optional[str]
    redisCluster: bool
    fleetMaxObjectSize: int
    fleetDeadline: float
    fleetLockLease: float
    fleetWait: float
    tagField: Optional[str]
    keepTagField: bool
    #: routes and origin groups (L{cachingproxy.sites.model.Sites}) from
    #: C{[groups.*]}, C{[[routes]]} and C{default-route} in the
    #: configuration file, or from several C{--upstream}; C{None} without
    sites: object


def _wholeItems(setting: Setting) -> bool:
    """
    Whether each value of a list setting is one item as given (a header
    rule, a refresh rule: they hold spaces and commas), rather than a list
    of items separated by spaces or commas.
    """
    return setting.name.endswith("-header") or setting.name == "refresh-rule"


#: the characters of a token (RFC 9110 section 5.6.2), such as a protocol
#: name in Upgrade
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789"
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

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
                    if _wholeItems(setting):
                        # Rules hold spaces and commas: one a line.
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


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?)\s*([smhdw]?)", re.IGNORECASE)


def parseDuration(raw: object) -> float:
    """
    @return: seconds from C{90}, C{90s}, C{15m}, C{12h}, C{1d}, C{2w} (a
        bare number is seconds) or a TOML number.
    @raise ValueError: for anything else, negative numbers included.
    """
    if _isNumber(raw):
        value = float(raw)  # type: ignore[arg-type]
        if not value >= 0:
            raise ValueError(f"expected a duration such as 90, 15m or 1d, got {raw!r}")
        return value
    match = _DURATION.fullmatch(str(raw).strip())
    if match is None:
        raise ValueError(f"expected a duration such as 90, 15m or 1d, got {raw!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def _percent(raw: object) -> float:
    """
    @return: the number of C{20}, C{20%}, C{12.5} or a TOML number.
    @raise ValueError: for anything else, negative numbers included.
    """
    try:
        value = float(str(raw).strip().removesuffix("%"))
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"expected a percentage such as 20 or 20%, got {raw!r}")
    return value


def _mediaTypes(raw: object) -> frozenset:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    types = []
    for item in items:
        text = str(item).strip().lower()
        if text.count("/") != 1 or text.startswith("/") or text.endswith("/"):
            raise ValueError(f"{item!r} is not a media type (type/subtype or type/*)")
        types.append(text.encode("ascii", "replace"))
    return frozenset(types)


def parseRefreshRule(text: str):
    """
    Parse C{'[-i] REGEX MIN PERCENT MAX [type=TYPE,...] [override]'}.

    @return: a L{cachingproxy.cache.policy.RefreshRule}.
    @raise ValueError: saying what is wrong.
    """
    from ..cache.policy import RefreshRule

    words = str(text).split()
    ignoreCase = bool(words) and words[0] == "-i"
    if ignoreCase:
        words = words[1:]
    if len(words) < 4:
        raise ValueError(
            f"expected '[-i] REGEX MIN PERCENT MAX [type=TYPE,...] [override]', got {text!r}"
        )
    pattern, minimum, percent, maximum, *options = words
    override = False
    mediaTypes: frozenset = frozenset()
    for option in options:
        if option == "override":
            override = True
        elif option.startswith("type="):
            mediaTypes = _mediaTypes(option[len("type="):])
        else:
            raise ValueError(f"unknown option {option!r} (type=..., override)")
    return RefreshRule(
        pattern,
        minimum=parseDuration(minimum),
        percent=_percent(percent),
        maximum=parseDuration(maximum),
        mediaTypes=mediaTypes,
        ignoreCase=ignoreCase,
        override=override,
    )


_RULE_KEYS = ("pattern", "min", "percent", "max", "types", "ignore-case", "override")


def _refreshRuleFromTable(table: Mapping[str, object]):
    """
    A refresh rule from a TOML table: C{pattern}, C{min}, C{percent} and
    C{max} (required), C{types} (a string or an array), C{ignore-case} and
    C{override} (booleans).

    @return: a L{cachingproxy.cache.policy.RefreshRule}.
    @raise ValueError: saying what is wrong.
    """
    from ..cache.policy import RefreshRule

    for key in table:
        if key not in _RULE_KEYS:
            raise ValueError(f"unknown key {key!r} (expected {', '.join(_RULE_KEYS)})")
    for key in ("pattern", "min", "percent", "max"):
        if key not in table:
            raise ValueError(f"{key} is missing")
    if not isinstance(table["pattern"], str):
        raise ValueError(f"pattern: expected a string, got {_describe(table['pattern'])}")
    for key in ("ignore-case", "override"):
        if not isinstance(table.get(key, False), bool):
            raise ValueError(f"{key}: expected true or false, got {_describe(table[key])}")
    return RefreshRule(
        table["pattern"],
        minimum=parseDuration(table["min"]),
        percent=_percent(table["percent"]),
        maximum=parseDuration(table["max"]),
        mediaTypes=_mediaTypes(table["types"]) if "types" in table else frozenset(),
        ignoreCase=bool(table.get("ignore-case", False)),
        override=bool(table.get("override", False)),
    )


def _number(setting: Setting, raw: object, where: str) -> object:
    try:
        value = float(raw) if setting.kind == "float" else int(str(raw), 10)
    except (TypeError, ValueError):
        raise usage.UsageError(f"{where}: expected a number, got {raw!r}")
    if value < 0 or (value == 0 and setting.default not in (0, 0.0)):
        raise usage.UsageError(f"{where}: must be greater than 0, got {raw!r}")
    return value


#: The port number in a TCP or TLS endpoint string.
_ENDPOINT_PORT = re.compile(r"^(?:haproxy:)?(?:tcp6?|ssl|tls):(?:[^:]*:)*?(?:port=)?(\d+)(?::|$)")


def _portDescription(raw: str, where: str) -> str:
    raw = raw.strip()
    number = raw if raw.isdigit() else None
    match = _ENDPOINT_PORT.match(raw)
    if match:
        number = match.group(1)
    if number is not None and not 0 <= int(number) < 65536:
        raise usage.UsageError(f"{where}: port {number} is out of range (0 to 65535)")
    if raw.isdigit():
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
    elif kind == "list" and setting.name == "refresh-rule":
        items = value if isinstance(value, list) else [value]
        if all(isinstance(item, (str, dict)) for item in items):
            return tuple(items)
        expected = "a rule string, a table, or an array of them"
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
        elif setting.name == "upstream":
            expected = 'an origin URL ("http://10.0.0.1:8080"), or an array of them'
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
        if key in _SITES_KEYS:
            continue
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
    if any(key in document for key in _SITES_KEYS):
        from ..sites.parse import parseSites

        found[_SITES] = (parseSites(document, text, path), path)
    return found


#: The keys of the configuration file that are routes and origin groups
#: (L{cachingproxy.sites.parse}), and where L{readConfigFile} puts them.
_SITES_KEYS = ("groups", "routes", "default-route")
_SITES = "[groups] and [[routes]]"


def _compression(mode: str, types: Tuple[str, ...], minSize: int, reverse: bool):
    """
    @return: the L{CompressionSettings} of the three compress settings, or
        C{None} when compression is off (C{auto}: on in reverse mode only).
    """
    from ..compress import DEFAULT_TYPES, CompressionSettings

    if mode == "off" or (mode == "auto" and not reverse):
        return None
    return CompressionSettings(types=types or DEFAULT_TYPES, minSize=minSize)


def _headerRulesOf(values: Mapping[str, object], direction: str):
    """
    @return: the L{HeaderRules} of the add, set and remove settings of
        C{direction} ("request" or "response"), together.
    """
    from ..rules import HeaderRules

    add, set_, remove = (values[f"{verb}-{direction}-header"] for verb in ("add", "set", "remove"))
    return HeaderRules(add=add.add, set=set_.set, remove=remove.remove)  # type: ignore[attr-defined]


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

    Each setting's value is read as its L{Setting} says (L{Setting.read});
    what is left here is what takes several settings at once.

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

    # setting name: (value, where it came from)
    merged: Dict[str, Tuple[object, str]] = {
        s.name: (s.default, f"--{s.name}") for s in SETTINGS
    }
    if configPath is not None:
        merged.update(readConfigFile(configPath, pathWhere))
    for name, (value, var) in environment.items():
        merged[name] = (value, f"{var} (environment)")
    for name, value in given.items():
        merged[name] = (value, f"--{name}")

    values = {s.name: s.read(*merged[s.name]) for s in SETTINGS}

    upstreams, where = values["upstream"], merged["upstream"][1]
    sites, sitesWhere = merged.get(_SITES, (None, None))
    if sites is not None and upstreams:
        raise usage.UsageError(
            f"{where}: --upstream and {sitesWhere}'s groups and routes cannot be combined "
            f"(name a group as default-route instead)")
    if len(upstreams) > 1:
        from ..sites.parse import SitesError, implicitGroup
        from ..sites.model import Route, Sites

        try:
            group = implicitGroup(upstreams, where)
        except SitesError as e:
            raise usage.UsageError(str(e))
        sites = Sites(groups={group.name: group},
                      routes=(Route(hosts=(), path=b"/", group=group.name, name="default-route"),))
    upstream = upstreams[0] if upstreams else None
    if sites is not None and not upstreams and sites.groups:
        # Reverse mode; each route's group says where requests go.
        first = next(iter(sites.groups.values())).servers[0].origin
        upstream = f"{first.scheme.decode()}://{first.authority().decode()}"
    authFile, where = values["auth-file"], merged["auth-file"][1]
    if authFile is not None:
        if upstream:
            raise usage.UsageError(
                f"{where}: proxy authentication is for forward mode; a reverse "
                f"proxy's clients do not send Proxy-Authorization"
            )
        # Read once the mode is known to want it.
        _checkPasswordFile(authFile, where)

    fields = {f.name for f in dataclasses.fields(Config)}
    known = {s.configField: values[s.name] for s in SETTINGS if s.configField in fields}
    known.update(
        _upstreamParts(upstream, sites is not None),  # type: ignore[arg-type]
        upstream=upstream or None,
        sites=sites,
        requestRules=_headerRulesOf(values, "request"),
        responseRules=_headerRulesOf(values, "response"),
        compression=_compression(values["compress"], values["compress-types"],
                                 values["compress-min-size"], bool(upstream)),
        accessLog=None if values["no-access-log"] else (values["access-log"] or None),
        configFile=configPath,
    )
    return Config(**known)


def fromSetting(name: str, convert: Optional[Callable[[object], object]] = None):
    """
    A field of a settings dataclass (L{ProxySettings},
    L{UpstreamSettings}, L{CacheSettings}) whose value comes from the
    setting C{name}: its default is that setting's default, and
    L{settingsFor} fills it from a L{Config}.

    @param convert: turns the value L{Config} holds into the field's (a
        tuple of names into a set of bytes, say).
    """
    setting = _BY_NAME[name]
    value = setting.read(setting.default, f"--{name}")
    if convert is not None:
        value = convert(value)
    return dataclasses.field(default=value, metadata={"setting": name, "convert": convert})


def settingValues(cls, config: Config) -> Dict[str, object]:
    """
    @return: the values of C{config} for the fields of the settings
        dataclass C{cls} declared with L{fromSetting}, by field name.
    """
    values = {}
    for field in dataclasses.fields(cls):
        name = field.metadata.get("setting")
        if name is not None:
            value = getattr(config, _BY_NAME[name].configField)
            convert = field.metadata["convert"]
            values[field.name] = value if convert is None else convert(value)
    return values


def settingsFor(cls, config: Config, **computed: object):
    """
    @return: the settings dataclass C{cls} for C{config}: every field
        declared with L{fromSetting} takes its setting's value
        (L{settingValues}), and C{computed} gives the others (those worked
        out from several settings or from the running process) or
        overrides one.
    """
    return cls(**dict(settingValues(cls, config), **computed))


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


class StartupError(Exception):
    """
    The proxy cannot start, for a reason its message gives in one line
    (C{cannot listen on tcp:3128: address already in use}).

    Raised from C{privilegedStartService}, it makes twistd remove its pid
    file (and tell a daemon's parent) before the process ends with status
    1; L{reportStartupErrors} makes that end print the message alone
    instead of a traceback.
    """


def cannotListen(description: str, error: BaseException) -> StartupError:
    """
    @param error: what listening on C{description} raised (an L{OSError},
        Twisted's C{CannotListenError} around one, or another exception).
    @return: the L{StartupError} saying so in one line.
    """
    reason = getattr(error, "socketError", None) or error
    if isinstance(reason, OSError) and reason.strerror:
        text = reason.strerror
    else:
        text = str(reason) or type(reason).__name__
    text = _oneLine(text).rstrip(".")
    return StartupError(f"cannot listen on {description}: {text[:1].lower()}{text[1:]}")


def reportStartupErrors() -> None:
    """
    Make a L{StartupError} that ends the process print
    C{cachingproxy: <message>} on standard error rather than a traceback
    (any other exception still gets its traceback).
    """
    previous = sys.excepthook
    if getattr(previous, "reportsStartupErrors", False):
        return

    def hook(kind, value, traceback):
        if isinstance(value, StartupError):
            # twistd sends sys.stderr to its log; the operator reads the
            # process's own standard error (a daemon's parent prints the
            # message it was sent).
            stream = sys.__stderr__ or sys.stderr
            print(f"cachingproxy: {value}", file=stream)
            stream.flush()
        else:
            previous(kind, value, traceback)

    hook.reportsStartupErrors = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _formatDefault(setting: Setting) -> str:
    text = setting.defaultText
    if not text or setting.kind == "flag":
        return text
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
