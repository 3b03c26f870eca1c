"""
The proxy itself: the client connection and its state machine, one
exchange per request, where a request goes, the upstream client and
tunnels. No cache decisions: L{cachingproxy.cache} drives an exchange
through the interface it offers.
"""
