"""
L{cachingproxy.proxy.forwarding}: what forwarding fields tell an origin, as plain
asserts.
"""

from twisted.trial.unittest import SynchronousTestCase

from cachingproxy.proxy.forwarding import Disagreement, forwardedParameters, toldTarget
from cachingproxy.http.headers import Headers


def headers(*fields):
    h = Headers()
    for name, value in fields:
        h.add(name, value)
    return h


class ForwardedParametersTests(SynchronousTestCase):
    """
    L{forwardedParameters}: RFC 7239 section 4.
    """

    def test_firstElement(self):
        """
        RFC 7239 section 4: the parameters of the first element (nearest
        the client) are read, names in lower case, quoted values unquoted.
        """
        self.assertEqual(
            forwardedParameters(b'For=192.0.2.1;Host="a.example:8080";proto=https, '
                                b'for=10.0.0.1;host=b.example'),
            {b"for": b"192.0.2.1", b"host": b"a.example:8080", b"proto": b"https"})

    def test_quotedComma(self):
        """
        RFC 7239 section 4: a comma inside a quoted value does not end the
        element; a quoted-pair is unescaped.
        """
        self.assertEqual(
            forwardedParameters(b'host="a,b\\"c";proto=http, for=x'),
            {b"host": b'a,b"c', b"proto": b"http"})

    def test_empty(self):
        """
        An empty field has no parameters.
        """
        self.assertEqual(forwardedParameters(b""), {})


class ToldTargetTests(SynchronousTestCase):
    """
    L{toldTarget}: the scheme and host an origin may build the target URI
    from (RFC 9110 section 7.1).
    """

    def test_nothingTold(self):
        """
        RFC 9110 section 7.1: without forwarding fields the origin is told
        neither.
        """
        self.assertEqual(toldTarget(headers((b"Host", b"a.example"))), (None, None))

    def test_xForwarded(self):
        """
        RFC 9110 section 7.1: X-Forwarded-Proto and -Host tell the scheme
        and host; of a list, the first member (the client's), in lower case.
        """
        self.assertEqual(
            toldTarget(headers((b"X-Forwarded-Proto", b"HTTPS, http"),
                               (b"X-Forwarded-Host", b"A.Example, proxy.example"))),
            (b"https", b"a.example"))

    def test_forwarded(self):
        """
        RFC 7239 sections 5.3 and 5.4: Forwarded's host and proto tell them
        when X-Forwarded-* do not.
        """
        self.assertEqual(
            toldTarget(headers((b"Forwarded", b'for=x;host="a.example";proto=https'))),
            (b"https", b"a.example"))

    def test_agreeing(self):
        """
        RFC 9110 section 7.1: both kinds of field naming the same scheme
        and host tell one story.
        """
        self.assertEqual(
            toldTarget(headers((b"X-Forwarded-Host", b"a.example"),
                               (b"X-Forwarded-Proto", b"http"),
                               (b"Forwarded", b'host="A.example";proto=http'))),
            (b"http", b"a.example"))

    def test_disagreeingHosts(self):
        """
        RFC 9110 section 7.1: two different hosts leave the origin's target
        URI unknown.
        """
        self.assertRaises(Disagreement, toldTarget, headers(
            (b"X-Forwarded-Host", b"a.example"), (b"Forwarded", b"host=b.example")))

    def test_disagreeingSchemes(self):
        """
        RFC 9110 section 7.1: two different schemes leave the origin's
        target URI unknown.
        """
        self.assertRaises(Disagreement, toldTarget, headers(
            (b"X-Forwarded-Proto", b"http"), (b"Forwarded", b"proto=https")))

    def test_notAScheme(self):
        """
        RFC 3986 section 3.1: a told scheme that is not a URI scheme cannot
        be part of a target URI.
        """
        self.assertRaises(Disagreement, toldTarget,
                          headers((b"X-Forwarded-Proto", b"ht tp://")))
