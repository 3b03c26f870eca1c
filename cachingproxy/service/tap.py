# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin's options and service: C{twistd -n cachingproxy --help}.

L{makeService} wires the rooms together: the upstream pool, the proxy
factory and one listening service per C{--port}, in a L{MultiService}
(the shape of Twisted's own C{twisted.web.tap}).
"""

from __future__ import annotations

import difflib
import os
import re
import signal
import socket
from typing import List, Optional

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from .. import __version__
from . import systemd
from .._twistedinternals import streamline
from .addresses import describeAddress
from ..ops.accesslog import AccessLog, reopenOnSignal
from .config import (
    SETTINGS,
    Config,
    Setting,
    cannotListen,
    exitOnConfigError,
    fromOptions,
    reportStartupErrors,
)
from ..proxy.factory import ProxyFactory
from ..proxy.settings import ProxySettings
from ..proxy.upstream import Origin, UpstreamPool, UpstreamSettings

__all__ = ["Options", "makeService", "ProxyService", "buildFactory"]


def optionHelp(setting: Setting) -> str:
    """
    @return: what C{--help} says of C{setting}: its help, its default and
        the environment variables that set it.
    """
    text = setting.help
    if setting.defaultText:
        text += f" [default: {setting.defaultText}]"
    return text + " [env {}]".format(", ".join((setting.envName,) + setting.aliases))


def _appender(setting: Setting):
    """
    @return: the C{opt_} method of a repeatable setting: each use adds one
        value.
    """

    def opt(self: usage.Options, value: str) -> None:
        self[setting.name].append(value)

    opt.__doc__ = optionHelp(setting)
    opt.__name__ = "opt_" + setting.name.replace("-", "_")
    return opt


class Options(usage.Options):
    """
    The command line of C{twistd cachingproxy}, derived from
    L{cachingproxy.service.config.SETTINGS}: a C{flag} setting is an option without
    a value, a C{list} setting an option that may be repeated, any other
    setting an option with a value. Every option can also be given as an
    environment variable C{CACHINGPROXY_<NAME>} or in the configuration
    file.

    An option not given on the command line is left at C{None} (C{[]} for
    a repeatable one): L{fromOptions} then takes it from the environment,
    the configuration file or its default, in that order.
    """

    synopsis = "[options]"
    longdesc = (
        "A caching HTTP/1.1 proxy. Forward mode (the default) serves clients "
        "configured to use a proxy, including CONNECT tunnels; --upstream "
        "turns it into a reverse proxy in front of one origin. Each option "
        "can also be set by the environment variable CACHINGPROXY_<NAME> "
        "(e.g. CACHINGPROXY_UPSTREAM_TIMEOUT); LISTEN_PORT is an alias for "
        "CACHINGPROXY_PORT. The command line wins over the environment."
    )

    optFlags = [[s.name, None, optionHelp(s)] for s in SETTINGS if s.kind == "flag"]
    optParameters = [
        [s.name, None, None, optionHelp(s)] for s in SETTINGS if s.kind not in ("flag", "list")
    ]
    # The repeatable ones get their opt_ methods below the class.

    def __init__(self) -> None:
        super().__init__()
        for setting in SETTINGS:
            if setting.kind == "list":
                self[setting.name] = []

    def parseOptions(self, options=None) -> None:
        """
        Parse the command line; when run by twistd, an unknown option or a
        missing value ends the process with one line pointing to C{--help}
        and exit status 2, as a bad value does, instead of the whole usage
        text.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            if self.parent is None:
                raise
            exitOnConfigError(usage.UsageError(self._explain(str(error))))

    def _explain(self, message: str) -> str:
        """
        @return: getopt's C{message} with a suggestion for a misspelt option
            and where the options are listed.
        """
        hint = ""
        unknown = re.match(r"option --?(\S+) not recognized", message)
        if unknown:
            names = [s.name for s in SETTINGS] + ["help", "version"]
            close = difflib.get_close_matches(unknown.group(1), names, n=1)
            if close:
                hint = f"did you mean --{close[0]}? "
        return f"{message} ({hint}twistd cachingproxy --help lists the options)"

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"cachingproxy {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        given = {}
        for setting in SETTINGS:
            value = self.get(setting.name)
            if setting.kind == "flag":
                if value:
                    given[setting.name] = True
            elif setting.kind == "list":
                if value:
                    given[setting.name] = tuple(value)
            elif value is not None:
                given[setting.name] = value
        #: the settings given on the command line, for a reload to build
        #: the configuration again the same way
        self.given = given
        try:
            self.config = fromOptions(given, os.environ)
        except usage.UsageError as error:
            if self.parent is not None:
                # Run by twistd: one line naming the setting, exit 2, no
                # usage dump.
                exitOnConfigError(error)
            raise


for _setting in SETTINGS:
    if _setting.kind == "list":
        setattr(Options, "opt_" + _setting.name.replace("-", "_"), _appender(_setting))
del _setting


def buildFactory(reactor, config: Config, accessLog=None) -> ProxyFactory:
    """
    @return: a L{ProxyFactory} for C{config}, with its own upstream pool.
    """
    trustRoot = None
    if config.caFile:
        from twisted.internet.ssl import Certificate, trustRootFromCertificates

        with open(config.caFile, "rb") as f:
            pem = f.read()
        certificates = []
        marker = b"-----END CERTIFICATE-----"
        for block in pem.split(marker):
            if b"-----BEGIN CERTIFICATE-----" in block:
                certificates.append(Certificate.loadPEM(block + marker))
        trustRoot = trustRootFromCertificates(certificates)
    pool = UpstreamPool(
        reactor,
        UpstreamSettings(
            connectTimeout=config.connectTimeout,
            responseTimeout=config.upstreamTimeout,
            maxIdlePerOrigin=config.upstreamMaxIdle,
            idleTimeout=config.upstreamIdleTimeout,
            trustRoot=trustRoot,
        ),
    )
    upstream = None
    if config.upstream:
        upstream = Origin(config.upstreamScheme, config.upstreamHost, config.upstreamPort)
    factory = ProxyFactory(reactor, _proxySettings(config, upstream), pool, accessLog)
    factory.cache = buildCache(reactor, config, pool)
    from ..ops.admin import AdminPages

    factory.admin = AdminPages(factory)
    from ..access import AccessPolicy

    factory.access = AccessPolicy.fromConfig(config, reactor)
    if config.sites is not None:
        wireSites(reactor, factory, config.sites)
    return factory


def wireSites(reactor, factory: ProxyFactory, sites) -> None:
    """
    Route the requests of C{factory} by C{sites} (routes and origin
    groups): a L{cachingproxy.sites.wiring.SitesRouting} over a
    L{cachingproxy.sites.service.SitesService}, whose health checks start
    and stop with the proxy's listening ports (L{ProxyService}).
    """
    from ..sites.service import SitesService
    from ..sites.wiring import SitesRouting

    factory.sites = SitesRouting(SitesService(reactor, sites), factory)


def startSites(factory: ProxyFactory) -> None:
    """
    Start the health checks of C{factory}'s groups, and count per group
    and server in the proxy's metrics when it keeps them.
    """
    sites = factory.sites
    if sites is None or sites.service.running:
        return
    service = sites.service
    if factory.metrics is not None and service.metrics is None:
        from ..sites.metrics import SitesMetrics

        # Made once the metrics folder is set (multiprocess mode: the
        # figures are files), written once a second.
        service.metrics = SitesMetrics(None)
        service.metrics.watch(service.health, service.sites.groups.values())
    if service.metrics is not None:
        service.metrics.start(factory.reactor)
    service.startService()


def stopSites(factory: ProxyFactory) -> None:
    """
    Stop the health checks of C{factory}'s groups.
    """
    sites = factory.sites
    if sites is not None and sites.service.running:
        sites.service.stopService()
        if sites.service.metrics is not None:
            sites.service.metrics.stop()


def buildCache(reactor, config: Config, pool):
    """
    @return: the L{CacheLayer} C{config} asks for, or C{None}.
    """
    if not config.cache or (config.cacheDir is None and not config.cacheMemory):
        return None
    from ..cache import policy
    from ..cache.layer import CacheLayer, CacheSettings

    store = None
    memory = None
    if config.cacheMemory:
        from ..cache.memory import MemoryStore

        memory = MemoryStore(config.cacheMemory, min(config.maxObjectSize, config.cacheMemory))
    if config.cacheDir is not None:
        from ..cache.disk import DiskStore

        os.makedirs(config.cacheDir, exist_ok=True)
        store = DiskStore(config.cacheDir, maxSize=config.cacheSize,
                          maxObjectSize=config.maxObjectSize)
        if memory is not None:
            from ..cache.tiered import TieredStore

            store = TieredStore(memory, store)
    else:
        store = memory
    options = policy.CacheOptions(
        defaultStaleWhileRevalidate=config.staleWhileRevalidate,
        defaultStaleIfError=config.staleIfError,
        refreshRules=config.refreshRules,
        storeSetCookie=config.cacheSetCookie,
    )
    settings = CacheSettings(
        options=options,
        minUses=config.minUses,
        xCache=config.xCache,
        collapse=config.collapse,
    )
    cache = CacheLayer(store, reactor, pool, settings)
    # The disk store's size accounting walks the folder a bit at a time
    # (it also learns what other processes stored).
    from twisted.internet.task import LoopingCall

    cache.housekeeping = LoopingCall(store.rescan, 2000)
    cache.housekeeping.clock = reactor
    return cache


def _proxySettings(config: Config, upstream) -> ProxySettings:
    return ProxySettings(
        upstream=upstream,
        upstreamPath=config.upstreamPath,
        viaName=config.viaName.encode("ascii", "replace"),
        connectPorts=config.connectPorts,
        upgradeProtocols=frozenset(p.lower().encode("ascii") for p in config.upgradeProtocols),
        upgradeIdleTimeout=config.upgradeIdleTimeout,
        upgradeTimeout=config.upgradeTimeout,
        idleTimeout=config.idleTimeout,
        drainIdleTimeout=min(config.drainIdleTimeout, config.shutdownGrace),
        headerTimeout=config.headerTimeout,
        maxRequestLine=config.maxRequestLine,
        maxHeaderSize=config.maxHeaderSize,
        maxConnections=config.maxConnections,
        xForwardedFor=config.xForwardedFor,
        forwarded=config.forwarded,
        maxHeaderFields=config.maxHeaderFields,
        maxBodySize=config.maxBodySize,
        bodyTimeout=config.bodyTimeout,
        maxPipeline=config.maxPipeline,
        xForwardedProto=config.xForwardedProto,
        xForwardedHost=config.xForwardedHost,
        preserveHost=config.preserveHost,
        rewriteRedirects=config.rewriteRedirects,
        requestRules=config.requestRules,
        responseRules=config.responseRules,
        compression=config.compression,
        trustedProxies=_trustedProxies(config),
    )


def _trustedProxies(config: Config):
    """
    @return: the L{cachingproxy.access.Networks} of C{--trusted-proxies},
        or C{None} when no client is trusted.
    """
    if not config.trustedProxies:
        return None
    from ..access import parseNetworks

    networks = parseNetworks(config.trustedProxies)
    return networks if networks.everyone or networks.networks else None


def AccessLogFile(path: str, format: str = "combined", reactor=None) -> AccessLog:
    """
    The access log for C{path} (C{-}: the twistd log) in C{format}, written
    in batches timed by C{reactor} (each line at once without one).
    """
    return AccessLog(path, format, reactor)


class ProxyService(service.Service):
    """
    Listens on one endpoint description with a L{ProxyFactory}; on stop,
    stops listening and closes the upstream pool.

    @ivar port: the listening port once started (tests read its address).
    @ivar tls: the L{cachingproxy.service.tlsport.ServerTLS} of a TLS listener
        (C{None} for a plain one).
    """

    tls = None

    _log = Logger()

    def __init__(self, reactor, description: str, factory: ProxyFactory,
                 grace: float = 10.0) -> None:
        self._reactor = reactor
        self.grace = grace
        self.description = description
        self.factory = factory
        self.port = None
        self._listening: Optional[defer.Deferred] = None

    def privilegedStartService(self) -> None:
        """
        Listen before twistd sheds its privileges (ports below 1024), as
        Twisted's own C{StreamServerEndpointService} does for C{twistd
        web}; a port that cannot be had stops the start here.

        @raise StartupError: the port cannot be listened on.
        """
        super().privilegedStartService()
        self._listen(failNow=True)

    def startService(self) -> None:
        super().startService()
        cache = self.factory.cache
        housekeeping = cache.housekeeping if cache is not None else None
        if housekeeping is not None and not housekeeping.running:
            housekeeping.start(60, now=False)
        startSites(self.factory)
        if self._listening is None:
            self._listen(failNow=False)

    def _listen(self, failNow: bool) -> None:
        """
        Start listening on C{self.description}.

        @param failNow: raise L{StartupError} when listening fails at once
            (every endpoint of Twisted's binds at once); otherwise, and for
            a failure that comes later, log it and stop the reactor.
        """
        from .tlsport import ServerTLS, isTLS, tcpEndpoint

        if isTLS(self.description):
            # TLS set up here rather than by Twisted's ssl:/tls: endpoint,
            # so that a reload can hand new connections a renewed
            # certificate (L{cachingproxy.service.reload}).
            try:
                self.tls = ServerTLS(self.description)
                endpoint = tcpEndpoint(self._reactor, self.description)
            except Exception as e:
                self._listening = defer.fail(e)
            else:
                self._listening = endpoint.listen(self.tls.wrap(self.factory))
        else:
            endpoint = serverEndpoint(self._reactor, self.description)
            self._listening = endpoint.listen(self.factory)

        def listening(port):
            self.port = port
            if self.factory.port is None:
                self.factory.port = port
            self._log.info(
                "cachingproxy {version} listening on {address}",
                version=__version__,
                address=describeAddress(port.getHost()),
            )
            return port

        def failed(reason):
            self._log.critical("{problem}", problem=cannotListen(self.description, reason.value))
            from twisted.internet import reactor

            if reactor.running:
                reactor.stop()
            return reason

        self._listening.addCallback(listening)
        early = self._listening.result if self._listening.called else None
        if failNow and isinstance(early, Failure):
            # Nobody waits on it: the exception says it all.
            self._listening.addErrback(lambda _: None)
            raise cannotListen(self.description, early.value)
        self._listening.addErrback(failed)

    def whenListening(self) -> defer.Deferred:
        """
        @return: a L{Deferred} firing with the listening port.
        """
        d = defer.Deferred()
        self._listening.addBoth(lambda r: (d.callback(r), r)[1])
        return d

    def stopService(self) -> defer.Deferred:
        """
        Stop accepting, let the requests in flight finish (up to the
        shutdown grace), then close the upstream connections.
        """
        super().stopService()
        waits: List[defer.Deferred] = []
        if self.port is not None:
            # Connections the kernel queued are taken and drained (closing
            # the socket would reset them); new ones are refused from now.
            from .._twistedinternals import acceptQueued

            acceptQueued(self.port)
            waits.append(defer.maybeDeferred(self.port.stopListening))
            self.port = None
        cache = self.factory.cache
        housekeeping = cache.housekeeping if cache is not None else None
        if housekeeping is not None and housekeeping.running:
            housekeeping.stop()
        stopSites(self.factory)
        if not self.factory.draining:
            waits.append(self.factory.drain(self.grace))
        d = defer.gatherResults(waits, consumeErrors=True)
        d.addBoth(lambda _: self.factory.pool.closeCachedConnections())
        return d.addCallback(lambda _: None)


class TopService(service.MultiService):
    """
    The proxy's services. Tells systemd (C{Type=notify}) C{READY=1} once
    every L{ProxyService} listens, and C{STOPPING=1} when shutting down.
    (With workers, L{cachingproxy.service.supervisor.WorkersService} does it.)

    @ivar reloader: a L{cachingproxy.service.reload.ConfigReloader} that SIGHUP
        runs (a single-process proxy), or C{None}.
    """

    reloader = None
    _reactor = None
    _handlerInstalled = False
    _previousHandler = None

    def startService(self) -> None:
        super().startService()
        if self.reloader is not None and self._reactor is not None:
            reactor = self._reactor
            self._previousHandler = signal.signal(
                signal.SIGHUP, lambda *a: reactor.callFromThread(self._reloadOnSignal))
            self._handlerInstalled = True
        waits = [child.whenListening() for child in self if isinstance(child, ProxyService)]
        if not waits:
            return
        ready = defer.gatherResults(waits, consumeErrors=True)
        ready.addCallback(lambda _: systemd.notify(b"READY=1"))
        # A port that cannot listen was logged, and stops the reactor.
        ready.addErrback(lambda _: None)

    def _reloadOnSignal(self) -> None:
        systemd.notify(b"RELOADING=1")
        try:
            self.reloader.reload()
        finally:
            systemd.notify(b"READY=1")

    def stopService(self):
        if self._handlerInstalled:
            self._handlerInstalled = False
            previous = self._previousHandler
            signal.signal(signal.SIGHUP, signal.SIG_DFL if previous is None else previous)
        if any(isinstance(child, ProxyService) for child in self):
            systemd.notify(b"STOPPING=1")
        return super().stopService()


def serverEndpoint(reactor, description: str):
    """
    The server endpoint C{description} names: Twisted's own parsers, and,
    for a C{systemd:domain=...:index=N} port that Twisted cannot serve
    because systemd passed no C{LISTEN_FDNAMES} (as
    C{systemd-socket-activate} does), the Nth descriptor systemd passed,
    adopted as Twisted's C{systemd:} endpoint would.

    @raise Exception: what Twisted's parser raises for a description it
        cannot make an endpoint of.
    """
    try:
        return serverFromString(reactor, description)
    except IndexError:
        if not description.startswith("systemd:"):
            raise
        fields = dict(part.partition("=")[::2] for part in description.split(":")[1:])
        fds = systemd.inheritedDescriptors()
        index = fields.get("index", "")
        domain = {"INET": socket.AF_INET, "INET6": socket.AF_INET6,
                  "UNIX": socket.AF_UNIX}.get(fields.get("domain", ""))
        if not index.isdigit() or int(index) >= len(fds) or domain is None:
            raise
        return AdoptedStreamServerEndpoint(reactor, fds[int(index)], domain)


def checkEndpoint(reactor, description: str) -> None:
    """
    Check that C{description} makes an endpoint to listen on (without
    listening yet).

    @raise usage.UsageError: one line naming the C{--port} and the problem,
        such as a C{systemd:} port when systemd passed no socket, or a TLS
        port whose key cannot be read, does not match its certificate or
        whose certificate has expired.
    """
    from .tlsport import checkTLS, isTLS

    if isTLS(description):
        checkTLS(description)
    try:
        serverEndpoint(reactor, description)
    except (IndexError, KeyError) as error:
        if not description.startswith("systemd:"):
            raise usage.UsageError(f"--port {description}: {_oneLineOf(error)}")
        count = len(systemd.inheritedDescriptors())
        if not count:
            problem = ("systemd passed no listening socket (LISTEN_FDS is not set): start "
                       "it through its .socket unit, or give a port such as --port 3128")
        elif isinstance(error, KeyError):
            names = os.environ.get("LISTEN_FDNAMES", "")
            problem = f"systemd passed no socket named {error.args[0]!r} (LISTEN_FDNAMES={names!r})"
        else:
            problem = f"systemd passed {count} listening socket(s), none at that index"
        raise usage.UsageError(f"--port {description}: {problem}")
    except Exception as error:
        raise usage.UsageError(f"--port {description}: {_oneLineOf(error)}")


def _oneLineOf(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def makeService(options: Options, reactor=None) -> service.MultiService:
    """
    Build the proxy service from parsed L{Options}: the proxy itself, or
    with C{--workers} above 1 the parent of that many worker processes
    sharing the listening sockets (L{cachingproxy.service.supervisor}).
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    config: Config = options.config
    if options.parent is not None:
        # Run by twistd: a port that cannot be listened on ends it with one
        # line rather than a traceback.
        reportStartupErrors()
    grace = float(config.shutdownGrace)
    top = TopService()
    workers = int(config.workers)
    if workers > 1:
        # This process only owns the sockets and supervises the workers,
        # which build their own factories (cachingproxy.service.supervisor).
        from .tlsport import checkTLS, isTLS
        from .supervisor import WorkersService, childArguments

        try:
            # Each worker reads the certificates again; checked here, a bad
            # one stops the start before any worker is spawned.
            for description in config.port:
                if isTLS(description):
                    checkTLS(description)
            parent = WorkersService(reactor, config.port, workers, childArguments(options),
                                    grace)
        except usage.UsageError as error:
            if options.parent is not None:
                exitOnConfigError(error)
            raise
        parent.setServiceParent(top)
        return top
    accessLog = (AccessLogFile(config.accessLog, config.accessLogFormat, reactor)
                 if config.accessLog else None)
    for description in config.port:
        try:
            checkEndpoint(reactor, description)
        except usage.UsageError as error:
            if options.parent is not None:
                exitOnConfigError(error)
            raise
    factory = buildFactory(reactor, config, accessLog)
    streamline(reactor)
    reopenOnSignal(reactor, [accessLog])
    from ..ops.metrics import Metrics, MetricsService

    factory.metrics = Metrics.create(reactor, factory)
    MetricsService(factory.metrics).setServiceParent(top)
    services = [ProxyService(reactor, description, factory, grace) for description in config.port]
    for proxyService in services:
        proxyService.setServiceParent(top)
    given = getattr(options, "given", None)
    if given is not None:
        from .reload import ConfigReloader

        top.reloader = ConfigReloader(
            reactor, lambda: fromOptions(given, os.environ), config, factory, services)
        top._reactor = reactor
    return top
