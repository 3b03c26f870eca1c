"""
Tests for L{cachingproxy.http.fields}: the field values HTTP caching reads.
Section numbers are RFC 9111's unless another document is named.
"""

from __future__ import annotations

import math
from typing import Tuple

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cachingproxy.http.fields import (
    UNSATISFIABLE,
    CacheControl,
    contentRange,
    deltaSeconds,
    etagOf,
    normalizedFieldValue,
    parseCacheControl,
    parseETag,
    parseRange,
    parseTargetedCacheControl,
    requestCacheControl,
    sfString,
    sfTokenOrString,
    strongMatch,
    weakMatch,
)
from cachingproxy.http.headers import Headers

_settings = settings(max_examples=300, deadline=None, database=None)

Field = Tuple[bytes, bytes]


def headers(*fields: Field) -> Headers:
    return Headers(list(fields))


def cc(value: bytes) -> CacheControl:
    return parseCacheControl(headers((b"Cache-Control", value)))


class CacheControlParsingTests(SynchronousTestCase):
    """
    L{parseCacheControl}: sections 5.2 and 4.2.1.
    """

    def test_absent(self) -> None:
        """
        Section 5.2: without the field there are no directives.
        """
        self.assertEqual(parseCacheControl(Headers()), CacheControl())

    def test_caseInsensitive(self) -> None:
        """
        Section 5.2: directive names are compared case-insensitively.
        """
        parsed = cc(b"MAX-AGE=10, No-Store, Public")
        self.assertEqual(parsed.maxAge, 10)
        self.assertTrue(parsed.noStore)
        self.assertTrue(parsed.public)

    def test_quotedArgument(self) -> None:
        """
        Section 5.2: recipients accept the quoted-string form of an
        argument, C{max-age="10"}.
        """
        self.assertEqual(cc(b'max-age="10"').maxAge, 10)

    def test_oddSpacing(self) -> None:
        """
        Section 5.2: whitespace around members, around C{=} and empty list
        members are tolerated.
        """
        parsed = cc(b"  max-age = 10 ,, ,\tpublic  ")
        self.assertEqual(parsed.maxAge, 10)
        self.assertTrue(parsed.public)

    def test_severalLines(self) -> None:
        """
        Section 5.2: several Cache-Control lines combine into one list.
        """
        parsed = parseCacheControl(headers(
            (b"Cache-Control", b"max-age=10"),
            (b"cache-control", b"must-revalidate")))
        self.assertEqual(parsed.maxAge, 10)
        self.assertTrue(parsed.mustRevalidate)

    def test_duplicateKeepsMostRestrictive(self) -> None:
        """
        Section 4.2.1: of repeated delta-seconds directives the most
        restrictive is kept, the smallest.
        """
        self.assertEqual(cc(b"max-age=100, max-age=10").maxAge, 10)
        self.assertEqual(cc(b"s-maxage=5, s-maxage=50").sMaxAge, 5)
        self.assertEqual(cc(b"max-stale, max-stale=20").maxStale, 20)

    def test_duplicateMinFreshKeepsLargest(self) -> None:
        """
        Section 4.2.1: for min-fresh the most restrictive is the largest.
        """
        self.assertEqual(cc(b"min-fresh=5, min-fresh=50").minFresh, 50)

    def test_invalidArgumentIsZero(self) -> None:
        """
        Section 4.2.1: invalid freshness information makes the response
        stale, so a non-integer, negative or missing max-age counts as 0.
        """
        for value in (b"max-age=abc", b"max-age=-1", b"max-age=1.5",
                      b"max-age", b'max-age=""'):
            self.assertEqual(cc(value).maxAge, 0, value)

    def test_overflowIsCapped(self) -> None:
        """
        Section 1.2.2: a delta-seconds too large to represent is 2^31.
        """
        self.assertEqual(cc(b"max-age=99999999999999999999").maxAge, 2**31)
        self.assertEqual(cc(b"max-age=2147483649").maxAge, 2**31)

    def test_maxStale(self) -> None:
        """
        Section 5.2.1.2: max-stale without an argument accepts any
        staleness; with one, that many seconds.
        """
        self.assertEqual(cc(b"max-stale").maxStale, math.inf)
        self.assertEqual(cc(b"max-stale=30").maxStale, 30)

    def test_noCacheUnqualified(self) -> None:
        """
        Section 5.2.2.4: no-cache without an argument.
        """
        parsed = cc(b"no-cache")
        self.assertTrue(parsed.noCache)
        self.assertEqual(parsed.noCacheFields, frozenset())

    def test_noCacheFieldList(self) -> None:
        """
        Section 5.2.2.4: the qualified form lists field names, split on
        commas inside the quoted string and compared in lower case.
        """
        parsed = cc(b'no-cache="Set-Cookie, X-Foo", max-age=5')
        self.assertFalse(parsed.noCache)
        self.assertEqual(parsed.noCacheFields,
                         frozenset([b"set-cookie", b"x-foo"]))
        self.assertEqual(parsed.maxAge, 5)

    def test_noCacheBothForms(self) -> None:
        """
        Section 4.2.1: with both forms the unqualified one, more
        restrictive, still applies.
        """
        parsed = cc(b'no-cache="a", no-cache')
        self.assertTrue(parsed.noCache)
        self.assertEqual(parsed.noCacheFields, frozenset([b"a"]))

    def test_privateTokenArgument(self) -> None:
        """
        Section 5.2.2.7: C{private} accepts the token form too.
        """
        parsed = cc(b"private=X-Secret")
        self.assertFalse(parsed.private)
        self.assertEqual(parsed.privateFields, frozenset([b"x-secret"]))

    def test_emptyFieldListIsUnqualified(self) -> None:
        """
        Section 5.2.2.7: an empty field list restricts nothing by name, so
        it is read as the unqualified (more restrictive) directive.
        """
        self.assertTrue(cc(b'private=""').private)

    def test_quotedEscapes(self) -> None:
        """
        RFC 9110 section 5.6.4: backslash escapes in a quoted argument.
        """
        self.assertEqual(cc(b'ext="a\\"b", max-age=1').get(b"ext"), b'a"b')

    def test_extensions(self) -> None:
        """
        Section 5.2.3: unknown directives are kept for extensions.
        """
        parsed = cc(b"community=UCI, immutable")
        self.assertIn(b"immutable", parsed)
        self.assertEqual(parsed.get(b"COMMUNITY"), b"UCI")
        self.assertIsNone(parsed.get(b"immutable"))
        self.assertNotIn(b"other", parsed)

    def test_otherFieldName(self) -> None:
        """
        The same syntax can be read from another field name.
        """
        parsed = parseCacheControl(
            headers((b"X-CC", b"max-age=3")), b"x-cc")
        self.assertEqual(parsed.maxAge, 3)


