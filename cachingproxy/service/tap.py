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
from typing import List, NamedTuple, Optional, Sequence

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from .. import __version__
from . import systemd
from .._twistedinternals import streamline, unstreamline
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
    settingsFor,
)
from ..proxy.factory import ProxyFactory
from ..proxy.settings import ProxySettings
from ..proxy.upstream import Origin, UpstreamPool, UpstreamSettings

__all__ = ["Options", "makeService", "serveConfig", "ServedPort", "ProxyService", "buildFactory"]


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


def buildFactory(reactor, config: Config, accessLog=None,
                 workerId: Optional[str] = None) -> ProxyFactory:
    """
    @param workerId: the worker this process is (its health report names
        it), or C{None}.
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
    pool = UpstreamPool(reactor, settingsFor(UpstreamSettings, config, trustRoot=trustRoot))
    upstream = None
    if config.upstream:
        upstream = Origin(config.upstreamScheme, config.upstreamHost, config.upstreamPort)
    factory = ProxyFactory(reactor, proxySettings(config, upstream), pool, accessLog)
    factory.http2 = config.http2
    factory.cache = buildCache(reactor, config, pool)
    from ..ops.admin import AdminPages

    factory.admin = AdminPages(factory, workerId or "")
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
    cache = CacheLayer(store, reactor, pool, settingsFor(CacheSettings, config, options=options))
    # The disk store's size accounting walks the folder a bit at a time
    # (it also learns what other processes stored).
    from twisted.internet.task import LoopingCall

    cache.housekeeping = LoopingCall(store.rescan, 2000)
    cache.housekeeping.clock = reactor
    collapseAcrossProcesses(reactor, config, cache)
    attachFleet(reactor, config, cache)
    return cache


def collapseAcrossProcesses(reactor, config: Config, cache) -> None:
    """
    With a disk cache, collapsed forwarding reaches every process sharing
    its folder (the workers, other proxies): C{cache}'s fill lock is a
    L{cachingproxy.cache.filllock.LocalFillLock} under the folder (its
    waiters woken by inotify where there is one), whose stale files the
    store's housekeeping sweeps.
    """
    if config.cacheDir is None or not config.collapse:
        return
    from twisted.internet.task import LoopingCall

    from ..cache.filllock import LocalFillLock

    lock = LocalFillLock(os.path.join(config.cacheDir, "locks"), cache.store, reactor)
    lock.watchRemovals(reactor)
    cache.fillLock = lock
    rescan = cache.housekeeping.f

    def housekeeping() -> None:
        rescan(2000)
        lock.sweep()

    cache.housekeeping = LoopingCall(housekeeping)
    cache.housekeeping.clock = reactor


# -- the fleet tier and purge tags ---------------------------------------------


def attachFleet(reactor, config: Config, cache) -> None:
    """
    Give C{cache} its purge tag index (C{--tag-field}) and, with
    C{--redis}, the fleet tier: local misses ask Redis, what is stored goes
    to it, purges apply to it, and the process follows its purge log from
    the reactor's start to its shutdown.

    @raise usage.UsageError: for a C{--redis} URL or password file that
        cannot be used.
    """
    from ..cache.fleettier import FleetTier, TagIndex

    tagField = (config.tagField or "").strip()
    if tagField:
        cache.tagField = tagField.lower().encode("latin-1")
        cache.tagIndex = TagIndex(config.cacheDir)
        if not config.keepTagField:
            cache.hiddenFields = cache.hiddenFields | {cache.tagField}
    if not config.redis:
        return
    from ..fleet.redis import connectClient
    from ..fleet.store import FleetStore

    url = str(config.redis)
    if not url.startswith(("redis://", "rediss://")):
        raise usage.UsageError(f"--redis: expected redis://host:port or rediss://..., got {url!r}")
    # A request waits for the fleet at most the deadline (FleetTier drops
    # a later answer); the commands themselves get longer before their
    # connection is closed, so that a lock taken or a purge done by a reply
    # that came a little late is not lost with it (a lost lock holds the
    # others back until its lease ends).
    commandTimeout = max(4 * config.fleetDeadline, 0.25)
    try:
        client = connectClient(reactor, [url], cluster=config.redisCluster,
                               passwordFile=config.redisPasswordFile,
                               timeout=commandTimeout)
    except OSError as e:
        raise usage.UsageError(f"--redis-password-file: cannot read it: {e.strerror or e}")
    except ValueError as e:
        raise usage.UsageError(f"--redis: {_oneLineOf(e)}")
    store = FleetStore(client, reactor, maxObjectSize=config.fleetMaxObjectSize,
                       lease=config.fleetLockLease, timeout=commandTimeout)
    tier = FleetTier(store, reactor, deadline=config.fleetDeadline, maxWait=config.fleetWait)
    tier.layer = cache
    cache.fleet = tier
    reactor.callWhenRunning(tier.start)
    reactor.addSystemEventTrigger("before", "shutdown", tier.stop)


def proxySettings(config: Config, upstream) -> ProxySettings:
    """
    @return: the L{ProxySettings} of C{config}: the fields a setting gives
        as that setting says (L{settingsFor}), and those worked out here.
    """
    return settingsFor(
        ProxySettings,
        config,
        upstream=upstream,
        upstreamPath=config.upstreamPath,
        viaName=config.viaName.encode("ascii", "replace"),
        drainIdleTimeout=min(config.drainIdleTimeout, config.shutdownGrace),
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
    takes what the kernel queued and stops listening (the L{TopService}
    drains the factory).

    @ivar port: the listening port once started (tests read its address).
    @ivar endpoint: what to listen with, when not the endpoint the
        description names (a worker's inherited descriptor).
    @ivar tls: the L{cachingproxy.service.tlsport.ServerTLS} of a TLS listener
        (C{None} for a plain one).
    @ivar workerId: the worker this process is, or C{None} for the proxy
        on its own.
    """

    tls = None

    _log = Logger()

    def __init__(self, reactor, description: str, factory: ProxyFactory,
                 grace: float = 10.0, endpoint=None, tls=None,
                 workerId: Optional[str] = None) -> None:
        self._reactor = reactor
        self.grace = grace
        self.description = description
        self.factory = factory
        self.endpoint = endpoint
        self.tls = tls
        self.workerId = workerId
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

        try:
            if self.tls is None and self.endpoint is None and isTLS(self.description):
                # TLS set up here rather than by Twisted's ssl:/tls:
                # endpoint, so that a reload can hand new connections a
                # renewed certificate (L{cachingproxy.service.reload}).
                self.tls = ServerTLS(self.description)
            endpoint = self.endpoint
            if endpoint is None and self.tls is not None:
                endpoint = tcpEndpoint(self._reactor, self.description)
            elif endpoint is None:
                endpoint = serverEndpoint(self._reactor, self.description)
        except Exception as e:
            self._listening = defer.fail(e)
        else:
            factory = self.factory if self.tls is None else self.tls.wrap(self.factory)
            self._listening = endpoint.listen(factory)

        def listening(port):
            self.port = port
            if self.factory.port is None:
                self.factory.port = port
            if self.workerId is None:
                self._log.info(
                    "cachingproxy {version} listening on {address}",
                    version=__version__,
                    address=describeAddress(port.getHost()),
                )
            else:
                self._log.info("worker {worker} (pid {pid}) accepting on {address}",
                               worker=self.workerId, pid=os.getpid(),
                               address=describeAddress(port.getHost()))
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
        Stop accepting: connections the kernel queued are taken (closing
        the socket would reset them; they are drained with the others),
        new ones are refused from now on. Stopping an adopted port closes
        this process's descriptor without shutting the shared socket down,
        so the other workers keep accepting.

        @return: a L{Deferred} firing once the port is closed.
        """
        super().stopService()
        port, self.port = self.port, None
        cache = self.factory.cache
        housekeeping = cache.housekeeping if cache is not None else None
        if housekeeping is not None and housekeeping.running:
            housekeeping.stop()
        stopSites(self.factory)
        if port is None:
            return defer.succeed(None)
        from .._twistedinternals import acceptQueued

        acceptQueued(port)
        return defer.maybeDeferred(port.stopListening).addCallback(lambda _: None)


class TopService(service.MultiService):
    """
    The proxy's services. Tells systemd (C{Type=notify}) C{READY=1} once
    every L{ProxyService} listens, and C{STOPPING=1} when shutting down.
    (With workers, L{cachingproxy.service.supervisor.WorkersService} does it.)

    On stop, every L{ProxyService} stops accepting, then the factory they
    share drains: its requests in flight get the shutdown grace to finish
    (after L{settle} seconds), and its upstream pool closes; the other
    services (the metrics) stop last, so that they count the drained
    requests.

    While it serves, the reactor has the streamlined poll step
    (L{cachingproxy._twistedinternals.streamline}), given back when it
    stops.

    @ivar reloader: a L{cachingproxy.service.reload.ConfigReloader} that SIGHUP
        runs (a single-process proxy), or C{None}.
    @ivar notifies: whether to tell systemd (not from a worker: its parent
        does).
    @ivar settle: seconds between no longer accepting and draining, when
        connections are open, so that one accepted just before the stop
        gets its request read (rather than closed as idle) and answered.
    @ivar notAccepting: once stopping, a L{Deferred} firing when every
        listening port of this process is closed (a port closes in the
        reactor turn after it is told to), while the drain goes on.
    """

    reloader = None
    notAccepting: Optional[defer.Deferred] = None
    notifies = True
    settle = 0.0
    _reactor = None
    _handlerInstalled = False
    _previousHandler = None
    _streamlined = False

    def proxyServices(self) -> List[ProxyService]:
        """
        @return: the listening services, in the order of the C{--port}s.
        """
        return [child for child in self if isinstance(child, ProxyService)]

    def startService(self) -> None:
        super().startService()
        if self.proxyServices() and self._reactor is not None:
            self._streamlined = streamline(self._reactor)
        if self.reloader is not None and self._reactor is not None:
            reactor = self._reactor
            self._previousHandler = signal.signal(
                signal.SIGHUP, lambda *a: reactor.callFromThread(self._reloadOnSignal))
            self._handlerInstalled = True
        waits = [child.whenListening() for child in self.proxyServices()]
        if not waits or not self.notifies:
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

    def stopService(self) -> defer.Deferred:
        if self._handlerInstalled:
            self._handlerInstalled = False
            previous = self._previousHandler
            signal.signal(signal.SIGHUP, signal.SIG_DFL if previous is None else previous)
        proxies = self.proxyServices()
        if proxies and self.notifies:
            systemd.notify(b"STOPPING=1")
        service.Service.stopService(self)
        others = [child for child in reversed(list(self)) if child not in proxies]
        waits = [defer.maybeDeferred(child.stopService) for child in reversed(proxies)]
        # (results and failures pass on to the gathering below)
        self.notAccepting = defer.DeferredList(waits)
        for factory in {id(p.factory): p.factory for p in proxies}.values():
            waits.append(self._drain(factory, max(p.grace for p in proxies)))
        d = defer.gatherResults(waits, consumeErrors=True)
        d.addBoth(lambda _: defer.gatherResults(
            [defer.maybeDeferred(child.stopService) for child in others], consumeErrors=True))
        if self._streamlined:
            # Twisted's own poll step from the next iteration on.
            self._streamlined = False
            unstreamline(self._reactor)
        return d.addBoth(lambda _: None)

    def _drain(self, factory: ProxyFactory, grace: float) -> defer.Deferred:
        """
        Let the requests in flight finish (up to C{grace} seconds, after
        L{settle}), then close the upstream connections.
        """
        d = defer.succeed(None)
        if self.settle > 0 and factory.openConnections:
            from twisted.internet import task

            d = task.deferLater(self._reactor, min(self.settle, grace), lambda: None)
        d.addCallback(lambda _: None if factory.draining else factory.drain(grace))
        d.addBoth(lambda _: factory.pool.closeCachedConnections())
        return d


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
    for description in config.port:
        try:
            checkEndpoint(reactor, description)
        except usage.UsageError as error:
            if options.parent is not None:
                exitOnConfigError(error)
            raise
    serveConfig(reactor, config, [ServedPort(description) for description in config.port], top)
    given = getattr(options, "given", None)
    if given is not None:
        from .reload import ConfigReloader

        services = top.proxyServices()
        top.reloader = ConfigReloader(reactor, lambda: fromOptions(given, os.environ), config,
                                      services[0].factory, services)
    return top


class ServedPort(NamedTuple):
    """
    Where one L{ProxyService} listens.

    @ivar description: the C{--port} description.
    @ivar endpoint: what to listen with, or C{None} for the endpoint the
        description names (a worker passes the descriptor it inherited,
        as an L{AdoptedStreamServerEndpoint}).
    @ivar tls: the L{cachingproxy.service.tlsport.ServerTLS} of a TLS
        listener with an C{endpoint} (without one, L{ProxyService} reads
        the description's certificate itself).
    """

    description: str
    endpoint: object = None
    tls: object = None


def serveConfig(reactor, config: Config, ports: Sequence["ServedPort"],
                top: Optional[TopService] = None,
                workerId: Optional[str] = None) -> TopService:
    """
    Build the proxy serving C{config}: one factory (with its access log,
    its cache, its metrics) and a L{ProxyService} for each of C{ports},
    in C{top}. The proxy on its own (L{makeService}) and each
    worker process (L{cachingproxy.service.child}) build theirs here; they
    differ only in where the listening sockets come from.

    @param workerId: the worker this process is (named in the health
        report, the metrics and the log), or C{None}.
    @return: C{top}, or a new L{TopService} holding them.
    """
    if top is None:
        top = TopService()
    top._reactor = reactor
    accessLog = (AccessLogFile(config.accessLog, config.accessLogFormat, reactor)
                 if config.accessLog else None)
    factory = buildFactory(reactor, config, accessLog, workerId)
    reopenOnSignal(reactor, [accessLog])
    from ..ops.metrics import Metrics, MetricsService

    factory.metrics = Metrics.create(reactor, factory, workerId=workerId or "")
    MetricsService(factory.metrics).setServiceParent(top)
    for port in ports:
        ProxyService(reactor, port.description, factory, float(config.shutdownGrace),
                     port.endpoint, port.tls, workerId).setServiceParent(top)
    return top
