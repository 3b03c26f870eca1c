# -*- test-case-name: tests.test_sites_health -*-
"""
Which servers are up: active checks on a schedule and passive checks from
the requests the proxy sends anyway.

Usage::

    health = Health(reactor, sites.groups.values())
    health.startService()
    balancer = makeBalancer(group, available=health.isUp)
    ...
    health.requestFinished(server, ok=False)     # connect failure or 5xx
    ...
    health.reconfigure(newSites.groups.values())  # on reload
    health.stopService()

Each server has one L{ServerState}, kept by its URL (a server listed in
several groups has one state, checked with the first group's settings).
The moves between states are one table, L{TRANSITIONS}, driven by four
events (L{Event}):

  - C{ROSE}: C{rise} active checks in a row succeeded, or (without active
    checks) a request to a server being probed succeeded;
  - C{FELL}: C{fall} active checks in a row failed (one, while probing),
    or a request to a server being probed failed;
  - C{TRIPPED}: the passive limit was reached: C{failures} connection
    failures or 5xx responses within C{window} seconds;
  - C{COOLED}: C{cooldown} seconds passed since C{TRIPPED}.

A server starts C{UP}. Active checks are C{GET path} over HTTP/1.1 on a
connection of its own (L{agentChecker}: a non-persistent
L{twisted.web.client.Agent}), at most one at a time per server, one every
C{interval} seconds, each cut off after C{timeout}; a status in C{expect}
is a success. Time comes from the injected L{IReactorTime}.

Every change of state is logged once, as plain text, and told to the
callables given to L{Health.subscribe}.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Callable, Deque, Dict, Iterable, List, Optional, Tuple

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from .model import Group, HealthCheck, PassiveCheck, Server

__all__ = [
    "Event",
    "Health",
    "ServerState",
    "TRANSITIONS",
    "agentChecker",
]


class ServerState(enum.Enum):
    """
    @cvar UP: requests go to the server.
    @cvar DOWN: active checks failed C{fall} times in a row; only active
        checks go to it, until C{rise} in a row succeed.
    @cvar COOLING: the passive limit was reached; nothing goes to the
        server for C{cooldown} seconds.
    @cvar PROBING: the cooldown is over: active checks decide (C{rise}
        successes bring it up, one failure cools it again); without active
        checks requests go to it again and the first one decides.
    """

    UP = "up"
    DOWN = "down"
    COOLING = "cooling"
    PROBING = "probing"


class Event(enum.Enum):
    """
    What moves a server between states; see the module docstring.
    """

    ROSE = "rose"
    FELL = "fell"
    TRIPPED = "tripped"
    COOLED = "cooled"


_UP, _DOWN, _COOLING, _PROBING = ServerState.UP, ServerState.DOWN, ServerState.COOLING, ServerState.PROBING

#: C{(state, event) -> next state}. A pair not listed is a bug and raises
#: C{RuntimeError}.
TRANSITIONS: Dict[Tuple[ServerState, Event], ServerState] = {
    (_UP, Event.ROSE): _UP,
    (_UP, Event.FELL): _DOWN,
    (_UP, Event.TRIPPED): _COOLING,
    (_DOWN, Event.ROSE): _UP,
    (_DOWN, Event.FELL): _DOWN,
    (_DOWN, Event.TRIPPED): _DOWN,
    (_COOLING, Event.TRIPPED): _COOLING,
    (_COOLING, Event.COOLED): _PROBING,
    (_PROBING, Event.ROSE): _UP,
    (_PROBING, Event.FELL): _COOLING,
    (_PROBING, Event.TRIPPED): _COOLING,
}

Checker = Callable[[Server, HealthCheck], defer.Deferred]
Listener = Callable[[Server, ServerState, ServerState], None]


class _Discard(Protocol):
    """
    Reads a response body to its end and throws it away.
    """

    def __init__(self, status: int) -> None:
        self.status = status
        self.done: defer.Deferred = defer.Deferred(lambda _: self._abort())

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:
        if not self.done.called:
            self.done.callback(self.status)


def _quietClientFactory():
    from twisted.web.client import _HTTP11ClientFactory

    class QuietClientFactory(_HTTP11ClientFactory):
        """
        No "Starting factory" log lines for every check.
        """

        noisy = False

    return QuietClientFactory


_QuietClientFactory = _quietClientFactory()


def agentChecker(reactor, contextFactory=None, agent=None) -> Checker:
    """
    @param contextFactory: the TLS policy for https servers (an
        L{IPolicyForHTTPS}), or C{None} for Twisted's default.
    @param agent: an L{IAgent} to use instead of the one built here.
    @return: a checker that sends C{GET path} to a server with a
        L{twisted.web.client.Agent} whose connections are not kept, and
        fires with the response's status once its body was read.
    """
    from twisted.web.client import Agent, HTTPConnectionPool

    if agent is None:
        pool = HTTPConnectionPool(reactor, persistent=False)
        pool._factory = _QuietClientFactory
        if contextFactory is None:
            agent = Agent(reactor, pool=pool)
        else:
            agent = Agent(reactor, contextFactory, pool=pool)
    headers = Headers({b"user-agent": [b"cachingproxy health check"]})

    def check(server: Server, health: HealthCheck) -> defer.Deferred:
        url = server.url.encode("ascii") + health.path
        fields = headers
        if health.host is not None:
            fields = headers.copy()
            fields.setRawHeaders(b"host", [health.host])
        d = agent.request(b"GET", url, fields)

        def got(response):
            body = _Discard(response.code)
            response.deliverBody(body)
            return body.done

        return d.addCallback(got)

    return check


def _reason(failure: Failure) -> str:
    """
    @return: a failed check's reason on one line, without a repr.
    """
    if failure.check(defer.TimeoutError, defer.CancelledError):
        return "timed out"
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        return _reason(reasons[0])
    text = " ".join(str(failure.value).split())
    return text or failure.type.__name__


class _Server:
    """
    What L{Health} keeps for one server.
    """

    def __init__(self, server: Server, group: Group) -> None:
        self.server = server
        self.group = group
        self.state = _UP
        self.successes = 0
        self.failures = 0
        self.passiveFailures: Deque[float] = deque()
        self.nextCheck: Optional[IDelayedCall] = None
        self.inFlight: Optional[defer.Deferred] = None
        self.cooldown: Optional[IDelayedCall] = None

    @property
    def check(self) -> Optional[HealthCheck]:
        return self.group.health

    @property
    def passive(self) -> Optional[PassiveCheck]:
        return self.group.passive

    def stopChecks(self) -> None:
        if self.nextCheck is not None and self.nextCheck.active():
            self.nextCheck.cancel()
        self.nextCheck = None
        if self.inFlight is not None:
            inFlight, self.inFlight = self.inFlight, None
            inFlight.cancel()

    def stop(self) -> None:
        self.stopChecks()
        if self.cooldown is not None and self.cooldown.active():
            self.cooldown.cancel()
        self.cooldown = None


class Health(service.Service):
    """
    The state of every server of some groups.

    @ivar reactor: an L{IReactorTime} (and, for the default checker, an
        L{IReactorTCP}).
    """

    _log = Logger()

    def __init__(self, reactor, groups: Iterable[Group], checker: Optional[Checker] = None) -> None:
        self.reactor = reactor
        self._checker = checker if checker is not None else agentChecker(reactor)
        self._servers: Dict[str, _Server] = {}
        self._listeners: List[Listener] = []
        self._place(groups)

    def _place(self, groups: Iterable[Group]) -> Dict[str, _Server]:
        """
        Build the records for C{groups}, reusing those of servers already
        known (their state, counters and timers), and return the records
        that were dropped.
        """
        old = self._servers
        new: Dict[str, _Server] = {}
        for group in groups:
            for server in group.servers:
                if server.url in new:
                    continue
                record = old.get(server.url)
                if record is None:
                    record = _Server(server, group)
                else:
                    changed = record.group.health != group.health
                    record.server, record.group = server, group
                    if record.state is _COOLING and group.passive is None:
                        # Passive checks removed: the cooldown ends now.
                        if record.cooldown is not None and record.cooldown.active():
                            record.cooldown.cancel()
                        record.cooldown = None
                        self._fire(record, Event.COOLED, "passive checks removed, probing")
                    if changed:
                        record.stopChecks()
                        record.successes = record.failures = 0
                        if record.state is _DOWN and group.health is None:
                            # Nothing would bring it back.
                            self._fire(record, Event.ROSE, "active checks removed")
                new[server.url] = record
        self._servers = new
        return {url: r for url, r in old.items() if url not in new}

    # Reading.

    def state(self, server: Server) -> ServerState:
        """
        @return: the server's state (C{UP} for a server not known).
        """
        record = self._servers.get(server.url)
        return record.state if record is not None else _UP

    def isUp(self, server: Server) -> bool:
        """
        @return: whether requests may go to the server: C{UP}, or
            C{PROBING} without active checks.
        """
        record = self._servers.get(server.url)
        if record is None or record.state is _UP:
            return True
        return record.state is _PROBING and record.check is None

    def subscribe(self, listener: Listener) -> None:
        """
        Call C{listener(server, old, new)} on every change of state.
        """
        self._listeners.append(listener)

    # Service.

    def startService(self) -> None:
        super().startService()
        for record in self._servers.values():
            self._startChecks(record)

    def stopService(self) -> None:
        super().stopService()
        for record in self._servers.values():
            record.stop()

    def reconfigure(self, groups: Iterable[Group]) -> None:
        """
        Switch to the groups of a new configuration. Servers that stay (by
        URL) keep their state; servers that go stop being checked; new
        servers start C{UP}.
        """
        for record in self._place(groups).values():
            record.stop()
        if self.running:
            for record in self._servers.values():
                self._startChecks(record)

    # Transitions.

    def _fire(self, record: _Server, event: Event, why: str) -> None:
        old = record.state
        try:
            new = TRANSITIONS[(old, event)]
        except KeyError:
            raise RuntimeError(f"{record.server.url}: no transition for {event.name} in state {old.name}")
        if new is old:
            return
        record.state = new
        record.successes = record.failures = 0
        if new is _COOLING:
            record.passiveFailures.clear()
            cooldown = record.passive.cooldown if record.passive is not None else 0.0
            record.cooldown = self.reactor.callLater(cooldown, self._cooled, record)
        elif record.cooldown is not None and record.cooldown.active():
            record.cooldown.cancel()
        self._log.info(
            "{url} (group {group}) is {state}: {why}",
            url=record.server.url, group=record.group.name, state=new.value, why=why,
        )
        for listener in list(self._listeners):
            listener(record.server, old, new)

    def _cooled(self, record: _Server) -> None:
        record.cooldown = None
        self._fire(record, Event.COOLED, "cooldown over, probing")

    # Passive checks.

    def requestFinished(self, server: Server, ok: bool) -> None:
        """
        A request sent to C{server} was answered (C{ok}), or failed to
        connect or was answered 5xx (not C{ok}).
        """
        record = self._servers.get(server.url)
        if record is None:
            return
        if record.state is _PROBING and record.check is None:
            if ok:
                self._fire(record, Event.ROSE, "a request succeeded")
            else:
                self._fire(record, Event.FELL, "a request failed")
            return
        if ok or record.passive is None or record.state is _COOLING:
            return
        now = self.reactor.seconds()
        failures = record.passiveFailures
        failures.append(now)
        while failures and failures[0] <= now - record.passive.window:
            failures.popleft()
        if len(failures) >= record.passive.failures:
            self._fire(
                record, Event.TRIPPED,
                f"{len(failures)} failed requests within {record.passive.window:g}s, "
                f"cooling for {record.passive.cooldown:g}s",
            )

    # Active checks.

    def _startChecks(self, record: _Server) -> None:
        if record.state is _COOLING and record.cooldown is None:
            # Stopped or reconfigured while cooling: a whole cooldown again.
            cooldown = record.passive.cooldown if record.passive is not None else 0.0
            record.cooldown = self.reactor.callLater(cooldown, self._cooled, record)
        if record.check is None or record.nextCheck is not None or record.inFlight is not None:
            return
        record.nextCheck = self.reactor.callLater(0, self._runCheck, record)

    def _runCheck(self, record: _Server) -> None:
        record.nextCheck = None
        check = record.check
        if check is None:
            return
        started = self.reactor.seconds()
        try:
            d = self._checker(record.server, check)
        except Exception:
            d = defer.fail()
        d.addTimeout(check.timeout, self.reactor)
        record.inFlight = d

        def done(result) -> None:
            if record.inFlight is not d:
                return  # stopped or reconfigured meanwhile
            record.inFlight = None
            if isinstance(result, Failure):
                self._checked(record, check, False, _reason(result))
            elif result in check.expect:
                self._checked(record, check, True, f"status {result}")
            else:
                self._checked(record, check, False, f"status {result}")
            if self.running and record.check is check and self._servers.get(record.server.url) is record:
                delay = max(0.0, started + check.interval - self.reactor.seconds())
                record.nextCheck = self.reactor.callLater(delay, self._runCheck, record)

        d.addBoth(done)

    def _checked(self, record: _Server, check: HealthCheck, ok: bool, detail: str) -> None:
        if record.state is _COOLING:
            return
        if ok:
            record.successes += 1
            record.failures = 0
            if record.successes >= check.rise:
                self._fire(record, Event.ROSE, f"{record.successes} checks passed, last: {detail}")
        else:
            record.failures += 1
            record.successes = 0
            fall = 1 if record.state is _PROBING else check.fall
            if record.failures >= fall:
                self._fire(record, Event.FELL, f"{record.failures} checks failed, last: {detail}")
