"""
L{cachingproxy.cache.layer.CacheLayer} on its own: a fake exchange that
provides L{ICacheExchange} and records what its client would get, a
L{MemoryStore}, a L{Clock}; the upstream is whatever handler the layer
hands to C{forward}, driven by the test.
"""

import shutil
import tempfile
from typing import List, Optional

from twisted.internet.task import Clock, Cooperator
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cachingproxy.cache import policy
from cachingproxy.cache.layer import CacheLayer, CacheSettings
from cachingproxy.cache.disk import DiskStore
from cachingproxy.cache.memory import MemoryStore
from cachingproxy.errors import MethodNotAllowed, ProxyError
from cachingproxy.http.headers import Headers
from cachingproxy.http.message import RequestHead, ResponseHead
from cachingproxy.proxy.exchange import Exchange
from cachingproxy.proxy.interfaces import ICacheExchange
from cachingproxy.proxy.states import ExchangeState
from cachingproxy.proxy.upstream import Origin

ORIGIN = Origin(b"http", "origin.example", 80)


@implementer(ICacheExchange)
class FakeExchange:
    """
    One client request; records the response its client gets, and the
    requests the layer forwards.
    """

    hasBody = False
    upstream = None
    producer = None
    onClientGone = None
    cacheOrigin = None
    cacheHead = None
    cacheEntries = ()
    cacheStamp = None
    cacheResult = "-"

    def __init__(self, method: bytes = b"GET", target: bytes = b"/a", fields=(),
                 admin: bool = False, plain: bool = False) -> None:
        self.head = RequestHead(method, target, (1, 1),
                                Headers([(b"Host", b"origin.example")] + list(fields)))
        self.state = ExchangeState.FORWARDING
        self.admin = admin
        self.plain = plain
        #: C{(origin, head, handler)} for each C{forward}
        self.forwarded: List[tuple] = []
        self.status: Optional[int] = None
        self.fields: dict = {}
        self.body = b""
        self.wire: Optional[bytes] = None
        self.error: Optional[ProxyError] = None
        self.ended = False

    # what the layer reads

    def upstreamHead(self) -> RequestHead:
        return RequestHead(self.head.method, self.head.target, (1, 1), self.head.headers.copy())

    def cacheTarget(self, origin):
        return (origin.scheme, origin.authority())

    def fromAdmin(self) -> bool:
        return self.admin

    def plainKeepAlive(self) -> bool:
        return self.plain and self.state is ExchangeState.FORWARDING

    def sharedFields(self, fields):
        return list(fields)

    def hotFacts(self):
        return b"test", None

    # what the layer calls

    def forward(self, origin, head, handler) -> None:
        self.forwarded.append((origin, head, handler))

    def _answered(self, status: int, fields) -> None:
        assert self.state is ExchangeState.FORWARDING, self.state
        self.state = ExchangeState.RESPONDING
        self.status = status
        self.fields = {lower: value for lower, _, value in fields}

    def serveBytes(self, status, data, bodyLength) -> None:
        self._answered(status, [])
        self.wire = data
        self.body = data[len(data) - bodyLength:]
        self._end()

    def respondWithBody(self, status, reason, fields, body, length) -> None:
        self._answered(status, fields)
        if body is not None and not isinstance(body, bytes):
            reader, body = body, body.read(length)
            reader.close()
        self.body = body or b""
        self._end()

    def respondError(self, error) -> None:
        self._answered(error.status, [])
        self.error = error
        self._end()

    def responseInterim(self, head) -> None:
        pass

    def responseHead(self, head, cacheFields=()) -> None:
        self._answered(head.status, [*head.headers.lowered(), *cacheFields])

    def responseBody(self, data) -> None:
        self.body += data

    def responseEnd(self) -> None:
        self._end()

    def responseFailed(self, reason, receivedAnything) -> None:
        self.error = reason.value
        self._end()

    def requestBodyUnwanted(self) -> None:
        pass

    def _end(self) -> None:
        self.state = ExchangeState.DONE
        self.ended = True


