# -*- test-case-name: tests.test_reload -*-
"""
SIGHUP in a single-process proxy: read the configuration again and apply
what can change without a restart.

The new L{Config} is built the way start-up built the first one (the same
command line, the environment, the configuration file), so a setting keeps
the source that wins for it. What can change while serving is rebuilt and
swapped on the L{ProxyFactory}, its upstream pool and its cache: the
proxy settings (timeouts, limits, header rules, forwarding headers,
compression), the access policy (client ranges, destinations, admin
ranges, the password file, read again), the upstream timeouts, the cache
limits and options, the access log (reopened, or opened anew when its
path or format changed), the shutdown grace, and the certificates and
keys of the TLS listeners (read again from their files, so a renewed
certificate is served to new connections without a restart; connections
already open keep the one they began with). New objects replace the
old ones rather than being changed in place, so a request that already
holds the old ones goes on with them.

What needs a restart (the listening ports, the worker count, the cache
folder and memory tier, the upstream origin, the CA file) is left as it
was, with one log line per such setting that changed. A configuration
that does not validate is logged on one line and the running one is kept.

With C{--workers} above 1 the parent replaces its workers instead
(L{cachingproxy.service.supervisor.WorkerSupervisor.reload}), and each new worker
builds everything from the new configuration.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Sequence

from twisted.logger import Logger
from twisted.python import usage

from .config import SETTINGS, Config

__all__ = ["RESTART_FIELDS", "changedFields", "settingNames", "ConfigReloader"]

#: L{Config} fields that only a restart applies.
RESTART_FIELDS = frozenset([
    "port", "workers", "cacheDir", "cacheMemory", "cache", "upstream",
    "upstreamScheme", "upstreamHost", "upstreamPort", "upstreamPath", "caFile",
    "configFile",
    # the fleet tier and the tag index are built with the cache
    "redis", "redisPasswordFile", "redisCluster", "fleetMaxObjectSize", "fleetDeadline",
    "fleetLockLease", "fleetWait", "tagField", "keepTagField",
])

#: The L{Config} fields of C{--upstream}.
_UPSTREAM_FIELDS = frozenset([
    "upstream", "upstreamScheme", "upstreamHost", "upstreamPort", "upstreamPath"])

#: L{Config} fields that several settings, or a setting of another name,
#: feed.
_FIELD_SETTINGS: Dict[str, Sequence[str]] = {
    "upstreamScheme": ("upstream",),
    "upstreamHost": ("upstream",),
    "upstreamPort": ("upstream",),
    "upstreamPath": ("upstream",),
    "cache": ("no-cache",),
    "xCache": ("no-x-cache",),
    "collapse": ("no-collapse",),
    "rewriteRedirects": ("no-rewrite-redirects",),
    "configFile": ("config",),
    "compression": ("compression",),
    "requestRules": ("request header rules",),
    "responseRules": ("response header rules",),
    "sites": ("groups and routes",),
}


def changedFields(old: Config, new: Config) -> List[str]:
    """
    @return: the names of the L{Config} fields whose values differ, in
        declaration order.
    """
    return [
        field.name
        for field in dataclasses.fields(Config)
        if getattr(old, field.name) != getattr(new, field.name)
    ]


def settingNames(fields: Sequence[str]) -> List[str]:
    """
    @return: the option names (without C{--}) behind C{fields}, each once.
    """
    byAttribute = {s.attribute: s.name for s in SETTINGS}
    names: List[str] = []
    for field in fields:
        for name in _FIELD_SETTINGS.get(field, (byAttribute.get(field, field),)):
            if name not in names:
                names.append(name)
    return names


class ConfigReloader:
    """
    Applies a configuration read again to a running single-process proxy.

    @ivar config: the configuration in force.
    @ivar factory: the L{cachingproxy.proxy.factory.ProxyFactory} every listening
        port shares.
    @ivar services: the L{cachingproxy.service.tap.ProxyService}s (their shutdown
        grace follows the configuration).
    """

    _log = Logger()

    def __init__(self, reactor, readConfig: Callable[[], Config], config: Config,
                 factory, services: Sequence = ()) -> None:
        """
        @param readConfig: builds the configuration again, as start-up did;
            raises L{usage.UsageError} for an invalid one.
        """
        self._reactor = reactor
        self._readConfig = readConfig
        self.config = config
        self.factory = factory
        self.services = list(services)

    def reload(self) -> bool:
        """
        Read the configuration again and apply it (what SIGHUP does).

        @return: whether a new configuration was applied.
        """
        try:
            new = self._readConfig()
        except Exception as e:
            return self._notReloaded(e)
        old = self.config
        changed = changedFields(old, new)
        if old.sites is not None and new.sites is not None:
            # Reverse mode's upstream stands for the groups, which change
            # while running.
            changed = [f for f in changed if f not in _UPSTREAM_FIELDS]
        if (old.sites is None) != (new.sites is None):
            restart = [f for f in changed if f in RESTART_FIELDS or f == "sites"]
        else:
            restart = [f for f in changed if f in RESTART_FIELDS]
        live = [f for f in changed if f not in restart]
        try:
            self._apply(new)
        except Exception as e:
            return self._notReloaded(e)
        # What was not applied stays as it runs, so that a later reload
        # still sees it as different and says so again.
        self.config = dataclasses.replace(new, **{f: getattr(old, f) for f in restart})
        for name in settingNames(restart):
            self._log.warn("SIGHUP: --{name} changed; it takes effect only after a restart",
                           name=name)
        self._log.info("SIGHUP: configuration reloaded ({what})",
                       what="changed: " + ", ".join(settingNames(live)) if live
                       else "no change that applies while running")
        return True

    def _notReloaded(self, error: Exception) -> bool:
        """
        Log why the configuration was not reloaded (called while handling
        C{error}): one line for a bad setting, the traceback otherwise.

        @return: C{False}, as L{reload} returns then.
        """
        if isinstance(error, usage.UsageError):
            self._log.error("SIGHUP: configuration not reloaded, keeping the running one: "
                            "{reason}", reason=" ".join(str(error).split()))
        else:
            self._log.failure("SIGHUP: configuration not reloaded, keeping the running one")
        return False

    def _apply(self, new: Config) -> None:
        """
        Build what C{new} asks for, then swap it in (nothing is swapped if
        building fails).
        """
        from ..access import AccessPolicy
        from .config import settingValues
        from .tap import AccessLogFile, proxySettings

        factory = self.factory
        old = self.config
        settings = proxySettings(new, factory.settings.upstream)
        access = AccessPolicy.fromConfig(dataclasses.replace(
            new, upstream=old.upstream, upstreamScheme=old.upstreamScheme,
            upstreamHost=old.upstreamHost, upstreamPort=old.upstreamPort), self._reactor)
        pool = factory.pool
        poolSettings = dataclasses.replace(pool.settings,
                                           **settingValues(type(pool.settings), new))
        cache = factory.cache
        cacheSettings = None
        if cache is not None:
            cacheSettings = dataclasses.replace(
                cache.settings,
                options=dataclasses.replace(
                    cache.settings.options,
                    defaultStaleWhileRevalidate=new.staleWhileRevalidate,
                    defaultStaleIfError=new.staleIfError,
                ),
                **settingValues(type(cache.settings), new),
            )
        accessLog = factory.accessLog
        newLog = None
        logChanged = (new.accessLog, new.accessLogFormat) != (old.accessLog, old.accessLogFormat)
        if logChanged and new.accessLog and not hasattr(accessLog, "switch"):
            newLog = AccessLogFile(new.accessLog, new.accessLogFormat, self._reactor)
        elif logChanged and new.accessLog:
            # Opens the new file, or fails before anything is swapped.
            accessLog.switch(new.accessLog, new.accessLogFormat)

        # Certificates whose files cannot be used (a renewal half copied,
        # a key of another certificate) leave every listener as it was.
        from .tlsport import CertificateError, loadTLS

        certificates = []
        for service in self.services:
            server = getattr(service, "tls", None)
            if server is not None:
                try:
                    certificates.append((server, loadTLS(server.description)))
                except CertificateError as e:
                    raise usage.UsageError(f"--port {server.description}: {e}")

        # Everything is built: swap.
        if factory.sites is not None and new.sites is not None:
            factory.sites.reload(new.sites)
        factory.settings = settings
        factory.access = access
        factory.http2 = new.http2
        pool.settings = poolSettings
        if cache is not None:
            cache.settings = cacheSettings
            self._storeLimits(cache.store, new)
        for service in self.services:
            service.grace = float(new.shutdownGrace)
        for server, creator in certificates:
            server.current = creator
        if not logChanged:
            if hasattr(accessLog, "reopen"):
                accessLog.reopen()
        elif newLog is not None:
            from ..ops.accesslog import reopenOnSignal

            factory.accessLog = newLog
            reopenOnSignal(self._reactor, [newLog])
        elif not new.accessLog:
            factory.accessLog = None
            if hasattr(accessLog, "close"):
                accessLog.close()

    @staticmethod
    def _storeLimits(store, new: Config) -> None:
        """
        The disk store's size limits (the memory tier's size is fixed at
        start).
        """
        from ..cache.disk import DiskStore

        disk = getattr(store, "disk", store)
        if isinstance(disk, DiskStore):
            disk.maxSize = new.cacheSize
            disk.maxObjectSize = min(new.maxObjectSize, new.cacheSize)