class RequestDirectiveTests(SynchronousTestCase):
    """
    L{requestCacheControl}: sections 5.2.1 and 5.4.
    """

    def test_requestDirectives(self) -> None:
        """
        Section 5.2.1: max-age, max-stale, min-fresh, no-cache, no-store and
        only-if-cached are read from a request.
        """
        parsed = requestCacheControl(headers((
            b"Cache-Control",
            b"max-age=5, max-stale=6, min-fresh=7, no-cache, no-store, "
            b"only-if-cached")))
        self.assertEqual(
            (parsed.maxAge, parsed.maxStale, parsed.minFresh),
            (5, 6, 7))
        self.assertTrue(parsed.noCache and parsed.noStore and parsed.onlyIfCached)

    def test_pragmaNoCache(self) -> None:
        """
        Section 5.4: without Cache-Control, Pragma: no-cache means no-cache.
        """
        self.assertTrue(requestCacheControl(
            headers((b"Pragma", b"No-Cache"))).noCache)

    def test_pragmaIgnoredWithCacheControl(self) -> None:
        """
        Section 5.4: when Cache-Control is present Pragma is ignored.
        """
        self.assertFalse(requestCacheControl(headers(
            (b"Pragma", b"no-cache"),
            (b"Cache-Control", b"max-age=10"))).noCache)