def respond(exchange: FakeExchange, status: int = 200, fields=(), body: bytes = b"hello",
            index: int = -1) -> None:
    """
    Answer the request C{exchange} forwarded (the last one, by default) as
    the origin would.
    """
    _, _, handler = exchange.forwarded[index]
    handler.responseHead(ResponseHead(status, b"", (1, 1), Headers(
        list(fields) + [(b"Content-Length", b"%d" % len(body))])))
    if body:
        handler.responseBody(body)
    handler.responseEnd()


KEY = policy.primaryKey(b"http", b"origin.example", b"/a")


class LayerTests(SynchronousTestCase):
    """
    What a client gets from the cache layer, and what it stores.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = MemoryStore(1 << 20, 1 << 16)
        self.layer = CacheLayer(self.store, self.clock, None, CacheSettings())

    def request(self, *args, **kwargs) -> FakeExchange:
        exchange = FakeExchange(*args, **kwargs)
        self.layer.handle(exchange, ORIGIN, exchange.head.target)
        return exchange

    def fill(self, fields=((b"Cache-Control", b"max-age=60"),), body: bytes = b"hello"):
        """
        Store a response for C{/a} through a miss.
        """
        miss = self.request()
        respond(miss, fields=fields, body=body)
        return miss

    def test_interfaces(self) -> None:
        """
        The fake and the real L{Exchange} both provide L{ICacheExchange}.
        """
        assert verifyObject(ICacheExchange, FakeExchange())
        protocol = type("P", (), {})()
        protocol.factory = type("F", (), {"reactor": self.clock})()
        assert verifyObject(ICacheExchange, Exchange(protocol, RequestHead(b"GET", b"/"), True))

    def test_missStored(self) -> None:
        """
        A miss is forwarded; the response reaches the client and is stored.
        """
        miss = self.request()
        assert len(miss.forwarded) == 1
        assert miss.status is None
        respond(miss, fields=[(b"Cache-Control", b"max-age=60")])
        assert (miss.status, miss.body, miss.ended) == (200, b"hello", True)
        assert miss.cacheResult == "MISS"
        [entry] = self.store.entries(KEY)
        assert entry.status == 200
        assert self.layer.stats.misses == 1

    def test_hit(self) -> None:
        """
        A fresh stored response is served without asking the origin, with
        its Age.
        """
        self.fill()
        self.clock.advance(5)
        hit = self.request()
        assert hit.forwarded == []
        assert (hit.status, hit.body, hit.cacheResult) == (200, b"hello", "HIT")
        assert hit.fields[b"age"] == b"5"
        assert self.layer.stats.hits == 1

    def test_hotHit(self) -> None:
        """
        A plain GET hit served once the slow way is served next in wire
        form, with the same body; a change to the stored entry ends that.
        """
        self.fill()
        first = self.request(plain=True)
        assert first.wire is None and first.body == b"hello"
        second = self.request(plain=True)
        assert second.wire is not None and second.wire.startswith(b"HTTP/1.1 200 OK\r\n")
        assert second.body == b"hello"
        self.store.remove(KEY)
        third = self.request(plain=True)
        assert third.wire is None and len(third.forwarded) == 1

    def test_notStored(self) -> None:
        """
        A response the policy does not allow to store is passed on and
        not stored; the next request goes upstream too.
        """
        self.fill(fields=[(b"Cache-Control", b"no-store")])
        assert self.store.entries(KEY) == []
        again = self.request()
        assert len(again.forwarded) == 1

    def test_knownPass(self) -> None:
        """
        A plain GET whose key has nothing stored and whose response was
        refused for its Cache-Control (no-store) makes the next plain GETs
        of the key go upstream without looking in the store (only its
        stamp is read), with the same Cache-Status; a response that says
        something else goes the usual way of a miss (stored), and so does
        a request after something was stored for the key.
        """
        asked = []
        store = self.store

        class Watched:
            def __getattr__(self, name):
                if name in ("stamp", "entries"):
                    asked.append(name)
                return getattr(store, name)

        self.layer.store = Watched()
        first = self.request(plain=True)
        respond(first, fields=[(b"Cache-Control", b"no-store")])
        assert asked == ["stamp", "entries"]
        asked.clear()
        second = self.request(plain=True)
        # only the stamp, to know that nothing was stored meanwhile
        assert len(second.forwarded) == 1 and asked == ["stamp"]
        respond(second, fields=[(b"Cache-Control", b"no-store")], body=b"again")
        assert (second.status, second.body, second.cacheResult) == (200, b"again", "MISS")
        assert second.fields[b"cache-status"] == first.fields[b"cache-status"]
        assert b"no-store" in second.fields[b"cache-status"]
        assert second.fields[b"x-cache"] == b"MISS"

        # Not plain (the client's own Cache-Control): looked up as usual.
        asked.clear()
        self.request(fields=[(b"Cache-Control", b"max-age=0")])
        assert asked == ["entries"]

        # The origin's answer changed: it goes the usual way of a miss
        # (stored), and the key is forgotten.
        asked.clear()
        changed = self.request(plain=True)
        assert asked == ["stamp"]
        respond(changed, fields=[(b"Cache-Control", b"max-age=60")], body=b"new")
        assert (changed.status, changed.body) == (200, b"new")
        assert b"stored" in changed.fields[b"cache-status"]
        [entry] = store.entries(KEY)
        assert entry.status == 200
        asked.clear()
        hit = self.request(plain=True)
        assert hit.forwarded == [] and hit.body == b"new"
        assert "stamp" in asked

        # Stored by another process meanwhile (the stamp changed): looked up.
        self.store.remove(KEY)
        first = self.request(plain=True)
        respond(first, fields=[(b"Cache-Control", b"no-store")])
        assert KEY in self.layer._passing
        self.fill()
        asked.clear()
        found = self.request(plain=True)
        assert found.forwarded == [] and found.body == b"hello"

    def test_knownPassDownstreamFields(self) -> None:
        """
        A remembered pass compares the response's Cache-Control lines
        joined, as the first response's were, and hides the fields not
        meant for clients (purge tags) as the usual miss path does; a
        Cache-Control that differs in one of its lines is a changed
        answer.
        """
        self.layer.tagField = b"surrogate-key"
        self.layer.hiddenFields = self.layer.hiddenFields | {b"surrogate-key"}
        fields = [(b"Cache-Control", b"no-store"), (b"Surrogate-Key", b"t1"),
                  (b"Cache-Control", b"x=1"), (b"X-Other", b"kept")]
        first = self.request(plain=True)
        respond(first, fields=fields)
        passing = self.layer._passing[KEY]
        assert passing.cacheControl == b"no-store, x=1"
        for _ in range(2):
            again = self.request(plain=True)
            [(_, _, handler)] = again.forwarded
            assert handler.__class__.__name__ == "_KnownPass"
            respond(again, fields=fields)
            assert again.fields == first.fields
            assert b"surrogate-key" not in again.fields
            assert again.fields[b"x-other"] == b"kept"
            assert self.layer._passing[KEY] is passing
        # Nothing to hide.
        plain = self.request(plain=True)
        respond(plain, fields=[fields[0], fields[2]])
        assert plain.fields[b"x-cache"] == b"MISS"
        assert self.layer._passing[KEY] is passing
        # The second line changed: the usual miss path, the key forgotten.
        changed = self.request(plain=True)
        respond(changed, fields=[(b"Cache-Control", b"no-store"), (b"Cache-Control", b"x=2")])
        assert self.layer._passing.get(KEY) is not passing

    def test_knownPassTargetedField(self) -> None:
        """
        A targeted field meant for this cache (RFC 9213) decides instead
        of Cache-Control: a response carrying one is not remembered as a
        pass, and one that comes with a remembered pass's answer makes it
        a changed answer, stored as the field allows and without the
        field downstream.
        """
        targeted = (b"CachingProxy-Cache-Control", b"max-age=60")
        first = self.request(plain=True)
        respond(first, fields=[(b"Cache-Control", b"no-store"),
                               (b"CachingProxy-Cache-Control", b"no-store")])
        assert KEY not in self.layer._passing
        assert self.store.entries(KEY) == []
        second = self.request(plain=True)
        respond(second, fields=[(b"Cache-Control", b"no-store")])
        assert KEY in self.layer._passing
        third = self.request(plain=True)
        [(_, _, handler)] = third.forwarded
        assert handler.__class__.__name__ == "_KnownPass"
        respond(third, fields=[(b"Cache-Control", b"no-store"), targeted], body=b"new")
        assert b"stored" in third.fields[b"cache-status"]
        assert b"cachingproxy-cache-control" not in third.fields
        assert KEY not in self.layer._passing
        [entry] = self.store.entries(KEY)
        hit = self.request(plain=True)
        assert hit.forwarded == [] and hit.body == b"new"

    def test_knownPassChangedStoredAsSent(self) -> None:
        """
        When the answer to a remembered pass turns cacheable, what is stored
        is the response as the origin sent it, its purge tags included (they
        are hidden from the client only), so that a purge by tag finds it.
        """
        self.layer.tagField = b"surrogate-key"
        self.layer.hiddenFields = self.layer.hiddenFields | {b"surrogate-key"}
        first = self.request(plain=True)
        respond(first, fields=[(b"Cache-Control", b"no-store"), (b"Surrogate-Key", b"t1")])
        assert KEY in self.layer._passing
        changed = self.request(plain=True)
        respond(changed, fields=[(b"Cache-Control", b"max-age=60"), (b"Surrogate-Key", b"t1")],
                body=b"new")
        assert b"stored" in changed.fields[b"cache-status"]
        assert b"surrogate-key" not in changed.fields
        [entry] = self.store.entries(KEY)
        assert entry.responseHeaders.get(b"surrogate-key") == b"t1"

    def test_knownPassFailed(self) -> None:
        """
        An origin failure before the head of a remembered pass is told to
        the client as for any miss (502); the key stays remembered.
        """
        from twisted.internet.error import ConnectionRefusedError
        from twisted.python.failure import Failure

        first = self.request(plain=True)
        respond(first, fields=[(b"Cache-Control", b"no-store")])
        failed = self.request(plain=True)
        [(_, _, handler)] = failed.forwarded
        handler.responseFailed(Failure(ConnectionRefusedError()), False)
        assert failed.status == 502 and failed.ended
        assert KEY in self.layer._passing

    def test_knownPassOnlyForCacheControl(self) -> None:
        """
        A refusal that the response's status and Cache-Control do not
        decide alone (no Cache-Control, must-understand) is not
        remembered: the next plain GET is looked up.
        """
        for fields in ([(b"Cache-Control", b"no-store, must-understand")],
                       [(b"Content-Range", b"bytes 0-4/10")]):
            layer = CacheLayer(MemoryStore(1 << 20, 1 << 16), self.clock, None, CacheSettings())
            first = FakeExchange(plain=True)
            layer.handle(first, ORIGIN, b"/a")
            respond(first, status=418, fields=fields)
            assert layer.store.entries(KEY) == [], fields
            second = FakeExchange(plain=True)
            layer.handle(second, ORIGIN, b"/a")
            assert second.cacheStamp is not None, fields

    def test_stampRead(self) -> None:
        """
        Before its lookup, a plain GET reads the store's stamp for its key
        (what the hot path checks later); any other request does not.
        """
        assert self.request(plain=True).cacheStamp == self.store.stamp(KEY)
        assert self.request(plain=False).cacheStamp is None

    def test_conditionalFromClient(self) -> None:
        """
        A client's If-None-Match naming the stored ETag is answered 304
        from the cache, without a body (RFC 9111 section 4.3.2).
        """
        self.fill(fields=[(b"Cache-Control", b"max-age=60"), (b"ETag", b'"v1"')])
        conditional = self.request(fields=[(b"If-None-Match", b'"v1"')])
        assert conditional.forwarded == []
        assert (conditional.status, conditional.body) == (304, b"")
        assert conditional.fields[b"etag"] == b'"v1"'

    def test_revalidation(self) -> None:
        """
        A stale stored response with an ETag is validated upstream with
        If-None-Match; a 304 serves the stored body and freshens it.
        """
        self.fill(fields=[(b"Cache-Control", b"max-age=10"), (b"ETag", b'"v1"')])
        self.clock.advance(20)
        stale = self.request()
        [(_, head, _)] = stale.forwarded
        assert head.headers.get(b"if-none-match") == b'"v1"'
        respond(stale, status=304, fields=[(b"Cache-Control", b"max-age=10"),
                                           (b"ETag", b'"v1"')], body=b"")
        assert (stale.status, stale.body) == (200, b"hello")
        assert self.layer.stats.revalidated == 1
        fresh = self.request()
        assert fresh.forwarded == [] and fresh.body == b"hello"

    def test_collapsedWaiters(self) -> None:
        """
        Concurrent misses for one key make one upstream request; the
        waiters get the same response as it streams.
        """
        leader = self.request()
        waiters = [self.request() for _ in range(3)]
        assert [len(w.forwarded) for w in waiters] == [0, 0, 0]
        assert self.layer.stats.collapsed == 3
        respond(leader, fields=[(b"Cache-Control", b"max-age=60")])
        for waiter in waiters:
            assert (waiter.status, waiter.body, waiter.ended) == (200, b"hello", True)
            assert b"collapsed" in waiter.fields[b"cache-status"]
        assert len(self.store.entries(KEY)) == 1

    def test_collapsedNotStorable(self) -> None:
        """
        When the shared response turns out not storable, each waiter goes
        upstream on its own.
        """
        leader = self.request()
        waiter = self.request()
        respond(leader, fields=[(b"Cache-Control", b"private")])
        assert len(waiter.forwarded) == 1
        respond(waiter, fields=[(b"Cache-Control", b"private")], body=b"own")
        assert (waiter.status, waiter.body) == (200, b"own")

    def test_purge(self) -> None:
        """
        PURGE from an admin client removes what is stored for the URI and
        says how many entries went.
        """
        self.fill()
        purge = self.request(b"PURGE", admin=True)
        assert (purge.status, purge.body) == (200, b"purged 1\n")
        assert self.store.entries(KEY) == []
        again = self.request(b"PURGE", admin=True)
        assert again.status == 404

    def test_purgePrefix(self) -> None:
        """
        PURGE of a URI ending in C{*} removes every URI it starts.
        """
        for path in (b"/p/1", b"/p/2", b"/q"):
            respond(self.request(target=path), fields=[(b"Cache-Control", b"max-age=60")])
        purge = self.request(b"PURGE", target=b"/p/*", admin=True)
        assert (purge.status, purge.body) == (200, b"purged 2\n")
        assert self.request(target=b"/q").forwarded == []

    def test_purgePrefixInSteps(self) -> None:
        """
        A prefix PURGE on the disk store walks the store a key folder at a
        time: other requests are answered meanwhile, and the PURGE when the
        walk is done.
        """
        # One step of the walk a second on this clock.
        steps = Clock()
        cooperator = Cooperator(terminationPredicateFactory=lambda: lambda: True,
                                scheduler=lambda step: steps.callLater(1, step))
        folder = tempfile.mkdtemp(prefix="cachingproxy-layer-")
        self.addCleanup(shutil.rmtree, folder, True)
        self.store = DiskStore(folder, cooperator=cooperator)
        self.layer = CacheLayer(self.store, self.clock, None, CacheSettings())
        for n in range(40):
            respond(self.request(target=b"/p/%d" % n), fields=[(b"Cache-Control", b"max-age=60")])
        respond(self.request(target=b"/q"), fields=[(b"Cache-Control", b"max-age=60")])
        purge = self.request(b"PURGE", target=b"/p/*", admin=True)
        steps.advance(1)
        assert purge.status is None
        hit = self.request(target=b"/q")
        assert (hit.status, hit.body, hit.forwarded) == (200, b"hello", [])
        assert purge.status is None
        for _ in range(100):
            steps.advance(1)
        assert (purge.status, purge.body) == (200, b"purged 40\n")
        assert len(self.request(target=b"/p/1").forwarded) == 1
        assert self.request(target=b"/q").forwarded == []

    def test_purgeNotAdmin(self) -> None:
        """
        PURGE from any other client is refused with 405 and removes
        nothing.
        """
        self.fill()
        purge = self.request(b"PURGE")
        assert isinstance(purge.error, MethodNotAllowed)
        assert len(self.store.entries(KEY)) == 1

    def test_proxyErrorHeaders(self) -> None:
        """
        A L{ProxyError} has no extra fields unless it sets some.
        """
        assert ProxyError().headers == ()
