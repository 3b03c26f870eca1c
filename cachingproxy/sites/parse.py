# -*- test-case-name: tests.test_sites_parse -*-
"""
Reading routes and origin groups from a TOML document::

    [groups.web]
    servers = ["http://10.0.0.1:8080", {url = "http://10.0.0.2:8080", weight = 2}]
    balance = "round-robin"          # or "least-outstanding", "consistent-hash"
    health = {path = "/healthz", interval = "5s", timeout = "2s",
              expect = [200, "3xx"], fall = 3, rise = 2, host = "www.example"}
    passive = {failures = 5, window = "10s", cooldown = "30s"}

    [[routes]]
    hosts = ["api.example", "*.api.example"]
    path = "/v1/"
    group = "web"
    cache = false
    rate = {per-second = 10, burst = 20, count-hits = false}

    default-route = "web"            # or a table: a route without hosts and path

L{parseSites} checks everything and raises one L{SitesError} per problem,
on one line that names the file and line (when the text is given), the key
and what was expected. L{implicitGroup} turns several C{--upstream} URLs
into one round-robin group with default active checks.

Per-route settings reuse the parsers of the proxy's own settings:
L{cachingproxy.service.config.parseRefreshRule} (and its table form),
L{cachingproxy.rules.HeaderRules} and L{cachingproxy.access.parseNetworks}.
"""

from __future__ import annotations

import difflib
import math
import re
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from twisted.python import usage

from ..service import config as _config
from ..access import parseNetworks
from ..rules import HeaderRules
from ..proxy.upstream import Origin
from .routes import normalizePath
from .model import (
    BALANCE_METHODS,
    Group,
    HealthCheck,
    PassiveCheck,
    RateLimit,
    Route,
    Server,
    Sites,
)

__all__ = [
    "IMPLICIT_GROUP",
    "SitesError",
    "implicitGroup",
    "parseServerURL",
    "parseSites",
    "readSites",
]

#: The name of the group L{implicitGroup} makes.
IMPLICIT_GROUP = "upstream"

#: The largest weight of a server (a consistent-hash ring has
#: L{cachingproxy.sites.balance.VIRTUAL_NODES} points per unit of weight).
MAX_WEIGHT = 100

_GROUP_KEYS = ("servers", "balance", "health", "passive")
_SERVER_KEYS = ("url", "weight")
_HEALTH_KEYS = ("path", "interval", "timeout", "expect", "fall", "rise", "host")
_PASSIVE_KEYS = ("failures", "window", "cooldown")
_RATE_KEYS = ("per-second", "burst", "count-hits")
_HEADER_KEYS = tuple(
    f"{verb}-{direction}-header"
    for direction in ("request", "response")
    for verb in ("add", "set", "remove")
)
_ROUTE_KEYS = (
    "name", "hosts", "path", "group", "cache", "min-uses", "max-object-size",
    "refresh-rule", *_HEADER_KEYS, "compress", "preserve-host", "access", "rate",
)
_TOP_KEYS = ("groups", "routes", "default-route")


class SitesError(usage.UsageError):
    """
    A value in C{[groups.*]}, C{[[routes]]} or C{default-route} is wrong.
    The message is one line: C{FILE:LINE: key: what is wrong}.
    """


# Locating keys in the text (tomllib gives no line numbers).

_HEADER = re.compile(r"^[ \t]*(\[\[?)([^\]\n]*)\]\]?[ \t]*(?:#.*)?$", re.MULTILINE)
_KEYPART = re.compile(r"\"([^\"]*)\"|'([^']*)'|([^.\s\"']+)")


def _dotted(text: str) -> Tuple[str, ...]:
    return tuple(a or b or c for a, b, c in _KEYPART.findall(text))


