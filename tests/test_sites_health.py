"""
Tests for L{cachingproxy.sites.health}: active and passive checks driven
by a L{Clock} and a scripted checker, then active checks against three
real origin servers on loopback. Also L{cachingproxy.sites.metrics}, which
shows what L{Health} finds.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from hypothesis import given, settings, strategies as st
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from cachingproxy.sites.health import TRANSITIONS, Event, Health, ServerState, agentChecker
from cachingproxy.sites.model import Group, HealthCheck, PassiveCheck, Server
from cachingproxy.sites.parse import parseServerURL

UP, DOWN, COOLING, PROBING = ServerState.UP, ServerState.DOWN, ServerState.COOLING, ServerState.PROBING


def servers(count: int) -> Tuple[Server, ...]:
    return tuple(parseServerURL(f"http://10.0.0.{i}:8080", "test") for i in range(1, count + 1))


class Checker:
    """
    A scripted checker: answers each server with the status set for it, a
    failure, or a Deferred left pending.

    @ivar results: C{{url: status, exception, or None for pending}}.
    @ivar calls: the URLs checked, in order.
    @ivar pending: the Deferreds left pending.
    """

    def __init__(self) -> None:
        self.results: Dict[str, object] = {}
        self.calls: List[str] = []
        self.pending: List[defer.Deferred] = []
        self.cancelled = 0

    def __call__(self, server: Server, check: HealthCheck) -> defer.Deferred:
        self.calls.append(server.url)
        result = self.results.get(server.url, 200)
        if result is None:
            d = defer.Deferred(lambda _: self._cancelled())
            self.pending.append(d)
            return d
        if isinstance(result, Exception):
            return defer.fail(result)
        return defer.succeed(result)

    def _cancelled(self) -> None:
        self.cancelled += 1


class Changes:
    """
    Records what L{Health.subscribe} reports.
    """

    def __init__(self, health: Health) -> None:
        self.seen: List[Tuple[str, ServerState, ServerState]] = []
        health.subscribe(lambda server, old, new: self.seen.append((server.url, old, new)))


class TransitionTableTests(SynchronousTestCase):
    """
    L{TRANSITIONS}, the one table of moves.
    """

    def test_cooledOnlyWhileCooling(self) -> None:
        """
        C{COOLED} is only a move out of C{COOLING}; elsewhere it is a bug
        that raises.
        """
        self.assertEqual(TRANSITIONS[(COOLING, Event.COOLED)], PROBING)
        health = Health(Clock(), [Group("g", servers(1))], checker=Checker())
        record = health._servers[servers(1)[0].url]
        with self.assertRaises(RuntimeError) as raised:
            health._fire(record, Event.COOLED, "test")
        self.assertEqual(str(raised.exception), "http://10.0.0.1:8080: no transition for COOLED in state UP")

    def test_everyStateLeadsUp(self) -> None:
        """
        From every state some sequence of events leads back to C{UP}.
        """
        for start in ServerState:
            reached = {start}
            frontier = [start]
            while frontier:
                state = frontier.pop()
                for (source, _), target in TRANSITIONS.items():
                    if source is state and target not in reached:
                        reached.add(target)
                        frontier.append(target)
            self.assertIn(UP, reached, start)


class RandomDriveTests(SynchronousTestCase):
    """
    Any mix of check results, request outcomes and time keeps the states
    consistent.
    """

    @given(st.booleans(), st.booleans(),
           st.lists(st.tuples(st.sampled_from(["ok", "fail", "check-ok", "check-503", "check-hang"]),
                              st.floats(0, 12)), max_size=40))
    @settings(max_examples=60, deadline=None)
    def test_invariants(self, active, passive, steps) -> None:
        """
        No event meets a state it has no move for; a server cooling has a
        cooldown pending; only C{UP} (or C{PROBING} without active checks)
        takes requests; stopping leaves no timer.
        """
        clock = Clock()
        checker = Checker()
        a, = servers(1)
        group = Group("g", (a,),
                      health=HealthCheck(interval=5.0, timeout=1.0, fall=2, rise=2) if active else None,
                      passive=PassiveCheck(failures=2, window=10.0, cooldown=15.0) if passive else None)
        health = Health(clock, [group], checker=checker)
        health.startService()
        results = {"check-ok": 200, "check-503": 503, "check-hang": None}
        for what, delay in steps:
            if what in results:
                checker.results[a.url] = results[what]
            else:
                health.requestFinished(a, ok=what == "ok")
            clock.advance(delay)
            state = health.state(a)
            record = health._servers[a.url]
            if state is COOLING:
                self.assertTrue(record.cooldown is not None and record.cooldown.active())
            self.assertEqual(health.isUp(a), state is UP or (state is PROBING and not active))
            if not active:
                self.assertIsNot(state, DOWN)
            if not passive:
                self.assertIn(state, (UP, DOWN))
        health.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])


class ActiveCheckTests(SynchronousTestCase):
    """
    Active checks on a schedule.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.checker = Checker()
        self.check = HealthCheck(path=b"/healthz", interval=5.0, timeout=2.0,
                                 expect=frozenset([200]), fall=3, rise=2)
        self.group = Group("web", servers(2), health=self.check, passive=None)
        self.a, self.b = self.group.servers
        self.health = Health(self.clock, [self.group], checker=self.checker)
        self.changes = Changes(self.health)
        self.health.startService()
        self.addCleanup(self.health.stopService)

    def test_schedule(self) -> None:
        """
        Every server is checked at once, then every C{interval} seconds.
        """
        self.assertEqual(self.checker.calls, [])
        self.clock.advance(0)
        self.assertEqual(sorted(self.checker.calls), [self.a.url, self.b.url])
        self.clock.advance(4.9)
        self.assertEqual(len(self.checker.calls), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(self.checker.calls), 4)

    def test_fall(self) -> None:
        """
        C{fall} failures in a row mark a server down, not fewer; a status
        not expected is a failure.
        """
        self.checker.results[self.a.url] = 503
        self.clock.advance(0)
        self.clock.advance(5)
        self.assertIs(self.health.state(self.a), UP)
        self.assertTrue(self.health.isUp(self.a))
        self.clock.advance(5)
        self.assertIs(self.health.state(self.a), DOWN)
        self.assertFalse(self.health.isUp(self.a))
        self.assertIs(self.health.state(self.b), UP)
        self.assertEqual(self.changes.seen, [(self.a.url, UP, DOWN)])

    def test_failuresMustBeConsecutive(self) -> None:
        """
        A success between failures starts the count again.
        """
        for result in (ConnectionRefusedError(), ConnectionRefusedError(), 200,
                       ConnectionRefusedError(), ConnectionRefusedError()):
            self.checker.results[self.a.url] = result
            self.clock.advance(5)
        self.assertIs(self.health.state(self.a), UP)

    def test_rise(self) -> None:
        """
        A server down comes up after C{rise} successes in a row.
        """
        self.checker.results[self.a.url] = ConnectionRefusedError()
        for _ in range(3):
            self.clock.advance(5)
        self.assertIs(self.health.state(self.a), DOWN)
        self.checker.results[self.a.url] = 200
        self.clock.advance(5)
        self.assertIs(self.health.state(self.a), DOWN)
        self.clock.advance(5)
        self.assertIs(self.health.state(self.a), UP)
        self.assertEqual(self.changes.seen, [(self.a.url, UP, DOWN), (self.a.url, DOWN, UP)])

    def test_timeout(self) -> None:
        """
        A check that does not answer within C{timeout} is cancelled and
        counts as a failure; one check at a time per server.
        """
        self.checker.results[self.a.url] = None
        self.clock.advance(0)
        self.clock.advance(1.9)
        self.assertEqual(self.checker.cancelled, 0)
        self.clock.advance(0.1)
        self.assertEqual(self.checker.cancelled, 1)
        self.assertEqual(self.health._servers[self.a.url].failures, 1)
        # The next check starts an interval after the last one started.
        self.clock.advance(2.9)
        self.assertEqual(self.checker.calls.count(self.a.url), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.checker.calls.count(self.a.url), 2)

    def test_logOncePerChange(self) -> None:
        """
        A change of state is logged once, as plain text naming the server,
        its group and the last failure; failures that change nothing are
        not logged.
        """
        self.checker.results[self.a.url] = ConnectionRefusedError("Connection refused")
        with capturedLogs() as events:
            for _ in range(6):
                self.clock.advance(5)
        lines = [formatEvent(e) for e in events if e.get("log_namespace", "").startswith("cachingproxy.sites")]
        self.assertEqual(lines, ["http://10.0.0.1:8080 (group web) is down: 3 checks failed, "
                                 "last: Connection refused"])

    def test_stopService(self) -> None:
        """
        Stopping cancels the checks in flight and leaves no timer.
        """
        self.checker.results[self.a.url] = None
        self.clock.advance(0)
        self.health.stopService()
        self.assertEqual(self.checker.cancelled, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PassiveCheckTests(SynchronousTestCase):
    """
    Failures of the proxy's own requests.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.group = Group("web", servers(2), health=None,
                           passive=PassiveCheck(failures=3, window=10.0, cooldown=30.0))
        self.a, self.b = self.group.servers
        self.health = Health(self.clock, [self.group], checker=Checker())
        self.changes = Changes(self.health)
        self.health.startService()
        self.addCleanup(self.health.stopService)

    def fail(self, server: Server, times: int, every: float = 1.0) -> None:
        for _ in range(times):
            self.health.requestFinished(server, ok=False)
            self.clock.advance(every)

    def test_trip(self) -> None:
        """
        C{failures} failures within C{window} take a server out for
        C{cooldown} seconds.
        """
        self.fail(self.a, 2)
        self.assertIs(self.health.state(self.a), UP)
        self.fail(self.a, 1)
        self.assertIs(self.health.state(self.a), COOLING)
        self.assertFalse(self.health.isUp(self.a))
        self.assertTrue(self.health.isUp(self.b))

    def test_window(self) -> None:
        """
        Failures further apart than the window do not add up.
        """
        self.fail(self.a, 6, every=5.0)
        self.assertIs(self.health.state(self.a), UP)

    def test_successesDoNotReset(self) -> None:
        """
        Successes between failures do not reset the count (nginx's
        C{max_fails} within C{fail_timeout}).
        """
        for ok in (False, True, False, True, False):
            self.health.requestFinished(self.a, ok=ok)
        self.assertIs(self.health.state(self.a), COOLING)

    def test_probeWithoutActiveChecks(self) -> None:
        """
        After the cooldown the server gets requests again; a success
        brings it up, a failure cools it again.
        """
        self.fail(self.a, 3, every=0)
        self.clock.advance(29.9)
        self.assertIs(self.health.state(self.a), COOLING)
        self.clock.advance(0.1)
        self.assertIs(self.health.state(self.a), PROBING)
        self.assertTrue(self.health.isUp(self.a))
        self.health.requestFinished(self.a, ok=False)
        self.assertIs(self.health.state(self.a), COOLING)
        self.clock.advance(30)
        self.health.requestFinished(self.a, ok=True)
        self.assertIs(self.health.state(self.a), UP)
        self.assertEqual([new for _, _, new in self.changes.seen], [COOLING, PROBING, COOLING, PROBING, UP])

    def test_passiveOff(self) -> None:
        """
        A group without passive checks ignores failures.
        """
        group = Group("quiet", servers(1), passive=None)
        health = Health(self.clock, [group], checker=Checker())
        for _ in range(100):
            health.requestFinished(group.servers[0], ok=False)
        self.assertIs(health.state(group.servers[0]), UP)


class PassiveAndActiveTests(SynchronousTestCase):
    """
    A server cooled by passive checks is probed by active checks.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.checker = Checker()
        self.group = Group("web", servers(1),
                           health=HealthCheck(interval=5.0, timeout=1.0, fall=3, rise=2),
                           passive=PassiveCheck(failures=2, window=10.0, cooldown=20.0))
        self.a = self.group.servers[0]
        self.health = Health(self.clock, [self.group], checker=self.checker)
        self.health.startService()
        self.addCleanup(self.health.stopService)

    def test_probedByChecks(self) -> None:
        """
        Checks passing during the cooldown change nothing; after it, the
        server is not given requests until C{rise} checks pass.
        """
        self.clock.advance(0)
        self.health.requestFinished(self.a, ok=False)
        self.health.requestFinished(self.a, ok=False)
        self.assertIs(self.health.state(self.a), COOLING)
        self.clock.advance(20)
        self.assertIs(self.health.state(self.a), PROBING)
        self.assertFalse(self.health.isUp(self.a))
        self.clock.advance(5)
        self.assertIs(self.health.state(self.a), PROBING)
        self.clock.advance(5)
        self.assertIs(self.health.state(self.a), UP)

    def test_probeFails(self) -> None:
        """
        One failed check while probing cools the server again.
        """
        self.health.requestFinished(self.a, ok=False)
        self.health.requestFinished(self.a, ok=False)
        self.clock.advance(20)
        self.checker.results[self.a.url] = 500
        self.clock.advance(5)
        self.assertIs(self.health.state(self.a), COOLING)


class ReconfigureTests(SynchronousTestCase):
    """
    L{Health.reconfigure} keeps the state of servers that stay.
    """

    def test_keepsState(self) -> None:
        """
        A server down stays down in the new groups; a new server starts up;
        a server gone is not checked any more.
        """
        clock = Clock()
        checker = Checker()
        check = HealthCheck(interval=5.0, timeout=1.0, fall=1, rise=1)
        a, b, c = servers(3)
        health = Health(clock, [Group("g", (a, b), health=check)], checker=checker)
        health.startService()
        self.addCleanup(health.stopService)
        checker.results[a.url] = 503
        clock.advance(0)
        self.assertIs(health.state(a), DOWN)

        health.reconfigure([Group("h", (a, c), health=check)])
        self.assertIs(health.state(a), DOWN)
        self.assertIs(health.state(c), UP)
        checker.calls.clear()
        clock.advance(5)
        self.assertEqual(sorted(checker.calls), [a.url, c.url])
        self.assertIs(health.state(a), DOWN)

    def test_checksRemoved(self) -> None:
        """
        A server down by active checks comes up when its group stops
        having them: nothing else would bring it back.
        """
        clock = Clock()
        checker = Checker()
        a, = servers(1)
        health = Health(clock, [Group("g", (a,), health=HealthCheck(fall=1))], checker=checker)
        health.startService()
        self.addCleanup(health.stopService)
        checker.results[a.url] = 500
        clock.advance(0)
        self.assertIs(health.state(a), DOWN)
        health.reconfigure([Group("g", (a,))])
        self.assertIs(health.state(a), UP)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_passiveRemoved(self) -> None:
        """
        A server cooling when its group stops having passive checks is
        probed with requests at once, and a failed probe does not stick.
        """
        clock = Clock()
        a, = servers(1)
        health = Health(clock, [Group("g", (a,), passive=PassiveCheck(failures=1, cooldown=60.0))],
                        checker=Checker())
        health.startService()
        self.addCleanup(health.stopService)
        health.requestFinished(a, ok=False)
        health.reconfigure([Group("g", (a,), passive=None)])
        self.assertIs(health.state(a), PROBING)
        self.assertEqual(clock.getDelayedCalls(), [])
        health.requestFinished(a, ok=False)
        clock.advance(0)
        self.assertIs(health.state(a), PROBING)
        health.requestFinished(a, ok=True)
        self.assertIs(health.state(a), UP)

    def test_keepsCooldown(self) -> None:
        """
        A server cooling keeps cooling, and comes out on time, when the
        check settings of its group change.
        """
        clock = Clock()
        a, = servers(1)
        passive = PassiveCheck(failures=1, window=10.0, cooldown=30.0)
        health = Health(clock, [Group("g", (a,), passive=passive)], checker=Checker())
        health.startService()
        self.addCleanup(health.stopService)
        health.requestFinished(a, ok=False)
        clock.advance(10)
        health.reconfigure([Group("g", (a,), health=HealthCheck(), passive=passive)])
        self.assertIs(health.state(a), COOLING)
        clock.advance(20)
        self.assertIs(health.state(a), PROBING)


class MetricsTests(SynchronousTestCase):
    """
    L{SitesMetrics} in a registry of its own.
    """

    def test_requestsAndStates(self) -> None:
        """
        Requests, failures and latency per group and server; the state
        gauge follows L{Health}.
        """
        from prometheus_client import CollectorRegistry

        from cachingproxy.sites.metrics import SitesMetrics

        registry = CollectorRegistry()
        figures = SitesMetrics(registry)
        clock = Clock()
        group = Group("web", servers(1), passive=PassiveCheck(failures=1, window=1.0, cooldown=5.0))
        a = group.servers[0]
        health = Health(clock, [group], checker=Checker())
        figures.watch(health, [group])
        labels = {"group": "web", "server": a.url}

        figures.requestDone(group, a, ok=True, latency=0.02)
        figures.requestDone(group, a, ok=False, latency=None)
        self.assertEqual(registry.get_sample_value("cachingproxy_group_requests_total", labels), 2.0)
        self.assertEqual(registry.get_sample_value("cachingproxy_group_failures_total", labels), 1.0)
        self.assertEqual(registry.get_sample_value("cachingproxy_group_upstream_seconds_count", labels), 1.0)
        self.assertEqual(registry.get_sample_value("cachingproxy_group_server_state",
                                                   {**labels, "state": "up"}), 1.0)

        health.requestFinished(a, ok=False)
        self.assertEqual(registry.get_sample_value("cachingproxy_group_server_state",
                                                   {**labels, "state": "up"}), 0.0)
        self.assertEqual(registry.get_sample_value("cachingproxy_group_server_state",
                                                   {**labels, "state": "cooling"}), 1.0)


# Real origins on loopback.


class _Tracker:
    """
    Counts open connections and fires Deferreds when none is left, so a
    test can end without a socket open.
    """

    def __init__(self) -> None:
        self.open = 0
        self._idle: List[defer.Deferred] = []

    def track(self, protocol):
        self.open += 1
        lost = protocol.connectionLost

        def connectionLost(reason=None):
            try:
                return lost(reason)
            finally:
                self.open -= 1
                if not self.open:
                    waiters, self._idle = self._idle, []
                    for d in waiters:
                        d.callback(None)

        protocol.connectionLost = connectionLost
        return protocol

    def whenIdle(self) -> defer.Deferred:
        if not self.open:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle.append(d)
        return d


class _TrackedSite(Site):
    def __init__(self, resource, tracker: _Tracker) -> None:
        super().__init__(resource)
        self.tracker = tracker

    def buildProtocol(self, addr):
        return self.tracker.track(super().buildProtocol(addr))


class _TrackedFactory(Factory):
    def __init__(self, inner, tracker: _Tracker) -> None:
        self.inner = inner
        self.tracker = tracker

    def buildProtocol(self, addr):
        return self.tracker.track(self.inner.buildProtocol(addr))


class _TrackedEndpoint:
    def __init__(self, endpoint, tracker: _Tracker) -> None:
        self.endpoint = endpoint
        self.tracker = tracker

    def connect(self, factory):
        return self.endpoint.connect(_TrackedFactory(factory, self.tracker))


class _Endpoints:
    def __init__(self, reactor, tracker: _Tracker) -> None:
        self.reactor = reactor
        self.tracker = tracker

    def endpointForURI(self, uri):
        return _TrackedEndpoint(HostnameEndpoint(self.reactor, uri.host, uri.port), self.tracker)


class _Healthz(Resource):
    """
    Answers C{status} and records the Host of each request.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.status = 200
        self.hosts: List[bytes] = []

    def render_GET(self, request):
        self.hosts.append(request.getHeader(b"host"))
        request.setResponseCode(self.status)
        return b"ok\n"


class LoopbackTests(TestCase):
    """
    Active checks against three real origins on loopback.
    """

    timeout = 20

    @defer.inlineCallbacks
    def test_stopAndRestart(self) -> None:
        """
        An origin that stops listening is marked down within its check
        interval; once it listens again on the same port it is marked up;
        the other two stay up all along.
        """
        from twisted.internet import reactor

        tracker = _Tracker()
        resources = [_Healthz() for _ in range(3)]
        sites = [_TrackedSite(resource, tracker) for resource in resources]
        ports = [reactor.listenTCP(0, site, interface="127.0.0.1") for site in sites]
        live = list(ports)

        check = HealthCheck(path=b"/healthz", interval=0.5, timeout=0.5,
                            expect=frozenset([200]), fall=1, rise=1, host=b"health.example")
        group = Group("web", tuple(parseServerURL(f"http://127.0.0.1:{p.getHost().port}", "test")
                                   for p in ports), health=check)
        agent = Agent.usingEndpointFactory(reactor, _Endpoints(reactor, tracker),
                                           pool=HTTPConnectionPool(reactor, persistent=False))
        health = Health(reactor, [group], checker=agentChecker(reactor, agent=agent))
        seen: List[Tuple[str, ServerState]] = []
        waiting: Dict[Tuple[str, ServerState], defer.Deferred] = {}

        def changed(server, old, new):
            seen.append((server.url, new))
            d = waiting.pop((server.url, new), None)
            if d is not None:
                d.callback(reactor.seconds())

        def waitFor(server, state) -> defer.Deferred:
            d = defer.Deferred()
            waiting[(server.url, state)] = d
            return d

        health.subscribe(changed)

        @defer.inlineCallbacks
        def cleanUp():
            health.stopService()
            yield tracker.whenIdle()
            for port in live:
                yield port.stopListening()
            yield tracker.whenIdle()

        self.addCleanup(cleanUp)
        health.startService()
        stopped = group.servers[1]

        number = ports[1].getHost().port
        down = waitFor(stopped, DOWN)
        yield ports[1].stopListening()
        live.remove(ports[1])
        since = reactor.seconds()
        when = yield down
        # Refused at once: the next check, at most an interval away, sees
        # it (with a margin for a busy machine).
        self.assertLess(when - since, check.interval + 0.5)
        self.assertFalse(health.isUp(stopped))

        up = waitFor(stopped, UP)
        again = reactor.listenTCP(number, sites[1], interface="127.0.0.1")
        live.append(again)
        yield up
        self.assertTrue(all(health.isUp(s) for s in group.servers))
        self.assertEqual(seen, [(stopped.url, DOWN), (stopped.url, UP)])

        # A status not expected marks a server down as well.
        failing = group.servers[2]
        down = waitFor(failing, DOWN)
        resources[2].status = 503
        yield down
        up = waitFor(failing, UP)
        resources[2].status = 200
        yield up
        self.assertEqual(seen[2:], [(failing.url, DOWN), (failing.url, UP)])
        self.assertEqual(set(resources[0].hosts), {b"health.example"})
