# -*- test-case-name: tests.test_layer -*-
"""
What the cache layer may read and call on an exchange: L{ICacheExchange},
provided by L{cachingproxy.proxy.exchange.Exchange} and by the tests' fake.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["ICacheExchange"]


class ICacheExchange(Interface):
    """
    One client request as the cache layer sees it. The C{response*} calls
    pass an upstream response (or one the layer makes up) on to the client.
    """

    head = Attribute("The client's L{cachingproxy.http.message.RequestHead} (read only).")
    hasBody = Attribute("Whether the client's request has content (read only).")
    state = Attribute("The L{cachingproxy.proxy.states.ExchangeState} (read only).")
    upstream = Attribute("The upstream request being read (an IPushProducer), or None.")
    producer = Attribute("What produces the response body; the layer may set it.")
    onClientGone = Attribute("Called with no argument if the client leaves; the layer sets it.")
    cacheOrigin = Attribute("Where the layer forwards the request (set by the layer).")
    cacheHead = Attribute("The request as the layer forwards it (set by the layer).")
    cacheEntries = Attribute("The stored responses found for the request (set by the layer).")
    cacheStamp = Attribute("The store's stamp read before the lookup, or None (set by the layer).")
    cacheResult = Attribute("What the cache did (HIT, MISS, ...), for the log; set by the layer.")

    def upstreamHead():
        """The request to send upstream (built once)."""

    def cacheTarget(origin):
        """C{(scheme, authority)} of the cache key, or None: not for the cache."""

    def fromAdmin():
        """Whether the client may use the proxy's own methods (PURGE)."""

    def plainKeepAlive():
        """Whether a response in wire form may be sent as is (L{serveBytes})."""

    def sharedFields(fields):
        """C{fields} as every client gets them, or None if rewritten per client."""

    def hotFacts():
        """C{(viaName, compression settings or None)} for responses in wire form."""

    def forward(origin, head, handler):
        """Send C{head} to C{origin}; C{handler} hears the response."""

    def serveBytes(status, data, bodyLength):
        """Send a whole response already in wire form."""

    def respondWithBody(status, reason, fields, body, length):
        """Answer with C{fields} and a body (bytes or an IBodyReader)."""

    def respondError(error):
        """Answer with a L{cachingproxy.errors.ProxyError}."""

    def responseInterim(head):
        """Pass on a 1xx response."""

    def responseHead(head, cacheFields=()):
        """Pass on a response head, with the cache's own C{cacheFields}
        (lowered triples) after its framed fields."""

    def responseBody(data):
        """Pass on response body bytes."""

    def responseEnd():
        """The response body is complete."""

    def responseFailed(reason, receivedAnything):
        """The response failed (after its head, if C{receivedAnything})."""

    def requestBodyUnwanted():
        """The request body is not needed any more."""