class _Locator:
    """
    Says where a key of a group or a route is set in a TOML text.
    """

    def __init__(self, text: Optional[str], source: str) -> None:
        self.text = text
        self.source = source
        # (line, first character, end of section, dotted name, is array)
        self.headers: List[Tuple[int, int, int, Tuple[str, ...], bool]] = []
        if text is None:
            return
        matches = list(_HEADER.finditer(text))
        for i, m in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
            line = text.count("\n", 0, m.start()) + 1
            self.headers.append((line, m.end(), end, _dotted(m.group(2)), m.group(1) == "[["))

    def _keyIn(self, start: int, end: int, key: str) -> Optional[int]:
        assert self.text is not None
        name = "(?:%s|\"%s\"|'%s')" % ((re.escape(key),) * 3)
        found = re.compile(r"^[ \t]*%s[ \t]*[=.]" % name, re.MULTILINE).search(self.text, start, end)
        if found:
            return self.text.count("\n", 0, found.start()) + 1
        return None

    def _locate(self, index: Optional[int], keys: Sequence[str], stop: Optional[int] = None) -> Optional[int]:
        """
        @param index: the position in C{self.headers} of the section the
            keys are in, or C{None} when it has no header.
        @param keys: a path of keys from that section down: each is looked
            for as a sub-table header C{[section.key]} (before the header
            at position C{stop}), then as a C{key = ...} line.
        @return: the line of the deepest key found, or of the section.
        """
        if index is None:
            return None
        line, start, end, path, _ = self.headers[index]
        limit = len(self.headers) if stop is None else stop
        for key in keys:
            sub = next(
                (j for j in range(index + 1, limit) if self.headers[j][3] == path + (key,)),
                None,
            )
            if sub is not None:
                index = sub
                line, start, end, path, _ = self.headers[sub]
                continue
            found = self._keyIn(start, end, key)
            if found:
                line = found
            break
        return line

    def group(self, name: str, *keys: str) -> str:
        index = next(
            (i for i, h in enumerate(self.headers) if h[3] == ("groups", name) and not h[4]),
            None,
        )
        line = self._locate(index, keys)
        if index is None and self.text is not None:
            # groups.NAME = {...}, or NAME = {...} under [groups].
            line = _config._lineOf(self.text, name, False)
        return self._at(line, ".".join(("groups", name) + keys))

    def route(self, index: int, *keys: str) -> str:
        routes = [i for i, h in enumerate(self.headers) if h[3] == ("routes",) and h[4]]
        line = None
        if index < len(routes):
            stop = routes[index + 1] if index + 1 < len(routes) else None
            line = self._locate(routes[index], keys, stop)
        elif self.text is not None:
            line = _config._lineOf(self.text, "routes", False)
        return self._at(line, f"routes[{index}]" + "".join(f".{k}" for k in keys))

    def top(self, key: str, *keys: str) -> str:
        line = None
        if self.text is not None:
            line = _config._lineOf(self.text, key, True)
            index = next((i for i, h in enumerate(self.headers) if h[3] == (key,)), None)
            if index is not None:
                line = self._locate(index, keys)
        return self._at(line, ".".join((key,) + keys))

    def _at(self, line: Optional[int], key: str) -> str:
        return f"{self.source}:{line}: {key}" if line else f"{self.source}: {key}"


# Values.

def _fail(where: str, message: str) -> SitesError:
    return SitesError(f"{where}: {_config._oneLine(message)}")


def _expect(where: str, expected: str, value: object) -> SitesError:
    return _fail(where, f"expected {expected}, got {_config._describe(value)}")


def _checkKeys(table: Mapping[str, object], known: Sequence[str], where) -> None:
    """
    @param where: a callable from a key to its location.
    """
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key.replace("_", "-"), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (expected {', '.join(known)})"
            at = where(key)
            if at.endswith(f".{key}"):
                at = at[: -len(key) - 1]  # the key's line, the table's name
            raise _fail(at, f"unknown key {key!r}{hint}")