class RangeTests(SynchronousTestCase):
    """
    L{parseRange}: RFC 9110 section 14.
    """

    def test_forms(self) -> None:
        """
        RFC 9110 section 14.1.2: first-last, open-ended and suffix ranges,
        several at once, clipped to the representation.
        """
        self.assertEqual(parseRange(b"bytes=0-499", 1000), [(0, 499)])
        self.assertEqual(parseRange(b"bytes=900-", 1000), [(900, 999)])
        self.assertEqual(parseRange(b"bytes=-100", 1000), [(900, 999)])
        self.assertEqual(parseRange(b"bytes=-5000", 1000), [(0, 999)])
        self.assertEqual(parseRange(b"bytes=990-2000", 1000), [(990, 999)])
        self.assertEqual(parseRange(b"BYTES=0-0, 2-3 ,-1", 10),
                         [(0, 0), (2, 3), (9, 9)])

    def test_unsatisfiable(self) -> None:
        """
        RFC 9110 section 14.1.2: ranges starting past the end, or a zero
        suffix, are unsatisfiable; if none is left, 416.
        """
        self.assertEqual(parseRange(b"bytes=1000-", 1000), UNSATISFIABLE)
        self.assertEqual(parseRange(b"bytes=-0", 1000), UNSATISFIABLE)
        self.assertEqual(parseRange(b"bytes=2000-3000, 5-6", 1000), [(5, 6)])

    def test_ignored(self) -> None:
        """
        RFC 9110 section 14.2: invalid syntax, another unit or too many
        ranges make the field ignored.
        """
        for value in (b"bytes=a-b", b"bytes=5-1", b"items=0-1", b"bytes=",
                      b"bytes=-", b"bytes 0-1", b"bytes=0-1-2", b"bytes=1 -2"):
            self.assertIsNone(parseRange(value, 1000), value)
        self.assertIsNone(parseRange(b"bytes=" + b",".join(
            [b"%d-%d" % (i, i) for i in range(20)]), 1000))
        self.assertIsNone(parseRange(b"bytes=0-", 0))



class ContentRangeTests(SynchronousTestCase):
    """
    L{contentRange}: RFC 9110 section 14.4.
    """

    def test_contentRange(self) -> None:
        """
        RFC 9110 section 14.4: one part with its complete length, as a
        half-open range; an unknown length, an unsatisfied range, an
        invalid or repeated field is not a storable part.
        """
        self.assertEqual(contentRange(headers(
            (b"Content-Range", b"bytes 10-19/100"))), (10, 20, 100))
        self.assertEqual(contentRange(headers(
            (b"Content-Range", b"Bytes 0-0/1"))), (0, 1, 1))
        for value in (b"bytes 0-9/*", b"bytes */100", b"bytes 9-0/100", b"bytes 0-100/100",
                      b"items 0-9/100", b"bytes 0-9", b"bytes=0-9/100"):
            self.assertIsNone(contentRange(headers((b"Content-Range", value))), value)
        self.assertIsNone(contentRange(headers(
            (b"Content-Range", b"bytes 0-9/100"), (b"Content-Range", b"bytes 0-9/100"))))


class DeltaSecondsTests(SynchronousTestCase):
    """
    L{deltaSeconds}: section 1.2.2.
    """

    def test_values(self) -> None:
        """
        Digits only; a value over 2^31, however long, is 2^31.
        """
        self.assertEqual(deltaSeconds(b"0"), 0)
        self.assertEqual(deltaSeconds(b"120"), 120)
        self.assertEqual(deltaSeconds(b"2147483649"), 2**31)
        self.assertEqual(deltaSeconds(b"9" * 40), 2**31)
        for value in (None, b"", b"-1", b"1.5", b" 1", b"0x10"):
            self.assertIsNone(deltaSeconds(value), value)


class ETagTests(SynchronousTestCase):
    """
    L{parseETag}, L{strongMatch}, L{weakMatch}: RFC 9110 section 8.8.3.
    """

    def test_parse(self) -> None:
        """
        A quoted opaque tag, weak with C{W/}; surrounding whitespace is
        allowed, anything else makes it invalid.
        """
        self.assertEqual(parseETag(b' "abc" '), parseETag(b'"abc"'))
        self.assertFalse(parseETag(b'"abc"').weak)
        self.assertTrue(parseETag(b'W/"abc"').weak)
        self.assertEqual(parseETag(b'W/"abc"').opaque, b"abc")
        self.assertEqual(parseETag(b'""').opaque, b"")
        for value in (None, b"abc", b'"abc', b'w/"abc"', b'"a"b"', b'"'):
            self.assertIsNone(parseETag(value), value)

    def test_comparison(self) -> None:
        """
        RFC 9110 section 8.8.3.2: strong comparison needs both strong and
        the same tag; weak comparison only the same tag.
        """
        strong, weak, other = parseETag(b'"1"'), parseETag(b'W/"1"'), parseETag(b'"2"')
        self.assertTrue(strongMatch(strong, parseETag(b'"1"')))
        self.assertFalse(strongMatch(strong, weak))
        self.assertFalse(strongMatch(strong, other))
        self.assertFalse(strongMatch(None, None))
        self.assertTrue(weakMatch(strong, weak))
        self.assertTrue(weakMatch(weak, weak))
        self.assertFalse(weakMatch(weak, other))
        self.assertFalse(weakMatch(weak, None))

    def test_etagOf(self) -> None:
        """
        The ETag field of a head, or C{None} when absent or invalid.
        """
        self.assertEqual(etagOf(headers((b"ETag", b'"x"'))).opaque, b"x")
        self.assertIsNone(etagOf(headers()))
        self.assertIsNone(etagOf(headers((b"ETag", b"x"))))


