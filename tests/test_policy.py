"""
Tests for L{cachingproxy.cache.policy}: RFC 9111 for a shared cache, one
TestCase per topic, one test per rule; each docstring names its section
(RFC 9111 unless another document is named).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from cachingproxy.cache import policy
from cachingproxy.http.headers import Headers, formatHTTPDate, parseHTTPDate
from cachingproxy.http.message import RequestHead, ResponseHead
from cachingproxy.http.structured import (
    DIRECTIVE_TYPES,
    INTEGER,
    TRUE,
    TRUE_OR_STRING,
)
from cachingproxy.cache.policy import (
    DEFAULT_OPTIONS,
    CacheOptions,
    Forward,
    Fresh,
    Freshened,
    Miss,
    OnlyIfCachedMiss,
    Pass,
    Refetch,
    RefreshRule,
    Revalidate,
    Stale,
    StaleWhileRevalidate,
    StoredEntry,
)

#: A whole second, as HTTP dates have no fractions.
T0 = 1_700_000_000.0

Field = Tuple[bytes, bytes]


def headers(*fields: Field) -> Headers:
    return Headers(list(fields))


def date(when: float) -> bytes:
    return formatHTTPDate(when)


def request(*fields: Field, method: bytes = b"GET",
            target: bytes = b"/") -> RequestHead:
    return RequestHead(method, target, headers=headers(
        (b"Host", b"example.com"), *fields))


def response(*fields: Field, status: int = 200) -> ResponseHead:
    return ResponseHead(status, headers=headers(*fields))


def entry(*fields: Field, status: int = 200, requestFields: Tuple[Field, ...] = (),
          requestTime: float = T0, responseTime: Optional[float] = None,
          bodyLength: Optional[int] = None, withDate: bool = True,
          method: bytes = b"GET") -> StoredEntry:
    """
    A stored response received at C{responseTime} (default C{requestTime}),
    with a Date of that time unless C{withDate} is false or one is given.
    """
    if responseTime is None:
        responseTime = requestTime
    stored = headers(*fields)
    if withDate and b"date" not in stored:
        stored.add(b"Date", date(responseTime))
    return StoredEntry(
        key=b"http://example.com/", requestMethod=method,
        requestHeaders=headers(*requestFields), status=status,
        responseHeaders=stored, requestTime=requestTime,
        responseTime=responseTime, bodyLength=bodyLength,
    )


class TargetedCacheControlTests(SynchronousTestCase):
    """
    RFC 9213: targeted cache-control fields.
    """

    def test_replacesCacheControl(self) -> None:
        """
        RFC 9213 section 2.2: the first valid field on the target list
        replaces Cache-Control.
        """
        fields = headers((b"Cache-Control", b"max-age=10"),
                         (b"CDN-Cache-Control", b"max-age=600"))
        parsed, name = policy.effectiveCacheControl(fields)
        self.assertEqual((parsed.maxAge, name), (600, b"cdn-cache-control"))
        self.assertEqual(policy.freshnessLifetime(
            ResponseHead(200, headers=fields)), 600)

    def test_priorityOrder(self) -> None:
        """
        RFC 9213 section 2.2: the target list is in priority order.
        """
        parsed, name = policy.effectiveCacheControl(headers(
            (b"CDN-Cache-Control", b"max-age=600"),
            (b"Cachingproxy-Cache-Control", b"max-age=60")))
        self.assertEqual((parsed.maxAge, name),
                         (60, b"cachingproxy-cache-control"))

    def test_invalidFallsBack(self) -> None:
        """
        RFC 9213 section 2.1: a field that does not parse as a Structured
        Fields Dictionary is ignored, falling back to Cache-Control.
        """
        for bad in (b"max-age=60,", b"Max-Age=60", b"max-age=60 public",
                    b'no-cache="unterminated', b"max-age=1.2345",
                    b"max-age=60,,public", b"max-age=60;", b"public;",
                    b"max-age=1234567890123456", b"max-age=60, \xe9t\xe9",
                    b'x="tab\tinside"', b"max-age = 60"):
            parsed, name = policy.effectiveCacheControl(headers(
                (b"Cache-Control", b"max-age=10"),
                (b"CDN-Cache-Control", bad)))
            self.assertEqual((parsed.maxAge, name), (10, None), bad)

    def test_emptyFallsBack(self) -> None:
        """
        RFC 9213 section 2.2: an empty targeted field is ignored.
        """
        parsed, name = policy.effectiveCacheControl(headers(
            (b"Cache-Control", b"max-age=10"), (b"CDN-Cache-Control", b"")))
        self.assertEqual((parsed.maxAge, name), (10, None))

    def test_validWithoutKnownDirectives(self) -> None:
        """
        RFC 9213 sections 2.2 and 3.1: a valid, non-empty field is used even
        when it holds no directive this cache knows (C{none}, the RFC's
        example, or an extension set to false): Cache-Control's no-store
        does not apply.
        """
        for value in (b"none", b"x-ext=?0"):
            parsed, name = policy.effectiveCacheControl(headers(
                (b"Cache-Control", b"no-store"), (b"CDN-Cache-Control", value)))
            self.assertEqual((parsed.noStore, name),
                             (False, b"cdn-cache-control"), value)

    def test_expiresIgnored(self) -> None:
        """
        RFC 9213 section 2.2: with a targeted field in use, Expires is
        ignored too.
        """
        fields = headers((b"Date", date(T0)),
                         (b"Expires", date(T0 + 3600)),
                         (b"CDN-Cache-Control", b"must-revalidate"))
        self.assertEqual(
            policy.freshnessLifetime(ResponseHead(302, headers=fields)), 0)

    def test_notOnTargetList(self) -> None:
        """
        RFC 9213 section 2.2: a targeted field not on this cache's list
        does not change its behaviour.
        """
        options = CacheOptions(targetedFields=(b"cachingproxy-cache-control",))
        parsed, name = policy.effectiveCacheControl(headers(
            (b"Cache-Control", b"max-age=10"),
            (b"CDN-Cache-Control", b"max-age=600")), options)
        self.assertEqual((parsed.maxAge, name), (10, None))

    def test_structuredValues(self) -> None:
        """
        RFC 9213 section 2.1: strings carry field lists, C{?0} leaves an
        extension directive out, parameters are ignored.
        """
        parsed, _ = policy.effectiveCacheControl(headers((
            b"CDN-Cache-Control",
            b'no-cache="set-cookie", x-ext=?0, max-age=60;foo=bar, '
            b"public=?1, private=\"authorization\"")))
        self.assertEqual(parsed.noCacheFields, frozenset([b"set-cookie"]))
        self.assertEqual(parsed.privateFields, frozenset([b"authorization"]))
        self.assertNotIn(b"x-ext", parsed)
        self.assertEqual(parsed.maxAge, 60)
        self.assertTrue(parsed.public)
        self.assertFalse(parsed.noCache)

    def test_wrongTypeFallsBack(self) -> None:
        """
        RFC 9213 section 2.1: a known directive whose value is not of the
        type RFC 9111 section 5.2.2 implies (an Integer for delta-seconds,
        Boolean true for a directive without argument, true or a String of
        field names for no-cache and private) makes the whole field
        ignored, in the proxy's own field as in CDN-Cache-Control: the
        cache falls back to Cache-Control.
        """
        anyItem = [b'"600"', b"1.5", b"tok", b":aGk=:", b"(a b)",
                   b"@1659578233", b'%"x"']
        wrongValues = {
            INTEGER: anyItem + [b"?1", b"?0", b"-1", b"60.0"],
            TRUE: anyItem + [b"1", b"?0"],
            TRUE_OR_STRING: [b"1", b"?0", b"1.5", b"set-cookie", b":aGk=:",
                             b'("set-cookie" "age")', b"@1659578233",
                             b'%"set-cookie"'],
        }
        rightValues = {
            INTEGER: [b"=600", b"=0", b"=600;p=1"],
            TRUE: [b"", b"=?1", b";p=1"],
            TRUE_OR_STRING: [b"", b"=?1", b'="set-cookie"', b'="a, b"'],
        }
        self.assertEqual(set(DIRECTIVE_TYPES), {
            b"max-age", b"s-maxage", b"stale-while-revalidate",
            b"stale-if-error", b"no-store", b"no-transform",
            b"must-revalidate", b"proxy-revalidate", b"must-understand",
            b"public", b"immutable", b"no-cache", b"private"})
        wrong = []
        for field in (b"CDN-Cache-Control", b"Cachingproxy-Cache-Control"):
            for directive, kind in DIRECTIVE_TYPES.items():
                for value in wrongValues[kind]:
                    member = directive + b"=" + value
                    parsed, name = policy.effectiveCacheControl(headers(
                        (b"Cache-Control", b"max-age=10"), (field, member)))
                    if (parsed.maxAge, name) != (10, None):
                        wrong.append((field, member, "used"))
                for value in rightValues[kind]:
                    member = directive + value
                    _, name = policy.effectiveCacheControl(headers(
                        (b"Cache-Control", b"max-age=10"), (field, member)))
                    if name != field.lower():
                        wrong.append((field, member, "ignored"))
        self.assertEqual(wrong, [])

    def test_wrongTypeAmongValid(self) -> None:
        """
        RFC 9213 section 2.1: one wrongly typed directive makes the whole
        field ignored, valid members included; the next field on the
        target list is used.
        """
        parsed, name = policy.effectiveCacheControl(headers(
            (b"Cache-Control", b"no-store"),
            (b"Cachingproxy-Cache-Control", b"public, max-age=1.5"),
            (b"CDN-Cache-Control", b"max-age=600")))
        self.assertEqual((parsed.maxAge, parsed.public, name),
                         (600, False, b"cdn-cache-control"))
        parsed, name = policy.effectiveCacheControl(headers(
            (b"Cache-Control", b"no-store"),
            (b"CDN-Cache-Control", b'max-age=600, private=?0')))
        self.assertEqual((parsed.maxAge, parsed.noStore, name),
                         (None, True, None))

    def test_extensionsAnyType(self) -> None:
        """
        RFC 9213 section 2.1: extension directives may have any type; the
        field stays valid and their values are kept as arguments.
        """
        parsed, name = policy.effectiveCacheControl(headers((
            b"CDN-Cache-Control",
            b'max-age=60, x-a="s", x-b=tok, x-c=1.5, x-d=(1 2), x-e=:aGk=:, '
            b"x-f=7, x-g")))
        self.assertEqual(name, b"cdn-cache-control")
        self.assertEqual(
            [(n, parsed.get(n)) for n in (b"x-a", b"x-b", b"x-c", b"x-d",
                                          b"x-e", b"x-f", b"x-g")],
            [(b"x-a", b"s"), (b"x-b", b"tok"), (b"x-c", b"1.5"),
             (b"x-d", b""), (b"x-e", b":aGk=:"), (b"x-f", b"7"),
             (b"x-g", None)])
        self.assertIn(b"x-g", parsed)

    def test_noStoreInTargetedField(self) -> None:
        """
        RFC 9213 section 2.2: no-store in the targeted field forbids
        storing although Cache-Control allows it.
        """
        allowed, _ = policy.mayStore(request(), response(
            (b"Cache-Control", b"public, max-age=60"),
            (b"CDN-Cache-Control", b"no-store")))
        self.assertFalse(allowed)

    def test_stripOnlyOwnField(self) -> None:
        """
        RFC 9213 sections 2.2 and 3: this cache's own field is consumed;
        CDN-Cache-Control is passed on unless configured.
        """
        self.assertEqual(policy.targetedFieldsToStrip(),
                         frozenset([b"cachingproxy-cache-control"]))
        options = CacheOptions(consumedTargetedFields=frozenset(
            [b"Cachingproxy-Cache-Control", b"CDN-Cache-Control"]))
        self.assertIn(b"cdn-cache-control", policy.targetedFieldsToStrip(options))

    def test_downstreamStripFields(self) -> None:
        """
        Section 5.2.2.4: fields named by a qualified no-cache are not sent
        without revalidation; after it, they are.
        """
        fields = headers((b"Cache-Control", b'max-age=60, no-cache="Set-Cookie"'))
        self.assertEqual(
            policy.downstreamStripFields(fields),
            frozenset([b"set-cookie", b"cachingproxy-cache-control"]))
        self.assertEqual(policy.downstreamStripFields(fields, validated=True),
                         frozenset([b"cachingproxy-cache-control"]))


class OptionsTests(SynchronousTestCase):
    """
    L{CacheOptions}: only a shared cache, sane values.
    """

    def test_defaults(self) -> None:
        """
        Section 4.2.2: the defaults are a 10% heuristic capped at a day, no
        stale serving beyond what responses allow.
        """
        self.assertEqual(
            (DEFAULT_OPTIONS.shared, DEFAULT_OPTIONS.heuristicFraction,
             DEFAULT_OPTIONS.maxHeuristic,
             DEFAULT_OPTIONS.defaultStaleWhileRevalidate,
             DEFAULT_OPTIONS.defaultStaleIfError),
            (True, 0.1, 86400.0, 0.0, 0.0))

    def test_privateCacheRefused(self) -> None:
        """
        Section 1: only shared-cache rules are implemented.
        """
        self.assertRaises(ValueError, CacheOptions, shared=False)

    def test_invalidValues(self) -> None:
        """
        Negative durations and HEAD as a storing method are refused
        (section 4.3.5).
        """
        self.assertRaises(ValueError, CacheOptions, maxHeuristic=-1)
        self.assertRaises(ValueError, CacheOptions, defaultStaleIfError=-1)
        self.assertRaises(ValueError, CacheOptions,
                          cacheableMethods=frozenset([b"GET", b"HEAD"]))


#: A package in a Debian repository, as a cache key.
DEB = b"http://mirror.example/debian/pool/main/h/hello/hello_2.10-3_amd64.deb"

DAY = 86400.0


class RefreshRuleTests(SynchronousTestCase):
    """
    L{RefreshRule}: the operator's heuristic (section 4.2.2), in the spirit
    of Squid's refresh_pattern, one test per field.
    """

    def lifetime(self, *fields: Field, uri: bytes = DEB, status: int = 200,
                 rules: Tuple[RefreshRule, ...] = ()) -> float:
        return policy.freshnessLifetime(
            response(*fields, status=status), CacheOptions(refreshRules=rules),
            responseTime=T0, uri=uri)

    def test_minimumWithoutLastModified(self) -> None:
        """
        Section 4.2.2: a matching rule's minimum is the heuristic lifetime
        of a response with no explicit freshness and no Last-Modified, and
        makes it storable without a validator (section 3).
        """
        rules = (RefreshRule(r"\.deb$", minimum=DAY, maximum=DAY),)
        self.assertEqual(self.lifetime(rules=rules), DAY)
        self.assertEqual(self.lifetime(), 0)
        allowed, reason = policy.mayStore(
            request(target=b"/debian/pool/main/h/hello/hello_2.10-3_amd64.deb"),
            response(), CacheOptions(refreshRules=rules), DEB)
        self.assertTrue(allowed, reason)
        self.assertFalse(policy.mayStore(request(), response(),
                                         CacheOptions(refreshRules=rules), DEB + b".asc")[0])

    def test_uriFromRequest(self) -> None:
        """
        Section 4.2.2: without a key, L{policy.mayStore} matches the rules
        against the request's target URI (RFC 9110 section 7.1).
        """
        rules = (RefreshRule(r"^http://example\.com/pool/", minimum=DAY, maximum=DAY),)
        options = CacheOptions(refreshRules=rules)
        self.assertTrue(policy.mayStore(request(target=b"/pool/a.deb"), response(), options)[0])
        self.assertFalse(policy.mayStore(request(target=b"/dists/InRelease"), response(),
                                         options)[0])

    def test_pattern(self) -> None:
        """
        Section 4.2.2: the pattern is searched for anywhere in the URI and
        is case-sensitive by default; C{ignoreCase} is Squid's C{-i}.
        """
        rule = RefreshRule(r"/pool/", minimum=60, maximum=60)
        self.assertEqual(self.lifetime(rules=(rule,)), 60)
        upper = RefreshRule(r"\.DEB$", minimum=60, maximum=60)
        self.assertEqual(self.lifetime(rules=(upper,)), 0)
        insensitive = RefreshRule(r"\.DEB$", minimum=60, maximum=60, ignoreCase=True)
        self.assertEqual(self.lifetime(rules=(insensitive,)), 60)

    def test_percentOfLastModified(self) -> None:
        """
        Section 4.2.2: with Last-Modified, the rule's percentage of the
        time between it and Date, instead of the default 10%.
        """
        rule = RefreshRule(r"\.deb$", percent=50, maximum=DAY)
        fields = ((b"Date", date(T0)), (b"Last-Modified", date(T0 - 1000)))
        self.assertEqual(self.lifetime(*fields, rules=(rule,)), 500)
        self.assertEqual(self.lifetime(*fields), 100)

    def test_minimumFloorsPercent(self) -> None:
        """
        Section 4.2.2: the percentage of a recent Last-Modified is raised
        to the rule's minimum.
        """
        rule = RefreshRule(r"\.deb$", minimum=3600, percent=20, maximum=DAY)
        self.assertEqual(self.lifetime(
            (b"Date", date(T0)), (b"Last-Modified", date(T0 - 1000)), rules=(rule,)), 3600)

    def test_maximumCaps(self) -> None:
        """
        Section 4.2.2: the rule's maximum bounds the heuristic, in place of
        the default cap of a day.
        """
        fields = ((b"Date", date(T0)), (b"Last-Modified", date(T0 - 10**8)))
        rule = RefreshRule(r"\.deb$", percent=50, maximum=7 * DAY)
        self.assertEqual(self.lifetime(*fields, rules=(rule,)), 7 * DAY)
        short = RefreshRule(r"\.deb$", percent=50, maximum=600)
        self.assertEqual(self.lifetime(*fields, rules=(short,)), 600)

    def test_mediaTypes(self) -> None:
        """
        Section 4.2.2: a rule with media types applies only to responses
        of those types (parameters and case ignored, C{type/*} for a whole
        type), never to a response without Content-Type.
        """
        rule = RefreshRule(r"", minimum=60, maximum=60, mediaTypes=frozenset(
            [b"application/vnd.debian.binary-package", b"Image/*"]))
        self.assertEqual(self.lifetime(
            (b"Content-Type", b"application/vnd.debian.binary-package"), rules=(rule,)), 60)
        self.assertEqual(self.lifetime(
            (b"Content-Type", b"image/PNG; q=1"), rules=(rule,)), 60)
        self.assertEqual(self.lifetime(
            (b"Content-Type", b"text/html"), rules=(rule,)), 0)
        self.assertEqual(self.lifetime(rules=(rule,)), 0)

    def test_firstMatchWins(self) -> None:
        """
        Section 4.2.2: the first matching rule applies, even when a later
        one would give more.
        """
        rules = (RefreshRule(r"\.deb$", minimum=60, maximum=60),
                 RefreshRule(r"/pool/", minimum=DAY, maximum=DAY))
        self.assertEqual(self.lifetime(rules=rules), 60)
        self.assertEqual(self.lifetime(uri=b"http://mirror.example/pool/x.dsc", rules=rules), DAY)

    def test_explicitFreshnessWins(self) -> None:
        """
        Section 4.2.1: a rule without C{override} never changes explicit
        freshness, shorter or longer than its bounds.
        """
        rule = RefreshRule(r"\.deb$", minimum=DAY, maximum=DAY)
        self.assertEqual(self.lifetime((b"Cache-Control", b"max-age=60"), rules=(rule,)), 60)
        self.assertEqual(self.lifetime(
            (b"Cache-Control", b"s-maxage=999999"), rules=(rule,)), 999999)
        self.assertEqual(self.lifetime(
            (b"Date", date(T0)), (b"Expires", date(T0 + 30)), rules=(rule,)), 30)

    def test_override(self) -> None:
        """
        Section 4.2.1, overridden at the operator's request: with
        C{override} the rule's minimum applies over shorter explicit
        freshness (an invalid Expires included); longer explicit freshness
        stands, the maximum does not cut it.
        """
        rule = RefreshRule(r"\.deb$", minimum=DAY, maximum=DAY, override=True)
        self.assertEqual(self.lifetime((b"Cache-Control", b"max-age=60"), rules=(rule,)), DAY)
        self.assertEqual(self.lifetime((b"Expires", b"0"), rules=(rule,)), DAY)
        self.assertEqual(self.lifetime(
            (b"Cache-Control", b"max-age=999999"), rules=(rule,)), 999999)

    def test_overrideKeepsStorageRules(self) -> None:
        """
        Sections 5.2.2.5, 5.2.2.7 and 5.2.2.4: even with C{override}, a
        no-store or private response is not stored, and a no-cache one is
        revalidated before every use.
        """
        rule = RefreshRule(r"", minimum=DAY, maximum=DAY, override=True)
        options = CacheOptions(refreshRules=(rule,))
        for directives in (b"no-store", b"private"):
            allowed, _ = policy.mayStore(request(), response(
                (b"Cache-Control", directives)), options)
            self.assertFalse(allowed)
        stored = entry((b"Cache-Control", b"no-cache"), (b"ETag", b'"a"'))
        decision = policy.decide(request(), [stored], T0 + 1, options)
        self.assertIsInstance(decision, Revalidate)

    def test_errorsKeepDefault(self) -> None:
        """
        Section 4.2.2: a rule covers statuses below 400 only; a 404 of a
        matching URI keeps the default heuristic, so without a validator it
        is not stored.
        """
        rule = RefreshRule(r"\.deb$", minimum=DAY, maximum=DAY, override=True)
        self.assertEqual(self.lifetime(status=404, rules=(rule,)), 0)
        self.assertEqual(self.lifetime((b"Cache-Control", b"max-age=5"), status=404,
                                       rules=(rule,)), 5)
        self.assertEqual(self.lifetime(status=301, rules=(rule,)), DAY)
        self.assertFalse(policy.mayStore(request(), response(status=404),
                                         CacheOptions(refreshRules=(rule,)), DEB)[0])

    def test_decide(self) -> None:
        """
        Sections 4.2 and 4.2.2: a stored response fresh by a rule is served
        until the rule's lifetime is used up, then it is a miss (no
        validator).
        """
        rule = RefreshRule(r"\.deb$", minimum=DAY, maximum=DAY)
        options = CacheOptions(refreshRules=(rule,))
        stored = replace(entry(), key=DEB)
        self.assertIsInstance(policy.decide(request(), [stored], T0 + DAY - 1, options), Fresh)
        late = policy.decide(request(), [stored], T0 + DAY + 1, options)
        self.assertIsInstance(late, Miss)
        self.assertEqual(late.fwd, "stale")

    def test_matchedOncePerURI(self) -> None:
        """
        Section 4.2.2: the rules are matched once per URI and media type,
        not at every lookup.
        """
        options = CacheOptions(refreshRules=(RefreshRule(r"\.deb$", minimum=DAY,
                                                         maximum=DAY),))
        stored = replace(entry(), key=DEB)
        for _ in range(3):
            policy.decide(request(), [stored], T0 + 1, options)
        info = options._ruleFor.cache_info()
        self.assertEqual((info.misses, info.hits), (1, 2))

    def test_invalid(self) -> None:
        """
        A rule is refused with a negative bound, a maximum below its
        minimum, or a pattern that is not a regular expression.
        """
        self.assertRaises(ValueError, RefreshRule, r"x", minimum=-1)
        self.assertRaises(ValueError, RefreshRule, r"x", minimum=60, maximum=30)
        self.assertRaises(ValueError, RefreshRule, r"x", percent=-5)
        self.assertRaises(ValueError, RefreshRule, r"(")


class CacheKeyTests(SynchronousTestCase):
    """
    L{policy.primaryKey} and friends: section 2, RFC 9110 section 4.2.3.
    """

    def test_normalised(self) -> None:
        """
        RFC 9110 section 4.2.3: scheme and host are case-insensitive, the
        default port can be left out, an empty path is C{/}.
        """
        self.assertEqual(policy.primaryKey(b"HTTP", b"Example.COM:80", b""),
                         b"http://example.com/")
        self.assertEqual(policy.primaryKey(b"https", b"example.com:443", b"/a?b"),
                         b"https://example.com/a?b")
        self.assertEqual(policy.primaryKey(b"http", b"example.com:8080", b"/"),
                         b"http://example.com:8080/")
        self.assertEqual(policy.primaryKey(b"https", b"example.com:80", b"/"),
                         b"https://example.com:80/")

    def test_percentEncoding(self) -> None:
        """
        RFC 3986 section 6.2.2: unreserved characters are decoded, other
        percent-encodings upper-cased; the fragment is not part of the key.
        """
        self.assertEqual(policy.primaryKey(b"http", b"h", b"/%7euser/%2f#frag"),
                         b"http://h/~user/%2F")

    def test_ipv6(self) -> None:
        """
        RFC 9110 section 4.2.3: the port is removed from a bracketed IPv6
        host too.
        """
        self.assertEqual(policy.primaryKey(b"http", b"[::1]:80", b"/"),
                         b"http://[::1]/")

    def test_methods(self) -> None:
        """
        Section 4: a stored GET answers HEAD, so both share a key; other
        methods get their own.
        """
        self.assertEqual(policy.primaryKey(b"http", b"h", b"/", b"HEAD"),
                         policy.primaryKey(b"http", b"h", b"/"))
        self.assertEqual(policy.primaryKey(b"http", b"h", b"/", b"POST"),
                         b"POST http://h/")

    def test_effectiveRequestURI(self) -> None:
        """
        RFC 9110 section 7.1: the target URI from origin-form plus Host, or
        from absolute-form.
        """
        self.assertEqual(policy.effectiveRequestURI(request(target=b"/x")),
                         b"http://example.com/x")
        self.assertEqual(
            policy.effectiveRequestURI(request(target=b"http://Other:80/y")),
            b"http://other/y")
        self.assertIsNone(policy.effectiveRequestURI(
            RequestHead(b"GET", b"/x")))
        self.assertIsNone(policy.effectiveRequestURI(
            request(method=b"CONNECT", target=b"example.com:443")))

    def test_normalizeURI(self) -> None:
        """
        A relative reference has no key.
        """
        self.assertIsNone(policy.normalizeURI(b"/relative"))
        self.assertEqual(policy.normalizeURI(b"HTTP://H:80"), b"http://h/")


class VaryTests(SynchronousTestCase):
    """
    L{policy.varyMatches} and L{policy.secondaryKey}: section 4.1.
    """

    def match(self, vary: bytes, stored: Tuple[Field, ...],
              new: Tuple[Field, ...]) -> bool:
        return policy.varyMatches(headers(*stored), headers((b"Vary", vary)),
                                  headers(*new))

    def test_noVary(self) -> None:
        """
        Section 4.1: without Vary any request matches.
        """
        self.assertTrue(policy.varyMatches(
            headers((b"Accept", b"a")), Headers(), headers((b"Accept", b"b"))))

    def test_sameAndDifferent(self) -> None:
        """
        Section 4.1: the nominated fields must match.
        """
        self.assertTrue(self.match(b"Accept-Encoding",
                                   ((b"Accept-Encoding", b"gzip"),),
                                   ((b"accept-encoding", b"gzip"),)))
        self.assertFalse(self.match(b"Accept-Encoding",
                                    ((b"Accept-Encoding", b"gzip"),),
                                    ((b"Accept-Encoding", b"br"),)))

    def test_absentMatchesOnlyAbsent(self) -> None:
        """
        Section 4.1: a field absent from one request matches only if absent
        from the other.
        """
        self.assertTrue(self.match(b"Accept-Language", (), ()))
        self.assertFalse(self.match(b"Accept-Language", (),
                                    ((b"Accept-Language", b"en"),)))
        self.assertFalse(self.match(b"Accept-Language",
                                    ((b"Accept-Language", b"en"),), ()))

    def test_normalisation(self) -> None:
        """
        Section 4.1: whitespace may be added or removed and repeated lines
        combined; Vary names are case-insensitive.
        """
        self.assertTrue(self.match(
            b"ACCEPT-encoding, accept",
            ((b"Accept-Encoding", b"gzip,br"), (b"Accept", b"text/html")),
            ((b"Accept-Encoding", b" gzip ,  br "), (b"accept", b"text/html"))))
        self.assertTrue(self.match(
            b"Accept-Encoding",
            ((b"Accept-Encoding", b"gzip"), (b"Accept-Encoding", b"br")),
            ((b"Accept-Encoding", b"gzip, br"),)))
        self.assertFalse(self.match(
            b"X-Flavour",
            ((b"X-Flavour", b"gzip, br"),),
            ((b"X-Flavour", b"br, gzip"),)))
        self.assertFalse(self.match(
            b"X-Flavour", ((b"X-Flavour", b"GZIP"),), ((b"X-Flavour", b"gzip"),)))

    def test_negotiationFieldsNormalised(self) -> None:
        """
        Section 4.1 (normalisation the field's syntax allows) with RFC 9110
        sections 12.4.2 and 12.5.1 to 12.5.4: in Accept, Accept-Charset,
        Accept-Encoding and Accept-Language the case of tokens, whitespace
        around commas, semicolons and C{=}, member order, and a weight of
        1 written or not, make no difference; a weight stays with its
        member, and other weights, parameter values and unknown fields
        still do.
        """
        same = [
            (b"Accept-Encoding", b"gzip, br", b"BR,gzip"),
            (b"Accept-Encoding", b"gzip;q=1.0, br;q=0.5", b"br ; Q=0.500 ,gzip"),
            (b"Accept-Encoding", b"gzip;q=1", b"gzip"),
            (b"Accept-Encoding", b"gzip;q=1.000", b"GZIP;q=1"),
            (b"Accept-Encoding", b"identity;q=0", b"identity;q=0.0"),
            (b"Accept-Language", b"en-GB, fr;q=0.8", b"fr;q=0.8,en-gb"),
            (b"Accept-Language", b"de, en", b"en, de"),
            (b"Accept-Charset", b"UTF-8, iso-8859-1;q=0.5", b"iso-8859-1;q=0.5, utf-8"),
            (b"Accept", b"text/html, application/json;q=0.9",
             b"application/JSON; q=0.9, Text/HTML"),
            (b"Accept", b"text/html;charset=UTF-8", b"text/html; Charset=utf-8"),
        ]
        for name, one, two in same:
            self.assertTrue(self.match(name, ((name, one),), ((name, two),)),
                            (name, one, two))
            vary = headers((b"Vary", name))
            self.assertEqual(policy.secondaryKey(vary, headers((name, one))),
                             policy.secondaryKey(vary, headers((name, two))))
        different = [
            (b"Accept-Encoding", b"gzip;q=0.5, br", b"gzip, br;q=0.5"),
            (b"Accept-Encoding", b"gzip", b"gzip, br"),
            (b"Accept-Encoding", b"gzip;q=0", b"gzip"),
            (b"Accept-Language", b"en", b"en-gb"),
            (b"Accept", b"text/html;level=1", b"text/html;level=2"),
            (b"Accept", b"text/html;q=0.5;level=1", b"text/html;level=1;q=0.5"),
            (b"Accept", b'text/html;x="A"', b'text/html;x="a"'),
        ]
        for name, one, two in different:
            self.assertFalse(self.match(name, ((name, one),), ((name, two),)),
                             (name, one, two))

    def test_severalVaryLines(self) -> None:
        """
        Section 4.1: every Vary line counts.
        """
        stored = headers((b"Vary", b"Accept"), (b"Vary", b"Cookie"))
        self.assertFalse(policy.varyMatches(
            headers((b"Accept", b"a"), (b"Cookie", b"1")), stored,
            headers((b"Accept", b"a"), (b"Cookie", b"2"))))

    def test_star(self) -> None:
        """
        Section 4.1: Vary: * always fails to match.
        """
        self.assertFalse(self.match(b"Accept, *", (), ()))
        self.assertIsNone(policy.varyFieldNames(headers((b"Vary", b"*"))))

    def test_secondaryKey(self) -> None:
        """
        Section 4.1: equal secondary keys exactly for matching requests.
        """
        vary = headers((b"Vary", b"Accept-Encoding, Accept-Language"))
        key = policy.secondaryKey(vary, headers((b"Accept-Encoding", b"gzip,br")))
        self.assertEqual(key, b"accept-encoding:br, gzip\naccept-language")
        self.assertEqual(
            key, policy.secondaryKey(vary, headers((b"accept-encoding", b"gzip , br"))))
        self.assertNotEqual(
            key, policy.secondaryKey(vary, headers((b"Accept-Encoding", b"gzip"))))
        self.assertEqual(policy.secondaryKey(Headers(), Headers()), b"")
        self.assertIsNone(policy.secondaryKey(headers((b"Vary", b"*")), Headers()))


class StorageTests(SynchronousTestCase):
    """
    L{policy.mayStore}: section 3.
    """

    def assertStored(self, req: RequestHead, resp: ResponseHead) -> None:
        allowed, reason = policy.mayStore(req, resp)
        self.assertTrue(allowed, reason)

    def assertNotStored(self, req: RequestHead, resp: ResponseHead,
                        section: str) -> None:
        allowed, reason = policy.mayStore(req, resp)
        self.assertFalse(allowed)
        self.assertIn(section, reason)

    def test_get(self) -> None:
        """
        Section 3: a GET response with explicit freshness is stored.
        """
        self.assertStored(request(), response((b"Cache-Control", b"max-age=60")))

    def test_head(self) -> None:
        """
        Section 4.3.5: a HEAD response never creates an entry.
        """
        self.assertNotStored(request(method=b"HEAD"),
                             response((b"Cache-Control", b"max-age=60")), "4.3.5")

    def test_post(self) -> None:
        """
        Section 3: the method must be understood as cacheable; POST is not.
        """
        self.assertNotStored(request(method=b"POST"),
                             response((b"Cache-Control", b"max-age=60")), "(3)")

    def test_requestNoStore(self) -> None:
        """
        Section 5.2.1.5: no-store in the request.
        """
        self.assertNotStored(request((b"Cache-Control", b"no-store")),
                             response((b"Cache-Control", b"max-age=60")),
                             "5.2.1.5")

    def test_responseNoStore(self) -> None:
        """
        Section 5.2.2.5: no-store in the response.
        """
        self.assertNotStored(request(),
                             response((b"Cache-Control", b"max-age=60, No-Store")),
                             "5.2.2.5")

    def test_mustUnderstand(self) -> None:
        """
        Section 5.2.2.3: with must-understand, no-store is ignored for an
        understood status, and an unknown status is not stored.
        """
        self.assertStored(request(), response(
            (b"Cache-Control", b"must-understand, no-store, max-age=60")))
        self.assertNotStored(request(), response(
            (b"Cache-Control", b"must-understand, no-store, max-age=60"),
            status=299), "5.2.2.3")

    def test_private(self) -> None:
        """
        Section 5.2.2.7: a shared cache does not store a private response.
        """
        self.assertNotStored(request(), response(
            (b"Cache-Control", b"private, max-age=60")), "5.2.2.7")

    def test_privateFields(self) -> None:
        """
        Section 5.2.2.7: with a field list, the response is stored without
        those fields.
        """
        resp = response((b"Cache-Control", b'max-age=60, private="X-User"'),
                        (b"X-User", b"alice"), (b"X-Other", b"1"))
        self.assertStored(request(), resp)
        stored = policy.storableHeaders(resp.headers)
        self.assertNotIn(b"x-user", stored)
        self.assertIn(b"x-other", stored)

    def test_setCookieNotStored(self) -> None:
        """
        Section 7.3: by default a response that sets a cookie is not stored
        by this shared cache, whatever its freshness, and the reason says
        so.
        """
        for name in (b"Set-Cookie", b"Set-Cookie2"):
            self.assertNotStored(request(), response(
                (b"Cache-Control", b"public, max-age=60"), (name, b"id=1")), "Set-Cookie")

    def test_setCookieStoredWithout(self) -> None:
        """
        Section 7.3: with C{storeSetCookie} the response is stored, and the
        stored fields never include Set-Cookie (it is for the client whose
        request fetched it).
        """
        options = CacheOptions(storeSetCookie=True)
        resp = response((b"Cache-Control", b"max-age=60"), (b"Set-Cookie", b"id=1"),
                        (b"Set-Cookie2", b"id=2"), (b"X-Other", b"1"))
        allowed, reason = policy.mayStore(request(), resp, options)
        self.assertTrue(allowed, reason)
        stored = policy.storableHeaders(resp.headers, options)
        self.assertNotIn(b"set-cookie", stored)
        self.assertNotIn(b"set-cookie2", stored)
        self.assertIn(b"x-other", stored)

    def test_privateSetCookie(self) -> None:
        """
        Section 5.2.2.7: C{private="Set-Cookie"} makes the response
        storable by default, without that field.
        """
        resp = response((b"Cache-Control", b'max-age=60, private="Set-Cookie"'),
                        (b"Set-Cookie", b"id=1"))
        self.assertStored(request(), resp)
        self.assertNotIn(b"set-cookie", policy.storableHeaders(resp.headers))

    def test_unsharedFields(self) -> None:
        """
        Sections 5.2.2.7 and 7.3: the fields meant for one client alone are
        the cookie fields and those C{private="..."} names.
        """
        self.assertEqual(
            policy.unsharedFields(headers((b"Cache-Control", b'private="X-User"'))),
            frozenset([b"set-cookie", b"set-cookie2", b"x-user"]))

    def test_authorization(self) -> None:
        """
        Section 3.5: a response to a request with Authorization is stored
        only with public, s-maxage or must-revalidate.
        """
        authorized = request((b"Authorization", b"Basic eA=="))
        self.assertNotStored(authorized,
                             response((b"Cache-Control", b"max-age=60")), "3.5")
        for directives in (b"public", b"s-maxage=60", b"max-age=60, must-revalidate"):
            self.assertStored(authorized, response((b"Cache-Control", directives),
                                                   (b"ETag", b'"a"')))

    def test_varyStar(self) -> None:
        """
        Section 4.1: Vary: * never matches, so it is not stored.
        """
        self.assertNotStored(request(), response(
            (b"Cache-Control", b"max-age=60"), (b"Vary", b"*")), "4.1")

    def test_partialAndNotModified(self) -> None:
        """
        Sections 3.3, 3.4 and 4.3.4: a 206 without one range of a known
        length and a strong validator is not stored, nor is a 304.
        """
        self.assertNotStored(request(), response(
            (b"Cache-Control", b"max-age=60"), status=206), "3.3")
        self.assertNotStored(request(), response(
            (b"Cache-Control", b"max-age=60"), (b"ETag", b'W/"a"'),
            (b"Content-Range", b"bytes 0-9/100"), status=206), "3.3")
        self.assertNotStored(request(), response(
            (b"Cache-Control", b"max-age=60"), status=304), "4.3.4")

    def test_partialStored(self) -> None:
        """
        Section 3.3: a 206 of one range of a known length with a strong
        validator is stored (as an incomplete response), under the other
        rules of section 3.
        """
        part = ((b"ETag", b'"a"'), (b"Content-Range", b"bytes 0-9/100"))
        self.assertStored(request((b"Range", b"bytes=0-9")),
                          response((b"Cache-Control", b"max-age=60"), *part, status=206))
        self.assertNotStored(request((b"Range", b"bytes=0-9")), response(
            (b"Cache-Control", b"no-store"), *part, status=206), "5.2.2.5")

    def test_nonFinal(self) -> None:
        """
        Section 3: only final responses are stored.
        """
        self.assertNotStored(request(), response(status=103), "(3)")

    def test_heuristicallyCacheable(self) -> None:
        """
        Section 3 and RFC 9110 section 15.1: these statuses are stored
        without explicit freshness (here with a validator, so that they can
        be used).
        """
        for status in (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501):
            self.assertStored(request(), response((b"ETag", b'"a"'), status=status))

    def test_neverUsableNotStored(self) -> None:
        """
        Sections 4.2.2 and 4.3.1: a response without explicit freshness,
        without a heuristic lifetime and without a validator could never be
        served, nor revalidated: it is not stored.
        """
        for status in (200, 404):
            self.assertNotStored(request(), response(status=status), "4.3.1")
        self.assertNotStored(request(), response(
            (b"Cache-Control", b"public"), (b"Content-Type", b"text/plain")), "4.2.2")
        # Malformed validators are no validators.
        self.assertNotStored(request(), response(
            (b"ETag", b"unquoted"), (b"Last-Modified", b"yesterday")), "4.3.1")
        # A Last-Modified equal to Date gives a heuristic of 0 but still
        # validates.
        now = date(T0)
        self.assertStored(request(), response(
            (b"Date", now), (b"Last-Modified", now), status=404))

    def test_usableStored(self) -> None:
        """
        Sections 4.2.1, 4.2.2 and 4.3.1: any one of explicit freshness (even
        of 0), a heuristic lifetime or a validator makes the response worth
        storing.
        """
        self.assertStored(request(), response((b"Cache-Control", b"max-age=0")))
        self.assertStored(request(), response((b"Expires", b"0")))
        self.assertStored(request(), response(
            (b"Date", date(T0)), (b"Last-Modified", date(T0 - 1000))))
        self.assertStored(request(), response((b"ETag", b'W/"a"'), status=404))

    def test_responseStaleGrantsKeepIt(self) -> None:
        """
        RFC 5861 sections 3 and 4: a response that grants stale-if-error
        or stale-while-revalidate of its own is stored though it is never
        fresh; the operator's defaults of those do not keep such a
        response.
        """
        self.assertStored(request(), response(
            (b"Cache-Control", b"stale-if-error=60")))
        self.assertStored(request(), response(
            (b"Cache-Control", b"stale-while-revalidate=60")))
        allowed, _ = policy.mayStore(request(), response(), CacheOptions(
            defaultStaleIfError=60, defaultStaleWhileRevalidate=60))
        self.assertFalse(allowed)

    def test_needsExplicitFreshness(self) -> None:
        """
        Section 3: other statuses need max-age, s-maxage, Expires or
        public.
        """
        self.assertNotStored(request(), response(status=302), "(3)")
        self.assertNotStored(request(), response(status=500), "(3)")
        self.assertStored(request(), response(
            (b"Cache-Control", b"max-age=5"), status=302))
        self.assertStored(request(), response(
            (b"Cache-Control", b"s-maxage=5"), status=302))
        self.assertStored(request(), response(
            (b"Expires", date(T0)), status=500))
        self.assertStored(request(), response(
            (b"Cache-Control", b"public"), (b"ETag", b'"a"'), status=201))

    def test_storableHeaders(self) -> None:
        """
        Section 3.1: Connection, the fields it names, hop-by-hop and
        proxy-specific fields are not stored; the input is left alone.
        """
        original = headers((b"Connection", b"X-Hop, close"), (b"X-Hop", b"1"),
                           (b"Keep-Alive", b"timeout=5"),
                           (b"Transfer-Encoding", b"chunked"),
                           (b"Proxy-Authenticate", b"Basic"),
                           (b"Proxy-Authentication-Info", b"x"),
                           (b"Content-Type", b"text/plain"))
        stored = policy.storableHeaders(original)
        self.assertEqual(list(stored.items()), [(b"Content-Type", b"text/plain")])
        self.assertEqual(len(original), 7)

    def test_complete(self) -> None:
        """
        Section 3.3: only a complete response may be stored as complete.
        """
        fields = headers((b"Content-Length", b"10"))
        self.assertTrue(policy.isCompleteResponse(fields, 10))
        self.assertFalse(policy.isCompleteResponse(fields, 9))
        self.assertFalse(policy.isCompleteResponse(Headers(), 9, False))
        self.assertTrue(policy.isCompleteResponse(Headers(), 9))
        self.assertFalse(policy.isCompleteResponse(
            headers((b"Content-Length", b"9"), (b"Content-Length", b"10")), 9))

    def test_fromExchange(self) -> None:
        """
        Section 4.1: an entry keeps the selecting request's Vary fields and
        the storable response fields.
        """
        req = request((b"Accept", b"text/html"), (b"Cookie", b"c"))
        resp = response((b"Vary", b"accept"), (b"Connection", b"close"),
                        (b"Cache-Control", b"max-age=1"))
        stored = StoredEntry.fromExchange(b"k", req, resp, T0, T0 + 1, 5)
        self.assertEqual(list(stored.requestHeaders.items()),
                         [(b"accept", b"text/html")])
        self.assertNotIn(b"connection", stored.responseHeaders)
        self.assertEqual((stored.requestTime, stored.responseTime,
                          stored.bodyLength, stored.responseHead.status),
                         (T0, T0 + 1, 5, 200))


class PostStorageTests(SynchronousTestCase):
    """
    L{policy.mayStorePostResponse}: RFC 9110 section 9.3.3, RFC 9111
    section 3.
    """

    target = b"http://example.com/form?x=1"

    def allowed(self, *fields: Field, status: int = 200,
                requestFields: Tuple[Field, ...] = (), method: bytes = b"POST") -> Tuple[bool, str]:
        return policy.mayStorePostResponse(
            request(*requestFields, method=method, target=b"/form?x=1"),
            response(*fields, status=status), self.target)

    def test_stored(self) -> None:
        """
        RFC 9110 section 9.3.3: explicit freshness and a Content-Location
        equal to the target URI, absolute or relative, make a POST
        response storable for GET.
        """
        for location in (b"/form?x=1", b"http://EXAMPLE.com:80/form?x=1", b"form?x=1"):
            for freshness in ((b"Cache-Control", b"max-age=60"),
                              (b"Cache-Control", b"s-maxage=60"),
                              (b"Expires", date(T0 + 60))):
                ok, reason = self.allowed((b"Content-Location", location), freshness)
                self.assertTrue(ok, (location, freshness, reason))

    def test_contentLocation(self) -> None:
        """
        RFC 9110 section 9.3.3: without Content-Location, with another URI
        (another path, query or origin), or with several, it is not stored.
        """
        for fields in ((),
                       ((b"Content-Location", b"/form"),),
                       ((b"Content-Location", b"/form?x=2"),),
                       ((b"Content-Location", b"http://other.example/form?x=1"),),
                       ((b"Content-Location", b"/form?x=1"),
                        (b"Content-Location", b"/form?x=1"))):
            ok, reason = self.allowed((b"Cache-Control", b"max-age=60"), *fields)
            self.assertFalse(ok, fields)
            self.assertIn("9.3.3", reason)

    def test_explicitFreshness(self) -> None:
        """
        RFC 9110 section 9.3.3: heuristic freshness (Last-Modified) or
        C{public} alone is not enough.
        """
        for fields in ((), ((b"Last-Modified", date(T0 - 1000)),),
                       ((b"Cache-Control", b"public"),)):
            ok, reason = self.allowed((b"Content-Location", b"/form?x=1"), *fields)
            self.assertFalse(ok, fields)
            self.assertIn("explicit freshness", reason)

    def test_sameRulesAsGet(self) -> None:
        """
        RFC 9111 sections 3, 3.5, 4.1, 5.2.1.5, 5.2.2.5 and 5.2.2.7: the
        rules for storing a GET response hold too.
        """
        location = (b"Content-Location", b"/form?x=1")
        cases = [
            (((b"Cache-Control", b"max-age=60, no-store"),), (), "5.2.2.5"),
            (((b"Cache-Control", b"max-age=60, private"),), (), "5.2.2.7"),
            (((b"Cache-Control", b"max-age=60"), (b"Vary", b"*")), (), "4.1"),
            (((b"Cache-Control", b"max-age=60"),),
             ((b"Authorization", b"Basic eDp5"),), "3.5"),
            (((b"Cache-Control", b"max-age=60"),),
             ((b"Cache-Control", b"no-store"),), "5.2.1.5"),
        ]
        for fields, requestFields, section in cases:
            ok, reason = self.allowed(location, *fields, requestFields=requestFields)
            self.assertFalse(ok, fields)
            self.assertIn(section, reason)
        ok, _ = self.allowed(location, (b"Cache-Control", b"s-maxage=60"),
                             requestFields=((b"Authorization", b"Basic eDp5"),))
        self.assertTrue(ok)

    def test_statusAndMethod(self) -> None:
        """
        RFC 9110 section 9.3.3: only a response to POST, and only a 200 or
        203, whose content represents the target.
        """
        fields = ((b"Content-Location", b"/form?x=1"), (b"Cache-Control", b"max-age=60"))
        self.assertTrue(self.allowed(*fields, status=203)[0])
        for status in (201, 204, 303, 404):
            self.assertFalse(self.allowed(*fields, status=status)[0], status)
        self.assertFalse(self.allowed(*fields, method=b"PUT")[0])


class FreshnessLifetimeTests(SynchronousTestCase):
    """
    L{policy.freshnessLifetime}: sections 4.2.1 and 4.2.2.
    """

    def lifetime(self, *fields: Field, status: int = 200,
                 options: CacheOptions = DEFAULT_OPTIONS) -> float:
        return policy.freshnessLifetime(response(*fields, status=status),
                                        options, responseTime=T0)

    def test_sMaxAgeFirst(self) -> None:
        """
        Section 4.2.1: a shared cache uses s-maxage before max-age.
        """
        self.assertEqual(self.lifetime(
            (b"Cache-Control", b"max-age=10, s-maxage=20")), 20)

    def test_maxAgeBeforeExpires(self) -> None:
        """
        Section 5.3: with max-age, Expires is ignored.
        """
        self.assertEqual(self.lifetime(
            (b"Cache-Control", b"max-age=10"), (b"Date", date(T0)),
            (b"Expires", date(T0 + 100))), 10)

    def test_expiresMinusDate(self) -> None:
        """
        Section 4.2.1: Expires minus Date.
        """
        self.assertEqual(self.lifetime(
            (b"Date", date(T0 - 50)), (b"Expires", date(T0 + 50))), 100)

    def test_expiresWithoutDate(self) -> None:
        """
        Section 4.2.1: without Date, the time the response was received.
        """
        self.assertEqual(self.lifetime((b"Expires", date(T0 + 30))), 30)

    def test_invalidExpires(self) -> None:
        """
        Section 5.3: an invalid Expires, like "0", is already expired, even
        with a heuristic available.
        """
        self.assertEqual(self.lifetime(
            (b"Expires", b"0"), (b"Date", date(T0)),
            (b"Last-Modified", date(T0 - 1000))), 0)

    def test_pastExpires(self) -> None:
        """
        Section 4.2.1: an Expires before Date gives 0, not less.
        """
        self.assertEqual(self.lifetime(
            (b"Date", date(T0)), (b"Expires", date(T0 - 100))), 0)

    def test_conflictingExpires(self) -> None:
        """
        Section 4.2.1: two different Expires values make the response stale.
        """
        self.assertEqual(self.lifetime(
            (b"Date", date(T0)), (b"Expires", date(T0 + 10)),
            (b"Expires", date(T0 + 20))), 0)

    def test_heuristic(self) -> None:
        """
        Section 4.2.2: 10% of the time between Last-Modified and Date.
        """
        self.assertEqual(self.lifetime(
            (b"Date", date(T0)), (b"Last-Modified", date(T0 - 1000))), 100)

    def test_heuristicCapped(self) -> None:
        """
        Section 4.2.2: the heuristic is bounded by C{maxHeuristic} and
        scaled by C{heuristicFraction}.
        """
        fields = ((b"Date", date(T0)), (b"Last-Modified", date(T0 - 10**8)))
        self.assertEqual(self.lifetime(*fields), 86400)
        self.assertEqual(self.lifetime(
            (b"Date", date(T0)), (b"Last-Modified", date(T0 - 1000)),
            options=CacheOptions(heuristicFraction=0.5)), 500)

    def test_heuristicStatusOnly(self) -> None:
        """
        Section 4.2.2: no heuristic for a status that is not heuristically
        cacheable unless the response is public.
        """
        fields = ((b"Date", date(T0)), (b"Last-Modified", date(T0 - 1000)))
        self.assertEqual(self.lifetime(*fields, status=302), 0)
        self.assertEqual(self.lifetime(
            *fields, (b"Cache-Control", b"public"), status=302), 100)

    def test_noHeuristicWithoutLastModified(self) -> None:
        """
        Section 4.2.2: the heuristic needs Last-Modified; one in the future
        gives nothing.
        """
        self.assertEqual(self.lifetime((b"Date", date(T0))), 0)
        self.assertEqual(self.lifetime(
            (b"Date", date(T0)), (b"Last-Modified", date(T0 + 100))), 0)


class CurrentAgeTests(SynchronousTestCase):
    """
    L{policy.currentAge}: section 4.2.3.
    """

    def test_residentTime(self) -> None:
        """
        Section 4.2.3: with no Age and no delay, the age is the time since
        the response arrived.
        """
        self.assertEqual(policy.currentAge(
            headers((b"Date", date(T0))), T0, T0, T0 + 7), 7)

    def test_ageAndResponseDelay(self) -> None:
        """
        Section 4.2.3: corrected_age_value = age_value + response_delay.
        """
        self.assertEqual(policy.currentAge(
            headers((b"Date", date(T0)), (b"Age", b"30")), T0, T0 + 2, T0 + 12),
            30 + 2 + 10)

    def test_apparentAge(self) -> None:
        """
        Section 4.2.3: corrected_initial_age is the larger of apparent_age
        (response_time - Date) and corrected_age_value.
        """
        self.assertEqual(policy.currentAge(
            headers((b"Date", date(T0 - 100)), (b"Age", b"10")), T0, T0, T0),
            100)

    def test_missingDate(self) -> None:
        """
        RFC 9110 section 6.6.1: a missing Date is the receipt time, so the
        apparent age is 0.
        """
        self.assertEqual(policy.currentAge(Headers(), T0, T0 + 1, T0 + 5), 5)

    def test_invalidAge(self) -> None:
        """
        Section 4.2.3: an unusable Age is taken as 0.
        """
        self.assertEqual(policy.currentAge(
            headers((b"Date", date(T0)), (b"Age", b"abc")), T0, T0, T0 + 1), 1)

    def test_neverNegative(self) -> None:
        """
        Section 4.2.3: clocks stepping backwards or a Date in the future
        never make the age negative.
        """
        self.assertEqual(policy.currentAge(
            headers((b"Date", date(T0 + 500))), T0 + 5, T0, T0 - 100), 0)


def invalidDates(when: float) -> Tuple[bytes, ...]:
    """
    C{when} written in forms a lenient date parser reads as that time but
    that are not an HTTP-date (RFC 9110 section 5.6.7).
    """
    imf = date(when)  # e.g. b"Tue, 14 Nov 2023 22:13:20 GMT"
    return (
        imf[:-3] + b"+0000",
        imf[:-3] + b"UTC",
        imf[:12] + imf[14:],  # two-digit year
        imf.replace(b",", b""),
        imf.replace(b" ", b"  ", 1),
        imf[:7] + b"-" + imf[8:11] + b"-" + imf[12:],  # dashes
        imf.replace(b":", b"."),
    )


class InvalidDateTests(SynchronousTestCase):
    """
    What a date that is not a valid HTTP-date (RFC 9110 section 5.6.7)
    means in each field the cache reads.
    """

    def lifetime(self, *fields: Field, status: int = 200) -> float:
        return policy.freshnessLifetime(response(*fields, status=status),
                                        responseTime=T0)

    def test_invalidFormsAreInvalid(self) -> None:
        """
        RFC 9110 section 5.6.7: none of the forms used below parses; the
        valid form of the same time does.
        """
        self.assertEqual(parseHTTPDate(date(T0)), T0)
        for text in invalidDates(T0):
            self.assertIsNone(parseHTTPDate(text), text)

    def test_invalidExpiresIsExpired(self) -> None:
        """
        RFC 9111 section 5.3: an invalid Expires, C{0} included, means
        already expired, even where a heuristic would give a lifetime; the
        stored response is stale at once.
        """
        lastModified = (b"Last-Modified", date(T0 - 10000))
        self.assertEqual(self.lifetime((b"Date", date(T0)), lastModified), 1000)
        for text in (b"0", *invalidDates(T0 + 3600)):
            fields = ((b"Date", date(T0)), (b"Expires", text), lastModified)
            self.assertEqual(self.lifetime(*fields), 0, text)
            self.assertIsInstance(
                policy.decide(request(), [entry(*fields)], T0), Revalidate)
        self.assertEqual(self.lifetime(
            (b"Date", date(T0)), (b"Expires", date(T0 + 3600)), lastModified),
            3600)

    def test_invalidLastModifiedNoHeuristic(self) -> None:
        """
        RFC 9111 section 4.2.2: an invalid Last-Modified gives no heuristic
        freshness.
        """
        self.assertEqual(self.lifetime(
            (b"Date", date(T0)), (b"Last-Modified", date(T0 - 1000))), 100)
        for text in invalidDates(T0 - 1000):
            self.assertEqual(self.lifetime(
                (b"Date", date(T0)), (b"Last-Modified", text)), 0, text)
            self.assertEqual(self.lifetime(
                (b"Date", date(T0)), (b"Last-Modified", text),
                (b"Cache-Control", b"public"), status=302), 0, text)

    def test_invalidLastModifiedNotAValidator(self) -> None:
        """
        RFC 9111 sections 4.3.1 and 4.3.4, RFC 9110 section 8.8.2: an
        invalid Last-Modified is no validator: no If-Modified-Since is
        built from it, so a stale response with nothing else is a miss,
        and a 304 without validators may update it.
        """
        for text in invalidDates(T0 - 1000):
            stored = entry((b"Last-Modified", text),
                           (b"Cache-Control", b"max-age=10"))
            self.assertEqual(len(policy.conditionalHeaders(stored)), 0, text)
            decision = policy.decide(request(), [stored], T0 + 20)
            self.assertIsInstance(decision, Miss, text)
            self.assertEqual(policy.selectForUpdate([stored], Headers()),
                             [stored], text)
            self.assertEqual(policy.selectForUpdate(
                [stored], headers((b"Last-Modified", text))), [stored], text)

    def test_invalidLastModifiedNotComparedWithIfModifiedSince(self) -> None:
        """
        RFC 9110 section 13.1.3, RFC 9111 section 4.3.2: a client's
        If-Modified-Since is not compared with an invalid stored
        Last-Modified; the stored Date stands in for it.
        """
        since = (b"If-Modified-Since", date(T0 - 100))
        valid = headers((b"Last-Modified", date(T0 - 100)), (b"Date", date(T0)))
        self.assertEqual(policy.evaluatePreconditions(
            headers(since), valid, b"GET"), 304)
        for text in invalidDates(T0 - 100):
            stored = headers((b"Last-Modified", text), (b"Date", date(T0)))
            self.assertIsNone(policy.evaluatePreconditions(
                headers(since), stored, b"GET"), text)
            self.assertEqual(policy.evaluatePreconditions(
                headers((b"If-Modified-Since", date(T0))), stored, b"GET"),
                304, text)

    def test_invalidIfModifiedSinceIgnored(self) -> None:
        """
        RFC 9110 section 13.1.3: an If-Modified-Since that is not a valid
        HTTP-date is ignored.
        """
        stored = headers((b"Last-Modified", date(T0 - 100)), (b"Date", date(T0)))
        self.assertEqual(policy.evaluatePreconditions(
            headers((b"If-Modified-Since", date(T0))), stored, b"GET"), 304)
        for text in invalidDates(T0):
            self.assertIsNone(policy.evaluatePreconditions(
                headers((b"If-Modified-Since", text)), stored, b"GET"), text)

    def test_invalidDateIgnored(self) -> None:
        """
        RFC 9110 section 6.6.1, RFC 9111 sections 4.2.1 and 4.2.3: an
        invalid Date is ignored as if absent: the time the response was
        received is used for its age and with Expires.
        """
        self.assertEqual(self.lifetime(
            (b"Date", date(T0 - 50)), (b"Expires", date(T0 + 30))), 80)
        self.assertEqual(policy.currentAge(
            headers((b"Date", date(T0 - 100))), T0, T0, T0 + 5), 105)
        for text in invalidDates(T0 - 50):
            self.assertEqual(self.lifetime(
                (b"Date", text), (b"Expires", date(T0 + 30))), 30, text)
            self.assertEqual(policy.currentAge(
                headers((b"Date", text)), T0, T0, T0 + 5), 5, text)


class AgeHeaderTests(SynchronousTestCase):
    """
    L{policy.ageHeaderValue}: section 5.1.
    """

    def test_values(self) -> None:
        """
        Section 5.1: whole non-negative seconds, 2^31 on overflow.
        """
        self.assertEqual(policy.ageHeaderValue(12.9), b"12")
        self.assertEqual(policy.ageHeaderValue(0), b"0")
        self.assertEqual(policy.ageHeaderValue(-3), b"0")
        self.assertEqual(policy.ageHeaderValue(1e20), b"2147483648")
        self.assertEqual(policy.ageHeaderValue(math.inf), b"2147483648")


class DecideTests(SynchronousTestCase):
    """
    L{policy.decide}: sections 4, 4.1, 4.2 and 5.2.1.
    """

    def test_unsafeMethodPasses(self) -> None:
        """
        Section 4: unsafe methods are written through, never served.
        """
        for method in (b"POST", b"PUT", b"DELETE", b"PURGE"):
            decision = policy.decide(request(method=method),
                                     [entry((b"Cache-Control", b"max-age=60"))], T0)
            self.assertIsInstance(decision, Pass)
            self.assertEqual(decision.fwd, "method")

    def test_originPreconditionsPass(self) -> None:
        """
        Section 4.3.2: If-Match and If-Unmodified-Since are for the origin.
        """
        for field in (b"If-Match", b"If-Unmodified-Since"):
            decision = policy.decide(request((field, b'"x"')),
                                     [entry((b"Cache-Control", b"max-age=60"))], T0)
            self.assertIsInstance(decision, Pass)

    def test_uriMiss(self) -> None:
        """
        RFC 9211 section 2.2: nothing stored is a uri-miss.
        """
        self.assertEqual(policy.decide(request(), [], T0).fwd, "uri-miss")

    def test_varyMiss(self) -> None:
        """
        Section 4.1: nothing matching Vary is a vary-miss.
        """
        stored = entry((b"Cache-Control", b"max-age=60"), (b"Vary", b"Accept"),
                       requestFields=((b"Accept", b"a"),))
        decision = policy.decide(request((b"Accept", b"b")), [stored], T0)
        self.assertEqual((type(decision), decision.fwd), (Miss, "vary-miss"))

    def test_fresh(self) -> None:
        """
        Sections 4 and 4.2: a fresh response is served, with its age and
        the freshness left.
        """
        stored = entry((b"Cache-Control", b"max-age=60"))
        self.assertEqual(policy.decide(request(), [stored], T0 + 10),
                         Fresh(stored, 10, 50))

    def test_headFromGet(self) -> None:
        """
        Section 4: a stored GET response answers a HEAD request.
        """
        stored = entry((b"Cache-Control", b"max-age=60"))
        self.assertIsInstance(
            policy.decide(request(method=b"HEAD"), [stored], T0), Fresh)

    def test_storedMethodMustAllowUse(self) -> None:
        """
        Section 4: a response stored for another method is not used.
        """
        stored = entry((b"Cache-Control", b"max-age=60"), method=b"POST")
        self.assertIsInstance(policy.decide(request(), [stored], T0), Miss)

    def test_mostRecent(self) -> None:
        """
        Section 4.1: of several matching responses the most recent by Date
        is used.
        """
        old = entry((b"Cache-Control", b"max-age=600"), (b"Date", date(T0 - 20)),
                    (b"ETag", b'"old"'))
        new = entry((b"Cache-Control", b"max-age=600"), (b"Date", date(T0 - 10)),
                    (b"ETag", b'"new"'))
        for entries in ([old, new], [new, old]):
            self.assertIs(policy.decide(request(), entries, T0).entry, new)

    def test_exactlyAtLifetimeIsStale(self) -> None:
        """
        Section 4.2: fresh only while the lifetime exceeds the age.
        """
        stored = entry((b"Cache-Control", b"max-age=60"), (b"ETag", b'"e"'))
        self.assertIsInstance(policy.decide(request(), [stored], T0 + 60),
                              Revalidate)

    def test_staleRevalidates(self) -> None:
        """
        Section 4.3.1: a stale response with validators is revalidated with
        If-None-Match and If-Modified-Since.
        """
        stored = entry((b"Cache-Control", b"max-age=60"), (b"ETag", b'"e"'),
                       (b"Last-Modified", date(T0 - 100)))
        decision = policy.decide(request(), [stored], T0 + 61)
        self.assertIsInstance(decision, Revalidate)
        self.assertEqual(decision.fwd, "stale")
        self.assertEqual(list(decision.conditionalHeaders.items()), [
            (b"If-None-Match", b'"e"'),
            (b"If-Modified-Since", date(T0 - 100))])

    def test_staleWithoutValidator(self) -> None:
        """
        Section 4.3.1: without a validator there is nothing to make
        conditional; the request is a plain miss.
        """
        stored = entry((b"Cache-Control", b"max-age=60"))
        decision = policy.decide(request(), [stored], T0 + 61)
        self.assertEqual((type(decision), decision.fwd), (Miss, "stale"))

    def test_responseNoCache(self) -> None:
        """
        Section 5.2.2.4: a no-cache response is always validated first.
        """
        stored = entry((b"Cache-Control", b"max-age=60, no-cache"),
                       (b"ETag", b'"e"'))
        self.assertIsInstance(policy.decide(request(), [stored], T0), Revalidate)

    def test_requestNoCache(self) -> None:
        """
        Sections 5.2.1.4 and 5.4: a no-cache request (or Pragma: no-cache
        without Cache-Control) makes the cache validate.
        """
        stored = entry((b"Cache-Control", b"max-age=60"), (b"ETag", b'"e"'))
        for field in ((b"Cache-Control", b"no-cache"), (b"Pragma", b"no-cache")):
            decision = policy.decide(request(field), [stored], T0)
            self.assertEqual((type(decision), decision.fwd),
                             (Revalidate, "request"))
        self.assertIsInstance(policy.decide(request(
            (b"Pragma", b"no-cache"), (b"Cache-Control", b"max-stale")),
            [stored], T0), Fresh)

    def test_requestNoStoreStillServes(self) -> None:
        """
        Section 5.2.1.5: no-store only forbids storing.
        """
        stored = entry((b"Cache-Control", b"max-age=60"))
        self.assertIsInstance(policy.decide(
            request((b"Cache-Control", b"no-store")), [stored], T0), Fresh)

    def test_requestMaxAge(self) -> None:
        """
        Section 5.2.1.1: the client wants an age no greater than max-age.
        """
        stored = entry((b"Cache-Control", b"max-age=600"), (b"ETag", b'"e"'))
        self.assertIsInstance(policy.decide(
            request((b"Cache-Control", b"max-age=10")), [stored], T0 + 10), Fresh)
        self.assertIsInstance(policy.decide(
            request((b"Cache-Control", b"max-age=10")), [stored], T0 + 11),
            Revalidate)

    def test_requestMinFresh(self) -> None:
        """
        Section 5.2.1.3: the response must stay fresh for min-fresh more.
        """
        stored = entry((b"Cache-Control", b"max-age=60"), (b"ETag", b'"e"'))
        self.assertIsInstance(policy.decide(
            request((b"Cache-Control", b"min-fresh=30")), [stored], T0 + 29), Fresh)
        self.assertIsInstance(policy.decide(
            request((b"Cache-Control", b"min-fresh=30")), [stored], T0 + 30),
            Revalidate)

    def test_requestMaxStale(self) -> None:
        """
        Section 5.2.1.2: max-stale lets the client take a stale response,
        by at most its value, or any without one.
        """
        stored = entry((b"Cache-Control", b"max-age=60"), (b"ETag", b'"e"'))
        decision = policy.decide(
            request((b"Cache-Control", b"max-stale=10")), [stored], T0 + 70)
        self.assertEqual(decision, Stale(stored, 70, -10, decision.reason))
        self.assertIsInstance(policy.decide(
            request((b"Cache-Control", b"max-stale=10")), [stored], T0 + 71),
            Revalidate)
        self.assertIsInstance(policy.decide(
            request((b"Cache-Control", b"max-stale")), [stored], T0 + 10**6),
            Stale)

    def test_staleForbidden(self) -> None:
        """
        Section 4.2.4: must-revalidate, proxy-revalidate and s-maxage
        forbid stale responses whatever the client allows.
        """
        for directives in (b"max-age=60, must-revalidate",
                           b"max-age=60, proxy-revalidate", b"s-maxage=60"):
            stored = entry((b"Cache-Control", directives + b", stale-while-revalidate=99"),
                           (b"ETag", b'"e"'))
            self.assertIsInstance(policy.decide(
                request((b"Cache-Control", b"max-stale")), [stored], T0 + 61),
                Revalidate, directives)

    def test_staleWhileRevalidate(self) -> None:
        """
        RFC 5861 section 3: within stale-while-revalidate the stale
        response is served and revalidated in the background.
        """
        stored = entry((b"Cache-Control", b"max-age=60, stale-while-revalidate=30"),
                       (b"ETag", b'"e"'))
        decision = policy.decide(request(), [stored], T0 + 90)
        self.assertIsInstance(decision, StaleWhileRevalidate)
        self.assertEqual((decision.age, decision.ttl), (90, -30))
        self.assertEqual(decision.conditionalHeaders.get(b"if-none-match"), b'"e"')
        self.assertIsInstance(policy.decide(request(), [stored], T0 + 91),
                              Revalidate)

    def test_staleWhileRevalidateDefault(self) -> None:
        """
        Section 4.2.4: the operator's default window applies to responses
        without the directive, and an explicit one wins.
        """
        options = CacheOptions(defaultStaleWhileRevalidate=100)
        stored = entry((b"Cache-Control", b"max-age=60"), (b"ETag", b'"e"'))
        self.assertIsInstance(policy.decide(request(), [stored], T0 + 150, options),
                              StaleWhileRevalidate)
        explicit = entry((b"Cache-Control", b"max-age=60, stale-while-revalidate=0"),
                         (b"ETag", b'"e"'))
        self.assertIsInstance(policy.decide(request(), [explicit], T0 + 61, options),
                              Revalidate)

    def test_staleWhileRevalidateNotPastRequestMaxAge(self) -> None:
        """
        Section 5.2.1.1: a request max-age the stale response exceeds is
        not answered by stale-while-revalidate.
        """
        stored = entry((b"Cache-Control", b"max-age=60, stale-while-revalidate=30"),
                       (b"ETag", b'"e"'))
        self.assertIsInstance(policy.decide(
            request((b"Cache-Control", b"max-age=61")), [stored], T0 + 70),
            Revalidate)

    def test_onlyIfCached(self) -> None:
        """
        Section 5.2.1.7: only-if-cached gets a stored response or a 504.
        """
        onlyIfCached = request((b"Cache-Control", b"only-if-cached"))
        stored = entry((b"Cache-Control", b"max-age=60"), (b"ETag", b'"e"'))
        self.assertIsInstance(policy.decide(onlyIfCached, [stored], T0), Fresh)
        for entries, now in (([stored], T0 + 61), ([], T0)):
            self.assertIsInstance(policy.decide(onlyIfCached, entries, now),
                                  OnlyIfCachedMiss)
        self.assertIsInstance(policy.decide(
            request((b"Cache-Control", b"only-if-cached"), method=b"POST"),
            [stored], T0), OnlyIfCachedMiss)

    def test_authorization(self) -> None:
        """
        Section 3.5: a request with Authorization is only answered by an
        explicitly shareable stored response.
        """
        authorized = request((b"Authorization", b"Bearer t"))
        plain = entry((b"Cache-Control", b"max-age=60"))
        decision = policy.decide(authorized, [plain], T0)
        self.assertEqual((type(decision), decision.fwd), (Miss, "request"))
        shared = entry((b"Cache-Control", b"max-age=60, public"))
        self.assertIsInstance(policy.decide(authorized, [shared], T0), Fresh)

    def test_heuristicFreshness(self) -> None:
        """
        Section 4.2.2: a heuristic lifetime makes a stored response fresh.
        """
        stored = entry((b"Last-Modified", date(T0 - 1000)))
        self.assertIsInstance(policy.decide(request(), [stored], T0 + 99), Fresh)
        self.assertIsInstance(policy.decide(request(), [stored], T0 + 100),
                              Revalidate)


class StaleIfErrorTests(SynchronousTestCase):
    """
    L{policy.afterRevalidation} on errors: section 4.2.4, RFC 5861 section 4.
    """

    def outcome(self, stored: StoredEntry, status: Optional[int], now: float,
                req: Optional[RequestHead] = None,
                options: CacheOptions = DEFAULT_OPTIONS) -> object:
        upstream = None if status is None else response(status=status)
        return policy.afterRevalidation(req or request(), stored, upstream,
                                        now, now, now, options)

    def test_withinWindow(self) -> None:
        """
        RFC 5861 section 4: on 500, 502, 503 or 504 the stale response may
        be served within stale-if-error.
        """
        stored = entry((b"Cache-Control", b"max-age=60, stale-if-error=30"))
        for status in (500, 502, 503, 504, None):
            self.assertIsInstance(self.outcome(stored, status, T0 + 90), Stale)
        self.assertIsInstance(self.outcome(stored, 503, T0 + 91), Forward)

    def test_otherErrors(self) -> None:
        """
        RFC 5861 section 4: other statuses are not errors for it.
        """
        stored = entry((b"Cache-Control", b"max-age=60, stale-if-error=30"))
        self.assertIsInstance(self.outcome(stored, 501, T0 + 61), Forward)
        self.assertIsInstance(self.outcome(stored, 404, T0 + 61), Forward)

    def test_defaultAndRequest(self) -> None:
        """
        Section 4.2.4 and RFC 5861 section 4: the operator default and the
        request directive also allow it.
        """
        stored = entry((b"Cache-Control", b"max-age=60"))
        self.assertIsInstance(self.outcome(stored, 503, T0 + 61), Forward)
        self.assertIsInstance(self.outcome(
            stored, 503, T0 + 61, options=CacheOptions(defaultStaleIfError=10)),
            Stale)
        self.assertIsInstance(self.outcome(
            stored, 503, T0 + 61,
            req=request((b"Cache-Control", b"stale-if-error=5"))), Stale)

    def test_forbidden(self) -> None:
        """
        Section 4.2.4: must-revalidate, proxy-revalidate, s-maxage and
        no-cache forbid it.
        """
        for directives in (b"must-revalidate", b"proxy-revalidate",
                           b"s-maxage=60", b"no-cache"):
            stored = entry((b"Cache-Control",
                            b"max-age=60, stale-if-error=999, " + directives))
            self.assertIsInstance(self.outcome(stored, 503, T0 + 61), Forward,
                                  directives)

    def test_disconnected(self) -> None:
        """
        Section 4.2.4: a disconnected cache may serve stale when configured.
        """
        stored = entry((b"Cache-Control", b"max-age=60"))
        options = CacheOptions(staleOnDisconnect=True)
        self.assertIsInstance(self.outcome(stored, None, T0 + 10**6,
                                           options=options), Stale)
        self.assertIsInstance(self.outcome(stored, 503, T0 + 61,
                                           options=options), Forward)
        self.assertIsInstance(self.outcome(stored, None, T0 + 61), Forward)

    def test_fullResponse(self) -> None:
        """
        Section 4.3.3: a full response is used as it is.
        """
        stored = entry((b"Cache-Control", b"max-age=60, stale-if-error=30"))
        self.assertIsInstance(self.outcome(stored, 200, T0 + 61), Forward)


class ConditionalRequestTests(SynchronousTestCase):
    """
    L{policy.conditionalHeaders}: section 4.3.1.
    """

    def test_bothValidators(self) -> None:
        """
        Section 4.3.1: entity tag and Last-Modified are both sent.
        """
        stored = entry((b"ETag", b'W/"w"'), (b"Last-Modified", date(T0 - 5)))
        self.assertEqual(list(policy.conditionalHeaders(stored).items()), [
            (b"If-None-Match", b'W/"w"'), (b"If-Modified-Since", date(T0 - 5))])

    def test_severalResponses(self) -> None:
        """
        Section 4.3.1: validating several responses sends all their tags and
        no If-Modified-Since.
        """
        one = entry((b"ETag", b'"a"'), (b"Last-Modified", date(T0 - 5)))
        two = entry((b"ETag", b'"b"'))
        three = entry((b"ETag", b'"a"'))
        self.assertEqual(list(policy.conditionalHeaders(one, [two, three]).items()),
                         [(b"If-None-Match", b'"a", "b"')])

    def test_noDateFallback(self) -> None:
        """
        RFC 9110 section 13.1.3: Date is not used for If-Modified-Since,
        and an invalid Last-Modified is not sent.
        """
        self.assertEqual(len(policy.conditionalHeaders(entry())), 0)
        self.assertEqual(len(policy.conditionalHeaders(
            entry((b"Last-Modified", b"yesterday")))), 0)

    def test_stripPreconditions(self) -> None:
        """
        Section 4.3.2: the client's own preconditions are not forwarded with
        the cache's validation.
        """
        stripped = policy.stripPreconditions(headers(
            (b"If-None-Match", b'"x"'), (b"If-Modified-Since", date(T0)),
            (b"Range", b"bytes=0-1"), (b"If-Range", b'"x"'), (b"Accept", b"*/*")))
        self.assertEqual(list(stripped.items()), [(b"Accept", b"*/*")])


class FreshenWith304Tests(SynchronousTestCase):
    """
    Freshening with a 304: sections 4.3.3, 4.3.4 and 3.2.
    """

    def test_replacesFields(self) -> None:
        """
        Section 3.2: the 304's fields replace the stored ones of the same
        name, in place; the rest are kept.
        """
        merged = policy.freshenWith304(
            headers((b"Cache-Control", b"max-age=1"), (b"X-A", b"1"),
                    (b"X-A", b"2"), (b"Content-Type", b"text/plain")),
            headers((b"x-a", b"3"), (b"Cache-Control", b"max-age=60"),
                    (b"X-New", b"n")))
        self.assertEqual(list(merged.items()), [
            (b"Cache-Control", b"max-age=60"), (b"x-a", b"3"),
            (b"Content-Type", b"text/plain"), (b"X-New", b"n")])

    def test_setCookieNotMerged(self) -> None:
        """
        Sections 3.2 and 7.3: a 304's Set-Cookie does not enter the stored
        response, which every later client would get.
        """
        merged = policy.freshenWith304(
            headers((b"Cache-Control", b"max-age=1")),
            headers((b"Set-Cookie", b"id=1"), (b"Cache-Control", b"max-age=60")))
        self.assertEqual(list(merged.items()), [(b"Cache-Control", b"max-age=60")])

    def test_excludedFields(self) -> None:
        """
        Section 3.2: Content-Length and the fields never stored (section
        3.1) are not taken from the 304.
        """
        merged = policy.freshenWith304(
            headers((b"Content-Length", b"10")),
            headers((b"Content-Length", b"0"), (b"Connection", b"X-Hop"),
                    (b"X-Hop", b"1"), (b"Keep-Alive", b"timeout=1"),
                    (b"Proxy-Authenticate", b"Basic")))
        self.assertEqual(list(merged.items()), [(b"Content-Length", b"10")])

    def test_selectStrong(self) -> None:
        """
        Section 4.3.4: a strong ETag selects every stored response with it,
        and nothing if none has it.
        """
        a1 = entry((b"ETag", b'"a"'))
        a2 = entry((b"ETag", b'"a"'), (b"Vary", b"Accept"))
        b = entry((b"ETag", b'"b"'))
        weak = entry((b"ETag", b'W/"a"'))
        self.assertEqual(policy.selectForUpdate([a1, b, a2, weak],
                                                headers((b"ETag", b'"a"'))),
                         [a1, a2])
        self.assertEqual(policy.selectForUpdate([b], headers((b"ETag", b'"a"'))), [])

    def test_selectWeak(self) -> None:
        """
        Section 4.3.4: a weak validator selects the most recent match.
        """
        older = entry((b"ETag", b'"a"'), responseTime=T0 - 10)
        newer = entry((b"ETag", b'W/"a"'))
        other = entry((b"ETag", b'"b"'), responseTime=T0 + 10)
        self.assertEqual(policy.selectForUpdate(
            [newer, older, other], headers((b"ETag", b'W/"a"'))), [newer])

    def test_selectLastModified(self) -> None:
        """
        Section 4.3.4: without an ETag, Last-Modified selects the most recent
        response with the same one.
        """
        one = entry((b"Last-Modified", date(T0 - 100)))
        two = entry((b"Last-Modified", date(T0 - 50)))
        self.assertEqual(policy.selectForUpdate(
            [one, two], headers((b"Last-Modified", date(T0 - 100)))), [one])

    def test_selectWithoutValidators(self) -> None:
        """
        Section 4.3.4: with no validator, only a single stored response
        without validators is selected.
        """
        bare = entry()
        self.assertEqual(policy.selectForUpdate([bare], Headers()), [bare])
        self.assertEqual(policy.selectForUpdate([bare, entry()], Headers()), [])
        self.assertEqual(policy.selectForUpdate(
            [entry((b"ETag", b'"a"'))], Headers()), [])

    def test_selectWithoutValidatorsOneOffered(self) -> None:
        """
        Section 4.3.4: a 304 without validators answering a conditional
        request built from one stored response selects that response, even
        when it has validators; with several responses offered such a 304
        selects nothing, and one with a validator selects by it.
        """
        tagged = entry((b"ETag", b'"a"'), (b"Vary", b"Accept"),
                       requestFields=((b"Accept", b"x"),))
        other = entry((b"ETag", b'"b"'), (b"Vary", b"Accept"),
                      requestFields=((b"Accept", b"y"),))
        dated = entry((b"Last-Modified", date(T0 - 100)))
        self.assertEqual(policy.selectForUpdate([tagged, other], Headers(), [tagged]),
                         [tagged])
        self.assertEqual(policy.selectForUpdate([dated], Headers(), [dated]), [dated])
        self.assertEqual(policy.selectForUpdate([tagged, other], Headers(),
                                                [tagged, other]), [])
        self.assertEqual(policy.selectForUpdate([tagged, other],
                                                headers((b"ETag", b'"b"')),
                                                [tagged, other]), [other])
        self.assertEqual(policy.selectForUpdate([tagged, other],
                                                headers((b"ETag", b'"b"')), [tagged]),
                         [other])

    def test_freshenedWithoutValidators(self) -> None:
        """
        Sections 4.3.4 and 3.2: the cache's own conditional request for one
        stored response, answered by a 304 that carries only Date (as
        Python's http.server sends it), freshens that response: the 304's
        fields replace the stored ones, the others are kept.
        """
        stored = entry((b"Last-Modified", date(T0 - 1000)), (b"Content-Length", b"5"),
                       (b"Server", b"old"))
        notModified = response((b"Date", date(T0 + 100)), (b"Server", b"new"),
                               status=304)
        outcome = policy.afterRevalidation(request(), stored, notModified,
                                           T0 + 100, T0 + 100, T0 + 100)
        self.assertIsInstance(outcome, Freshened)
        fields = outcome.entry.responseHeaders
        self.assertEqual(fields.get(b"date"), date(T0 + 100))
        self.assertEqual(fields.get(b"server"), b"new")
        self.assertEqual(fields.get(b"last-modified"), date(T0 - 1000))
        self.assertEqual(fields.get(b"content-length"), b"5")
        several = policy.afterRevalidation(
            request(), stored, notModified, T0 + 100, T0 + 100, T0 + 100,
            entries=[stored, entry((b"ETag", b'"x"'))], validated=[])
        self.assertIsInstance(several, Refetch)

    def test_freshened(self) -> None:
        """
        Sections 4.3.3 and 4.2.3: after a matching 304 the entry carries the
        new fields and times, and is fresh again.
        """
        stored = entry((b"Cache-Control", b"max-age=60"), (b"ETag", b'"e"'))
        notModified = response((b"ETag", b'"e"'), (b"Date", date(T0 + 100)),
                               (b"Cache-Control", b"max-age=120"), status=304)
        outcome = policy.afterRevalidation(request(), stored, notModified,
                                           T0 + 100, T0 + 101, T0 + 102)
        self.assertIsInstance(outcome, Freshened)
        self.assertEqual(outcome.age, 2)
        self.assertEqual(outcome.entry.responseHeaders.get(b"cache-control"),
                         b"max-age=120")
        self.assertEqual(outcome.updated, (outcome.entry,))
        self.assertIsInstance(
            policy.decide(request(), [outcome.entry], T0 + 102), Fresh)

    def test_mismatchRefetches(self) -> None:
        """
        Section 4.3.4: a 304 for another representation updates nothing; the
        request is sent again without preconditions.
        """
        stored = entry((b"ETag", b'"e"'))
        outcome = policy.afterRevalidation(
            request(), stored, response((b"ETag", b'"other"'), status=304),
            T0, T0, T0)
        self.assertIsInstance(outcome, Refetch)


class FreshenWithHeadTests(SynchronousTestCase):
    """
    L{policy.freshenWithHead}: section 4.3.5.
    """

    def head(self, stored: StoredEntry, *fields: Field,
             status: int = 200, requestFields: Tuple[Field, ...] = ()):
        return policy.freshenWithHead([stored], headers(*requestFields),
                                      response(*fields, status=status),
                                      T0 + 50, T0 + 50)

    def test_matchingUpdates(self) -> None:
        """
        Section 4.3.5: matching validators and Content-Length update the
        stored response.
        """
        stored = entry((b"ETag", b'"e"'), (b"Content-Length", b"5"),
                       (b"Cache-Control", b"max-age=1"))
        result = self.head(stored, (b"ETag", b'"e"'), (b"Content-Length", b"5"),
                           (b"Cache-Control", b"max-age=99"))
        self.assertEqual(len(result.updated), 1)
        self.assertEqual(result.updated[0].responseHeaders.get(b"cache-control"),
                         b"max-age=99")
        self.assertEqual(result.updated[0].responseTime, T0 + 50)
        self.assertEqual(result.invalidated, ())

    def test_mismatchInvalidates(self) -> None:
        """
        Section 4.3.5: a different validator or length makes it stale.
        """
        stored = entry((b"ETag", b'"e"'), (b"Last-Modified", date(T0)),
                       bodyLength=5)
        for fields in (((b"ETag", b'"f"'),),
                       ((b"Last-Modified", date(T0 + 1)),),
                       ((b"ETag", b'"e"'), (b"Content-Length", b"6")),
                       ()):
            result = self.head(stored, *fields)
            self.assertEqual((result.updated, result.invalidated), ((), (stored,)),
                             fields)
        self.assertEqual(len(self.head(stored, (b"ETag", b'"e"'),
                                       (b"Content-Length", b"5")).updated), 1)

    def test_onlySelectable(self) -> None:
        """
        Section 4.3.5: only responses the HEAD request could select are
        touched; and only a 200 counts.
        """
        stored = entry((b"ETag", b'"e"'), (b"Vary", b"Accept"),
                       requestFields=((b"Accept", b"a"),))
        result = self.head(stored, (b"ETag", b'"f"'),
                           requestFields=((b"Accept", b"b"),))
        self.assertEqual((result.updated, result.invalidated), ((), ()))
        result = self.head(stored, (b"ETag", b'"f"'), status=404,
                           requestFields=((b"Accept", b"a"),))
        self.assertEqual((result.updated, result.invalidated), ((), ()))


class PreconditionTests(SynchronousTestCase):
    """
    L{policy.evaluatePreconditions}: RFC 9110 sections 13.1 and 13.2.2,
    RFC 9111 section 4.3.2.
    """

    stored = headers((b"ETag", b'"v1"'), (b"Last-Modified", date(T0 - 100)),
                     (b"Date", date(T0)))

    def evaluate(self, *fields: Field, method: bytes = b"GET",
                 stored: Optional[Headers] = None, **kw) -> Optional[int]:
        return policy.evaluatePreconditions(
            headers(*fields), self.stored if stored is None else stored,
            method, **kw)

    def test_none(self) -> None:
        """
        RFC 9110 section 13.2.2: without preconditions, answer normally.
        """
        self.assertIsNone(self.evaluate())

    def test_ifMatch(self) -> None:
        """
        RFC 9110 section 13.1.1: strong comparison; C{*} matches any
        current representation; false gives 412.
        """
        self.assertIsNone(self.evaluate((b"If-Match", b'"x", "v1"')))
        self.assertIsNone(self.evaluate((b"If-Match", b"*")))
        self.assertEqual(self.evaluate((b"If-Match", b'"x"')), 412)
        self.assertEqual(self.evaluate((b"If-Match", b'W/"v1"')), 412)

    def test_ifUnmodifiedSince(self) -> None:
        """
        RFC 9110 section 13.1.4: modified since the date gives 412; an
        invalid date is ignored, and so is the field under If-Match.
        """
        self.assertIsNone(self.evaluate((b"If-Unmodified-Since", date(T0 - 100))))
        self.assertEqual(self.evaluate((b"If-Unmodified-Since", date(T0 - 101))), 412)
        self.assertIsNone(self.evaluate((b"If-Unmodified-Since", b"garbage")))
        self.assertIsNone(self.evaluate((b"If-Match", b'"v1"'),
                                        (b"If-Unmodified-Since", date(T0 - 101))))

    def test_ifNoneMatch(self) -> None:
        """
        RFC 9110 section 13.1.2: weak comparison; a match gives 304 for GET
        and HEAD, 412 otherwise; C{*} always matches.
        """
        self.assertEqual(self.evaluate((b"If-None-Match", b'W/"v1"')), 304)
        self.assertEqual(self.evaluate((b"If-None-Match", b'"a", "v1"'),
                                       method=b"HEAD"), 304)
        self.assertEqual(self.evaluate((b"If-None-Match", b"*")), 304)
        self.assertEqual(self.evaluate((b"If-None-Match", b'"v1"'),
                                       method=b"POST"), 412)
        self.assertIsNone(self.evaluate((b"If-None-Match", b'"v2"')))

    def test_ifModifiedSince(self) -> None:
        """
        RFC 9110 section 13.1.3: not modified since the date gives 304.
        """
        self.assertEqual(self.evaluate((b"If-Modified-Since", date(T0 - 100))), 304)
        self.assertIsNone(self.evaluate((b"If-Modified-Since", date(T0 - 101))))

    def test_ifModifiedSinceIgnored(self) -> None:
        """
        RFC 9110 section 13.1.3: ignored with If-None-Match, with an invalid
        date or a list, and for methods other than GET and HEAD.
        """
        self.assertIsNone(self.evaluate((b"If-None-Match", b'"v2"'),
                                        (b"If-Modified-Since", date(T0))))
        self.assertIsNone(self.evaluate((b"If-Modified-Since", b"not a date")))
        self.assertIsNone(self.evaluate(
            (b"If-Modified-Since", date(T0) + b", " + date(T0))))
        self.assertIsNone(self.evaluate((b"If-Modified-Since", date(T0)),
                                        method=b"POST"))

    def test_ifModifiedSinceFallbacks(self) -> None:
        """
        RFC 9111 section 4.3.2: without Last-Modified the stored Date is
        used, and without it the time the response was received.
        """
        dated = headers((b"Date", date(T0)))
        self.assertEqual(self.evaluate((b"If-Modified-Since", date(T0)),
                                       stored=dated), 304)
        self.assertIsNone(self.evaluate((b"If-Modified-Since", date(T0 - 1)),
                                        stored=dated))
        self.assertEqual(self.evaluate((b"If-Modified-Since", date(T0)),
                                       stored=Headers(), responseTime=T0), 304)

    def test_ifModifiedSinceAgainstDate(self) -> None:
        """
        RFC 9110 section 13.1.3 and RFC 9111 section 4.3.2: against a
        stored response without Last-Modified, If-Modified-Since is
        compared with the stored Date, the time it was generated; a
        matching If-None-Match still decides, and a non-matching one makes
        If-Modified-Since ignored.
        """
        dated = headers((b"Date", date(T0)), (b"ETag", b'"v1"'))
        self.assertEqual(self.evaluate((b"If-Modified-Since", date(T0 + 10)),
                                       stored=dated, responseTime=T0 + 5), 304)
        self.assertIsNone(self.evaluate((b"If-Modified-Since", date(T0 - 10)),
                                        stored=dated, responseTime=T0 + 5))
        self.assertIsNone(self.evaluate((b"If-None-Match", b'"v2"'),
                                        (b"If-Modified-Since", date(T0 + 10)),
                                        stored=dated))
        self.assertEqual(self.evaluate((b"If-None-Match", b'"v1"'),
                                       (b"If-Modified-Since", date(T0 - 10)),
                                       stored=dated), 304)

    def test_nonSuccessStored(self) -> None:
        """
        RFC 9110 section 13.2.1: preconditions are ignored when the answer
        would not be 2xx.
        """
        self.assertIsNone(self.evaluate((b"If-None-Match", b"*"), storedStatus=404))

    def test_notModifiedHeaders(self) -> None:
        """
        RFC 9110 section 15.4.5: a 304 carries the cache-related fields, and
        Last-Modified only without an ETag.
        """
        fields = policy.notModifiedHeaders(headers(
            (b"ETag", b'"a"'), (b"Content-Type", b"x"), (b"Vary", b"Accept"),
            (b"Last-Modified", date(T0)), (b"Cache-Control", b"max-age=1")))
        self.assertEqual([n for n, _ in fields.items()],
                         [b"ETag", b"Vary", b"Cache-Control"])
        fields = policy.notModifiedHeaders(headers((b"Last-Modified", date(T0))))
        self.assertEqual(len(fields), 1)


class IfRangeTests(SynchronousTestCase):
    """
    L{policy.ifRangeAllows}: RFC 9110 section 13.1.5.
    """

    def allows(self, value: bytes, *stored: Field) -> bool:
        return policy.ifRangeAllows(headers((b"If-Range", value)), headers(*stored))

    def test_absent(self) -> None:
        """
        RFC 9110 section 13.1.5: without If-Range the range is honoured.
        """
        self.assertTrue(policy.ifRangeAllows(Headers(), Headers()))

    def test_entityTag(self) -> None:
        """
        RFC 9110 section 13.1.5: an entity tag must match strongly.
        """
        self.assertTrue(self.allows(b'"a"', (b"ETag", b'"a"')))
        self.assertFalse(self.allows(b'"b"', (b"ETag", b'"a"')))
        self.assertFalse(self.allows(b'W/"a"', (b"ETag", b'W/"a"')))

    def test_date(self) -> None:
        """
        RFC 9110 sections 13.1.5 and 8.8.2.2: a date must equal a strong
        Last-Modified (Date at least 60 seconds later).
        """
        strong = ((b"Last-Modified", date(T0 - 60)), (b"Date", date(T0)))
        weak = ((b"Last-Modified", date(T0 - 59)), (b"Date", date(T0)))
        self.assertTrue(self.allows(date(T0 - 60), *strong))
        self.assertFalse(self.allows(date(T0 - 61), *strong))
        self.assertFalse(self.allows(date(T0 - 59), *weak))
        self.assertFalse(self.allows(b"nonsense", *strong))


class RangeTests(SynchronousTestCase):
    """
    L{policy.rangeForStoredResponse}: RFC 9110 section 14 (the parser,
    L{cachingproxy.http.fields.parseRange}, is tested in L{tests.test_fields}).
    """

    def test_fromStored(self) -> None:
        """
        RFC 9110 section 14.2: a complete stored 200 answers a GET range
        request, with the length from the entry or Content-Length.
        """
        stored = entry((b"ETag", b'"e"'), bodyLength=100)
        self.assertEqual(policy.rangeForStoredResponse(
            request((b"Range", b"bytes=0-9")), stored), [(0, 9)])
        self.assertEqual(policy.rangeForStoredResponse(
            request((b"Range", b"bytes=0-9"), (b"If-Range", b'"e"')), stored),
            [(0, 9)])
        withLength = entry((b"Content-Length", b"50"))
        self.assertEqual(policy.rangeForStoredResponse(
            request((b"Range", b"bytes=-10")), withLength), [(40, 49)])

    def test_fromStoredIgnored(self) -> None:
        """
        RFC 9110 sections 14.2 and 13.1.5: Range is ignored for HEAD, after
        a failed If-Range, for a non-200 or an unknown length.
        """
        stored = entry((b"ETag", b'"e"'), bodyLength=100)
        ranged = (b"Range", b"bytes=0-9")
        for req, candidate in (
            (request(ranged, method=b"HEAD"), stored),
            (request(ranged, (b"If-Range", b'"f"')), stored),
            (request(ranged), entry(status=404, bodyLength=100)),
            (request(ranged), entry()),
            (request(), stored),
        ):
            self.assertIsNone(policy.rangeForStoredResponse(req, candidate))


#: A strong ETag, a part of a 1000-byte representation.
STRONG = (b"ETag", b'"v1"')


def partial(*fields: Field, ranges=((0, 100),), total: int = 1000,
            responseTime: float = T0) -> StoredEntry:
    """
    An incomplete stored response holding C{ranges} of C{total} bytes.
    """
    return policy.partialEntry(
        entry(STRONG, (b"Cache-Control", b"max-age=60"), *fields,
              responseTime=responseTime),
        ranges, total)


class IncompleteResponseTests(SynchronousTestCase):
    """
    Storing incomplete responses and answering from them: sections 3.3 and
    3.4, RFC 9110 section 14.
    """

    def test_storablePart(self) -> None:
        """
        Section 3.3: a 206 is kept only with one part (not
        multipart/byteranges, RFC 9110 section 14.6), a strong validator
        and a Content-Length, if any, that is the part's.
        """
        ranged = (b"Content-Range", b"bytes 0-99/1000")
        self.assertEqual(policy.storablePart(response(STRONG, ranged, status=206)),
                         (0, 100, 1000))
        self.assertEqual(policy.storablePart(response(
            STRONG, ranged, (b"Content-Length", b"100"), status=206)), (0, 100, 1000))
        for fields in (
            (STRONG, ranged, (b"Content-Length", b"99")),
            ((b"ETag", b'W/"v1"'), ranged),
            ((b"ETag", b"v1"), ranged),
            (ranged,),
            (STRONG, (b"Content-Type", b"multipart/byteranges; boundary=x")),
        ):
            self.assertIsNone(policy.storablePart(response(*fields, status=206)), fields)
        self.assertIsNone(policy.storablePart(response(STRONG, ranged)))

    def test_strongLastModified(self) -> None:
        """
        RFC 9110 section 8.8.2.2: without an ETag, a Last-Modified at least
        60 seconds before the Date is a strong validator; closer, it is
        weak. A weak ETag rules the response out.
        """
        ranged = (b"Content-Range", b"bytes 0-99/1000")
        strong = ((b"Last-Modified", date(T0 - 60)), (b"Date", date(T0)))
        weak = ((b"Last-Modified", date(T0 - 59)), (b"Date", date(T0)))
        self.assertIsNotNone(policy.storablePart(response(ranged, *strong, status=206)))
        self.assertIsNone(policy.storablePart(response(ranged, *weak, status=206)))
        self.assertIsNone(policy.storablePart(response(
            ranged, (b"ETag", b'W/"a"'), *strong, status=206)))

    def test_incompletePrefix(self) -> None:
        """
        Section 3.3: a 200 cut short before its Content-Length is kept as
        a prefix only with a strong validator; a complete one, one without
        a length or with nothing received is not incomplete.
        """
        length = (b"Content-Length", b"1000")
        self.assertEqual(policy.incompletePrefix(response(STRONG, length), 300), 1000)
        self.assertIsNone(policy.incompletePrefix(response(length), 300))
        self.assertIsNone(policy.incompletePrefix(response((b"ETag", b'W/"v1"'), length), 300))
        self.assertIsNone(policy.incompletePrefix(response(STRONG, length), 1000))
        self.assertIsNone(policy.incompletePrefix(response(STRONG, length), 0))
        self.assertIsNone(policy.incompletePrefix(response(STRONG), 300))
        self.assertIsNone(policy.incompletePrefix(response(STRONG, length, status=203), 300))

    def test_mergeRanges(self) -> None:
        """
        Section 3.4: combined ranges are sorted, and overlapping or
        adjacent ones joined.
        """
        self.assertEqual(policy.mergeRanges([(500, 600), (0, 100), (100, 200), (150, 160),
                                             (700, 700)]),
                         ((0, 200), (500, 600)))

    def test_combinable(self) -> None:
        """
        Section 3.4: parts are combined only with the same strong
        validator (strong comparison, RFC 9110 section 8.8.3.2) and the same
        complete length.
        """
        stored = partial()
        self.assertTrue(policy.combinable(stored, response(STRONG), 1000))
        self.assertFalse(policy.combinable(stored, response(STRONG), 999))
        self.assertFalse(policy.combinable(stored, response((b"ETag", b'"v2"')), 1000))
        self.assertFalse(policy.combinable(stored, response((b"ETag", b'W/"v1"')), 1000))
        self.assertFalse(policy.combinable(stored, response(), 1000))
        complete = entry(STRONG, bodyLength=1000)
        self.assertFalse(policy.combinable(complete, response(STRONG), 1000))

    def test_partialEntry(self) -> None:
        """
        Section 3.3: an incomplete entry records its ranges and complete
        length, keeps neither Content-Range nor Content-Length, and its body
        is its ranges one after the other.
        """
        new = entry(STRONG, (b"Content-Range", b"bytes 500-599/1000"),
                    (b"Content-Length", b"100"))
        stored = policy.partialEntry(new, [(500, 600), (0, 100)], 1000)
        self.assertEqual((stored.status, stored.ranges, stored.completeLength,
                          stored.bodyLength), (206, ((0, 100), (500, 600)), 1000, 200))
        self.assertNotIn(b"content-range", stored.responseHeaders)
        self.assertNotIn(b"content-length", stored.responseHeaders)
        self.assertEqual(policy.partialBodyOffset(stored, 0), 0)
        self.assertEqual(policy.partialBodyOffset(stored, 99), 99)
        self.assertEqual(policy.partialBodyOffset(stored, 510), 110)
        self.assertRaises(ValueError, policy.partialBodyOffset, stored, 100)

    def test_combinedBecomesComplete(self) -> None:
        """
        Section 3.4: parts that cover the representation make a complete
        200 with its Content-Length; the newest response's fields, aside
        from Content-Range, replace the stored ones of the same name, and
        the others stay.
        """
        old = partial((b"X-Old", b"kept"), (b"X-Both", b"old"))
        new = entry(STRONG, (b"Cache-Control", b"max-age=120"), (b"X-Both", b"new"),
                    (b"Content-Range", b"bytes 100-999/1000"), responseTime=T0 + 5)
        done = policy.partialEntry(new, [(0, 100), (100, 1000)], 1000, previous=old)
        self.assertEqual((done.status, done.ranges, done.completeLength, done.bodyLength),
                         (200, None, None, 1000))
        fields = done.responseHeaders
        self.assertEqual(fields.get(b"content-length"), b"1000")
        self.assertNotIn(b"content-range", fields)
        self.assertEqual(fields.get(b"cache-control"), b"max-age=120")
        self.assertEqual(fields.getAll(b"x-both"), [b"new"])
        self.assertEqual(fields.get(b"x-old"), b"kept")
        self.assertEqual(done.responseTime, T0 + 5)

    def test_coveredRange(self) -> None:
        """
        Section 3.3 and RFC 9110 section 14.1.2: a single range wholly
        within one stored range, open and suffix forms resolved against the
        complete length.
        """
        stored = partial(ranges=((0, 100), (900, 1000)))

        def covered(value, *fields, method=b"GET"):
            return policy.coveredRange(request((b"Range", value), *fields, method=method),
                                       stored)

        self.assertEqual(covered(b"bytes=10-20"), (10, 20))
        self.assertEqual(covered(b"bytes=0-99"), (0, 99))
        self.assertEqual(covered(b"bytes=-100"), (900, 999))
        self.assertEqual(covered(b"bytes=950-"), (950, 999))
        self.assertEqual(covered(b"bytes=950-5000"), (950, 999))
        self.assertEqual(covered(b"bytes=10-20", (b"If-Range", b'"v1"')), (10, 20))
        for value in (b"bytes=90-110", b"bytes=-101", b"bytes=0-", b"bytes=0-1,5-6",
                      b"bytes=1000-", b"items=0-1"):
            self.assertIsNone(covered(value), value)
        self.assertIsNone(covered(b"bytes=10-20", (b"If-Range", b'"v2"')))
        self.assertIsNone(covered(b"bytes=10-20", method=b"HEAD"))
        self.assertIsNone(policy.coveredRange(request(), stored))
        self.assertEqual(policy.rangeForStoredResponse(
            request((b"Range", b"bytes=10-20")), stored), [(10, 20)])
        self.assertIsNone(policy.rangeForStoredResponse(
            request((b"Range", b"bytes=90-110")), stored))

    def test_neverServedWhole(self) -> None:
        """
        Section 3.3: an incomplete response never answers a request that is
        not for a range it holds: a plain GET, a HEAD or a range outside
        are misses with C{fwd=partial} (RFC 9211 section 2.2).
        """
        stored = partial()
        for req in (request(), request(method=b"HEAD"),
                    request((b"Range", b"bytes=50-150"))):
            decision = policy.decide(req, [stored], T0 + 1)
            self.assertIsInstance(decision, Miss)
            self.assertEqual(decision.fwd, "partial")

    def test_freshPartServed(self) -> None:
        """
        Sections 3.3 and 4.2: a fresh incomplete response answers a range
        it holds; a complete response of another variant is not needed.
        """
        stored = partial()
        decision = policy.decide(request((b"Range", b"bytes=10-20")), [stored], T0 + 1)
        self.assertIsInstance(decision, Fresh)
        self.assertIs(decision.entry, stored)

    def test_stalePartRevalidatedForTheRange(self) -> None:
        """
        Sections 3.3 and 4.3.1: a stale incomplete response is validated
        with its ETag, asking for the client's range alone.
        """
        stored = partial()
        decision = policy.decide(request((b"Range", b"bytes=10-20")), [stored], T0 + 61)
        self.assertIsInstance(decision, Revalidate)
        self.assertEqual(decision.conditionalHeaders.get(b"if-none-match"), b'"v1"')
        self.assertEqual(decision.conditionalHeaders.get(b"range"), b"bytes=10-20")

    def test_stalePartRefreshedForTheRange(self) -> None:
        """
        Section 3.3 and RFC 5861 section 3: a stale incomplete response
        within stale-while-revalidate is served, and refreshed for the
        client's range alone.
        """
        stored = partial((b"Cache-Control", b"max-age=60, stale-while-revalidate=600"))
        decision = policy.decide(request((b"Range", b"bytes=10-20")), [stored], T0 + 61)
        self.assertIsInstance(decision, StaleWhileRevalidate)
        self.assertEqual(decision.conditionalHeaders.get(b"range"), b"bytes=10-20")

    def test_staleOnErrorOnlyForARangeHeld(self) -> None:
        """
        Section 3.3 and RFC 5861 section 4: stale-if-error may serve an
        incomplete response only for a range it holds.
        """
        stored = partial((b"Cache-Control", b"max-age=60, stale-if-error=600"))
        self.assertIsNotNone(policy.staleOnError(
            request((b"Range", b"bytes=10-20")), [stored], T0 + 100))
        self.assertIsNone(policy.staleOnError(request(), [stored], T0 + 100))

    def test_headKeepsMatchingPart(self) -> None:
        """
        Section 4.3.5: a HEAD response whose Content-Length is the
        representation's refreshes an incomplete response instead of
        dropping it.
        """
        stored = partial()
        update = policy.freshenWithHead(
            [stored], headers(), response(STRONG, (b"Content-Length", b"1000")), T0 + 5,
            T0 + 5)
        self.assertEqual(len(update.updated), 1)
        self.assertEqual(update.updated[0].ranges, stored.ranges)
        self.assertEqual(update.invalidated, ())

    def test_replacedEntry(self) -> None:
        """
        Section 4.1: the stored response a new one replaces is the one of
        the same variant.
        """
        plain = partial()
        french = entry(STRONG, (b"Vary", b"Accept-Language"),
                       requestFields=((b"Accept-Language", b"fr"),))
        self.assertIs(policy.replacedEntry([french, plain], request(), response(STRONG)),
                      plain)
        vary = response(STRONG, (b"Vary", b"Accept-Language"))
        self.assertIs(policy.replacedEntry(
            [plain, french], request((b"Accept-Language", b"fr")), vary), french)
        self.assertIsNone(policy.replacedEntry(
            [plain, french], request((b"Accept-Language", b"de")), vary))

    def test_isRangeRequest(self) -> None:
        """
        Section 3.3 and RFC 9110 section 14.2: a range request, with If-Range
        at most, may have its answer stored; other preconditions keep it
        from the store.
        """
        ranged = (b"Range", b"bytes=0-9")
        self.assertTrue(policy.isRangeRequest(headers(ranged)))
        self.assertTrue(policy.isRangeRequest(headers(ranged, (b"If-Range", b'"v1"'))))
        self.assertFalse(policy.isRangeRequest(headers(ranged, (b"If-None-Match", b'"v1"'))))
        self.assertFalse(policy.isRangeRequest(headers()))


class InvalidationTests(SynchronousTestCase):
    """
    L{policy.invalidatedURIs}: section 4.4.
    """

    target = b"http://example.com/items/1"

    def test_unsafeMethod(self) -> None:
        """
        Section 4.4: a non-error answer to an unsafe (or unknown) method
        invalidates the target URI.
        """
        for method in (b"POST", b"PUT", b"DELETE", b"PATCH", b"FROB"):
            self.assertEqual(policy.invalidatedURIs(
                method, self.target, 204, Headers()), [self.target])

    def test_safeOrError(self) -> None:
        """
        Section 4.4: safe methods and error statuses invalidate nothing.
        """
        self.assertEqual(policy.invalidatedURIs(b"GET", self.target, 200, Headers()), [])
        self.assertEqual(policy.invalidatedURIs(b"OPTIONS", self.target, 200,
                                                Headers()), [])
        for status in (100, 404, 500):
            self.assertEqual(policy.invalidatedURIs(
                b"POST", self.target, status, Headers()), [])
        self.assertEqual(policy.invalidatedURIs(
            b"POST", self.target, 303, Headers()), [self.target])

    def test_locationAndContentLocation(self) -> None:
        """
        Section 4.4: Location and Content-Location of the same origin are
        invalidated too, resolved against the target URI.
        """
        uris = policy.invalidatedURIs(b"POST", b"HTTP://Example.com:80/items/1",
                                      201, headers(
            (b"Location", b"../items/2#frag"),
            (b"Content-Location", b"http://EXAMPLE.com/items/3")))
        self.assertEqual(uris, [self.target, b"http://example.com/items/2",
                                b"http://example.com/items/3"])

    def test_otherOrigin(self) -> None:
        """
        Section 4.4: URIs of another origin are never invalidated.
        """
        uris = policy.invalidatedURIs(b"POST", self.target, 201, headers(
            (b"Location", b"https://example.com/items/2"),
            (b"Content-Location", b"http://evil.example/items/3")))
        self.assertEqual(uris, [self.target])


class CacheStatusTests(SynchronousTestCase):
    """
    L{policy.cacheStatus}: RFC 9211.
    """

    def test_hit(self) -> None:
        """
        RFC 9211 sections 2.1 and 2.5: a hit with its remaining freshness.
        """
        self.assertEqual(policy.cacheStatus(hit=True, ttl=12.7),
                         b"cachingproxy; hit; ttl=12")

    def test_forwarded(self) -> None:
        """
        RFC 9211 sections 2.2 to 2.4 and 2.6: why it was forwarded, the
        upstream status, whether it was stored.
        """
        self.assertEqual(policy.cacheStatus(fwd="uri-miss", stored=True),
                         b"cachingproxy; fwd=uri-miss; stored")
        self.assertEqual(policy.cacheStatus(fwd="stale", fwdStatus=304, ttl=-3.5),
                         b"cachingproxy; fwd=stale; fwd-status=304; ttl=-4")
        self.assertEqual(policy.cacheStatus(fwd="request", collapsed=True),
                         b"cachingproxy; fwd=request; collapsed")

    def test_keyAndDetail(self) -> None:
        """
        RFC 9211 sections 2.8 and 2.9: key is a string, detail a token or a
        string; a name that is no token becomes a string.
        """
        self.assertEqual(
            policy.cacheStatus(name=b"my cache", key=b'/a"b', detail=b"x y"),
            b'"my cache"; key="/a\\"b"; detail="x y"')
        self.assertEqual(policy.cacheStatus(detail=b"only-if-cached"),
                         b"cachingproxy; detail=only-if-cached")

    def test_unknownFwd(self) -> None:
        """
        RFC 9211 section 2.2: only the defined fwd values are produced.
        """
        self.assertRaises(ValueError, policy.cacheStatus, fwd="because")


class PurityTests(SynchronousTestCase):
    """
    The policy module stays pure (DESIGN.md).
    """

    def test_noTwistedImport(self) -> None:
        """
        The module imports nothing from Twisted and reads no clock.
        """
        import inspect
        source = inspect.getsource(policy)
        self.assertNotIn("import twisted", source)
        self.assertNotIn("from twisted", source)
        self.assertNotIn("time.time", source)

    def test_allExported(self) -> None:
        """
        Every name in C{__all__} exists.
        """
        for name in policy.__all__:
            self.assertTrue(hasattr(policy, name), name)
