"""
Property tests for L{cachingproxy.cache.policy} (hypothesis): invariants that hold
for any input, each tied to the RFC section that implies it.
"""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from twisted.trial.unittest import SynchronousTestCase

from cachingproxy.cache import policy
from cachingproxy.http.headers import Headers, formatHTTPDate, parseHTTPDate
from cachingproxy.http.message import ResponseHead

T0 = 1_700_000_000

_settings = settings(max_examples=300, deadline=None, database=None)

#: Times within a few years of T0, whole seconds (HTTP dates have no more).
times = st.integers(min_value=T0 - 10**8, max_value=T0 + 10**8)

directiveTexts = st.lists(
    st.sampled_from([
        b"max-age=60", b"max-age=0", b"max-age=-5", b"max-age=abc",
        b"s-maxage=30", b'max-age="10"', b"no-cache", b"no-store", b"public",
        b"private", b"must-revalidate", b"max-age=99999999999999999",
        b"stale-while-revalidate=5", b"immutable", b"",
    ]),
    max_size=4,
).map(b", ".join)

dateTexts = st.one_of(times.map(formatHTTPDate), st.sampled_from([b"0", b"junk", b""]))


@st.composite
def responses(draw) -> ResponseHead:
    """
    Responses with arbitrary mixes of freshness information.
    """
    fields = Headers()
    if draw(st.booleans()):
        fields.add(b"Cache-Control", draw(directiveTexts))
    if draw(st.booleans()):
        fields.add(b"CDN-Cache-Control", draw(directiveTexts))
    for name in (b"Date", b"Expires", b"Last-Modified"):
        for _ in range(draw(st.integers(0, 2))):
            fields.add(name, draw(dateTexts))
    if draw(st.booleans()):
        fields.add(b"Age", draw(st.sampled_from([b"0", b"10", b"x", b"-1",
                                                 b"99999999999999"])))
    status = draw(st.sampled_from([200, 204, 206, 301, 302, 404, 500, 503]))
    return ResponseHead(status, headers=fields)


class FreshnessPropertyTests(SynchronousTestCase):
    """
    Sections 4.2.1 to 4.2.3 as invariants.
    """

    @_settings
    @given(responses(), times)
    def test_lifetimeNeverNegative(self, response: ResponseHead,
                                   responseTime: int) -> None:
        """
        Section 4.2.1: a freshness lifetime is never negative, and a
        heuristic one never exceeds the configured cap (section 4.2.2).
        """
        lifetime = policy.freshnessLifetime(response, responseTime=responseTime)
        self.assertGreaterEqual(lifetime, 0)
        cc, _ = policy.effectiveCacheControl(response.headers)
        if cc.maxAge is None and cc.sMaxAge is None and b"expires" not in response.headers:
            self.assertLessEqual(lifetime, policy.DEFAULT_OPTIONS.maxHeuristic)

    @_settings
    @given(responses(), times, st.integers(0, 100), st.integers(-10**6, 10**6),
           st.integers(0, 10**6))
    def test_ageMonotonic(self, response: ResponseHead, requestTime: int,
                          delay: int, offset: int, later: int) -> None:
        """
        Section 4.2.3: the current age is never negative and never
        decreases as time goes on.
        """
        responseTime = requestTime + delay
        now = responseTime + offset
        age = policy.currentAge(response.headers, requestTime, responseTime, now)
        older = policy.currentAge(response.headers, requestTime, responseTime,
                                  now + later)
        self.assertGreaterEqual(age, 0)
        self.assertGreaterEqual(older, age)

    @_settings
    @given(st.floats(allow_nan=True, allow_infinity=True))
    def test_ageHeaderBounded(self, age: float) -> None:
        """
        Section 5.1: Age is digits, at most 2147483648.
        """
        value = policy.ageHeaderValue(age)
        self.assertTrue(value.isdigit())
        self.assertLessEqual(int(value), 2**31)


class VaryPropertyTests(SynchronousTestCase):
    """
    Section 4.1 as an invariant.
    """

    fieldValues = st.lists(
        st.sampled_from([b"gzip", b"br", b" gzip ,br", b"gzip, br", b"en"]),
        max_size=2)

    @_settings
    @given(fieldValues, fieldValues, st.sampled_from([b"Accept-Encoding", b"*", b""]))
    def test_secondaryKeyAgreesWithVaryMatches(self, one, two, vary) -> None:
        """
        Section 4.1: two requests share a secondary key exactly when one
        matches a response stored for the other.
        """
        stored = Headers([(b"Accept-Encoding", v) for v in one])
        new = Headers([(b"accept-encoding", v) for v in two])
        responseHeaders = Headers([(b"Vary", vary)])
        keyOne = policy.secondaryKey(responseHeaders, stored)
        keyTwo = policy.secondaryKey(responseHeaders, new)
        matches = policy.varyMatches(stored, responseHeaders, new)
        self.assertEqual(matches, keyOne is not None and keyOne == keyTwo)


class FieldParsingPropertyTests(SynchronousTestCase):
    """
    Dates as an invariant of their parser.
    """

    @_settings
    @given(st.integers(min_value=0, max_value=253402300799))
    def test_datesRoundTrip(self, when) -> None:
        """
        RFC 9110 section 5.6.7: any time from 1970 to 9999, written as
        IMF-fixdate or asctime, parses back to itself.
        """
        imf = formatHTTPDate(when)
        t = time.gmtime(when)
        asctime = b"%s %s %2d %02d:%02d:%02d %04d" % (
            imf[:3], imf[8:11], t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
            t.tm_year)
        self.assertEqual(parseHTTPDate(imf), when)
        self.assertEqual(parseHTTPDate(asctime), when, asctime)