class NormalizedFieldValueTests(SynchronousTestCase):
    """
    L{normalizedFieldValue}: section 4.1.
    """

    def test_listValues(self) -> None:
        """
        Any list value loses whitespace around commas and empty members,
        and keeps case and order.
        """
        self.assertEqual(normalizedFieldValue(b"x-list", b" B ,a,, C "), b"B, a, C")

    def test_negotiationFields(self) -> None:
        """
        Negotiation fields are also lower-cased, stripped of spaces around
        parameters, with weights shortened (a weight of 1 left out) and
        members sorted.
        """
        self.assertEqual(
            normalizedFieldValue(b"accept-encoding", b"GZIP;Q=0.500, br ; q=1.0"),
            b"br, gzip;q=0.5",
        )
        self.assertEqual(
            normalizedFieldValue(b"accept", b'text/html;level="1";q=0.5'),
            b'text/html;level="1";q=0.5',
        )


class StructuredSerialisationTests(SynchronousTestCase):
    """
    L{sfString} and L{sfTokenOrString}: RFC 8941 sections 4.1.6 and 4.1.7.
    """

    def test_string(self) -> None:
        """
        Quotes and backslashes are escaped; characters a String cannot hold
        are dropped.
        """
        self.assertEqual(sfString(b'a"b\\c'), b'"a\\"b\\\\c"')
        self.assertEqual(sfString(b"a\x00b\xe9c\n"), b'"abc"')

    def test_tokenOrString(self) -> None:
        """
        A value that is a Token stays bare; anything else is a String.
        """
        self.assertEqual(sfTokenOrString(b"cachingproxy"), b"cachingproxy")
        self.assertEqual(sfTokenOrString(b"*/x:y"), b"*/x:y")
        self.assertEqual(sfTokenOrString(b"1abc"), b'"1abc"')
        self.assertEqual(sfTokenOrString(b"a b"), b'"a b"')
        self.assertEqual(sfTokenOrString(b""), b'""')


class ParsingPropertyTests(SynchronousTestCase):
    """
    Parsers never raise on what the network may send.
    """

    @_settings
    @given(st.binary(max_size=200))
    def test_cacheControlNeverRaises(self, value: bytes) -> None:
        """
        Section 5.2: any bytes parse to some directives; delta-seconds stay
        within [0, 2^31] (section 1.2.2).
        """
        parsed = parseCacheControl(Headers([(b"Cache-Control", value)]))
        for seconds in (parsed.maxAge, parsed.sMaxAge, parsed.minFresh):
            if seconds is not None:
                self.assertTrue(0 <= seconds <= 2**31)
        parseTargetedCacheControl(
            Headers([(b"CDN-Cache-Control", value)]), b"cdn-cache-control")

    @_settings
    @given(st.text(alphabet="0123456789-=, abyt", max_size=40).map(str.encode),
           st.integers(0, 2000))
    def test_rangesInBounds(self, spec: bytes, length: int) -> None:
        """
        RFC 9110 section 14.1.2: ranges returned are satisfiable, within the
        representation.
        """
        for value in (spec, b"bytes=" + spec):
            result = parseRange(value, length)
            if result is None or result == UNSATISFIABLE:
                continue
            self.assertTrue(result)
            for first, last in result:
                self.assertTrue(0 <= first <= last < length, (value, length))

    @_settings
    @given(st.one_of(
        st.binary(max_size=30),
        st.lists(st.sampled_from([
            b"max-age", b"no-cache", b"private", b"x", b"=", b",", b";",
            b" ", b"?1", b"?0", b"60", b"1.5", b'"a, b"', b"(a b)", b":aGk=:",
            b"tok", b"-1", b"@1", b'%"x"', b"\t", b"\xe9"]), max_size=8,
        ).map(b"".join),
    ))
    def test_targetedNeverRaises(self, value) -> None:
        """
        RFC 9213 section 2.1: any targeted field value either parses or is
        ignored; nothing raises.
        """
        parsed = parseTargetedCacheControl(
            Headers([(b"CDN-Cache-Control", value)]), b"cdn-cache-control")
        self.assertTrue(parsed is None
                        or isinstance(parsed, CacheControl), value)
