#!/usr/bin/env python3
"""
Baseline reverse proxy for the benchmarks: stock
L{twisted.web.proxy.ReverseProxyResource} served by L{twisted.web.server.Site}.

    python bench/twisted_web_proxy.py --port 8081 --upstream-port 8080

Every request is forwarded to C{http://UPSTREAM_HOST:UPSTREAM_PORT/<same path>}.
No access log is written.  Note that stock ReverseProxyResource opens a new
upstream connection per request (it sends C{Connection: close}) and does no
flow control on the response body, which is part of what this baseline shows.
"""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument(
        "--interface", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--upstream-host", default="127.0.0.1", help="origin host (default %(default)s)"
    )
    parser.add_argument("--upstream-port", type=int, required=True, help="origin port")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.web.proxy import ReverseProxyResource
    from twisted.web.server import Site

    site = Site(ReverseProxyResource(args.upstream_host, args.upstream_port, b""))
    site.noisy = False
    reactor.listenTCP(args.port, site, interface=args.interface, backlog=1024)
    sys.stdout.write(
        "twisted.web.proxy: listening on %s:%d -> %s:%d\n"
        % (args.interface, args.port, args.upstream_host, args.upstream_port)
    )
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