def _table(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise _expect(where, "a table", value)
    return value


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise _expect(where, "true or false", value)
    return value


def _integer(value: object, where: str, minimum: int, maximum: Optional[int] = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _expect(where, "an integer", value)
    if value < minimum:
        raise _fail(where, f"must be {minimum} or more, got {value}")
    if maximum is not None and value > maximum:
        raise _fail(where, f"must be {maximum} or less, got {value}")
    return value


def _seconds(value: object, where: str, positive: bool = True) -> float:
    if not (isinstance(value, str) or _config._isNumber(value)):
        raise _expect(where, 'a duration such as 5, "5s" or "1m"', value)
    try:
        seconds = _config.parseDuration(value)
    except ValueError as e:
        raise _fail(where, str(e))
    if positive and seconds <= 0:
        raise _fail(where, f"must be greater than 0, got {value!r}")
    return seconds


def _strings(value: object, where: str, what: str) -> List[str]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in items):
        raise _expect(where, f"{what}, or an array of them", value)
    return list(items)


def parseServerURL(raw: object, where: str, weight: int = 1) -> Server:
    """
    Parse an origin URL: C{http://host[:port][/prefix]} or C{https://...}.

    @raise SitesError: naming C{where}.
    """
    if not isinstance(raw, str):
        raise _expect(where, 'an origin URL such as "http://10.0.0.1:8080"', raw)
    parts = urlsplit(raw.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise _fail(where, f"expected http://host[:port][/prefix] or https://..., got {raw!r}")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise _fail(where, f"invalid port in {raw!r}")
    if parts.query or parts.fragment or parts.username:
        raise _fail(where, f"an origin URL takes no query, fragment or user, got {raw!r}")
    scheme = parts.scheme.lower()
    host = parts.hostname
    path = parts.path.rstrip("/")
    try:
        pathBytes = path.encode("ascii")
    except UnicodeEncodeError:
        raise _fail(where, f"the path of {raw!r} is not ASCII (percent-encode it)")
    shown = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown}:{port}{path}"
    return Server(url, Origin(scheme.encode("ascii"), host, port), pathBytes, weight)


def _server(item: object, where: str) -> Server:
    if isinstance(item, dict):
        _checkKeys(item, _SERVER_KEYS, lambda k: f"{where}.{k}")
        if "url" not in item:
            raise _fail(where, "url is missing")
        weight = _integer(item.get("weight", 1), f"{where}.weight", 1, MAX_WEIGHT)
        return parseServerURL(item["url"], f"{where}.url", weight)
    if isinstance(item, str):
        return parseServerURL(item, where)
    raise _expect(where, 'an origin URL or a table {url = "...", weight = N}', item)


_STATUS_CLASS = re.compile(r"^([1-5])xx$", re.IGNORECASE)
_STATUS_RANGE = re.compile(r"^(\d{3})\s*-\s*(\d{3})$")


def _statuses(value: object, where: str) -> frozenset:
    items = value if isinstance(value, list) else [value]
    statuses = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            statuses.add(item)
            continue
        text = item.strip() if isinstance(item, str) else ""
        single = _STATUS_CLASS.match(text)
        span = _STATUS_RANGE.match(text)
        if single:
            first = int(single.group(1)) * 100
            statuses.update(range(first, first + 100))
        elif span and 100 <= int(span.group(1)) <= int(span.group(2)) <= 599:
            statuses.update(range(int(span.group(1)), int(span.group(2)) + 1))
        elif text.isdigit() and 100 <= int(text) <= 599:
            statuses.add(int(text))
        else:
            raise _expect(where, 'statuses such as 200, "2xx" or "200-399", or an array of them', item)
    if not statuses:
        raise _fail(where, "expected at least one status")
    return frozenset(statuses)


def _health(value: object, where) -> Optional[HealthCheck]:
    """
    @param where: a callable from a key (or C{None}) to its location.
    """
    if isinstance(value, bool):
        return HealthCheck() if value else None
    if not isinstance(value, dict):
        raise _expect(where(None), "true, false or a table", value)
    _checkKeys(value, _HEALTH_KEYS, where)
    default = HealthCheck()
    path = value.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/") or any(c.isspace() for c in path):
        raise _expect(where("path"), 'a path such as "/healthz"', path)
    try:
        pathBytes = path.encode("ascii")
    except UnicodeEncodeError:
        raise _fail(where("path"), f"not ASCII (percent-encode it): {path!r}")
    interval = _seconds(value.get("interval", default.interval), where("interval"))
    timeout = _seconds(value.get("timeout", min(default.timeout, interval)), where("timeout"))
    if timeout > interval:
        raise _fail(where("timeout"), f"must not be longer than the interval ({interval:g}s), got {timeout:g}s")
    return HealthCheck(
        path=pathBytes,
        interval=interval,
        timeout=timeout,
        expect=_statuses(value["expect"], where("expect")) if "expect" in value else default.expect,
        fall=_integer(value.get("fall", default.fall), where("fall"), 1),
        rise=_integer(value.get("rise", default.rise), where("rise"), 1),
        host=_checkHost(value["host"], where("host")) if "host" in value else None,
    )


_HOST_FIELD = re.compile(r"^(?:\[[0-9a-f:.]+\]|[a-z0-9_-]+(?:\.[a-z0-9_-]+)*)(?::[0-9]{1,5})?$")


def _checkHost(value: object, where: str) -> bytes:
    """
    @return: a Host field value for active checks.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if not text.isascii():
            try:
                text = text.encode("idna").decode("ascii")
            except UnicodeError:
                text = ""
        if _HOST_FIELD.match(text):
            return text.encode("ascii")
    raise _expect(where, 'a Host value such as "api.example" or "api.example:8080"', value)


def _passive(value: object, where) -> Optional[PassiveCheck]:
    if isinstance(value, bool):
        return PassiveCheck() if value else None
    if not isinstance(value, dict):
        raise _expect(where(None), "true, false or a table", value)
    _checkKeys(value, _PASSIVE_KEYS, where)
    default = PassiveCheck()
    return PassiveCheck(
        failures=_integer(value.get("failures", default.failures), where("failures"), 1),
        window=_seconds(value.get("window", default.window), where("window")),
        cooldown=_seconds(value.get("cooldown", default.cooldown), where("cooldown")),
    )


def _sub(where, key: str):
    """
    @return: a callable from a key of the sub-table C{key} (or C{None}) to
        its location.
    """
    return lambda k=None: where(key, k) if k else where(key)


def _group(name: str, value: object, at: _Locator) -> Group:
    where = lambda *keys: at.group(name, *(k for k in keys if k))  # noqa: E731
    table = _table(value, where())
    _checkKeys(table, _GROUP_KEYS, where)
    if "servers" not in table:
        raise _fail(where(), "servers is missing")
    raw = table["servers"]
    if not isinstance(raw, list) or not raw:
        raise _expect(where("servers"), "a non-empty array of origin URLs", raw)
    servers: List[Server] = []
    for i, item in enumerate(raw):
        server = _server(item, f"{where('servers')}[{i}]")
        if any(s.url == server.url for s in servers):
            raise _fail(f"{where('servers')}[{i}]", f"{server.url} is listed twice")
        servers.append(server)
    balance = table.get("balance", "round-robin")
    if balance not in BALANCE_METHODS:
        raise _fail(where("balance"), f"expected one of {', '.join(BALANCE_METHODS)}, got {balance!r}")
    return Group(
        name=name,
        servers=tuple(servers),
        balance=str(balance),
        health=_health(table["health"], _sub(where, "health")) if "health" in table else None,
        passive=_passive(table["passive"], _sub(where, "passive")) if "passive" in table else PassiveCheck(),
    )


_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def _host(raw: str, where: str) -> Optional[str]:
    """
    @return: the host pattern, lowercase; C{None} for C{*} (every host).
    """
    host = raw.strip().lower().rstrip(".")
    if host == "*":
        return None
    if host.startswith("[") and host.endswith("]"):
        try:
            import ipaddress

            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _fail(where, f"{raw!r} is not an IPv6 address")
        return host
    if ":" in host:
        raise _fail(where, f"{raw!r}: a host takes no port (the port of Host is not compared)")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise _fail(where, f"{raw!r} is not a valid international host name")
    labels = host[2:].split(".") if host.startswith("*.") else host.split(".")
    if not labels or not all(_LABEL.match(label) for label in labels):
        raise _fail(where, f"expected a host name such as api.example or *.example, got {raw!r}")
    return host


def _route(table: Mapping[str, object], where, groups: Mapping[str, Group],
           name: str, default: bool = False) -> Route:
    """
    @param where: a callable from a key (or C{None}) to its location.
    """
    _checkKeys(table, tuple(k for k in _ROUTE_KEYS if not default or k not in ("hosts", "path")), where)
    if "group" not in table:
        raise _fail(where(None), "group is missing")
    group = table["group"]
    if not isinstance(group, str):
        raise _expect(where("group"), "a group name", group)
    if group not in groups:
        known = ", ".join(sorted(groups)) or "none are defined"
        raise _fail(where("group"), f"no group named {group!r} (groups: {known})")

    hosts: List[str] = []
    if "hosts" in table:
        for raw in _strings(table["hosts"], where("hosts"), "a host name"):
            host = _host(raw, where("hosts"))
            if host is None:
                hosts = []
                break
            hosts.append(host)
        else:
            if not hosts:
                raise _fail(where("hosts"), 'expected at least one host, or "*"')
    path = table.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/") or any(c.isspace() for c in path):
        raise _expect(where("path"), 'a path prefix such as "/api/"', path)
    try:
        pathBytes = normalizePath(path.encode("ascii"))
    except UnicodeEncodeError:
        raise _fail(where("path"), f"not ASCII (percent-encode it): {path!r}")

    if "name" in table and not isinstance(table["name"], str):
        raise _expect(where("name"), "a string", table["name"])
    fields: Dict[str, object] = {}
    if "cache" in table:
        fields["cache"] = _bool(table["cache"], where("cache"))
    if "min-uses" in table:
        fields["minUses"] = _integer(table["min-uses"], where("min-uses"), 1)
    if "max-object-size" in table:
        raw = table["max-object-size"]
        if not (isinstance(raw, str) or _config._isNumber(raw)):
            raise _expect(where("max-object-size"), 'a size such as "16M" or a number of bytes', raw)
        try:
            fields["maxObjectSize"] = _config.parseSize(raw, where("max-object-size"))
        except usage.UsageError as e:
            raise SitesError(str(e))
    if "refresh-rule" in table:
        raw = table["refresh-rule"]
        items = raw if isinstance(raw, list) else [raw]
        if not all(isinstance(item, (str, dict)) for item in items):
            raise _expect(where("refresh-rule"), "a rule string, a table, or an array of them", raw)
        try:
            fields["refreshRules"] = _config._refreshRules(items, where("refresh-rule"))
        except usage.UsageError as e:
            raise SitesError(str(e))
    for direction, attribute in (("request", "requestHeaders"), ("response", "responseHeaders")):
        keys = [f"{verb}-{direction}-header" for verb in ("add", "set", "remove")]
        if not any(k in table for k in keys):
            continue
        parts = {}
        for verb, key in zip(("add", "set", "remove"), keys):
            what = "a field name" if verb == "remove" else "a 'Name: value' string"
            items = _strings(table.get(key, []), where(key), what)
            try:
                parts[verb] = HeaderRules.parse(**{verb: items})
            except ValueError as e:
                raise _fail(where(key), str(e))
        fields[attribute] = HeaderRules(add=parts["add"].add, set=parts["set"].set,
                                        remove=parts["remove"].remove)
    if "compress" in table:
        fields["compress"] = _bool(table["compress"], where("compress"))
    if "preserve-host" in table:
        fields["preserveHost"] = _bool(table["preserve-host"], where("preserve-host"))
    if "access" in table:
        items = _strings(table["access"], where("access"), 'an address range such as "10.0.0.0/8"')
        try:
            fields["access"] = parseNetworks(items)
        except ValueError as e:
            raise _fail(where("access"), str(e))
    if "rate" in table:
        fields["rate"] = _rate(table["rate"], _sub(where, "rate"))
    return Route(
        hosts=tuple(hosts),
        path=pathBytes,
        group=group,
        name=str(table.get("name", name)),
        **fields,  # type: ignore[arg-type]
    )


def _rate(value: object, where) -> RateLimit:
    table = _table(value, where(None))
    _checkKeys(table, _RATE_KEYS, where)
    if "per-second" not in table:
        raise _fail(where(None), "per-second is missing")
    perSecond = table["per-second"]
    if not _config._isNumber(perSecond):
        raise _expect(where("per-second"), "a number", perSecond)
    if not perSecond > 0 or math.isinf(perSecond):
        raise _fail(where("per-second"), f"must be greater than 0, got {perSecond!r}")
    burst = _integer(table.get("burst", max(1, math.ceil(perSecond))), where("burst"), 1)
    return RateLimit(float(perSecond), burst, _bool(table.get("count-hits", True), where("count-hits")))


def _reachable(routes: List[Route], where) -> None:
    """
    Check the last of C{routes} against those before it: its name must be
    new (rate limits are kept by route name), and no route before it may
    match every request (it would never be used).
    """
    route = routes[-1]
    for before in routes[:-1]:
        if before.name == route.name:
            raise _fail(where("name"), f"{route.name!r} names an earlier route too")
        if before.matchesEverything:
            raise _fail(where(), f"never used: {before.name} before it matches every request")


def parseSites(document: Mapping[str, object], text: Optional[str] = None,
               source: str = "--config") -> Sites:
    """
    Parse the C{groups}, C{routes} and C{default-route} keys of a TOML
    document; other keys are left alone.

    @param text: the document's text, to name lines in errors.
    @param source: the file name, to start error messages with.
    @raise SitesError: for the first problem found.
    """
    at = _Locator(text, source)
    rawGroups = document.get("groups", {})
    if not isinstance(rawGroups, dict):
        raise _expect(at.top("groups"), "tables [groups.NAME]", rawGroups)
    groups = {name: _group(name, value, at) for name, value in rawGroups.items()}

    rawRoutes = document.get("routes", [])
    if not isinstance(rawRoutes, list) or not all(isinstance(r, dict) for r in rawRoutes):
        raise _expect(at.top("routes"), "an array of tables [[routes]]", rawRoutes)
    routes: List[Route] = []
    for index, table in enumerate(rawRoutes):
        where = (lambda i: lambda *keys: at.route(i, *(k for k in keys if k)))(index)
        routes.append(_route(table, where, groups, f"routes[{index}]"))
        _reachable(routes, where)

    if "default-route" in document:
        raw = document["default-route"]
        where = lambda *keys: at.top("default-route", *(k for k in keys if k))  # noqa: E731
        if isinstance(raw, str):
            raw = {"group": raw}
        elif not isinstance(raw, dict):
            raise _expect(where(), "a group name or a table", raw)
        routes.append(_route(raw, where, groups, "default-route", default=True))
        _reachable(routes, where)
    if routes and not groups:
        raise _fail(at.top("routes"), "routes need [groups.NAME] tables")
    return Sites(groups=MappingProxyType(groups), routes=tuple(routes))


def readSites(path: str) -> Sites:
    """
    Read L{Sites} from a TOML file.

    @raise SitesError: when the file cannot be read or parsed, or a value
        is wrong.
    """
    import tomllib

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SitesError(f"{path}: cannot read: {e.strerror or e}")
    try:
        text = data.decode("utf-8")
        document = tomllib.loads(text)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise SitesError(f"{path}:{line}: not UTF-8 text")
    except tomllib.TOMLDecodeError as e:
        raise SitesError(f"{path}: invalid TOML: {_config._oneLine(e)}")
    return parseSites(document, text, path)


def implicitGroup(urls: Sequence[str], where: str = "--upstream",
                  name: str = IMPLICIT_GROUP) -> Group:
    """
    Several C{--upstream} URLs as one round-robin group with the default
    active checks (L{HealthCheck}) and passive checks.

    @raise SitesError: naming C{where} and the URL that is wrong.
    """
    if not urls:
        raise _fail(where, "expected at least one origin URL")
    servers: List[Server] = []
    for raw in urls:
        server = parseServerURL(raw, where)
        if any(s.url == server.url for s in servers):
            raise _fail(where, f"{server.url} is given twice")
        servers.append(server)
    return Group(name=name, servers=tuple(servers), balance="round-robin",
                 health=HealthCheck(), passive=PassiveCheck())
