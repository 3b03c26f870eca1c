# -*- test-case-name: tests.test_sites_parse -*-
"""
Routes and origin groups for reverse mode: which origins serve a request,
chosen by its Host and path, and how a group spreads requests over its
servers and keeps track of their health.

The pieces, each usable on its own:

  - L{model}: frozen dataclasses (L{Sites}, L{Group}, L{Server}, L{Route},
    ...), built by L{parse.parseSites} from a TOML document, or by
    L{parse.implicitGroup} from several C{--upstream} URLs;
  - L{routes}: L{RouteTable.match} picks the route of a request;
  - L{balance}: L{Balancer} picks a server of a group;
  - L{health}: L{Health} runs active and passive checks, and says which
    servers are up;
  - L{ratelimit}: L{RateLimiter}, token buckets per route and client;
  - L{metrics}: L{SitesMetrics}, Prometheus figures per group and server;
  - L{service}: L{SitesService}, all of the above for one configuration,
    swapped on reload: the object the proxy calls.

None of this touches the request path yet: the proxy calls it.
"""
